"""A synthetic pyramidal "slide" with planted tissue regions at known positions.

It is not real tissue: it exists for demos, tutorials and tests that need ground truth
(which class lies where, in micrometres). Each class has its own colour and texture, so a
colour-based test model can tell them apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .deprecation import forward_names
from .slide import Slide

CLASS_NAMES = ("tumor", "stroma", "necrosis")
# Mean RGB of the glass and of each planted class (label 1..3).
BACKGROUND_COLOR = (244, 242, 247)
CLASS_COLORS = {"tumor": (112, 62, 152), "stroma": (226, 142, 178), "necrosis": (208, 178, 172)}
_COLORS = np.array([BACKGROUND_COLOR, *(CLASS_COLORS[n] for n in CLASS_NAMES)], dtype=np.int16)
_NUCLEUS = np.array((62, 38, 104), dtype=np.int16)
_NUCLEI_PER_MM2 = (0, 9000, 1500, 400)  # background, tumor, stroma, necrosis
_LABEL_DOWNSAMPLE = 8

# Regions as fractions of the slide side: (label, kind, centre y, centre x, half-height, half-width)
_REGIONS = (
    (2, "rect", 0.70, 0.50, 0.14, 0.42),  # a band of stroma along the lower half
    (1, "ellipse", 0.30, 0.30, 0.17, 0.21),  # tumour, upper left
    (3, "ellipse", 0.27, 0.74, 0.12, 0.12),  # necrosis, upper right
    (1, "ellipse", 0.70, 0.78, 0.08, 0.09),  # a tumour nest inside the stroma band
)


@dataclass
class SyntheticSlide:
    """The slide plus its ground truth.

    ``labels[i, j]`` is the class (0 = background, k = ``class_names[k - 1]``) of level-0
    pixels [i·d, (i+1)·d) × [j·d, (j+1)·d) with d = ``labels_downsample``.
    """

    slide: Slide
    labels: np.ndarray
    labels_downsample: int
    class_names: tuple[str, ...] = CLASS_NAMES
    regions_um: list[dict] = field(default_factory=list)

    def truth_annotations(self):
        """The planted truth as :class:`~napari_conch.Annotations` (one region per class,
        exact on the truth's pixels), to score maps with :func:`~napari_conch.agreement`."""
        from .annotations import Annotations, Region
        from .geometry import label_polygons

        regions = []
        for value, name in enumerate(self.class_names, start=1):
            polygon = label_polygons(self.labels, value, float(self.labels_downsample))
            if polygon is not None:
                regions.append(Region(name, polygon))
        return Annotations(
            regions, self.slide.mpp, (0.0, 0.0), tuple(self.slide.shape[:2]), "planted truth"
        )

    def label_at_um(self, y_um: float, x_um: float) -> int:
        """Ground-truth class at a point given in µm."""
        d = self.labels_downsample * self.slide.mpp
        return int(self.labels[int(y_um // d), int(x_um // d)])


def synthetic_slide(size: int = 4096, mpp: float = 0.5, seed: int = 0) -> SyntheticSlide:
    """Make a synthetic (size × size px) RGB slide at ``mpp`` µm/px with a 3-level pyramid.

    The default is a 2 × 2 mm field at 0.5 µm/px (CONCH's reading resolution) holding
    tumour, stroma and necrosis regions; generation takes about a second.
    """
    if size < 64 or size % _LABEL_DOWNSAMPLE:
        raise ValueError(f"size must be ≥ 64 and a multiple of {_LABEL_DOWNSAMPLE}; got {size}.")
    rng = np.random.default_rng(seed)
    n = size // _LABEL_DOWNSAMPLE
    labels = np.zeros((n, n), np.uint8)
    yy, xx = (np.mgrid[0:n, 0:n] + 0.5) / n
    regions = []
    for label, kind, cy, cx, hy, hx in _REGIONS:
        if kind == "rect":
            inside = (np.abs(yy - cy) <= hy) & (np.abs(xx - cx) <= hx)
        else:
            inside = ((yy - cy) / hy) ** 2 + ((xx - cx) / hx) ** 2 <= 1
        labels[inside] = label
        side_um = size * mpp
        regions.append(
            {
                "class": CLASS_NAMES[label - 1],
                "shape": kind,
                "centre_um": (cy * side_um, cx * side_um),
                "half_size_um": (hy * side_um, hx * side_um),
            }
        )
    image = _blow_up(_COLORS[labels], _LABEL_DOWNSAMPLE)  # (size, size, 3) int16
    # Low-frequency staining variation plus pixel noise, so tiles are not flat colour.
    coarse = rng.normal(0, 7, size=(n // 8 + 1, n // 8 + 1, 3)).astype(np.int16)
    image += _blow_up(coarse, _LABEL_DOWNSAMPLE * 8)[:size, :size]
    image += rng.integers(-9, 10, size=image.shape, dtype=np.int16)
    _add_nuclei(image, labels, _LABEL_DOWNSAMPLE, mpp, rng)
    level0 = np.clip(image, 0, 255).astype(np.uint8)
    levels = [level0]
    while levels[-1].shape[0] >= 1024:
        h = levels[-1].shape[0] // 4
        blocks = levels[-1][: h * 4, : h * 4].reshape(h, 4, h, 4, 3)
        levels.append((blocks.sum((1, 3), dtype=np.uint16) // 16).astype(np.uint8))
    slide = Slide.from_array(
        levels,
        mpp=mpp,
        name="synthetic slide (not real tissue)",
        metadata={"vendor": "synthetic", "synthetic": True, "seed": seed},
    )
    return SyntheticSlide(slide, labels, _LABEL_DOWNSAMPLE, CLASS_NAMES, regions)


def _blow_up(small: np.ndarray, factor: int) -> np.ndarray:
    """Each pixel of ``small`` as a factor × factor block (one copy; np.repeat makes two)."""
    h, w = small.shape[:2]
    rest = small.shape[2:]
    blocks = np.broadcast_to(small[:, None, :, None], (h, factor, w, factor, *rest))
    return blocks.reshape(h * factor, w * factor, *rest)


def _add_nuclei(image: np.ndarray, labels: np.ndarray, downsample: int, mpp: float, rng) -> None:
    size = image.shape[0]
    area_mm2 = (size * mpp / 1000.0) ** 2
    count = int(max(_NUCLEI_PER_MM2) * area_mm2)
    ys = rng.integers(2, size - 3, count)
    xs = rng.integers(2, size - 3, count)
    density = np.asarray(_NUCLEI_PER_MM2, float) / max(_NUCLEI_PER_MM2)
    keep = rng.random(count) < density[labels[ys // downsample, xs // downsample]]
    ys, xs = ys[keep], xs[keep]
    radius = max(1, round(3.0 / mpp))  # nuclei about 6–7 µm across
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            if dy * dy + dx * dx <= radius * radius:
                yy = np.clip(ys + dy, 0, size - 1)
                xx = np.clip(xs + dx, 0, size - 1)
                image[yy, xx] = _NUCLEUS


# Renamed to the spelling of every other colour name in the API ("color").
__getattr__ = forward_names(
    __name__,
    {
        "BACKGROUND_COLOUR": "napari_conch.synthetic:BACKGROUND_COLOR",
        "CLASS_COLOURS": "napari_conch.synthetic:CLASS_COLORS",
    },
)
