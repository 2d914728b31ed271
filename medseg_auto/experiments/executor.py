"""Where the cells of an experiment run: one after another, side by side, or on a SLURM cluster.

One interface for every experiment (data addition, leave one site out, method benchmarks): a
list of :class:`Task` (a picklable callable with a ``key``) goes in, a :class:`Outcome` with
each task's result or error comes out. Backends:

- ``local`` (default): in this process, in order.
- ``local -j N``: N worker processes (spawned, so CUDA and threads start clean), each with its
  share of the CPU cores for torch's intra-op threads.
- ``slurm``: one SLURM job per task through ``submitit`` (a job array, ``--slurm-array-parallelism``
  at a time), with ``--slurm-partition``, ``--gpus-per-cell``, ``--cpus-per-cell``, ``--mem-gb``,
  ``--timeout-min``. Logs and pickles go to ``<experiment>/submitit/``.
- ``submitit-local``: the same code path on this machine (submitit's local executor: one
  process per task); for testing the SLURM path without a cluster.

A task that raises is reported (key and error) and the others go on; the experiment's cells
keep their own resume markers (``done.json``), so a rerun runs exactly the failed and missing
cells whatever the backend.
"""

from __future__ import annotations

import os
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from medseg_auto.errors import MedsegError
from medseg_auto.utils.logging_setup import configure_logging, get_logger

log = get_logger("experiments.executor")
BACKENDS = ("local", "slurm", "submitit-local")


class Task(Protocol):
    """One unit of work: ``key`` names it in reports; calling it returns its (picklable) result.
    ``log_file`` (may be None) receives the log when the task runs in another process."""

    key: str
    log_file: Path | None

    def __call__(self) -> Any: ...


@dataclass
class ExecutorSettings:
    """How to run the tasks (see the module docstring). Resource fields apply to SLURM jobs;
    ``jobs`` is the number of local worker processes (``local``) or of SLURM jobs at a time."""

    backend: str = "local"
    jobs: int = 1
    slurm_partition: str | None = None
    gpus_per_cell: int = 0
    cpus_per_cell: int | None = None
    mem_gb: float | None = None
    timeout_min: int = 24 * 60
    slurm_array_parallelism: int | None = None
    slurm_extra: dict[str, Any] = field(default_factory=dict)  # e.g. {"slurm_account": "abc"}

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise MedsegError(f"--executor {self.backend!r}: choose one of {', '.join(BACKENDS)}")
        if self.jobs < 1:
            raise MedsegError(f"-j/--jobs must be at least 1, got {self.jobs}")


@dataclass
class Outcome:
    """``results``: key -> result of every task that finished; ``failures``: key -> error text."""

    results: dict[str, Any] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)


OnResult = Callable[[str, Any], None]


def run_tasks(tasks: Sequence[Task], settings: ExecutorSettings, work_folder: Path,
              on_result: OnResult | None = None) -> Outcome:
    """Run every task with the chosen backend; ``on_result(key, result)`` is called in this
    process as each one finishes (in completion order). Failures are collected, not raised."""
    if not tasks:
        return Outcome()
    keys = [task.key for task in tasks]
    if len(set(keys)) != len(keys):
        raise MedsegError("two tasks share a key: " + ", ".join(sorted({k for k in keys if keys.count(k) > 1})))
    if settings.backend == "local" and settings.jobs == 1:
        return _run_in_process(tasks, on_result)
    if settings.backend == "local":
        return _run_in_pool(tasks, settings.jobs, on_result)
    return _run_with_submitit(tasks, settings, work_folder, on_result)


def _finish(outcome: Outcome, key: str, result: Any, on_result: OnResult | None) -> None:
    outcome.results[key] = result
    if on_result is not None:
        on_result(key, result)


def _fail(outcome: Outcome, key: str, error: str) -> None:
    outcome.failures[key] = error
    log.error("cell %s failed: %s", key, error.strip().splitlines()[-1] if error.strip() else "unknown error")


def _run_in_process(tasks: Sequence[Task], on_result: OnResult | None) -> Outcome:
    outcome = Outcome()
    for task in tasks:
        try:
            result = task()
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception:  # reported per task; the others still run
            _fail(outcome, task.key, traceback.format_exc())
            continue
        _finish(outcome, task.key, result, on_result)
    return outcome


def threads_per_worker(workers: int) -> int:
    """Each of ``workers`` processes gets an equal share of this process's cores (at least 1)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // workers)


def _worker_start(threads: int) -> None:
    """Pool initializer: the thread share (torch reads OMP_NUM_THREADS, data-loading workers inherit it)."""
    import torch

    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)


def call_task(task: Task) -> Any:
    """Run ``task`` in a worker process (pool or SLURM job), logging to its own file."""
    if getattr(task, "log_file", None) is not None:
        configure_logging(task.log_file)
    return task()


def _run_in_pool(tasks: Sequence[Task], jobs: int, on_result: OnResult | None) -> Outcome:
    outcome = Outcome()
    workers = min(jobs, len(tasks))
    threads = threads_per_worker(workers)
    log.info("running %d cell(s) in %d local processes, %d thread(s) each", len(tasks), workers, threads)
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"), initializer=_worker_start,
                             initargs=(threads,)) as pool:
        futures = {pool.submit(call_task, task): task.key for task in tasks}
        for future in as_completed(futures):
            key = futures[future]
            try:
                result = future.result()
            except Exception as error:  # the worker's exception, pickled back
                _fail(outcome, key, "".join(traceback.format_exception(error)))
                continue
            _finish(outcome, key, result, on_result)
    return outcome


def _submitit_executor(settings: ExecutorSettings, folder: Path):
    try:
        import submitit
    except ImportError as error:
        raise MedsegError("--executor slurm needs the submitit package: pip install submitit "
                          "(or pip install 'medseg_auto[cluster]')") from error
    cluster = "local" if settings.backend == "submitit-local" else "slurm"
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    parameters: dict[str, Any] = {"timeout_min": settings.timeout_min, "gpus_per_node": settings.gpus_per_cell,
                                  "tasks_per_node": 1, "nodes": 1, "name": "medseg_auto_cell"}
    if settings.cpus_per_cell is not None:
        parameters["cpus_per_task"] = settings.cpus_per_cell
    if settings.mem_gb is not None:
        parameters["mem_gb"] = settings.mem_gb
    if cluster == "slurm":
        if settings.slurm_partition:
            parameters["slurm_partition"] = settings.slurm_partition
        parameters["slurm_array_parallelism"] = settings.slurm_array_parallelism or max(settings.jobs, 1)
        parameters.update(settings.slurm_extra)
    executor.update_parameters(**parameters)
    return executor


def _run_with_submitit(tasks: Sequence[Task], settings: ExecutorSettings, work_folder: Path,
                       on_result: OnResult | None) -> Outcome:
    folder = work_folder / "submitit"
    executor = _submitit_executor(settings, folder)
    with executor.batch():  # one job array on SLURM
        jobs = [(task.key, executor.submit(call_task, task)) for task in tasks]
    log.info("submitted %d cell(s) with submitit (%s); job logs in %s: %s", len(jobs), settings.backend, folder,
             ", ".join(str(job.job_id) for _, job in jobs))
    from submitit.helpers import as_completed as jobs_as_completed

    keys = {job.job_id: key for key, job in jobs}
    outcome = Outcome()
    for job in jobs_as_completed([job for _, job in jobs], poll_frequency=5):
        key = keys[job.job_id]
        try:
            result = job.result()
        except Exception as error:  # submitit's FailedJobError carries the job's traceback
            _fail(outcome, key, f"{error}\n(job {job.job_id}, logs in {folder})")
            continue
        _finish(outcome, key, result, on_result)
    return outcome
