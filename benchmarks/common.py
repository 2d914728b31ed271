"""Pieces every benchmark shares: measuring a command, locating data and tools, writing tables.

Benchmarks compare whole command-line runs (ours against nnU-Net v2), so the unit of
measurement is one child process *and everything it starts*: nnU-Net and we both fan out into
worker processes, and a parent-only measurement would miss most of the memory. A background
thread samples the tree (default every 50 ms) and keeps two peaks:

- summed RSS: every process's resident memory added up, as ``top`` shows it. Pages shared
  between processes (libraries, copy-on-write memory after ``fork``) count once per process,
  so this is an upper bound, and it charges forked workers for their parent's memory. It is
  the headline number because the reference notes report it (nnU-Net: 1.9 GB).
- summed PSS: each shared page divided among the processes sharing it, so the sum is the
  physical memory the tree really occupies. Sampled every 0.5 s only (it is costlier to read).

CPU time comes from ``wait4`` and covers every descendant that was waited for.

Nothing here imports ``medseg_auto`` or ``nnunetv2``: both run as separate programs, each in
its own virtual environment, so neither tool's imports distort the other's numbers.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import psutil

MIB = 1024 * 1024
DEFAULT_SAMPLE_INTERVAL_S = 0.05
DEFAULT_PSS_EVERY = 10  # PSS every 10th sample: every 0.5 s at the default interval
NNUNET_VENV_NAME = ".venv-nnunet"
NNUNET_INSTALL_HINT = (
    "python3 -m venv .venv-nnunet && .venv-nnunet/bin/pip install torch==2.13.0 "
    "&& .venv-nnunet/bin/pip install torch==2.13.0 nnunetv2   (see benchmarks/README.md)"
)


class BenchmarkError(RuntimeError):
    """A benchmark cannot run as asked; the message names the missing piece and the fix."""


@dataclass(frozen=True)
class Measurement:
    """One measured command run.

    ``peak_rss_mib``: peak of the summed RSS of the process and all its live descendants.
    ``peak_pss_mib``: peak of their summed PSS, sampled less often (``None`` if unavailable):
    shared pages counted once overall, so forked workers are not charged for their parent.
    ``cpu_s``: user + system CPU seconds of the process and its waited-for descendants.
    ``peak_processes``: most processes alive in the tree at one sample (checks ``-np``).
    """

    wall_s: float
    peak_rss_mib: float
    peak_pss_mib: float | None
    cpu_s: float
    peak_processes: int
    returncode: int
    log_path: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class ProcessTreeSampler(threading.Thread):
    """Samples the memory of a process tree until :meth:`stop`; keeps the peaks.

    A thread rather than a second process, so the sampler's own memory is not part of the
    tree it measures and it needs no inter-process plumbing. RSS is read every sample (it
    costs microseconds); PSS only every ``pss_every``-th sample, since the kernel walks every
    mapping to compute it (about 3 ms for a process that imported torch).
    """

    def __init__(self, root_pid: int, interval_s: float = DEFAULT_SAMPLE_INTERVAL_S,
                 pss_every: int = DEFAULT_PSS_EVERY) -> None:
        super().__init__(name=f"memory-sampler-{root_pid}", daemon=True)
        self.root_pid = root_pid
        self.interval_s = interval_s
        self.pss_every = pss_every if pss_supported() else 0
        self.peak_rss_bytes = 0
        self.peak_pss_bytes: int | None = None
        self.peak_processes = 0
        self._stopped = threading.Event()

    def run(self) -> None:
        try:
            root = psutil.Process(self.root_pid)
        except psutil.NoSuchProcess:
            return
        sample_index = 0
        while not self._stopped.is_set():
            with_pss = self.pss_every > 0 and sample_index % self.pss_every == 0
            rss_bytes, pss_bytes, processes = tree_memory(root, with_pss)
            self.peak_rss_bytes = max(self.peak_rss_bytes, rss_bytes)
            self.peak_processes = max(self.peak_processes, processes)
            if pss_bytes is not None:
                self.peak_pss_bytes = max(self.peak_pss_bytes or 0, pss_bytes)
            sample_index += 1
            self._stopped.wait(self.interval_s)

    def stop(self) -> None:
        self._stopped.set()
        self.join()


def tree_memory(root: psutil.Process, with_pss: bool = False) -> tuple[int, int | None, int]:
    """Summed RSS and (optionally) summed PSS in bytes, and the number of live processes in
    ``root``'s tree.

    Processes exit between listing and reading; those are skipped rather than failing the
    sample, since a process that is gone holds no memory. PSS is ``None`` unless asked for.
    """
    try:
        members = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, None, 0
    rss_total, pss_total, alive = 0, 0, 0
    for process in members:
        try:
            rss_total += process.memory_info().rss
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            continue
        alive += 1
        if with_pss:
            pss_total += _pss_bytes(process.pid)
    return rss_total, pss_total if with_pss else None, alive


def pss_supported() -> bool:
    """Whether the kernel offers ``/proc/PID/smaps_rollup`` (Linux 4.14 and later)."""
    return Path("/proc/self/smaps_rollup").exists()


def _pss_bytes(pid: int) -> int:
    """Proportional set size of one process; 0 when it has exited meanwhile."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            for line in rollup:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def measure_command(
    cmd: Sequence[str | os.PathLike[str]],
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    log_path: str | os.PathLike[str] | None = None,
    interval_s: float = DEFAULT_SAMPLE_INTERVAL_S,
    pss_every: int = DEFAULT_PSS_EVERY,
) -> Measurement:
    """Run ``cmd`` to completion and measure wall time, peak tree memory and CPU time.

    ``env`` holds variables set *on top of* the current environment (the usual need is to
    add a few, and forgetting ``PATH`` should not break a run). stdout and stderr go to
    ``log_path`` (default: a new temporary file) so that a tool's progress output neither
    slows the run through a terminal nor mixes with the benchmark's own output. A non-zero
    exit is reported, not raised: the caller decides whether a failed run aborts the
    benchmark.
    """
    log_file = Path(log_path) if log_path is not None else _temporary_log(Path(cmd[0]).name)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    child_env = {**os.environ, **(env or {})}
    with open(log_file, "wb") as log:
        start = time.perf_counter()
        process = subprocess.Popen([str(part) for part in cmd], env=child_env, cwd=cwd,
                                   stdout=log, stderr=subprocess.STDOUT)
        sampler = ProcessTreeSampler(process.pid, interval_s, pss_every)
        sampler.start()
        returncode, cpu_s = _wait_with_usage(process)
        wall_s = time.perf_counter() - start
        sampler.stop()
    return Measurement(
        wall_s=wall_s,
        peak_rss_mib=sampler.peak_rss_bytes / MIB,
        peak_pss_mib=None if sampler.peak_pss_bytes is None else sampler.peak_pss_bytes / MIB,
        cpu_s=cpu_s,
        peak_processes=sampler.peak_processes,
        returncode=returncode,
        log_path=str(log_file),
    )


def _temporary_log(program: str) -> Path:
    handle, name = tempfile.mkstemp(prefix=f"{program}_", suffix=".log")
    os.close(handle)
    return Path(name)


def _wait_with_usage(process: subprocess.Popen[bytes]) -> tuple[int, float]:
    """Reap ``process`` with ``wait4`` to get its exit code and its tree's CPU seconds.

    ``Popen.wait`` discards the resource usage; ``wait4`` returns it, including every
    descendant the child itself waited for (worker pools join their workers).
    """
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, usage.ru_utime + usage.ru_stime


def busy_machine_warning(threshold: float = 0.5) -> str | None:
    """A warning when other work is running (1-minute load average per core above
    ``threshold``): timings taken on a busy machine measure the neighbours too."""
    load_per_core = os.getloadavg()[0] / (os.cpu_count() or 1)
    if load_per_core <= threshold:
        return None
    return (f"warning: the machine is busy (1-minute load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores); "
            "wall times will be inflated, rerun when it is idle")


def log_tail(log_path: str | os.PathLike[str], lines: int = 30) -> str:
    """The last lines of a log, to show why a measured command failed."""
    text = Path(log_path).read_text(errors="replace")
    return "\n".join(text.splitlines()[-lines:])


# --- locations ---------------------------------------------------------------------------

def repo_root() -> Path:
    """The checkout this file belongs to (``benchmarks/`` lives at its top level)."""
    return Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    """``../shared`` next to the checkout: data, reference results, notes (not in git)."""
    return repo_root().parent / "shared"


def shared_data_dir(name: str | None = None) -> Path:
    """``../shared/data`` (or one dataset in it); raises when absent.

    The data are not in the repository (see ``../shared/data/README.md``), so every
    benchmark finds them the same way and fails with the same explanation.
    """
    folder = shared_dir() / "data"
    if name is not None:
        folder = folder / name
    if not folder.is_dir():
        raise BenchmarkError(f"{folder}: data folder not found; benchmarks expect ../shared/data next to the "
                             "checkout, or pass the data folder explicitly (--data)")
    return folder


def shared_reference_dir() -> Path:
    """``../shared/reference``: what nnU-Net v2 produced on the shared data."""
    return shared_dir() / "reference"


def nnunet_venv(path: str | os.PathLike[str] | None = None) -> Path:
    """The virtual environment holding nnunetv2 (default ``.venv-nnunet`` in the checkout)."""
    venv = Path(path) if path is not None else repo_root() / NNUNET_VENV_NAME
    if not venv.is_absolute():
        venv = repo_root() / venv
    if not (venv / "bin" / "python").exists():
        raise BenchmarkError(f"{venv}: no nnU-Net virtual environment there; create it with:\n  {NNUNET_INSTALL_HINT}")
    return venv


def nnunet_command(venv: Path, program: str) -> Path:
    """Path of one ``nnUNetv2_*`` entry point inside ``venv``; raises when nnunetv2 is missing."""
    executable = venv / "bin" / program
    if not executable.exists():
        raise BenchmarkError(f"{executable} not found: nnunetv2 is not installed in {venv}; run:\n  "
                             f"{NNUNET_INSTALL_HINT}")
    return executable


def ours_command() -> list[str]:
    """How to start ``medseg-auto``: the project venv's entry point.

    Falls back to ``python -m medseg_auto`` with the project venv's interpreter, so a
    checkout whose entry-point script is stale still runs the current code.
    """
    venv_bin = repo_root() / ".venv" / "bin"
    if (venv_bin / "medseg-auto").exists():
        return [str(venv_bin / "medseg-auto")]
    return [str(ours_python()), "-m", "medseg_auto"]


def ours_python() -> Path:
    """The project venv's interpreter, else the one running this benchmark when it can import
    ``medseg_auto`` (a git worktree without its own ``.venv``, run with a shared venv)."""
    python = repo_root() / ".venv" / "bin" / "python"
    if python.exists():
        return python
    if importlib.util.find_spec("medseg_auto") is not None:
        return Path(sys.executable)
    raise BenchmarkError(f"{python.parent.parent}: project venv not found; create it and 'pip install -e .' there")


def python_package_version(venv: Path, package: str) -> str:
    """Installed version of ``package`` in ``venv`` (``"?"`` when unknown, also when ``venv`` has
    no interpreter: a worktree run with a shared venv), for result metadata."""
    if not (venv / "bin" / "python").exists():
        return "?"
    result = subprocess.run(
        [str(venv / "bin" / "python"), "-c",
         f"import importlib.metadata as m; print(m.version({package!r}))"],
        capture_output=True, text=True, check=False,
    )
    return result.stdout.strip() if result.returncode == 0 else "?"


# --- results -----------------------------------------------------------------------------

def format_cell(value: Any) -> str:
    """Numbers to a fixed, readable precision; ``None`` as an empty cell."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """A GitHub-flavoured Markdown table of ``rows`` restricted to ``columns``.

    Markdown serves both the terminal (it is aligned here) and reports pasted into docs.
    """
    cells = [[format_cell(row.get(column)) for column in columns] for row in rows]
    widths = [max([len(column), *(len(line[index]) for line in cells)]) for index, column in enumerate(columns)]

    def line(values: Iterable[str]) -> str:
        return "| " + " | ".join(value.ljust(width) for value, width in zip(values, widths)) + " |"

    separator = "|" + "|".join("-" * (width + 2) for width in widths) + "|"
    return "\n".join([line(columns), separator, *(line(values) for values in cells)])


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``, or ``None`` when either side is missing or zero."""
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def write_results(
    folder: str | os.PathLike[str],
    name: str,
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Write ``rows`` as ``NAME.json`` (rows plus metadata), ``NAME.csv`` and ``NAME.md``.

    JSON keeps everything for later comparison across machines and versions; CSV and
    Markdown hold just ``columns`` for spreadsheets and reports.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {suffix: folder / f"{name}.{suffix}" for suffix in ("json", "csv", "md")}
    payload = {"metadata": dict(metadata or {}), "rows": [dict(row) for row in rows]}
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    texts = {"json": json.dumps(payload, indent=2, default=str) + "\n", "csv": buffer.getvalue(),
             "md": markdown_table(rows, columns) + "\n"}
    for suffix, text in texts.items():  # temp file then rename: a killed run leaves no half table
        partial = paths[suffix].with_name(paths[suffix].name + ".partial")
        partial.write_text(text)
        os.replace(partial, paths[suffix])
    return paths


# --- reading tool outputs ---------------------------------------------------------------

def read_json_or_none(path: Path | None) -> dict[str, Any] | None:
    """A JSON file's content, or ``None`` (with a warning if it exists but cannot be read): a
    missing result must not stop a benchmark from reporting the others."""
    if path is None or not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        print(f"warning: cannot read {path}: {error}", file=sys.stderr)
        return None


def find_key(node: Any, key: str) -> Any:
    """First value stored under ``key`` anywhere in nested dicts and lists (depth first).

    Lets one lookup read nnU-Net's plans (``architecture.arch_kwargs.strides``) and ours
    (``network.strides``) alike, and tolerates formats that are still changing.
    """
    if isinstance(node, dict):
        if key in node:
            return node[key]
        children = list(node.values())
    elif isinstance(node, list):
        children = node
    else:
        return None
    for child in children:
        found = find_key(child, key)
        if found is not None:
            return found
    return None
