"""``--splits FILE`` of plan_and_preprocess and train: adopt an nnU-Net ``splits_final.json``."""

from __future__ import annotations

from pathlib import Path

from medseg_auto.dataset.dataset_json import DatasetSpec
from medseg_auto.paths import DataHome
from medseg_auto.training.data.splits import install_splits


def install_splits_for(home: DataHome, dataset: str, splits_file: str | Path) -> Path:
    """Install ``splits_file`` as the dataset's ``splits.json``, checked against its raw cases."""
    case_ids = [case.case_id for case in DatasetSpec.load(home.raw_dataset(dataset)).training_cases()]
    return install_splits(home.preprocessed_dataset(dataset), splits_file, case_ids)
