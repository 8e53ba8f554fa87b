"""What the widget is working on — model, slide, grid, embeddings, prompts — without Qt.

Each method is one call of the public library, so what the widget does can be repeated in
a notebook line for line.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from ..slide import Slide

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
    offset = translate if slide.mpp else (0.0, 0.0)
    return SlideSource(slide, layer.name, offset)


@dataclass
class Session:
    """The widget's state between actions."""

    model: object | None = None
    source: SlideSource | None = None
    grid: object | None = None
    embeddings: object | None = None
    tissue: object | None = None
    grid_options: dict = field(default_factory=dict)
    last_rate: float | None = None  # tiles/s seen last time, for time estimates

    def reset_slide(self, source: SlideSource | None) -> None:
        self.source = source
        self.grid = self.embeddings = self.tissue = None

    def estimate_seconds(self, n_tiles: int) -> float | None:
        if self.last_rate:
            return n_tiles / self.last_rate
        return None
