"""Evaluate a folder of predicted label maps against a folder of reference label maps.

Files are matched by case id, the file name without its format ending (``.nii.gz`` counts as
one ending), so ``case_001.nii.gz`` in both folders is one case; a prediction may use another
supported ending than its reference. Every reference needs a prediction (the missing ones are
listed in one error); predictions without a reference are logged and ignored. Each case is read
and scored in a worker process by :func:`medseg_auto.evaluation.metrics.evaluate_arrays`; the
rows are gathered into one table and summarised by :func:`summarise` (means per class, per
site, and the worst and best cases).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from medseg_auto.dataset.dataset_json import DatasetSpec
from medseg_auto.dataset.image_io import file_ending_of, is_supported, read_segmentation
from medseg_auto.errors import GeometryMismatchError, MedsegError
from medseg_auto.evaluation.metrics import CLASS_ROW_KEYS, both_empty_row, evaluate_arrays
from medseg_auto.utils.logging_setup import get_logger
from medseg_auto.utils.parallel import parallel_map

log = get_logger("evaluation")

#: Columns of :attr:`EvaluationResult.table`, one row per case and foreground class.
TABLE_COLUMNS = ("case", "site") + CLASS_ROW_KEYS
SPACING_TOLERANCE = 1e-3
MISSING_CASES_SHOWN = 20
#: Metrics averaged over cases per class; the first four are also averaged over classes.
MEAN_METRICS = ("dice", "iou", "hd95", "asd", "tp", "fp", "fn", "n_ref", "n_pred", "vol_ref_mm", "vol_pred_mm")
FOREGROUND_MEAN_METRICS = ("dice", "iou", "hd95", "asd")
RANKED_FRACTION = 0.1  # worst and best decile
NO_SITE = "(no site)"


class EvaluationError(MedsegError):
    """Prediction and reference folders do not fit together (missing files, empty folder)."""


@dataclass
class EvaluationResult:
    """Everything one evaluation produced.

    ``table``: one row per case and class with :data:`TABLE_COLUMNS` (NaN where a metric is
    undefined, see :mod:`medseg_auto.evaluation.metrics`). ``summary``: nested dicts of means
    (see :func:`summarise`); it may hold NaN floats, which the
    writer turns into JSON ``null``.
    """

    table: pd.DataFrame
    summary: dict
    pred_dir: Path
    gt_dir: Path


def evaluate_folders(
    pred_dir: str | Path,
    gt_dir: str | Path,
    spec: DatasetSpec | None = None,
    labels: Sequence[int] | None = None,
    sites: dict[str, str] | None = None,
    num_processes: int = 1,
    show_progress: bool = True,
    predicted_only: bool = False,
) -> EvaluationResult:
    """Score every reference label map in ``gt_dir`` against its prediction in ``pred_dir``.

    Args:
        spec: the dataset's ``dataset.json``, if known: gives the reference file ending, the
            label names and (for the ``site`` column) the sites.
        labels: foreground labels to score. ``None``: the spec's foreground labels, or without
            a spec the union of the non-zero values found in all references and predictions.
        sites: case -> site. When given, the summary gets per-site tables; the ``site``
            column is filled from it (else from ``spec.sites``, else left empty).
        num_processes: worker processes (1 runs in this process).
        predicted_only: score only the references that have a prediction (a fold's
            validation cases, say) instead of treating the others as missing.

    Raises:
        EvaluationError: no reference files, or predictions missing (all listed).
        GeometryMismatchError: a prediction's shape or spacing differs from its reference
            (both files named).
    """
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    pairs = match_case_files(pred_dir, gt_dir, spec.file_ending if spec else None, predicted_only)
    if labels is None and spec is not None:
        labels = spec.foreground_labels
    chosen_labels = sorted({int(v) for v in labels if int(v) != 0}) if labels is not None else None
    arguments = [(case_id, pred, gt, chosen_labels) for case_id, (pred, gt) in pairs.items()]
    per_case = parallel_map(evaluate_case_files, arguments, num_processes, "evaluating", show_progress)
    if chosen_labels is None:
        chosen_labels = sorted({row["class"] for rows in per_case for row in rows})
        per_case = [_fill_absent_classes(rows, chosen_labels) for rows in per_case]
    if not chosen_labels:
        log.warning("%s: no foreground label in any reference or prediction; nothing to score", gt_dir)
    site_of = dict(sites if sites is not None else (spec.sites if spec else {}))
    table = tabulate({case_id: rows for (case_id, *_), rows in zip(arguments, per_case)}, site_of)
    label_names = _label_names(spec, chosen_labels)
    summary = summarise(table, chosen_labels, label_names, per_site=sites is not None)
    log.info("evaluated %d case(s), %d class(es): foreground mean Dice %.4f",
             len(pairs), len(chosen_labels), summary["foreground_mean"]["dice"])
    return EvaluationResult(table=table, summary=summary, pred_dir=pred_dir, gt_dir=gt_dir)


def tabulate(rows_by_case: dict[str, list[dict]], sites: dict[str, str] | None = None) -> pd.DataFrame:
    """One table (columns :data:`TABLE_COLUMNS`) from the :func:`evaluate_arrays` rows of each case.

    Callers that score arrays in memory (the training's final validation) use this and
    :func:`summarise` to get the same table and summary as a folder evaluation.
    """
    sites = sites or {}
    records = [
        {"case": case_id, "site": sites.get(case_id), **row} for case_id, rows in rows_by_case.items() for row in rows
    ]
    table = pd.DataFrame.from_records(records, columns=list(TABLE_COLUMNS))
    return table.astype({"tp": "int64", "fp": "int64", "fn": "int64", "n_ref": "int64", "n_pred": "int64",
                         "ref_empty": "bool", "pred_empty": "bool"})


def evaluate_case_files(case_id: str, pred_path: Path, gt_path: Path, labels: list[int] | None) -> list[dict]:
    """Read one prediction/reference pair and score it (the per-case worker).

    ``labels=None`` scores the non-zero values present in either file. Shapes must match
    exactly and spacings within :data:`SPACING_TOLERANCE` (relative); distances use the
    reference's spacing.
    """
    reference, reference_geometry = read_segmentation(gt_path)
    prediction, prediction_geometry = read_segmentation(pred_path)
    if prediction.shape != reference.shape:
        raise GeometryMismatchError(
            f"case '{case_id}': prediction {pred_path} has shape {prediction.shape} (z, y, x) but "
            f"reference {gt_path} has {reference.shape}; predictions must be in the reference's image grid"
        )
    if reference_geometry.is_2d != prediction_geometry.is_2d or not np.allclose(
        prediction_geometry.spacing, reference_geometry.spacing, rtol=SPACING_TOLERANCE, atol=SPACING_TOLERANCE
    ):
        raise GeometryMismatchError(
            f"case '{case_id}': prediction {pred_path} has spacing {prediction_geometry.spacing} (z, y, x) but "
            f"reference {gt_path} has {reference_geometry.spacing}"
        )
    if labels is None:
        values = np.union1d(np.unique(reference), np.unique(prediction))
        labels = [int(v) for v in values if v != 0]
    return evaluate_arrays(prediction, reference, reference_geometry.spacing, labels, reference_geometry.is_2d)


def match_case_files(
    pred_dir: Path, gt_dir: Path, gt_file_ending: str | None = None, predicted_only: bool = False
) -> dict[str, tuple[Path, Path]]:
    """Map case id -> (prediction file, reference file), sorted by case id.

    Reference files are those in ``gt_dir`` ending in ``gt_file_ending`` (any supported image
    ending when ``None``). A prediction with the reference's ending is preferred; a case with
    several other candidate endings is an error, as is any reference without a prediction
    unless ``predicted_only`` (then only references with a prediction are paired).
    """
    if not gt_dir.is_dir():
        raise EvaluationError(f"{gt_dir}: reference folder not found")
    if not pred_dir.is_dir():
        raise EvaluationError(f"{pred_dir}: prediction folder not found")
    references = _files_by_case(gt_dir, gt_file_ending)
    if not references:
        wanted = f"'{gt_file_ending}'" if gt_file_ending else "supported image"
        raise EvaluationError(f"{gt_dir}: no {wanted} files to evaluate against")
    predictions = _files_by_case(pred_dir, None)
    pairs: dict[str, tuple[Path, Path]] = {}
    missing: list[str] = []
    for case_id, gt_candidates in references.items():
        if len(gt_candidates) > 1:
            raise EvaluationError(f"{gt_dir}: case '{case_id}' has several reference files: "
                                  f"{', '.join(p.name for p in gt_candidates)}")
        gt_path = gt_candidates[0]
        candidates = predictions.get(case_id, [])
        same_ending = [p for p in candidates if file_ending_of(p) == file_ending_of(gt_path)]
        if same_ending:
            pairs[case_id] = (same_ending[0], gt_path)
        elif len(candidates) == 1:
            pairs[case_id] = (candidates[0], gt_path)
        elif candidates:
            raise EvaluationError(f"{pred_dir}: case '{case_id}' has several predictions "
                                  f"({', '.join(p.name for p in candidates)}); keep one")
        else:
            missing.append(case_id)
    if missing and predicted_only:
        if not pairs:
            raise EvaluationError(f"{pred_dir}: no prediction matches a reference in {gt_dir}")
        log.info("%d reference(s) without a prediction are left out (--predicted-only)", len(missing))
    elif missing:
        shown = ", ".join(missing[:MISSING_CASES_SHOWN])
        more = f" and {len(missing) - MISSING_CASES_SHOWN} more" if len(missing) > MISSING_CASES_SHOWN else ""
        raise EvaluationError(
            f"{pred_dir}: {len(missing)} of {len(references)} case(s) have no prediction: {shown}{more} "
            f"(expected e.g. {pred_dir / missing[0]}{file_ending_of(references[missing[0]][0])})"
        )
    extra = sorted(set(predictions) - set(references))
    if extra:
        log.warning("%s: %d prediction(s) without a reference in %s are ignored: %s",
                    pred_dir, len(extra), gt_dir, ", ".join(extra[:MISSING_CASES_SHOWN]))
    return pairs


def _files_by_case(folder: Path, file_ending: str | None) -> dict[str, list[Path]]:
    """Case id -> image files in ``folder`` (only ``file_ending`` if given), sorted."""
    grouped: dict[str, list[Path]] = {}
    for entry in sorted(folder.iterdir()):
        if not entry.is_file() or entry.name.startswith("."):
            continue
        if file_ending is not None:
            if not entry.name.endswith(file_ending):
                continue
            ending = file_ending
        elif is_supported(entry):
            ending = file_ending_of(entry)
        else:
            continue
        grouped.setdefault(entry.name[: -len(ending)], []).append(entry)
    return grouped


def _fill_absent_classes(rows: list[dict], labels: list[int]) -> list[dict]:
    """Add the both-empty row for each label a case did not contain (labels inferred per case)."""
    by_label = {row["class"]: row for row in rows}
    return [by_label.get(label, both_empty_row(label)) for label in labels]


def _label_names(spec: DatasetSpec | None, labels: list[int]) -> dict[int, str]:
    names = {value: name for name, value in spec.labels.items()} if spec else {}
    return {label: names.get(label, f"label_{label}") for label in labels}



def summarise(
    table: pd.DataFrame, labels: Sequence[int], label_names: dict[int, str] | None = None, per_site: bool = False
) -> dict:
    """Means of ``table`` (columns :data:`TABLE_COLUMNS`) as JSON-ready nested dicts.

    Keys: ``num_cases``; ``labels`` (value -> name, ``label_N`` when unnamed); the four mean blocks of :func:`_means`
    over all cases; ``per_site`` (site -> ``num_cases`` and the same four blocks; only when
    ``per_site``); ``worst_cases`` / ``best_cases``: the lowest / highest decile of cases (at
    least one each) ranked by the case's foreground-mean Dice (the nan-mean over its classes;
    cases where every class is empty in both files have no Dice and are not ranked), worst
    first and best first respectively.
    """
    summary: dict = {
        "num_cases": int(table["case"].nunique()),
        "labels": {str(label): (label_names or {}).get(label, f"label_{label}") for label in labels},
        **_means(table, labels),
    }
    if per_site:
        sites = table["site"].fillna(NO_SITE)
        summary["per_site"] = {
            str(site): {"num_cases": int(group["case"].nunique()), **_means(group, labels)}
            for site, group in table.groupby(sites, sort=True)
        }
    worst, best = _ranked_cases(table)
    summary["worst_cases"], summary["best_cases"] = worst, best
    return summary


def _means(table: pd.DataFrame, labels: Sequence[int]) -> dict:
    """Per-class nan-means over cases, and their mean over classes, with and without the cases
    whose reference lacks the class (``*_nonempty_reference``).

    Including those cases follows nnU-Net (a false positive there scores Dice 0, a correct
    empty prediction is NaN and skipped); excluding them shows how well present structures are
    delineated. ``foreground_mean`` is the mean over classes of the class means (nnU-Net's).
    """
    result: dict = {}
    for suffix, rows in (("", table), ("_nonempty_reference", table[~table["ref_empty"]])):
        per_class = {str(label): _class_means(rows[rows["class"] == label]) for label in labels}
        result["per_class" + suffix] = per_class
        result["foreground_mean" + suffix] = {
            metric: _mean([values[metric] for values in per_class.values()]) for metric in FOREGROUND_MEAN_METRICS
        }
    return result


def _class_means(rows: pd.DataFrame) -> dict:
    """Means of one class's rows plus the counts that say how many cases a mean rests on."""
    means = {metric: _mean(rows[metric].tolist()) for metric in MEAN_METRICS}
    one_empty = rows["ref_empty"] != rows["pred_empty"]
    means.update(
        num_cases=int(len(rows)),
        num_empty_reference=int(rows["ref_empty"].sum()),
        num_distance_undefined=int(one_empty.sum()),
    )
    return means


def _ranked_cases(table: pd.DataFrame) -> tuple[list[dict], list[dict]]:
    """(worst decile ascending by Dice, best decile descending), ties broken by case id."""
    per_case = table.groupby("case", sort=True).agg(site=("site", "first"), dice=("dice", "mean"))
    per_case = per_case.dropna(subset=["dice"]).reset_index()
    if per_case.empty:
        return [], []
    count = max(1, int(len(per_case) * RANKED_FRACTION))
    ascending = per_case.sort_values(["dice", "case"], kind="stable")
    descending = per_case.sort_values(["dice", "case"], ascending=[False, True], kind="stable")

    def records(frame: pd.DataFrame) -> list[dict]:
        return [{"case": str(row.case), "site": None if pd.isna(row.site) else str(row.site),
                 "foreground_dice": float(row.dice)} for row in frame.head(count).itertuples()]

    return records(ascending), records(descending)


def _mean(values: list) -> float:
    """Mean ignoring NaN; NaN (without numpy's warning) when nothing is left."""
    finite = [float(v) for v in values if not pd.isna(v)]
    return sum(finite) / len(finite) if finite else float("nan")
