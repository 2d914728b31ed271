"""Catch a prediction folder and a reference folder passed the wrong way round.

``medseg-auto evaluate PRED GT`` takes the reverse order of nnU-Net's
``nnUNetv2_evaluate_folder GT PRED``. Swapped, Dice and the surface distances come out the same
but volumes, FP/FN and the spacing used for distances are the other folder's; with
``--predicted-only`` a swapped call (labelsTr as "predictions", one fold's validation output
as "references") scores without complaint. The checks here look for the signs of a swap:

- the "reference" folder carries what a prediction run writes (our predict's
  ``summary.json``, nnU-Net's ``predict_from_raw_data_args.json``, ``.npz`` probabilities) or
  the "prediction" folder is a dataset's ``labelsTr``/``labelsTs``;
- the "prediction" folder holds every reference case and more, while ``--predicted-only``
  says the predictions are the subset;
- the "prediction" folder holds more cases than the "reference" and the reference holds fewer
  or other labels than the prediction (a model that misses a class here and there).

They run only when the folders are given by position; ``-pred``/``-ref`` say the roles
explicitly and switch them off.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from medseg_auto.dataset.image_io import file_ending_of, is_supported
from medseg_auto.errors import MedsegError

_ORDER_HINT = ("evaluate takes PRED_DIR then GT_DIR (nnU-Net's evaluate_folder takes GT then PRED); "
               "if the order is right, name the roles with -pred PRED_DIR -ref GT_DIR")
PREDICTION_MARKERS = ("predict_from_raw_data_args.json",)
REFERENCE_FOLDER_NAMES = ("labelsTr", "labelsTs")


class SwappedFoldersError(MedsegError):
    """The prediction and reference folders look swapped."""


def case_ids(folder: Path) -> set[str]:
    """Case ids of the image files in ``folder`` (empty when it is not a folder)."""
    if not folder.is_dir():
        return set()
    return {entry.name[: -len(file_ending_of(entry))] for entry in folder.iterdir()
            if entry.is_file() and not entry.name.startswith(".") and is_supported(entry)}


def looks_like_prediction(folder: Path) -> bool:
    """True when ``folder`` holds what a prediction run writes beside its label maps."""
    if any((folder / name).is_file() for name in PREDICTION_MARKERS) or any(folder.glob("*.npz")):
        return True
    summary = folder / "summary.json"
    if summary.is_file():
        try:
            content = json.loads(summary.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return isinstance(content, dict) and "predicted" in content and "model" in content  # predict's summary
    return False


def looks_like_reference(folder: Path) -> bool:
    """True for a raw dataset's label folder (``labelsTr`` beside a ``dataset.json``)."""
    return folder.name in REFERENCE_FOLDER_NAMES and (folder.parent / "dataset.json").is_file()


def check_folder_roles(pred_dir: Path, gt_dir: Path, pred_ids: set[str], gt_ids: set[str],
                       predicted_only: bool) -> None:
    """Before scoring: refuse folders whose contents say they were swapped."""
    if looks_like_prediction(gt_dir) or looks_like_reference(pred_dir):
        what = (f"{gt_dir} looks like a prediction output" if looks_like_prediction(gt_dir)
                else f"{pred_dir} is a dataset's reference label folder")
        raise SwappedFoldersError(f"{what}: were PRED_DIR and GT_DIR swapped? {_ORDER_HINT}")
    if predicted_only and gt_ids and gt_ids < pred_ids:
        raise SwappedFoldersError(
            f"{pred_dir} holds all {len(gt_ids)} reference case(s) of {gt_dir} and {len(pred_ids - gt_ids)} more, "
            f"but --predicted-only expects the predictions to be the subset: were the folders swapped? {_ORDER_HINT}")


def check_label_roles(table: pd.DataFrame, pred_dir: Path, gt_dir: Path, pred_ids: set[str],
                      gt_ids: set[str]) -> None:
    """After scoring: a "prediction" with more cases and more labels than its "reference"."""
    if not gt_ids or not gt_ids < pred_ids or table.empty:
        return
    reference_labels = set(table.loc[table["n_ref"] > 0, "class"].astype(int))
    predicted_labels = set(table.loc[table["n_pred"] > 0, "class"].astype(int))
    if reference_labels != predicted_labels and not predicted_labels < reference_labels:
        raise SwappedFoldersError(
            f"{pred_dir} has more cases than {gt_dir} ({len(pred_ids)} > {len(gt_ids)}) and the reference "
            f"holds fewer or other labels ({sorted(reference_labels)}) than the predictions "
            f"({sorted(predicted_labels)}): were the folders swapped? {_ORDER_HINT}")
