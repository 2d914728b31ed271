"""Importers on tiny synthetic folders (one test per bad-input class) and on ../shared/data."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from medseg_auto.cli.main import main
from medseg_auto.dataset.dataset_json import DatasetSpec
from medseg_auto.dataset.image_io import read_image_file, read_segmentation
from medseg_auto.dataset.importers import import_folder, import_msd
from medseg_auto.dataset.importers.pairing import find_image_groups, pair_images_with_masks
from medseg_auto.dataset.synthetic import synthetic_home
from medseg_auto.dataset.verify import ERROR, verify_dataset
from medseg_auto.errors import DatasetError, ImageReadError, UnsafePathError

QUIET = {"num_processes": 1, "show_progress": False}


def _png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _grey(seed: int, shape=(20, 24)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, size=shape, dtype=np.uint8)


def _mask(shape=(20, 24), value=255) -> np.ndarray:
    mask = np.zeros(shape, dtype=np.uint8)
    mask[5:12, 6:15] = value
    return mask


def _folder_pair(root: Path, names=("a", "b", "c"), mask_name="{stem}", shape=(20, 24)) -> tuple[Path, Path]:
    for index, stem in enumerate(names):
        _png(root / "images" / f"{stem}.png", _grey(index, shape))
        _png(root / "masks" / f"{mask_name.format(stem=stem, n=stem.rsplit('_', 1)[-1])}.png", _mask(shape))
    return root / "images", root / "masks"


def _errors(spec: DatasetSpec):
    return [p for p in verify_dataset(spec, 1, show_progress=False) if p.severity == ERROR]


@pytest.fixture
def home(tmp_path):
    return synthetic_home(tmp_path / "home")


# --- import_folder ---------------------------------------------------------------------------

def test_folder_import_binary_masks(home, tmp_path):
    images, masks = _folder_pair(tmp_path / "src")
    spec = import_folder(home, images, masks, "Toy", **QUIET)
    assert spec.num_training == 3 and spec.file_ending == ".png"
    assert spec.channel_names == {"0": "image"} and spec.labels == {"background": 0, "foreground": 1}
    labels, _ = read_segmentation(spec.folder / "labelsTr" / "a.png")
    assert sorted(np.unique(labels)) == [0, 1]
    image, _ = read_image_file(spec.folder / "imagesTr" / "a_0000.png")
    np.testing.assert_array_equal(image[0, 0], _grey(0))
    assert _errors(spec) == []


def test_mask_pattern_with_trailing_number(home, tmp_path):
    images, masks = _folder_pair(tmp_path / "src", names=("Test_Image_1", "Test_Image_12"), mask_name="mask_{n}")
    with pytest.raises(DatasetError, match="Test_Image_1.png"):
        import_folder(home, images, masks, "Stu", **QUIET)  # default patterns do not find mask_N
    spec = import_folder(home, images, masks, "Stu", mask_pattern="mask_{n}", **QUIET)
    assert sorted(c.case_id for c in spec.training_cases()) == ["Test_Image_1", "Test_Image_12"]


def test_default_pattern_finds_stem_mask_in_the_same_folder(home, tmp_path):
    folder = tmp_path / "mixed"
    _png(folder / "benign (1).png", _grey(0))
    _png(folder / "benign (1)_mask.png", _mask())
    spec = import_folder(home, folder, folder, "Mixed", **QUIET)
    assert [c.case_id for c in spec.training_cases()] == ["benign_1"]  # sanitized, mask not an image


def test_unknown_pattern_placeholder_refused(home, tmp_path):
    images, masks = _folder_pair(tmp_path / "src")
    with pytest.raises(DatasetError, match=r"\{number\}"):
        import_folder(home, images, masks, "Toy", mask_pattern="mask_{number}", **QUIET)


def test_image_without_mask_named(home, tmp_path):
    images, masks = _folder_pair(tmp_path / "src")
    (masks / "b.png").unlink()
    with pytest.raises(DatasetError, match=r"1 image\(s\) have no mask: .*images/b.png"):
        import_folder(home, images, masks, "Toy", **QUIET)
    assert not (home.raw / "Dataset501_Toy" / "dataset.json").exists()


def test_corrupt_image_named(home, tmp_path):
    images, masks = _folder_pair(tmp_path / "src")
    (images / "c.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated garbage")
    with pytest.raises(ImageReadError, match="images/c.png"):
        import_folder(home, images, masks, "Toy", **QUIET)


def test_mask_size_mismatch_refused_then_resized(home, tmp_path):
    images, masks = _folder_pair(tmp_path / "src", shape=(20, 24))
    big = np.zeros((80, 96), dtype=np.uint8)
    big[20:48, 24:60] = 255
    big[19, 24:60] = 90  # anti-aliased rim: below the threshold
    _png(masks / "b.png", big)
    with pytest.raises(DatasetError, match=r"1 mask\(s\) differ in size.*masks/b.png \(96x80\).*--resize-masks"):
        import_folder(home, images, masks, "Toy", **QUIET)
    assert not list((home.raw / "Dataset501_Toy").glob("*Tr/*.png"))  # refused before writing
    spec = import_folder(home, images, masks, "Toy", resize_masks=True, **QUIET)
    labels, _ = read_segmentation(spec.folder / "labelsTr" / "b.png")
    assert labels.shape == (1, 20, 24)
    assert sorted(np.unique(labels)) == [0, 1] and labels[0, 5:12, 6:15].all() and labels.sum() == 7 * 9


def test_anti_aliased_mask_thresholded_and_label_maps_kept(home, tmp_path):
    images, masks = _folder_pair(tmp_path / "src", names=("a", "b"))
    soft = _mask()
    soft[4, 6:15], soft[12, 6:15] = 100, 200  # rim: 100 -> background, 200 -> foreground
    _png(masks / "a.png", soft)
    spec = import_folder(home, images, masks, "Soft", **QUIET)
    labels, _ = read_segmentation(spec.folder / "labelsTr" / "a.png")
    assert labels.sum() == 8 * 9 and labels[0, 4].sum() == 0
    multi = tmp_path / "multi"
    _folder_pair(multi, names=("a", "b"))
    _png(multi / "masks" / "a.png", np.array([[0, 1], [2, 2]], dtype=np.uint8).repeat(10, 0).repeat(12, 1))
    _png(multi / "masks" / "b.png", np.array([[0, 0], [2, 2]], dtype=np.uint8).repeat(10, 0).repeat(12, 1))
    spec = import_folder(home, multi / "images", multi / "masks", "Multi", **QUIET)
    assert spec.labels == {"background": 0, "label_1": 1, "label_2": 2}
    assert sorted(np.unique(read_segmentation(spec.folder / "labelsTr" / "b.png")[0])) == [0, 2]


def test_colour_images_make_an_rgb_dataset(home, tmp_path):
    images, masks = _folder_pair(tmp_path / "src", names=("a", "b"))
    colour = np.stack([_grey(1), _grey(2), _grey(3)], axis=-1)
    _png(images / "b.png", colour)
    spec = import_folder(home, images, masks, "Rgb", **QUIET)
    assert spec.channel_names == {"0": "R", "1": "G", "2": "B"}
    grey_as_rgb, _ = read_image_file(spec.folder / "imagesTr" / "a_0000.png")
    assert grey_as_rgb.shape == (3, 1, 20, 24) and (grey_as_rgb[0] == grey_as_rgb[2]).all()
    assert _errors(spec) == []


def test_grey_images_appended_to_an_rgb_dataset_become_rgb(home, tmp_path):
    images, masks = _folder_pair(tmp_path / "one", names=("a",))
    _png(images / "a.png", np.stack([_grey(1), _grey(2), _grey(3)], axis=-1))
    import_folder(home, images, masks, "Rgb", site="h1", **QUIET)
    grey_images, grey_masks = _folder_pair(tmp_path / "two", names=("b",))
    spec = import_folder(home, grey_images, grey_masks, "Rgb", site="h2", append=True, **QUIET)
    assert read_image_file(spec.folder / "imagesTr" / "h2_b_0000.png")[0].shape == (3, 1, 20, 24)
    assert _errors(spec) == []


def test_colour_images_refused_when_appending_to_a_grey_dataset(home, tmp_path):
    images, masks = _folder_pair(tmp_path / "one", names=("a",))
    import_folder(home, images, masks, "Grey", site="h1", **QUIET)
    colour_images, colour_masks = _folder_pair(tmp_path / "two", names=("b",))
    _png(colour_images / "b.png", np.stack([_grey(1), _grey(2), _grey(3)], axis=-1))
    with pytest.raises(DatasetError, match=r"is greyscale but 1 image\(s\) to append are colour: .*two/images/b.png"):
        import_folder(home, colour_images, colour_masks, "Grey", site="h2", append=True, **QUIET)
    assert not list((home.raw / "Dataset501_Grey").glob("*Tr/h2_*"))


def test_rgb_with_identical_channels_stays_grey(home, tmp_path):
    images, masks = _folder_pair(tmp_path / "src", names=("a",))
    _png(images / "a.png", np.stack([_grey(0)] * 3, axis=-1))
    spec = import_folder(home, images, masks, "Grey", **QUIET)
    assert spec.num_channels == 1
    assert read_image_file(spec.folder / "imagesTr" / "a_0000.png")[0].shape == (1, 1, 20, 24)


def test_unsafe_case_name_refused(home, tmp_path):
    images, masks = _folder_pair(tmp_path / "src", names=("ok", "bad..name"))
    with pytest.raises(UnsafePathError, match=r"images/bad\.\.name\.png"):
        import_folder(home, images, masks, "Toy", **QUIET)


def test_site_prefix_append_and_clashes(home, tmp_path):
    images, masks = _folder_pair(tmp_path / "one")
    spec = import_folder(home, images, masks, "Multi", site="h1", **QUIET)
    assert spec.sites == {"h1_a": "h1", "h1_b": "h1", "h1_c": "h1"}
    with pytest.raises(DatasetError, match="already exists.*--append"):
        import_folder(home, images, masks, "Multi", site="h2", **QUIET)
    with pytest.raises(DatasetError, match="3 case id.*already exist"):
        import_folder(home, images, masks, "Multi", site="h1", append=True, **QUIET)
    spec = import_folder(home, images, masks, "Multi", site="h2", append=True, **QUIET)
    assert spec.num_training == 6 and spec.sites["h2_a"] == "h2" and spec.sites["h1_a"] == "h1"
    assert _errors(spec) == []


def test_failed_append_leaves_the_dataset_untouched(home, tmp_path):
    images, masks = _folder_pair(tmp_path / "one")
    import_folder(home, images, masks, "Keep", site="h1", **QUIET)
    other_images, other_masks = _folder_pair(tmp_path / "two", names=("x", "y"))
    _png(other_masks / "y.png", _mask(value=3))  # label 3 is not in the dataset
    with pytest.raises(DatasetError, match=r"label value\(s\) \[3\].*h2_y"):
        import_folder(home, other_images, other_masks, "Keep", site="h2", append=True, **QUIET)
    spec = DatasetSpec.load(home.raw / "Dataset501_Keep")
    assert spec.num_training == 3 and not list(spec.folder.glob("*Tr/h2_*"))


def test_recursive_sub_folders(home, tmp_path):
    root = tmp_path / "busi_like"
    for group in ("benign", "normal"):
        _folder_pair(root / group, names=(f"{group}_1", f"{group}_2"))
    _png(root / "normal" / "masks" / "normal_2.png", np.zeros((20, 24), dtype=np.uint8))
    spec = import_folder(home, root, None, "Rec", site="s", **QUIET)
    assert sorted(spec.sites) == ["s_benign_1", "s_benign_2", "s_normal_1", "s_normal_2"]
    assert _errors(spec) == []


def test_import_folder_command(home, tmp_path):
    images, masks = _folder_pair(tmp_path / "src", names=("Test_Image_1", "Test_Image_2"), mask_name="mask_{n}")
    argv = ["import-folder", "--images", str(images), "--masks", str(masks), "--name", "Cli", "--site", "stu",
            "--mask-pattern", "mask_{n}", "--home", str(home.root), "-np", "1", "--no-progress"]
    assert main(argv) == 0
    spec = DatasetSpec.load(home.raw / "Dataset501_Cli")
    assert spec.num_training == 2 and list((spec.folder / "logs").glob("import_folder_*.txt"))
    assert main(argv) == 2  # exists already: a clear error, not a traceback


# --- import_msd ------------------------------------------------------------------------------

def _volume(shape=(6, 8, 10), seed=0, labels=False) -> sitk.Image:
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 3, size=shape).astype(np.uint8) if labels else rng.normal(size=shape).astype(np.float32)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.8, 0.9, 2.5))
    image.SetOrigin((1.0, 2.0, 3.0))
    image.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    return image


def _decathlon_task(root: Path, cases=("brain_001", "brain_002")) -> Path:
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for index, case in enumerate(cases):
        four_d = sitk.JoinSeries([_volume(seed=index), _volume(seed=index + 10)])  # 2 modalities
        sitk.WriteImage(four_d, str(root / "imagesTr" / f"{case}.nii.gz"))
        sitk.WriteImage(_volume(seed=index, labels=True), str(root / "labelsTr" / f"{case}.nii.gz"))
    (root / "imagesTr" / "._brain_001.nii.gz").write_bytes(b"macOS resource fork")
    (root / "dataset.json").write_text(json.dumps({
        "name": "Brain", "modality": {"0": "FLAIR", "1": "T1w"},
        "labels": {"0": "background", "1": "edema", "2": "tumour"}, "numTraining": len(cases),
    }))
    return root


def test_msd_decathlon_splits_4d_and_keeps_geometry(home, tmp_path):
    spec = import_msd(home, _decathlon_task(tmp_path / "Task01_Brain"), "Brain", **QUIET)
    assert spec.channel_names == {"0": "FLAIR", "1": "T1w"}
    assert spec.labels == {"background": 0, "edema": 1, "tumour": 2} and spec.num_training == 2
    assert spec.raw["name"] == "Brain"
    channel, geometry = read_image_file(spec.folder / "imagesTr" / "brain_001_0001.nii.gz")
    np.testing.assert_allclose(channel[0], sitk.GetArrayFromImage(_volume(seed=10)))
    reference = _volume()
    np.testing.assert_allclose(geometry.spacing, reference.GetSpacing()[::-1])
    np.testing.assert_allclose(geometry.origin, reference.GetOrigin())
    np.testing.assert_allclose(geometry.direction, reference.GetDirection())
    assert _errors(spec) == []


def test_msd_wrong_channel_count_named(home, tmp_path):
    task = _decathlon_task(tmp_path / "Task01_Brain")
    sitk.WriteImage(_volume(), str(task / "imagesTr" / "brain_002.nii.gz"))  # 3D, but 2 modalities declared
    with pytest.raises(DatasetError, match=r"imagesTr/brain_002.nii.gz: holds 1 channel"):
        import_msd(home, task, "Brain", **QUIET)
    assert not list((home.raw / "Dataset501_Brain").glob("*Tr/*.nii.gz"))


def _plain_task(root: Path, cases=("hippo_001", "hippo_002", "hippo_003")) -> Path:
    for index, case in enumerate(cases):
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "labels").mkdir(exist_ok=True)
        sitk.WriteImage(_volume(seed=index), str(root / "images" / f"{case}.nii.gz"))
        sitk.WriteImage(_volume(seed=index, labels=True), str(root / "labels" / f"{case}.nii.gz"))
    return root


def test_msd_plain_layout_skips_unpaired_with_warning(home, tmp_path, caplog, monkeypatch):
    task = _plain_task(tmp_path / "hippo")
    (task / "labels" / "hippo_001.nii.gz").unlink()
    sitk.WriteImage(_volume(labels=True), str(task / "labels" / "hippo_999.nii.gz"))
    monkeypatch.setattr(logging.getLogger("medseg_auto"), "propagate", True)
    with caplog.at_level(logging.WARNING, logger="medseg_auto"):
        spec = import_msd(home, task, "Hippo", label_names=["anterior", "posterior"], **QUIET)
    assert spec.num_training == 2 and spec.channel_names == {"0": "MRI"}
    assert spec.labels == {"background": 0, "anterior": 1, "posterior": 2}
    warnings = "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "images/hippo_001.nii.gz" in warnings and "labels/hippo_999.nii.gz" in warnings
    assert _errors(spec) == []


def test_msd_plain_layout_infers_label_names(home, tmp_path):
    spec = import_msd(home, _plain_task(tmp_path / "hippo"), "Hippo", **QUIET)
    assert spec.labels == {"background": 0, "label_1": 1, "label_2": 2}


def test_msd_too_few_label_names_names_the_files(home, tmp_path):
    with pytest.raises(DatasetError, match=r"labels/hippo_001.nii.gz.*--labels names only 1"):
        import_msd(home, _plain_task(tmp_path / "hippo"), "Hippo", label_names=["hippocampus"], **QUIET)


def test_msd_corrupt_label_named(home, tmp_path):
    task = _plain_task(tmp_path / "hippo")
    (task / "labels" / "hippo_002.nii.gz").write_bytes(b"corrupt")
    with pytest.raises(DatasetError, match=r"labels/hippo_002.nii.gz"):
        import_msd(home, task, "Hippo", **QUIET)


def test_import_msd_command(home, tmp_path):
    argv = ["import-msd", str(_plain_task(tmp_path / "hippo")), "--name", "Hippo", "--id", "4",
            "--labels", "anterior", "posterior", "--home", str(home.root), "-np", "1", "--no-progress"]
    assert main(argv) == 0
    spec = DatasetSpec.load(home.raw / "Dataset004_Hippo")
    assert spec.num_training == 3 and list((spec.folder / "logs").glob("import_msd_*.txt"))


# --- real data (../shared/data) --------------------------------------------------------------

@pytest.mark.realdata
def test_real_hippocampus(home, shared_data):
    spec = import_msd(home, shared_data / "hippocampus", "Hippocampus", label_names=["anterior", "posterior"],
                      num_processes=4, show_progress=False)
    assert spec.num_training == 260
    assert spec.labels == {"background": 0, "anterior": 1, "posterior": 2}
    assert [p for p in verify_dataset(spec, 4, show_progress=False) if p.severity == ERROR] == []


@pytest.mark.realdata
def test_real_stu_refused_then_resized(home, shared_data):
    images, masks = shared_data / "stu_bus" / "images", shared_data / "stu_bus" / "masks"
    with pytest.raises(DatasetError, match=r"36 mask\(s\) differ in size.*mask_1.png \(512x512\).*--resize-masks"):
        import_folder(home, images, masks, "STU", site="stu", mask_pattern="mask_{n}", num_processes=4, show_progress=False)
    spec = import_folder(home, images, masks, "STU", site="stu", mask_pattern="mask_{n}", resize_masks=True,
                         num_processes=4, show_progress=False)
    assert spec.num_training == 42 and set(spec.sites.values()) == {"stu"}
    assert _errors(spec) == []


@pytest.mark.realdata
def test_real_busi(home, shared_data):
    groups = find_image_groups(shared_data / "busi_half", None)
    assert [g.name for g in groups] == ["benign", "malignant", "normal"]
    counts = [len(pair_images_with_masks(g, ["{stem}"])[0]) for g in groups]
    assert counts == [437, 210, 133]
    spec = import_folder(home, shared_data / "busi_half" / "malignant", None, "BUSI", site="busi",
                         num_processes=4, show_progress=False)
    assert spec.num_training == 210 and "busi_malignant_1" in spec.sites
    assert _errors(spec) == []
