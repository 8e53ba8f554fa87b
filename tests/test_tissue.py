"""Tissue masks and the synthetic slide's ground truth."""

from __future__ import annotations

import numpy as np
import pytest

from napari_conch import Slide, synthetic_slide, tissue_mask


@pytest.fixture(scope="module")
def synth():
    return synthetic_slide(size=2048, mpp=0.5, seed=1)


def test_synthetic_slide_has_its_regions_where_it_says(synth):
    slide = synth.slide
    assert slide.mpp == 0.5 and slide.shape == (2048, 2048)
    assert slide.metadata["synthetic"] is True and "not real tissue" in slide.name
    assert len(slide.levels) == 2  # 2048 and 512
    for region in synth.regions_um:
        cy, cx = region["centre_um"]
        label = synth.label_at_um(cy, cx)
        if region["class"] == "stroma":  # the band holds a tumour nest; test off-centre
            label = synth.label_at_um(cy, cx - 0.8 * region["half_size_um"][1])
        assert synth.class_names[label - 1] == region["class"]
    assert synth.label_at_um(5, 5) == 0  # corner is background


def test_synthetic_colours_follow_the_labels(synth):
    pixels = synth.slide.levels[1].compute().astype(int)  # 4× downsampled, 512 px
    labels = synth.labels  # 8× downsampled: 256 px, as is the 2× reduced level 1
    small = pixels.reshape(256, 2, 256, 2, 3).mean((1, 3))
    means = [small[labels == k].mean(axis=0) for k in range(4)]
    assert means[0].min() > 230  # background is bright
    assert means[1][2] > means[1][1] + 40  # tumour is purple (blue ≫ green)
    assert np.linalg.norm(means[2] - means[3]) > 30  # stroma and necrosis differ


def test_tissue_mask_finds_the_planted_tissue(synth):
    mask = tissue_mask(synth.slide)
    assert mask.mask.dtype == bool and not mask.is_empty
    dy, dx = mask.downsample
    assert dy == dx == 16  # 8 µm/px at 0.5 µm/px
    truth = synth.labels.reshape(128, 2, 128, 2).max((1, 3)) > 0
    assert mask.mask.shape == truth.shape
    assert (mask.mask == truth).mean() > 0.95
    assert mask.scale_um == (8.0, 8.0)
    assert mask.translate_um == pytest.approx((3.75, 3.75))
    # tile-sized queries: inside the tumour vs the blank corner
    assert mask.fraction(400, 400, 224, 224) > 0.9
    assert mask.fraction(0, 0, 100, 100) == 0.0


def test_all_background_slide_gives_an_empty_mask():
    rng = np.random.default_rng(0)
    white = np.clip(rng.normal(245, 3, size=(1024, 1024, 3)), 0, 255).astype(np.uint8)
    mask = tissue_mask(Slide.from_array(white, mpp=0.5))
    assert mask.is_empty and mask.fraction_of_slide == 0.0


def test_mask_without_mpp_uses_pixel_defaults(synth):
    slide = Slide.from_array(synth.slide.levels[0], mpp=None)
    mask = tissue_mask(slide, max_side=512)
    assert mask.scale_um is None and mask.translate_um is None
    assert max(mask.mask.shape) <= 512
    assert 0.3 < mask.fraction_of_slide < 0.5


def test_a_field_full_of_tissue_is_all_tissue():
    """No background at all (a crop inside tissue): Otsu must not split the tissue in two."""
    from slides import tissue_like

    mask = tissue_mask(Slide.from_array(tissue_like(2048, 2048, seed=3), mpp=0.5))
    assert mask.fraction_of_slide > 0.98
