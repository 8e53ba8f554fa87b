"""Reading napari-conch's own exports back as results: what we write, we read.

An OME-Zarr written by :func:`napari_conch.export.to_ome_zarr` holds everything a result
needs — class probabilities (and similarity maps) as channels, the label map under
``labels/segmentation`` with class names and colours, and the placement in µm — so it comes
back as a :class:`~napari_conch.zeroshot.SegmentationResult` plus its
:class:`~napari_conch.zeroshot.SimilarityMap` list, ready for :func:`napari_conch.show`.
A label OME-TIFF comes back as labels with class names, colours and placement; a similarity
OME-TIFF as its map; a GeoJSON as its polygons drawn back onto the map's cells.
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
    metadata = _metadata(info, path)
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


# -- OME-TIFF and GeoJSON --------------------------------------------------------------------


def _tiff_info(path) -> dict | None:
    """napari-conch's JSON from an OME-TIFF's image Description (None if it is not ours)."""
    import json

    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.is_ome:
                return None
            from xml.etree import ElementTree

            root = ElementTree.fromstring(tif.ome_metadata)
    except Exception:  # not a TIFF, or not OME: not ours
        return None
    for element in root.iter():
        if element.tag.endswith("Description") and element.text:
            try:
                info = json.loads(element.text).get("napari_conch")
            except (ValueError, AttributeError):
                continue
            if isinstance(info, dict) and "kind" in info:
                return info
    return None


def _geojson_info(path) -> dict | None:
    import json

    try:
        collection = json.loads(Path(path).read_text(encoding="utf-8"))
        info = collection["properties"]["napari_conch"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return (collection, info) if isinstance(info, dict) and "map" in info else None


def is_result_file(path) -> bool:
    """True for a file or folder napari-conch exported: an OME-Zarr, a label or similarity
    OME-TIFF, or a GeoJSON (cheap checks: headers and JSON attributes only)."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith(".zarr"):
        return is_result_zarr(path)
    if name.endswith((".ome.tif", ".ome.tiff")):
        return _tiff_info(path) is not None
    if name.endswith(".geojson"):
        return _geojson_info(path) is not None
    return False


def read_result_file(path) -> list:
    """The results an exported file holds: an OME-Zarr's segmentation and similarity maps, a
    label OME-TIFF's segmentation (labels only), a similarity OME-TIFF's map, or a GeoJSON's
    segmentation (its class polygons drawn back onto the map's cells)."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith(".zarr"):
        seg, similarities = read_ome_zarr(path)
        return [seg, *similarities]
    if name.endswith((".ome.tif", ".ome.tiff")):
        return [read_ome_tiff(path)]
    if name.endswith(".geojson"):
        return [read_geojson(path)]
    raise ResultReadError(f"{path} is not a napari-conch export.")


def read_ome_tiff(path):
    """A label OME-TIFF → SegmentationResult (labels only); a similarity one → SimilarityMap."""
    import tifffile

    from .zeroshot import SimilarityMap

    path = Path(path)
    info = _tiff_info(path)
    if info is None:
        raise ResultReadError(f"{path} is not an OME-TIFF written by napari-conch.")
    with tifffile.TiffFile(path) as tif:
        data = tif.series[0].levels[0].asarray()
    scale = tuple(float(v) for v in info["scale_um"])
    translate = tuple(float(v) for v in info["translate_um"])
    metadata = _metadata(info, path)
    if info["kind"] == "similarity":
        return SimilarityMap(
            values=data.astype(np.float32),
            tile_values=np.zeros(0, np.float32),
            queries=[info["query"]],
            scale_um=scale,
            translate_um=translate,
            contrast_limits=tuple(float(v) for v in info["contrast_limits"]),
            metadata=metadata,
        )
    return _labels_result(
        data, info["class_names"], info["colors"], info.get("areas_mm2"), scale, translate, metadata
    )


def read_geojson(path):
    """A napari-conch GeoJSON → SegmentationResult: each class's polygons drawn back onto
    the map's cells (a cell takes the class whose polygon holds the centre of its part
    inside the image), so the labels come back exactly."""
    from shapely import contains_xy
    from shapely.geometry import shape

    path = Path(path)
    found = _geojson_info(path)
    if found is None:
        raise ResultReadError(f"{path} is not a GeoJSON written by napari-conch.")
    collection, info = found
    raster = info["map"]
    names = list(raster["class_names"])
    height, width = (int(v) for v in raster["shape"])
    cell = float(raster["cell_px"])
    oy, ox = (float(v) for v in raster["origin_px"])
    extent = _image_extent(collection)
    ys = _cell_centres(height, oy, cell, extent[0] if extent else None)
    xs = _cell_centres(width, ox, cell, extent[1] if extent else None)
    gx, gy = np.meshgrid(xs, ys)
    labels = np.zeros((height, width), np.uint16 if len(names) > 254 else np.uint8)
    areas = {}
    for feature in collection["features"]:
        properties = feature.get("properties", {})
        if properties.get("objectType") != "annotation":
            continue  # tile squares
        name = properties.get("classification", {}).get("name")
        if name not in names:
            continue
        labels[contains_xy(shape(feature["geometry"]), gx, gy)] = names.index(name) + 1
        tissue = properties.get("measurements", {}).get("Tissue area µm^2")
        if tissue is not None:
            areas[name] = float(tissue) / 1e6
    return _labels_result(
        labels,
        names,
        raster["colors"],
        areas,
        tuple(float(v) for v in raster["scale_um"]),
        tuple(float(v) for v in raster["translate_um"]),
        _metadata(info, path),
    )


def _image_extent(collection) -> tuple[float, float] | None:
    """The image's (height, width) in level-0 px, when the exporter recorded it."""
    shape = (collection["properties"]["napari_conch"].get("map") or {}).get("image_shape")
    return tuple(float(v) for v in shape) if shape else None


def _cell_centres(n: int, origin: float, cell: float, end: float | None) -> np.ndarray:
    start = origin + np.arange(n) * cell
    stop = start + cell if end is None else np.minimum(start + cell, end)
    return (start + stop) / 2


def _metadata(info: dict, path: Path) -> dict:
    return {
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


def _labels_result(labels, names, colors, areas, scale, translate, metadata):
    """A SegmentationResult that holds labels only (probabilities unknown: NaN)."""
    from .zeroshot import SegmentationResult

    n = len(names)
    shape = labels.shape
    palette = {0: (0.0, 0.0, 0.0, 0.0)}
    palette.update({int(k): (*(c / 255.0 for c in v[:3]), 1.0) for k, v in colors.items()})
    return SegmentationResult(
        labels=np.asarray(labels),
        probabilities=np.full((n, *shape), np.nan, np.float32),
        uncertainty=np.full(shape, np.nan, np.float32),
        class_names=list(names),
        colors=palette,
        areas_mm2=dict(areas or {n_: 0.0 for n_ in names}),
        scale_um=scale,
        translate_um=translate,
        tile_probabilities=np.zeros((0, n), np.float32),
        metadata=metadata,
    )
