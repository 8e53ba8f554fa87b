"""Zero-shot analyses on cached embeddings: segmentation, similarity maps, MI-Zero, retrieval.

Everything here is arithmetic on the cached pre-projection features: the features are
projected and normalised once per model (then cached on the :class:`Embeddings`), and a new
prompt costs one text encoding plus a matrix product. The maps' tissue, edge and
background rules are :mod:`napari_conch.maps`'s; the results are
:mod:`napari_conch.results`'s.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from . import maps, queries, results
from .deprecation import forward_names, keyword_only_since, renamed_keywords
from .embeddings import Embeddings
from .prompts import as_prompt_set, softmax_probabilities
from .protocol import check_model, is_trained
from .provenance import Provenance
from .tissue import TissueMask

logger = logging.getLogger(__name__)

__all__ = [
    "classify_slide",
    "retrieve",
    "select_tiles",
    "similarity_map",
    "tiles_to_use",
    "zero_shot_segment",
]

# Names that lived here before the analyses' building blocks got modules of their own.
__getattr__ = forward_names(
    __name__,
    {
        "SegmentationResult": "napari_conch.results",
        "SimilarityMap": "napari_conch.results",
        "SlideCall": "napari_conch.results",
        "Hit": "napari_conch.results",
        "Retrieval": "napari_conch.results",
        "TILE_BACKGROUND": "napari_conch.results",
        "TILE_UNASSIGNED": "napari_conch.results",
        "TILE_NOT_EMBEDDED": "napari_conch.results",
        "cells_from_tiles": "napari_conch.maps",
        "decide": "napari_conch.maps",
        "segmentation_result": "napari_conch.maps",
        "normalized_entropy": "napari_conch.maps",
        "contrast_limits": "napari_conch.maps",
        "text_queries": "napari_conch.queries",
        "query_scores": "napari_conch.queries",
        "encode_prompts": "napari_conch.prompts",
        "PALETTE": "napari_conch.colors",
        "CONVENTIONAL_COLORS": "napari_conch.colors",
        "class_colors": "napari_conch.colors",
    },
)


@keyword_only_since("background", "min_confidence")
def zero_shot_segment(
    emb: Embeddings,
    model,
    prompts,
    *,
    background=None,
    min_confidence: float | None = None,
    region=None,
    slide=None,
    colors: dict | None = None,
) -> results.SegmentationResult:
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
    prompt_set, background_index = as_prompt_set(prompts).with_background(background)
    if min_confidence is not None and not 0 <= float(min_confidence) <= 1:
        raise ValueError(f"min_confidence must be in [0, 1]; got {min_confidence!r}.")
    selected, provenance = _prepare(emb, model, region, slide, "zero_shot_segment")
    cosine = _tile_scores(emb, model, selected, prompt_set.class_embeddings(model))  # (N, C)
    tile_probs = softmax_probabilities(
        np.where(np.isfinite(cosine), cosine, 0.0), model.logit_scale
    )
    tile_probs[~np.isfinite(cosine).all(axis=1)] = np.nan
    grid = emb.grid
    return maps.segmentation_result(
        maps.cells_from_tiles(grid, tile_probs),  # (C_all, H, W)
        tile_probs,
        prompt_set,
        background_index,
        min_confidence,
        shown=grid.cell_is_tissue,  # the tissue rule: what the map shows
        tissue_mm2=grid.cell_tissue_fraction * grid.cell_area_mm2,
        scale_um=grid.cell_scale_um,
        translate_um=grid.cell_translate_um,
        colors=colors,
        metadata=provenance.to_metadata(),
    )


@keyword_only_since("exemplar", "negative")
def similarity_map(
    emb: Embeddings,
    model,
    text: str | Sequence[str] | None = None,
    *,
    exemplar=None,
    negative: str | Sequence[str] | None = None,
    region=None,
    slide=None,
) -> results.SimilarityMap:
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
    selected, provenance = _prepare(emb, model, region, slide, "similarity_map")
    projected = emb.projected(model)
    if text is not None:
        vectors, labels = queries.text_queries(model, text)
    else:
        vectors = queries.exemplar_direction(emb, model, exemplar, projected)[None]
        labels = ["exemplar"]
    tile_values, labels = queries.query_scores(
        projected, vectors, labels, model, negative
    )  # (N, Q)
    tile_values[~selected] = np.nan
    cells = maps.cells_from_tiles(emb.grid, tile_values)
    cells[:, ~emb.grid.cell_is_tissue] = np.nan  # the tissue rule
    single = len(labels) == 1
    return results.SimilarityMap(
        values=cells[0] if single else cells,
        tile_values=tile_values[:, 0] if single else tile_values.T,
        queries=labels,
        scale_um=emb.grid.cell_scale_um,
        translate_um=emb.grid.cell_translate_um,
        contrast_limits=maps.contrast_limits(cells),
        metadata=provenance.with_details(queries=labels, negative=negative).to_metadata(),
    )


@keyword_only_since("top_k")
def classify_slide(
    emb: Embeddings,
    model,
    prompts,
    *,
    top_k: int = 10,
    background=None,
    region=None,
    slide=None,
) -> results.SlideCall:
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
    prompt_set, background_index = as_prompt_set(prompts).with_background(background)
    keep = [i for i in range(len(prompt_set.names)) if i != background_index]
    if not keep:
        raise ValueError("The prompts hold only the background class: nothing to call.")
    selected, provenance = _prepare(emb, model, region, slide, "classify_slide")
    cosine = _tile_scores(emb, model, selected, prompt_set.class_embeddings(model))
    usable = np.isfinite(cosine).all(axis=1)
    if background_index is not None:
        tile_labels = maps.decide(
            softmax_probabilities(np.where(usable[:, None], cosine, 0.0), model.logit_scale).T, keep
        )
        usable &= tile_labels != maps.TILE_BACKGROUND
    usable = np.flatnonzero(usable)
    if len(usable) == 0:
        raise ValueError(
            "No embedded tissue tiles to classify (empty region, nothing computed yet, or the "
            "background class wins every tile)."
        )
    k = int(min(top_k, len(usable)))
    names = [prompt_set.names[i] for i in keep]
    source = _slide_name(emb)
    scores, evidence = {}, {}
    for c, name in zip(keep, names, strict=True):
        column = cosine[usable, c]
        top = usable[np.argsort(-column, kind="stable")[:k]]
        scores[name] = float(cosine[top, c].mean())
        evidence[name] = [_hit(emb, int(p), float(cosine[p, c]), source) for p in top]
    pooled = np.array([scores[n] for n in names])
    probs = softmax_probabilities(pooled[None], model.logit_scale)[0]
    provenance = provenance.with_details(
        prompts=prompt_set.to_json(),
        top_k_asked=int(top_k),
        tiles_used=len(usable),
        background=None if background_index is None else prompt_set.names[background_index],
    )
    return results.SlideCall(
        call=names[int(np.argmax(pooled))],
        scores=scores,
        probabilities=dict(zip(names, probs.tolist(), strict=True)),
        top_k=k,
        evidence=evidence,
        metadata=provenance.to_metadata(),
    )


@renamed_keywords(source="emb")
@keyword_only_since("k")
def retrieve(
    emb,
    model,
    text: str | Sequence[str],
    *,
    k: int = 20,
    region=None,
    background=None,
    prompts=None,
    negative: str | Sequence[str] | None = None,
) -> results.Retrieval:
    """The ``k`` tiles most similar to ``text`` across one or many slides' embeddings.

    ``emb`` is an :class:`Embeddings`, a store path, or a list of them. Several phrases in
    ``text`` are combined (mean of their normalised embeddings) into one query.
    ``background`` leaves out tiles it wins over the query — the same rule as the maps: a
    class of ``prompts`` (its synonyms and templates, as the maps encode it), or phrases
    (e.g. ``"background"``). ``negative`` ranks by cos(text) − cos(negative), as
    :func:`similarity_map` draws it.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be at least 1; got {k!r}.")
    check_model(model)
    _warn_if_untrained(model, "retrieve")
    query = queries.phrase_direction(model, text)
    texts = [text] if isinstance(text, str) else list(text)
    against = None if negative is None else queries.phrase_direction(model, negative)
    backdrop = None if background is None else _background_direction(model, background, prompts)
    sources = emb if isinstance(emb, (list, tuple)) else [emb]
    candidates = []
    for item in sources:
        embeddings = item if isinstance(item, Embeddings) else Embeddings.open(item)
        selected = select_tiles(embeddings, region)
        projected = embeddings.projected(model)
        scores = projected @ query
        if backdrop is not None:  # a softmax over (query, background) picks the larger cosine
            selected = selected & ~(projected @ backdrop > scores)
        if against is not None:  # after the background rule, which compares cosines
            scores = scores - projected @ against
        scores[~selected] = np.nan
        finite = np.flatnonzero(np.isfinite(scores))
        best = finite[np.argsort(-scores[finite], kind="stable")[:k]]
        name = str(embeddings.store_path) if embeddings.store_path else _slide_name(embeddings)
        candidates += [_hit(embeddings, int(p), float(scores[p]), name) for p in best]
    candidates.sort(key=lambda h: -h.score)
    details = {"k": k, "background": background}
    if negative is not None:
        details["negative"] = negative
    metadata = Provenance.of_analysis("retrieve", model, **details).to_metadata()
    return results.Retrieval(candidates[:k], texts, metadata)


# -- tile selection -----------------------------------------------------------------------


def select_tiles(emb: Embeddings, region=None) -> np.ndarray:
    """The tiles an analysis of ``region`` uses (bool (N,)): all, those intersecting a µm
    box (y0, x0, y1, x1), those a TissueMask covers, or one bool per tile."""
    n = len(emb)
    if region is None:
        return np.ones(n, bool)
    if isinstance(region, TissueMask):
        t = emb.grid.tile_px
        return np.array([region.fraction(y, x, t, t) > 0 for y, x in emb.grid.coords], bool)
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


def tiles_to_use(emb: Embeddings, model, region=None, slide=None) -> tuple[np.ndarray, int]:
    """The tiles an analysis of ``region`` uses (bool (N,)) and how many of the region's
    tiles are missing from the cache: computed first when ``slide`` (and ``model``) are
    given, else left out with a warning."""
    selected = select_tiles(emb, region)
    missing = np.flatnonzero(selected & ~emb.done)
    if len(missing) and slide is not None:
        if model is None:
            raise ValueError("Computing missing tiles (slide=) needs the model: pass it.")
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


def _prepare(emb: Embeddings, model, region, slide, analysis: str):
    """Tiles to use (bool (N,)), computing missing ones when a slide is given; and the
    result's provenance."""
    check_model(model)
    used, missing = tiles_to_use(emb, model, region, slide)
    _warn_if_untrained(model, analysis)
    provenance = Provenance.of_analysis(
        analysis,
        model,
        emb,
        store=str(emb.store_path) if emb.store_path else None,
        tiles_used=int(used.sum()),
        missing_tiles=missing,
    )
    return used, provenance


def _compute_missing(emb: Embeddings, model, positions: np.ndarray, slide) -> None:
    from .engine import embed

    logger.info("Computing %d missing tiles for this analysis.", len(positions))
    if emb.store_path is not None:
        embed(slide, model, emb.grid, cache=emb.cache_root, tiles=positions)
        emb.refresh()
    else:
        fresh = embed(slide, model, emb.grid, cache=None, tiles=positions)
        emb.update(positions, fresh.features[positions])


def _tile_scores(emb: Embeddings, model, selected: np.ndarray, weights: np.ndarray) -> np.ndarray:
    cosine = emb.projected(model) @ np.asarray(weights, np.float32).T
    cosine[~selected] = np.nan
    return cosine


def _background_direction(model, background, prompts) -> np.ndarray:
    """What the background competes with the query as: a class of ``prompts`` (its class
    embedding), or the mean direction of background phrases."""
    if prompts is not None and isinstance(background, str):
        prompt_set = as_prompt_set(prompts)
        if background in prompt_set.classes:
            return prompt_set.class_embeddings(model)[prompt_set.names.index(background)]
    return queries.phrase_direction(model, background)


def _slide_name(emb: Embeddings) -> str:
    return (emb.metadata.get("slide") or {}).get("name", "slide")


def _hit(emb: Embeddings, position: int, score: float, source: str) -> results.Hit:
    y, x = (int(v) for v in emb.grid.coords[position])
    oy, ox = emb.grid.offset_um
    mpp = emb.grid.mpp
    return results.Hit(source, position, y, x, oy + y * mpp, ox + x * mpp, emb.grid.tile_um, score)


def _warn_if_untrained(model, analysis: str) -> None:
    if not is_trained(model):
        logger.warning(
            "%s with an UNTRAINED model: the result is a pipeline check, not a finding.", analysis
        )
