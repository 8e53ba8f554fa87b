"""napari reader and sample data, in a real viewer under Xvfb."""

from __future__ import annotations

import numpy as np
import pytest
from slides import pyramid, tissue_like, write_sparse_pyramid, write_svs

from napari_conch._napari.layers import scale_bar
from napari_conch._napari.reader import napari_get_reader
from napari_conch._napari.sample_data import ihc_sample, synthetic_sample
from napari_conch.samples import IHC_MPP


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


@pytest.mark.gui
def test_view_shows_saved_results_where_they_were_computed(make_napari_viewer, tmp_path):
    """`napari-conch view SLIDE --results DIR`: the slide written by the demo and the
    results read back from its exports land in the same µm frame as the originals."""
    import napari_conch as nc
    from napari_conch.export import export_all, slide_to_ome_tiff

    synth = nc.synthetic_slide(size=1024, seed=5)
    model = nc.load_model("colour-toy")
    grid = nc.tile_grid(synth.slide, model, tile_um=32, overlap=0.5)
    emb = nc.embed(synth.slide, model, grid, cache=None)
    seg = nc.zero_shot_segment(
        emb, model, ["tumor", "stroma", "necrosis", "background"], background="background"
    )
    sim = nc.similarity_map(emb, model, text="necrosis")
    export_all(seg, tmp_path, "case", emb=emb, similarities=[sim], formats=("ome-zarr",))
    slide_path = slide_to_ome_tiff(synth.slide, tmp_path / "case.ome.tif")

    viewer = make_napari_viewer()
    nc.view(str(slide_path), viewer=viewer, results=tmp_path, block=False)
    image = viewer.layers["case.ome.tif"]
    labels = viewer.layers["colour-toy labels"]
    heat = viewer.layers["colour-toy similarity"]
    assert tuple(image.scale) == pytest.approx((0.5, 0.5))
    np.testing.assert_array_equal(labels.data, seg.labels)
    assert tuple(labels.scale) == pytest.approx(seg.scale_um)
    assert tuple(labels.translate) == pytest.approx(seg.translate_um)
    assert list(labels.features["class"]) == ["none", "tumor", "stroma", "necrosis"]
    np.testing.assert_allclose(heat.data, sim.values, equal_nan=True)
    assert tuple(heat.translate) == pytest.approx(sim.translate_um)


@pytest.mark.gui
def test_our_exports_open_in_napari_as_labels_in_place(make_napari_viewer, tmp_path):
    """What we write, we read: each export opens through our reader as a Labels layer with
    class names, colours and the map's µm placement (not as an RGB slide)."""
    import napari_conch as nc
    from napari_conch.export import FORMATS, export_all

    synth = nc.synthetic_slide(size=1024, seed=2)
    model = nc.load_model("colour-toy")
    emb = nc.embed(synth.slide, model, nc.tile_grid(synth.slide, model, tile_um=32), cache=None)
    seg = nc.zero_shot_segment(
        emb, model, ["tumor", "stroma", "necrosis", "background"], background="background"
    )
    sim = nc.similarity_map(emb, model, text="stroma")
    written = export_all(seg, tmp_path, "case", emb=emb, similarities=[sim], formats=FORMATS)
    viewer = make_napari_viewer()
    for kind in ("ome-zarr", "ome-tiff", "geojson"):
        layers = viewer.open(str(written[kind]), plugin="napari-conch")
        (labels,) = [layer for layer in layers if type(layer).__name__ == "Labels"]
        np.testing.assert_array_equal(np.asarray(labels.data), seg.labels, err_msg=kind)
        assert list(labels.features["class"]) == ["none", "tumor", "stroma", "necrosis"]
        assert tuple(labels.scale) == pytest.approx(seg.scale_um)
        assert tuple(labels.translate) == pytest.approx(seg.translate_um)
        np.testing.assert_allclose(labels.colormap.map(1), seg.colors[1], atol=1 / 255)
        viewer.layers.clear()
    layers = viewer.open(str(written["ome-zarr"]), plugin="napari-conch")
    names = [layer.name for layer in layers]
    assert "colour-toy p(tumor)" in names and "colour-toy similarity: stroma" in names
    (heat,) = viewer.open(str(written["similarity"]), plugin="napari-conch")
    assert tuple(heat.contrast_limits) == pytest.approx(sim.contrast_limits)
