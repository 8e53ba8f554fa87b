"""What the widget is working on — model, slide, grid, embeddings, prompts — without Qt.

Each method is one call of the public library, so what the widget does can be repeated in
a notebook line for line.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from ..errors import NapariConchError
from ..slide import Slide
from .layers import layer_prefix

logger = logging.getLogger(__name__)


@dataclass
class SlideSource:
    """A slide plus where its napari layer sits in the world (µm)."""

    slide: Slide
    layer_name: str
    offset_um: tuple[float, float] = (0.0, 0.0)


def slide_from_layer(layer, mpp: float | None = None) -> SlideSource:
    """The Slide behind an image layer: the one napari-conch's reader made, or one wrapped
    around the layer's (multiscale or single) RGB data."""
    meta = (layer.metadata or {}).get("napari_conch", {})
    slide = meta.get("slide")
    scale = tuple(float(s) for s in layer.scale[-2:])
    translate = tuple(float(t) for t in layer.translate[-2:])
    units = [str(u) for u in getattr(layer, "units", ())][-2:]
    own_origin = (0.0, 0.0)
    if slide is not None and not (mpp is not None and slide.mpp != mpp):
        own_origin = slide.origin_um  # maps made on this slide already include it
    if slide is None or (mpp is not None and slide.mpp != mpp):
        data = list(layer.data) if getattr(layer, "multiscale", False) else layer.data
        if (
            mpp is None
            and units
            and all(u in ("micrometer", "µm", "um") for u in units)
            and scale[0] != 1
        ):
            mpp = scale[0]
        base = slide.levels if slide is not None else data
        slide = Slide.from_array(
            base, mpp=mpp if mpp is not None else getattr(slide, "mpp", None), name=layer.name
        )
    offset = (
        tuple(t - o for t, o in zip(translate, own_origin, strict=True))
        if slide.mpp
        else (0.0, 0.0)
    )
    return SlideSource(slide, layer.name, offset)


@dataclass
class Session:
    """The widget's state between actions: what it works on, and what it found."""

    model: object | None = None
    source: SlideSource | None = None
    grid: object | None = None
    embeddings: object | None = None
    tissue: object | None = None
    grid_options: dict = field(default_factory=dict)
    last_rate: float | None = None  # tiles/s seen last time, for time estimates
    # results on this slide (what Export writes, what ◀ ▶ step through)
    segmentation: object | None = None
    similarity: object | None = None
    call: object | None = None
    hits: list = field(default_factory=list)
    hit_index: int = -1
    dense: object | None = None  # DenseTokens of the last sharpened view (experimental)

    def reset_slide(self, source: SlideSource | None) -> None:
        """Another slide (or pixel size): nothing computed for the last one applies."""
        self.source = source
        self.grid = self.embeddings = self.tissue = None
        self.segmentation = self.similarity = self.call = self.dense = None
        self.hits, self.hit_index = [], -1

    def while_current(self, callback):
        """``callback`` for a worker's result, dropped if the slide changed (or the widget
        closed) while the worker ran: a late result must not land on another slide."""
        source = self.source

        def guarded(*args):
            if source is not None and self.source is source:
                return callback(*args)
            logger.debug("dropped a result computed for a slide no longer chosen")
            return None

        return guarded

    def use_model(self, model) -> None:
        """Another model: its embeddings differ; results made by the last one stay shown."""
        self.model = model
        self.grid = self.embeddings = self.dense = None

    def check_ready(self) -> None:
        """Raise, in the widget's words, unless a model and a slide with µm/px are chosen."""
        if self.model is None:
            raise NapariConchError("Load a model first (Model tab).")
        if self.source is None:
            raise NapariConchError("Pick an RGB image layer first (Slide tab).")
        self.source.slide.require_mpp("tiling the slide")

    def ready_embeddings(self):
        """The embeddings of the last run, or an error saying to run one."""
        if self.embeddings is None or self.embeddings.n_done == 0:
            raise NapariConchError(
                "Run a segmentation (or embed the slide) first: there are no embeddings yet."
            )
        return self.embeddings

    @property
    def slide_name(self) -> str | None:
        """The name results on this slide record (None before a slide is chosen)."""
        return self.source.slide.name if self.source is not None else None

    def layer_name(self, kind: str) -> str:
        """Result layers carry the model's name ("plip retrieval"), so two models' results
        sit side by side."""
        return f"{layer_prefix(getattr(self.model, 'name', None))} {kind}"

    def estimate_seconds(self, n_tiles: int) -> float | None:
        if self.last_rate:
            return n_tiles / self.last_rate
        return None


def tiles_inside_layer(grid, layer, offset_um=(0.0, 0.0)) -> np.ndarray:
    """Which tiles (by their centre) fall inside a user's Labels (value > 0) or Shapes layer.

    Lets a pathologist restrict the analysis to a region they painted or outlined, instead
    of (or besides) automatic tissue detection. The layer's data is taken to the world (µm)
    with its scale and translation; the geometry is the library's.
    """
    from ..geometry import SHAPE_TYPES, shape_polygon

    scale = np.asarray(layer.scale[-2:], float)
    translate = np.asarray(layer.translate[-2:], float)
    kind = type(layer).__name__
    if kind == "Labels":
        data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
        return grid.tiles_in_label_image(data, scale, translate, offset_um)
    if kind == "Shapes":
        polygons = [
            shape_polygon(np.asarray(vertices)[:, -2:] * scale + translate, shape_type)
            for vertices, shape_type in zip(layer.data, layer.shape_type, strict=True)
            if shape_type in SHAPE_TYPES
        ]
        return grid.tiles_in_polygons(polygons, offset_um)
    raise TypeError(f"A mask layer must be a Labels or Shapes layer, not {kind}.")
