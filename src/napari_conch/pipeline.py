"""The local embedding pipeline: the one path from tiles to cached features.

Reader threads fetch the next batches (:mod:`napari_conch.prefetch`) while the model runs the
current one; batches travel as uint8 and are resized and normalised on the model's device
(pinned memory and asynchronous copies on CUDA), or, with ``decode="device"``, are decoded
there too. Results go to the embedding cache after every batch (from a writer thread, so the
model never waits for a chunk's compression), so an interrupted run resumes where it stopped.
With ``region=`` (e.g. the napari viewport) the tiles there go first and the rest follow
outward; ``region_only=True`` computes just those.

:func:`embed_steps` is the engine as a generator — the CLI, the widget and the cluster code
share it; :func:`embed_local` runs it to the end with callbacks.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass

import numpy as np

from .decoding import decode_label, decode_plan
from .embeddings import Embeddings
from .prefetch import prefetched_batches
from .progress import is_cancelled, progress_callback
from .protocol import check_model, is_trained, weights_hash
from .provenance import Provenance
from .sizing import auto_batch_size, default_readers
from .slide import Slide, as_slide
from .store import EmbeddingStore, cache_root, slide_fingerprint, uses_cache
from .tiling import TileGrid, tile_grid

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Progress:
    """One step of an embedding run: totals so far and the batch that just finished."""

    done: int
    total: int
    tiles_per_s: float
    positions: np.ndarray
    features: np.ndarray


def embed_local(
    slide,
    model,
    grid: TileGrid | None = None,
    *,
    cache="auto",
    region=None,
    progress=None,
    cancel=None,
    on_batch=None,
    **options,
) -> Embeddings:
    """Run :func:`embed_steps` to the end in this process, calling ``progress(done, total,
    tiles_per_s)`` and ``on_batch(positions, features)`` after every batch."""
    progress = progress_callback(progress)
    steps = embed_steps(slide, model, grid, cache, region, cancel, **options)
    next(steps)  # the live Embeddings, returned filled at the end
    while True:
        try:
            step = next(steps)
        except StopIteration as finished:
            return finished.value
        if progress is not None:
            progress(step.done, step.total, step.tiles_per_s)
        if on_batch is not None and len(step.positions):
            on_batch(step.positions, step.features)


def embed_steps(
    slide,
    model,
    grid: TileGrid | None = None,
    cache="auto",
    region=None,
    cancel=None,
    *,
    region_only: bool = False,
    tiles=None,
    batch_size: int | None = None,
    workers: int | None = None,
    prefetch: int = 2,
    dtype: str = "float32",
    resume: Embeddings | None = None,
    decode: str = "fast",
):
    """:func:`~napari_conch.embed` as a generator.

    Yields, first, the run's live :class:`Embeddings` (grid, store, which tiles are done;
    the engine fills it as batches land — closing the generator right there computes
    nothing, e.g. to plan work); then a :class:`Progress` before the first batch and after
    every batch. Returns (``StopIteration.value``) the same Embeddings, complete unless the
    run was cancelled or restricted. ``resume``: without a cache, the Embeddings of an
    earlier run over the same grid and weights, continued instead of starting from zero.
    """
    slide = as_slide(slide)
    check_model(model)
    grid = grid if grid is not None else tile_grid(slide, model)
    _check_grid(slide, grid)
    plan = decode_plan(slide, grid, model, decode)

    if not uses_cache(cache) and _continues(resume, grid, model, plan.label):
        store, live = None, resume
        live.cancelled = False
    elif not uses_cache(cache):
        store = None
        label = None if plan.is_reference else plan.label
        provenance = Provenance.of_embeddings(slide, model, grid, slide_fingerprint(slide), label)
        features = np.full((len(grid), int(model.embed_dim)), np.nan, np.float32)
        live = Embeddings(
            features, np.zeros(len(grid), bool), grid, provenance.to_metadata(), model=model
        )
    else:
        store = EmbeddingStore.open_or_create(
            cache_root(cache), slide, model, grid, dtype, decode=plan.label
        )
        live = Embeddings.open(store.path, model=model)
    yield live

    if not is_trained(model):
        logger.warning(
            "Embedding with an UNTRAINED model: the features are for pipeline checks only."
        )
    positions = grid.processing_order(region, region_only, tiles)
    todo = positions[~live.done[positions]] if len(positions) else positions
    if store is not None and len(todo) and not store.claim_run() and region is None:
        logger.info(
            "Another process is embedding %s into this cache; starting from the other end.",
            slide.name,
        )
        todo = todo[::-1]
    total = len(positions)
    already = total - len(todo)
    if len(todo) == 0:
        logger.info("All %d tiles of %s are already embedded.", total, slide.name)
    else:
        logger.info(
            "Embedding %d tiles of %s (%d already cached) with %s: %r",
            len(todo),
            slide.name,
            already,
            model.name,
            grid,
        )
    batch_size = int(batch_size or auto_batch_size(model))
    workers = int(workers or default_readers(model))
    empty = np.zeros(0, np.int64)
    yield Progress(already, total, 0.0, empty, np.zeros((0, int(model.embed_dim)), np.float32))

    sink = CacheWriter(store, live)
    batches = prefetched_batches(
        slide, grid, todo, batch_size, workers, prefetch, cancel, model, plan
    )
    computed = 0
    try:
        for positions, out, computed, rate in _run(model, batches, sink, cancel):
            yield Progress(min(total, already + computed), total, rate, positions, out)
        sink.flush()  # every feature in the cache (or its write error raised) before returning
    finally:
        batches.close()  # stops the reader threads
        sink.close()
        if store is not None:
            store.release_run()
    cancelled = is_cancelled(cancel) and computed + already < total
    if cancelled:
        logger.info("Embedding cancelled after %d new tiles; they are kept.", computed)
    if store is not None and computed < len(todo):
        live.refresh()  # tiles another process wrote meanwhile
    live.cancelled = cancelled
    return live


def _continues(previous, grid: TileGrid, model, label: str) -> bool:
    """Whether an earlier in-memory run can be continued: same grid, weights and decoding."""
    if previous is None or previous.store_path is not None:
        return False
    made_with = (previous.metadata.get("model") or {}).get("weights_hash")
    decoded = previous.metadata.get("decode") or decode_label(1)
    return (
        previous.grid.signature() == grid.signature()
        and made_with == weights_hash(model)
        and decoded == label
    )


class CacheWriter:
    """Where finished features go: the run's live Embeddings at once, and the cache store
    (when there is one) from a writer thread, in order.

    A cache write re-compresses the chunks it touches (tens of ms); on its own thread it
    overlaps the next batch instead of holding up the model. Tiles are marked done in the
    store only after their features are written, so an interrupted run loses at most the
    writes still queued, never the cache's consistency. A failed write is raised from the
    next :meth:`put` or from :meth:`flush`.
    """

    _QUEUED_WRITES = 4  # at most this many batches wait for the writer (bounded memory)

    def __init__(self, store, live: Embeddings):
        self.store, self.live = store, live
        self._writes: queue.Queue | None = None
        self._writer: threading.Thread | None = None
        self._error: BaseException | None = None

    def pending(self, positions: np.ndarray) -> np.ndarray:
        """Which of ``positions`` still need computing (another process may have done some)."""
        if self.store is None:
            return np.ones(len(positions), bool)
        return ~self.store.done_mask(positions)

    def put(self, positions: np.ndarray, values: np.ndarray) -> None:
        if self.store is not None:
            self._raise_failed()
            # what the cache holds (float16 storage rounds): the live copy must not differ.
            # A copy: callers get `values` back (Progress, on_batch) and may change it
            # before the writer thread has stored it.
            values = values.astype(self.store.features.dtype, copy=True)
            if self._writer is None:
                self._writes = queue.Queue(maxsize=self._QUEUED_WRITES)
                self._writer = threading.Thread(
                    target=self._write_all, name="napari-conch-cache-writer", daemon=True
                )
                self._writer.start()
            self._writes.put((positions, values))
        self.live.update(positions, values)

    def flush(self) -> None:
        """Wait until every queued write is in the store; raise a failed write's error."""
        self.close()
        self._raise_failed()

    def close(self) -> None:
        """Finish the queued writes and stop the writer (never raises)."""
        if self._writer is not None:
            self._writes.put(None)
            self._writer.join()
            self._writer = None

    def _write_all(self) -> None:
        while True:
            item = self._writes.get()
            if item is None:
                return
            if self._error is None:  # after a failure, later batches are dropped
                try:
                    self.store.write(*item)
                except BaseException as exc:
                    self._error = exc

    def _raise_failed(self) -> None:
        if self._error is not None:
            raise self._error


def _run(model, batches, sink: CacheWriter, cancel):
    """The batch loop: yields (positions, features, tiles computed so far, tiles/s)."""
    start = time.perf_counter()
    computed = 0
    for positions, pixels in batches:
        _used_on_this_stream(pixels)
        if is_cancelled(cancel):
            return
        pending = sink.pending(positions)
        if not pending.all():
            if not pending.any():
                continue
            positions = positions[pending]
            pixels = pixels[_as_index(pending, pixels)]
        out = np.asarray(model.encode_images(pixels), dtype=np.float32)
        if out.shape != (len(positions), int(model.embed_dim)):
            raise ValueError(
                f"{model.name}.encode_images returned shape {out.shape}; expected "
                f"({len(positions)}, {model.embed_dim})."
            )
        sink.put(positions, out)
        computed += len(positions)
        yield positions, out, computed, computed / max(time.perf_counter() - start, 1e-9)


def _used_on_this_stream(pixels) -> None:
    """Tiles decoded on a reader thread's CUDA stream are used on this one: tell the
    allocator, so their memory is not handed back to the reader while the model's work on
    them is still queued."""
    if getattr(getattr(pixels, "device", None), "type", None) == "cuda":
        import torch

        pixels.record_stream(torch.cuda.current_stream(pixels.device))


def _as_index(mask: np.ndarray, pixels):
    """A boolean mask usable on ``pixels`` (numpy, a pinned host tensor, or a tensor already
    on the model's device)."""
    if isinstance(pixels, np.ndarray):
        return mask
    import torch

    return torch.from_numpy(mask).to(pixels.device)


def _check_grid(slide: Slide, grid: TileGrid) -> None:
    if tuple(grid.slide_shape) != tuple(slide.shape) or not np.isclose(grid.mpp, slide.mpp or -1):
        raise ValueError(
            f"This grid was made for a {grid.slide_shape} px slide at {grid.mpp} µm/px, not for "
            f"{slide.name} ({slide.shape} px at {slide.mpp} µm/px)."
        )
    if grid.level >= len(slide.levels):
        raise ValueError(f"The grid reads level {grid.level}, which {slide.name} does not have.")
