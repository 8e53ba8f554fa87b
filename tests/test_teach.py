"""Few-shot maps taught from annotations, and scores against annotations, on a synthetic
slide whose truth is planted: a classifier taught on two small regions per class must find
the rest of each region (held out), keep to the maps' rules, survive save/load exactly,
refuse what is not its own, and score honestly."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from slides import planted_squares

import napari_conch as nc
from napari_conch.annotations import Annotations, Region
from napari_conch.classifier import tile_examples

UNREADABLE = {"tumor": "class A", "stroma": "class B", "necrosis": "class C"}


@pytest.fixture(scope="module")
def slide_and_emb():
    synth = nc.synthetic_slide(size=2048, mpp=0.5, seed=3)
    model = nc.load_model("colour-toy")
    grid = nc.tile_grid(synth.slide, model, overlap=0.75)
    emb = nc.embed(synth.slide, model, grid, cache=None)
    return synth, model, emb


def _truth(synth, names=None):
    truth = synth.truth_annotations()
    names = names or {n: n for n in synth.class_names}
    return Annotations(
        [Region(names[r.name], r.polygon) for r in truth.regions], truth.mpp, source="truth"
    )


@pytest.fixture(scope="module")
def taught(slide_and_emb, tmp_path_factory):
    synth, _model, emb = slide_and_emb
    path = tmp_path_factory.mktemp("ann") / "qupath.geojson"
    path.write_text(json.dumps(planted_squares(synth, UNREADABLE)), encoding="utf-8")
    annotations = nc.read_annotations(path)
    classifier = nc.fit_classifier(emb, annotations)
    return annotations, classifier, nc.few_shot_segment(emb, classifier)


def test_two_small_annotations_per_class_give_held_out_dice_of_095(slide_and_emb, taught):
    synth, _model, emb = slide_and_emb
    annotations, classifier, seg = taught
    placed = annotations.placed(emb.grid)
    covered = sum(placed.area_um2().values()) / (synth.slide.shape[0] * synth.slide.mpp) ** 2
    assert covered < 0.05  # a few % of the slide
    assert classifier.method == "linear probe"
    assert sorted(classifier.class_names) == sorted(UNREADABLE.values())
    scores = nc.agreement(seg, _truth(synth, UNREADABLE))
    assert scores["held_out"] and scores["excluded_mm2"] > 0  # training surroundings left out
    for name in UNREADABLE.values():
        assert scores[name]["dice"] >= 0.95, (name, scores[name])
    assert seg.metadata["analysis"] == "few_shot_segment"
    record = seg.metadata["classifier"]
    assert record["method"] == "linear probe"
    assert record["annotations"]["fingerprint"] == annotations.fingerprint()
    assert record["annotations"]["source"] == "qupath.geojson"


def test_the_fit_is_deterministic_and_the_map_keeps_every_rule(slide_and_emb, taught):
    synth, model, emb = slide_and_emb
    annotations, classifier, seg = taught
    again = nc.fit_classifier(emb, annotations)
    np.testing.assert_array_equal(again.weights, classifier.weights)
    np.testing.assert_array_equal(again.bias, classifier.bias)
    zero = nc.zero_shot_segment(emb, model, list(synth.class_names))
    assert seg.labels.shape == zero.labels.shape and seg.scale_um == zero.scale_um
    assert seg.translate_um == zero.translate_um
    glass = ~emb.grid.cell_is_tissue
    assert (seg.labels[glass] == 0).all()  # the tissue rule
    assert sum(seg.areas_mm2.values()) == pytest.approx(sum(zero.areas_mm2.values()), rel=1e-6)
    assert seg.areas_mm2 == seg.measure()


def test_text_initialised_probe_starts_as_the_zero_shot_map(slide_and_emb):
    synth, model, emb = slide_and_emb
    prompts = list(synth.class_names)
    annotations = nc.read_annotations(planted_squares(synth))
    frozen = nc.fit_classifier(emb, annotations, model=model, prompts=prompts, regularization=1e9)
    assert frozen.method == "text-initialised linear probe"
    zero = nc.zero_shot_segment(emb, model, prompts)
    few = nc.few_shot_segment(emb, frozen)
    np.testing.assert_allclose(few.tile_probabilities, zero.tile_probabilities, atol=1e-4)
    np.testing.assert_array_equal(few.labels, zero.labels)


def test_one_annotated_class_and_text_for_the_rest(slide_and_emb):
    synth, model, emb = slide_and_emb
    only_tumor = planted_squares(synth)
    only_tumor["features"] = [
        f for f in only_tumor["features"] if f["properties"]["classification"]["name"] == "tumor"
    ]
    classifier = nc.fit_classifier(
        emb, nc.read_annotations(only_tumor), model=model, prompts=["tumor", "stroma", "necrosis"]
    )
    examples = classifier.details["annotations"]["examples"]
    assert examples["tumor"] > 0 and examples["stroma"] == examples["necrosis"] == 0
    scores = nc.agreement(nc.few_shot_segment(emb, classifier), _truth(synth))
    for name in synth.class_names:
        assert scores[name]["dice"] >= 0.9, (name, scores[name])
    with pytest.raises(ValueError, match="at least two classes"):
        nc.fit_classifier(emb, nc.read_annotations(only_tumor))


def test_classes_without_examples_need_text(slide_and_emb):
    synth, _model, emb = slide_and_emb
    annotations = nc.read_annotations(planted_squares(synth))
    speck = annotations.regions[0].polygon.centroid.buffer(2.0)  # smaller than any tile
    with_speck = Annotations([*annotations.regions, Region("mitosis", speck)])
    with pytest.raises(ValueError, match=r"No examples of .mitosis.*every class needs"):
        nc.fit_classifier(emb, with_speck)
    with pytest.raises(ValueError, match="No embedded tile lies at least half"):
        nc.fit_classifier(emb, Annotations([Region("a", speck), Region("b", speck)]))


def test_a_background_class_follows_the_background_rule(slide_and_emb):
    synth, _model, emb = slide_and_emb
    collection = planted_squares(synth)
    # the same stroma squares, called background
    for feature in collection["features"]:
        if feature["properties"]["classification"]["name"] == "stroma":
            feature["properties"]["classification"]["name"] = "background"
    classifier = nc.fit_classifier(emb, nc.read_annotations(collection))
    seg = nc.few_shot_segment(emb, classifier, background="background")
    assert "background" not in seg.class_names and seg.background_probability is not None
    truth = _truth(synth)
    stroma_cells = truth.placed(emb.grid).cell_fractions(
        seg.labels.shape, emb.grid.stride_px, emb.grid.origin_px, ["stroma"]
    )[0][0]
    assert (seg.labels[stroma_cells == 1] == 0).mean() > 0.95
    with pytest.raises(ValueError, match="not a class of this classifier"):
        nc.few_shot_segment(emb, classifier, background="glass")


def test_saved_and_loaded_gives_the_identical_map(slide_and_emb, taught, tmp_path):
    _synth, model, emb = slide_and_emb
    _annotations, classifier, seg = taught
    written = classifier.save(tmp_path / "clf")
    assert written.name == "classifier.npz" and written.exists()
    loaded = nc.load_classifier(tmp_path / "clf", model=model)
    again = nc.few_shot_segment(emb, loaded)
    np.testing.assert_array_equal(again.labels, seg.labels)
    np.testing.assert_array_equal(again.probabilities, seg.probabilities)
    assert again.areas_mm2 == seg.areas_mm2
    assert nc.few_shot_segment(emb, written).areas_mm2 == seg.areas_mm2  # a path works too


class _Bomb:
    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(_Bomb.target),))


def test_a_pickle_is_refused_without_being_run(tmp_path):
    _Bomb.target = str(tmp_path / "ran")
    path = tmp_path / "evil.npz"
    path.write_bytes(pickle.dumps({"weights": _Bomb()}))
    with pytest.raises(ValueError, match="pickles are never loaded"):
        nc.load_classifier(path)
    assert not (tmp_path / "ran").exists()
    np.savez(tmp_path / "other.npz", weights=np.zeros(3))
    with pytest.raises(ValueError, match="not a napari-conch classifier"):
        nc.load_classifier(tmp_path / "other.npz")


def test_a_classifier_of_another_model_is_refused(slide_and_emb, taught, tmp_path):
    synth, _model, _emb = slide_and_emb
    _annotations, classifier, _seg = taught
    classifier.save(tmp_path / "c.npz")
    other = nc.load_model("conch_tiny", checkpoint="random")
    with pytest.raises(ValueError, match="taught on colour-toy"):
        nc.load_classifier(tmp_path / "c.npz", model=other)
    grid = nc.tile_grid(synth.slide, other, tile_um=256)
    foreign = nc.embed(synth.slide, other, grid, cache=None, tiles=np.arange(2))
    with pytest.raises(ValueError, match="taught on colour-toy features"):
        nc.few_shot_segment(foreign, classifier)


def test_agreement_scores_inside_the_annotations_and_leaves_training_out(slide_and_emb, taught):
    synth, model, emb = slide_and_emb
    annotations, _classifier, seg = taught
    zero = nc.zero_shot_segment(emb, model, list(synth.class_names))
    readable = nc.read_annotations(planted_squares(synth))
    scores = nc.agreement(zero, readable)
    assert not scores["held_out"] and scores["excluded_mm2"] == 0
    for name in synth.class_names:
        s = scores[name]
        assert s["dice"] == pytest.approx(1.0) and s["iou"] == pytest.approx(1.0)
        assert s["annotated_mm2"] == pytest.approx(s["predicted_mm2"])
        drawn = readable.placed(emb.grid).area_um2()[name] / 1e6
        assert s["annotated_mm2"] == pytest.approx(drawn, rel=0.25)  # whole cells, ≥ half in
    # a map that calls everything tumour: stroma recall 0, tumour precision below 1
    painted = zero.with_labels(np.where(zero.labels > 0, 1, 0).astype(zero.labels.dtype))
    wrong = nc.agreement(painted, readable)
    assert wrong["stroma"]["recall"] == 0 and wrong["tumor"]["precision"] < 0.6
    assert wrong["tumor"]["recall"] == pytest.approx(1.0)
    # the annotations that taught the few-shot map: all of them are training, none scored
    own = nc.agreement(seg, annotations)
    assert own["held_out"] and all(np.isnan(own[n]["dice"]) for n in annotations.class_names)


def test_cross_validation_holds_whole_regions_out(slide_and_emb, taught):
    synth, model, emb = slide_and_emb
    annotations, _classifier, _seg = taught
    report = nc.cross_validate(emb, annotations)
    assert report["held_out"] and report["folds"] == 2
    for name in UNREADABLE.values():
        assert report[name]["dice"] >= 0.95 and report[name]["annotated_mm2"] > 0
    single = annotations.subset([i % 2 == 0 for i in range(len(annotations))])
    with pytest.raises(ValueError, match="at least two annotated regions per class"):
        nc.cross_validate(emb, single)
    side_by_side = nc.compare_zero_and_few_shot(
        emb, model, list(synth.class_names), planted_squares(synth)
    )
    assert set(side_by_side) == {"zero-shot", "few-shot"}
    assert side_by_side["few-shot"]["held_out"] and not side_by_side["zero-shot"]["held_out"]


def test_tile_examples_follow_the_tissue_rule(slide_and_emb):
    synth, _model, emb = slide_and_emb
    grid = emb.grid
    # a square exactly on four tiles' worth of cells, in the tumour
    region = next(r for r in synth.regions_um if r["class"] == "tumor")
    y, x = (v / synth.slide.mpp for v in region["centre_um"])
    s = grid.stride_px
    y0 = grid.origin_px[0] + (int((y - grid.origin_px[0]) // s)) * s
    x0 = grid.origin_px[1] + (int((x - grid.origin_px[1]) // s)) * s
    from shapely import box

    square = box(x0, y0, x0 + grid.tile_px, y0 + grid.tile_px)
    examples = tile_examples(emb, Annotations([Region("tumor", square)]))
    # the tile on the square, and its neighbours with at least half of their area in it
    k = grid.tiles_per_cell_side
    top_left = np.flatnonzero((grid.coords == [y0, x0]).all(axis=1))
    assert examples[top_left] == 0
    cells_off = np.abs(grid.coords - [y0, x0]) // s
    shared = np.prod(np.clip(k - cells_off, 0, None), axis=1) / k**2 >= 0.5
    assert set(np.flatnonzero(examples == 0)) == set(np.flatnonzero(shared))
    assert shared.sum() == 13  # k = 4: (0, 0), (±1, 0), (0, ±1), (±1, ±1), (±2, 0), (0, ±2)
    ignored = Annotations([Region("tumor", square), Region("Ignore*", square.buffer(s))])
    assert (tile_examples(emb, ignored) == -1).all()


def test_few_shot_maps_go_into_every_export(slide_and_emb, taught, tmp_path):
    from napari_conch.export import FORMATS, export_all
    from napari_conch.readback import read_result_file

    _synth, _model, emb = slide_and_emb
    _annotations, _classifier, seg = taught
    written = export_all(seg, tmp_path, "few", emb=emb, formats=FORMATS)
    summary = json.loads(written["summary"].read_text())
    assert summary["classes"] == seg.class_names
    for kind in ("ome-zarr", "ome-tiff", "geojson"):
        back = read_result_file(written[kind])[0]
        np.testing.assert_array_equal(back.labels, seg.labels, err_msg=kind)


def test_painting_a_class_away_sets_its_area_to_zero_in_every_export(slide_and_emb, tmp_path):
    from napari_conch.export import FORMATS, export_all
    from napari_conch.readback import read_result_file

    synth, model, emb = slide_and_emb
    seg = nc.zero_shot_segment(emb, model, list(synth.class_names))
    necrosis = seg.class_names.index("necrosis") + 1
    painted = seg.labels.copy()
    painted[painted == necrosis] = seg.class_names.index("tumor") + 1
    fixed = seg.with_labels(painted)
    assert fixed.areas_mm2["necrosis"] == 0 and seg.areas_mm2["necrosis"] > 0
    written = export_all(fixed, tmp_path, "fixed", emb=emb, formats=FORMATS)
    summary = json.loads(written["summary"].read_text())
    assert summary["areas_mm2"]["necrosis"] == 0
    collection = json.loads(written["geojson"].read_text())
    assert "necrosis" not in {f["properties"]["name"] for f in collection["features"]}
    for kind in ("ome-zarr", "ome-tiff", "geojson"):
        back = read_result_file(written[kind])[0]
        assert back.areas_mm2.get("necrosis", 0.0) == 0, kind
        assert back.areas_mm2["tumor"] == pytest.approx(fixed.areas_mm2["tumor"]), kind


def test_one_round_of_teaching_fits_maps_and_scores(slide_and_emb):
    synth, model, emb = slide_and_emb
    lesson = nc.teach(emb, planted_squares(synth), model=model, prompts=list(synth.class_names))
    assert lesson.classifier.method == "text-initialised linear probe"
    assert lesson.segmentation.metadata["analysis"] == "few_shot_segment"
    assert (lesson.examples >= 0).sum() == sum(
        lesson.classifier.details["annotations"]["examples"].values()
    )
    assert lesson.held_out["held_out"] and lesson.held_out["mean_dice"] > 0.95
    one = nc.read_annotations(planted_squares(synth, per_region=1))
    alone = nc.teach(emb, one, held_out=True)
    assert alone.held_out is None and "at least two annotated regions" in alone.why_not_held_out


def test_a_joint_space_classifier_maps_tokens_too(slide_and_emb):
    synth, model, emb = slide_and_emb
    prompts = list(synth.class_names)
    region = next(r for r in synth.regions_um if r["class"] == "necrosis")
    (cy, cx), (hy, hx) = region["centre_um"], region["half_size_um"]
    box_um = (cy - 1.5 * hy, cx - 1.5 * hx, cy + 1.5 * hy, cx + 1.5 * hx)
    tokens = nc.dense_tokens(synth.slide, model, box_um, tile_um=64)
    frozen = nc.fit_classifier(
        emb, nc.read_annotations(planted_squares(synth)), model=model, prompts=prompts,
        regularization=1e9,
    )  # fmt: skip
    few = tokens.few_shot_segment(frozen)
    zero = tokens.segment(model, prompts)
    np.testing.assert_array_equal(few.labels, zero.labels)  # text start = zero-shot, as tiles
    assert few.metadata["analysis"] == "dense_few_shot_segment"
    plain = nc.fit_classifier(emb, nc.read_annotations(planted_squares(synth)))
    with pytest.raises(ValueError, match="Teach it with model="):
        tokens.few_shot_segment(plain)
