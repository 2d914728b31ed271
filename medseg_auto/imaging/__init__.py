"""Imaging: the array operations of the case pipeline (crop to the non-zero region, per-channel
intensity normalization, resampling to a spacing), pure functions on ``(C, Z, Y, X)`` arrays.

They sit below planning and preprocessing because both need the same ones: the fingerprint
measures cases as they will be cropped and the planner sizes patches by the shape they will be
resampled to and names the normalization scheme, while preprocessing applies them (and
inference inverts them). One function serves both, so the plans cannot drift from the data.
"""
