"""Result tables and plots of the experiments, rewritten after every finished cell.

Data addition: ``results.csv`` (one row per cell), ``summary.csv`` (mean, standard deviation
and count over repeats per trainer and fraction), ``results.md`` and ``dice_vs_fraction.png``
(one curve per trainer, error bars = standard deviation over repeats; the paper's Figure 3).
Leave one site out: ``results.csv`` (one row per cell), ``table.csv`` (rows trainers, columns
held-out sites and their mean, Dice averaged over repeats) and ``table.md``. Every file is
written atomically, so a reader (or a crash) never sees half a table.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from medseg_auto.utils.atomic import atomic_path, write_text_atomic

RESULTS_CSV = "results.csv"
SUMMARY_CSV = "summary.csv"
RESULTS_MD = "results.md"
PLOT_PNG = "dice_vs_fraction.png"
TABLE_CSV = "table.csv"
TABLE_MD = "table.md"
MEAN_COLUMN = "mean"


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    with atomic_path(path, suffix=".csv") as temporary:
        frame.to_csv(temporary, index=False)


# ----- data addition ---------------------------------------------------------------------------

def summarise_data_addition(rows: pd.DataFrame) -> pd.DataFrame:
    """Per trainer and fraction: ``n_novel``, and mean/std/count over repeats of each test metric."""
    metrics = [column for column in rows.columns if column.startswith(("dice_", "iou_"))]
    grouped = rows.groupby(["trainer", "fraction"], sort=True)
    summary = grouped.agg(n_novel=("n_novel", "first"), repeats=("repeat", "nunique"))
    for metric in metrics:
        summary[f"{metric}_mean"] = grouped[metric].mean()
        summary[f"{metric}_std"] = grouped[metric].std(ddof=1)
    return summary.reset_index()


def write_data_addition_results(rows: Sequence[Mapping[str, Any]], folder: Path, settings: Mapping[str, Any],
                                trainers: Sequence[str], plot: bool = True) -> dict[str, Path]:
    """Write the data-addition outputs from the finished cells' rows; return their paths.
    ``plot=False`` leaves the (slower) figure for the end of the run."""
    names = (RESULTS_CSV, SUMMARY_CSV, RESULTS_MD) + ((PLOT_PNG,) if plot else ())
    paths = {name: folder / name for name in names}
    frame = pd.DataFrame.from_records(list(rows))
    if frame.empty:
        return {}
    frame = frame.sort_values(["trainer", "fraction", "repeat"], key=_trainer_order(trainers), kind="stable")
    write_csv(frame, paths[RESULTS_CSV])
    summary = summarise_data_addition(frame)
    write_csv(summary, paths[SUMMARY_CSV])
    write_text_atomic(paths[RESULTS_MD], data_addition_markdown(summary, settings, trainers))
    if plot:
        plot_dice_vs_fraction(summary, settings, trainers, paths[PLOT_PNG])
    return paths


def data_addition_markdown(summary: pd.DataFrame, settings: Mapping[str, Any], trainers: Sequence[str]) -> str:
    base, novel = settings.get("base_site"), settings.get("novel_site")
    lines = [f"# Data addition: {base} (base) + {novel} (novel)", "",
             f"- dataset `{settings.get('dataset')}`, configuration `{settings.get('configuration')}`, plans "
             f"`{settings.get('plans_name')}`, epochs {settings.get('epochs')}, iterations/epoch "
             f"{settings.get('iters_per_epoch')}, checkpoint `{settings.get('checkpoint')}`",
             f"- cases: base train {settings.get('n_base_train')}, base validation {settings.get('n_base_val')}, "
             f"base test {settings.get('n_base_test')}, novel pool {settings.get('n_novel_pool')}, "
             f"novel test {settings.get('n_novel_test')}",
             "- cells: foreground-mean Dice, mean ± standard deviation over repeats (number of repeats)", ""]
    for test in ("base_test", "novel_test"):
        column = f"dice_{test}_mean"
        if column not in summary or summary[column].isna().all():
            continue
        lines += [f"## Dice on the {test.replace('_', ' ')} cases", ""]
        present = [t for t in trainers if t in set(summary["trainer"])]
        lines.append("| fraction | novel cases | " + " | ".join(present) + " |")
        lines.append("|---:|---:|" + "---:|" * len(present))
        for fraction, group in summary.groupby("fraction", sort=True):
            by_trainer = {row.trainer: row for row in group.itertuples()}
            cells = [_mean_std(getattr(by_trainer[t], column), getattr(by_trainer[t], f"dice_{test}_std"),
                               by_trainer[t].repeats) if t in by_trainer else "" for t in present]
            lines.append(f"| {fraction:g} | {int(group['n_novel'].iloc[0])} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot_dice_vs_fraction(summary: pd.DataFrame, settings: Mapping[str, Any], trainers: Sequence[str],
                          path: Path) -> None:
    """Dice against added fraction, one curve per trainer, error bars over repeats (std)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tests = [t for t in ("base_test", "novel_test")
             if f"dice_{t}_mean" in summary and not summary[f"dice_{t}_mean"].isna().all()]
    fractions = sorted(summary["fraction"].unique())
    positions = {fraction: index for index, fraction in enumerate(fractions)}
    novel_counts = summary.groupby("fraction")["n_novel"].first()
    figure, axes = plt.subplots(1, len(tests), figsize=(6 * len(tests), 4.2), squeeze=False)
    for axis, test in zip(axes[0], tests):
        present = [t for t in trainers if t in set(summary["trainer"])]
        for index, trainer in enumerate(present):
            rows = summary[summary["trainer"] == trainer].sort_values("fraction")
            errors = rows[f"dice_{test}_std"].fillna(0.0)
            dodge = 0.06 * (index - (len(present) - 1) / 2)  # equal curves stay visible side by side
            axis.errorbar([positions[f] + dodge for f in rows["fraction"]], rows[f"dice_{test}_mean"], yerr=errors,
                          marker="o", capsize=3, label=trainer)
        axis.set_xticks(range(len(fractions)))
        axis.set_xticklabels([f"{f:g}\n(+{int(novel_counts[f])})" for f in fractions])
        axis.set_xlabel(f"fraction of {settings.get('novel_site')} training cases added (cases)")
        axis.set_ylabel("foreground Dice")
        site = settings.get("base_site") if test == "base_test" else settings.get("novel_site")
        axis.set_title(f"{site} test cases")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(f"Data addition: {settings.get('base_site')} + {settings.get('novel_site')}")
    figure.tight_layout()
    with atomic_path(path, suffix=".png") as temporary:
        figure.savefig(temporary, dpi=120)
    plt.close(figure)


# ----- leave one site out ----------------------------------------------------------------------

def held_out_table(rows: pd.DataFrame, metric: str, sites: Sequence[str], trainers: Sequence[str]) -> pd.DataFrame:
    """Rows trainers, columns held-out sites and ``mean`` (over sites; NaN until every site is done)."""
    values = rows.groupby(["trainer", "held_out"])[metric].mean().unstack("held_out")
    table = values.reindex(index=[t for t in trainers if t in values.index], columns=list(sites))
    table[MEAN_COLUMN] = table[list(sites)].mean(axis=1, skipna=False)
    table.index.name = "trainer"
    return table.reset_index()


def write_held_out_results(rows: Sequence[Mapping[str, Any]], folder: Path, settings: Mapping[str, Any],
                           sites: Sequence[str], trainers: Sequence[str]) -> dict[str, Path]:
    frame = pd.DataFrame.from_records(list(rows))
    if frame.empty:
        return {}
    paths = {name: folder / name for name in (RESULTS_CSV, TABLE_CSV, TABLE_MD)}
    frame = frame.sort_values(["trainer", "held_out", "repeat"], key=_trainer_order(trainers), kind="stable")
    write_csv(frame, paths[RESULTS_CSV])
    dice = held_out_table(frame, "dice_test", sites, trainers)
    write_csv(dice, paths[TABLE_CSV])
    lines = [f"# Leave one site out: `{settings.get('dataset')}`", "",
             f"- configuration `{settings.get('configuration')}`, plans `{settings.get('plans_name')}`, epochs "
             f"{settings.get('epochs')}, iterations/epoch {settings.get('iters_per_epoch')}, checkpoint "
             f"`{settings.get('checkpoint')}`, repeats {settings.get('repeats')}",
             "- each column: trained on the other sites (validation cases from those sites only), tested on "
             "every case of the column's site; foreground-mean Dice / IoU averaged over repeats; `mean` over "
             "sites (blank until every site is done)", ""]
    for metric, title in (("dice_test", "Dice"), ("iou_test", "IoU")):
        table = held_out_table(frame, metric, sites, trainers)
        header = ["trainer", *sites, MEAN_COLUMN]
        lines += [f"## {title}", "", "| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
        for row in table.itertuples(index=False):
            lines.append("| " + " | ".join([str(row[0])] + [_number(v) for v in row[1:]]) + " |")
        lines.append("")
    write_text_atomic(paths[TABLE_MD], "\n".join(lines))
    return paths


# ----- formatting ------------------------------------------------------------------------------

def _trainer_order(trainers: Sequence[str]):
    """A ``sort_values`` key keeping trainers in the order they were asked for."""
    order = {name: index for index, name in enumerate(trainers)}

    def key(column: pd.Series) -> pd.Series:
        return column.map(lambda name: order.get(name, len(order))) if column.name == "trainer" else column

    return key


def _mean_std(mean: float, std: float, count: int) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    spread = "" if std is None or (isinstance(std, float) and math.isnan(std)) else f" ± {std:.4f}"
    return f"{mean:.4f}{spread} ({count})"


def _number(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.4f}"
