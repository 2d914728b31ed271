"""The toy data home: a tiny preprocessed toy dataset and plans built in code.

The toy cases are noise plus an ellipsoid (label 1) with a core (label 2): learnable in a few
dozen steps by a network of a few thousand parameters. One cache serves both configurations
(``3d_fullres``: 16x32x32 patches, 4 stages, one deep-supervision head; ``2d``: 16x16
slices, 3 stages), so a test trains in seconds on a CPU.
"""

from __future__ import annotations

from pathlib import Path

from medseg_auto.dataset.image_io import write_segmentation
from medseg_auto.paths import DataHome
from medseg_auto.planning.plans import ConfigurationPlan, NetworkPlan, Plans, ResamplingPlan
from medseg_auto.training.data.synthetic_cache import write_synthetic_cache
from medseg_auto.utils.atomic import write_json_atomic

TOY_DATASET = "Dataset901_Toy"
TOY_LABELS = {"background": 0, "outer": 1, "core": 2}
DATA_IDENTIFIER = "plans_toy"


def toy_configuration(dims: int, batch_size: int | None = None) -> ConfigurationPlan:
    """``3d_fullres``: patch (16, 32, 32), stages (16,32,32) (16,16,16) (8,8,8) (4,4,4);
    ``2d``: patch (16, 16), stages 16, 8, 4. No stage has an edge below 4 (see
    ``network.cpu_bf16_is_safe`` for why that matters)."""
    n_stages = 4 if dims == 3 else 3
    strides = [[1] * dims] + [[2] * dims] * (n_stages - 1)
    if dims == 3:
        strides[1] = [1, 2, 2]
    return ConfigurationPlan(
        name="3d_fullres" if dims == 3 else "2d",
        data_identifier=DATA_IDENTIFIER,
        spacing=[1.0] * dims,
        patch_size=[16, 32, 32] if dims == 3 else [16, 16],
        median_image_size_in_voxels=[20.0] * dims,
        batch_size=batch_size or (2 if dims == 3 else 4),
        batch_dice=False,
        normalization_schemes=["ZScoreNormalization"],
        use_mask_for_norm=[False],
        resampling_data=ResamplingPlan(order=3),
        resampling_seg=ResamplingPlan(order=1),
        resampling_probabilities=ResamplingPlan(order=1),
        network=NetworkPlan(
            n_stages=n_stages,
            features_per_stage=[4 * 2**i for i in range(n_stages)],
            kernel_sizes=[[3] * dims] * n_stages,
            strides=strides,
            n_conv_per_stage=[2] * n_stages,
            n_conv_per_stage_decoder=[2] * (n_stages - 1),
        ),
        is_2d=dims == 2,
    )


def toy_plans() -> Plans:
    return Plans(
        dataset_name=TOY_DATASET,
        plans_name="plans",
        preset="test",
        transpose_forward=[0, 1, 2],
        transpose_backward=[0, 1, 2],
        original_median_spacing_after_transp=[1.0, 1.0, 1.0],
        original_median_shape_after_transp=[20.0, 36.0, 36.0],
        foreground_intensity_properties_per_channel={},
        configurations={"3d_fullres": toy_configuration(3), "2d": toy_configuration(2)},
        num_input_channels=1,
        labels=dict(TOY_LABELS),
    )


def make_toy_home(root: Path, n_cases: int = 6, sites: list[str | None] | None = None, seed: int = 0) -> DataHome:
    """A data home with the toy dataset's plans, dataset.json and cache, and a raw folder that
    holds only what the final validation reads (dataset.json and the labels, ``labelsTr/``)."""
    home = DataHome(root)
    raw, preprocessed = home.raw / TOY_DATASET, home.preprocessed / TOY_DATASET
    dataset_json = {"channel_names": {"0": "toy"}, "labels": TOY_LABELS, "numTraining": n_cases,
                    "file_ending": ".nii.gz"}
    write_json_atomic(raw / "dataset.json", dataset_json)
    write_json_atomic(preprocessed / "dataset.json", dataset_json)
    toy_plans().save(preprocessed / "plans.json")
    cache = write_synthetic_cache(preprocessed / DATA_IDENTIFIER, [(20, 36, 36)] * n_cases, sites=sites, seed=seed)
    (raw / "labelsTr").mkdir(parents=True, exist_ok=True)
    for case_id in cache.case_ids():
        _, seg, properties = cache.load_case(case_id, mmap=False)
        write_segmentation(seg[0].clip(0), properties.image_geometry, raw / "labelsTr" / f"{case_id}.nii.gz")
    return home
