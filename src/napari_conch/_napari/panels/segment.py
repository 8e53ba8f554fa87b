"""Segment tab: the classes, the background rule, Run / Cancel / Export, and the legend."""

from __future__ import annotations

import contextlib

import numpy as np
from magicgui.widgets import ComboBox, Container, FloatSpinBox, Label, PushButton
from qtpy.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QHeaderView,
    QTableWidget,
    QTableWidgetItem,
)

from ..layers import result_layer
from ..live import LiveSegmentation, segmentation_steps
from ..session import tiles_inside_layer
from ._forms import form, page, rich, row

NO_BACKGROUND = "(none)"


class SegmentPanel:
    """Runs segmentations with the class table over the Slide tab's tiles."""

    def __init__(self, viewer, session, runner, slide_panel, settings):
        self.viewer = viewer
        self.session = session
        self.runner = runner
        self.slide_panel = slide_panel
        self.settings = settings
        self._cancel = None
        self.live: LiveSegmentation | None = None  # the run in flight, or the last one
        self._templates: list[str] | None = None  # from a prompt JSON; None: ours

        # plain Qt: magicgui has no editable table
        self.class_table = QTableWidget(0, 2)
        self.class_table.setHorizontalHeaderLabels(["Class", "Synonyms (comma-separated)"])
        header = self.class_table.horizontalHeader()
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.class_table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.class_table.itemChanged.connect(self._refresh_background_choices)

        add = PushButton(text="+ class")
        add.changed.connect(lambda: self._add_class_row("", ""))
        remove = PushButton(text="− class", tooltip="Remove the selected rows")
        remove.changed.connect(self._remove_class_rows)
        load_json = PushButton(text="Load prompt JSON…", tooltip="CONCH's prompt file format")
        load_json.changed.connect(self._load_prompts)
        save_json = PushButton(text="Save…")
        save_json.changed.connect(self._save_prompts)
        self.templates_label = Label(value="")
        self.background = ComboBox(
            label="Background class",
            choices=self._background_choices,
            tooltip="The class for glass and empty space: where it wins, maps stay "
            "unlabelled, tile tables say 'background', and the slide call leaves it out.",
        )
        self.min_confidence = FloatSpinBox(
            label="Min. confidence",
            min=0.0,
            max=1.0,
            step=0.05,
            tooltip="Cells whose best class is less likely stay unlabelled.",
        )
        self.min_confidence.native.setSpecialValueText("off")
        self.run_button = PushButton(
            text="Run segmentation",
            tooltip="Embed the slide's tissue (the part in view first) and label it with the "
            "classes above; the map redraws as tiles land. Ctrl+Enter.",
        )
        self.run_button.changed.connect(self.run_segmentation)
        self.cancel_button = PushButton(
            text="Cancel", tooltip="Stop after the batch in flight; Run continues later. Esc."
        )
        self.cancel_button.enabled = False
        self.cancel_button.changed.connect(self.cancel)
        self.export_button = PushButton(
            text="Export…",
            tooltip="Write QuPath GeoJSON, OME-Zarr, OME-TIFF and tile tables into a folder "
            "(you choose the formats; earlier exports are never replaced without asking).",
        )
        self.export_button.enabled = False
        self.export_button.changed.connect(lambda: self.export_results())
        self.legend = Label(value="")  # plain HTML: a swatch, name and area per class
        rich(self.legend)
        controls: Container = form(
            row(add, remove, load_json, save_json),
            self.templates_label,
            self.background,
            self.min_confidence,
            row(self.run_button, self.cancel_button, self.export_button),
        )
        self.native = page(self.class_table, controls, self.legend)

    # -- classes ------------------------------------------------------------------------------

    def class_names(self) -> list[str]:
        names = []
        for r in range(self.class_table.rowCount()):
            item = self.class_table.item(r, 0)
            if item and item.text().strip():
                names.append(item.text().strip())
        return names

    def background_class(self) -> str | None:
        """The chosen background class (None: no background class)."""
        background = self.background.value
        return None if background in (None, "", NO_BACKGROUND) else background

    def prompt_set(self):
        """The class table (and a loaded prompt JSON's templates) as a PromptSet."""
        from ...prompts import PromptSet

        classes = {}
        for r in range(self.class_table.rowCount()):
            name_item, syn_item = self.class_table.item(r, 0), self.class_table.item(r, 1)
            name = name_item.text().strip() if name_item else ""
            if not name:
                continue
            text = syn_item.text() if syn_item else ""
            classes[name] = [s.strip() for s in text.split(",") if s.strip()] or [name]
        return PromptSet(classes, self._templates)

    def set_classes(self, classes, templates=None) -> None:
        """Fill the class table: {name: [synonyms]} or names."""
        if not isinstance(classes, dict):
            classes = {c: [c] for c in classes}
        self.class_table.blockSignals(True)
        self.class_table.setRowCount(0)
        for name, synonyms in classes.items():
            self._add_class_row(name, ", ".join(synonyms))
        self.class_table.blockSignals(False)
        self._templates = list(templates) if templates else None
        self._refresh_background_choices()

    def _add_class_row(self, name: str, synonyms: str) -> None:
        r = self.class_table.rowCount()
        self.class_table.insertRow(r)
        self.class_table.setItem(r, 0, QTableWidgetItem(name))
        self.class_table.setItem(r, 1, QTableWidgetItem(synonyms))

    def _remove_class_rows(self) -> None:
        for r in sorted({i.row() for i in self.class_table.selectedIndexes()}, reverse=True):
            self.class_table.removeRow(r)
        self._refresh_background_choices()

    def _background_choices(self, _widget=None) -> list[str]:
        return [NO_BACKGROUND, *self.class_names()]

    def _refresh_background_choices(self, *_args) -> None:
        before = self.background.value
        self.background.reset_choices()
        names = self.class_names()
        if before in names:
            self.background.value = before
        elif "background" in names:
            self.background.value = "background"
        else:
            self.background.value = NO_BACKGROUND
        n = len(self._templates) if self._templates else "default"
        source = "from prompt JSON" if self._templates else "ours"
        self.templates_label.value = f"Templates: {n} ({source})"

    def _load_prompts(self) -> None:
        from ...prompts import PromptSet

        path, _ = QFileDialog.getOpenFileName(self.native, "Prompt JSON", "", "JSON (*.json)")
        if not path:
            return
        try:
            prompts = PromptSet.from_json(path)
        except Exception as exc:
            self.runner.error(exc)
            return
        self.set_classes(prompts.classes, prompts.templates)

    def _save_prompts(self) -> None:
        path, _ = QFileDialog.getSaveFileName(
            self.native, "Save prompt JSON", "prompts.json", "JSON (*.json)"
        )
        if path:
            try:
                self.prompt_set().to_json(path)
            except Exception as exc:
                self.runner.error(exc)

    # -- running ----------------------------------------------------------------------------

    def run_segmentation(self):
        """Embed (visible area first, drawn as batches land) and segment with the classes."""
        from ...progress import CancelToken

        s = self.session
        try:
            prompts = self.prompt_set()
            s.check_ready()
        except Exception as exc:
            self.runner.error(exc)
            return None
        self.settings.save()
        # kept here: Qt holds a connected bound method's object only weakly
        self.live = live = LiveSegmentation(
            self.viewer,
            s,
            prompts,
            self.background_class(),
            self.min_confidence.value or None,
            say=self.runner.say,
            on_drawn=self._drawn,
            error=self.runner.error,
            on_started=self.slide_panel.show_estimate,
        )
        self._cancel = CancelToken()
        self._running(True)
        self.runner.say("Preparing: tissue, tiles and prompts…")
        options = self.slide_panel.grid_options()
        s.grid_options = options
        return self.runner.start(
            segmentation_steps,
            s.source.slide,
            s.model,
            options,
            s.tissue,
            self._restriction(),
            prompts,
            self.slide_panel.viewport_region(),
            self._cancel,
            int(self.slide_panel.batch.value) or None,  # 0: the engine's choice
            self.slide_panel.cache(),
            s.embeddings,
            on_yield=live.step,
            on_return=live.finish,
            finished=lambda: self._running(False),
            progress={"total": 0, "desc": "Embedding tiles"},
        )

    def _restriction(self):
        """A function keeping the grid's tiles inside the user's mask layer, or None."""
        layer = self.slide_panel.user_mask()
        if layer is None:
            return None
        offset = self.session.source.offset_um
        return lambda grid: grid.subset(tiles_inside_layer(grid, layer, offset))

    def _drawn(self, seg) -> None:
        self.legend.value = _legend_html(seg)
        self.export_button.enabled = True

    def cancel(self) -> None:
        if self._cancel is not None and self.cancel_button.enabled:  # a run in flight
            self._cancel.cancel()
            self.runner.say("Cancelling after the batch in flight…")

    def _running(self, on: bool) -> None:
        with contextlib.suppress(RuntimeError):  # the widget closed before the run ended
            self.run_button.enabled = not on
            self.cancel_button.enabled = on

    def slide_changed(self) -> None:
        """Another slide: nothing to export until it is segmented; a run on the last one
        stops (its results would be dropped anyway, and cached tiles are kept)."""
        self.cancel()
        self.export_button.enabled = self.session.segmentation is not None
        self.legend.value = ""

    # -- export -----------------------------------------------------------------------------

    def export_results(self, out_dir=None, formats=None, overwrite: bool | None = None):
        """Write the last segmentation (with painted corrections), the tile table and the
        current similarity map with :func:`napari_conch.export.export_all`.

        From the *Export…* button it asks for a folder and the formats (the last choice is
        remembered), and — if an earlier export of this slide is there — whether to replace
        it or keep both (the new files then get a numbered name). Called with ``out_dir``,
        it asks nothing: ``formats`` defaults to the last choice, and earlier files are kept
        unless ``overwrite=True``.
        """
        from ...formats import FORMATS, export_all, export_paths, file_stem, free_stem
        from .. import export_dialog

        seg = self.session.segmentation
        if seg is None:
            self.runner.say("Run a segmentation first: there is nothing to export yet.")
            return None
        interactive = out_dir is None
        chosen = list(formats or self.settings.export_formats() or FORMATS)
        if interactive:
            out_dir = QFileDialog.getExistingDirectory(self.native, "Export into folder")
            if not out_dir:
                return None
            chosen = export_dialog.choose_formats(self.native, chosen)
            if not chosen:
                return None
        self.settings.remember_export_formats(chosen)
        seg = self._with_painted_fixes(seg)
        sim = self.session.similarity
        similarities = [sim] if sim is not None else []
        stem = file_stem(self.session.source.layer_name)
        emb = self.session.embeddings
        layout = {"n_similarities": len(similarities), "with_tiles": emb is not None}
        existing = [p for p in export_paths(out_dir, stem, chosen, **layout).values() if p.exists()]
        if existing:
            if overwrite is None:
                answer = (
                    export_dialog.ask_overwrite(self.native, existing)
                    if interactive
                    else export_dialog.KEEP_BOTH
                )
                if answer is None:
                    return None
                overwrite = answer == export_dialog.REPLACE
            if not overwrite:
                stem = free_stem(out_dir, stem, chosen, **layout)

        def done(written):
            self.runner.say(f"Exported {len(written)} files to {out_dir} ({stem}.*).")

        return self.runner.start(
            export_all,
            seg,
            out_dir,
            stem,
            emb=emb,
            similarities=similarities,
            formats=chosen,
            on_return=done,
            any_slide=True,  # the files are written whatever is chosen next
            progress={"total": 0, "desc": "Exporting"},
        )

    def _with_painted_fixes(self, seg):
        """The segmentation with the labels as painted in its napari layer (and their
        areas measured)."""
        layer = result_layer(self.viewer, seg)
        if layer is not None and np.shape(layer.data) == seg.labels.shape:
            return seg.with_labels(layer.data)
        return seg


def _legend_html(seg) -> str:
    parts = []
    for label, name in enumerate(seg.class_names, start=1):
        r, g, b, _ = (int(255 * c) for c in seg.colors[label])
        area = seg.areas_mm2.get(name, 0.0)
        parts.append(f'<span style="color:rgb({r},{g},{b})">■</span> {name} ({area:.2f} mm²)')
    note = "" if seg.trained else '<br><b style="color:#e0301e">UNTRAINED model — not a result</b>'
    return "&nbsp;&nbsp;".join(parts) + note
