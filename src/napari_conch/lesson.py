"""One round of teaching, as the napari panel (and a notebook) runs it after each new
annotation: fit a classifier, map the slide with it, and score it on held-out folds of the
annotations when there are enough of them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .agreement import cross_validate
from .annotations import Annotations, read_annotations
from .classifier import TileClassifier, fit_classifier, tile_examples
from .fewshot import few_shot_segment

__all__ = ["Lesson", "teach"]


@dataclass
class Lesson:
    """What one round of teaching gives.

    Attributes
    ----------
    classifier : TileClassifier
    segmentation : SegmentationResult
        The few-shot map of the whole slide.
    examples : ndarray (N,) int
        Each tile's class index as an example (-1: not an example).
    held_out : dict or None
        :func:`~napari_conch.cross_validate`'s report; None when the annotations cannot be
        split (``why_not_held_out`` says why).
    why_not_held_out : str
    """

    classifier: TileClassifier
    segmentation: object
    examples: np.ndarray
    held_out: dict | None
    why_not_held_out: str = ""


def teach(
    emb,
    annotations,
    *,
    model=None,
    prompts=None,
    background: str | None = None,
    min_confidence: float | None = None,
    held_out: bool = True,
    slide=None,
) -> Lesson:
    """Fit (:func:`~napari_conch.fit_classifier`), map (:func:`~napari_conch.few_shot_segment`)
    and, with ``held_out``, score on spatial folds (:func:`~napari_conch.cross_validate`).

    ``background`` is used when it is a class of the classifier (from the annotations or
    the prompts) and ignored otherwise.
    """
    if not isinstance(annotations, Annotations):
        annotations = read_annotations(annotations, slide=slide)
    options = {"model": model, "prompts": prompts} if prompts is not None else {}
    classifier = fit_classifier(emb, annotations, **options)
    background = background if background in classifier.class_names else None
    segmentation = few_shot_segment(
        emb, classifier, background=background, min_confidence=min_confidence
    )
    examples = tile_examples(emb, annotations, classifier.class_names)
    report, why = None, ""
    if held_out:
        try:
            report = cross_validate(
                emb, annotations, background=background, min_confidence=min_confidence, **options
            )
        except ValueError as exc:
            why = str(exc)
    return Lesson(classifier, segmentation, examples, report, why)
