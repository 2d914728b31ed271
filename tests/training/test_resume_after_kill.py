"""``--continue`` after SIGKILL: the curves before the kill are kept exactly, the epoch count is met."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from medseg_auto.training.checkpoint import LATEST, load_checkpoint

EPOCHS = 6
SCRIPT = textwrap.dedent(f"""
    import sys, time
    from medseg_auto.training.hooks import DomainMethod
    from medseg_auto.training.registry import register_trainer
    from medseg_auto.run.train import TrainRequest, train_fold

    @register_trainer("SlowTest")
    class SlowTest(DomainMethod):
        '''Test only: sleeps after each epoch so that a kill lands mid-run.'''

        def on_epoch_end(self, epoch, logs):
            time.sleep(float(sys.argv[3]))

    train_fold(TrainRequest(sys.argv[1], "Toy", "3d_fullres", 0, trainer_name="SlowTest", device="cpu", seed=7,
                            settings={{"num_epochs": {EPOCHS}, "iterations_per_epoch": 3, "num_workers": 0}},
                            continue_training=sys.argv[2] == "continue"))
""")


def run_script(script, home, mode: str, sleep: float) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(script), str(home.root), mode, str(sleep)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "PYTHONHASHSEED": "0"})


def curves(folder) -> list[dict[str, str]]:
    with open(folder / "progress.csv") as handle:
        return [{k: v for k, v in row.items() if k != "epoch_time"} for row in csv.DictReader(handle)]


@pytest.mark.slow
def test_continue_after_sigkill_matches_an_uninterrupted_run(tmp_path, toy_home_factory):
    script = tmp_path / "train_slow.py"
    script.write_text(SCRIPT)
    killed_home, reference_home = toy_home_factory("killed"), toy_home_factory("reference")
    folder = killed_home.results / "Dataset901_Toy" / "SlowTest__plans__3d_fullres" / "fold_0"

    process = run_script(script, killed_home, "fresh", sleep=0.5)
    deadline = time.monotonic() + 120
    while not (folder / LATEST).is_file():
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    epochs_saved = int(load_checkpoint(folder / LATEST)["current_epoch"])
    assert 1 <= epochs_saved < EPOCHS

    resumed = run_script(script, killed_home, "continue", sleep=0)
    reference = run_script(script, reference_home, "fresh", sleep=0)
    for finished in (resumed, reference):
        assert finished.wait(timeout=300) == 0, finished.stderr.read().decode()

    reference_folder = reference_home.results / "Dataset901_Toy" / "SlowTest__plans__3d_fullres" / "fold_0"
    killed_curves, reference_curves = curves(folder), curves(reference_folder)
    assert len(killed_curves) == len(reference_curves) == EPOCHS
    assert killed_curves[:epochs_saved] == reference_curves[:epochs_saved]
    assert "resumed from" in (folder / "training_log.txt").read_text()
