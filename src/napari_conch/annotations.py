"""A pathologist's annotations: class-named regions on a slide, from QuPath, our exports and
napari layers.

:class:`Annotations` holds shapely polygons with their class names, in **level-0 pixels**
(x, y) as QuPath writes them, with the slide's µm/px and origin once known: the tile grid an
analysis runs on has both, so a QuPath file is useful without opening its slide. What the
teaching and scoring code asks of them is one thing: which fraction of each map cell (or
tile) each class covers (:meth:`Annotations.cell_fractions`), the same cell area rule the
maps measure tissue with.

QuPath conventions kept: features with no ``classification`` are unclassified and are not
used (counted in :attr:`Annotations.skipped`); classes whose name starts with ``Ignore``
(QuPath's ``Ignore*``) mark regions that are neither taught nor scored.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .colors import rgba
from .geometry import label_polygons, shape_polygon

__all__ = ["IGNORE_PREFIX", "Annotations", "Region", "read_annotations"]

IGNORE_PREFIX = "Ignore"
# Sub-samples per map-cell side when measuring how much of a cell a class covers.
_SAMPLES = 4
# Labels layers larger than this are slide-sized paintings: too slow to turn into polygons.
_MAX_LABEL_PIXELS = 64_000_000
# Coordinates may poke past the slide's edge by this fraction of its size (a drawn shape's
# border) before they count as belonging to another slide.
_EDGE_SLACK = 0.02


@dataclass(frozen=True)
class Region:
    """One annotated region: its class name, a shapely (Multi)Polygon in level-0 pixels
    (x, y), its colour when the file gave one (RGBA 0–1) and QuPath's object type."""

    name: str
    polygon: object
    color: tuple | None = None
    kind: str = "annotation"

    @property
    def ignored(self) -> bool:
        return self.name.startswith(IGNORE_PREFIX)


@dataclass
class Annotations:
    """Class-named regions on one slide.

    Attributes
    ----------
    regions : list of Region
        Polygons in level-0 pixels (x, y).
    mpp : float or None
        µm per level-0 pixel, when the source says it (a slide, our exports, a napari layer).
    offset_um : (float, float)
        World position (y, x) µm of level-0 pixel (0, 0), as :attr:`Slide.origin_um`.
    slide_shape : (int, int) or None
        Level-0 (H, W) of the slide the coordinates were checked against.
    source : str
        Where they came from (a path or a layer name).
    skipped : dict
        What was not used and why (``{"unclassified": 3, "points": 1}``).
    """

    regions: list[Region]
    mpp: float | None = None
    offset_um: tuple[float, float] = (0.0, 0.0)
    slide_shape: tuple[int, int] | None = None
    source: str = ""
    skipped: dict = field(default_factory=dict)

    # -- what they hold -------------------------------------------------------------------

    @property
    def class_names(self) -> list[str]:
        """Classes taught or scored, in first-seen order (``Ignore*`` classes left out)."""
        names: list[str] = []
        for region in self.regions:
            if not region.ignored and region.name not in names:
                names.append(region.name)
        return names

    @property
    def colors(self) -> dict[str, tuple]:
        """Each class's colour as the file gave it (first region that has one)."""
        colors: dict[str, tuple] = {}
        for region in self.regions:
            if region.color is not None:
                colors.setdefault(region.name, region.color)
        return colors

    def __len__(self) -> int:
        return len(self.regions)

    def area_um2(self) -> dict[str, float]:
        """Annotated area of each class in µm² (overlaps within a class counted once)."""
        from shapely.ops import unary_union

        mpp = self._mpp_for("areas")
        return {
            name: float(unary_union([r.polygon for r in self.regions if r.name == name]).area)
            * mpp**2
            for name in self.class_names
        }

    def fingerprint(self) -> str:
        """A hash of the regions (class names and vertices), to recognise the same
        annotations later — e.g. a classifier's training set."""
        digest = hashlib.sha256()
        for region in self.regions:
            digest.update(region.name.encode())
            digest.update(np.round(_vertices(region.polygon), 3).tobytes())
        return digest.hexdigest()

    def subset(self, keep) -> Annotations:
        """These annotations with only the regions where ``keep`` (bool per region) holds."""
        keep = list(keep)
        regions = [r for r, k in zip(self.regions, keep, strict=True) if k]
        return Annotations(
            regions, self.mpp, self.offset_um, self.slide_shape, self.source, self.skipped
        )

    def __repr__(self) -> str:
        counts = ", ".join(
            f"{name}: {sum(r.name == name for r in self.regions)}" for name in self.class_names
        )
        return f"Annotations({len(self.regions)} regions; {counts or 'no classes'})"

    # -- placing them on a grid ------------------------------------------------------------

    def placed(self, grid) -> Annotations:
        """These annotations checked against a tile grid's slide: µm/px and origin taken
        from it; a clear error when their coordinates do not fit that slide."""
        return self.placed_at(grid.mpp, grid.offset_um, grid.slide_shape)

    def placed_at(self, mpp: float, offset_um=(0.0, 0.0), slide_shape=None) -> Annotations:
        """These annotations on a slide of ``mpp`` µm/px, origin ``offset_um`` and level-0
        ``slide_shape`` (checked when given): a clear error when they were drawn elsewhere."""
        mpp = float(mpp)
        if self.mpp is not None and abs(self.mpp - mpp) > 1e-3 * mpp:
            raise ValueError(
                f"The annotations are at {self.mpp:.4g} µm/px but the slide is at {mpp:.4g}: "
                "they were drawn on another slide (or another level of it)."
            )
        shape = tuple(slide_shape) if slide_shape else None
        placed = Annotations(self.regions, mpp, tuple(offset_um), shape, self.source, self.skipped)
        if shape is not None:
            placed.check_inside(shape)
        return placed

    def check_inside(self, slide_shape) -> None:
        """Refuse regions outside a slide of level-0 (H, W) ``slide_shape``."""
        height, width = (float(v) for v in slide_shape)
        slack_y, slack_x = _EDGE_SLACK * height, _EDGE_SLACK * width
        for i, region in enumerate(self.regions):
            x0, y0, x1, y1 = region.polygon.bounds
            if x0 < -slack_x or y0 < -slack_y or x1 > width + slack_x or y1 > height + slack_y:
                raise ValueError(
                    f"Annotation {i + 1} ({region.name!r}) spans x {x0:.0f}–{x1:.0f}, "
                    f"y {y0:.0f}–{y1:.0f} level-0 px, outside the slide ({width:.0f} × "
                    f"{height:.0f} px): these annotations belong to another slide, or are in "
                    "µm rather than level-0 pixels."
                )

    def cell_fractions(self, shape, cell_px: float, origin_px=(0.0, 0.0), names=None):
        """Fraction of each cell of a grid (``shape`` cells of ``cell_px`` level-0 px from
        ``origin_px``) covered by each class: (C, h, w) float32 for ``names`` (default
        :attr:`class_names`), and (h, w) for the ``Ignore*`` regions. Measured on a 4 × 4
        lattice of points per cell; a point in two classes counts for both."""
        from shapely import contains_xy, prepare

        names = self.class_names if names is None else list(names)
        h, w = (int(v) for v in shape)
        steps = (np.arange(_SAMPLES) + 0.5) / _SAMPLES
        out = np.zeros((len(names) + 1, h, w), np.float32)
        for region in self.regions:
            index = len(names) if region.ignored else _index(names, region.name)
            if index is None:
                continue
            polygon = region.polygon
            prepare(polygon)
            x0, y0, x1, y1 = polygon.bounds
            # only the cells under the region's bounding box
            r0, r1 = _cell_span(y0, y1, origin_px[0], cell_px, h)
            c0, c1 = _cell_span(x0, x1, origin_px[1], cell_px, w)
            if r0 >= r1 or c0 >= c1:
                continue
            ys = origin_px[0] + (np.arange(r0, r1)[:, None] + steps).ravel() * cell_px
            xs = origin_px[1] + (np.arange(c0, c1)[:, None] + steps).ravel() * cell_px
            yy, xx = np.meshgrid(ys, xs, indexing="ij")
            inside = contains_xy(polygon, xx, yy)
            counts = inside.reshape(r1 - r0, _SAMPLES, c1 - c0, _SAMPLES).sum(axis=(1, 3))
            block = out[index, r0:r1, c0:c1]
            np.maximum(block, counts / _SAMPLES**2, out=block)
        return out[:-1], out[-1]

    def _mpp_for(self, what: str) -> float:
        if self.mpp is None:
            raise ValueError(
                f"The {what} of these annotations need the slide's µm/px: read them with "
                "slide=..., or use them with the slide's embeddings (which know it)."
            )
        return self.mpp

    # -- writing ------------------------------------------------------------------------

    def to_geojson(self, path=None) -> dict:
        """A QuPath-readable FeatureCollection of these regions (level-0 pixels)."""
        from shapely import orient_polygons
        from shapely.geometry import mapping

        from .colors import rgb255

        features = []
        for region in self.regions:
            classification = {"name": region.name}
            if region.color is not None:
                classification["color"] = rgb255(region.color)
            features.append(
                {
                    "type": "Feature",
                    "geometry": mapping(orient_polygons(region.polygon, exterior_cw=False)),
                    "properties": {"objectType": region.kind, "classification": classification},
                }
            )
        collection = {"type": "FeatureCollection", "features": features}
        if path is not None:
            from .formats.files import write_text

            write_text(path, json.dumps(collection))
        return json.loads(json.dumps(collection))


def read_annotations(
    source, slide=None, *, classes: Mapping | Sequence | None = None
) -> Annotations:
    """Annotations from a QuPath GeoJSON, one of our GeoJSON exports, a GeoJSON dict, or a
    napari Shapes or Labels layer.

    Parameters
    ----------
    source : path, dict or napari layer
        A GeoJSON file (FeatureCollection, Feature, a list of features — QuPath writes all
        three), its parsed dict, a Shapes layer (one class per shape, from its ``class``,
        ``name`` or ``label`` feature column, else the layer's name) or a Labels layer
        (label value → class name from ``classes``, the layer's ``class_names`` metadata or a
        ``class``/``name`` feature column).
    slide : Slide or path, optional
        The slide they belong to: µm/px, origin, and a check that the coordinates lie on it.
        Without it they are placed on the tile grid they are used with.
    classes : mapping label → name, or list of names (label i + 1 = names[i]), optional
        For Labels layers.
    """
    opened = None
    if slide is not None:
        from .slide import as_slide

        opened = as_slide(slide)
    if hasattr(source, "data") and hasattr(source, "scale") and not isinstance(source, dict):
        annotations = _from_layer(source, classes, opened)
    else:
        collection, name = _load_geojson(source)
        annotations = _from_geojson(collection, name)
    if not any(not r.ignored for r in annotations.regions):
        detail = ", ".join(f"{k}: {v}" for k, v in annotations.skipped.items())
        raise ValueError(
            f"{annotations.source or 'These annotations'} hold no classified region"
            + (f" ({detail})" if detail else "")
            + ": give each region a class (QuPath: Set class) before teaching or scoring."
        )
    if opened is not None:
        if annotations.mpp is None:
            annotations.mpp = opened.mpp
        annotations.offset_um = tuple(getattr(opened, "origin_um", (0.0, 0.0)))
        annotations.slide_shape = tuple(opened.shape[:2])
        annotations.check_inside(opened.shape[:2])
    return annotations


# -- GeoJSON ------------------------------------------------------------------------------


def _load_geojson(source) -> tuple[object, str]:
    if isinstance(source, (dict, list)):
        return source, "the GeoJSON given"
    path = Path(os.fspath(source))
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"Cannot read annotations from {path}: {exc}") from exc
    try:
        return json.loads(text), path.name
    except ValueError as exc:
        raise ValueError(
            f"{path.name} is not GeoJSON ({exc}); export annotations from QuPath with "
            "File ▸ Export objects as GeoJSON."
        ) from exc


def _features(collection, name: str) -> list:
    if isinstance(collection, list):
        return collection
    if isinstance(collection, dict):
        kind = collection.get("type")
        if kind == "FeatureCollection" and isinstance(collection.get("features"), list):
            return collection["features"]
        if kind == "Feature":
            return [collection]
    raise ValueError(
        f"{name} is JSON but not annotations: expected a GeoJSON FeatureCollection, a "
        "Feature or a list of features (QuPath's 'Export objects as GeoJSON')."
    )


def _from_geojson(collection, name: str) -> Annotations:
    from shapely.geometry import shape

    regions, skipped = [], {}
    for feature in _features(collection, name):
        if not isinstance(feature, dict) or feature.get("type") != "Feature":
            _count(skipped, "not a feature")
            continue
        geometry = feature.get("geometry") or {}
        if geometry.get("type") not in ("Polygon", "MultiPolygon"):
            _count(skipped, f"{str(geometry.get('type') or 'no geometry').lower()}s")
            continue
        properties = feature.get("properties") or {}
        label, color = _classification(properties)
        if label is None:
            _count(skipped, "unclassified")
            continue
        try:
            polygon = _valid(shape(geometry))
        except (ValueError, TypeError, AttributeError) as exc:
            raise ValueError(f"{name}: a {label!r} polygon is malformed ({exc}).") from exc
        if polygon.is_empty:
            _count(skipped, "empty")
            continue
        kind = str(properties.get("objectType") or "annotation")
        regions.append(Region(label, polygon, color, kind))
    mpp, offset = _placement(collection)
    return Annotations(regions, mpp, offset, None, name, skipped)


def _classification(properties: dict) -> tuple[str | None, tuple | None]:
    """QuPath's class name and colour: ``classification`` {name, color | colorRGB} (or a
    bare name); ``None`` when unclassified."""
    value = properties.get("classification")
    if value is None:
        return None, None
    if isinstance(value, str):
        name, color = value, None
    elif isinstance(value, dict):
        name = value.get("name")
        if not name and isinstance(value.get("names"), list):  # QuPath's derived classes
            name = ": ".join(str(n) for n in value["names"])
        color = value.get("color", value.get("colorRGB"))
    else:
        return None, None
    name = str(name or "").strip()
    if not name:
        return None, None
    return name, _color(color)


def _color(value) -> tuple | None:
    if value is None:
        return None
    if isinstance(value, int):  # QuPath's packed colorRGB (0xAARRGGBB, often negative)
        value &= 0xFFFFFF
        value = [(value >> 16) & 255, (value >> 8) & 255, value & 255]
    try:
        return rgba(value)
    except (ValueError, TypeError):
        return None


def _placement(collection) -> tuple[float | None, tuple[float, float]]:
    """µm/px and origin from our own exports' map record; (None, (0, 0)) otherwise."""
    try:
        raster = collection["properties"]["napari_conch"]["map"]
        scale = float(raster["scale_um"][0])
        cell = float(raster["cell_px"])
        mpp = scale / cell
        origin = raster.get("origin_px", (0, 0))
        translate = raster["translate_um"]
    except (KeyError, TypeError, ValueError, IndexError, ZeroDivisionError):
        return None, (0.0, 0.0)
    # translate = offset + (origin + (cell - 1) / 2) · mpp   (TileGrid.cell_translate_um)
    offset = tuple(
        float(t) - (float(o) + (cell - 1) / 2) * mpp for t, o in zip(translate, origin, strict=True)
    )
    return mpp, offset


# -- napari layers ----------------------------------------------------------------------------


def _from_layer(layer, classes, slide) -> Annotations:
    kind = _layer_kind(layer)
    if kind == "shapes":
        return _from_shapes(layer, slide)
    if kind == "labels":
        return _from_labels(layer, classes, slide)
    raise ValueError(
        f"Layer {getattr(layer, 'name', '?')!r} is not a Shapes or Labels layer: annotations "
        "come from drawn shapes, painted labels or a GeoJSON file."
    )


def _layer_kind(layer) -> str | None:
    """ "shapes" or "labels" by what the layer can do (napari hands plugins a proxy of the
    layer, so its class name is not to be trusted)."""
    if hasattr(layer, "shape_type"):
        return "shapes"
    if hasattr(layer, "selected_label"):
        return "labels"
    return None


def _world(layer):
    scale = np.asarray(layer.scale, float)[-2:]
    translate = np.asarray(layer.translate, float)[-2:]
    return scale, translate


def _slide_placement(layer, slide) -> tuple[float, tuple[float, float]]:
    """µm/px and origin of the slide a layer was drawn on: the slide's, or what napari-conch
    wrote into the layer's metadata; layers are in world µm, annotations in slide pixels."""
    if slide is not None:
        return float(slide.mpp), tuple(getattr(slide, "origin_um", (0.0, 0.0)))
    info = (getattr(layer, "metadata", None) or {}).get("napari_conch") or {}
    if info.get("mpp"):
        return float(info["mpp"]), tuple(info.get("offset_um", (0.0, 0.0)))
    raise ValueError(
        f"Layer {getattr(layer, 'name', '?')!r} is drawn in world µm: pass slide= (the slide "
        "it was drawn on) so its shapes can be placed in the slide's pixels."
    )


def _from_shapes(layer, slide) -> Annotations:
    scale, translate = _world(layer)
    names = _feature_column(layer, ("class", "name", "label", "classification"))
    mpp, offset = _slide_placement(layer, slide)
    regions, skipped = [], {}
    for i, (vertices, shape_type) in enumerate(zip(layer.data, layer.shape_type, strict=True)):
        name = str(names[i]).strip() if names is not None else str(layer.name)
        if not name or name.lower() in ("nan", "none"):
            _count(skipped, "unclassified")
            continue
        world = np.asarray(vertices, float)[:, -2:] * scale + translate  # µm (y, x)
        # napari centres level-0 pixel i at offset + i·mpp; GeoJSON's pixel i spans [i, i+1)
        level0 = (world - np.asarray(offset)) / mpp + 0.5
        polygon = _valid(shape_polygon(level0, shape_type))
        if polygon.is_empty:
            _count(skipped, f"{shape_type}s enclosing nothing")
            continue
        regions.append(Region(name, polygon, _shape_color(layer, i)))
    return Annotations(regions, mpp, offset, None, str(layer.name), skipped)


def _shape_color(layer, i: int) -> tuple | None:
    try:
        return tuple(float(v) for v in np.asarray(layer.face_color)[i])
    except (AttributeError, IndexError, TypeError, ValueError):
        return None


def _from_labels(layer, classes, slide) -> Annotations:
    data = layer.data
    if isinstance(data, (list, tuple)):  # multiscale: the finest level
        data = data[0]
    if int(np.prod(data.shape[-2:])) > _MAX_LABEL_PIXELS:
        raise ValueError(
            f"Labels layer {layer.name!r} is {data.shape[-2]} × {data.shape[-1]} pixels: paint "
            "annotations on a map-sized Labels layer (the Teach panel makes one) or draw shapes."
        )
    labels = np.asarray(data)[..., :, :]
    labels = labels.reshape(labels.shape[-2:])
    names = _label_names(layer, classes)
    scale, translate = _world(layer)
    if abs(scale[0] - scale[1]) > 1e-6 * max(scale):
        raise ValueError(f"Labels layer {layer.name!r} has non-square pixels {tuple(scale)}.")
    mpp, offset = _slide_placement(layer, slide)
    cell = scale[0] / mpp  # label pixel side in level-0 px
    # napari puts a label pixel's centre at translate: its corner is half of it before, and
    # level-0 pixel i (centred at offset + i·mpp) starts at i in GeoJSON's convention
    corner = (translate - np.asarray(offset) - scale / 2) / mpp + 0.5
    regions, skipped = [], {}
    for value in np.unique(labels):
        if value == 0:
            continue
        name = names.get(int(value))
        if not name:
            _count(skipped, "unnamed labels")
            continue
        polygon = label_polygons(labels, int(value), cell, tuple(corner))
        color = _label_color(layer, int(value))
        # each painted blob is a region of its own (held-out folds hold out whole regions)
        for part in getattr(polygon, "geoms", [polygon]):
            regions.append(Region(name, part, color))
    if skipped.get("unnamed labels") and not regions:
        raise ValueError(
            f"Labels layer {layer.name!r} has labels but no class names for them: pass "
            "classes={1: 'tumor', ...} (or paint in the Teach panel, which names them)."
        )
    return Annotations(regions, mpp, offset, None, str(layer.name), skipped)


def _label_names(layer, classes) -> dict[int, str]:
    if classes is not None:
        if isinstance(classes, Mapping):
            return {int(k): str(v) for k, v in classes.items()}
        return {i + 1: str(n) for i, n in enumerate(classes)}
    info = (getattr(layer, "metadata", None) or {}).get("napari_conch") or {}
    if info.get("class_names"):
        return {i + 1: str(n) for i, n in enumerate(info["class_names"])}
    result = info.get("result")
    if result is not None and getattr(result, "class_names", None):
        return {i + 1: str(n) for i, n in enumerate(result.class_names)}
    column = _feature_column(layer, ("class", "name", "label"))
    features = getattr(layer, "features", None)
    if column is not None and features is not None and "index" in features:
        return {int(i): str(n) for i, n in zip(features["index"], column, strict=True)}
    return {}


def _label_color(layer, value: int) -> tuple | None:
    try:
        return tuple(float(v) for v in layer.get_color(value))
    except (AttributeError, TypeError, ValueError, KeyError):
        return None


def _feature_column(layer, candidates) -> list | None:
    features = getattr(layer, "features", None)
    if features is None or not hasattr(features, "columns"):
        return None
    for column in candidates:
        if column in features.columns and len(features[column]) == len(layer.data):
            return list(features[column])
    for column in candidates:
        if column in features.columns:
            return list(features[column])
    return None


# -- small helpers ------------------------------------------------------------------------


def _valid(polygon):
    from shapely import make_valid
    from shapely.geometry import MultiPolygon, Polygon

    if not polygon.is_valid:
        polygon = make_valid(polygon)
    if not isinstance(polygon, (Polygon, MultiPolygon)):  # make_valid may add lines
        parts = [g for g in getattr(polygon, "geoms", []) if isinstance(g, (Polygon, MultiPolygon))]
        from shapely.ops import unary_union

        polygon = unary_union(parts) if parts else Polygon()
    return polygon


def _vertices(polygon) -> np.ndarray:
    from shapely import get_coordinates

    return get_coordinates(polygon).astype(np.float64)


def _cell_span(low: float, high: float, origin: float, cell: float, n: int) -> tuple[int, int]:
    """The cells [start, stop) of a row (or column) of ``n`` that [low, high] touches."""
    start = int(np.floor((low - origin) / cell))
    stop = int(np.ceil((high - origin) / cell))
    return max(0, start), min(n, stop)


def _index(names: list, name: str) -> int | None:
    return names.index(name) if name in names else None


def _count(skipped: dict, what: str) -> None:
    skipped[what] = skipped.get(what, 0) + 1
