"""Cross-validation of one trained ``TRAINER__PLANS__CONFIG``: the validation predictions of all
its folds gathered into one folder and scored as one evaluation (nnU-Net's
``crossval_results_folds_*``).

Why gather: each fold validated only its own fifth of the cases, so no single fold's summary
says how the configuration does on the whole dataset; pooled, every training case is scored
exactly once, which is what ``find_best_configuration`` compares and what post-processing is
decided on. The predictions are copied (hard-linked where the file system allows) into
``crossval_results/`` so that later steps (post-processing candidates, the report) have one
folder of label files, and scored against the raw ``labelsTr`` files of the predicted cases
only, so that a missing fold shrinks the evaluation instead of failing it (the missing folds
are logged and written into ``summary.json``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from medseg_auto.dataset.dataset_json import DatasetSpec
from medseg_auto.dataset.image_io import file_ending_of, is_supported
from medseg_auto.evaluation.evaluate import EvaluationError, EvaluationResult, evaluate_folders
from medseg_auto.evaluation.writing import write_evaluation
from medseg_auto.utils.atomic import TEMP_PREFIX, read_json
from medseg_auto.utils.logging_setup import get_logger

log = get_logger("evaluation.crossval")

CROSSVAL_FOLDER = "crossval_results"
VALIDATION_FOLDER = "validation"
DEFAULT_FOLDS = ("0", "1", "2", "3", "4")
PROBABILITIES_ENDING = ".npz"


@dataclass
class CrossValidation:
    """The gathered validation predictions of one experiment and their pooled evaluation.

    ``case_folds``: case id -> the fold whose validation predicted it. ``prediction_files``:
    case id -> its label file inside ``output_folder``. ``folds_missing``: requested folds
    without a finished final validation (no ``fold_F/validation/summary.json``).
    """

    experiment_folder: Path
    output_folder: Path
    folds_used: list[str]
    folds_missing: list[str]
    case_folds: dict[str, str]
    prediction_files: dict[str, Path]
    evaluation: EvaluationResult
    spec: DatasetSpec
    sites: dict[str, str] | None = field(default=None)

    @property
    def name(self) -> str:
        return self.experiment_folder.name

    @property
    def dice(self) -> float:
        """Foreground-mean Dice over all gathered cases (the number configurations are ranked by)."""
        return float(self.evaluation.summary["foreground_mean"]["dice"])

    def probability_file(self, case_id: str) -> Path:
        """``fold_F/validation/CASE.npz`` (exists only when the fold was trained with ``--npz``)."""
        return self.experiment_folder / f"fold_{self.case_folds[case_id]}" / VALIDATION_FOLDER / (
            case_id + PROBABILITIES_ENDING)

    def missing_probabilities(self) -> list[str]:
        """Case ids whose ``.npz`` probabilities are absent."""
        return [case_id for case_id in sorted(self.case_folds) if not self.probability_file(case_id).is_file()]

    def evaluate(self, prediction_dir: Path, num_processes: int = 1) -> EvaluationResult:
        """Score another folder of predictions of the same cases the same way (post-processing,
        ensembles)."""
        return evaluate_predicted_cases(prediction_dir, self.spec, sorted(self.case_folds), self.sites,
                                        num_processes)


def cross_validate(
    experiment_folder: str | Path,
    raw_dataset_folder: str | Path,
    folds: Sequence[str | int] = DEFAULT_FOLDS,
    num_processes: int = 1,
) -> CrossValidation:
    """Gather ``fold_F/validation/`` of ``folds`` into ``experiment_folder/crossval_results/``,
    score it against ``raw_dataset_folder/labelsTr`` and write ``summary.json``/``metrics.csv``.

    Raises:
        EvaluationError: no requested fold has a finished validation, or two folds predicted
            the same case (overlapping splits, e.g. fold ``all`` listed with numbered folds).
    """
    experiment_folder, raw_dataset_folder = Path(experiment_folder), Path(raw_dataset_folder)
    spec = DatasetSpec.load(raw_dataset_folder)
    folds = [str(fold) for fold in folds]
    used, missing = _finished_folds(experiment_folder, folds)
    if not used:
        raise EvaluationError(
            f"{experiment_folder}: none of folds {', '.join(folds)} has a finished validation "
            f"(fold_F/{VALIDATION_FOLDER}/summary.json); train them first or pick others with -f"
        )
    if missing:
        log.warning("%s: folds %s have no finished validation and are left out of the cross-validation",
                    experiment_folder.name, ", ".join(missing))
    files, case_folds = _validation_files(experiment_folder, used, spec.file_ending)
    output = experiment_folder / CROSSVAL_FOLDER
    prediction_files = _gather(files, output)
    sites = spec.sites or None
    evaluation = evaluate_predicted_cases(output, spec, sorted(prediction_files), sites, num_processes)
    evaluation.summary.update(
        experiment=experiment_folder.name, folds=used, folds_missing=missing, case_folds=case_folds,
    )
    write_evaluation(evaluation, output)
    log.info("%s: cross-validation of folds %s (%d cases): foreground mean Dice %.4f%s", experiment_folder.name,
             ", ".join(used), len(case_folds), evaluation.summary["foreground_mean"]["dice"],
             f"; missing folds {', '.join(missing)}" if missing else "")
    return CrossValidation(experiment_folder, output, used, missing, case_folds, prediction_files, evaluation,
                           spec, sites)


def evaluate_predicted_cases(
    prediction_dir: Path,
    spec: DatasetSpec,
    case_ids: Sequence[str],
    sites: dict[str, str] | None = None,
    num_processes: int = 1,
) -> EvaluationResult:
    """:func:`evaluate_folders` of ``prediction_dir`` against only ``case_ids`` of the raw
    ``labelsTr`` (through a temporary folder of links to those reference files)."""
    labels_folder = spec.folder / "labelsTr"
    with tempfile.TemporaryDirectory(prefix="medseg_references_") as temporary:
        subset = Path(temporary)
        for case_id in case_ids:
            reference = labels_folder / f"{case_id}{spec.file_ending}"
            if not reference.is_file():
                raise EvaluationError(f"{reference}: reference label file missing for predicted case '{case_id}' "
                                      f"(was {spec.folder} changed after training?)")
            _link_or_copy(reference, subset / reference.name, symbolic=True)
        result = evaluate_folders(prediction_dir, subset, spec=spec, sites=sites, num_processes=num_processes,
                                  show_progress=False)
    result.gt_dir = labels_folder
    return result


def _finished_folds(experiment_folder: Path, folds: list[str]) -> tuple[list[str], list[str]]:
    """(folds with a usable validation summary, folds without one), each in the given order."""
    used, missing = [], []
    for fold in folds:
        summary_path = experiment_folder / f"fold_{fold}" / VALIDATION_FOLDER / "summary.json"
        finished = summary_path.is_file() and not read_json(summary_path).get("skipped", False)
        (used if finished else missing).append(fold)
    return used, missing


def _validation_files(experiment_folder: Path, folds: list[str], file_ending: str
                      ) -> tuple[dict[str, Path], dict[str, str]]:
    """(case id -> predicted label file, case id -> fold), refusing a case predicted twice."""
    files: dict[str, Path] = {}
    case_folds: dict[str, str] = {}
    for fold in folds:
        folder = experiment_folder / f"fold_{fold}" / VALIDATION_FOLDER
        for path in sorted(folder.iterdir()):
            if not path.is_file() or path.name.startswith(".") or not is_supported(path):
                continue
            ending = file_ending if path.name.endswith(file_ending) else file_ending_of(path)
            case_id = path.name[: -len(ending)]
            if case_id in case_folds:
                raise EvaluationError(
                    f"{path}: case '{case_id}' was also predicted by fold {case_folds[case_id]}; the folds "
                    "overlap (do not combine fold 'all' with numbered folds)")
            files[case_id], case_folds[case_id] = path, fold
    return files, dict(sorted(case_folds.items()))


def _gather(files: dict[str, Path], output: Path) -> dict[str, Path]:
    """Put ``files`` into ``output`` under their own names, removing label files of earlier
    gatherings that are not among them (so a smaller fold selection leaves no stale cases)."""
    output.mkdir(parents=True, exist_ok=True)
    wanted = {path.name for path in files.values()}
    for stale in output.iterdir():
        if stale.is_file() and (is_supported(stale) or stale.name.startswith(TEMP_PREFIX)) and stale.name not in wanted:
            stale.unlink()
    gathered = {}
    for case_id, source in sorted(files.items()):
        target = output / source.name
        _link_or_copy(source, target, symbolic=False)
        gathered[case_id] = target
    return gathered


def _link_or_copy(source: Path, target: Path, symbolic: bool) -> None:
    """Replace ``target`` by a link to ``source`` (symbolic, or hard), copying where links fail.

    The replacement goes through a temporary name so a reader never sees a half-copied file.
    """
    temporary = target.with_name(TEMP_PREFIX + target.name)
    temporary.unlink(missing_ok=True)
    try:
        if symbolic:
            os.symlink(source.resolve(), temporary)
        else:
            os.link(source, temporary)
    except OSError:
        shutil.copy2(source, temporary)
    os.replace(temporary, target)
