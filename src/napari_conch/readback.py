"""Reading napari-conch's own exports back as results: what we write, we read.

An OME-Zarr written by :func:`napari_conch.export.to_ome_zarr` holds everything a result
needs — class probabilities (and similarity maps) as channels, the label map under
``labels/segmentation`` with class names and colours, and the placement in µm — so it comes
back as a :class:`~napari_conch.results.SegmentationResult` plus its
:class:`~napari_conch.results.SimilarityMap` list, ready for :func:`napari_conch.show`.
A label OME-TIFF comes back as labels with class names, colours and placement; a similarity
OME-TIFF as its map; a GeoJSON as its polygons drawn back onto the map's cells.

Each format's reader lives beside its writer in :mod:`napari_conch.formats`; a format added
there has its ``read_<name>`` here too.
"""

from __future__ import annotations

from .errors import ResultReadError
from .formats import format_function, is_result_file, read_result_file, read_results
from .formats.geojson import read_geojson
from .formats.ome_tiff import read_ome_tiff
from .formats.ome_zarr import is_ours as is_result_zarr
from .formats.ome_zarr import read_ome_zarr

__all__ = [
    "ResultReadError",
    "is_result_file",
    "is_result_zarr",
    "read_geojson",
    "read_ome_tiff",
    "read_ome_zarr",
    "read_result_file",
    "read_results",
]


def __getattr__(name: str):
    """``read_<format>`` of a registered format module not listed above."""
    function = format_function(name) if name.startswith("read_") else None
    if function is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return function
