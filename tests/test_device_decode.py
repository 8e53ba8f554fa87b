"""decode="device": a batch's JPEG tiles decoded in one call on the model's device (nvJPEG on
CUDA, torchvision's libjpeg-turbo on the CPU, which is what runs here), model tiles cut from
them there — the same pixels as the exact CPU path, edges and gaps included."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from slides import pyramid, tissue_like, write_rgb_jpeg_tiff, write_svs

import napari_conch as nc
from napari_conch import device_decode
from napari_conch.decoding import decode_plan
from napari_conch.device_decode import DeviceTileReader, device_tile_reader


@pytest.fixture(scope="module")
def jpeg_svs(tmp_path_factory):
    # 1000 px: not a multiple of the 256-px JPEG tiles, so the last row and column are partial
    path = tmp_path_factory.mktemp("device") / "scan.svs"
    write_svs(path, pyramid(tissue_like(1000, 1000, seed=7), (1, 4)), mpp=0.25, compression="jpeg")
    return path


def _exact(slide, coords, size, level=0):
    return np.stack([slide.read_region(int(y), int(x), size, size, level=level) for y, x in coords])


def _as_hwc(batch: torch.Tensor) -> np.ndarray:
    assert batch.dtype == torch.uint8 and batch.shape[1] == 3
    return batch.permute(0, 2, 3, 1).cpu().numpy()


def test_device_tiles_are_the_exact_paths_pixels_inside_at_edges_and_outside(jpeg_svs):
    slide = nc.open_slide(jpeg_svs)
    assert slide.jpeg_tile_shape(0) == (256, 256)
    # inside, straddling JPEG tiles, over the partial last tiles, half and wholly outside
    coords = np.array([[0, 0], [130, 300], [700, 700], [-100, 900], [1200, 0], [900, -50]])
    reader = DeviceTileReader(slide, 0, 300, "cpu")
    ours = _as_hwc(reader.read(coords))
    exact = _exact(slide, coords, 300)
    assert ours.shape == exact.shape == (6, 300, 300, 3)
    # two builds of libjpeg-turbo: the same decode up to rounding of one level at most
    assert np.abs(ours.astype(int) - exact).max() <= 1
    assert (ours[4] == 255).all()  # wholly outside: white, as read_region
    assert (ours[3][:100] == 255).all() and (ours[3][:, 100:] == 255).all()
    assert reader.agreement()["max"] <= 1


def test_coarser_levels_and_unwritten_tiles(jpeg_svs, monkeypatch):
    slide = nc.open_slide(jpeg_svs)
    coords = np.array([[0, 0], [400, 400]])  # level-0 corners of 200-px reads of level 1
    reader = DeviceTileReader(slide, 1, 200, "cpu")
    ours = _as_hwc(reader.read(coords))
    assert np.abs(ours.astype(int) - _exact(slide, coords, 200, level=1)).max() <= 1
    # a tile the file never wrote reads as white, as on the CPU path
    real = slide.jpeg_tile
    monkeypatch.setattr(
        slide, "jpeg_tile", lambda level, r, c: None if (r, c) == (0, 0) else real(level, r, c)
    )
    gap = _as_hwc(DeviceTileReader(slide, 0, 300, "cpu").read(np.array([[0, 0]])))[0]
    assert (gap[:256, :256] == 255).all() and (gap[256:, :] != 255).any()


def test_rgb_coded_jpeg_keeps_its_colours(tmp_path):
    image = tissue_like(512, 512, seed=5)
    path = tmp_path / "rgb.tif"
    write_rgb_jpeg_tiff(path, image)
    slide = nc.open_slide(path, mpp=0.25)
    reader = device_tile_reader(slide, 0, 512, "cpu")
    assert reader is not None
    ours = _as_hwc(reader.read(np.array([[0, 0]])))
    assert np.abs(ours.astype(int) - _exact(slide, [(0, 0)], 512)).max() <= 1


def test_levels_without_plain_jpeg_tiles_fall_back_to_the_cpu(tmp_path, caplog):
    path = tmp_path / "zlib.svs"
    write_svs(path, [tissue_like(512, 512, seed=5)], mpp=0.25, compression="zlib")
    slide = nc.open_slide(path)
    assert slide.jpeg_tile_shape(0) is None
    with pytest.raises(ValueError, match="does not store JPEG tiles"):
        slide.jpeg_tile(0, 0, 0)
    with pytest.raises(ValueError, match="tiles that can be decoded on"):
        DeviceTileReader(slide, 0, 256, "cpu")
    model = nc.load_model("colour-toy")
    grid = nc.tile_grid(slide, model, tissue=False)
    with caplog.at_level(logging.INFO, logger="napari_conch.device_decode"):
        plan = decode_plan(slide, grid, model, "device")
    assert plan.device_reader is None and "decoding on the CPU instead" in caplog.text


def test_a_decoder_that_disagrees_is_not_used(jpeg_svs, monkeypatch, caplog):
    monkeypatch.setattr(device_decode, "_AGREEMENT_MEAN_LEVELS", -1.0)
    slide = nc.open_slide(jpeg_svs)
    with caplog.at_level(logging.WARNING, logger="napari_conch.device_decode"):
        assert device_tile_reader(slide, 0, 256, "cpu") is None
    assert "differ from the CPU's" in caplog.text


def test_the_engine_decodes_on_the_device_on_request(tmp_path):
    path = tmp_path / "one-level.svs"
    write_svs(path, [tissue_like(1000, 1000, seed=6)], mpp=0.25, compression="jpeg")
    slide = nc.open_slide(path)
    model = nc.load_model("colour-toy")  # 64 px at 1 µm/px: 256-px reads of a 0.25 slide
    grid = nc.tile_grid(slide, model, tissue=False, overlap=0.5)
    device = nc.embed(slide, model, grid, cache=tmp_path / "cache", decode="device", batch_size=7)
    exact = nc.embed(slide, model, grid, cache=tmp_path / "cache", decode="exact")
    assert device.complete and device.store_path != exact.store_path  # cached apart
    assert device.metadata["decode"].startswith("JPEG in full on cpu")
    np.testing.assert_allclose(device.features, exact.features, atol=1e-3)
    again = nc.embed(slide, model, grid, cache=tmp_path / "cache", decode="device")
    assert again.store_path == device.store_path
    np.testing.assert_array_equal(again.features, device.features)
    memory = nc.embed(slide, model, grid, cache=None, decode="device", batch_size=7)
    assert memory.metadata["decode"] == device.metadata["decode"]
    np.testing.assert_array_equal(memory.features, device.features)


def test_a_torch_model_takes_device_batches_and_resizes_them_itself(jpeg_svs, tiny_model):
    slide = nc.open_slide(jpeg_svs)
    grid = nc.tile_grid(slide, tiny_model, tissue=False)
    assert grid.read_px > tiny_model.input_size  # the model resizes the decoded tiles
    device = nc.embed(slide, tiny_model, grid, cache=None, decode="device")
    exact = nc.embed(slide, tiny_model, grid, cache=None, decode="exact")
    assert device.complete and device.metadata["decode"] != exact.metadata.get("decode")
    np.testing.assert_allclose(device.features, exact.features, atol=1e-3)


def test_the_command_line_chooses_the_decoding(tmp_path):
    from napari_conch.cli import main

    jpeg_svs = tmp_path / "one-level.svs"  # no 1 µm/px level: the colour toy reads 1/4 size
    write_svs(jpeg_svs, [tissue_like(1024, 1024, seed=6)], mpp=0.25, compression="jpeg")
    tmp_path = tmp_path / "cache"
    for flags in (["--decode", "device"], ["--exact-decode"], []):
        argv = ["embed", str(jpeg_svs), "--model", "colour-toy", "--cache", str(tmp_path)]
        assert main([*argv, *flags]) == 0
    decodes = sorted(
        str(nc.Embeddings.open(path).metadata.get("decode")) for path in tmp_path.rglob("*.zarr")
    )
    assert len(decodes) == 3  # three decodings, three stores
    assert any(d.startswith("JPEG in full on cpu") for d in decodes)
    assert any(d.startswith("JPEG at 1/4 size") for d in decodes)
    assert "None" in decodes  # the exact path's store is the one made before decode existed
    with pytest.raises(SystemExit):
        main(["embed", str(jpeg_svs), "--exact-decode", "--decode", "device"])


def test_the_agreement_check_looks_at_tissue_not_at_blank_glass(tmp_path, monkeypatch, caplog):
    image = np.full((1024, 1024, 3), 255, np.uint8)  # glass, tissue only in one corner
    image[640:, 640:] = tissue_like(384, 384, seed=9)
    path = tmp_path / "corner.svs"
    write_svs(path, [image], mpp=0.25, compression="jpeg")
    slide = nc.open_slide(path)
    assert DeviceTileReader(slide, 0, 256, "cpu").agreement()["max"] <= 1
    # a decoder that swaps red and blue: invisible on white glass, plain on tissue
    real = DeviceTileReader._decode
    monkeypatch.setattr(
        DeviceTileReader,
        "_decode",
        lambda self, *args: {k: t.flip(0) for k, t in real(self, *args).items()},
    )
    with caplog.at_level(logging.WARNING, logger="napari_conch.device_decode"):
        assert device_tile_reader(slide, 0, 256, "cpu") is None
    assert "differ from the CPU's" in caplog.text


def test_a_tile_the_decoder_cannot_read_names_the_slide_and_the_tile(jpeg_svs, monkeypatch):
    slide = nc.open_slide(jpeg_svs)
    reader = DeviceTileReader(slide, 0, 300, "cpu")
    real = slide.jpeg_tile
    monkeypatch.setattr(
        slide,
        "jpeg_tile",
        lambda level, r, c: b"\xff\xd8not a jpeg" if (r, c) == (1, 1) else real(level, r, c),
    )
    with pytest.raises(nc.SlideReadError, match=r"(?s)scan\.svs level 0 .*decode='fast'"):
        reader.read(np.array([[200, 200]]))
    assert reader.read(np.array([[600, 600]])).shape == (1, 3, 300, 300)  # others still read


def test_devices_torchvision_cannot_decode_on_fall_back_to_the_cpu(jpeg_svs, caplog):
    slide = nc.open_slide(jpeg_svs)
    with caplog.at_level(logging.INFO, logger="napari_conch.device_decode"):
        assert device_tile_reader(slide, 0, 256, "mps") is None
    assert "not on mps" in caplog.text
