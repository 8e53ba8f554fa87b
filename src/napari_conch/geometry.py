"""Plane geometry the maps, exports and annotations share: label cells as polygons, drawn
shapes as polygons, and which points fall inside them.

Points are (y, x) like every array here; shapely geometries are (x, y), as GeoJSON and
QuPath take them.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

# napari's shape types and how they become polygons here
SHAPE_TYPES = ("polygon", "rectangle", "path", "ellipse")


def label_polygons(labels: np.ndarray, value: int, cell_px: float, origin_px=(0.0, 0.0)):
    """The cells equal to ``value`` as one shapely (Multi)Polygon in level-0 pixels (x, y),
    exact on the cell grid, holes kept (None when no cell has it). Rows are merged into runs
    before the union."""
    from shapely import box
    from shapely.ops import unary_union

    mask = labels == value
    boxes = []
    oy, ox = origin_px
    for row in np.flatnonzero(mask.any(axis=1)):
        line = np.concatenate([[False], mask[row], [False]])
        edges = np.flatnonzero(np.diff(line.astype(np.int8)))
        for start, stop in zip(edges[::2], edges[1::2], strict=True):
            boxes.append(
                box(
                    ox + start * cell_px,
                    oy + row * cell_px,
                    ox + stop * cell_px,
                    oy + (row + 1) * cell_px,
                )
            )
    return unary_union(boxes) if boxes else None


def shape_polygon(vertices_yx, shape_type: str = "polygon"):
    """A drawn shape as a shapely Polygon (x, y): a polygon, rectangle or path through its
    (y, x) vertices (a path is closed), or the ellipse inscribed in the vertices' box."""
    from shapely import Polygon, affinity
    from shapely.geometry import Point

    verts = np.asarray(vertices_yx, float)[:, -2:]
    if shape_type == "ellipse":
        (y0, x0), (y1, x1) = verts.min(axis=0), verts.max(axis=0)
        circle = Point((x0 + x1) / 2, (y0 + y1) / 2).buffer(1.0, quad_segs=64)
        return affinity.scale(circle, max((x1 - x0) / 2, 1e-9), max((y1 - y0) / 2, 1e-9))
    if shape_type not in SHAPE_TYPES:
        raise ValueError(f"Unknown shape type {shape_type!r}; expected one of {SHAPE_TYPES}.")
    if len(verts) < 3:  # a line or a point encloses nothing
        return Polygon()
    return Polygon(verts[:, ::-1])


def points_in_polygons(points_yx, polygons: Iterable) -> np.ndarray:
    """Which (y, x) points lie inside any of the shapely ``polygons`` (bool (N,))."""
    from shapely import contains_xy

    points = np.asarray(points_yx, float).reshape(-1, 2)
    inside = np.zeros(len(points), bool)
    for polygon in polygons:
        inside |= contains_xy(polygon, points[:, 1], points[:, 0])
    return inside


def points_in_labels(points_yx, labels, scale=(1.0, 1.0), translate=(0.0, 0.0)) -> np.ndarray:
    """Which (y, x) world points fall on a labelled pixel (value > 0) of a label image placed
    at ``scale`` and ``translate`` (napari's pixel-centre convention). ``labels`` may be
    numpy or dask; only the pixels under the points are read."""
    points = np.asarray(points_yx, float).reshape(-1, 2)
    index = np.round((points - np.asarray(translate, float)) / np.asarray(scale, float))
    index = index.astype(np.int64)
    shape = np.asarray(labels.shape[-2:])
    inside = ((index >= 0) & (index < shape)).all(axis=1)
    keep = np.zeros(len(points), bool)
    rows, cols = index[inside].T
    lookup = labels.vindex if hasattr(labels, "vindex") else labels  # dask: pointwise
    keep[inside] = np.asarray(lookup[rows, cols]) > 0
    return keep
