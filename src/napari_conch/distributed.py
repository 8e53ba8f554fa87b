"""Many slides — or one huge slide — on a dask.distributed cluster.

:func:`embed_on_cluster` (``embed(..., client=)``) splits the tiles of one slide across the
workers; :func:`embed_slides` sends slides — and shards of very large slides — to the workers of a
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


def _plan(path, model_spec, mpp, grid_options, cache, decode="fast", grid=None):
    """Worker task: open the slide, lay out the grid (or take ``grid``), open its store (the
    engine's first step, nothing computed); report what is left."""
    from .engine import embed_steps
    from .slide import open_slide
    from .tiling import tile_grid

    slide = open_slide(path, mpp=mpp)
    model = worker_model(model_spec)
    if grid is None:
        grid = tile_grid(slide, model, **grid_options)
    steps = embed_steps(slide, model, grid, cache=cache, decode=decode)
    live = next(steps)
    steps.close()
    todo = np.flatnonzero(~live.done)
    return {"path": str(path), "store": str(live.store_path), "grid": grid, "todo": todo}


def _embed_part(path, model_spec, mpp, grid, cache, tiles, batch_size, decode="fast"):
    """Worker task: embed some tiles of one slide into its store. A task that runs again
    (its worker died) computes only the tiles the store does not have yet."""
    from .engine import embed
    from .slide import open_slide

    slide = open_slide(path, mpp=mpp)
    model = worker_model(model_spec)
    result = embed(
        slide, model, grid, cache=cache, tiles=tiles, batch_size=batch_size, decode=decode
    )
    done = int(result.done[tiles].sum()) if len(tiles) else 0
    return {"done": done, "store": str(result.store_path)}


def _check_store(part: dict, planned, path) -> int:
    """The tiles a finished :func:`_embed_part` stored, after checking it wrote to the store
    that was planned (workers that decode differently would each fill a store of their own)."""
    if str(part["store"]) != str(planned):
        raise RuntimeError(
            f"A worker stored features of {path} in {part['store']}, not in {planned}: the "
            "workers decode tiles differently (decode='device' on workers with and without a "
            "GPU?). Use decode='fast', or give every worker the same kind of device."
        )
    return int(part["done"])


def _submit_shards(client, path, spec, mpp, grid, cache, todo, size, batch_size, decode) -> list:
    """One :func:`_embed_part` task per ``size`` tiles of ``todo``: the futures."""
    size = max(1, int(size))
    return [
        client.submit(
            _embed_part,
            path,
            spec,
            mpp,
            grid,
            cache,
            todo[start : start + size],
            batch_size,
            decode,
            pure=False,
        )
        for start in range(0, len(todo), size)
    ]


def model_spec(model) -> dict:
    """How workers load ``model``: a name, load_model keywords, or a model that
    :func:`~napari_conch.load_model` made (it remembers how, without the token)."""
    if isinstance(model, str):
        return {"name": model}
    if isinstance(model, dict):
        return dict(model)
    spec = getattr(model, "load_spec", None)
    if not isinstance(spec, dict):
        raise TypeError(
            f"Workers cannot rebuild this {type(model).__name__}: pass a model made by "
            "load_model, or how to load it (a name or load_model keywords, e.g. "
            '{"name": "conch", "checkpoint": "/shared/pytorch_model.bin"}).'
        )
    return dict(spec)


def embed_on_cluster(
    slide,
    model,
    grid=None,
    *,
    client,
    cache="auto",
    region=None,
    tiles=None,
    batch_size: int | None = None,
    decode: str = "fast",
    shard_tiles: int | None = None,
    progress=None,
    cancel=None,
):
    """Embed one slide with every worker of ``client`` (what ``embed(..., client=)`` does).

    The tiles still to do are cut into shards (``shard_tiles``; default: about four per
    worker, at least 16 tiles) that workers embed into the slide's one cache store, each
    with its own copy of the model (one per GPU with dask-cuda's LocalCUDACluster). The
    features are those of a local run. A worker that dies loses at most its batch in
    flight: dask gives its shard to another worker, which skips the tiles already stored.
    ``region`` orders the shards (tiles in it first). Returns the slide's Embeddings.
    """
    try:
        from dask.distributed import as_completed
    except ImportError as exc:  # pragma: no cover - distributed is in the test extra
        raise ImportError(INSTALL_HINT) from exc
    import time

    from .embeddings import Embeddings
    from .engine import _cancelled, _order, embed_steps
    from .slide import as_slide
    from .store import cache_root
    from .tiling import tile_grid

    slide = as_slide(slide)
    if slide.path is None:
        raise ValueError(
            f"embed(client=...) needs a slide opened from a file: the workers open "
            f"{slide.name} themselves. Embed an in-memory image without client=."
        )
    if cache is None or cache is False:
        raise ValueError("embed(client=...) writes to a cache the workers share; give cache=.")
    spec = model_spec(model)
    if isinstance(model, (str, dict)):
        model = worker_model(spec)
    cache = str(cache_root(cache))  # resolve "auto" here: every worker uses this folder
    grid = grid if grid is not None else tile_grid(slide, model)
    mpp = slide.mpp if slide.metadata.get("mpp_source") == "argument" else None

    if decode == "device":
        # how tiles decode depends on the workers' devices, not on this process's: a worker
        # opens the store the others will fill
        plan = client.submit(_plan, str(slide.path), spec, mpp, {}, cache, decode, grid=grid)
        plan = plan.result()
        store_path = plan["store"]
        done = np.ones(len(grid), bool)
        done[plan["todo"]] = False
    else:
        steps = embed_steps(slide, model, grid, cache=cache, decode=decode)
        live = next(steps)  # the store, opened or created here once; nothing computed
        steps.close()
        store_path, done = live.store_path, live.done
    order = _order(grid, region, False, tiles)
    todo = order[~done[order]]
    total, already = len(order), len(order) - len(todo)
    n_workers = max(1, len(client.scheduler_info().get("workers", {})))
    size = int(shard_tiles or max(16, -(-len(todo) // (4 * n_workers))))
    futures = _submit_shards(
        client, str(slide.path), spec, mpp, grid, cache, todo, size, batch_size, decode
    )
    logger.info(
        "%s: %d tiles to embed in %d shards on %d workers",
        slide.name,
        len(todo),
        len(futures),
        n_workers,
    )
    started, done = time.perf_counter(), already
    if progress is not None:
        progress(done, total, 0.0)
    try:
        for future in as_completed(futures):
            done += _check_store(future.result(), store_path, slide.name)  # or a worker's error
            if progress is not None:
                rate = (done - already) / max(time.perf_counter() - started, 1e-9)
                progress(min(done, total), total, rate)
            if _cancelled(cancel):
                break
    finally:
        client.cancel([f for f in futures if not f.done()])
    result = Embeddings.open(store_path, model=model)
    result.cancelled = _cancelled(cancel) and not result.done[order].all()
    return result


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
    decode: str = "fast",
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
    decode : {"fast", "exact", "device"}
        As for :func:`~napari_conch.embed`.
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
                client.submit(_plan, p, model_spec, mpp, grid_options, cache, decode, pure=False)
                for p in paths
            ]
        )
        parts = []
        for plan in plans:
            todo = plan["todo"]
            logger.info("%s: %d of %d tiles to embed", plan["path"], len(todo), len(plan["grid"]))
            shards = _submit_shards(
                client,
                plan["path"],
                model_spec,
                mpp,
                plan["grid"],
                cache,
                todo,
                shard_tiles,
                batch_size,
                decode,
            )
            parts += [(plan["path"], future) for future in shards]
        remaining = {p: sum(1 for q, _ in parts if q == p) for p in paths}
        finished = sum(1 for p in paths if remaining[p] == 0)
        if progress is not None:
            progress(finished, len(paths))
        by_future = {f: p for p, f in parts}
        planned = {plan["path"]: plan["store"] for plan in plans}
        for future in as_completed([f for _, f in parts]):
            path = by_future[future]
            _check_store(future.result(), planned[path], path)  # or a worker's error
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
