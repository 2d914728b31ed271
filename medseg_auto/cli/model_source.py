"""Which model ``predict`` uses: ``-d NAME -c CONFIG`` (our results in the data home) or
``-m FOLDER``: one of our ``TRAINER__PLANS__CONFIG`` folders, or an nnU-Net v2 results folder
(``nnUNet_results/DatasetNNN_Name/nnUNetTrainer__nnUNetPlans__3d_fullres``, read in place)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from medseg_auto.errors import MedsegError
from medseg_auto.paths import DataHome
from medseg_auto.utils.logging_setup import get_logger

if TYPE_CHECKING:  # the parser is built without importing torch (tests/test_demo.py)
    from medseg_auto.inference.model_loading import LoadedModel

log = get_logger("cli.predict")


@dataclass
class ModelSource:
    folder: Path
    models: list[LoadedModel]
    kind: str  # "medseg_auto" or "nnU-Net v2"

    @property
    def is_nnunet(self) -> bool:
        return self.kind == "nnU-Net v2"


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-m", "--model", metavar="FOLDER", type=Path, default=None,
                        help="a trained model folder instead of -d/-c/-tr/-p: ours (TRAINER__PLANS__CONFIG) or "
                             "nnU-Net v2's (nnUNet_results/DatasetNNN_Name/nnUNetTrainer__nnUNetPlans__3d_fullres)")


def resolve_models(args: argparse.Namespace, home: DataHome) -> ModelSource:
    """Load the folds ``args`` name; errors say which options are missing."""
    from medseg_auto.inference.model_loading import experiment_folder, load_folds
    from medseg_auto.inference.nnunet_model import is_nnunet_model_folder, load_nnunet_folds

    if args.model is not None:
        folder = args.model.expanduser().resolve()
        if not folder.is_dir():
            raise MedsegError(f"{folder}: model folder not found")
        if is_nnunet_model_folder(folder):
            log.info("%s: an nnU-Net v2 model folder (read only)", folder)
            return ModelSource(folder, load_nnunet_folds(folder, args.folds, args.checkpoint), "nnU-Net v2")
        return ModelSource(folder, load_folds(folder, args.folds, args.checkpoint), "medseg_auto")
    missing = [flag for flag, value in (("-d", args.dataset), ("-c", args.configuration)) if not value]
    if missing:
        raise MedsegError(f"name the model with {' and '.join(missing)} (or -m MODEL_FOLDER)")
    folder = experiment_folder(home.results_dataset(args.dataset), args.trainer, args.plans, args.configuration)
    return ModelSource(folder, load_folds(folder, args.folds, args.checkpoint), "medseg_auto")
