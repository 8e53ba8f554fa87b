"""The embedding cache: one zarr (v3) store per (slide, model weights, preprocessing, grid).

Layout of a store (a directory ``…/<slide>-<fingerprint>/<model>-<weights>/<grid>.zarr``)::

    features   (N, D) float32 or float16  pre-projection features; NaN where not computed
    done       (N,)   bool                set only after the features are on disk
    indices    (N, 2) int32               grid (row, column) of each tile
    tissue     (N,)   float32             tissue fraction of each tile
    attrs: signature, grid geometry, model and slide descriptions

Safety: zarr writes every chunk to a temporary file and renames it into place, so a chunk
is either the old or the new version, never half written. Each write takes an exclusive
file lock (released by the OS if the process dies), reads the chunks it touches, updates
them, and sets ``done`` only after the features are written. A crash or ``kill -9`` at any
point leaves a store in which every tile marked done has its features; the next call
computes only the rest. Two processes may embed the same slide at the same time: they
share the lock and skip tiles the other has finished.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .decoding import decode_label
from .errors import CacheError
from .protocol import weights_hash
from .provenance import Provenance
from .slide import Slide
from .tiling import TileGrid

logger = logging.getLogger(__name__)

CACHE_ENV = "NAPARI_CONCH_CACHE"
STORE_VERSION = 1
_CHUNK_ROWS = 256
_DTYPES = {"float32": np.float32, "float16": np.float16}
# What ``cache=`` may be to keep embeddings in memory only.
NO_CACHE = (None, False, "none", "off", "")
__all__ = [
    "CacheError",
    "EmbeddingStore",
    "StoreContents",
    "cache_root",
    "read_store",
    "slide_fingerprint",
    "uses_cache",
]


# -- where ----------------------------------------------------------------------------------


def uses_cache(cache) -> bool:
    """Whether ``cache=`` asks for a cache (not None, False, "none" or "off")."""
    if isinstance(cache, str):
        return cache.strip().lower() not in NO_CACHE
    return cache is not None and cache is not False


def cache_root(cache="auto") -> Path:
    """Resolve the cache location: ``"auto"`` → ``$NAPARI_CONCH_CACHE`` or the user cache
    directory (e.g. ``~/.cache/napari-conch/embeddings``); a path is used as given.

    Raises :class:`CacheError` when the location cannot be created or written.
    """
    if not uses_cache(cache):
        raise ValueError("cache_root needs a location; use cache=None in embed() for no cache.")
    if isinstance(cache, str) and cache == "auto":
        env = os.environ.get(CACHE_ENV, "").strip()
        if env:
            root = Path(env).expanduser()
        else:
            import platformdirs

            root = Path(platformdirs.user_cache_dir("napari-conch")) / "embeddings"
    else:
        root = Path(cache).expanduser()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CacheError(
            f"Cannot create the embedding cache at {root}: {exc.strerror or exc}. Choose a "
            f"writable folder with cache=PATH (or --cache PATH, or ${CACHE_ENV})."
        ) from exc
    if not os.access(root, os.W_OK | os.X_OK):
        raise CacheError(
            f"The embedding cache at {root} is read-only. Choose a writable folder with "
            f"cache=PATH (or --cache PATH, or ${CACHE_ENV}), or use cache=None to keep "
            "embeddings in memory only."
        )
    return root


# -- identity -------------------------------------------------------------------------------


def slide_fingerprint(slide: Slide) -> str:
    """Identify a slide by content without reading it whole.

    Uses the file size and the first MiB (headers), the level shapes and a few small regions
    of the coarsest level — not the path or modification time, so a copied slide finds its
    cache. In-memory slides are identified by their coarsest level's pixels.
    """
    h = hashlib.blake2b(digest_size=16)
    h.update(repr([tuple(level.shape) for level in slide.levels]).encode())
    if slide.path is not None and slide.path.is_file():
        h.update(str(slide.path.stat().st_size).encode())
        with open(slide.path, "rb") as fh:
            h.update(fh.read(2**20))
    last = len(slide.levels) - 1
    lh, lw = slide.levels[last].shape[:2]
    fy, fx = slide.downsamples_yx[last]
    size = min(256, lh, lw)
    for ry, rx in ((0.5, 0.5), (0.25, 0.25), (0.75, 0.75)):
        y = int((lh - size) * ry)
        x = int((lw - size) * rx)
        region = slide.read_region(round(y * fy), round(x * fx), size, size, level=last)
        h.update(np.ascontiguousarray(region).tobytes())
    return h.hexdigest()


def store_signature(
    fingerprint: str, model, grid: TileGrid, dtype: str, decode: str | None = None
) -> dict:
    """Everything that must match for cached features to be reused.

    ``decode``: how tiles were decoded (:func:`decode_label`, or a device decoder's label)
    when not the exact path's full decode and resize — other pixels, so other features (an
    exact run's signature is the one stores had before other decodings existed).
    """
    signature = {
        "version": STORE_VERSION,
        "slide": fingerprint,
        "model": {
            "name": str(model.name),
            "weights": weights_hash(model),
            "embed_dim": int(model.embed_dim),
        },
        "preprocessing": {
            "input_size": int(model.input_size),
            "resize": "bicubic-antialias, shortest edge, centre crop",
            "mean": list(getattr(model, "mean", ()) or ()),
            "std": list(getattr(model, "std", ()) or ()),
        },
        "grid": grid.signature(),
        "dtype": dtype,
    }
    if decode is not None and decode != decode_label(1):
        signature["preprocessing"]["decode"] = decode
    return signature


def store_cache_root(store_path) -> Path:
    """The cache folder a store lives in (stores sit at ``root/slide/model/grid.zarr``)."""
    return Path(store_path).parent.parent.parent


def _digest(obj) -> str:
    return hashlib.blake2b(json.dumps(obj, sort_keys=True).encode(), digest_size=8).hexdigest()


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:60] or "slide"


# -- the store ------------------------------------------------------------------------------


class EmbeddingStore:
    """A zarr store holding one slide's tile features for one model and grid."""

    def __init__(self, path: Path):
        import zarr

        self.path = Path(path)
        self.group = zarr.open_group(str(self.path), mode="r+")
        self.attrs = dict(self.group.attrs)
        self.features = self.group["features"]
        self.done = self.group["done"]
        self._lock = _lock_for(self.path)

    @classmethod
    def open_or_create(
        cls,
        root: Path,
        slide: Slide,
        model,
        grid: TileGrid,
        dtype: str = "float32",
        decode: str | None = None,
    ) -> EmbeddingStore:
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}; got {dtype!r}.")
        fingerprint = slide_fingerprint(slide)
        signature = store_signature(fingerprint, model, grid, dtype, decode)
        stem = Path(slide.name).stem if slide.name else "slide"
        path = (
            Path(root)
            / f"{_safe(stem)}-{fingerprint[:12]}"
            / f"{_safe(str(model.name))}-{weights_hash(model)[:12]}"
            / f"grid-{_digest(signature)}.zarr"
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        with _lock_for(path):
            if path.exists():
                try:
                    store = cls(path)
                    if store.attrs.get("signature") == signature:
                        _remove_partials(path)
                        _write_cell_tissue(store.group, grid)  # stores made before it existed
                        return store
                    reason = "its signature differs"
                except Exception as exc:  # unreadable metadata: rebuild it
                    reason = f"it cannot be read ({exc})"
                stale = path.with_name(f"{path.name}.stale-{int(time.time())}")
                logger.warning(
                    "Not reusing the cache at %s: %s. Moved it to %s.", path, reason, stale
                )
                path.rename(stale)
            _create(path, signature, slide, model, grid, dtype)
        return cls(path)

    @property
    def n_tiles(self) -> int:
        return int(self.features.shape[0])

    def done_mask(self, positions: np.ndarray | None = None) -> np.ndarray:
        """Fresh read of which tiles are finished (all, or at ``positions``)."""
        if positions is None:
            return np.asarray(self.done[:], bool)
        return np.asarray(self.done.get_orthogonal_selection(np.asarray(positions)), bool)

    def write(self, positions: np.ndarray, features: np.ndarray) -> None:
        """Store features of tiles at ``positions``, then mark them done (under the lock)."""
        positions = np.asarray(positions, np.int64)
        order = np.argsort(positions)
        positions, features = positions[order], np.asarray(features)[order]
        values = features.astype(self.features.dtype, copy=False)
        try:
            with self._lock:
                self.features.set_orthogonal_selection((positions, slice(None)), values)
                self.done.set_orthogonal_selection(positions, np.ones(len(positions), bool))
        except OSError as exc:
            # Chunks are written to a temporary file and renamed, and tiles are marked done
            # only after their features: a failed write leaves the finished tiles intact.
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                why = "the disk is full (or over quota)"
            else:
                why = f"writing failed ({exc.strerror or exc})"
            raise CacheError(
                f"Cannot write to the embedding cache at {self.path}: {why}. The tiles "
                "finished so far are kept; free some space (or choose another cache=PATH) "
                "and run again to resume."
            ) from exc

    def claim_run(self) -> bool:
        """Try to register as *the* process embedding this store (non-blocking).

        True: no one else is running (release with :meth:`release_run`). False: another live
        process is; the caller then works from the other end of the tile list so the two
        meet in the middle instead of computing the same tiles.
        """
        from filelock import FileLock, Timeout

        self._run_lock = FileLock(str(self.path) + ".run")
        try:
            self._run_lock.acquire(timeout=0)
        except Timeout:
            return False
        return True

    def release_run(self) -> None:
        lock = getattr(self, "_run_lock", None)
        if lock is not None and lock.is_locked:
            lock.release()


@dataclass(frozen=True)
class StoreContents:
    """Everything a store holds, read back: features, which tiles are done, the grid, and
    the provenance kept with them (``metadata``)."""

    features: np.ndarray
    done: np.ndarray
    grid: TileGrid
    metadata: dict


def read_store(path) -> StoreContents:
    """Read an embedding store written by :class:`EmbeddingStore` (the slide and the model
    are not needed). Raises :class:`CacheError` for a folder that is not one, or one made by
    a napari-conch whose layout this version does not read."""
    import zarr

    path = Path(path)
    try:
        group = zarr.open_group(str(path), mode="r")
        attrs = dict(group.attrs)
        version = attrs["napari_conch"]
        if version != STORE_VERSION:
            raise CacheError(
                f"{path} is an embedding store of layout version {version!r}; this napari-conch "
                f"reads version {STORE_VERSION}. Embed the slide again (the store is not changed)."
            )
        cell_tissue = group["cell_tissue"][:] if "cell_tissue" in group else None
        grid = TileGrid.from_dict(
            attrs["grid"], group["indices"][:], group["tissue"][:], cell_tissue
        )
        features = group["features"][:]
        done = group["done"][:]
    except CacheError:
        raise
    except (KeyError, FileNotFoundError, ValueError) as exc:
        raise CacheError(f"{path} is not a napari-conch embedding store ({exc}).") from exc
    metadata = {k: attrs.get(k) for k in ("model", "slide", "grid", "created", "signature")}
    if attrs.get("decode"):
        metadata["decode"] = attrs["decode"]
    return StoreContents(features, done, grid, metadata)


def _create(path: Path, signature: dict, slide: Slide, model, grid: TileGrid, dtype: str) -> None:
    import zarr

    tmp = path.with_name(f"{path.name}.creating-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
    n, d = len(grid), int(model.embed_dim)
    rows = max(1, min(_CHUNK_ROWS, n))
    group.create_array(
        "features", shape=(n, d), dtype=_DTYPES[dtype], chunks=(rows, d), fill_value=np.nan
    )
    group.create_array(
        "done", shape=(n,), dtype=bool, chunks=(max(1, min(n, 4096)),), fill_value=False
    )
    group.create_array("indices", shape=(n, 2), dtype=np.int32, chunks=(max(1, min(n, 65536)), 2))
    group.create_array("tissue", shape=(n,), dtype=np.float32, chunks=(max(1, min(n, 65536)),))
    if n:
        group["indices"][:] = grid.indices
        group["tissue"][:] = grid.tissue_fraction
    _write_cell_tissue(group, grid)
    group.attrs.update(
        {
            "napari_conch": STORE_VERSION,
            "signature": signature,
            **Provenance.of_embeddings(
                slide, model, grid, signature["slide"], signature["preprocessing"].get("decode")
            ).to_metadata(),
        }
    )
    tmp.rename(path)  # the store appears complete or not at all


def _write_cell_tissue(group, grid: TileGrid) -> None:
    """Keep the grid's per-cell tissue fractions (the map's tissue rule) with the features."""
    if grid.cell_tissue is None or "cell_tissue" in group:
        return
    group.create_array(
        "cell_tissue", shape=grid.cell_tissue.shape, dtype=np.float32, chunks=grid.cell_tissue.shape
    )
    group["cell_tissue"][:] = grid.cell_tissue


def _remove_partials(path: Path) -> None:
    """Drop temporary chunk files a killed writer left behind (called under the lock)."""
    for leftover in path.rglob("*.partial"):
        leftover.unlink(missing_ok=True)


def _lock_for(path: Path):
    from filelock import FileLock

    return FileLock(str(path) + ".lock")
