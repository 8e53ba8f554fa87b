"""npe2 writer: save a Labels layer as QuPath GeoJSON, OME-Zarr or a pyramidal OME-TIFF."""

from __future__ import annotations

import numpy as np

from ..formats import ExportJob, format_for_layer_path
from ..results import SegmentationResult


def write_labels(path: str, data, meta: dict) -> list[str]:
    """Write a labels layer; the format follows the file name (.geojson, .ome.zarr, .ome.tif).

    Layers made by napari-conch carry their SegmentationResult (class names, probabilities,
    provenance); the layer's current pixels are written, so corrections painted in napari are
    kept — and measured. Other labels layers are written from their pixels, scale and
    translation, with coordinates in the layer's own pixels.
    """
    fmt = format_for_layer_path(path)  # before any work: an unknown ending is refused
    result = (meta.get("metadata") or {}).get("napari_conch", {}).get("result")
    if isinstance(result, SegmentationResult):
        result = result.with_labels(np.asarray(data))
    else:
        result = _result_from_layer(np.asarray(data), meta)
    fmt.write(ExportJob(result), path)
    return [path]


def _result_from_layer(labels: np.ndarray, meta: dict) -> SegmentationResult:
    """A labels-only result of a layer napari-conch did not make: class names from its
    ``class`` feature (else "label N"), each pixel a cell in the layer's own pixels."""
    if labels.ndim != 2:
        raise ValueError("napari-conch writes 2-D label images only.")
    count = max((int(v) for v in np.unique(labels) if v > 0), default=0)
    features = meta.get("features")
    names = None
    if features is not None and "class" in getattr(features, "columns", features):
        column = list(features["class"])
        if len(column) > count:
            names = [str(column[i]) for i in range(1, count + 1)]
    names = names or [f"label {i}" for i in range(1, count + 1)]
    scale = tuple(float(s) for s in meta.get("scale", (1.0, 1.0))[-2:])
    translate = tuple(float(t) for t in meta.get("translate", (0.0, 0.0))[-2:])
    pixels = {  # the layer's pixels are the map's cells, and GeoJSON's coordinates
        "stride_px": 1.0,
        "tile_px": 1.0,
        "mpp": scale[0],
        "origin_px": [t / s for t, s in zip(translate, scale, strict=True)],
    }
    return SegmentationResult.from_labels(
        labels,
        names,
        scale_um=scale,
        translate_um=translate,
        metadata={"grid": pixels, "source": "napari labels layer"},
    )
