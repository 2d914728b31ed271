"""Random amplitude mixup (RAM, Zhou et al. ECCV 2022, the baseline of SGCG): an image keeps its
Fourier phase (structure) and takes part of another image's low-frequency amplitude (contrast,
brightness, texture: the "style" that differs between sites).

With ``F = fft(x)``, amplitude ``A = |F|`` and phase ``P``, and a donor amplitude ``A_d``:

``A_mix = A + ratio * M * (A_d - A)``, ``x_mix = real(ifft(A_mix * exp(i P)))``,

where ``M`` is 1 in the low-frequency window (``|k_axis| <= floor(window * n_axis)`` on every
spatial axis, ``k`` the signed frequency index) and 0 elsewhere. ``ratio`` is the donor's share:
0 returns the image, 1 takes the donor's low band. RAM-DSIR's code (``low_freq_mutate_np``) uses
the image's own share ``r`` drawn from {0.1, ..., 1.0} (so donor share 0 .. 0.9) and a square
window of half-width ``floor(min(h, w) * 0.1)`` around the centre of the shifted spectrum; we
take the half-width per axis, which is the same on the square images RAM used and keeps the
band proportional on non-square patches (BUSI+STU 2d: 128 x 160). The window is symmetric
about frequency 0, so ``A_mix`` stays an even function and the result is real. No clipping:
our images are z-scored, not RAM's fixed [-1, 1] range.

Written with ``torch.fft`` because no maintained library offers amplitude mixing on batched
2D/3D tensors; the same code serves 2D and 3D (the transform runs over all spatial axes).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def low_frequency_mask(spatial_shape: tuple[int, ...] | torch.Size, window: float,
                       device: torch.device | str = "cpu") -> torch.Tensor:
    """Bool ``(*spatial)`` in unshifted FFT order: True where every axis's ``|k| <= floor(window * n)``."""
    mask = torch.ones((), dtype=torch.bool, device=device)
    for axis, size in enumerate(spatial_shape):
        signed = torch.fft.fftfreq(size, d=1.0 / size, device=device).round().abs()
        keep = signed <= int(window * size)
        shape = [1] * len(spatial_shape)
        shape[axis] = size
        mask = mask & keep.reshape(shape)
    return mask


def mix_low_frequency_amplitude(images: torch.Tensor, donors: torch.Tensor, ratios: torch.Tensor,
                                window: float = 0.1) -> torch.Tensor:
    """Mix donor amplitudes into ``images``: ``(N, C, *spatial)`` each, ``ratios`` ``(N,)`` in [0, 1].

    Channel ``c`` of an image takes the amplitude of channel ``c`` of its donor. Returns a new
    float tensor of the images' shape and dtype.
    """
    if images.shape != donors.shape:
        raise ValueError(f"images {tuple(images.shape)} and donors {tuple(donors.shape)} differ in shape")
    spatial_axes = tuple(range(2, images.dim()))
    spectrum = torch.fft.fftn(images.float(), dim=spatial_axes)
    donor_amplitude = torch.fft.fftn(donors.float(), dim=spatial_axes).abs()
    amplitude, phase = spectrum.abs(), spectrum.angle()
    mask = low_frequency_mask(images.shape[2:], window, images.device)
    share = ratios.float().reshape(-1, *([1] * (images.dim() - 1))) * mask
    mixed = amplitude + share * (donor_amplitude - amplitude)
    return torch.fft.ifftn(torch.polar(mixed, phase), dim=spatial_axes).real.to(images.dtype)


def choose_donors(sites: list[str | None], generator: torch.Generator | None = None) -> tuple[list[int], bool]:
    """For each sample a donor index from another site of the batch (uniformly among them).

    Returns ``(donors, cross_site)``. When no sample has another site (one site, or no site
    recorded), the donor is another sample of the batch and ``cross_site`` is False; a batch of
    one sample is its own donor (mixing then changes nothing).
    """
    size = len(sites)
    cross_site = any(sites[i] is not None and sites[j] is not None and sites[i] != sites[j]
                     for i in range(size) for j in range(size))
    donors = []
    for i in range(size):
        if cross_site:
            candidates = [j for j in range(size) if sites[j] is not None and sites[i] is not None and sites[j] != sites[i]]
        else:
            candidates = []
        if not candidates:
            candidates = [j for j in range(size) if j != i] or [i]
        pick = int(torch.randint(len(candidates), (1,), generator=generator))
        donors.append(candidates[pick])
    return donors, cross_site


def donor_image(stored: np.ndarray, patch_size: Sequence[int], rng: np.random.Generator) -> torch.Tensor:
    """A style donor of the patch's shape, ``(C, *patch_size)``, from a stored case ``(C, Z, Y, X)``.

    A random crop of at most the patch size (2D patches: of a random slice), resized to the patch
    size where the image is smaller. Resized, not padded: a donor padded into the patch carries
    the amplitude of a small image in a flat canvas, not its site's style (BUSI+STU, coarse 2d
    plan: STU's 64 x 64 slices filled 20% of the 128 x 160 patch, and mixing with them at share
    0.9 cut a BUSI sample's intensity sd from 0.92 to 0.50). FDA resizes its targets the same way.
    """
    patch = tuple(int(v) for v in patch_size)
    volume = stored[:, int(rng.integers(stored.shape[1]))] if len(patch) == 2 else stored
    spatial = volume.shape[1:]
    size = [min(p, s) for p, s in zip(patch, spatial)]
    start = [int(rng.integers(s - c + 1)) for s, c in zip(spatial, size)]
    crop = volume[(slice(None), *(slice(a, a + c) for a, c in zip(start, size)))]
    donor = torch.from_numpy(np.array(crop, dtype=np.float32))  # a copy: the cache is mapped read-only
    if tuple(size) == patch:
        return donor
    mode = "bilinear" if len(patch) == 2 else "trilinear"
    return torch.nn.functional.interpolate(donor[None], size=patch, mode=mode, align_corners=False)[0]
