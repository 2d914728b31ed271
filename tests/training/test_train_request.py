"""``train_fold(TrainRequest)``: the one entry to training, and what it does around the trainer."""

from __future__ import annotations

import json

import pytest

from medseg_auto.errors import MedsegError
from medseg_auto.training.checkpoint import FINAL, load_checkpoint
from medseg_auto.run.train import PREVIOUS_RUN_FOLDER, TrainRequest, train_fold
from medseg_auto.training.trainer import Trainer

QUICK = dict(device="cpu", seed=0, final_validation=False,
             settings=dict(num_epochs=1, iterations_per_epoch=1, val_iterations_per_epoch=1, num_workers=0))


@pytest.mark.slow
def test_a_fresh_run_sets_the_earlier_runs_split_aside_with_its_checkpoints(toy_home):
    first = (["case_000", "case_001"], ["case_002"])
    second = (["case_003", "case_004"], ["case_005"])
    folder = train_fold(TrainRequest(toy_home, "Toy", "2d", "t", split=first, **QUICK))
    train_fold(TrainRequest(toy_home, "Toy", "2d", "t", split=second, **QUICK))
    previous = folder / PREVIOUS_RUN_FOLDER
    assert (previous / FINAL).is_file()
    assert json.loads((previous / "split.json").read_text()) == {"train": first[0], "val": first[1]}
    assert json.loads((folder / "split.json").read_text()) == {"train": second[0], "val": second[1]}


@pytest.mark.slow
def test_settings_override_the_trainer_and_unknown_ones_are_refused(toy_home):
    folder = train_fold(TrainRequest(toy_home, "Toy", "2d", 0, trainer_name="FewEpochs", **QUICK))
    assert load_checkpoint(folder / FINAL)["init_args"]["settings"]["num_epochs"] == 1
    with pytest.raises(MedsegError, match="unknown training setting.*epochs"):
        train_fold(TrainRequest(toy_home, "Toy", "2d", 0, settings={"epochs": 1}))


@pytest.mark.slow
def test_trainer_class_runs_a_subclass_of_the_loop(toy_home):
    steps = []

    class CountingTrainer(Trainer):
        def train_step(self, batch):
            steps.append(self.current_epoch)
            return super().train_step(batch)

    train_fold(TrainRequest(toy_home, "Toy", "2d", 0, trainer_class=CountingTrainer, **QUICK))
    assert steps == [0]
