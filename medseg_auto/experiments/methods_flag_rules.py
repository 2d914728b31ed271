"""Does a model's own failure rule flag the right external cases? The benchmark's check of
:mod:`medseg_auto.evaluation.failure_calibration` against the fixed default rule.

Per cell (arm and seed) the rule is learned from the in-domain test cases, as training learns it
from the validation cases, and applied to every external set the cell never saw; the fixed
default (:data:`~medseg_auto.inference.failure_rule.DEFAULT_RULE`) is applied to the same cases.
For each rule: sensitivity (failed cases flagged), specificity (good cases left alone) and their
mean, the balanced accuracy (0.5: a rule that flags all or nothing). The in-domain set itself is
not scored: the learned rule would be judged on the cases it was fitted to. The ``all`` row
pairs the two rules over every cell and external set (Wilcoxon signed-rank test of the balanced
accuracies).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import pandas as pd

from medseg_auto.evaluation.failure_calibration import calibrate, flag_rates
from medseg_auto.evaluation.failure_prediction import FAILURE_DICE
from medseg_auto.experiments.methods_failure import CELL_SIGNALS, IN_DOMAIN
from medseg_auto.inference.failure_rule import DEFAULT_RULE, FailureRule

RULES = ("learned", "default")


def rule_scores(cases: pd.DataFrame, rule: FailureRule) -> dict[str, float]:
    """Sensitivity, specificity and balanced accuracy of ``rule`` on ``cases`` (``dice`` and the
    signal columns); NaN where the rule's signal is missing or an outcome is absent."""
    if rule.signal not in cases or cases[rule.signal].isna().any():
        return {"sensitivity": math.nan, "specificity": math.nan, "balanced_accuracy": math.nan}
    return flag_rates(cases[rule.signal].to_numpy(dtype=float) > rule.threshold,
                      cases["dice"].to_numpy(dtype=float) < FAILURE_DICE)


def per_cell_rows(signals: pd.DataFrame) -> pd.DataFrame:
    """One row per arm, seed, external set and rule (see the module docstring); ``signals`` is
    :func:`~.methods_failure.signal_frame`'s table. Cells without signals are left out."""
    rows: list[dict[str, Any]] = []
    with_signals = signals[signals["has_signals"].astype(bool)] if not signals.empty else signals
    for (arm, seed), cell in with_signals.groupby(["arm", "seed"], sort=False):
        in_domain = cell[cell["test_set"] == IN_DOMAIN]
        if in_domain.empty:
            continue
        learned = calibrate(in_domain.rename(columns={"case": "case_id"})[["case_id", *CELL_SIGNALS]],
                            dict(zip(in_domain["case"].astype(str), in_domain["dice"])))
        for test_set, cases in cell[cell["test_set"] != IN_DOMAIN].groupby("test_set", sort=True):
            for name, rule in (("learned", learned), ("default", DEFAULT_RULE)):
                rows.append({"arm": arm, "seed": seed, "test_set": test_set, "rule": name, "signal": rule.signal,
                             "threshold": rule.threshold, "calibrated": rule.source == "calibrated",
                             **rule_scores(cases, rule)})
    return pd.DataFrame(rows)


def flag_rule_table(signals: pd.DataFrame, arms: Sequence[str]) -> pd.DataFrame:
    """Per arm and external set (and ``all``): mean over seeds of each rule's sensitivity,
    specificity and balanced accuracy, the learned rules' signals, and for ``all`` the paired
    Wilcoxon p-value of learned against default balanced accuracy."""
    cells = per_cell_rows(signals)
    if cells.empty:
        return pd.DataFrame()
    rows = []
    groups = [((arm, test_set), group) for (arm, test_set), group in cells.groupby(["arm", "test_set"], sort=False)]
    order = {arm: index for index, arm in enumerate(arms)}
    groups.sort(key=lambda item: (item[0][1], order.get(item[0][0], len(order))))
    for (arm, test_set), group in [*groups, (("all", "all"), cells)]:
        row: dict[str, Any] = {"arm": arm, "test_set": test_set,
                               "n_cells": int(group[["arm", "seed", "test_set"]].drop_duplicates().shape[0])}
        for rule in RULES:
            part = group[group["rule"] == rule]
            for metric in ("sensitivity", "specificity", "balanced_accuracy"):
                row[f"{rule}_{metric}"] = float(part[metric].mean()) if part[metric].notna().any() else math.nan
        learned = group[group["rule"] == "learned"]
        row["learned_signals"] = ", ".join(f"{name} ({count})" for name, count in
                                           learned["signal"].value_counts().items())
        row["wilcoxon_p"] = _paired_p(group) if arm == "all" else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def _paired_p(cells: pd.DataFrame) -> float:
    from scipy.stats import wilcoxon

    keys = ["arm", "seed", "test_set"]
    paired = cells.pivot_table(index=keys, columns="rule", values="balanced_accuracy").dropna()
    differences = (paired.get("learned", pd.Series(dtype=float)) - paired.get("default", pd.Series(dtype=float)))
    if len(differences) < 2 or np.allclose(differences, 0):
        return math.nan
    return float(wilcoxon(differences).pvalue)


def flag_rule_note() -> str:
    """What the flag-rule table shows (Markdown and HTML share it)."""
    return (f"Per cell the rule `predict` applies (the signal with the best AUROC, flagged above the Youden-optimal "
            f"value) is learned from the in-domain test cases and applied to each external set; the fixed default is "
            f"`{DEFAULT_RULE.signal} > {DEFAULT_RULE.threshold}`. Sensitivity: failed cases (Dice < {FAILURE_DICE}) "
            "flagged; specificity: good cases not flagged; balanced accuracy: their mean (0.5: flags all or none). "
            "Means over seeds; `all`: every cell and set, paired Wilcoxon p of the balanced accuracies.")


def flag_rule_rows(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Header and text rows of the flag-rule table."""
    header = ["arm", "external set", "cells", "learned: sens / spec / bal. acc.", "default: sens / spec / bal. acc.",
              "learned signals", "p"]
    rows = []
    for row in table.to_dict("records"):
        scores = {rule: " / ".join(_number(row[f"{rule}_{metric}"]) for metric in
                                   ("sensitivity", "specificity", "balanced_accuracy")) for rule in RULES}
        p = "" if math.isnan(row["wilcoxon_p"]) else f"{row['wilcoxon_p']:.2g}"
        rows.append([str(row["arm"]), str(row["test_set"]), str(row["n_cells"]), scores["learned"], scores["default"],
                     str(row["learned_signals"]), p])
    return header, rows


def flag_rule_markdown(table: pd.DataFrame) -> list[str]:
    """The Markdown section (lines) of the flag-rule table; empty without rows."""
    if table.empty:
        return []
    header, rows = flag_rule_rows(table)
    lines = ["", "## Which cases fail: the learned flag rule against the fixed default", "", flag_rule_note(), "",
             "| " + " | ".join(header) + " |", "|---|---|---:|---:|---:|---|---:|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _number(value: float) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.2f}"
