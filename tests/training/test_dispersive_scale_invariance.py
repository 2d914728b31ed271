"""Issue 13: the default dispersive loss must not reward inflating the feature scale.

With the scale-dependent InfoNCE-L2 default, a 60-step probe grew the instance-norm weight of
``encoder.1`` from 1.00 to 1.60 while the loss fell; these tests pin the default to a loss that
scaling cannot lower.
"""

from __future__ import annotations

import pytest
import torch

from medseg_auto.training.losses.dispersive import dispersive_loss
from medseg_auto.training.trainers.dispersive import Dispersive


def _default_loss(method: Dispersive, feature_map: torch.Tensor) -> torch.Tensor:
    loss, _ = method.extra_loss({method.options["disp_tap"]: feature_map}, [], torch.zeros(1), {})
    return loss


@pytest.mark.parametrize("scale", [0.5, 3.0, 10.0])
def test_default_loss_does_not_change_when_the_features_are_scaled(scale):
    torch.manual_seed(0)
    method = Dispersive()
    features = torch.randn(6, 8, 5, 5).relu()
    assert torch.allclose(_default_loss(method, features), _default_loss(method, scale * features), atol=1e-5)


def test_default_loss_gives_no_gradient_to_a_global_feature_scale():
    """The probe's failure in one line: d loss / d gamma of ``gamma * features`` must be ~0."""
    torch.manual_seed(1)
    method = Dispersive()
    gamma = torch.tensor(1.0, requires_grad=True)
    features = torch.randn(4, 8, 6, 6)
    _default_loss(method, gamma * features).backward()
    assert abs(float(gamma.grad)) < 1e-5


def test_paper_l2_variant_stays_available_and_is_scale_dependent():
    """The paper's Eq. 3 is still selectable (``--disp-variant infonce_l2``); it is the one that scales."""
    torch.manual_seed(2)
    h = torch.randn(5, 30)
    assert float(dispersive_loss(3 * h, "infonce_l2")) < float(dispersive_loss(h, "infonce_l2")) - 0.5
