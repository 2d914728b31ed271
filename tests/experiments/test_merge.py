"""``medseg-auto merge``: sites kept or set, id collisions prefixed, mismatches refused, atomic."""

from __future__ import annotations

import json

import pytest

from medseg_auto.cli.main import main
from medseg_auto.dataset import merge as merge_module
from medseg_auto.dataset.dataset_json import DatasetSpec
from medseg_auto.dataset.merge import merge_datasets
from medseg_auto.dataset.synthetic import make_synthetic_dataset, synthetic_home
from medseg_auto.errors import DatasetError


@pytest.fixture
def home(tmp_path):
    home = synthetic_home(tmp_path / "home")
    make_synthetic_dataset(home, "Alpha", dimension=2, cases_per_site=2, shape=(12, 10), seed=1)
    make_synthetic_dataset(home, "Beta", dimension=2, cases_per_site=2, shape=(12, 10), seed=2)
    return home


def _drop_sites(home, name):
    spec = DatasetSpec.load(home.raw_dataset(name))
    payload = dict(spec.raw)
    payload.pop("sites")
    (spec.folder / "dataset.json").write_text(json.dumps(payload))


def test_merge_keeps_sites_and_prefixes_colliding_ids(home):
    spec = merge_datasets(home, ["Alpha", "Beta"], "AB", show_progress=False)
    # both sources use siteA_000 .. siteB_001: every id collides and gets its source's name
    expected = {f"{source}_{site}_{i:03d}": site for source in ("Alpha", "Beta")
                for site in ("siteA", "siteB") for i in range(2)}
    assert spec.sites == expected and spec.num_training == 8
    assert sorted(c.case_id for c in spec.training_cases()) == sorted(expected)
    log = json.loads((spec.folder / "merge_log.json").read_text())
    assert len(log["renamed"]) == 8 and log["num_cases"] == 8
    assert {"source": "Dataset502_Beta", "from": "siteA_000", "to": "Beta_siteA_000"} in log["renamed"]
    assert spec.labels == {"background": 0, "blob": 1}
    # the copied files are the sources' files, byte for byte
    source = home.raw_dataset("Beta") / "labelsTr" / "siteB_001.png"
    assert (spec.folder / "labelsTr" / "Beta_siteB_001.png").read_bytes() == source.read_bytes()


def test_merge_site_overrides_and_source_name_default(home):
    _drop_sites(home, "Beta")
    spec = merge_datasets(home, ["Alpha", "502"], "AB", site_overrides={"Alpha": "busi"}, show_progress=False)
    assert set(spec.sites[c] for c in spec.sites if c.startswith("Alpha_")) == {"busi"}
    assert set(spec.sites[c] for c in spec.sites if c.startswith("Beta_")) == {"Beta"}  # no sites: its name
    with pytest.raises(DatasetError, match="not one of the merged"):
        merge_datasets(home, ["Alpha", "Beta"], "AB2", site_overrides={"Gamma": "x"}, show_progress=False)


def test_merge_without_collisions_keeps_ids(home):
    make_synthetic_dataset(home, "Gamma", dimension=2, cases_per_site=1, shape=(12, 10))
    beta = home.raw_dataset("Beta")
    for path in list((beta / "imagesTr").iterdir()) + list((beta / "labelsTr").iterdir()):
        path.rename(path.with_name("b" + path.name))
    spec = DatasetSpec.load(beta)
    spec.sites = {"b" + case: site for case, site in spec.sites.items()}
    spec.save()
    merged = merge_datasets(home, ["Alpha", "Beta"], "AB", show_progress=False)
    assert "siteA_000" in merged.sites and "bsiteA_000" in merged.sites
    assert json.loads((merged.folder / "merge_log.json").read_text())["renamed"] == []


def test_merge_refuses_mismatched_labels_channels_and_endings(home):
    make_synthetic_dataset(home, "Volume", dimension=3, cases_per_site=1, shape=(4, 8, 8))
    with pytest.raises(DatasetError, match="'labels' differ"):  # 3D has a core label
        merge_datasets(home, ["Alpha", "Volume"], "Bad", show_progress=False)
    spec = DatasetSpec.load(home.raw_dataset("Beta"))
    spec.channel_names = {"0": "CT"}
    spec.save()
    with pytest.raises(DatasetError, match="Dataset502_Beta.*'channel_names' differ"):
        merge_datasets(home, ["Alpha", "Beta"], "Bad", show_progress=False)
    spec.channel_names, spec.file_ending = {"0": "US"}, ".nii.gz"
    spec.save()
    with pytest.raises(DatasetError, match="'file_ending' differ"):
        merge_datasets(home, ["Alpha", "Beta"], "Bad", show_progress=False)
    with pytest.raises(DatasetError, match="more than once"):
        merge_datasets(home, ["Alpha", "501"], "Bad", show_progress=False)
    assert not any("Bad" in name for name in home.list_datasets())


def test_failed_merge_leaves_no_dataset_and_a_rerun_succeeds(home, monkeypatch):
    copied = []
    original = merge_module._copy_case

    def failing(case, folder, ending):
        if len(copied) == 3:
            raise OSError("disk full")
        copied.append(case)
        original(case, folder, ending)

    monkeypatch.setattr(merge_module, "_copy_case", failing)
    with pytest.raises(OSError):
        merge_datasets(home, ["Alpha", "Beta"], "AB", show_progress=False)
    folder = home.raw / "Dataset503_AB"
    assert not (folder / "dataset.json").exists() and not (folder / "imagesTr").exists()
    monkeypatch.setattr(merge_module, "_copy_case", original)
    assert merge_datasets(home, ["Alpha", "Beta"], "AB", show_progress=False).num_training == 8


def test_merge_command(home, capsys):
    code = main(["merge", "Alpha", "Beta", "--name", "AB", "--site", "Alpha=busi", "--site", "Beta=stu",
                 "--home", str(home.root), "--no-progress"])
    assert code == 0
    spec = DatasetSpec.load(home.raw_dataset("AB"))
    assert sorted(set(spec.sites.values())) == ["busi", "stu"]
    assert list((spec.folder / "logs").glob("merge_*.txt"))
    assert main(["merge", "Alpha", "Beta", "--name", "AB", "--home", str(home.root)]) == 2  # exists
    assert main(["merge", "Alpha", "Beta", "--name", "X", "--site", "busi", "--home", str(home.root)]) == 2
    assert "SOURCE=SITE" in capsys.readouterr().err
    assert main(["merge", "Alpha", "Volume", "--name", "Y", "--home", str(home.root)]) == 2  # unknown source
    assert not any(name.endswith(("_X", "_Y")) for name in home.list_datasets())
