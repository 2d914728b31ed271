"""Data and plans of a ``learning_parity.py`` dataset with one shared plan (``busi_stu``), untimed.

The order differs from Hippocampus (``train_throughput.prepare_data``: both tools plan and
preprocess for themselves, then the batch goes into both parity plans), because nnU-Net must
preprocess with OUR plan:

1. the raw dataset (the spec's builder), rebuilt only when missing, different or ``--repreprocess``;
2. ours: ``medseg-auto plan_and_preprocess NAME -c CONFIGS --preset PRESET`` (the plans we train);
3. nnU-Net: ``nnUNetv2_plan_and_preprocess -d ID --no_pp`` (fingerprint and its own plans only);
4. the parity plans: ours copied to ``plans_parity.json`` (batch override if any), nnU-Net's
   with our spacing, patch, batch and topology (``_parity_datasets.transplant_plan``) as
   ``nnUNetPlans_parity.json``, compared field by field;
5. nnU-Net: ``nnUNetv2_preprocess -d ID -plans_name nnUNetPlans_parity -c CONFIGS``.

Steps 2, 3 and 5 are skipped when their output is complete. Returns the case ids, the plans
comparison per configuration, and what both tools see of the geometry (median spacing, label values).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import common
import plan_preprocess
from _parity_datasets import ParityDataset, label_values, transplant_plan
from common import BenchmarkError
from plan_preprocess import WorkLayout

NNUNET_PARITY_PLANS, OURS_PARITY_PLANS = "nnUNetPlans_parity", "plans_parity"


def cases_in(folder: Path, cases: Sequence[str]) -> int:
    """How many of ``cases`` a preprocessed configuration folder holds (by file stem)."""
    stems = {path.name.split(".")[0] for path in folder.iterdir()} if folder.is_dir() else set()
    return len(stems.intersection(cases))


def raw_dataset_matches(layout: WorkLayout, cases: Sequence[str], file_ending: str) -> bool:
    """Whether WORK's raw dataset holds exactly ``cases`` (so its preprocessing can be reused)."""
    dataset_json = common.read_json_or_none(layout.raw_dataset / "dataset.json")
    images = layout.raw_dataset / "imagesTr"
    if dataset_json is None or not images.is_dir():
        return False
    present = {path.name[: -len("_0000" + file_ending)] for path in images.iterdir()}
    return present == set(cases) and dataset_json.get("numTraining") == len(cases)


def run_step(label: str, cmd: list[str], env: dict[str, str], layout: WorkLayout, log_name: str,
             say: Callable[[str], None]) -> None:
    """Run one untimed preparation command; a failure stops the benchmark with the log's tail."""
    say(f"{label} (not timed): {' '.join(cmd)}")
    log_path = layout.logs / log_name
    measurement = common.measure_command(cmd, env=env, cwd=layout.root, log_path=log_path)
    if measurement.returncode != 0:
        raise BenchmarkError(f"{label} failed (log: {log_path}):\n{common.log_tail(log_path)}")


def write_shared_parity_plans(nnunet_plans: Path | None, ours_plans: Path, configuration: str,
                              batch_size: int | None, fields: Sequence[str]) -> list[dict[str, Any]]:
    """Ours copied to ``plans_parity.json`` (``batch_size`` if given) and, if nnU-Net's plans exist,
    nnU-Net's with our plan transplanted as ``nnUNetPlans_parity.json``; the field-by-field
    comparison of the two (rows of ``configuration``; ``same`` empty without nnU-Net's)."""
    ours = json.loads(ours_plans.read_text())
    section = plan_preprocess.configuration_of(ours, configuration)
    if section is None:
        raise BenchmarkError(f"{ours_plans}: no configuration {configuration!r}")
    if batch_size is not None:
        section["batch_size"] = batch_size
    ours["plans_name"] = OURS_PARITY_PLANS  # data_identifier kept: the same preprocessed data
    write_json(ours_plans.with_name(f"{OURS_PARITY_PLANS}.json"), ours)
    nnunet = None
    if nnunet_plans is not None:
        nnunet = transplant_plan(json.loads(nnunet_plans.read_text()), ours, configuration, NNUNET_PARITY_PLANS, None)
        write_json(nnunet_plans.with_name(f"{NNUNET_PARITY_PLANS}.json"), nnunet)
    rows = plan_preprocess.compare_plans(nnunet, nnunet, ours, fields)
    return [{"field": row["field"], "nnunet": row["reference"], "ours": row["ours"], "same": row["ours = ref"]}
            for row in rows if row["configuration"] == configuration]


def write_json(path: Path, payload: Any) -> None:
    """Temp file then rename: a killed benchmark never leaves half a file."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    temporary.replace(path)


def geometry_check(layout: WorkLayout, ours_plans: Path, nnunet_venv: Path | None) -> dict[str, Any]:
    """What both tools read from the same files: each one's median spacing (PNG: 1 x 1 in plane,
    999 across for nnU-Net's NaturalImage2DIO, the same for ours) and the label values."""
    check: dict[str, Any] = {"label_values": sorted(label_values(layout.raw_dataset / "labelsTr"))}
    ours = common.read_json_or_none(ours_plans) or {}
    check["ours_median_spacing"] = ours.get("original_median_spacing_after_transp")
    if nnunet_venv is not None:
        nnunet = common.read_json_or_none(layout.nnunet_output / plan_preprocess.NNUNET_PLANS_FILE) or {}
        check["nnunet_median_spacing"] = nnunet.get("original_median_spacing_after_transp")
        check["same_spacing"] = check["nnunet_median_spacing"] == check["ours_median_spacing"]
    return check


def prepare_shared_plan(spec: ParityDataset, args: argparse.Namespace, layout: WorkLayout, nnunet_venv: Path | None,
                        say: Callable[[str], None]) -> tuple[list[str], dict[str, list[dict[str, Any]]],
                                                             dict[str, Any]]:
    """Steps 1-5 of the module docstring for ``args.configurations``; see there."""
    data = args.data.resolve()
    cases = spec.list_cases(data, args.dataset_cases)
    configurations = list(args.configurations)
    processes = str(os.cpu_count() or 1)
    if args.repreprocess or not raw_dataset_matches(layout, cases, spec.file_ending):
        say(f"preparing {spec.folder} with {len(cases)} cases in {layout.raw_dataset}")
        for folder in (layout.ours_output, layout.nnunet_output):
            plan_preprocess.remove_output(folder)
        spec.build_raw(data, cases, layout)
    plan_preprocess.link_ours_home(layout)

    if any(cases_in(layout.ours_output / f"{spec.ours_plans_name}_{c}", cases) < len(cases) for c in configurations):
        preset = ["--preset", spec.ours_preset] if spec.ours_preset else []
        run_step("ours: plan and preprocess", [*common.ours_command(), "plan_and_preprocess", spec.name, "-c",
                                                *configurations, *preset, "-np", processes, "--home",
                                                str(layout.ours_home), "--no-progress"],
                 {}, layout, "preprocess_ours.log", say)
    ours_plans = layout.ours_output / f"{spec.ours_plans_name}.json"
    nnunet_plans = None
    if nnunet_venv is not None:
        nnunet_plans = layout.nnunet_output / plan_preprocess.NNUNET_PLANS_FILE
        if not nnunet_plans.is_file():
            program = common.nnunet_command(nnunet_venv, "nnUNetv2_plan_and_preprocess")
            run_step("nnU-Net: fingerprint and plans", [str(program), "-d", str(spec.dataset_id), "-c",
                                                         *configurations, "-npfp", processes, "--no_pp", "--no_pbar"],
                     layout.nnunet_env(), layout, "plan_nnunet.log", say)
    comparisons = {configuration: write_shared_parity_plans(nnunet_plans, ours_plans, configuration,
                                                            args.batch_sizes[configuration], spec.plan_fields)
                   for configuration in configurations}
    if nnunet_venv is not None and any(
            cases_in(layout.nnunet_output / f"{NNUNET_PARITY_PLANS}_{c}", cases) < len(cases) for c in configurations):
        program = common.nnunet_command(nnunet_venv, "nnUNetv2_preprocess")
        run_step("nnU-Net: preprocess with the shared plan", [str(program), "-d", str(spec.dataset_id), "-plans_name",
                                                               NNUNET_PARITY_PLANS, "-c", *configurations, "-np",
                                                               processes, "--no_pbar"],
                 layout.nnunet_env(), layout, "preprocess_nnunet.log", say)
    return cases, comparisons, geometry_check(layout, ours_plans, nnunet_venv)
