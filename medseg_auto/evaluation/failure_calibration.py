"""Learn a fold's failure rule (:mod:`medseg_auto.inference.failure_rule`) from its own final
validation: the cases the model never trained on, with their Dice and their uncertainty signals.

The rule: of the signals every validation case has, the one whose AUROC for failure (Dice below
:data:`~medseg_auto.inference.uncertainty.FAILURE_DICE`) is highest, flagged above the value
that maximises Youden's J (sensitivity + specificity - 1) on those cases. Both choices need
failures and successes to learn from: with fewer than :data:`MIN_OUTCOMES` of either (a model
that fails on nothing it validates on) the fixed default is kept and the file says why. Written
by hand: scikit-learn's ``roc_curve`` gives the candidate thresholds but neither the choice
between signals nor the rule file; the AUROC itself is scikit-learn's.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from medseg_auto.evaluation.failure_prediction import case_dice, failure_auroc
from medseg_auto.inference.failure_rule import DEFAULT_RULE, FAILURE_RULE_FILE, FailureRule
from medseg_auto.inference.uncertainty import DEFAULT_SIGNAL, FAILURE_DICE, SIGNALS_FILE, UNCERTAINTY_SIGNALS
from medseg_auto.utils.atomic import write_json_atomic
from medseg_auto.utils.logging_setup import get_logger

MIN_OUTCOMES = 5  # failed and successful validation cases each, to choose a signal and a threshold

log = get_logger("evaluation.failure_calibration")


def youden_threshold(scores: np.ndarray, failed: np.ndarray) -> float:
    """The threshold ``t`` (flag ``score > t``) with the largest sensitivity + specificity over
    ``scores (N,)`` and the outcomes ``failed (N,) bool``: halfway between the best cut's score
    and the next larger one (a new case is as likely to fall on either side of the gap); the
    lowest cut on ties."""
    values = np.unique(scores)  # ascending
    best_j, best_index = -np.inf, len(values) - 1
    for index, value in enumerate(values):
        flagged = scores > value
        j = flagged[failed].mean() - flagged[~failed].mean()
        if j > best_j + 1e-12:
            best_j, best_index = j, index
    if best_index + 1 < len(values):
        return float((values[best_index] + values[best_index + 1]) / 2)
    return float(values[best_index])


def flag_rates(flagged: np.ndarray, failed: np.ndarray) -> dict[str, float]:
    """Sensitivity (failed cases flagged), specificity (good cases not flagged) and their mean,
    the balanced accuracy, of ``flagged (N,) bool`` against ``failed (N,) bool``; NaN where an
    outcome is absent."""
    sensitivity = float(flagged[failed].mean()) if failed.any() else math.nan
    specificity = float((~flagged[~failed]).mean()) if (~failed).any() else math.nan
    return {"sensitivity": sensitivity, "specificity": specificity,
            "balanced_accuracy": (sensitivity + specificity) / 2}


def calibrate(signals: pd.DataFrame, dice: Mapping[str, float], failure_dice: float = FAILURE_DICE) -> FailureRule:
    """The rule learned from ``signals`` (one row per case: ``case_id`` and signal columns) and
    the cases' foreground ``dice``; :data:`DEFAULT_RULE` (with the reason) when it cannot be."""
    cases = signals.assign(dice=signals["case_id"].astype(str).map(dict(dice))).dropna(subset=["dice"])
    failed = cases["dice"].to_numpy(dtype=float) < failure_dice
    counts = {"cases": int(len(cases)), "failed": int(failed.sum()), "failure_dice": failure_dice}
    if failed.sum() < MIN_OUTCOMES or (~failed).sum() < MIN_OUTCOMES:
        why = (f"{counts['failed']} of {counts['cases']} validation cases failed (Dice < {failure_dice}): fewer than "
               f"{MIN_OUTCOMES} failures or successes to learn a rule from; the fixed default is used")
        return FailureRule(DEFAULT_RULE.signal, DEFAULT_RULE.threshold, "default", {**counts, "why": why})
    aurocs = {}
    for name in UNCERTAINTY_SIGNALS:
        values = pd.to_numeric(cases.get(name), errors="coerce") if name in cases else None
        if values is not None and values.notna().all():
            aurocs[name] = failure_auroc(values.to_numpy(), cases["dice"].to_numpy(), failure_dice)
    usable = {name: value for name, value in aurocs.items() if value is not None}
    if not usable:
        return FailureRule(DEFAULT_RULE.signal, DEFAULT_RULE.threshold, "default",
                           {**counts, "why": "no signal was computed for every validation case"})
    # the best AUROC; the default signal wins ties, then the order of UNCERTAINTY_SIGNALS
    signal = max(usable, key=lambda name: (round(usable[name], 6), name == DEFAULT_SIGNAL))
    scores = pd.to_numeric(cases[signal]).to_numpy(dtype=float)
    threshold = youden_threshold(scores, failed)
    rates = flag_rates(scores > threshold, failed)
    details = {**counts, "auroc": {name: round(value, 4) for name, value in usable.items()},
               "sensitivity": round(rates["sensitivity"], 4), "specificity": round(rates["specificity"], 4),
               "learned_from": "the fold's validation cases (final validation)"}
    return FailureRule(signal, threshold, "calibrated", details)


def calibrate_validation_folder(validation_folder: Path, fold_folder: Path) -> FailureRule:
    """Learn the rule from ``validation_folder/{failure_signals.csv, metrics.csv}`` and write it to
    ``fold_folder/failure_rule.json`` (atomically); returns it."""
    signals = pd.read_csv(Path(validation_folder) / SIGNALS_FILE, dtype={"case_id": str})
    metrics = pd.read_csv(Path(validation_folder) / "metrics.csv", dtype={"case": str})
    rule = calibrate(signals, case_dice(metrics).to_dict())
    write_json_atomic(Path(fold_folder) / FAILURE_RULE_FILE, rule.to_json())
    if rule.source == "calibrated":
        log.info("failure rule: %s > %.4g (AUROC %.2f on %d validation cases, %d failed)", rule.signal,
                 rule.threshold, rule.details["auroc"][rule.signal], rule.details["cases"], rule.details["failed"])
    else:
        log.info("failure rule: the default %s > %g (%s)", rule.signal, rule.threshold, rule.details.get("why"))
    return rule
