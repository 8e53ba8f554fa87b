"""One segmentation run, drawn while it runs.

:func:`segmentation_steps` is the worker body (off the GUI thread: the grid, the prompts'
text encoding, then the engine's steps); :class:`LiveSegmentation` receives what it yields
on the GUI thread and redraws the map as batches land, never taking more than a tenth of
the GUI thread's time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ..errors import NapariConchError
from .layers import result_layer, show_scale_bar, show_segmentation

LIVE_REDRAW_SECONDS = 0.5


@dataclass
class Started:
    """First message of a run: the grid and the embeddings to fill."""

    grid: object
    embeddings: object


def segmentation_steps(
    slide,
    model,
    grid_options,
    tissue,
    restrict,
    prompts,
    region,
    cancel,
    batch_size,
    cache,
    previous=None,
):
    """Yield each stage's name as it starts, then :class:`Started`, then the engine's
    progress; return the filled Embeddings.

    ``restrict(grid)``: the user's region instead of tissue detection. ``previous``: the
    last run's Embeddings, continued when they fit (an in-memory image cancelled and run
    again does not start from zero).
    """
    from ..pipeline import embed_steps
    from ..tiling import tile_grid

    if restrict is not None:
        yield "Preparing: laying tiles inside the chosen layer…"
        grid = restrict(tile_grid(slide, model, tissue=False, **grid_options))
        if len(grid) == 0:
            raise NapariConchError("No tile centre lies inside the chosen mask layer.")
    else:
        yield "Preparing: finding the tissue…"
        grid = tile_grid(
            slide, model, tissue=tissue if tissue is not None else True, **grid_options
        )
    yield f"Preparing: encoding {len(prompts.names)} classes' prompts…"
    prompts.class_embeddings(model)
    yield f"Embedding 0/{len(grid)} tiles…"
    steps = embed_steps(
        slide,
        model,
        grid,
        cache=cache,
        region=region,
        cancel=cancel,
        batch_size=batch_size,
        resume=previous,
    )
    live = next(steps)
    live.projected(model)  # project once; every redraw reads the projection
    yield Started(grid, live)
    return (yield from steps)


class LiveSegmentation:
    """Receives a run's steps on the GUI thread and keeps the map up to date.

    ``say(text)`` reports stages and counts; ``on_started(grid)`` learns the tiles;
    ``on_drawn(segmentation)`` gets each redraw; ``error(exc)`` reports a failed redraw.
    The session gets the grid, the live embeddings and the last segmentation.
    """

    def __init__(
        self,
        viewer,
        session,
        prompts,
        background,
        min_confidence,
        *,
        say,
        on_drawn,
        error,
        on_started=lambda grid: None,
    ):
        self.viewer = viewer
        self.session = session
        self.prompts = prompts
        self.background = background
        self.min_confidence = min_confidence
        self.say = say
        self.on_drawn = on_drawn
        self.error = error
        self.on_started = on_started
        self.embeddings = None
        self._last_draw = 0.0
        self._interval = LIVE_REDRAW_SECONDS

    def step(self, step) -> None:
        """One message from :func:`segmentation_steps`."""
        if isinstance(step, str):  # a stage of the preparation
            self.say(step)
            return
        if isinstance(step, Started):
            self.session.grid = step.grid
            self.session.embeddings = self.embeddings = step.embeddings
            self.on_started(step.grid)
            self.draw(final=True)
            return
        self.say(f"Embedded {step.done}/{step.total} tiles · {step.tiles_per_s:.1f} tiles/s")
        if step.tiles_per_s:
            self.session.last_rate = step.tiles_per_s
        self.draw()

    def finish(self, _result=None) -> None:
        """The run ended (done or cancelled): the last, complete redraw."""
        self.draw(final=True)
        live = self.embeddings
        if live is not None and len(live) == 0:
            self.say(
                "No tissue found on this image: nothing to segment. Check the image layer, "
                "or choose a painted region under Only inside (Slide tab)."
            )
        elif live is not None:
            word = "Cancelled" if live.cancelled else "Done"
            self.say(f"{word}: {live.n_done}/{len(live)} tiles embedded.")
        labels = result_layer(self.viewer, self.session.segmentation)
        if labels is not None:  # the result, not a hidden map, is selected
            self.viewer.layers.selection.active = labels

    def draw(self, final: bool = False) -> None:
        """Redraw, unless the last redraw was too recent (always when ``final``)."""
        from ..zeroshot import zero_shot_segment

        live = self.embeddings
        if live is None or live.n_done == 0:
            return
        if not final and time.monotonic() - self._last_draw < self._interval:
            return
        started = time.monotonic()
        try:
            seg = zero_shot_segment(
                live,
                self.session.model,
                self.prompts,
                background=self.background,
                min_confidence=self.min_confidence,
            )
        except Exception as exc:
            self.error(exc)
            return
        show_segmentation(
            self.viewer, seg, offset_um=self.session.source.offset_um, update_hidden=final
        )
        show_scale_bar(self.viewer)
        self.session.segmentation = seg
        self.on_drawn(seg)
        self._last_draw = time.monotonic()
        # Redraws may take at most a tenth of the GUI thread's time.
        self._interval = max(LIVE_REDRAW_SECONDS, 10 * (self._last_draw - started))
