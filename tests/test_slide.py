"""open_slide on every supported layout: pyramid, µm/px, pixels at every level, laziness."""

from __future__ import annotations

import logging
import math
import pickle

import numpy as np
import pytest
import tifffile
from PIL import Image
from slides import (
    pyramid,
    tissue_like,
    write_ome_tiff,
    write_ome_zarr,
    write_sparse_pyramid,
    write_strip_pyramid,
    write_svs,
)

from napari_conch import MissingMppError, SlideReadError
from napari_conch.slide import Slide, open_slide

H, W = 1200, 1700


@pytest.fixture(scope="module")
def truth():
    return pyramid(tissue_like(H, W, seed=3))


@pytest.fixture(scope="module")
def files(tmp_path_factory, truth):
    d = tmp_path_factory.mktemp("slides")
    made = {}
    write_svs(d / "aperio.svs", truth, mpp=0.2525, tile=256)
    made["svs"] = (d / "aperio.svs", truth, 0.2525)
    write_ome_tiff(d / "multi.ome.tif", truth, mpp=0.5)
    made["ome-tiff"] = (d / "multi.ome.tif", truth, 0.5)
    write_ome_tiff(d / "nm.ome.tif", truth, mpp=500.0, unit="nm")
    made["ome-tiff-nm"] = (d / "nm.ome.tif", truth, 0.5)
    write_strip_pyramid(d / "strips.tif", truth, rows_per_strip=8, mpp=0.46)
    made["strips"] = (d / "strips.tif", truth, 0.46)
    write_ome_zarr(d / "image.ome.zarr", truth, mpp=0.5, version="0.4")
    made["ome-zarr-0.4"] = (d / "image.ome.zarr", truth, 0.5)
    write_ome_zarr(d / "v05.zarr", truth, mpp=0.25, version="0.5")
    made["ome-zarr-0.5"] = (d / "v05.zarr", truth, 0.25)
    Image.fromarray(truth[0]).save(d / "plain.png", dpi=(25400 / 0.5, 25400 / 0.5))
    made["png"] = (d / "plain.png", truth[:1], 0.5)
    tifffile.imwrite(d / "plain.tif", truth[0], photometric="rgb")
    made["plain-tiff"] = (d / "plain.tif", truth[:1], None)
    return made


FORMATS = [
    "svs",
    "ome-tiff",
    "ome-tiff-nm",
    "strips",
    "ome-zarr-0.4",
    "ome-zarr-0.5",
    "png",
    "plain-tiff",
]


@pytest.mark.parametrize("kind", FORMATS)
def test_levels_mpp_and_pixels_match_ground_truth(files, kind):
    path, levels, mpp = files[kind]
    slide = open_slide(path)
    assert len(slide.levels) == len(levels)
    assert slide.shape == levels[0].shape[:2]
    assert slide.mpp == (pytest.approx(mpp) if mpp else None)
    for i, expected in enumerate(levels):
        level = slide.levels[i]
        assert level.shape == expected.shape and level.dtype == np.uint8
        np.testing.assert_array_equal(level.compute(), expected)
        assert slide.downsamples[i] == pytest.approx(H / expected.shape[0], rel=0.01)


@pytest.mark.parametrize("kind", FORMATS)
def test_read_region_at_every_level(files, kind, rng):
    path, levels, _ = files[kind]
    slide = open_slide(path)
    for i, expected in enumerate(levels):
        fy = H / expected.shape[0]
        fx = W / expected.shape[1]
        h, w = expected.shape[:2]
        boxes = [(0, 0, min(h, 100), min(w, 130)), (h - 40, w - 50, 40, 50)]
        boxes += [
            (int(rng.integers(0, h - 20)), int(rng.integers(0, w - 20)), 20, 20) for _ in range(3)
        ]
        for ly, lx, bh, bw in boxes:
            # the first level-0 pixel inside level pixel (ly, lx); factors need not be integers
            y0, x0 = math.ceil(ly * fy - 1e-9), math.ceil(lx * fx - 1e-9)
            region = slide.read_region(y0, x0, bh, bw, level=i)
            np.testing.assert_array_equal(region, expected[ly : ly + bh, lx : lx + bw])
    # Beyond the edges: white padding, the inside still exact.
    region = slide.read_region(H - 10, W - 10, 30, 40)
    np.testing.assert_array_equal(region[:10, :10], levels[0][-10:, -10:])
    assert (region[10:] == 255).all() and (region[:, 10:] == 255).all()


@pytest.mark.parametrize("kind", ["svs", "ome-tiff", "strips", "ome-zarr-0.4"])
def test_chunks_are_whole_native_tiles_and_never_strips(files, kind):
    path, _, _ = files[kind]
    slide = open_slide(path)
    ch, cw = slide.levels[0].chunksize[:2]
    assert ch >= 256 and cw >= 256, "chunks must not be strip-shaped"
    tile = slide.metadata.get("tile_shape")
    if tile:
        assert ch % tile[0] == 0 and cw % tile[1] == 0
    if kind == "strips":
        assert slide.metadata["strip_rows"] == 8 and ch % 8 == 0


def test_svs_metadata(files):
    slide = open_slide(files["svs"][0])
    assert slide.metadata["vendor"] == "aperio"
    assert slide.metadata["objective_power"] == 40
    assert slide.metadata["mpp_source"] == "SVS MPP"
    assert slide.metadata["pyramid_source"] == "file"
    assert slide.metadata["origin_px"] == (0, 0)


def test_mpp_override_and_validation(files):
    path = files["svs"][0]
    assert open_slide(path, mpp=0.5).mpp == 0.5
    assert open_slide(path, mpp=0.5).metadata["mpp_source"] == "argument"
    for bad in (0, -0.25, 1e6, float("nan"), "fast"):
        with pytest.raises(ValueError, match="mpp"):
            open_slide(path, mpp=bad)


def test_missing_mpp_is_none_and_analyses_are_told_how_to_fix_it(files, caplog):
    with caplog.at_level(logging.WARNING, logger="napari_conch"):
        slide = open_slide(files["plain-tiff"][0])
    assert slide.mpp is None
    assert "records no µm/px" in caplog.text
    with pytest.raises(MissingMppError, match=r"pass mpp=0.25 to open_slide"):
        slide.require_mpp("tiling")
    with pytest.raises(MissingMppError):
        slide.level_for_mpp(0.5)


def test_level_for_mpp_picks_the_finest_level_not_coarser_than_asked(files):
    slide = open_slide(files["svs"][0])  # 0.2525, 1.01, 4.04 µm/px
    assert slide.level_for_mpp(0.5) == 0
    assert slide.level_for_mpp(1.0) == 1  # 1.01 is within rounding of 1.0
    assert slide.level_for_mpp(2.0) == 1
    assert slide.level_for_mpp(8.0) == 2
    assert slide.level_mpp(2) == pytest.approx(0.2525 * 16, rel=0.01)


def test_pickles_by_path(files):
    slide = open_slide(files["svs"][0], mpp=0.3)
    blob = pickle.dumps(slide)
    assert len(blob) < 1000
    again = pickle.loads(blob)
    assert again.mpp == 0.3 and again.path == slide.path
    np.testing.assert_array_equal(
        again.read_region(100, 100, 64, 64), slide.read_region(100, 100, 64, 64)
    )


def test_in_memory_slides_pickle_by_value():
    image = tissue_like(300, 400)
    slide = Slide.from_array(image, mpp=0.5, name="mem")
    again = pickle.loads(pickle.dumps(slide))
    np.testing.assert_array_equal(again.levels[0].compute(), image)


@pytest.mark.parametrize(
    "mode, make, message",
    [
        ("RGBA", lambda a: np.dstack([a, np.full(a.shape[:2], 128, np.uint8)]), "RGBA composited"),
        ("L", lambda a: a[:, :, 0], "grayscale repeated"),
    ],
)
def test_rgba_and_grayscale_png_become_rgb_with_a_log_line(
    tmp_path, truth, mode, make, message, caplog
):
    data = make(truth[0][:200, :300])
    Image.fromarray(data, mode=mode).save(tmp_path / "x.png")
    with caplog.at_level(logging.INFO, logger="napari_conch"):
        pixels = open_slide(tmp_path / "x.png").levels[0].compute()
    assert pixels.shape == (200, 300, 3) and pixels.dtype == np.uint8
    if mode == "L":
        np.testing.assert_array_equal(pixels, np.repeat(data[:, :, None], 3, axis=2))
    else:  # half-transparent over white
        expected = (data[:, :, :3].astype(int) * 128 + 255 * 127 + 127) // 255
        np.testing.assert_array_equal(pixels, expected)
    assert message in caplog.text


def test_sixteen_bit_is_scaled_to_eight_with_a_log_line(tmp_path, truth, caplog):
    data16 = truth[0].astype(np.uint16) * 257  # full 16-bit range
    tifffile.imwrite(tmp_path / "deep.tif", data16, photometric="rgb", tile=(256, 256))
    with caplog.at_level(logging.INFO, logger="napari_conch"):
        pixels = open_slide(tmp_path / "deep.tif").levels[0].compute()
    np.testing.assert_array_equal(pixels, truth[0])
    assert "uint16 pixels scaled to 8 bits" in caplog.text


def test_big_single_images_get_a_computed_pyramid(tmp_path):
    image = tissue_like(4608, 4608, seed=1)
    tifffile.imwrite(tmp_path / "big.tif", image, photometric="rgb", tile=(512, 512))
    slide = open_slide(tmp_path / "big.tif")
    assert slide.metadata["pyramid_source"] == "computed"
    assert [lv.shape[:2] for lv in slide.levels] == [(4608, 4608), (1152, 1152)]
    expected = pyramid(image, (1, 4))[1]
    got = slide.read_region(0, 0, 200, 300, level=1)
    assert np.abs(got.astype(int) - expected[:200, :300]).max() <= 1  # rounding of the mean


def test_huge_pyramid_reads_only_what_is_asked(tmp_path):
    """A 100,000 × 100,000 px pyramid: opening reads headers only, a region reads its tiles."""
    path = tmp_path / "huge.tif"
    truth = write_sparse_pyramid(
        path, size=100_000, tile=512, real_box=(49664, 49664, 50688, 50688)
    )
    slide = open_slide(path, mpp=0.25)
    assert slide.shape == (100_000, 100_000) and len(slide.levels) == 4
    assert all(r.segments_read == 0 for r in slide.readers), "open must not read pixels"
    region = slide.read_region(49664, 49664, 1024, 1024)
    _, real = truth[0]
    np.testing.assert_array_equal(region[:512, :512], real[(97, 97)])
    np.testing.assert_array_equal(region[512:, 512:], real[(98, 98)])
    level0 = slide.readers[0]
    assert level0.segments_read == 4
    assert level0.bytes_read == 4 * 512 * 512 * 3
    assert sum(r.segments_read for r in slide.readers[1:]) == 0
    # A never-written tile reads as background without touching the disk.
    blank = slide.read_region(10_000, 10_000, 512, 512)
    assert (blank == 255).all() and level0.bytes_read == 4 * 512 * 512 * 3


def test_close_releases_the_file(files):
    with open_slide(files["svs"][0]) as slide:
        slide.read_region(0, 0, 10, 10)
    with pytest.raises(SlideReadError):
        slide.read_region(600, 600, 10, 10)


def test_wide_strips_are_cut_into_columns_and_read_right(tmp_path):
    image = tissue_like(600, 5000, seed=2)
    tifffile.imwrite(tmp_path / "wide.tif", image, photometric="rgb", rowsperstrip=16)
    slide = open_slide(tmp_path / "wide.tif")
    assert slide.levels[0].chunksize[:2] == (512, 1024)
    np.testing.assert_array_equal(slide.levels[0].compute(), image)
    # each strip is decoded once and then served from the cache to the other columns
    assert slide.readers[0].segments_read == -(-600 // 16)


@pytest.mark.parametrize("kind", ["svs", "ome-tiff", "strips"])
def test_zarr_fallback_reads_the_same_pixels(files, kind, monkeypatch):
    from napari_conch.readers import tiff

    monkeypatch.setattr(tiff, "_fast_reader", lambda *args: None)
    path, levels, _ = files[kind]
    slide = open_slide(path)
    for i, expected in enumerate(levels):
        np.testing.assert_array_equal(slide.levels[i].compute(), expected)


def test_dask_levels_can_be_sent_to_other_processes(files):
    """Levels pickle (files reopen by path, arrays travel by value), so slide.levels work on
    a dask.distributed cluster."""
    path, levels, _ = files["svs"]
    slide = open_slide(path)
    again = pickle.loads(pickle.dumps(slide.levels[1]))
    np.testing.assert_array_equal(again.compute(), levels[1])
    big = Slide.from_array(tissue_like(4352, 4352, seed=5), mpp=0.5)
    assert big.metadata["pyramid_source"] == "computed"
    coarse = pickle.loads(pickle.dumps(big.levels[1]))
    np.testing.assert_array_equal(coarse.compute(), big.levels[1].compute())


def test_per_axis_downsamples_place_levels_exactly():
    """A level whose height and width shrink by slightly different factors (odd sizes
    rounded by the scanner): downsamples_yx holds each axis's factor, downsamples their
    mean, and reads at that level land where level 0 says."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (1001, 1503, 3), dtype=np.uint8)
    half = base[::2, ::2][:500, :751]  # 1001 → 500 rows (×2.002), 1503 → 751 columns (×2.0013)
    slide = Slide.from_array([base, half], mpp=0.5, name="odd")
    (fy0, fx0), (fy, fx) = slide.downsamples_yx
    assert (fy0, fx0) == (1.0, 1.0)
    assert fy == pytest.approx(1001 / 500) and fx == pytest.approx(1503 / 751)
    assert slide.downsamples[1] == pytest.approx((fy + fx) / 2)
    y, x = 900, 1400  # level-0 px: level 1 row floor(900 / fy), column floor(1400 / fx)
    got = slide.read_region(y, x, 4, 4, level=1)
    np.testing.assert_array_equal(
        got, half[int(y // fy) : int(y // fy) + 4, int(x // fx) : int(x // fx) + 4]
    )
