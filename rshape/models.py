"""Policy loading: a Hub id, a local directory or the built-in tiny policy; LoRA; 4-bit NF4 base."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from rshape.recipe import ModelConfig
from rshape.tasks.warmstart import build_world
from rshape.tasks.worlds import BUILTIN_MODELS, BUILTIN_WORLDS


def quiet_libraries() -> None:
    """Silence third-party noise that says nothing to an rshape user: transformers' `Loading weights` bars, a
    FutureWarning transformers raises through peft, and bitsandbytes' attempt to fetch an optional CPU kernel from
    the Hub (it falls back to its own). Errors still show."""
    import logging
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    for name in ("bitsandbytes.backends.cpu.ops", "kernels", "kernels._internals.hf_hub"):
        logging.getLogger(name).setLevel(logging.ERROR)


def low_precision_update_warning(cfg: ModelConfig, dtype: torch.dtype, lr: float, float32_master: bool
                                 ) -> str | None:
    """A one-line warning for full fine-tuning in a 16-bit dtype at a small learning rate without float32 master
    weights (`optim.float32_master: false`), else None.

    The optimizer then writes its step into the 16-bit weights, and a step smaller than half the spacing of
    representable values (about weight/256 in bfloat16) is lost. AdamW's steps are about lr in size, so at lr 1e-6
    most weights never move (rshape.rl.masters). LoRA adapters are float32 and are not affected."""
    if float32_master or cfg.lora.enabled or dtype not in (torch.bfloat16, torch.float16) or lr >= 1e-4:
        return None
    name = str(dtype).removeprefix("torch.")
    return (f"warning: full fine-tuning in {name} at lr {lr:g} with optim.float32_master: false: optimizer steps "
            f"smaller than about 1/256 of a weight round away in {name} and most weights will not move; keep the "
            "float32 masters (the default), use dtype: float32, or LoRA")


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` → cuda when available, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto` → bfloat16 on a GPU that supports it, float32 otherwise."""
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return getattr(torch, name)


def resolve_model_path(name: str) -> str:
    """A built-in name → its directory (built on first use if the shipped copy is missing)."""
    if name.startswith("builtin:"):
        if name not in BUILTIN_MODELS:
            raise ValueError(f"unknown built-in model {name!r}; valid: {', '.join(BUILTIN_MODELS)}")
        path = BUILTIN_MODELS[name]
        if not (path / "config.json").is_file():
            build_world(BUILTIN_WORLDS[name], path)
        return str(path)
    return name


def load_tokenizer(name: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """The tokenizer, left-padded for batched generation, with a pad token."""
    tok = AutoTokenizer.from_pretrained(resolve_model_path(name), trust_remote_code=trust_remote_code)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


@dataclass
class Policy:
    """The trainable model, its tokenizer, and how to get the KL reference."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    uses_lora: bool
    frozen_reference: PreTrainedModel | None = None  # only for full fine-tuning with KL

    @contextlib.contextmanager
    def reference(self) -> Iterator[PreTrainedModel]:
        """The reference policy: the same model with adapters disabled under LoRA (no second copy)."""
        if self.uses_lora:
            with self.model.disable_adapter():
                yield self.model
        elif self.frozen_reference is not None:
            yield self.frozen_reference
        else:
            raise RuntimeError("no reference model: full fine-tuning was loaded without keep_reference")

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]


def load_policy(cfg: ModelConfig, device: torch.device, dtype: torch.dtype, keep_reference: bool = False) -> Policy:
    """Load the policy as the recipe's `model` section says.

    4-bit: the base is quantised to NF4 by bitsandbytes with `bnb_compute_dtype`, frozen, and only
    LoRA adapters train (QLoRA). Full fine-tuning with `keep_reference` keeps a frozen copy for KL.
    """
    quiet_libraries()
    path = resolve_model_path(cfg.name)
    tokenizer = load_tokenizer(cfg.name, cfg.trust_remote_code)
    kwargs: dict = {"dtype": dtype, "trust_remote_code": cfg.trust_remote_code}
    if cfg.load_in_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=getattr(torch, cfg.bnb_compute_dtype),
            bnb_4bit_use_double_quant=False,
        )
        kwargs["device_map"] = {"": device}
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if not cfg.load_in_4bit:
        model.to(device)
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    frozen_reference = None
    if cfg.lora.enabled:
        from peft import LoraConfig, PeftModel, get_peft_model

        for p in model.parameters():
            p.requires_grad_(False)
        if cfg.gradient_checkpointing:
            model.enable_input_require_grads()
        if cfg.adapter:  # continue training an existing adapter (e.g. the previous phase's)
            model = PeftModel.from_pretrained(model, cfg.adapter, is_trainable=True)
        else:
            lora = LoraConfig(
                r=cfg.lora.r,
                lora_alpha=cfg.lora.alpha,
                lora_dropout=cfg.lora.dropout,
                target_modules=cfg.lora.target_modules,
                task_type="CAUSAL_LM",
            )
            model = get_peft_model(model, lora)
    elif keep_reference:
        frozen_reference = copy.deepcopy(model).eval()
        for p in frozen_reference.parameters():
            p.requires_grad_(False)
    return Policy(model=model, tokenizer=tokenizer, uses_lora=cfg.lora.enabled, frozen_reference=frozen_reference)
