"""Few-shot maps: a slide labelled by a taught :class:`~napari_conch.classifier.TileClassifier`,
under every rule of the zero-shot maps (tissue, edge, background, overlap averaging,
areas) and with provenance that says what taught it."""

from __future__ import annotations

import logging

import numpy as np

from . import maps, results
from .classifier import TileClassifier, load_classifier
from .deprecation import keyword_only_since
from .embeddings import Embeddings
from .provenance import Provenance

logger = logging.getLogger(__name__)

__all__ = ["few_shot_segment"]


@keyword_only_since("background", "min_confidence")
def few_shot_segment(
    emb: Embeddings,
    classifier: TileClassifier,
    *,
    background: str | None = None,
    min_confidence: float | None = None,
    region=None,
    slide=None,
    colors: dict | None = None,
) -> results.SegmentationResult:
    """Label every grid cell with a taught classifier's class — every rule of
    :func:`~napari_conch.zero_shot_segment` (tissue, edge, background, overlap averaging,
    areas), and provenance that says it is few-shot and what taught it.

    Parameters
    ----------
    emb : Embeddings
        Any slide embedded by the model the classifier was taught on.
    classifier : TileClassifier or path
    background : str, optional
        A class of the classifier to treat as background (label 0).
    min_confidence, region, slide, colors : as for :func:`~napari_conch.zero_shot_segment`
        (``slide`` computes tiles of the region missing from the cache — it then needs the
        model, so pass an ``Embeddings`` that has it).
    """
    from .prompts import PromptSet
    from .zeroshot import tiles_to_use

    if not isinstance(classifier, TileClassifier):
        classifier = load_classifier(classifier)
    classifier.check_features(emb)
    names = list(classifier.class_names)
    background_index = None
    if background is not None:
        if background not in names:
            raise ValueError(
                f"background={background!r} is not a class of this classifier ({', '.join(names)})."
            )
        background_index = names.index(background)
    if min_confidence is not None and not 0 <= float(min_confidence) <= 1:
        raise ValueError(f"min_confidence must be in [0, 1]; got {min_confidence!r}.")
    used, missing = tiles_to_use(emb, emb.model, region, slide)
    tile_probs = classifier.tile_probabilities(emb)
    tile_probs[~used] = np.nan
    grid = emb.grid
    provenance = Provenance.of_features(
        "few_shot_segment",
        classifier.model,
        emb,
        store=str(emb.store_path) if emb.store_path else None,
        tiles_used=int(used.sum()),
        missing_tiles=int(missing),
        classifier=classifier.record(),
    )
    if not classifier.model.get("trained", True):
        logger.warning(
            "few_shot_segment on features of an UNTRAINED model: the map is a pipeline check."
        )
    prompt_set = PromptSet({n: [n] for n in names})
    result = maps.segmentation_result(
        maps.cells_from_tiles(grid, tile_probs),
        tile_probs,
        prompt_set,
        background_index,
        min_confidence,
        shown=grid.cell_is_tissue,
        tissue_mm2=grid.cell_tissue_fraction * grid.cell_area_mm2,
        scale_um=grid.cell_scale_um,
        translate_um=grid.cell_translate_um,
        colors=colors,
        metadata=provenance.to_metadata(),
    )
    result.metadata["prompts"] = classifier.details.get("prompts")
    return result
