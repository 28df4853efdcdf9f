"""Small statistics shared by evaluation, figures and reproductions: Student-t quantiles, binomial intervals."""

from __future__ import annotations

import math

# Two-sided 97.5% quantiles of Student's t for 1..30 degrees of freedom (beyond: 1.96).
T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def t975(dof: int) -> float:
    """The 97.5% quantile of Student's t with `dof` ≥ 1 degrees of freedom (1.96 beyond 30)."""
    return T975[dof - 1] if 1 <= dof <= len(T975) else 1.96


Z95 = 1.959963984540054


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion p̂ = successes / n:
    (p̂ + z²/2n ± z·√(p̂(1−p̂)/n + z²/4n²)) / (1 + z²/n). n = 0 → (nan, nan). Wilson, JASA 1927."""
    if n <= 0:
        return math.nan, math.nan
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def cluster_interval(per_problem: list[float], z: float = Z95) -> tuple[float, float]:
    """95% interval of avg@k: mean of per-problem accuracies ± z·(sample std / √n), clipped to [0, 1].
    The k samples of one problem are correlated, so the problem (not the sample) is the unit."""
    n = len(per_problem)
    if n == 0:
        return math.nan, math.nan
    mean = sum(per_problem) / n
    if n == 1:
        return 0.0, 1.0
    sd = math.sqrt(sum((x - mean) ** 2 for x in per_problem) / (n - 1))
    return max(0.0, mean - z * sd / math.sqrt(n)), min(1.0, mean + z * sd / math.sqrt(n))
