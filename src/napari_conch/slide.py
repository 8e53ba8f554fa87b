"""Whole-slide images as lazy, correctly scaled pyramids.

:func:`open_slide` reads only the file's headers; pixels are read when a region is asked
for, through :meth:`Slide.read_region` or the dask arrays in :attr:`Slide.levels`, whose
chunks are whole native tiles of the file. A :class:`Slide` pickles by path, so it travels
cheaply to dask workers.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .deprecation import forward_names
from .errors import MissingMppError, SlideReadError
from .readers import BACKENDS, choose_reader, get_reader, readers_to_try
from .readers.base import MPP_RANGE, ArraySource, Backend, LevelReader
from .readers.image import ArrayLevel, DownsampledLevel

logger = logging.getLogger(__name__)

# Images stored without a pyramid get coarser levels computed on demand above this size.
_COMPUTED_PYRAMID_ABOVE = 4096
_COMPUTED_PYRAMID_UNTIL = 1024

# Where format dispatch lived before the readers got their registry.
__getattr__ = forward_names(
    __name__,
    {
        "SUPPORTED_SUFFIXES": "napari_conch.readers",
        "MPP_UNKNOWN_NOTE": "napari_conch.formats.files",
    },
)


class Slide:
    """A lazily read whole-slide image (or any RGB image) with its pixel size.

    Attributes
    ----------
    levels : list of dask.array.Array
        (H, W, 3) uint8, finest first; chunks are whole native tiles of the file.
    mpp : float or None
        µm per level-0 pixel; None when the file does not say (pass ``mpp=`` to
        :func:`open_slide`). Nothing assumes a default.
    downsamples : list of float
        Level-0 pixels per pixel of each level: the mean of the two axes' factors, to
        choose a level by resolution.
    downsamples_yx : list of (float, float)
        The same per axis, (level-0 rows per level row, level-0 columns per level column).
        Use these to turn level pixels into level-0 pixels: where a level's height and width
        shrink by slightly different factors (odd sizes rounded by the scanner), the mean is
        off by up to a pixel per 1,000.
    origin_um : (float, float)
        Where level-0 pixel (0, 0) lies in the world, in µm (an OME-Zarr's translation;
        (0, 0) for every other format). Layers, maps and exports are placed relative to it.
    shape : tuple of int
        (height, width) of level 0 in pixels.
    metadata : dict
        ``vendor``, ``objective_power``, ``origin_px`` (offset of the scanned area, level-0
        px), ``pyramid_source`` ("file", "computed" or "single level"), ``mpp_source``,
        ``backend`` and format details.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        path: str | os.PathLike | None = None,
        mpp: float | None = None,
        name: str | None = None,
        _reopen: tuple | None = None,
        _arrays: list | None = None,
    ):
        self._backend = backend
        self._arrays = _arrays
        self.path = Path(path) if path is not None else None
        self.name = name or (self.path.name if self.path else "image")
        self._mpp_override = _check_mpp(mpp)
        self._reopen = _reopen
        readers = list(backend.levels)
        pyramid_source = backend.metadata.get("pyramid_source", "file")
        if len(readers) == 1 and max(readers[0].shape) > _COMPUTED_PYRAMID_ABOVE:
            factor = 4
            while max(readers[0].shape) // factor >= _COMPUTED_PYRAMID_UNTIL:
                readers.append(DownsampledLevel(readers[0], factor))
                factor *= 4
            pyramid_source = "computed"
        self._readers: list[LevelReader] = readers
        for i, reader in enumerate(readers):
            reader.label = f"{self.name} level {i}"
        self.shape: tuple[int, int] = readers[0].shape
        H, W = self.shape
        self.downsamples_yx: list[tuple[float, float]] = [
            (H / r.shape[0], W / r.shape[1]) for r in readers
        ]
        self.downsamples: list[float] = [(fy + fx) / 2 for fy, fx in self.downsamples_yx]
        self.mpp: float | None = self._mpp_override if self._mpp_override else backend.mpp
        self.levels = [self._dask_level(i, r) for i, r in enumerate(readers)]
        note = backend.metadata.get("pixel_conversion")
        if isinstance(note, dict):
            note["label"] = self.name
        self.metadata: dict = {
            **{k: v for k, v in backend.metadata.items() if k != "pixel_conversion"},
            "backend": backend.name,
            "pyramid_source": pyramid_source,
            "mpp_source": "argument" if self._mpp_override else backend.mpp_source,
            "level_shapes": [r.shape for r in readers],
        }
        if (
            self._mpp_override
            and backend.mpp
            and not math.isclose(self._mpp_override, backend.mpp, rel_tol=0.01)
        ):
            logger.info(
                "%s: using mpp=%.4g µm/px given by the caller instead of the file's %.4g.",
                self.name,
                self._mpp_override,
                backend.mpp,
            )
        if self.mpp is None:
            logger.warning(
                "%s: the file records no µm/px. Analyses that need it will stop until you "
                "pass it (open_slide(path, mpp=...), --mpp, or the widget's µm/px field).",
                self.name,
            )

    # -- construction from memory --------------------------------------------------------

    @classmethod
    def from_array(
        cls,
        data,
        mpp: float | None = None,
        name: str = "image",
        metadata: dict | None = None,
    ) -> Slide:
        """A Slide over an in-memory (numpy, dask, zarr) image or a list of pyramid levels.

        Levels are (H, W), (H, W, 3) or (H, W, 4) arrays, finest first; they are converted to
        RGB uint8 as they are read, like files.
        """
        arrays = list(data) if isinstance(data, (list, tuple)) else [data]
        if not arrays:
            raise ValueError("from_array needs at least one array.")
        for a in arrays:
            if len(getattr(a, "shape", ())) not in (2, 3):
                raise ValueError(
                    f"Expected (H, W[, C]) arrays; got shape {getattr(a, 'shape', None)}."
                )
        note: dict = {}
        levels = [ArrayLevel(a, note) for a in arrays]
        backend = Backend(
            "array",
            levels,
            None,
            None,
            {
                "vendor": None,
                "objective_power": None,
                "origin_px": (0, 0),
                "pyramid_source": "file" if len(levels) > 1 else "single level",
                **(metadata or {}),
                "pixel_conversion": note,
            },
        )
        return cls(backend, mpp=mpp, name=name, _arrays=arrays)

    def _dask_level(self, index: int, reader: LevelReader):
        import dask.array as da

        reopen = None
        if self._reopen is not None:
            reopen = (_level_source, (*self._reopen, index))
        elif self._arrays is not None and index < len(self._arrays):
            reopen = (_array_source, (self._arrays[index],))
        elif self._arrays is not None:  # a level computed from level 0
            reopen = (_computed_source, (self._arrays[0], reader.factor))
        return da.from_array(
            ArraySource(reader, reopen),
            chunks=(*reader.chunks, 3),
            name=f"{self._token()}-level{index}",
            asarray=False,
            fancy=False,
            lock=False,
            meta=np.empty((0, 0, 0), dtype=np.uint8),
        )

    def _token(self) -> str:
        h = hashlib.blake2b(digest_size=8)
        if self.path is not None:
            try:
                st = self.path.stat()
                h.update(f"{self.path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
            except OSError:
                h.update(str(self.path).encode())
        else:
            h.update(f"{id(self)}".encode())
        return f"slide-{h.hexdigest()}"

    # -- access ---------------------------------------------------------------------------

    def read_region(
        self, y: int, x: int, h: int, w: int, level: int = 0, reduce: int = 1
    ) -> np.ndarray:
        """Read an (h, w, 3) uint8 region.

        ``y, x`` is the top-left corner in **level-0** pixels (as in OpenSlide), ``h, w`` the
        size in pixels **of the level**. Parts outside the image read as white.

        ``reduce`` (one of :meth:`reduced_factors`): decode the region ``reduce`` times
        smaller, for less than a full decode — JPEG tiles in the DCT domain. The result is
        (round(h / reduce), round(w / reduce), 3), its corner at the nearest reduced pixel;
        its pixels are the decoder's downscale, not a resampling filter's.
        """
        if not 0 <= level < len(self._readers):
            raise IndexError(f"{self.name} has levels 0–{len(self._readers) - 1}; got {level}.")
        h, w = int(h), int(w)
        if h < 0 or w < 0:
            raise ValueError(f"Region size must be non-negative; got h={h}, w={w}.")
        fy, fx = self.downsamples_yx[level]
        ly, lx = math.floor(y / fy), math.floor(x / fx)
        if reduce != 1:
            if reduce not in self.reduced_factors(level):
                raise ValueError(
                    f"Level {level} of {self.name} cannot be decoded at 1/{reduce} size "
                    f"(possible: {self.reduced_factors(level) or 'none'})."
                )
            ry, rx = round(ly / reduce), round(lx / reduce)
            box = (ry, ry + round(h / reduce), rx, rx + round(w / reduce))
            return self._read(level, *box, reduce=reduce)
        return self._read(level, ly, ly + h, lx, lx + w)

    def reduced_factors(self, level: int = 0) -> tuple[int, ...]:
        """Factors ``read_region(..., reduce=)`` decodes at reduced size on ``level``."""
        return tuple(self._readers[level].reduced_factors)

    def jpeg_tile_shape(self, level: int = 0) -> tuple[int, int] | None:
        """(h, w) of the JPEG tiles ``level`` stores, when :meth:`jpeg_tile` can hand them
        out undecoded (to decode them elsewhere, e.g. on a GPU); None otherwise."""
        return self._readers[level].jpeg_tile_shape

    def jpeg_tile(self, level: int, row: int, col: int) -> bytes | None:
        """The JPEG tile (row, col) of ``level`` as a self-contained stream (shared tables
        included), undecoded; None for a tile the file never wrote (it reads as white)."""
        try:
            return self._readers[level].jpeg_tile(row, col)
        except (SlideReadError, ValueError, IndexError):
            raise
        except Exception as exc:
            raise SlideReadError(
                f"Cannot read JPEG tile ({row}, {col}) of {self._where()} level {level}: {exc}"
            ) from exc

    def _read(self, level, y0, y1, x0, x1, reduce: int = 1) -> np.ndarray:
        try:
            if reduce != 1:
                return self._readers[level].read_reduced(y0, y1, x0, x1, reduce)
            return self._readers[level].read(y0, y1, x0, x1)
        except SlideReadError:
            raise
        except Exception as exc:  # decoder and I/O errors, with the file named
            raise SlideReadError(
                f"Cannot read pixels of {self._where()} (level {level}, rows {y0}–{y1}, "
                f"columns {x0}–{x1}): {exc}"
            ) from exc

    def _where(self) -> str:
        return str(self.path) if self.path else self.name

    @property
    def origin_um(self) -> tuple[float, float]:
        """World position (µm) of level-0 pixel (0, 0): an OME-Zarr's translation, else 0."""
        y, x = self.metadata.get("translate_um") or (0.0, 0.0)
        return (float(y), float(x))

    def level_mpp(self, level: int) -> float | None:
        """µm per pixel of ``level`` (None when the slide's µm/px is unknown)."""
        return None if self.mpp is None else self.mpp * self.downsamples[level]

    def level_for_mpp(self, target_mpp: float, tolerance: float = 0.01) -> int:
        """The coarsest level whose pixels are not larger than ``target_mpp`` (µm/px).

        Reading from it and resizing down to ``target_mpp`` loses nothing; ``tolerance``
        absorbs the rounding in stored downsample factors (e.g. 4.0003).
        """
        mpp = self.require_mpp("choosing a pyramid level")
        best = 0
        for i, ds in enumerate(self.downsamples):
            if mpp * ds <= target_mpp * (1 + tolerance):
                best = i
        return best

    def require_mpp(self, action: str = "this analysis") -> float:
        """The slide's µm/px, or a :class:`MissingMppError` telling the user how to give it."""
        if self.mpp is None:
            raise MissingMppError(
                f"{self._where()} records no pixel size (µm per pixel), and {action} needs it: "
                "«mpp=0.25» (typically about 0.25 at 40× and 0.5 at 20×; see the scanner's "
                "report)."
            )
        return self.mpp

    @property
    def level_count(self) -> int:
        return len(self._readers)

    @property
    def readers(self) -> list[LevelReader]:
        """The per-level readers (their ``segments_read``/``bytes_read`` count storage reads)."""
        return list(self._readers)

    # -- lifetime, pickling ---------------------------------------------------------------

    def close(self) -> None:
        """Release the file (the Slide can no longer read pixels afterwards)."""
        self._backend.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __reduce__(self):
        if self._reopen is not None:
            return (_reopen, self._reopen)
        if self._arrays is None:
            raise TypeError(f"{self!r} cannot be pickled")
        return (_from_arrays, (self._arrays, self._mpp_override, self.name))

    def __repr__(self) -> str:
        mpp = f"{self.mpp:.4g} µm/px" if self.mpp else "µm/px unknown"
        H, W = self.shape
        levels = len(self.levels)
        return f"Slide({self.name!r}, {H}×{W} px, {levels} levels, {mpp}, {self._backend.name})"


def _reopen(path, mpp, backend):
    return open_slide(path, mpp=mpp, backend=backend)


def _array_source(array):
    return ArraySource(ArrayLevel(array, {}), (_array_source, (array,)))


def _computed_source(array, factor):
    reader = DownsampledLevel(ArrayLevel(array, {}), factor)
    return ArraySource(reader, (_computed_source, (array, factor)))


def _level_source(path, mpp, backend, level):
    slide = open_slide(path, mpp=mpp, backend=backend)
    return ArraySource(slide._readers[level], (_level_source, (path, mpp, backend, level)))


def _from_arrays(arrays, mpp, name):
    return Slide.from_array(arrays, mpp=mpp, name=name)


def _check_mpp(mpp) -> float | None:
    if mpp is None:
        return None
    try:
        value = float(mpp)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"mpp must be a number of µm per pixel; got {mpp!r}.") from exc
    lo, hi = MPP_RANGE
    if not math.isfinite(value) or not lo <= value <= hi:
        raise ValueError(
            f"mpp={mpp!r} µm/px is not a plausible microscope pixel size (expected {lo}–{hi}; "
            "about 0.25 at 40× and 0.5 at 20×)."
        )
    return value


def open_slide(
    path: str | os.PathLike, mpp: float | None = None, *, backend: str = "auto"
) -> Slide:
    """Open a whole-slide image (or any RGB image) lazily.

    Parameters
    ----------
    path : str or path
        SVS, NDPI, OME-TIFF, (Big)TIFF; MRXS, VMS, SCN, BIF and other OpenSlide formats
        (with the ``openslide`` extra); OME-Zarr directories; PNG/JPEG/BMP/WebP images.
    mpp : float, optional
        µm per level-0 pixel; overrides the file's value (and is needed when the file has
        none).
    backend : {"auto", "tifffile", "openslide", "ome-zarr", "image"}
        Force a reader; "auto" picks by content and extension.

    Raises
    ------
    SlideReadError
        The file is missing, empty, truncated, unreadable or not a supported image; the
        message names the file and the reason.
    """
    path = Path(path).expanduser()
    mpp = _check_mpp(mpp)
    if backend not in BACKENDS:
        raise ValueError(f"Unknown backend {backend!r}; use one of {', '.join(BACKENDS)}.")
    chosen = choose_reader(path) if backend == "auto" else get_reader(backend)
    error: Exception | None = None
    for reader in readers_to_try(chosen):
        try:
            opened = reader.open(path)
        except ImportError as exc:
            error = exc
            continue
        except Exception as exc:
            error = error or exc
            continue
        return Slide(opened, path=path, mpp=mpp, _reopen=(path, mpp, reader.name))
    raise SlideReadError(f"Cannot open {path}: {_reason(error)}") from error


def _reason(exc: Exception | None) -> str:
    if exc is None:
        return "unknown error"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    lowered = text.lower()
    if isinstance(exc, ImportError):
        return text
    if "truncat" in lowered or "unexpected end" in lowered or "ends early" in lowered:
        return f"the file is truncated or corrupt ({text})"
    if "not a tiff" in lowered or "invalid tiff" in lowered or "cannot identify image" in lowered:
        return f"not a valid image file ({text})"
    return text


def as_slide(obj, mpp: float | None = None) -> Slide:
    """Accept a Slide, a path, or an array (or list of levels) wherever a slide is expected."""
    if isinstance(obj, Slide):
        return obj
    if isinstance(obj, (str, os.PathLike)):
        return open_slide(obj, mpp=mpp)
    if hasattr(obj, "shape") or (isinstance(obj, Sequence) and obj and hasattr(obj[0], "shape")):
        return Slide.from_array(obj, mpp=mpp)
    raise TypeError(f"Expected a Slide, a path or an image array; got {type(obj).__name__}.")
