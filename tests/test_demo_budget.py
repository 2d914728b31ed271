"""The demo's 2-minute recipe: its preset, its synthetic shapes, its budgets, and no stage done twice."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from medseg_auto.dataset.synthetic import make_case
from medseg_auto.demo import DEMO_BLOBS, DEMO_BUDGETS, DEMO_PRESET, DEMO_SHAPES, run_demo
from medseg_auto.paths import DataHome
from medseg_auto.planning.presets import load_preset

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_states_the_demo_budgets_and_the_3d_shape():
    text = " ".join(README.read_text().split())
    (epochs_2d, iterations_2d), (epochs_3d, iterations_3d) = DEMO_BUDGETS[2], DEMO_BUDGETS[3]
    assert f"2D: {epochs_2d} x {iterations_2d} iterations, 3D: {epochs_3d} x {iterations_3d}" in text
    assert "x".join(map(str, DEMO_SHAPES[3])) + " cases" in text


def test_demo_preset_halves_the_features_and_leaves_the_default_alone():
    demo, default = load_preset(DEMO_PRESET), load_preset("default")
    assert demo.plans_name == "plans_demo" and demo.base_num_features == default.base_num_features // 2
    assert default.plans_name == "plans" and default.base_num_features == 32
    assert demo.configurations == ["2d", "3d_fullres"]


def test_blob_and_core_fractions_set_the_sizes_and_the_defaults_draw_the_same_case():
    shape = (24, 24, 24)
    image, labels = make_case(shape, np.random.default_rng(3), "siteA", with_core=True)
    same_image, same_labels = make_case(shape, np.random.default_rng(3), "siteA", with_core=True,
                                        radius_fraction=(0.15, 0.25), core_fraction=0.5)
    assert np.array_equal(labels, same_labels) and np.array_equal(image, same_image)
    _, demo_labels = make_case(shape, np.random.default_rng(3), "siteA", with_core=True, **DEMO_BLOBS[3])
    # same draws, larger fractions: a larger blob and a core holding a larger share of it
    assert (demo_labels > 0).sum() > (labels > 0).sum()
    assert (demo_labels == 2).sum() / (demo_labels > 0).sum() > (labels == 2).sum() / (labels > 0).sum()
    low, high = DEMO_BLOBS[3]["radius_fraction"]
    radius = (3 * (demo_labels > 0).sum() / (4 * np.pi)) ** (1 / 3)  # of the ball with the blob's volume
    assert low * 24 - 1 <= radius <= high * 24 + 1


def test_demo_trains_on_its_preset_and_predicts_the_held_out_cases_once(tmp_path):
    summary = run_demo(tmp_path, dimensions=(3,), cases_per_site=2, num_processes=1, show_progress=False,
                       epochs=1, iterations=2)
    assert summary["ok"] is True
    (dataset,) = summary["datasets"]
    experiment = DataHome(tmp_path).results_dataset(dataset) / "Base__plans_demo__3d_fullres"
    assert (experiment / "fold_untrained" / "validation" / "summary.json").is_file()  # the baseline's score
    assert (experiment / "fold_demo" / "checkpoint_final.pt").is_file()
    assert not (experiment / "fold_demo" / "validation").exists()  # predict + evaluate score the trained model
    assert set(summary["dice"][dataset]) == {"before", "after"}


def test_the_demo_runs_on_one_thread_and_restores_the_callers_threads(monkeypatch):
    import torch

    from medseg_auto.demo import DEMO_THREADS, demo_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    torch.set_num_threads(2)
    with demo_threads() as threads:
        assert threads == DEMO_THREADS == 1
        assert torch.get_num_threads() == 1 and os.environ["OMP_NUM_THREADS"] == "1"
    assert torch.get_num_threads() == 2 and "OMP_NUM_THREADS" not in os.environ


def test_an_explicit_omp_num_threads_wins_over_the_demo_default(monkeypatch):
    import torch

    from medseg_auto.demo import demo_threads

    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    before = torch.get_num_threads()
    with demo_threads() as threads:
        assert threads == 2 and torch.get_num_threads() == 2
    assert os.environ["OMP_NUM_THREADS"] == "2" and torch.get_num_threads() == before
