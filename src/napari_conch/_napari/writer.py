"""npe2 writer: save a Labels layer as QuPath GeoJSON, OME-Zarr or a pyramidal OME-TIFF."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..export import to_geojson, to_ome_tiff, to_ome_zarr
from ..zeroshot import PALETTE, SegmentationResult


def write_labels(path: str, data, meta: dict) -> list[str]:
    """Write a labels layer; the format follows the file name (.geojson, .ome.zarr, .tif).

    Layers made by napari-conch carry their SegmentationResult (class names, probabilities,
    provenance); the layer's current pixels are written, so corrections painted in napari are
    kept. Other labels layers are written from their pixels, scale and translation, with
    coordinates in the layer's own pixels.
    """
    result = (meta.get("metadata") or {}).get("napari_conch", {}).get("result")
    if isinstance(result, SegmentationResult):
        result = replace(result, labels=np.asarray(data))
    else:
        result = _result_from_layer(np.asarray(data), meta)
    lower = path.lower()
    if lower.endswith(".geojson") or lower.endswith(".json"):
        to_geojson(result, path)
    elif lower.endswith(".zarr"):
        to_ome_zarr(result, path)
    elif lower.endswith((".tif", ".tiff")):
        to_ome_tiff(result, path)
    else:
        raise ValueError(f"napari-conch writes .geojson, .ome.zarr or .ome.tif, not {path!r}.")
    return [path]


def _result_from_layer(labels: np.ndarray, meta: dict) -> SegmentationResult:
    if labels.ndim != 2:
        raise ValueError("napari-conch writes 2-D label images only.")
    values = [int(v) for v in np.unique(labels) if v > 0]
    count = max(values, default=0)
    features = meta.get("features")
    names = None
    if features is not None and "class" in getattr(features, "columns", features):
        column = list(features["class"])
        if len(column) > count:
            names = [str(column[i]) for i in range(1, count + 1)]
    names = names or [f"label {i}" for i in range(1, count + 1)]
    scale = tuple(float(s) for s in meta.get("scale", (1.0, 1.0))[-2:])
    translate = tuple(float(t) for t in meta.get("translate", (0.0, 0.0))[-2:])
    grid = {
        "stride_px": 1.0,
        "tile_px": 1.0,
        "mpp": scale[0],
        "origin_px": [t / scale[0] for t in translate],
    }
    return SegmentationResult(
        labels=labels,
        probabilities=np.full((count, *labels.shape), np.nan, np.float32),
        uncertainty=np.full(labels.shape, np.nan, np.float32),
        class_names=names,
        colors={
            0: (0.0, 0.0, 0.0, 0.0),
            **{i: PALETTE[(i - 1) % len(PALETTE)] for i in range(1, count + 1)},
        },
        areas_mm2={
            n: float((labels == i).sum() * scale[0] * scale[1] / 1e6)
            for i, n in enumerate(names, 1)
        },
        scale_um=scale,
        translate_um=translate,
        tile_probabilities=np.zeros((0, count), np.float32),
        metadata={
            "grid": grid,
            "model": {"name": None, "trained": True},
            "source": "napari labels layer",
        },
    )
