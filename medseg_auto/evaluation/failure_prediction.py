"""How well a per-case score predicts that a segmentation fails, per site.

A case *fails* when its foreground Dice is below :data:`FAILURE_DICE` (0.5): the mean Dice
over the foreground classes scored in it; a case whose reference and prediction are both
empty (nothing to find, nothing found) counts as Dice 1, one with only a false-positive or a
missed structure as 0 (``evaluation/metrics.py`` conventions). For every score column
(``predict``'s ``ood_scores.csv``: ``ood_score`` and the uncertainty signals of
``inference/uncertainty.py``) the report gives the AUROC of the score for failure (1: every
failed case scores above every good one; 0.5: chance; ``None`` when a set has no failure or
no success), and per site the share of cases flagged and the share that failed, so that a
flag rate can be read against the failure rate it should track.

AUROC is ``sklearn.metrics.roc_auc_score`` (ties count one half).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

FAILURE_DICE = 0.5
ALL_SITES = "all"
METRICS_CSV = "metrics.csv"
SCORES_CSV = "ood_scores.csv"
NOT_SCORES = {"case_id", "case", "site", "dice", "failed", "flagged", "threshold", "failure_flagged",
              "failure_threshold", "set"}


def case_dice(metrics: pd.DataFrame) -> pd.Series:
    """Foreground Dice per case from an evaluation's ``metrics.csv`` table (one row per case and
    class): the nan-mean over its classes, 1.0 where every class is empty in both."""
    dice = pd.to_numeric(metrics["dice"], errors="coerce")
    per_case = dice.groupby(metrics["case"].astype(str)).mean()
    return per_case.fillna(1.0).rename("dice")


def failure_auroc(scores: Sequence[float], dice: Sequence[float], failure_dice: float = FAILURE_DICE) -> float | None:
    """AUROC of ``scores`` (larger = worse) for ``dice < failure_dice``; None without both outcomes
    or without finite scores."""
    from sklearn.metrics import roc_auc_score

    scores_array = np.asarray(scores, dtype=np.float64)
    failed = np.asarray(dice, dtype=np.float64) < failure_dice
    keep = np.isfinite(scores_array)
    if keep.sum() < 2 or failed[keep].all() or not failed[keep].any():
        return None
    return float(roc_auc_score(failed[keep], scores_array[keep]))


def score_columns(cases: pd.DataFrame) -> list[str]:
    """The numeric columns of ``cases`` that are scores (not ids, Dice or flags)."""
    return [column for column in cases.columns if column not in NOT_SCORES
            and pd.to_numeric(cases[column], errors="coerce").notna().any()]


def failure_table(cases: pd.DataFrame, scores: Iterable[str] | None = None,
                  failure_dice: float = FAILURE_DICE) -> pd.DataFrame:
    """One row per site (and ``all``): cases, failures, failure rate, flagged rate (where a
    ``flagged`` column exists) and one ``auroc_<score>`` column per score.

    ``cases`` has ``dice``, ``site`` (optional) and the score columns, one row per case."""
    cases = cases.copy()
    if "site" not in cases:
        cases["site"] = ALL_SITES
    cases["site"] = cases["site"].fillna("(none)").astype(str)
    chosen = list(scores) if scores is not None else score_columns(cases)
    groups = [(ALL_SITES, cases)] + ([] if cases["site"].nunique() == 1 and cases["site"].iloc[0] == ALL_SITES
                                      else [(site, group) for site, group in cases.groupby("site", sort=True)])
    rows = []
    for site, group in groups:
        dice = group["dice"].astype(float)
        row: dict[str, Any] = {"site": site, "cases": len(group), "failures": int((dice < failure_dice).sum()),
                               "failure_rate": round(float((dice < failure_dice).mean()), 4),
                               "mean_dice": round(float(dice.mean()), 4)}
        for flag in ("flagged", "failure_flagged"):
            if flag in group:
                flags = pd.to_numeric(group[flag], errors="coerce")
                row[f"{flag}_rate"] = round(float(flags.mean()), 4) if flags.notna().any() else None
        for score in chosen:
            value = failure_auroc(pd.to_numeric(group[score], errors="coerce"), dice, failure_dice)
            row[f"auroc_{score}"] = None if value is None else round(value, 4)
        rows.append(row)
    return pd.DataFrame(rows)


def load_cases(prediction_folder: Path, evaluation_folder: Path, sites: Mapping[str, str] | None = None,
               site: str | None = None) -> pd.DataFrame:
    """Join ``prediction_folder/ood_scores.csv`` (per-case scores of ``predict``) with the Dice of
    ``evaluation_folder/metrics.csv``; ``site`` names every case's site (an external set), else
    ``sites`` (case -> site) or the evaluation's own ``site`` column."""
    scores = pd.read_csv(Path(prediction_folder) / SCORES_CSV, dtype={"case_id": str})
    metrics = pd.read_csv(Path(evaluation_folder) / METRICS_CSV, dtype={"case": str})
    cases = scores.rename(columns={"case_id": "case"}).merge(case_dice(metrics).reset_index(), on="case", how="inner")
    if site is not None:
        cases["site"] = site
    elif sites:
        cases["site"] = cases["case"].map(dict(sites))
    elif "site" in metrics and metrics["site"].notna().any():
        cases["site"] = cases["case"].map(metrics.groupby("case")["site"].first())
    return cases


def markdown_table(table: pd.DataFrame) -> str:
    """``table`` as a Markdown table (no extra dependency; ``None`` shows as ``-``)."""
    columns = list(table.columns)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for _, row in table.iterrows():
        cells = ["-" if value is None or (isinstance(value, float) and np.isnan(value)) else
                 (f"{value:.3f}" if isinstance(value, float) else str(value)) for value in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
