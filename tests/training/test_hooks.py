"""Every hook of the plug-in API, exercised by a test-only method that records its calls."""

from __future__ import annotations

import argparse
import csv

import numpy as np
import pytest
import torch
from torch import nn

from medseg_auto.cli.main import build_parser
from medseg_auto.training.checkpoint import FINAL, load_checkpoint
from medseg_auto.training.hooks import DomainMethod, OptimizerSetup, TrainingContext, TrainingSettings
from medseg_auto.training.network import build_dynunet
from medseg_auto.training.registry import register_trainer
from medseg_auto.run.train import TrainRequest, train_fold

from tests.helpers.toy_home import make_toy_home


class FirstCaseSampler:
    """Every batch from one case, so the test can see that the loader used this sampler."""

    def __init__(self, case_id: str) -> None:
        self.case_id = case_id
        self.calls = 0

    def sample_batch(self, rng: np.random.Generator, batch_size: int) -> list[str]:
        self.calls += 1
        return [self.case_id] * batch_size


@register_trainer("RecordingTest")
class Recording(DomainMethod):
    """Test only: records every hook call, adds a bottleneck feature loss."""

    instances: list["Recording"] = []

    @classmethod
    def add_cli_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--record-weight", type=float, default=0.5, help="weight of the feature loss")

    def __init__(self, options=None) -> None:
        super().__init__(options)
        self.calls: list[str] = []
        self.steps = 0
        self.restored: dict = {}
        self.seen: list[dict] = []
        Recording.instances.append(self)

    def configure(self, settings: TrainingSettings) -> TrainingSettings:
        self.calls.append("configure")
        return settings

    def build_network(self, plans, configuration):
        self.calls.append("build_network")
        self.network = build_dynunet(configuration, plans.num_input_channels, plans.num_classes)
        return self.network

    def setup(self, context: TrainingContext) -> None:
        self.calls.append("setup")
        self.context = context
        self.projection = nn.Conv3d(context.tap_channels["bottleneck"], 1, 1).to(context.device)
        self.initial_projection = self.projection.weight.detach().clone()

    def feature_taps(self):
        return ("bottleneck",)

    def trainable_modules(self):
        return [self.projection]

    def make_sampler(self, info):
        self.calls.append("make_sampler")
        self.sampler = FirstCaseSampler(info.case_ids[0])
        return self.sampler

    def make_optimizer(self, params):
        self.calls.append("make_optimizer")
        optimizer = torch.optim.Adam(params, lr=1e-3)
        return OptimizerSetup(optimizer, lambda opt, epochs: torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5))

    def extra_loss(self, features, logits, target, batch):
        self.steps += 1
        self.seen.append({"features": {k: tuple(v.shape) for k, v in features.items()},
                          "logits": [tuple(h.shape) for h in logits], "case_ids": list(batch["case_ids"])})
        loss = self.options["record_weight"] * self.projection(features["bottleneck"].float()).pow(2).mean()
        return loss, {"feature_loss": float(loss.detach())}

    def on_epoch_start(self, epoch, logs):
        self.calls.append(f"on_epoch_start:{epoch}")

    def on_epoch_end(self, epoch, logs):
        self.calls.append(f"on_epoch_end:{epoch}")
        logs["recorded_epoch"] = epoch

    def extra_checkpoint_state(self):
        return {"steps": self.steps, "projection": self.projection.state_dict()}

    def load_extra_checkpoint_state(self, state):
        self.restored = dict(state)
        self.steps = state["steps"]
        self.projection.load_state_dict(state["projection"])


@pytest.fixture(scope="module")
def toy_home(tmp_path_factory):
    """One home for the module: the recorded run is trained once and inspected by every test."""
    return make_toy_home(tmp_path_factory.mktemp("hooks") / "home")


@pytest.fixture(scope="module")
def recorded_run(toy_home):
    Recording.instances.clear()
    with pytest.MonkeyPatch.context() as patch:  # module scope runs before the autouse thread fixture
        patch.setenv("OMP_NUM_THREADS", "1")
        folder = train_fold(TrainRequest(toy_home, "Toy", "3d_fullres", 0, trainer_name="RecordingTest",
                                         device="cpu", seed=0, trainer_options={"record_weight": 0.25},
                                         settings=dict(num_epochs=2, iterations_per_epoch=3, num_workers=0)))
    return folder, Recording.instances[-1]


@pytest.mark.slow
def test_hooks_are_called_in_order(recorded_run):
    _, method = recorded_run
    assert method.calls == [
        "configure", "build_network", "setup", "make_optimizer", "make_sampler",
        "on_epoch_start:0", "on_epoch_end:0", "on_epoch_start:1", "on_epoch_end:1",
    ]
    assert method.options == {"record_weight": 0.25}
    assert method.context.network is method.network and method.context.num_classes == 3


@pytest.mark.slow
def test_extra_loss_gets_taps_heads_and_batch_from_the_sampler(recorded_run):
    folder, method = recorded_run
    assert method.steps == 6 and method.sampler.calls >= 6
    first_case = method.sampler.case_id
    for seen in method.seen:
        assert seen["features"] == {"bottleneck": (2, 32, 4, 4, 4)}
        assert seen["logits"] == [(2, 3, 16, 32, 32), (2, 3, 16, 16, 16)]
        assert seen["case_ids"] == [first_case, first_case]
    assert not torch.equal(method.projection.weight.detach(), method.initial_projection)
    with open(folder / "progress.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["recorded_epoch"] for row in rows] == ["0", "1"]
    assert all(float(row["feature_loss"]) > 0 for row in rows)
    assert [float(row["lr"]) for row in rows] == pytest.approx([1e-3, 5e-4])


@pytest.mark.slow
def test_optimizer_and_method_state_go_into_the_checkpoint_and_come_back(recorded_run, toy_home):
    folder, method = recorded_run
    payload = load_checkpoint(folder / FINAL)
    assert "betas" in payload["optimizer_state"]["param_groups"][0]
    assert payload["methods_state"]["Recording"]["steps"] == 6
    assert payload["init_args"]["method_options"] == {"Recording": {"record_weight": 0.25}}
    train_fold(TrainRequest(toy_home, "Toy", "3d_fullres", 0, trainer_name="RecordingTest", device="cpu",
                            continue_training=True,
                            settings=dict(num_epochs=2, iterations_per_epoch=3, num_workers=0)))
    resumed = Recording.instances[-1]
    assert resumed is not method and resumed.restored["steps"] == 6
    torch.testing.assert_close(resumed.projection.weight, method.projection.weight)


def test_train_command_picks_up_the_trainer_options_after_tr(capsys):
    args = build_parser().parse_args(
        ["train", "Toy", "3d_fullres", "0", "-tr", "RecordingTest", "--record-weight", "0.3"])
    assert args.record_weight == 0.3 and args.trainer_option_dests == ["record_weight"]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "-tr", "RecordingTest", "-h"])
    assert "--record-weight" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "Toy", "3d_fullres", "0", "--record-weight", "0.3"])
