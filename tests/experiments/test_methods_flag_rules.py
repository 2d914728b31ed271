"""The benchmark's check of the learned failure rule against the fixed default
(experiments/methods_flag_rules.py), on signal tables shaped like signal_frame's."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from medseg_auto.experiments.methods_flag_rules import flag_rule_markdown, flag_rule_table, per_cell_rows


def _set(arm: str, seed: int, test_set: str, n: int, rng: np.random.Generator) -> pd.DataFrame:
    """Half the cases fail; entropy_foreground separates them, mirror_disagreement stays below
    the default threshold (0.3), so the default flags nothing."""
    failed = np.arange(n) < n // 2
    return pd.DataFrame({
        "arm": arm, "seed": seed, "test_set": test_set, "case": [f"{test_set}_{i}" for i in range(n)],
        "dice": np.where(failed, 0.1, 0.9), "has_signals": True, "ood_score": np.nan,
        "entropy_image": rng.uniform(0, 1, n), "entropy_foreground": np.where(failed, 0.8, 0.2) + rng.normal(0, 0.02, n),
        "soft_dice_deficit": rng.uniform(0, 1, n), "mirror_disagreement": rng.uniform(0, 0.2, n)})


def _signals() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    frames = [_set(arm, seed, name, 16, rng) for arm in ("Base", "Other") for seed in (0, 1, 2)
              for name in ("in_domain", "EXT")]
    return pd.concat(frames, ignore_index=True)


def test_the_rule_learned_in_domain_flags_the_external_failures():
    cells = per_cell_rows(_signals())
    learned = cells[cells["rule"] == "learned"]
    assert set(learned["signal"]) == {"entropy_foreground"} and learned["calibrated"].all()
    assert (learned["balanced_accuracy"] == 1.0).all()
    default = cells[cells["rule"] == "default"]
    assert (default["sensitivity"] == 0.0).all() and (default["balanced_accuracy"] == 0.5).all()
    assert "in_domain" not in set(cells["test_set"])  # never judged on the cases it was learned from


def test_table_pairs_the_rules_over_every_cell():
    table = flag_rule_table(_signals(), ["Base", "Other"])
    assert list(table["arm"]) == ["Base", "Other", "all"]
    overall = table[table["arm"] == "all"].iloc[0]
    assert overall["n_cells"] == 6 and overall["learned_balanced_accuracy"] == 1.0
    assert overall["wilcoxon_p"] < 0.05
    assert math.isnan(table.iloc[0]["wilcoxon_p"])
    lines = flag_rule_markdown(table)
    assert any(line.startswith("| all | all | 6 | 1.00 / 1.00 / 1.00 | 0.00 / 1.00 / 0.50 |") for line in lines)


def test_cells_without_signals_or_external_sets_give_no_rows():
    signals = _signals()
    signals["has_signals"] = False
    assert flag_rule_table(signals, ["Base"]).empty
    assert flag_rule_table(_signals().query("test_set == 'in_domain'"), ["Base"]).empty


def test_html_page_shows_the_flag_rule_table(tmp_path):
    from medseg_auto.experiments.methods_html import write_leaderboard_html

    table = flag_rule_table(_signals(), ["Base", "Other"])
    write_leaderboard_html(tmp_path / "leaderboard.html", pd.DataFrame(), pd.DataFrame(), ["- settings"],
                           ["Base", "Other"], flags=table)
    page = (tmp_path / "leaderboard.html").read_text()
    assert "learned flag rule against the fixed default" in page and "1.00 / 1.00 / 1.00" in page
