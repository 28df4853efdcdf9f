"""The `rshape train-rm` recipe: a typed schema, validated completely before any model loads.

Errors are reported like `rl`'s, one line each with file, line and key (the helpers of rshape.recipe).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, model_validator

from rshape.recipe import (
    LoraConfig,
    OptimConfig,
    RecipeError,
    RunSettings,
    Section,
    read_with_overrides,
)

BUILTIN_PREFERENCES = "builtin:tiny-preferences"


class RMLoraConfig(LoraConfig):
    enabled: bool = False
    """Train LoRA adapters (and the new score head) instead of the full model; off by default for small backbones."""
    dropout: float = Field(0.0, ge=0, lt=1)
    """Dropout on the LoRA input."""


class RMModelConfig(Section):
    name: str = "builtin:all-minilm-l6-v2"
    """Backbone: a Hugging Face id or directory (decoder or encoder), `builtin:all-minilm-l6-v2` (pretrained
    MiniLM encoder from the `rm` extra), `builtin:tiny-addition`, or `random:tiny-llama` / `random:tiny-bert`."""
    lora: RMLoraConfig = RMLoraConfig()
    """LoRA adapter settings (task type sequence classification: the score head always trains)."""
    load_in_4bit: bool = False
    """Load the frozen base in 4-bit NF4 through bitsandbytes (QLoRA); needs lora.enabled."""
    bnb_compute_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Compute dtype of the 4-bit layers."""
    head: Literal["bt", "regression"] = "bt"
    """`bt`: one scalar trained on preference pairs (Bradley-Terry); `regression`: MSE to ratings, one output per attribute."""
    num_attributes: int = Field(1, gt=0)
    """regression: number of rated attributes (one head output each, HelpSteer2-style)."""
    max_length: int = Field(512, gt=8)
    """Tokens per (prompt, response) input; longer inputs are truncated."""
    disable_dropout: bool = True
    """Switch dropout off in the backbone while training (TRL's RewardTrainer default)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""
    trust_remote_code: bool = False
    """Allow model code from the model directory (Hugging Face `trust_remote_code`)."""

    @model_validator(mode="after")
    def _checks(self) -> RMModelConfig:
        if self.load_in_4bit and not self.lora.enabled:
            raise ValueError("load_in_4bit needs lora.enabled: a 4-bit base cannot be trained directly")
        if self.head == "bt" and self.num_attributes != 1:
            raise ValueError("num_attributes > 1 needs head: regression")
        return self


class RMDataConfig(Section):
    train: str = BUILTIN_PREFERENCES
    """`builtin:tiny-preferences`, a JSONL file, a file `datasets` reads (.json/.jsonl/.csv/.parquet/.arrow), a
    `datasets.save_to_disk` directory, or `hf:NAME` (a Hub dataset; needs the network or a local cache)."""
    eval: str | None = None
    """Held-out data in the same forms; None = the built-in set's held-out split, or `eval_fraction` of train."""
    format: Literal["pairs", "scored"] = "pairs"
    """`pairs`: (prompt, chosen, rejected, margin?, category?, tie?); `scored`: (prompt, response, rating or attributes)."""
    eval_fraction: float = Field(0.1, gt=0, lt=1)
    """Share of train held out for evaluation when `eval` is not given (a fixed shuffle by seed)."""
    split: str = "train"
    """Split read from `hf:` datasets and `save_to_disk` dataset dicts."""
    prompt_key: str = "prompt"
    """Field of the prompt: text or chat messages (optional when chosen/rejected are whole conversations)."""
    chosen_key: str = "chosen"
    """pairs: field of the preferred response (text, or chat messages)."""
    rejected_key: str = "rejected"
    """pairs: field of the other response."""
    margin_key: str = "margin"
    """pairs: optional per-pair margin (a number); used when loss.margin is on."""
    category_key: str = "category"
    """pairs: optional category, for per-category accuracy."""
    tie_key: str = "tie"
    """pairs: optional tie flag (true: neither response is better)."""
    response_key: str = "response"
    """scored: field of the rated response."""
    rating_keys: list[str] = ["rating"]
    """scored: rated attributes, one head output each (HelpSteer2: helpfulness, correctness, ...)."""
    system_prompt: str | None = None
    """System message prepended to chat-shaped prompts."""
    difficulties: list[int] = [1, 2, 3, 4]
    """builtin: digit counts of the addition problems."""
    train_size: int = Field(2000, gt=0)
    """builtin: training pairs (from the addition train split)."""
    eval_size: int = Field(400, gt=0)
    """builtin: held-out pairs (from the addition eval split: prompts never seen in training)."""
    ties: bool = True
    """builtin: include tie pairs (two wrong answers, category `tie`)."""

    @model_validator(mode="after")
    def _checks(self) -> RMDataConfig:
        if not self.rating_keys:
            raise ValueError("rating_keys: at least one rated attribute is needed")
        if self.format == "scored" and self.train == BUILTIN_PREFERENCES:
            raise ValueError("the built-in set holds preference pairs; use format: pairs")
        return self


class RMLossConfig(Section):
    margin: bool = False
    """Bradley-Terry with the pair's margin m: −log σ(r_c − r_r − m) (pairs without one use m = 0)."""
    center_coef: float = Field(0.01, ge=0)
    """η of the centring term η·mean((r_c + r_r)²) (TRL's center_rewards_coefficient); 0 = off."""
    ties: Literal["half", "drop"] = "half"
    """Tie pairs: `half` trains σ(r_a − r_b) toward 0.5 (BCE with target ½, SoliReward); `drop` ignores them."""
    tie_weight: float = Field(1.0, ge=0)
    """Weight of a tie pair's loss relative to a preference pair's."""


class RMOptimConfig(OptimConfig):
    """The rl optimizer section with reward-model defaults."""

    lr: float = Field(5e-5, gt=0)
    """AdamW learning rate."""
    schedule: Literal["constant", "linear", "cosine"] = "linear"
    """Learning-rate schedule after warm-up (linear and cosine decay to 0 at the last step)."""


class RMTrainConfig(Section):
    epochs: float = Field(1.0, gt=0)
    """Passes over the training data (fractions allowed); ignored when `steps` is set."""
    steps: int | None = Field(None, gt=0)
    """Optimizer steps (overrides epochs)."""
    batch_size: int = Field(16, gt=0)
    """Pairs (or scored examples) per optimizer step."""
    eval_every: int = Field(0, ge=0)
    """Evaluate on the held-out set every this many steps (and always at the end); 0 = only at the end."""
    eval_batch_size: int = Field(64, gt=0)
    """Sequences per forward pass when scoring."""
    log_every: int = Field(10, gt=0)
    """Write a training line to metrics.jsonl every this many steps."""
    progress: bool = True
    """Show a live progress line."""


class RMEnsembleConfig(Section):
    members: int = Field(1, gt=0)
    """K: reward models trained with seeds seed, seed+1, …; K > 1 exports an ensemble (ensemble.json)."""
    bootstrap: bool = False
    """Each member trains on a bootstrap resample of the training data (same size, with replacement)."""
    aggregate: Literal["mean", "min", "mean_minus_std"] = "mean"
    """Default aggregation written to ensemble.json (a recipe's `rm` reward may override it)."""
    k: float = Field(1.0, ge=0)
    """mean_minus_std: r = mean − k·std over members."""


class RMEvalConfig(Section):
    best_of_n: int = Field(0, ge=0)
    """Best-of-N at the end: N samples per prompt from `policy`, picked by the RM; 0 = off."""
    policy: str = "builtin:tiny-addition"
    """Policy for best-of-N (a model directory or `builtin:tiny-addition`); its task is the built-in addition world."""
    prompts: int = Field(100, gt=0)
    """best-of-N: held-out addition prompts."""
    difficulties: list[int] = [1, 2, 3, 4]
    """best-of-N: digit counts of the prompts."""
    max_new_tokens: int = Field(128, gt=0)
    """best-of-N: generation limit."""
    temperature: float = Field(1.0, gt=0)
    """best-of-N: sampling temperature."""


class RMRecipe(RunSettings):
    """The whole `rshape train-rm` recipe."""

    seed: int = 0
    """Seeds initialisation, data order, bootstrap resampling and best-of-N sampling."""
    output_dir: str = "runs/rm"
    """Run directory: recipe.yaml, manifest.json, metrics.jsonl, eval_report.json and model/ (the export)."""
    model: RMModelConfig = RMModelConfig()
    data: RMDataConfig = RMDataConfig()
    loss: RMLossConfig = RMLossConfig()
    optim: RMOptimConfig = RMOptimConfig()
    train: RMTrainConfig = RMTrainConfig()
    ensemble: RMEnsembleConfig = RMEnsembleConfig()
    eval: RMEvalConfig = RMEvalConfig()

    @model_validator(mode="after")
    def _checks(self) -> RMRecipe:
        if self.model.head == "regression" and self.data.format != "scored":
            raise ValueError("model.head regression trains on scored data: set data.format: scored")
        if self.model.head == "bt" and self.data.format == "scored":
            raise ValueError("scored data trains a regression head: set model.head: regression")
        n_keys = len(self.data.rating_keys)
        if self.data.format == "scored" and n_keys not in (1, self.model.num_attributes):
            raise ValueError(f"model.num_attributes ({self.model.num_attributes}) must equal the number of "
                             f"data.rating_keys ({n_keys}), or name one key holding a list of ratings")
        return self


def _is_local_source(value: str) -> bool:
    return not (value.startswith("builtin:") or value.startswith("hf:"))


def load_rm_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RMRecipe:
    """Read, override and validate a train-rm recipe; raise RecipeError listing every problem at once."""
    data, source = read_with_overrides(path, overrides)
    try:
        recipe = RMRecipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(source.validation_lines(exc)) from None
    errors = []
    for key in ("train", "eval"):
        value = getattr(recipe.data, key)
        if value is None:
            continue
        if value.startswith("builtin:") and value != BUILTIN_PREFERENCES:
            errors.append(source.line(("data", key), f"unknown built-in data {value!r}; valid: {BUILTIN_PREFERENCES}"))
        elif _is_local_source(value) and not Path(value).exists():
            errors.append(source.line(("data", key), f"file not found: {value}"))
    if recipe.data.eval == BUILTIN_PREFERENCES and recipe.data.train != BUILTIN_PREFERENCES:
        errors.append(source.line(("data", "eval"), "the built-in held-out set only goes with the built-in training set"))
    if errors:
        raise RecipeError(errors)
    return recipe
