"""Issue 13: ExchangeableFeatureDiscrepancy brings a site-balanced sampler the paper does not
have, so its gain must be read against SiteBalanced (Base with that sampler), not only Base.
A trainer names that arm in ``control_arm``; the leaderboard pairs the two case by case."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medseg_auto.experiments.methods_tables import control_arms, leaderboard, leaderboard_markdown
from medseg_auto.training.registry import get_trainer


def _per_case(shift: dict[str, float]) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    base = rng.uniform(0.3, 0.7, 20)
    rows = [{"arm": arm, "seed": seed, "test_set": "in_domain", "case": f"c{i}", "site": "all", "dice": value + delta}
            for arm, delta in shift.items() for seed in (0, 1, 2) for i, value in enumerate(base)]
    return pd.DataFrame(rows)


def test_exchangeable_feature_discrepancy_names_site_balanced_as_its_control():
    assert get_trainer("ExchangeableFeatureDiscrepancy").control_arm == "SiteBalanced"
    assert get_trainer("Base").control_arm is None
    assert control_arms(["Base", "SiteBalanced", "ExchangeableFeatureDiscrepancy", "Base-catenorm"]) == {
        "ExchangeableFeatureDiscrepancy": "SiteBalanced"}
    assert control_arms(["Base", "ExchangeableFeatureDiscrepancy"]) == {}  # the control did not run


def test_the_leaderboard_pairs_an_arm_with_its_control():
    arms = ["Base", "SiteBalanced", "ExchangeableFeatureDiscrepancy"]
    per_case = _per_case({"Base": 0.0, "SiteBalanced": 0.10, "ExchangeableFeatureDiscrepancy": 0.10})
    table = leaderboard(per_case, arms, control_arms(arms)).set_index("arm")
    exchangeable = table.loc["ExchangeableFeatureDiscrepancy"]
    assert exchangeable["diff_vs_base"] == pytest.approx(0.10)  # what Base alone would credit to the method
    assert exchangeable["control"] == "SiteBalanced" and exchangeable["diff_vs_control"] == pytest.approx(0.0)
    assert pd.isna(table.loc["SiteBalanced", "diff_vs_control"])
    markdown = leaderboard_markdown(table.reset_index(), {}, 9, 9, [])
    assert "## Against each method's control" in markdown
    assert "| ExchangeableFeatureDiscrepancy | SiteBalanced | in-domain | all | +0.000" in markdown
