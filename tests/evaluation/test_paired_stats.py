"""Bootstrap CI and Holm correction on inputs with known answers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from medseg_auto.evaluation.paired_stats import bootstrap_mean_ci, holm_correction, paired_difference


def test_holm_matches_the_hand_computed_step_down():
    # sorted: 0.01 (x4 = 0.04), 0.02 (x3 = 0.06), 0.03 (x2 = 0.06 -> stays 0.06), 0.5 (x1 = 0.5)
    assert holm_correction([0.03, 0.5, 0.01, 0.02]) == pytest.approx([0.06, 0.5, 0.04, 0.06])


def test_holm_caps_at_one_keeps_order_and_skips_missing():
    adjusted = holm_correction([0.4, None, 0.3, float("nan")])
    assert adjusted[1] is None and adjusted[3] is None
    assert adjusted[0] == pytest.approx(0.6) and adjusted[2] == pytest.approx(0.6)  # 0.3 x 2, then max(0.6, 0.4)
    assert holm_correction([0.9, 0.8]) == pytest.approx([1.0, 1.0])


def test_bootstrap_ci_of_a_constant_is_the_constant_and_covers_the_mean():
    assert bootstrap_mean_ci([0.2, 0.2, 0.2]) == (0.2, 0.2)
    assert all(math.isnan(v) for v in bootstrap_mean_ci([]))
    values = np.random.default_rng(1).normal(0.05, 0.1, size=200)
    low, high = bootstrap_mean_ci(values)
    assert low < values.mean() < high
    standard_error = values.std(ddof=1) / math.sqrt(values.size)
    assert high - low == pytest.approx(2 * 1.96 * standard_error, rel=0.2)
    assert bootstrap_mean_ci(values) == (low, high)  # seeded: the same table twice


def test_paired_difference_pairs_by_case_and_drops_missing():
    base = pd.Series({"a": 0.5, "b": 0.6, "c": np.nan, "d": 0.7})
    other = pd.Series({"a": 0.6, "b": 0.7, "c": 0.9, "e": 0.1, "d": 0.8})
    result = paired_difference(base, other)
    assert result["n"] == 3 and result["mean_difference"] == pytest.approx(0.1)
    assert result["ci_low"] == pytest.approx(0.1) and result["ci_high"] == pytest.approx(0.1)
    assert result["p_value"] is not None and result["p_value"] < 0.3
    assert paired_difference(pd.Series({"a": 0.5}), pd.Series({"b": 0.5}))["n"] == 0
