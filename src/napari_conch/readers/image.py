"""Single images (PNG, JPEG, BMP, WebP, GIF) and in-memory arrays as one-level slides."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np

from .base import Backend, LevelReader, chunks_for, to_rgb_uint8, valid_mpp

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif"}
# Pillow refuses images above ~179 Mpx as "decompression bombs"; slides exported as one
# PNG/JPEG can be larger, so allow up to 2 Gpx (about 6 GB decoded) and say so in the log.
_MAX_PIXELS = 2**31


def open_image(path: Path) -> Backend:
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, _MAX_PIXELS)
    try:
        im = Image.open(path)  # reads the header only
    except Image.DecompressionBombError as exc:
        raise ValueError(
            f"it declares more pixels than a plain image can hold in memory ({exc}); if it "
            "is a real slide, convert it to a tiled pyramidal TIFF (e.g. vips tiffsave "
            "IN OUT.tif --tile --pyramid --compression jpeg) and open that"
        ) from exc
    with im:
        width, height = im.size
        mode = im.mode
        dpi = im.info.get("dpi")
        im.verify()  # catches truncated/corrupt files without decoding the pixels
    note: dict = {}
    reader = _PillowLevel(path, (height, width), note)
    mpp = None
    if dpi and dpi[0]:
        mpp = valid_mpp(25400.0 / float(dpi[0]), "the image's DPI field", path)
    metadata = {
        "vendor": None,
        "objective_power": None,
        "origin_px": (0, 0),
        "pyramid_source": "single level",
        "image_mode": mode,
        "pixel_conversion": note,
    }
    return Backend("image", [reader], mpp, "image DPI" if mpp else None, metadata)


class _PillowLevel(LevelReader):
    """Decodes the whole image on first read (these formats allow nothing else) and keeps it."""

    def __init__(self, path: Path, shape, note):
        self._path = path
        self._note = note
        self._pixels: np.ndarray | None = None
        self._lock = threading.Lock()
        super().__init__(shape, chunks_for((512, 512), shape))

    def _decoded(self) -> np.ndarray:
        with self._lock:
            if self._pixels is None:
                from PIL import Image

                with Image.open(self._path) as im:
                    if im.mode == "P":
                        im = im.convert("RGBA")
                    elif im.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                        im = im.convert("RGB")
                    data = np.asarray(im)
                self._pixels = to_rgb_uint8(data, self._note)
                self._count(1, self._pixels.nbytes)
            return self._pixels

    def _read(self, y0, y1, x0, x1):
        return self._decoded()[y0:y1, x0:x1]


class ArrayLevel(LevelReader):
    """A numpy-like (H, W[, C]) array (numpy, dask, zarr) as a level."""

    def __init__(self, array, note: dict):
        self._array = array
        self._note = note
        shape = tuple(int(s) for s in array.shape[:2])
        native = getattr(array, "chunks", None)
        if native is not None and not isinstance(native[0], int):  # dask: tuple of tuples
            native = (native[0][0], native[1][0])
        tile = (native[0], native[1]) if native else (512, 512)
        super().__init__(shape, chunks_for(tile, shape))

    def _read(self, y0, y1, x0, x1):
        data = np.asarray(self._array[y0:y1, x0:x1])
        return to_rgb_uint8(data, self._note)


class DownsampledLevel(LevelReader):
    """A coarser level computed on demand by block-averaging ``factor`` × ``factor`` pixels of
    ``source``, in bounded pieces (for images stored without a pyramid)."""

    _PIECE = 4096  # source pixels per side read at once

    def __init__(self, source: LevelReader, factor: int):
        self._source = source
        self.factor = int(factor)
        H, W = source.shape
        shape = (max(1, H // self.factor), max(1, W // self.factor))
        super().__init__(shape, chunks_for((512, 512), shape))

    def _read(self, y0, y1, x0, x1):
        f = self.factor
        out = np.empty((y1 - y0, x1 - x0, 3), np.uint8)
        step = max(1, self._PIECE // f)
        for oy in range(y0, y1, step):
            for ox in range(x0, x1, step):
                ey, ex = min(oy + step, y1), min(ox + step, x1)
                block = self._source.read(oy * f, ey * f, ox * f, ex * f)
                h, w = ey - oy, ex - ox
                mean = block.reshape(h, f, w, f, 3).mean(axis=(1, 3))
                out[oy - y0 : ey - y0, ox - x0 : ex - x0] = (mean + 0.5).astype(np.uint8)
        self._count(1, 0)
        return out
