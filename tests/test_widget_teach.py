"""The Teach tab in a real viewer under Xvfb, docked the way napari docks plugins: paint or
import annotations, and the few-shot map lands (live), with its examples and held-out
scores; corrections become annotations; the classifier is saved."""

from __future__ import annotations

import json

import numpy as np
import pytest
from qtpy.QtCore import QSettings
from slides import planted_squares

import napari_conch as nc
from napari_conch._napari.widget import ConchWidget

pytestmark = pytest.mark.gui


@pytest.fixture
def taught_widget(make_napari_viewer, tmp_path, qtbot):
    viewer = make_napari_viewer()
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    widget = ConchWidget(viewer, settings=settings)
    viewer.window.add_dock_widget(widget)
    viewer.open_sample("napari-conch", "synthetic")
    widget.set_model(nc.load_model("colour-toy"))
    widget.set_classes(["tumor", "stroma", "necrosis"])
    widget.tile_um.value = 64.0
    widget.run_segmentation()
    _wait(qtbot, widget)
    assert widget.session.embeddings is not None
    return viewer, widget


def _wait(qtbot, widget, timeout=120_000):
    qtbot.waitUntil(lambda: not widget._workers, timeout=timeout)


def _paint_squares(widget, layer):
    """Two small squares per planted region, painted with the region's class."""
    synth = nc.synthetic_slide()  # the sample's slide and truth
    grid = widget.session.grid
    names = widget.teach.class_names()
    data = np.asarray(layer.data).copy()
    for region in synth.regions_um:
        (cy, cx), (_hy, hx) = region["centre_um"], region["half_size_um"]
        half = 0  # one cell (one tile here) per stroke: strokes never touch
        for dx in (-0.6, -0.2, 0.5):  # two or three separate strokes per region
            if synth.class_names[synth.label_at_um(cy, cx + dx * hx) - 1] != region["class"]:
                continue  # regions overlap: the stroke would mislabel another class
            r, c = (
                int((v - t) / grid.cell_scale_um[0] + 0.5)
                for v, t in zip((cy, cx + dx * hx), grid.cell_translate_um, strict=True)
            )
            data[r - half : r + half + 1, c - half : c + half + 1] = (
                names.index(region["class"]) + 1
            )
    layer.data = data
    return synth


def test_painting_annotations_gives_a_live_few_shot_map(taught_widget, qtbot):
    viewer, widget = taught_widget
    widget.teach.use_text.value = False  # learn from the strokes alone
    layer = widget.new_annotation_layer()
    assert layer.name == "colour-toy annotations" and layer.mode == "paint"
    assert np.shape(layer.data) == widget.session.grid.cell_shape
    assert "1 = " in widget.teach.classes_label.value
    _paint_squares(widget, layer)  # live: no button pressed
    qtbot.waitUntil(lambda: widget.teach.lesson is not None, timeout=60_000)
    _wait(qtbot, widget)
    few = viewer.layers["colour-toy few-shot labels"]
    zero = viewer.layers["colour-toy labels"]
    tissue = np.asarray(zero.data) > 0
    agree = (np.asarray(few.data) == np.asarray(zero.data))[tissue].mean()
    assert agree > 0.95  # the colour toy's zero-shot map is right on this slide
    assert tuple(few.translate) == pytest.approx(tuple(zero.translate))
    report = widget.teach.report.value
    assert "linear probe" in report and "held-out Dice" in report and "example tiles" in report
    assert "colour-toy few-shot examples" in viewer.layers
    assert widget.session.segmentation is widget.teach.lesson.segmentation  # Export writes it
    assert widget.last_segmentation.metadata["analysis"] == "few_shot_segment"


def test_a_qupath_file_imports_and_teaches_from_text_and_strokes(taught_widget, qtbot, tmp_path):
    _viewer, widget = taught_widget
    synth = nc.synthetic_slide()
    collection = planted_squares(synth)
    collection["features"] = collection["features"][:2]  # only stroma annotated
    path = tmp_path / "qupath.geojson"
    path.write_text(json.dumps(collection), encoding="utf-8")
    widget.teach.live.value = False
    layer = widget.teach.import_geojson(path)
    assert len(layer.data) == 2 and list(layer.features["class"]) == ["stroma", "stroma"]
    widget.teach.teach()
    _wait(qtbot, widget)
    lesson = widget.teach.lesson
    assert lesson.classifier.method == "text-initialised linear probe"
    assert "text only" in widget.teach.report.value  # tumour and necrosis kept their text
    assert "stroma: " in widget.teach.report.value and "held-out Dice" in widget.teach.report.value
    path = widget.teach.save_classifier(tmp_path / "clf.npz")
    loaded = nc.load_classifier(path, model=widget.session.model)
    assert loaded.class_names == lesson.classifier.class_names


def test_corrections_in_the_segmentation_become_annotations(taught_widget, qtbot):
    viewer, widget = taught_widget
    labels = viewer.layers["colour-toy labels"]
    painted = np.asarray(labels.data).copy()
    stroma = widget.teach.class_names().index("stroma") + 1
    tumor = widget.teach.class_names().index("tumor") + 1
    where = np.argwhere(painted == stroma)[:6]
    painted[tuple(where.T)] = tumor  # "that is tumour"
    labels.data = painted
    widget.teach.live.value = False
    layer = widget.teach.corrections_to_annotations()
    assert layer is not None
    assert (np.asarray(layer.data)[tuple(where.T)] == tumor).all()
    assert int((np.asarray(layer.data) > 0).sum()) == len(where)


def test_teaching_before_a_segmentation_says_what_to_do(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    settings = QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat)
    widget = ConchWidget(viewer, settings=settings)
    assert widget.new_annotation_layer() is None
    assert "Run a segmentation first" in widget.status.text()
    widget.teach.teach()
    assert "Run a segmentation" in widget.status.text() or "model" in widget.status.text()
