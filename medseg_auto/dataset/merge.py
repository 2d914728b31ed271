"""Merge raw datasets into one multi-site raw dataset (``medseg-auto merge A B --name AB``).

Why: pooling hospitals is the setting the domain trainers and the experiments study, and each
hospital is usually imported on its own. The sources must agree on what a case is (same
``labels``, ``channel_names`` and ``file_ending``: otherwise label 1 or channel 0 would mean two
things in one dataset), and every merged case keeps a site: the one given for its source
(``site_overrides``), else the site its source recorded, else the source's dataset name.

Case ids that occur in more than one source get their source's name as a prefix
(``BUSI_case_1``, ``STU_case_1``); every rename is listed in ``merge_log.json``. Files are
copied atomically and ``dataset.json`` is written last, so a folder with a ``dataset.json`` is a
complete merge; a failed merge removes what it wrote (the importers' convention).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from tqdm import tqdm

from medseg_auto.dataset.dataset_json import CaseFiles, DatasetSpec, write_dataset_json
from medseg_auto.dataset.importers.naming import list_some
from medseg_auto.dataset.importers.output import clear_case_folders, copy_file_atomic, prepare_dataset_folder
from medseg_auto.errors import DatasetError
from medseg_auto.paths import DataHome, check_safe_name
from medseg_auto.utils.atomic import write_json_atomic
from medseg_auto.utils.logging_setup import get_logger

MERGE_LOG = "merge_log.json"
#: dataset.json keys that describe one dataset; the merged dataset gets its own.
_OWN_KEYS = {"channel_names", "modality", "labels", "numTraining", "file_ending", "sites", "name", "description"}
_FOLDER_PATTERN = re.compile(r"^Dataset\d{3}_(.+)$")

log = get_logger("dataset.merge")


@dataclass(frozen=True)
class MergedCase:
    """One case of the merged dataset and where it came from."""

    source: str
    source_case_id: str
    case_id: str
    site: str
    files: CaseFiles


def merge_datasets(
    home: DataHome,
    sources: Sequence[str],
    name: str,
    site_overrides: Mapping[str, str] | None = None,
    dataset_id: int | None = None,
    show_progress: bool = True,
) -> DatasetSpec:
    """Merge the raw datasets ``sources`` (names, ids or folder names) into ``raw/DatasetNNN_<name>``.

    ``site_overrides`` maps a source (as named in ``sources``, or its dataset name) to the site
    all its cases get. Raises :class:`DatasetError` when the sources disagree on labels,
    channels or file ending (naming both datasets), when a source is given twice, or when
    ``name`` is an existing dataset. Returns the merged dataset's spec.
    """
    check_safe_name(name, what="dataset name")
    if len(sources) < 2:
        raise DatasetError(f"merge needs at least two datasets, got {len(sources)}")
    specs = [DatasetSpec.load(home.raw_dataset(source)) for source in sources]
    folders = [spec.folder.name for spec in specs]
    repeated = sorted(folder for folder, count in Counter(folders).items() if count > 1)
    if repeated:
        raise DatasetError(f"merge: dataset(s) {', '.join(repeated)} given more than once")
    check_compatible(specs)
    sites = _source_sites(sources, specs, site_overrides or {})
    cases = plan_cases(specs, sites)
    folder, _ = prepare_dataset_folder(home, name, dataset_id, append=False)
    log.info("merging %s into %s: %d case(s)", ", ".join(folders), folder, len(cases))
    try:
        for case in tqdm(cases, desc="merge", unit="case", disable=not show_progress):
            _copy_case(case, folder, specs[0].file_ending)
        write_json_atomic(folder / MERGE_LOG, _merge_log(specs, cases))
        spec = write_dataset_json(
            folder, specs[0].channel_names, specs[0].labels, len(cases), specs[0].file_ending,
            sites={case.case_id: case.site for case in cases}, extra=_shared_extra_keys(specs, name),
        )
    except BaseException:
        clear_case_folders(folder)
        (folder / MERGE_LOG).unlink(missing_ok=True)
        raise
    counts = Counter(case.site for case in cases)
    log.info("merged %d case(s) into %s; sites: %s", len(cases), folder,
             ", ".join(f"{site} {count}" for site, count in sorted(counts.items())))
    return spec


def check_compatible(specs: Sequence[DatasetSpec]) -> None:
    """Refuse sources whose cases mean different things; the message names both datasets."""
    first = specs[0]
    for other in specs[1:]:
        for what, mine, theirs in (("labels", first.labels, other.labels),
                                   ("channel_names", first.channel_names, other.channel_names),
                                   ("file_ending", first.file_ending, other.file_ending)):
            if mine != theirs:
                raise DatasetError(
                    f"cannot merge {other.folder} into {first.folder}: dataset.json '{what}' differ "
                    f"({theirs!r} vs {mine!r}); make them equal in the sources (re-import or edit dataset.json) first"
                )


def plan_cases(specs: Sequence[DatasetSpec], sites: Mapping[str, str | None]) -> list[MergedCase]:
    """Every case of every source with its merged id and site, in source order.

    ``sites`` maps a source folder name to the site forced on all its cases (None: keep each
    case's own site, else the source's dataset name). Ids used by several sources are prefixed
    with the source's dataset name.
    """
    listed = [(spec, spec.training_cases(require_labels=True)) for spec in specs]
    usage = Counter(case.case_id for _, cases in listed for case in cases)
    merged: list[MergedCase] = []
    for spec, cases in listed:
        short = dataset_short_name(spec.folder.name)
        for case in cases:
            case_id = case.case_id if usage[case.case_id] == 1 else check_safe_name(f"{short}_{case.case_id}")
            site = sites.get(spec.folder.name) or case.site or short
            merged.append(MergedCase(spec.folder.name, case.case_id, case_id, site, case))
    clashes = sorted(case_id for case_id, count in Counter(c.case_id for c in merged).items() if count > 1)
    if clashes:
        raise DatasetError(
            f"merge: case id(s) {list_some(clashes)} still clash after prefixing with the dataset name; "
            "rename the cases in one source"
        )
    return merged


def dataset_short_name(folder_name: str) -> str:
    """``Dataset501_BUSI`` -> ``BUSI`` (a folder not named that way is returned unchanged)."""
    match = _FOLDER_PATTERN.match(folder_name)
    return match.group(1) if match else folder_name


def _source_sites(sources: Sequence[str], specs: Sequence[DatasetSpec],
                  overrides: Mapping[str, str]) -> dict[str, str | None]:
    """Source folder name -> forced site; every override must name one of the sources."""
    by_key: dict[str, str] = {}
    for source, spec in zip(sources, specs):
        for key in (source, spec.folder.name, dataset_short_name(spec.folder.name)):
            by_key[str(key)] = spec.folder.name
    result: dict[str, str | None] = {spec.folder.name: None for spec in specs}
    for key, site in overrides.items():
        if key not in by_key:
            raise DatasetError(f"--site {key}={site}: '{key}' is not one of the merged datasets ({', '.join(sources)})")
        result[by_key[key]] = check_safe_name(site, what="site name")
    return result


def _copy_case(case: MergedCase, folder: Path, file_ending: str) -> None:
    for index, image in enumerate(case.files.images):
        copy_file_atomic(image, folder / "imagesTr" / f"{case.case_id}_{index:04d}{file_ending}")
    assert case.files.label is not None  # listed with require_labels=True
    copy_file_atomic(case.files.label, folder / "labelsTr" / f"{case.case_id}{file_ending}")


def _shared_extra_keys(specs: Sequence[DatasetSpec], name: str) -> dict:
    """dataset.json keys we do not interpret, kept where every source has the same value."""
    first = {key: value for key, value in specs[0].raw.items() if key not in _OWN_KEYS}
    shared = {key: value for key, value in first.items() if all(spec.raw.get(key) == value for spec in specs[1:])}
    return {**shared, "name": name,
            "description": "merged from " + ", ".join(spec.folder.name for spec in specs) + " by medseg-auto merge"}


def _merge_log(specs: Sequence[DatasetSpec], cases: Sequence[MergedCase]) -> dict:
    """What ``merge_log.json`` records: sources, per-site counts and every renamed case."""
    return {
        "sources": [{"folder": str(spec.folder), "cases": sum(c.source == spec.folder.name for c in cases),
                     "sites": dict(sorted(Counter(c.site for c in cases if c.source == spec.folder.name).items()))}
                    for spec in specs],
        "num_cases": len(cases),
        "renamed": [{"source": c.source, "from": c.source_case_id, "to": c.case_id}
                    for c in cases if c.case_id != c.source_case_id],
        "cases": {c.case_id: {"source": c.source, "source_case_id": c.source_case_id, "site": c.site} for c in cases},
    }
