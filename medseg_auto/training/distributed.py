"""Where training runs: device choice, CPU threads, and DistributedDataParallel under ``torchrun``.

``torchrun --nproc_per_node N -m medseg_auto train ...`` starts N processes with ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` set; each joins one process group (NCCL on GPUs, gloo on
CPU), trains on its share of the plans' batch (nnU-Net's split: ``batch // N`` each, the first
``batch % N`` ranks one more) with its own data stream, and DDP averages the gradients. Rank 0
alone writes files (checkpoints, logs, progress) and runs the final validation. Without those
variables everything below is a no-op, so single-process training needs no special path.

Known difference from nnU-Net: with ``batch_dice`` the Dice sums are per rank (nnU-Net
all-gathers them); our planner sets ``batch_dice`` to false, where it makes no difference.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from medseg_auto.utils.devices import check_device_available
from medseg_auto.utils.logging_setup import get_logger

log = get_logger("training.distributed")


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in the job (``world_size`` 1: not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def context_from_environment() -> DistributedContext:
    """Read torchrun's variables (absent: a single process)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    return DistributedContext(
        rank=int(os.environ["RANK"]),
        world_size=world_size,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size))),
    )


def resolve_device(requested: str, context: DistributedContext) -> torch.device:
    """``auto``: CUDA if available, else CPU. Under DDP each process takes GPU ``LOCAL_RANK``."""
    if requested not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {requested!r}")
    check_device_available(requested)
    use_cuda = torch.cuda.is_available() if requested == "auto" else requested == "cuda"
    if not use_cuda:
        return torch.device("cpu")
    index = context.local_rank if context.enabled else 0
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def configure_threads(device: torch.device, context: DistributedContext) -> int:
    """Give each process its share of the cores for intra-op work; return the thread count.

    On CPU the convolutions are the bottleneck, so every core goes to them (divided among the
    processes of this machine); data-loading workers are separate processes that mostly wait.
    An explicit ``OMP_NUM_THREADS`` wins (``torchrun`` sets it to 1 per process; on a shared
    machine 1 thread avoids OpenMP threads spinning at barriers while others hold the cores).
    On GPU torch's default is kept.
    """
    if device.type != "cpu":
        return torch.get_num_threads()
    requested = os.environ.get("OMP_NUM_THREADS", "").strip()
    if requested.isdigit() and int(requested) > 0:
        threads = int(requested)
    else:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        threads = max(1, cores // max(1, context.local_world_size))
    torch.set_num_threads(threads)
    return threads


def init_process_group(device: torch.device, context: DistributedContext) -> None:
    """Join the process group (NCCL for CUDA, gloo for CPU) if distributed and not yet joined."""
    if not context.enabled or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, rank=context.rank, world_size=context.world_size)
    log.info("joined process group: rank %d of %d (%s)", context.rank, context.world_size, backend)


def destroy_process_group(context: DistributedContext) -> None:
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()


def rank_batch_size(global_batch_size: int, context: DistributedContext) -> int:
    """This rank's share of the plans' batch size (at least 1)."""
    share, remainder = divmod(global_batch_size, context.world_size)
    return max(1, share + int(context.rank < remainder))


def wrap_network(network: nn.Module, device: torch.device, context: DistributedContext) -> nn.Module:
    """DDP-wrap ``network`` when distributed; otherwise return it unchanged."""
    if not context.enabled:
        return network
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(network, device_ids=device_ids)


def unwrap_network(model: nn.Module) -> nn.Module:
    """The bare module of a DDP-wrapped ``model`` (``model`` itself otherwise)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def all_reduce_sum(tensor: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """Sum ``tensor`` over ranks, in place; returns it."""
    if context.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def average_gradients(parameters: Iterable[nn.Parameter], context: DistributedContext) -> None:
    """Average the gradients of parameters that DDP does not own (domain methods' own modules).

    Every rank must reduce the same tensors in the same order, so a missing gradient counts as 0.
    """
    if not context.enabled:
        return
    for parameter in parameters:
        if parameter.grad is None:
            parameter.grad = torch.zeros_like(parameter)
        dist.all_reduce(parameter.grad, op=dist.ReduceOp.SUM)
        parameter.grad.div_(context.world_size)


def barrier(context: DistributedContext) -> None:
    if context.enabled and dist.is_initialized():
        dist.barrier()
