"""Statistics and plot of ``learning_parity.py``: per-case Dice of each run -> the parity table.

Input per finished run: the tool, the seed, and our evaluator's ``metrics.csv`` (one row per
validation case and class: ``case``, ``class``, ``dice``, ...) plus its training wall time and
peak memory. Output per configuration: one row per class with the mean +- standard deviation
over seeds of the per-run mean Dice (the mean over validation cases, NaN cases left out as
nnU-Net does), ours - nnU-Net, and a paired Wilcoxon signed-rank test over the validation cases
(each case's Dice averaged over the seeds of each tool first, so the pairs are cases, not
case x seed). Plain Python + scipy; nothing here imports either tool.
"""

from __future__ import annotations

import csv
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping, Sequence

NNUNET, OURS = "nnU-Net v2", "ours"
TABLE_COLUMNS = ("configuration", "class", "seeds", "nnunet_dice", "ours_dice", "difference", "wilcoxon_p",
                 "cases", "nnunet_train_s", "ours_train_s", "nnunet_peak_rss_mib", "ours_peak_rss_mib", "verdict")
PARITY_MARGIN = 0.01  # the target: ours >= nnU-Net - 1 Dice point


def read_case_dice(metrics_csv: Path) -> dict[str, dict[str, float]]:
    """``{class: {case: dice}}`` from our evaluator's ``metrics.csv``; empty cells become NaN."""
    per_class: dict[str, dict[str, float]] = defaultdict(dict)
    with open(metrics_csv, newline="") as handle:
        for row in csv.DictReader(handle):
            value = row.get("dice", "")
            per_class[str(row["class"])][row["case"]] = float(value) if value not in ("", "nan", "NaN") else math.nan
    return dict(per_class)


def nanmean(values: Sequence[float]) -> float:
    kept = [value for value in values if not math.isnan(value)]
    return statistics.fmean(kept) if kept else math.nan


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value) of the non-NaN values."""
    kept = [value for value in values if not math.isnan(value)]
    if not kept:
        return math.nan, math.nan
    return statistics.fmean(kept), statistics.stdev(kept) if len(kept) > 1 else 0.0


def paired_wilcoxon(ours: Mapping[str, float], nnunet: Mapping[str, float]) -> tuple[float, int]:
    """Two-sided Wilcoxon signed-rank p over the cases both tools scored (NaN pairs dropped);
    returns ``(p, cases)``; p is NaN with fewer than 2 pairs or when every pair is equal."""
    from scipy.stats import wilcoxon

    cases = sorted(case for case in set(ours) & set(nnunet)
                   if not math.isnan(ours[case]) and not math.isnan(nnunet[case]))
    differences = [ours[case] - nnunet[case] for case in cases]
    if len(cases) < 2 or all(difference == 0 for difference in differences):
        return math.nan, len(cases)
    return float(wilcoxon(differences).pvalue), len(cases)


def seed_averaged(runs: Sequence[Mapping[str, Any]], class_name: str) -> dict[str, float]:
    """Each case's Dice of ``class_name`` averaged over ``runs`` (the seeds of one tool)."""
    by_case: dict[str, list[float]] = defaultdict(list)
    for run in runs:
        for case, dice in run["dice"].get(class_name, {}).items():
            by_case[case].append(dice)
    return {case: nanmean(values) for case, values in by_case.items()}


def format_mean_sd(mean: float, sd: float) -> str:
    return "" if math.isnan(mean) else f"{mean:.3f} +- {sd:.3f}"


def parity_rows(configuration: str, runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per class (and one for the mean over classes) from the finished ``runs`` of one
    configuration. Each run: ``tool``, ``seed``, ``dice`` (:func:`read_case_dice`), ``train_s``
    and ``peak_rss_mib``."""
    by_tool = {tool: [run for run in runs if run["tool"] == tool] for tool in (NNUNET, OURS)}
    classes = sorted({name for run in runs for name in run["dice"]})
    resources = {tool: (mean_sd([run["train_s"] for run in tool_runs])[0],
                        mean_sd([run["peak_rss_mib"] for run in tool_runs])[0]) for tool, tool_runs in by_tool.items()}
    rows = []
    for class_name in [*classes, "mean"]:
        names = classes if class_name == "mean" else [class_name]
        per_run = {tool: [nanmean([nanmean(list(run["dice"].get(name, {}).values())) for name in names])
                          for run in tool_runs] for tool, tool_runs in by_tool.items()}
        (nn_mean, nn_sd), (our_mean, our_sd) = mean_sd(per_run[NNUNET]), mean_sd(per_run[OURS])
        averaged = {tool: _class_mean_per_case(tool_runs, names) for tool, tool_runs in by_tool.items()}
        p_value, cases = paired_wilcoxon(averaged[OURS], averaged[NNUNET])
        difference = our_mean - nn_mean
        rows.append({
            "configuration": configuration, "class": class_name,
            "seeds": f"{len(by_tool[NNUNET])}/{len(by_tool[OURS])}",
            "nnunet_dice": format_mean_sd(nn_mean, nn_sd), "ours_dice": format_mean_sd(our_mean, our_sd),
            "difference": None if math.isnan(difference) else round(difference, 4),
            "wilcoxon_p": None if math.isnan(p_value) else float(f"{p_value:.3g}"), "cases": cases,
            "nnunet_train_s": resources[NNUNET][0], "ours_train_s": resources[OURS][0],
            "nnunet_peak_rss_mib": resources[NNUNET][1], "ours_peak_rss_mib": resources[OURS][1],
            "verdict": verdict(difference, p_value),
            "nnunet_per_seed": per_run[NNUNET], "ours_per_seed": per_run[OURS],
        })
    return rows


def per_site_rows(configuration: str, runs: Sequence[Mapping[str, Any]],
                  sites: Mapping[str, str]) -> list[dict[str, Any]]:
    """:func:`parity_rows` once per site, on the validation cases of that site only (labelled
    ``CONFIGURATION site=SITE``); none for a dataset without sites or a site without a scored case."""
    rows = []
    for site in sorted(set(sites.values())):
        site_runs = [{**run, "dice": {name: {case: dice for case, dice in cases.items() if sites.get(case) == site}
                                      for name, cases in run["dice"].items()}} for run in runs]
        if any(cases for run in site_runs for cases in run["dice"].values()):
            rows += parity_rows(f"{configuration} site={site}", site_runs)
    return rows


def equal_time_rows(configuration: str, budgets: Sequence[tuple[str, Sequence[Mapping[str, Any]]]]
                    ) -> list[dict[str, Any]]:
    """The issue's equal-time target: for each budget nnU-Net finished, ours at the largest budget
    whose mean training seconds do not exceed nnU-Net's there, compared class by class as in
    :func:`parity_rows` (labelled ``CONFIGURATION equal time: ours B vs nnU-Net B'``), with
    :func:`time_verdict`. ``budgets``: ``(label, runs)`` per budget; no row where ours has no
    budget that fits (run ``--epochs`` with more values to get one)."""
    def mean_seconds(runs: Sequence[Mapping[str, Any]], tool: str) -> float:
        return mean_sd([run["train_s"] for run in runs if run["tool"] == tool])[0]

    ours = [(label, runs, mean_seconds(runs, OURS)) for label, runs in budgets
            if any(run["tool"] == OURS for run in runs)]
    rows = []
    for label, runs in budgets:
        limit = mean_seconds(runs, NNUNET)
        fitting = [(seconds, our_label, our_runs) for our_label, our_runs, seconds in ours if seconds <= limit]
        if math.isnan(limit) or not fitting or max(fitting, key=lambda item: item[0])[1] == label:
            continue  # no nnU-Net run, nothing of ours fits, or the same budget (the equal-iteration row)
        _, our_label, our_runs = max(fitting, key=lambda item: item[0])
        paired = [run for run in runs if run["tool"] == NNUNET] + [run for run in our_runs if run["tool"] == OURS]
        for row in parity_rows(f"{configuration} equal time: ours {our_label} vs nnU-Net {label}", paired):
            row["verdict"] = time_verdict(row["difference"], row["wilcoxon_p"])
            rows.append(row)
    return rows


def time_verdict(difference: float | None, p_value: float | None) -> str:
    """The equal-time target: ours >= nnU-Net (no margin); ``behind (p < 0.05)`` when it is significant."""
    if difference is None:
        return ""
    if difference >= 0:
        return "ours >= nnU-Net"
    return "behind (p < 0.05)" if p_value is not None and p_value < 0.05 else "behind"


def _class_mean_per_case(runs: Sequence[Mapping[str, Any]], names: Sequence[str]) -> dict[str, float]:
    """Per case: the seed-averaged Dice, averaged over ``names`` (one class or all)."""
    averaged = [seed_averaged(runs, name) for name in names]
    cases = set().union(*averaged) if averaged else set()
    return {case: nanmean([values.get(case, math.nan) for values in averaged]) for case in cases}


def verdict(difference: float, p_value: float) -> str:
    """The issue's equal-iteration target: within 1 Dice point, and nnU-Net not significantly better."""
    if math.isnan(difference):
        return ""
    if difference < -PARITY_MARGIN:
        return "gap"
    if difference < 0 and not math.isnan(p_value) and p_value < 0.05:
        return "gap (p < 0.05)"
    return "parity"


def plot_runs(runs: Sequence[Mapping[str, Any]], path: Path, title: str) -> Path | None:
    """Mean foreground Dice against training iterations and against training wall seconds: one
    line per tool through the seeds' means at each checkpoint, the seeds' min..max as a band.
    Each run carries ``curve``: ``[{"iterations", "train_s", "dice"}]`` (its final point at least)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for tool, colour in ((NNUNET, "tab:blue"), (OURS, "tab:orange")):
        points: dict[int, list[tuple[float, float]]] = defaultdict(list)
        for run in runs:
            if run["tool"] == tool:
                for point in run.get("curve", []):
                    points[int(point["iterations"])].append((float(point["train_s"]), float(point["dice"])))
        if not points:
            continue
        steps = sorted(points)
        dice = [[value for _, value in points[step]] for step in steps]
        seconds = [statistics.fmean(second for second, _ in points[step]) for step in steps]
        means = [statistics.fmean(values) for values in dice]
        for axis, x_values in ((axes[0], steps), (axes[1], seconds)):
            axis.plot(x_values, means, marker="o", color=colour, label=f"{tool} ({len(dice[-1])} seeds)")
            axis.fill_between(x_values, [min(values) for values in dice], [max(values) for values in dice],
                              color=colour, alpha=0.2)
    for axis, label in ((axes[0], "training iterations"), (axes[1], "training wall time (s)")):
        axis.set_xlabel(label)
        axis.set_ylabel("mean foreground Dice (validation, full resolution)")
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp.png")
    figure.savefig(temporary, dpi=110)
    plt.close(figure)
    temporary.replace(path)
    return path
