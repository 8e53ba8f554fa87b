"""The map rules: tile values onto grid cells, the one decision rule, and how a
segmentation is assembled from class probabilities — for tile maps and dense maps alike.

Maps live on the tile grid's cells: with stride s level-0 px, cell (i, j) covers
[i·s, (i+1)·s) on each axis, and a tile spans k = tile/stride cells per side. A cell's value
is the mean over all tiles covering it — CONCH's segmentation protocol with overlapping tiles
(75 % overlap: every cell averages 16 tiles).

Three rules hold for every map and every output made from it:

- **Tissue**: a cell carries a value only where at least half of it is tissue
  (:data:`~napari_conch.tiling.CELL_TISSUE_MIN`, from the tissue mask at cell resolution);
  other cells are label 0 and NaN. With ``tissue=False`` every cell inside the image counts.
- **Edge**: maps end at the image's edge; a cell straddling it counts only its part inside.
  Class areas are the tissue area of their cells, so Σ class areas ≤ tissue area ≤ image
  area.
- **Background**: where a background class wins — a cell, a tile in a table, a hit, a slide
  call — the answer is background (label 0, ``"background"``), never a tissue class.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .colors import label_colors
from .results import (
    TILE_BACKGROUND,
    TILE_NOT_EMBEDDED,
    TILE_UNASSIGNED,
    SegmentationResult,
)
from .tiling import TileGrid

__all__ = [
    "TILE_BACKGROUND",
    "TILE_NOT_EMBEDDED",
    "TILE_UNASSIGNED",
    "cells_from_tiles",
    "contrast_limits",
    "decide",
    "normalized_entropy",
    "segmentation_result",
]


def cells_from_tiles(grid: TileGrid, tile_values: np.ndarray) -> np.ndarray:
    """Average per-tile values onto grid cells: (N[, Q]) → (Q, H, W), NaN where no tile.

    A tile at grid index (i, j) covers cells (i … i+k−1, j … j+k−1), k = tile/stride; each
    cell takes the mean over the tiles covering it (NaN tiles ignored). The map has
    ``grid.cell_shape`` cells: it ends at the image's edge, where tiles may reach beyond.
    """
    values = np.asarray(tile_values, np.float64)
    if values.ndim == 1:
        values = values[:, None]
    rows, cols = grid.shape
    k = grid.tiles_per_cell_side
    q = values.shape[1]
    finite = np.isfinite(values).all(axis=1)
    sums = np.zeros((q, rows + 2 * (k - 1), cols + 2 * (k - 1)))
    counts = np.zeros((rows + 2 * (k - 1), cols + 2 * (k - 1)))
    r = grid.indices[finite, 0] + k - 1
    c = grid.indices[finite, 1] + k - 1
    sums[:, r, c] = values[finite].T
    counts[r, c] = 1.0
    total = _box_sum(sums, k)
    n = _box_sum(counts[None], k)[0]
    with np.errstate(invalid="ignore", divide="ignore"):
        out = total / n
    out[:, n == 0] = np.nan
    h, w = grid.cell_shape
    return np.ascontiguousarray(out[:, :h, :w], np.float32)


def tiles_from_cells(grid: TileGrid, cell_values: np.ndarray, weights=None) -> np.ndarray:
    """The reverse of :func:`cells_from_tiles`: each tile's (weighted) mean of the cells it
    covers. (Q, H, W) cell values (and (H, W) weights, e.g. each cell's tissue) → (N, Q);
    0 where a tile covers no weight."""
    values = np.asarray(cell_values, np.float64)
    h, w = values.shape[-2:]
    weights = np.ones((h, w)) if weights is None else np.asarray(weights, np.float64)
    k = grid.tiles_per_cell_side
    rows, cols = grid.shape
    padded = np.zeros((values.shape[0] + 1, rows + k - 1, cols + k - 1))
    hh, ww = min(h, padded.shape[1]), min(w, padded.shape[2])
    padded[:-1, :hh, :ww] = values[:, :hh, :ww] * weights[:hh, :ww]
    padded[-1, :hh, :ww] = weights[:hh, :ww]
    sums = _box_sum(padded, k)  # (Q + 1, rows, cols): window at each tile's top-left cell
    r, c = grid.indices[:, 0], grid.indices[:, 1]
    total, weight = sums[:-1, r, c], sums[-1, r, c]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(weight > 0, total / weight, 0.0).T


def decide(probabilities: np.ndarray, keep: Sequence[int], min_confidence=None) -> np.ndarray:
    """The one decision rule of every output: class probabilities (C_all, ...) → labels.

    Label k ≥ 1 is ``keep[k - 1]`` (the non-background classes, in order);
    :data:`TILE_BACKGROUND` (0) where another class — the background — wins;
    :data:`TILE_UNASSIGNED` where the winner's probability is below ``min_confidence``;
    :data:`TILE_NOT_EMBEDDED` where probabilities are NaN.
    """
    probs = np.asarray(probabilities)
    finite = np.isfinite(probs).all(axis=0)
    filled = np.where(finite, probs, -1.0)
    winner = np.argmax(filled, axis=0)
    labels = np.full(winner.shape, TILE_BACKGROUND, np.int32)
    for label, index in enumerate(keep, start=1):
        labels[winner == index] = label
    if min_confidence is not None:
        best = np.max(filled, axis=0)
        labels[finite & (labels > 0) & (best < float(min_confidence))] = TILE_UNASSIGNED
    labels[~finite] = TILE_NOT_EMBEDDED
    return labels


def segmentation_result(
    cell_probs: np.ndarray,
    tile_probs: np.ndarray,
    prompt_set,
    background_index: int | None,
    min_confidence,
    *,
    shown: np.ndarray,
    tissue_mm2: np.ndarray,
    scale_um,
    translate_um,
    colors,
    metadata: dict,
) -> SegmentationResult:
    """A :class:`SegmentationResult` from class probabilities per map cell (C_all, H, W) and
    per tile (N, C_all) — the decision, tissue and area rules every map keeps (tile maps
    and dense maps alike).

    Cells are decided before the tissue rule blanks them: a class's area is all the tissue
    of the cells it wins (``tissue_mm2``), cells under half tissue too (drawn unlabelled,
    but their tissue is measured); ``shown`` cells carry labels and probabilities.
    """
    names = list(getattr(prompt_set, "names", prompt_set))  # a PromptSet, or class names
    keep = [i for i in range(len(names)) if i != background_index]
    decided = decide(cell_probs, keep, min_confidence)
    cell_probs = cell_probs.copy()
    cell_probs[:, ~shown] = np.nan
    dtype = np.uint16 if len(keep) > 254 else np.uint8
    labels = np.where(shown, decided, 0).clip(min=0).astype(dtype)
    hidden = np.where(shown, 0, decided).clip(min=0).astype(dtype)
    uncertainty = (
        normalized_entropy(cell_probs)
        if len(names) > 1
        else np.where(np.isfinite(cell_probs[0]), 0.0, np.nan).astype(np.float32)
    )
    class_names = [names[i] for i in keep]
    metadata = {
        **metadata,
        "prompts": prompt_set.to_json() if hasattr(prompt_set, "to_json") else None,
        "background": None if background_index is None else names[background_index],
        "min_confidence": min_confidence,
    }
    result = SegmentationResult(
        labels=labels,
        probabilities=cell_probs[keep].astype(np.float32),
        uncertainty=uncertainty,
        class_names=class_names,
        colors=label_colors(class_names, colors),
        areas_mm2={},
        scale_um=tuple(scale_um),
        translate_um=tuple(translate_um),
        tile_probabilities=tile_probs[:, keep],
        background_probability=None if background_index is None else cell_probs[background_index],
        tile_labels=decide(tile_probs.T, keep, min_confidence),
        tile_background_probability=(
            None if background_index is None else tile_probs[:, background_index]
        ),
        cell_tissue_mm2=np.asarray(tissue_mm2),
        hidden_labels=hidden,
        metadata=metadata,
    )
    result.areas_mm2 = result.measure()  # the tissue of every cell each class wins
    return result


def normalized_entropy(probs: np.ndarray) -> np.ndarray:
    """Entropy of class probabilities (C, H, W) over C, divided by log C: 0 = certain,
    1 = uniform; NaN where a probability is NaN."""
    p = np.clip(probs.astype(np.float64), 1e-12, 1.0)
    h = -(p * np.log(p)).sum(axis=0) / np.log(probs.shape[0])
    h[~np.isfinite(probs).all(axis=0)] = np.nan
    return h.astype(np.float32)


def contrast_limits(values: np.ndarray) -> tuple[float, float]:
    """A map's display range: its finite values' range, never empty."""
    finite = values[np.isfinite(values)]
    limits = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if limits[0] == limits[1]:
        limits = (limits[0] - 1e-6, limits[1] + 1e-6)
    return limits


def _box_sum(a: np.ndarray, k: int) -> np.ndarray:
    """Sum of every k × k window (valid part) over the last two axes, via an integral image."""
    if k == 1:
        return a
    table = np.zeros((a.shape[0], a.shape[1] + 1, a.shape[2] + 1))
    table[:, 1:, 1:] = a.cumsum(axis=1).cumsum(axis=2)
    return table[:, k:, k:] - table[:, :-k, k:] - table[:, k:, :-k] + table[:, :-k, :-k]
