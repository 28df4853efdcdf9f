"""Reward-model evaluation metrics as pure functions of scores (docs/methods.md).

- pairwise accuracy: share of non-tie pairs with r_c > r_r (a tie in score counts ½), overall and per category;
- length bias: Pearson and Spearman correlation of reward with response length (tokens), over every
  response of the set; accuracy on pairs whose chosen response is the shorter vs the longer one;
- calibration: expected calibration error of p = σ(r_c − r_r) as a prediction of which response is
  preferred: confidence c = max(p, 1 − p), right = p > ½; ECE = Σ_b (n_b/N)·|acc_b − conf_b| over 10 equal
  bins of c in [½, 1] (the standard ECE of a binary classifier, Guo et al. 2017);
- best-of-N: per prompt, the RM's pick among the first n samples; accuracy = the verifier's verdict of the
  pick, beside the mean accuracy (a random pick) and pass@n (an oracle pick).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def pairwise_accuracy(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> float:
    """Share of pairs with r_c > r_r; equal scores count ½; NaN for no pairs."""
    if r_chosen.numel() == 0:
        return float("nan")
    d = r_chosen.double() - r_rejected.double()
    return ((d > 0).double() + 0.5 * (d == 0).double()).mean().item()


def pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x.double(), y.double()
    if x.numel() < 2:
        return float("nan")
    xc, yc = x - x.mean(), y - y.mean()
    den = (xc.pow(2).sum() * yc.pow(2).sum()).sqrt()
    return (xc * yc).sum().div(den).item() if den > 0 else float("nan")


def ranks(x: torch.Tensor) -> torch.Tensor:
    """1-based ranks with ties given their average rank."""
    x = x.double()
    order = torch.argsort(x, stable=True)
    r = torch.empty_like(x)
    r[order] = torch.arange(1, x.numel() + 1, dtype=torch.float64)
    values = x[order]
    i = 0
    n = x.numel()
    while i < n:
        j = i
        while j + 1 < n and values[j + 1] == values[i]:
            j += 1
        if j > i:
            r[order[i: j + 1]] = (i + j + 2) / 2.0
        i = j + 1
    return r


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    return pearson(ranks(x), ranks(y))


def calibration(r_chosen: torch.Tensor, r_rejected: torch.Tensor, bins: int = 10) -> tuple[float, list[dict[str, float]]]:
    """(ECE, per-bin table) of σ(r_c − r_r); see the module docstring."""
    if r_chosen.numel() == 0:
        return float("nan"), []
    p = torch.sigmoid(r_chosen.double() - r_rejected.double())
    conf = torch.maximum(p, 1 - p)
    right = (p > 0.5).double() + 0.5 * (p == 0.5).double()
    idx = ((conf - 0.5) / 0.5 * bins).floor().clamp(0, bins - 1).long()
    ece, table = 0.0, []
    n = p.numel()
    for b in range(bins):
        sel = idx == b
        k = int(sel.sum())
        lo, hi = 0.5 + 0.5 * b / bins, 0.5 + 0.5 * (b + 1) / bins
        if k == 0:
            table.append({"lo": lo, "hi": hi, "n": 0, "confidence": float("nan"), "accuracy": float("nan")})
            continue
        c, a = conf[sel].mean().item(), right[sel].mean().item()
        ece += k / n * abs(a - c)
        table.append({"lo": lo, "hi": hi, "n": k, "confidence": c, "accuracy": a})
    return ece, table


def preference_metrics(r_chosen: torch.Tensor, r_rejected: torch.Tensor, len_chosen: Sequence[int] | torch.Tensor,
                       len_rejected: Sequence[int] | torch.Tensor, categories: Sequence[str | None] | None = None,
                       ties: Sequence[bool] | torch.Tensor | None = None, bins: int = 10) -> dict[str, float | list]:
    """Every pairwise metric of one scored preference set (all inputs are per pair, [P])."""
    rc, rr = r_chosen.double().reshape(-1), r_rejected.double().reshape(-1)
    P = rc.numel()
    lc = torch.as_tensor(list(len_chosen), dtype=torch.float64)
    lr = torch.as_tensor(list(len_rejected), dtype=torch.float64)
    tie = torch.zeros(P, dtype=torch.bool) if ties is None else torch.as_tensor(list(ties), dtype=torch.bool)
    cats = list(categories) if categories is not None else [None] * P
    pref = ~tie
    out: dict[str, float | list] = {"pairs": int(pref.sum()), "accuracy": pairwise_accuracy(rc[pref], rr[pref])}
    d = rc - rr
    out["margin_mean"] = d[pref].mean().item() if pref.any() else float("nan")
    for cat in sorted({c for c in cats if c is not None}):
        sel = torch.tensor([c == cat for c in cats]) & pref
        if sel.any():
            out[f"accuracy/{cat}"] = pairwise_accuracy(rc[sel], rr[sel])
            out[f"pairs/{cat}"] = int(sel.sum())
    if tie.any():
        out["ties"] = int(tie.sum())
        out["ties/mean_abs_diff"] = d[tie].abs().mean().item()
        out["ties/mean_p"] = torch.sigmoid(d[tie].abs()).mean().item()  # 0.5 = perfectly tied
    # length bias over every response of the set
    rewards = torch.cat([rc, rr])
    lengths = torch.cat([lc, lr])
    out["length/pearson"] = pearson(rewards, lengths)
    out["length/spearman"] = spearman(rewards, lengths)
    shorter = pref & (lc < lr)
    longer = pref & (lc > lr)
    out["length/accuracy_chosen_shorter"] = pairwise_accuracy(rc[shorter], rr[shorter])
    out["length/pairs_chosen_shorter"] = int(shorter.sum())
    out["length/accuracy_chosen_longer"] = pairwise_accuracy(rc[longer], rr[longer])
    out["length/pairs_chosen_longer"] = int(longer.sum())
    ece, table = calibration(rc[pref], rr[pref], bins)
    out["calibration/ece"] = ece
    out["calibration/bins"] = table
    out["reward/mean"] = rewards.mean().item() if P else float("nan")
    out["reward/std"] = rewards.std(unbiased=False).item() if P else float("nan")
    return out


def regression_metrics(pred: torch.Tensor, target: torch.Tensor, names: Sequence[str],
                       lengths: Sequence[int] | torch.Tensor, scalar: torch.Tensor) -> dict[str, float]:
    """Scored data: MSE and Pearson per attribute (rated entries only), length bias of the scalar reward."""
    out: dict[str, float] = {}
    for a, name in enumerate(names):
        rated = ~torch.isnan(target[:, a])
        if rated.any():
            err = pred[rated, a].double() - target[rated, a].double()
            out[f"mse/{name}"] = err.pow(2).mean().item()
            out[f"pearson/{name}"] = pearson(pred[rated, a], target[rated, a])
    rated = ~torch.isnan(target)
    out["mse"] = ((pred.double() - target.double().nan_to_num(0)).pow(2) * rated).sum().item() / max(1, int(rated.sum()))
    lengths = torch.as_tensor(list(lengths), dtype=torch.float64)
    out["length/pearson"] = pearson(scalar, lengths)
    out["length/spearman"] = spearman(scalar, lengths)
    out["reward/mean"] = scalar.double().mean().item()
    out["reward/std"] = scalar.double().std(unbiased=False).item()
    return out


def best_of_n_curve(rewards: torch.Tensor, correct: torch.Tensor, ns: Sequence[int] | None = None) -> list[dict[str, float]]:
    """rewards, correct: [P, N] (prompt-major). For each n: the verifier accuracy of the RM's pick among the first
    n samples of every prompt (first index wins ties), the mean accuracy of those n samples (a random pick) and
    pass@n (an oracle pick)."""
    P, N = rewards.shape
    if ns is None:
        ns = sorted({*(2**i for i in range(int(math.log2(N)) + 1)), N})
    out = []
    for n in ns:
        r, c = rewards[:, :n], correct[:, :n].double()
        pick = r.argmax(dim=1)
        out.append({"n": int(n), "accuracy": c[torch.arange(P), pick].mean().item(), "mean": c.mean().item(),
                    "oracle": c.max(dim=1).values.mean().item()})
    return out
