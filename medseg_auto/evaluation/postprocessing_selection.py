"""Decide post-processing on cross-validation predictions, by nnU-Net's rule
(``postprocessing/remove_connected_components.py::determine_postprocessing``).

Why decide on the cross-validation: removing all but the largest connected component helps
when a structure is one blob and the network adds small false-positive islands, and hurts when
a structure really has several parts; only the scores on held-out cases tell which is true for
a dataset. The rule, in order:

1. "Largest component of the foreground union" (all foreground labels together) is kept if the
   foreground-mean Dice improves **and no class's Dice gets worse**.
2. Then, for each label (only with more than one label; with one, step 1 already did it),
   "largest component of that label" is kept if that label's Dice improves. Each kept step
   becomes the baseline of the next, as in nnU-Net.

"Improves" is strictly greater; a NaN Dice (class absent everywhere) never improves and never
gets worse. Each candidate's predictions and scores are written to ``work_dir/<candidate>/``
so the decision can be checked afterwards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from medseg_auto.dataset.image_io import is_supported, read_segmentation, write_segmentation
from medseg_auto.evaluation.evaluate import EvaluationResult
from medseg_auto.evaluation.writing import json_safe, write_evaluation
from medseg_auto.inference.postprocessing import PostprocessingPlan, apply_postprocessing
from medseg_auto.utils.atomic import atomic_path
from medseg_auto.utils.logging_setup import get_logger
from medseg_auto.utils.parallel import parallel_map

log = get_logger("evaluation.postprocessing_selection")

#: Scores a folder of predictions of the cases under study (e.g. ``CrossValidation.evaluate``).
Evaluator = Callable[[Path], EvaluationResult]


@dataclass
class PostprocessingDecision:
    """The chosen plan, the Dice before and after it, and every candidate that was tried.

    ``dice_before``/``dice_after``: ``{"foreground_mean": float, "per_class": {label: float}}``.
    ``steps``: one dict per candidate with its name, the plan it would give, the Dice of the
    baseline and of the candidate, and whether it was kept.
    """

    plan: PostprocessingPlan
    dice_before: dict
    dice_after: dict
    steps: list[dict] = field(default_factory=list)
    prediction_dir: Path | None = None

    def to_json(self) -> dict:
        """The plan's own keys (what ``predict`` reads) plus the evidence, JSON-safe."""
        return json_safe({
            **self.plan.to_json(),
            "dice_before": self.dice_before,
            "dice_after": self.dice_after,
            "steps": self.steps,
            "postprocessed_predictions": str(self.prediction_dir) if self.prediction_dir else None,
        })


def dice_numbers(result: EvaluationResult) -> dict:
    """``{"foreground_mean": Dice, "per_class": {label: Dice}}`` of one evaluation."""
    summary = result.summary
    return {
        "foreground_mean": float(summary["foreground_mean"]["dice"]),
        "per_class": {label: float(values["dice"]) for label, values in summary["per_class"].items()},
    }


def determine_postprocessing(
    prediction_dir: str | Path,
    evaluate: Evaluator,
    work_dir: str | Path,
    labels: Sequence[int],
    baseline: EvaluationResult | None = None,
    num_processes: int = 1,
) -> PostprocessingDecision:
    """Apply nnU-Net's rule (module docstring) to the label files in ``prediction_dir``.

    Args:
        evaluate: scores a folder holding the same cases (same references, same sites).
        work_dir: where candidate folders ``foreground_union/`` and ``label_N/`` go.
        labels: the foreground labels of the dataset.
        baseline: the evaluation of ``prediction_dir`` if already done (else computed).
    """
    prediction_dir, work_dir = Path(prediction_dir), Path(work_dir)
    baseline = baseline if baseline is not None else evaluate(prediction_dir)
    before = dice_numbers(baseline)
    plan, current, current_dir, steps = PostprocessingPlan(), before, prediction_dir, []

    candidate_plan = PostprocessingPlan(foreground_union=True)
    result, folder = _try(candidate_plan, PostprocessingPlan(foreground_union=True), current_dir,
                          work_dir / "foreground_union", evaluate, num_processes)
    after = dice_numbers(result)
    worse = [label for label, value in after["per_class"].items() if value < current["per_class"][label]]
    keep = after["foreground_mean"] > current["foreground_mean"] and not worse
    steps.append(_step("largest component of the foreground union", candidate_plan, current, after, keep,
                       f"classes worse: {', '.join(worse)}" if worse else ""))
    if keep:
        plan, current, current_dir = candidate_plan, after, folder

    foreground = sorted(int(label) for label in labels if int(label) != 0)
    for label in foreground if len(foreground) > 1 else []:
        candidate_plan = PostprocessingPlan(plan.foreground_union, [*plan.per_label, label])
        result, folder = _try(candidate_plan, PostprocessingPlan(per_label=[label]), current_dir,
                              work_dir / f"label_{label}", evaluate, num_processes)
        after = dice_numbers(result)
        key = str(label)
        keep = after["per_class"].get(key, math.nan) > current["per_class"].get(key, math.nan)
        steps.append(_step(f"largest component of label {label}", candidate_plan, current, after, keep))
        if keep:
            plan, current, current_dir = candidate_plan, after, folder

    for step in steps:
        log.info("post-processing candidate '%s': foreground mean Dice %.4f -> %.4f: %s", step["candidate"],
                 step["dice_before"]["foreground_mean"], step["dice_after"]["foreground_mean"],
                 "kept" if step["kept"] else "not kept")
    log.info("post-processing chosen: %s (foreground mean Dice %.4f -> %.4f)", plan.to_json(),
             before["foreground_mean"], current["foreground_mean"])
    return PostprocessingDecision(plan, before, current, steps, None if plan.is_identity else current_dir)


def postprocess_folder(
    source_dir: Path, output_dir: Path, plan: PostprocessingPlan, num_processes: int = 1
) -> list[Path]:
    """Write ``plan`` applied to every label file of ``source_dir`` into ``output_dir`` (same
    names, same geometry); return the written files."""
    output_dir.mkdir(parents=True, exist_ok=True)
    sources = sorted(p for p in source_dir.iterdir() if p.is_file() and not p.name.startswith(".") and is_supported(p))
    arguments = [(source, output_dir / source.name, plan.to_json()) for source in sources]
    parallel_map(_postprocess_file, arguments, num_processes, "post-processing", show_progress=False)
    return [target for _, target, _ in arguments]


def _try(full_plan: PostprocessingPlan, step_plan: PostprocessingPlan, source_dir: Path, output_dir: Path,
         evaluate: Evaluator, num_processes: int) -> tuple[EvaluationResult, Path]:
    """Apply ``step_plan`` to the current predictions and score them (``full_plan`` is what the
    folder amounts to from the raw predictions; it is only recorded)."""
    postprocess_folder(source_dir, output_dir, step_plan, num_processes)
    result = evaluate(output_dir)
    result.summary["postprocessing"] = full_plan.to_json()
    write_evaluation(result, output_dir)
    return result, output_dir


def _step(name: str, plan: PostprocessingPlan, before: dict, after: dict, kept: bool, note: str = "") -> dict:
    return {"candidate": name, "plan": plan.to_json(), "dice_before": before, "dice_after": after, "kept": kept,
            **({"note": note} if note else {})}


def _postprocess_file(source: Path, target: Path, plan_json: dict) -> None:
    """Worker: read, post-process and write one label map atomically."""
    segmentation, geometry = read_segmentation(source)
    processed = apply_postprocessing(segmentation, PostprocessingPlan.from_json(plan_json))
    with atomic_path(target, suffix=geometry.file_ending) as temporary:
        write_segmentation(processed, geometry, temporary)
