"""train refuses numbers that cannot make a run, sets a whole earlier run aside, logs the real
schedule, and --no-progress hides every bar."""

from __future__ import annotations

import pytest

from medseg_auto.cli.main import main
from medseg_auto.errors import MedsegError
from medseg_auto.training.checkpoint import FINAL, load_checkpoint
from medseg_auto.run.train import TrainRequest, train_fold

SETTING_NAMES = {"epochs": "num_epochs", "iters_per_epoch": "iterations_per_epoch",
                 "val_iters_per_epoch": "val_iterations_per_epoch"}


def _train(home, show_progress: bool = True, **numbers):
    settings = {"num_workers": 0, **{SETTING_NAMES[name]: value for name, value in numbers.items()}}
    return train_fold(TrainRequest(home, "Toy", "2d", 0, device="cpu", seed=0, settings=settings,
                                   show_progress=show_progress))


@pytest.mark.parametrize("overrides", [dict(epochs=0), dict(epochs=-3), dict(iters_per_epoch=0),
                                       dict(iters_per_epoch=-1), dict(val_iters_per_epoch=0)])
def test_nonsensical_numbers_are_refused_before_anything_is_touched(toy_home, overrides):
    with pytest.raises(MedsegError, match="must be a whole number of at least 1"):
        _train(toy_home, **overrides)
    assert not (toy_home.results / "Dataset901_Toy").exists()


def test_epochs_zero_on_the_command_line_is_one_line(toy_home, capsys):
    code = main(["train", "Toy", "2d", "0", "--epochs", "0", "--home", str(toy_home.root), "--device", "cpu",
                 "--no-progress"])
    assert code == 2
    assert capsys.readouterr().err.strip() == "medseg-auto train: error: --epochs 0: must be a whole number of at least 1"


def test_fresh_run_sets_the_whole_earlier_run_aside_and_logs_its_real_schedule(toy_home, capsys):
    folder = _train(toy_home, epochs=2, iters_per_epoch=1)
    old_validation = (folder / "validation" / "summary.json").read_text()
    capsys.readouterr()
    _train(toy_home, epochs=1, iters_per_epoch=1, show_progress=False)
    previous = folder / "previous_run"
    assert load_checkpoint(previous / FINAL)["current_epoch"] == 2 and load_checkpoint(folder / FINAL)["current_epoch"] == 1
    assert (previous / "validation" / "summary.json").read_text() == old_validation
    new_log = (folder / "training_log.txt").read_text()
    assert "Epoch 1" not in new_log and "Epoch 1" in (previous / "training_log.txt").read_text()
    assert "this run: 1 epochs x 1 iterations" in new_log and "1000 x 250" not in new_log
    assert "case/s]" not in capsys.readouterr().err  # --no-progress hides the final validation's bar too
