"""Cross-validation splits: nnU-Net's folds without sites, site-stratified folds, the splits file."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.model_selection import KFold

from medseg_auto.errors import DatasetError
from medseg_auto.training.data.splits import SPLITS_FILE_NAME, fold_cases, load_or_create_splits, make_splits

CASES = [f"case_{i:03d}" for i in range(23)]


def _nnunet_splits(case_ids):
    """What nnU-Net's ``generate_crossval_split`` returns for these cases."""
    ordered = np.sort(case_ids)
    return [
        {"train": list(ordered[train]), "val": list(ordered[val])}
        for train, val in KFold(n_splits=5, shuffle=True, random_state=12345).split(ordered)
    ]


def test_without_sites_identical_to_nnunet_kfold_on_sorted_ids():
    shuffled = list(np.random.default_rng(0).permutation(CASES))
    assert make_splits(shuffled, None) == _nnunet_splits(CASES)
    assert make_splits(shuffled, {case: "only" for case in CASES}) == _nnunet_splits(CASES)


def test_splits_are_deterministic_and_partition_the_cases():
    first, second = make_splits(CASES), make_splits(list(reversed(CASES)))
    assert first == second
    validation = [case for split in first for case in split["val"]]
    assert sorted(validation) == CASES
    for split in first:
        assert not set(split["train"]) & set(split["val"])
        assert sorted(split["train"] + split["val"]) == CASES


def test_stratified_by_site_puts_every_site_in_every_validation_fold():
    sites = {case: ("big" if i < 14 else "mid" if i < 20 else "small") for i, case in enumerate(CASES)}
    splits = make_splits(CASES, sites)
    assert splits != _nnunet_splits(CASES)
    for split in splits:
        val_sites = {sites[case] for case in split["val"]}
        assert {"big", "mid"} <= val_sites
    small_folds = [i for i, split in enumerate(splits) if any(sites[c] == "small" for c in split["val"])]
    assert len(small_folds) == 3  # three cases spread over three folds
    assert splits == make_splits(CASES, sites)


def test_sites_all_smaller_than_folds_fall_back_to_kfold():
    sites = {case: f"site{i % 8}" for i, case in enumerate(CASES[:16])}
    assert make_splits(CASES[:16], sites) == _nnunet_splits(CASES[:16])


def test_too_few_cases_is_a_clear_error():
    with pytest.raises(DatasetError, match="fold 'all'"):
        make_splits(CASES[:3])


def test_splits_file_is_written_once_and_reused(tmp_path):
    created = load_or_create_splits(tmp_path, CASES, None)
    path = tmp_path / SPLITS_FILE_NAME
    assert json.loads(path.read_text()) == created
    edited = [{"train": CASES[:10], "val": CASES[10:12]}]
    path.write_text(json.dumps(edited))
    assert load_or_create_splits(tmp_path, CASES, {case: "x" for case in CASES}) == edited


def test_splits_file_naming_unknown_cases_is_refused(tmp_path):
    load_or_create_splits(tmp_path, CASES, None)
    with pytest.raises(DatasetError, match=SPLITS_FILE_NAME):
        load_or_create_splits(tmp_path, CASES[:-2], None)


def test_malformed_splits_file_is_refused(tmp_path):
    (tmp_path / SPLITS_FILE_NAME).write_text('{"train": []}')
    with pytest.raises(DatasetError, match="non-empty list"):
        load_or_create_splits(tmp_path, CASES, None)


def test_fold_cases():
    splits = make_splits(CASES)
    train, val = fold_cases(splits, 2)
    assert (train, val) == (splits[2]["train"], splits[2]["val"])
    assert fold_cases(splits, "1") == fold_cases(splits, 1)
    everything_train, everything_val = fold_cases(splits, "all")
    assert everything_train == everything_val == CASES
    with pytest.raises(DatasetError, match="folds 0..4"):
        fold_cases(splits, 5)
    with pytest.raises(DatasetError):
        fold_cases(splits, "best")
