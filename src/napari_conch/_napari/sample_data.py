"""npe2 sample data: a real tissue image and a synthetic slide with known regions."""

from __future__ import annotations

from ..samples import IHC_SOURCE, ihc_slide
from .layers import MICROMETRE, show_scale_bar, slide_layer_data


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
