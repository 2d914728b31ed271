"""The hooks added for the domain methods: ``transform_batch``, epoch-aware samplers, the
richer ``TrainingContext`` (cache, cases, ``--pretrained``) and ``--network`` by name."""

from __future__ import annotations

import pytest
import torch

from medseg_auto.errors import MedsegError
from medseg_auto.inference.model_loading import load_fold
from medseg_auto.training.checkpoint import FINAL, load_checkpoint
from medseg_auto.training.hooks import DomainMethod
from medseg_auto.training.network import build_dynunet
from medseg_auto.training.network_registry import available_networks, register_network
from medseg_auto.training.registry import register_trainer
from medseg_auto.run.train import TrainRequest, train_fold


class EpochSampler:
    def __init__(self, case_ids, epoch):
        self.case_ids, self.epoch = case_ids, epoch

    def sample_batch(self, rng, batch_size):
        return [self.case_ids[self.epoch % len(self.case_ids)]] * batch_size


@register_trainer("BatchAndSamplerTest")
class BatchAndSampler(DomainMethod):
    """Test only: zeroes the images of every batch and draws one case per epoch."""

    sampler_changes_per_epoch = True
    instances: list["BatchAndSampler"] = []

    def __init__(self, options=None):
        super().__init__(options)
        self.sampler_epochs: list[int] = []
        self.transformed: list[tuple[int, float]] = []
        self.batches: list[tuple[int, list[str]]] = []
        BatchAndSampler.instances.append(self)

    def setup(self, context):
        self.context = context

    def make_sampler(self, info):
        self.sampler_epochs.append(info.epoch)
        assert info.num_epochs == 3
        return EpochSampler(sorted(info.case_ids), info.epoch)

    def transform_batch(self, batch, epoch):
        batch["data"] = torch.zeros_like(batch["data"])
        self.batches.append((epoch, list(batch["case_ids"])))
        return batch

    def extra_loss(self, features, logits, target, batch):
        self.transformed.append((0, float(batch["data"].abs().sum())))
        return None


@pytest.mark.slow
def test_transform_batch_and_epoch_sampler(toy_home):
    BatchAndSampler.instances.clear()
    train_fold(TrainRequest(toy_home, "Toy", "2d", 0, trainer_name="BatchAndSamplerTest", device="cpu", seed=0,
                            settings=dict(num_epochs=3, iterations_per_epoch=2, num_workers=0)))
    method = BatchAndSampler.instances[-1]
    assert method.sampler_epochs == [0, 1, 2]  # rebuilt at the start of every epoch
    assert all(total == 0.0 for _, total in method.transformed) and len(method.transformed) == 6
    cases = sorted(method.context.train_case_ids)
    for epoch, ids in method.batches:
        assert set(ids) == {cases[epoch % len(cases)]}
    assert method.context.cache is not None and method.context.output_folder.name == "fold_0"
    assert method.context.pretrained_checkpoint is None and method.context.settings.num_epochs == 3


@pytest.mark.slow
def test_pretrained_path_reaches_the_methods(toy_home):
    BatchAndSampler.instances.clear()
    first = train_fold(TrainRequest(toy_home, "Toy", "2d", 0, device="cpu", seed=0,
                                    settings=dict(num_epochs=1, iterations_per_epoch=1, num_workers=0)))
    train_fold(TrainRequest(toy_home, "Toy", "2d", 1, trainer_name="BatchAndSamplerTest", device="cpu", seed=0,
                            pretrained=first / FINAL,
                            settings=dict(num_epochs=3, iterations_per_epoch=1, num_workers=0)))
    assert BatchAndSampler.instances[-1].context.pretrained_checkpoint == first / FINAL
    with pytest.raises(MedsegError, match="no such checkpoint"):
        train_fold(TrainRequest(toy_home, "Toy", "2d", 1, pretrained=first / "missing.pt", device="cpu"))


class WiderHead(torch.nn.Module):
    """A registered test network: DynUNet whose logits are doubled (so it differs from the default)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        out = self.inner(x)
        return [2 * h for h in out] if isinstance(out, list) else 2 * out


@register_network("doubled_test", "test only: DynUNet with doubled logits")
def build_doubled(configuration, in_channels, num_classes, deep_supervision=True):
    return WiderHead(build_dynunet(configuration, in_channels, num_classes, deep_supervision))


@pytest.mark.slow
def test_network_by_name_is_stored_and_rebuilt_for_prediction(toy_home):
    assert "dynunet" in available_networks() and "doubled_test" in available_networks()
    folder = train_fold(TrainRequest(toy_home, "Toy", "2d", 0, device="cpu", seed=0, network="doubled_test",
                                     settings=dict(num_epochs=1, iterations_per_epoch=1, num_workers=0)))
    assert folder.parent.name == "Base-doubled_test__plans__2d"
    assert load_checkpoint(folder / FINAL)["network_name"] == "doubled_test"
    model = load_fold(folder.parent, "0")
    assert isinstance(model.network, WiderHead)
    with pytest.raises(MedsegError, match="unknown network 'nope'; available: .*dynunet"):
        train_fold(TrainRequest(toy_home, "Toy", "2d", 0, network="nope", device="cpu"))
