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
    if len(per_problem) == 1:
        return 0.0, 1.0
    _, low, high = clustered_mean([[x] for x in per_problem], z)
    return max(0.0, low), min(1.0, high)


def clustered_mean(clusters: list[list[float]], z: float = Z95) -> tuple[float, float, float]:
    """(mean, low, high): the mean of every value, R = Σy/Σm over clusters of sizes m, with a cluster-robust 95%
    interval R ± z·√(Σ((y_i − R·m_i)/m̄)² / (n(n − 1))) over the n non-empty clusters (the k samples of a problem
    are one cluster; with one value per cluster this is the usual mean ± z·s/√n). Empty → nan; one cluster → its
    mean, (nan, nan)."""
    clusters = [c for c in clusters if c]
    n = len(clusters)
    if n == 0:
        return math.nan, math.nan, math.nan
    sizes = [len(c) for c in clusters]
    sums = [sum(c) for c in clusters]
    mean = sum(sums) / sum(sizes)
    if n == 1:
        return mean, math.nan, math.nan
    m_bar = sum(sizes) / n
    var = sum(((y - mean * m) / m_bar) ** 2 for y, m in zip(sums, sizes)) / (n * (n - 1))
    half = z * math.sqrt(var)
    return mean, mean - half, mean + half


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 − C(n − c, k) / C(n, k) (Chen et al. 2021,
    arXiv 2107.03374); k ≤ n."""
    if not 1 <= k <= n:
        raise ValueError(f"pass@{k} needs 1 ≤ k ≤ n = {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)
