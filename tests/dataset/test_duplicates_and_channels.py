"""Duplicate detection, linked splits, channel fitting for prediction, and import-folder --grey."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from medseg_auto.cli.main import main
from medseg_auto.dataset.channels import fit_channels
from medseg_auto.dataset.dataset_json import DatasetSpec
from medseg_auto.dataset.duplicates import case_links, cluster_hashes, find_duplicates, image_hashes
from medseg_auto.dataset.synthetic import make_synthetic_dataset, synthetic_home
from medseg_auto.errors import DatasetError
from medseg_auto.experiments.splits import split_off_linked


def _picture(seed: int, shape=(64, 64)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random(shape) * 255).astype(np.float32)[None, None]


def test_exact_and_near_duplicates_are_clustered_and_unrelated_images_are_not():
    first = _picture(0)
    near = first.copy()
    near[0, 0, :2, :2] += 3  # a few changed pixels: same picture, other bytes
    hashes = {"a": image_hashes(first), "a_copy": image_hashes(first.copy()), "a_near": image_hashes(near),
              "b": image_hashes(_picture(1)), "c": image_hashes(_picture(2))}
    report = cluster_hashes(hashes, 8, "test")
    assert report.exact == [["a", "a_copy"]]
    assert report.near == [["a", "a_copy", "a_near"]]
    assert report.num_duplicate_cases == 3 and report.num_redundant_cases == 2


def test_find_duplicates_on_a_dataset_names_the_hash(tmp_path):
    home = synthetic_home(tmp_path)
    spec = make_synthetic_dataset(home, "Dup", dimension=2, cases_per_site=3)
    shutil.copy(spec.folder / "imagesTr" / "siteA_000_0000.png", spec.folder / "imagesTr" / "copy_0000.png")
    report = find_duplicates(spec)
    assert ["copy", "siteA_000"] in report.exact and "phash" in report.method
    assert main(["verify", "Dup", "--home", str(home.root), "--no-progress", "-np", "1"]) in (0, 2)
    assert '"exact_clusters"' in (home.preprocessed_dataset("Dup") / "verify_report.json").read_text()


def test_linked_split_keeps_duplicates_and_patients_together():
    cases = [f"c{i:02d}" for i in range(20)]
    links = case_links(cases, duplicates=[["c00", "c01", "c02"]], groups={"c05": "p1", "c06": "p1", "c07": "p1"})
    assert links["c01"] == "c00" and links["c06"] == "c05" and links["c10"] == "c10"
    sites = {case: "a" if i < 10 else "b" for i, case in enumerate(cases)}
    for seed in range(10):
        held, kept = split_off_linked(cases, 0.3, seed, sites, links)
        assert sorted(held + kept) == cases
        for group in (["c00", "c01", "c02"], ["c05", "c06", "c07"]):
            assert set(group) <= set(held) or set(group) <= set(kept)
        assert {sites[c] for c in held} == {"a", "b"}  # stratified by site


def test_dataset_json_reads_an_optional_groups_map(tmp_path):
    home = synthetic_home(tmp_path)
    spec = make_synthetic_dataset(home, "Grp", dimension=2, cases_per_site=2)
    spec.raw["groups"] = {"siteA_000": "patient1", "siteA_001": "patient1"}
    spec.save()
    assert DatasetSpec.load(spec.folder).groups == {"siteA_000": "patient1", "siteA_001": "patient1"}


def test_fit_channels_converts_rgb_to_luminance_and_grey_to_rgb(caplog):
    rgb = np.stack([np.full((1, 2, 2), v, np.float32) for v in (100.0, 50.0, 10.0)])
    grey = fit_channels(rgb, 1, "x.png")
    assert grey.shape == (1, 1, 2, 2) and grey[0, 0, 0, 0] == pytest.approx(0.299 * 100 + 0.587 * 50 + 0.114 * 10)
    assert fit_channels(grey, 3, "y.png").shape == (3, 1, 2, 2)
    with pytest.raises(DatasetError, match="z.png: 2 channel"):
        fit_channels(rgb[:2], 3, "z.png")


def test_import_folder_grey_stores_colour_images_as_luminance(tmp_path):
    images, masks = tmp_path / "src" / "images", tmp_path / "src" / "masks"
    images.mkdir(parents=True)
    masks.mkdir()
    colour = np.zeros((8, 8, 3), np.uint8)
    colour[..., 0], colour[..., 1], colour[..., 2] = 200, 100, 0
    Image.fromarray(colour).save(images / "a.png")
    mask = np.zeros((8, 8), np.uint8)
    mask[2:5, 2:5] = 255
    Image.fromarray(mask).save(masks / "a.png")
    home = tmp_path / "home"
    assert main(["import-folder", "--images", str(images), "--masks", str(masks), "--name", "Grey", "--grey",
                 "--home", str(home), "--no-progress", "-np", "1"]) == 0
    folder = next((home / "raw").glob("Dataset*_Grey"))
    stored = np.asarray(Image.open(folder / "imagesTr" / "a_0000.png"))
    assert stored.ndim == 2 and stored[0, 0] == round(0.299 * 200 + 0.587 * 100)
    assert DatasetSpec.load(folder).num_channels == 1


def test_cross_validation_folds_keep_linked_cases_together_and_are_unchanged_without_links():
    from medseg_auto.training.data.splits import make_splits

    cases = [f"c{i:02d}" for i in range(30)]
    assert make_splits(cases) == make_splits(cases, links=None)  # nnU-Net's KFold when nothing is linked
    links = case_links(cases, duplicates=[["c00", "c01", "c02", "c03"]], groups={"c10": "p", "c20": "p"})
    folds = make_splits(cases, links=links)
    for group in (["c00", "c01", "c02", "c03"], ["c10", "c20"]):
        homes = {index for index, fold in enumerate(folds) for case in group if case in fold["val"]}
        assert len(homes) == 1
    assert sorted(c for fold in folds for c in fold["val"]) == cases


def test_training_splits_read_duplicates_from_the_verify_report(tmp_path):
    import json

    from medseg_auto.training.data.splits import dataset_links

    preprocessed = tmp_path / "preprocessed" / "Dataset001_X"
    preprocessed.mkdir(parents=True)
    (preprocessed / "dataset.json").write_text(json.dumps({"groups": {"a": "p1", "b": "p1"}}))
    (preprocessed / "verify_report.json").write_text(json.dumps({"duplicates": {"near_clusters": [["c", "d"]]}}))
    links = dataset_links(preprocessed, ["a", "b", "c", "d", "e"])
    assert links == {"a": "a", "b": "a", "c": "c", "d": "c", "e": "e"}


def test_label_conflicts_flag_a_lesion_against_an_empty_mask_and_accept_a_rescaled_copy(tmp_path):
    from medseg_auto.dataset.duplicates import label_conflicts

    mask = np.zeros((20, 20), np.uint8)
    mask[5:12, 5:12] = 1
    Image.fromarray(mask).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "empty.png")
    Image.fromarray(np.kron(mask, np.ones((2, 2), np.uint8))).save(tmp_path / "big.png")  # rescaled copy
    files = {name: tmp_path / f"{name}.png" for name in ("a", "empty", "big")}
    conflicts = label_conflicts([["a", "big", "empty"]], files)
    assert [c["cases"] for c in conflicts] == [["a", "empty"]]
    assert conflicts[0]["empty"] == [False, True]
