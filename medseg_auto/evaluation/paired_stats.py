"""Paired statistics for comparing methods on the same cases: bootstrap CI and Holm correction.

Why these: a method benchmark compares every trainer with Base on the *same* test cases, so the
per-case difference removes the (large) between-case variance. The mean difference gets a
percentile bootstrap 95% confidence interval over cases (:func:`scipy.stats.bootstrap`, seeded so
tables are reproducible), the Wilcoxon signed-rank p-value comes from
:func:`medseg_auto.evaluation.compare.wilcoxon_paired` (one test in the whole tool), and the
p-values of all trainers against Base on one test set are Holm-corrected (step-down
Bonferroni: strong family-wise error control without assuming independence).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from medseg_auto.evaluation.compare import wilcoxon_paired

DEFAULT_RESAMPLES = 2000
DEFAULT_SEED = 0


def bootstrap_mean_ci(values: Sequence[float], confidence: float = 0.95, resamples: int = DEFAULT_RESAMPLES,
                      seed: int = DEFAULT_SEED) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean of ``values`` (1-D, NaN-free).

    One value (or all equal) gives the degenerate interval ``(v, v)``; no value gives NaNs."""
    array = np.asarray(values, dtype=float)
    if array.size == 0:
        return math.nan, math.nan
    if array.size == 1 or np.all(array == array[0]):
        return float(array[0]), float(array[0])
    result = stats.bootstrap((array,), np.mean, confidence_level=confidence, n_resamples=resamples,
                             method="percentile", random_state=np.random.default_rng(seed), vectorized=True)
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def holm_correction(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm-adjusted p-values in input order; ``None``/NaN entries stay ``None`` and do not count.

    Sorted ascending, the i-th (0-based) of m p-values becomes ``min(1, max_{j<=i} (m - j) p_j)``."""
    indexed = [(i, float(p)) for i, p in enumerate(p_values) if p is not None and not math.isnan(float(p))]
    adjusted: list[float | None] = [None] * len(p_values)
    m = len(indexed)
    running = 0.0
    for rank, (index, p) in enumerate(sorted(indexed, key=lambda item: item[1])):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[index] = running
    return adjusted


def paired_difference(base: pd.Series, other: pd.Series, seed: int = DEFAULT_SEED) -> dict[str, Any]:
    """``other - base`` on the cases both score (index = case id; NaN cases dropped).

    Returns ``n``, ``mean_difference``, ``ci_low``/``ci_high`` (bootstrap 95%) and the Wilcoxon
    ``p_value`` (None when every difference is zero or fewer than one pair exists)."""
    joined = pd.concat({"base": base, "other": other}, axis=1, join="inner").dropna()
    if joined.empty:
        return {"n": 0, "mean_difference": None, "ci_low": None, "ci_high": None, "p_value": None}
    differences = (joined["other"] - joined["base"]).to_numpy()
    low, high = bootstrap_mean_ci(differences, seed=seed)
    test = wilcoxon_paired(joined["base"], joined["other"])
    return {"n": int(len(differences)), "mean_difference": float(differences.mean()), "ci_low": low,
            "ci_high": high, "p_value": test["p_value"]}
