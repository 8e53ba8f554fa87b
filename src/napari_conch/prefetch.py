"""Reader threads that prepare the next batches of tiles while the model computes this one.

Reads are whole native tiles decoded with the GIL released; each reader copies its tile into
the batch (no serial stacking afterwards), and the reads of the next batch are queued before
this one is handed over, so no reader idles at a batch's end waiting for its slowest tile.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .progress import is_cancelled
from .sizing import on_cuda


def prefetched_batches(slide, grid, todo, batch_size, workers, prefetch, cancel, model, plan):
    """Yield (positions, uint8 pixels) while reader threads prepare the next ones: numpy
    (B, h, w, 3), pinned on CUDA; or a (B, 3, h, w) tensor already on the model's device
    when ``plan`` (a :class:`~napari_conch.decoding.DecodePlan`) decodes there."""
    if len(todo) == 0:
        return
    reduce, on_device = plan.reduce, plan.device_reader
    use_pinned = on_cuda(model)
    batches: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
    stop = threading.Event()
    coords = grid.coords
    size = grid.read_px
    done_marker = object()
    side = round(size / reduce)  # read_region's size at 1/reduce

    def read_into(batch: np.ndarray, i: int, position) -> None:
        y, x = coords[position]
        batch[i] = slide.read_region(int(y), int(x), size, size, level=grid.level, reduce=reduce)

    def produce():
        try:
            with ThreadPoolExecutor(
                max_workers=workers, thread_name_prefix="napari-conch-read"
            ) as pool:
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
                    if stop.is_set() or is_cancelled(cancel):
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
                    _hand_over(batches, stop, (chunk, pixels))
        except BaseException as exc:  # hand reader errors to the consumer
            batches.put(exc)
        finally:
            batches.put(done_marker)

    thread = threading.Thread(target=produce, name="napari-conch-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = batches.get()
            if item is done_marker:
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


def _hand_over(batches: queue.Queue, stop: threading.Event, item) -> None:
    """Queue a batch for the model, giving up when the consumer has stopped."""
    while not stop.is_set():
        try:
            batches.put(item, timeout=0.1)
            return
        except queue.Full:
            continue
