"""npe2 sample data: a real tissue image and a synthetic slide with known regions."""

from __future__ import annotations

from ..slide import Slide
from .layers import MICROMETRE, show_scale_bar, slide_layer_data

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

    return Slide.from_array(
        data.immunohistochemistry(),
        mpp=IHC_MPP,
        name="IHC colon (scikit-image)",
        metadata={"source": IHC_SOURCE, "mpp_estimated": True},
    )


def ihc_sample():
    slide = ihc_slide()
    show_scale_bar()
    data, kwargs, kind = slide_layer_data(slide)
    kwargs["metadata"]["source"] = IHC_SOURCE
    return [(data, kwargs, kind)]


def synthetic_sample():
    from ..synthetic import synthetic_slide

    synth = synthetic_slide()
    slide = synth.slide
    show_scale_bar()
    image = slide_layer_data(slide)
    step = synth.labels_downsample * slide.mpp
    truth_kwargs = {
        "name": "synthetic ground truth",
        "scale": (step, step),
        "translate": ((synth.labels_downsample - 1) / 2 * slide.mpp,) * 2,
        "units": (MICROMETRE, MICROMETRE),
        "opacity": 0.35,
        "visible": False,
        "features": {"class": ["background", *synth.class_names]},
    }
    return [image, (synth.labels, truth_kwargs, "labels")]
