"""npe2 reader: whole-slide images and images as one lazily read, µm-scaled pyramid layer;
napari-conch's own exports (OME-Zarr, label and similarity OME-TIFFs, GeoJSON) as results:
a Labels layer with class names and colours, and the maps, in place."""

from __future__ import annotations

import logging
from pathlib import Path

from ..formats import is_result_file, read_result_file
from ..readers import SUPPORTED_SUFFIXES, suffix_of
from ..slide import open_slide
from .layers import result_layer_data, show_scale_bar, slide_layer_data

logger = logging.getLogger(__name__)


def napari_get_reader(path):
    """Return a reader for ``path`` when napari-conch can open it, else None (never raises).

    Opening reads only headers, so the check is quick; the opened slide is handed to the
    reader so nothing is opened twice.
    """
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    try:
        p = Path(path)
        if is_result_file(p):  # our own exports come back as results, not as slides
            return _result_reader(p)
        if suffix_of(p) not in SUPPORTED_SUFFIXES and not p.is_dir():
            return None
        slide = open_slide(p)
    except Exception as exc:  # a reader must not raise: napari will try other plugins
        logger.info("napari-conch cannot open %s: %s", path, exc)
        return None

    def read(_path=None):
        if slide.mpp is None:
            _warn(
                f"{slide.name}: the file records no µm/px; the layer is shown in pixels. "
                "Enter the pixel size in the napari-conch widget before analysing."
            )
        else:
            show_scale_bar()
        return [slide_layer_data(slide)]

    return read


def _result_reader(path: Path):
    """Labels (class names, colours), probability, uncertainty and similarity layers of an
    exported result, placed in µm where they were computed."""

    def read(_path=None):
        layers = []
        for result in read_result_file(path):
            layers += result_layer_data(result)
        show_scale_bar()
        return layers

    return read


def _warn(message: str) -> None:
    try:
        from napari.utils.notifications import show_warning

        show_warning(message)
    except Exception:  # pragma: no cover - napari without a notification manager
        logger.warning(message)
