"""Cross-validation of an ensemble of two trained configurations: average their validation
probabilities case by case and score the argmax, so an ensemble is compared with single
models on exactly the same held-out cases (nnU-Net's ``ensemble_crossvalidations``).

The probabilities exist only when the folds were trained with ``--npz`` (each final
validation then writes ``fold_F/validation/CASE.npz``); without them an ensemble cannot be
scored, and :class:`MissingProbabilitiesError` says which run and how to get them.

An ensemble's record lives in ``results/DatasetNNN_Name/ensembles/ensemble___A___B/``:
``ensemble.json`` (members, folds) and ``crossval_results/`` (label files, ``summary.json``,
``metrics.csv``); ``find_best_configuration`` adds ``postprocessing.json`` when it wins.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from medseg_auto.evaluation.crossval import CROSSVAL_FOLDER, CrossValidation
from medseg_auto.evaluation.evaluate import EvaluationError, EvaluationResult
from medseg_auto.evaluation.writing import json_safe, write_evaluation
from medseg_auto.inference.ensemble_folders import ensemble_case
from medseg_auto.utils.atomic import write_json_atomic
from medseg_auto.utils.logging_setup import get_logger
from medseg_auto.utils.parallel import parallel_map

log = get_logger("evaluation.ensembles")

ENSEMBLES_FOLDER = "ensembles"
ENSEMBLE_RECORD = "ensemble.json"
MISSING_SHOWN = 5


class MissingProbabilitiesError(EvaluationError):
    """A member of an ensemble has no ``.npz`` validation probabilities."""


@dataclass
class EnsembleCrossValidation:
    """An ensemble's pooled cross-validation: ``folder`` is its record, ``evaluation`` the score."""

    members: tuple[CrossValidation, CrossValidation]
    folder: Path
    prediction_dir: Path
    evaluation: EvaluationResult

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def dice(self) -> float:
        return float(self.evaluation.summary["foreground_mean"]["dice"])

    def evaluate(self, prediction_dir: Path, num_processes: int = 1) -> EvaluationResult:
        """Score another folder of the same cases (used for post-processing)."""
        return self.members[0].evaluate(prediction_dir, num_processes)


def ensemble_name(first: CrossValidation, second: CrossValidation) -> str:
    """``ensemble___A___B`` with the experiments' folder names (nnU-Net's pattern)."""
    return f"ensemble___{first.name}___{second.name}"


def check_probabilities(crossval: CrossValidation) -> None:
    """Raise :class:`MissingProbabilitiesError` naming the run, the missing files and the fix."""
    missing = crossval.missing_probabilities()
    if not missing:
        return
    folds = sorted({crossval.case_folds[case] for case in missing})
    example = crossval.probability_file(missing[0])
    raise MissingProbabilitiesError(
        f"{crossval.experiment_folder}: {len(missing)} of {len(crossval.case_folds)} validation case(s) have no "
        f".npz probabilities (e.g. {example}), so it cannot be ensembled. Train folds {', '.join(folds)} with "
        "--npz (for a finished fold, 'medseg-auto train NAME CONFIG FOLD --continue --npz' with the fold's own "
        "--epochs repeats only its final validation), or pass --no-ensembles."
    )


def ensemble_crossvalidations(
    first: CrossValidation, second: CrossValidation, results_dataset_folder: Path, num_processes: int = 1
) -> EnsembleCrossValidation:
    """Average the validation probabilities of ``first`` and ``second``, write the label maps
    (geometry of ``first``'s predictions) and score them.

    Raises:
        MissingProbabilitiesError: a member lacks ``.npz`` files.
        EvaluationError: the members predicted different cases (other folds or splits).
    """
    if set(first.case_folds) != set(second.case_folds):
        only_first = sorted(set(first.case_folds) - set(second.case_folds))
        only_second = sorted(set(second.case_folds) - set(first.case_folds))
        raise EvaluationError(
            f"cannot ensemble {first.name} and {second.name}: their cross-validations cover different cases "
            f"(only in the first: {', '.join(only_first[:MISSING_SHOWN]) or 'none'}; only in the second: "
            f"{', '.join(only_second[:MISSING_SHOWN]) or 'none'}); train the same folds for both")
    check_probabilities(first)
    check_probabilities(second)
    folder = results_dataset_folder / ENSEMBLES_FOLDER / ensemble_name(first, second)
    prediction_dir = folder / CROSSVAL_FOLDER
    if prediction_dir.exists():  # derived files only; a new fold selection must leave no stale cases
        shutil.rmtree(prediction_dir)
    prediction_dir.mkdir(parents=True)
    arguments = [
        ([first.probability_file(case), second.probability_file(case)], first.prediction_files[case],
         prediction_dir / first.prediction_files[case].name)
        for case in sorted(first.case_folds)
    ]
    parallel_map(ensemble_case, arguments, num_processes, "ensemble", show_progress=False)
    evaluation = first.evaluate(prediction_dir, num_processes)
    evaluation.summary.update(experiment=folder.name, members=[first.name, second.name], folds=first.folds_used)
    write_evaluation(evaluation, prediction_dir)
    write_json_atomic(folder / ENSEMBLE_RECORD, json_safe({
        "members": [str(first.experiment_folder), str(second.experiment_folder)],
        "folds": first.folds_used,
        "foreground_mean_dice": evaluation.summary["foreground_mean"]["dice"],
    }))
    result = EnsembleCrossValidation((first, second), folder, prediction_dir, evaluation)
    log.info("%s: foreground mean Dice %.4f (members %.4f, %.4f)", result.name, result.dice, first.dice, second.dice)
    return result
