"""Many slides — or one huge slide — on a dask.distributed cluster.

:func:`embed_on_cluster` (``embed(..., client=)``) splits the tiles of one slide across the
workers; :func:`embed_slides` sends slides — and shards of very large slides — to the workers
of a ``dask.distributed`` client: a LocalCluster by default, or any scheduler you connect to
(a GPU cluster with dask-cuda, SLURM or PBS with dask-jobqueue, Kubernetes). Features land
in the same cache stores a local :func:`~napari_conch.embed` uses, so results are identical
and a later local call (or the napari widget) finds them. The cache folder must therefore be
shared by the workers (a network file system on a real cluster).

How workers get the model: a model :func:`~napari_conch.load_model` made (or a name, or
load_model keywords) is rebuilt once per worker process from how it was loaded — its weights
never travel; any other model object (your own class) is pickled and sent to every worker
once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .deprecation import renamed_keywords
from .embeddings import Embeddings
from .pipeline import embed_local, embed_steps
from .progress import ProgressReport, is_cancelled
from .protocol import check_model
from .slide import as_slide, open_slide
from .store import cache_root, uses_cache
from .tiling import tile_grid

logger = logging.getLogger(__name__)

_MODELS: dict[str, object] = {}
_MODELS_LOCK = threading.Lock()
INSTALL_HINT = (
    "Distributed embedding needs dask.distributed: pip install 'napari-conch[distributed]'."
)


def model_spec(model) -> dict:
    """How workers rebuild ``model``: a name, load_model keywords, or a model that
    :func:`~napari_conch.load_model` made (it remembers how, without the token). Raises
    ``TypeError`` for other objects — :func:`model_ref` sends those whole."""
    if isinstance(model, str):
        return {"name": model}
    if isinstance(model, dict):
        return dict(model)
    spec = getattr(model, "load_spec", None)
    if not isinstance(spec, dict):
        raise TypeError(
            f"Workers cannot rebuild this {type(model).__name__} from how it was loaded: it "
            "was not made by load_model. Pass the object itself to embed(client=) or "
            "embed_slides (it is sent to the workers), or how to load it (a name or "
            'load_model keywords, e.g. {"name": "conch", "checkpoint": "/shared/model.bin"}).'
        )
    return dict(spec)


def worker_model(spec):
    """The model described by ``spec`` (load_model keyword arguments, or a name), loaded
    once per worker process and reused by every task there; a model object sent to the
    worker is used as it is."""
    if not isinstance(spec, (str, dict)):
        return spec
    from .models import load_model

    spec = {"name": spec} if isinstance(spec, str) else dict(spec)
    key = json.dumps(spec, sort_keys=True, default=str)
    with _MODELS_LOCK:
        model = _MODELS.get(key)
        if model is None:
            model = load_model(**spec)
            _MODELS[key] = model
        return model


def model_ref(client, model):
    """What tasks take to get ``model`` on a worker (see :func:`worker_model`).

    A name, load_model keywords or a model made by load_model travel as a spec (each worker
    rebuilds it once); any other model object is checked, pickled and scattered to every
    worker once, and tasks receive it as it is.
    """
    if isinstance(model, (str, dict)) or isinstance(getattr(model, "load_spec", None), dict):
        return model_spec(model)
    check_model(model)
    _check_picklable(model)
    return client.scatter(model, broadcast=True, hash=False)


def _check_picklable(model) -> None:
    from distributed.protocol.pickle import dumps

    try:
        dumps(model)
    except Exception as exc:
        raise TypeError(
            f"This {type(model).__name__} cannot be sent to the workers: it does not pickle "
            f"({exc}). Make it picklable, or register a factory with register_model and "
            "pass its name (workers then build their own, like load_model's models)."
        ) from exc


@contextlib.contextmanager
def cluster_client(client=None, *, scheduler: str | None = None, workers: int | None = None):
    """``client`` as given; else a client of ``scheduler``; else a LocalCluster of
    ``workers`` single-threaded processes (default one per two cores), closed afterwards."""
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError as exc:  # pragma: no cover - distributed is in the test extra
        raise ImportError(INSTALL_HINT) from exc
    if client is not None:
        yield client
        return
    if scheduler:
        with Client(scheduler) as own:
            yield own
        return
    n = workers or max(1, (os.cpu_count() or 2) // 2)
    with (
        LocalCluster(n_workers=n, threads_per_worker=1, processes=True) as cluster,
        Client(cluster) as own,
    ):
        yield own


def _plan(path, ref, mpp, grid_options, cache, decode="fast", grid=None):
    """Worker task: open the slide, lay out the grid (or take ``grid``), open its store (the
    engine's first step, nothing computed); report what is left."""
    slide = open_slide(path, mpp=mpp)
    model = worker_model(ref)
    if grid is None:
        grid = tile_grid(slide, model, **grid_options)
    steps = embed_steps(slide, model, grid, cache=cache, decode=decode)
    live = next(steps)
    steps.close()
    todo = np.flatnonzero(~live.done)
    return {"path": str(path), "store": str(live.store_path), "grid": grid, "todo": todo}


def _embed_part(path, ref, mpp, grid, cache, tiles, batch_size, decode="fast"):
    """Worker task: embed some tiles of one slide into its store. A task that runs again
    (its worker died) computes only the tiles the store does not have yet."""
    slide = open_slide(path, mpp=mpp)
    model = worker_model(ref)
    result = embed_local(
        slide, model, grid, cache=cache, tiles=tiles, batch_size=batch_size, decode=decode
    )
    done = int(result.done[tiles].sum()) if len(tiles) else 0
    return {"done": done, "store": str(result.store_path)}


def check_store(part: dict, planned, path) -> int:
    """The tiles a finished shard stored, after checking it wrote to the store that was
    planned (workers that decode differently would each fill a store of their own)."""
    if str(part["store"]) != str(planned):
        raise RuntimeError(
            f"A worker stored features of {path} in {part['store']}, not in {planned}: the "
            "workers decode tiles differently (decode='device' on workers with and without a "
            "GPU?). Use decode='fast', or give every worker the same kind of device."
        )
    return int(part["done"])


def _submit_shards(client, path, ref, mpp, grid, cache, todo, size, batch_size, decode):
    """One :func:`_embed_part` task per ``size`` tiles of ``todo``: the futures."""
    size = max(1, int(size))
    return [
        client.submit(
            _embed_part,
            path,
            ref,
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


def _shared_cache(cache, what: str) -> str:
    if not uses_cache(cache):
        raise ValueError(f"{what} writes to a cache shared by the workers; give cache=.")
    return str(cache_root(cache))  # resolve "auto" here: every worker uses this folder


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
    ``region`` orders the shards (tiles in it first); ``progress(done, total, tiles_per_s)``
    after every shard. Returns the slide's Embeddings.
    """
    try:
        from dask.distributed import as_completed
    except ImportError as exc:  # pragma: no cover - distributed is in the test extra
        raise ImportError(INSTALL_HINT) from exc

    slide = as_slide(slide)
    if slide.path is None:
        raise ValueError(
            f"embed(client=...) needs a slide opened from a file: the workers open "
            f"{slide.name} themselves. Embed an in-memory image without client=."
        )
    cache = _shared_cache(cache, "embed(client=...)")
    ref = model_ref(client, model)
    if isinstance(model, (str, dict)):
        model = worker_model(ref)  # this process plans the store: it needs the model too
    grid = grid if grid is not None else tile_grid(slide, model)
    mpp = slide.mpp if slide.metadata.get("mpp_source") == "argument" else None

    if decode == "device":
        # how tiles decode depends on the workers' devices, not on this process's: a worker
        # opens the store the others will fill
        plan = client.submit(_plan, str(slide.path), ref, mpp, {}, cache, decode, grid=grid)
        plan = plan.result()
        store_path = plan["store"]
        done = np.ones(len(grid), bool)
        done[plan["todo"]] = False
    else:
        steps = embed_steps(slide, model, grid, cache=cache, decode=decode)
        live = next(steps)  # the store, opened or created here once; nothing computed
        steps.close()
        store_path, done = live.store_path, live.done
    order = grid.processing_order(region, False, tiles)
    todo = order[~done[order]]
    total, already = len(order), len(order) - len(todo)
    n_workers = max(1, len(client.scheduler_info().get("workers", {})))
    size = int(shard_tiles or max(16, -(-len(todo) // (4 * n_workers))))
    futures = _submit_shards(
        client, str(slide.path), ref, mpp, grid, cache, todo, size, batch_size, decode
    )
    logger.info(
        "%s: %d tiles to embed in %d shards on %d workers",
        slide.name,
        len(todo),
        len(futures),
        n_workers,
    )
    report = ProgressReport(progress, already)
    done = already
    report(done, total)
    try:
        for future in as_completed(futures):
            done += check_store(future.result(), store_path, slide.name)  # or a worker's error
            report(min(done, total), total)
            if is_cancelled(cancel):
                break
    finally:
        client.cancel([f for f in futures if not f.done()])
    result = Embeddings.open(store_path, model=model)
    result.cancelled = is_cancelled(cancel) and not result.done[order].all()
    return result


@renamed_keywords(model_spec="model")
def embed_slides(
    paths: Sequence[str | os.PathLike],
    model,
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
    model : str, dict or model object
        A name or :func:`~napari_conch.load_model` keywords (e.g. ``{"name": "conch",
        "checkpoint": "/shared/pytorch_model.bin"}``) or a model load_model made: each
        worker loads its own copy once. Any other model object (your own class) is
        pickled and sent to every worker once.
    client : dask.distributed.Client, optional
        Default: a LocalCluster with one single-threaded worker process per two cores.
    cache : "auto" or path
        Must be reachable by every worker under the same path.
    mpp : float, optional
        µm/px for slides whose files lack it.
    shard_tiles : int
        Slides with more tiles to do than this are split into shards of this size, so one
        huge slide also spreads over workers.
    progress : callable(done_slides, total_slides, slides_per_s), optional
    decode : {"fast", "exact", "device"}
        As for :func:`~napari_conch.embed`.
    **grid_options
        ``tile_um``, ``stride_um``, ``overlap``, ``tissue``, ``min_tissue`` for
        :func:`~napari_conch.tile_grid`.
    """
    paths = [str(Path(p)) for p in paths]
    if not paths:
        return []
    cache = _shared_cache(cache, "embed_slides")
    report = ProgressReport(progress)
    try:
        from dask.distributed import as_completed
    except ImportError as exc:  # pragma: no cover - distributed is in the test extra
        raise ImportError(INSTALL_HINT) from exc
    with cluster_client(client) as client:
        ref = model_ref(client, model)
        plans = client.gather(
            [
                client.submit(_plan, p, ref, mpp, grid_options, cache, decode, pure=False)
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
                ref,
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
        report(finished, len(paths))
        by_future = {f: p for p, f in parts}
        planned = {plan["path"]: plan["store"] for plan in plans}
        for future in as_completed([f for _, f in parts]):
            path = by_future[future]
            check_store(future.result(), planned[path], path)  # or a worker's error
            remaining[path] -= 1
            if remaining[path] == 0:
                finished += 1
                report(finished, len(paths))
        return [Embeddings.open(plan["store"]) for plan in plans]
