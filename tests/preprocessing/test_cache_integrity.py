"""A cached case damaged after it was written is noticed on a rerun and preprocessed again."""

from __future__ import annotations

import numpy as np
import pytest

from medseg_auto.planning.plans import Plans
from medseg_auto.preprocessing.cache import PreprocessedCache
from medseg_auto.preprocessing.pipeline import plan_and_preprocess


def _cache(home) -> PreprocessedCache:
    plans = Plans.load(home.preprocessed_dataset("Syn3d") / "plans.json")
    return PreprocessedCache(home.preprocessed_dataset("Syn3d") / plans.configuration("3d_fullres").data_identifier)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_cached_case_is_redone(home_3d, damage):
    plan_and_preprocess(home_3d, "Syn3d", ["3d_fullres"], num_processes=1, show_progress=False)
    cache = _cache(home_3d)
    path = cache.data_path("siteA_001")
    intact = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(intact[: len(intact) // 2])
    else:
        flipped = bytearray(intact)
        flipped[-10] ^= 0xFF  # same size, one voxel changed
        path.write_bytes(bytes(flipped))
    assert not cache.is_intact("siteA_001")
    plan_and_preprocess(home_3d, "Syn3d", ["3d_fullres"], num_processes=1, show_progress=False)
    assert path.read_bytes() == intact and cache.is_intact("siteA_001")
    data, _, _ = cache.load_case("siteA_001")
    assert np.isfinite(data).all()
