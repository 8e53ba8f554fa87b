"""What every slide reader provides, and the pixel conversions they share.

A reader ("backend") opens one file and exposes its pyramid as :class:`LevelReader` objects:
each reads any rectangle of its level as an (h, w, 3) uint8 array, and says which chunk
shape matches the file's own storage. :class:`~napari_conch.slide.Slide` wraps those in dask
arrays, so nothing is read until a region is asked for.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import SlideReadError

logger = logging.getLogger(__name__)

# Brightfield background: what missing tiles and areas outside the image read as.
BACKGROUND = 255
# Display/dask chunks are whole native tiles, grouped to about this many pixels per side.
TARGET_CHUNK = 512
# The widest chunk we accept: full-width strips of wider images are cut into pieces.
MAX_CHUNK_WIDTH = 4096
# µm/px values outside this range are not microscope resolutions (e.g. 72 dpi defaults).
MPP_RANGE = (0.01, 50.0)


_UNIT_TO_UM = {
    "m": 1e6, "meter": 1e6, "dm": 1e5, "cm": 1e4, "centimeter": 1e4, "mm": 1e3,
    "millimeter": 1e3, "µm": 1.0, "μm": 1.0, "um": 1.0, "micrometer": 1.0, "micron": 1.0,
    "nm": 1e-3, "nanometer": 1e-3, "pm": 1e-6, "a": 1e-4, "å": 1e-4, "angstrom": 1e-4,
}  # fmt: skip


def unit_to_um(unit) -> float | None:
    """Micrometres per ``unit`` (OME/NGFF length unit names and symbols); None if unknown."""
    if unit is None:
        return None
    return _UNIT_TO_UM.get(str(unit).strip().lower())


def read_yx(array, axes: str, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """Read [y0:y1, x0:x1] of an N-d array whose axis names are ``axes`` (e.g. "tczyx",
    "YXS") as (h, w, channels): channel axes ("c", "s") kept (at most 4 channels), any
    other axis at its first index."""
    axes = axes.lower()
    key = []
    for axis in axes:
        if axis == "y":
            key.append(slice(y0, y1))
        elif axis == "x":
            key.append(slice(x0, x1))
        elif axis in "cs":
            key.append(slice(0, 4))
        else:
            key.append(0)
    data = np.asarray(array[tuple(key)])
    kept = [a for a in axes if a in "yxcs"]
    channels = [i for i, a in enumerate(kept) if a in "cs"]
    data = data.transpose([kept.index("y"), kept.index("x"), *channels])
    while data.ndim > 3:  # both c and s: keep the first plane of the outer one
        data = data[:, :, 0]
    return data


def segment_pieces(y0: int, y1: int, x0: int, x1: int, seg: tuple[int, int]):
    """Where a grid of ``seg`` (h, w) storage segments meets the box [y0:y1, x0:x1] (non-empty,
    inside the level): ``((row, col), (sy0, sy1, sx0, sx1), (dy, dx))`` per segment touched —
    its grid position, the part of it inside the box, and that part's corner in the box."""
    sh, sw = seg
    for row in range(y0 // sh, (y1 - 1) // sh + 1):
        ty0, ty1 = max(y0, row * sh), min(y1, (row + 1) * sh)
        for col in range(x0 // sw, (x1 - 1) // sw + 1):
            tx0, tx1 = max(x0, col * sw), min(x1, (col + 1) * sw)
            inside = (ty0 - row * sh, ty1 - row * sh, tx0 - col * sw, tx1 - col * sw)
            yield (row, col), inside, (ty0 - y0, tx0 - x0)


class LevelReader:
    """One pyramid level: ``shape`` (H, W), preferred ``chunks`` (h, w), ``read()`` a box.

    Subclasses implement :meth:`_read` for a box already clipped to the level.
    ``segments_read`` and ``bytes_read`` count storage reads (diagnostics and tests).
    """

    shape: tuple[int, int]
    chunks: tuple[int, int]
    label: str = "image"  # named in errors; the Slide sets "<slide name> level <i>"
    # Factors this level decodes at reduced size for less than a full decode (JPEG: in the
    # DCT domain). Empty: none.
    reduced_factors: tuple[int, ...] = ()
    # (h, w) of the JPEG tiles this level stores and hands out undecoded (jpeg_tile), for a
    # decoder elsewhere (nvJPEG on a GPU). None: it does not.
    jpeg_tile_shape: tuple[int, int] | None = None

    def __init__(self, shape: tuple[int, int], chunks: tuple[int, int]):
        self.shape = (int(shape[0]), int(shape[1]))
        self.chunks = (max(1, int(chunks[0])), max(1, int(chunks[1])))
        self.segments_read = 0
        self.bytes_read = 0
        self._count_lock = threading.Lock()

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Pixels [y0:y1, x0:x1] as (y1-y0, x1-x0, 3) uint8; outside the level reads as white."""
        h, w = y1 - y0, x1 - x0
        if h <= 0 or w <= 0:
            return np.full((max(h, 0), max(w, 0), 3), BACKGROUND, np.uint8)
        H, W = self.shape
        cy0, cy1, cx0, cx1 = max(y0, 0), min(y1, H), max(x0, 0), min(x1, W)
        if (cy0, cy1, cx0, cx1) == (y0, y1, x0, x1):
            return self._read(y0, y1, x0, x1)
        out = np.full((h, w, 3), BACKGROUND, np.uint8)
        if cy1 > cy0 and cx1 > cx0:
            out[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] = self._read(cy0, cy1, cx0, cx1)
        return out

    def _read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        raise NotImplementedError

    def read_reduced(self, y0: int, y1: int, x0: int, x1: int, factor: int) -> np.ndarray:
        """Pixels [y0:y1, x0:x1] of the level shrunk ``factor`` times (box coordinates in
        shrunk pixels), decoded at that size; outside the level (and a last row or column
        the level only partly fills) reads as white."""
        if factor not in self.reduced_factors:
            raise ValueError(f"{self.label} cannot decode at 1/{factor} size")
        h, w = y1 - y0, x1 - x0
        H, W = self.shape[0] // factor, self.shape[1] // factor
        cy0, cy1, cx0, cx1 = max(y0, 0), min(y1, H), max(x0, 0), min(x1, W)
        if (cy0, cy1, cx0, cx1) == (y0, y1, x0, x1) and h > 0 and w > 0:
            return self._read_reduced(y0, y1, x0, x1, factor)  # inside: no padding to copy into
        out = np.full((max(h, 0), max(w, 0), 3), BACKGROUND, np.uint8)
        if cy1 > cy0 and cx1 > cx0:
            out[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] = self._read_reduced(
                cy0, cy1, cx0, cx1, factor
            )
        return out

    def _read_reduced(self, y0: int, y1: int, x0: int, x1: int, factor: int) -> np.ndarray:
        raise NotImplementedError

    def jpeg_tile(self, row: int, col: int) -> bytes | None:
        """Tile (row, col) as a self-contained JPEG stream, undecoded; None where the file
        never wrote it (it reads as white). Only where :attr:`jpeg_tile_shape` is set."""
        raise ValueError(f"{self.label} does not store JPEG tiles that can be handed out.")

    def _count(self, segments: int, nbytes: int) -> None:
        with self._count_lock:
            self.segments_read += segments
            self.bytes_read += nbytes


class ArraySource:
    """Makes a :class:`LevelReader` look like a read-only (H, W, 3) uint8 array for dask."""

    def __init__(self, reader: LevelReader, reopen=None):
        self.reader = reader
        self.shape = (*reader.shape, 3)
        self.dtype = np.dtype(np.uint8)
        self.ndim = 3
        self._reopen = reopen  # (callable, args) giving this source again in another process

    def __reduce__(self):
        # Sent to another process (a dask.distributed worker), a level reopens its file there.
        if self._reopen is None:
            raise TypeError(f"{self.reader.label} cannot be sent to another process")
        return self._reopen

    def __getitem__(self, key) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        key = key + (slice(None),) * (3 - len(key))
        ys, xs, cs = key
        y0, y1 = _bounds(ys, self.shape[0])
        x0, x1 = _bounds(xs, self.shape[1])
        try:
            return self.reader.read(y0, y1, x0, x1)[:, :, cs]
        except SlideReadError:
            raise
        except Exception as exc:  # inside dask: say which slide and where
            raise SlideReadError(
                f"Cannot read pixels of {self.reader.label} (rows {y0}–{y1}, columns "
                f"{x0}–{x1}): {exc}"
            ) from exc


def _bounds(s, size: int) -> tuple[int, int]:
    if isinstance(s, (int, np.integer)):
        i = int(s) + (size if s < 0 else 0)
        return i, i + 1
    start, stop, step = s.indices(size)
    if step != 1:
        raise IndexError("slide levels support only contiguous slices")
    return start, max(start, stop)


class SegmentCache:
    """Thread-safe LRU of decoded storage segments (tiles, strips), bounded in bytes.

    Neighbouring model tiles and display chunks share native tiles; keeping recently decoded
    ones avoids decoding them again (and full-width strips once per column chunk).
    """

    def __init__(self, max_bytes: int = 128 * 2**20):
        self.max_bytes = max_bytes
        self._items: OrderedDict[object, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._pending: dict[object, threading.Event] = {}

    def get_or_compute(self, key, compute):
        """The cached value for ``key``, computing it once even when several threads ask at
        the same time (the others wait for the first instead of decoding it again)."""
        while True:
            with self._lock:
                value = self._items.get(key)
                if value is not None:
                    self._items.move_to_end(key)
                    return value
                event = self._pending.get(key)
                if event is None:
                    event = self._pending[key] = threading.Event()
                    break
            event.wait()
            # the value may have been evicted or failed: look again (or compute it ourselves)
        try:
            value = compute()
            self.put(key, value)
            return value
        finally:
            with self._lock:
                self._pending.pop(key, None)
            event.set()

    def put(self, key, value: np.ndarray) -> None:
        if value.nbytes > self.max_bytes:
            return
        with self._lock:
            if key in self._items:
                return
            self._items[key] = value
            self._bytes += value.nbytes
            while self._bytes > self.max_bytes:
                _, old = self._items.popitem(last=False)
                self._bytes -= old.nbytes


@dataclass
class Backend:
    """An opened slide file: its levels, resolution and metadata."""

    name: str
    levels: list[LevelReader]
    mpp: float | None = None
    mpp_source: str | None = None
    metadata: dict = field(default_factory=dict)
    closer: object = None  # callable releasing file handles

    def close(self) -> None:
        if callable(self.closer):
            self.closer()
            self.closer = None


def chunks_for(tile: tuple[int, int], shape: tuple[int, int]) -> tuple[int, int]:
    """Dask chunk shape: whole native tiles, about TARGET_CHUNK px per side, never strip-thin."""
    th, tw = max(1, tile[0]), max(1, tile[1])
    ch = th * max(1, round(TARGET_CHUNK / th))
    # A full-width strip wider than MAX_CHUNK_WIDTH is cut into columns; each still reads
    # whole strips, which the segment cache then serves to the neighbouring columns.
    cw = TARGET_CHUNK * 2 if tw > MAX_CHUNK_WIDTH else tw * max(1, round(TARGET_CHUNK / tw))
    return min(ch, shape[0]), min(cw, shape[1])


def valid_mpp(value: float | None, source: str, path: Path | str) -> float | None:
    """Keep a µm/px value from metadata only if it is a plausible microscope resolution."""
    if value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(value) or value <= 0:
        return None
    lo, hi = MPP_RANGE
    if not lo <= value <= hi:
        logger.warning(
            "%s: %s says %.4g µm/px, which is not a microscope resolution; ignoring it. "
            "Pass mpp= to open_slide if you know the pixel size.",
            Path(path).name,
            source,
            value,
        )
        return None
    return value


def to_rgb_uint8(array: np.ndarray, note: dict | None = None) -> np.ndarray:
    """(H, W[, C]) of any common dtype → (H, W, 3) uint8 for a brightfield viewer and model.

    Grayscale is repeated to RGB, RGBA is composited over white, and 16-bit (or float)
    data is scaled to 8 bits. ``note`` collects what was done, for one log line per slide.
    """
    a = np.asarray(array)
    if a.ndim == 2:
        a = a[:, :, None]
    channels = a.shape[2]
    if a.dtype != np.uint8:
        _record(note, f"{a.dtype} pixels scaled to 8 bits")
        if a.dtype == np.uint16:
            a = (a >> 8).astype(np.uint8)
        elif np.issubdtype(a.dtype, np.floating):
            a = (np.clip(np.nan_to_num(a), 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
        elif np.issubdtype(a.dtype, np.integer):
            info = np.iinfo(a.dtype)
            scale = 255.0 / max(1, info.max)
            a = (np.clip(a, 0, info.max) * scale + 0.5).astype(np.uint8)
        elif a.dtype == np.bool_:
            a = a.astype(np.uint8) * 255
        else:
            raise ValueError(f"Unsupported pixel type {a.dtype}")
    if channels == 3:
        return a
    if channels == 1:
        _record(note, "grayscale repeated to RGB")
        return np.repeat(a, 3, axis=2)
    if channels == 2:  # gray + alpha
        a = np.concatenate([a[:, :, :1]] * 3 + [a[:, :, 1:2]], axis=2)
        channels = 4
    if channels >= 4:
        _record(note, "RGBA composited over white")
        rgb = a[:, :, :3].astype(np.uint16)
        alpha = a[:, :, 3:4].astype(np.uint16)
        out = (rgb * alpha + BACKGROUND * (255 - alpha) + 127) // 255
        return out.astype(np.uint8)
    raise ValueError(f"Unsupported channel count {channels}")


def _record(note: dict | None, message: str) -> None:
    """Log a pixel conversion the first time it happens for a slide."""
    if note is None:
        return
    done = note.setdefault("converted", set())
    if message not in done:
        done.add(message)
        logger.info("%s: %s.", note.get("label", "image"), message)
