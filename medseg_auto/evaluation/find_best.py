"""Pick the configuration (or pairwise ensemble) to use for inference, from cross-validation
(nnU-Net's ``evaluation/find_best_configuration.py``).

Steps, each with its own module: gather the validation of every trained
``TRAINER__PLANS__CONFIG`` into one cross-validation (:mod:`.crossval`); score every pairwise
ensemble of them (:mod:`.ensembles`); take the highest foreground-mean Dice, single models
listed first so that a tie goes to a single model (one model is cheaper to run and ship than
two); decide post-processing on the winner's cross-validation predictions
(:mod:`.postprocessing_selection`). The results:

- ``postprocessing.json`` next to the winner's folds (``predict`` applies it by itself), or in
  the ensemble's record folder ``ensembles/ensemble___A___B/`` (given to ``ensemble``);
- ``inference_information.json``: every candidate with its Dice, what was skipped and why, the
  decision and the post-processing evidence;
- ``inference_instructions.txt``: the exact commands to run on new images.

A run whose requested folds are not all finished is left out (and listed with the reason):
comparing a configuration scored on fewer cases with one scored on all would not be fair.
"""

from __future__ import annotations

import itertools
import math
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence, Union

from medseg_auto.evaluation.crossval import CrossValidation, cross_validate
from medseg_auto.evaluation.ensembles import EnsembleCrossValidation, ensemble_crossvalidations
from medseg_auto.evaluation.evaluate import EvaluationError
from medseg_auto.evaluation.postprocessing_selection import PostprocessingDecision, determine_postprocessing
from medseg_auto.evaluation.writing import json_safe
from medseg_auto.paths import DataHome
from medseg_auto.utils.atomic import write_json_atomic, write_text_atomic
from medseg_auto.utils.logging_setup import get_logger

log = get_logger("evaluation.find_best")

DEFAULT_CONFIGURATIONS = ("2d", "3d_fullres", "3d_lowres")
DEFAULT_TRAINERS = ("Base",)
POSTPROCESSING_FILE = "postprocessing.json"
INFORMATION_FILE = "inference_information.json"
INSTRUCTIONS_FILE = "inference_instructions.txt"
POSTPROCESSING_WORK_FOLDER = "postprocessing"

Scored = Union[CrossValidation, EnsembleCrossValidation]


class FindBestError(EvaluationError):
    """No trained run could be cross-validated with the requested folds."""


@dataclass
class Candidate:
    """One single model (``members`` has one ``(trainer, plans, configuration)``) or ensemble."""

    scored: Scored
    members: list[tuple[str, str, str]]

    @property
    def is_ensemble(self) -> bool:
        return len(self.members) > 1

    @property
    def name(self) -> str:
        return self.scored.name

    @property
    def dice(self) -> float:
        return self.scored.dice

    @property
    def record_folder(self) -> Path:
        """Where this candidate's ``postprocessing.json`` belongs."""
        if isinstance(self.scored, EnsembleCrossValidation):
            return self.scored.folder
        return self.scored.experiment_folder

    @property
    def prediction_dir(self) -> Path:
        return self.scored.prediction_dir if isinstance(self.scored, EnsembleCrossValidation) else self.scored.output_folder

    def to_json(self) -> dict:
        summary = self.scored.evaluation.summary
        return {
            "name": self.name,
            "kind": "ensemble" if self.is_ensemble else "single",
            "members": [{"trainer": t, "plans": p, "configuration": c} for t, p, c in self.members],
            "foreground_mean_dice": self.dice,
            "per_class_dice": {label: values["dice"] for label, values in summary["per_class"].items()},
            "num_cases": summary["num_cases"],
            "crossval_results": str(self.prediction_dir),
        }


@dataclass
class FindBestResult:
    """What was decided and where it was written."""

    best: Candidate
    candidates: list[Candidate]
    skipped: list[dict]
    postprocessing: PostprocessingDecision
    postprocessing_file: Path
    information_file: Path
    instructions_file: Path
    instructions: str = ""
    information: dict = field(default_factory=dict)


def find_best_configuration(
    home: DataHome,
    dataset: str,
    configurations: Sequence[str] = DEFAULT_CONFIGURATIONS,
    trainers: Sequence[str] = DEFAULT_TRAINERS,
    plans_name: str = "plans",
    folds: Sequence[str | int] = ("0", "1", "2", "3", "4"),
    allow_ensembles: bool = True,
    num_processes: int = 1,
) -> FindBestResult:
    """Compare every trained (trainer, configuration) and pairwise ensemble; write the decision.

    Raises:
        FindBestError: no requested run has all requested folds validated (each reason listed).
    """
    results_folder, raw_folder = home.results_dataset(dataset), home.raw_dataset(dataset)
    folds = [str(fold) for fold in folds]
    singles, skipped = _cross_validate_runs(results_folder, raw_folder, configurations, trainers, plans_name,
                                            folds, num_processes)
    if not singles:
        reasons = "; ".join(f"{s['name']}: {s['reason']}" for s in skipped) or "nothing requested"
        raise FindBestError(f"{results_folder}: no run to compare with folds {' '.join(folds)} ({reasons}). "
                            "Train the folds first, or pass the trained ones with -c/-tr/-p/-f.")
    candidates = list(singles)
    if allow_ensembles:
        for first, second in itertools.combinations(singles, 2):
            try:
                scored = ensemble_crossvalidations(first.scored, second.scored, results_folder, num_processes)
            except EvaluationError as error:
                log.warning("ensemble of %s and %s skipped: %s", first.name, second.name, error)
                skipped.append({"name": f"ensemble___{first.name}___{second.name}", "kind": "ensemble",
                                "reason": str(error)})
                continue
            candidates.append(Candidate(scored, first.members + second.members))
    best = max(candidates, key=lambda c: c.dice if not math.isnan(c.dice) else -math.inf)  # first of equals wins
    for candidate in candidates:
        log.info("%-70s foreground mean Dice %.4f%s", candidate.name, candidate.dice,
                 "   <- best" if candidate is best else "")
    decision = determine_postprocessing(
        best.prediction_dir, lambda folder: best.scored.evaluate(folder, num_processes),
        best.prediction_dir / POSTPROCESSING_WORK_FOLDER, [int(v) for v in best.scored.evaluation.summary["labels"]],
        baseline=best.scored.evaluation, num_processes=num_processes)
    postprocessing_file = best.record_folder / POSTPROCESSING_FILE
    write_json_atomic(postprocessing_file, {**decision.to_json(), "determined_by": "find_best_configuration",
                                            "crossval_results": str(best.prediction_dir), "folds": folds})
    result = FindBestResult(best, candidates, skipped, decision, postprocessing_file,
                            results_folder / INFORMATION_FILE, results_folder / INSTRUCTIONS_FILE)
    result.instructions = instructions_text(result, home, results_folder.name, folds)
    result.information = _information(result, results_folder.name, folds, allow_ensembles)
    write_json_atomic(result.information_file, result.information)
    write_text_atomic(result.instructions_file, result.instructions)
    log.info("best: %s (Dice %.4f, %.4f after post-processing); instructions in %s", best.name, best.dice,
             decision.dice_after["foreground_mean"], result.instructions_file)
    return result


def _cross_validate_runs(results_folder: Path, raw_folder: Path, configurations: Sequence[str],
                         trainers: Sequence[str], plans_name: str, folds: list[str], num_processes: int
                         ) -> tuple[list[Candidate], list[dict]]:
    """Cross-validate each requested run that has every requested fold; list the others."""
    singles, skipped = [], []
    for trainer, configuration in itertools.product(trainers, configurations):
        name = f"{trainer}__{plans_name}__{configuration}"
        folder = results_folder / name
        if not folder.is_dir():
            log.info("%s: not trained, skipped", name)
            skipped.append({"name": name, "kind": "single", "reason": f"not trained ({folder} does not exist)"})
            continue
        try:
            crossval = cross_validate(folder, raw_folder, folds, num_processes)
        except EvaluationError as error:
            log.warning("%s skipped: %s", name, error)
            skipped.append({"name": name, "kind": "single", "reason": str(error)})
            continue
        if crossval.folds_missing:
            reason = (f"folds {' '.join(crossval.folds_missing)} have no finished validation; train them, or "
                      f"compare on the finished ones with -f {' '.join(crossval.folds_used)}")
            log.warning("%s skipped: %s", name, reason)
            skipped.append({"name": name, "kind": "single", "reason": reason})
            continue
        singles.append(Candidate(crossval, [(trainer, plans_name, configuration)]))
    return singles, skipped


def predict_command(home: DataHome, dataset: str, member: tuple[str, str, str], folds: Sequence[str],
                    output: str, for_ensemble: bool) -> str:
    """The ``medseg-auto predict`` line for one model (placeholders INPUT_FOLDER, OUTPUT...)."""
    trainer, plans_name, configuration = member
    words = ["medseg-auto", "predict", "-i", "INPUT_FOLDER", "-o", output, "-d", dataset, "-c", configuration,
             "-tr", trainer, "-p", plans_name, "-f", *folds]
    if for_ensemble:
        words += ["--save-probabilities", "--no-postprocessing"]
    return " ".join(shlex.quote(word) for word in words + ["--home", str(home.root)])


def instructions_text(result: FindBestResult, home: DataHome, dataset: str, folds: Sequence[str]) -> str:
    """The human-readable decision and the exact commands to run."""
    best, decision = result.best, result.postprocessing
    plan = decision.plan
    lines = [
        f"find_best_configuration for {dataset} (folds {' '.join(folds)}), {time.strftime('%Y-%m-%d %H:%M:%S')}",
        "",
        f"Best: {best.name}",
        f"  cross-validation foreground-mean Dice {best.dice:.4f}; after post-processing "
        f"{decision.dice_after['foreground_mean']:.4f}",
        f"  post-processing: largest component of the foreground union: {'yes' if plan.foreground_union else 'no'}; "
        f"largest component per label: {', '.join(map(str, plan.per_label)) or 'none'}",
        f"  ({result.postprocessing_file})",
        "",
        "Candidates (cross-validation foreground-mean Dice):",
        *[f"  {c.dice:.4f}  {c.name}" for c in sorted(result.candidates, key=lambda c: -_sortable(c.dice))],
        *[f"  skipped  {s['name']}: {s['reason']}" for s in result.skipped],
        "",
        "Run on new images (replace INPUT_FOLDER and OUTPUT_FOLDER):",
    ]
    if not best.is_ensemble:
        lines.append(predict_command(home, dataset, best.members[0], folds, "OUTPUT_FOLDER", for_ensemble=False))
        lines.append(f"# predict applies {result.postprocessing_file} by itself")
    else:
        outputs = [f"OUTPUT_FOLDER_MODEL{index + 1}" for index in range(len(best.members))]
        for member, output in zip(best.members, outputs):
            lines.append(predict_command(home, dataset, member, folds, output, for_ensemble=True))
        words = ["medseg-auto", "ensemble", "-i", *outputs, "-o", "OUTPUT_FOLDER",
                 "--postprocessing", str(result.postprocessing_file)]
        lines.append(" ".join(shlex.quote(word) for word in words))
    return "\n".join(lines) + "\n"


def _information(result: FindBestResult, dataset: str, folds: Sequence[str], allow_ensembles: bool) -> dict:
    command_lines = [line for line in result.instructions.splitlines() if line.startswith("medseg-auto ")]
    return json_safe({
        "dataset": dataset,
        "folds": list(folds),
        "ensembles_considered": allow_ensembles,
        "candidates": [candidate.to_json() for candidate in result.candidates],
        "skipped": result.skipped,
        "best": {
            **result.best.to_json(),
            "rule": "highest cross-validation foreground-mean Dice; on a tie the single model listed first wins",
        },
        "postprocessing": {**result.postprocessing.to_json(), "file": str(result.postprocessing_file)},
        "commands": command_lines,
    })


def _sortable(value: float) -> float:
    return -math.inf if math.isnan(value) else value
