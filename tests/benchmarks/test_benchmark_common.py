"""The benchmark measuring helper sees the memory of a process and of its children.

Tiny real subprocesses stand in for the tools; each holds its allocation for a moment so that
a 50 ms sampler is certain to see it. Only memory lower bounds are asserted, never times:
shared CI machines make timings noisy.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytest.importorskip("psutil")


def _load_benchmarks_common() -> ModuleType:
    """``benchmarks/`` is a folder of scripts, not a package: load its ``common.py`` by path,
    under a name that cannot shadow another ``common`` module."""
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "common.py"
    spec = importlib.util.spec_from_file_location("benchmarks_common", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while building
    spec.loader.exec_module(module)
    return module


common = _load_benchmarks_common()

ALLOCATE_200_MB = "x = bytearray(200_000_000); import time; time.sleep(0.5)"


def test_peak_memory_of_a_single_process_is_seen(tmp_path: Path) -> None:
    measurement = common.measure_command([sys.executable, "-c", ALLOCATE_200_MB], log_path=tmp_path / "run.log")

    assert measurement.returncode == 0
    assert measurement.peak_rss_mib >= 190  # 200e6 bytes = 190.7 MiB
    assert measurement.peak_processes == 1
    assert measurement.wall_s > 0
    assert Path(measurement.log_path).is_file()


def test_memory_of_child_processes_is_summed(tmp_path: Path) -> None:
    """Two children holding 200 MB each: only a tree-wide sum reaches 400 MB."""
    parent = (
        "import subprocess, sys\n"
        f"code = {ALLOCATE_200_MB!r}\n"
        "children = [subprocess.Popen([sys.executable, '-c', code]) for _ in range(2)]\n"
        "raise SystemExit(max(child.wait() for child in children))\n"
    )
    measurement = common.measure_command([sys.executable, "-c", parent], log_path=tmp_path / "tree.log")

    assert measurement.returncode == 0
    assert measurement.peak_rss_mib >= 2 * 190
    assert measurement.peak_processes == 3


@pytest.mark.skipif(not common.pss_supported(), reason="needs /proc/PID/smaps_rollup (Linux 4.14+)")
def test_pss_counts_memory_shared_after_fork_once(tmp_path: Path) -> None:
    """A parent holding 200 MB forks two idle children: RSS sums it three times, PSS once."""
    forking_parent = (
        "import os, time\n"
        "x = bytearray(200_000_000)\n"
        "children = []\n"
        "for _ in range(2):\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        time.sleep(0.6)\n"
        "        os._exit(0)\n"
        "    children.append(pid)\n"
        "for pid in children:\n"
        "    os.waitpid(pid, 0)\n"
    )
    measurement = common.measure_command([sys.executable, "-c", forking_parent], log_path=tmp_path / "fork.log",
                                         pss_every=1)

    assert measurement.returncode == 0
    assert measurement.peak_rss_mib >= 3 * 190
    assert measurement.peak_pss_mib is not None
    assert 190 <= measurement.peak_pss_mib < 2 * 190


def test_exit_code_output_env_and_cwd_reach_the_caller(tmp_path: Path) -> None:
    code = "import os, sys; print(os.environ['BENCH_PROBE'], os.getcwd()); sys.exit(3)"
    measurement = common.measure_command(
        [sys.executable, "-c", code], env={"BENCH_PROBE": "probe-value"}, cwd=tmp_path, log_path=tmp_path / "out.log",
    )

    assert measurement.returncode == 3
    logged = Path(measurement.log_path).read_text()
    assert "probe-value" in logged
    assert str(tmp_path.resolve()) in logged


def test_cpu_time_includes_waited_for_children(tmp_path: Path) -> None:
    busy_child = "import subprocess, sys; subprocess.run([sys.executable, '-c', 'sum(range(20_000_000))'])"
    measurement = common.measure_command([sys.executable, "-c", busy_child], log_path=tmp_path / "cpu.log")

    assert measurement.returncode == 0
    assert measurement.cpu_s > 0


def test_results_are_written_as_json_csv_and_markdown(tmp_path: Path) -> None:
    rows = [{"tool": "ours", "wall_s": 1.234, "peak_rss_mib": 512.0}, {"tool": "nnU-Net", "wall_s": 2.5, "extra": 1}]
    columns = ["tool", "wall_s", "peak_rss_mib"]

    paths = common.write_results(tmp_path, "bench", rows, columns, metadata={"machine": "test"})

    payload = json.loads(paths["json"].read_text())
    assert payload["metadata"] == {"machine": "test"}
    assert payload["rows"][1]["extra"] == 1
    assert paths["csv"].read_text().splitlines()[0] == "tool,wall_s,peak_rss_mib"
    markdown = paths["md"].read_text().splitlines()
    assert markdown[0].startswith("| tool")
    assert "1.23" in markdown[2] and "512.0" in markdown[2]
    assert len(markdown) == 4


def test_ratio_is_none_when_a_side_is_missing() -> None:
    assert common.ratio(3.0, 2.0) == pytest.approx(1.5)
    assert common.ratio(None, 2.0) is None
    assert common.ratio(3.0, 0.0) is None


def test_find_key_reads_nested_plans_of_either_format() -> None:
    nnunet_style = {"architecture": {"arch_kwargs": {"strides": [[1, 1], [2, 2]]}}, "batch_size": 12}
    ours_style = {"network": {"strides": [[1, 1], [2, 2]]}, "batch_size": 12}

    for plans in (nnunet_style, ours_style):
        assert common.find_key(plans, "strides") == [[1, 1], [2, 2]]
        assert common.find_key(plans, "batch_size") == 12
    assert common.find_key(ours_style, "missing") is None


def test_package_version_of_a_folder_without_an_interpreter_is_unknown(tmp_path: Path) -> None:
    """A worktree run with a shared venv has no ``.venv``: the metadata says "?" instead of the
    report crashing (``learning_parity.py --report-only`` raised FileNotFoundError)."""
    assert common.python_package_version(tmp_path / "no_venv", "torch") == "?"
