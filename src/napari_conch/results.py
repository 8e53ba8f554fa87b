"""What the analyses return: segmentations, similarity maps, slide calls, retrieved tiles.

Maps are numpy arrays on the tile grid's cells plus their placement in µm (``scale_um``,
``translate_um``, as napari takes them); every result carries its provenance as a
``metadata`` dict (:class:`~napari_conch.provenance.Provenance`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from .colors import label_colors, rgba
from .deprecation import warn_deprecated
from .provenance import Provenance

# Codes of SegmentationResult.tile_labels besides the classes 1, 2, …
TILE_BACKGROUND = 0
TILE_UNASSIGNED = -1
TILE_NOT_EMBEDDED = -2
# Top two classes of a slide call closer than this in probability: a close call.
CLOSE_CALL = 0.05


class _Result:
    """What every analysis result says about the model that made it."""

    metadata: dict

    @property
    def provenance(self) -> Provenance:
        """The record behind :attr:`metadata`: model, slide, grid, prompts, …"""
        return Provenance.from_metadata(self.metadata)

    @property
    def trained(self) -> bool:
        """False when an untrained model (``checkpoint="random"``) made this result."""
        return bool(self.metadata.get("model", {}).get("trained", True))


@dataclass
class SegmentationResult(_Result):
    """A segmentation on the tile grid.

    ``labels`` (H, W): 0 = no tissue, background or below ``min_confidence``; ``i + 1`` =
    ``class_names[i]``. ``probabilities`` (C, H, W) are overlap-averaged class probabilities
    (NaN where no tile looked); ``uncertainty`` (H, W) is their entropy divided by log C
    (0 = certain, 1 = uniform). Place in napari with ``scale_um`` / ``translate_um``.

    ``areas_mm2`` are tissue areas per class. ``cell_tissue_mm2`` (H, W) holds each cell's
    tissue area and ``hidden_labels`` (H, W) the class of the cells the tissue rule leaves
    unlabelled (under half tissue, but their tissue counts), so :meth:`with_labels` can
    measure corrected labels the same way; both are None for results read back from labels
    only.
    """

    labels: np.ndarray
    probabilities: np.ndarray
    uncertainty: np.ndarray
    class_names: list[str]
    colors: dict[int, tuple[float, float, float, float]]
    areas_mm2: dict[str, float]
    scale_um: tuple[float, float]
    translate_um: tuple[float, float]
    tile_probabilities: np.ndarray
    background_probability: np.ndarray | None = None
    tile_labels: np.ndarray | None = None
    tile_background_probability: np.ndarray | None = None
    cell_tissue_mm2: np.ndarray | None = field(default=None, repr=False)
    hidden_labels: np.ndarray | None = field(default=None, repr=False)
    metadata: dict = field(default_factory=dict)

    @classmethod
    def from_labels(
        cls,
        labels,
        class_names,
        *,
        scale_um=(1.0, 1.0),
        translate_um=(0.0, 0.0),
        colors: dict | None = None,
        areas_mm2: dict | None = None,
        cell_tissue_mm2=None,
        metadata: dict | None = None,
    ) -> SegmentationResult:
        """A result that holds labels only (a painted or imported label image): probabilities
        unknown (NaN), no tiles.

        ``colors``: by label value or by class name (RGBA 0–1, 0–255 or "#rrggbb"); default
        the classes' fixed colours. ``areas_mm2``: as recorded elsewhere; default measured
        from the labels (``cell_tissue_mm2`` per cell, else each cell's whole area).
        ``metadata["grid"]`` (the tile grid's record: cell size and origin in slide pixels)
        is what the GeoJSON export places polygons with.
        """
        labels = np.asarray(labels)
        if labels.ndim != 2:
            raise ValueError(f"Labels must be a 2-D image; got shape {labels.shape}.")
        names = [str(n) for n in class_names]
        palette = label_colors(names)
        for key, value in (colors or {}).items():
            if str(key).isdigit():
                label = int(key)
            else:
                label = names.index(key) + 1 if key in names else None
            if label is not None and 1 <= label <= len(names):
                palette[label] = rgba(value)
        scale = tuple(float(v) for v in scale_um)
        translate = tuple(float(v) for v in translate_um)
        metadata = dict(metadata or {})
        metadata.setdefault("model", {"name": None, "trained": True})
        n, shape = len(names), labels.shape
        result = cls(
            labels=labels,
            probabilities=np.full((n, *shape), np.nan, np.float32),
            uncertainty=np.full(shape, np.nan, np.float32),
            class_names=names,
            colors=palette,
            areas_mm2={},
            scale_um=scale,
            translate_um=translate,
            tile_probabilities=np.zeros((0, n), np.float32),
            cell_tissue_mm2=None if cell_tissue_mm2 is None else np.asarray(cell_tissue_mm2),
            metadata=metadata,
        )
        result.areas_mm2 = (
            {name: float((areas_mm2 or {}).get(name, 0.0)) for name in names}
            if areas_mm2 is not None
            else result.measure(labels)
        )
        return result

    def with_labels(self, labels) -> SegmentationResult:
        """This result with other labels — corrections painted in napari — and the areas
        measured from them; probabilities, tiles and provenance stay the model's.

        A cell takes the class painted into it. Cells nobody could see (under half tissue,
        see the class docstring) keep the model's class, unless a neighbour of theirs was
        repainted: then they follow their repainted neighbours (the class most of them now
        have, or none when those were erased) — so a class painted away is gone, its rim
        of half-tissue cells included.
        """
        labels = np.array(labels, copy=True)
        if labels.shape != self.labels.shape:
            raise ValueError(
                f"The labels are {labels.shape}, but this result's map is {self.labels.shape}."
            )
        if labels.dtype.kind not in "iub":
            raise ValueError(f"Labels must be integers; got {labels.dtype}.")
        metadata = {**self.metadata, "labels": "edited"}
        hidden = _follow_repainted(self.hidden_labels, self.labels, labels)
        fields = {**vars(self), "labels": labels, "hidden_labels": hidden, "metadata": metadata}
        result = type(self)(**fields)
        result.areas_mm2 = result.measure(labels)
        return result

    def measure(self, labels=None) -> dict[str, float]:
        """Tissue area (mm²) of each class in ``labels`` (default: this result's)."""
        labels = self.labels if labels is None else np.asarray(labels)
        if self.cell_tissue_mm2 is not None:
            cell = self.cell_tissue_mm2
        else:
            sy, sx = self.scale_um
            cell = np.full(labels.shape, sy * sx / 1e6, np.float64)
        areas = {}
        for label, name in enumerate(self.class_names, start=1):
            mask = labels == label
            if self.hidden_labels is not None:
                mask |= (labels == 0) & (self.hidden_labels == label)
            areas[name] = float(cell[mask].sum())
        return areas

    def tile_classes(self) -> list[str]:
        """Each tile's answer under the same rule as the map: its class, ``"background"``
        where the background class wins, ``"unassigned"`` below ``min_confidence``, and ``""``
        for tiles not embedded."""
        labels = self.tile_labels
        if labels is None:  # results built by hand: best class of each tile
            finite = np.isfinite(self.tile_probabilities).all(axis=1)
            best = np.argmax(np.where(finite[:, None], self.tile_probabilities, -1), axis=1)
            labels = np.where(finite, best + 1, TILE_NOT_EMBEDDED)
        special = {
            TILE_BACKGROUND: "background",
            TILE_UNASSIGNED: "unassigned",
            TILE_NOT_EMBEDDED: "",
        }
        return [special.get(int(v)) or self.class_names[int(v) - 1] for v in labels]


@dataclass
class SimilarityMap(_Result):
    """Cosine similarity per grid cell: ``values`` (H, W) for one query, (Q, H, W) for several."""

    values: np.ndarray
    tile_values: np.ndarray
    queries: list[str]
    scale_um: tuple[float, float]
    translate_um: tuple[float, float]
    contrast_limits: tuple[float, float]
    metadata: dict = field(default_factory=dict)


@dataclass
class Hit:
    """One tile a query found: a retrieval hit, or a tile of a slide call's evidence.

    ``source`` names where it was found (the cache store, or the slide), ``position`` its
    row in that slide's Embeddings; corners in level-0 px and in world µm.
    """

    source: str
    position: int
    y_px: int
    x_px: int
    y_um: float
    x_um: float
    size_um: float
    score: float

    def to_dict(self) -> dict:
        return asdict(self)

    def __getitem__(self, key: str):
        # evidence tiles used to be dicts: hit["score"] keeps working for one release
        warn_deprecated(f'hit["{key}"]', f"hit.{key}")
        try:
            return getattr(self, key)
        except AttributeError:
            raise KeyError(key) from None


@dataclass
class SlideCall(_Result):
    """An MI-Zero slide-level call: per class, the mean of its top-K tile similarities;
    ``evidence`` lists each class's top tiles as :class:`Hit` objects, best first."""

    call: str
    scores: dict[str, float]
    probabilities: dict[str, float]
    top_k: int
    evidence: dict[str, list[Hit]]
    metadata: dict = field(default_factory=dict)

    @property
    def margin(self) -> float:
        """How far the call's probability is ahead of the next class's (1.0 with one class)."""
        ranked = sorted(self.probabilities.values(), reverse=True)
        return float(ranked[0] - ranked[1]) if len(ranked) > 1 else 1.0

    @property
    def is_close(self) -> bool:
        """The next class is within :data:`CLOSE_CALL` in probability: read the evidence."""
        return self.margin < CLOSE_CALL


@dataclass
class Retrieval(_Result):
    """Top-k tiles for a query, best first (iterable)."""

    hits: list[Hit]
    queries: list[str]
    metadata: dict = field(default_factory=dict)

    @property
    def query(self) -> list[str]:
        warn_deprecated("Retrieval.query", "Retrieval.queries")
        return self.queries

    def __iter__(self):
        return iter(self.hits)

    def __len__(self) -> int:
        return len(self.hits)

    def __getitem__(self, i):
        return self.hits[i]


def _follow_repainted(hidden, before, after):
    """Hidden cells (drawn unlabelled, measured) next to a repainted cell take the value most
    of their repainted neighbours now have (0 when those were erased); hidden cells of a
    class painted away entirely take their labelled neighbours' class (else none); others
    keep theirs."""
    if hidden is None:
        return None
    hidden, before, after = np.asarray(hidden), np.asarray(before), np.asarray(after)
    changed = before != after
    if not changed.any():
        return hidden.copy()
    from scipy.ndimage import convolve

    kernel = np.ones((3, 3))
    kernel[1, 1] = 0

    def votes(cells, values):
        return np.stack(
            [
                convolve((cells & (after == v)).astype(float), kernel, mode="constant")
                for v in values
            ]
        )

    out = hidden.copy()
    candidates = (hidden > 0) & (after == 0)
    follow = np.zeros_like(candidates)
    for value in np.unique(hidden[candidates]):  # cells of a class follow that class's repaint
        repainted = changed & (before == value)
        if not repainted.any():
            continue
        values = np.unique(after[repainted])
        near = votes(repainted, values)
        mine = candidates & (hidden == value) & (near.sum(axis=0) > 0)
        out[mine] = values[np.argmax(near, axis=0)][mine]
        follow |= mine
    gone = np.setdiff1d(np.unique(before[before > 0]), np.unique(after[after > 0]))
    orphans = candidates & ~follow & np.isin(hidden, gone)
    if orphans.any():
        labelled = np.setdiff1d(np.unique(after[after > 0]), gone)
        around = votes(after > 0, labelled) if len(labelled) else np.zeros((1, *after.shape))
        has = around.sum(axis=0) > 0
        out[orphans] = 0
        pick = orphans & has
        if len(labelled):
            out[pick] = labelled[np.argmax(around, axis=0)][pick]
    return out
