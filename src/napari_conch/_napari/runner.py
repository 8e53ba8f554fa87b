"""Library calls in napari thread workers, and one status line that says what happens.

Every panel starts its work here, so errors are reported the same way everywhere: a
notification worded for the widget's controls and the first line in the status — never a
traceback dialog.
"""

from __future__ import annotations

import html
import logging

from ..errors import NapariConchError
from ..errors import describe as describe_error

logger = logging.getLogger(__name__)


class Runner:
    """Starts functions off the GUI thread and shows their outcome in ``status`` (a QLabel).

    Work is for the slide chosen when it starts: with a ``session``, its results and yields
    are dropped if the slide changed meanwhile (:meth:`Session.while_current`), unless the
    work is not about a slide (``any_slide=True``: loading a model, writing files).
    """

    def __init__(self, status, session=None):
        self.status = status
        self.session = session
        self.workers: set = set()

    def start(
        self,
        function,
        *args,
        on_return=None,
        on_yield=None,
        progress=None,
        finished=None,
        on_error=None,
        any_slide=False,
        **kwargs,
    ):
        """Run ``function(*args, **kwargs)`` in a worker (a generator's yields reach
        ``on_yield``); ``progress`` is napari's progress-bar description."""
        from napari.qt.threading import create_worker

        if self.session is not None and not any_slide:
            if on_return is not None:
                on_return = self.session.while_current(on_return)
            if on_yield is not None:
                on_yield = self.session.while_current(on_yield)

        worker = create_worker(function, *args, _progress=progress, _ignore_errors=True, **kwargs)
        if on_return is not None:
            worker.returned.connect(on_return)
        if on_yield is not None and hasattr(worker, "yielded"):
            worker.yielded.connect(on_yield)
        worker.errored.connect(self.error)
        if on_error is not None:
            worker.errored.connect(on_error)
        if finished is not None:
            worker.finished.connect(finished)
        worker.finished.connect(lambda: self.workers.discard(worker))
        self.workers.add(worker)
        worker.start()
        return worker

    def say(self, message: str) -> None:
        self.status.setText(message)

    def error(self, exc: BaseException) -> None:
        """A napari notification with the reason, in the widget's words."""
        from napari.utils.notifications import show_error

        message = widget_message(exc)
        logger.info("napari-conch: %s", message)
        self.status.setText(f"⚠ {message.splitlines()[0] if message else type(exc).__name__}")
        show_error(f"napari-conch: {message}")

    def quit(self) -> None:
        for worker in list(self.workers):
            worker.quit()


def widget_message(exc: BaseException) -> str:
    """The error as the widget words it: its controls, not Python arguments."""
    if isinstance(exc, (NapariConchError, ValueError, TypeError, OSError)):
        return describe_error(exc, "napari")
    return repr(exc)


def first_sentence(exc: BaseException) -> str:
    """The start of an error's widget-worded message, short enough for a status line (HTML)."""
    text = widget_message(exc).strip().splitlines()[0] if str(exc) else repr(exc)
    cut = text.find(". ")
    text = text[: cut + 1] if 0 < cut < 200 else text[:200]
    return html.escape(text)
