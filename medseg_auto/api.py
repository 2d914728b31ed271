"""The Python API: the stage functions, and a :class:`Predictor` for notebooks and services.

Each CLI command is a thin layer over one function; the ones most used from Python are
re-exported here::

    from medseg_auto.api import DataHome, plan_and_preprocess, train_fold, TrainRequest, evaluate_folders, Predictor

Importing this module shows the package's log records on stdout when logging is not
configured (a notebook's default), so ``train_fold`` reports its epochs there as on the
console; an application that configures logging itself keeps control.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from medseg_auto.dataset.image_io import DUMMY_2D_SPACING, ImageGeometry
from medseg_auto.errors import MedsegError
from medseg_auto.evaluation.evaluate import evaluate_folders
from medseg_auto.inference.model_loading import experiment_folder, load_folds
from medseg_auto.inference.model_loading import LoadedModel
from medseg_auto.inference.predict import PredictionOptions, predict_images, resolve_device
from medseg_auto.paths import DataHome
from medseg_auto.preprocessing.pipeline import plan_and_preprocess
from medseg_auto.run.train import TrainRequest, train_fold
from medseg_auto.utils.logging_setup import ensure_console_logging

__all__ = ["DataHome", "Predictor", "TrainRequest", "evaluate_folders", "plan_and_preprocess", "train_fold"]

ensure_console_logging()

ImageInput = np.ndarray | str | Path | Sequence[str | Path]


class Predictor:
    """A trained model (one fold or an ensemble of folds), loaded once, predicting many images.

    Like nnU-Net's ``nnUNetPredictor``: build it from a results folder
    (``results/DatasetNNN_Name/TRAINER__PLANS__CONFIG``, or nnU-Net v2's
    ``nnUNet_results/DatasetNNN_Name/nnUNetTrainer__nnUNetPlans__3d_fullres``), then call
    :meth:`predict` with an array or an image file. Prediction is the CLI's: the training preprocessing, sliding window
    with Gaussian weighting and mirroring, softmax averaged over folds, resampled back to the
    input's grid, and ``postprocessing.json`` applied when the folder has one.
    """

    def __init__(self, model_folder: str | Path, folds: Sequence[int | str] | None = None, checkpoint: str = "final",
                 device: str = "auto", step_size: float = 0.5, use_mirroring: bool = True,
                 use_autocast: bool | None = None, postprocessing: bool = True) -> None:
        from medseg_auto.inference.nnunet_model import is_nnunet_model_folder, load_nnunet_folds

        self.model_folder = Path(model_folder)
        chosen = [str(f) for f in folds] if folds else None
        load = load_nnunet_folds if is_nnunet_model_folder(self.model_folder) else load_folds
        self.models: list[LoadedModel] = load(self.model_folder, chosen, checkpoint)
        self.device = resolve_device(device)
        for model in self.models:
            model.network.to(self.device)
        self.options = PredictionOptions(step_size=step_size, use_mirroring=use_mirroring, device=str(self.device),
                                         use_autocast=use_autocast, show_progress=False)
        self.postprocess = _postprocessing(self.model_folder) if postprocessing else None

    @classmethod
    def from_trained(cls, dataset: str, configuration: str, trainer: str = "Base", plans: str = "plans",
                     home: DataHome | str | Path | None = None, **options) -> "Predictor":
        """The model ``train_fold`` wrote for ``dataset`` and ``configuration`` in ``home``."""
        home = home if isinstance(home, DataHome) else DataHome.resolve(home)
        return cls(experiment_folder(home.results_dataset(dataset), trainer, plans, configuration), **options)

    @property
    def num_channels(self) -> int:
        return self.models[0].plans.num_input_channels

    def predict(self, image: ImageInput, spacing: Sequence[float] | None = None,
                return_probabilities: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Segment one image; returns the label map in the input's shape (int16).

        ``image``: a file path (or the list of a case's channel files, ``CASE_0000.nii.gz``, ...),
        read with its own spacing; or an array: 3D ``(Z, Y, X)`` or ``(C, Z, Y, X)`` with
        ``spacing=(sz, sy, sx)`` in mm (default 1 mm), or 2D ``(Y, X)`` or ``(C, Y, X)`` with
        ``spacing=(sy, sx)``. With ``return_probabilities`` also returns the class
        probabilities ``(K, *label map shape)``, float32.
        """
        from medseg_auto.dataset.case_loader import load_case_images
        from medseg_auto.preprocessing.case_pipeline import preprocess_case
        from medseg_auto.preprocessing.restore import probabilities_to_original_grid, probabilities_to_segmentation

        if isinstance(image, np.ndarray):
            data, geometry, squeeze = _array_input(image, spacing, self.num_channels)
        else:
            files = [image] if isinstance(image, (str, Path)) else list(image)
            data, geometry = load_case_images([Path(f) for f in files], self.num_channels, Path(files[0]).name)
            squeeze = False
        model = self.models[0]
        preprocessed, _, properties = preprocess_case(data, None, geometry, model.plans, model.config, "image",
                                                      sample_locations=False)
        probabilities = predict_images(self.models, [preprocessed], self.options, self.device)
        original = probabilities_to_original_grid(probabilities, properties, model.plans, model.config)
        segmentation = probabilities_to_segmentation(original)
        if self.postprocess is not None:
            segmentation = self.postprocess(segmentation)
        if squeeze:  # 2D input: drop the z axis of one slice
            segmentation, original = segmentation[0], original[:, 0]
        return (segmentation, original.astype(np.float32)) if return_probabilities else segmentation


def _array_input(image: np.ndarray, spacing: Sequence[float] | None,
                 num_channels: int) -> tuple[np.ndarray, ImageGeometry, bool]:
    """``(C, Z, Y, X)`` float32 data and its geometry from a user's array; True when 2D."""
    is_2d = spacing is not None and len(spacing) == 2
    spatial_dims = 2 if is_2d else 3
    if image.ndim == spatial_dims:
        image = image[None]
    if image.ndim != spatial_dims + 1:
        raise MedsegError(f"array of shape {image.shape}: expected {spatial_dims}D spatial axes with an optional "
                          f"channel axis first (spacing {tuple(spacing) if spacing else 'default 3D'})")
    if image.shape[0] != num_channels:
        raise MedsegError(f"array of shape {image.shape}: the model takes {num_channels} channel(s) on axis 0")
    if is_2d:
        data = image[:, None].astype(np.float32)
        geometry = ImageGeometry(spacing=(DUMMY_2D_SPACING, float(spacing[0]), float(spacing[1])), dimension=2,
                                 file_ending=".png")
    else:
        data = image.astype(np.float32)
        chosen = tuple(float(v) for v in (spacing or (1.0, 1.0, 1.0)))
        if len(chosen) != 3:
            raise MedsegError(f"spacing {chosen}: give (sz, sy, sx) for a 3D array or (sy, sx) for a 2D one")
        geometry = ImageGeometry(spacing=chosen, dimension=3)  # type: ignore[arg-type]
    if not np.all(np.isfinite(data)):
        raise MedsegError("array contains NaN or infinite values")
    return data, geometry, is_2d


def _postprocessing(folder: Path):
    from medseg_auto.inference.postprocessing import PostprocessingPlan
    from medseg_auto.utils.atomic import read_json

    path = folder / "postprocessing.json"
    return PostprocessingPlan.from_json(read_json(path)) if path.is_file() else None
