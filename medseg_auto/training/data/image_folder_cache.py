"""Unlabelled images of a folder, preprocessed like the training cases into a cache of their own.

Why: unsupervised adaptation (AIVA) cuts patches from target-site images that have no labels
and are not part of the dataset. Running them through the one case pipeline
(:func:`~medseg_auto.preprocessing.case_pipeline.preprocess_case`, exactly as ``predict`` does)
and storing them as a :class:`~medseg_auto.preprocessing.cache.PreprocessedCache` lets the
training :class:`~medseg_auto.training.data.patch_sampler.PatchSampler` read them unchanged.
"""

from __future__ import annotations

from pathlib import Path

from medseg_auto.dataset.case_loader import load_case_images
from medseg_auto.errors import DatasetError
from medseg_auto.dataset.inputs import find_input_cases
from medseg_auto.planning.plans import ConfigurationPlan, Plans
from medseg_auto.preprocessing.cache import PreprocessedCache
from medseg_auto.preprocessing.case_pipeline import preprocess_case
from medseg_auto.utils.logging_setup import get_logger

log = get_logger("training.image_folder_cache")


def cache_image_folder(
    folder: Path, plans: Plans, configuration: ConfigurationPlan, cache_folder: Path, site: str | None = None
) -> PreprocessedCache:
    """Preprocess every case of ``folder`` into ``cache_folder`` and return that cache.

    ``folder`` holds images named as in a raw dataset (``CASE_0000.ext``, one file per channel)
    or plain single-channel files (``anything.ext``), as ``predict`` accepts. Cases already in
    the cache are kept (a resumed run does not redo them). Each case's seg array is only the
    non-zero mask (0 inside, -1 outside), as for a prediction.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: not a folder of images")
    cases = find_input_cases(folder, plans.num_input_channels)
    cache = PreprocessedCache(cache_folder)
    cache.clean_incomplete()
    done = 0
    for case_id, files in cases.items():
        if cache.is_complete(case_id):
            continue
        data, geometry = load_case_images(files, plans.num_input_channels, case_id)
        data, seg, properties = preprocess_case(data, None, geometry, plans, configuration, case_id, site=site,
                                                sample_locations=False)
        cache.write_case(case_id, data, seg, properties)
        done += 1
    log.info("%s: %d image(s) preprocessed into %s (%d already there)", folder, done, cache.folder, len(cases) - done)
    return cache
