"""Process rewards: a score per reasoning step, refined so that repeating good steps earns nothing (docs/methods.md).

A process reward model (PRM) scores each prefix of a solution. Summed over steps as an RL reward it is
hackable: a policy earns more by adding correct but unnecessary steps (Gao et al., "On Designing Effective
RL Reward at Training Time for LLM Reasoning", arXiv 2410.15115). Their two refinements bound the
return of any trajectory, and `process` implements both next to the naive sum.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, PrivateAttr, field_validator, model_validator

from rshape.batch import Batch
from rshape.registry import load_dotted
from rshape.rewards.base import REWARDS, RewardComponent, compiled_regex
from rshape.rewards.model import RewardModelReward
from rshape.tasks.base import Problem

COLUMN_STEP = re.compile(r"^\s*(\d+)\+(\d+)\+(\d+)=(\d+)\s*$")


def addition_step_scores(prompt: Any, steps: list[str], problem: Problem | None = None) -> list[float | None]:
    """The tiny world's programmatic PRM: 1.0 for a column step `x+y+c=s` whose arithmetic holds, 0.0 for one
    whose arithmetic is wrong, None (not a step) for any other line, e.g. `check:`."""
    scores: list[float | None] = []
    for step in steps:
        m = COLUMN_STEP.match(step)
        scores.append(None if m is None else float(int(m[1]) + int(m[2]) + int(m[3]) == int(m[4])))
    return scores


BUILTIN_SCORERS: dict[str, Callable[..., list[float | None]]] = {"addition_steps": addition_step_scores}


def refine_step_rewards(scores: list[float], refine: str, eta: float = 1.0) -> list[float]:
    """Per-step rewards r̃_1..r̃_K from step scores r_1..r_K (Gao et al. 2024, arXiv 2410.15115, §5):

        none:  r̃_k = r_k                                 (Σ grows with every extra step scored > 0)
        clip:  r̃_k = min(r_k − η, 0)                     (every step ≤ 0, so Σ ≤ 0: extra steps never add)
        delta: r̃_k = r_k − r_{k+1} for k < K,  r̃_K = 0  (Σ_{k≥t} r̃_k = r_t − r_K, bounded by the score range)
    """
    if refine == "none":
        return list(scores)
    if refine == "clip":
        return [min(r - eta, 0.0) for r in scores]
    if refine == "delta":
        return [scores[k] - scores[k + 1] for k in range(len(scores) - 1)] + ([0.0] if scores else [])
    raise ValueError(f"unknown refine {refine!r}; valid: none, clip, delta")


@REWARDS.register("process")
class ProcessReward(RewardComponent):
    """Process reward with Clip / Delta refinement (Gao et al., "On Designing Effective RL Reward at Training
    Time for LLM Reasoning", arXiv 2410.15115; docs/methods.md, abstract only — no public code, so the split into
    steps, the scorers and η's default are rshape's).

    Steps: the text matched by the first group of `region` (default the `<think>` block; the whole completion
    when it does not match) split by `step_pattern` (default: newlines), blank pieces dropped. The scorer gives
    each step k a score r_k of the prefix s_1..s_k, or None for a piece that is not a step (skipped). Then
    r̃ = refine(r) (see `refine_step_rewards`) and the completion's reward is the return from its first step,
    Σ_k r̃_k: `none` = Σ r_k (hackable by repetition), `clip` = Σ min(r_k − η, 0) ≤ 0, `delta` = r_1 − r_K.
    A completion without steps gets 0.

    Scorers: `addition_steps` (the tiny world: a column step is right or wrong), `rm` (a `rshape train-rm`
    model at `rm_path` scoring (prompt, prefix) — an outcome RM used on prefixes), or a dotted path to a
    function `(prompt, steps: list[str], problem) -> list[float | None]`, one score per step.

    rshape's advantages are per sequence, so the refined step rewards enter through their sum; the per-step
    credit assignment of the paper's PPO setting (where Delta gives each step the return r_t − r_K) is not
    implemented.
    """

    summary: ClassVar[str] = (
        'Σ over reasoning steps of refined step scores: steps = the `<think>` block split at newlines; '
        'r_k = score of the prefix up to step k from `scorer`; `none`: Σ r_k (pays for repeated good '
        'steps), `clip`: Σ min(r_k − η, 0) ≤ 0, `delta`: Σ (r_k − r_{k+1}), last 0, = r_1 − r_K; no '
        'steps → 0. With `combine: add` it enters the sequence reward; with `combine: per_step` each '
        'token gets the return of the steps from there on (`step_normalize` none, or group: '
        "DeepSeekMath's (r − mean)/std over the group's steps)"
    )
    source: ClassVar[str] = 'Clip / Delta: Gao et al., arXiv 2410.15115; process supervision: arXiv 2402.03300'

    has_step_rewards: ClassVar[bool] = True

    scorer: str = "addition_steps"
    """`addition_steps`, `rm`, or `package.module:function(prompt, steps, problem) -> list[float | None]`."""
    refine: Literal["none", "clip", "delta"] = "clip"
    """none (naive sum), clip (min(r − η, 0) per step) or delta (r_k − r_{k+1}, last step 0)."""
    eta: float = 1.0
    """clip: the threshold η; steps scored ≥ η add 0, worse ones add r − η < 0 (1.0 suits 0/1 step scores)."""
    region: str | None = r"<think>(.*?)(?:</think>|$)"
    """Regex whose first group is the reasoning to split into steps; None = the whole completion."""
    step_pattern: str = r"\n"
    """Regex separating steps."""
    rm_path: str | None = None
    """scorer rm: a `rshape train-rm` model directory."""
    rm_batch_size: int = Field(32, gt=0)
    """scorer rm: prefixes per RM forward pass."""
    step_normalize: Literal["none", "group"] = "none"
    """With `combine: per_step`: step rewards as they are (keeps Clip/Delta's bound), or normalised over the
    group's steps as in DeepSeekMath's process supervision (re-centring makes extra good steps pay again)."""

    _cache: dict = PrivateAttr(default_factory=dict)

    _compiles = field_validator("step_pattern")(classmethod(lambda cls, v: compiled_regex(v)))

    @field_validator("region")
    @classmethod
    def _check_region(cls, v: str | None) -> str | None:
        if v is not None and re.compile(compiled_regex(v)).groups < 1:
            raise ValueError("needs a capture group: the reasoning to split into steps")
        return v

    @model_validator(mode="after")
    def _checks(self) -> ProcessReward:
        if self.scorer == "rm" and not self.rm_path:
            raise ValueError("scorer rm needs rm_path (a `rshape train-rm` model directory)")
        if self.scorer not in BUILTIN_SCORERS and self.scorer != "rm" and ":" not in self.scorer and "." not in self.scorer:
            raise ValueError(f"unknown scorer {self.scorer!r}; valid: {', '.join(BUILTIN_SCORERS)}, rm, "
                             "or a dotted path package.module:function")
        return self

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["__pydantic_private__"] = {"_cache": {}}  # never pickle a loaded RM
        return state

    def step_spans(self, completion: str) -> list[tuple[int, int]]:
        """(start, end) character offsets in the completion of its reasoning steps (see the class docstring)."""
        base, text = 0, completion
        if self.region is not None and (m := re.search(self.region, completion, flags=re.DOTALL)):
            base, text = (m.start(1), m.group(1)) if m.group(1) is not None else (m.end(), "")
        spans, start = [], 0
        for sep in [*re.finditer(self.step_pattern, text), None]:
            end = sep.start() if sep is not None else len(text)
            if text[start:end].strip():
                spans.append((base + start, base + end))
            if sep is not None:
                start = sep.end()
        return spans

    def _score_fn(self) -> Callable[..., list[float | None]]:
        if self.scorer in BUILTIN_SCORERS:
            return BUILTIN_SCORERS[self.scorer]
        if self.scorer == "rm":
            return self._rm_scores
        if "fn" not in self._cache:
            self._cache["fn"] = load_dotted(self.scorer)
        return self._cache["fn"]

    def _rm_scores(self, prompt: Any, steps: list[str], problem: Problem | None = None) -> list[float]:
        if "rm" not in self._cache:
            self._cache["rm"] = RewardModelReward(path=self.rm_path, batch_size=self.rm_batch_size)
        prefixes = ["\n".join(steps[: k + 1]) for k in range(len(steps))]
        scores, _ = self._cache["rm"].score([prompt] * len(prefixes), prefixes)
        return scores.tolist()

    def scored_steps(self, prompt: Any, completion: str, problem: Problem | None) -> list[tuple[int, float]]:
        """(character offset where the step ends, score r_k) for each piece the scorer counts as a step."""
        spans = self.step_spans(completion)
        if not spans:
            return []
        steps = [completion[a:b] for a, b in spans]
        raw = self._score_fn()(prompt, steps, problem)
        if raw is None or len(raw) != len(steps):
            got = "None" if raw is None else f"{len(raw)} scores"
            raise ValueError(f"scorer {self.scorer!r} returned {got} for {len(steps)} steps")
        scored = [(end, float(r)) for (_, end), r in zip(spans, raw) if r is not None]
        if any(not math.isfinite(r) for _, r in scored):
            raise ValueError(f"scorer {self.scorer!r} returned a non-finite step score: {raw}")
        return scored

    def _batch_steps(self, batch: Batch) -> list[list[tuple[int, float]]]:
        """scored_steps of every completion, kept for the batch last seen (so step credit does not rescore)."""
        key = (tuple(map(str, batch.prompts)), tuple(batch.completions))
        if self._cache.get("batch_key") != key:
            self._cache["batch_steps"] = [self.scored_steps(p, c, pr)
                                          for p, c, pr in zip(batch.prompts, batch.completions, batch.problems)]
            self._cache["batch_key"] = key
        return self._cache["batch_steps"]

    def __call__(self, batch: Batch, **_: Any) -> torch.Tensor:
        return torch.tensor([sum(refine_step_rewards([r for _, r in steps], self.refine, self.eta))
                             for steps in self._batch_steps(batch)], dtype=torch.float64)

    def step_normalization(self) -> str:
        return self.step_normalize

    def step_rewards(self, batch: Batch, tokenizer: Any) -> list[list[tuple[int, float]]]:
        """For `combine: per_step`: (index of the step's last token, refined reward r̃_k) per completion."""
        out = []
        for steps, ids in zip(self._batch_steps(batch), batch.completion_ids):
            refined = refine_step_rewards([r for _, r in steps], self.refine, self.eta)
            out.append([(token_index_of_char(ids, tokenizer, end), r) for (end, _), r in zip(steps, refined)])
        return out


def token_index_of_char(ids: list[int], tokenizer: Any, char_end: int) -> int:
    """The index of the token that completes the first `char_end` characters of decode(ids): the smallest t
    with len(decode(ids[:t+1])) ≥ char_end (binary search; the last token if the text is shorter)."""
    lo, hi = 0, len(ids) - 1
    if hi < 0:
        return 0
    while lo < hi:
        mid = (lo + hi) // 2
        if len(tokenizer.decode(ids[: mid + 1], skip_special_tokens=False)) >= char_end:
            hi = mid
        else:
            lo = mid + 1
    return lo
