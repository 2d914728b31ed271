"""The plans: plain dataclasses serialised as a readable, versioned, editable ``plans.json``.

A plans file holds global decisions (transpose, intensity statistics) and one
:class:`ConfigurationPlan` per configuration (``2d``, ``3d_fullres``, ``3d_lowres``). The
network section describes a MONAI ``DynUNet`` (kernel sizes and strides per stage, features
per stage), which is the same topology nnU-Net's ``PlainConvUNet`` builds. ``notes`` records,
in words, where and why a decision differs from nnU-Net's default planner.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medseg_auto.errors import PlansError
from medseg_auto.utils.atomic import read_json, write_json_atomic

PLANS_VERSION = 1
PLANS_FILE_NAME = "plans.json"


@dataclass
class ResamplingPlan:
    """Interpolation orders; ``order_z`` is used along the low-resolution axis of anisotropic data."""

    order: int
    order_z: int = 0


@dataclass
class NetworkPlan:
    """A U-Net topology in DynUNet terms (all lists have one entry per stage)."""

    n_stages: int
    features_per_stage: list[int]
    kernel_sizes: list[list[int]]
    strides: list[list[int]]
    n_conv_per_stage: list[int]
    n_conv_per_stage_decoder: list[int]
    network_class: str = "DynUNet"
    norm: str = "instance"
    activation: str = "leakyrelu"

    @property
    def num_pool_per_axis(self) -> list[int]:
        """How often each axis is halved between the first and the last stage."""
        counts = [0] * len(self.strides[0])
        for stride in self.strides[1:]:
            for axis, value in enumerate(stride):
                counts[axis] += int(value == 2)
        return counts


@dataclass
class ConfigurationPlan:
    """Everything training and prediction need to know about one configuration."""

    name: str
    data_identifier: str
    spacing: list[float]
    patch_size: list[int]
    median_image_size_in_voxels: list[float]
    batch_size: int
    batch_dice: bool
    normalization_schemes: list[str]
    use_mask_for_norm: list[bool]
    resampling_data: ResamplingPlan
    resampling_seg: ResamplingPlan
    resampling_probabilities: ResamplingPlan
    network: NetworkPlan
    is_2d: bool = False
    previous_stage: str | None = None
    next_stage: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def spatial_dims(self) -> int:
        return 2 if self.is_2d else 3


@dataclass
class Plans:
    """The whole plans file."""

    dataset_name: str
    plans_name: str
    preset: str
    transpose_forward: list[int]
    transpose_backward: list[int]
    original_median_spacing_after_transp: list[float]
    original_median_shape_after_transp: list[float]
    foreground_intensity_properties_per_channel: dict[str, dict[str, float]]
    configurations: dict[str, ConfigurationPlan]
    num_input_channels: int
    labels: dict[str, int]
    notes: list[str] = field(default_factory=list)
    fingerprint_signature: str = ""
    plans_version: int = PLANS_VERSION

    @property
    def num_classes(self) -> int:
        return len(set(self.labels.values()))

    def configuration(self, name: str) -> ConfigurationPlan:
        if name not in self.configurations:
            raise PlansError(
                f"plans '{self.plans_name}' of {self.dataset_name} have no configuration '{name}' "
                f"(available: {', '.join(self.configurations)})"
            )
        return self.configurations[name]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | Path) -> None:
        write_json_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> "Plans":
        """Read a plans file; a missing, malformed or invalid file (:mod:`.plans_validation`)
        raises :class:`PlansError` naming it and the field."""
        path = Path(path)
        if not path.is_file():
            raise PlansError(f"{path}: plans file not found; run 'medseg-auto plan_and_preprocess' first")
        try:
            payload = read_json(path)
        except ValueError as error:
            raise PlansError(f"{path}: not valid JSON ({error})") from error
        from medseg_auto.planning.plans_validation import validate_plans

        validate_plans(payload, path)
        try:
            return cls.from_json(payload)
        except (KeyError, TypeError, ValueError) as error:
            raise PlansError(f"{path}: malformed plans file ({error!r})") from error

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> "Plans":
        version = int(payload.get("plans_version", 0))
        if version > PLANS_VERSION:
            raise PlansError(f"plans version {version} is newer than this medseg_auto understands ({PLANS_VERSION})")
        configurations = {
            name: _configuration_from_json(config) for name, config in payload["configurations"].items()
        }
        fields = {key: payload[key] for key in cls.__dataclass_fields__ if key in payload and key != "configurations"}
        return cls(configurations=configurations, **fields)


def _configuration_from_json(payload: dict[str, Any]) -> ConfigurationPlan:
    values = dict(payload)
    for key in ("resampling_data", "resampling_seg", "resampling_probabilities"):
        values[key] = ResamplingPlan(**values[key])
    values["network"] = NetworkPlan(**values["network"])
    return ConfigurationPlan(**values)
