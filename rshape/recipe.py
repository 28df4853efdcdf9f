"""Recipes: YAML → a typed, validated schema; dotted overrides; errors that name the key and line.

A recipe is validated completely before any model loads, and every error is reported at once,
one line each: `recipes/x.yaml:12: rollout.group_siz: unknown key`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rshape.curriculum.config import CurriculumConfig
from rshape.rows import parse_rows


class RecipeError(Exception):
    """A user mistake in a recipe: one line per problem, no traceback."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        super().__init__("\n".join(lines))


class Section(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False, extra="forbid", use_attribute_docstrings=True, validate_assignment=True)


class LoraConfig(Section):
    enabled: bool = True
    """Train LoRA adapters instead of the full model (the KL reference is then the adapters-off model)."""
    r: int = Field(16, gt=0)
    """LoRA rank."""
    alpha: float = Field(32.0, gt=0)
    """LoRA scaling numerator (the update is scaled by alpha / r)."""
    dropout: float = Field(0.0, ge=0, lt=1)
    """Dropout on the LoRA input; keep 0 for RL so the first importance ratio is exactly 1."""
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    """Module names to adapt (e.g. [q_proj, v_proj]) or `all-linear`."""


class ModelConfig(Section):
    name: str = "builtin:tiny-addition"
    """Hugging Face model id, a local directory, or a shipped tiny-world policy: `builtin:tiny-addition` (1-4 digits)
    or `builtin:tiny-graded` (2-5 digits, abbreviated steps: the world of `make repro-*`)."""
    lora: LoraConfig = LoraConfig()
    """LoRA adapter settings."""
    adapter: str | None = None
    """A saved LoRA adapter directory to continue training (its own rank/targets are used)."""
    load_in_4bit: bool = False
    """Load the frozen base in 4-bit NF4 through bitsandbytes (QLoRA); needs lora.enabled."""
    bnb_compute_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Compute dtype of the 4-bit layers."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""
    trust_remote_code: bool = False
    """Allow model code from the model directory (Hugging Face `trust_remote_code`)."""

    @model_validator(mode="after")
    def _qlora_needs_lora(self) -> ModelConfig:
        if self.load_in_4bit and not self.lora.enabled:
            raise ValueError("load_in_4bit needs lora.enabled: a 4-bit base cannot be trained directly")
        if self.adapter and not self.lora.enabled:
            raise ValueError("adapter needs lora.enabled")
        return self


class TaskConfig(Section):
    name: Literal["addition", "dataset", "jsonl"] = "addition"
    """`addition`: the built-in tiny world (both built-in policies); `dataset`: problems from `train_file` /
    `eval_file` (`jsonl` is its older name)."""
    difficulties: list[int] = [1, 2, 3, 4]
    """addition: digit counts to draw problems from."""
    train_per_difficulty: int = Field(2000, gt=0)
    """addition: size of the train pool per digit count."""
    eval_per_difficulty: int = Field(250, gt=0)
    """addition: size of the held-out eval split per digit count (fewer when the split is smaller: 1 digit has 20)."""
    eval_seed: int = 0
    """addition: seed of the held-out split's draw — its own key, so every training seed is scored on the same problems."""
    train_file: str | None = None
    """dataset: training problems: a .jsonl/.json/.parquet/.arrow/.csv file, a `save_to_disk` directory or `hf:NAME` (a
    Hub dataset); a relative path is read from the recipe file's directory."""
    eval_file: str | None = None
    """dataset: held-out problems, same forms; unset: `eval_split` of train_file, or else the first `eval_size` rows of
    the training rows are held out (never trained on)."""
    subset: str | None = None
    """dataset: the Hub dataset's configuration (e.g. `main` for openai/gsm8k)."""
    train_split: str = "train"
    """dataset: the split to train on (Hub datasets and `save_to_disk` dataset dicts; a file is one split)."""
    eval_split: str | None = None
    """dataset: the split to evaluate on (e.g. `test`); unset: train_split of eval_file, or held out of the training rows."""
    train_rows: str | None = None
    """dataset: rows `start:stop` of the training split (e.g. `0:7000`; either side may be empty)."""
    eval_rows: str | None = None
    """dataset: rows `start:stop` of the evaluation split; from the training split itself they must not overlap train_rows."""
    eval_size: int = Field(200, gt=0)
    """dataset: evaluation problems kept (the first ones of the evaluation rows)."""
    prompt_key: str = "prompt"
    """dataset: column holding the prompt (a string, or a list of chat messages)."""
    prompt_template: str | None = None
    """dataset: the prompt built from the row: `{column}` placeholders are filled in, other braces (`\\boxed{}`) stay,
    e.g. `"{problem} Please reason step by step, and put your final answer within \\boxed{}."`."""
    answer_key: str = "answer"
    """dataset: column holding the gold answer (or a solution to extract it from)."""
    answer_extract: Literal["boxed", "gsm8k"] | None = None
    """dataset: read the gold answer out of the answer column: `boxed`, its last `\\boxed{…}` (MATH's `solution`);
    `gsm8k`, the number after `####`."""
    answer_pattern: str | None = None
    """dataset: a regular expression; the gold answer is group 1 (or the whole match) of its last match in the answer column."""
    difficulty_key: str | None = "difficulty"
    """dataset: column holding a difficulty bucket: an integer, or text ending in one (`Level 3`); optional in the data."""
    verifier: Literal["exact", "numeric", "math"] = "exact"
    """dataset: answer check on the completion's last `<answer>…</answer>`, else its last `\\boxed{…}` — exact string
    after normalisation, numeric with tolerance, or math-verify."""
    chat: Literal["auto", "always", "never"] = "auto"
    """dataset: a text prompt goes through the tokenizer's chat template as the user turn: `auto` when the tokenizer has
    a template; chat-shaped prompts always do (without a template: `role: content` lines, with a warning)."""
    system_prompt: str | None = None
    """dataset: system message for prompts sent as a chat (prepended to the text of a plain prompt)."""

    @field_validator("train_rows", "eval_rows")
    @classmethod
    def _rows(cls, v: str | None) -> str | None:
        parse_rows(v)
        return v

    @field_validator("answer_pattern")
    @classmethod
    def _pattern(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"not a regular expression: {exc}") from None
        return v

    def dataset(self) -> bool:
        return self.name in ("dataset", "jsonl")

    def eval_source(self) -> tuple[str | None, str]:
        """(source, split) the evaluation problems come from: eval_file or train_file, eval_split or train_split."""
        return self.eval_file or self.train_file, self.eval_split or self.train_split

    def eval_from_training_split(self) -> bool:
        """Evaluation reads the very split training reads (then it is held out of it, or taken from `eval_rows`)."""
        return self.eval_source() == (self.train_file, self.train_split)


class RolloutConfig(Section):
    prompts_per_step: int = Field(8, gt=0)
    """Prompts sampled per RL step (B)."""
    group_size: int = Field(8, ge=2)
    """Completions per prompt (G); group statistics are over these siblings."""
    max_new_tokens: int = Field(128, gt=0)
    """Generation limit; a completion that reaches it without EOS is truncated."""
    temperature: float = Field(1.0, gt=0)
    """Sampling temperature (also divides the logits of the training log-probs)."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling mass."""
    max_new_tokens_from: str | None = None
    """Name of a schedule in `schedules` (e.g. `budget`) that sets the generation limit each step
    (rounded; never above max_new_tokens) — a token budget driving generation."""
    decoder: Literal["auto", "fast", "compiled", "hf"] = "auto"
    """Generation engine: `fast` = rshape's lean decoder for Llama/Mistral/Qwen2/Qwen3 (LoRA merged and
    projections fused while the copy is under 1 GiB, static KV cache, finished rows dropped; same logits as the model),
    `compiled` = the fast decoder with a static-shape one-token step compiled by torch.compile (the same tokens;
    10–30 s of compilation per process, cached across runs; finished rows stay in the batch; slower than `fast` on a
    CPU; built for GPUs, untested there), `hf` = the model's own forward with a DynamicCache (any causal LM),
    `auto` = fast when supported."""


class RewardSpec(BaseModel):
    """One reward component: its type (defaults to the entry's name), weight and parameters."""

    model_config = ConfigDict(extra="allow")
    type: str | None = None
    weight: float | dict[str, Any] = 1.0


class DynamicSamplingConfig(Section):
    enabled: bool = False
    """Drop groups whose reward std is below `std_eps` and refill by generating for more prompts (DAPO)."""
    std_eps: float = Field(1e-6, ge=0)
    """A group with reward std ≤ this is uninformative (all-correct or all-wrong under a 0/1 reward)."""
    max_rounds: int = Field(3, ge=0)
    """Extra generation rounds at most per step; the step then trains on what it has (logged as sampling/hit_cap)."""


LOGIT_BUDGET = 1 << 25  # float32 logits per log-prob chunk when `algorithm.logprob_chunk` is null (128 MiB)
MAX_CHUNK_ROWS = 16  # ... and at most this many rows (on a CPU, larger chunks of a small model were slower)


def chunk_rows(logprob_chunk: int | None, width: int, vocab: int) -> int:
    """Rows per log-prob chunk: `logprob_chunk`, or when it is null at most MAX_CHUNK_ROWS, fewer while their
    [rows, width, vocab] float32 logits would pass LOGIT_BUDGET floats; never fewer than one."""
    if logprob_chunk:
        return logprob_chunk
    return max(1, min(MAX_CHUNK_ROWS, LOGIT_BUDGET // max(1, width * vocab)))


class AlgorithmConfig(Section):
    advantage: str = "grpo"
    """Advantage estimator by name (see Advantage estimators); `grpo` = (r − group mean) / (group std + eps)."""
    advantage_params: dict[str, Any] = {}
    """Parameters of the estimator (e.g. drpo's `lam`, canon's `mu`)."""
    adv_eps: float = Field(1e-4, gt=0)
    """eps in the GRPO denominator."""
    loss_agg: Literal["grpo", "dapo", "dr_grpo"] = "grpo"
    """`grpo`: token mean per sequence, then mean; `dapo`: token mean over the batch;
    `dr_grpo`: token sum / (sequences · max_new_tokens)."""
    ratio_level: Literal["token", "sequence"] = "token"
    """Importance ratio per token (PPO/GRPO) or per sequence, the geometric mean of token ratios (GSPO)."""
    entropy_coef: float = Field(0.0, ge=0)
    """Entropy bonus: subtracts entropy_coef · token entropy from the loss."""
    mask_truncated: bool = False
    """Drop completions that hit the generation limit from the loss (DAPO's overlong filtering)."""
    clip_low: float = Field(0.2, ge=0)
    """Lower clip ε_low of the importance ratio (ratio ≥ 1 − ε_low)."""
    clip_high: float = Field(0.2, ge=0)
    """Upper clip ε_high (ratio ≤ 1 + ε_high); DAPO's clip-higher uses 0.28."""
    kl_beta: float = Field(0.0, ge=0)
    """Weight β of the k3 KL to the reference (adapters off with LoRA); 0 disables it."""
    dynamic_sampling: DynamicSamplingConfig = DynamicSamplingConfig()
    """DAPO dynamic sampling."""
    epochs: int = Field(1, gt=0)
    """Update passes over each batch of rollouts."""
    minibatches: int = Field(1, gt=0)
    """Optimizer steps per pass (the batch of B·G completions is split into this many)."""
    logprob_chunk: int | None = Field(None, gt=0)
    """Rows per chunk when computing token log-probs (bounds the full-vocabulary float32 logits in memory);
    null = at most 16 rows, fewer while one chunk's logits would pass 2^25 floats (128 MiB), never fewer than 1."""


class OptimConfig(Section):
    lr: float = Field(1e-4, gt=0)
    """AdamW learning rate."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    schedule: Literal["constant", "linear", "cosine"] = "constant"
    """Learning-rate schedule after warm-up (linear and cosine decay to 0 at train.steps)."""
    warmup_steps: int = Field(0, ge=0)
    """Linear warm-up steps."""
    max_grad_norm: float = Field(1.0, gt=0)
    """Gradient clipping norm."""
    float32_master: bool = True
    """With 16-bit trained weights (full fine-tuning in bfloat16/float16): AdamW moves float32 master copies (moments
    in float32) and writes them back rounded, so steps below the 16-bit spacing accumulate instead of rounding away;
    +12 bytes per trained parameter. false = AdamW on the 16-bit weights. LoRA adapters are float32 already."""


class TrainConfig(Section):
    steps: int = Field(100, gt=0)
    """RL steps (one batch of rollouts each)."""
    checkpoint_every: int = Field(50, ge=0)
    """Write a checkpoint every this many steps (and always at the end); 0 = only at the end."""
    log_samples: int = Field(4, ge=0)
    """Completions written to samples.jsonl per step."""
    progress: bool = True
    """Show a live progress bar."""


class EvalConfig(Section):
    every: int = Field(25, ge=0)
    """Eval on the held-out split every this many steps (and at start and end); 0 = start and end only."""
    max_new_tokens: int | None = None
    """Generation limit for eval (defaults to rollout.max_new_tokens)."""
    batch_size: int = Field(64, gt=0)
    """Completions per generation batch during eval."""
    samples: int = Field(0, ge=0)
    """0: one greedy completion per problem; k ≥ 1: k sampled completions, accuracy = avg@k (sampled pass@1)."""
    temperature: float | None = Field(None, gt=0)
    """Sampling temperature of eval.samples (default: rollout.temperature)."""
    top_p: float | None = Field(None, gt=0, le=1)
    """Nucleus mass of eval.samples (default: rollout.top_p)."""
    seed: int = 0
    """Seed of eval.samples' noise, keyed by (seed, problem, sample) only: every checkpoint sees the same noise."""


class TensorBoardConfig(Section):
    enabled: bool = False
    """Write the records of metrics.jsonl and eval.jsonl as TensorBoard scalars (same names, x = `step`);
    needs `pip install 'rshape[trackers]'`."""
    log_dir: str | None = None
    """Event-file directory (default: `<output_dir>/tensorboard`)."""


class WandbConfig(Section):
    enabled: bool = False
    """Log the records of metrics.jsonl and eval.jsonl to Weights & Biases (same names, x = `step`; the resolved
    recipe is the run config); needs `pip install 'rshape[trackers]'`."""
    project: str = "rshape"
    """W&B project."""
    entity: str | None = None
    """W&B entity (user or team; default: the logged-in user's)."""
    name: str | None = None
    """W&B run name (default: the run directory's name)."""
    mode: Literal["online", "offline"] = "online"
    """`online`, or `offline`: written under `dir` only, upload later with `wandb sync` (the WANDB_MODE
    environment variable, when set, wins)."""
    dir: str | None = None
    """Directory wandb writes its `wandb/` folder in (default: the run directory)."""
    tags: list[str] = []
    """W&B run tags."""


class TrackersConfig(Section):
    tensorboard: TensorBoardConfig = TensorBoardConfig()
    """TensorBoard event files (`tensorboard: true` is short for `tensorboard: {enabled: true}`)."""
    wandb: WandbConfig = WandbConfig()
    """Weights & Biases (`wandb: true` is short for `wandb: {enabled: true}`); the W&B run id is kept in the run
    directory (`wandb_id.txt`), so `--resume` continues the same W&B run."""

    @field_validator("tensorboard", "wandb", mode="before")
    @classmethod
    def _bool_is_enabled(cls, v: Any) -> Any:
        return {"enabled": v} if isinstance(v, bool) else v


class SftConfig(BaseModel):
    """Settings of an `sft` phase (rshape.phases)."""

    model_config = ConfigDict(allow_inf_nan=False, extra="forbid", use_attribute_docstrings=True)
    steps: int = Field(50, gt=0)
    """Optimizer steps."""
    batch_size: int = Field(32, gt=0)
    """Examples per step."""
    lr: float = Field(1e-3, gt=0)
    """AdamW learning rate."""
    mode_mix: dict[str, float] = {"full": 1.0}
    """addition task: trace kinds to imitate and their shares (full, overthink, direct, malformed)."""
    completion_key: str = "completion"
    """dataset task: the data column holding the target completion."""


class PhaseConfig(BaseModel):
    """One entry of `phases` (rshape.phases)."""

    model_config = ConfigDict(allow_inf_nan=False, extra="forbid", use_attribute_docstrings=True)
    name: str
    """Phase name (its run directory is `<output_dir>/<index>_<name>`)."""
    kind: Literal["rl", "sft"] = "rl"
    """`rl`: the GRPO loop; `sft`: supervised fine-tuning on reference completions."""
    overrides: dict[str, Any] = {}
    """Recipe keys changed for this phase (dotted keys or whole sections)."""
    sft: SftConfig = SftConfig()
    """Settings of an sft phase."""


class RunSettings(Section):
    """Run-level keys shared by every command's recipe (`rl`, `train-rm`)."""

    seed: int = 0
    """Seeds initialisation, data order and every sampled token."""
    output_dir: str = "runs/rl"
    """Run directory: resolved recipe, manifest, metrics.jsonl, samples.jsonl, checkpoints."""
    device: str = "auto"
    """`auto` (cuda when present, else cpu), `cpu`, `cuda`, `cuda:1`..."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Parameter dtype: `auto` is bfloat16 on a GPU that supports it, else float32."""
    threads: int | None = None
    """torch CPU threads (default: torch's own choice)."""


class Recipe(RunSettings):
    """The whole `rshape rl` recipe."""

    model: ModelConfig = ModelConfig()
    task: TaskConfig = TaskConfig()
    rollout: RolloutConfig = RolloutConfig()
    rewards: dict[str, RewardSpec] = {"correctness": RewardSpec(weight=1.0)}
    """Reward components by entry name: `{type, weight, combine, gate, ...parameters}` (see Reward components)."""
    reward_combine: Literal["sum_then_normalize", "normalize_then_sum"] = "sum_then_normalize"
    """`sum_then_normalize`: weighted sum, then the advantage estimator; `normalize_then_sum` (GDPO): each
    component normalised in its group, weighted, summed, whitened over the batch — used as the advantage."""
    reward_lengths: Literal["before_eos", "with_eos"] = "before_eos"
    """The length rewards see: tokens generated before EOS (rshape, TRL), or `with_eos`, counting the EOS of a
    completion that stopped, as verl's valid_response_length does (every threshold of LASER, DAPO, L1 and
    ShorterBetter then matches verl's). Metrics, estimators and evaluation always count tokens before EOS."""
    schedules: dict[str, dict[str, Any]] = {}
    """Named schedules of the step (e.g. `budget`), readable by rewards and logged as `schedule/<name>`."""
    phases: list[PhaseConfig] = []
    """Chained phases (SFT warm start, RL phases), each from the previous one's weights; empty = one RL run."""
    curriculum: CurriculumConfig = CurriculumConfig()
    """Data curriculum: difficulty tracker, order, stages, retirement, medium upweighting, length budgets."""
    algorithm: AlgorithmConfig = AlgorithmConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    trackers: TrackersConfig = TrackersConfig()
    """Opt-in experiment trackers (TensorBoard, Weights & Biases) fed the records of metrics.jsonl and eval.jsonl;
    the JSONL files stay the source of truth."""

    @field_validator("rewards")
    @classmethod
    def _some_reward(cls, v: dict[str, RewardSpec]) -> dict[str, RewardSpec]:
        if not v:
            raise ValueError("at least one reward component is needed")
        return v


# --------------------------------------------------------------------------- YAML and overrides


def duplicate_keys(text: str) -> list[tuple[tuple[str, ...], int, int]]:
    """(key path, first line, repeated line) of each key a YAML mapping gives twice (YAML keeps only the last)."""
    found: list[tuple[tuple[str, ...], int, int]] = []
    line_index(text, found)
    return found


def line_index(text: str, duplicates: list | None = None) -> dict[tuple[str, ...], int]:
    """Map every key path of a YAML document to its 1-based line (`duplicates` collects keys given twice)."""
    index: dict[tuple[str, ...], int] = {}

    def walk(node: yaml.Node, path: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = (*path, str(k.value))
                if key in index and duplicates is not None:
                    duplicates.append((key, index[key], k.start_mark.line + 1))
                index[key] = k.start_mark.line + 1
                walk(v, key)
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                index[(*path, str(i))] = v.start_mark.line + 1
                walk(v, (*path, str(i)))

    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return index
    if root is not None:
        walk(root, ())
    return index


def parse_override(item: str) -> tuple[list[str], Any]:
    """`a.b.c=value` → (['a','b','c'], YAML-parsed value)."""
    if "=" not in item:
        raise RecipeError([f"override {item!r}: expected key=value, e.g. train.steps=50"])
    key, _, raw = item.partition("=")
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise RecipeError([f"override {item!r}: empty key"])
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_override(data: dict, path: list[str], value: Any) -> None:
    node = data
    for part in path[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[path[-1]] = value


@dataclass
class KeySource:
    """Where the keys of a YAML document came from, so that every error line names its file and line:
    `recipes/x.yaml:12: rollout.group_siz: unknown key` (`command line: ...` for an override)."""

    path: str
    lines: dict[tuple[str, ...], int] = field(default_factory=dict)  # key path → 1-based line
    overridden: set[tuple[str, ...]] = field(default_factory=set)  # key paths set on the command line

    def where(self, loc: tuple[str, ...]) -> str:
        """`file:line` of the innermost key of `loc` that the file has, `command line`, or the file."""
        if any(loc[: len(o)] == o for o in self.overridden):
            return "command line"
        for n in range(len(loc), 0, -1):
            if loc[:n] in self.lines:
                return f"{self.path}:{self.lines[loc[:n]]}"
            if any(o[:n] == loc[:n] for o in self.overridden):  # an entry only the command line created
                return "command line"
        return self.path

    def line(self, loc: tuple[str, ...], message: str, at: tuple[str, ...] | None = None) -> str:
        """The one error line of every rshape config problem: `where: dotted.key: message` (`at`: locate
        another key than the one named)."""
        return f"{self.where(loc if at is None else at)}: {'.'.join(loc) or '(top level)'}: {message}"

    def validation_lines(self, exc: ValidationError) -> list[str]:
        """A pydantic ValidationError as error lines, in file order."""
        return sorted((self.line(loc, msg) for loc, msg in validation_problems(exc, with_input=True)), key=_line_of)


def validation_problems(exc: ValidationError, prefix: tuple[str, ...] = (), skip: int = 0,
                        with_input: bool = False) -> list[tuple[tuple[str, ...], str]]:
    """(key path, message) of each error of a pydantic ValidationError: `unknown key`, `missing required key` or
    pydantic's message; `skip` drops leading parts of pydantic's location (e.g. a tagged union's tag);
    `with_input` adds the offending scalar (`(got 3)`)."""
    out = []
    for err in exc.errors():
        loc = (*prefix, *(str(p) for p in err["loc"][skip:]))
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "missing required key"
        else:
            msg = err["msg"].removeprefix("Value error, ")
            if with_input and "input" in err and not isinstance(err["input"], (dict, list)):
                msg += f" (got {err['input']!r})"
        out.append((loc, msg))
    return out


def _line_of(message: str) -> tuple[int, str]:
    """Sort key: errors in file order, command-line ones last."""
    head = message.split(": ", 1)[0]
    _, _, line = head.rpartition(":")
    return (int(line) if line.isdigit() else 1 << 30, message)


def load_recipe_dict(path: str | Path) -> tuple[dict, dict[tuple[str, ...], int]]:
    """A recipe file's mapping and the line of each key; RecipeError if it is missing or not a YAML mapping."""
    p = Path(path)
    if not p.is_file():
        raise RecipeError([f"{p}: recipe file not found"])
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise RecipeError([f"{p}:{line}: not UTF-8 text (save the recipe as UTF-8)"]) from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise RecipeError([f"{p}{line}: invalid YAML: {getattr(exc, 'problem', exc)}"]) from None
    if not isinstance(data, dict):
        raise RecipeError([f"{p}: a recipe is a mapping of keys, got {type(data).__name__}"])
    if not data:
        raise RecipeError([f"{p}: the recipe is empty; start from recipes/quickstart.yaml"])
    twice = duplicate_keys(text)
    if twice:
        raise RecipeError([f"{p}:{second}: {'.'.join(key)}: given twice (also on line {first}); YAML would keep only "
                           "this one" for key, first, second in twice])
    return data, line_index(text)


def read_with_overrides(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> tuple[dict, KeySource]:
    """A recipe file's mapping with dotted `key=value` overrides applied, and where each key came from."""
    data, lines = load_recipe_dict(path)
    resolve_data_paths(data, Path(path).parent)
    source = KeySource(str(path), lines)
    bad: list[str] = []
    for item in overrides:
        try:
            keys, value = parse_override(item)
        except RecipeError as exc:  # report every bad override, not only the first
            bad += [f"command line: {line}" for line in exc.lines]
            continue
        apply_override(data, keys, value)
        source.overridden.add(tuple(keys))
    if bad:
        raise RecipeError(bad)
    return data, source


DATA_PATH_KEYS = (("task", "train_file"), ("task", "eval_file"))


def resolve_data_paths(data: dict, base: Path) -> None:
    """Relative data paths written in a recipe file are read from the file's directory (those given on the command
    line stay relative to the working directory); `hf:` names are not paths."""
    for section, key in DATA_PATH_KEYS:
        node = data.get(section)
        value = node.get(key) if isinstance(node, dict) else None
        if isinstance(value, str) and value and not value.startswith("hf:") and not Path(value).is_absolute():
            node[key] = os.path.abspath(base / value)


def parse_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> tuple[Recipe, KeySource]:
    """Read, override and schema-validate an `rl` recipe (the registry checks are `rshape.validate`'s)."""
    data, source = read_with_overrides(path, overrides)
    try:
        return Recipe.model_validate(data), source
    except ValidationError as exc:
        raise RecipeError(source.validation_lines(exc)) from None


def recipe_to_yaml(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)


def _plain(value: Any) -> Any:
    """Defaults as plain YAML-able data."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_none=True)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def describe_keys(model: type[BaseModel] = Recipe, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, default, description) for every key of the schema, for the README."""
    rows = []
    for name, f in model.model_fields.items():
        key = f"{prefix}{name}"
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            if f.description:
                rows.append((key, "", f.description))
            rows += describe_keys(ann, key + ".")
            continue
        default = _plain(f.get_default(call_default_factory=True))
        rows.append((key, yaml.safe_dump(default, default_flow_style=True).strip().removesuffix("\n...").strip(),
                     (f.description or "").replace("\n", " ")))
    return rows


def phase_recipe(base: dict[str, Any], phase: PhaseConfig, index: int, previous: Path | None, lora: bool) -> dict[str, Any]:
    """The plain recipe dict of one phase: base + overrides, its own run dir, the previous weights."""
    data = {k: v for k, v in base.items() if k != "phases"}
    data = _deep_copy(data)
    for key, value in phase.overrides.items():
        apply_override(data, key.split("."), value)
    data["output_dir"] = str(Path(base["output_dir"]) / f"{index}_{phase.name}")
    if previous is not None:
        model = data.setdefault("model", {})
        if lora:
            model["adapter"] = str(previous / "model")
        else:
            model["name"] = str(previous / "model")
    return data


def _deep_copy(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _deep_copy(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_deep_copy(v) for v in x]
    return x
