"""``learning_parity.py --dataset``: the BUSI+STU raw builder on tiny synthetic PNG folders laid
out like ``busi_half``/``stu_bus``, the shared plan transplanted into nnU-Net-like plans, the
dataset option, per-site rows and site-stratified splits. No training and no timings."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("psutil")
pytest.importorskip("scipy")
Image = pytest.importorskip("PIL.Image")

def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)


@pytest.fixture()
def shared_data(tmp_path: Path) -> Path:
    """``busi_half/CLASS/{images,masks}/NAME.png`` (masks 0/255, a 'normal' one empty) and
    ``stu_bus/{images/Test_Image_N.png, masks/mask_N.png}`` with 24x20 images and 60x50
    anti-aliased masks (as the real STU's)."""
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    for name, lesion in (("benign_1", True), ("benign_2", True), ("malignant_1", True), ("normal_1", False)):
        kind = name.rsplit("_", 1)[0]
        _png(data / "busi_half" / kind / "images" / f"{name}.png", rng.integers(0, 255, (20, 28)))
        mask = np.zeros((20, 28))
        mask[5:12, 8:18] = 255 if lesion else 0
        _png(data / "busi_half" / kind / "masks" / f"{name}.png", mask)
    for number in (1, 2, 3):
        _png(data / "stu_bus" / "images" / f"Test_Image_{number}.png", rng.integers(0, 255, (24, 20)))
        mask = np.zeros((60, 50))
        mask[20:40, 15:35] = 255
        mask[19, 15:35] = mask[40, 15:35] = 128  # anti-aliased edge
        _png(data / "stu_bus" / "masks" / f"mask_{number}.png", mask)
    return data


def test_busi_stu_raw_pools_both_sites_into_one_nnunet_raw_folder(parity, shared_data, tmp_path):
    spec = parity.datasets.SPECS["busi_stu"]
    cases = spec.list_cases(shared_data, None)
    assert cases == ["busi_benign_1", "busi_benign_2", "busi_malignant_1", "busi_normal_1",
                     "stu_Test_Image_1", "stu_Test_Image_2", "stu_Test_Image_3"]
    layout = spec.layout(tmp_path / "work")
    spec.build_raw(shared_data, cases, layout)

    assert layout.raw_dataset.name == "Dataset502_BUSI_STU"
    dataset_json = json.loads((layout.raw_dataset / "dataset.json").read_text())
    assert dataset_json["file_ending"] == ".png" and dataset_json["numTraining"] == 7
    assert set(dataset_json["labels"].values()) == {0, 1} and len(dataset_json["channel_names"]) == 1
    assert dataset_json["sites"] == {case: case.split("_", 1)[0] for case in cases}
    for case in cases:
        image = np.asarray(Image.open(layout.raw_dataset / "imagesTr" / f"{case}_0000.png"))
        label = np.asarray(Image.open(layout.raw_dataset / "labelsTr" / f"{case}.png"))
        assert image.ndim == 2 and label.shape == image.shape  # grey; STU's masks resized to the image
        assert set(np.unique(label)) <= {0, 1}
    stu = np.asarray(Image.open(layout.raw_dataset / "labelsTr" / "stu_Test_Image_1.png"))
    assert stu.shape == (24, 20) and stu.sum() > 0
    assert parity.datasets.label_values(layout.raw_dataset / "labelsTr") == {0, 1}
    assert (layout.ours_home / "raw" / "Dataset502_BUSI_STU" / "dataset.json").is_file()  # ours reads the same files
    assert not (layout.root / "staging").exists()
    assert parity._parity_prepare.raw_dataset_matches(layout, cases, ".png")
    assert not parity._parity_prepare.raw_dataset_matches(layout, cases[:-1], ".png")


def test_a_subset_keeps_both_sites_spread_over_each(parity):
    per_site = {"busi": [f"busi_{kind}_{index:03d}" for kind in ("benign", "malignant", "normal")
                         for index in range(260)], "stu": [f"stu_Test_Image_{index}" for index in range(42)]}
    chosen = parity.datasets.subset_per_site(per_site, 40)
    assert len(chosen) == 40 and len(set(chosen)) == 40
    assert sum(case.startswith("stu") for case in chosen) == parity.datasets.MIN_CASES_PER_SITE
    assert {case.split("_")[1] for case in chosen if case.startswith("busi")} == {"benign", "malignant", "normal"}
    assert len(parity.datasets.subset_per_site(per_site, None)) == 822
    with pytest.raises(parity.BenchmarkError):
        parity.datasets.subset_per_site(per_site, 3)


def _nnunet_like_plans() -> dict:
    """The parts of an nnU-Net v2 plans file the transplant touches (2d at full resolution)."""
    return {"plans_name": "nnUNetPlans", "original_median_spacing_after_transp": [999.0, 1.0, 1.0],
            "configurations": {"2d": {
                "data_identifier": "nnUNetPlans_2d", "batch_size": 49, "patch_size": [256, 320],
                "spacing": [1.0, 1.0], "normalization_schemes": ["ZScoreNormalization"],
                "architecture": {"network_class_name": "PlainConvUNet", "arch_kwargs": {
                    "n_stages": 7, "features_per_stage": [32, 64, 128, 256, 512, 512, 512],
                    "conv_op": "torch.nn.modules.conv.Conv2d", "kernel_sizes": [[3, 3]] * 7,
                    "strides": [[1, 1]] + [[2, 2]] * 6, "n_conv_per_stage": [2] * 7,
                    "n_conv_per_stage_decoder": [2] * 6, "conv_bias": True}}}}}


def _our_coarse_plans() -> dict:
    """Our ``plans_cpu_coarse`` 2d as the planner writes it for BUSI."""
    return {"plans_name": "plans_cpu_coarse", "original_median_spacing_after_transp": [999.0, 1.0, 1.0],
            "configurations": {"2d": {
                "data_identifier": "plans_cpu_coarse_2d", "batch_size": 10, "patch_size": [128, 160],
                "spacing": [2.0, 2.0], "normalization_schemes": ["ZScoreNormalization"],
                "network": {"n_stages": 6, "features_per_stage": [32, 64, 128, 256, 512, 512],
                            "kernel_sizes": [[3, 3]] * 6, "strides": [[1, 1]] + [[2, 2]] * 5,
                            "n_conv_per_stage": [2] * 6, "n_conv_per_stage_decoder": [2] * 5}}}}


def test_transplant_writes_our_plan_into_nnunets_configuration(parity):
    nnunet, ours = _nnunet_like_plans(), _our_coarse_plans()
    plans = parity.datasets.transplant_plan(nnunet, ours, "2d", "nnUNetPlans_parity", None)
    section = plans["configurations"]["2d"]
    assert (section["spacing"], section["patch_size"], section["batch_size"]) == ([2.0, 2.0], [128, 160], 10)
    arch = section["architecture"]["arch_kwargs"]
    assert arch["n_stages"] == 6 and arch["strides"] == [[1, 1]] + [[2, 2]] * 5
    assert arch["n_conv_per_stage_decoder"] == [2] * 5 and arch["features_per_stage"][-1] == 512
    assert arch["conv_op"] == "torch.nn.modules.conv.Conv2d" and arch["conv_bias"] is True  # nnU-Net's own kept
    assert section["data_identifier"] == "nnUNetPlans_parity_2d" and plans["plans_name"] == "nnUNetPlans_parity"
    assert nnunet == _nnunet_like_plans()  # input untouched
    rows = parity.plan_preprocess.compare_plans(plans, plans, ours, parity.datasets.PARITY_PLAN_FIELDS)
    assert {row["field"]: row["ours = ref"] for row in rows if row["configuration"] == "2d"} == {
        field: "yes" for field in parity.datasets.PARITY_PLAN_FIELDS}
    assert parity.datasets.transplant_plan(nnunet, ours, "2d", "p", 4)["configurations"]["2d"]["batch_size"] == 4
    with pytest.raises(parity.BenchmarkError):
        parity.datasets.transplant_plan(nnunet, ours, "3d_fullres", "p", None)


def test_shared_parity_plans_files_and_comparison(parity, tmp_path):
    nnunet, ours = tmp_path / "nn" / "nnUNetPlans.json", tmp_path / "ours" / "plans_cpu_coarse.json"
    for path, plans in ((nnunet, _nnunet_like_plans()), (ours, _our_coarse_plans())):
        path.parent.mkdir()
        path.write_text(json.dumps(plans))
    comparison = parity._parity_prepare.write_shared_parity_plans(nnunet, ours, "2d", 6,
                                                                   parity.datasets.PARITY_PLAN_FIELDS)
    assert {row["same"] for row in comparison} == {"yes"} and len(comparison) == 10
    written_nn = json.loads((nnunet.parent / "nnUNetPlans_parity.json").read_text())["configurations"]["2d"]
    written_ours = json.loads((ours.parent / "plans_parity.json").read_text())
    assert written_nn["batch_size"] == written_ours["configurations"]["2d"]["batch_size"] == 6
    assert written_ours["plans_name"] == "plans_parity"
    assert written_ours["configurations"]["2d"]["data_identifier"] == "plans_cpu_coarse_2d"  # same preprocessed data
    assert json.loads(ours.read_text())["configurations"]["2d"]["batch_size"] == 10  # input untouched
    ours_only = parity._parity_prepare.write_shared_parity_plans(None, ours, "2d", None,
                                                                 parity.datasets.PARITY_PLAN_FIELDS)
    assert {row["same"] for row in ours_only} == {""}


def test_dataset_option_sets_data_work_batch_and_configurations(parity, capsys):
    args = parity.parse_args(["--dataset", "busi_stu"])
    assert args.work.name == "learning_parity_busi_stu" and (args.data / "busi_half").name == "busi_half"
    assert args.data.name == "data" and args.batch_sizes == {"2d": None}  # the shared plan's batch
    assert parity.parse_args(["--dataset", "busi_stu", "--batch-size", "2d=12"]).batch_sizes == {"2d": 12}
    assert parity.parse_args(["--dataset", "busi_stu", "--quick"]).work.name == "learning_parity_busi_stu_quick"
    default = parity.parse_args([])
    assert default.dataset == "hippocampus" and default.work.name == "learning_parity"
    assert default.data.name == "hippocampus" and default.batch_sizes == {"2d": 32}
    with pytest.raises(SystemExit):
        parity.parse_args(["--dataset", "busi_stu", "-c", "3d_fullres"])
    assert "offers the configurations 2d" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parity.parse_args(["--dataset", "prostate"])


def test_ours_trains_the_chosen_dataset(parity, tmp_path):
    budget = parity.Budget(epochs=1, iterations=2, val_iterations=1, batch_size=None)
    cmd = parity.ours_train_command(tmp_path, "2d", budget, seed=0, num_workers=1, dataset_name="BUSI_STU")
    assert cmd[cmd.index("train") + 1:cmd.index("train") + 3] == ["BUSI_STU", "2d"]


def test_per_site_rows_score_each_sites_cases_alone(parity):
    stats = parity.stats
    sites = {"busi_a": "busi", "busi_b": "busi", "stu_a": "stu", "stu_b": "stu"}
    runs = [{"tool": tool, "seed": 0, "train_s": 1.0, "peak_rss_mib": 1.0,
             "dice": {"foreground": {"busi_a": 0.4, "busi_b": 0.6, "stu_a": base, "stu_b": base}}}
            for tool, base in ((stats.NNUNET, 0.8), (stats.OURS, 0.9))]
    rows = {(row["configuration"], row["class"]): row for row in stats.per_site_rows("busi_stu 2d", runs, sites)}
    assert rows[("busi_stu 2d site=busi", "foreground")]["ours_dice"] == "0.500 +- 0.000"
    assert rows[("busi_stu 2d site=stu", "foreground")]["difference"] == pytest.approx(0.1)
    assert rows[("busi_stu 2d site=stu", "foreground")]["cases"] == 2
    assert stats.per_site_rows("2d", runs, {}) == []


def test_our_splits_with_sites_validate_on_every_site(parity):
    cases = [f"busi_{index:02d}" for index in range(20)] + [f"stu_{index}" for index in range(5)]
    sites = {case: case.split("_")[0] for case in cases}
    folds = parity.tool_splits(Path(sys.executable), parity.OURS_SPLIT_CODE, cases, sites)
    assert len(folds) == 5
    for fold in folds:
        assert {sites[case] for case in fold["val"]} == {"busi", "stu"}
