"""DDP with the gloo backend: two CPU processes under torchrun train one epoch together."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from medseg_auto.training.checkpoint import FINAL, load_checkpoint
from medseg_auto.training.distributed import DistributedContext, rank_batch_size


def test_batch_is_split_across_ranks_as_nnunet_does():
    shares = [rank_batch_size(9, DistributedContext(rank=r, world_size=4)) for r in range(4)]
    assert shares == [3, 2, 2, 2] and sum(shares) == 9


@pytest.mark.slow
def test_two_process_gloo_training(toy_home):
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "medseg_auto", "train", "Toy", "3d_fullres", "0", "--home", str(toy_home.root),
        "--epochs", "1", "--iters-per-epoch", "2", "--device", "cpu", "--seed", "0", "--num-workers", "0",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ})
    assert result.returncode == 0, result.stdout + result.stderr
    folder = toy_home.results / "Dataset901_Toy" / "Base__plans__3d_fullres" / "fold_0"
    payload = load_checkpoint(folder / FINAL)
    assert payload["current_epoch"] == 1
    log = (folder / "training_log.txt").read_text()
    assert "rank 0 of 2" in log and "1 sample(s) per rank" in log


def test_release_distributed_drops_the_ddp_wrapper_before_the_group_is_destroyed(tmp_path):
    """The DDP object (whose reducer holds the process group) must be gone before
    destroy_process_group, or gloo's threads die at interpreter exit (an abort, now and then)."""
    import types
    import weakref

    import torch
    import torch.distributed as dist

    from medseg_auto.training.distributed import wrap_network
    from medseg_auto.training.trainer import Trainer

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        network = torch.nn.Conv2d(1, 2, 3)
        holder = types.SimpleNamespace(model=wrap_network(network, torch.device("cpu"),
                                                          DistributedContext(rank=0, world_size=2)))
        wrapper = weakref.ref(holder.model)
        assert wrapper() is not None and holder.model is not network
        Trainer.release_distributed(holder)
        assert holder.model is network and wrapper() is None
    finally:
        dist.destroy_process_group()
