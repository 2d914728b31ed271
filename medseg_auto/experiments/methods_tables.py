"""Leaderboard of the method benchmark (:mod:`.methods`), rebuilt from the cell folders.

Read from disk after every finished cell, so a resumed or partly failed run always shows
everything that is done. Per case the foreground-mean Dice is the mean over classes of the
case's ``metrics.csv`` rows (NaN where every class is empty in reference and prediction,
skipped in means: nnU-Net's convention).

- ``results.csv``: one row per finished cell (``done.json``'s row);
- ``per_case.csv``: arm, seed, test set, case, site, Dice;
- ``leaderboard.csv`` / ``.json``: per arm, test set and site (``all`` = every case): mean and
  standard deviation over seeds of the per-seed mean Dice; for site ``all`` (and per site of a
  test set with several sites) the paired per-case difference to Base (each case's Dice
  averaged over the seeds both arms finished) with a bootstrap 95% CI, the Wilcoxon p-value and
  its Holm correction over the arms of that test set and site; ``harm``: in-domain mean Dice
  below 95% of Base's; for an arm whose trainer declares a ``control_arm`` (the arm that isolates
  its contribution, e.g. ExchangeableFeatureDiscrepancy -> SiteBalanced, the same batches without
  the loss) and when that arm ran, the same paired difference to the control (``control``,
  ``diff_vs_control``, ``control_ci_low``/``_high``, ``control_p``, ``control_p_holm`` over the
  control comparisons of that test set and site), shown in its own Markdown section;
- ``failure_prediction.csv`` (and ``failure_prediction`` in the JSON, a section of the Markdown
  and HTML): per arm and test set, the AUROC of each per-case signal for predicting failure
  (:mod:`.methods_failure`);
- ``failure_flags.csv`` (and ``failure_flags`` in the JSON, Markdown and HTML): the flag rule each model
  learns from its in-domain cases against the fixed default, on the external sets
  (:mod:`.methods_flag_rules`);
- ``leaderboard.md`` and ``leaderboard.html`` (:mod:`.methods_html`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from medseg_auto.evaluation.paired_stats import holm_correction, paired_difference
from medseg_auto.experiments.cells import Cell, read_done
from medseg_auto.experiments.methods_format import format_control_delta, format_delta, format_dice
from medseg_auto.experiments.tables import write_csv
from medseg_auto.utils.atomic import write_json_atomic, write_text_atomic

BASE = "Base"
IN_DOMAIN = "in_domain"
ALL_SITES = "all"
HARM_RATIO = 0.95
FILES = ("results.csv", "per_case.csv", "leaderboard.csv", "failure_prediction.csv", "failure_flags.csv",
         "leaderboard.json", "leaderboard.md", "leaderboard.html")


def per_case_frame(cells: Sequence[tuple[Cell, Path]]) -> pd.DataFrame:
    """Long table ``arm, seed, test_set, case, site, dice`` of every finished cell."""
    frames = []
    for cell, folder in cells:
        if read_done(folder) is None:
            continue
        for name in [*cell.test_sets, *cell.external_sets]:
            metrics = folder / f"test_{name}" / "metrics.csv"
            if not metrics.is_file():
                continue
            table = pd.read_csv(metrics)
            cases = table.groupby("case", sort=True).agg(site=("site", "first"), dice=("dice", "mean")).reset_index()
            cases["site"] = cases["site"].fillna(ALL_SITES if name == IN_DOMAIN else name).astype(str)
            cases.insert(0, "test_set", name)
            cases.insert(0, "seed", cell.seed)
            cases.insert(0, "arm", cell.info.get("arm", cell.trainer))
            frames.append(cases)
    columns = ["arm", "seed", "test_set", "case", "site", "dice"]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)


def control_arms(arms: Sequence[str]) -> dict[str, str]:
    """Arm -> the arm its trainer names as ``control_arm``, for arms that are registered trainers
    whose control is among ``arms`` (network and FDA arms have none)."""
    from medseg_auto.training.registry import UnknownTrainerError, get_trainer

    controls = {}
    for arm in arms:
        try:
            control = get_trainer(arm).control_arm
        except UnknownTrainerError:
            continue
        if control and control in arms and control != arm:
            controls[arm] = control
    return controls


def leaderboard(per_case: pd.DataFrame, arms: Sequence[str],
                controls: Mapping[str, str] | None = None) -> pd.DataFrame:
    """One row per arm, test set and site (see the module docstring); ``controls``: arm -> its
    control arm (:func:`control_arms`)."""
    rows: list[dict[str, Any]] = []
    if per_case.empty:
        return pd.DataFrame(rows)
    for test_set in _ordered_sets(per_case):
        subset = per_case[per_case["test_set"] == test_set]
        sites = sorted(subset["site"].unique())
        scopes = [ALL_SITES] + ([site for site in sites if site != ALL_SITES] if len(sites) > 1 else [])
        for scope in scopes:
            scoped = subset if scope == ALL_SITES else subset[subset["site"] == scope]
            block = [_arm_row(scoped, arm, test_set, scope) for arm in arms if arm in set(scoped["arm"])]
            adjusted = holm_correction([row.get("p_value") for row in block])
            for row, p_holm in zip(block, adjusted):
                row["p_holm"] = p_holm
            _add_control_differences(scoped, block, controls or {})
            rows += block
    table = pd.DataFrame(rows)
    base_in_domain = table[(table["arm"] == BASE) & (table["test_set"] == IN_DOMAIN) & (table["site"] == ALL_SITES)]
    reference = float(base_in_domain["dice_mean"].iloc[0]) if len(base_in_domain) else math.nan
    in_domain_all = (table["test_set"] == IN_DOMAIN) & (table["site"] == ALL_SITES)
    table["harm"] = in_domain_all & (table["dice_mean"] < HARM_RATIO * reference)
    return table


def _arm_row(scoped: pd.DataFrame, arm: str, test_set: str, site: str) -> dict[str, Any]:
    rows = scoped[scoped["arm"] == arm]
    per_seed = rows.groupby("seed")["dice"].mean()
    row: dict[str, Any] = {"arm": arm, "test_set": test_set, "site": site, "n_cases": int(rows["case"].nunique()),
                           "n_seeds": int(per_seed.size), "seeds": " ".join(str(s) for s in per_seed.index),
                           "dice_mean": float(per_seed.mean()),
                           "dice_sd": float(per_seed.std(ddof=1)) if per_seed.size > 1 else math.nan}
    base = scoped[scoped["arm"] == BASE]
    if arm == BASE or base.empty:
        return row
    seeds = sorted(set(rows["seed"]) & set(base["seed"]))
    if not seeds:
        return row
    paired = paired_difference(_seed_mean(base, seeds), _seed_mean(rows, seeds))
    row.update({"paired_seeds": " ".join(str(s) for s in seeds), "n_pairs": paired["n"],
                "diff_vs_base": paired["mean_difference"], "ci_low": paired["ci_low"],
                "ci_high": paired["ci_high"], "p_value": paired["p_value"]})
    return row


def _add_control_differences(scoped: pd.DataFrame, block: list[dict[str, Any]], controls: Mapping[str, str]) -> None:
    """The paired difference of each arm of ``block`` to its control, Holm-corrected over them."""
    compared = []
    for row in block:
        control = controls.get(row["arm"])
        mine, theirs = scoped[scoped["arm"] == row["arm"]], scoped[scoped["arm"] == control]
        seeds = sorted(set(mine["seed"]) & set(theirs["seed"])) if control else []
        if not seeds:
            continue
        paired = paired_difference(_seed_mean(theirs, seeds), _seed_mean(mine, seeds))
        row.update({"control": control, "diff_vs_control": paired["mean_difference"],
                    "control_ci_low": paired["ci_low"], "control_ci_high": paired["ci_high"],
                    "control_p": paired["p_value"]})
        compared.append(row)
    for row, p_holm in zip(compared, holm_correction([row["control_p"] for row in compared])):
        row["control_p_holm"] = p_holm


def _seed_mean(rows: pd.DataFrame, seeds: Sequence[int]) -> pd.Series:
    """Per-case Dice averaged over ``seeds`` (NaN-skipping), indexed by case."""
    return rows[rows["seed"].isin(seeds)].groupby("case")["dice"].mean()


def _ordered_sets(per_case: pd.DataFrame) -> list[str]:
    names = list(dict.fromkeys(per_case["test_set"]))
    return ([IN_DOMAIN] if IN_DOMAIN in names else []) + sorted(n for n in names if n != IN_DOMAIN)


def write_methods_results(folder: Path, cells: Sequence[tuple[Cell, Path]], arms: Sequence[str],
                          settings: Mapping[str, Any]) -> dict[str, Path]:
    """(Re)write every output from the finished cells; return the written paths by name."""
    from medseg_auto.experiments.methods_failure import failure_markdown, failure_prediction_table, signal_frame
    from medseg_auto.experiments.methods_flag_rules import flag_rule_markdown, flag_rule_table
    from medseg_auto.experiments.methods_html import write_leaderboard_html

    rows = [row for row in (read_done(path) for _, path in cells) if row is not None]
    if not rows:
        return {}
    paths = {name: folder / name for name in FILES}
    write_csv(pd.DataFrame.from_records(rows), paths["results.csv"])
    per_case = per_case_frame(cells)
    write_csv(per_case, paths["per_case.csv"])
    table = leaderboard(per_case, arms, control_arms(arms))
    write_csv(table, paths["leaderboard.csv"])
    signals = signal_frame(cells)
    failure = failure_prediction_table(signals, arms)
    write_csv(failure, paths["failure_prediction.csv"])
    flags = flag_rule_table(signals, arms)
    write_csv(flags, paths["failure_flags.csv"])
    failed = sorted(cell.key for cell, path in cells if (path / "failed.json").is_file())
    payload = {"settings": dict(settings), "cells_done": len(rows), "cells_total": len(cells), "failed": failed,
               "rows": [{k: _json_value(v) for k, v in row.items()} for row in table.to_dict("records")],
               "failure_prediction": [{k: _json_value(v) for k, v in row.items()}
                                      for row in failure.to_dict("records")],
               "failure_flags": [{k: _json_value(v) for k, v in row.items()} for row in flags.to_dict("records")]}
    write_json_atomic(paths["leaderboard.json"], payload)
    markdown = leaderboard_markdown(table, settings, len(rows), len(cells), failed)
    markdown = markdown.rstrip("\n") + "\n" + "\n".join([*failure_markdown(failure), *flag_rule_markdown(flags)]) + "\n"
    write_text_atomic(paths["leaderboard.md"], markdown)
    write_leaderboard_html(paths["leaderboard.html"], table, per_case, markdown_intro(settings, len(rows), len(cells),
                                                                                       failed), arms, failure, flags)
    return paths


def markdown_intro(settings: Mapping[str, Any], done: int, total: int, failed: Sequence[str]) -> list[str]:
    lines = [f"- dataset `{settings.get('dataset')}` (train sites: {settings.get('train_sites') or 'all'}), "
             f"configuration `{settings.get('configuration')}`, plans `{settings.get('plans_name')}`, "
             f"epochs {settings.get('epochs')} x {settings.get('iters_per_epoch')} iterations, checkpoint "
             f"`{settings.get('checkpoint')}`",
             f"- cases: {settings.get('n_train')} training, {settings.get('n_val')} validation (model selection), "
             f"{settings.get('n_test')} in-domain test (duplicates and patients kept on one side); external "
             f"(never trained on): {', '.join(settings.get('test_datasets') or []) or 'none'}",
             f"- cells finished: {done} of {total}" + (f"; failed: {', '.join(failed)}" if failed else ""),
             "- Dice: per-case foreground mean, mean ± sd over seeds of the per-seed means (seeds); Δ: paired "
             "per-case difference to Base (cases averaged over the seeds both finished), bootstrap 95% CI, "
             "Wilcoxon p Holm-corrected over the arms; **harm**: in-domain Dice below 95% of Base's"]
    return lines


def leaderboard_markdown(table: pd.DataFrame, settings: Mapping[str, Any], done: int, total: int,
                         failed: Sequence[str]) -> str:
    lines = ["# Method benchmark", "", *markdown_intro(settings, done, total, failed), ""]
    if table.empty:
        return "\n".join(lines + ["No finished cells yet."])
    overall = table[table["site"] == ALL_SITES]
    sets = list(dict.fromkeys(overall["test_set"]))
    header = ["arm"] + [f"{_label(s)} Dice" for s in sets] + [f"{_label(s)} Δ vs Base [95% CI] p_Holm" for s in sets]
    lines += ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for arm in dict.fromkeys(overall["arm"]):
        by_set = {row["test_set"]: row for row in overall[overall["arm"] == arm].to_dict("records")}
        dice = [format_dice(by_set.get(s)) for s in sets]
        deltas = [format_delta(by_set.get(s)) for s in sets]
        lines.append("| " + " | ".join([arm, *dice, *deltas]) + " |")
    sited = table[(table["site"] != ALL_SITES)]
    if not sited.empty:
        columns = list(dict.fromkeys(zip(sited["test_set"], sited["site"])))
        lines += ["", "## Per site", "", "| arm | " + " | ".join(f"{_label(t)}: {s}" for t, s in columns) + " |",
                  "|---|" + "---:|" * len(columns)]
        for arm in dict.fromkeys(sited["arm"]):
            rows = {(r["test_set"], r["site"]): r for r in sited[sited["arm"] == arm].to_dict("records")}
            lines.append(f"| {arm} | " + " | ".join(format_dice(rows.get(c)) for c in columns) + " |")
    if "diff_vs_control" in table and table["diff_vs_control"].notna().any():
        lines += ["", "## Against each method's control", "",
                  "The arm that isolates the method's own contribution (the trainer's `control_arm`), paired "
                  "case by case as against Base; p Holm-corrected over these comparisons.", "",
                  "| arm | control | test set | site | Δ vs control [95% CI] p_Holm |", "|---|---|---|---|---:|"]
        for row in table[table["diff_vs_control"].notna()].to_dict("records"):
            lines.append(f"| {row['arm']} | {row['control']} | {_label(row['test_set'])} | {row['site']} | "
                         f"{format_control_delta(row)} |")
    return "\n".join(lines) + "\n"


def _label(test_set: str) -> str:
    return "in-domain" if test_set == IN_DOMAIN else test_set


def _json_value(value: Any) -> Any:
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(float(value)) else float(value)
    return value
