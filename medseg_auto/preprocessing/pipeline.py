"""``plan_and_preprocess``: fingerprint -> plans -> preprocessed cache, resumable.

Re-running is cheap and safe: the fingerprint is reused while the raw data is unchanged,
existing plans are kept (with any hand edits) unless asked to re-plan, and only cases missing
from the cache are processed. A cache built from different plans is detected by a signature
and rebuilt, never mixed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from medseg_auto.dataset.case_loader import load_and_check_case
from medseg_auto.dataset.dataset_json import CaseFiles, DatasetSpec
from medseg_auto.errors import PlansError
from medseg_auto.paths import DataHome
from medseg_auto.planning.fingerprint import fingerprint_dataset
from medseg_auto.planning.planner import plan_experiment
from medseg_auto.planning.plans import Plans
from medseg_auto.planning.presets import load_preset
from medseg_auto.preprocessing.cache import PreprocessedCache
from medseg_auto.preprocessing.case_pipeline import preprocess_case
from medseg_auto.utils.atomic import read_json, write_json_atomic
from medseg_auto.utils.logging_setup import get_logger
from medseg_auto.utils.parallel import parallel_map

log = get_logger("preprocessing")
CACHE_SIGNATURE_FILE = "cache_signature.json"


def plans_path(home: DataHome, dataset: str, plans_name: str = "plans") -> Path:
    return home.preprocessed_dataset(dataset) / f"{plans_name}.json"


def make_plans(
    spec: DatasetSpec, output_folder: Path, preset_name: str, num_processes: int,
    show_progress: bool = True, overwrite_plans: bool = False,
) -> Plans:
    """Fingerprint (or reuse it) and plan (or reuse the existing plans when still valid)."""
    preset = load_preset(preset_name)
    fingerprint = fingerprint_dataset(spec, output_folder, num_processes, show_progress)
    path = output_folder / f"{preset.plans_name}.json"
    if path.is_file() and not overwrite_plans:
        existing = Plans.load(path)
        if existing.fingerprint_signature == fingerprint["raw_signature"]:
            log.info("using existing plans %s (pass --overwrite-plans to plan again)", path)
            return existing
        log.info("raw data changed since %s was planned: planning again", path)
    plans = plan_experiment(fingerprint, spec, preset)
    plans.fingerprint_signature = fingerprint["raw_signature"]
    plans.save(path)
    log.info("plans written to %s", path)
    return plans


def prepare_cache(plans: Plans, configuration: str, output_folder: Path) -> PreprocessedCache:
    """The cache folder of one configuration, emptied if it was built from other plans and
    cleared of what an interrupted run left behind."""
    config = plans.configuration(configuration)
    cache = PreprocessedCache(output_folder / config.data_identifier)
    signature = _cache_signature(plans, configuration)
    signature_file = cache.folder / CACHE_SIGNATURE_FILE
    if signature_file.is_file() and read_json(signature_file).get("signature") != signature:
        log.info("%s was built from other plans: rebuilding it", cache.folder)
        shutil.rmtree(cache.folder)
    cache.folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(signature_file, {"signature": signature, "plans_name": plans.plans_name, "configuration": configuration})
    removed = cache.clean_incomplete()
    if removed:
        log.info("removed %d incomplete file(s) left by an interrupted run", removed)
    return cache


def preprocess_configurations(
    spec: DatasetSpec, plans: Plans, configurations: list[str], output_folder: Path,
    num_processes: int, show_progress: bool = True,
) -> dict[str, PreprocessedCache]:
    """Build (or complete) the caches of ``configurations``. Each case is read once and written
    into every cache that lacks it, since reading is the larger part of the work."""
    caches = {name: prepare_cache(plans, name, output_folder) for name in configurations}
    cases = spec.training_cases()
    plans_json = plans.to_json()
    arguments = []
    for case in cases:
        missing = [name for name, cache in caches.items() if not cache.is_intact(case.case_id)]
        if missing:
            arguments.append((case, spec, plans_json, {name: str(caches[name].folder) for name in missing}))
    if len(arguments) < len(cases):
        log.info("%d of %d cases already preprocessed for %s", len(cases) - len(arguments), len(cases), ", ".join(configurations))
    parallel_map(_preprocess_and_store, arguments, num_processes, "preprocess " + "+".join(configurations), show_progress)
    return caches


def plan_and_preprocess(
    home: DataHome,
    dataset: str,
    configurations: list[str] | None = None,
    preset: str = "default",
    num_processes: int = 2,
    show_progress: bool = True,
    overwrite_plans: bool = False,
    plan_only: bool = False,
    verify: bool = False,
) -> Plans:
    """Fingerprint, plan and preprocess ``dataset``; return the plans.

    ``configurations`` defaults to every configuration the plans contain. ``verify`` first
    checks every case and stops with all problems listed (see ``medseg-auto verify``).
    """
    spec = DatasetSpec.load(home.raw_dataset(dataset))
    if verify:
        from medseg_auto.dataset.verify import raise_if_problems, verify_dataset

        raise_if_problems(verify_dataset(spec, num_processes, show_progress))
    output_folder = home.preprocessed / spec.name
    output_folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(spec.folder / "dataset.json", output_folder / "dataset.json")
    plans = make_plans(spec, output_folder, preset, num_processes, show_progress, overwrite_plans)
    chosen = configurations or list(plans.configurations)
    missing = [name for name in chosen if name not in plans.configurations]
    for name in missing:
        log.warning("configuration %s is not in the plans for %s (not applicable to this data): skipped", name, spec.name)
    applicable = [name for name in chosen if name in plans.configurations]
    if not applicable:
        raise PlansError(f"none of the configurations {chosen} apply to {spec.name} (planned: {list(plans.configurations)})")
    if not plan_only:
        preprocess_configurations(spec, plans, applicable, output_folder, num_processes, show_progress)
    return plans


def _preprocess_and_store(case: CaseFiles, spec: DatasetSpec, plans_json: dict, folders: dict[str, str]) -> str:
    """Worker: read one case, preprocess it for each configuration, write each cache entry."""
    plans = Plans.from_json(plans_json)
    raw_data, raw_seg, geometry = load_and_check_case(case, spec)
    for configuration, folder in folders.items():
        config = plans.configuration(configuration)
        data, seg, properties = preprocess_case(raw_data, raw_seg, geometry, plans, config, case.case_id, case.site)
        PreprocessedCache(folder).write_case(case.case_id, data, seg, properties)
    return case.case_id


def _cache_signature(plans: Plans, configuration: str) -> str:
    """Hash of everything that decides the cached arrays of one configuration."""
    config = plans.to_json()["configurations"][configuration]
    array_keys = ("spacing", "normalization_schemes", "use_mask_for_norm", "resampling_data", "resampling_seg", "is_2d")
    relevant = {
        "configuration": {key: config[key] for key in array_keys},
        "transpose_forward": plans.transpose_forward,
        "intensity": plans.foreground_intensity_properties_per_channel,
        "fingerprint": plans.fingerprint_signature,
    }
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()
