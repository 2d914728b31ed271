"""The demo: synthetic two-site data through every pipeline stage, scored on held-out cases.

Each stage is one row of :data:`STAGES`: its name, the module that provides it (imported when
the stage runs; a missing module is a packaging error and raises), and a one-line call. What an
earlier stage returned reaches the later ones through ``StageInputs.previous``.

Why held-out cases: a model scored on the images it trained on proves nothing to a newcomer.
A third of each site's cases (at least one) is kept out of training (:func:`held_out_split`);
the network is scored on them untrained (``baseline``: the same training call with 0 epochs, so
the same code predicts and scores it) and after training (``predict`` + ``evaluate`` through
the user-facing commands' functions). The summary prints both Dice values.

Why it is quick (2 minutes on 2 CPU cores is the target): the demo plans with its own preset
(:data:`DEMO_PRESET`, half the features per stage), its 3D cases are small with a large core
(:data:`DEMO_SHAPES`, :data:`DEMO_BLOBS`), :data:`DEMO_BUDGETS` sets how long each model trains,
and nothing is predicted twice. None of this changes the defaults for real data.
"""

from __future__ import annotations

import importlib
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterable, Iterator, Sequence

from medseg_auto.dataset.dataset_json import DatasetSpec
from medseg_auto.dataset.synthetic import make_synthetic_dataset
from medseg_auto.errors import DatasetError
from medseg_auto.paths import DataHome
from medseg_auto.utils.atomic import read_json, write_json_atomic
from medseg_auto.utils.logging_setup import get_logger

DEMO_HOME = "medseg_auto_demo"
DATASET_NAMES = {2: "DemoSynthetic2D", 3: "DemoSynthetic3D"}
SUMMARY_FILE_NAME = "demo_summary.json"

logger = get_logger("demo")


@dataclass
class StageInputs:
    """What a stage call may use. ``previous`` maps earlier stage names to their return values."""

    home: DataHome
    spec: DatasetSpec
    dataset_name: str
    num_processes: int
    show_progress: bool
    previous: dict[str, Any] = field(default_factory=dict)
    epochs: int = 0
    iterations: int = 0

    @property
    def split(self) -> tuple[list[str], list[str]]:
        """``(training cases, held-out cases)`` of this dataset."""
        return held_out_split(self.spec.sites or {case: "" for case in self.spec.training_cases()})


@dataclass
class StageReport:
    """What the demo records about one finished stage: ``ok`` False stops the later stages."""

    ok: bool = True
    details: dict[str, Any] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)


def report_done(result: Any) -> StageReport:
    """Default report: the stage returned without raising."""
    return StageReport()


def report_problems(problems: Iterable[Any]) -> StageReport:
    """Report for ``verify``: every problem is a log line; an error-level one stops the later stages.

    Problems with a ``severity`` other than ``"error"`` (such as empty-mask warnings) are
    reported without stopping; problems without a ``severity`` count as errors.
    """
    problems = list(problems or [])
    errors = [str(p) for p in problems if getattr(p, "severity", "error") == "error"]
    warnings = [str(p) for p in problems if getattr(p, "severity", "error") != "error"]
    lines = [f"problem: {message}" for message in errors + warnings] or ["no problems found"]
    return StageReport(ok=not errors, details={"errors": errors, "warnings": warnings}, lines=lines)


def report_plans(plans: Any) -> StageReport:
    """Report for ``plan_and_preprocess``: the patch size of each configuration, if readable.

    Accepts a :class:`~medseg_auto.planning.plans.Plans` or its JSON dict.
    """
    sizes = configuration_patch_sizes(plans)
    lines = [f"{name}: patch size {'x'.join(map(str, size))}" for name, size in sizes.items()]
    return StageReport(details={"patch_sizes": sizes}, lines=lines or ["planned and preprocessed"])


def configuration_patch_sizes(plans: Any) -> dict[str, list[int]]:
    """``{configuration name: patch size}`` from a Plans object or a plans dict; ``{}`` if neither."""
    configurations = plans.get("configurations") if isinstance(plans, dict) else getattr(plans, "configurations", None)
    if not isinstance(configurations, dict):
        return {}
    sizes: dict[str, list[int]] = {}
    for name, configuration in configurations.items():
        if isinstance(configuration, dict):
            size = configuration.get("patch_size")
        else:
            size = getattr(configuration, "patch_size", None)
        if size is not None:
            sizes[str(name)] = [int(value) for value in size]
    return sizes


# Training budget per dimension (epochs, iterations per epoch); README has the measured Dice.
DEMO_BUDGETS = {2: (3, 10), 3: (3, 25)}
# Image shapes (z, y, x) of the synthetic cases (None: the generator's default), and blob radius
# (fraction of the shortest side) and core radius (fraction of the blob's). Why a larger blob and
# core in 3D: on 32^3 cases at the defaults (0.15-0.25, 0.5) the core took 125-150 iterations of
# the default network and was not learned in 150 with the demo preset's; on 24^3 cases with
# these (blob 6-8.4 voxels, core 3.6-5) held-out Dice is 0.92-0.94 after 60-75 iterations.
DEMO_SHAPES: dict[int, tuple[int, ...] | None] = {2: None, 3: (24, 24, 24)}
DEMO_BLOBS: dict[int, dict[str, Any]] = {2: {}, 3: {"radius_fraction": (0.25, 0.35), "core_fraction": 0.6}}
# Planner preset (plans/demo.json): nnU-Net's default planner with half the features per stage.
DEMO_PRESET = "demo"
DEMO_PREDICTIONS = "demo_predictions"
DEMO_TEST_IMAGES = "demo_test_images"
BASELINE_TAG, TRAINED_TAG = "untrained", "demo"


def held_out_split(sites: dict[str, str]) -> tuple[list[str], list[str]]:
    """Keep the last third (at least one) of each site's cases out of training.

    ``sites`` maps every case id to its site. Sites with one case only train; if that leaves
    nothing held out, the last case overall is held out; a single case is both (said in the log).
    Returns sorted ``(train, held_out)``.
    """
    by_site: dict[str, list[str]] = {}
    for case in sorted(sites):
        by_site.setdefault(sites[case], []).append(case)
    held_out = [case for cases in by_site.values() if len(cases) >= 2 for case in cases[-max(1, len(cases) // 3):]]
    everything = sorted(sites)
    if not held_out and len(everything) >= 2:
        held_out = everything[-1:]
    if not held_out:
        logger.warning("one case only: the demo trains and scores on the same image")
        return everything, everything
    return [case for case in everything if case not in held_out], sorted(held_out)


def demo_configuration(inputs: StageInputs) -> str:
    """``3d_fullres`` where the plans have it (3D data), else ``2d``."""
    plans = inputs.previous.get("plan_and_preprocess")
    names = list(getattr(plans, "configurations", {}) or {})
    return "3d_fullres" if "3d_fullres" in names else "2d"


def demo_train(module: ModuleType, inputs: StageInputs, tag: str, epochs: int) -> Path:
    """Train on the training cases for ``epochs``; returns the fold folder.

    ``epochs=0`` (the baseline) scores the untrained network on the held-out cases in the
    final validation. A trained model skips it: ``predict`` + ``evaluate`` score the same cases
    next, so predicting them here too would only double the inference time. ``num_workers=0``:
    a dozen tiny cases need no loader processes, and on 2 cores a worker competes with the
    training threads.
    """
    train, held_out = inputs.split
    plans = inputs.previous["plan_and_preprocess"]
    return module.train_fold(module.TrainRequest(
        inputs.home, inputs.dataset_name, demo_configuration(inputs), tag, plans_name=plans.plans_name, seed=0, device="auto",
        settings={"num_epochs": epochs, "iterations_per_epoch": inputs.iterations, "num_workers": 0},
        split=(train, held_out), allow_untrained=epochs == 0, final_validation=epochs == 0,
        show_progress=inputs.show_progress))


def validation_dice(folder: Path) -> float:
    """Mean foreground Dice of a fold's final validation (``validation/summary.json``)."""
    summary = read_json(Path(folder) / "validation" / "summary.json")
    return float(summary["foreground_mean"]["dice"])


def report_baseline(folder: Any) -> StageReport:
    dice = validation_dice(folder)
    return StageReport(details={"dice_before_training": round(dice, 4)},
                       lines=[f"Dice of the untrained network on the held-out cases: {dice:.3f}"])


def report_training(folder: Any) -> StageReport:
    """The trained model's folder; its Dice on the held-out cases comes from ``evaluate``."""
    return StageReport(details={"results": str(folder)}, lines=[f"model and training curves in {folder}"])


def demo_predict(module: ModuleType, inputs: StageInputs) -> Path:
    """Predict the held-out images with the trained model, as ``medseg-auto predict`` does
    (written to ``results/<dataset>/demo_predictions``); returns the output folder."""
    from medseg_auto.inference.model_loading import load_folds

    folder = Path(inputs.previous["train"]).parent
    images = inputs.home.results_dataset(inputs.dataset_name) / DEMO_TEST_IMAGES
    images.mkdir(parents=True, exist_ok=True)
    for case in inputs.split[1]:
        for source in sorted((inputs.spec.folder / "imagesTr").glob(f"{case}_[0-9][0-9][0-9][0-9]{inputs.spec.file_ending}")):
            shutil.copyfile(source, images / source.name)
    output = inputs.home.results_dataset(inputs.dataset_name) / DEMO_PREDICTIONS
    models = load_folds(folder, [TRAINED_TAG])
    options = module.PredictionOptions(overwrite=True, show_progress=inputs.show_progress)
    report = module.predict_folder(images, output, models, None, options)
    if report.failed:
        raise DatasetError(f"demo prediction failed for {sorted(report.failed)}")
    return output


def report_evaluation(result: Any) -> StageReport:
    dice = float(result.summary["foreground_mean"]["dice"])
    cases = int(result.summary.get("num_cases", 0))
    return StageReport(details={"mean_dice": round(dice, 4), "held_out_cases": cases},
                       lines=[f"mean foreground Dice on {cases} held-out case(s): {dice:.3f}"])


@dataclass(frozen=True)
class Stage:
    """One pipeline stage as the demo runs it."""

    name: str
    module: str
    call: Callable[[ModuleType, StageInputs], Any]
    report: Callable[[Any], StageReport] = report_done


# Pipeline order. A new stage is one more row here.
STAGES: tuple[Stage, ...] = (
    Stage("verify", "medseg_auto.dataset.verify",
          lambda module, inputs: module.verify_dataset(inputs.spec, inputs.num_processes, inputs.show_progress),
          report=report_problems),
    Stage("plan_and_preprocess", "medseg_auto.preprocessing.pipeline",
          lambda module, inputs: module.plan_and_preprocess(
              inputs.home, inputs.dataset_name, configurations=None, preset=DEMO_PRESET,
              num_processes=inputs.num_processes, show_progress=inputs.show_progress),
          report=report_plans),
    Stage("baseline", "medseg_auto.run.train",
          lambda module, inputs: demo_train(module, inputs, BASELINE_TAG, epochs=0), report=report_baseline),
    Stage("train", "medseg_auto.run.train",
          lambda module, inputs: demo_train(module, inputs, TRAINED_TAG, epochs=inputs.epochs), report=report_training),
    Stage("predict", "medseg_auto.inference.predict", lambda module, inputs: demo_predict(module, inputs),
          report=report_done),
    Stage("evaluate", "medseg_auto.evaluation.evaluate", lambda module, inputs: module.evaluate_folders(
              inputs.previous["predict"], inputs.spec.folder / "labelsTr", spec=inputs.spec,
              sites=inputs.spec.sites or None, show_progress=inputs.show_progress, predicted_only=True),
          report=report_evaluation),
)


def demo_dataset(home: DataHome, dimension: int, cases_per_site: int) -> tuple[DatasetSpec, bool]:
    """The demo dataset for ``dimension``: reused when complete in ``home``, else written.

    Returns the spec and whether it was reused. A folder without ``dataset.json`` (a run killed
    while writing, since ``dataset.json`` is written last) is written again.
    """
    name = DATASET_NAMES[dimension]
    try:
        folder = home.raw_dataset(name)
    except DatasetError:
        folder = None
    if folder is not None and (folder / "dataset.json").is_file():
        spec = DatasetSpec.load(folder)
        logger.info("%s: reusing %s (%d cases)", name, folder, spec.num_training)
        return spec, True
    logger.info("%s: writing %d synthetic %dD cases per site", name, cases_per_site, dimension)
    spec = make_synthetic_dataset(home, name, dimension=dimension, cases_per_site=cases_per_site,
                                  shape=DEMO_SHAPES[dimension], **DEMO_BLOBS[dimension])
    logger.info("%s: written to %s", name, spec.folder)
    return spec, False


def remove_previous_outputs(home: DataHome, dataset_folder_name: str) -> list[str]:
    """Delete the demo dataset's preprocessed and results folders (never anything else)."""
    removed = []
    for parent in (home.preprocessed, home.results):
        target = parent / dataset_folder_name
        if target.is_dir():
            shutil.rmtree(target)
            removed.append(str(target))
    return removed


def run_stages(stages: Sequence[Stage], inputs: StageInputs) -> list[dict[str, Any]]:
    """Run ``stages`` in order on one dataset; return one record per stage.

    After a stage reports ``ok`` False the rest are skipped. Exceptions propagate (the CLI
    turns user errors into a message), a stage module that does not import among them.
    """
    records: list[dict[str, Any]] = []
    stopped_by: str | None = None
    for stage in stages:
        record: dict[str, Any] = {"stage": stage.name, "dataset": inputs.dataset_name}
        records.append(record)
        if stopped_by is not None:
            record.update(status="skipped", reason=f"stage {stopped_by} reported problems")
            logger.info("[%s] stage %s skipped: stage %s reported problems", inputs.dataset_name, stage.name, stopped_by)
            continue
        module = importlib.import_module(stage.module)
        logger.info("[%s] stage %s ...", inputs.dataset_name, stage.name)
        started = time.perf_counter()
        result = stage.call(module, inputs)
        seconds = round(time.perf_counter() - started, 2)
        inputs.previous[stage.name] = result
        report = stage.report(result)
        for line in report.lines:
            logger.info("[%s]   %s", inputs.dataset_name, line)
        record.update(status="ran" if report.ok else "failed", seconds=seconds, **report.details)
        logger.info("[%s] stage %s %s in %.1f s", inputs.dataset_name, stage.name, record["status"], seconds)
        if not report.ok:
            stopped_by = stage.name
    return records


def run_demo(
    home: DataHome | str | os.PathLike,
    dimensions: Sequence[int] = (2, 3),
    cases_per_site: int = 6,
    num_processes: int = 1,
    show_progress: bool = True,
    keep_outputs: bool = False,
    stages: Sequence[Stage] = STAGES,
    log_file: Path | None = None,
    epochs: int | None = None,
    iterations: int | None = None,
) -> dict[str, Any]:
    """Write (or reuse) the synthetic datasets in ``home`` and run ``stages`` on each.

    Without ``keep_outputs`` the demo datasets' earlier preprocessed and results folders are
    deleted first, so every available stage really runs. Writes ``home/demo_summary.json`` and
    returns the same dict: ``home``, ``datasets``, ``stages`` (one record per stage and
    dataset, with ``status`` ``ran``, ``skipped`` or ``failed``), ``dice`` (per dataset: before
    and after training, on the held-out cases), ``outputs`` and ``ok``. ``epochs`` x
    ``iterations`` replace :data:`DEMO_BUDGETS` (shorter runs for tests).
    """
    home = home if isinstance(home, DataHome) else DataHome.resolve(home)
    unknown = sorted(set(dimensions) - set(DATASET_NAMES))
    if unknown:
        raise ValueError(f"demo dimensions must be 2 and/or 3, got {unknown}")
    if cases_per_site < 1:
        raise ValueError(f"cases_per_site must be at least 1, got {cases_per_site}")
    started = time.perf_counter()
    datasets: dict[str, Any] = {}
    records: list[dict[str, Any]] = []
    with demo_threads():
        _run_datasets(home, dimensions, cases_per_site, num_processes, show_progress, keep_outputs, stages,
                      epochs, iterations, datasets, records)
    summary = {
        "home": str(home.root),
        "datasets": datasets,
        "stages": records,
        "outputs": {"raw": str(home.raw), "preprocessed": str(home.preprocessed), "results": str(home.results)},
        "log_file": str(log_file) if log_file else None,
        "dice": dice_before_after(records),
        "ok": all(record["status"] != "failed" for record in records),
        "seconds": round(time.perf_counter() - started, 2),
    }
    home.root.mkdir(parents=True, exist_ok=True)
    write_json_atomic(home.root / SUMMARY_FILE_NAME, summary)
    return summary



#: Threads of the demo's process unless OMP_NUM_THREADS says otherwise. The demo's networks are
#: tiny, so a second thread gains little, and with any other job on the cores each of torch's
#: parallel steps waits for the thread that job holds: measured 2026-12-06 (two other jobs on 2
#: cores) the whole demo took 24 s with one thread and 175-237 s with two.
DEMO_THREADS = 1


@contextmanager
def demo_threads() -> Iterator[int]:
    """Run the demo with :data:`DEMO_THREADS` (an explicit ``OMP_NUM_THREADS`` wins); the
    caller's thread count and environment are restored afterwards."""
    import torch

    before_env, before_threads = os.environ.get("OMP_NUM_THREADS"), torch.get_num_threads()
    threads = int(before_env) if before_env and before_env.isdigit() and int(before_env) > 0 else DEMO_THREADS
    os.environ["OMP_NUM_THREADS"] = str(threads)  # read by training's thread set-up
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(before_threads)
        if before_env is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = before_env


def _run_datasets(home: DataHome, dimensions: Sequence[int], cases_per_site: int, num_processes: int,
                  show_progress: bool, keep_outputs: bool, stages: Sequence[Stage], epochs: int | None,
                  iterations: int | None, datasets: dict[str, Any], records: list[dict[str, Any]]) -> None:
    """Make (or reuse) each demo dataset and run the stages on it; fills ``datasets`` and ``records``."""
    for dimension in sorted(set(dimensions)):
        spec, reused = demo_dataset(home, dimension, cases_per_site)
        removed = [] if keep_outputs else remove_previous_outputs(home, spec.name)
        for folder in removed:
            logger.info("%s: removed earlier demo output %s (pass --keep to keep it)", spec.name, folder)
        datasets[spec.name] = {
            "dimension": dimension, "raw": str(spec.folder), "cases": spec.num_training,
            "sites": sorted(set(spec.sites.values())), "reused": reused,
        }
        inputs = StageInputs(home, spec, spec.name, num_processes, show_progress,
                             epochs=epochs or DEMO_BUDGETS[dimension][0],
                             iterations=iterations or DEMO_BUDGETS[dimension][1])
        datasets[spec.name]["held_out"] = inputs.split[1]
        records.extend(run_stages(stages, inputs))


def dice_before_after(records: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """``{dataset: {"before": Dice untrained, "after": Dice trained}}`` on the held-out cases."""
    dice: dict[str, dict[str, float]] = {}
    for record in records:
        for key, name in (("dice_before_training", "before"), ("mean_dice", "after")):
            if key in record:
                dice.setdefault(record["dataset"], {})[name] = record[key]
    return dice


def format_summary(summary: dict[str, Any]) -> str:
    """A few lines for the console: what ran, what was skipped, where the outputs are."""
    lines = [f"demo {'finished' if summary['ok'] else 'stopped: a stage reported problems'} "
             f"in {summary['seconds']:.1f} s"]
    for record in summary["stages"]:
        status = record["status"]
        if status == "skipped":
            status += f" ({record.get('reason', '')})"
        elif "seconds" in record:
            status += f" ({record['seconds']:.1f} s)"
        lines.append(f"  {record['dataset']:<28} {record['stage']:<22} {status}")
    for dataset, dice in summary.get("dice", {}).items():
        lines.append(f"  {dataset:<28} Dice on held-out cases: {dice.get('before', float('nan')):.3f} before training, "
                     f"{dice.get('after', float('nan')):.3f} after")
    lines.append(f"raw data:     {summary['outputs']['raw']}")
    lines.append(f"preprocessed: {summary['outputs']['preprocessed']}")
    lines.append(f"results:      {summary['outputs']['results']}")
    if summary.get("log_file"):
        lines.append(f"log:          {summary['log_file']}")
    lines.append(f"summary:      {Path(summary['home']) / SUMMARY_FILE_NAME}")
    return "\n".join(lines)
