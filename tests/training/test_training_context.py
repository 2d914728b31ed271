"""What ``TrainingContext`` gives a method: the trainer's precision, the run's seed (also on
``--continue``), the last decoder tap, and no fallback to the working directory."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medseg_auto.dataset.image_io import ImageGeometry, write_image
from medseg_auto.errors import MedsegError
from medseg_auto.training.hooks import DomainMethod, TrainingContext, TrainingSettings
from medseg_auto.training.network import build_dynunet, tap_channels
from medseg_auto.training.registry import register_trainer
from medseg_auto.run.train import TrainRequest, train_fold
from medseg_auto.training.trainers.intra_site_alignment import IntraSiteVariabilityAlignment

from tests.helpers.toy_home import toy_configuration, toy_plans

QUICK = dict(device="cpu", final_validation=False,
             settings=dict(iterations_per_epoch=1, val_iterations_per_epoch=1, num_workers=0))


@register_trainer("SeedRecorderTest")
class SeedRecorder(DomainMethod):
    """Test only: records the seeds a method sees in setup."""

    seen: list[tuple[int, int]] = []

    def setup(self, context: TrainingContext) -> None:
        SeedRecorder.seen.append((context.seed, torch.initial_seed()))


def _context(output_folder=None, autocast_dtype=None, settings=None) -> TrainingContext:
    plans = toy_plans()
    config = toy_configuration(3)
    network = build_dynunet(config, 1, plans.num_classes)
    return TrainingContext(plans=plans, configuration=config, network=network, device=torch.device("cpu"),
                           num_classes=plans.num_classes, tap_channels=tap_channels(network),
                           settings=settings or TrainingSettings(), output_folder=output_folder, seed=123,
                           autocast_dtype=autocast_dtype)


@pytest.mark.slow
def test_a_resumed_run_shows_its_methods_the_runs_seed(toy_home):
    SeedRecorder.seen.clear()
    first = dict(QUICK, settings=dict(QUICK["settings"], num_epochs=1))
    train_fold(TrainRequest(toy_home, "Toy", "2d", 0, trainer_name="SeedRecorderTest", seed=5, **first))
    again = dict(QUICK, settings=dict(QUICK["settings"], num_epochs=2))
    train_fold(TrainRequest(toy_home, "Toy", "2d", 0, trainer_name="SeedRecorderTest", continue_training=True,
                            **again))  # no seed given: the run's is used from the start
    assert SeedRecorder.seen == [(5, 5), (5, 5)]


def test_context_autocast_follows_the_trainers_decision():
    with _context(autocast_dtype=torch.bfloat16).autocast():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    with _context(autocast_dtype=None).autocast():
        assert not torch.is_autocast_enabled("cpu")


def test_last_decoder_tap_is_the_full_resolution_decoder_stage():
    context = _context()
    assert context.last_decoder_tap() == "decoder.2"  # 4 stages: decoder.0 .. decoder.2
    assert context.tap_channels["decoder.2"] == 4  # the first stage's width
    bare = TrainingContext(plans=None, configuration=None, network=torch.nn.Identity(), device=torch.device("cpu"),
                           num_classes=2, tap_channels={}, settings=TrainingSettings())
    with pytest.raises(MedsegError, match="no decoder taps"):
        bare.last_decoder_tap()


def _target_images(folder):
    folder.mkdir(parents=True)
    image = np.random.default_rng(0).normal(size=(20, 36, 36)).astype(np.float32)
    write_image(image, ImageGeometry(spacing=(1.0, 1.0, 1.0)), folder / "target_00_0000.nii.gz")
    return folder


def test_aiva_takes_seed_and_precision_from_the_context_and_needs_an_output_folder(toy_home, tmp_path):
    from medseg_auto.preprocessing.cache import PreprocessedCache

    target = _target_images(tmp_path / "target")
    method = IntraSiteVariabilityAlignment({"target_images": str(target)})
    with pytest.raises(MedsegError, match="output folder"):
        method.setup(_context(output_folder=None))
    context = _context(output_folder=tmp_path / "fold", settings=TrainingSettings(cpu_bf16=True))  # trainer said fp32
    context.cache = PreprocessedCache(toy_home.preprocessed / "Dataset901_Toy" / "plans_toy")
    context.train_case_ids = context.cache.case_ids()
    method.setup(context)
    assert method.seed == 123
    with method.autocast():
        assert not torch.is_autocast_enabled("cpu")  # cpu_bf16 asked, but the trainer's checks said no
    assert (tmp_path / "fold").is_dir()
