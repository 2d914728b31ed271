"""``TrainRequest(split=(train, val))``: training and model selection see exactly the given cases."""

from __future__ import annotations

import json

import pytest

from medseg_auto.errors import MedsegError
from medseg_auto.training import trainer as trainer_module
from medseg_auto.training.checkpoint import FINAL
from medseg_auto.run.train import TrainRequest, train_fold

FAST = dict(device="cpu")
FAST_SETTINGS = dict(num_workers=0)


@pytest.mark.slow
def test_split_run_trains_and_validates_only_on_the_given_cases(two_site_home, monkeypatch):
    seen = {}
    original_train, original_val = trainer_module.make_training_loader, trainer_module.make_validation_loader

    def record_train(cache, case_ids, *args, **kwargs):
        seen["train"] = list(case_ids)
        return original_train(cache, case_ids, *args, **kwargs)

    def record_val(cache, case_ids, *args, **kwargs):
        seen["val"] = list(case_ids)
        return original_val(cache, case_ids, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "make_training_loader", record_train)
    monkeypatch.setattr(trainer_module, "make_validation_loader", record_val)
    train, val = ["case_000", "case_001", "case_002"], ["case_003"]
    folder = train_fold(TrainRequest(two_site_home, "Toy", "2d", "exp1", seed=0, split=(train, val),
                                     settings=dict(num_epochs=1, iterations_per_epoch=1, **FAST_SETTINGS), **FAST))
    assert folder.name == "fold_exp1" and (folder / FINAL).is_file()
    assert seen == {"train": train, "val": val}
    assert json.loads((folder / "split.json").read_text()) == {"train": train, "val": val}
    summary = json.loads((folder / "validation" / "summary.json").read_text())
    assert summary["num_cases"] == 1
    predicted = sorted(p.name for p in (folder / "validation").glob("case_*"))
    assert predicted == ["case_003.nii.gz"]
    assert not (two_site_home.preprocessed / "Dataset901_Toy" / "splits.json").exists()  # no CV splits made


def test_split_run_refuses_bad_tags_and_cases(two_site_home):
    with pytest.raises(MedsegError, match="tag"):
        train_fold(TrainRequest(two_site_home, "Toy", "2d", 0, split=(["case_000"], ["case_001"]), **FAST))
    with pytest.raises(MedsegError, match="not preprocessed"):
        train_fold(TrainRequest(two_site_home, "Toy", "2d", "x", split=(["case_000", "nope"], ["case_001"]),
                                **FAST))
    with pytest.raises(MedsegError, match="both lists"):
        train_fold(TrainRequest(two_site_home, "Toy", "2d", "x", split=(["case_000"], []), **FAST))


@pytest.mark.slow
def test_resuming_a_split_run_with_other_cases_is_refused(two_site_home):
    train_fold(TrainRequest(two_site_home, "Toy", "2d", "t", seed=0,
                            split=(["case_000", "case_001"], ["case_002"]),
                            settings=dict(num_epochs=1, iterations_per_epoch=1, **FAST_SETTINGS), **FAST))
    with pytest.raises(MedsegError, match="another split"):
        train_fold(TrainRequest(two_site_home, "Toy", "2d", "t", continue_training=True,
                                split=(["case_000", "case_004"], ["case_002"]), settings=FAST_SETTINGS, **FAST))
