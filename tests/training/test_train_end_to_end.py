"""Training end to end on CPU with tiny synthetic data: files, curves, presets, resume, pretrained."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from medseg_auto.cli.main import main
from medseg_auto.training.checkpoint import BEST, FINAL, LATEST, load_checkpoint
from medseg_auto.run.train import TrainRequest, train_fold

FAST = dict(device="cpu", seed=0)
FAST_SETTINGS = dict(num_workers=0)


def read_progress(folder):
    with open(folder / "progress.csv") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
@pytest.mark.parametrize("configuration", ["3d_fullres", "2d"])
def test_train_writes_results_layout(toy_home, configuration):
    folder = train_fold(TrainRequest(toy_home, "Toy", configuration, 0,
                                     settings=dict(num_epochs=2, iterations_per_epoch=2, **FAST_SETTINGS), **FAST))
    assert folder == toy_home.results / "Dataset901_Toy" / f"Base__plans__{configuration}" / "fold_0"
    assert (folder.parent / "plans.json").is_file() and (folder.parent / "dataset.json").is_file()
    for name in ("training_log.txt", "progress.csv", "progress.png", FINAL, BEST):
        assert (folder / name).is_file(), name
    assert not (folder / LATEST).exists()  # removed once the final checkpoint exists
    rows = read_progress(folder)
    assert [row["epoch"] for row in rows] == ["0", "1"]
    assert {"train_loss", "val_loss", "pseudo_dice", "ema_pseudo_dice", "lr", "epoch_time",
            "pseudo_dice_1", "pseudo_dice_2"} <= set(rows[0])
    summary = json.loads((folder / "validation" / "summary.json").read_text())
    assert summary["num_cases"] == 2  # the final validation predicted the fold's two validation cases
    assert "Epoch 1" in (folder / "training_log.txt").read_text()


@pytest.mark.slow
def test_checkpoint_holds_everything_needed_to_resume_and_predict(toy_home):
    folder = train_fold(TrainRequest(toy_home, "Toy", "3d_fullres", 1,
                                     settings=dict(num_epochs=1, iterations_per_epoch=1, **FAST_SETTINGS), **FAST))
    payload = load_checkpoint(folder / FINAL)
    assert {"network_weights", "optimizer_state", "scheduler_state", "grad_scaler_state", "current_epoch",
            "logging", "best_ema", "rng_states", "trainer_name", "init_args", "plans_name", "configuration",
            "inference_allowed_mirroring_axes", "methods_state"} <= set(payload)
    assert payload["current_epoch"] == 1 and payload["trainer_name"] == "Base"
    assert payload["inference_allowed_mirroring_axes"] == [0, 1, 2]
    assert payload["init_args"]["fold"] == "1" and payload["init_args"]["seed"] == 0


@pytest.mark.slow
def test_loss_goes_down_on_a_learnable_toy_problem(toy_home):
    folder = train_fold(TrainRequest(toy_home, "Toy", "2d", 0,
                                     settings=dict(num_epochs=6, iterations_per_epoch=5, **FAST_SETTINGS), **FAST))
    losses = [float(row["train_loss"]) for row in read_progress(folder)]
    assert losses[-1] < 0.8 * losses[0]


@pytest.mark.slow
def test_fold_all_and_presets(toy_home):
    folder = train_fold(TrainRequest(toy_home, "Toy", "2d", "all", trainer_name="NoMirroring",
                                     settings=dict(num_epochs=1, iterations_per_epoch=1, **FAST_SETTINGS), **FAST))
    assert folder.name == "fold_all" and folder.parent.name == "NoMirroring__plans__2d"
    payload = load_checkpoint(folder / FINAL)
    assert payload["inference_allowed_mirroring_axes"] is None
    assert len(payload["init_args"]["settings"]) > 0
    folder = train_fold(TrainRequest(toy_home, "Toy", "3d_fullres", 0, trainer_name="NoDeepSupervision",
                                     settings=dict(num_epochs=1, iterations_per_epoch=1, **FAST_SETTINGS), **FAST))
    assert not any("deep_supervision_heads" in key for key in load_checkpoint(folder / FINAL)["network_weights"])
    folder = train_fold(TrainRequest(toy_home, "Toy", "2d", 0, trainer_name="FewEpochs",
                                     settings=dict(iterations_per_epoch=1, **FAST_SETTINGS), **FAST))
    assert len(read_progress(folder)) == 10  # the preset's epochs, with --iters-per-epoch overriding its 50


@pytest.mark.slow
def test_continue_after_the_end_trains_no_more(toy_home):
    folder = train_fold(TrainRequest(toy_home, "Toy", "2d", 0,
                                     settings=dict(num_epochs=2, iterations_per_epoch=1, **FAST_SETTINGS), **FAST))
    before = load_checkpoint(folder / FINAL)["network_weights"]
    train_fold(TrainRequest(toy_home, "Toy", "2d", 0, continue_training=True, settings=FAST_SETTINGS,
                            **FAST))  # keeps the run's 2 epochs
    assert len(read_progress(folder)) == 2
    after = load_checkpoint(folder / FINAL)["network_weights"]
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.slow
def test_continue_with_more_epochs_stretches_the_poly_schedule(toy_home):
    folder = train_fold(TrainRequest(toy_home, "Toy", "2d", 0,
                                     settings=dict(num_epochs=2, iterations_per_epoch=1, **FAST_SETTINGS), **FAST))
    train_fold(TrainRequest(toy_home, "Toy", "2d", 0, continue_training=True,
                            settings=dict(num_epochs=4, iterations_per_epoch=1, **FAST_SETTINGS), **FAST))
    lrs = [float(row["lr"]) for row in read_progress(folder)]
    assert len(lrs) == 4 and lrs[2] == pytest.approx(0.01 * (1 - 2 / 4) ** 0.9) and lrs[3] < lrs[2]


@pytest.mark.slow
def test_pretrained_initialises_from_another_run(toy_home):
    source = train_fold(TrainRequest(toy_home, "Toy", "3d_fullres", 0,
                                     settings=dict(num_epochs=1, iterations_per_epoch=1, **FAST_SETTINGS), **FAST))
    weights = load_checkpoint(source / FINAL)["network_weights"]
    folder = train_fold(TrainRequest(toy_home, "Toy", "3d_fullres", 1, pretrained=source / FINAL,
                                     settings=dict(num_epochs=0, **FAST_SETTINGS), **FAST))
    loaded = load_checkpoint(folder / FINAL)["network_weights"]
    assert all(torch.equal(weights[k], loaded[k]) for k in weights)  # 0 epochs: the weights are the source's


@pytest.mark.slow
def test_train_command_runs(toy_home, capsys):
    code = main(["train", "Toy", "2d", "0", "--home", str(toy_home.root), "--epochs", "1", "--iters-per-epoch", "1",
                 "--device", "cpu", "--seed", "1", "--num-workers", "0", "--no-bf16"])
    assert code == 0
    folder = toy_home.results / "Dataset901_Toy" / "Base__plans__2d" / "fold_0"
    assert load_checkpoint(folder / FINAL)["init_args"]["settings"]["cpu_bf16"] is False


@pytest.mark.slow
def test_final_validation_false_trains_without_validating(toy_home):
    folder = train_fold(TrainRequest(toy_home, "Toy", "2d", 2, final_validation=False,
                                     settings=dict(num_epochs=1, iterations_per_epoch=1, **FAST_SETTINGS), **FAST))
    assert (folder / FINAL).is_file() and not (folder / "validation").exists()


@pytest.mark.slow
def test_fresh_run_sets_the_earlier_run_aside_so_continue_resumes_the_new_one(toy_home, monkeypatch):
    from medseg_auto.training.trainer import Trainer

    folder = train_fold(TrainRequest(toy_home, "Toy", "2d", 0,  # an earlier, finished run
                                     settings=dict(num_epochs=3, iterations_per_epoch=1, **FAST_SETTINGS), **FAST))
    run_epoch = Trainer.run_epoch

    def interrupted(self, *args):
        if self.current_epoch == 1:
            raise KeyboardInterrupt  # the new run dies after writing checkpoint_latest at epoch 1
        return run_epoch(self, *args)

    monkeypatch.setattr(Trainer, "run_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_fold(TrainRequest(toy_home, "Toy", "2d", 0,
                                settings=dict(num_epochs=2, iterations_per_epoch=1, **FAST_SETTINGS), **FAST))
    assert not (folder / FINAL).exists() and (folder / LATEST).exists()
    assert load_checkpoint(folder / "previous_run" / FINAL)["current_epoch"] == 3
    monkeypatch.setattr(Trainer, "run_epoch", run_epoch)
    train_fold(TrainRequest(toy_home, "Toy", "2d", 0, continue_training=True, settings=FAST_SETTINGS,
                            **FAST))
    assert load_checkpoint(folder / FINAL)["current_epoch"] == 2 and len(read_progress(folder)) == 2
