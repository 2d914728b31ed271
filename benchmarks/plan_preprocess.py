#!/usr/bin/env python3
"""Benchmark ``plan_and_preprocess``: ours against nnU-Net v2 on the MSD hippocampus data.

Both tools read the very same raw dataset (nnU-Net v2's raw format, which is also ours),
plan the same configurations (2d and 3d_fullres) with the same number of worker processes,
and start from an empty preprocessed folder, so neither reuses a fingerprint or cached cases.
Each run is measured as a whole process tree (see ``common.measure_command``): wall time,
peak summed RSS and CPU time. Afterwards nnU-Net's plans are checked against the reference
plans in ``../shared/reference`` (does the installed nnU-Net behave like the one the reference
was made with?) and shown side by side with ours.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import psutil

import common
from common import BenchmarkError, Measurement

DATASET_ID = 4
DATASET_NAME = "Hippocampus"
DATASET_FOLDER = f"Dataset{DATASET_ID:03d}_{DATASET_NAME}"
CONFIGURATIONS = ("2d", "3d_fullres")
FILE_ENDING = ".nii.gz"
DATASET_JSON = {
    "channel_names": {"0": "MRI"},
    "labels": {"background": 0, "Anterior": 1, "Posterior": 2},
    "file_ending": FILE_ENDING,
}
NNUNET_PLANS_FILE = "nnUNetPlans.json"
REFERENCE_PLANS_FILE = "hippocampus_nnunetv2_plans.json"
# What decides training (and what the reference notes ask us to match), per configuration.
PLAN_FIELDS = ("patch_size", "batch_size", "spacing", "n_stages", "strides", "features_per_stage",
               "normalization_schemes")
TABLE_COLUMNS = ("tool", "wall_s", "peak_rss_mib", "peak_pss_mib", "cpu_s", "processes", "returncode",
                 "cases_written")
MEASURED = ("wall_s", "peak_rss_mib", "peak_pss_mib", "cpu_s")
COMPARISON_COLUMNS = ("configuration", "field", "reference", "nnU-Net (this run)", "nnU-Net = ref", "ours",
                      "ours = ref")

EXAMPLES = """\
examples:
  # both tools on all 260 cases, 2 worker processes each (about 2 minutes on 2 cores)
  .venv/bin/python benchmarks/plan_preprocess.py

  # quick smoke run on the first 20 cases
  .venv/bin/python benchmarks/plan_preprocess.py --cases 20

  # only nnU-Net, 4 processes, results elsewhere
  .venv/bin/python benchmarks/plan_preprocess.py --skip-ours -np 4 --work /tmp/bench_pp

Results: WORK/plan_preprocess.{json,csv,md}, WORK/plans_comparison.md, tool logs in WORK/logs/.
"""


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keep the examples' line breaks and show defaults."""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="plan_preprocess.py", description=__doc__, epilog=EXAMPLES,
                                     formatter_class=HelpFormatter)
    parser.add_argument("--data", type=Path, default=common.shared_dir() / "data" / "hippocampus",
                        help="MSD hippocampus folder with images/ and labels/")
    parser.add_argument("--work", type=Path, default=common.repo_root() / "benchmarks" / "_work" / "plan_preprocess",
                        help="work and output folder (raw dataset, preprocessed outputs, logs, results)")
    parser.add_argument("-np", "--num-processes", type=int, default=os.cpu_count() or 1,
                        help="worker processes for both tools (nnU-Net: -np per configuration and -npfp)")
    parser.add_argument("--nnunet-venv", type=Path, default=Path(common.NNUNET_VENV_NAME),
                        help="virtual environment with nnunetv2 installed (relative to the repository)")
    parser.add_argument("--cases", type=int, default=None,
                        help="use only the first N paired cases (quick smoke runs; plans then differ from the reference)")
    parser.add_argument("--skip-ours", action="store_true", help="do not run medseg-auto")
    parser.add_argument("--skip-nnunet", action="store_true", help="do not run nnU-Net v2")
    args = parser.parse_args(argv)
    if args.skip_ours and args.skip_nnunet:
        parser.error("--skip-ours and --skip-nnunet together leave nothing to measure")
    if args.cases is not None and args.cases < 2:
        parser.error("--cases needs at least 2 cases")
    return args


# --- data preparation (not timed) --------------------------------------------------------

class WorkLayout:
    """Folders under ``--work``: one raw dataset read by both tools, separate outputs."""

    def __init__(self, root: Path, dataset_folder: str = DATASET_FOLDER) -> None:
        self.root = root.resolve()
        self.dataset_folder = dataset_folder
        self.nnunet_raw = self.root / "nnUNet_raw"
        self.nnunet_preprocessed = self.root / "nnUNet_preprocessed"
        self.nnunet_results = self.root / "nnUNet_results"
        self.ours_home = self.root / "medseg_auto_home"
        self.logs = self.root / "logs"

    @property
    def raw_dataset(self) -> Path:
        return self.nnunet_raw / self.dataset_folder

    @property
    def nnunet_output(self) -> Path:
        return self.nnunet_preprocessed / self.dataset_folder

    @property
    def ours_output(self) -> Path:
        return self.ours_home / "preprocessed" / self.dataset_folder

    def nnunet_env(self) -> dict[str, str]:
        return {
            "nnUNet_raw": str(self.nnunet_raw),
            "nnUNet_preprocessed": str(self.nnunet_preprocessed),
            "nnUNet_results": str(self.nnunet_results),
            "nnUNet_compile": "f",
        }


def paired_cases(data: Path, limit: int | None) -> list[str]:
    """Case ids (``hippocampus_001``) with both an image and a label, sorted; unpaired files are
    left out, as this copy of the data has a few (see ``../shared/data/README.md``)."""
    images, labels = data / "images", data / "labels"
    for folder in (images, labels):
        if not folder.is_dir():
            raise BenchmarkError(f"{folder}: not found; --data must hold images/ and labels/")
    image_ids = {path.name[: -len(FILE_ENDING)] for path in images.glob(f"*{FILE_ENDING}")}
    label_ids = {path.name[: -len(FILE_ENDING)] for path in labels.glob(f"*{FILE_ENDING}")}
    cases = sorted(image_ids & label_ids)
    if limit is not None:
        cases = cases[:limit]
    if len(cases) < 2:
        raise BenchmarkError(f"{data}: found {len(cases)} paired cases; need at least 2")
    return cases


def build_raw_dataset(data: Path, cases: Sequence[str], layout: WorkLayout) -> None:
    """Write ``nnUNet_raw/Dataset004_Hippocampus`` with copies of the original files.

    Copies rather than symlinks (the data are 20 MB): neither tool can then take a different
    code path for links, and the dataset is rebuilt each run so ``--cases`` always holds.
    """
    if layout.raw_dataset.exists():
        shutil.rmtree(layout.raw_dataset)
    images_tr, labels_tr = layout.raw_dataset / "imagesTr", layout.raw_dataset / "labelsTr"
    images_tr.mkdir(parents=True)
    labels_tr.mkdir()
    for case in cases:
        shutil.copyfile(data / "images" / f"{case}{FILE_ENDING}", images_tr / f"{case}_0000{FILE_ENDING}")
        shutil.copyfile(data / "labels" / f"{case}{FILE_ENDING}", labels_tr / f"{case}{FILE_ENDING}")
    dataset_json = {**DATASET_JSON, "numTraining": len(cases)}
    (layout.raw_dataset / "dataset.json").write_text(json.dumps(dataset_json, indent=2) + "\n")


def link_ours_home(layout: WorkLayout) -> None:
    """Make ``medseg_auto_home/raw`` point at ``nnUNet_raw`` so ours reads the identical files."""
    raw_link = layout.ours_home / "raw"
    layout.ours_home.mkdir(parents=True, exist_ok=True)
    if raw_link.is_symlink() or raw_link.is_file():
        raw_link.unlink()
    elif raw_link.is_dir():
        shutil.rmtree(raw_link)
    raw_link.symlink_to(os.path.relpath(layout.nnunet_raw, layout.ours_home), target_is_directory=True)


def warm_file_cache(folder: Path) -> None:
    """Read every raw file once, so the tool that runs first does not pay for a cold disk."""
    for path in folder.rglob("*"):
        if path.is_file():
            path.read_bytes()


def remove_output(folder: Path) -> None:
    """Delete a tool's preprocessed dataset folder: no reused fingerprint, plans or cases."""
    if folder.exists():
        shutil.rmtree(folder)


# --- the measured runs -------------------------------------------------------------------

@dataclass(frozen=True)
class ToolRun:
    """One tool's measured command, the untimed ``--help`` that checks it runs, its
    environment additions, and the output folder cleaned before it runs."""

    tool: str
    cmd: list[str]
    help_cmd: list[str]
    env: dict[str, str]
    output: Path


def ours_run(layout: WorkLayout, num_processes: int) -> ToolRun:
    program = [*common.ours_command(), "plan_and_preprocess"]
    cmd = [*program, DATASET_NAME, "-c", *CONFIGURATIONS, "-np", str(num_processes),
           "--home", str(layout.ours_home), "--no-progress"]
    return ToolRun("ours", cmd, [*program, "--help"], {}, layout.ours_output)


def nnunet_run(layout: WorkLayout, venv: Path, num_processes: int) -> ToolRun:
    program = [str(common.nnunet_command(venv, "nnUNetv2_plan_and_preprocess"))]
    per_configuration = [str(num_processes)] * len(CONFIGURATIONS)
    cmd = [*program, "-d", str(DATASET_ID), "-c", *CONFIGURATIONS, "-np", *per_configuration,
           "-npfp", str(num_processes), "--no_pbar"]
    return ToolRun("nnU-Net v2", cmd, [*program, "--help"], layout.nnunet_env(), layout.nnunet_output)


def check_runs(run: ToolRun) -> None:
    """Run the tool's ``--help`` untimed: fails early with the tool's own message when the
    command is missing, and loads the tool's libraries into the page cache before timing."""
    result = subprocess.run(run.help_cmd, env={**os.environ, **run.env}, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        hint = " (use --skip-ours until it exists)" if run.tool == "ours" else ""
        raise BenchmarkError(f"{run.tool} does not run{hint}: '{' '.join(run.help_cmd)}' exited {result.returncode}:\n"
                             f"{(result.stderr or result.stdout).strip()[-2000:]}")


def measure_tool(run: ToolRun, layout: WorkLayout) -> Measurement:
    """Clean the tool's output, then time it; print where its log is and, on failure, its tail."""
    remove_output(run.output)
    log_path = layout.logs / f"{run.tool.split()[0].lower()}.log"
    warning = common.busy_machine_warning()
    if warning:
        print(warning, file=sys.stderr)
    print(f"[{run.tool}] {' '.join(run.cmd)}", flush=True)
    measurement = common.measure_command(run.cmd, env=run.env, cwd=layout.root, log_path=log_path)
    print(f"[{run.tool}] exit {measurement.returncode} after {measurement.wall_s:.1f} s, "
          f"peak {measurement.peak_rss_mib:.0f} MiB (log: {log_path})", flush=True)
    if measurement.returncode != 0:
        print(common.log_tail(log_path), file=sys.stderr)
    return measurement


def cases_written(output: Path, cases: Sequence[str]) -> str:
    """How many of ``cases`` each configuration's folder holds, e.g. ``2d 260, 3d_fullres 260``:
    shows that both tools did all the work (the file formats differ, the case names do not)."""
    counts = []
    for configuration in CONFIGURATIONS:
        folders = [path for path in output.glob(f"*_{configuration}") if path.is_dir()] if output.is_dir() else []
        stems = {path.name.split(".")[0] for folder in folders for path in folder.iterdir()}
        counts.append(f"{configuration} {len(stems.intersection(cases))}")
    return ", ".join(counts)


def table_rows(runs: Sequence[ToolRun], measurements: dict[str, Measurement],
               cases: Sequence[str]) -> list[dict[str, Any]]:
    """One row per tool, plus the ours / nnU-Net ratio row when both ran."""
    outputs = {run.tool: run.output for run in runs}
    rows = [{"tool": tool, **m.as_dict(), "processes": m.peak_processes,
             "cases_written": cases_written(outputs[tool], cases)} for tool, m in measurements.items()]
    if "ours" in measurements and "nnU-Net v2" in measurements:
        ours, theirs = measurements["ours"].as_dict(), measurements["nnU-Net v2"].as_dict()
        rows.append({"tool": "ratio ours/nnU-Net", **{key: common.ratio(ours[key], theirs[key]) for key in MEASURED}})
    return rows


# --- plans comparison --------------------------------------------------------------------

def configuration_of(plans: dict[str, Any] | None, name: str) -> Any:
    """The plans' entry for configuration ``name``: a dict keyed by name, or a list of dicts
    each carrying ``name``."""
    configurations = (plans or {}).get("configurations")
    if isinstance(configurations, dict):
        return configurations.get(name)
    if isinstance(configurations, list):
        return next((entry for entry in configurations if isinstance(entry, dict) and entry.get("name") == name), None)
    return None


def ours_plans_file(output: Path) -> Path | None:
    """Our plans file: ``plans.json``, else any ``*plans*.json`` in the preprocessed folder."""
    if (output / "plans.json").is_file():
        return output / "plans.json"
    candidates = sorted(output.glob("*[Pp]lans*.json")) if output.is_dir() else []
    return candidates[0] if candidates else None


def compare_plans(reference: dict[str, Any] | None, nnunet: dict[str, Any] | None,
                  ours: dict[str, Any] | None, fields: Sequence[str] = PLAN_FIELDS) -> list[dict[str, Any]]:
    """One row per (configuration, field): the reference value, nnU-Net's and ours, each with
    whether it equals the reference. nnU-Net should match (same version, same data); ours may
    differ on purpose, and its plans then say why. A verdict is empty where a plans file is
    missing (tool skipped or failed)."""
    rows = []
    for configuration in CONFIGURATIONS:
        ref_section, nnunet_section, ours_section = (configuration_of(plans, configuration)
                                                     for plans in (reference, nnunet, ours))
        for field in fields:
            ref_value = common.find_key(ref_section, field)
            nnunet_value, ours_value = common.find_key(nnunet_section, field), common.find_key(ours_section, field)
            rows.append({
                "configuration": configuration, "field": field, "reference": _compact(ref_value),
                "nnU-Net (this run)": _compact(nnunet_value),
                "nnU-Net = ref": _verdict(ref_value, nnunet_value, reference is not None and nnunet is not None),
                "ours": _compact(ours_value),
                "ours = ref": _verdict(ref_value, ours_value, reference is not None and ours is not None),
            })
    return rows


def _verdict(reference_value: Any, value: Any, both_present: bool) -> str:
    if not both_present:
        return ""
    return "yes" if reference_value == value else "NO"


def _compact(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))


# --- main --------------------------------------------------------------------------------

def run_metadata(args: argparse.Namespace, cases: Sequence[str], nnunet_venv: Path | None) -> dict[str, Any]:
    """What a reader needs to reproduce or compare a result: machine, versions, options."""
    metadata: dict[str, Any] = {
        "benchmark": "plan_and_preprocess", "dataset": DATASET_FOLDER, "cases": len(cases),
        "configurations": list(CONFIGURATIONS), "num_processes": args.num_processes,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": platform.node(), "cpu_count": os.cpu_count(),
        "memory_total_mib": round(psutil.virtual_memory().total / common.MIB),
        "python": platform.python_version(), "sample_interval_s": common.DEFAULT_SAMPLE_INTERVAL_S,
        "load_average_1min_after": os.getloadavg()[0],
    }
    if nnunet_venv is not None:
        metadata["nnunetv2_version"] = common.python_package_version(nnunet_venv, "nnunetv2")
        metadata["nnunet_torch_version"] = common.python_package_version(nnunet_venv, "torch")
    ours_venv = common.repo_root() / ".venv"
    if ours_venv.is_dir():
        metadata["ours_torch_version"] = common.python_package_version(ours_venv, "torch")
    return metadata


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    data = args.data.resolve()
    layout = WorkLayout(args.work)
    nnunet_venv = None if args.skip_nnunet else common.nnunet_venv(args.nnunet_venv)

    cases = paired_cases(data, args.cases)
    print(f"preparing {DATASET_FOLDER} with {len(cases)} cases in {layout.raw_dataset}", flush=True)
    build_raw_dataset(data, cases, layout)
    link_ours_home(layout)
    warm_file_cache(layout.raw_dataset)

    runs: list[ToolRun] = []
    if not args.skip_ours:
        runs.append(ours_run(layout, args.num_processes))
    if nnunet_venv is not None:
        runs.append(nnunet_run(layout, nnunet_venv, args.num_processes))
    for run in runs:
        check_runs(run)

    measurements = {run.tool: measure_tool(run, layout) for run in runs}
    rows = table_rows(runs, measurements, cases)
    metadata = run_metadata(args, cases, nnunet_venv)
    metadata["commands"] = {run.tool: " ".join(run.cmd) for run in runs}

    comparison = compare_plans(
        common.read_json_or_none(common.shared_reference_dir() / REFERENCE_PLANS_FILE),
        common.read_json_or_none(layout.nnunet_output / NNUNET_PLANS_FILE) if nnunet_venv else None,
        common.read_json_or_none(ours_plans_file(layout.ours_output)) if not args.skip_ours else None,
    )
    metadata["plans_comparison"] = comparison
    paths = common.write_results(layout.root, "plan_preprocess", rows, TABLE_COLUMNS, metadata)
    (layout.root / "plans_comparison.md").write_text(common.markdown_table(comparison, COMPARISON_COLUMNS) + "\n")

    print_report(rows, comparison, len(cases), args.num_processes, paths["json"].parent)
    return 0 if all(m.returncode == 0 for m in measurements.values()) else 1


def print_report(rows: list[dict[str, Any]], comparison: list[dict[str, Any]], cases: int, num_processes: int,
                 folder: Path) -> None:
    print(f"\nplan_and_preprocess, {DATASET_FOLDER}, {cases} cases, configurations {' '.join(CONFIGURATIONS)}, "
          f"-np {num_processes}; memory: peak of the summed RSS / PSS of the process tree\n")
    print(common.markdown_table(rows, TABLE_COLUMNS))
    print("\nplans: reference (nnU-Net 2.8.1, all 260 cases) vs nnU-Net (this run), ours side by side\n")
    print(common.markdown_table(comparison, COMPARISON_COLUMNS) + "\n")
    for tool, column in (("nnU-Net", "nnU-Net = ref"), ("ours", "ours = ref")):
        verdicts = [row[column] for row in comparison if row[column]]
        if verdicts:
            differing = verdicts.count("NO")
            summary = f"all {len(verdicts)} fields match" if not differing else f"{differing} of {len(verdicts)} fields differ"
            print(f"{tool} plans vs reference: {summary}")
    print(f"\nresults written to {folder}")


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except BenchmarkError as error:
        print(f"plan_preprocess.py: error: {error}", file=sys.stderr)
        raise SystemExit(2)
