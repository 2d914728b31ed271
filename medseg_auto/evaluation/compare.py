"""Sample-level comparison of two evaluations (feature-discrepancy paper, Tables 1, 3 and 4).

Input: two outputs of ``medseg-auto evaluate`` (or of an experiment cell's ``test_*`` folder):
``metrics.csv`` with one row per case and class. A case's score is its foreground-mean Dice
(and IoU), the nan-mean over its classes as in ``summary.json``'s ranking; cases with no
defined Dice (every class empty in reference and prediction) are left out, and only cases
scored in both runs are compared (pairs).

Table 1: mean Dice and IoU of run A and run B, and B - A, over the worst-off cases, the
best-off cases and all cases. Worst-off are the ``n`` cases with the lowest Dice *in run A*
(the run without the method, as in the paper), best-off the ``n`` with the highest, ties broken
by case id. ``n`` is a count (``--worst``) or the paper's Table 4 proportion of worst-off test
samples for one of its datasets (default UDIAT, breast ultrasound: 35 of 163), rounded, at
least 1.

Significance (the paper's Table 3 reports p-values without naming the test): the two-sided
Wilcoxon signed-rank test of the paired per-case differences (``scipy.stats.wilcoxon``), over
all pairs and over the worst-off pairs; undefined (``null``) when every difference is zero.

Per-case feature discrepancy: a run that logged it has an ``l_fd`` column in ``metrics.csv``
or a file ``per_case_l_fd.csv`` (columns ``case,l_fd``) next to it, as written by
``medseg-auto feature-discrepancy`` and by every experiment cell
(:mod:`.case_feature_discrepancy`). Then a scatter plot of L_fd against Dice is drawn per run,
with Spearman's rank correlation.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from medseg_auto.errors import MedsegError
from medseg_auto.evaluation.worst_off import DEFAULT_PROPORTION_OF, PAPER_WORST_OFF
from medseg_auto.evaluation.writing import METRICS_CSV, SUMMARY_JSON, json_safe
from medseg_auto.utils.atomic import atomic_path, write_json_atomic, write_text_atomic
from medseg_auto.utils.logging_setup import get_logger

PER_CASE_LFD_FILE = "per_case_l_fd.csv"
LFD_COLUMN = "l_fd"
COMPARISON_JSON = "comparison.json"
COMPARISON_MD = "comparison.md"
PER_CASE_CSV = "per_case.csv"
SCATTER_PNG = "l_fd_vs_dice.png"
GROUPS = ("worst_off", "best_off", "all")

log = get_logger("evaluation.compare")


class CompareError(MedsegError):
    """An evaluation output cannot be read, or two runs share no case."""


@dataclass
class RunScores:
    """One evaluation: per case (index) ``dice``, ``iou`` and, when logged, ``l_fd``."""

    name: str
    source: Path
    per_case: pd.DataFrame

    @property
    def has_l_fd(self) -> bool:
        return LFD_COLUMN in self.per_case and self.per_case[LFD_COLUMN].notna().any()


def load_run(path: str | Path, name: str | None = None) -> RunScores:
    """Read an evaluation folder (or its ``metrics.csv`` / ``summary.json``)."""
    path = Path(path)
    folder = path.parent if path.is_file() else path
    metrics = path if path.is_file() and path.suffix == ".csv" else folder / METRICS_CSV
    if not metrics.is_file():
        hint = f" (found {SUMMARY_JSON} only)" if (folder / SUMMARY_JSON).is_file() else ""
        raise CompareError(f"{metrics}: not found{hint}; pass the folder 'medseg-auto evaluate' wrote")
    table = pd.read_csv(metrics)
    missing = {"case", "dice", "iou"} - set(table.columns)
    if missing:
        raise CompareError(f"{metrics}: lacks column(s) {', '.join(sorted(missing))}; expected evaluate's metrics.csv")
    table["case"] = table["case"].astype(str)
    per_case = table.groupby("case", sort=True)[["dice", "iou"]].mean()
    lfd = _per_case_lfd(table, folder)
    if lfd is not None:
        per_case[LFD_COLUMN] = lfd.reindex(per_case.index)
    undefined = per_case["dice"].isna()
    if undefined.any():
        log.info("%s: %d case(s) without a defined Dice (empty in reference and prediction) are left out",
                 metrics, int(undefined.sum()))
    return RunScores(name or _default_name(folder), folder, per_case[~undefined])


def _per_case_lfd(table: pd.DataFrame, folder: Path) -> pd.Series | None:
    if LFD_COLUMN in table:
        return table.groupby("case")[LFD_COLUMN].first()
    path = folder / PER_CASE_LFD_FILE
    if not path.is_file():
        return None
    frame = pd.read_csv(path)
    if not {"case", LFD_COLUMN} <= set(frame.columns):
        raise CompareError(f"{path}: needs columns 'case' and '{LFD_COLUMN}'")
    frame["case"] = frame["case"].astype(str)
    return frame.groupby("case")[LFD_COLUMN].mean()


def _default_name(folder: Path) -> str:
    """``.../cells/Base/f0_r0/test_base_test`` -> ``Base/f0_r0/test_base_test`` (enough to tell runs apart)."""
    return "/".join(folder.resolve().parts[-3:])


def worst_count(n_cases: int, worst: int | None = None, proportion_of: str = DEFAULT_PROPORTION_OF) -> int:
    """How many worst-off (and best-off) cases: ``worst``, else the paper's proportion, in [1, n]."""
    if worst is not None:
        if worst < 1:
            raise CompareError(f"--worst must be at least 1, got {worst}")
        return min(worst, n_cases)
    if proportion_of not in PAPER_WORST_OFF:
        raise CompareError(f"unknown Table 4 dataset {proportion_of!r}; choose from {', '.join(PAPER_WORST_OFF)}")
    worst_off, total = PAPER_WORST_OFF[proportion_of]
    return min(max(1, int(math.floor(n_cases * worst_off / total + 0.5))), n_cases)


def compare_runs(run_a: RunScores, run_b: RunScores, worst: int | None = None,
                 proportion_of: str = DEFAULT_PROPORTION_OF) -> tuple[dict[str, Any], pd.DataFrame]:
    """Table 1, the Wilcoxon tests and the paired per-case table (columns ``dice_a``, ...,
    ``group``). Raises :class:`CompareError` when the runs share no case."""
    paired = run_a.per_case[["dice", "iou"]].add_suffix("_a").join(run_b.per_case[["dice", "iou"]].add_suffix("_b"),
                                                                   how="inner")
    only = (len(run_a.per_case) - len(paired), len(run_b.per_case) - len(paired))
    if paired.empty:
        raise CompareError(f"{run_a.source} and {run_b.source} share no scored case; compare evaluations of the same cases")
    if any(only):
        log.warning("%d case(s) only in %s and %d only in %s are left out", only[0], run_a.name, only[1], run_b.name)
    count = worst_count(len(paired), worst, proportion_of)
    ranked = paired.reset_index().sort_values(["dice_a", "case"], kind="stable")
    worst_cases = list(ranked["case"].head(count))
    best_cases = list(ranked.sort_values(["dice_a", "case"], ascending=[False, True], kind="stable")["case"].head(count))
    groups = {"worst_off": worst_cases, "best_off": best_cases, "all": list(paired.index)}
    table = {group: _group_means(paired.loc[cases]) for group, cases in groups.items()}
    result: dict[str, Any] = {
        "run_a": {"name": run_a.name, "source": str(run_a.source), "num_cases": len(run_a.per_case)},
        "run_b": {"name": run_b.name, "source": str(run_b.source), "num_cases": len(run_b.per_case)},
        "num_paired_cases": len(paired), "unpaired_cases": {"only_a": only[0], "only_b": only[1]},
        "worst_off_count": count,
        "worst_off_rule": f"--worst {worst}" if worst is not None else
        f"Table 4 proportion of {proportion_of}: {PAPER_WORST_OFF[proportion_of][0]}/{PAPER_WORST_OFF[proportion_of][1]}",
        "worst_off_threshold_dice_a": float(paired.loc[worst_cases, "dice_a"].max()),
        "table1": table,
        "wilcoxon": {group: {metric: wilcoxon_paired(paired.loc[groups[group], f"{metric}_a"],
                                                     paired.loc[groups[group], f"{metric}_b"]) for metric in ("dice", "iou")}
                     for group in ("all", "worst_off")},
        "worst_off_cases": worst_cases, "best_off_cases": best_cases,
    }
    per_case = paired.reset_index()
    per_case["group"] = ["worst_off" if c in set(worst_cases) else "best_off" if c in set(best_cases) else ""
                         for c in per_case["case"]]
    return result, per_case


def _group_means(rows: pd.DataFrame) -> dict[str, float | int]:
    means = {"n": int(len(rows))}
    for metric in ("dice", "iou"):
        a, b = float(rows[f"{metric}_a"].mean()), float(rows[f"{metric}_b"].mean())
        means.update({f"{metric}_a": a, f"{metric}_b": b, f"delta_{metric}": b - a})
    return means


def wilcoxon_paired(a: pd.Series, b: pd.Series) -> dict[str, Any]:
    """Two-sided Wilcoxon signed-rank test of ``b - a`` (zero differences dropped, scipy's
    default); ``p_value`` None when no difference is non-zero."""
    differences = (np.asarray(b, dtype=float) - np.asarray(a, dtype=float))
    nonzero = int(np.count_nonzero(differences))
    if nonzero == 0:
        return {"n": len(differences), "n_nonzero": 0, "statistic": None, "p_value": None,
                "note": "every paired difference is zero: no test"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy's normal approximation with one pair
        test = stats.wilcoxon(differences, alternative="two-sided")
    return {"n": len(differences), "n_nonzero": nonzero, "statistic": float(test.statistic),
            "p_value": float(test.pvalue), "median_difference": float(np.median(differences))}


def lfd_correlations(runs: list[RunScores]) -> dict[str, Any]:
    """Spearman's rho between per-case L_fd and Dice, per run that logged L_fd."""
    result = {}
    for run in runs:
        if not run.has_l_fd:
            continue
        rows = run.per_case[[LFD_COLUMN, "dice"]].dropna()
        rho = stats.spearmanr(rows[LFD_COLUMN], rows["dice"]) if len(rows) > 2 else None
        result[run.name] = {"n": int(len(rows)), "spearman_rho": None if rho is None else float(rho.statistic),
                            "p_value": None if rho is None else float(rho.pvalue)}
    return result


def plot_lfd_vs_dice(runs: list[RunScores], path: Path) -> bool:
    """Scatter of per-case L_fd (x) against Dice (y), one colour per run; False when no run logged L_fd."""
    runs = [run for run in runs if run.has_l_fd]
    if not runs:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5.5, 4.2))
    for run in runs:
        rows = run.per_case[[LFD_COLUMN, "dice"]].dropna()
        axis.scatter(rows[LFD_COLUMN], rows["dice"], s=14, alpha=0.7, label=f"{run.name} ({len(rows)})")
    axis.set_xlabel("per-case L_fd")
    axis.set_ylabel("foreground Dice")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    figure.tight_layout()
    with atomic_path(path, suffix=".png") as temporary:
        figure.savefig(temporary, dpi=120)
    plt.close(figure)
    return True


def comparison_markdown(result: dict[str, Any]) -> str:
    a, b = result["run_a"]["name"], result["run_b"]["name"]
    lines = [f"# Comparison: A = `{a}`, B = `{b}`", "",
             f"- paired cases: {result['num_paired_cases']} (only in A: {result['unpaired_cases']['only_a']}, "
             f"only in B: {result['unpaired_cases']['only_b']})",
             f"- worst-off / best-off: {result['worst_off_count']} case(s) each, ranked by A's Dice "
             f"({result['worst_off_rule']}); worst-off lie at or below Dice "
             f"{100 * result['worst_off_threshold_dice_a']:.2f} in A",
             "- values in percent (as the paper's Table 1); delta = B - A", "",
             "## Table 1", "",
             "| samples | n | Dice A | Dice B | Δ Dice | IoU A | IoU B | Δ IoU |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    titles = {"worst_off": "Worst off", "best_off": "Best off", "all": "All samples"}
    for group in GROUPS:
        row = result["table1"][group]
        lines.append(f"| {titles[group]} | {row['n']} | {_pct(row['dice_a'])} | {_pct(row['dice_b'])} | "
                     f"{_pct(row['delta_dice'], signed=True)} | {_pct(row['iou_a'])} | {_pct(row['iou_b'])} | "
                     f"{_pct(row['delta_iou'], signed=True)} |")
    lines += ["", "## Wilcoxon signed-rank test (two-sided, paired B - A)", "",
              "| samples | metric | n (non-zero) | statistic | p-value |", "|---|---|---:|---:|---:|"]
    for group, tests in result["wilcoxon"].items():
        for metric, test in tests.items():
            statistic = "" if test["statistic"] is None else f"{test['statistic']:.1f}"
            p_value = test.get("note", "") if test["p_value"] is None else f"{test['p_value']:.4g}"
            lines.append(f"| {titles[group]} | {metric} | {test['n']} ({test['n_nonzero']}) | {statistic} | {p_value} |")
    lines.append("")
    correlations = result.get("l_fd_correlation", {})
    if correlations:
        lines += ["## Per-case L_fd against Dice", "", f"Plot: `{SCATTER_PNG}`.", "",
                  "| run | n | Spearman rho | p-value |", "|---|---:|---:|---:|"]
        for name, values in correlations.items():
            rho = "" if values["spearman_rho"] is None else f"{values['spearman_rho']:.3f}"
            p_value = "" if values["p_value"] is None else f"{values['p_value']:.4g}"
            lines.append(f"| {name} | {values['n']} | {rho} | {p_value} |")
    else:
        lines.append(f"No per-case L_fd logged (an `{LFD_COLUMN}` column in metrics.csv or `{PER_CASE_LFD_FILE}`): "
                     "no scatter plot.")
    lines.append("")
    return "\n".join(lines)


def write_comparison(run_a: RunScores, run_b: RunScores, output: Path, worst: int | None = None,
                     proportion_of: str = DEFAULT_PROPORTION_OF) -> dict[str, Any]:
    """Compare and write ``comparison.json``, ``comparison.md``, ``per_case.csv`` and, when L_fd
    was logged, ``l_fd_vs_dice.png`` into ``output``; return the comparison."""
    result, per_case = compare_runs(run_a, run_b, worst, proportion_of)
    output.mkdir(parents=True, exist_ok=True)
    plotted = plot_lfd_vs_dice([run_a, run_b], output / SCATTER_PNG)
    result["l_fd_correlation"] = lfd_correlations([run_a, run_b])
    result["l_fd_plot"] = str(output / SCATTER_PNG) if plotted else None
    if not plotted:
        log.info("no per-case L_fd in either run (column '%s' or %s): scatter plot skipped", LFD_COLUMN, PER_CASE_LFD_FILE)
    with atomic_path(output / PER_CASE_CSV, suffix=".csv") as temporary:
        per_case.to_csv(temporary, index=False)
    write_json_atomic(output / COMPARISON_JSON, json_safe(result))
    write_text_atomic(output / COMPARISON_MD, comparison_markdown(result))
    return result


def _pct(value: float, signed: bool = False) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return f"{100 * value:+.2f}" if signed else f"{100 * value:.2f}"
