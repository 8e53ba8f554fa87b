"""Embeddings: the tile features of one slide — from the cache or computed in memory — with
their grid and provenance. Reading them needs neither the slide nor the model's code."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .protocol import weights_hash
from .tiling import TileGrid


class Embeddings:
    """Tile features of one slide, from the cache or computed in memory.

    Attributes
    ----------
    features : ndarray (N, D) float32
        Pre-projection features; rows of tiles not computed yet are NaN.
    done : ndarray (N,) bool
    grid : TileGrid
    metadata : dict
        ``model`` (name, weights hash, trained, …), ``slide`` (name, path, µm/px,
        fingerprint), ``grid`` geometry, ``created``.
    store_path : Path or None
    model : the model that made them, when known (used by :meth:`projected`).
    """

    def __init__(self, features, done, grid: TileGrid, metadata: dict, store_path=None, model=None):
        self.features = np.asarray(features, dtype=np.float32)
        self.done = np.asarray(done, bool)
        self.grid = grid
        self.metadata = metadata
        self.store_path = Path(store_path) if store_path is not None else None
        self.model = model
        self.cancelled = False
        # (weights hash, normalize, projected array, model, tiles done) of the latest projection
        self._projected: tuple | None = None
        self._derived: tuple | None = None  # (key, tiles done, array): see derived()

    @classmethod
    def open(cls, path, model=None) -> Embeddings:
        """Open cached embeddings from a store path; the slide is not needed."""
        from .store import read_store

        contents = read_store(path)
        return cls(
            contents.features,
            contents.done,
            contents.grid,
            contents.metadata,
            store_path=Path(path),
            model=model,
        )

    def refresh(self) -> Embeddings:
        """Re-read features written since (e.g. while another process embeds)."""
        if self.store_path is None:
            return self
        fresh = Embeddings.open(self.store_path, model=self.model)
        self.features, self.done = fresh.features, fresh.done
        self._projected = self._derived = None
        return self

    def update(self, positions, features) -> None:
        """Put newly computed features of ``positions`` in (an in-memory merge)."""
        positions = np.asarray(positions, np.int64)
        features = np.asarray(features, np.float32)
        self.features[positions] = features
        self.done[positions] = True
        self._derived = None
        if self._projected is not None:  # project just the new rows (live displays)
            digest, normalize, out, model, _ = self._projected
            out[positions] = np.asarray(model.project(features, normalize=normalize), np.float32)
            self._projected = (digest, normalize, out, model, self.n_done)

    @property
    def cache_root(self) -> Path | None:
        """The cache folder these embeddings live in (None when held in memory)."""
        if self.store_path is None:
            return None
        from .store import store_cache_root

        return store_cache_root(self.store_path)

    @property
    def coords(self) -> np.ndarray:
        """Level-0 (y, x) of each tile, (N, 2)."""
        return self.grid.coords

    @property
    def complete(self) -> bool:
        return bool(self.done.all())

    @property
    def n_done(self) -> int:
        return int(self.done.sum())

    @property
    def trained(self) -> bool:
        return bool((self.metadata.get("model") or {}).get("trained", True))

    def __len__(self) -> int:
        return len(self.done)

    def projected(self, model=None, normalize: bool = True) -> np.ndarray:
        """Joint-space embeddings (N, D'); NaN rows for tiles not computed yet."""
        model = model or self.model
        if model is None:
            raise ValueError(
                "projected() needs the model that made these embeddings: pass model=... "
                "(opened from the cache, they do not carry it)."
            )
        expected = (self.metadata.get("model") or {}).get("weights_hash")
        actual = weights_hash(model)
        if expected and actual != expected:
            raise ValueError(
                f"These embeddings were made with weights {expected[:12]}…, not with this "
                f"model's {actual[:12]}…; load the model they came from."
            )
        cached = self._projected
        if (
            cached is not None
            and cached[:2] == (actual, bool(normalize))
            and cached[4] == self.n_done
        ):
            return cached[2]
        rows = np.flatnonzero(self.done)
        if len(rows):
            part = np.asarray(model.project(self.features[rows], normalize=normalize), np.float32)
            out = np.full((len(self), part.shape[1]), np.nan, np.float32)
            out[rows] = part
        else:
            width = int(getattr(model, "embed_dim", self.features.shape[1]))
            out = np.full((len(self), width), np.nan, np.float32)
        self._projected = (actual, bool(normalize), out, model, self.n_done)  # latest only: large
        return out

    def derived(self, key: str, compute):
        """``compute(features)`` of every tile, kept until the features change — for values
        derived from all tiles that several calls reuse (a few-shot classifier's view of
        them); only the latest ``key`` is kept (they are large)."""
        cached = self._derived
        if cached is not None and cached[0] == key and cached[1] == self.n_done:
            return cached[2]
        value = compute(self.features)
        self._derived = (key, self.n_done, value)
        return value

    def __repr__(self) -> str:
        where = f", store={str(self.store_path)!r}" if self.store_path else ""
        state = "complete" if self.complete else f"{self.n_done}/{len(self)} done"
        untrained = "" if self.trained else ", UNTRAINED model"
        return (
            f"Embeddings({len(self)} tiles × {self.features.shape[1]}, {state}{untrained}{where})"
        )
