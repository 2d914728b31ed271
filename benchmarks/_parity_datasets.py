"""The datasets ``learning_parity.py`` can compare on: one spec each, so the driver has no ``if``s per dataset.

A :class:`ParityDataset` says what both tools call the dataset (name, id, nnU-Net's folder),
which files it holds (file ending), how the ONE raw folder both tools read is built from the
shared data, which configurations it offers, and how the two tools' plans are made equal:

- ``hippocampus``: each tool plans for itself (they agree field by field, see
  ``plan_preprocess.py``); only the batch override is written into both parity plans.
- ``busi_stu``: BUSI (780 images, ``busi_half``) and STU (42, ``stu_bus``) pooled into one 2D
  PNG dataset with sites ``busi``/``stu``, built by our importer (``medseg-auto import-folder``:
  grey images, 0/255 masks -> 0/1, STU's masks of other sizes resized nearest and thresholded
  at 127). The tools' own 2D plans differ (nnU-Net plans the full resolution, batch ~100), so
  ONE shared coarse plan, ours from the ``cpu_coarse`` preset (spacing 2x2, patch 128x160,
  batch 10, 6 stages), is written into nnU-Net's parity plans (:func:`transplant_plan`) and
  nnU-Net preprocesses with it.

Plain Python and the standard library; neither tool is imported here.
"""

from __future__ import annotations

import copy
import math
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import common
import plan_preprocess
from common import BenchmarkError
from plan_preprocess import WorkLayout

# What the shared plan carries from our plans into nnU-Net's (configuration level, then topology).
SHARED_PLAN_FIELDS = ("spacing", "patch_size", "batch_size")
SHARED_TOPOLOGY_FIELDS = ("n_stages", "features_per_stage", "kernel_sizes", "strides", "n_conv_per_stage",
                          "n_conv_per_stage_decoder")
PARITY_PLAN_FIELDS = (*plan_preprocess.PLAN_FIELDS, "kernel_sizes", "n_conv_per_stage", "n_conv_per_stage_decoder")
MIN_CASES_PER_SITE = 5  # a --cases subset keeps at least this many of each site (fold 0 then validates on both)


@dataclass(frozen=True)
class ParityDataset:
    """One dataset of the parity benchmark.

    ``list_cases(data, limit)`` returns the sorted case ids (a subset of ``limit`` when given);
    ``build_raw(data, cases, layout)`` writes ``layout.raw_dataset`` (nnU-Net's raw format, read
    by both tools); ``ours_plans_name``/``ours_preset``: the plans our planner writes and the
    preset that makes them; ``shared_plan``: ours are written into nnU-Net's parity plans
    (else each tool plans for itself); ``plan_fields``: the fields compared across the parity plans.
    """

    key: str
    dataset_id: int
    name: str
    file_ending: str
    configurations: tuple[str, ...]
    default_data: Path
    data_help: str
    list_cases: Callable[[Path, int | None], list[str]]
    build_raw: Callable[[Path, Sequence[str], WorkLayout], None]
    ours_plans_name: str = "plans"
    ours_preset: str | None = None
    shared_plan: bool = False
    plan_fields: tuple[str, ...] = plan_preprocess.PLAN_FIELDS
    default_batch_sizes: tuple[str, ...] = ("2d=32",)

    @property
    def folder(self) -> str:
        return f"Dataset{self.dataset_id:03d}_{self.name}"

    @property
    def work_name(self) -> str:
        """Default folder under ``benchmarks/_work`` (Hippocampus keeps the original one)."""
        return "learning_parity" if self.key == "hippocampus" else f"learning_parity_{self.key}"

    def layout(self, root: Path) -> WorkLayout:
        return WorkLayout(root, self.folder)


# --- busi_stu: two shared folders pooled with sites ------------------------------------------

BUSI_STU_SOURCES = {"busi": "busi_half", "stu": "stu_bus"}  # site -> folder under --data


def busi_stu_images(data: Path) -> dict[str, list[tuple[str, Path, Path]]]:
    """Per site, sorted ``(case_id, image, mask)``: BUSI's ``CLASS/images/NAME.png`` with
    ``CLASS/masks/NAME.png``, STU's ``images/Test_Image_N.png`` with ``masks/mask_N.png``. Case
    ids are what our importer makes of them (the site, '_', the image name)."""
    found: dict[str, list[tuple[str, Path, Path]]] = {}
    for site, folder_name in BUSI_STU_SOURCES.items():
        folder = data / folder_name
        if not folder.is_dir():
            raise BenchmarkError(f"{folder}: not found; --data must hold {' and '.join(BUSI_STU_SOURCES.values())}")
        image_folders = [folder / "images"] if (folder / "images").is_dir() else sorted(folder.glob("*/images"))
        pairs = []
        for images in image_folders:
            for image in sorted(images.glob("*.png")):
                mask_name = f"mask_{image.stem.rsplit('_', 1)[-1]}.png" if site == "stu" else image.name
                mask = images.parent / "masks" / mask_name
                if mask.is_file():
                    pairs.append((f"{site}_{image.stem}", image, mask))
        if not pairs:
            raise BenchmarkError(f"{folder}: no image with a mask found")
        found[site] = sorted(pairs)
    return found


def subset_per_site(per_site: dict[str, list[str]], limit: int | None) -> list[str]:
    """``limit`` cases spread over the sites in proportion to their size, at least
    ``MIN_CASES_PER_SITE`` of each (so a small subset still validates on every site), taken
    evenly over each site's sorted list (BUSI: benign, malignant and normal alike)."""
    if limit is None:
        return sorted(case for cases in per_site.values() for case in cases)
    total = sum(len(cases) for cases in per_site.values())
    if limit < 2 * len(per_site):
        raise BenchmarkError(f"--cases {limit}: need at least {2 * len(per_site)} for {len(per_site)} sites")
    counts = {site: min(len(cases), max(round(limit * len(cases) / total), min(MIN_CASES_PER_SITE, limit // 2)))
              for site, cases in per_site.items()}
    largest = max(counts, key=lambda site: len(per_site[site]))
    counts[largest] = min(len(per_site[largest]), limit - sum(n for site, n in counts.items() if site != largest))
    chosen = []
    for site, cases in per_site.items():
        step = len(cases) / counts[site]
        chosen += [cases[math.floor(index * step)] for index in range(counts[site])]
    return sorted(chosen)


def busi_stu_cases(data: Path, limit: int | None) -> list[str]:
    found = busi_stu_images(data)
    return subset_per_site({site: [case for case, _, _ in pairs] for site, pairs in found.items()}, limit)


def build_busi_stu_raw(data: Path, cases: Sequence[str], layout: WorkLayout) -> None:
    """Write ``layout.raw_dataset`` with ``cases`` by our importer, one ``import-folder`` per site
    (the second with ``--append``), from a staging folder of links to the chosen files.

    Our importer is the tool a user would run; it writes grey PNGs, labels 0/1, STU's masks
    resized to their images (nearest, threshold 127) and dataset.json's ``sites``. Checked after:
    the dataset holds exactly ``cases`` and its labels hold only 0 and 1.
    """
    wanted = set(cases)
    staging = layout.root / "staging"
    for folder in (staging, layout.raw_dataset):
        if folder.exists():
            shutil.rmtree(folder)
    layout.nnunet_raw.mkdir(parents=True, exist_ok=True)  # ours_home/raw links to it: the importer writes there
    plan_preprocess.link_ours_home(layout)
    dataset_id, name = id_and_name(layout.dataset_folder)
    site_options = {"busi": [], "stu": ["--resize-masks", "--mask-pattern", "mask_{n}"]}
    for index, (site, pairs) in enumerate(busi_stu_images(data).items()):
        images, masks = staging / site / "images", staging / site / "masks"
        images.mkdir(parents=True)
        masks.mkdir()
        for case, image, mask in pairs:
            if case in wanted:
                (images / image.name).symlink_to(image.resolve())
                (masks / mask.name).symlink_to(mask.resolve())
        cmd = [*common.ours_command(), "import-folder", "--images", str(images), "--masks", str(masks), "--name",
               name, "--id", str(dataset_id), "--site", site, "--grey",
               "--home", str(layout.ours_home), "-np", "1", "--no-progress", *site_options[site]]
        if index:
            cmd.append("--append")
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise BenchmarkError(f"importing {site}: {' '.join(cmd)} exited {result.returncode}:\n"
                                 f"{(result.stderr or result.stdout)[-2000:]}")
    shutil.rmtree(staging)
    dataset_json = common.read_json_or_none(layout.raw_dataset / "dataset.json") or {}
    imported = set(dataset_json.get("sites", {}))
    if imported != wanted:
        raise BenchmarkError(f"{layout.raw_dataset}: the importer wrote {len(imported)} cases, expected "
                             f"{len(wanted)} (differing: {sorted(imported ^ wanted)[:5]})")
    values = label_values(layout.raw_dataset / "labelsTr")
    if not values <= {0, 1}:
        raise BenchmarkError(f"{layout.raw_dataset / 'labelsTr'}: label values {sorted(values)}, expected 0 and 1")


def id_and_name(dataset_folder: str) -> tuple[int, str]:
    """``Dataset502_BUSI_STU`` -> ``(502, "BUSI_STU")``."""
    match = re.fullmatch(r"Dataset(\d{3})_(.+)", dataset_folder)
    if match is None:
        raise BenchmarkError(f"{dataset_folder}: not a DatasetNNN_NAME folder name")
    return int(match.group(1)), match.group(2)


def label_values(labels: Path) -> set[int]:
    """Every value found in the label PNGs of ``labels`` (both tools read these very files)."""
    import numpy as np
    from PIL import Image

    values: set[int] = set()
    for path in sorted(labels.glob("*.png")):
        with Image.open(path) as image:
            values.update(int(value) for value in np.unique(np.asarray(image)))
    return values


# --- the shared plan -------------------------------------------------------------------------

def transplant_plan(nnunet_plans: dict[str, Any], ours_plans: dict[str, Any], configuration: str,
                    plans_name: str, batch_size: int | None) -> dict[str, Any]:
    """nnU-Net's plans with ``configuration`` carrying our plan: spacing, patch, batch
    (``batch_size`` if given, else ours) and topology (``SHARED_TOPOLOGY_FIELDS`` into
    ``architecture.arch_kwargs``), renamed ``plans_name`` with its own ``data_identifier``
    (``PLANS_NAME_CONFIGURATION``: nnU-Net must preprocess at the shared spacing). The inputs are
    not changed."""
    plans = copy.deepcopy(nnunet_plans)
    section = plan_preprocess.configuration_of(plans, configuration)
    ours = plan_preprocess.configuration_of(ours_plans, configuration)
    if section is None or ours is None:
        missing = "nnU-Net's" if section is None else "our"
        raise BenchmarkError(f"{missing} plans have no configuration {configuration!r}")
    for field in SHARED_PLAN_FIELDS:
        section[field] = copy.deepcopy(common.find_key(ours, field))
    if batch_size is not None:
        section["batch_size"] = batch_size
    arch_kwargs = section.get("architecture", {}).get("arch_kwargs")
    if not isinstance(arch_kwargs, dict):
        raise BenchmarkError(f"nnU-Net's plans: configuration {configuration!r} has no architecture.arch_kwargs")
    for field in SHARED_TOPOLOGY_FIELDS:
        value = common.find_key(ours, field)
        if value is None:
            raise BenchmarkError(f"our plans: configuration {configuration!r} has no {field!r}")
        arch_kwargs[field] = copy.deepcopy(value)
    section["data_identifier"] = f"{plans_name}_{configuration}"
    plans["plans_name"] = plans_name
    return plans


SPECS = {
    "hippocampus": ParityDataset(
        key="hippocampus", dataset_id=plan_preprocess.DATASET_ID, name=plan_preprocess.DATASET_NAME,
        file_ending=plan_preprocess.FILE_ENDING, configurations=plan_preprocess.CONFIGURATIONS,
        default_data=common.shared_dir() / "data" / "hippocampus", data_help="MSD hippocampus folder with images/ "
        "and labels/", list_cases=plan_preprocess.paired_cases, build_raw=plan_preprocess.build_raw_dataset),
    "busi_stu": ParityDataset(
        key="busi_stu", dataset_id=502, name="BUSI_STU", file_ending=".png", configurations=("2d",),
        default_data=common.shared_dir() / "data", data_help="folder holding busi_half/ and stu_bus/",
        list_cases=busi_stu_cases, build_raw=build_busi_stu_raw, ours_plans_name="plans_cpu_coarse",
        ours_preset="cpu_coarse", shared_plan=True, plan_fields=PARITY_PLAN_FIELDS, default_batch_sizes=("2d=plan",)),
}
