"""Reading napari-conch's own exports back as results: what we write, we read.

An OME-Zarr written by :func:`napari_conch.export.to_ome_zarr` holds everything a result
needs — class probabilities (and similarity maps) as channels, the label map under
``labels/segmentation`` with class names and colours, and the placement in µm — so it comes
back as a :class:`~napari_conch.zeroshot.SegmentationResult` plus its
:class:`~napari_conch.zeroshot.SimilarityMap` list, ready for :func:`napari_conch.show`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .errors import NapariConchError

logger = logging.getLogger(__name__)


class ResultReadError(NapariConchError, ValueError):
    """A file or folder does not hold a napari-conch result."""


def is_result_zarr(path) -> bool:
    """True for an OME-Zarr folder written by napari-conch (cheap: reads one JSON file)."""
    import json

    path = Path(path)
    for name in (".zattrs", "zarr.json"):
        attrs_file = path / name
        if attrs_file.is_file():
            try:
                attrs = json.loads(attrs_file.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return False
            attrs = attrs.get("attributes", attrs)  # zarr v3 nests user attributes
            return "napari_conch" in attrs
    return False


def read_ome_zarr(path) -> tuple:
    """A napari-conch OME-Zarr export → ``(SegmentationResult, [SimilarityMap, ...])``."""
    import zarr

    from .export import SIMILARITY_CHANNEL, UNCERTAINTY_CHANNEL
    from .zeroshot import SegmentationResult, SimilarityMap, normalized_entropy

    path = Path(path)
    if not is_result_zarr(path):
        raise ResultReadError(f"{path} is not an OME-Zarr written by napari-conch.")
    root = zarr.open_group(str(path), mode="r")
    attrs = dict(root.attrs)
    info = attrs["napari_conch"]
    class_names = list(info["class_names"])
    channel_names = [c.get("label", "") for c in attrs.get("omero", {}).get("channels", [])]
    image = np.asarray(root["0"][...], np.float32)
    scale, translate = _placement(attrs["multiscales"][0])
    seg_group = root["labels"]["segmentation"]
    labels = np.asarray(seg_group["0"][...])
    label_attrs = dict(seg_group.attrs).get("image-label", {})
    colors = {
        int(c["label-value"]): tuple(v / 255.0 for v in c["rgba"])
        for c in label_attrs.get("colors", [])
    }
    areas = {p["class"]: float(p.get("area (mm2)", 0.0)) for p in label_attrs.get("properties", [])}
    n = len(class_names)
    probabilities = image[:n]
    if UNCERTAINTY_CHANNEL in channel_names:
        uncertainty = image[channel_names.index(UNCERTAINTY_CHANNEL)]
    else:  # written before the channel existed: the entropy of the classes stored
        uncertainty = normalized_entropy(probabilities)
    metadata = {
        "model": {
            "name": info.get("model"),
            "weights_hash": info.get("weights_hash"),
            "trained": bool(info.get("trained", True)),
        },
        "prompts": info.get("prompts"),
        "napari_conch": info.get("napari_conch"),
        "created": info.get("created"),
        "source_file": str(path),
    }
    seg = SegmentationResult(
        labels=labels,
        probabilities=probabilities,
        uncertainty=uncertainty,
        class_names=class_names,
        colors=colors,
        areas_mm2=areas,
        scale_um=scale,
        translate_um=translate,
        tile_probabilities=np.zeros((0, n), np.float32),
        metadata=metadata,
    )
    similarities = []
    for channel, name in enumerate(channel_names):
        if channel >= n and name.startswith(SIMILARITY_CHANNEL):
            values = image[channel]
            finite = values[np.isfinite(values)]
            limits = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
            similarities.append(
                SimilarityMap(
                    values=values,
                    tile_values=np.zeros(0, np.float32),
                    queries=[name[len(SIMILARITY_CHANNEL) :]],
                    scale_um=scale,
                    translate_um=translate,
                    contrast_limits=limits,
                    metadata=dict(metadata),
                )
            )
    return seg, similarities


def read_results(folder) -> list:
    """Every napari-conch result exported into ``folder`` (its ``*.ome.zarr`` files), as a
    flat list of segmentation results and similarity maps, sorted by file name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ResultReadError(f"{folder} is not a folder of napari-conch exports.")
    results = []
    for path in sorted(folder.glob("*.ome.zarr")):
        if is_result_zarr(path):
            seg, similarities = read_ome_zarr(path)
            results += [seg, *similarities]
    if not results:
        raise ResultReadError(
            f"{folder} holds no napari-conch OME-Zarr results (*.ome.zarr); write them with "
            "napari-conch segment or demo (format ome-zarr)."
        )
    return results


def _placement(multiscale: dict) -> tuple[tuple[float, float], tuple[float, float]]:
    """Level 0's scale and translation for the last two (y, x) axes."""
    transforms = multiscale["datasets"][0]["coordinateTransformations"]
    scale = next(t["scale"] for t in transforms if t["type"] == "scale")
    translate = next(
        (t["translation"] for t in transforms if t["type"] == "translation"), [0.0] * len(scale)
    )
    return (float(scale[-2]), float(scale[-1])), (float(translate[-2]), float(translate[-1]))
