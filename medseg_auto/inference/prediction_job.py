"""Where one ``predict`` process stands in a sharded or ``torchrun`` job (see :mod:`.sharding`).

``start_job`` reads torchrun's variables (none: a single process), joins the process group
(gloo on CPU, NCCL on GPUs, where rank r takes GPU ``LOCAL_RANK``), gives each rank its share
of the CPU threads and returns the rank's :class:`Shard` of the cases. ``finish`` writes the
summary: directly when the job is not split; otherwise this part's summary, then (torchrun:
after a barrier, on rank 0) the merged ``summary.json`` once every part's summary is there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from medseg_auto.inference.sharding import Shard, merge_summaries, part_summary_path, present_parts, read_parts
from medseg_auto.training.distributed import (
    DistributedContext, barrier, configure_threads, context_from_environment, destroy_process_group,
    init_process_group, resolve_device,
)
from medseg_auto.utils.atomic import write_json_atomic
from medseg_auto.utils.logging_setup import get_logger

log = get_logger("inference.job")


@dataclass
class PredictionJob:
    """This process's shard of the cases, its device and its torchrun context."""

    shard: Shard
    context: DistributedContext
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Writes what is written once per job (progress bars, the merged summary)."""
        return self.context.is_main

    @property
    def log_name(self) -> str:
        """Per-part log file names: parts started in the same second must not share one."""
        return f"predict_part{self.shard.part_id}of{self.shard.num_parts}" if self.shard.enabled else "predict"

    def describe(self) -> str:
        rank = (f"rank {self.context.rank} of {self.context.world_size}, {torch.get_num_threads()} thread(s), "
                if self.context.enabled else "")
        return f"{rank}{self.device}: part {self.shard.part_id} of {self.shard.num_parts} of the sorted cases"

    def finish(self, output_folder: Path, summary: dict[str, Any], write: Callable[[dict[str, Any]], None]) -> bool:
        """Hand the job's summary to ``write`` (which writes ``summary.json`` and its tables)
        when this process can: unsplit, or once all parts are done. Returns whether it did."""
        if not self.shard.enabled:
            write(summary)
            return True
        summary = {**summary, "part": {"part_id": self.shard.part_id, "num_parts": self.shard.num_parts}}
        write_json_atomic(part_summary_path(output_folder, self.shard), summary)
        barrier(self.context)
        merged = False
        if self.is_main:
            paths = present_parts(output_folder, self.shard.num_parts)
            if paths is None:
                log.info("part %d of %d done; summary.json is written when every part is done (rerun a part "
                         "that failed)", self.shard.part_id, self.shard.num_parts)
            else:
                write(merge_summaries(read_parts(paths)))
                log.info("all %d parts done: merged summary.json", self.shard.num_parts)
                merged = True
        barrier(self.context)
        destroy_process_group(self.context)
        return merged


def start_job(num_parts: int, part_id: int, requested_device: str) -> PredictionJob:
    """The shard, device and process group of this process (see the module docstring)."""
    shard = Shard(num_parts, part_id)
    context = context_from_environment()
    device = resolve_device(requested_device, context)
    if context.enabled:
        shard = shard.within(context.world_size, context.rank)
        configure_threads(device, context)
        init_process_group(device, context)
    return PredictionJob(shard, context, device)
