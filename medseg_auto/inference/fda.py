"""Fourier domain adaptation (FDA): give a target image the low-frequency amplitudes of a donor.

Yang & Soatto, "FDA: Fourier Domain Adaptation for Semantic Segmentation", CVPR 2020, as used at
test time without training by Zakazov et al., "Feather-Light Fourier Domain Adaptation in MRI"
(DART 2022, pp. 88-97; notes: ``../shared/papers/NOTES_dart2022.md`` #9):

    t_new = F^-1( [ M_beta * |F(s)| + (1 - M_beta) * |F(t)| ,  angle(F(t)) ] )

``t`` is the target (the image to segment), ``s`` the source-domain donor, ``F`` the discrete
Fourier transform over the spatial axes and ``M_beta`` the low-frequency mask: after centring
the spectrum (``fftshift``), every frequency index within a radius ``beta * min(spatial size)``
of the centre, i.e. a disc (2D) or ball (3D) in index units, as the Feather-Light code does
(Yang & Soatto used a square of half-width ``beta * min(size)``; Feather-Light chose the disc
for the radial symmetry of the spectrum). The target's phase (the content) is kept; the
donor's low-band amplitude (contrast, brightness, large-scale style) replaces the target's.

Differences from the Feather-Light code, and why: it returns ``|F^-1(...)|`` rescaled to
``[0, 1]``, which suits their ``[0, 1]`` MR intensities but not our z-scored data with
negative values; we return the real part, which is exact because for ``beta < 0.5`` the mask
is symmetric under ``k -> -k`` so the spectrum stays Hermitian and the inverse is real.

Written by hand (a few lines of ``scipy.fft``): MONAI and torchvision have no amplitude-swap
transform, and this must work on ``(C, Z, Y, X)`` arrays for 2D and 3D alike.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

# scipy.fft and torch are imported inside the functions: the CLI imports this module for its
# defaults, and every command would otherwise pay for loading them.

DEFAULT_BETA = 0.03  # Feather-Light, Fig. 3 (their beta is the disc radius over min(H, W))
DEFAULT_DONORS = 7  # n_MST of the paper: predictions averaged over this many style donors


def low_frequency_mask(shape: Sequence[int], beta: float) -> np.ndarray:
    """Boolean mask over a *centred* spectrum of ``shape``: True within radius ``beta * min(shape)``
    (index units) of the zero frequency at ``n // 2`` per axis. ``beta = 0`` gives an empty mask."""
    check_beta(beta)
    radius = beta * min(shape)
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    squared = sum((grid - n // 2) ** 2 for grid, n in zip(grids, shape))
    return np.asarray(squared < radius**2)


def check_beta(beta: float) -> float:
    """``0 <= beta < 0.5``: beyond 0.5 the disc reaches the unpaired Nyquist frequency of an even
    axis and the result would no longer be a real image."""
    if not 0.0 <= float(beta) < 0.5:
        raise ValueError(f"FDA beta must be in [0, 0.5), got {beta}")
    return float(beta)


def fda_transfer(target: np.ndarray, donor: np.ndarray, beta: float = DEFAULT_BETA,
                 spatial_axes: int = 2, match_moments: bool = False) -> np.ndarray:
    """``target`` with the low-frequency amplitude spectrum of ``donor``; same shape and dtype.

    ``target`` and ``donor`` have equal shapes, e.g. ``(C, Z, Y, X)``; the transform runs over the
    last ``spatial_axes`` axes (2: every ``(Y, X)`` slice on its own, for 2D configurations;
    3: the whole ``(Z, Y, X)`` volume) and independently for every leading index (channel,
    slice). Use :func:`fit_donor` first when the donor's size differs. ``match_moments``: see
    :func:`apply_low_band`.
    """
    if target.shape != donor.shape:
        raise ValueError(f"FDA needs equal shapes (resize the donor first): target {target.shape}, donor {donor.shape}")
    return apply_low_band(target, low_band_amplitude(donor, beta, spatial_axes), beta, spatial_axes, match_moments)


def low_band_amplitude(donor: np.ndarray, beta: float, spatial_axes: int = 2) -> np.ndarray:
    """The donor's amplitudes inside the low-frequency mask: ``(*leading, n_mask)`` float64, with
    ``n_mask`` the mask's size for the donor's spatial shape. All a transfer needs of a donor, so
    a donor used for many targets of one shape is transformed once (``fda_donors`` caches it)."""
    _check_axes(donor, spatial_axes)
    from scipy import fft

    axes = tuple(range(donor.ndim - spatial_axes, donor.ndim))
    mask = low_frequency_mask(donor.shape[-spatial_axes:], beta)
    spectrum = fft.fftshift(fft.fftn(np.asarray(donor, dtype=np.float64), axes=axes), axes=axes)
    return np.abs(spectrum[..., mask])


def apply_low_band(target: np.ndarray, band: np.ndarray, beta: float, spatial_axes: int = 2,
                   match_moments: bool = False) -> np.ndarray:
    """``target`` with its low-band amplitudes replaced by ``band`` (from :func:`low_band_amplitude`
    of a donor of the target's shape), its phase kept. See :func:`apply_low_bands`."""
    return apply_low_bands(target, [band], beta, spatial_axes, match_moments)[0]


def apply_low_bands(target: np.ndarray, bands: Sequence[np.ndarray], beta: float, spatial_axes: int = 2,
                    match_moments: bool = False) -> list[np.ndarray]:
    """One adapted copy of ``target`` per donor band; the target's spectrum is computed once.

    ``match_moments``: afterwards give every channel the mean and standard deviation the target
    had (over all its voxels). Our inputs are z-scored, and the swap changes both moments (the
    donor's low band carries its own energy), so without this the network sees inputs off the
    unit scale it was trained on; with it, FDA changes only the image's large-scale layout.
    """
    _check_axes(target, spatial_axes)
    mask = low_frequency_mask(target.shape[-spatial_axes:], beta)
    if not mask.any():
        return [target.copy() for _ in bands]
    expected = target.shape[: target.ndim - spatial_axes] + (int(mask.sum()),)
    for band in bands:
        if band.shape != expected:
            raise ValueError(f"FDA donor band of shape {band.shape} does not fit a target of shape {target.shape}")
    from scipy import fft

    axes = tuple(range(target.ndim - spatial_axes, target.ndim))
    spectrum = fft.fftshift(fft.fftn(target.astype(np.float64), axes=axes), axes=axes)
    phase = np.exp(1j * np.angle(spectrum[..., mask]))
    views = []
    for band in bands:
        swapped = spectrum.copy()
        swapped[..., mask] = band * phase
        adapted = fft.ifftn(fft.ifftshift(swapped, axes=axes), axes=axes).real
        if match_moments:
            adapted = _match_moments(adapted, target.astype(np.float64))
        views.append(adapted.astype(target.dtype, copy=False))
    return views


def _match_moments(adapted: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``adapted`` shifted and scaled per channel (axis 0) to ``target``'s mean and std."""
    reduce = tuple(range(1, target.ndim))
    mean, std = adapted.mean(axis=reduce, keepdims=True), adapted.std(axis=reduce, keepdims=True)
    wanted_mean, wanted_std = target.mean(axis=reduce, keepdims=True), target.std(axis=reduce, keepdims=True)
    return (adapted - mean) / np.where(std > 1e-8, std, 1.0) * wanted_std + wanted_mean


def _check_axes(array: np.ndarray, spatial_axes: int) -> None:
    if spatial_axes not in (2, 3) or spatial_axes > array.ndim:
        raise ValueError(f"spatial_axes must be 2 or 3 (and at most target.ndim), got {spatial_axes}")


def fit_donor(donor: np.ndarray, spatial_shape: Sequence[int]) -> np.ndarray:
    """Resize a donor ``(C, z, y, x)`` to ``(C, *spatial_shape)`` (linear interpolation per axis).

    Why resize rather than crop or pad: donor and target are both at the configuration's
    spacing but cover different fields of view. Resizing keeps the donor's mean intensity (so
    the zero-frequency amplitude, ``mean x voxel count``, is comparable) and maps the donor's
    whole field of view onto the target's, so the ``beta`` window takes the same share of both
    spectra. Zero padding would instead add a flat border that changes the low frequencies,
    and cropping would drop part of the donor's style.
    """
    import torch
    import torch.nn.functional as functional

    spatial_shape = tuple(int(n) for n in spatial_shape)
    if tuple(donor.shape[1:]) == spatial_shape:
        return np.asarray(donor, dtype=np.float32)
    volume = torch.from_numpy(np.array(donor, dtype=np.float32))[None]  # a copy: donors are read-only memory maps
    resized = functional.interpolate(volume, size=spatial_shape, mode="trilinear", align_corners=False)
    return resized[0].numpy()
