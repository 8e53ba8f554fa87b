"""Many slides on a dask.distributed cluster.

:func:`embed_slides` sends slides — and shards of very large slides — to the workers of a
``dask.distributed`` client: a LocalCluster by default, or any scheduler you connect to (a GPU
cluster with dask-cuda, SLURM or PBS with dask-jobqueue, Kubernetes). Each worker process
loads the model once and keeps it; features land in the same cache stores a local
:func:`~napari_conch.embed` uses, so results are identical and a later local call (or the
napari widget) finds them. The cache folder must therefore be shared by the workers
(a network file system on a real cluster).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

_MODELS: dict[str, object] = {}
_MODELS_LOCK = threading.Lock()
INSTALL_HINT = (
    "Distributed embedding needs dask.distributed: pip install 'napari-conch[distributed]'."
)


def _model_key(spec) -> str:
    return json.dumps(spec, sort_keys=True, default=str)


def worker_model(spec):
    """The model described by ``spec`` (load_model keyword arguments, or a name), loaded
    once per worker process and reused by every task there."""
    from .models import load_model

    spec = {"name": spec} if isinstance(spec, str) else dict(spec)
    key = _model_key(spec)
    with _MODELS_LOCK:
        model = _MODELS.get(key)
        if model is None:
            model = load_model(**spec)
            _MODELS[key] = model
        return model


def _plan(path, model_spec, mpp, grid_options, cache):
    """Worker task: open the slide, lay out the grid, open its store (the engine's first
    step, nothing computed); report what is left."""
    from .engine import embed_steps
    from .slide import open_slide
    from .tiling import tile_grid

    slide = open_slide(path, mpp=mpp)
    model = worker_model(model_spec)
    grid = tile_grid(slide, model, **grid_options)
    steps = embed_steps(slide, model, grid, cache=cache)
    live = next(steps)
    steps.close()
    todo = np.flatnonzero(~live.done)
    return {"path": str(path), "store": str(live.store_path), "grid": grid, "todo": todo}


def _embed_part(path, model_spec, mpp, grid, cache, tiles, batch_size):
    """Worker task: embed some tiles of one slide into its store."""
    from .engine import embed
    from .slide import open_slide

    slide = open_slide(path, mpp=mpp)
    model = worker_model(model_spec)
    result = embed(slide, model, grid, cache=cache, tiles=tiles, batch_size=batch_size)
    return int(result.done[tiles].sum()) if len(tiles) else 0


def embed_slides(
    paths: Sequence[str | os.PathLike],
    model_spec,
    client=None,
    *,
    cache="auto",
    mpp: float | None = None,
    shard_tiles: int = 5000,
    batch_size: int | None = None,
    progress=None,
    **grid_options,
) -> list:
    """Embed many slides on a dask.distributed cluster; returns their :class:`Embeddings`.

    Parameters
    ----------
    paths : list of paths
    model_spec : str or dict
        How workers load the model: a name, or :func:`~napari_conch.load_model` keyword
        arguments, e.g. ``{"name": "conch", "checkpoint": "/shared/pytorch_model.bin"}``.
        (A model object cannot be sent: each worker loads its own copy once.)
    client : dask.distributed.Client, optional
        Default: a LocalCluster with one single-threaded worker process per two cores.
    cache : "auto" or path
        Must be reachable by every worker under the same path.
    mpp : float, optional
        µm/px for slides whose files lack it.
    shard_tiles : int
        Slides with more tiles to do than this are split into shards of this size, so one
        huge slide also spreads over workers.
    progress : callable(done_slides, total_slides), optional
    **grid_options
        ``tile_um``, ``stride_um``, ``overlap``, ``tissue``, ``min_tissue`` for
        :func:`~napari_conch.tile_grid`.
    """
    try:
        from dask.distributed import Client, LocalCluster, as_completed
    except ImportError as exc:  # pragma: no cover - distributed is in the test extra
        raise ImportError(INSTALL_HINT) from exc
    from .embeddings import Embeddings
    from .store import cache_root

    paths = [str(Path(p)) for p in paths]
    if not paths:
        return []
    if cache is None or cache is False:
        raise ValueError("embed_slides writes to a cache shared by the workers; give cache=.")
    cache = str(cache_root(cache))  # resolve "auto" here, so every worker uses the same folder
    own_client = client is None
    if own_client:
        workers = max(1, (os.cpu_count() or 2) // 2)
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True)
        client = Client(cluster)
    try:
        plans = client.gather(
            [
                client.submit(_plan, p, model_spec, mpp, grid_options, cache, pure=False)
                for p in paths
            ]
        )
        parts = []
        for plan in plans:
            todo = plan["todo"]
            logger.info("%s: %d of %d tiles to embed", plan["path"], len(todo), len(plan["grid"]))
            for start in range(0, len(todo), max(1, shard_tiles)):
                tiles = todo[start : start + shard_tiles]
                future = client.submit(
                    _embed_part,
                    plan["path"],
                    model_spec,
                    mpp,
                    plan["grid"],
                    cache,
                    tiles,
                    batch_size,
                    pure=False,
                )
                parts.append((plan["path"], future))
        remaining = {p: sum(1 for q, _ in parts if q == p) for p in paths}
        finished = sum(1 for p in paths if remaining[p] == 0)
        if progress is not None:
            progress(finished, len(paths))
        by_future = {f: p for p, f in parts}
        for future in as_completed([f for _, f in parts]):
            future.result()  # re-raise worker errors here
            path = by_future[future]
            remaining[path] -= 1
            if remaining[path] == 0:
                finished += 1
                if progress is not None:
                    progress(finished, len(paths))
        return [Embeddings.open(plan["store"]) for plan in plans]
    finally:
        if own_client:
            client.close()
            cluster.close()
