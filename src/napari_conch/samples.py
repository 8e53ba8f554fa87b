"""Sample slides for demos and tutorials: a real tissue image and a synthetic slide whose
truth is known, each with the prompts that suit it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from .slide import Slide
    from .synthetic import SyntheticSlide

# Kept importable without the readers, so the command line can list the samples at once.
DEMO_SAMPLES = ("synthetic", "ihc")

# scikit-image's immunohistochemistry image (colonic glands, FHL2 DAB stain, hematoxylin
# counterstain; acquired at the Center for Microscopy And Molecular Imaging, no known
# copyright restrictions). Its pixel size is not published: 0.5 µm/px is our estimate from
# the size of nuclei (lymphocytes ≈ 7 µm ≈ 14 px) and of the crypt cross-sections.
IHC_MPP = 0.5
IHC_SOURCE = (
    "scikit-image data.immunohistochemistry(): colonic glands, IHC (DAB) with hematoxylin; "
    "CMMI; pixel size not published, 0.5 µm/px estimated from nuclear size"
)


def ihc_slide() -> Slide:
    """The IHC sample as a Slide (0.5 µm/px, estimated)."""
    from skimage import data

    from .slide import Slide

    return Slide.from_array(
        data.immunohistochemistry(),
        mpp=IHC_MPP,
        name="IHC colon (scikit-image)",
        metadata={"source": IHC_SOURCE, "mpp_estimated": True},
    )


@dataclass
class Sample:
    """A slide with the classes, background class and query a demo asks about it; ``truth``
    holds the planted regions when they are known."""

    name: str
    slide: Slide
    classes: dict[str, list[str]]
    background: str
    query: str
    truth: SyntheticSlide | None = None


def demo_sample(name: str) -> Sample:
    """``"synthetic"`` (planted tumour, stroma and necrosis; 2 × 2 mm) or ``"ihc"``."""
    if name == "synthetic":
        from .synthetic import synthetic_slide

        truth = synthetic_slide()
        return Sample(
            "synthetic",
            truth.slide,
            {
                "tumor": ["tumor", "carcinoma"],
                "stroma": ["stroma", "connective tissue"],
                "necrosis": ["necrosis", "necrotic debris"],
                "background": ["background", "white space"],
            },
            background="background",
            query="tumor",
            truth=truth,
        )
    if name == "ihc":
        return Sample(
            "ihc",
            ihc_slide(),
            {
                "colonic gland": ["colonic gland", "colon epithelium"],
                "stroma": ["stroma", "connective tissue"],
                "immune cells": ["immune cells", "lymphocytes"],
                "background": ["background", "white space"],
            },
            background="background",
            query="colonic gland",
        )
    raise ValueError(f"Unknown sample {name!r}; choose from {', '.join(DEMO_SAMPLES)}.")
