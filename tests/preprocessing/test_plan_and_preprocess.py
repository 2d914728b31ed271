"""plan_and_preprocess end to end on synthetic data: outputs, resume, kill safety, bad input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from medseg_auto.cli.main import main
from medseg_auto.dataset.dataset_json import DatasetSpec
from medseg_auto.errors import DatasetError, LabelValueError
from medseg_auto.planning.plans import Plans
from medseg_auto.preprocessing.cache import PreprocessedCache
from medseg_auto.preprocessing.pipeline import plan_and_preprocess


def _cache(home, dataset, configuration, plans_name="plans"):
    plans = Plans.load(home.preprocessed_dataset(dataset) / f"{plans_name}.json")
    return PreprocessedCache(home.preprocessed_dataset(dataset) / plans.configuration(configuration).data_identifier)


def test_3d_dataset_gets_both_configurations_with_complete_cases(home_3d):
    plans = plan_and_preprocess(home_3d, "Syn3d", num_processes=1, show_progress=False)
    assert set(plans.configurations) == {"2d", "3d_fullres"}
    for configuration in plans.configurations:
        cache = _cache(home_3d, "Syn3d", configuration)
        assert len(cache.case_ids()) == 6
        data, seg, properties = cache.load_case(cache.case_ids()[0])
        assert data.dtype == np.float32 and seg.dtype == np.int16
        assert data.shape[1:] == seg.shape[1:]
        assert properties.site in {"siteA", "siteB"}
        assert properties.class_locations["1"], "foreground locations for oversampling"
        assert abs(float(data.mean())) < 0.5  # z-scored


def test_2d_dataset_plans_only_2d(home_2d):
    plans = plan_and_preprocess(home_2d, "Syn2d", num_processes=1, show_progress=False)
    assert list(plans.configurations) == ["2d"]
    assert len(_cache(home_2d, "Syn2d", "2d").case_ids()) == 6


def test_rerun_is_idempotent_and_keeps_edited_plans(home_3d):
    plan_and_preprocess(home_3d, "Syn3d", ["3d_fullres"], num_processes=1, show_progress=False)
    cache = _cache(home_3d, "Syn3d", "3d_fullres")
    before = {case: os.stat(cache.data_path(case)).st_mtime_ns for case in cache.case_ids()}
    plans_file = home_3d.preprocessed_dataset("Syn3d") / "plans.json"
    plans = Plans.load(plans_file)
    plans.configurations["3d_fullres"].batch_size = 3  # a hand edit that does not change the arrays
    plans.save(plans_file)
    again = plan_and_preprocess(home_3d, "Syn3d", ["3d_fullres"], num_processes=1, show_progress=False)
    assert again.configurations["3d_fullres"].batch_size == 3
    after = {case: os.stat(cache.data_path(case)).st_mtime_ns for case in cache.case_ids()}
    assert before == after


def test_editing_spacing_rebuilds_the_cache(home_3d):
    plan_and_preprocess(home_3d, "Syn3d", ["3d_fullres"], num_processes=1, show_progress=False)
    plans_file = home_3d.preprocessed_dataset("Syn3d") / "plans.json"
    plans = Plans.load(plans_file)
    plans.configurations["3d_fullres"].spacing = [2.5, 2.0, 2.0]
    plans.save(plans_file)
    plan_and_preprocess(home_3d, "Syn3d", ["3d_fullres"], num_processes=1, show_progress=False)
    data, _, _ = _cache(home_3d, "Syn3d", "3d_fullres").load_case("siteA_000")
    assert data.shape[2:] == (20, 18)  # 40x36 at 1 mm resampled to 2 mm


def test_incomplete_case_is_redone_and_stray_temporaries_removed(home_3d):
    plan_and_preprocess(home_3d, "Syn3d", ["3d_fullres"], num_processes=1, show_progress=False)
    cache = _cache(home_3d, "Syn3d", "3d_fullres")
    cache.properties_path("siteB_001").unlink()  # as if killed before the marker was written
    (cache.folder / ".tmp-abc.npy").write_bytes(b"partial")
    plan_and_preprocess(home_3d, "Syn3d", ["3d_fullres"], num_processes=1, show_progress=False)
    assert cache.is_complete("siteB_001")
    assert not list(cache.folder.glob(".tmp-*"))


def test_sigkill_during_preprocessing_leaves_only_complete_cases(tmp_path):
    """Kill the real command mid-run; every case present must load, and a rerun completes."""
    from medseg_auto.dataset.synthetic import make_synthetic_dataset, synthetic_home

    home = synthetic_home(tmp_path / "home")
    make_synthetic_dataset(home, "Big", dimension=3, cases_per_site=20, shape=(24, 96, 96))
    command = [sys.executable, "-m", "medseg_auto", "plan_and_preprocess", "Big", "-c", "3d_fullres",
               "-np", "1", "--home", str(home.root), "--no-progress"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    plans_file = home.preprocessed / "Dataset501_Big" / "plans.json"
    deadline = time.time() + 120
    while time.time() < deadline:
        folder = home.preprocessed / "Dataset501_Big" / "plans_3d_fullres"
        if plans_file.exists() and folder.is_dir() and len(list(folder.glob("*.json"))) >= 3:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    cache = _cache(home, "Big", "3d_fullres")
    done = cache.case_ids()
    assert 0 < len(done) < 40, "the kill must land mid-run for this test to mean anything"
    for case in done:
        data, seg, _ = cache.load_case(case, mmap=False)
        assert np.isfinite(data).all() and data.shape[1:] == seg.shape[1:]
    assert main(command[3:]) == 0
    assert len(cache.case_ids()) == 40
    assert not list(cache.folder.glob(".tmp-*"))


def test_unknown_label_value_names_the_file(home_3d):
    spec = DatasetSpec.load(home_3d.raw_dataset("Syn3d"))
    spec.labels = {"background": 0, "blob": 1}
    spec.save()
    with pytest.raises(LabelValueError, match=r"labelsTr/.*\.nii\.gz.*\[2\]"):
        plan_and_preprocess(home_3d, "Syn3d", num_processes=1, show_progress=False)


def test_empty_dataset_is_a_clear_error(tmp_path):
    from medseg_auto.dataset.dataset_json import write_dataset_json
    from medseg_auto.paths import DataHome

    home = DataHome(tmp_path)
    folder = home.new_dataset_folder("Empty")
    (folder / "imagesTr").mkdir(parents=True)
    write_dataset_json(folder, {"0": "MRI"}, {"background": 0, "x": 1}, 0, ".nii.gz")
    with pytest.raises(DatasetError, match="no training cases"):
        plan_and_preprocess(home, "Empty", num_processes=1, show_progress=False)


def test_cli_reports_errors_without_traceback(home_3d, capsys):
    assert main(["plan_and_preprocess", "NoSuchDataset", "--home", str(home_3d.root)]) == 2
    assert "no dataset 'NoSuchDataset'" in capsys.readouterr().err


def test_nan_in_float_nifti_is_refused_naming_the_file(home_3d):
    import SimpleITK as sitk

    spec = DatasetSpec.load(home_3d.raw_dataset("Syn3d"))
    image_file = spec.training_cases()[0].images[0]
    image = sitk.ReadImage(str(image_file), sitk.sitkFloat32)
    array = sitk.GetArrayFromImage(image)
    array[0, 0, 0] = np.nan
    nan_image = sitk.GetImageFromArray(array)
    nan_image.CopyInformation(image)
    sitk.WriteImage(nan_image, str(image_file))
    with pytest.raises(DatasetError, match=rf"{image_file.name}.*NaN"):
        plan_and_preprocess(home_3d, "Syn3d", num_processes=1, show_progress=False)
