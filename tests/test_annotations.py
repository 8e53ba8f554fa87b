"""Annotations in: QuPath's GeoJSON in its several shapes, our own exports, napari Shapes
and Labels layers — polygons where they were drawn, class names kept, and clear errors for
what is not annotations."""

from __future__ import annotations

import json

import numpy as np
import pytest
from shapely import box

import napari_conch as nc
from napari_conch.annotations import Annotations, Region


def _feature(geometry, classification=None, kind="annotation"):
    properties = {"objectType": kind}
    if classification is not None:
        properties["classification"] = classification
    return {"type": "Feature", "geometry": geometry, "properties": properties}


def _square(x0, y0, x1, y1):
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


QUPATH = {
    "type": "FeatureCollection",
    "features": [
        _feature(
            {"type": "Polygon", "coordinates": [_square(0, 0, 100, 100)]},
            {"name": "Tumor", "color": [200, 0, 0]},
        ),
        # a ring: MultiPolygon with a hole, QuPath 0.2's packed colorRGB
        _feature(
            {
                "type": "MultiPolygon",
                "coordinates": [
                    [_square(200, 200, 400, 400), _square(250, 250, 350, 350)],
                    [_square(500, 0, 600, 100)],
                ],
            },
            {"name": "Stroma", "colorRGB": -16711936},
            kind="detection",
        ),
        _feature({"type": "Polygon", "coordinates": [_square(0, 0, 50, 50)]}),  # unclassified
        _feature({"type": "Polygon", "coordinates": [_square(0, 0, 60, 60)]}, {"name": "Ignore*"}),
        _feature({"type": "Point", "coordinates": [5, 5]}, {"name": "Tumor"}),
    ],
}


def test_qupath_geojson_in_every_shape_it_comes_in(tmp_path):
    path = tmp_path / "qupath.geojson"
    path.write_text(json.dumps(QUPATH), encoding="utf-8")
    for source in (path, QUPATH, QUPATH["features"]):
        annotations = nc.read_annotations(source)
        assert annotations.class_names == ["Tumor", "Stroma"]
        assert annotations.skipped == {"unclassified": 1, "points": 1}
        assert [r.kind for r in annotations.regions] == ["annotation", "detection", "annotation"]
        assert annotations.regions[2].ignored
        ring = annotations.regions[1].polygon
        assert ring.area == pytest.approx(200 * 200 - 100 * 100 + 100 * 100)  # hole kept
        assert annotations.colors["Tumor"][:3] == pytest.approx((200 / 255, 0, 0))
        assert annotations.colors["Stroma"][:3] == pytest.approx((0, 1, 0))
    single = nc.read_annotations(QUPATH["features"][0])
    assert single.class_names == ["Tumor"]
    assert nc.read_annotations(path).source == "qupath.geojson"


def test_areas_and_cell_fractions_are_measured_where_drawn():
    annotations = nc.read_annotations(QUPATH)
    with pytest.raises(ValueError, match="need the slide's µm/px"):
        annotations.area_um2()
    annotations.mpp = 0.5
    assert annotations.area_um2()["Stroma"] == pytest.approx((40000 - 10000 + 10000) * 0.25)
    fractions, ignored = annotations.cell_fractions((8, 8), 100.0)
    assert fractions.shape == (2, 8, 8)
    assert fractions[0, 0, 0] == 1.0 and fractions[0, 0, 1] == 0.0
    assert fractions[1, 2, 2] == pytest.approx(0.75)  # a quarter of this cell is the hole
    assert fractions[1, 0, 5] == 1.0
    assert ignored[0, 0] == 0.25  # 0–60 px of a 100 px cell: 2 of its 4 × 4 sample points a side


def test_our_own_export_reads_as_annotations_placed_on_its_slide(tmp_path):
    from napari_conch.export import to_geojson

    synth = nc.synthetic_slide(size=1024, mpp=1.0, seed=1)
    model = nc.load_model("colour-toy")
    emb = nc.embed(synth.slide, model, nc.tile_grid(synth.slide, model, tile_um=32), cache=None)
    seg = nc.zero_shot_segment(emb, model, ["tumor", "stroma", "necrosis"])
    path = tmp_path / "ours.geojson"
    to_geojson(seg, path)
    annotations = nc.read_annotations(path)
    assert annotations.mpp == pytest.approx(1.0)
    assert annotations.offset_um == pytest.approx((0.0, 0.0))
    assert set(annotations.class_names) == set(seg.class_names)
    # its polygons are the map: agreement with itself is perfect
    scores = nc.agreement(seg, annotations)
    assert scores["mean_dice"] == pytest.approx(1.0)


def test_what_is_not_annotations_gets_a_clear_error(tmp_path):
    bad = tmp_path / "notes.geojson"
    bad.write_text("tumour at the top left", encoding="utf-8")
    with pytest.raises(ValueError, match=r"is not GeoJSON.*Export objects as GeoJSON"):
        nc.read_annotations(bad)
    with pytest.raises(ValueError, match="not annotations: expected a GeoJSON"):
        nc.read_annotations({"type": "Topology"})
    unnamed = {"type": "FeatureCollection", "features": [QUPATH["features"][2]]}
    with pytest.raises(ValueError, match=r"no classified region \(unclassified: 1\)"):
        nc.read_annotations(unnamed)
    blank = _feature({"type": "Polygon", "coordinates": [_square(0, 0, 9, 9)]}, {"name": "  "})
    with pytest.raises(ValueError, match="Set class"):
        nc.read_annotations([blank])
    with pytest.raises(ValueError, match="Cannot read annotations"):
        nc.read_annotations(tmp_path / "missing.geojson")


def test_coordinates_outside_the_slide_are_refused():
    slide = nc.Slide.from_array(np.full((256, 256, 3), 230, np.uint8), mpp=0.5)
    far = [_feature({"type": "Polygon", "coordinates": [_square(0, 0, 5000, 90)]}, {"name": "A"})]
    with pytest.raises(ValueError, match=r"outside the slide.*another slide"):
        nc.read_annotations(far, slide=slide)
    near = nc.read_annotations(QUPATH["features"][:1], slide=slide)
    assert near.mpp == 0.5 and near.slide_shape == (256, 256)


def test_a_shapes_layer_gives_one_class_per_shape_in_slide_pixels():
    from napari.layers import Shapes

    slide = nc.Slide.from_array(np.full((512, 512, 3), 230, np.uint8), mpp=0.5)
    # drawn in world µm over the slide: a rectangle 10–60 µm, an ellipse
    layer = Shapes(
        [
            np.array([[10, 10], [10, 60], [60, 60], [60, 10]]),
            np.array([[100, 100], [100, 200], [150, 200], [150, 100]]),
        ],
        shape_type=["rectangle", "ellipse"],
        features={"class": ["tumor", "stroma"]},
        name="my annotations",
    )
    annotations = nc.read_annotations(layer, slide=slide)
    assert annotations.class_names == ["tumor", "stroma"]
    rect = annotations.regions[0].polygon
    # level-0 px: 10 µm at 0.5 µm/px is pixel 20, whose corner-based coordinate is 20.5
    assert rect.bounds == pytest.approx((20.5, 20.5, 120.5, 120.5))
    ellipse = annotations.regions[1].polygon
    assert ellipse.area == pytest.approx(np.pi * 100 * 50, rel=1e-3)
    unnamed = Shapes([np.array([[0, 0], [0, 9], [9, 9]])], shape_type="polygon", name="tumor")
    assert nc.read_annotations(unnamed, slide=slide).class_names == ["tumor"]  # layer's name
    with pytest.raises(ValueError, match="pass slide="):
        nc.read_annotations(layer)


def test_a_labels_layer_on_the_map_gives_its_cells_exactly():
    from napari.layers import Labels

    synth = nc.synthetic_slide(size=1024, mpp=1.0, seed=1)
    model = nc.load_model("colour-toy")
    grid = nc.tile_grid(synth.slide, model, tile_um=32, overlap=0.5)
    painted = np.zeros(grid.cell_shape, np.uint8)
    painted[2:4, 3:6] = 1
    painted[10, 10] = 2
    layer = Labels(painted, scale=grid.cell_scale_um, translate=grid.cell_translate_um)
    annotations = nc.read_annotations(layer, slide=synth.slide, classes=["tumor", "stroma"])
    assert annotations.class_names == ["tumor", "stroma"]
    fractions, _ = annotations.cell_fractions(grid.cell_shape, grid.stride_px, grid.origin_px)
    np.testing.assert_array_equal(fractions[0] == 1, painted == 1)
    np.testing.assert_array_equal(fractions[1] == 1, painted == 2)
    assert ((fractions > 0) == (fractions == 1)).all()  # cell edges on cell edges
    with pytest.raises(ValueError, match="no class names"):
        nc.read_annotations(Labels(painted, scale=grid.cell_scale_um), slide=synth.slide)


def test_region_helpers():
    a = Annotations([Region("x", box(0, 0, 10, 10)), Region("Ignore me", box(0, 0, 5, 5))])
    assert a.class_names == ["x"] and len(a) == 2
    assert a.fingerprint() == Annotations(list(a.regions)).fingerprint()
    assert a.fingerprint() != a.subset([True, False]).fingerprint()
    back = nc.read_annotations(a.to_geojson())
    assert [r.name for r in back.regions] == ["x", "Ignore me"]
    assert "x: 1" in repr(a)
