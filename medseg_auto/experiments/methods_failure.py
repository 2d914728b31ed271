"""Failure prediction in the method benchmark: how well each per-case signal says which test
cases a model segments badly, per arm and test set (in-domain and every external set).

Why in the benchmark: a user of a model on a new hospital's images wants to know which
segmentations to check. Each cell writes, beside every test set's ``metrics.csv``, the cases'
failure signals (``failure_signals.csv``, :mod:`medseg_auto.inference.uncertainty`: the OOD
feature distance, softmax entropy, the soft-Dice deficit and the mirrored views'
disagreement), read from the same forward passes as the prediction. A case *fails* below
:data:`~medseg_auto.evaluation.failure_prediction.FAILURE_DICE` foreground Dice (a case with
nothing to find and nothing found counts as Dice 1).

Per arm, test set and seed: the failure rate and the AUROC of every signal for failure
(:func:`~medseg_auto.evaluation.failure_prediction.failure_auroc`; undefined when that seed's
set has no failure or no success); the table gives mean +- sd over the seeds where it is
defined, and how many finished seeds hold signals at all: cells computed before the signals
were recorded have none (their predictions are label maps, from which no signal can be
recomputed), and show ``-``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from medseg_auto.evaluation.failure_prediction import FAILURE_DICE, case_dice, failure_auroc
from medseg_auto.experiments.cells import Cell, read_done
from medseg_auto.inference.uncertainty import DEFAULT_SIGNAL, SIGNAL_COLUMNS, SIGNALS_FILE

#: Signals a benchmark cell can have (``fold_disagreement`` needs an ensemble; a cell has one model).
CELL_SIGNALS = tuple(name for name in SIGNAL_COLUMNS if name != "fold_disagreement")
IN_DOMAIN = "in_domain"


def signal_frame(cells: Sequence[tuple[Cell, Path]]) -> pd.DataFrame:
    """Long table ``arm, seed, test_set, case, dice, has_signals, <signals>`` of every finished
    cell's scored test sets (``has_signals`` False and the signals NaN where the set's folder
    holds no signal table)."""
    frames = []
    for cell, folder in cells:
        if read_done(folder) is None:
            continue
        for name in [*cell.test_sets, *cell.external_sets]:
            test_folder = folder / f"test_{name}"
            if not (test_folder / "metrics.csv").is_file():
                continue
            cases = case_dice(pd.read_csv(test_folder / "metrics.csv", dtype={"case": str})).reset_index()
            cases = cases.rename(columns={"index": "case"})
            signals_file = test_folder / SIGNALS_FILE
            if signals_file.is_file():
                signals = pd.read_csv(signals_file, dtype={"case_id": str}).rename(columns={"case_id": "case"})
                cases = cases.merge(signals, on="case", how="left")
                cases["has_signals"] = True
            else:
                cases["has_signals"] = False
            for column in CELL_SIGNALS:
                cases[column] = pd.to_numeric(cases[column], errors="coerce") if column in cases else np.nan
            cases.insert(0, "test_set", name)
            cases.insert(0, "seed", cell.seed)
            cases.insert(0, "arm", cell.info.get("arm", cell.trainer))
            frames.append(cases[["arm", "seed", "test_set", "case", "dice", "has_signals", *CELL_SIGNALS]])
    columns = ["arm", "seed", "test_set", "case", "dice", "has_signals", *CELL_SIGNALS]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)


def failure_prediction_table(signals: pd.DataFrame, arms: Sequence[str]) -> pd.DataFrame:
    """One row per arm and test set: ``n_seeds`` (finished), ``n_seeds_with_signals``, failure
    rate mean/sd over seeds, and per signal ``auroc_<signal>_mean``, ``_sd`` and ``_n`` (the
    seeds where the AUROC is defined)."""
    rows: list[dict[str, Any]] = []
    if signals.empty:
        return pd.DataFrame(rows)
    names = list(dict.fromkeys(signals["test_set"]))
    ordered = ([IN_DOMAIN] if IN_DOMAIN in names else []) + sorted(n for n in names if n != IN_DOMAIN)
    for test_set in ordered:
        subset = signals[signals["test_set"] == test_set]
        for arm in [a for a in arms if a in set(subset["arm"])]:
            per_seed = [group for _, group in subset[subset["arm"] == arm].groupby("seed", sort=True)]
            rates = [float((group["dice"] < FAILURE_DICE).mean()) for group in per_seed]
            with_signals = [group for group in per_seed if bool(group["has_signals"].any())]
            row: dict[str, Any] = {"arm": arm, "test_set": test_set, "n_cases": int(subset["case"].nunique()),
                                   "n_seeds": len(per_seed), "n_seeds_with_signals": len(with_signals),
                                   "failure_dice": FAILURE_DICE, **_mean_sd("failure_rate", rates)}
            for signal in CELL_SIGNALS:
                values = [failure_auroc(group[signal], group["dice"]) for group in with_signals]
                defined = [value for value in values if value is not None]
                row.update(_mean_sd(f"auroc_{signal}", defined))
                row[f"auroc_{signal}_n"] = len(defined)
            rows.append(row)
    return pd.DataFrame(rows)


def _mean_sd(name: str, values: Sequence[float]) -> dict[str, float]:
    return {f"{name}_mean": float(np.mean(values)) if values else math.nan,
            f"{name}_sd": float(np.std(values, ddof=1)) if len(values) > 1 else math.nan}


def shown_signals(table: pd.DataFrame) -> list[str]:
    """The signals with an AUROC somewhere in ``table`` (all of :data:`CELL_SIGNALS` when none has)."""
    present = [s for s in CELL_SIGNALS if f"auroc_{s}_n" in table and (table[f"auroc_{s}_n"] > 0).any()]
    return present or list(CELL_SIGNALS)


def format_auroc(row: dict[str, Any], signal: str) -> str:
    """``mean ± sd (seeds)`` of one signal's AUROC, ``-`` where no seed has it."""
    mean, sd, n = row.get(f"auroc_{signal}_mean"), row.get(f"auroc_{signal}_sd"), row.get(f"auroc_{signal}_n", 0)
    if not n or mean is None or math.isnan(mean):
        return "-"
    spread = "" if sd is None or math.isnan(sd) else f" ± {sd:.2f}"
    return f"{mean:.2f}{spread} ({n})"


def best_signal(row: dict[str, Any]) -> str:
    """The signal with the highest mean AUROC in ``row`` (``-`` when none is defined)."""
    means = {s: row.get(f"auroc_{s}_mean") for s in CELL_SIGNALS if row.get(f"auroc_{s}_n")}
    means = {s: m for s, m in means.items() if m is not None and not math.isnan(m)}
    return max(means, key=lambda s: means[s]) if means else "-"


def format_rate(row: dict[str, Any]) -> str:
    mean, sd = row.get("failure_rate_mean"), row.get("failure_rate_sd")
    if mean is None or math.isnan(mean):
        return "-"
    return f"{mean:.2f}" + ("" if sd is None or math.isnan(sd) else f" ± {sd:.2f}")


def failure_rows(table: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Header and text rows of the failure-prediction table (Markdown and HTML share them)."""
    signals = shown_signals(table)
    header = ["arm", "test set", "failure rate", "seeds with signals", *[f"AUROC {s}" for s in signals],
              "best signal"]
    rows = []
    for row in table.to_dict("records"):
        label = "in-domain" if row["test_set"] == IN_DOMAIN else row["test_set"]
        rows.append([row["arm"], label, format_rate(row), f"{row['n_seeds_with_signals']} of {row['n_seeds']}",
                     *[format_auroc(row, s) for s in signals], best_signal(row)])
    return header, rows


def failure_markdown(table: pd.DataFrame) -> list[str]:
    """The Markdown section (lines) of the failure-prediction table; empty without rows."""
    if table.empty:
        return []
    header, rows = failure_rows(table)
    lines = ["", "## Which cases fail: failure prediction", "", failure_note(table), "",
             "| " + " | ".join(header) + " |", "|---|---|" + "---:|" * (len(header) - 2)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def failure_note(table: pd.DataFrame) -> str:
    """What the failure-prediction table shows, and how many rows lack signals."""
    missing = int((table["n_seeds_with_signals"] < table["n_seeds"]).sum()) if not table.empty else 0
    note = (f"A case fails below Dice {FAILURE_DICE}; `predict` flags likely failures by the signal and threshold "
            f"each model learned from its validation cases (`{DEFAULT_SIGNAL}` > its default when it could not). "
            "AUROC of each per-case signal for failure (1: every failed case scores above every good one; "
            "0.5: chance), mean ± sd over the seeds where the set has both outcomes (seeds); failure rate: "
            "mean ± sd over seeds. `-`: no seed has that signal")
    if missing:
        note += (f"; {missing} row(s) come from cells finished before the signals were recorded (their signals "
                 "are missing: a rerun of such a cell's prediction would be needed)")
    return note + "."
