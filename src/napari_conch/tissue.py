"""Tissue detection at low resolution.

Brightfield tissue is coloured and background is not, so the mask thresholds colour
saturation (Otsu's method, capped near the background level so pale tissue is kept, and never
below a floor so an empty slide stays empty), then removes specks and fills small holes.
It works on a coarse pyramid level (about 8 µm/px by default), so it costs a fraction of a
second even for a gigapixel slide.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from .slide import Slide, as_slide

logger = logging.getLogger(__name__)

# Largest side (px) read to build a mask; a finer level is downsampled in dask chunks.
_MAX_MASK_SIDE = 4096


@dataclass(frozen=True)
class TissueMask:
    """A boolean tissue mask on a coarse grid, with its placement on the slide.

    Mask pixel (i, j) covers level-0 pixels [i·dy, (i+1)·dy) × [j·dx, (j+1)·dx).

    Attributes
    ----------
    mask : ndarray of bool (h, w)
    downsample : (float, float)
        Level-0 pixels per mask pixel, (dy, dx).
    mpp : float or None
        The slide's µm per level-0 pixel.
    threshold : float
        Saturation threshold used (0–1).
    """

    mask: np.ndarray
    downsample: tuple[float, float]
    mpp: float | None
    threshold: float

    @property
    def scale_um(self) -> tuple[float, float] | None:
        """Mask pixel size in µm (napari ``scale``); None when the slide's µm/px is unknown."""
        if self.mpp is None:
            return None
        return (self.downsample[0] * self.mpp, self.downsample[1] * self.mpp)

    @property
    def translate_um(self) -> tuple[float, float] | None:
        """napari ``translate`` that puts mask pixel centres where they belong (DESIGN §4)."""
        if self.mpp is None:
            return None
        return ((self.downsample[0] - 1) / 2 * self.mpp, (self.downsample[1] - 1) / 2 * self.mpp)

    @property
    def is_empty(self) -> bool:
        return not bool(self.mask.any())

    @property
    def fraction_of_slide(self) -> float:
        return float(self.mask.mean()) if self.mask.size else 0.0

    def fraction(self, y: float, x: float, h: float, w: float) -> float:
        """Tissue fraction of a level-0 box (y, x, h, w) — e.g. a tile — from the mask."""
        dy, dx = self.downsample
        i0, i1 = max(0, math.floor(y / dy)), min(self.mask.shape[0], math.ceil((y + h) / dy))
        j0, j1 = max(0, math.floor(x / dx)), min(self.mask.shape[1], math.ceil((x + w) / dx))
        if i1 <= i0 or j1 <= j0:
            return 0.0
        return float(self.mask[i0:i1, j0:j1].mean())


def tissue_mask(
    slide,
    *,
    target_mpp: float = 8.0,
    min_saturation: float = 0.07,
    min_object_um2: float = 20_000.0,
    max_hole_um2: float = 20_000.0,
    max_side: int = 2048,
) -> TissueMask:
    """Detect tissue on a coarse level of ``slide``.

    Parameters
    ----------
    slide : Slide, path or array
    target_mpp : float
        Resolution of the mask in µm/px when the slide's µm/px is known. Unknown µm/px:
        the mask's longer side is about ``max_side`` px.
    min_saturation : float
        Saturation (0–1) below which a pixel is background whatever Otsu finds; keeps an
        all-background slide empty instead of splitting its noise in two.
    min_object_um2, max_hole_um2 : float
        Tissue pieces smaller than this are removed; holes smaller than this are filled
        (µm²; converted to mask pixels, or to 0.05 % of the mask when µm/px is unknown).
    max_side : int
        Longest mask side allowed (bounds time and memory).

    Returns
    -------
    TissueMask
    """
    from skimage import filters, morphology

    slide = as_slide(slide)
    level, factor = _mask_level(slide, target_mpp, max_side)
    rgb = _read_downsampled(slide, level, factor)
    raw = _saturation(rgb)
    saturation = filters.gaussian(raw, sigma=1.0, preserve_range=True)
    if saturation.size == 0 or float(saturation.max()) < min_saturation:
        threshold = min_saturation
        mask = np.zeros(saturation.shape, bool)
    else:
        try:
            otsu = float(filters.threshold_otsu(saturation))
        except ValueError:  # a constant image
            otsu = min_saturation
        # Otsu splits background from the bulk of the tissue and can cut pale tissue
        # (necrosis, fat, mucin) away with the background; cap it a few times above the
        # background's own saturation (the 5th percentile: slides are rarely 95 % tissue).
        background = float(np.percentile(saturation, 5))
        if background > 2 * min_saturation:
            # Even the least saturated 5 % is coloured: there is no background to split off
            # (a crop inside tissue), and Otsu would cut the tissue itself in two.
            threshold = min_saturation
        else:
            threshold = max(min_saturation, min(otsu, 3.0 * background))
        # The smoothed saturation drops specks; the pixel's own keeps the smoothing from
        # spreading tissue a pixel onto the glass around it (a low threshold would).
        mask = (saturation > threshold) & (raw > threshold)
    fy, fx = slide.downsamples_yx[level]
    downsample = (fy * factor, fx * factor)
    if slide.mpp is not None:
        pixel_area = downsample[0] * downsample[1] * slide.mpp**2
        min_object = max(1, round(min_object_um2 / pixel_area))
        max_hole = max(1, round(max_hole_um2 / pixel_area))
    else:
        min_object = max_hole = max(1, round(mask.size * 0.0005))
    if mask.any():
        mask = _clean(morphology, mask, min_object, max_hole)
    logger.debug(
        "tissue mask of %s: level %d, factor %d, %s px, threshold %.3f, %.1f %% tissue",
        slide.name,
        level,
        factor,
        mask.shape,
        threshold,
        100 * mask.mean() if mask.size else 0,
    )
    return TissueMask(mask, downsample, slide.mpp, threshold)


def _clean(morphology, mask: np.ndarray, min_object: int, max_hole: int) -> np.ndarray:
    try:  # scikit-image ≥ 0.26 names the size limit max_size
        mask = morphology.remove_small_objects(mask, max_size=min_object)
        return morphology.remove_small_holes(mask, max_size=max_hole)
    except TypeError:
        mask = morphology.remove_small_objects(mask, min_size=min_object)
        return morphology.remove_small_holes(mask, area_threshold=max_hole)


def _mask_level(slide: Slide, target_mpp: float, max_side: int) -> tuple[int, int]:
    """Pick the level to read and an extra integer downsampling factor."""
    if slide.mpp is not None:
        level = slide.level_for_mpp(target_mpp)
        extra = max(1, int(target_mpp / slide.level_mpp(level)))
    else:
        sides = [max(r.shape) for r in slide.readers]
        fitting = [i for i, s in enumerate(sides) if s >= max_side]
        level = fitting[-1] if fitting else 0
        extra = 1
    side = max(slide.readers[level].shape) / extra
    if side > max_side:
        extra = math.ceil(max(slide.readers[level].shape) / max_side)
    return level, extra


def _read_downsampled(slide: Slide, level: int, factor: int) -> np.ndarray:
    data = slide.levels[level]
    if factor > 1:
        import dask.array as da

        # The last partial block is padded with copies of the image's last rows and columns,
        # so tissue at the image's edge is in the mask (trimming would lose it).
        pad_h, pad_w = (-data.shape[0]) % factor, (-data.shape[1]) % factor
        if pad_h or pad_w:
            data = da.pad(data, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
        block = factor * max(1, 1024 // factor)  # chunks must be whole multiples of factor
        data = data.rechunk((block, block, 3))
        data = da.coarsen(np.mean, data, {0: factor, 1: factor}, dtype=np.float32)
    # Threads in this process: the pixels are here, and inside a dask.distributed worker the
    # default scheduler would ship the graph around instead.
    return np.asarray(data.compute(scheduler="threads"), dtype=np.float32)


def _saturation(rgb: np.ndarray) -> np.ndarray:
    if rgb.size == 0:
        return np.zeros(rgb.shape[:2], np.float32)
    mx = rgb.max(axis=2)
    mn = rgb.min(axis=2)
    return np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-6), 0.0).astype(np.float32)
