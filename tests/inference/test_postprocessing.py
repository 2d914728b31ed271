"""Largest-component post-processing."""

from __future__ import annotations

import numpy as np

from medseg_auto.inference.postprocessing import PostprocessingPlan, apply_postprocessing


def _two_blobs():
    seg = np.zeros((1, 20, 20), np.uint8)
    seg[0, 2:10, 2:10] = 1  # large
    seg[0, 15:17, 15:17] = 1  # small, separate
    seg[0, 5:7, 12:14] = 2  # another label, separate from the large blob
    return seg


def test_per_label_keeps_largest_component_of_that_label_only():
    out = apply_postprocessing(_two_blobs(), PostprocessingPlan(per_label=[1]))
    assert out[0, 16, 16] == 0 and out[0, 5, 5] == 1
    assert out[0, 6, 13] == 2


def test_foreground_union_removes_everything_outside_largest_blob():
    out = apply_postprocessing(_two_blobs(), PostprocessingPlan(foreground_union=True))
    assert out[0, 16, 16] == 0 and out[0, 6, 13] == 0 and out[0, 5, 5] == 1


def test_identity_plan_and_empty_segmentation():
    seg = _two_blobs()
    assert PostprocessingPlan().is_identity
    np.testing.assert_array_equal(apply_postprocessing(seg, PostprocessingPlan()), seg)
    empty = np.zeros((1, 5, 5), np.uint8)
    np.testing.assert_array_equal(apply_postprocessing(empty, PostprocessingPlan(True, [1])), empty)


def test_plan_round_trips_json_and_works_in_3d():
    plan = PostprocessingPlan.from_json(PostprocessingPlan(True, [1, 2]).to_json())
    assert plan == PostprocessingPlan(True, [1, 2])
    volume = np.zeros((6, 6, 6), np.uint8)
    volume[0:3, 0:3, 0:3] = 1
    volume[5, 5, 5] = 1
    out = plan(volume)
    assert out[5, 5, 5] == 0 and out[1, 1, 1] == 1
