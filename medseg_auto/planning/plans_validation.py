"""Validate a plans file when it is read, so an edit that cannot work fails at once, by name.

Why: plans are meant to be edited by hand, and an edited value used to fail far from the edit
(patch size 0 -> ``ZeroDivisionError``; a 2-axis patch for 3d -> a ``RuntimeError`` in the
network; batch size 0 or -2 -> training silently; 10^6 features -> a 108 TB allocation; an
unknown normalization or spacing 0 -> training fine and prediction failing). Every check here
raises :class:`PlansError` with one message: the file, the field path and what is wrong.

Three layers: ``plans/plans_schema.json`` (types, enums, ranges; checked by a small built-in
interpreter of the JSON-schema keywords that file uses, so no extra dependency), the relations
between fields (list lengths per axis and per stage, a patch the network can halve), and sanity
limits (features per stage, and the memory one training step would need against this machine's).
"""

from __future__ import annotations

import os
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from medseg_auto.errors import PlansError
from medseg_auto.planning.memory_estimate import conv_feature_map_size
from medseg_auto.utils.atomic import read_json

SCHEMA_FILE = "plans_schema.json"
MAX_FEATURES = 4096
MAX_BATCH_SIZE = 4096
MAX_PATCH_EDGE = 8192
# nnU-Net's calibration (plans/default.json): a feature-map sum of 560e6 at batch 2 uses ~8 GB.
BYTES_PER_FEATURE_UNIT = 8e9 / (2 * 560e6)
MEMORY_SAFETY_FACTOR = 4.0


def validate_plans(payload: Any, source: str | Path) -> None:
    """Raise :class:`PlansError` (``SOURCE: FIELD: problem``) on the first problem found."""
    if not isinstance(payload, dict):
        raise PlansError(f"{source}: a plans file holds a JSON object, found {type(payload).__name__}")
    schema = load_schema()
    if schema is not None:
        problem = _check(payload, schema, schema, "")
        if problem:
            raise PlansError(f"{source}: {problem}")
    for name, config in payload.get("configurations", {}).items():
        try:
            problem = _check_configuration(payload, name, config)
        except (KeyError, TypeError, ValueError) as error:
            raise PlansError(f"{source}: configurations.{name}: malformed ({error!r})") from error
        if problem:
            raise PlansError(f"{source}: configurations.{name}.{problem}")


@lru_cache(maxsize=1)
def load_schema() -> dict | None:
    """The schema from the preset folders (source tree or installed share/); None if absent."""
    from medseg_auto.planning.presets import preset_search_folders

    for folder in preset_search_folders():
        if (folder / SCHEMA_FILE).is_file():
            return read_json(folder / SCHEMA_FILE)
    return None


_TYPES = {
    "object": lambda v: isinstance(v, dict), "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str), "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
}


def _check(value: Any, schema: dict, root: dict, where: str) -> str | None:
    """The first violation of the JSON-schema keywords used by plans_schema.json, or None."""
    if "$ref" in schema:
        target: Any = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            target = target[part]
        return _check(value, target, root, where)
    label = where or "(top level)"
    kinds = schema.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else kinds
        if not any(_TYPES[kind](value) for kind in kinds):
            return f"{label}: {value!r} is not of type {' or '.join(kinds)}"
    if "const" in schema and value != schema["const"]:
        return f"{label}: {value!r} must be {schema['const']!r}"
    if "enum" in schema and value not in schema["enum"]:
        return f"{label}: {value!r} is not one of {', '.join(map(str, schema['enum']))}"
    if _TYPES["number"](value):
        if "minimum" in schema and value < schema["minimum"]:
            return f"{label}: {value!r} is below the minimum {schema['minimum']}"
        if "maximum" in schema and value > schema["maximum"]:
            return f"{label}: {value!r} is above the maximum {schema['maximum']}"
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            return f"{label}: {value!r} must be greater than {schema['exclusiveMinimum']}"
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            return f"{label}: needs at least {schema['minItems']} entries, has {len(value)}"
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            return f"{label}: allows at most {schema['maxItems']} entries, has {len(value)}"
        if "items" in schema:
            for index, item in enumerate(value):
                problem = _check(item, schema["items"], root, f"{where}[{index}]")
                if problem:
                    return problem
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                return f"{label}: required field '{key}' is missing"
        properties = schema.get("properties", {})
        for key, item in value.items():
            sub_schema = properties.get(key, schema.get("additionalProperties"))
            if isinstance(sub_schema, dict):
                problem = _check(item, sub_schema, root, f"{where}.{key}" if where else str(key))
                if problem:
                    return problem
    return None


def _check_configuration(plans: dict, name: str, config: dict) -> str | None:
    """Relations between fields of one configuration, and the sanity limits."""
    dims = 2 if config.get("is_2d", False) else 3
    for key in ("spacing", "patch_size"):
        if len(config[key]) != dims:
            return f"{key}: {config[key]} has {len(config[key])} axes; a {dims}D configuration needs {dims}"
    channels = plans["num_input_channels"]
    for key in ("normalization_schemes", "use_mask_for_norm"):
        if len(config[key]) != channels:
            return f"{key}: {len(config[key])} entries for {channels} input channel(s)"
    if config["batch_size"] > MAX_BATCH_SIZE:
        return f"batch_size: {config['batch_size']} is above the sanity limit {MAX_BATCH_SIZE}"
    if max(config["patch_size"]) > MAX_PATCH_EDGE:
        return f"patch_size: {config['patch_size']} has an edge above the sanity limit {MAX_PATCH_EDGE}"
    network = config["network"]
    problem = _check_network(network, dims)
    if problem:
        return f"network.{problem}"
    pooled = np.prod(np.asarray(network["strides"], dtype=np.int64), axis=0)
    for axis, (edge, factor) in enumerate(zip(config["patch_size"], pooled)):
        if edge % int(factor):
            return (f"patch_size: {config['patch_size']} axis {axis} ({edge}) is not divisible by {int(factor)}, "
                    "the product of the network's strides along it")
    return _check_memory(config, len(plans.get("labels", {})) or 2)


def _check_network(network: dict, dims: int) -> str | None:
    stages = network["n_stages"]
    for key in ("features_per_stage", "kernel_sizes", "strides", "n_conv_per_stage"):
        if len(network[key]) != stages:
            return f"{key}: {len(network[key])} entries for n_stages {stages}"
    if len(network["n_conv_per_stage_decoder"]) != stages - 1:
        return f"n_conv_per_stage_decoder: {len(network['n_conv_per_stage_decoder'])} entries; n_stages - 1 = {stages - 1} needed"
    for key in ("kernel_sizes", "strides"):
        for stage, entry in enumerate(network[key]):
            if len(entry) != dims:
                return f"{key}[{stage}]: {entry} has {len(entry)} axes; a {dims}D configuration needs {dims}"
            if any(v < 1 for v in entry):
                return f"{key}[{stage}]: {entry} holds a value below 1"
    for key in ("n_conv_per_stage", "n_conv_per_stage_decoder"):
        if any(v < 1 for v in network[key]):
            return f"{key}: {network[key]} holds a value below 1"
    if max(network["features_per_stage"]) > MAX_FEATURES:
        return f"features_per_stage: {network['features_per_stage']} exceeds the sanity limit {MAX_FEATURES}"
    return None


def _check_memory(config: dict, num_classes: int) -> str | None:
    """Refuse a configuration whose training step would need several times this machine's memory."""
    network = config["network"]
    units = conv_feature_map_size(
        config["patch_size"], network["strides"], network["features_per_stage"], network["n_conv_per_stage"],
        network["n_conv_per_stage_decoder"], num_classes,
    )
    needed = units * config["batch_size"] * BYTES_PER_FEATURE_UNIT
    available = machine_memory_bytes()
    if available and needed > MEMORY_SAFETY_FACTOR * available:
        return (f"patch_size/batch_size/network.features_per_stage: one training step would need about "
                f"{needed / 1e9:,.0f} GB, more than {MEMORY_SAFETY_FACTOR:g}x this machine's "
                f"{available / 1e9:,.0f} GB; lower them")
    return None


def machine_memory_bytes() -> int:
    """The larger of physical RAM and the first GPU's memory (0 when unknown)."""
    ram = 0
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        pass
    gpu = 0
    try:
        torch = sys.modules.get("torch")  # only when already loaded: planning must stay torch-free
        if torch is not None and torch.cuda.is_available():
            gpu = torch.cuda.get_device_properties(0).total_memory
    except Exception:  # no torch or no driver: RAM alone decides
        pass
    return max(ram, gpu)
