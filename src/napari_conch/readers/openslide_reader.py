"""Vendor formats through OpenSlide (MRXS, VMS/VMU, SCN, BIF, SVSLIDE, …).

Needs the ``openslide`` extra (``pip install "napari-conch[openslide]"``: openslide-python
with the ``openslide-bin`` library). OpenSlide is thread-safe and releases the GIL, so dask
reads chunks in parallel.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .base import Backend, LevelReader, chunks_for, to_rgb_uint8, valid_mpp

logger = logging.getLogger(__name__)

INSTALL_HINT = (
    "Reading this format needs OpenSlide: pip install 'napari-conch[openslide]' "
    "(openslide-python and openslide-bin)."
)


def openslide_available() -> bool:
    try:
        import openslide  # noqa: F401
    except (ImportError, OSError):
        return False
    return True


def open_openslide(path: Path) -> Backend:
    try:
        import openslide
    except (ImportError, OSError) as exc:
        raise ImportError(INSTALL_HINT) from exc

    osr = openslide.OpenSlide(str(path))
    props = dict(osr.properties)
    note: dict = {}
    levels = [
        _OpenSlideLevel(osr, i, osr.level_dimensions[i], osr.level_downsamples[i], props, note)
        for i in range(osr.level_count)
    ]
    mpp = valid_mpp(props.get("openslide.mpp-x"), "openslide.mpp-x", path)
    bounds = tuple(
        int(props.get(f"openslide.bounds-{k}", 0) or 0) for k in ("y", "x", "height", "width")
    )
    metadata = {
        "vendor": props.get("openslide.vendor"),
        "objective_power": _float(props.get("openslide.objective-power")),
        "origin_px": bounds[:2],
        "bounds_px": bounds if any(bounds[2:]) else None,
        "pyramid_source": "file" if osr.level_count > 1 else "single level",
        "associated_images": sorted(osr.associated_images),
        "pixel_conversion": note,
    }
    return Backend(
        "openslide", levels, mpp, "openslide.mpp-x" if mpp else None, metadata, osr.close
    )


def _float(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


class _OpenSlideLevel(LevelReader):
    def __init__(self, osr, index, dims, downsample, props, note):
        self._osr = osr
        self._index = index
        self._downsample = downsample
        self._note = note
        w, h = dims
        tw = int(props.get(f"openslide.level[{index}].tile-width", 0) or 0) or 256
        th = int(props.get(f"openslide.level[{index}].tile-height", 0) or 0) or 256
        super().__init__((h, w), chunks_for((th, tw), (h, w)))

    def _read(self, y0, y1, x0, x1):
        # OpenSlide takes the location in level-0 pixels and the size in level pixels.
        location = (round(x0 * self._downsample), round(y0 * self._downsample))
        region = self._osr.read_region(location, self._index, (x1 - x0, y1 - y0))
        data = np.asarray(region)  # RGBA; transparent outside scanned areas
        self._count(1, data.nbytes)
        return to_rgb_uint8(data, None)
