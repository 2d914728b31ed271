"""Write an :class:`~medseg_auto.evaluation.evaluate.EvaluationResult` to a folder.

Three files, each written atomically so a killed run never leaves half a file:

- ``metrics.csv``: the per-case, per-class table (empty cells for undefined metrics);
- ``summary.json``: the nested means, with NaN written as ``null`` so strict JSON readers
  (JavaScript, ``jq``) accept it;
- ``summary.md``: the same means as Markdown tables for people.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from medseg_auto.evaluation.evaluate import EvaluationResult
from medseg_auto.utils.atomic import atomic_path, write_json_atomic, write_text_atomic

METRICS_CSV = "metrics.csv"
SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"

CONVENTIONS = (
    "Dice = 2TP/(2TP+FP+FN), IoU = TP/(TP+FP+FN); HD95 and ASD (symmetric) in mm from the image spacing "
    "(2D images: in-plane, volumes in mm^2). Class empty in reference and prediction: Dice/IoU/HD95/ASD "
    "NaN. Class empty in only one: Dice/IoU 0, HD95/ASD NaN (flagged by ref_empty/pred_empty). Means "
    "skip NaN; foreground_mean is the mean over classes of the per-class means."
)


def write_evaluation(result: EvaluationResult, output_dir: str | Path) -> dict[str, Path]:
    """Write ``metrics.csv``, ``summary.json`` and ``summary.md`` into ``output_dir``.

    Returns the written paths by file name.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: output_dir / name for name in (METRICS_CSV, SUMMARY_JSON, SUMMARY_MD)}
    with atomic_path(paths[METRICS_CSV], suffix=".csv") as temp:
        result.table.to_csv(temp, index=False)
    payload = {
        "prediction_folder": str(result.pred_dir),
        "reference_folder": str(result.gt_dir),
        "conventions": CONVENTIONS,
        **result.summary,
    }
    write_json_atomic(paths[SUMMARY_JSON], json_safe(payload))
    write_text_atomic(paths[SUMMARY_MD], summary_markdown(result))
    return paths


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float replaced by ``None`` (JSON ``null``)."""
    if isinstance(value, dict):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def summary_markdown(result: EvaluationResult) -> str:
    """The summary as Markdown: per-class means (all cases, non-empty references), per-site
    Dice, and the worst and best cases."""
    summary = result.summary
    lines = [
        "# Evaluation summary", "",
        f"- predictions: `{result.pred_dir}`",
        f"- references: `{result.gt_dir}`",
        f"- cases: {summary['num_cases']}", "",
        CONVENTIONS, "",
    ]
    for suffix, title in (("", "All cases"), ("_nonempty_reference", "Cases whose reference contains the class")):
        lines += [f"## {title}", ""] + _class_table(summary, suffix) + [""]
    if "per_site" in summary:
        lines += ["## Per site (Dice)", ""] + _site_table(summary) + [""]
    for key, title in (("worst_cases", "Worst cases"), ("best_cases", "Best cases")):
        lines += [f"## {title} (foreground-mean Dice)", "", "| case | site | Dice |", "|---|---|---:|"]
        lines += [f"| {c['case']} | {c['site'] or ''} | {_number(c['foreground_dice'])} |" for c in summary[key]]
        lines.append("")
    return "\n".join(lines)


def _class_table(summary: dict, suffix: str) -> list[str]:
    rows = [
        "| class | name | Dice | IoU | HD95 (mm) | ASD (mm) | cases | empty ref | distance undefined |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, values in summary["per_class" + suffix].items():
        rows.append(
            f"| {label} | {summary['labels'][label]} | {_number(values['dice'])} | {_number(values['iou'])} | "
            f"{_number(values['hd95'], 2)} | {_number(values['asd'], 2)} | {values['num_cases']} | "
            f"{values['num_empty_reference']} | {values['num_distance_undefined']} |"
        )
    mean = summary["foreground_mean" + suffix]
    rows.append(f"| | **foreground mean** | {_number(mean['dice'])} | {_number(mean['iou'])} | "
                f"{_number(mean['hd95'], 2)} | {_number(mean['asd'], 2)} | | | |")
    return rows


def _site_table(summary: dict) -> list[str]:
    labels = list(summary["labels"])
    header = "| site | cases | " + " | ".join(f"{summary['labels'][label]}" for label in labels) + " | foreground mean |"
    rows = [header, "|---|---:|" + "---:|" * (len(labels) + 1)]
    for site, block in summary["per_site"].items():
        dice = " | ".join(_number(block["per_class"][label]["dice"]) for label in labels)
        rows.append(f"| {site} | {block['num_cases']} | {dice} | {_number(block['foreground_mean']['dice'])} |")
    return rows


def _number(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"
