"""Issue 13: AvaGrad at the paper's lr 10 with no warm-up learned nothing in a short run; the
default now warms the step size up linearly (2 / (1 - beta2) = 2000 steps, at most a quarter of
the run)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from medseg_auto.errors import MedsegError
from medseg_auto.training.hooks import TrainingSettings
from medseg_auto.training.trainers.avagrad import AvaGrad


def _optimizer(options, epochs, iterations):
    method = AvaGrad(options)
    method.setup(SimpleNamespace(settings=TrainingSettings(num_epochs=epochs, iterations_per_epoch=iterations)))
    weight = torch.nn.Parameter(torch.zeros(4))
    return method, weight, method.make_optimizer([weight]).optimizer


def _updates(optimizer, weight, steps):
    """Size of each update under a constant gradient."""
    sizes = []
    for _ in range(steps):
        before = weight.detach().clone()
        weight.grad = torch.tensor([0.3, -0.2, 0.1, 0.05])
        optimizer.step()
        sizes.append(float((weight.detach() - before).norm()))
    return sizes


def test_default_warmup_length_follows_the_run():
    assert AvaGrad().options["avagrad_warmup"] is None
    assert _optimizer({}, 50, 250)[0].warmup == 2000  # the paper's budget: 12500 steps
    assert _optimizer({}, 15, 16)[0].warmup == 60  # a short run: a quarter of 240 steps
    assert _optimizer({"avagrad_warmup": 0}, 50, 250)[0].warmup == 0
    with pytest.raises(MedsegError, match="avagrad-warmup"):
        AvaGrad({"avagrad_warmup": -1})


def test_updates_grow_linearly_during_the_warmup_then_match_plain_avagrad():
    _, warm_weight, warm = _optimizer({"avagrad_warmup": 10}, 5, 10)
    _, plain_weight, plain = _optimizer({"avagrad_warmup": 0}, 5, 10)
    warm_sizes, plain_sizes = _updates(warm, warm_weight, 14), _updates(plain, plain_weight, 14)
    assert warm_sizes[0] == plain_sizes[0] == 0.0  # AvaGrad's first step only fills the moments
    for step in range(2, 11):  # 1-based step numbers inside the warm-up
        assert warm_sizes[step - 1] == pytest.approx(plain_sizes[step - 1] * step / 10, rel=1e-5)
    assert warm_sizes[11:] == pytest.approx(plain_sizes[11:], rel=1e-5)
    assert all(group["lr"] == 10.0 for group in warm.param_groups)  # the scheduler's lr is left as it was


def test_warmup_resumes_from_the_optimizer_state():
    """The warm-up position is the optimizer's own step count, which checkpoints keep."""
    _, weight, first = _optimizer({"avagrad_warmup": 10}, 5, 10)
    _updates(first, weight, 5)
    _, _, second = _optimizer({"avagrad_warmup": 10}, 5, 10)
    second.load_state_dict(first.state_dict())
    assert second.param_groups[0]["step"] == 5
    assert second.warmup_factor(second.param_groups[0]["step"] + 1) == pytest.approx(0.6)
