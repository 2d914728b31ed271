#!/usr/bin/env python3
"""Learning parity: does an iteration of our ``Base`` trainer teach as much as one of nnU-Net v2's?

Both tools train fold 0 of the same raw data (one raw folder read by both, each preprocessing
it itself, as in ``plan_preprocess.py``), with

- the same split: nnU-Net's ``generate_crossval_split`` and our ``make_splits`` are computed and
  compared (they agree on a dataset without sites), then ours is written into nnU-Net's
  ``splits_final.json``, so both train and validate on the identical cases;
- the same plan values: each tool's plans are copied to a parity plans file
  (``nnUNetPlans_parity.json``, ``plans_parity.json``) with the batch override written into
  both; patch, batch, spacing and topology are then compared field by field and reported;
- the same epochs x iterations, the same validation batches per epoch, the same number of
  data-augmentation processes and torch threads;
- K seeds per tool (nnU-Net has no seed option: the driver seeds random, numpy and torch).

Each run ends with the tool's own final validation (nnU-Net: ``perform_actual_validation``, as
``nnUNetv2_train`` does; ours: the one ``medseg-auto train`` runs): every validation case of
the fold predicted at full resolution in its original geometry by the tool's own predictor from
the final checkpoint. All predictions are scored by one evaluator, ours (``medseg-auto
evaluate``), so the metric is the same. Training wall time is the sum of the epoch times each
tool logs (training and per-epoch validation; start-up and final validation left out); peak
memory is that of the whole run's process tree (``common.measure_command``).

The table (``_parity_stats.py``): per configuration and budget, per class, the mean +- sd over
seeds of the mean validation Dice, ours - nnU-Net, a paired Wilcoxon test over the validation
cases (Dice averaged over seeds first), training seconds and peak memory. Several ``--epochs``
values give Dice against iterations and against wall seconds (the plot, seeds as a band).
Finished runs (``runs/.../run.json``) are not redone: rerun the same command to resume.

``--dataset`` (``_parity_datasets.py``): ``hippocampus`` (default, as above) or ``busi_stu``:
BUSI and STU pooled by our importer into one 2D PNG dataset with sites, where ONE shared coarse
plan (ours, ``cpu_coarse`` preset) is written into nnU-Net's parity plans and nnU-Net
preprocesses with it (``_parity_prepare.py``); ours split by site (recorded when it differs
from nnU-Net's), and the table adds one block per site.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import _parity_datasets as datasets
import _parity_prepare
import _parity_stats as stats
import common
import plan_preprocess
import train_throughput
from _parity_prepare import NNUNET_PARITY_PLANS, OURS_PARITY_PLANS, write_json
from _parity_splits import NNUNET_SPLIT_CODE, OURS_SPLIT_CODE, align_splits, same_folds, tool_splits  # noqa: F401
from common import BenchmarkError
from plan_preprocess import DATASET_NAME, NNUNET_PLANS_FILE, WorkLayout
from train_throughput import NNUNET_TOOL, OURS_TOOL

TOOL_TAGS = {NNUNET_TOOL: "nnunet", OURS_TOOL: "ours"}
QUICK = {"dataset_cases": 20, "configurations": ["2d"], "seeds": 1, "epochs": [2], "iterations": 3,
         "val_iterations": 1, "batch_size": ["2d=8", "3d_fullres=2"]}

EXAMPLES = """\
examples:
  # Hippocampus 2d, batch 32 for both tools, 3 seeds per tool, 10 epochs x 50 iterations
  .venv/bin/python benchmarks/learning_parity.py -c 2d --epochs 10 --iterations 50 --threads 1 --num-workers 1

  # Dice against the budget: 5, 10 and 20 epochs (each its own run, the table has one row block each)
  .venv/bin/python benchmarks/learning_parity.py -c 2d --epochs 5 10 20 --seeds 3

  # 3d_fullres with the plans' batch, 5 seeds
  .venv/bin/python benchmarks/learning_parity.py -c 3d_fullres --batch-size 3d_fullres=plan --seeds 5

  # smoke run (20 cases, 2d, one seed, 2 x 3 iterations; under 5 minutes on 2 idle cores)
  .venv/bin/python benchmarks/learning_parity.py --quick

  # BUSI+STU 2d (pooled, sites busi/stu), one shared coarse plan: ours (cpu_coarse preset: spacing 2x2,
  # patch 128x160, batch 10) written into nnU-Net's parity plans; 3 seeds, 10 x 25 iterations
  .venv/bin/python benchmarks/learning_parity.py --dataset busi_stu --epochs 10 --iterations 25 \\
      --threads 1 --num-workers 1

  # only rebuild the table and plot from the finished runs
  .venv/bin/python benchmarks/learning_parity.py -c 2d --report-only

Rerunning a command resumes it: finished runs (WORK/runs/CONFIG_BUDGET/TOOL_seedS/run.json) are
kept. WORK defaults to benchmarks/_work/learning_parity (hippocampus) or learning_parity_DATASET. Results: WORK/learning_parity.{json,csv,md}, WORK/learning_parity_CONFIG.png, logs in
WORK/logs/ and in each run's folder.
"""


@dataclass(frozen=True)
class Budget:
    """What both tools train for: ``epochs`` x ``iterations``, ``val_iterations`` validation
    batches per epoch, and the batch size written into both parity plans (None: the plans')."""

    epochs: int
    iterations: int
    val_iterations: int
    batch_size: int | None

    @property
    def tag(self) -> str:
        batch = "plan" if self.batch_size is None else str(self.batch_size)
        return f"e{self.epochs}x{self.iterations}_v{self.val_iterations}_b{batch}"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="learning_parity.py", description=__doc__, epilog=EXAMPLES,
                                     formatter_class=plan_preprocess.HelpFormatter)
    train_throughput.add_data_arguments(parser, "learning_parity")
    parser.add_argument("--dataset", choices=sorted(datasets.SPECS), default="hippocampus",
                        help="hippocampus: --data is the MSD folder; busi_stu: --data holds busi_half/ and stu_bus/ "
                             "(default ../shared/data), one shared coarse 2d plan (see _parity_datasets.py)")
    parser.add_argument("-c", "--configurations", nargs="+", default=["2d"], choices=plan_preprocess.CONFIGURATIONS)
    parser.add_argument("--seeds", type=int, default=3, help="runs per tool, seeds 0..K-1")
    parser.add_argument("--only-seeds", type=int, nargs="+", default=None, metavar="S",
                        help="train only these of the seeds 0..K-1, to share the runs between processes side by "
                             "side (e.g. --only-seeds 0 1 in one, --only-seeds 2 in another; each run has its own "
                             "folder); the table covers every finished run of the K seeds")
    parser.add_argument("--epochs", type=int, nargs="+", default=[10], help="epochs per run; several values: "
                        "one set of runs each (Dice against the budget)")
    parser.add_argument("--iterations", type=int, default=50, help="training iterations per epoch")
    parser.add_argument("--val-iterations", type=int, default=None,
                        help="validation batches per epoch, both tools (default: iterations / 5, as both tools do)")
    parser.add_argument("--batch-size", nargs="*", default=None, metavar="[CONFIG=]N",
                        help="batch size written into both parity plans: N, CONFIG=N or CONFIG=plan (default: "
                        "2d=32 for hippocampus, the shared plan's for busi_stu)")
    parser.add_argument("--num-workers", type=int, default=train_throughput.default_workers(),
                        help="data-augmentation processes, both tools (nnU-Net: nnUNet_n_proc_DA)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads, both tools")
    parser.add_argument("--skip-ours", action="store_true", help="do not train with medseg_auto")
    parser.add_argument("--skip-nnunet", action="store_true", help="do not train with nnU-Net v2")
    parser.add_argument("--report-only", action="store_true", help="no training: table and plot from finished runs")
    parser.add_argument("--quick", action="store_true", help="smoke run: " + ", ".join(f"{k}={v}" for k, v in
                                                                                         QUICK.items()))
    args = parser.parse_args(argv)
    spec = datasets.SPECS[args.dataset]
    default_work = common.repo_root() / "benchmarks" / "_work" / "learning_parity"
    if args.work == default_work:
        args.work = default_work.with_name(spec.work_name)
    if args.data == datasets.SPECS["hippocampus"].default_data:
        args.data = spec.default_data
    if args.batch_size is None:
        args.batch_size = list(spec.default_batch_sizes)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
        if args.work == default_work.with_name(spec.work_name):
            args.work = args.work.with_name(f"{spec.work_name}_quick")
    unknown = sorted(set(args.configurations) - set(spec.configurations))
    if unknown:
        parser.error(f"--dataset {args.dataset} offers the configurations {', '.join(spec.configurations)}, "
                     f"not {', '.join(unknown)}")
    if args.seeds < 1 or args.iterations < 1 or min(args.epochs) < 1:
        parser.error("--seeds, --epochs and --iterations must be positive")
    if args.only_seeds is not None and not set(args.only_seeds) <= set(range(args.seeds)):
        parser.error(f"--only-seeds must be among the seeds 0..{args.seeds - 1} of --seeds {args.seeds}")
    args.batch_sizes = train_throughput.parse_batch_sizes(parser, args.batch_size, args.configurations)
    return args


def budgets(args: argparse.Namespace, configuration: str) -> list[Budget]:
    val_iterations = args.val_iterations or max(1, round(args.iterations / 5))
    return [Budget(epochs, args.iterations, val_iterations, args.batch_sizes[configuration]) for epochs in args.epochs]


# --- same split, same plans ------------------------------------------------------------------

def write_parity_plans(nnunet_plans: Path, ours_plans: Path, configuration: str,
                       batch_size: int | None) -> list[dict[str, Any]]:
    """Copy each tool's plans to its parity plans file with ``batch_size`` (if given) in
    ``configuration``; return the field-by-field comparison (nnU-Net's values as reference)."""
    written = {}
    for source, name in ((nnunet_plans, NNUNET_PARITY_PLANS), (ours_plans, OURS_PARITY_PLANS)):
        target = source.with_name(f"{name}.json")
        plans = json.loads((target if target.is_file() else source).read_text())
        section = plan_preprocess.configuration_of(plans, configuration)
        if section is None:
            raise BenchmarkError(f"{source}: no configuration {configuration!r}")
        section["batch_size"] = batch_size if batch_size is not None else plan_preprocess.configuration_of(
            json.loads(source.read_text()), configuration)["batch_size"]
        plans["plans_name"] = name
        write_json(target, plans)
        written[name] = plans
    rows = plan_preprocess.compare_plans(written[NNUNET_PARITY_PLANS], written[NNUNET_PARITY_PLANS],
                                         written[OURS_PARITY_PLANS])
    return [{"field": row["field"], "nnunet": row["reference"], "ours": row["ours"], "same": row["ours = ref"]}
            for row in rows if row["configuration"] == configuration]


# --- one run ---------------------------------------------------------------------------------

def run_folder(layout: WorkLayout, configuration: str, budget: Budget, tool: str, seed: int) -> Path:
    return layout.root / "runs" / f"{configuration}_{budget.tag}" / f"{TOOL_TAGS[tool]}_seed{seed}"


def ours_train_command(home: Path, configuration: str, budget: Budget, seed: int,
                       num_workers: int, dataset_name: str = DATASET_NAME) -> list[str]:
    """Our training (``medseg-auto train``, which ends with its final validation). The one place
    that says how ours is trained: adapt here when the training API changes."""
    return [*common.ours_command(), "train", dataset_name, configuration, "0", "-p", OURS_PARITY_PLANS,
            "--epochs", str(budget.epochs), "--iters-per-epoch", str(budget.iterations), "--val-iters-per-epoch",
            str(budget.val_iterations), "--seed", str(seed), "--num-workers", str(num_workers), "--device", "cpu",
            "--home", str(home), "--no-progress"]


def run_home(layout: WorkLayout, folder: Path) -> Path:
    """A data home per run (its own ``results/``; ``raw`` and ``preprocessed`` linked to the shared ones)."""
    home = folder / "home"
    home.mkdir(parents=True, exist_ok=True)
    for name in ("raw", "preprocessed"):
        link = home / name
        if not link.exists():
            link.symlink_to((layout.ours_home / name).resolve(), target_is_directory=True)
    return home


def tool_command(tool: str, layout: WorkLayout, args: argparse.Namespace, configuration: str, budget: Budget,
                 seed: int, folder: Path) -> tuple[list[str], dict[str, str], Path]:
    """Command, environment additions and prediction folder of one run."""
    threads = {"OMP_NUM_THREADS": str(args.threads)}
    spec = datasets.SPECS[args.dataset]
    if tool == NNUNET_TOOL:
        cmd, env = train_throughput.driver_run(
            NNUNET_TOOL, layout, configuration, args.nnunet_venv, folder / "driver.json", epochs=budget.epochs,
            iterations=budget.iterations, val_iterations=budget.val_iterations, num_workers=args.num_workers,
            threads=args.threads, extra=["--seed", str(seed), "--plans", NNUNET_PARITY_PLANS, "--final-validation"],
            dataset_name=spec.name, dataset_folder=spec.folder)
        env = {**env, **threads, "nnUNet_results": str(folder / "nnUNet_results"),
               "nnUNet_def_n_proc": str(max(1, args.num_workers))}
        fold = (folder / "nnUNet_results" / spec.folder / f"nnUNetTrainer__{NNUNET_PARITY_PLANS}__{configuration}"
                / "fold_0")
        return cmd, env, fold
    home = run_home(layout, folder)
    fold = home / "results" / spec.folder / f"Base__{OURS_PARITY_PLANS}__{configuration}" / "fold_0"
    return ours_train_command(home, configuration, budget, seed, args.num_workers, spec.name), threads, fold


def epoch_times(tool: str, folder: Path, fold: Path) -> list[float]:
    """Seconds of each epoch as the tool logged them (nnU-Net: the driver's copy of its logger)."""
    if tool == NNUNET_TOOL:
        return list((common.read_json_or_none(folder / "driver.json") or {}).get("epoch_times_s", []))
    progress = fold / "progress.csv"
    if not progress.is_file():
        return []
    with open(progress, newline="") as handle:
        return [float(row["epoch_time"]) for row in csv.DictReader(handle)]


def evaluate(layout: WorkLayout, predictions: Path, output: Path, dataset_name: str = DATASET_NAME) -> Path:
    """Score ``predictions`` with our evaluator against the raw labels; returns ``metrics.csv``."""
    cmd = [*common.ours_command(), "evaluate", str(predictions), str(layout.raw_dataset / "labelsTr"), "-d",
           dataset_name, "--predicted-only", "-o", str(output), "--home", str(layout.ours_home), "-np", "1",
           "--no-progress"]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0 or not (output / "metrics.csv").is_file():
        raise BenchmarkError(f"evaluating {predictions} failed: {(result.stderr or result.stdout)[-2000:]}")
    return output / "metrics.csv"


def run_once(tool: str, layout: WorkLayout, args: argparse.Namespace, configuration: str, budget: Budget,
             seed: int, expected_cases: int) -> dict[str, Any]:
    """Train, predict (the tool's final validation) and score one run, unless it finished before."""
    folder = run_folder(layout, configuration, budget, tool, seed)
    done = common.read_json_or_none(folder / "run.json")
    if done is not None:
        return done
    trained = common.read_json_or_none(folder / "trained.json")  # trained and predicted, not yet scored
    if trained is None:
        if folder.exists():  # a run killed halfway: start it again from scratch
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
    cmd, env, fold = tool_command(tool, layout, args, configuration, budget, seed, folder)
    if trained is None:
        say(layout, f"[{configuration} {budget.tag} {tool} seed {seed}] {' '.join(cmd)}")
        load_before = os.getloadavg()
        measurement = common.measure_command(cmd, env=env, cwd=layout.root, log_path=folder / "train.log")
        trained = {**measurement.as_dict(), "load_before": load_before, "load_after": os.getloadavg()}
        predictions = fold / "validation"
        file_ending = datasets.SPECS[args.dataset].file_ending
        predicted = len(list(predictions.glob(f"*{file_ending}"))) if predictions.is_dir() else 0
        if measurement.returncode != 0 or predicted != expected_cases:
            raise BenchmarkError(f"{tool} seed {seed}: exit {measurement.returncode}, {predicted}/{expected_cases} "
                                 f"validation cases predicted (log: {folder / 'train.log'}):\n"
                                 f"{common.log_tail(folder / 'train.log')}")
        write_json(folder / "trained.json", trained)
    predictions = fold / "validation"
    metrics = evaluate(layout, predictions, folder / "evaluation", datasets.SPECS[args.dataset].name)
    times = epoch_times(tool, folder, fold)
    record = {"tool": tool, "seed": seed, "configuration": configuration, "budget": budget.__dict__,
              "iterations": budget.epochs * budget.iterations, "train_s": sum(times), "epoch_times_s": times,
              **trained, "command": cmd, "environment": env, "predictions": str(predictions),
              "metrics_csv": str(metrics)}
    write_json(folder / "run.json", record)
    say(layout, f"[{configuration} {budget.tag} {tool} seed {seed}] done: {record['wall_s']:.0f} s, training "
                f"{record['train_s']:.0f} s, load {record['load_before'][0]:.1f} -> {record['load_after'][0]:.1f}")
    return record


def with_dice(record: dict[str, Any]) -> dict[str, Any]:
    """A run record plus its per-case Dice and its one curve point (final checkpoint)."""
    dice = stats.read_case_dice(Path(record["metrics_csv"]))
    mean = stats.nanmean([stats.nanmean(list(cases.values())) for cases in dice.values()])
    return {**record, "dice": dice, "curve": [{"iterations": record["iterations"], "train_s": record["train_s"],
                                               "dice": mean}]}


# --- driver ----------------------------------------------------------------------------------

def say(layout: WorkLayout, message: str) -> None:
    """Print and append to WORK/logs/learning_parity.log, with the time and the load average."""
    line = f"{time.strftime('%H:%M:%S')} load {os.getloadavg()[0]:.1f}  {message}"
    print(line, flush=True)
    layout.logs.mkdir(parents=True, exist_ok=True)
    with open(layout.logs / "learning_parity.log", "a") as log:
        log.write(line + "\n")


def tools(args: argparse.Namespace) -> list[str]:
    return ([] if args.skip_nnunet else [NNUNET_TOOL]) + ([] if args.skip_ours else [OURS_TOOL])


def prepare(args: argparse.Namespace, layout: WorkLayout, venv: Path | None,
            metadata: dict[str, Any]) -> dict[str, str]:
    """Raw data, both tools' preprocessing, the same split and the parity plans of every
    configuration (comparisons into ``metadata``); returns the dataset's sites (case -> site)."""
    spec = datasets.SPECS[args.dataset]
    comparisons: dict[str, list[dict[str, Any]]] = {}
    if spec.shared_plan:
        cases, comparisons, metadata["geometry_check"] = _parity_prepare.prepare_shared_plan(
            spec, args, layout, venv, lambda message: say(layout, message))
        say(layout, f"geometry both tools read: {metadata['geometry_check']}")
    else:
        cases = train_throughput.prepare_data(args, layout, need_ours=True, need_nnunet=venv is not None)
    sites = dataset_sites(layout)
    metadata["split_check"] = split = align_splits(layout, venv, cases, sites)
    per_site = f" {split['fold0_val_sites']}" if "fold0_val_sites" in split else ""
    say(layout, f"{len(cases)} cases; fold 0 validates on {split['fold0_val_cases']}{per_site}; "
                f"nnU-Net's splits equal ours: {split.get('nnunet_equals_ours')}")
    for configuration in args.configurations:
        comparison = comparisons.get(configuration) or write_parity_plans(
            layout.nnunet_output / NNUNET_PLANS_FILE, plan_preprocess.ours_plans_file(layout.ours_output),
            configuration, args.batch_sizes[configuration])
        metadata[f"plans_{configuration}"] = comparison
        different = [row["field"] for row in comparison if row["same"] != "yes"]
        say(layout, f"{configuration} parity plans written; fields that differ: {different or 'none'}")
    return sites


def dataset_sites(layout: WorkLayout) -> dict[str, str]:
    """The raw dataset.json's ``sites`` (case -> site; empty without sites)."""
    return dict((common.read_json_or_none(layout.raw_dataset / "dataset.json") or {}).get("sites") or {})


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    spec = datasets.SPECS[args.dataset]
    layout = spec.layout(args.work)
    venv = None if args.skip_nnunet else common.nnunet_venv(args.nnunet_venv)
    args.nnunet_venv = venv or args.nnunet_venv
    metadata: dict[str, Any] = {"dataset": spec.folder}
    sites = dataset_sites(layout) if args.report_only else prepare(args, layout, venv, metadata)
    rows, all_runs = [], []
    for configuration in args.configurations:
        prefix = configuration if spec.key == "hippocampus" else f"{spec.key} {configuration}"
        budget_runs = []
        for budget in budgets(args, configuration):
            runs = []
            for seed in range(args.seeds):
                for tool in tools(args):  # the tools alternate, so a change of load hits both
                    folder = run_folder(layout, configuration, budget, tool, seed)
                    if not trains_seed(args, seed):
                        record = common.read_json_or_none(folder / "run.json")
                    else:
                        record = run_once(tool, layout, args, configuration, budget, seed,
                                          metadata["split_check"]["fold0_val_cases"])
                    if record is not None:
                        runs.append(with_dice(record))
            label = f"{prefix} {budget.epochs}x{budget.iterations} b{budget.batch_size or 'plan'}"
            rows += stats.parity_rows(label, runs) + stats.per_site_rows(label, runs, sites)
            all_runs += [(configuration, run) for run in runs]
            budget_runs.append((f"{budget.epochs}x{budget.iterations}", runs))
            write_report(layout, args, rows, all_runs, metadata)
        rows += stats.equal_time_rows(prefix, budget_runs)
    paths = write_report(layout, args, rows, all_runs, metadata)
    print("\n" + common.markdown_table(rows, stats.TABLE_COLUMNS))
    say(layout, f"results written to {paths['md']}")
    return 0


def trains_seed(args: argparse.Namespace, seed: int) -> bool:
    """Whether this process trains ``seed`` (else it only reports the seed's finished runs)."""
    return not args.report_only and (args.only_seeds is None or seed in args.only_seeds)


def write_report(layout: WorkLayout, args: argparse.Namespace, rows: list[dict[str, Any]],
                 runs: list[tuple[str, dict[str, Any]]], metadata: dict[str, Any]) -> dict[str, Path]:
    """The table (JSON/CSV/Markdown) and one plot per configuration, from the runs so far."""
    metadata = {**train_throughput.run_metadata(args, [], "learning_parity"), **metadata,
                "runs": [{key: value for key, value in run.items() if key != "dice"} for _, run in runs]}
    for configuration in {configuration for configuration, _ in runs}:
        stats.plot_runs([run for name, run in runs if name == configuration],
                        layout.root / f"learning_parity_{configuration}.png",
                        f"{layout.dataset_folder} {configuration}: validation Dice, fold 0 "
                        "(each point: a finished run)")
    return common.write_results(layout.root, "learning_parity", rows, stats.TABLE_COLUMNS, metadata)


if __name__ == "__main__":  # the guard nnU-Net's spawned validation workers need in any driver
    try:
        raise SystemExit(main())
    except BenchmarkError as error:
        print(f"learning_parity.py: error: {error}", file=sys.stderr)
        raise SystemExit(2)
