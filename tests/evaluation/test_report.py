"""``medseg-auto report`` on hand-made results (no training needed): the HTML structure, the
figures it links, the escaping of text from files, and (where Chromium exists) a real render."""

from __future__ import annotations

import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from medseg_auto.cli.main import main
from medseg_auto.dataset.dataset_json import DatasetSpec
from medseg_auto.dataset.image_io import read_segmentation, write_segmentation
from medseg_auto.dataset.synthetic import make_synthetic_dataset, synthetic_home
from medseg_auto.evaluation.report import ReportError, build_report
from medseg_auto.utils.atomic import write_json_atomic

HOSTILE_LABEL = "<b>blob</b> & $\\x$"  # $..$ would be (bad) math to matplotlib
HOSTILE_SITE = "<script>alert(1)</script>"
EXPERIMENT = "Base__plans__2d"
PROGRESS = """epoch,train_loss,val_loss,pseudo_dice,ema_pseudo_dice,lr,epoch_time,pseudo_dice_1
0,1.2,1.1,0.2,0.2,0.01,3.0,0.2
1,0.9,0.95,0.5,0.23,0.006,2.5,0.5
2,0.7,0.8,0.7,0.277,0.002,2.4,0.7
"""


class _Page(HTMLParser):
    """Collects tags, image sources and text of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.images: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_data(self, data):
        self.text.append(data)


@pytest.fixture
def results(tmp_path) -> Path:
    """A raw 2D dataset of four cases with a hostile label and site name, and one experiment
    with two folds whose validation predicted two cases each (one of them damaged)."""
    home = synthetic_home(tmp_path / "home")
    spec = make_synthetic_dataset(home, "Syn2d", dimension=2, cases_per_site=2, shape=(40, 32))
    spec.labels = {"background": 0, HOSTILE_LABEL: 1}
    spec.sites["siteB_001"] = HOSTILE_SITE
    spec.save()
    spec = DatasetSpec.load(spec.folder)
    experiment = home.results / spec.name / EXPERIMENT
    for fold, cases in (("0", ["siteA_000", "siteB_001"]), ("1", ["siteA_001", "siteB_000"])):
        validation = experiment / f"fold_{fold}" / "validation"
        validation.mkdir(parents=True)
        for case in cases:
            labels, geometry = read_segmentation(spec.folder / "labelsTr" / f"{case}.png")
            if case == "siteB_001":
                labels = np.roll(labels, 6, axis=2)
            write_segmentation(labels, geometry, validation / f"{case}.png")
        write_json_atomic(validation / "summary.json", {"num_cases": 2, "foreground_mean": {"dice": 0.9}})
        (experiment / f"fold_{fold}" / "progress.csv").write_text(PROGRESS)
    return home.results / spec.name


def test_report_structure_images_and_escaping(results):
    index = build_report(results)
    assert index == results / "report" / "index.html"
    page_text = index.read_text(encoding="utf-8")
    page = _Page()
    page.feed(page_text)
    assert page.tags.count("table") == 3  # cross-validation per class, per site, folds
    assert page.tags.count("script") == 0 and "<b>blob" not in page_text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page_text and "&lt;b&gt;blob&lt;/b&gt; &amp; $\\x$" in page_text
    text = " ".join(page.text)
    assert HOSTILE_LABEL in text and HOSTILE_SITE in text  # shown to the reader as plain text
    assert "Cross-validation (folds 0 1, 4 cases)" in text
    assert len(page.images) == 3  # curves, worst case, best case
    for source in page.images:
        picture = index.parent / source
        assert picture.is_file() and picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any("worst_cases_siteB_001" in source for source in page.images)
    assert (results / EXPERIMENT / "crossval_results" / "summary.json").is_file()  # computed on the way


def test_report_of_one_experiment_and_of_a_folder_without_results(results, tmp_path):
    index = build_report(results / EXPERIMENT, tmp_path / "out")
    assert index == tmp_path / "out" / "index.html" and "Training curves" in index.read_text()
    with pytest.raises(ReportError, match="TRAINER__PLANS__CONFIG"):
        build_report(tmp_path / "out")


@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="chromium not installed (Debian: apt-get install chromium); the render check needs it")
def test_report_renders_in_headless_chromium(results):
    assert main(["report", str(results), "--screenshot"]) == 0
    screenshot = results / "report" / "report.png"
    data = screenshot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    from PIL import Image

    with Image.open(screenshot) as image:
        assert image.size == (1280, 2000)
        colours = image.convert("L").getextrema()
    assert colours[0] < 50 and colours[1] > 200  # text and figures on a light page, not a blank render
