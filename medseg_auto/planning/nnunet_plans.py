"""nnU-Net v2 plans <-> our plans, for the fields both have.

nnU-Net's ``plans.json`` (2.4 and later) and ours share the global fields (transpose, median
spacing and shape, foreground intensity statistics) and, per configuration, spacing, patch
size, batch size, normalization, resampling orders and the U-Net topology (kernel sizes,
strides, features and convolutions per stage: nnU-Net's ``PlainConvUNet`` and our DynUNet are
the same topology). What only one side has is left out in the other direction: our ``notes``
and planner preset; nnU-Net's preprocessor and reader classes, ``force_separate_z``.

Labels and channel counts live in nnU-Net's ``dataset.json``, so importing needs it too.
Configurations may inherit from another (``"inherits_from"``, the cascade); they are resolved.
Plans written by nnU-Net before 2.4 (``UNet_class_name``, ``pool_op_kernel_sizes``, ...) are
read as well.
"""

from __future__ import annotations

from typing import Any

from medseg_auto.errors import PlansError
from medseg_auto.planning.plans import ConfigurationPlan, NetworkPlan, Plans, ResamplingPlan

PLAIN_CONV_UNET = "dynamic_network_architectures.architectures.unet.PlainConvUNet"
CONV_OPS = {2: "torch.nn.modules.conv.Conv2d", 3: "torch.nn.modules.conv.Conv3d"}
NORM_OPS = {2: "torch.nn.modules.instancenorm.InstanceNorm2d", 3: "torch.nn.modules.instancenorm.InstanceNorm3d"}
IMPORTED_PRESET = "nnunet_import"


def resolved_configuration(nnunet_plans: dict[str, Any], name: str) -> dict[str, Any]:
    """Configuration ``name`` with ``inherits_from`` chains merged in (child keys win)."""
    configurations = nnunet_plans.get("configurations", {})
    if name not in configurations:
        raise PlansError(f"nnU-Net plans have no configuration '{name}' (available: {', '.join(configurations)})")
    chain, current = [], name
    while current is not None:
        if current in chain:
            raise PlansError(f"nnU-Net plans: configuration '{name}' inherits in a circle ({' -> '.join(chain)})")
        chain.append(current)
        current = configurations[current].get("inherits_from")
        if current is not None and current not in configurations:
            raise PlansError(f"nnU-Net plans: '{chain[-1]}' inherits from unknown configuration '{current}'")
    merged: dict[str, Any] = {}
    for link in reversed(chain):
        merged.update(configurations[link])
    merged.pop("inherits_from", None)
    return merged


def architecture_of(config: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(network class name, arch_kwargs)`` of a resolved configuration, old plans included."""
    if "architecture" in config:
        return str(config["architecture"]["network_class_name"]), dict(config["architecture"]["arch_kwargs"])
    if "UNet_class_name" not in config:
        raise PlansError("nnU-Net configuration has neither 'architecture' nor 'UNet_class_name'")
    kernels, strides = config["conv_kernel_sizes"], config["pool_op_kernel_sizes"]
    dims = len(kernels[0])
    base, largest = int(config["UNet_base_num_features"]), int(config.get("unet_max_num_features", 320))
    kwargs = {
        "n_stages": len(kernels),
        "features_per_stage": [min(base * 2**i, largest) for i in range(len(kernels))],
        "conv_op": CONV_OPS[dims], "kernel_sizes": kernels, "strides": strides,
        "n_conv_per_stage": config["n_conv_per_stage_encoder"],
        "n_conv_per_stage_decoder": config["n_conv_per_stage_decoder"],
        "conv_bias": True, "norm_op": NORM_OPS[dims], "norm_op_kwargs": {"eps": 1e-5, "affine": True},
        "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
    }
    class_name = str(config["UNet_class_name"])
    return (PLAIN_CONV_UNET if class_name == "PlainConvUNet" else class_name), kwargs


def labels_of(dataset_json: dict[str, Any]) -> dict[str, int]:
    """Name -> value labels of an nnU-Net ``dataset.json``; region-based labels are refused."""
    labels = dataset_json.get("labels", {})
    if not all(isinstance(v, int) for v in labels.values()):
        raise PlansError("nnU-Net dataset.json uses region-based labels (lists); not supported yet")
    return {str(k): int(v) for k, v in labels.items() if k != "ignore"}


def configuration_from_nnunet(name: str, config: dict[str, Any]) -> ConfigurationPlan:
    """Our :class:`ConfigurationPlan` for a resolved nnU-Net configuration."""
    class_name, kwargs = architecture_of(config)
    patch = [int(v) for v in config["patch_size"]]

    def resampling(key: str) -> ResamplingPlan:
        values = config.get(f"resampling_fn_{key}_kwargs") or {}
        return ResamplingPlan(order=int(values.get("order", 3 if key == "data" else 1)), order_z=int(values.get("order_z", 0)))

    network = NetworkPlan(
        n_stages=int(kwargs["n_stages"]), features_per_stage=[int(v) for v in kwargs["features_per_stage"]],
        kernel_sizes=[[int(k) for k in kernel] for kernel in kwargs["kernel_sizes"]],
        strides=[[int(s) for s in stride] for stride in kwargs["strides"]],
        n_conv_per_stage=[int(v) for v in kwargs.get("n_conv_per_stage", kwargs.get("n_blocks_per_stage", []))],
        n_conv_per_stage_decoder=[int(v) for v in kwargs["n_conv_per_stage_decoder"]],
        network_class=class_name.rsplit(".", 1)[-1],
    )
    return ConfigurationPlan(
        name=name, data_identifier=str(config.get("data_identifier", name)),
        spacing=[float(v) for v in config["spacing"]], patch_size=patch,
        median_image_size_in_voxels=[float(v) for v in config.get("median_image_size_in_voxels", patch)],
        batch_size=int(config["batch_size"]), batch_dice=bool(config.get("batch_dice", False)),
        normalization_schemes=list(config["normalization_schemes"]),
        use_mask_for_norm=[bool(v) for v in config["use_mask_for_norm"]],
        resampling_data=resampling("data"), resampling_seg=resampling("seg"),
        resampling_probabilities=resampling("probabilities"), network=network, is_2d=len(patch) == 2,
        previous_stage=config.get("previous_stage"), next_stage=(config.get("next_stage") or None)
        if isinstance(config.get("next_stage"), str) else None,
        notes=[f"imported from nnU-Net plans ({class_name})"],
    )


def plans_from_nnunet(nnunet_plans: dict[str, Any], dataset_json: dict[str, Any]) -> Plans:
    """Our :class:`Plans` for every configuration of an nnU-Net ``plans.json``."""
    try:
        configurations = {name: configuration_from_nnunet(name, resolved_configuration(nnunet_plans, name))
                          for name in nnunet_plans["configurations"]}
        channels = dataset_json.get("channel_names", dataset_json.get("modality", {}))
        return Plans(
            dataset_name=str(nnunet_plans["dataset_name"]), plans_name=str(nnunet_plans["plans_name"]),
            preset=IMPORTED_PRESET,
            transpose_forward=[int(v) for v in nnunet_plans["transpose_forward"]],
            transpose_backward=[int(v) for v in nnunet_plans["transpose_backward"]],
            original_median_spacing_after_transp=[float(v) for v in nnunet_plans["original_median_spacing_after_transp"]],
            original_median_shape_after_transp=[float(v) for v in nnunet_plans["original_median_shape_after_transp"]],
            foreground_intensity_properties_per_channel={
                str(k): {key: float(value) for key, value in v.items()}
                for k, v in nnunet_plans["foreground_intensity_properties_per_channel"].items()},
            configurations=configurations, num_input_channels=len(channels), labels=labels_of(dataset_json),
            notes=["imported from an nnU-Net v2 plans.json"],
        )
    except (KeyError, TypeError, ValueError, IndexError) as error:
        raise PlansError(f"nnU-Net plans: missing or malformed field ({error!r})") from error


def plans_to_nnunet(plans: Plans, plans_name: str | None = None) -> dict[str, Any]:
    """An nnU-Net v2 ``plans.json`` (2.4+ layout) for our plans: the fields both have.

    ``plans_name`` (default: ours) is what nnU-Net's ``-p`` will call them; nnU-Net expects the
    file to be ``nnUNet_preprocessed/DatasetNNN_Name/<plans_name>.json``.

    The network is nnU-Net's ``PlainConvUNet`` with our topology, instance norm and leaky ReLU
    (what the DynUNet of our plans is); nnU-Net's defaults fill the keys we do not plan.
    """
    plans_name = plans_name or plans.plans_name
    configurations: dict[str, Any] = {}
    for name, config in plans.configurations.items():
        dims = config.spatial_dims
        network = config.network
        configurations[name] = {
            "data_identifier": f"{plans_name}_{name}", "preprocessor_name": "DefaultPreprocessor",
            "batch_size": config.batch_size, "patch_size": list(config.patch_size),
            "median_image_size_in_voxels": list(config.median_image_size_in_voxels),
            "spacing": list(config.spacing), "normalization_schemes": list(config.normalization_schemes),
            "use_mask_for_norm": list(config.use_mask_for_norm),
            **{f"resampling_fn_{key}": "resample_data_or_seg_to_shape" for key in ("data", "seg", "probabilities")},
            **{f"resampling_fn_{key}_kwargs": {"is_seg": key == "seg", "order": plan.order, "order_z": plan.order_z,
                                               "force_separate_z": None}
               for key, plan in (("data", config.resampling_data), ("seg", config.resampling_seg),
                                 ("probabilities", config.resampling_probabilities))},
            "architecture": {
                "network_class_name": PLAIN_CONV_UNET,
                "arch_kwargs": {
                    "n_stages": network.n_stages, "features_per_stage": list(network.features_per_stage),
                    "conv_op": CONV_OPS[dims], "kernel_sizes": network.kernel_sizes, "strides": network.strides,
                    "n_conv_per_stage": list(network.n_conv_per_stage),
                    "n_conv_per_stage_decoder": list(network.n_conv_per_stage_decoder), "conv_bias": True,
                    "norm_op": NORM_OPS[dims], "norm_op_kwargs": {"eps": 1e-5, "affine": True},
                    "dropout_op": None, "dropout_op_kwargs": None,
                    "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
                },
                "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
            },
            "batch_dice": config.batch_dice,
        }
        if config.previous_stage:
            configurations[name]["previous_stage"] = config.previous_stage
        if config.next_stage:
            configurations[name]["next_stage"] = config.next_stage
    return {
        "dataset_name": plans.dataset_name, "plans_name": plans_name,
        "original_median_spacing_after_transp": list(plans.original_median_spacing_after_transp),
        "original_median_shape_after_transp": list(plans.original_median_shape_after_transp),
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": list(plans.transpose_forward), "transpose_backward": list(plans.transpose_backward),
        "configurations": configurations,
        "experiment_planner_used": f"medseg_auto ({plans.preset})", "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": plans.foreground_intensity_properties_per_channel,
    }
