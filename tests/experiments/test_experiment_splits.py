"""Experiment splits: nested novel fractions, a fixed test split, held-out sites never in training."""

from __future__ import annotations

import pytest

from medseg_auto.experiments.splits import (
    ExperimentSplitError, data_addition_to_json, load_or_write_splits, make_data_addition_splits,
    make_leave_one_site_out_splits, split_off,
)

SITES = {**{f"b{i:03d}": "busi" for i in range(50)}, **{f"s{i:02d}": "stu" for i in range(21)},
         **{f"x{i}": "other" for i in range(6)}}
FRACTIONS = (0, 0.0625, 0.125, 0.25, 0.5, 1)


def _splits(seed=0):
    return make_data_addition_splits(SITES, "busi", "stu", 0.2, 0.125, 0.2, seed)


def test_data_addition_splits_are_disjoint_and_sized_like_the_paper():
    s = _splits()
    assert (len(s.base_test), len(s.base_val), len(s.base_train)) == (10, 5, 35)  # 20%, 12.5% of 40, rest
    assert (len(s.novel_test), len(s.novel_pool)) == (4, 17)
    groups = [s.base_train, s.base_val, s.base_test, s.novel_pool, s.novel_test]
    every = [case for group in groups for case in group]
    assert len(every) == len(set(every)) == 71  # disjoint; the third site is never used
    assert all(SITES[c] == "busi" for c in s.base_val + s.base_test)


def test_novel_subsets_are_nested_across_fractions_and_differ_between_repeats():
    s = _splits()
    for repeat in range(3):
        subsets = [s.novel_subset(f, repeat) for f in FRACTIONS]
        assert [len(x) for x in subsets] == [0, 1, 2, 4, 9, 17]  # round half up of f * 17
        for smaller, larger in zip(subsets, subsets[1:]):
            assert larger[: len(smaller)] == smaller
        assert set(subsets[-1]) == set(s.novel_pool)
        training = s.training_cases(0.5, repeat)
        assert set(training) == set(s.base_train) | set(subsets[4])
        assert not set(training) & set(s.base_test + s.base_val + s.novel_test)
    assert s.novel_order(0) != s.novel_order(1)
    assert s.novel_subset(0.25, 1) == _splits().novel_subset(0.25, 1)  # seeded: reproducible


def test_test_split_is_fixed_by_the_seed_and_stored_once(tmp_path):
    assert _splits(0).base_test == _splits(0).base_test != _splits(1).base_test
    settings = {"seed": 0, "test_fraction": 0.2}
    first = load_or_write_splits(tmp_path, settings, lambda: data_addition_to_json(_splits(0)), list(SITES))
    # a second call reads the file and never draws again (make() would give other cases)
    again = load_or_write_splits(tmp_path, settings, lambda: data_addition_to_json(_splits(5)), list(SITES))
    assert again == first
    with pytest.raises(ExperimentSplitError, match="other settings"):
        load_or_write_splits(tmp_path, {**settings, "seed": 1}, lambda: {}, list(SITES))
    with pytest.raises(ExperimentSplitError, match="not preprocessed"):
        load_or_write_splits(tmp_path, settings, lambda: {}, [c for c in SITES if c != first["base_test"][0]])


def test_split_off_edge_cases():
    assert split_off(["a", "b", "c"], 0.0, 0) == ([], ["a", "b", "c"])
    held, kept = split_off(["a", "b", "c"], 0.01, 0)
    assert len(held) == 1 and len(kept) == 2  # a positive fraction holds out at least one case
    held, kept = split_off(["a", "b"], 0.99, 0)
    assert len(kept) == 1  # and always leaves one
    with pytest.raises(ExperimentSplitError):
        split_off(["a"], 0.5, 0)
    with pytest.raises(ExperimentSplitError, match="no preprocessed"):
        make_data_addition_splits(SITES, "busi", "nowhere", 0.2, 0.125, 0.2, 0)


def test_leave_one_site_out_never_trains_or_validates_on_the_held_out_site():
    splits = make_leave_one_site_out_splits(SITES, 0.125, 0)
    assert [s.site for s in splits] == ["busi", "other", "stu"]
    for split in splits:
        assert set(split.test) == {c for c, site in SITES.items() if site == split.site}
        assert not {SITES[c] for c in split.train + split.val} & {split.site}
        assert not set(split.train) & set(split.val)
        assert len(split.train) + len(split.val) + len(split.test) == len(SITES)
        assert len({SITES[c] for c in split.val}) == 2  # stratified: both training sites validate
    with pytest.raises(ExperimentSplitError, match="two sites"):
        make_leave_one_site_out_splits({"a": "one", "b": "one"}, 0.125, 0)
