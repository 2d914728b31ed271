"""Predictions come back in the input's exact geometry and format."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from PIL import Image

from medseg_auto.dataset.image_io import read_segmentation
from medseg_auto.inference.model_loading import LoadedModel
from medseg_auto.inference.predict import PredictionOptions, predict_folder, predict_preprocessed

from tests.helpers.known_networks import ThresholdNetwork, make_plans


def _options(**kwargs) -> PredictionOptions:
    return PredictionOptions(show_progress=False, export_workers=1, device="cpu", **kwargs)


def _model(plans, mirror_axes=None) -> LoadedModel:
    config = next(iter(plans.configurations.values()))
    return LoadedModel(ThresholdNetwork(), plans, config, mirror_axes)


def _write_volume(path, array, spacing_xyz, origin, direction):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing_xyz)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    sitk.WriteImage(image, str(path))


def _blob_volume(shape):
    array = np.full(shape, 10.0, np.float32)
    z, y, x = shape
    array[z // 4: 3 * z // 4, y // 4: 3 * y // 4, x // 4: 3 * x // 4] = 100.0
    return array


def test_anisotropic_rotated_volume_round_trips_geometry(tmp_path):
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    array = _blob_volume((12, 40, 36))
    direction = (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
    _write_volume(inputs / "case_0000.nii.gz", array, (0.7, 0.7, 3.0), (5.0, -3.0, 12.0), direction)
    plans = make_plans([3.0, 1.0, 1.0])  # in-plane resampling 0.7 -> 1.0 mm and back
    report = predict_folder(inputs, outputs, [_model(plans, [0, 1, 2])], None, _options())
    assert report.predicted == ["case"] and not report.failed
    written = sitk.ReadImage(str(outputs / "case.nii.gz"))
    assert written.GetSize() == (36, 40, 12)
    np.testing.assert_allclose(written.GetSpacing(), (0.7, 0.7, 3.0))
    np.testing.assert_allclose(written.GetOrigin(), (5.0, -3.0, 12.0))
    np.testing.assert_allclose(written.GetDirection(), direction)
    labels = sitk.GetArrayFromImage(written)
    expected = array > 50
    dice = 2 * np.logical_and(labels == 1, expected).sum() / ((labels == 1).sum() + expected.sum())
    assert dice > 0.95


def test_rgb_png_round_trips_size_and_format(tmp_path):
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    rgb = np.full((30, 50, 3), 20, np.uint8)
    rgb[10:20, 10:40] = 200
    Image.fromarray(rgb).save(inputs / "photo_0000.png")
    plans = make_plans([1.0, 1.0], is_2d=True, channels=3)
    report = predict_folder(inputs, outputs, [_model(plans, [0, 1])], None, _options())
    assert not report.failed
    labels = np.asarray(Image.open(outputs / "photo.png"))
    assert labels.shape == (30, 50)
    assert (labels[12:18, 12:38] == 1).all() and (labels[:8] == 0).all()


def test_small_images_of_different_sizes_and_a_single_slice_volume(tmp_path):
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    for name, size in (("tiny", (6, 5)), ("wide", (20, 70))):
        image = np.full(size, 10, np.uint8)
        image[1:-1, 1:-1] = 200
        Image.fromarray(image).save(inputs / f"{name}.png")
    plans_2d = make_plans([1.0, 1.0], is_2d=True, patch=[16, 16])
    report = predict_folder(inputs, outputs, [_model(plans_2d)], None, _options())
    assert sorted(report.predicted) == ["tiny", "wide"]
    assert np.asarray(Image.open(outputs / "tiny.png")).shape == (6, 5)
    assert np.asarray(Image.open(outputs / "wide.png")).shape == (20, 70)

    single = tmp_path / "single"
    single.mkdir()
    volume = _blob_volume((1, 20, 20))
    _write_volume(single / "slice_0000.nii.gz", volume, (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    plans_3d = make_plans([2.0, 1.0, 1.0], patch=[4, 16, 16])
    report = predict_folder(single, tmp_path / "single_out", [_model(plans_3d)], None, _options())
    labels, _ = read_segmentation(tmp_path / "single_out" / "slice.nii.gz")
    assert labels.shape == (1, 20, 20) and (labels == (volume > 50)).all()


def test_unreadable_case_is_reported_and_others_finish_and_existing_outputs_are_kept(tmp_path):
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    Image.fromarray(np.full((12, 12), 200, np.uint8)).save(inputs / "good.png")
    (inputs / "broken.png").write_bytes(b"not a png")
    plans = make_plans([1.0, 1.0], is_2d=True)
    report = predict_folder(inputs, outputs, [_model(plans)], None, _options())
    assert report.predicted == ["good"] and "broken" in report.failed
    assert "broken.png" in report.failed["broken"]
    again = predict_folder(inputs, outputs, [_model(plans)], None, _options())
    assert again.skipped_existing == ["good"] and again.predicted == []
    forced = predict_folder(inputs, outputs, [_model(plans)], None, _options(overwrite=True))
    assert forced.predicted == ["good"]


def test_fold_ensemble_averages_softmax():
    plans = make_plans([1.0, 1.0], is_2d=True)
    data = np.random.default_rng(0).normal(size=(1, 1, 16, 16)).astype(np.float32)

    class Scaled(ThresholdNetwork):
        def __init__(self, factor):
            super().__init__()
            self.factor = factor

        def forward(self, batch):
            return super().forward(batch) * self.factor

    config = plans.configurations["2d"]
    a = LoadedModel(Scaled(0.1), plans, config, None)
    b = LoadedModel(Scaled(0.3), plans, config, None)
    device = __import__("torch").device("cpu")
    both = predict_preprocessed([a, b], data, _options(), device)
    separately = (predict_preprocessed([a], data, _options(), device) + predict_preprocessed([b], data, _options(), device)) / 2
    np.testing.assert_allclose(both, separately, rtol=1e-5)
