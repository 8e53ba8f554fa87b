"""How well a map agrees with a pathologist's annotations — honestly.

Scores are measured where someone annotated, on the map's own cells, weighted by each
cell's tissue (the area rule of the maps): a cell counts for a class when at least half of
it lies in that class's regions. What lies outside every annotation is not scored —
unannotated tissue is not a negative.

Held-out honesty: a few-shot map scored on the annotations that taught it would score its
own training set. :func:`agreement` therefore leaves out every cell that a tile overlapping
a training region covers, and says how much it left out; :func:`cross_validate` scores a
classifier on spatially disjoint folds of the annotations (whole regions held out, the same
exclusion around the regions it was taught on).
"""

from __future__ import annotations

import logging

import numpy as np

from .annotations import Annotations, read_annotations
from .tiling import CELL_TISSUE_MIN

logger = logging.getLogger(__name__)

__all__ = ["agreement", "compare_zero_and_few_shot", "cross_validate"]

METRICS = ("dice", "iou", "precision", "recall")
MAX_FOLDS = 5


def agreement(seg, annotations, *, slide=None) -> dict:
    """Per class: Dice, IoU, precision, recall, annotated and predicted area (mm²) of a
    segmentation (zero-shot, few-shot or painted) inside the annotated regions.

    Returns ``{class: {...}, "mean_dice": …, "mean_iou": …, "held_out": bool,
    "excluded_mm2": float, "note": str}``. For a few-shot map, cells a tile overlapping
    one of the classifier's training regions covers are left out (``held_out`` True); when
    that leaves nothing, scores are NaN and the note says to use :func:`cross_validate`.
    """
    if not isinstance(annotations, Annotations):
        annotations = read_annotations(annotations, slide=slide)
    layout = _layout(seg)
    placed = _placed(annotations, layout)
    excluded, note = _training_exclusion(seg, layout)
    counts = _counts(seg, placed, layout, excluded)
    report = _report(counts, layout)
    report["held_out"] = excluded is not None
    report["excluded_mm2"] = (
        float((layout["weight"] * excluded).sum()) if excluded is not None else 0.0
    )
    if note:
        report["note"] = note
    elif excluded is not None:
        report["note"] = (
            "few-shot map: cells within one tile of the regions that taught it are not scored"
        )
    else:
        report["note"] = "scored inside the annotated regions only"
    return report


def cross_validate(
    emb,
    annotations,
    *,
    model=None,
    prompts=None,
    folds: int | None = None,
    background: str | None = None,
    min_confidence: float | None = None,
    regularization: float | None = None,
    slide=None,
) -> dict:
    """Held-out agreement of a classifier taught on ``annotations``: whole regions are held
    out in turn (each class's regions dealt round-robin into ``folds``, default up to 5),
    a classifier is taught on the rest and scored on them, never on a cell a tile
    overlapping a training region covers. Counts are pooled over the folds; the report is
    :func:`agreement`'s with ``"folds"`` added."""
    from .classifier import fit_classifier
    from .fewshot import few_shot_segment

    if not isinstance(annotations, Annotations):
        annotations = read_annotations(annotations, slide=slide)
    placed = annotations.placed(emb.grid)
    fold_of = _deal_folds(placed, folds, text=prompts is not None)
    n_folds = int(fold_of.max()) + 1 if len(fold_of) else 0
    if n_folds < 2:
        raise ValueError(
            "Held-out scores need at least two annotated regions per class (one to teach, "
            "one to test); draw another region of each class."
        )
    ignored = np.array([r.ignored for r in placed.regions])
    totals, layout = None, None
    for fold in range(n_folds):
        test = (fold_of == fold) & ~ignored
        train = (fold_of != fold) | ignored
        taught = fit_classifier(
            emb, placed.subset(train), model=model, prompts=prompts, regularization=regularization
        )
        seg = few_shot_segment(emb, taught, background=background, min_confidence=min_confidence)
        layout = _layout(seg)
        excluded = _near(placed.subset(train & ~ignored), layout)
        counts = _counts(seg, _placed(placed.subset(test), layout), layout, excluded)
        totals = counts if totals is None else _add(totals, counts)
    report = _report(totals, layout)
    report.update(
        held_out=True,
        folds=n_folds,
        method=taught.method,
        note=(
            f"held out: {n_folds} spatial folds (whole regions); cells within one tile of "
            "a training region are never scored"
        ),
    )
    return report


def compare_zero_and_few_shot(emb, model, prompts, annotations, *, background=None) -> dict:
    """The evaluation side by side: zero-shot agreement with the annotations, and few-shot
    held-out agreement (:func:`cross_validate`, text-initialised from the same prompts)."""
    from .zeroshot import zero_shot_segment

    if not isinstance(annotations, Annotations):
        annotations = read_annotations(annotations)
    zero = zero_shot_segment(emb, model, prompts, background=background)
    return {
        "zero-shot": agreement(zero, annotations),
        "few-shot": cross_validate(
            emb, annotations, model=model, prompts=prompts, background=background
        ),
    }


# -- the pieces -------------------------------------------------------------------------------


def _layout(seg) -> dict:
    """Where the map's cells are in slide pixels, and each cell's tissue (mm²)."""
    grid = (seg.metadata or {}).get("grid")
    if not grid:
        raise ValueError(
            "This result does not record the tile grid it was made on, so its cells cannot "
            "be placed under the annotations (results read from label images lack it)."
        )
    if seg.cell_tissue_mm2 is not None and np.shape(seg.cell_tissue_mm2) == seg.labels.shape:
        weight = np.asarray(seg.cell_tissue_mm2, np.float64)
    else:
        sy, sx = seg.scale_um
        weight = np.full(seg.labels.shape, sy * sx / 1e6)
    labels = np.asarray(seg.labels)
    if seg.hidden_labels is not None:  # cells under half tissue: measured, not drawn
        labels = np.where(labels > 0, labels, seg.hidden_labels)
    stride = float(grid["stride_px"])
    mpp = float(grid["mpp"])
    return {
        "shape": seg.labels.shape,
        "cell_px": stride,
        "origin_px": tuple(float(v) for v in grid.get("origin_px", (0, 0))),
        "mpp": mpp,
        "offset_um": tuple(grid.get("offset_um", (0.0, 0.0))),
        "slide_shape": tuple(grid.get("slide_shape") or ()),
        "k": max(1, round(float(grid["tile_px"]) / stride)),
        "weight": weight,
        "labels": labels,
        "names": list(seg.class_names),
    }


def _placed(annotations: Annotations, layout) -> Annotations:
    return annotations.placed_at(layout["mpp"], layout["offset_um"], layout["slide_shape"])


def _cell_classes(annotations: Annotations, layout, names) -> tuple[np.ndarray, np.ndarray]:
    """Each cell's annotated class index into ``names`` (-1: none) and its Ignore mask."""
    fractions, ignored = annotations.cell_fractions(
        layout["shape"], layout["cell_px"], layout["origin_px"], names
    )
    if not len(names):
        return np.full(layout["shape"], -1), ignored >= CELL_TISSUE_MIN
    best = np.argmax(fractions, axis=0)
    cover = np.take_along_axis(fractions, best[None], axis=0)[0]
    return np.where(cover >= CELL_TISSUE_MIN, best, -1), ignored >= CELL_TISSUE_MIN


def _near(training: Annotations, layout) -> np.ndarray:
    """Cells a tile touching any training region covers: the training regions' cells,
    dilated by one tile less one cell (a tile spans k cells)."""
    from scipy.ndimage import maximum_filter

    if not len(training):
        return np.zeros(layout["shape"], bool)
    fractions, _ = training.cell_fractions(layout["shape"], layout["cell_px"], layout["origin_px"])
    touched = (fractions > 0).any(axis=0) if len(fractions) else np.zeros(layout["shape"], bool)
    size = 2 * layout["k"] - 1
    return maximum_filter(touched, size=size, mode="constant", cval=False)


def _training_exclusion(seg, layout):
    record = (seg.metadata or {}).get("classifier")
    if not record:
        return None, None
    regions = (record.get("annotations") or {}).get("geojson")
    if not regions:
        return None, (
            "few-shot map whose training regions are not recorded: scores may include the "
            "regions that taught it"
        )
    return _near(_placed(read_annotations(regions), layout), layout), None


def _counts(seg, annotations: Annotations, layout, excluded) -> dict:
    names = list(dict.fromkeys([*annotations.class_names]))
    truth, ignored = _cell_classes(annotations, layout, names)
    counted = (truth >= 0) & ~ignored
    if excluded is not None:
        counted &= ~excluded
    weight, labels = layout["weight"], layout["labels"]
    out = {}
    for i, name in enumerate(names):
        label = layout["names"].index(name) + 1 if name in layout["names"] else -1
        t = counted & (truth == i)
        p = counted & (labels == label)
        out[name] = {
            "tp": float(weight[t & p].sum()),
            "annotated": float(weight[t].sum()),
            "predicted": float(weight[p].sum()),
        }
    return out


def _add(a: dict, b: dict) -> dict:
    out = {k: dict(v) for k, v in a.items()}
    for name, values in b.items():
        target = out.setdefault(name, {"tp": 0.0, "annotated": 0.0, "predicted": 0.0})
        for key, value in values.items():
            target[key] += value
    return out


def _report(counts: dict, layout) -> dict:
    report: dict = {}
    for name, c in counts.items():
        tp, a, p = c["tp"], c["annotated"], c["predicted"]
        nan = float("nan")
        report[name] = {
            "dice": 2 * tp / (a + p) if a + p > 0 else nan,
            "iou": tp / (a + p - tp) if a + p - tp > 0 else nan,
            "precision": tp / p if p > 0 else nan,
            "recall": tp / a if a > 0 else nan,
            "annotated_mm2": a,
            "predicted_mm2": p,
        }
        if name not in layout["names"]:
            report[name]["note"] = "not a class of the map"
    for metric in METRICS:
        values = [v[metric] for v in report.values() if isinstance(v, dict)]
        finite = [v for v in values if np.isfinite(v)]
        report[f"mean_{metric}"] = float(np.mean(finite)) if finite else float("nan")
    return report


def _deal_folds(annotations: Annotations, folds: int | None, text: bool) -> np.ndarray:
    """Fold of each region: each class's regions, in reading order, dealt round-robin."""
    regions = annotations.regions
    fold_of = np.zeros(len(regions), int)
    per_class: dict[str, list[int]] = {}
    for i, region in enumerate(regions):
        if not region.ignored:
            per_class.setdefault(region.name, []).append(i)
    if not per_class:
        return fold_of
    fewest = min(len(v) for v in per_class.values())
    most = max(len(v) for v in per_class.values())
    # with text, a class with one region is taught by its text while it is being tested
    limit = most if text else fewest
    n = min(MAX_FOLDS, limit) if folds is None else int(folds)
    if n < 2:
        return fold_of
    for members in per_class.values():
        order = sorted(members, key=lambda i: _reading_key(regions[i].polygon))
        for rank, i in enumerate(order):
            fold_of[i] = rank % n
    return fold_of


def _reading_key(polygon) -> tuple[float, float]:
    point = polygon.representative_point()
    return (round(point.y, 3), round(point.x, 3))
