"""Sub-tile maps (**experimental**): text-aligned token embeddings for a region.

A tile map has one value per grid cell (56 µm for CONCH's 224 µm tiles at 75 % overlap).
CONCH pools its 28 × 28 patch tokens with one attention query; the pooled feature is, per
head, an attention-weighted sum of the tokens' values. Carrying each token's value through
the pooler's output projection, ``ln_contrast`` and ``proj_contrast`` puts every 16-px patch
(8 µm at 0.5 µm/px) in the joint image–text space — the MaskCLIP idea applied through CONCH's
pooler (``model.encode_image_tokens``). Overlapping tiles are averaged; the tissue and
image-edge rules are those of the tile maps, on token-sized cells.

What is proven here: the geometry (planted edges land within one token) and the pooling
identity (the attention-weighted values sum to the pooled feature). Whether the token
embeddings are as text-aligned as the pooled feature only trained weights can show: check
on a labelled dataset (``napari_conch.evaluate``) before trusting a dense map.

``dense_tokens`` computes (and keeps, in float16) a region's token embeddings once;
re-prompting the same region is then a matrix product (``DenseTokens.similarity`` /
``.segment``, and ``dense_similarity`` / ``dense_segment``, which reuse recent regions).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace

import numpy as np

from .deprecation import keyword_only_since
from .maps import contrast_limits, segmentation_result
from .progress import ProgressReport, is_cancelled
from .prompts import as_prompt_set, softmax_probabilities
from .protocol import gives_token_embeddings, weights_hash
from .provenance import Provenance
from .queries import query_scores, text_queries
from .results import SegmentationResult, SimilarityMap
from .slide import as_slide
from .tiling import TileGrid, cell_tissue_fractions, tile_grid

logger = logging.getLogger(__name__)

EXPERIMENTAL = "experimental: sub-tile token map (MaskCLIP-style, through the model's pooler)"
_RECENT = 4  # regions whose token embeddings stay in memory for re-prompting
_recent: OrderedDict = OrderedDict()
_recent_lock = threading.Lock()


@dataclass
class DenseTokens:
    """Joint-space token embeddings over a region (**experimental**).

    ``embeddings`` (H, W, D) float16, unit length where ``looked``; ``lattice`` is a grid of
    token-sized cells that places them (``cell_scale_um``, ``cell_translate_um``) and holds
    the tissue and image-edge rules (``cell_is_tissue``).
    """

    embeddings: np.ndarray
    looked: np.ndarray
    lattice: TileGrid
    metadata: dict = field(default_factory=dict)

    @property
    def token_um(self) -> float:
        return self.lattice.stride_um

    @property
    def shown(self) -> np.ndarray:
        """Cells a map gives a value: looked at by some tile, and tissue inside the image."""
        return self.looked & self.lattice.cell_is_tissue

    def similarity(self, model, text, negative=None) -> SimilarityMap:
        """Cosine similarity of every token cell to ``text`` (str or list: one map each)."""
        vectors, labels = text_queries(model, text)
        flat = self.embeddings.reshape(-1, self.embeddings.shape[-1]).astype(np.float32)
        values, labels = query_scores(flat, vectors, labels, model, negative)  # (H·W, Q)
        maps = values.T.reshape(len(labels), *self.looked.shape)
        maps[:, ~self.shown] = np.nan
        single = len(labels) == 1
        return SimilarityMap(
            values=maps[0] if single else maps,
            tile_values=maps[0].ravel() if single else maps.reshape(len(labels), -1),
            queries=labels,
            scale_um=self.lattice.cell_scale_um,
            translate_um=self.lattice.cell_translate_um,
            contrast_limits=contrast_limits(maps),
            metadata=self._result_metadata(model, "dense_similarity", queries=labels),
        )

    def segment(
        self, model, prompts, background=None, min_confidence=None, colors=None
    ) -> SegmentationResult:
        """Label every token cell with the class whose prompts fit it best (the tile map's
        rules: background class, ``min_confidence``, tissue and edge)."""
        prompt_set, background_index = as_prompt_set(prompts).with_background(background)
        weights = prompt_set.class_embeddings(model)  # (C, D) unit vectors
        flat = self.embeddings.reshape(-1, self.embeddings.shape[-1]).astype(np.float32)
        probs = softmax_probabilities(flat @ weights.T, model.logit_scale)  # (H·W, C)
        return self._label_map(
            probs,
            prompt_set,
            background_index,
            min_confidence,
            colors,
            self._result_metadata(model, "dense_segment"),
        )

    def _label_map(self, probs, classes, background_index, min_confidence, colors, metadata):
        """A SegmentationResult from token class probabilities (H·W, C), under the tile
        map's rules (no token looked there, or no tissue: no decision)."""
        shown = self.shown
        probs[~shown.ravel()] = np.nan
        return segmentation_result(
            probs.T.reshape(probs.shape[1], *shown.shape),
            probs,
            classes,
            background_index,
            min_confidence,
            shown=shown,
            tissue_mm2=self.lattice.cell_tissue_fraction * self.lattice.cell_area_mm2,
            scale_um=self.lattice.cell_scale_um,
            translate_um=self.lattice.cell_translate_um,
            colors=colors,
            metadata=metadata,
        )

    def few_shot_segment(
        self, classifier, background=None, min_confidence=None, colors=None
    ) -> SegmentationResult:
        """Label every token cell with a taught classifier (see
        :func:`~napari_conch.few_shot_segment`): only a classifier of the joint space — one
        taught with ``model=`` — reads tokens, which live there too."""
        from .classifier import load_classifier

        if not hasattr(classifier, "class_names"):
            classifier = load_classifier(classifier)
        if classifier.projection is None:
            raise ValueError(
                "This classifier reads the model's pre-projection features; token embeddings "
                "are in the joint space. Teach it with model= to use it on dense maps."
            )
        made_by = (self.metadata.get("model") or {}).get("weights_hash")
        ours = classifier.model.get("weights_hash")
        if made_by and ours and made_by != ours:
            raise ValueError(
                f"This classifier was taught on {classifier.model.get('name')} features, not on "
                "the model that made these tokens."
            )
        names = list(classifier.class_names)
        if background is not None and background not in names:
            raise ValueError(f"background={background!r} is not a class of this classifier.")
        flat = self.embeddings.reshape(-1, self.embeddings.shape[-1]).astype(np.float32)
        metadata = Provenance.from_metadata(self.metadata)
        metadata = replace(
            metadata,
            model=dict(classifier.model),
            analysis="dense_few_shot_segment",
            details={**metadata.details, "classifier": classifier.record()},
        ).to_metadata()
        result = self._label_map(
            classifier.probabilities(flat),
            names,
            None if background is None else names.index(background),
            min_confidence,
            colors,
            metadata,
        )
        result.metadata["prompts"] = classifier.details.get("prompts")
        return result

    def _result_metadata(self, model, analysis: str, **extra) -> dict:
        tokens = Provenance.from_metadata(self.metadata)  # the region's slide and lattice
        made = replace(
            Provenance.of_analysis(analysis, model),
            slide=tokens.slide,
            grid=tokens.grid,
            details={**tokens.details, **extra},
        )
        return made.to_metadata()


def dense_tokens(
    slide,
    model,
    region,
    tile_um: float | None = None,
    overlap: float = 0.5,
    *,
    tissue=True,
    batch_size: int = 8,
    progress=None,
    cancel=None,
) -> DenseTokens:
    """**Experimental.** Token embeddings of the tiles covering ``region`` (y0, x0, y1, x1
    in µm, slide coordinates as the tile maps use), averaged where tiles overlap.

    Only tiles that touch the region and tissue (``tissue=False``: every tile) are
    computed. ``progress(done, total, tiles_per_s)`` after every batch; ``cancel`` (a CancelToken,
    Event or callable) stops after the batch in flight with what is done.
    """
    steps = dense_token_steps(
        slide, model, region, tile_um, overlap, tissue=tissue, batch_size=batch_size, cancel=cancel
    )
    tokens = None
    report = ProgressReport(progress)
    for done, total, snapshot in steps:
        report(done, total)
        tokens = snapshot if snapshot is not None else tokens
    if tokens is None:  # cancelled before the first batch
        raise RuntimeError("The dense map was cancelled before any tile was computed.")
    return tokens


def dense_token_steps(
    slide,
    model,
    region,
    tile_um: float | None = None,
    overlap: float = 0.5,
    *,
    tissue=True,
    batch_size: int = 8,
    cancel=None,
    snapshot_every_s: float | None = None,
):
    """:func:`dense_tokens` as a generator, for progressive display: yields
    ``(done, total, DenseTokens or None)`` after every batch — the tokens so far at most
    every ``snapshot_every_s`` seconds (None: only with the last batch)."""
    slide = as_slide(slide)
    slide.require_mpp("a dense map")
    if not gives_token_embeddings(model):
        raise ValueError(
            f"{getattr(model, 'name', 'this model')} gives no token embeddings: dense "
            "(sub-tile) maps are supported by conch only (experimental)."
        )
    box = _check_region(region)
    grid = tile_grid(slide, model, tile_um=tile_um, overlap=overlap, tissue=tissue)
    chosen = grid.tiles_in_box_um(box)
    if len(chosen) == 0:
        raise ValueError(
            f"No tissue tile touches the region {box} µm of {slide.name}: pick a region "
            "on the tissue (or tissue=False)."
        )
    coords = grid.coords[chosen]
    total, done = len(chosen), 0
    canvas = counts = lattice = None
    t0 = last = time.perf_counter()
    info = {"tile_um": grid.tile_um, "overlap": overlap, "total": total}
    for start in range(0, total, max(1, int(batch_size))):
        if is_cancelled(cancel):
            break
        batch = coords[start : start + batch_size]
        pixels = np.stack(
            [
                slide.read_region(int(y), int(x), grid.read_px, grid.read_px, level=grid.level)
                for y, x in batch
            ]
        )
        tokens = np.asarray(model.encode_image_tokens(pixels), np.float32)  # (B, h, w, D)
        if lattice is None:
            lattice = _token_lattice(slide, grid, box, tokens.shape[1:3], tissue)
            canvas = np.zeros((*lattice.cell_shape, tokens.shape[-1]), np.float32)
            counts = np.zeros(lattice.cell_shape, np.int32)
        _accumulate(canvas, counts, lattice, batch, tokens)
        done += len(batch)
        now = time.perf_counter()
        final = done == total or is_cancelled(cancel)
        due = snapshot_every_s is not None and now - last >= snapshot_every_s
        if final or due:
            last = now
            yield done, total, _snapshot(slide, canvas, counts, lattice, box, info | {"done": done})
        else:
            yield done, total, None
    if lattice is not None:
        logger.info(
            "Dense tokens for %s: %d tiles → %d × %d cells of %.3g µm in %.1f s",
            slide.name,
            done,
            *counts.shape,
            lattice.stride_um,
            time.perf_counter() - t0,
        )


def _snapshot(slide, canvas, counts, lattice, box, tiles: dict) -> DenseTokens:
    """The tokens so far: averaged, unit length, float16 (a copy: the run goes on)."""
    looked = counts > 0
    norm = np.linalg.norm(canvas, axis=-1, keepdims=True)
    unit = np.where(norm > 0, canvas / np.where(norm > 0, norm, 1), 0).astype(np.float16)
    return DenseTokens(
        embeddings=unit,
        looked=looked,
        lattice=lattice,
        metadata={
            "experimental": EXPERIMENTAL,
            "dense": True,
            "region_um": list(box),
            "tiles": dict(tiles),
            "token_um": lattice.stride_um,
            "slide": {"name": slide.name, "path": str(slide.path) if slide.path else None},
            "grid": lattice.to_dict(),
        },
    )


@keyword_only_since("region", "tile_um", "overlap")
def dense_similarity(
    slide,
    model,
    text,
    *,
    region=None,
    tile_um: float | None = None,
    overlap: float = 0.5,
    negative=None,
    tissue=True,
) -> SimilarityMap:
    """**Experimental.** :func:`~napari_conch.similarity_map` at token resolution over
    ``region`` (y0, x0, y1, x1 in µm; required: the work grows with it): ``scale_um`` is
    the token size (8 µm for CONCH at 0.5 µm/px)."""
    tokens = _recent_tokens(slide, model, region, tile_um, overlap, tissue)
    return tokens.similarity(model, text, negative=negative)


@keyword_only_since("region", "background", "tile_um", "overlap")
def dense_segment(
    slide,
    model,
    prompts,
    *,
    region=None,
    background=None,
    tile_um: float | None = None,
    overlap: float = 0.5,
    min_confidence=None,
    tissue=True,
) -> SegmentationResult:
    """**Experimental.** :func:`~napari_conch.zero_shot_segment` at token resolution over
    ``region`` (y0, x0, y1, x1 in µm; required), with the tile map's background,
    confidence, tissue and edge rules."""
    tokens = _recent_tokens(slide, model, region, tile_um, overlap, tissue)
    return tokens.segment(model, prompts, background=background, min_confidence=min_confidence)


# -- helpers --------------------------------------------------------------------------------


def _check_region(region) -> tuple[float, float, float, float]:
    if region is None:
        raise ValueError("A dense map needs region=(y0, x0, y1, x1) in µm: its work grows with it.")
    y0, x0, y1, x1 = (float(v) for v in region)
    if not (y1 > y0 and x1 > x0):
        raise ValueError(f"region must be (y0, x0, y1, x1) with y1 > y0 and x1 > x0; got {region}.")
    return (y0, x0, y1, x1)


def _token_lattice(slide, grid: TileGrid, box, token_grid, tissue) -> TileGrid:
    """Token-sized cells over the region, anchored on the tile grid's corners (a tile's
    tokens fall on whole cells), cut at the image's edge."""
    from .tissue import TissueMask, tissue_mask

    h, w = (int(v) for v in token_grid)
    if h != w:
        raise ValueError(f"Square token grids only; the model gave {h} × {w}.")
    token_px = max(1, round(grid.tile_px / h))
    oy, ox = grid.offset_um
    H, W = slide.shape
    origin = []
    size = []
    for v0, v1, o, anchor, limit in (
        (box[0], box[2], oy, grid.origin_px[0], H),
        (box[1], box[3], ox, grid.origin_px[1], W),
    ):
        p0 = max(0.0, (v0 - o) / grid.mpp)
        p1 = min(float(limit), (v1 - o) / grid.mpp)
        start = anchor + math.floor((p0 - anchor) / token_px) * token_px
        origin.append(int(start))
        size.append(max(1, math.ceil((p1 - start) / token_px)))
    lattice = TileGrid(
        tile_um=token_px * grid.mpp,
        stride_um=token_px * grid.mpp,
        mpp=grid.mpp,
        tile_px=token_px,
        stride_px=token_px,
        origin_px=(origin[0], origin[1]),
        shape=(size[0], size[1]),
        level=grid.level,
        read_px=grid.read_px,
        input_size=grid.input_size,
        indices=np.zeros((0, 2), np.int32),
        tissue_fraction=np.zeros(0, np.float32),
        min_tissue=0.0,
        slide_shape=(H, W),
        tissue_filter=tissue is not False and tissue is not None,
        offset_um=grid.offset_um,
    )
    if lattice.tissue_filter:
        mask = (
            tissue
            if isinstance(tissue, TissueMask)
            else tissue_mask(slide, target_mpp=min(8.0, token_px * grid.mpp / 2))
        )
        from dataclasses import replace

        lattice = replace(lattice, cell_tissue=cell_tissue_fractions(mask, lattice))
    return lattice


def _accumulate(canvas, counts, lattice: TileGrid, corners, tokens) -> None:
    """Add each tile's tokens onto the cells they cover (rounded to the nearest cell)."""
    tp = lattice.stride_px
    rows, cols = counts.shape
    for (y, x), grid_tokens in zip(corners, tokens, strict=True):
        r0 = round((int(y) - lattice.origin_px[0]) / tp)
        c0 = round((int(x) - lattice.origin_px[1]) / tp)
        h, w = grid_tokens.shape[:2]
        ra, rb = max(r0, 0), min(r0 + h, rows)
        ca, cb = max(c0, 0), min(c0 + w, cols)
        if ra >= rb or ca >= cb:
            continue
        canvas[ra:rb, ca:cb] += grid_tokens[ra - r0 : rb - r0, ca - c0 : cb - c0]
        counts[ra:rb, ca:cb] += 1


def _recent_tokens(slide, model, region, tile_um, overlap, tissue) -> DenseTokens:
    """The region's tokens from the last few computed (same slide, weights, geometry)."""
    from .store import slide_fingerprint

    slide = as_slide(slide)
    box = _check_region(region)
    key = (
        slide_fingerprint(slide),
        str(getattr(model, "name", "")),
        weights_hash(model),
        box,
        tile_um,
        float(overlap),
        tissue if isinstance(tissue, bool) else id(tissue),
    )
    with _recent_lock:
        if key in _recent:
            _recent.move_to_end(key)
            return _recent[key]
    tokens = dense_tokens(slide, model, box, tile_um, overlap, tissue=tissue)
    if isinstance(tissue, bool):  # a TissueMask object is not a key we can trust
        with _recent_lock:
            _recent[key] = tokens
            while len(_recent) > _RECENT:
                _recent.popitem(last=False)
    return tokens
