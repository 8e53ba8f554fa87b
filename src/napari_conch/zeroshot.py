"""Zero-shot analyses on cached embeddings: segmentation, similarity maps, MI-Zero, retrieval.

Everything here is arithmetic on the cached pre-projection features: the features are
projected and normalised once per model (then cached on the :class:`Embeddings`), and a new
prompt costs one text encoding plus a matrix product.

Maps live on the tile grid's cells (DESIGN §4): with stride s level-0 px, cell (i, j) covers
[i·s, (i+1)·s) on each axis, and a tile spans k = tile/stride cells per side. A cell's value
is the mean over all tiles covering it — CONCH's segmentation protocol with overlapping tiles
(75 % overlap: every cell averages 16 tiles). In napari a map goes at ``scale_um`` and
``translate_um``.

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

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .embeddings import Embeddings
from .prompts import PromptSet, as_prompt_set, softmax_probabilities
from .tiling import TileGrid
from .tissue import TissueMask

logger = logging.getLogger(__name__)

# Codes of SegmentationResult.tile_labels besides the classes 1, 2, …
TILE_BACKGROUND = 0
TILE_UNASSIGNED = -1
TILE_NOT_EMBEDDED = -2

# Class colours (RGBA, 0–1): distinct, readable over H&E; each class name keeps its own
# (class_colors).
PALETTE: tuple[tuple[float, float, float, float], ...] = (
    (0.89, 0.10, 0.11, 1.0),  # red
    (0.22, 0.49, 0.72, 1.0),  # blue
    (0.30, 0.69, 0.29, 1.0),  # green
    (1.00, 0.50, 0.00, 1.0),  # orange
    (0.60, 0.31, 0.64, 1.0),  # purple
    (1.00, 0.93, 0.20, 1.0),  # yellow
    (0.65, 0.34, 0.16, 1.0),  # brown
    (0.97, 0.51, 0.75, 1.0),  # pink
    (0.00, 0.75, 0.75, 1.0),  # teal
    (0.50, 0.50, 0.50, 1.0),  # grey
)
# Classes pathologists meet everywhere keep QuPath's default colours (the convention their
# other tool uses), and keep them in any set of classes; the palette slot each resembles is
# left to the other classes. Names compare lower-cased, "tumour" as "tumor".
CONVENTIONAL_COLORS: dict[str, tuple[tuple[int, int, int], int | None]] = {
    "tumor": ((200, 0, 0), 0),
    "stroma": ((150, 200, 150), 2),
    "immune cells": ((160, 90, 160), 4),
    "necrosis": ((50, 50, 50), None),
    "other": ((255, 200, 0), 5),
    "background": ((180, 180, 180), 9),
}


# -- results --------------------------------------------------------------------------------


class _Result:
    """What every analysis result says about the model that made it."""

    metadata: dict

    @property
    def trained(self) -> bool:
        """False when an untrained model (``checkpoint="random"``) made this result."""
        return bool(self.metadata.get("model", {}).get("trained", True))


@dataclass
class SegmentationResult(_Result):
    """A zero-shot segmentation on the tile grid.

    ``labels`` (H, W): 0 = no tissue, background or below ``min_confidence``; ``i + 1`` =
    ``class_names[i]``. ``probabilities`` (C, H, W) are overlap-averaged class probabilities
    (NaN where no tile looked); ``uncertainty`` (H, W) is their entropy divided by log C
    (0 = certain, 1 = uniform). Place in napari with ``scale_um`` / ``translate_um``.
    """

    labels: np.ndarray
    probabilities: np.ndarray
    uncertainty: np.ndarray
    class_names: list[str]
    colors: dict[int, tuple[float, float, float, float]]
    areas_mm2: dict[str, float]
    scale_um: tuple[float, float]
    translate_um: tuple[float, float]
    tile_probabilities: np.ndarray
    background_probability: np.ndarray | None = None
    tile_labels: np.ndarray | None = None
    tile_background_probability: np.ndarray | None = None
    metadata: dict = field(default_factory=dict)

    def tile_classes(self) -> list[str]:
        """Each tile's answer under the same rule as the map: its class, ``"background"``
        where the background class wins, ``"unassigned"`` below ``min_confidence``, and ``""``
        for tiles not embedded."""
        labels = self.tile_labels
        if labels is None:  # results built by hand: best class of each tile
            finite = np.isfinite(self.tile_probabilities).all(axis=1)
            best = np.argmax(np.where(finite[:, None], self.tile_probabilities, -1), axis=1)
            labels = np.where(finite, best + 1, TILE_NOT_EMBEDDED)
        special = {
            TILE_BACKGROUND: "background",
            TILE_UNASSIGNED: "unassigned",
            TILE_NOT_EMBEDDED: "",
        }
        return [special.get(int(v)) or self.class_names[int(v) - 1] for v in labels]


@dataclass
class SimilarityMap(_Result):
    """Cosine similarity per grid cell: ``values`` (H, W) for one query, (Q, H, W) for several."""

    values: np.ndarray
    tile_values: np.ndarray
    queries: list[str]
    scale_um: tuple[float, float]
    translate_um: tuple[float, float]
    contrast_limits: tuple[float, float]
    metadata: dict = field(default_factory=dict)


@dataclass
class SlideCall(_Result):
    """An MI-Zero slide-level call: per class, the mean of its top-K tile similarities."""

    call: str
    scores: dict[str, float]
    probabilities: dict[str, float]
    top_k: int
    evidence: dict[str, list[dict]]
    metadata: dict = field(default_factory=dict)


@dataclass
class Hit:
    """One retrieved tile."""

    source: str
    position: int
    y_px: int
    x_px: int
    y_um: float
    x_um: float
    size_um: float
    score: float


@dataclass
class Retrieval:
    """Top-k tiles for a query, best first (iterable)."""

    hits: list[Hit]
    query: list[str]
    metadata: dict = field(default_factory=dict)

    def __iter__(self):
        return iter(self.hits)

    def __len__(self) -> int:
        return len(self.hits)

    def __getitem__(self, i):
        return self.hits[i]


# -- analyses -------------------------------------------------------------------------------


def zero_shot_segment(
    emb: Embeddings,
    model,
    prompts,
    background=None,
    min_confidence: float | None = None,
    *,
    region=None,
    slide=None,
    colors: dict | None = None,
) -> SegmentationResult:
    """Label every grid cell with the class whose prompts fit it best.

    Parameters
    ----------
    emb : Embeddings
    model : ImageTextModel
        The model that made ``emb``.
    prompts : PromptSet, prompt-JSON path, class names or name → synonyms
    background : str or list of str, optional
        A class of ``prompts`` to treat as background, or phrases for an extra background
        class (e.g. ``"background"``, ``["white background", "glass"]``). Cells it wins get
        label 0.
    min_confidence : float, optional
        Cells whose best class probability is lower get label 0.
    region : (y0, x0, y1, x1) µm, TissueMask or bool array (N,), optional
        Only tiles there are used.
    slide : Slide or path, optional
        With it, tiles of the region missing from an incomplete cache are computed first;
        without it they are left out and counted in ``metadata["missing_tiles"]``.
    colors : dict name → colour, optional
        Override class colours (RGBA 0–1 tuples or "#rrggbb").
    """
    prompt_set = as_prompt_set(prompts)
    prompt_set, background_index = _with_background(prompt_set, background)
    if min_confidence is not None and not 0 <= float(min_confidence) <= 1:
        raise ValueError(f"min_confidence must be in [0, 1]; got {min_confidence!r}.")
    selected, missing = _prepare(emb, model, region, slide)
    weights = prompt_set.class_embeddings(model)
    cosine = _tile_scores(emb, model, selected, weights)  # (N, C_all)
    tile_probs = softmax_probabilities(
        np.where(np.isfinite(cosine), cosine, 0.0), model.logit_scale
    )
    tile_probs[~np.isfinite(cosine).all(axis=1)] = np.nan
    grid = emb.grid
    return segmentation_result(
        cells_from_tiles(grid, tile_probs),  # (C_all, H, W)
        tile_probs,
        prompt_set,
        background_index,
        min_confidence,
        shown=grid.cell_is_tissue,  # the tissue rule: what the map shows
        tissue_mm2=grid.cell_tissue_fraction * grid.cell_area_mm2,
        scale_um=grid.cell_scale_um,
        translate_um=grid.cell_translate_um,
        colors=colors,
        metadata=_metadata(emb, model, "zero_shot_segment", selected, missing),
    )


def segmentation_result(
    cell_probs: np.ndarray,
    tile_probs: np.ndarray,
    prompt_set: PromptSet,
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
    names = prompt_set.names
    keep = [i for i in range(len(names)) if i != background_index]
    decided = decide(cell_probs, keep, min_confidence)
    cell_probs = cell_probs.copy()
    cell_probs[:, ~shown] = np.nan
    labels = np.where(shown, decided, 0).clip(min=0)
    labels = labels.astype(np.uint16 if len(keep) > 254 else np.uint8)
    uncertainty = (
        normalized_entropy(cell_probs)
        if len(names) > 1
        else np.where(np.isfinite(cell_probs[0]), 0.0, np.nan).astype(np.float32)
    )
    class_names = [names[i] for i in keep]
    areas = {
        name: float(tissue_mm2[decided == i].sum()) for i, name in enumerate(class_names, start=1)
    }
    metadata = {
        **metadata,
        "prompts": prompt_set.to_json(),
        "background": None if background_index is None else names[background_index],
        "min_confidence": min_confidence,
    }
    return SegmentationResult(
        labels=labels,
        probabilities=cell_probs[keep].astype(np.float32),
        uncertainty=uncertainty,
        class_names=class_names,
        colors=_colors(class_names, colors),
        areas_mm2=areas,
        scale_um=tuple(scale_um),
        translate_um=tuple(translate_um),
        tile_probabilities=tile_probs[:, keep],
        background_probability=None if background_index is None else cell_probs[background_index],
        tile_labels=decide(tile_probs.T, keep, min_confidence),
        tile_background_probability=(
            None if background_index is None else tile_probs[:, background_index]
        ),
        metadata=metadata,
    )


def similarity_map(
    emb: Embeddings,
    model,
    text: str | Sequence[str] | None = None,
    exemplar=None,
    negative: str | Sequence[str] | None = None,
    *,
    region=None,
    slide=None,
) -> SimilarityMap:
    """Cosine similarity of every cell to a text prompt, or to example tiles.

    Parameters
    ----------
    text : str or list of str
        One map per prompt (``values`` is (H, W) for one prompt, (Q, H, W) for several).
    exemplar : point or tiles, optional
        Instead of text: a (y, x) point in µm (the tile around it is the example), a list of
        points, an integer array of tile positions, or an (M, D) array of pre-projection
        features (e.g. from another slide's cache) — their mean is the query.
    negative : str or list of str, optional
        Subtracted: the map is cos(text) − cos(negative) (mean of the negative prompts).
    region, slide : see :func:`zero_shot_segment`.
    """
    if (text is None) == (exemplar is None):
        raise ValueError("Give either text= or exemplar= (one of them).")
    selected, missing = _prepare(emb, model, region, slide)
    projected = emb.projected(model)
    if text is not None:
        vectors, labels = text_queries(model, text)
    else:
        vectors = _exemplar_vector(emb, model, exemplar, projected)[None]
        labels = ["exemplar"]
    tile_values, labels = query_scores(projected, vectors, labels, model, negative)  # (N, Q)
    tile_values[~selected] = np.nan
    cells = cells_from_tiles(emb.grid, tile_values)
    cells[:, ~emb.grid.cell_is_tissue] = np.nan  # the tissue rule
    limits = contrast_limits(cells)
    metadata = _metadata(emb, model, "similarity_map", selected, missing)
    metadata.update(queries=labels, negative=negative)
    single = len(labels) == 1
    return SimilarityMap(
        values=cells[0] if single else cells,
        tile_values=tile_values[:, 0] if single else tile_values.T,
        queries=labels,
        scale_um=emb.grid.cell_scale_um,
        translate_um=emb.grid.cell_translate_um,
        contrast_limits=limits,
        metadata=metadata,
    )


def classify_slide(
    emb: Embeddings,
    model,
    prompts,
    top_k: int = 10,
    *,
    background=None,
    region=None,
    slide=None,
) -> SlideCall:
    """MI-Zero: per class, the mean of its ``top_k`` highest tile similarities; the call is
    the class with the highest mean.

    Uses the projected, normalised features (CONCH's ``run_mizero`` recipe: pre-projection
    features, then ``forward_project`` and L2 normalisation). Choose ``top_k`` before looking
    at labels; the CONCH paper's values are 1, 5, 10, 50, 100.

    ``background`` is what :func:`zero_shot_segment` takes: a class of ``prompts`` or phrases
    for one. Tiles it wins are left out of the pooling, and it is never the call.
    """
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise ValueError(f"top_k must be a positive integer chosen in advance; got {top_k!r}.")
    prompt_set, background_index = _with_background(as_prompt_set(prompts), background)
    keep = [i for i in range(len(prompt_set.names)) if i != background_index]
    if not keep:
        raise ValueError("The prompts hold only the background class: nothing to call.")
    selected, missing = _prepare(emb, model, region, slide)
    cosine = _tile_scores(emb, model, selected, prompt_set.class_embeddings(model))
    usable = np.isfinite(cosine).all(axis=1)
    if background_index is not None:
        tile_labels = decide(
            softmax_probabilities(np.where(usable[:, None], cosine, 0.0), model.logit_scale).T, keep
        )
        usable &= tile_labels != TILE_BACKGROUND
    usable = np.flatnonzero(usable)
    if len(usable) == 0:
        raise ValueError(
            "No embedded tissue tiles to classify (empty region, nothing computed yet, or the "
            "background class wins every tile)."
        )
    k = int(min(top_k, len(usable)))
    names = [prompt_set.names[i] for i in keep]
    scores, evidence = {}, {}
    coords = emb.grid.coords
    for c, name in zip(keep, names, strict=True):
        column = cosine[usable, c]
        top = usable[np.argsort(-column, kind="stable")[:k]]
        scores[name] = float(cosine[top, c].mean())
        evidence[name] = [_tile_record(emb, int(p), float(cosine[p, c]), coords) for p in top]
    pooled = np.array([scores[n] for n in names])
    probs = softmax_probabilities(pooled[None], model.logit_scale)[0]
    call = names[int(np.argmax(pooled))]
    metadata = _metadata(emb, model, "classify_slide", selected, missing)
    metadata.update(
        prompts=prompt_set.to_json(),
        top_k_asked=int(top_k),
        tiles_used=len(usable),
        background=None if background_index is None else prompt_set.names[background_index],
    )
    return SlideCall(
        call=call,
        scores=scores,
        probabilities=dict(zip(names, probs.tolist(), strict=True)),
        top_k=k,
        evidence=evidence,
        metadata=metadata,
    )


def retrieve(
    source,
    model,
    text: str | Sequence[str],
    k: int = 20,
    *,
    region=None,
    background: str | Sequence[str] | None = None,
    negative: str | Sequence[str] | None = None,
) -> Retrieval:
    """The ``k`` tiles most similar to ``text`` across one or many slides' embeddings.

    ``source`` is an :class:`Embeddings`, a store path, or a list of them. Several phrases in
    ``text`` are combined (mean of their normalised embeddings) into one query.
    ``background`` (phrases, e.g. ``"background"``) leaves out tiles it wins over the query:
    the same rule as the maps. ``negative`` ranks by cos(text) − cos(negative), as
    :func:`similarity_map` draws it.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1; got {k}.")
    queries = [text] if isinstance(text, str) else list(text)
    if not queries:
        raise ValueError("text must be a non-empty prompt or a list of them.")
    query = _mean_direction(model.encode_texts(queries, normalize=True))
    against = None
    if negative is not None:
        negatives = [negative] if isinstance(negative, str) else list(negative)
        against = _mean_direction(model.encode_texts(negatives, normalize=True))
    backdrop = None
    if background is not None:
        phrases = [background] if isinstance(background, str) else list(background)
        backdrop = _mean_direction(model.encode_texts(phrases, normalize=True))
    sources = source if isinstance(source, (list, tuple)) else [source]
    candidates = []
    for item in sources:
        emb = item if isinstance(item, Embeddings) else Embeddings.open(item)
        selected = _selection(emb, region)
        projected = emb.projected(model)
        scores = projected @ query
        if backdrop is not None:  # a softmax over (query, background) picks the larger cosine
            selected = selected & ~(projected @ backdrop > scores)
        if against is not None:  # after the background rule, which compares cosines
            scores = scores - projected @ against
        scores[~selected] = np.nan
        finite = np.flatnonzero(np.isfinite(scores))
        best = finite[np.argsort(-scores[finite], kind="stable")[:k]]
        name = (
            str(emb.store_path)
            if emb.store_path
            else (emb.metadata.get("slide") or {}).get("name", "slide")
        )
        coords = emb.grid.coords
        oy, ox = emb.grid.offset_um
        for p in best:
            y, x = (int(v) for v in coords[p])
            candidates.append(
                Hit(
                    name,
                    int(p),
                    y,
                    x,
                    oy + y * emb.grid.mpp,
                    ox + x * emb.grid.mpp,
                    emb.grid.tile_um,
                    float(scores[p]),
                )
            )
    candidates.sort(key=lambda h: -h.score)
    metadata = {"model": _model_info(model), "k": k, "background": background}
    if negative is not None:
        metadata["negative"] = negative
    return Retrieval(candidates[:k], queries, metadata)


def text_queries(model, text) -> tuple[np.ndarray, list[str]]:
    """Unit text embeddings (Q, D) of one prompt or a list, and the prompts."""
    queries = [text] if isinstance(text, str) else list(text)
    if not queries or not all(isinstance(q, str) and q.strip() for q in queries):
        raise ValueError("text must be a non-empty prompt or a list of them.")
    return np.asarray(model.encode_texts(queries, normalize=True), np.float32), queries


def query_scores(projected, vectors, labels, model, negative=None):
    """Cosines (N, Q) of joint-space rows to the query vectors, minus their cosine to the
    negative prompts' mean direction when given; with the queries' labels."""
    scores = projected @ vectors.T
    if negative is None:
        return scores, list(labels)
    negatives = [negative] if isinstance(negative, str) else list(negative)
    against = _mean_direction(model.encode_texts(negatives, normalize=True))
    return (
        scores - (projected @ against)[:, None],
        [f"{q} − {', '.join(negatives)}" for q in labels],
    )


def contrast_limits(values: np.ndarray) -> tuple[float, float]:
    """A map's display range: its finite values' range, never empty."""
    finite = values[np.isfinite(values)]
    limits = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if limits[0] == limits[1]:
        limits = (limits[0] - 1e-6, limits[1] + 1e-6)
    return limits


def _mean_direction(vectors) -> np.ndarray:
    """The unit vector along the mean of ``vectors`` (several prompts or tiles → one query)."""
    mean = np.asarray(vectors, np.float32).mean(axis=0)
    return (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)


# -- building blocks ------------------------------------------------------------------------


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


def _box_sum(a: np.ndarray, k: int) -> np.ndarray:
    """Sum of every k × k window (valid part) over the last two axes, via an integral image."""
    if k == 1:
        return a
    table = np.zeros((a.shape[0], a.shape[1] + 1, a.shape[2] + 1))
    table[:, 1:, 1:] = a.cumsum(axis=1).cumsum(axis=2)
    return table[:, k:, k:] - table[:, :-k, k:] - table[:, k:, :-k] + table[:, :-k, :-k]


def normalized_entropy(probs: np.ndarray) -> np.ndarray:
    """Entropy of class probabilities (C, H, W) over C, divided by log C: 0 = certain,
    1 = uniform; NaN where a probability is NaN."""
    p = np.clip(probs.astype(np.float64), 1e-12, 1.0)
    h = -(p * np.log(p)).sum(axis=0) / np.log(probs.shape[0])
    h[~np.isfinite(probs).all(axis=0)] = np.nan
    return h.astype(np.float32)


def encode_prompts(model, prompts, background=None) -> np.ndarray:
    """The class embeddings an analysis of ``prompts`` (with ``background``) will use,
    computed now — so a prompt the model cannot encode surfaces before any tile is embedded
    (the model's text cache keeps them for the analysis)."""
    prompt_set, _ = _with_background(as_prompt_set(prompts), background)
    return prompt_set.class_embeddings(model)


def _with_background(prompt_set: PromptSet, background) -> tuple[PromptSet, int | None]:
    if background is None:
        return prompt_set, None
    if isinstance(background, str) and background in prompt_set.classes:
        return prompt_set, prompt_set.names.index(background)
    phrases = [background] if isinstance(background, str) else list(background)
    if "background" in prompt_set.classes:
        raise ValueError(
            "The prompts already have a 'background' class; pass background='background'."
        )
    extended = prompt_set.with_class("background", phrases)
    return extended, len(extended) - 1


def _prepare(emb: Embeddings, model, region, slide) -> tuple[np.ndarray, int]:
    """Tiles to use (bool (N,)), computing missing ones when a slide is given."""
    from .protocol import check_model

    check_model(model)
    selected = _selection(emb, region)
    missing = np.flatnonzero(selected & ~emb.done)
    if len(missing) and slide is not None:
        _compute_missing(emb, model, missing, slide)
        missing = np.flatnonzero(selected & ~emb.done)
    if len(missing):
        logger.warning(
            "%d of %d tiles in the analysed area are not embedded yet and are left out; pass "
            "slide= to compute them, or run embed() first.",
            len(missing),
            int(selected.sum()),
        )
    return selected & emb.done, len(missing)


def _compute_missing(emb: Embeddings, model, positions: np.ndarray, slide) -> None:
    from .engine import embed

    logger.info("Computing %d missing tiles for this analysis.", len(positions))
    if emb.store_path is not None:
        embed(slide, model, emb.grid, cache=emb.cache_root, tiles=positions)
        emb.refresh()
    else:
        fresh = embed(slide, model, emb.grid, cache=None, tiles=positions)
        emb.update(positions, fresh.features[positions])


def _selection(emb: Embeddings, region) -> np.ndarray:
    n = len(emb)
    if region is None:
        return np.ones(n, bool)
    if isinstance(region, TissueMask):
        coords = emb.grid.coords
        t = emb.grid.tile_px
        return np.array([region.fraction(y, x, t, t) > 0 for y, x in coords], bool)
    array = np.asarray(region)
    if array.dtype == bool:
        if array.shape != (n,):
            raise ValueError(
                f"A boolean region must have one value per tile ({n}); got {array.shape}."
            )
        return array.copy()
    if array.shape == (4,):
        selected = np.zeros(n, bool)
        selected[emb.grid.tiles_in_box_um(array)] = True
        return selected
    raise ValueError(
        "region must be a µm box (y0, x0, y1, x1), a TissueMask, or one bool per tile."
    )


def _tile_scores(emb: Embeddings, model, selected: np.ndarray, weights: np.ndarray) -> np.ndarray:
    cosine = emb.projected(model) @ np.asarray(weights, np.float32).T
    cosine[~selected] = np.nan
    return cosine


def _exemplar_vector(emb: Embeddings, model, exemplar, projected: np.ndarray) -> np.ndarray:
    array = np.asarray(exemplar)
    if array.ndim == 2 and array.shape[1] == emb.features.shape[1] and array.dtype.kind == "f":
        vectors = np.asarray(model.project(array, normalize=True), np.float32)
    else:
        if array.dtype.kind in "iu":
            positions = array.ravel().astype(np.int64)
        else:
            points = np.atleast_2d(array.astype(float))
            if points.shape[1] != 2:
                raise ValueError("exemplar points must be (y, x) pairs in µm.")
            positions = np.array([_tile_at(emb.grid, y, x) for y, x in points], np.int64)
        if len(positions) == 0 or positions.min() < 0 or positions.max() >= len(emb):
            raise ValueError("exemplar tiles must be positions of tiles in these embeddings.")
        vectors = projected[positions]
        vectors = vectors[np.isfinite(vectors).all(axis=1)]
        if len(vectors) == 0:
            raise ValueError("The exemplar tiles are not embedded yet.")
    return _mean_direction(vectors)


def _tile_at(grid: TileGrid, y_um: float, x_um: float) -> int:
    """The tile whose centre is closest to a µm point (it must lie inside a tile)."""
    point = (np.array([y_um, x_um]) - np.asarray(grid.offset_um)) / grid.mpp
    centres = grid.coords + grid.tile_px / 2
    distance = np.abs(centres - point).max(axis=1)
    best = int(np.argmin(distance))
    if distance[best] > grid.tile_px / 2:
        raise ValueError(f"No tile covers the point ({y_um:.1f}, {x_um:.1f}) µm.")
    return best


def _tile_record(emb: Embeddings, position: int, score: float, coords: np.ndarray) -> dict:
    y, x = (int(v) for v in coords[position])
    mpp = emb.grid.mpp
    oy, ox = emb.grid.offset_um
    return {
        "position": position,
        "y_px": y,
        "x_px": x,
        "y_um": oy + y * mpp,
        "x_um": ox + x * mpp,
        "size_um": emb.grid.tile_um,
        "score": score,
    }


def class_colors(names: Sequence[str], overrides: dict | None = None) -> dict[str, tuple]:
    """A fixed colour per class name, the same in every session and whatever the classes'
    order. Common classes (tumor, stroma, necrosis, immune cells, other, background) have
    QuPath's colours; any other name has a palette colour of its own (from a digest of the
    lower-cased name); when two classes of the set want the same one, the later in
    alphabetical order takes the next free. ``overrides`` (name → RGBA 0–1 or "#rrggbb")
    win."""
    import hashlib

    chosen: dict[str, tuple] = {}
    taken: set[int] = set()
    for name in sorted(names, key=lambda n: (n.lower(), n)):
        key = name.strip().lower().replace("tumour", "tumor")
        if key in CONVENTIONAL_COLORS and not any(
            c == CONVENTIONAL_COLORS[key][0] for c in chosen.values()
        ):
            rgb, slot = CONVENTIONAL_COLORS[key]
            chosen[name] = (*(round(v / 255, 4) for v in rgb), 1.0)
            taken |= {slot} if slot is not None else set()
    for name in sorted(names, key=lambda n: (n.lower(), n)):
        if name in chosen:
            continue
        digest = hashlib.blake2b(name.strip().lower().encode(), digest_size=4).digest()
        index = int.from_bytes(digest, "big") % len(PALETTE)
        for step in range(len(PALETTE)):
            if (index + step) % len(PALETTE) not in taken or len(taken) >= len(PALETTE):
                index = (index + step) % len(PALETTE)
                break
        taken.add(index)
        chosen[name] = PALETTE[index]
    for name, value in (overrides or {}).items():
        if name in chosen:
            chosen[name] = _rgba(value)
    return chosen


def _colors(names: list[str], overrides: dict | None) -> dict[int, tuple]:
    by_name = class_colors(names, overrides)
    return {0: (0.0, 0.0, 0.0, 0.0), **{i: by_name[n] for i, n in enumerate(names, start=1)}}


def _rgba(value) -> tuple[float, float, float, float]:
    if isinstance(value, str):
        h = value.lstrip("#")
        if len(h) not in (6, 8):
            raise ValueError(f"Colour {value!r} must be '#rrggbb' or '#rrggbbaa'.")
        parts = [int(h[i : i + 2], 16) / 255 for i in range(0, len(h), 2)]
        return tuple(parts + [1.0] * (4 - len(parts)))
    parts = [float(v) for v in value]
    if any(v > 1 for v in parts):
        parts = [v / 255 for v in parts]
    return tuple(parts + [1.0] * (4 - len(parts)))


def _model_info(model) -> dict:
    from .protocol import is_trained, weights_hash

    return {
        "name": str(model.name),
        "weights_hash": weights_hash(model),
        "trained": is_trained(model),
    }


def _metadata(emb: Embeddings, model, analysis: str, selected: np.ndarray, missing: int) -> dict:
    from . import __version__

    info = _model_info(model)
    if not info["trained"]:
        logger.warning(
            "%s with an UNTRAINED model: the result is a pipeline check, not a finding.", analysis
        )
    metadata = {
        "analysis": analysis,
        "model": info,
        "slide": emb.metadata.get("slide"),
        "grid": emb.grid.to_dict(),
        "store": str(emb.store_path) if emb.store_path else None,
        "tiles_used": int(selected.sum()),
        "missing_tiles": missing,
        "napari_conch": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if emb.metadata.get("decode"):  # how the tiles were decoded, when not in full
        metadata["decode"] = emb.metadata["decode"]
    return metadata
