"""Reward-model rewards: a trained sequence-classification RM (or an ensemble) as a reward, with the
transforms of docs/methods.md (PAR, LSC, clip, z-score). Models come from `rshape train-rm` (rshape.rm).

The model is loaded lazily on the first call (so recipes validate without loading anything and the
component pickles without its weights), scored in batches without gradients on `device`. Reference
rewards for PAR/LSC are cached per (prompt, reference). `last_metrics()` returns what the last call saw
(raw reward mean/std, reference reward mean, member disagreement for ensembles) for the loop to log.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, PrivateAttr, model_validator

from rshape.batch import Batch
from rshape.registry import load_dotted
from rshape.rewards.base import REWARDS, RewardComponent
from rshape.tasks.base import Problem


@REWARDS.register("rm")
class RewardModelReward(RewardComponent):
    """A trained reward model's score of (prompt, completion), optionally transformed.

    raw:    r = RM(x, y); for an ensemble of K models r = mean_k r_k, min_k r_k, or mean_k r_k − k·std_k r_k
            (Helping or Herding; Reward-Robust RLHF; docs/methods.md), member disagreement = mean over samples of
            std_k r_k, logged through last_metrics().
    par:    r = (1/M) Σ_m σ(k·(RM(x, y) − RM(x, y_ref,m))) over M ≤ max_references reference responses (PAR, "Reward
            Shaping to Mitigate Reward Hacking in RLHF"; PorUna-byte/PAR `reward_shaper.py`, sigmoid_k = 1,
            reward_maxref = 10; without references the raw reward passes through, as there).
    lsc:    r = log σ(RM(x, y) − r_ref), r_ref = the 85th percentile of a normal fitted to all the references'
            rewards (max_references does not apply): mean + z_0.85·(s + 1e-5), s the sample std (n − 1; 0 for one
            reference), as PAR's `_shape_lsc` computes it ("Transforming and Combining Rewards").
    clip:   r = clip(RM(x, y), clip_low, clip_high) (On Designing Effective RL Reward; docs/methods.md).
    sigmoid / centered / tanh: PAR's other shapes (`reward_shaper.py`): σ(k·RM(x, y)); mean over the first
            max_references references of RM(x, y) − RM(x, y_ref,m); of tanh(RM(x, y) − RM(x, y_ref,m)).
    length_penalty: before the transform, RM(x, y) − length_penalty·(L − penalty_from) beyond penalty_from tokens
            (PAR's `reward_penalize_length`, gen_valid_len 300, len_penalty 0.01; PAR counts its response mask,
            rshape the tokens before EOS).
    zscore: r = (RM(x, y) − μ)/σ with μ, σ the mean/std saved by train-rm on its eval set (`zscore_stats: saved`,
            as OpenRLHF normalises) or running statistics over every batch so far (`running`: Chan's parallel
            update, then normalise, as PAR's RunningMeanStd; kept in state_dict for resume).

    References (PAR follows the paper: responses of the SFT / initial policy to the same prompt): in order,
    problem.meta[reference_key] (a string or a list of strings), else `reference_fn` (dotted path of a function
    Problem → str | list[str]; `rshape.rm.data:tiny_reference` gives the warm-start policy's full trace in the
    tiny world), else `reference_template` formatted with {answer} and {prompt} (the gold answer by default).
    docs/methods.md (RM rewards and transforms) and §7 (the RMs).
    """

    summary: ClassVar[str] = (
        'trained reward model score of (prompt, completion); transform raw / par: mean_m σ(k(r − '
        'r_ref,m)) / lsc: log σ(r − r_ref,85%) / clip / zscore; ensembles by mean, min or mean − k·std, '
        'member disagreement logged'
    )
    source: ClassVar[str] = 'PAR (PorUna-byte/PAR); LSC (Transforming and Combining Rewards)'

    path: str | None = None
    """Directory written by `rshape train-rm` (its model/): one RM, or an ensemble (ensemble.json)."""
    paths: list[str] | None = None
    """Several RM directories served as one ensemble reward (instead of `path`)."""
    aggregate: Literal["mean", "min", "mean_minus_std"] | None = None
    """Ensembles: how member rewards combine; None = the ensemble's saved choice (mean for `paths`)."""
    k: float | None = Field(None, ge=0)
    """Ensembles, mean_minus_std: r = mean − k·std; None = the saved k (1.0)."""
    transform: Literal["raw", "par", "lsc", "clip", "zscore", "sigmoid", "centered", "tanh"] = "raw"
    """raw, par, lsc, clip, zscore, or PAR's other shapes: sigmoid σ(k·r), centered mean_m (r − r_ref,m), tanh
    mean_m tanh(r − r_ref,m) (see above)."""
    length_penalty: float = Field(0.0, ge=0)
    """PAR's pre-transform length penalty: r ← r − length_penalty·(L − penalty_from) for L > penalty_from tokens,
    before any transform (PAR's scripts: 0.01 beyond 300, on by default there); 0 = off."""
    penalty_from: int = Field(300, ge=0)
    """Length (tokens) above which `length_penalty` applies (PAR's gen_valid_len)."""
    sigmoid_k: float = Field(1.0, gt=0)
    """PAR: slope k of σ(k·(r − r_ref)) (PAR code's sigmoid_k, default 1)."""
    max_references: int = Field(10, gt=0)
    """PAR: at most this many references per prompt (PAR code's reward_maxref, default 10); LSC uses them all."""
    reference_key: str = "references"
    """PAR / LSC: problem.meta column holding reference responses."""
    reference_fn: str | None = None
    """PAR / LSC: `package.module:function(problem) -> str | list[str]` giving references when the data has none."""
    reference_template: str | None = "{answer}"
    """PAR / LSC: last resort, a reference formatted with {answer} and {prompt}; None = require references."""
    percentile: float = Field(0.85, gt=0, lt=1)
    """LSC: the reference percentile r_ref (normal fit of the reference rewards)."""
    clip_low: float | None = None
    """clip: lower bound (None = unbounded)."""
    clip_high: float | None = None
    """clip: upper bound (None = unbounded)."""
    zscore_stats: Literal["saved", "running"] = "saved"
    """zscore: the mean/std saved by train-rm, or running statistics over training."""
    eps: float = Field(1e-8, gt=0)
    """zscore: floor of the std."""
    attribute_weights: list[float] | None = None
    """Multi-attribute (regression) RMs: weights of the head outputs; None = the saved ones (equal)."""
    device: str = "auto"
    """Where the RM runs: `auto` (cuda when present), `cpu`, `cuda:1`..."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """RM parameter dtype."""
    batch_size: int = Field(32, gt=0)
    """Sequences per RM forward pass."""

    _cache: dict = PrivateAttr(default_factory=dict)  # "scorer": the loaded model(s); "refs": {(prompt, text): reward}
    _running: dict = PrivateAttr(default_factory=lambda: {"count": 0, "mean": 0.0, "m2": 0.0})
    _last: dict = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _checks(self) -> RewardModelReward:
        if (self.path is None) == (self.paths is None):
            raise ValueError("give `path` (a train-rm model directory, one RM or an ensemble) or `paths` (several), "
                             "exactly one of them")
        if self.paths is not None and not self.paths:
            raise ValueError("paths: an empty list")
        if self.transform == "clip" and self.clip_low is None and self.clip_high is None:
            raise ValueError("transform clip needs clip_low and/or clip_high")
        if self.clip_low is not None and self.clip_high is not None and self.clip_low > self.clip_high:
            raise ValueError(f"clip_low ({self.clip_low}) must be ≤ clip_high ({self.clip_high})")
        return self

    # ----------------------------------------------------------------- pickling and state

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        private = dict(state.get("__pydantic_private__") or {})
        private["_cache"] = {}  # never pickle the weights; they reload lazily
        state["__pydantic_private__"] = private
        return state

    def state_dict(self) -> dict[str, Any]:
        return {"running": dict(self._running)} if self.transform == "zscore" and self.zscore_stats == "running" else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "running" in state:
            self._running.clear()
            self._running.update(state["running"])

    def last_metrics(self) -> dict[str, float]:
        """What the last call saw: raw_mean, raw_std, ref_mean (par/lsc), disagreement and member_<k>_mean
        (ensembles), running_mean/std (zscore running). Keys are meant to be logged as reward/<entry>/<key>."""
        return dict(self._last)

    # ----------------------------------------------------------------- scoring

    def scorer(self) -> Any:
        """The loaded RewardModel / EnsembleRM (loaded on first use)."""
        if "scorer" not in self._cache:
            from rshape.models import resolve_device
            from rshape.rm.modeling import EnsembleRM, RewardModelError, check_rm_dir, load_reward_model

            device = resolve_device(self.device)
            dtype = getattr(torch, self.dtype)
            if self.paths is not None:
                for p in self.paths:
                    if (problem := check_rm_dir(p)) is not None:
                        raise RewardModelError(problem)
                scorer = EnsembleRM.load_paths(self.paths, device, dtype)
            else:
                scorer = load_reward_model(self.path, device, dtype)
            if isinstance(scorer, EnsembleRM):
                scorer.aggregate = self.aggregate or scorer.aggregate
                scorer.k = scorer.k if self.k is None else self.k
            self._cache["scorer"] = scorer
            self._cache["refs"] = {}
        return self._cache["scorer"]

    def score(self, prompts: list[Any], completions: list[Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(reward [N], member rewards [K, N] or None) of raw RM scores, aggregated over ensemble members."""
        from rshape.rm.modeling import EnsembleRM, aggregate_members

        scorer = self.scorer()
        if isinstance(scorer, EnsembleRM):
            members = scorer.score_members(prompts, completions, self.batch_size, self.attribute_weights)
            return aggregate_members(members, scorer.aggregate, scorer.k), members
        return scorer.score(prompts, completions, self.batch_size, self.attribute_weights), None

    def references(self, problem: Problem, limit: bool = True) -> list[str]:
        """The problem's reference responses: the first `max_references` (all of them when not `limit`)."""
        refs = problem.meta.get(self.reference_key) if problem.meta else None
        if refs is None and self.reference_fn:
            refs = load_dotted(self.reference_fn)(problem)
        if refs is None and self.reference_template is not None:
            prompt = problem.prompt if isinstance(problem.prompt, str) else problem.prompt[-1]["content"]
            refs = self.reference_template.format(answer=problem.answer, prompt=prompt)
        if refs is None:
            return []
        refs = [refs] if isinstance(refs, str) else list(refs)
        return [str(r) for r in (refs[: self.max_references] if limit else refs)]

    def reference_rewards(self, batch: Batch) -> list[torch.Tensor]:
        """Per completion, the RM rewards of its prompt's references (cached by prompt and text)."""
        cache: dict = self._cache.setdefault("refs", {})
        per_row: list[list[tuple[Any, str]]] = []
        todo: dict[tuple[str, str], tuple[Any, str]] = {}
        for prompt, problem in zip(batch.prompts, batch.problems):
            keys = []
            for ref in self.references(problem, limit=self.transform != "lsc"):
                key = (repr(prompt), ref)
                keys.append(key)
                if key not in cache:
                    todo[key] = (prompt, ref)
            per_row.append(keys)
        if todo:
            items = list(todo.items())
            scores, _ = self.score([p for _, (p, _) in items], [r for _, (_, r) in items])
            for (key, _), s in zip(items, scores.tolist()):
                cache[key] = s
        return [torch.tensor([cache[k] for k in keys], dtype=torch.float64) for keys in per_row]

    def __call__(self, batch: Batch, **_: Any) -> torch.Tensor:
        r, members = self.score(list(batch.prompts), list(batch.completions))
        r = r.double()
        last: dict[str, float] = {"raw_mean": r.mean().item() if r.numel() else float("nan"),
                                  "raw_std": r.std(unbiased=False).item() if r.numel() else float("nan")}
        if members is not None:
            last["disagreement"] = members.double().std(0, unbiased=False).mean().item()
            for i, m in enumerate(members):
                last[f"member_{i}_mean"] = m.double().mean().item()
        if self.length_penalty > 0:  # PAR's pre-transform length penalty
            over = (batch.lengths.double() - self.penalty_from).clamp(min=0.0)
            r = r - self.length_penalty * over
        if self.transform == "raw":
            out = r
        elif self.transform == "sigmoid":
            out = torch.sigmoid(self.sigmoid_k * r)
        elif self.transform in ("par", "lsc", "centered", "tanh"):
            refs = self.reference_rewards(batch)
            flat = [x for t in refs for x in t.tolist()]
            last["ref_mean"] = sum(flat) / len(flat) if flat else float("nan")
            vals = []
            for ri, ref in zip(r.tolist(), refs):
                if ref.numel() == 0:
                    vals.append(ri)  # no reference: the raw reward passes through (PAR code)
                elif self.transform == "par":
                    vals.append(torch.sigmoid(self.sigmoid_k * (ri - ref)).mean().item())
                elif self.transform == "centered":
                    vals.append((ri - ref).mean().item())
                elif self.transform == "tanh":
                    vals.append(torch.tanh(ri - ref).mean().item())
                else:
                    std = ref.std() if ref.numel() > 1 else torch.tensor(0.0, dtype=torch.float64)  # sample std (n − 1)
                    r_ref = ref.mean() + NormalDist().inv_cdf(self.percentile) * (std + 1e-5)
                    vals.append(torch.nn.functional.logsigmoid(torch.tensor(ri, dtype=torch.float64) - r_ref).item())
            out = torch.tensor(vals, dtype=torch.float64)
        elif self.transform == "clip":
            out = r.clamp(min=self.clip_low, max=self.clip_high)
        else:  # zscore
            if self.zscore_stats == "saved":
                scorer = self.scorer()
                mean, std = scorer.mean, scorer.std
                if mean is None or std is None:
                    raise ValueError("zscore_stats saved: this reward model has no saved reward_mean/reward_std "
                                     "(an ensemble given by `paths`?); use zscore_stats: running")
            else:
                self._update_running(r)
                mean, std = self._running["mean"], math.sqrt(self._running["m2"] / self._running["count"])
                last["running_mean"], last["running_std"] = mean, std
            out = (r - mean) / max(std, self.eps)
        self._last.clear()
        self._last.update(last)
        return out.double()

    def _update_running(self, r: torch.Tensor) -> None:
        """Chan et al.'s parallel update of count, mean and M2 with a batch (population variance = M2/count)."""
        n_b = r.numel()
        if n_b == 0:
            return
        mean_b, var_b = r.mean().item(), r.var(unbiased=False).item()
        s = self._running
        n = s["count"]
        if n == 0:
            s.update(count=n_b, mean=mean_b, m2=var_b * n_b)
            return
        delta = mean_b - s["mean"]
        total = n + n_b
        s["mean"] += delta * n_b / total
        s["m2"] += var_b * n_b + delta * delta * n * n_b / total
        s["count"] = total
