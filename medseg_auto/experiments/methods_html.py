"""HTML leaderboard of the method benchmark: the tables, per-site bars and Dice-vs-Base scatter.

One self-contained page (figures embedded as PNG data URIs, so the file can be mailed or
opened from a cluster's scratch space), styled like ``medseg-auto report``
(:mod:`medseg_auto.evaluation.report`, whose table and figure helpers it uses).

- bars: per test set and site, one bar per arm (mean over seeds, error bar = sd over seeds);
- scatter: per arm, each case's Dice (mean over the seeds both finished) against Base's, one
  colour per test set; points above the diagonal are cases the arm segments better.
"""

from __future__ import annotations

import base64
import io
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from medseg_auto.evaluation.report import STYLE, _e, _pyplot, _readable, _table
from medseg_auto.experiments.methods_format import format_delta, format_dice
from medseg_auto.utils.atomic import write_text_atomic

BASE = "Base"
ALL_SITES = "all"


def write_leaderboard_html(path: Path, table: pd.DataFrame, per_case: pd.DataFrame, intro: Sequence[str],
                           arms: Sequence[str], failure: pd.DataFrame | None = None,
                           flags: pd.DataFrame | None = None) -> None:
    """The page; ``failure``: the failure-prediction table (:mod:`.methods_failure`), ``flags``: the
    learned flag rule against the default (:mod:`.methods_flag_rules`), each shown when given."""
    parts = ["<h1>Method benchmark</h1>", "<ul>" + "".join(f"<li>{_e(line.lstrip('- '))}</li>" for line in intro)
             + "</ul>"]
    if not table.empty:
        overall = table[table["site"] == ALL_SITES]
        sets = list(dict.fromkeys(overall["test_set"]))
        header = ["arm"] + [f"{s} Dice" for s in sets] + [f"{s} Δ vs Base [95% CI] p_Holm" for s in sets]
        rows = []
        for arm in dict.fromkeys(overall["arm"]):
            by_set = {row["test_set"]: row for row in overall[overall["arm"] == arm].to_dict("records")}
            rows.append([arm, *[format_dice(by_set.get(s)).replace("**", "") for s in sets],
                         *[format_delta(by_set.get(s)) for s in sets]])
        parts += ["<h2>Leaderboard</h2>", _table(header, rows, highlight=BASE)]
        parts += ["<h2>Dice per site</h2>", _image(_site_bars(table, arms))]
    if not per_case.empty and BASE in set(per_case["arm"]) and per_case["arm"].nunique() > 1:
        parts += ["<h2>Per-case Dice against Base</h2>", _image(_scatter(per_case, arms))]
    if failure is not None and not failure.empty:
        from medseg_auto.experiments.methods_failure import failure_note, failure_rows

        header, rows = failure_rows(failure)
        parts += ["<h2>Which cases fail: failure prediction</h2>", f"<p>{_e(failure_note(failure))}</p>",
                  _table(header, rows, highlight=BASE)]
    if flags is not None and not flags.empty:
        from medseg_auto.experiments.methods_flag_rules import flag_rule_note, flag_rule_rows

        header, rows = flag_rule_rows(flags)
        parts += ["<h2>Which cases fail: the learned flag rule against the fixed default</h2>",
                  f"<p>{_e(flag_rule_note())}</p>", _table(header, rows, highlight=BASE)]
    page = ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>Method benchmark</title>"
            f"<style>{STYLE}</style></head><body>" + "\n".join(parts) + "</body></html>\n")
    write_text_atomic(path, page)
    _readable(path)


def _site_bars(table: pd.DataFrame, arms: Sequence[str]) -> Any:
    plt = _pyplot()
    groups = list(dict.fromkeys(zip(table["test_set"], table["site"])))
    present = [arm for arm in arms if arm in set(table["arm"])]
    figure, axis = plt.subplots(figsize=(max(7.0, 0.3 * len(groups) * len(present) + 3), 4.5))
    width = 0.8 / max(1, len(present))
    for index, arm in enumerate(present):
        rows = {(r["test_set"], r["site"]): r for r in table[table["arm"] == arm].to_dict("records")}
        means = [rows[g]["dice_mean"] if g in rows else np.nan for g in groups]
        errors = [0.0 if g not in rows or _nan(rows[g]["dice_sd"]) else rows[g]["dice_sd"] for g in groups]
        axis.bar(np.arange(len(groups)) + (index - (len(present) - 1) / 2) * width, means, width, yerr=errors,
                 capsize=2, label=arm)
    axis.set_xticks(range(len(groups)))
    axis.set_xticklabels([f"{'in-domain' if t == 'in_domain' else t}\n{s}" for t, s in groups], fontsize=8)
    axis.set_ylabel("foreground Dice (mean over seeds)")
    axis.set_ylim(0, 1)
    axis.grid(axis="y", alpha=0.3)
    axis.legend(fontsize=7, ncol=2, bbox_to_anchor=(1.01, 1), loc="upper left")
    figure.tight_layout()
    return figure


def _scatter(per_case: pd.DataFrame, arms: Sequence[str]) -> Any:
    plt = _pyplot()
    others = [arm for arm in arms if arm != BASE and arm in set(per_case["arm"])]
    columns = min(4, len(others))
    rows = math.ceil(len(others) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.2 * rows), squeeze=False)
    sets = list(dict.fromkeys(per_case["test_set"]))
    for axis, arm in zip(axes.flat, others):
        for test_set in sets:
            subset = per_case[per_case["test_set"] == test_set]
            base, mine = subset[subset["arm"] == BASE], subset[subset["arm"] == arm]
            seeds = sorted(set(base["seed"]) & set(mine["seed"]))
            if not seeds:
                continue
            joined = pd.concat({"base": base[base["seed"].isin(seeds)].groupby("case")["dice"].mean(),
                                "arm": mine[mine["seed"].isin(seeds)].groupby("case")["dice"].mean()},
                               axis=1, join="inner").dropna()
            axis.scatter(joined["base"], joined["arm"], s=6, alpha=0.6, label=test_set)
        axis.plot([0, 1], [0, 1], color="grey", linewidth=0.8)
        axis.set_xlim(0, 1)
        axis.set_ylim(0, 1)
        axis.set_title(arm, fontsize=9)
        axis.set_xlabel("Base Dice", fontsize=8)
        axis.set_ylabel(f"{arm} Dice", fontsize=8)
        axis.legend(fontsize=6)
    for axis in list(axes.flat)[len(others):]:
        axis.axis("off")
    figure.tight_layout()
    return figure


def _image(figure: Any) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    _pyplot().close(figure)
    return f"<img alt='figure' src='data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}'>"


def _nan(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
