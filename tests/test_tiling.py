"""Tile grids: geometry invariants (property-based), tissue filtering, level choice."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_conch import MissingMppError, Slide, synthetic_slide, tile_grid
from napari_conch.tissue import TissueMask


def _lazy_slide(shape, mpp, downsamples=(1,)):
    """A slide of the given geometry whose pixels are never read (dask zeros)."""
    levels = [
        da.zeros((max(1, shape[0] // d), max(1, shape[1] // d), 3), dtype=np.uint8, chunks=512)
        for d in downsamples
    ]
    return Slide.from_array(levels, mpp=mpp)


geometry = st.fixed_dictionaries(
    {
        "H": st.integers(40, 6000),
        "W": st.integers(40, 6000),
        "mpp": st.floats(0.2, 1.0),
        "tile_um": st.floats(20, 400),
        "overlap": st.sampled_from([0.0, 0.25, 0.5, 0.75]) | st.floats(0, 0.9),
    }
)


@settings(max_examples=60, deadline=None)
@given(geometry)
def test_tiles_start_inside_respect_the_stride_and_cover_the_slide(g):
    if g["tile_um"] / g["mpp"] < 16:
        return  # refused (tested below)
    slide = _lazy_slide((g["H"], g["W"]), g["mpp"])
    grid = tile_grid(
        slide,
        None,
        tile_um=g["tile_um"],
        overlap=g["overlap"],
        tissue=False,
        target_mpp=0.5,
        input_size=224,
    )
    c = grid.coords
    assert len(grid) == grid.shape[0] * grid.shape[1]
    # inside: every tile starts on the slide
    assert (c >= 0).all() and (c[:, 0] < g["H"]).all() and (c[:, 1] < g["W"]).all()
    # stride: neighbours are exactly one stride apart, and the stride is what was asked
    ys, xs = np.unique(c[:, 0]), np.unique(c[:, 1])
    assert (np.diff(ys) == grid.stride_px).all() and (np.diff(xs) == grid.stride_px).all()
    assert abs(grid.stride_px - g["tile_um"] * (1 - g["overlap"]) / g["mpp"]) <= 1
    assert abs(grid.tile_px - g["tile_um"] / g["mpp"]) <= 0.5
    # coverage: no gaps, and the last tiles reach the far edges
    assert grid.stride_px <= grid.tile_px
    assert ys[0] == 0 and xs[0] == 0
    assert ys[-1] + grid.tile_px >= g["H"] and xs[-1] + grid.tile_px >= g["W"]
    # and not one row or column more than needed
    assert len(ys) == 1 or ys[-2] + grid.tile_px < g["H"]
    # partial tiles are exactly those reaching past an edge
    ends = c + grid.tile_px
    np.testing.assert_array_equal(grid.partial, (ends[:, 0] > g["H"]) | (ends[:, 1] > g["W"]))


@settings(max_examples=40, deadline=None)
@given(
    st.integers(64, 1500),
    st.integers(64, 1500),
    st.integers(1, 40),
    st.sampled_from([0.0, 0.5, 0.75]),
    st.integers(0, 2**32 - 1),
)
def test_every_tissue_pixel_is_covered_by_a_kept_tile(H, W, tile_px, overlap, seed):
    rng = np.random.default_rng(seed)
    down = 8
    mask = rng.random((H // down + 1, W // down + 1)) < 0.05
    tissue = TissueMask(mask, (down, down), 1.0, 0.1)
    slide = _lazy_slide((H, W), 1.0)
    tile = max(16, tile_px * 8)
    grid = tile_grid(
        slide,
        None,
        tile_um=tile,
        overlap=overlap,
        tissue=tissue,
        min_tissue=0.0,
        target_mpp=1.0,
        input_size=tile,
    )
    covered = np.zeros_like(mask)
    for y, x in grid.coords:
        covered[
            y // down : -(-(y + grid.tile_px) // down), x // down : -(-(x + grid.tile_px) // down)
        ] = True
    inside = np.zeros_like(mask)
    inside[: -(-H // down), : -(-W // down)] = True
    assert not (mask & inside & ~covered).any()
    assert (grid.tissue_fraction > 0).all()


@settings(max_examples=50, deadline=None)
@given(
    st.floats(0.1, 1.0),
    st.lists(st.sampled_from([2, 3, 4, 4.0003, 8, 16, 32]), min_size=0, max_size=4, unique=True),
    st.floats(0.05, 20),
)
def test_level_choice_is_the_coarsest_not_coarser_than_asked(mpp, factors, target):
    downsamples = [1, *sorted(factors)]
    shape = (64000, 64000)
    slide = _lazy_slide(shape, mpp, [round(d) if d == int(d) else d for d in downsamples])
    level = slide.level_for_mpp(target)
    level_mpps = [mpp * d for d in slide.downsamples]
    assert level_mpps[level] <= target * 1.01 or level == 0
    finer_ok = [i for i, m in enumerate(level_mpps) if m <= target * 1.01]
    assert level == (max(finer_ok) if finer_ok else 0)


def _lazy_levels_shapes(slide):
    return [lv.shape for lv in slide.levels]


def test_defaults_come_from_the_model(tiny_model):
    slide = _lazy_slide((5000, 7000), 0.25, (1, 4, 16))
    grid = tile_grid(slide, tiny_model, tissue=False)
    assert grid.tile_px == 896 and grid.stride_px == 896  # 448 px at 0.5 µm/px
    assert grid.tile_um == pytest.approx(224.0) and grid.level == 0 and grid.read_px == 896
    coarse = tile_grid(slide, tiny_model, tissue=False, target_mpp=1.0)
    assert coarse.level == 1 and coarse.read_px == 448 and coarse.tile_px == 1792
    assert grid.cell_scale_um == (224.0, 224.0)
    assert grid.cell_translate_um == pytest.approx((447.5 * 0.25, 447.5 * 0.25))


def test_tiles_too_small_for_the_models_input_are_warned_about(tiny_model, caplog):
    slide = _lazy_slide((5000, 7000), 0.25, (1, 4, 16))
    with caplog.at_level("WARNING", logger="napari_conch.tiling"):
        tile_grid(slide, tiny_model, tissue=False)  # 224 µm: read 896 px, shrunk to 448
        tile_grid(slide, tiny_model, tissue=False, tile_um=56)  # 224 px → 448: twice, fine
    assert not caplog.records
    with caplog.at_level("WARNING", logger="napari_conch.tiling"):
        grid = tile_grid(slide, tiny_model, tissue=False, tile_um=8)  # 32 px → 448
    assert grid.read_px == 32
    assert "enlarged 14.0×" in caplog.text and "224 µm tiles at 0.5 µm/px" in caplog.text


def test_tissue_filter_keeps_tissue_tiles():
    synth = synthetic_slide(size=2048, seed=2)
    slide = synth.slide
    grid = tile_grid(slide, None, tissue=True, target_mpp=0.5, input_size=224)  # 112 µm tiles
    everything = tile_grid(slide, None, tissue=False, target_mpp=0.5, input_size=224)
    assert 0 < len(grid) < len(everything)
    assert (grid.tissue_fraction >= 0.1).all()
    # a tile in the blank top-left corner is not kept; one in the tumour is
    kept = {tuple(c) for c in grid.coords}
    assert (0, 0) not in kept
    tumour_y, tumour_x = (v / 0.5 for v in synth.regions_um[1]["centre_um"])
    assert any(
        y <= tumour_y < y + grid.tile_px and x <= tumour_x < x + grid.tile_px for y, x in kept
    )


def test_box_queries_and_signature():
    slide = _lazy_slide((2000, 3000), 0.5)
    grid = tile_grid(slide, None, tile_um=100, tissue=False, target_mpp=0.5, input_size=200)
    hits = grid.tiles_in_box_um((0, 0, 50, 50))
    assert list(map(tuple, grid.coords[hits])) == [(0, 0)]
    assert len(grid.tiles_in_box_um((0, 0, 101, 101))) == 4
    other = tile_grid(
        slide, None, tile_um=100, overlap=0.5, tissue=False, target_mpp=0.5, input_size=200
    )
    assert grid.signature() != other.signature()
    same = tile_grid(slide, None, tile_um=100, tissue=False, target_mpp=0.5, input_size=200)
    assert grid.signature() == same.signature()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"tile_um": -5}, "positive"),
        ({"tile_um": 100, "stride_um": 150}, "at most tile_um"),
        ({"tile_um": 100, "overlap": 1.0}, r"\[0, 1\)"),
        ({"tile_um": 100, "overlap": 0.5, "stride_um": 50}, "not both"),
        ({"tile_um": 3}, "only 6 px"),
        ({"tile_um": 100, "min_tissue": 2}, "min_tissue"),
    ],
)
def test_bad_geometry_is_refused(kwargs, match):
    slide = _lazy_slide((2000, 2000), 0.5)
    with pytest.raises(ValueError, match=match):
        tile_grid(slide, None, tissue=False, target_mpp=0.5, input_size=200, **kwargs)


def test_tiling_needs_mpp():
    slide = Slide.from_array(np.zeros((500, 500, 3), np.uint8))
    with pytest.raises(MissingMppError, match="tiling"):
        tile_grid(slide, None, target_mpp=0.5, input_size=224)
