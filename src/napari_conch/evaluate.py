"""Evaluation harness: the metrics of the CONCH and PLIP papers, on your data and weights.

- Tiles: zero-shot classification of a labelled tile dataset (a folder per class, or a CSV
  of ``path,label``) — accuracy, balanced accuracy, weighted F1, Cohen's κ (plain and
  quadratic), ROC AUC (binary: the positive class; multi-class: one-vs-one macro, as CONCH's
  ``run_zeroshot``) and the confusion matrix. With the CONCH weights and the CRC-100K test
  set this reproduces the paper's table (balanced accuracy 0.791 reported).
- Segmentation: Dice, precision and recall per class against a label mask.
- Slides: balanced accuracy of MI-Zero calls over a slide list.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .progress import ProgressReport
from .prompts import PromptSet, as_prompt_set, softmax_probabilities

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"}


@dataclass
class TileEvaluation:
    """Zero-shot tile classification results and metrics."""

    metrics: dict
    confusion: np.ndarray
    class_names: list[str]
    predictions: np.ndarray
    labels: np.ndarray
    probabilities: np.ndarray
    paths: list[str] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)


def load_tile_dataset(source) -> tuple[list[Path], list[str]]:
    """Paths and labels from a folder with one subfolder per class, or a CSV ``path,label``
    (a header row is optional; relative paths are relative to the CSV's folder)."""
    source = Path(source)
    if source.is_dir():
        paths, labels = [], []
        for class_dir in sorted(p for p in source.iterdir() if p.is_dir()):
            for path in sorted(class_dir.rglob("*")):
                if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
                    paths.append(path)
                    labels.append(class_dir.name)
        if not paths:
            raise ValueError(
                f"{source} holds no images in class subfolders (folder/<class>/<image>)."
            )
        return paths, labels
    if source.suffix.lower() == ".csv":
        rows = list(csv.reader(source.read_text(encoding="utf-8").splitlines()))
        if rows and [c.strip().lower() for c in rows[0][:2]] == ["path", "label"]:
            rows = rows[1:]
        bad = [i for i, r in enumerate(rows, start=1) if len(r) < 2 or not r[0].strip()]
        if bad:
            raise ValueError(f"{source}: rows {bad[:5]} do not have the form path,label.")
        paths = [(source.parent / r[0].strip()).resolve() for r in rows]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(
                f"{source}: {len(missing)} image(s) not found, e.g. {missing[0]}."
            )
        return paths, [r[1].strip() for r in rows]
    raise ValueError(f"{source} is neither a folder of class subfolders nor a .csv file.")


def evaluate_tiles(
    model,
    source,
    prompts,
    *,
    label_map: dict[str, str] | None = None,
    batch_size: int = 32,
    progress: Callable[[int, int, float], None] | None = None,
) -> TileEvaluation:
    """Zero-shot classify every tile of a dataset and score the predictions.

    ``prompts`` must have a class for every dataset label (matched by name, or through
    ``label_map`` {dataset label: prompt class}). ``progress(done, total, images_per_s)``
    after every batch.
    """
    from PIL import Image

    paths, raw_labels = load_tile_dataset(source)
    prompt_set = as_prompt_set(prompts)
    names = prompt_set.names
    label_map = label_map or {}
    mapped = [label_map.get(label, label) for label in raw_labels]
    unknown = sorted(set(mapped) - set(names))
    if unknown:
        raise ValueError(
            f"Dataset labels {unknown} have no prompt class (classes: {names}); "
            "rename the classes or pass label_map={dataset label: class}."
        )
    y_true = np.array([names.index(m) for m in mapped])
    weights = prompt_set.class_embeddings(model)
    logits = np.empty((len(paths), len(names)), np.float32)
    report = ProgressReport(progress)
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        images = []
        for path in chunk:
            with Image.open(path) as im:
                images.append(np.asarray(im.convert("RGB")))
        for rows, group in _same_shape_groups(images):
            feats = model.project(model.encode_images(np.stack(group)), normalize=True)
            logits[[start + r for r in rows]] = np.asarray(feats) @ weights.T
        report(min(start + batch_size, len(paths)), len(paths))
    probabilities = softmax_probabilities(logits, model.logit_scale)
    y_pred = logits.argmax(axis=1)
    metrics = tile_metrics(y_true, y_pred, probabilities, names)
    return TileEvaluation(
        metrics=metrics,
        confusion=metrics.pop("confusion"),
        class_names=names,
        predictions=y_pred,
        labels=y_true,
        probabilities=probabilities,
        paths=[str(p) for p in paths],
        metadata={
            "model": getattr(model, "name", "model"),
            "trained": bool(getattr(model, "trained", True)),
            "prompts": prompt_set.to_json(),
            "dataset": str(source),
        },
    )


def _same_shape_groups(images: list[np.ndarray]):
    groups: dict[tuple, list[int]] = {}
    for i, image in enumerate(images):
        groups.setdefault(image.shape, []).append(i)
    for rows in groups.values():
        yield rows, [images[i] for i in rows]


def tile_metrics(y_true, y_pred, probabilities, class_names: Sequence[str]) -> dict:
    """The zero-shot metrics of the CONCH paper (and PLIP's weighted F1)."""
    from sklearn.metrics import (
        accuracy_score,
        balanced_accuracy_score,
        cohen_kappa_score,
        confusion_matrix,
        f1_score,
        roc_auc_score,
    )

    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    probabilities = np.asarray(probabilities, np.float64)
    n = len(class_names)
    present = np.unique(y_true)
    try:
        if n == 2:
            auc = float(roc_auc_score(y_true, probabilities[:, 1]))
        else:
            probs = probabilities[:, present] / probabilities[:, present].sum(axis=1, keepdims=True)
            auc = float(
                roc_auc_score(y_true, probs, multi_class="ovo", average="macro", labels=present)
            )
    except ValueError:  # a single class present: AUC is undefined
        auc = float("nan")
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
        "weighted_f1": float(f1_score(y_true, y_pred, average="weighted", zero_division=0)),
        "kappa": float(cohen_kappa_score(y_true, y_pred)),
        "quadratic_kappa": float(cohen_kappa_score(y_true, y_pred, weights="quadratic")),
        "auc": auc,
        "n": len(y_true),
        "confusion": confusion_matrix(y_true, y_pred, labels=list(range(n))),
    }


def segmentation_scores(
    result,
    truth: np.ndarray,
    truth_downsample: float = 1.0,
    truth_names: Sequence[str] | None = None,
    region=None,
) -> dict:
    """Dice, precision and recall per class of a :class:`SegmentationResult` against a label
    mask whose pixel (i, j) covers level-0 pixels [i·d, (i+1)·d), d = ``truth_downsample``.

    The result is sampled at the centre of every truth pixel (using its placement in µm), so
    the scores measure areas at the truth's resolution, not at the coarser map cells.
    ``truth_names[k - 1]`` names truth label k (0 = background); by default the truth uses
    the result's class order. Classes are matched by name, so a result with extra classes, or
    in another order, is scored correctly. ``region`` (y0, x0, y1, x1 µm): only truth pixels
    centred there count (a dense map covers a region only).
    """
    truth = np.asarray(truth)
    names = list(truth_names) if truth_names is not None else list(result.class_names)
    predicted = _labels_at_truth_pixels(result, truth.shape, truth_downsample)
    counted = (
        np.ones(truth.shape, bool)
        if region is None
        else _truth_pixels_in(region, truth.shape, truth_downsample, result)
    )
    scores = {}
    for k, name in enumerate(names, start=1):
        t = (truth == k) & counted
        p = predicted == (result.class_names.index(name) + 1 if name in result.class_names else -1)
        p &= counted
        tp = float((t & p).sum())
        scores[name] = {
            "dice": 2 * tp / max(t.sum() + p.sum(), 1),
            "precision": tp / max(p.sum(), 1),
            "recall": tp / max(t.sum(), 1),
        }
    for metric in ("dice", "precision", "recall"):
        scores[f"mean_{metric}"] = float(
            np.mean([v[metric] for v in scores.values() if isinstance(v, dict)])
        )
    return scores


def dense_and_tile_scores(
    slide,
    model,
    prompts,
    truth: np.ndarray,
    region,
    truth_downsample: float = 1.0,
    truth_names: Sequence[str] | None = None,
    *,
    background=None,
    tile_um: float | None = None,
    overlap: float = 0.5,
    cache="auto",
) -> dict:
    """Dice of the tile map and of the **experimental** dense (token) map of the same
    region side by side, against a pixel-labelled truth (e.g. SICAP-style masks).

    Returns ``{"tile": scores, "dense": scores}`` (see :func:`segmentation_scores`), both
    counted on the truth pixels inside ``region`` (µm). Only trained weights make the
    comparison meaningful.
    """
    from .dense import dense_segment
    from .engine import embed
    from .tiling import tile_grid
    from .zeroshot import zero_shot_segment

    grid = tile_grid(slide, model, tile_um=tile_um, overlap=overlap)
    emb = embed(slide, model, grid, cache=cache, region=region, region_only=True)
    tile_map = zero_shot_segment(emb, model, prompts, background=background, region=region)
    dense_map = dense_segment(
        slide,
        model,
        prompts,
        region=region,
        background=background,
        tile_um=tile_um,
        overlap=overlap,
    )
    return {
        name: segmentation_scores(result, truth, truth_downsample, truth_names, region=region)
        for name, result in (("tile", tile_map), ("dense", dense_map))
    }


def _truth_pixels_in(region, shape, truth_downsample: float, result) -> np.ndarray:
    """Truth pixels whose centre lies inside ``region`` (µm, level-0 pixel k at k·mpp)."""
    stride_px = float(result.metadata["grid"]["stride_px"])
    mpp = float(result.scale_um[0]) / stride_px
    y0, x0, y1, x1 = (float(v) for v in region)
    ys, xs = ((np.arange(n) * truth_downsample + (truth_downsample - 1) / 2) * mpp for n in shape)
    return ((ys >= y0) & (ys < y1))[:, None] & ((xs >= x0) & (xs < x1))[None, :]


def _labels_at_truth_pixels(result, shape, truth_downsample: float) -> np.ndarray:
    """The result's label at the centre of each truth pixel (0 outside the map)."""
    stride_px = float(result.metadata["grid"]["stride_px"])
    mpp = float(result.scale_um[0]) / stride_px
    labels = result.labels
    picks = []
    for axis in (0, 1):
        # level-0 pixel k is centred at k·mpp; a truth pixel spans d level-0 pixels
        centre_um = (np.arange(shape[axis]) * truth_downsample + (truth_downsample - 1) / 2) * mpp
        scale = float(result.scale_um[axis])
        start_um = float(result.translate_um[axis]) - scale / 2
        cells = np.floor((centre_um - start_um) / scale).astype(int)
        picks.append(cells)
    rows, cols = picks
    inside = (rows[:, None] >= 0) & (rows[:, None] < labels.shape[0])
    inside = inside & (cols[None, :] >= 0) & (cols[None, :] < labels.shape[1])
    sampled = labels[np.clip(rows, 0, labels.shape[0] - 1)][
        :, np.clip(cols, 0, labels.shape[1] - 1)
    ]
    return np.where(inside, sampled, 0)


def slide_scores(
    calls, labels: Sequence[str], prompts: PromptSet | Sequence[str] | None = None
) -> dict:
    """Balanced accuracy (and confusion) of MI-Zero slide calls against true labels."""
    from sklearn.metrics import balanced_accuracy_score, confusion_matrix

    predicted = [c.call if hasattr(c, "call") else str(c) for c in calls]
    if len(predicted) != len(labels):
        raise ValueError(f"{len(predicted)} calls but {len(labels)} labels.")
    names = (
        as_prompt_set(prompts).names
        if prompts is not None
        else sorted(set(labels) | set(predicted))
    )
    return {
        "balanced_accuracy": float(balanced_accuracy_score(labels, predicted)),
        "accuracy": float(np.mean([a == b for a, b in zip(labels, predicted, strict=True)])),
        "confusion": confusion_matrix(labels, predicted, labels=names),
        "class_names": names,
        "n": len(labels),
    }
