"""Tiled inference: read tiles in threads while the model computes, store features as they land.

Reader threads fetch the next batches (whole native tiles, decoded with the GIL released)
while the model runs the current one; batches travel as uint8 and are resized and
normalised on the model's device (pinned memory and asynchronous copies on CUDA), or, with
``decode="device"``, are decoded there too. Results go to the embedding cache after every
batch (from a writer thread, so the model never waits for a chunk's compression), so an
interrupted run resumes where it stopped. With ``region=`` (e.g. the napari viewport) the
tiles there go first and the rest follow outward; ``region_only=True`` computes just those.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from .embeddings import Embeddings
from .protocol import check_model, is_trained, weights_hash
from .slide import Slide, as_slide
from .store import EmbeddingStore, cache_root, decode_label, describe, slide_fingerprint
from .tiling import TileGrid, tile_grid

logger = logging.getLogger(__name__)

_CPU_BATCH = 8
_MAX_GPU_BATCH = 256
_MAX_GPU_READERS = 32


class CancelToken:
    """Ask a running :func:`embed` to stop after the batch in flight (thread-safe)."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    __call__ = is_set


def _cancelled(cancel) -> bool:
    if cancel is None:
        return False
    if hasattr(cancel, "is_set"):
        return bool(cancel.is_set())
    return bool(cancel())


def embed(
    slide,
    model,
    grid: TileGrid | None = None,
    cache="auto",
    region=None,
    progress: Callable[[int, int, float], None] | None = None,
    cancel=None,
    *,
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
        "fast" (default): when the level read is at least twice as fine as the model's
        input (e.g. 0.25 µm/px for CONCH's 0.5) and stores JPEG tiles, decode them 2, 4 or
        8 times smaller in the DCT domain instead of decoding in full and resizing.
        "exact": always decode in full and resize (bicubic, antialiased) as the reference
        preprocessing does. "device": decode a batch's JPEG tiles in full on the model's
        device (nvJPEG on CUDA, through torchvision), then resize there as "exact" does —
        for GPUs the CPU cannot keep fed; levels without plain JPEG tiles fall back to
        "fast". The modes give slightly different pixels, so they are cached apart;
        docs/embedding.md reports the differences.
    client : dask.distributed.Client, optional
        Split the slide's tiles across the client's workers (each loads its own copy of the
        model; ``model`` may also be a name or load_model keywords), all writing to the
        same cache; see :func:`napari_conch.distributed.embed_on_cluster`. Needs a slide
        file and a cache the workers share.

    Returns
    -------
    Embeddings
        ``complete`` is False when the run was cancelled or restricted to part of the grid.
    """
    if client is not None:
        if region_only or on_batch is not None:
            raise ValueError("embed(client=...) takes neither region_only nor on_batch.")
        from .distributed import embed_on_cluster

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
    steps = embed_steps(
        slide,
        model,
        grid,
        cache,
        region,
        cancel,
        region_only=region_only,
        tiles=tiles,
        batch_size=batch_size,
        workers=workers,
        prefetch=prefetch,
        dtype=dtype,
        decode=decode,
    )
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


@dataclass(frozen=True)
class Progress:
    """One step of an embedding run: totals so far and the batch that just finished."""

    done: int
    total: int
    tiles_per_s: float
    positions: np.ndarray
    features: np.ndarray


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
    """:func:`embed` as a generator — the one engine path the CLI, the widget and the
    cluster code share.

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

    if (cache is None or cache is False) and _continues(resume, grid, model, plan.label):
        store, live = None, resume
        live.cancelled = False
    elif cache is None or cache is False:
        store = None
        label = plan.label if plan.label != decode_label(1) else None
        metadata = describe(slide, model, grid, slide_fingerprint(slide), label)
        features = np.full((len(grid), int(model.embed_dim)), np.nan, np.float32)
        live = Embeddings(features, np.zeros(len(grid), bool), grid, metadata, model=model)
    else:
        store = EmbeddingStore.open_or_create(
            cache_root(cache), slide, model, grid, dtype, decode=plan.label
        )
        live = store.load(model=model)
    yield live

    if not is_trained(model):
        logger.warning(
            "Embedding with an UNTRAINED model: the features are for pipeline checks only."
        )
    positions = _order(grid, region, region_only, tiles)
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
    batch_size = int(batch_size or _auto_batch_size(model))
    workers = int(workers or _default_readers(model))
    empty = np.zeros(0, np.int64)
    yield Progress(already, total, 0.0, empty, np.zeros((0, int(model.embed_dim)), np.float32))

    sink = _Sink(store, live)
    computed = 0
    try:
        for positions, out, computed, rate in _run(
            slide, model, grid, todo, sink, batch_size, workers, prefetch, cancel, plan
        ):
            yield Progress(min(total, already + computed), total, rate, positions, out)
        sink.flush()  # every feature in the cache (or its write error raised) before returning
    finally:
        sink.close()
        if store is not None:
            store.release_run()
    cancelled = _cancelled(cancel) and computed + already < total
    if cancelled:
        logger.info("Embedding cancelled after %d new tiles; they are kept.", computed)
    if store is not None and computed < len(todo):
        live.refresh()  # tiles another process wrote meanwhile
    live.cancelled = cancelled
    return live


DECODE_MODES = ("fast", "exact", "device")


@dataclass(frozen=True)
class DecodePlan:
    """How a run decodes its tiles: ``reduce`` times smaller on the CPU, or in full on the
    model's device (``device_reader``)."""

    reduce: int = 1
    device_reader: object = None  # a device_decode.DeviceTileReader

    @property
    def label(self) -> str:
        """As stores and results record it."""
        if self.device_reader is not None:
            return self.device_reader.label
        return decode_label(self.reduce)


def decode_plan(slide, grid: TileGrid, model, decode: str = "fast") -> DecodePlan:
    """The :class:`DecodePlan` of ``decode`` for this slide, grid and model (an unknown
    mode is refused by :func:`decode_reduction`)."""
    if decode == "device":
        from .device_decode import device_tile_reader

        device = getattr(model, "device", None) or "cpu"
        reader = device_tile_reader(slide, grid.level, grid.read_px, device)
        if reader is not None:
            return DecodePlan(1, reader)
    return DecodePlan(decode_reduction(slide, grid, model, decode))


def decode_reduction(slide, grid: TileGrid, model, decode: str = "fast") -> int:
    """How many times smaller tiles are decoded on the CPU: the largest factor the level
    offers that keeps them at least the model's input size (1: decode in full, then resize)."""
    if decode not in DECODE_MODES:
        raise ValueError(f"decode must be one of {', '.join(DECODE_MODES)}; got {decode!r}.")
    if decode == "exact":
        return 1
    size = int(model.input_size)
    fitting = [f for f in slide.reduced_factors(grid.level) if grid.read_px >= f * size]
    return max(fitting, default=1)


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


class _Sink:
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


def _default_readers(model) -> int:
    """Reader threads. On the CPU, decoding competes with the model for the same cores
    (measured on 2 cores: one reader is 15 % faster than two for a ViT-B/32 and the same for
    CONCH), so half of them. On a GPU, which needs the CPU only to feed it, one more than the
    cores: a reader's Python share then overlaps the others' decoding, which runs without
    the GIL (measured on 2 cores: 3 readers 5 % faster than 2)."""
    cpus = os.cpu_count() or 1
    on_gpu = getattr(getattr(model, "device", None), "type", "cpu") == "cuda"
    if on_gpu:
        return min(cpus + 1, _MAX_GPU_READERS)
    return max(1, min(4, cpus // 2))


def _run(slide, model, grid, todo, sink, batch_size, workers, prefetch, cancel, plan):
    """The batch loop: yields (positions, features, tiles computed so far, tiles/s)."""
    start = time.perf_counter()
    computed = 0
    batches = _prefetched_batches(
        slide, grid, todo, batch_size, workers, prefetch, cancel, model, plan
    )
    for positions, pixels in batches:
        _used_on_this_stream(pixels)
        if _cancelled(cancel):
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


def _order(grid: TileGrid, region, region_only: bool, tiles) -> np.ndarray:
    """Tile positions in processing order (raster by default, viewport first with a region)."""
    n = len(grid)
    if tiles is not None:
        base = np.asarray(tiles, np.int64).ravel()
        if len(base) and (base.min() < 0 or base.max() >= n):
            raise IndexError(f"tiles must be positions in 0…{n - 1}.")
    else:
        base = np.arange(n, dtype=np.int64)
    if region is None:
        if region_only:
            raise ValueError("region_only=True needs a region (a µm box y0, x0, y1, x1).")
        return base
    y0, x0, y1, x1 = (float(v) for v in region)
    if not (y1 > y0 and x1 > x0):
        raise ValueError(f"region must be (y0, x0, y1, x1) with y1 > y0 and x1 > x0; got {region}.")
    inside = np.zeros(n, bool)
    inside[grid.tiles_in_box_um(region)] = True
    centre = (np.array([(y0 + y1) / 2, (x0 + x1) / 2]) - grid.offset_um) / grid.mpp
    tile_centres = grid.coords[base] + grid.tile_px / 2
    distance = np.hypot(*(tile_centres - centre).T)
    first = inside[base]
    order = np.lexsort((distance, ~first))  # region tiles first, each group by distance
    ordered = base[order]
    return ordered[inside[ordered]] if region_only else ordered


def _auto_batch_size(model) -> int:
    device = getattr(model, "device", None)
    if device is None or getattr(device, "type", "cpu") != "cuda":
        # a multiple of the pieces the model computes at once on the CPU (PLIP: 16): a
        # smaller batch would be padded up to a whole piece, computing tiles for nothing
        piece = max(1, int(getattr(model, "cpu_micro_batch", 1) or 1))
        return piece * -(-_CPU_BATCH // piece)
    import torch

    free, _ = torch.cuda.mem_get_info(device)
    size = int(getattr(model, "input_size", 224))
    reduced = getattr(model, "precision", "fp32") in ("bf16", "fp16")
    # About 60 float32 input-sized planes of activations per tile at the peak of a ViT-B
    # forward pass; half with autocast. Keep a quarter of the free memory in reserve.
    per_tile = size * size * 3 * 4 * (30 if reduced else 60)
    return int(max(1, min(_MAX_GPU_BATCH, 0.75 * free // per_tile)))


def _prefetched_batches(slide, grid, todo, batch_size, workers, prefetch, cancel, model, plan):
    """Yield (positions, uint8 pixels) while reader threads prepare the next ones: numpy
    (B, h, w, 3), pinned on CUDA; or a (B, 3, h, w) tensor already on the model's device
    when ``plan`` decodes there."""
    if len(todo) == 0:
        return
    reduce, on_device = plan.reduce, plan.device_reader
    use_pinned = getattr(getattr(model, "device", None), "type", "cpu") == "cuda"
    batches: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
    stop = threading.Event()
    coords = grid.coords
    size = grid.read_px
    DONE = object()

    def read(position):
        y, x = coords[position]
        return slide.read_region(int(y), int(x), size, size, level=grid.level, reduce=reduce)

    side = round(size / reduce)  # read_region's size at 1/reduce

    def read_into(batch: np.ndarray, i: int, position) -> None:
        # each reader copies its tile into the batch: no serial stacking afterwards
        batch[i] = read(position)

    def produce():
        try:
            with ThreadPoolExecutor(
                max_workers=workers, thread_name_prefix="napari-conch-read"
            ) as pool:
                # The reads of the next batch are queued before this one is stacked, so no
                # reader idles at a batch's end waiting for the slowest tile of it.
                starts = iter(range(0, len(todo), batch_size))
                in_flight: deque = deque()

                def submit_next() -> None:
                    start = next(starts, None)
                    if start is None:
                        return
                    chunk = todo[start : start + batch_size]
                    if on_device is not None:  # one batched decode per batch
                        in_flight.append(
                            (chunk, None, [pool.submit(on_device.read, coords[chunk])])
                        )
                        return
                    batch = np.empty((len(chunk), side, side, 3), np.uint8)
                    futures = [pool.submit(read_into, batch, i, p) for i, p in enumerate(chunk)]
                    in_flight.append((chunk, batch, futures))

                submit_next()
                submit_next()
                while in_flight:
                    if stop.is_set() or _cancelled(cancel):
                        for _, _, futures in in_flight:
                            for future in futures:
                                future.cancel()
                        break
                    chunk, pixels, futures = in_flight.popleft()
                    results = [future.result() for future in futures]
                    if on_device is not None:
                        pixels = results[0]
                    submit_next()
                    if use_pinned and on_device is None:
                        import torch

                        pixels = torch.from_numpy(pixels).pin_memory()
                    while not stop.is_set():
                        try:
                            batches.put((chunk, pixels), timeout=0.1)
                            break
                        except queue.Full:
                            continue
        except BaseException as exc:  # hand reader errors to the consumer
            batches.put(exc)
        finally:
            batches.put(DONE)

    thread = threading.Thread(target=produce, name="napari-conch-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = batches.get()
            if item is DONE:
                break
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock the producer if it waits on a full queue
            try:
                batches.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)
