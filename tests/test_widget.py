"""The napari widget, end to end in a real viewer under Xvfb, with the tiny model."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import CountingModel
from qtpy.QtCore import QSettings

import napari_conch as nc
from napari_conch._napari.widget import ConchWidget

pytestmark = pytest.mark.gui


@pytest.fixture
def settings(tmp_path):
    return QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)


@pytest.fixture
def setup(make_napari_viewer, settings):
    viewer = make_napari_viewer()
    widget = ConchWidget(viewer, settings=settings)
    viewer.window.add_dock_widget(widget)
    return viewer, widget


def _wait(qtbot, widget, timeout=120_000):
    qtbot.waitUntil(lambda: not widget._workers, timeout=timeout)


def _choose_new_slide(viewer, widget, pixels, name: str, mpp: float) -> None:
    """Open ``pixels`` as another slide (an RGB layer in µm) and choose it in the widget."""
    viewer.add_image(
        pixels, rgb=True, name=name, scale=(mpp, mpp), units=("micrometer", "micrometer")
    )
    widget.layer_combo.value = name


def _notifications():
    from napari.utils.notifications import notification_manager

    return [str(n.message) for n in notification_manager.records]


@pytest.fixture
def loaded(setup, qtbot):
    viewer, widget = setup
    viewer.open_sample("napari-conch", "synthetic")
    widget.choose_model("conch_tiny")
    widget.random_weights.value = True
    widget.load_model()
    _wait(qtbot, widget)
    assert widget.session.model is not None
    return viewer, widget


def test_full_flow_segment_prompt_exemplar_retrieve_call(loaded, qtbot):
    viewer, widget = loaded
    assert "UNTRAINED" in widget.model_status.value
    assert widget.layer_combo.value.startswith("synthetic slide")
    assert widget.mpp.value == 0.5

    counting = CountingModel(widget.session.model)
    widget.set_model(counting)
    widget.run_segmentation()
    _wait(qtbot, widget)
    labels = viewer.layers["conch labels"]
    grid = widget.session.grid
    assert labels.data.shape == (grid.shape[0], grid.shape[1])  # no overlap: one cell per tile
    assert tuple(labels.scale) == pytest.approx((224.0, 224.0))
    assert tuple(labels.translate) == pytest.approx(((448 - 1) / 2 * 0.5,) * 2)
    assert list(labels.features["class"]) == ["none", "tumor", "stroma", "necrosis"]
    for name in ("tumor", "stroma", "necrosis"):
        assert f"conch p({name})" in viewer.layers
    assert "UNTRAINED" in widget.legend.value
    tiles_embedded = counting.tiles
    assert tiles_embedded == len(grid)

    # a prompt redraws the heatmap without any new embedding work
    widget.prompt.value = "necrosis"
    qtbot.waitUntil(lambda: "conch similarity" in viewer.layers, timeout=30_000)
    _wait(qtbot, widget)
    layer = viewer.layers["conch similarity"]
    first = np.array(layer.data)
    widget.prompt.value = "tumor cells"
    qtbot.waitUntil(lambda: not np.array_equal(np.asarray(layer.data), first), timeout=30_000)
    assert viewer.layers["conch similarity"] is layer  # updated in place
    assert counting.tiles == tiles_embedded

    # exemplar points: the map peaks where the point was put
    widget.start_exemplars()
    points = viewer.layers["conch exemplars"]
    y, x = (float(v) + 112.0 for v in grid.coords[len(grid) // 2] * 0.5)  # centre of a tile, µm
    points.add([y, x])
    qtbot.waitUntil(lambda: "conch exemplar similarity" in viewer.layers, timeout=30_000)
    heat = viewer.layers["conch exemplar similarity"]
    peak = np.unravel_index(np.nanargmax(heat.data), heat.data.shape)
    expected = tuple(int((v - t) // s) for v, t, s in zip((y, x), (0, 0), heat.scale, strict=True))
    assert peak == expected

    # retrieval and the slide call
    assert widget.background_class() == "background"
    widget.background.value = "(none)"  # no background class: any tile may be a hit
    widget.k.value = 5
    widget.run_retrieval()
    _wait(qtbot, widget)
    assert len(viewer.layers["conch retrieval"].data) == 5
    widget.step_hit(1)
    assert widget.hit_label.value.startswith("#2 of 5")
    widget.background.value = "background"
    widget.top_k.value = 3
    widget.run_slide_call()
    _wait(qtbot, widget)
    assert widget.call_table.rowCount() == 3  # the Segment tab's background is never a call
    assert "UNTRAINED" in widget.call_label.value
    assert len(viewer.layers["conch evidence"].data) == 3
    assert counting.tiles == tiles_embedded


def test_cancel_stops_work_and_leaves_layers_consistent(loaded, qtbot):
    viewer, widget = loaded
    slow = CountingModel(widget.session.model, delay=0.3)
    widget.set_model(slow)
    widget.batch.value = 2
    widget.overlap.value = 0.5  # 50 %: more tiles
    widget.run_segmentation()
    qtbot.waitUntil(lambda: slow.tiles >= 4, timeout=60_000)
    widget.cancel()
    _wait(qtbot, widget)
    emb = widget.session.embeddings
    assert emb.cancelled and 0 < emb.n_done < len(emb)
    assert "Cancelled" in widget.status.text()
    labels = viewer.layers["conch labels"]
    assert labels.data.shape == (widget.session.grid.shape[0] + 1, widget.session.grid.shape[1] + 1)
    assert widget.run_button.enabled and not widget.cancel_button.enabled


def test_missing_pixel_size_gives_a_notification(setup, qtbot, tiny_model):
    viewer, widget = setup
    viewer.add_image(
        nc.synthetic_slide(size=1024).slide.levels[0].compute(), rgb=True, name="no mpp"
    )
    widget.set_model(tiny_model)
    assert widget.mpp_note.value.startswith("missing")
    before = len(_notifications())
    widget.run_segmentation()
    messages = _notifications()[before:]
    assert any("records no pixel size" in m and "Pixel size field" in m for m in messages)
    assert not any("mpp=" in m or "--mpp" in m for m in messages), "widget words only"
    assert "conch labels" not in viewer.layers
    widget.mpp.value = 0.5  # entering it makes the slide usable
    assert widget.session.source.slide.mpp == 0.5


def test_missing_weights_give_a_notification(setup, qtbot):
    _, widget = setup
    widget.choose_model("conch")
    widget.random_weights.value = False
    widget.checkpoint.value = ""
    before = len(_notifications())
    widget.load_model()
    _wait(qtbot, widget)
    assert any("No conch weights found" in m for m in _notifications()[before:])
    assert widget.session.model is None and widget.load_button.enabled


def test_settings_are_remembered_but_never_the_token(make_napari_viewer, settings, tmp_path):
    viewer = make_napari_viewer()
    widget = ConchWidget(viewer, settings=settings)
    widget.checkpoint.value = "/weights/pytorch_model.bin"
    widget.token.value = "hf_SECRET_TOKEN_123"
    widget.overlap.value = 0.75
    # the batch size is the engine's own choice (for the model and device) unless set
    assert widget.batch.value == 0 and widget.batch.native.currentText() == "auto"
    widget.set_classes({"gland": ["gland", "crypt"], "stroma": ["stroma"]})
    widget.settings.save()
    settings.sync()
    again = ConchWidget(viewer, settings=settings)
    assert again.checkpoint.value == "/weights/pytorch_model.bin"
    assert again.overlap.value == 0.75
    assert again.batch.value == 0
    assert again.prompt_set().classes == {"gland": ["gland", "crypt"], "stroma": ["stroma"]}
    assert again.token.value == ""
    assert "hf_SECRET_TOKEN_123" not in (tmp_path / "settings.ini").read_text()


def test_show_and_view(make_napari_viewer, tiny_model, tmp_path):
    viewer = make_napari_viewer()
    synth = nc.synthetic_slide(size=1024)
    viewer, widget = nc.view(
        synth.slide, model=tiny_model, viewer=viewer, classes=["tumor", "stroma"], block=False
    )
    assert widget.session.model is tiny_model
    assert widget.layer_combo.value == synth.slide.name
    assert widget.prompt_set().names == ["tumor", "stroma"]
    emb = nc.embed(
        synth.slide, tiny_model, nc.tile_grid(synth.slide, tiny_model, tissue=False), cache=None
    )
    seg = nc.zero_shot_segment(emb, tiny_model, ["tumor", "stroma"])
    layers = nc.show(viewer, seg)
    assert layers[0].name == "conch labels" and tuple(layers[0].scale) == seg.scale_um
    sim = nc.show(viewer, nc.similarity_map(emb, tiny_model, text="tumor"))
    assert sim.name == "conch similarity"
    with pytest.raises(TypeError, match="cannot display"):
        nc.show(viewer, 42)


_AFTER_OPENGL = """
import sys, time
import napari, numpy as np
viewer = napari.Viewer(show=True)
viewer.add_image(np.zeros((64, 64, 3), np.uint8), rgb=True)
from qtpy.QtWidgets import QApplication
for _ in range(20):
    QApplication.processEvents()
assert "torch" not in sys.modules, "this check needs the model code to load after OpenGL"
from napari_conch._napari.widget import ConchWidget
widget = ConchWidget(viewer)
widget.choose_model("conch_tiny")
widget.random_weights.value = True
widget.load_model()
deadline = time.time() + 120
while widget._workers and time.time() < deadline:
    QApplication.processEvents()
    time.sleep(0.02)
print("LOADED", widget.session.model is not None, sys.modules.get("triton", "absent") is None)
viewer.close()
"""


@pytest.mark.slow
def test_widget_loads_a_model_inside_a_running_napari(tmp_path):
    """The real start-up order: napari (and OpenGL) first, then the widget imports torch and
    timm. Under Mesa's OpenGL, triton (imported by torchvision) would crash the process."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "NAPARI_CONCH_CACHE": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", _AFTER_OPENGL], capture_output=True, text=True, timeout=300, env=env
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "LOADED True True" in out.stdout


def test_a_painted_labels_or_drawn_shapes_layer_restricts_the_analysis(loaded, qtbot):
    viewer, widget = loaded
    painted = np.zeros((2048, 2048), np.uint8)  # the synthetic slide at 1 µm per mask pixel
    painted[:900, :900] = 1  # the upper-left tumour region only
    viewer.add_labels(painted, name="my region", units=("micrometer", "micrometer"))
    widget.mask_layer.value = "my region"
    widget.run_segmentation()
    _wait(qtbot, widget)
    grid = widget.session.grid
    centres = (grid.coords + grid.tile_px / 2) * grid.mpp
    assert len(grid) > 0 and (centres < 900).all()
    viewer.add_shapes(
        [[[1200, 1200], [1200, 1900], [1900, 1900], [1900, 1200]]],
        shape_type="polygon",
        name="my outline",
    )
    widget.mask_layer.value = "my outline"
    widget.run_segmentation()
    _wait(qtbot, widget)
    centres = (widget.session.grid.coords + grid.tile_px / 2) * grid.mpp
    assert len(centres) > 0 and ((centres > 1200) & (centres < 1900)).all()


def test_the_writer_saves_labels_layers(loaded, qtbot, tmp_path):

    import tifffile

    viewer, widget = loaded
    widget.run_segmentation()
    _wait(qtbot, widget)
    layer = viewer.layers["conch labels"]
    layer.data = layer.data.copy()  # a correction painted in napari must be saved too
    layer.data[0, 0] = 1
    from validators import check_geojson, check_ome_tiff, check_ome_zarr

    from napari_conch.readback import read_result_file

    (path,) = layer.save(str(tmp_path / "seg.geojson"), plugin="napari-conch")
    collection = check_geojson(path)
    assert collection["properties"]["napari_conch"]["trained"] is False
    (path,) = layer.save(str(tmp_path / "seg.ome.tif"), plugin="napari-conch")
    check_ome_tiff(path)
    np.testing.assert_array_equal(tifffile.imread(path), layer.data)
    (path,) = layer.save(str(tmp_path / "seg.ome.zarr"), plugin="napari-conch")
    check_ome_zarr(path)
    painted = viewer.add_labels(np.eye(64, dtype=np.uint8), name="painted")
    (path,) = painted.save(str(tmp_path / "painted.geojson"), plugin="napari-conch")
    feature = check_geojson(path)["features"][0]
    assert feature["properties"]["name"] == "label 1"
    assert "Mean probability" not in feature["properties"]["measurements"]  # never null
    np.testing.assert_array_equal(read_result_file(path)[0].labels, np.eye(64))


def test_export_button_writes_every_format_with_painted_fixes(loaded, qtbot, tmp_path):
    import json

    import pandas as pd
    import tifffile

    viewer, widget = loaded
    assert not widget.export_button.enabled  # nothing to export yet
    widget.run_segmentation()
    _wait(qtbot, widget)
    assert widget.export_button.enabled
    widget.prompt.value = "necrosis"
    qtbot.waitUntil(lambda: getattr(widget, "last_similarity", None) is not None, timeout=30_000)
    _wait(qtbot, widget)
    layer = viewer.layers["conch labels"]
    layer.data = layer.data.copy()
    layer.data[0, 0] = 2  # a correction painted by the pathologist
    out = tmp_path / "export"
    widget.export_results(out)
    _wait(qtbot, widget)
    stem = "synthetic slide (not real tissue)"
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted(
        f"{stem}{suffix}"
        for suffix in (
            ".geojson",
            ".tiles.geojson",
            ".ome.zarr",
            ".labels.ome.tif",
            ".similarity.ome.tif",
            ".tiles.csv",
            ".tiles.parquet",
            ".summary.json",
        )
    )
    np.testing.assert_array_equal(tifffile.imread(out / f"{stem}.labels.ome.tif"), layer.data)
    table = pd.read_csv(out / f"{stem}.tiles.csv")
    assert len(table) == len(widget.session.grid)
    assert "similarity: necrosis" in table.columns
    summary = json.loads((out / f"{stem}.summary.json").read_text())
    assert summary["classes"] == ["tumor", "stroma", "necrosis"]
    similarity = tifffile.imread(out / f"{stem}.similarity.ome.tif")
    np.testing.assert_allclose(similarity, widget.last_similarity.values, equal_nan=True)
    assert "Exported 8 files" in widget.status.text()

    # again: the earlier files stay, the new ones get a numbered name
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file()}
    widget.export_results(out, formats=["geojson", "csv"])
    _wait(qtbot, widget)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name in before} == before
    assert {f"{stem}-2.geojson", f"{stem}-2.tiles.csv", f"{stem}-2.summary.json"} <= set(
        p.name for p in out.iterdir()
    )
    assert not (out / f"{stem}-2.ome.zarr").exists()  # only the formats asked for
    widget.export_results(out, formats=["geojson"], overwrite=True)  # replace, same name
    _wait(qtbot, widget)
    assert (out / f"{stem}.geojson").stat().st_mtime_ns > before[f"{stem}.geojson"]
    assert not (out / f"{stem}-3.geojson").exists()


def test_export_button_asks_for_formats_and_before_replacing(loaded, qtbot, tmp_path, monkeypatch):
    from napari_conch._napari import export_dialog

    _, widget = loaded
    widget.run_segmentation()
    _wait(qtbot, widget)
    out = tmp_path / "export"
    asked = {}
    monkeypatch.setattr(
        "napari_conch._napari.panels.segment.QFileDialog.getExistingDirectory", lambda *a: str(out)
    )

    def formats(parent, selected):
        asked["formats"] = list(selected)
        return ["geojson"]

    monkeypatch.setattr(export_dialog, "choose_formats", formats)
    monkeypatch.setattr(export_dialog, "ask_overwrite", lambda parent, existing: None)
    widget.export_button.native.click()
    _wait(qtbot, widget)
    assert sorted(p.name for p in out.iterdir()) == [
        "synthetic slide (not real tissue).geojson",
        "synthetic slide (not real tissue).summary.json",
    ]
    widget.export_button.native.click()  # the same again: the user cancels at "files exist"
    _wait(qtbot, widget)
    assert asked["formats"] == ["geojson"]  # the last choice is remembered
    assert len(list(out.iterdir())) == 2


def test_registered_models_are_listed_and_compared_side_by_side(loaded, qtbot):
    from helpers import ColourModel

    from napari_conch.models import unregister_model

    viewer, widget = loaded
    nc.register_model("colour", lambda checkpoint=None: ColourModel(), description="test")
    try:
        from qtpy.QtCore import Qt

        assert "colour" not in widget.model_name.choices
        # the list is re-read from the registry when it opens
        qtbot.mouseClick(widget.model_name.native, Qt.MouseButton.LeftButton)
        widget.model_name.native.hidePopup()
        assert "colour" in widget.model_name.choices
        widget.set_classes(["tumor", "stroma", "necrosis"])  # no synonyms: the colour model
        widget.run_segmentation()  # conch_tiny, loaded by the fixture
        _wait(qtbot, widget)
        widget.random_weights.value = False
        widget.choose_model("colour")
        widget.load_model()
        _wait(qtbot, widget)
        assert widget.session.model.name == "colour-toy"
        assert widget.tile_um.value == 64.0  # the model's own tile size
        widget.run_segmentation()
        _wait(qtbot, widget)
    finally:
        unregister_model("colour")
    conch, colour = viewer.layers["conch labels"], viewer.layers["colour-toy labels"]
    assert list(colour.features["class"]) == ["none", "tumor", "stroma", "necrosis"]
    assert tuple(colour.scale) == pytest.approx((64.0, 64.0))
    assert tuple(conch.scale) == pytest.approx((224.0, 224.0))
    # the colour model knows the planted regions: its labels agree with the ground truth
    truth = viewer.layers["synthetic ground truth"]
    centre = np.array(colour.data.shape) // 2
    y, x = (centre + 0.5) * 64.0
    assert (
        colour.data[tuple(centre)] == truth.data[int(y / truth.scale[0]), int(x / truth.scale[1])]
    )


def test_plip_folder_loads_in_the_widget(setup, qtbot, tmp_path):
    from helpers import make_plip_folder

    _viewer, widget = setup
    folder = make_plip_folder(tmp_path / "plip")
    widget.choose_model("plip")
    widget.random_weights.value = False
    widget.checkpoint.value = str(folder)
    widget.load_model()
    _wait(qtbot, widget)
    assert widget.session.model.name == "plip"
    assert "input 224 px at 0.5 µm/px" in widget.model_status.value
    assert "UNTRAINED" not in widget.model_status.value
    assert widget.tile_um.value == 112.0


# -- what a pathologist meets first (issue: the napari experience) ---------------------------


@pytest.fixture
def toyed(setup, qtbot):
    """The synthetic sample with the colour toy, small tiles: quick, and the answers known."""
    viewer, widget = setup
    viewer.open_sample("napari-conch", "synthetic")
    widget.set_model(nc.load_model("colour-toy"))
    widget.set_classes(["tumor", "stroma", "necrosis", "background"])
    widget.tile_um.value = 64.0
    return viewer, widget


def test_without_weights_the_colour_toy_is_offered_and_test_models_are_not(setup):
    _, widget = setup
    items = widget.model_name.choices
    assert widget.model_name.value == "colour-toy"  # no CONCH weights here
    assert "conch_tiny" not in items and {"conch", "plip", "quiltnet"} <= set(items)
    widget.choose_model("conch_tiny")  # still loadable by name (scripts)
    assert widget.model_name.value == "conch_tiny"


def test_a_failed_load_says_so_in_the_model_tab_in_its_own_words(setup, qtbot):
    _, widget = setup
    widget.choose_model("conch")
    widget.random_weights.value = False
    widget.load_model()
    _wait(qtbot, widget)
    status = widget.model_status.value
    assert "Could not load conch" in status and "Loading" not in status
    messages = " ".join(_notifications())
    assert "untrained (random) weights" in messages and "Weights field" in messages
    assert "checkpoint=" not in messages and "checkpoint=" not in status


def test_run_announces_its_stage_at_once(toyed, qtbot):
    _, widget = toyed
    widget.run_segmentation()
    assert widget.status.text().startswith("Preparing")  # before any worker has run
    _wait(qtbot, widget)
    assert widget.status.text().startswith("Done")


def test_class_colours_follow_the_name_not_the_order(toyed, qtbot):
    _, widget = toyed
    widget.run_segmentation()
    _wait(qtbot, widget)
    first = dict(zip(widget.last_segmentation.class_names, range(1, 4), strict=True))
    colours = {n: widget.last_segmentation.colors[i] for n, i in first.items()}
    widget.set_classes(["necrosis", "background", "stroma", "tumor"])
    widget.run_segmentation()
    _wait(qtbot, widget)
    seg = widget.last_segmentation
    for i, name in enumerate(seg.class_names, start=1):
        assert seg.colors[i] == colours[name], name


def test_maps_keep_the_users_display_settings_and_stay_under_the_points(toyed, qtbot):
    viewer, widget = toyed
    widget.run_segmentation()
    _wait(qtbot, widget)
    labels = viewer.layers["colour-toy labels"]
    assert viewer.layers.selection.active is labels  # not a hidden probability map
    widget.prompt.value = "tumor"
    qtbot.waitUntil(lambda: "colour-toy similarity" in viewer.layers, timeout=30_000)
    _wait(qtbot, widget)
    heat = viewer.layers["colour-toy similarity"]
    assert heat.colorbar.visible
    heat.colormap = "viridis"
    heat.contrast_limits = (0.2, 0.6)  # the pathologist's choice
    first = np.array(heat.data)
    widget.prompt.value = "stroma"
    qtbot.waitUntil(lambda: not np.array_equal(np.asarray(heat.data), first), timeout=30_000)
    _wait(qtbot, widget)
    assert heat.colormap.name == "viridis"
    assert tuple(heat.contrast_limits) == pytest.approx((0.2, 0.6))
    widget.start_exemplars()
    points = viewer.layers["colour-toy exemplars"]
    points.add([512.0, 512.0])
    qtbot.waitUntil(lambda: "colour-toy exemplar similarity" in viewer.layers, timeout=30_000)
    order = [layer.name for layer in viewer.layers]
    assert order.index("colour-toy exemplars") > order.index("colour-toy exemplar similarity")


def test_hits_are_readable_and_stepping_zooms_to_the_tile(toyed, qtbot):
    viewer, widget = toyed
    widget.run_segmentation()
    _wait(qtbot, widget)
    widget.prompt.value = "necrosis"
    widget.k.value = 5
    widget.run_retrieval()
    _wait(qtbot, widget)
    hits = viewer.layers["colour-toy retrieval"]  # named after the model
    assert hits.text.string.format == "{rank}"  # short labels; scores are features
    from napari_conch._napari.layers import camera

    camera(viewer).zoom = 0.01
    widget.step_hit(1)
    assert camera(viewer).zoom > 0.5  # a 64 µm tile fills a good part of the view


def test_the_tissue_mask_is_shown_in_micrometres(toyed, qtbot):
    viewer, widget = toyed
    widget.tissue_preview.value = True
    qtbot.waitUntil(lambda: "colour-toy tissue" in viewer.layers, timeout=30_000)
    mask = viewer.layers["colour-toy tissue"]
    assert [str(u) for u in mask.units] == ["micrometer", "micrometer"]


def test_cancel_then_run_continues_on_an_in_memory_image(toyed, qtbot):
    viewer, widget = toyed
    _choose_new_slide(
        viewer,
        widget,
        np.asarray(viewer.layers["synthetic slide (not real tissue)"].data[0]),
        "in memory",
        0.5,
    )
    slow = CountingModel(widget.session.model, delay=0.2)
    widget.set_model(slow)
    widget.batch.value = 4
    widget.run_segmentation()
    qtbot.waitUntil(lambda: slow.tiles >= 8, timeout=60_000)
    widget.cancel()
    _wait(qtbot, widget)
    first = slow.tiles
    total = len(widget.session.grid)
    assert first < total
    slow.delay = 0.0
    widget.run_segmentation()
    _wait(qtbot, widget)
    assert widget.session.embeddings.complete
    assert slow.tiles == total  # the second run did only what the first left


def test_docking_the_widget_loads_no_model_code(tmp_path):
    """Docking happens while a pathologist waits: no torch (seconds) until a model loads."""
    import subprocess
    import sys

    code = (
        "import sys, napari; from napari_conch._napari.widget import ConchWidget; "
        "from qtpy.QtCore import QSettings; "
        "v = napari.Viewer(show=False); "
        f"w = ConchWidget(v, settings=QSettings({str(tmp_path / 's.ini')!r}, "
        "QSettings.Format.IniFormat)); v.window.add_dock_widget(w); "
        "print('torch' in sys.modules); v.close()"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_keys_run_and_cancel_and_controls_explain_themselves(toyed, qtbot):
    _, widget = toyed
    assert widget.run_shortcut.key().toString() == "Ctrl+Return"
    assert widget.cancel_shortcut.key().toString() == "Esc"
    for control in (widget.run_button, widget.cancel_button, widget.load_button):
        assert control.tooltip
    widget.run_shortcut.activated.emit()
    assert widget._workers  # a run started
    _wait(qtbot, widget)
    assert widget.last_segmentation is not None


# -- panels over a session ---------------------------------------------------------------------


def test_another_slide_leaves_nothing_of_the_last_ones_results(toyed, qtbot):
    viewer, widget = toyed
    widget.run_segmentation()
    _wait(qtbot, widget)
    assert widget.export_button.enabled and widget.last_segmentation is not None
    _choose_new_slide(viewer, widget, np.zeros((512, 512, 3), np.uint8), "other", 0.5)
    # exporting now would write the first slide's map under the second one's name
    assert not widget.export_button.enabled
    assert widget.last_segmentation is None and widget.session.embeddings is None
    assert widget.legend.value == ""


def test_damaged_settings_fall_back_to_defaults(make_napari_viewer, settings):
    for key, value in {
        "overlap_fraction": "a lot",
        "batch": "many",
        "precision": "fp8",
        "classes": "{not json",
        "model": "no-such-model",
    }.items():
        settings.setValue(key, value)
    widget = ConchWidget(make_napari_viewer(), settings=settings)
    assert widget.overlap.value == 0.0 and widget.batch.value == 0  # auto
    assert widget.precision.value == "auto"
    assert widget.prompt_set().names == ["tumor", "stroma", "necrosis", "background"]
    assert widget.background_class() == "background"
    assert widget.model_name.value in widget.model_name.choices


def test_gpus_are_looked_for_when_the_device_list_opens(setup, qtbot, monkeypatch):
    from qtpy.QtCore import Qt

    from napari_conch.models import device

    monkeypatch.setattr(device, "available_devices", lambda: ["auto", "cpu", "cuda:0", "cuda:1"])
    _, widget = setup
    assert widget.device.choices == ("auto", "cpu")  # nothing looked for at docking
    qtbot.mouseClick(widget.device.native, Qt.MouseButton.LeftButton)
    widget.device.native.hidePopup()
    assert widget.device.choices == ("auto", "cpu", "cuda:0", "cuda:1")
    widget.device.value = "cuda:1"
    assert widget.model.load_options()["device"] == "cuda:1"


def test_unknown_cannot_replace_a_recorded_pixel_size_and_the_toy_says_what_it_is(toyed):
    _, widget = toyed
    assert "not a pathology model" in widget.model_status.value
    widget.mpp.value = 0.0  # "unknown" on a slide that records 0.5 µm/px
    assert widget.mpp.value == 0.5 and widget.session.source.slide.mpp == 0.5
    assert "records 0.5" in widget.status.text()
    widget.mpp.value = 0.25  # an override is still possible
    assert widget.session.source.slide.mpp == 0.25


def test_sharpen_view_draws_token_maps_over_the_tile_maps_and_prompts_reuse_them(
    toyed, qtbot, monkeypatch
):
    viewer, widget = toyed
    widget.run_segmentation()
    _wait(qtbot, widget)
    from napari_conch._napari.layers import camera

    cam = camera(viewer)
    cam.center, cam.zoom = (512.0, 512.0), 1.5  # a part of the slide in view
    model = widget.session.model
    calls = []
    original = model.encode_image_tokens
    monkeypatch.setattr(model, "encode_image_tokens", lambda x: calls.append(1) or original(x))
    widget.sharpen_view()
    assert widget.status.text().startswith("Sharpening")
    _wait(qtbot, widget)
    dense = viewer.layers["colour-toy dense (experimental) labels"]
    tiles = viewer.layers["colour-toy labels"]
    assert tuple(dense.scale) == (8.0, 8.0) and tuple(tiles.scale) == (64.0, 64.0)
    order = [layer.name for layer in viewer.layers]
    assert order.index(dense.name) > order.index(tiles.name)  # on top of the tile map
    assert set(np.unique(dense.data)) - {0} <= {1, 2, 3}
    computed = len(calls)
    widget.prompt.value = "necrosis"
    name = "colour-toy dense (experimental) similarity"
    qtbot.waitUntil(lambda: name in viewer.layers, timeout=30_000)
    _wait(qtbot, widget)
    assert len(calls) == computed > 0  # the new prompt was a matrix product


def test_sharpen_view_says_which_models_can(setup, qtbot, tiny_model):
    viewer, widget = setup
    viewer.open_sample("napari-conch", "synthetic")
    plip = nc.load_model("plip", checkpoint="random")
    widget.set_model(plip)
    before = len(_notifications())
    widget.sharpen_view()
    assert any("token embeddings (conch)" in m for m in _notifications()[before:])


def test_no_tissue_and_close_calls_are_said_plainly(toyed, qtbot):
    viewer, widget = toyed
    widget.run_segmentation()
    _wait(qtbot, widget)
    widget.top_k.value = 5
    widget.run_slide_call()
    _wait(qtbot, widget)
    # the colour toy finds perfect tiles of every class: the call is a tie
    assert "close call" in widget.call_label.value
    assert widget.status.text().startswith("Slide called")
    _choose_new_slide(viewer, widget, np.full((512, 512, 3), 250, np.uint8), "blank glass", 0.5)
    widget.run_segmentation()
    _wait(qtbot, widget)
    assert widget.status.text().startswith("No tissue found")


def test_a_second_slides_map_never_overwrites_the_first_ones(toyed, qtbot, tmp_path):
    viewer, widget = toyed
    widget.run_segmentation()
    _wait(qtbot, widget)
    first = viewer.layers["colour-toy labels"]
    first.data = first.data.copy()
    first.data[0, 0] = 3  # a correction painted on the first slide
    painted = np.array(first.data)
    _choose_new_slide(
        viewer,
        widget,
        np.asarray(viewer.layers["synthetic slide (not real tissue)"].data[1]),
        "second",
        2.0,
    )
    widget.run_segmentation()
    _wait(qtbot, widget)
    second = viewer.layers["colour-toy labels [second]"]
    assert viewer.layers["colour-toy labels"] is first
    np.testing.assert_array_equal(first.data, painted)  # untouched, fixes kept
    assert viewer.layers.selection.active is second
    second.data = second.data.copy()
    second.data[1, 1] = 2
    widget.export_results(tmp_path, formats=["ome-tiff"])
    _wait(qtbot, widget)
    import tifffile

    np.testing.assert_array_equal(tifffile.imread(tmp_path / "second.labels.ome.tif"), second.data)


def test_a_second_slides_points_never_overwrite_the_first_ones(toyed, qtbot):
    viewer, widget = toyed
    widget.run_segmentation()
    _wait(qtbot, widget)
    widget.prompt.value = "tumor"
    _wait(qtbot, widget)
    widget.k.value = 4
    widget.run_retrieval()
    _wait(qtbot, widget)
    widget.start_exemplars()
    exemplars = viewer.layers["colour-toy exemplars"]
    grid = widget.session.grid
    exemplars.add(grid.coords[len(grid) // 2] * grid.mpp + grid.tile_um / 2)  # a tile's centre
    _wait(qtbot, widget)
    first_hits = np.array(viewer.layers["colour-toy retrieval"].data)
    _choose_new_slide(
        viewer,
        widget,
        np.asarray(viewer.layers["synthetic slide (not real tissue)"].data[1])[:, ::-1],
        "second",
        2.0,
    )
    widget.run_segmentation()
    _wait(qtbot, widget)
    widget.run_retrieval()
    _wait(qtbot, widget)
    # the first slide's hits stay where they were found; the second's get their own layer
    np.testing.assert_array_equal(viewer.layers["colour-toy retrieval"].data, first_hits)
    assert len(viewer.layers["colour-toy retrieval [second]"].data) == 4
    widget.start_exemplars()  # a fresh exemplar layer: the first slide's points are not reused
    assert viewer.layers.selection.active.name == "colour-toy exemplars [second]"
    assert len(viewer.layers["colour-toy exemplars [second]"].data) == 0
    assert len(exemplars.data) == 1


def test_results_that_arrive_after_the_slide_changed_are_dropped(toyed, qtbot, monkeypatch):
    """Work still running when the slide changes (or its layer goes) stops or is dropped:
    nothing lands on the next slide, and nothing fails because its slide is gone."""
    import threading

    import napari_conch.zeroshot as zeroshot

    viewer, widget = toyed
    widget.run_segmentation()
    _wait(qtbot, widget)
    n_tiles = len(widget.session.grid)
    release = threading.Event()
    similarity_map = zeroshot.similarity_map

    def held_similarity(*args, **kwargs):
        release.wait(30)
        return similarity_map(*args, **kwargs)

    monkeypatch.setattr(zeroshot, "similarity_map", held_similarity)
    widget.prompt.value = "tumor"  # a map, held until the slide has changed
    qtbot.waitUntil(lambda: len(widget._workers) == 1, timeout=5_000)
    slow = CountingModel(widget.session.model, delay=0.2)
    widget.set_model(slow)
    widget.batch.value = 2
    widget.run_segmentation()  # a run, still going when the slide changes
    qtbot.waitUntil(lambda: slow.tiles >= 2, timeout=30_000)
    _choose_new_slide(viewer, widget, np.zeros((512, 512, 3), np.uint8), "other", 0.5)
    release.set()
    _wait(qtbot, widget)
    assert slow.tiles < n_tiles  # the run on the last slide stopped
    s = widget.session
    assert s.source.layer_name == "other"
    assert s.similarity is None and s.segmentation is None
    assert s.grid is None and s.embeddings is None
    assert "colour-toy similarity" not in viewer.layers

    # the slide's layer is removed while a map is computed for it
    release.clear()
    widget.set_model(nc.load_model("colour-toy"))
    widget.layer_combo.value = "synthetic slide (not real tissue)"
    widget.run_segmentation()
    _wait(qtbot, widget)
    widget.prompt.value = "stroma"
    qtbot.waitUntil(lambda: len(widget._workers) == 1, timeout=5_000)
    viewer.layers.clear()
    release.set()
    _wait(qtbot, widget)  # pytest-qt fails the test on any exception in the event loop
    assert widget.session.similarity is None
