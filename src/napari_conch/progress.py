"""Cancelling and reporting long work: one cancel token, one progress-callback signature.

Every long function takes ``progress`` and ``cancel`` the same way:

- ``progress(done, total, rate)``: ``done`` of ``total`` units finished (tiles, slides or
  images; each function says which), ``rate`` units per second since it started.
- ``cancel``: a :class:`CancelToken`, a ``threading.Event`` or any callable returning True
  once the work should stop (after the step in flight; finished work is kept).
"""

from __future__ import annotations

import inspect
import threading
import time

from .deprecation import warn_deprecated


class CancelToken:
    """Ask running work (:func:`~napari_conch.embed`, a dense map, …) to stop after the
    step in flight (thread-safe)."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    __call__ = is_set


def is_cancelled(cancel) -> bool:
    """Whether ``cancel`` (a CancelToken, an Event, a callable or None) asks to stop."""
    if cancel is None:
        return False
    if hasattr(cancel, "is_set"):
        return bool(cancel.is_set())
    return bool(cancel())


def progress_callback(progress):
    """``progress`` as a ``(done, total, rate)`` callable (None stays None).

    A two-argument callback, the signature some functions used to call, still works: it is
    called with ``(done, total)`` and a DeprecationWarning.
    """
    if progress is None or _takes_three(progress):
        return progress
    warn_deprecated("a progress callback taking (done, total)", "progress(done, total, rate)", 4)
    return lambda done, total, rate: progress(done, total)


class ProgressReport:
    """Calls ``progress(done, total, rate)`` with the rate since it was made, counting from
    ``already`` (units finished before this run, which add to ``done`` but not to the rate)."""

    def __init__(self, progress, already: int = 0):
        self.progress = progress_callback(progress)
        self.already = already
        self.started = time.perf_counter()

    def __call__(self, done: int, total: int) -> None:
        if self.progress is None:
            return
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        self.progress(done, total, max(0, done - self.already) / elapsed)


def _takes_three(function) -> bool:
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):  # builtins and C callables: trust them
        return True
    positional = 0
    for p in parameters:
        if p.kind is inspect.Parameter.VAR_POSITIONAL:
            return True
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
            positional += 1
    return positional >= 3
