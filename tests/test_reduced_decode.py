"""JPEG tiles decoded 2–8× smaller in the DCT domain when the model reads a coarser
resolution than the file stores, and the exact path behind decode="exact"."""

from __future__ import annotations

import numpy as np
import pytest
from slides import pyramid, tissue_like, write_rgb_jpeg_tiff, write_svs

import napari_conch as nc
from napari_conch.decoding import decode_reduction


@pytest.fixture(scope="module")
def jpeg_svs(tmp_path_factory):
    path = tmp_path_factory.mktemp("jpeg") / "scan.svs"
    write_svs(path, pyramid(tissue_like(2048, 2048, seed=4), (1, 4)), mpp=0.25, compression="jpeg")
    return path


def _box(image: np.ndarray, f: int) -> np.ndarray:
    h, w = image.shape[0] // f, image.shape[1] // f
    return image[: h * f, : w * f].reshape(h, f, w, f, 3).mean(axis=(1, 3))


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_a_reduced_read_is_the_region_decoded_smaller(jpeg_svs, factor):
    slide = nc.open_slide(jpeg_svs)
    assert slide.reduced_factors(0) == (2, 4, 8)
    full = slide.read_region(320, 448, 512, 512)
    small = slide.read_region(320, 448, 512, 512, reduce=factor)
    assert small.shape == (512 // factor, 512 // factor, 3) and small.dtype == np.uint8
    diff = np.abs(small - _box(full, factor))
    assert diff.mean() < 4  # the decoder's low-pass, not another place or colour
    assert diff.max() < 64


def test_reduced_reads_pad_with_white_outside_and_refuse_other_factors(jpeg_svs):
    slide = nc.open_slide(jpeg_svs)
    edge = slide.read_region(2048 - 128, 2048 - 128, 512, 512, reduce=2)
    assert edge.shape == (256, 256, 3)
    assert (edge[64:, :] == 255).all() and (edge[:, 64:] == 255).all()
    assert (edge[:64, :64] != 255).any()
    with pytest.raises(ValueError, match="1/3 size"):
        slide.read_region(0, 0, 300, 300, reduce=3)


def test_only_jpeg_tiles_offer_it_and_rgb_coded_jpeg_keeps_its_colours(tmp_path):
    image = tissue_like(512, 512, seed=5)
    write_svs(tmp_path / "zlib.svs", [image], mpp=0.25, compression="zlib")
    assert nc.open_slide(tmp_path / "zlib.svs").reduced_factors(0) == ()
    path = tmp_path / "rgb.tif"
    write_rgb_jpeg_tiff(path, image)
    slide = nc.open_slide(path, mpp=0.25)
    assert slide.reduced_factors(0) == (2, 4, 8)
    small = slide.read_region(0, 0, 512, 512, reduce=2)
    np.testing.assert_allclose(small.mean(axis=(0, 1)), _box(image, 2).mean(axis=(0, 1)), atol=2)


def test_the_engine_decodes_smaller_by_default_and_exactly_on_request(tmp_path):
    path = tmp_path / "one-level.svs"
    write_svs(path, [tissue_like(1024, 1024, seed=6)], mpp=0.25, compression="jpeg")
    slide = nc.open_slide(path)
    model = nc.load_model("colour-toy")  # 64 px at 1 µm/px: 256-px reads of a 0.25 slide
    grid = nc.tile_grid(slide, model, tissue=False)
    assert grid.read_px == 256
    assert decode_reduction(slide, grid, model) == 4
    assert decode_reduction(slide, grid, model, "exact") == 1
    with pytest.raises(ValueError, match="decode must be"):
        decode_reduction(slide, grid, model, "quick")
    fast = nc.embed(slide, model, grid, cache=tmp_path / "cache")
    exact = nc.embed(slide, model, grid, cache=tmp_path / "cache", decode="exact")
    assert fast.store_path != exact.store_path  # other pixels: cached apart
    assert fast.metadata["decode"].startswith("JPEG at 1/4") and "decode" not in exact.metadata
    np.testing.assert_allclose(fast.features, exact.features, atol=0.05)
    seg = nc.zero_shot_segment(fast, model, ["tumor", "stroma", "necrosis"])
    assert seg.metadata["decode"] == fast.metadata["decode"]  # in every export's provenance
    memory = nc.embed(slide, model, grid, cache=None)
    assert memory.metadata["decode"] == fast.metadata["decode"]
