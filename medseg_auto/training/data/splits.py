"""Cross-validation splits, written once to ``splits.json`` so every run of a dataset agrees.

Without sites (or with one site) the folds are nnU-Net v2's exactly: sklearn
``KFold(5, shuffle=True, random_state=12345)`` over the *sorted* case ids
(``nnunetv2/utilities/crossval_split.py``), so our fold numbers compare like-for-like with
published nnU-Net results. With two or more sites the folds are ``StratifiedKFold`` by site
(same seed), so every fold's validation set holds cases of every site that has enough of them:
a per-site validation Dice then exists for every fold.

Linked cases (near-duplicate images found by ``medseg-auto verify``, or one patient's cases in
the optional ``groups`` map of ``dataset.json``) must not sit in a fold's training and
validation sets at once: with links the folds are sklearn's ``StratifiedGroupKFold`` (same
seed, stratified by site, one group = one linked set). Without links nothing changes.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from sklearn.model_selection import KFold, StratifiedGroupKFold, StratifiedKFold

from medseg_auto.errors import DatasetError
from medseg_auto.utils.atomic import read_json, write_json_atomic

SPLITS_FILE_NAME = "splits.json"  # the dataset's cross-validation folds, next to its preprocessed data
SPLIT_FILE = "split.json"  # fold_<tag>/split.json: the case lists of a run with an explicit split
DEFAULT_N_FOLDS = 5
DEFAULT_SEED = 12345
_UNKNOWN_SITE = "<no site>"

Split = dict[str, list[str]]


def make_splits(
    case_ids: Sequence[str],
    sites: Mapping[str, str | None] | None = None,
    n_folds: int = DEFAULT_N_FOLDS,
    seed: int = DEFAULT_SEED,
    links: Mapping[str, str] | None = None,
) -> list[Split]:
    """Return ``n_folds`` splits ``[{"train": [...], "val": [...]}, ...]`` (ids sorted in each list).

    ``links`` (case -> link id, :func:`medseg_auto.dataset.duplicates.case_links`): cases with
    one link id always share a fold (see the module docstring).

    ``sites`` maps case id to site; cases it does not name form one extra "no site" group.
    Stratification needs at least two groups and at least one group with ``n_folds`` cases
    (sklearn's own limit); otherwise the plain nnU-Net ``KFold`` is used. Groups smaller than
    ``n_folds`` are spread over as many folds as they have cases.
    """
    ordered = sorted(set(case_ids))
    if len(ordered) < n_folds:
        raise DatasetError(
            f"{len(ordered)} cases cannot be split into {n_folds} folds; "
            "train with fold 'all' or add cases"
        )
    indices = np.arange(len(ordered))
    groups = _site_groups(ordered, sites)
    linked = [str((links or {}).get(case, case)) for case in ordered]
    if len(set(linked)) < len(ordered):
        if len(set(linked)) < n_folds:
            raise DatasetError(f"{len(set(linked))} groups of linked cases cannot be split into {n_folds} folds")
        splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            fold_indices = list(splitter.split(indices, groups, linked))
    elif _can_stratify(groups, n_folds):
        splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        with warnings.catch_warnings():
            # sklearn warns when a site has fewer cases than folds; spreading it is what we want.
            warnings.simplefilter("ignore", UserWarning)
            fold_indices = list(splitter.split(indices, groups))
    else:
        fold_indices = list(KFold(n_splits=n_folds, shuffle=True, random_state=seed).split(indices))
    return [
        {"train": [ordered[i] for i in train], "val": [ordered[i] for i in val]}
        for train, val in fold_indices
    ]


def load_or_create_splits(
    preprocessed_dataset_folder: str | Path,
    case_ids: Sequence[str],
    sites: Mapping[str, str | None] | None = None,
    n_folds: int = DEFAULT_N_FOLDS,
    seed: int = DEFAULT_SEED,
) -> list[Split]:
    """Read ``<folder>/splits.json``, or create it from :func:`make_splits` and write it atomically.

    An existing file always wins (a user may have edited it, like nnU-Net's ``splits_final.json``),
    but it must only name cases of ``case_ids`` (the preprocessed cache): a stale file raises
    :class:`DatasetError` naming the missing cases.
    """
    path = Path(preprocessed_dataset_folder) / SPLITS_FILE_NAME
    if not path.is_file():
        links = dataset_links(Path(preprocessed_dataset_folder), case_ids)
        splits = make_splits(case_ids, sites, n_folds=n_folds, seed=seed, links=links)
        write_json_atomic(path, splits)
        return splits
    splits = _parse_splits(path)
    known = set(case_ids)
    unknown = sorted({case for split in splits for case in split["train"] + split["val"]} - known)
    if unknown:
        shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise DatasetError(
            f"{path}: lists {len(unknown)} case(s) that are not in the preprocessed data ({shown}); "
            "preprocess them, or delete the file to create new splits"
        )
    return splits


def fold_cases(splits: Sequence[Split], fold: int | str) -> tuple[list[str], list[str]]:
    """Return ``(train_ids, val_ids)`` of ``fold``; ``"all"`` trains and validates on every case."""
    if str(fold) == "all":
        everything = sorted({case for split in splits for case in split["train"] + split["val"]})
        return everything, list(everything)
    try:
        index = int(fold)
    except ValueError:
        raise DatasetError(f"fold must be an integer or 'all', got {fold!r}") from None
    if not 0 <= index < len(splits):
        raise DatasetError(f"fold {index} does not exist: the splits have folds 0..{len(splits) - 1} and 'all'")
    return list(splits[index]["train"]), list(splits[index]["val"])


def dataset_links(preprocessed_dataset_folder: Path, case_ids: Sequence[str]) -> dict[str, str] | None:
    """Links from the ``groups`` map of the preprocessed ``dataset.json`` and the near-duplicate
    clusters of ``verify_report.json`` beside it (written there by ``medseg-auto verify``;
    nothing is hashed here, so training never pays for it). None when neither exists."""
    from medseg_auto.dataset.duplicates import case_links

    groups = (read_json_or_empty(preprocessed_dataset_folder / "dataset.json").get("groups") or {})
    report = preprocessed_dataset_folder / "verify_report.json"
    clusters = (read_json_or_empty(report).get("duplicates") or {}).get("near_clusters") or []
    if not groups and not clusters:
        return None
    return case_links(list(case_ids), clusters, {str(k): str(v) for k, v in groups.items()})


def read_json_or_empty(path: Path) -> dict:
    try:
        payload = read_json(path) if path.is_file() else {}
    except ValueError:
        return {}
    return payload if isinstance(payload, dict) else {}


def _site_groups(ordered: Sequence[str], sites: Mapping[str, str | None] | None) -> list[str]:
    sites = sites or {}
    return [str(sites[case]) if sites.get(case) is not None else _UNKNOWN_SITE for case in ordered]


def _can_stratify(groups: Sequence[str], n_folds: int) -> bool:
    _, counts = np.unique(np.asarray(groups), return_counts=True)
    return len(counts) >= 2 and int(counts.max()) >= n_folds


def _parse_splits(path: Path) -> list[Split]:
    """Read and shape-check a splits file, so a hand-edited mistake names the file."""
    try:
        payload = read_json(path)
    except ValueError as error:
        raise DatasetError(f"{path}: not valid JSON ({error}); fix or delete it") from error
    valid = isinstance(payload, list) and len(payload) > 0 and all(
        isinstance(split, dict)
        and isinstance(split.get("train"), list)
        and isinstance(split.get("val"), list)
        for split in payload
    )
    if not valid:
        raise DatasetError(
            f'{path}: must be a non-empty list of {{"train": [...], "val": [...]}}; fix or delete it'
        )
    return [
        {"train": [str(case) for case in split["train"]], "val": [str(case) for case in split["val"]]}
        for split in payload
    ]


def install_splits(preprocessed_dataset_folder: str | Path, source: str | Path, case_ids: Sequence[str]) -> Path:
    """Make ``source`` (e.g. nnU-Net's ``splits_final.json``) this dataset's ``splits.json``.

    Folds then match the user's nnU-Net runs exactly. The file is checked like our own (shape,
    and every case must be one of ``case_ids``); an existing different ``splits.json`` is kept
    and refused, since runs already trained on it would no longer match their fold numbers.
    Returns the installed path.
    """
    source = Path(source)
    if not source.is_file():
        raise DatasetError(f"{source}: splits file not found")
    splits = _parse_splits(source)
    unknown = sorted({case for split in splits for case in split["train"] + split["val"]} - set(case_ids))
    if unknown:
        shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        raise DatasetError(f"{source}: names {len(unknown)} case(s) that are not in the dataset ({shown})")
    target = Path(preprocessed_dataset_folder) / SPLITS_FILE_NAME
    if target.is_file():
        if _parse_splits(target) == splits:
            return target
        raise DatasetError(f"{target}: holds other splits than {source}; delete it (and runs trained on it) "
                           "to use the new ones")
    write_json_atomic(target, splits)
    return target
