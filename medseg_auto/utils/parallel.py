"""Parallel map over cases with a progress bar.

A process pool because the per-case work (reading, cropping, resampling) is numpy and
SimpleITK code that holds the GIL for long stretches. ``num_processes <= 1`` runs in-process,
which tests and debuggers prefer.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, Callable, Iterable, Sequence

from tqdm import tqdm


def default_num_processes() -> int:
    """All cores, since the work is CPU-bound; at least one."""
    return max(1, os.cpu_count() or 1)


def parallel_map(
    function: Callable[..., Any],
    argument_tuples: Sequence[tuple],
    num_processes: int,
    description: str,
    show_progress: bool = True,
) -> list[Any]:
    """Return ``[function(*args) for args in argument_tuples]``, in order, in parallel.

    The first exception raised by a worker is re-raised here after the pool shuts down, so a
    bad case stops the run with its own error message rather than a pool traceback.
    """
    results: list[Any] = [None] * len(argument_tuples)
    progress = tqdm(total=len(argument_tuples), desc=description, disable=not show_progress, unit="case")
    try:
        if num_processes <= 1 or len(argument_tuples) <= 1:
            for index, arguments in enumerate(argument_tuples):
                results[index] = function(*arguments)
                progress.update()
            return results
        with ProcessPoolExecutor(max_workers=min(num_processes, len(argument_tuples))) as pool:
            futures = {pool.submit(function, *arguments): index for index, arguments in enumerate(argument_tuples)}
            try:
                for future in as_completed(futures):
                    results[futures[future]] = future.result()
                    progress.update()
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
        return results
    finally:
        progress.close()


def chunked(items: Iterable[Any], size: int) -> list[list[Any]]:
    """Split ``items`` into lists of at most ``size``."""
    items = list(items)
    return [items[i : i + size] for i in range(0, len(items), size)]
