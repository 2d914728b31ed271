"""verify_dataset: one test per bad-input class; every problem names its file; all are collected."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medseg_auto.cli.main import main
from medseg_auto.dataset.dataset_json import DatasetSpec
from medseg_auto.dataset.image_io import read_image_file, write_image, write_segmentation
from medseg_auto.dataset.synthetic import make_synthetic_dataset, synthetic_home
from medseg_auto.dataset.verify import ERROR, WARNING, raise_if_problems, verify_dataset
from medseg_auto.errors import DatasetError


@pytest.fixture
def spec(tmp_path) -> DatasetSpec:
    """A clean 3D two-site dataset of four cases (siteA_000, siteA_001, siteB_000, siteB_001)."""
    return make_synthetic_dataset(synthetic_home(tmp_path / "home"), "Syn", dimension=3, cases_per_site=2)


def _verify(spec: DatasetSpec):
    return verify_dataset(DatasetSpec.load(spec.folder), num_processes=1, show_progress=False)


def _errors(problems):
    return [p for p in problems if p.severity == ERROR]


def _image(spec, case="siteA_000"):
    return spec.folder / "imagesTr" / f"{case}_0000.nii.gz"


def _label(spec, case="siteA_000"):
    return spec.folder / "labelsTr" / f"{case}.nii.gz"


def test_clean_dataset_has_no_problems(spec):
    assert _verify(spec) == []
    raise_if_problems([])


def test_corrupt_image_named(spec):
    _image(spec).write_bytes(b"this is not a NIfTI file")
    errors = _errors(_verify(spec))
    assert len(errors) == 1 and errors[0].file == str(_image(spec)) and errors[0].case == "siteA_000"


def test_missing_label_named(spec):
    _label(spec).unlink()
    errors = _errors(_verify(spec))
    assert [e.file for e in errors] == [str(_label(spec))]
    assert "label file missing" in errors[0].message


def test_label_spacing_mismatch_named(spec):
    labels, geometry = read_image_file(_label(spec))
    geometry.spacing = (1.0, 1.0, 1.0)
    write_segmentation(labels[0], geometry, _label(spec))
    errors = _errors(_verify(spec))
    assert len(errors) == 1 and errors[0].file == str(_label(spec)) and "spacing" in errors[0].message


def test_label_shape_mismatch_named(spec):
    labels, geometry = read_image_file(_label(spec))
    write_segmentation(labels[0, :, :-3], geometry, _label(spec))
    errors = _errors(_verify(spec))
    assert len(errors) == 1 and errors[0].file == str(_label(spec)) and "shape" in errors[0].message


def test_unknown_label_value_named(spec):
    labels, geometry = read_image_file(_label(spec))
    labels[0, 0, 0, 0] = 7
    write_segmentation(labels[0], geometry, _label(spec))
    errors = _errors(_verify(spec))
    assert len(errors) == 1 and errors[0].file == str(_label(spec)) and "[7]" in errors[0].message


def test_nan_in_image_named(spec):
    image, geometry = read_image_file(_image(spec))
    image = image.astype(np.float32)
    image[0, 1, 2, 3] = np.nan
    image[0, 2, 2, 3] = np.inf
    write_image(image[0], geometry, _image(spec))
    errors = _errors(_verify(spec))
    assert len(errors) == 1 and errors[0].file == str(_image(spec)) and "2 NaN or infinite" in errors[0].message


def test_wrong_channel_count_named(spec):
    payload = json.loads((spec.folder / "dataset.json").read_text())
    payload["channel_names"] = {"0": "T1", "1": "T2"}
    (spec.folder / "dataset.json").write_text(json.dumps(payload))
    errors = _errors(_verify(spec))
    assert len(errors) == 4 and all("1 channel(s)" in e.message and e.file.endswith("_0000.nii.gz") for e in errors)


def test_empty_dataset(spec):
    for image in (spec.folder / "imagesTr").iterdir():
        image.unlink()
    messages = [p.message for p in _errors(_verify(spec))]
    assert any("empty dataset" in m for m in messages)
    assert any("numTraining is 4 but imagesTr holds 0" in m for m in messages)


def test_num_training_mismatch_named(spec):
    payload = json.loads((spec.folder / "dataset.json").read_text())
    payload["numTraining"] = 9
    (spec.folder / "dataset.json").write_text(json.dumps(payload))
    errors = _errors(_verify(spec))
    assert len(errors) == 1 and errors[0].file == str(spec.folder / "dataset.json")


def test_empty_mask_is_a_warning_only(spec):
    labels, geometry = read_image_file(_label(spec))
    write_segmentation(np.zeros_like(labels[0]), geometry, _label(spec))
    problems = _verify(spec)
    assert [(p.severity, p.file) for p in problems] == [(WARNING, str(_label(spec)))]
    raise_if_problems(problems)  # warnings do not raise


def test_all_problems_collected_and_raised_together(spec):
    _image(spec, "siteA_001").write_bytes(b"garbage")
    _label(spec, "siteB_000").unlink()
    labels, geometry = read_image_file(_label(spec, "siteB_001"))
    labels[0, 0, 0, 0] = 9
    write_segmentation(labels[0], geometry, _label(spec, "siteB_001"))
    problems = _verify(spec)
    assert sorted(p.case for p in _errors(problems)) == ["siteA_001", "siteB_000", "siteB_001"]
    with pytest.raises(DatasetError) as raised:
        raise_if_problems(problems)
    for name in ("siteA_001_0000.nii.gz", "labelsTr/siteB_000.nii.gz", "labelsTr/siteB_001.nii.gz"):
        assert name in str(raised.value)


def test_verify_command_writes_report_and_exits_2_on_errors(spec, capsys):
    home = str(spec.folder.parents[1])
    assert main(["verify", "Syn", "--home", home, "-np", "1", "--no-progress"]) == 0
    derived = spec.folder.parents[1] / "preprocessed" / spec.folder.name  # never written into the raw dataset
    report = json.loads((derived / "verify_report.json").read_text())
    assert report["errors"] == 0 and report["num_cases"] == 4
    _label(spec).unlink()
    assert main(["verify", "Syn", "--home", home, "-np", "1", "--no-progress"]) == 2
    report = json.loads((derived / "verify_report.json").read_text())
    assert report["errors"] == 1 and report["problems"][0]["file"] == str(_label(spec))
    assert list((derived / "logs").glob("verify_*.txt"))
    assert not (spec.folder / "logs").exists() and not (spec.folder / "verify_report.json").exists()
