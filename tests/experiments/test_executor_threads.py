"""A cell process of ``-j N`` trains with its share of the cores, not all of them.

The pool's initializer gives each worker a thread share; training then sets its threads
through ``configure_threads``, which must keep that share (before the fix, 2 cells on 2 cores
each took 2 threads: 4 busy threads on 2 cores).
"""

from __future__ import annotations

import torch

from medseg_auto.experiments.executor import _worker_start
from medseg_auto.training.distributed import DistributedContext, configure_threads


def test_training_in_a_pool_worker_keeps_the_workers_thread_share(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 4)
    try:
        _worker_start(1)
        assert configure_threads(torch.device("cpu"), DistributedContext()) == 1
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
