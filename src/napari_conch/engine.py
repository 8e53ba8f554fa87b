"""Embedding a slide: :func:`embed`, in this process or across a dask cluster.

The local pipeline (reader threads, batch loop, cache writer) is
:mod:`napari_conch.pipeline`; the cluster version, :mod:`napari_conch.distributed`. Both
fill the same cache stores, so either finds what the other computed.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .deprecation import forward_names, keyword_only_since
from .distributed import embed_on_cluster
from .embeddings import Embeddings
from .pipeline import embed_local
from .progress import CancelToken
from .tiling import TileGrid

__all__ = ["CancelToken", "embed"]

__getattr__ = forward_names(
    __name__,
    {
        "embed_steps": "napari_conch.pipeline",
        "Progress": "napari_conch.pipeline",
        "DECODE_MODES": "napari_conch.decoding",
        "DecodePlan": "napari_conch.decoding",
        "decode_plan": "napari_conch.decoding",
        "decode_reduction": "napari_conch.decoding",
    },
)


@keyword_only_since("cache", "region", "progress", "cancel")
def embed(
    slide,
    model,
    grid: TileGrid | None = None,
    *,
    cache="auto",
    region=None,
    progress: Callable[[int, int, float], None] | None = None,
    cancel=None,
    region_only: bool = False,
    tiles=None,
    batch_size: int | None = None,
    workers: int | None = None,
    prefetch: int = 2,
    dtype: str = "float32",
    on_batch: Callable[[np.ndarray, np.ndarray], None] | None = None,
    decode: str = "fast",
    client=None,
) -> Embeddings:
    """Embed the tiles of ``slide`` with ``model`` (pre-projection features), cached.

    Parameters
    ----------
    slide : Slide or path
    model : ImageTextModel
    grid : TileGrid, optional
        Defaults to ``tile_grid(slide, model)`` (model tile size, tissue only).
    cache : "auto", path or None
        "auto": ``$NAPARI_CONCH_CACHE`` or the user cache directory. A path: that folder.
        None: keep features in memory only (nothing resumes).
    region : (y0, x0, y1, x1) in µm, optional
        Tiles intersecting it are computed first, then the others outward from its centre.
    progress : callable(done, total, tiles_per_s), optional
        Called after every batch; ``done`` counts tiles finished, including earlier runs.
    cancel : CancelToken, threading.Event or callable, optional
        When set, the run stops after the batch in flight; finished tiles stay cached.
    region_only : bool
        Compute only the tiles intersecting ``region``.
    tiles : array of int, optional
        Compute only these tile positions (used to split a slide across workers).
    batch_size : int, optional
        Tiles per model call (CPU: 8, or a multiple of the model's ``cpu_micro_batch``;
        GPU: from free memory).
    workers : int, optional
        Reader threads (default: one more than the cores when the model runs on a GPU; on
        the CPU half the cores, at least one, up to 4 — readers and the model share the
        cores there).
    dtype : {"float32", "float16"}
        Storage type of the cached features.
    on_batch : callable(positions, features), optional
        Called with every finished batch (for progressive display).
    decode : {"fast", "exact", "device"}
        "fast" (default): JPEG tiles decoded 2, 4 or 8 times smaller in the DCT domain when
        the level read is that much finer than the model's input; "exact": always in full,
        then resized as the reference preprocessing does; "device": a batch's JPEG tiles
        decoded on the model's device (nvJPEG on CUDA), then resized there. Each is cached
        apart (docs/embedding.md).
    client : dask.distributed.Client, optional
        Split the slide's tiles across the client's workers, all writing to the same cache;
        see :func:`napari_conch.distributed.embed_on_cluster`. Needs a slide file and a
        cache the workers share; ``model`` may also be a name or load_model keywords.

    Returns
    -------
    Embeddings
        ``complete`` is False when the run was cancelled or restricted to part of the grid.
    """
    if client is not None:
        if region_only or on_batch is not None:
            raise ValueError("embed(client=...) takes neither region_only nor on_batch.")
        return embed_on_cluster(
            slide,
            model,
            grid,
            client=client,
            cache=cache,
            region=region,
            tiles=tiles,
            batch_size=batch_size,
            decode=decode,
            progress=progress,
            cancel=cancel,
        )
    return embed_local(
        slide,
        model,
        grid,
        cache=cache,
        region=region,
        progress=progress,
        cancel=cancel,
        on_batch=on_batch,
        region_only=region_only,
        tiles=tiles,
        batch_size=batch_size,
        workers=workers,
        prefetch=prefetch,
        dtype=dtype,
        decode=decode,
    )
