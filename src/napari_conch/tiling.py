"""Tile grids: where the model looks, in micrometres and level-0 pixels (DESIGN §4).

A grid has one origin and one stride; tile (i, j) starts at level-0 pixel
(a0_y + i·s, a0_x + j·s) and covers ``tile_px`` × ``tile_px`` level-0 pixels, read from the
coarsest pyramid level that is not coarser than the model's µm/px and resized to the model's
input. Map cell (i, j) covers [a0 + i·s, a0 + (i+1)·s), so maps made on the grid are placed in
napari with ``scale = s·mpp`` and ``translate = (a0 + (s−1)/2)·mpp``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass, field, replace

import numpy as np

from .slide import as_slide
from .tissue import TissueMask, tissue_mask

logger = logging.getLogger(__name__)

# Enlarging the pixels read more than this to the model's input shows it blur, not detail.
_MAX_ENLARGEMENT = 2.0

DEFAULT_MIN_TISSUE = 0.1
# A map cell is labelled only where at least this fraction of it (of its part inside the
# image) is tissue: the majority rule puts label borders on the tissue border to within half
# a cell, and keeps the rim of glass around tissue (which overlapping tiles would otherwise
# colour) unlabelled.
CELL_TISSUE_MIN = 0.5


@dataclass(frozen=True, eq=False)
class TileGrid:
    """Tiles of one slide for one model geometry.

    Attributes
    ----------
    tile_um, stride_um : float
        Tile side and step in µm (as realised in whole level-0 pixels).
    mpp : float
        µm per level-0 pixel of the slide.
    tile_px, stride_px : int
        Tile side and step in level-0 pixels.
    origin_px : (int, int)
        Level-0 (y, x) where tile (0, 0) starts.
    shape : (int, int)
        Rows and columns of the full grid over the slide.
    level : int
        Pyramid level tiles are read from; ``read_px`` is the tile side at that level.
    input_size : int
        Model input side the tiles are resized to.
    indices : ndarray (N, 2) int32
        Grid (row, column) of each kept tile, in raster order.
    tissue_fraction : ndarray (N,) float32
        Tissue fraction of each kept tile (1.0 when tissue filtering is off).
    min_tissue : float
        Tiles with less tissue than this were left out (0: any tissue keeps a tile).
    slide_shape : (int, int)
        Level-0 (H, W) of the slide.
    offset_um : (float, float)
        World position (µm) of level-0 pixel (0, 0): the slide's ``origin_um`` (an
        OME-Zarr's translation). Maps and tile positions in µm include it; pixel positions
        do not.
    cell_tissue : ndarray (h, w) float32 or None
        Tissue fraction of each map cell (tissue area in the cell ÷ the cell's area), from
        the tissue mask; None when tissue detection was off (then every cell's part inside
        the image counts as tissue, see :attr:`cell_tissue_fraction`).
    """

    tile_um: float
    stride_um: float
    mpp: float
    tile_px: int
    stride_px: int
    origin_px: tuple[int, int]
    shape: tuple[int, int]
    level: int
    read_px: int
    input_size: int
    indices: np.ndarray
    tissue_fraction: np.ndarray
    min_tissue: float
    slide_shape: tuple[int, int]
    tissue_filter: bool = True
    offset_um: tuple[float, float] = (0.0, 0.0)
    cell_tissue: np.ndarray | None = field(default=None, repr=False)
    _signature: str | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def subset(self, keep) -> TileGrid:
        """The same grid with only the tiles where ``keep`` (bool (N,) or positions) holds."""
        keep = np.asarray(keep)
        if keep.dtype != bool:
            mask = np.zeros(len(self), bool)
            mask[keep] = True
            keep = mask
        return replace(
            self,
            indices=self.indices[keep],
            tissue_fraction=self.tissue_fraction[keep],
            _signature=None,
        )

    # -- map cells -------------------------------------------------------------------------

    @property
    def cell_shape(self) -> tuple[int, int]:
        """(rows, columns) of a map on this grid: cells of ``stride_px`` from the origin up to
        the image's edge (the last cell may straddle it), never past it."""
        k = self.tiles_per_cell_side
        return tuple(
            max(1, min(n + k - 1, math.ceil((size - origin) / self.stride_px)))
            for n, size, origin in zip(self.shape, self.slide_shape, self.origin_px, strict=True)
        )

    @property
    def cell_inside_fraction(self) -> np.ndarray:
        """Fraction of each map cell that lies inside the image, (h, w) float32."""
        ys, xs = (
            _inside_lengths(n, origin, self.stride_px, size) / self.stride_px
            for n, origin, size in zip(
                self.cell_shape, self.origin_px, self.slide_shape, strict=True
            )
        )
        return np.outer(ys, xs).astype(np.float32)

    @property
    def cell_tissue_fraction(self) -> np.ndarray:
        """Tissue fraction of each map cell, (h, w) float32: from the tissue mask, or — when
        tissue detection was off — the part of the cell inside the image."""
        if self.cell_tissue is not None and self.cell_tissue.shape == self.cell_shape:
            return self.cell_tissue
        return self.cell_inside_fraction

    @property
    def cell_is_tissue(self) -> np.ndarray:
        """Cells that may carry a class: at least :data:`CELL_TISSUE_MIN` of their part inside
        the image is tissue (what lies beyond the edge is not glass, just not there)."""
        inside = self.cell_inside_fraction
        return (inside > 0) & (self.cell_tissue_fraction >= CELL_TISSUE_MIN * inside)

    @property
    def cell_area_mm2(self) -> float:
        """Area of one whole map cell in mm²."""
        return (self.stride_px * self.mpp / 1000.0) ** 2

    @property
    def coords(self) -> np.ndarray:
        """Level-0 (y, x) of each tile's top-left corner, (N, 2) int64."""
        origin = np.asarray(self.origin_px, np.int64)
        return origin + self.indices.astype(np.int64) * self.stride_px

    @property
    def partial(self) -> np.ndarray:
        """Tiles that reach past the slide's edge (padded with background when read)."""
        ends = self.coords + self.tile_px
        return (ends[:, 0] > self.slide_shape[0]) | (ends[:, 1] > self.slide_shape[1])

    @property
    def overlap(self) -> float:
        return 1.0 - self.stride_px / self.tile_px

    @property
    def cell_scale_um(self) -> tuple[float, float]:
        """napari ``scale`` of a map with one value per grid cell."""
        s = self.stride_px * self.mpp
        return (s, s)

    @property
    def cell_translate_um(self) -> tuple[float, float]:
        """napari ``translate`` of a map with one value per grid cell (DESIGN §4)."""
        return tuple(
            o + (a + (self.stride_px - 1) / 2) * self.mpp
            for a, o in zip(self.origin_px, self.offset_um, strict=True)
        )

    @property
    def tiles_per_cell_side(self) -> int:
        """How many grid cells one tile spans per axis (4 at 75 % overlap)."""
        return max(1, round(self.tile_px / self.stride_px))

    def tiles_in_box_um(self, box_um) -> np.ndarray:
        """Positions (into the N tiles) of tiles intersecting a µm box (y0, x0, y1, x1)."""
        oy, ox = self.offset_um
        y0, x0, y1, x1 = (
            (float(v) - o) / self.mpp for v, o in zip(box_um, (oy, ox, oy, ox), strict=True)
        )
        c = self.coords
        hit = (
            (c[:, 0] < y1)
            & (c[:, 0] + self.tile_px > y0)
            & (c[:, 1] < x1)
            & (c[:, 1] + self.tile_px > x0)
        )
        return np.flatnonzero(hit)

    def tile_centres_um(self, offset_um=(0.0, 0.0)) -> np.ndarray:
        """World (y, x) µm of each tile's centre, (N, 2); ``offset_um``: where the slide's
        layer was moved to, on top of the slide's own origin."""
        centres = (self.coords + self.tile_px / 2) * self.mpp
        return centres + np.asarray(self.offset_um) + np.asarray(offset_um, float)

    def tile_at_um(self, y_um: float, x_um: float) -> int:
        """The tile whose centre is closest to a world µm point (it must lie in a tile)."""
        point = (np.array([y_um, x_um]) - np.asarray(self.offset_um)) / self.mpp
        distance = np.abs(self.coords + self.tile_px / 2 - point).max(axis=1)
        best = int(np.argmin(distance)) if len(distance) else -1
        if best < 0 or distance[best] > self.tile_px / 2:
            raise ValueError(f"No tile covers the point ({y_um:.1f}, {x_um:.1f}) µm.")
        return best

    def tiles_in_polygons(self, polygons, offset_um=(0.0, 0.0)) -> np.ndarray:
        """Which tiles (by their centre) lie inside any of ``polygons`` — shapely geometries
        in world µm (x, y), e.g. from :func:`~napari_conch.geometry.shape_polygon`; bool (N,)."""
        from .geometry import points_in_polygons

        return points_in_polygons(self.tile_centres_um(offset_um), polygons)

    def tiles_in_label_image(
        self, labels, scale_um=(1.0, 1.0), translate_um=(0.0, 0.0), offset_um=(0.0, 0.0)
    ) -> np.ndarray:
        """Which tiles (by their centre) fall on a labelled pixel (> 0) of a painted label
        image placed at ``scale_um``/``translate_um`` in the world; bool (N,)."""
        from .geometry import points_in_labels

        return points_in_labels(self.tile_centres_um(offset_um), labels, scale_um, translate_um)

    def processing_order(self, region=None, region_only: bool = False, tiles=None) -> np.ndarray:
        """Tile positions in the order to compute them: raster order, or — with a µm
        ``region`` (y0, x0, y1, x1), e.g. the viewport — the tiles there first, then the
        others outward from its centre. ``region_only``: just those; ``tiles``: only these
        positions."""
        n = len(self)
        if tiles is not None:
            base = np.asarray(tiles, np.int64).ravel()
            if len(base) and (base.min() < 0 or base.max() >= n):
                raise IndexError(f"tiles must be positions in 0…{n - 1}.")
        else:
            base = np.arange(n, dtype=np.int64)
        if region is None:
            if region_only:
                raise ValueError("region_only=True needs a region (a µm box y0, x0, y1, x1).")
            return base
        y0, x0, y1, x1 = (float(v) for v in region)
        if not (y1 > y0 and x1 > x0):
            raise ValueError(
                f"region must be (y0, x0, y1, x1) with y1 > y0 and x1 > x0; got {region}."
            )
        inside = np.zeros(n, bool)
        inside[self.tiles_in_box_um(region)] = True
        centre = (np.array([(y0 + y1) / 2, (x0 + x1) / 2]) - self.offset_um) / self.mpp
        tile_centres = self.coords[base] + self.tile_px / 2
        distance = np.hypot(*(tile_centres - centre).T)
        first = inside[base]
        order = np.lexsort((distance, ~first))  # region tiles first, each group by distance
        ordered = base[order]
        return ordered[inside[ordered]] if region_only else ordered

    def to_dict(self) -> dict:
        """JSON-serialisable geometry (arrays excluded) — stored with cached embeddings."""
        return {
            "tile_um": self.tile_um,
            "stride_um": self.stride_um,
            "mpp": self.mpp,
            "tile_px": self.tile_px,
            "stride_px": self.stride_px,
            "origin_px": list(self.origin_px),
            "shape": list(self.shape),
            "level": self.level,
            "read_px": self.read_px,
            "input_size": self.input_size,
            "min_tissue": self.min_tissue,
            "tissue_filter": self.tissue_filter,
            "slide_shape": list(self.slide_shape),
            "n_tiles": len(self),
            # only when set, so grids of slides without a translation keep their signature
            **({"offset_um": list(self.offset_um)} if any(self.offset_um) else {}),
        }

    @classmethod
    def from_indices(
        cls,
        indices,
        tile_px: int,
        stride_px: int | None = None,
        mpp: float = 1.0,
        input_size: int | None = None,
    ) -> TileGrid:
        """A grid over given (row, column) tile indices, e.g. for features made elsewhere (the
        slide is taken to end where the last tile does; every cell counts as tissue)."""
        indices = np.asarray(indices, np.int32).reshape(-1, 2)
        stride_px = stride_px or tile_px
        shape = tuple(int(v) + 1 for v in indices.max(axis=0)) if len(indices) else (0, 0)
        slide = tuple((s - 1) * stride_px + tile_px for s in shape)
        return cls(
            tile_um=tile_px * mpp,
            stride_um=stride_px * mpp,
            mpp=mpp,
            tile_px=tile_px,
            stride_px=stride_px,
            origin_px=(0, 0),
            shape=shape,
            level=0,
            read_px=tile_px,
            input_size=input_size or tile_px,
            indices=indices,
            tissue_fraction=np.ones(len(indices), np.float32),
            min_tissue=0.0,
            slide_shape=slide,
        )

    @classmethod
    def from_dict(
        cls,
        meta: dict,
        indices: np.ndarray,
        tissue_fraction: np.ndarray,
        cell_tissue: np.ndarray | None = None,
    ) -> TileGrid:
        return cls(
            tile_um=float(meta["tile_um"]),
            stride_um=float(meta["stride_um"]),
            mpp=float(meta["mpp"]),
            tile_px=int(meta["tile_px"]),
            stride_px=int(meta["stride_px"]),
            origin_px=tuple(int(v) for v in meta["origin_px"]),
            shape=tuple(int(v) for v in meta["shape"]),
            level=int(meta["level"]),
            read_px=int(meta["read_px"]),
            input_size=int(meta["input_size"]),
            indices=np.asarray(indices, np.int32).reshape(-1, 2),
            tissue_fraction=np.asarray(tissue_fraction, np.float32),
            min_tissue=float(meta["min_tissue"]),
            slide_shape=tuple(int(v) for v in meta["slide_shape"]),
            tissue_filter=bool(meta.get("tissue_filter", True)),
            offset_um=tuple(float(v) for v in meta.get("offset_um", (0.0, 0.0))),
            cell_tissue=None if cell_tissue is None else np.asarray(cell_tissue, np.float32),
        )

    def signature(self) -> str:
        """A digest of the geometry and of exactly which tiles are in the grid."""
        if self._signature is None:
            h = hashlib.blake2b(digest_size=16)
            h.update(json.dumps(self.to_dict(), sort_keys=True).encode())
            h.update(np.ascontiguousarray(self.indices, np.int32).tobytes())
            object.__setattr__(self, "_signature", h.hexdigest())
        return self._signature

    def __repr__(self) -> str:
        return (
            f"TileGrid({len(self)} tiles of {self.tile_um:.4g} µm ({self.tile_px} px), stride "
            f"{self.stride_um:.4g} µm, level {self.level} read at {self.read_px} px → "
            f"{self.input_size} px, grid {self.shape[0]}×{self.shape[1]})"
        )


def tile_grid(
    slide,
    model=None,
    tile_um: float | None = None,
    stride_um: float | None = None,
    tissue: bool | TissueMask = True,
    *,
    overlap: float | None = None,
    min_tissue: float = DEFAULT_MIN_TISSUE,
    target_mpp: float | None = None,
    input_size: int | None = None,
) -> TileGrid:
    """Lay tiles over ``slide`` for ``model``.

    Parameters
    ----------
    slide : Slide or path
        Its µm/px must be known (else :class:`~napari_conch.MissingMppError`).
    model : ImageTextModel, optional
        Supplies the defaults: ``input_size`` px at ``target_mpp`` µm/px (CONCH: 448 px at
        0.5 µm/px, i.e. 224 µm tiles).
    tile_um, stride_um : float, optional
        Tile side and step in µm. ``stride_um`` defaults to ``tile_um × (1 − overlap)``.
    tissue : bool or TissueMask
        True computes a tissue mask and keeps tiles with at least ``min_tissue`` tissue;
        False keeps every tile; a TissueMask is used as given.
    overlap : float, optional
        Fraction of a tile shared with its neighbour, in [0, 1): 0.5 or 0.75 for smoother
        maps (the paper's segmentation protocol uses 0.75).
    min_tissue : float
        Minimum tissue fraction of a kept tile; 0 keeps every tile touching tissue.
    target_mpp, input_size : optional
        Override the model's values (or give them when there is no model).
    """
    slide = as_slide(slide)
    mpp = slide.require_mpp("tiling")
    target_mpp = float(
        target_mpp if target_mpp is not None else getattr(model, "target_mpp", 0) or 0
    )
    input_size = int(input_size if input_size is not None else getattr(model, "input_size", 0) or 0)
    if target_mpp <= 0 or input_size <= 0:
        raise ValueError("Give a model, or target_mpp and input_size, to size the tiles.")
    if tile_um is None:
        tile_um = input_size * target_mpp
    tile_um = float(tile_um)
    if not math.isfinite(tile_um) or tile_um <= 0:
        raise ValueError(f"tile_um must be a positive number of µm; got {tile_um!r}.")
    if stride_um is not None and overlap is not None:
        raise ValueError("Give stride_um or overlap, not both.")
    if overlap is not None:
        if not 0 <= float(overlap) < 1:
            raise ValueError(f"overlap must be in [0, 1); got {overlap!r}.")
        stride_um = tile_um * (1 - float(overlap))
    stride_um = tile_um if stride_um is None else float(stride_um)
    if not math.isfinite(stride_um) or stride_um <= 0 or stride_um > tile_um * (1 + 1e-9):
        raise ValueError(
            f"stride_um must be positive and at most tile_um ({tile_um:g}); got {stride_um!r}. "
            "(Gaps between tiles would leave tissue unseen.)"
        )
    if not 0 <= min_tissue <= 1:
        raise ValueError(f"min_tissue must be in [0, 1]; got {min_tissue!r}.")

    tile_px = max(1, round(tile_um / mpp))
    stride_px = max(1, min(tile_px, round(stride_um / mpp)))
    if tile_px < 16:
        raise ValueError(
            f"A {tile_um:g} µm tile is only {tile_px} px on this slide ({mpp:g} µm/px); "
            "check tile_um and the slide's µm/px."
        )
    H, W = slide.shape
    rows = _count(H, tile_px, stride_px)
    cols = _count(W, tile_px, stride_px)
    level = slide.level_for_mpp(target_mpp)
    read_px = max(1, round(tile_px / slide.downsamples[level]))
    if input_size > _MAX_ENLARGEMENT * read_px:
        name = getattr(model, "name", "the model")
        logger.warning(
            "%g µm tiles are %d px on %s at %.3g µm/px and get enlarged %.1f× to %s's %d-px "
            "input: the model sees blur, not finer detail (it was made for %.0f µm tiles at "
            "%g µm/px). Use larger tiles (tile_um) or a finer scan.",
            tile_um,
            read_px,
            slide.name,
            mpp * slide.downsamples[level],
            input_size / read_px,
            name,
            input_size,
            input_size * target_mpp,
            target_mpp,
        )

    ii, jj = np.meshgrid(
        np.arange(rows, dtype=np.int32), np.arange(cols, dtype=np.int32), indexing="ij"
    )
    indices = np.stack([ii.ravel(), jj.ravel()], axis=1)
    use_tissue = tissue is not False and tissue is not None
    cell_tissue = None
    if use_tissue:
        # At least 8 mask pixels per cell side (at most 8 µm each): the mask decides which
        # cells are tissue, so its pixels must be small against them.
        mask = (
            tissue
            if isinstance(tissue, TissueMask)
            else tissue_mask(slide, target_mpp=min(8.0, stride_px * mpp / 8))
        )
        coords = indices.astype(np.int64) * stride_px
        fraction = _box_fractions(mask, coords, tile_px)
        keep = (fraction > 0) & (fraction >= min_tissue)
        indices, fraction = indices[keep], fraction[keep]
    else:
        fraction = np.ones(len(indices), np.float32)
    grid = TileGrid(
        tile_um=tile_px * mpp,
        stride_um=stride_px * mpp,
        mpp=mpp,
        tile_px=tile_px,
        stride_px=stride_px,
        origin_px=(0, 0),
        shape=(rows, cols),
        level=level,
        read_px=read_px,
        input_size=input_size,
        indices=np.ascontiguousarray(indices, np.int32),
        tissue_fraction=fraction.astype(np.float32),
        min_tissue=float(min_tissue) if use_tissue else 0.0,
        slide_shape=(H, W),
        tissue_filter=use_tissue,
        offset_um=slide.origin_um,
    )
    if use_tissue:
        cell_tissue = cell_tissue_fractions(mask, grid)
        grid = replace(grid, cell_tissue=cell_tissue)
    return grid


def cell_tissue_fractions(mask: TissueMask, grid: TileGrid) -> np.ndarray:
    """Tissue fraction of every map cell of ``grid``, (h, w) float32: the exact overlap of
    each cell with the mask's pixels (both clipped to the image), divided by the cell's area.
    """
    m = mask.mask.astype(np.float64)
    if m.size == 0:
        return np.zeros(grid.cell_shape, np.float32)
    weights = [
        _overlap_matrix(n, origin, grid.stride_px, m.shape[axis], mask.downsample[axis], size)
        for axis, (n, origin, size) in enumerate(
            zip(grid.cell_shape, grid.origin_px, grid.slide_shape, strict=True)
        )
    ]
    covered = weights[0] @ m @ weights[1].T  # level-0 px² of tissue per cell
    return np.clip(covered / grid.stride_px**2, 0.0, 1.0).astype(np.float32)


def _overlap_matrix(cells: int, origin: int, stride: int, pixels: int, step: float, size: int):
    """Lengths (level-0 px) shared by cell intervals [origin + i·stride, +stride) and mask
    pixel intervals [j·step, (j+1)·step), both cut at the image's end ``size``."""
    c0 = np.minimum(origin + np.arange(cells) * stride, size)
    c1 = np.minimum(c0 + stride, size)
    p0 = np.minimum(np.arange(pixels) * step, size)
    p1 = np.minimum(p0 + step, size)
    return np.clip(np.minimum(c1[:, None], p1[None]) - np.maximum(c0[:, None], p0[None]), 0, None)


def _inside_lengths(cells: int, origin: int, stride: int, size: int) -> np.ndarray:
    """Length (px) of each cell interval that lies inside [0, size)."""
    c0 = origin + np.arange(cells) * stride
    return np.clip(np.minimum(c0 + stride, size) - np.clip(c0, 0, size), 0, None).astype(float)


def _count(size: int, tile: int, stride: int) -> int:
    """Tiles needed along an axis so the last one reaches the end of the slide."""
    if size <= tile:
        return 1
    return math.ceil((size - tile) / stride) + 1


def _box_fractions(mask: TissueMask, coords: np.ndarray, tile_px: int) -> np.ndarray:
    """Tissue fraction of many level-0 boxes at once, from a summed-area table of the mask.

    A mask pixel counts in full when the box touches it; at the mask's coarse resolution
    this errs towards keeping tiles at tissue borders.
    """
    m = mask.mask
    if m.size == 0:
        return np.zeros(len(coords), np.float32)
    dy, dx = mask.downsample
    table = np.zeros((m.shape[0] + 1, m.shape[1] + 1), np.int64)
    table[1:, 1:] = np.cumsum(np.cumsum(m, axis=0, dtype=np.int64), axis=1)
    i0 = np.clip(np.floor(coords[:, 0] / dy).astype(np.int64), 0, m.shape[0])
    j0 = np.clip(np.floor(coords[:, 1] / dx).astype(np.int64), 0, m.shape[1])
    i1 = np.clip(np.ceil((coords[:, 0] + tile_px) / dy).astype(np.int64), 0, m.shape[0])
    j1 = np.clip(np.ceil((coords[:, 1] + tile_px) / dx).astype(np.int64), 0, m.shape[1])
    total = table[i1, j1] - table[i0, j1] - table[i1, j0] + table[i0, j0]
    area = np.maximum((i1 - i0) * (j1 - j0), 1)
    return (total / area).astype(np.float32)
