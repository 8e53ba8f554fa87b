"""Teach tab: few-shot maps from the pathologist's own annotations, updated as they annotate.

Annotations are a Labels layer on the map's cells (label i = the Segment tab's class i, in
its colour) or a Shapes layer (one class per shape, from its ``class`` feature) — drawn
here, imported from QuPath, or taken from corrections painted into the segmentation. Each
change refits the classifier and remaps the slide in a worker (:func:`napari_conch.teach`);
the map lands as "<model> few-shot" layers, with examples and held-out agreement below.
"""

from __future__ import annotations

import contextlib
import logging

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Label, PushButton
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QFileDialog

from ..layers import MICROMETRE, layer_prefix, result_layer, show_segmentation, upsert
from ._forms import form, page, refresh_before_opening, rich, row

logger = logging.getLogger(__name__)

# Wait this long after the last stroke before refitting (a stroke fires many events).
LIVE_DELAY_MS = 400
ANNOTATION_LAYER = "annotations"


class TeachPanel:
    """Annotate, and see the map learn."""

    def __init__(self, viewer, session, runner, segment_panel):
        self.viewer = viewer
        self.session = session
        self.runner = runner
        self.segment_panel = segment_panel
        self.lesson = None  # the last round's result
        self._busy = False
        self._again = False  # an annotation changed while a round was running
        self._watched: set[int] = set()
        self._timer = QTimer()
        self._timer.setSingleShot(True)
        self._timer.setInterval(LIVE_DELAY_MS)
        self._timer.timeout.connect(self.teach)

        self.layer_combo = ComboBox(
            label="Annotations",
            choices=self._annotation_layers,
            tooltip="A Labels layer (label i = class i of the Segment tab) or a Shapes layer "
            "(one class per shape, in its 'class' feature).",
        )
        self.layer_combo.changed.connect(self._watch)
        refresh_before_opening(self.layer_combo, self.layer_combo.reset_choices)
        new = PushButton(text="New annotation layer", tooltip="Paint classes on the map's cells")
        new.changed.connect(self.new_annotation_layer)
        imported = PushButton(text="Import QuPath GeoJSON…")
        imported.changed.connect(lambda: self.import_geojson())
        corrections = PushButton(
            text="Corrections → annotations",
            tooltip="Cells painted over in the segmentation layer become annotations",
        )
        corrections.changed.connect(self.corrections_to_annotations)
        self.use_text = CheckBox(
            text="Start from the Segment tab's text",
            value=True,
            tooltip="Begin as the zero-shot classifier of those classes; classes nobody "
            "annotated keep their text. Off: learn from the annotations alone.",
        )
        self.live = CheckBox(text="Update as I annotate", value=True)
        self.teach_button = PushButton(text="Teach", tooltip="Fit and map now")
        self.teach_button.changed.connect(self.teach)
        save = PushButton(text="Save classifier…")
        save.changed.connect(lambda: self.save_classifier())
        self.classes_label = Label(value="")
        rich(self.classes_label)
        self.report = Label(value="")
        rich(self.report)
        self.native = page(
            form(
                self.layer_combo,
                row(new, imported, corrections),
                self.use_text,
                self.live,
                row(self.teach_button, save),
            ),
            self.classes_label,
            self.report,
        )

    # -- annotation layers --------------------------------------------------------------------

    def _annotation_layers(self, _widget=None) -> list[str]:
        """Shapes and Labels layers that are not our results."""
        names = []
        for layer in self.viewer.layers:
            info = layer.metadata.get("napari_conch", {}) if hasattr(layer, "metadata") else {}
            if info.get("result") is not None:
                continue
            if hasattr(layer, "shape_type") or hasattr(layer, "selected_label"):
                names.append(layer.name)
        return names

    def annotation_layer(self):
        name = self.layer_combo.value
        return self.viewer.layers[name] if name and name in self.viewer.layers else None

    def class_names(self) -> list[str]:
        return self.segment_panel.class_names()

    def new_annotation_layer(self):
        """A Labels layer over the map's cells, one label per class of the Segment tab."""
        from napari.utils.colormaps import DirectLabelColormap

        from ...colors import label_colors

        s = self.session
        grid = s.grid
        if grid is None or s.source is None:
            self.runner.say("Run a segmentation first: annotations are painted on its cells.")
            return None
        names = self.class_names()
        colors = {k: np.asarray(v, float) for k, v in label_colors(names).items()}
        colors[0] = np.zeros(4)
        colors[None] = np.zeros(4)
        offset = np.asarray(s.source.offset_um, float)
        layer = upsert(
            self.viewer,
            "labels",
            s.layer_name(ANNOTATION_LAYER),
            np.zeros(grid.cell_shape, np.uint8),
            slide=s.slide_name,
            scale=grid.cell_scale_um,
            translate=tuple(np.asarray(grid.cell_translate_um) + offset),
            colormap=DirectLabelColormap(color_dict=colors),
            features={"class": ["none", *names]},
            metadata={"napari_conch": self._placement(names)},
            opacity=0.7,
            units=(MICROMETRE, MICROMETRE),
        )
        layer.mode = "paint"
        layer.selected_label = 1
        self._choose(layer)
        self.classes_label.value = "Paint: " + ", ".join(
            f"{i} = {_swatch(colors[i])} {n}" for i, n in enumerate(names, start=1)
        )
        return layer

    def _placement(self, names=None) -> dict:
        """What read_annotations needs to place a layer's world µm in slide pixels."""
        s = self.session
        grid = s.grid
        origin = np.asarray(grid.offset_um, float) + np.asarray(s.source.offset_um, float)
        info = {"mpp": float(grid.mpp), "offset_um": [float(v) for v in origin]}
        if names is not None:
            info["class_names"] = list(names)
        return info

    def import_geojson(self, path=None):
        """A QuPath GeoJSON as a Shapes layer (one shape per polygon, its class as a feature);
        the file's own polygons (holes included) are what teaching uses until you edit."""
        from ...annotations import read_annotations

        s = self.session
        if s.grid is None:
            self.runner.say("Run a segmentation first: annotations are placed on its tiles.")
            return None
        if path is None:
            path, _ = QFileDialog.getOpenFileName(
                self.native, "QuPath annotations", "", "GeoJSON (*.geojson *.json)"
            )
            if not path:
                return None
        try:
            annotations = read_annotations(path, slide=s.source.slide)
        except Exception as exc:
            self.runner.error(exc)
            return None
        placement = self._placement()
        shapes, classes, colors = [], [], []
        for region in annotations.regions:
            for part in getattr(region.polygon, "geoms", [region.polygon]):
                xy = np.asarray(part.exterior.coords)[:-1]
                world = (xy[:, ::-1] - 0.5) * placement["mpp"] + placement["offset_um"]
                shapes.append(world)
                classes.append(region.name)
                colors.append(region.color or (1.0, 1.0, 0.0, 1.0))
        layer = self.viewer.add_shapes(
            shapes,
            shape_type="polygon",
            name=f"{annotations.source} annotations",
            features={"class": classes},
            face_color=[(*c[:3], 0.35) for c in colors],
            edge_color=[c for c in colors],
            metadata={"napari_conch": {**placement, "annotations": annotations}},
            units=(MICROMETRE, MICROMETRE),
        )
        self._choose(layer)
        self.runner.say(
            f"Imported {len(annotations)} regions ({', '.join(annotations.class_names)})."
        )
        return layer

    def corrections_to_annotations(self):
        """Cells repainted in the segmentation layer become annotations of their class."""
        seg = self.session.segmentation
        shown = result_layer(self.viewer, seg) if seg is not None else None
        if shown is None or np.shape(shown.data) != seg.labels.shape:
            self.runner.say("Paint corrections into a segmentation layer first.")
            return None
        painted = np.asarray(shown.data)
        changed = (painted != seg.labels) & (painted > 0)
        if not changed.any():
            self.runner.say("No corrections painted yet: paint over the segmentation first.")
            return None
        layer = self.annotation_layer()
        if layer is None or not hasattr(layer, "selected_label"):
            layer = self.new_annotation_layer()
        if layer is None or np.shape(layer.data) != painted.shape:
            self.runner.say("The annotation layer is not on this map's cells: make a new one.")
            return None
        names = layer.metadata["napari_conch"].get("class_names") or self.class_names()
        data = np.asarray(layer.data).copy()
        for value in np.unique(painted[changed]):
            name = seg.class_names[int(value) - 1]
            if name in names:
                data[changed & (painted == value)] = names.index(name) + 1
        layer.data = data
        self.runner.say(f"{int(changed.sum())} corrected cells are annotations now.")
        return layer

    def _choose(self, layer) -> None:
        self.layer_combo.reset_choices()
        self.layer_combo.value = layer.name

    def _watch(self, *_args) -> None:
        """Refit after each change of the chosen layer (debounced), when live."""
        layer = self.annotation_layer()
        if layer is None or id(layer) in self._watched:
            return
        self._watched.add(id(layer))
        for event in ("data", "paint", "set_data", "features"):
            emitter = getattr(layer.events, event, None)
            if emitter is not None:
                emitter.connect(self._changed)

    def _changed(self, *_args) -> None:
        layer = self.annotation_layer()
        if layer is not None and hasattr(layer, "shape_type"):
            info = layer.metadata.get("napari_conch", {})
            info.pop("annotations", None)  # edited: read the shapes themselves from now on
        if self.live.value:
            self._timer.start()

    # -- teaching -------------------------------------------------------------------------------

    def annotations(self):
        """The chosen layer's annotations, placed on the slide."""
        from ...annotations import read_annotations

        layer = self.annotation_layer()
        if layer is None:
            raise ValueError("Choose or make an annotation layer first (Teach tab).")
        info = layer.metadata.setdefault("napari_conch", {})
        if info.get("annotations") is not None:
            return info["annotations"]
        for key, value in self._placement().items():
            info.setdefault(key, value)
        classes = info.get("class_names") if hasattr(layer, "selected_label") else None
        return read_annotations(layer, classes=classes)

    def teach(self):
        """Fit and map in a worker; a change while it runs starts another round after it."""
        from ...lesson import teach

        if self._busy:
            self._again = True
            return None
        s = self.session
        try:
            emb = s.ready_embeddings()
            annotations = self.annotations()
            prompts = self.segment_panel.prompt_set() if self.use_text.value else None
        except Exception as exc:
            self.runner.error(exc)
            return None
        self._busy = True
        self.runner.say("Teaching: fitting on the annotations and mapping the slide…")
        return self.runner.start(
            teach,
            emb,
            annotations,
            model=s.model if prompts is not None else None,
            prompts=prompts,
            background=self.segment_panel.background_class(),
            min_confidence=self.segment_panel.min_confidence.value or None,
            on_return=self.show_lesson,
            finished=self._round_over,
            progress={"total": 0, "desc": "Teaching"},
        )

    def slide_changed(self) -> None:
        """Another slide: the last lesson was about the last one."""
        self._timer.stop()
        self._again = False
        self.lesson = None
        self.report.value = ""

    def _round_over(self) -> None:
        self._busy = False
        if self._again:
            self._again = False
            self.teach()

    def show_lesson(self, lesson) -> None:
        s = self.session
        seg = lesson.segmentation
        prefix = f"{layer_prefix(seg)} few-shot"
        show_segmentation(self.viewer, seg, prefix=prefix, offset_um=s.source.offset_um)
        self._show_examples(lesson, prefix)
        s.segmentation = seg  # what Export writes
        self.segment_panel.export_button.enabled = True
        self.lesson = lesson
        self.report.value = _report_html(lesson)
        self.runner.say(f"Few-shot map ready ({lesson.classifier.method}).")

    def _show_examples(self, lesson, prefix: str) -> None:
        """The example tiles as points, in their class's colour."""
        from ...colors import class_colors

        s = self.session
        grid = s.embeddings.grid
        used = lesson.examples >= 0
        names = lesson.classifier.class_names
        colors = class_colors(names)
        centres = grid.tile_centres_um(s.source.offset_um)[used]
        faces = [colors[names[i]] for i in lesson.examples[used]] or "white"
        with contextlib.suppress(ValueError):  # napari refuses an empty colour list
            upsert(
                self.viewer,
                "points",
                f"{prefix} examples",
                centres,
                slide=s.slide_name,
                size=grid.tile_um / 4,
                face_color=faces,
                border_color="white",
                visible=bool(used.any()),
                units=(MICROMETRE, MICROMETRE),
            )

    def save_classifier(self, path=None):
        if self.lesson is None:
            self.runner.say("Teach first: there is no classifier yet.")
            return None
        if path is None:
            path, _ = QFileDialog.getSaveFileName(
                self.native, "Save classifier", "classifier.npz", "Classifier (*.npz)"
            )
            if not path:
                return None
        written = self.lesson.classifier.save(path)
        self.runner.say(f"Classifier saved: {written} (napari-conch segment --classifier).")
        return written


def _swatch(rgba) -> str:
    r, g, b = (round(255 * float(v)) for v in rgba[:3])
    return f'<span style="color: rgb({r},{g},{b})">■</span>'


def _report_html(lesson) -> str:
    from ...colors import class_colors

    clf = lesson.classifier
    examples = clf.details["annotations"]["examples"]
    colors = class_colors(clf.class_names)
    lines = [f"<b>{clf.method}</b> on {clf.model.get('name')}"]
    if not clf.model.get("trained", True):
        lines.append("<b>UNTRAINED model</b>: a pipeline check, not a result")
    held = lesson.held_out
    for name in clf.class_names:
        score = ""
        if held is not None and isinstance(held.get(name), dict):
            dice = held[name]["dice"]
            score = f", held-out Dice {dice:.2f}" if np.isfinite(dice) else ""
        taught = examples.get(name, 0)
        what = f"{taught} example tiles" if taught else "text only"
        lines.append(f"{_swatch(colors[name])} {name}: {what}{score}")
    if held is not None:
        lines.append(f"Scores {held['note']}.")
    else:
        lines.append(f"No held-out scores: {lesson.why_not_held_out}")
    return "<br>".join(lines)
