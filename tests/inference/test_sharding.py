"""Sharded prediction: ``-num_parts/-part_id`` and ``torchrun`` ranks give the single run's outputs."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from medseg_auto.cli.main import main
from medseg_auto.errors import MedsegError
from medseg_auto.inference.sharding import Shard, merge_summaries


@pytest.mark.parametrize("num_cases", [0, 1, 5, 12, 13])
@pytest.mark.parametrize("num_parts", [1, 2, 3, 4, 7, 20])
def test_every_case_is_in_exactly_one_part(num_cases, num_parts):
    cases = [f"case_{index:03d}" for index in reversed(range(num_cases))]
    parts = [Shard(num_parts, part).select(cases) for part in range(num_parts)]
    flat = [case for part in parts for case in part]
    assert sorted(flat) == sorted(cases) and len(flat) == len(set(flat))
    assert parts[0] == sorted(cases)[::num_parts]  # nnU-Net's split of the sorted list


@pytest.mark.parametrize("num_parts,ranks", [(1, 2), (2, 2), (3, 4)])
def test_torchrun_ranks_split_a_part_again_without_overlap(num_parts, ranks):
    cases = [f"c{index}" for index in range(23)]
    for part in range(num_parts):
        shares = [Shard(num_parts, part).within(ranks, rank).select(cases) for rank in range(ranks)]
        assert sorted(case for share in shares for case in share) == sorted(Shard(num_parts, part).select(cases))


def test_impossible_part_is_an_error():
    with pytest.raises(MedsegError, match="part_id"):
        Shard(2, 2)


def test_merge_unites_case_tables():
    parts = [{"predicted": ["b"], "failed": {}, "seconds": 2.0, "seconds_per_case": {"b": 1.0}, "part": {"part_id": 0},
              "ood": {"cases": {"b": {"flagged": True}}, "flagged": ["b"]}},
             {"predicted": ["a"], "failed": {"c": "bad"}, "seconds": 3.0, "seconds_per_case": {"a": 1.5},
              "ood": {"cases": {"a": {"flagged": False}}, "flagged": []}}]
    merged = merge_summaries(parts)
    assert merged["predicted"] == ["a", "b"] and merged["failed"] == {"c": "bad"} and merged["seconds"] == 3.0
    assert set(merged["seconds_per_case"]) == {"a", "b"} and merged["ood"]["flagged"] == ["b"]
    assert "part" not in merged and len(merged["parts"]) == 2


def _predict(home, output: Path, *extra: str) -> int:
    images = home.raw_dataset("Syn2d") / "imagesTr"
    return main(["predict", "-i", str(images), "-o", str(output), "-d", "Syn2d", "-c", "2d", "--home", str(home.root),
                 "--device", "cpu", "--no-progress", *extra])


def _assert_same_outputs(reference: Path, other: Path) -> None:
    labels = sorted(p.name for p in reference.glob("*.png"))
    assert labels and labels == sorted(p.name for p in other.glob("*.png"))
    for name in labels:
        assert (reference / name).read_bytes() == (other / name).read_bytes(), name
    assert (reference / "ood_scores.csv").read_text() == (other / "ood_scores.csv").read_text()
    ours, theirs = (json.loads((folder / "summary.json").read_text()) for folder in (reference, other))
    assert ours["predicted"] == theirs["predicted"] and ours["ood"]["cases"] == theirs["ood"]["cases"]


@pytest.fixture(scope="module")
def single_run(trained_syn2d_home, tmp_path_factory):
    output = tmp_path_factory.mktemp("single") / "pred"
    assert _predict(trained_syn2d_home, output) == 0
    return output


def test_parts_run_one_after_another_merge_into_the_single_runs_outputs(trained_syn2d_home, single_run, tmp_path):
    output = tmp_path / "pred"
    assert _predict(trained_syn2d_home, output, "-num_parts", "3", "-part_id", "1") == 0
    assert _predict(trained_syn2d_home, output, "-num_parts", "3", "-part_id", "0") == 0
    assert not (output / "summary.json").exists()  # part 2 is missing
    assert _predict(trained_syn2d_home, output, "--num-parts", "3", "--part-id", "2") == 0
    _assert_same_outputs(single_run, output)


def test_part_id_out_of_range_exits_2(trained_syn2d_home, tmp_path, capsys):
    assert _predict(trained_syn2d_home, tmp_path / "pred", "-num_parts", "2", "-part_id", "2") == 2
    assert "part_id" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_torchrun_two_nodes_c10d_rendezvous_equals_single_process(trained_syn2d_home, single_run, tmp_path):
    """Two torchrun agents (``--nnodes 2``, one rank each) meet through a c10d rendezvous on
    localhost, as two machines would; rank 0 writes the merged summary after the barrier."""
    output = tmp_path / "pred"
    images = trained_syn2d_home.raw_dataset("Syn2d") / "imagesTr"
    port = _free_port()
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
               "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "predict-test",
               "-m", "medseg_auto", "predict", "-i", str(images), "-o", str(output), "-d", "Syn2d", "-c", "2d",
               "--home", str(trained_syn2d_home.root), "--device", "cpu", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    agents = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
              for _ in range(2)]
    logs = [agent.communicate(timeout=300)[0] for agent in agents]
    assert all(agent.returncode == 0 for agent in agents), "\n".join(logs)
    assert sorted(p.name for p in (output / "summary_parts").iterdir()) == ["part_0_of_2.json", "part_1_of_2.json"]
    _assert_same_outputs(single_run, output)
