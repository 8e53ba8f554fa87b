"""Exports that other tools open: QuPath GeoJSON, OME-Zarr, OME-TIFF, tile tables.

- :func:`to_geojson` — a FeatureCollection QuPath imports: one merged (multi)polygon per
  class, holes kept, with ``classification`` {name, color} and measurements (area µm², mean
  probability); optionally one square per tile with per-class scores. Coordinates are
  level-0 pixels, as QuPath expects.
- :func:`to_ome_zarr` — OME-NGFF: probability maps as the image, the label map under
  ``labels/segmentation`` with class names and colours in its ``image-label`` metadata.
- :func:`to_ome_tiff` — a pyramidal OME-TIFF label image with physical pixel sizes.
- :func:`tile_table` — a pandas table (CSV or Parquet) of tiles: coordinates in px and µm,
  tissue fraction, per-class scores, similarity values.
- :func:`export_all` — every chosen format at once, with a summary.

Every export records the model, whether its weights were trained, and the prompts. The
formats live in :mod:`napari_conch.formats` (one module each, one registry); this module
is their public face: a format added there has its ``to_<name>`` writer here too.
"""

from __future__ import annotations

from .formats import (
    FORMATS,
    export_all,
    export_paths,
    file_stem,
    format_function,
    free_stem,
)
from .formats.geojson import BACKGROUND_RGB, to_geojson
from .formats.ome_tiff import slide_to_ome_tiff, to_ome_tiff
from .formats.ome_zarr import SIMILARITY_CHANNEL, UNCERTAINTY_CHANNEL, to_ome_zarr
from .formats.tables import tile_table
from .geometry import label_polygons

__all__ = [
    "BACKGROUND_RGB",
    "FORMATS",
    "SIMILARITY_CHANNEL",
    "UNCERTAINTY_CHANNEL",
    "export_all",
    "export_paths",
    "file_stem",
    "free_stem",
    "label_polygons",
    "slide_to_ome_tiff",
    "tile_table",
    "to_geojson",
    "to_ome_tiff",
    "to_ome_zarr",
]


def __getattr__(name: str):
    """``to_<format>`` of a registered format module not listed above."""
    function = format_function(name) if name.startswith("to_") else None
    if function is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return function
