"""TIFF-family slides through tifffile: SVS, NDPI, OME-TIFF, BigTIFF, plain and tiled TIFF.

Regions are read by fetching only the tiles (or strips) they touch with ``os.pread`` — no
file-position lock, so reader threads run in parallel — and decoding them with tifffile's
own decoder (imagecodecs; the GIL is released while decoding). Decoded segments are kept
in a small LRU, because neighbouring regions share them. Layouts this fast path does not
handle (focal-plane stacks, unusual segment grids) fall back to tifffile's zarr store.
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from .base import (
    BACKGROUND,
    Backend,
    LevelReader,
    SegmentCache,
    chunks_for,
    read_yx,
    segment_pieces,
    to_rgb_uint8,
    unit_to_um,
    valid_mpp,
)

logger = logging.getLogger(__name__)


def open_tiff(path: Path) -> Backend:
    """Open a TIFF-family file. Raises tifffile/OS errors for the caller to translate."""
    import tifffile

    tif = tifffile.TiffFile(path)
    try:
        series = _main_series(tif)
        cache = SegmentCache()
        note: dict = {}
        fd = _open_fd(path, tif)
        levels: list[LevelReader] = []
        for index, level in enumerate(series.levels):
            reader = _fast_reader(tif, level, fd, cache, note, index)
            if reader is None:
                reader = _ZarrLevelReader(series, index, note)
            levels.append(reader)
        levels = _ordered_levels(levels)
        mpp, mpp_source = _tiff_mpp(tif, series, path)
        metadata = _tiff_metadata(tif, series)
    except Exception:
        tif.close()
        raise
    metadata["pixel_conversion"] = note

    def close():
        if fd is not None:
            os.close(fd)
        tif.close()

    return Backend("tifffile", levels, mpp, mpp_source, metadata, closer=close)


def _main_series(tif):
    """The image series that is the slide: the first, unless another one is larger."""
    candidates = [s for s in tif.series if s.shape and "Y" in s.axes and "X" in s.axes]
    if not candidates:
        raise ValueError("the file holds no 2-D image")
    first = candidates[0]

    def area(s):
        return s.shape[s.axes.index("Y")] * s.shape[s.axes.index("X")]

    best = max(candidates, key=area)
    return first if area(first) >= area(best) else best


def _ordered_levels(levels: list[LevelReader]) -> list[LevelReader]:
    """Largest first, dropping any level that is not smaller than the one before, or whose
    height and width shrink by different factors (it would be read at the wrong place)."""
    levels = sorted(levels, key=lambda r: -r.shape[0] * r.shape[1])
    kept = [levels[0]]
    height, width = levels[0].shape[:2]
    for reader in levels[1:]:
        h, w = reader.shape[:2]
        if not (h < kept[-1].shape[0] and w < kept[-1].shape[1]):
            continue
        # Scanners round level sizes, so allow a pixel of rounding plus 1 %.
        fy, fx = height / h, width / w
        if abs(h - height / fx) > 1 + 0.01 * h or abs(w - width / fy) > 1 + 0.01 * w:
            logger.warning(
                "Ignoring a pyramid level of %d×%d px: it shrinks the %d×%d image by %.2f "
                "vertically but %.2f horizontally, so it does not line up with level 0.",
                w,
                h,
                width,
                height,
                fy,
                fx,
            )
            continue
        kept.append(reader)
    return kept


def _open_fd(path: Path, tif) -> int | None:
    # pread on our own descriptor: thread-safe, no shared file position. Not on Windows, and
    # not for TIFFs embedded at an offset inside another file.
    if not hasattr(os, "pread") or getattr(tif.filehandle, "offset", 0):
        return None
    return os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))


def _fast_reader(tif, level, fd, cache, note, index) -> LevelReader | None:
    axes = level.axes
    pages = list(level.pages)
    keyframe = level.keyframe
    if keyframe is None or pages[0] is None:
        return None
    leading = [a for a in axes if a not in "YXS"]
    sizes = dict(zip(axes, level.shape, strict=True))
    channel_pages = [pages[0]]
    if leading == ["C"] and sizes["C"] in (3, 4) and "S" not in axes:
        channel_pages = pages[: sizes["C"]]  # OME-style: one page per colour channel
    elif any(sizes[a] > 1 for a in leading):
        if leading and sizes.get("C", 1) == 1:
            note.setdefault("converted", set()).add(f"first plane of {''.join(leading)} stack used")
            channel_pages = [pages[0]]
        else:
            return None
    if keyframe.shaped[1] != 1:  # volumetric tiles
        return None
    try:
        return _TiffLevelReader(tif, keyframe, channel_pages, fd, cache, note, index)
    except _Unsupported:
        return None


class _Unsupported(Exception):
    pass


class _TiffLevelReader(LevelReader):
    def __init__(self, tif, keyframe, pages, fd, cache, note, index):
        self._tif = tif
        self._keyframe = keyframe
        self._pages = pages
        self._fd = fd
        self._cache = cache
        self._note = note
        self._index = index
        height, width = keyframe.imagelength, keyframe.imagewidth
        if keyframe.is_tiled:
            seg = (keyframe.tilelength, keyframe.tilewidth)
        else:
            seg = (min(keyframe.rowsperstrip or height, height), width)
        self._seg = seg
        self._rows = math.ceil(height / seg[0])
        self._cols = math.ceil(width / seg[1])
        self._planes = keyframe.shaped[0]
        self._samples = keyframe.shaped[-1]
        expected = self._planes * self._rows * self._cols
        for page in pages:
            if len(page.dataoffsets) != expected:
                raise _Unsupported
        self._decodeargs = {"_fullsize": bool(keyframe.is_tiled)}
        if keyframe.compression in {6, 7, 34892, 33007}:  # JPEG flavours
            self._decodeargs["jpegtables"] = keyframe.jpegtables
            self._decodeargs["jpegheader"] = keyframe.jpegheader
        keyframe.init_decode()
        self._decode = keyframe.decode
        self._dtype = keyframe.dtype
        self._file_lock = threading.Lock()
        super().__init__((height, width), chunks_for(seg, (height, width)))
        self._jpeg_tables = keyframe.jpegtables if keyframe.compression == 7 else None
        self._jpeg_rgb = keyframe.photometric == 2  # RGB-coded JPEG (no YCbCr transform)
        self._reducible = _reducible(keyframe, pages, self._planes, self._samples, seg)
        self._reduced: tuple[int, ...] | None = None  # checked on first use, not at open

    @property
    def reduced_factors(self) -> tuple[int, ...]:
        if self._reduced is None:
            self._reduced = _JPEG_SCALES if self._reducible and self._same_decode() else ()
        return self._reduced

    @property
    def jpeg_tile_shape(self) -> tuple[int, int] | None:
        return self._seg if self._reducible else None

    def jpeg_tile(self, row: int, col: int) -> bytes | None:
        if not self._reducible:
            return super().jpeg_tile(row, col)
        if not (0 <= row < self._rows and 0 <= col < self._cols):
            raise IndexError(
                f"{self.label} has {self._rows} × {self._cols} tiles; no ({row}, {col})."
            )
        return self._stored_jpeg(row * self._cols + col)

    def _stored_jpeg(self, index: int) -> bytes | None:
        """JPEG tile ``index`` as a self-contained stream; None where it was never written."""
        page = self._pages[0]
        count = page.databytecounts[index]
        if not count:  # sparse file: a tile that was never written
            return None
        data = self._read_bytes(page.dataoffsets[index], count)
        self._count(1, count)
        return self._jpeg_stream(data)

    def _read(self, y0, y1, x0, x1):
        channels = self._samples * self._planes * len(self._pages)
        out = np.empty((y1 - y0, x1 - x0, channels), self._dtype)
        for p_i, page in enumerate(self._pages):
            for plane in range(self._planes):
                ch0 = (p_i * self._planes + plane) * self._samples
                for (r, c), (a0, a1, b0, b1), (dy, dx) in segment_pieces(y0, y1, x0, x1, self._seg):
                    index = (plane * self._rows + r) * self._cols + c
                    segment = self._segment(p_i, page, index)[0]
                    out[dy : dy + a1 - a0, dx : dx + b1 - b0, ch0 : ch0 + self._samples] = segment[
                        a0:a1, b0:b1
                    ]
        return to_rgb_uint8(out, self._note)

    def _segment(self, p_i, page, index):
        return self._cache.get_or_compute(
            (self._index, p_i, index), lambda: self._decode_segment(page, index)
        )

    def _decode_segment(self, page, index):
        offset, count = page.dataoffsets[index], page.databytecounts[index]
        data = self._read_bytes(offset, count) if count else None
        self._count(1, count)
        decoded, position, shape = self._decode(data, index, **self._decodeargs)
        sy, sx = position[2], position[3]
        if decoded is None:  # sparse file: a segment that was never written
            decoded = np.full((shape[1], shape[2], shape[3]), _fill(self._dtype), self._dtype)
        else:
            decoded = decoded[0]
        return _CacheEntry(decoded, sy, sx)

    # -- reduced-size decoding (JPEG in the DCT domain) ------------------------------------

    def _read_reduced(self, y0, y1, x0, x1, factor):
        seg = (self._seg[0] // factor, self._seg[1] // factor)
        out = np.empty((y1 - y0, x1 - x0, 3), np.uint8)
        for (r, c), (a0, a1, b0, b1), (dy, dx) in segment_pieces(y0, y1, x0, x1, seg):
            index = r * self._cols + c
            segment = self._cache.get_or_compute(
                (self._index, "reduced", factor, index),
                lambda index=index: _Reduced(self._decode_reduced(index, seg)),
            ).pixels
            out[dy : dy + a1 - a0, dx : dx + b1 - b0] = segment[a0:a1, b0:b1]
        return out

    def _decode_reduced(self, index, size) -> np.ndarray:
        stream = self._stored_jpeg(index)
        if stream is None:  # sparse file: a segment that was never written
            return np.full((*size, 3), BACKGROUND, np.uint8)
        pixels = _decode_jpeg_scaled(stream, size)
        if pixels.shape != (*size, 3):
            raise ValueError(f"a JPEG tile decoded to {pixels.shape[:2]}, not the expected {size}")
        return pixels

    def _jpeg_stream(self, data: bytes) -> bytes:
        """A tile's bytes as a self-contained JPEG (shared tables spliced in; RGB-coded
        tiles marked so, as TIFF's photometric tag says, with an Adobe segment)."""
        if self._jpeg_tables and data[:2] == b"\xff\xd8":
            data = self._jpeg_tables[:-2] + data[2:]  # tables' SOI…(no EOI) + tile after SOI
        if self._jpeg_rgb:
            data = data[:2] + _ADOBE_RGB + data[2:]
        return data

    def _same_decode(self) -> bool:
        """Whether our JPEG decoding gives tifffile's pixels on this level (checked on its
        first stored tile at full size); if not, reduced decoding is not offered."""
        page = self._pages[0]
        index = next((i for i, n in enumerate(page.databytecounts) if n), None)
        if index is None:
            return False
        try:
            data = self._read_bytes(page.dataoffsets[index], page.databytecounts[index])
            ours = _decode_jpeg_scaled(self._jpeg_stream(data))
            theirs = self._decode(data, index, **self._decodeargs)[0][0]
        except Exception as exc:
            logger.debug("reduced JPEG decoding not used on %s: %s", self.label, exc)
            return False
        same = (
            ours.shape == theirs.shape
            and int(np.abs(ours.astype(np.int16) - theirs.astype(np.int16)).max())
            <= _SAME_DECODE_TOLERANCE
        )
        if not same:
            logger.debug("reduced JPEG decoding not used on %s: pixels differ", self.label)
        return same

    def _read_bytes(self, offset: int, count: int) -> bytes:
        if self._fd is not None:
            data = os.pread(self._fd, count, offset)
        else:
            fh = self._tif.filehandle
            with self._file_lock:
                fh.seek(offset)
                data = fh.read(count)
        if len(data) != count:
            raise OSError(
                f"the file ends early: a segment at byte {offset} needs {count} bytes but only "
                f"{len(data)} are there (truncated download?)"
            )
        return data


class _CacheEntry(tuple):
    """(decoded segment, (y, x)) with the ``nbytes`` the cache accounts with."""

    def __new__(cls, decoded, sy, sx):
        entry = super().__new__(cls, (decoded, (sy, sx)))
        entry.nbytes = decoded.nbytes
        return entry


# JPEG decoders scale by 1/2, 1/4 and 1/8 in the DCT domain (libjpeg's scale_denom).
_JPEG_SCALES = (2, 4, 8)
# libjpeg builds may round the colour transform differently by one level
_SAME_DECODE_TOLERANCE = 1
# An Adobe APP14 segment with transform 0: the three components are R, G, B as stored.
_ADOBE_RGB = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00"


def _reducible(keyframe, pages, planes, samples, seg) -> bool:
    """Tiled, 8-bit, 3-sample, new-style JPEG tiles of a side divisible by 8, one page."""
    return (
        keyframe.compression == 7
        and keyframe.is_tiled
        and keyframe.photometric in (2, 6)
        and len(pages) == 1
        and planes == 1
        and samples == 3
        and np.dtype(keyframe.dtype) == np.uint8
        and seg[0] % 8 == 0
        and seg[1] % 8 == 0
    )


def _decode_jpeg_scaled(stream: bytes, size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode a JPEG at ``size`` (h, w: its own divided by 2, 4 or 8; None: full size) in
    the DCT domain (libjpeg-turbo's scaled IDCT).

    At reduced size libjpeg-turbo's SIMD "fancy" chroma upsampling does not apply and makes
    a scaled decode slower than a full one (measured: 0.64 against 0.43 ms for a 256-px
    4:2:0 tile); plain upsampling makes it faster (0.29 ms). Full size keeps the default,
    so it matches tifffile's decoder bit for bit.
    """
    import simplejpeg

    if size is None:
        return simplejpeg.decode_jpeg(stream, colorspace="RGB")
    # the size is known from the TIFF tile size: no header parse per tile
    return simplejpeg.decode_jpeg(
        stream, colorspace="RGB", fastupsample=True, min_height=size[0], min_width=size[1]
    )


class _Reduced:
    """A reduced-size segment as the segment cache holds it (with its ``nbytes``)."""

    def __init__(self, pixels: np.ndarray):
        self.pixels = pixels
        self.nbytes = pixels.nbytes


def _fill(dtype) -> int | float:
    dtype = np.dtype(dtype)
    if dtype == np.uint8:
        return BACKGROUND
    if np.issubdtype(dtype, np.integer):
        return np.iinfo(dtype).max
    return 1.0


class _ZarrLevelReader(LevelReader):
    """Fallback through tifffile's zarr store for layouts the fast path does not handle."""

    def __init__(self, series, index, note):
        import zarr

        level = series.levels[index]
        self._store = series.aszarr(level=index, fillvalue=None)
        self._array = zarr.open_array(self._store, mode="r")
        self._axes = level.axes
        self._note = note
        ys, xs = self._axes.index("Y"), self._axes.index("X")
        shape = (level.shape[ys], level.shape[xs])
        chunk = self._array.chunks
        super().__init__(shape, chunks_for((chunk[ys], chunk[xs]), shape))

    def _read(self, y0, y1, x0, x1):
        data = read_yx(self._array, self._axes, y0, y1, x0, x1)
        self._count(1, data.nbytes)
        return to_rgb_uint8(data, self._note)


# -- metadata ------------------------------------------------------------------------------


def _tiff_mpp(tif, series, path) -> tuple[float | None, str | None]:
    """µm per level-0 pixel from SVS, OME or resolution tags, in that order of trust."""
    page = series.levels[0].keyframe
    if tif.is_svs:
        match = re.search(r"MPP\s*=\s*([0-9.eE+-]+)", page.description or "")
        if match:
            mpp = valid_mpp(match.group(1), "the Aperio MPP field", path)
            if mpp:
                return mpp, "SVS MPP"
    if tif.is_ome and tif.ome_metadata:
        mpp = _ome_mpp(tif.ome_metadata, path)
        if mpp:
            return mpp, "OME PhysicalSizeX"
    return _resolution_tag_mpp(page, path)


def _ome_mpp(xml: str, path) -> float | None:
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        logger.warning("%s: OME-XML metadata is not valid XML; ignoring it.", Path(path).name)
        return None
    for element in root.iter():
        if element.tag.endswith("Pixels") and "PhysicalSizeX" in element.attrib:
            unit = element.attrib.get("PhysicalSizeXUnit", "µm")
            factor = unit_to_um(unit)
            if factor is None:
                logger.warning(
                    "%s: unknown OME unit %r; ignoring the pixel size.", Path(path).name, unit
                )
                return None
            return valid_mpp(
                float(element.attrib["PhysicalSizeX"]) * factor, "OME PhysicalSizeX", path
            )
    return None


def _resolution_tag_mpp(page, path) -> tuple[float | None, str | None]:
    tags = page.tags
    res = tags.get("XResolution")
    unit = tags.get("ResolutionUnit")
    if res is None or unit is None:
        return None, None
    value = res.value
    per_unit = value[0] / value[1] if isinstance(value, tuple) and value[1] else float(value)
    if not per_unit or per_unit <= 0:
        return None, None
    unit_value = int(getattr(unit.value, "value", unit.value))
    if unit_value == 3:  # centimetre
        mpp = 1e4 / per_unit
    elif unit_value == 2:  # inch
        mpp = 25400.0 / per_unit
    else:  # no absolute unit
        return None, None
    mpp = valid_mpp(mpp, "the TIFF resolution tags", path)
    return (mpp, "TIFF resolution tags") if mpp else (None, None)


def _tiff_metadata(tif, series) -> dict:
    page = series.levels[0].keyframe
    vendor = (
        "aperio" if tif.is_svs else "hamamatsu" if tif.is_ndpi else "ome" if tif.is_ome else None
    )
    vendor = vendor or ("leica" if tif.is_scn else "generic-tiff")
    objective = None
    if tif.is_svs:
        match = re.search(r"AppMag\s*=\s*([0-9.]+)", page.description or "")
        objective = float(match.group(1)) if match else None
    elif tif.is_ndpi:
        tag = page.tags.get("Magnification") or page.tags.get(65421)
        objective = float(tag.value) if tag is not None else None
    return {
        "vendor": vendor,
        "objective_power": objective,
        "origin_px": (0, 0),
        "pyramid_source": "file" if len(series.levels) > 1 else "single level",
        "series": series.name or None,
        "compression": getattr(page.compression, "name", str(page.compression)).lower(),
        "tile_shape": (page.tilelength, page.tilewidth) if page.is_tiled else None,
        "strip_rows": None if page.is_tiled else page.rowsperstrip,
    }
