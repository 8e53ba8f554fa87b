"""QuPath GeoJSON: one merged (multi)polygon per class, holes kept, and optionally one square
per tile — written in level-0 pixel coordinates, as QuPath expects — and read back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..colors import rgb255
from ..errors import ResultReadError
from ..geometry import label_polygons
from ..provenance import Provenance
from ..results import SegmentationResult
from .files import atomic_path

EXTENSIONS = (".geojson",)
BACKGROUND_RGB = (160, 160, 160)  # tiles the background class wins (QuPath colour)


def to_geojson(seg, path=None, *, tiles: bool = False, emb=None) -> dict:
    """A QuPath-readable FeatureCollection of a :class:`SegmentationResult`.

    Parameters
    ----------
    seg : SegmentationResult
    path : path, optional
        Also write it there (``.geojson``).
    tiles : bool
        Add one square "detection" per tile with its per-class probabilities (needs the
        tile positions: taken from ``seg.metadata["grid"]`` and ``emb``).
    emb : Embeddings, optional
        The embeddings the segmentation came from (for tile squares).
    """
    from shapely import box, orient_polygons
    from shapely.geometry import mapping

    grid = seg.metadata.get("grid")
    if not grid:
        raise ValueError(
            "This result does not record the tile grid it was made on (metadata['grid']), so "
            "its cells cannot be placed in slide pixels; export it as OME-Zarr or OME-TIFF."
        )
    cell_px = float(grid["stride_px"])
    origin = tuple(float(v) for v in grid.get("origin_px", (0, 0)))
    # The image's edge is the edge: polygons and tile squares are cut there.
    image = None
    if grid.get("slide_shape"):
        height, width = (float(v) for v in grid["slide_shape"])
        image = box(0.0, 0.0, width, height)
    features = []
    for label, name in enumerate(seg.class_names, start=1):
        geometry = label_polygons(seg.labels, label, cell_px, origin)
        if geometry is not None and image is not None:
            geometry = geometry.intersection(image)
        if geometry is None or geometry.is_empty:
            continue
        geometry = orient_polygons(geometry, exterior_cw=False)  # RFC 7946 § 3.1.6
        measurements = {"Tissue area µm^2": float(seg.areas_mm2.get(name, 0.0) * 1e6)}
        probability = seg.probabilities[label - 1][seg.labels == label]
        probability = probability[np.isfinite(probability)]  # painted cells may have none
        if probability.size:  # QuPath reads every measurement as a number: never null
            measurements["Mean probability"] = float(probability.mean())
        features.append(
            {
                "type": "Feature",
                "geometry": mapping(geometry),
                "properties": {
                    "objectType": "annotation",
                    "name": name,
                    "classification": {"name": name, "color": rgb255(seg.colors[label])},
                    "measurements": measurements,
                    "isLocked": False,
                },
            }
        )
    if tiles:
        if emb is None:
            raise ValueError("tiles=True needs the embeddings (emb=) for the tile positions.")
        features += _tile_features(seg, emb, float(grid["tile_px"]), image)
    # The map's own geometry, so napari-conch's reader can rebuild the label image exactly.
    raster = {
        "cell_px": cell_px,
        "origin_px": list(origin),
        "shape": list(seg.labels.shape),
        "scale_um": [float(v) for v in seg.scale_um],
        "translate_um": [float(v) for v in seg.translate_um],
        "class_names": list(seg.class_names),
        "colors": {str(i): rgb255(seg.colors[i]) for i in range(1, len(seg.class_names) + 1)},
        "image_shape": [float(v) for v in grid["slide_shape"]] if grid.get("slide_shape") else None,
    }
    collection = {
        "type": "FeatureCollection",
        "features": features,
        "properties": {
            "napari_conch": {**seg.provenance.summary(), "map": raster},
            "coordinates": "level-0 pixels (x, y)",
        },
    }
    text = json.dumps(collection)
    if path is not None:
        with atomic_path(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
    return json.loads(text)  # plain lists, exactly what the file holds


def _tile_features(seg, emb, size: float, image) -> list[dict]:
    """One square "detection" per embedded tile, classified by the map's decision rule
    (``"background"`` where the background class wins; no class below min_confidence)."""
    from shapely import box, orient_polygons
    from shapely.geometry import mapping

    classes = seg.tile_classes()
    colors = {name: rgb255(seg.colors[i]) for i, name in enumerate(seg.class_names, start=1)}
    colors["background"] = list(BACKGROUND_RGB)
    features = []
    for position, (y, x) in enumerate(emb.coords):
        probs = seg.tile_probabilities[position]
        name = classes[position]
        if not name:  # not embedded
            continue
        square = box(float(x), float(y), float(x) + size, float(y) + size)
        if image is not None:
            square = square.intersection(image)
        square = orient_polygons(square, exterior_cw=False)
        properties = {
            "objectType": "detection",
            "measurements": {
                f"p({n})": float(p) for n, p in zip(seg.class_names, probs, strict=True)
            },
            "tile": position,
        }
        if name in colors:
            properties["classification"] = {"name": name, "color": colors[name]}
        features.append({"type": "Feature", "geometry": mapping(square), "properties": properties})
    return features


# -- reading back ----------------------------------------------------------------------------


def _ours(path) -> tuple | None:
    """(collection, napari-conch info) of a GeoJSON we wrote, else None."""
    try:
        collection = json.loads(Path(path).read_text(encoding="utf-8"))
        info = collection["properties"]["napari_conch"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return (collection, info) if isinstance(info, dict) and "map" in info else None


def is_ours(path) -> bool:
    """True for a GeoJSON napari-conch wrote (reads its JSON)."""
    return _ours(path) is not None


def read_geojson(path) -> SegmentationResult:
    """A napari-conch GeoJSON → SegmentationResult: each class's polygons drawn back onto
    the map's cells (a cell takes the class whose polygon holds the centre of its part
    inside the image), so the labels come back exactly."""
    from shapely import contains_xy
    from shapely.geometry import shape

    path = Path(path)
    found = _ours(path)
    if found is None:
        raise ResultReadError(f"{path} is not a GeoJSON written by napari-conch.")
    collection, info = found
    raster = info["map"]
    names = list(raster["class_names"])
    height, width = (int(v) for v in raster["shape"])
    cell = float(raster["cell_px"])
    oy, ox = (float(v) for v in raster["origin_px"])
    extent = raster.get("image_shape")
    ys = _cell_centres(height, oy, cell, float(extent[0]) if extent else None)
    xs = _cell_centres(width, ox, cell, float(extent[1]) if extent else None)
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
    grid = {"stride_px": cell, "tile_px": cell, "origin_px": [oy, ox]}
    if extent:
        grid["slide_shape"] = [float(v) for v in extent]
    return SegmentationResult.from_labels(
        labels,
        names,
        scale_um=raster["scale_um"],
        translate_um=raster["translate_um"],
        colors={k: [c / 255 for c in v] for k, v in raster["colors"].items()},
        areas_mm2=areas,
        metadata=_read_metadata(info, path, grid),
    )


def _read_metadata(info: dict, path: Path, grid: dict | None) -> dict:
    """The provenance of a result read back from one of our files."""
    summary = {**info, "grid": info.get("grid") or grid}
    return Provenance.from_summary(summary, source_file=str(path)).to_metadata()


def _cell_centres(n: int, origin: float, cell: float, end: float | None) -> np.ndarray:
    start = origin + np.arange(n) * cell
    stop = start + cell if end is None else np.minimum(start + cell, end)
    return (start + stop) / 2


def write(job, path) -> None:
    """export_all's writer: the class polygons."""
    to_geojson(job.seg, path)


def write_tiles(job, path) -> None:
    """export_all's writer: the class polygons and one square per tile."""
    to_geojson(job.seg, path, tiles=True, emb=job.emb)


def read(path) -> list:
    """The results in one of our GeoJSON files."""
    return [read_geojson(path)]
