"""nnU-Net v2 raw folders: read in place ($nnUNet_raw / --raw, never written to), imported by
import-msd / import-nnunet, and their splits_final.json adopted with --splits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medseg_auto.cli.main import main
from medseg_auto.dataset.dataset_json import DatasetSpec
from medseg_auto.dataset.synthetic import make_synthetic_dataset
from medseg_auto.errors import DatasetError
from medseg_auto.paths import DataHome
from medseg_auto.training.data.splits import install_splits


@pytest.fixture
def nnunet_raw(tmp_path) -> Path:
    """``nnUNet_raw`` with Dataset004_Tiny in nnU-Net v2's layout (imagesTr/CASE_0000.nii.gz)."""
    holder = DataHome(tmp_path / "nnunet")
    make_synthetic_dataset(holder, "Tiny", dimension=3, cases_per_site=3, shape=(6, 16, 16), dataset_id=4)
    return holder.raw


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def test_found_by_name_and_id_in_place(nnunet_raw, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("nnUNet_raw", str(nnunet_raw))
    home = DataHome.resolve(tmp_path / "ours")
    assert home.raw_dataset("Tiny") == nnunet_raw / "Dataset004_Tiny"
    assert home.raw_dataset("4") == nnunet_raw / "Dataset004_Tiny"
    assert home.is_external("Tiny")
    assert home.preprocessed_dataset("Tiny") == tmp_path / "ours" / "preprocessed" / "Dataset004_Tiny"
    assert home.next_free_id() == 501 and "Dataset004_Tiny" in home.list_datasets()


def test_raw_option_and_commands_never_write_there(nnunet_raw, tmp_path) -> None:
    before = _snapshot(nnunet_raw)
    ours = tmp_path / "ours"
    assert main(["verify", "Tiny", "--raw", str(nnunet_raw), "--home", str(ours), "-np", "1", "--no-progress"]) == 0
    assert main(["plan_and_preprocess", "-d", "4", "--raw", str(nnunet_raw), "--home", str(ours), "-np", "1",
                 "-c", "3d_fullres", "--no-progress"]) == 0
    assert _snapshot(nnunet_raw) == before
    assert (ours / "preprocessed" / "Dataset004_Tiny" / "verify_report.json").is_file()
    assert (ours / "preprocessed" / "Dataset004_Tiny" / "plans.json").is_file()


def test_missing_raw_folder_is_an_error_and_a_stale_variable_is_ignored(tmp_path, monkeypatch) -> None:
    with pytest.raises(DatasetError, match="raw dataset folder not found"):
        DataHome.resolve(tmp_path / "ours", tmp_path / "nowhere")
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "gone"))
    assert DataHome.resolve(tmp_path / "ours").external_raw is None


def test_import_msd_accepts_a_v2_folder(nnunet_raw, tmp_path, capsys) -> None:
    ours = tmp_path / "ours"
    assert main(["import-nnunet", str(nnunet_raw / "Dataset004_Tiny"), "--name", "Copy", "--home", str(ours),
                 "-np", "1", "--no-progress"]) == 0
    spec = DatasetSpec.load(DataHome(ours).raw_dataset("Copy"))
    source = DatasetSpec.load(nnunet_raw / "Dataset004_Tiny")
    assert [c.case_id for c in spec.training_cases()] == [c.case_id for c in source.training_cases()]
    assert spec.labels == source.labels and spec.sites == source.sites
    assert "recognised layout: nnU-Net v2 raw dataset" in capsys.readouterr().err


def test_splits_final_json_is_adopted(nnunet_raw, tmp_path) -> None:
    case_ids = [c.case_id for c in DatasetSpec.load(nnunet_raw / "Dataset004_Tiny").training_cases()]
    splits = [{"train": case_ids[1:], "val": case_ids[:1]}, {"train": case_ids[:-1], "val": case_ids[-1:]}]
    source = tmp_path / "splits_final.json"
    source.write_text(json.dumps(splits))
    installed = install_splits(tmp_path / "pre", source, case_ids)
    assert json.loads(installed.read_text()) == splits
    assert install_splits(tmp_path / "pre", source, case_ids) == installed  # same content: fine
    source.write_text(json.dumps(splits[::-1]))
    with pytest.raises(DatasetError, match="other splits"):
        install_splits(tmp_path / "pre", source, case_ids)
    source.write_text(json.dumps([{"train": ["nope"], "val": case_ids}]))
    with pytest.raises(DatasetError, match="not in the dataset"):
        install_splits(tmp_path / "pre2", source, case_ids)


def test_plan_and_preprocess_splits_option(nnunet_raw, tmp_path) -> None:
    case_ids = [c.case_id for c in DatasetSpec.load(nnunet_raw / "Dataset004_Tiny").training_cases()]
    source = tmp_path / "splits_final.json"
    source.write_text(json.dumps([{"train": case_ids[2:], "val": case_ids[:2]}]))
    ours = tmp_path / "ours"
    assert main(["plan_and_preprocess", "Tiny", "--raw", str(nnunet_raw), "--home", str(ours), "--plan-only",
                 "--splits", str(source), "-np", "1", "--no-progress"]) == 0
    written = json.loads((ours / "preprocessed" / "Dataset004_Tiny" / "splits.json").read_text())
    assert written[0]["val"] == case_ids[:2]
