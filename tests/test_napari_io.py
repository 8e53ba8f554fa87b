"""napari reader and sample data, in a real viewer under Xvfb."""

from __future__ import annotations

import numpy as np
import pytest
from slides import pyramid, tissue_like, write_sparse_pyramid, write_svs

from napari_conch._napari.layers import scale_bar
from napari_conch._napari.reader import napari_get_reader
from napari_conch._napari.sample_data import IHC_MPP, ihc_sample, synthetic_sample


@pytest.fixture(scope="module")
def svs(tmp_path_factory):
    path = tmp_path_factory.mktemp("napari") / "case 01 (ü).svs"  # spaces and unicode
    levels = pyramid(tissue_like(2048, 3072, seed=4))
    write_svs(path, levels, mpp=0.2499, tile=256)
    return path, levels


def test_reader_layer_tuple_is_scaled_in_micrometres(svs):
    path, levels = svs
    reader = napari_get_reader(str(path))
    assert callable(reader)
    ((data, kwargs, kind),) = reader(str(path))
    assert kind == "image"
    assert isinstance(data, list) and [d.shape for d in data] == [lv.shape for lv in levels]
    assert kwargs["rgb"] and kwargs["multiscale"]
    assert kwargs["scale"] == (0.2499, 0.2499)
    assert kwargs["units"] == ("micrometer", "micrometer")
    assert kwargs["contrast_limits"] == (0, 255)
    assert kwargs["name"] == path.name


def test_reader_declines_what_it_cannot_open(tmp_path):
    (tmp_path / "a.txt").write_text("hello")
    (tmp_path / "b.svs").write_text("hello")
    assert napari_get_reader(str(tmp_path / "a.txt")) is None
    assert napari_get_reader(str(tmp_path / "b.svs")) is None
    assert napari_get_reader([str(tmp_path / "b.svs"), str(tmp_path / "a.txt")]) is None


def test_sample_data_tuples():
    ((ihc, ihc_kwargs, kind),) = ihc_sample()
    assert kind == "image" and ihc.shape == (512, 512, 3)
    assert ihc_kwargs["scale"] == (IHC_MPP, IHC_MPP)
    assert "scikit-image" in ihc_kwargs["metadata"]["source"]
    image, truth = synthetic_sample()
    assert "not real tissue" in image[1]["name"]
    labels, truth_kwargs, truth_kind = truth
    assert truth_kind == "labels" and labels.max() == 3
    # label cells are 8 px at 0.5 µm/px: 4 µm, centred on their pixels
    assert truth_kwargs["scale"] == (4.0, 4.0)
    assert truth_kwargs["translate"] == (1.75, 1.75)


@pytest.mark.gui
def test_viewer_opens_a_slide_with_the_plugin(make_napari_viewer, svs):
    path, _ = svs
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(path), plugin="napari-conch")
    assert layer.multiscale and layer.rgb
    assert tuple(layer.scale) == pytest.approx((0.2499, 0.2499))
    assert [str(u) for u in layer.units] == ["micrometer", "micrometer"]
    assert scale_bar(viewer).visible
    # The layer spans the slide in µm.
    extent = layer.extent.world
    assert extent[1][0] - extent[0][0] == pytest.approx(2048 * 0.2499, rel=0.01)


@pytest.mark.gui
def test_viewer_opens_both_samples(make_napari_viewer):
    viewer = make_napari_viewer()
    layers = viewer.open_sample("napari-conch", "synthetic")
    assert [type(layer).__name__ for layer in layers] == ["Image", "Labels"]
    image, truth = layers
    assert tuple(image.scale) == (0.5, 0.5)
    # The truth overlay lies on the image: same world extent.
    np.testing.assert_allclose(
        np.asarray(truth.extent.world), np.asarray(image.extent.world), atol=4.0
    )
    (ihc,) = viewer.open_sample("napari-conch", "ihc")
    assert tuple(ihc.scale) == (IHC_MPP, IHC_MPP)


@pytest.mark.gui
def test_huge_slide_in_napari_reads_only_visible_chunks(make_napari_viewer, tmp_path, qtbot):
    """A 100,000 × 100,000 px slide: napari shows it by reading a coarse level, and zooming
    in reads only level-0 tiles near the view — never a whole level."""
    path = tmp_path / "huge.tif"
    write_sparse_pyramid(path, size=100_000, tile=512, real_box=(49664, 49664, 50688, 50688))
    viewer = make_napari_viewer(show=True)
    (layer,) = viewer.open(str(path), plugin="napari-conch")
    slide = layer.metadata["napari_conch"]["slide"]
    readers = slide.readers
    qtbot.waitUntil(lambda: sum(r.segments_read for r in readers) > 0, timeout=10_000)
    qtbot.wait(200)
    assert readers[0].segments_read == 0 and readers[1].segments_read == 0
    coarse_tiles = sum(r.segments_read for r in readers[2:])
    assert 0 < coarse_tiles <= 4 * 4 + 13 * 13  # at most every tile of the two small levels

    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    camera.center = (50_176, 50_176)  # no µm/px in this file: world units are pixels
    camera.zoom = 1.0  # one screen pixel per level-0 pixel
    qtbot.waitUntil(lambda: readers[0].segments_read > 0, timeout=10_000)
    qtbot.wait(200)
    total_level0_tiles = (100_000 // 512 + 1) ** 2
    assert readers[0].segments_read <= 64 < total_level0_tiles
    assert readers[0].bytes_read <= 64 * 512 * 512 * 3
