"""Exact and near-duplicate cases of a raw dataset, and the case links that splits must respect.

Why: a duplicated image in both the training and the test split makes in-domain numbers lie
(BUSI is known to hold such images). Every case's first channel is hashed twice:

- exact: SHA-1 of the image array (same pixels, whatever the file name or format);
- near: a 64-bit perceptual hash of the middle slice (of a 3D image: the middle ``z`` slice),
  scaled to 8 bits. ``imagehash.phash`` (DCT hash) when the ``imagehash`` package is installed;
  otherwise a difference hash (dHash, 9x8 grey thumbnail, sign of horizontal gradients) written
  here. :attr:`DuplicateReport.method` says which one ran. Two cases whose hashes differ in at
  most ``max_distance`` bits are near duplicates (the same picture re-saved, rescaled, slightly
  cropped or re-compressed; measured on BUSI: see the README).

Duplicate pairs are merged transitively into clusters (union-find); a duplicate whose label map
disagrees with its cluster's first case (one mask empty and the other not, or foreground Dice
< 0.5 after resizing a rescaled copy's mask) is listed as a label conflict. :func:`case_links` joins
those clusters with the dataset's optional ``groups`` map (case -> patient, beside ``sites``)
so that a split can keep every linked case on the same side.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from medseg_auto.dataset.dataset_json import CaseFiles, DatasetSpec
from medseg_auto.dataset.image_io import read_case_images
from medseg_auto.utils.logging_setup import get_logger
from medseg_auto.utils.parallel import parallel_map

#: Bits of 64. On BUSI (780 images) pairwise pHash distances 0-10 are rare (47, 90, 48, 24, 8, 10
#: pairs at 0, 2, 4, 6, 8, 10) and the pairs looked at up to 10 show the same scene (re-saved
#: frames of one examination); from 12 on the counts rise with unrelated images (22, 57 at 12, 14).
DEFAULT_MAX_DISTANCE = 8
#: Duplicate images whose label maps overlap less than this (foreground Dice) are label conflicts.
LABEL_AGREEMENT_DICE = 0.5
log = get_logger("dataset.duplicates")


@dataclass
class DuplicateReport:
    """``exact`` / ``near``: clusters (sorted case lists, 2+ cases) of identical / perceptually
    near images; ``near`` clusters include the exact ones. ``method``: the perceptual hash used."""

    method: str
    max_distance: int
    exact: list[list[str]] = field(default_factory=list)
    near: list[list[str]] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    label_conflicts: list[dict] = field(default_factory=list)

    @property
    def num_duplicate_cases(self) -> int:
        """Cases that have at least one near (or exact) duplicate."""
        return sum(len(cluster) for cluster in self.near)

    @property
    def num_redundant_cases(self) -> int:
        """Cases beyond the first of each cluster (what de-duplicating would remove)."""
        return sum(len(cluster) - 1 for cluster in self.near)

    def to_json(self) -> dict:
        return {"method": self.method, "max_distance_bits": self.max_distance,
                "exact_clusters": self.exact, "near_clusters": self.near,
                "num_exact_cases": sum(len(c) for c in self.exact),
                "num_duplicate_cases": self.num_duplicate_cases,
                "num_redundant_cases": self.num_redundant_cases, "unreadable": self.unreadable,
                "label_conflicts": self.label_conflicts}


def perceptual_hash_method() -> str:
    try:
        import imagehash  # noqa: F401
    except ImportError:
        return "dhash (built in, 64 bit)"
    return "imagehash.phash (DCT, 64 bit)"


def image_hashes(image: np.ndarray) -> tuple[str, int]:
    """``(exact SHA-1 hex, 64-bit perceptual hash)`` of an image ``(C, Z, Y, X)`` (channel 0,
    middle ``z`` slice for the perceptual hash)."""
    exact = hashlib.sha1(np.ascontiguousarray(image[0]).tobytes() + str(image.shape[1:]).encode()).hexdigest()
    plane = image[0, image.shape[1] // 2].astype(np.float64)
    low, high = float(plane.min()), float(plane.max())
    grey = np.zeros(plane.shape, np.uint8) if high <= low else ((plane - low) / (high - low) * 255).astype(np.uint8)
    return exact, _perceptual_hash(grey)


def _perceptual_hash(grey: np.ndarray) -> int:
    from PIL import Image

    picture = Image.fromarray(grey)
    try:
        import imagehash
    except ImportError:
        thumbnail = np.asarray(picture.resize((9, 8), Image.Resampling.LANCZOS), dtype=np.int16)
        bits = (thumbnail[:, 1:] > thumbnail[:, :-1]).flatten()
    else:
        bits = imagehash.phash(picture).hash.flatten()
    return int("".join("1" if bit else "0" for bit in bits), 2)


def _hash_case(case: CaseFiles) -> tuple[str, str | None, int | None]:
    try:
        image, _ = read_case_images(case.images)
    except Exception as error:  # reported as unreadable; verify names the cause elsewhere
        log.debug("%s: not hashed (%s)", case.case_id, error)
        return case.case_id, None, None
    exact, perceptual = image_hashes(image)
    return case.case_id, exact, perceptual


def find_duplicates(spec: DatasetSpec, max_distance: int = DEFAULT_MAX_DISTANCE, num_processes: int = 1,
                    show_progress: bool = False) -> DuplicateReport:
    """Hash every training case of ``spec`` and cluster exact and near duplicates."""
    cases = spec.training_cases(require_labels=False)
    hashed = parallel_map(_hash_case, [(case,) for case in cases], num_processes, "hash images", show_progress)
    report = cluster_hashes({case: (exact, phash) for case, exact, phash in hashed if exact is not None},
                            max_distance, perceptual_hash_method(),
                            unreadable=sorted(case for case, exact, _ in hashed if exact is None))
    labels = {case.case_id: case.label for case in cases if case.label is not None}
    report.label_conflicts = label_conflicts(report.near, labels)
    return report


def label_conflicts(clusters: Sequence[Sequence[str]], label_files: Mapping[str, object],
                    min_dice: float = LABEL_AGREEMENT_DICE) -> list[dict]:
    """Pairs of duplicate images whose label maps disagree: the first case of each cluster
    against every other. A conflict: one map empty and the other not, or a foreground Dice
    below ``min_dice`` (2D maps of other sizes are compared after a nearest-neighbour resize, as
    near duplicates are often rescaled copies; 3D maps of other shapes only by emptiness)."""
    from medseg_auto.dataset.image_io import read_segmentation

    conflicts = []
    for cluster in clusters:
        if cluster[0] not in label_files:
            continue
        first, _ = read_segmentation(label_files[cluster[0]])
        for other in cluster[1:]:
            if other not in label_files:
                continue
            second, _ = read_segmentation(label_files[other])
            dice = _foreground_dice(first, _fit_shape(second, first.shape))
            if (first.any() != second.any()) or (dice is not None and dice < min_dice):
                conflicts.append({"cases": [cluster[0], other], "label_dice": dice,
                                  "empty": [not first.any(), not second.any()]})
    return conflicts


def _fit_shape(label: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
    """``label (Z, Y, X)`` at ``shape``: as is, resized (nearest) when 2D, else None."""
    if label.shape == shape:
        return label
    if label.shape[0] != 1 or shape[0] != 1:
        return None
    from PIL import Image

    resized = Image.fromarray(label[0].astype(np.int32)).resize((shape[2], shape[1]), Image.Resampling.NEAREST)
    return np.asarray(resized)[None]


def _foreground_dice(first: np.ndarray, second: np.ndarray | None) -> float | None:
    if second is None:
        return None
    a, b = first > 0, second > 0
    total = int(a.sum() + b.sum())
    return 1.0 if total == 0 else float(2 * np.logical_and(a, b).sum() / total)


def cluster_hashes(hashes: Mapping[str, tuple[str, int]], max_distance: int, method: str,
                   unreadable: Sequence[str] = ()) -> DuplicateReport:
    """Cluster cases by equal exact hash, and by perceptual hashes at most ``max_distance`` bits apart."""
    ids = sorted(hashes)
    exact_pairs = []
    by_exact: dict[str, list[str]] = {}
    for case in ids:
        by_exact.setdefault(hashes[case][0], []).append(case)
    for members in by_exact.values():
        exact_pairs += [(members[0], other) for other in members[1:]]
    values = np.array([hashes[case][1] for case in ids], dtype=np.uint64)
    near_pairs = list(exact_pairs)
    for index in range(len(ids) - 1):
        distances = _popcount(values[index] ^ values[index + 1:])
        near_pairs += [(ids[index], ids[index + 1 + j]) for j in np.flatnonzero(distances <= max_distance)]
    return DuplicateReport(method, max_distance, _clusters(ids, exact_pairs), _clusters(ids, near_pairs),
                           list(unreadable))


def case_links(case_ids: Sequence[str], duplicates: Sequence[Sequence[str]] = (),
               groups: Mapping[str, str] | None = None) -> dict[str, str]:
    """``case -> link id``: cases in one duplicate cluster or one ``groups`` entry (patient)
    share an id (the smallest case id of the linked set); unlinked cases map to themselves."""
    pairs = [(cluster[0], other) for cluster in duplicates for other in cluster[1:]]
    by_group: dict[str, list[str]] = {}
    for case in case_ids:
        if groups and case in groups:
            by_group.setdefault(str(groups[case]), []).append(case)
    pairs += [(members[0], other) for members in by_group.values() for other in members[1:]]
    known = set(case_ids)
    parent = _union_find(sorted(known), [(a, b) for a, b in pairs if a in known and b in known])
    return {case: parent[case] for case in case_ids}


def _clusters(ids: Sequence[str], pairs: Sequence[tuple[str, str]]) -> list[list[str]]:
    root = _union_find(ids, pairs)
    members: dict[str, list[str]] = {}
    for case in ids:
        members.setdefault(root[case], []).append(case)
    return sorted(sorted(group) for group in members.values() if len(group) > 1)


def _union_find(ids: Sequence[str], pairs: Sequence[tuple[str, str]]) -> dict[str, str]:
    """Each id -> the smallest id of its connected component."""
    parent = {case: case for case in ids}

    def find(case: str) -> str:
        while parent[case] != case:
            parent[case] = parent[parent[case]]
            case = parent[case]
        return case

    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return {case: find(case) for case in ids}


def _popcount(values: np.ndarray) -> np.ndarray:
    """Set bits per uint64 (``np.bitwise_count`` where numpy has it)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(values)
    bytes_ = values.view(np.uint8).reshape(-1, 8)
    return np.unpackbits(bytes_, axis=1).sum(axis=1)
