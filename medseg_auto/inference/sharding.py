"""Splitting one prediction job over several processes, jobs or machines.

Two ways, which combine:

- ``predict -num_parts N -part_id K`` (nnU-Net's flags and meaning): the sorted case list is
  split by stride, part K takes cases K, K+N, K+2N, ... Independent jobs (a SLURM array, one
  GPU each) need nothing but the same input, output and N.
- ``torchrun --nproc_per_node G -m medseg_auto predict ...``: every rank takes its share of
  the part (the strides multiply: rank r of part K is part ``K + N*r`` of ``N*G``), one GPU per
  rank when there are GPUs (gloo on CPU), and rank 0 merges the summaries after a barrier.

Every part writes its own cases atomically (as single-process prediction does) and its own
``summary_parts/part_K_of_N.json``; ``summary.json`` is written by torchrun's rank 0, or with
``-num_parts`` by whichever part finds all N part summaries present when it finishes (so a
rerun of a failed part completes the merge).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence, TypeVar

from medseg_auto.errors import MedsegError
from medseg_auto.utils.atomic import read_json

PARTS_FOLDER = "summary_parts"
T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """Part ``part_id`` of ``num_parts`` (``num_parts`` 1: everything)."""

    num_parts: int = 1
    part_id: int = 0

    def __post_init__(self) -> None:
        if self.num_parts < 1 or not 0 <= self.part_id < self.num_parts:
            raise MedsegError(f"-num_parts {self.num_parts} -part_id {self.part_id}: need num_parts >= 1 and "
                              f"0 <= part_id < num_parts")

    @property
    def enabled(self) -> bool:
        return self.num_parts > 1

    def within(self, sub_parts: int, sub_id: int) -> "Shard":
        """Part ``sub_id`` of ``sub_parts`` of this part's cases (torchrun ranks inside a
        ``-part_id``): every ``sub_parts``-th of them, which is part ``part_id + num_parts * sub_id``
        of ``num_parts * sub_parts``."""
        return Shard(self.num_parts * sub_parts, self.part_id + self.num_parts * sub_id)

    def select(self, case_ids: Sequence[T]) -> list[T]:
        """This part's share of ``case_ids``: sorted, then every ``num_parts``-th from ``part_id``."""
        return sorted(case_ids)[self.part_id :: self.num_parts]  # type: ignore[type-var]

    @property
    def file_name(self) -> str:
        return f"part_{self.part_id}_of_{self.num_parts}.json"


def part_summary_path(output_folder: Path, shard: Shard) -> Path:
    return output_folder / PARTS_FOLDER / shard.file_name


def present_parts(output_folder: Path, num_parts: int) -> list[Path] | None:
    """Every part summary of an ``num_parts``-way split, or None while one is missing."""
    paths = [part_summary_path(output_folder, Shard(num_parts, k)) for k in range(num_parts)]
    return paths if all(path.is_file() for path in paths) else None


def merge_summaries(parts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One ``summary.json`` from the parts' summaries.

    Case lists are concatenated and sorted, per-case tables (``seconds_per_case``, OOD scores,
    FDA donors) united; ``seconds`` is the slowest part's (the wall time of the whole job when
    the parts ran side by side); everything else is taken from the first part (the same in all).
    """
    if not parts:
        raise MedsegError("no part summaries to merge")
    merged = {key: value for key, value in parts[0].items() if key != "part"}
    for key in ("predicted", "skipped_existing"):
        merged[key] = sorted(case for part in parts for case in part.get(key, []))
    for key in ("failed", "seconds_per_case"):
        merged[key] = {case: value for part in parts for case, value in sorted(part.get(key, {}).items())}
    merged["seconds"] = max(float(part.get("seconds", 0.0)) for part in parts)
    ood = merged.get("ood")
    if isinstance(ood, dict) and "cases" in ood:
        cases = {case: entry for part in parts for case, entry in (part.get("ood") or {}).get("cases", {}).items()}
        merged["ood"] = {**ood, "cases": dict(sorted(cases.items())),
                         "flagged": sorted(case for case, entry in cases.items() if entry.get("flagged"))}
    fda = merged.get("fda")
    if isinstance(fda, dict) and "donors" in fda:
        donors = {case: names for part in parts for case, names in (part.get("fda") or {}).get("donors", {}).items()}
        merged["fda"] = {**fda, "donors": dict(sorted(donors.items()))}
    merged["parts"] = [{"part": part.get("part"), "predicted": len(part.get("predicted", [])),
                        "failed": len(part.get("failed", {})), "seconds": part.get("seconds")} for part in parts]
    return merged


def read_parts(paths: Sequence[Path]) -> list[dict[str, Any]]:
    return [read_json(path) for path in paths]
