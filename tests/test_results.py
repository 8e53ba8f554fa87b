"""What used to be worked out in the widget, now in the library: corrected labels measured
again, labels-only results, tiles inside drawn shapes and painted labels, one provenance
record, and error wordings that belong to their front end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import ColourModel

import napari_conch as nc
from napari_conch.provenance import Provenance

CLASSES = ["tumor", "stroma", "necrosis"]


@pytest.fixture(scope="module")
def made():
    synth = nc.synthetic_slide(size=1536, mpp=1.0, seed=8)
    model = ColourModel()
    grid = nc.tile_grid(synth.slide, model, tile_um=32, overlap=0.5)
    emb = nc.embed(synth.slide, model, grid, cache=None)
    seg = nc.zero_shot_segment(emb, model, [*CLASSES, "background"], background="background")
    return synth, model, emb, seg


def test_the_model_labels_measured_again_give_the_model_areas(made):
    *_, seg = made
    assert seg.with_labels(seg.labels).areas_mm2 == seg.areas_mm2
    assert seg.measure() == seg.areas_mm2


def test_painted_labels_are_measured(made):
    *_, _emb, seg = made
    painted = seg.labels.copy()
    necrosis = CLASSES.index("necrosis") + 1
    tumor = CLASSES.index("tumor") + 1
    was_necrosis = painted == necrosis
    painted[was_necrosis] = tumor  # the pathologist: that is tumour too
    fixed = seg.with_labels(painted)
    tissue = seg.cell_tissue_mm2
    rim = (seg.hidden_labels == necrosis) & (painted == 0)
    assert rim.any()  # half-tissue cells the model called necrosis, drawn unlabelled
    # painted away, rim included: the rim follows its repainted neighbours
    assert fixed.areas_mm2["necrosis"] == 0
    assert (fixed.hidden_labels[rim] != necrosis).all()
    next_to_tumor = rim & (fixed.hidden_labels == tumor)
    assert next_to_tumor.sum() > rim.sum() / 2
    moved = float(tissue[was_necrosis].sum())
    assert moved > 0.01
    assert fixed.areas_mm2["tumor"] == pytest.approx(
        seg.areas_mm2["tumor"] + moved + float(tissue[next_to_tumor].sum())
    )
    total, before = sum(fixed.areas_mm2.values()), sum(seg.areas_mm2.values())
    assert before - float(tissue[rim].sum()) - 1e-9 <= total <= before + 1e-9
    erased = seg.with_labels(np.where(was_necrosis, 0, seg.labels).astype(seg.labels.dtype))
    assert erased.areas_mm2["necrosis"] == 0  # erased, not repainted: gone, not moved
    grown = erased.areas_mm2["tumor"] - seg.areas_mm2["tumor"]  # only rim cells, at most
    assert -1e-9 <= grown <= float(tissue[rim].sum()) + 1e-9
    assert fixed.metadata["labels"] == "edited" and "labels" not in seg.metadata
    np.testing.assert_array_equal(seg.labels[was_necrosis], necrosis)  # the original is kept
    with pytest.raises(ValueError, match="map is"):
        seg.with_labels(painted[:-1])


def test_exported_areas_agree_with_the_exported_polygons_after_painting(made, tmp_path):
    """The GeoJSON of a corrected map measures the corrected polygons (QuPath shows both)."""
    from shapely.geometry import shape

    from napari_conch._napari.writer import write_labels

    *_, seg = made
    painted = seg.labels.copy()
    painted[painted == CLASSES.index("stroma") + 1] = CLASSES.index("necrosis") + 1
    meta = {"metadata": {"napari_conch": {"result": seg}}}
    (path,) = write_labels(str(tmp_path / "fixed.geojson"), painted, meta)
    collection = json.loads(Path(path).read_text(encoding="utf-8"))
    areas = {
        f["properties"]["name"]: f["properties"]["measurements"]["Tissue area µm^2"] / 1e6
        for f in collection["features"]
    }
    assert "stroma" not in areas  # painted over entirely, and no hidden stroma is drawn
    mpp = seg.metadata["grid"]["mpp"]
    for feature in collection["features"]:
        name = feature["properties"]["name"]
        polygon_mm2 = shape(feature["geometry"]).area * mpp**2 / 1e6
        # tissue area ≤ the polygons' area, and never the model's figure for the class
        assert areas[name] <= polygon_mm2 * (1 + 1e-6)
    expected = seg.with_labels(painted).areas_mm2
    assert areas["necrosis"] == pytest.approx(expected["necrosis"])
    assert areas["necrosis"] > seg.areas_mm2["necrosis"] + seg.areas_mm2["stroma"] * 0.9


def test_labels_only_results():
    labels = np.array([[0, 1, 1], [2, 2, 0]], np.uint8)
    seg = nc.SegmentationResult.from_labels(
        labels, ["tumor", "other"], scale_um=(10.0, 10.0), colors={"other": "#00ff00"}
    )
    assert seg.areas_mm2 == pytest.approx({"tumor": 2e-4, "other": 2e-4})
    assert seg.colors[2] == (0.0, 1.0, 0.0, 1.0)
    assert seg.colors[1] == nc.SegmentationResult.from_labels(labels, ["tumor"]).colors[1]
    assert np.isnan(seg.probabilities).all() and seg.tile_probabilities.shape == (0, 2)
    recorded = nc.SegmentationResult.from_labels(labels, ["tumor", "other"], areas_mm2={"tumor": 1})
    assert recorded.areas_mm2 == {"tumor": 1.0, "other": 0.0}
    with pytest.raises(ValueError, match="2-D"):
        nc.SegmentationResult.from_labels(labels[None], ["tumor"])


def test_a_result_without_a_grid_record_says_why_it_has_no_geojson(tmp_path):
    from napari_conch.export import to_geojson

    seg = nc.SegmentationResult.from_labels(np.ones((2, 2), np.uint8), ["tumor"])
    with pytest.raises(ValueError, match="tile grid"):
        to_geojson(seg, tmp_path / "x.geojson")


# -- tiles inside what the pathologist drew or painted ---------------------------------------


@pytest.fixture(scope="module")
def grid():
    slide = nc.Slide.from_array(np.full((400, 600, 3), 128, np.uint8), mpp=0.5)
    return nc.tile_grid(slide, ColourModel(), tile_um=20, tissue=False)  # 40 px tiles


def test_tiles_inside_polygons_and_ellipses(grid):
    from napari_conch.geometry import shape_polygon

    centres = grid.tile_centres_um()
    box = shape_polygon([(0, 0), (0, 100), (60, 100), (60, 0)], "rectangle")  # y, x in µm
    inside = grid.tiles_in_polygons([box])
    expected = (centres[:, 0] < 60) & (centres[:, 1] < 100)
    np.testing.assert_array_equal(inside, expected)
    ellipse = shape_polygon([(50, 50), (50, 250), (150, 250), (150, 50)], "ellipse")
    in_ellipse = grid.tiles_in_polygons([ellipse])
    d = ((centres[:, 0] - 100) / 50) ** 2 + ((centres[:, 1] - 150) / 100) ** 2
    np.testing.assert_array_equal(in_ellipse[np.abs(d - 1) > 0.05], (d < 1)[np.abs(d - 1) > 0.05])
    moved = grid.tiles_in_polygons([box], offset_um=(1000, 0))  # the layer moved away
    assert not moved.any()
    assert not grid.tiles_in_polygons([shape_polygon([(0, 0), (10, 10)], "path")]).any()


def test_tiles_on_painted_labels(grid):
    paint = np.zeros((20, 30), np.uint8)  # 10 µm pixels
    paint[:, 15:] = 3
    inside = grid.tiles_in_label_image(paint, scale_um=(10, 10), translate_um=(0, 0))
    centres = grid.tile_centres_um()
    np.testing.assert_array_equal(inside, centres[:, 1] >= 145)
    import dask.array as da

    lazy = grid.tiles_in_label_image(da.from_array(paint, chunks=8), (10, 10), (0, 0))
    np.testing.assert_array_equal(lazy, inside)


def test_processing_order_and_the_tile_at_a_point(grid):
    order = grid.processing_order(region=(0, 0, 25, 25))
    assert set(order[:4]) == set(grid.tiles_in_box_um((0, 0, 25, 25)))
    assert sorted(order) == list(range(len(grid)))
    assert len(grid.processing_order((0, 0, 25, 25), region_only=True)) == 4
    assert grid.tile_at_um(30.0, 50.0) == int(
        np.flatnonzero((grid.coords[:, 0] == 40) & (grid.coords[:, 1] == 80))[0]
    )
    with pytest.raises(ValueError, match="No tile covers"):
        grid.tile_at_um(-100.0, 0.0)


# -- provenance --------------------------------------------------------------------------------


def test_one_provenance_record_from_analysis_to_export_and_back(made, tmp_path):
    from napari_conch.export import export_all
    from napari_conch.readback import read_result_file

    *_, emb, seg = made
    record = seg.provenance
    assert isinstance(record, Provenance) and record.analysis == "zero_shot_segment"
    assert Provenance.from_metadata(seg.metadata).to_metadata() == seg.metadata
    assert record.grid == emb.grid.to_dict() and record.details["tiles_used"] == emb.n_done
    assert emb.metadata["model"]["embed_dim"] == ColourModel.embed_dim  # the cache's record
    written = export_all(seg, tmp_path, "case", emb=emb)
    summary = json.loads(written["summary"].read_text())
    assert {k: summary[k] for k in record.summary()} == record.summary()
    for kind in ("geojson", "ome-zarr", "ome-tiff"):
        (back, *_) = read_result_file(written[kind])
        assert back.provenance.summary() == record.summary(), kind
        assert back.metadata["source_file"] == str(written[kind])
    # what comes back can be exported again, placed where it was
    from napari_conch.export import to_geojson

    (again,) = read_result_file(written["ome-tiff"])
    assert again.metadata["grid"]["stride_px"] == emb.grid.stride_px
    to_geojson(again, tmp_path / "again.geojson")
    (twice,) = read_result_file(tmp_path / "again.geojson")
    np.testing.assert_array_equal(twice.labels, seg.labels)


def test_untrained_results_say_so_in_their_record():
    model = ColourModel()
    model.trained = False
    record = Provenance.of_analysis("retrieve", model)
    assert not record.trained and "UNTRAINED" in record.summary()["note"]


# -- errors: the library's words, the front ends' wording ----------------------------------


def test_the_library_holds_no_front_end_wording():
    from napari_conch import errors

    source = Path(errors.__file__).read_text(encoding="utf-8")
    assert "Model tab" not in source and "--" + "checkpoint" not in source
    exc = nc.MissingMppError("x.svs needs it: «mpp=0.25».")
    assert "pass mpp=0.25 to open_slide" in str(exc)
    assert "pass --mpp 0.25" in errors.describe(exc, "cli")
    assert "Slide tab's Pixel size field" in errors.describe(exc, "napari")


def test_another_front_end_brings_its_own_wording():
    from napari_conch import errors

    errors.register_wording("web", errors.Wording(set="fill in {words} with {bare}"))
    assert errors.describe(ValueError("plain"), "web") == "plain"
    exc = nc.CheckpointError("bad weights: «tile_um=224».")
    assert errors.describe(exc, "web") == "bad weights: fill in tile um with 224."
    with pytest.raises(ValueError, match="interface must be one of"):
        errors.describe(exc, "telegraph")


# -- small things the widget used to decide ------------------------------------------------


def test_retrieval_background_can_be_a_class_of_the_prompts(made):
    _, model, emb, _ = made
    prompts = nc.PromptSet({"tumor": ["tumor"], "background": ["background", "white space"]})
    everything = emb.n_done
    found = nc.retrieve(emb, model, "tumor", k=everything, background="background", prompts=prompts)
    direction = prompts.class_embeddings(model)[1]
    projected = emb.projected(model)
    query = model.encode_texts(["tumor"])[0]
    for hit in found:
        assert projected[hit.position] @ direction <= projected[hit.position] @ query
    assert 0 < len(found) < everything  # the glass was left out, not everything


def test_a_close_slide_call_says_so():
    call = nc.SlideCall("a", {"a": 0.3, "b": 0.29}, {"a": 0.52, "b": 0.48}, 5, {})
    assert call.margin == pytest.approx(0.04) and call.is_close
    assert not nc.SlideCall("a", {"a": 1.0}, {"a": 1.0}, 5, {}).is_close


def test_a_store_of_another_layout_version_is_refused(made, tmp_path):
    import zarr

    synth, model, emb, _ = made
    stored = nc.embed(synth.slide, model, emb.grid, cache=tmp_path)
    group = zarr.open_group(str(stored.store_path), mode="r+")
    group.attrs["napari_conch"] = 99
    with pytest.raises(nc.CacheError, match="layout version 99"):
        nc.Embeddings.open(stored.store_path)
