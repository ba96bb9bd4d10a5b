"""How sure a figure scaled from a spread sample is: its standard error, and the p5-p95 range from it.

A spread sample reads one window from each of K equal strata of the input, in order; a figure F (rows,
tokens, dollars) is estimated as the sum of the strata's estimates Y_1..Y_K (each: what the window read,
times stratum size / window size). One window per stratum gives no variance within a stratum, so the
variance of the sum comes from the differences between neighbouring strata (the successive-difference
estimator of systematic samples)::

    v = K / (2 (K - 1)) * sum_k (Y_k - Y_k+1)^2

For rows that change slowly along the input (a trend) the differences are small and so is v; where
neighbouring strata differ a lot (a filter that only bites in one part) v is wide, as it should be. The
range is the normal approximation, F -+ 1.645 sqrt(v): the 5th and 95th percentiles (a 90% range).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

Z_P95 = 1.6448536269514722
"""The 95th percentile of the standard normal: F +- Z_P95 * se spans p5-p95."""


def strata_se(totals: Sequence[float]) -> float | None:
    """The standard error of ``sum(totals)`` (one estimate per stratum, strata in input order), or None
    when one stratum alone leaves it unknown."""
    k = len(totals)
    if k < 2:
        return None
    squares = sum((a - b) ** 2 for a, b in itertools.pairwise(totals))
    return math.sqrt(k / (2 * (k - 1)) * squares)


def grouped_se(totals: Sequence[float], groups: Sequence[int]) -> float | None:
    """The standard error of ``sum(totals)`` when the strata come in groups (a folder's files, each cut
    into its own strata): differences are taken between neighbours of one group only, since rows of two
    files may differ for good. A group of one stratum borrows the relative variance of the pairs of the
    others; with no pair at all, every stratum counts as one group (``strata_se``)."""
    runs: dict[int, list[float]] = {}
    for total, group in zip(totals, groups, strict=True):
        runs.setdefault(group, []).append(total)
    pairs = [(a, b) for run in runs.values() for a, b in itertools.pairwise(run)]
    if not pairs:
        return strata_se(totals)
    relative = sum((a - b) ** 2 / (2 * ((a + b) / 2) ** 2) for a, b in pairs if a + b > 0) / len(pairs)
    variance = 0.0
    for run in runs.values():
        se = strata_se(run)
        variance += se**2 if se is not None else run[0] ** 2 * relative
    return math.sqrt(variance)


def p5_p95(
    expected: float, se: float, *, floor: float = 0.0, ceiling: float | None = None
) -> tuple[float, float]:
    """The p5-p95 range of a figure with standard error ``se``, kept within [floor, ceiling]."""
    low = max(floor, expected - Z_P95 * se)
    high = expected + Z_P95 * se
    if ceiling is not None:
        high = min(high, ceiling)
    return low, max(low, high)
