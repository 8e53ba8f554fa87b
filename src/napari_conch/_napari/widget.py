"""The napari-conch dock widget: model, slide, tiling, segmentation, exploration, slide calls.

Heavy work (loading a model, tissue masks, embedding, text encoding) runs in napari thread
workers with progress bars; layers are only touched on the GUI thread, from the workers'
signals. Result layers are reused and updated in place. Settings (not secrets) are kept
between sessions with QSettings.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass

import numpy as np
from qtpy.QtCore import QSettings, Qt, QTimer
from qtpy.QtGui import QKeySequence, QShortcut
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from ..errors import NapariConchError
from ..errors import describe as describe_error
from ..models.weights import CHECKPOINT_SUFFIXES
from . import guard_triton
from .layers import (
    camera,
    layer_prefix,
    show_mask,
    show_scale_bar,
    show_segmentation,
    show_similarity,
    show_tiles,
    viewport_um,
)
from .session import Session, slide_from_layer, tiles_inside_layer

logger = logging.getLogger(__name__)
guard_triton()  # before anything imports timm/torchvision (see guard_triton)

DEFAULT_CLASSES = [
    ("tumor", "tumor, carcinoma"),
    ("stroma", "stroma"),
    ("necrosis", "necrosis"),
    ("background", "background, white space"),
]
# Test configurations: selectable by name (settings, scripts), not offered in the list.
HIDDEN_MODELS = ("conch_tiny",)
LIVE_REDRAW_SECONDS = 0.5
PROMPT_DEBOUNCE_MS = 350


class ConchWidget(QWidget):
    """Dock widget; ``napari_viewer`` is given by napari (or by :func:`napari_conch.view`)."""

    def __init__(self, napari_viewer, settings: QSettings | None = None):
        super().__init__()
        self.viewer = napari_viewer
        self.session = Session()
        self.settings = settings if settings is not None else QSettings("napari-conch", "widget")
        self._workers: set = set()
        self._cancel = None
        self._prompt_seq = 0
        self._hits: list = []
        self._hit_index = -1
        self._prompts_json_templates: list[str] | None = None

        tabs = QTabWidget()
        tabs.addTab(self._model_tab(), "Model")
        tabs.addTab(self._slide_tab(), "Slide")
        tabs.addTab(self._segment_tab(), "Segment")
        tabs.addTab(self._explore_tab(), "Explore")
        tabs.addTab(self._call_tab(), "Slide call")
        self.tabs = tabs
        self.status = QLabel("Load a model, pick a slide layer.")
        self.status.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.addWidget(tabs)
        layout.addWidget(self.status)

        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(PROMPT_DEBOUNCE_MS)
        self._debounce.timeout.connect(self.update_similarity)

        # Keys while the widget has focus: run and cancel without reaching for the mouse.
        self.run_shortcut = QShortcut(QKeySequence("Ctrl+Return"), self)
        self.run_shortcut.setContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
        self.run_shortcut.activated.connect(self.run_segmentation)
        self.cancel_shortcut = QShortcut(QKeySequence("Escape"), self)
        self.cancel_shortcut.setContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
        self.cancel_shortcut.activated.connect(self.cancel)

        self.viewer.layers.events.inserted.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._refresh_layers)
        self._restore_settings()
        self._refresh_layers()

    # -- building the tabs ----------------------------------------------------------------

    def _model_tab(self) -> QWidget:
        page, form = _form()
        self.model_name = _ModelCombo()
        self.model_name.refresh()
        self.checkpoint = QLineEdit()
        self.checkpoint.setPlaceholderText(
            "weights file or model folder, hf_hub:<repo>, or empty: auto"
        )
        browse = QPushButton("File…")
        browse.setToolTip(f"A weights file: {', '.join(CHECKPOINT_SUFFIXES)}")
        browse.clicked.connect(self._browse_checkpoint)
        browse_folder = QPushButton("Folder…")
        browse_folder.setToolTip("A model folder as downloaded from the hub (PLIP, QuiltNet)")
        browse_folder.clicked.connect(self._browse_checkpoint_folder)
        self.random_weights = QCheckBox("untrained (random) weights — pipeline check only")
        self.token = QLineEdit()
        self.token.setEchoMode(QLineEdit.EchoMode.Password)
        self.token.setPlaceholderText("Hugging Face token (not saved)")
        self.device = _DeviceCombo()  # GPUs are listed when it opens: no torch at docking
        self.precision = QComboBox()
        self.precision.addItems(["auto", "fp32", "bf16", "fp16"])
        self.load_button = QPushButton("Load model")
        self.load_button.setToolTip(
            "Build the chosen model with these weights (on this device). Without CONCH "
            "weights, try colour-toy on File → Open Sample → napari-conch → Synthetic slide."
        )
        self.load_button.clicked.connect(self.load_model)
        self.model_status = QLabel("No model loaded.")
        self.model_status.setWordWrap(True)
        form.addRow("Model", self.model_name)
        form.addRow("Weights", _row(self.checkpoint, browse, browse_folder))
        form.addRow("", self.random_weights)
        form.addRow("Token", self.token)
        form.addRow("Device", self.device)
        form.addRow("Precision", self.precision)
        form.addRow(self.load_button)
        form.addRow(self.model_status)
        return page

    def _slide_tab(self) -> QWidget:
        page, form = _form()
        self.layer_combo = QComboBox()
        self.layer_combo.currentTextChanged.connect(self._on_layer_changed)
        open_button = QPushButton("Open file…")
        open_button.clicked.connect(self._open_file)
        self.mpp = QDoubleSpinBox()
        self.mpp.setRange(0.0, 50.0)
        self.mpp.setDecimals(4)
        self.mpp.setSingleStep(0.01)
        self.mpp.setSpecialValueText("unknown")
        self.mpp.setSuffix(" µm/px")
        self.mpp.valueChanged.connect(self._on_mpp_changed)
        self.mpp_note = QLabel("")
        self.tissue_preview = QCheckBox("show tissue mask")
        self.tissue_preview.toggled.connect(self._on_tissue_toggled)
        self.mask_layer = QComboBox()
        self.mask_layer.setToolTip(
            "Analyse only inside a Labels layer you painted or a Shapes layer you drew"
        )
        self.mask_layer.currentIndexChanged.connect(self._invalidate_grid)
        self.tile_um = QDoubleSpinBox()
        self.tile_um.setToolTip("Tile side in µm (default: the model's own: 224 µm for CONCH).")
        self.tile_um.setRange(8.0, 4096.0)
        self.tile_um.setValue(224.0)
        self.tile_um.setSuffix(" µm")
        self.overlap = QComboBox()
        self.overlap.setToolTip(
            "Share of a tile its neighbour also covers: finer maps, more tiles (75 %: 16×)."
        )
        self.overlap.addItems(["0 %", "50 %", "75 %"])
        self.batch = QSpinBox()
        self.batch.setRange(1, 512)
        self.batch.setValue(8)
        self.estimate = QLabel("")
        estimate = QPushButton("Estimate")
        estimate.clicked.connect(self.estimate_work)
        self.cache_on_disk = QCheckBox("cache embeddings on disk (slides opened from files)")
        self.cache_on_disk.setChecked(True)
        self.tile_um.valueChanged.connect(self._invalidate_grid)
        self.overlap.currentIndexChanged.connect(self._invalidate_grid)
        form.addRow("Image layer", _row(self.layer_combo, open_button))
        form.addRow("Pixel size", self.mpp)
        form.addRow("", self.mpp_note)
        form.addRow("", self.tissue_preview)
        form.addRow("Only inside", self.mask_layer)
        form.addRow("Tile", self.tile_um)
        form.addRow("Overlap", self.overlap)
        form.addRow("Batch", self.batch)
        form.addRow("", self.cache_on_disk)
        form.addRow(_row(estimate, self.estimate))
        return page

    def _segment_tab(self) -> QWidget:
        page = QWidget()
        layout = QVBoxLayout(page)
        self.class_table = QTableWidget(0, 2)
        self.class_table.setHorizontalHeaderLabels(["Class", "Synonyms (comma-separated)"])
        self.class_table.horizontalHeader().setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.class_table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        add = QPushButton("+ class")
        add.clicked.connect(lambda: self._add_class_row("", ""))
        remove = QPushButton("− class")
        remove.clicked.connect(self._remove_class_rows)
        load_json = QPushButton("Load prompt JSON…")
        load_json.clicked.connect(self._load_prompts)
        save_json = QPushButton("Save…")
        save_json.clicked.connect(self._save_prompts)
        self.templates_label = QLabel("")
        self.background = QComboBox()
        self.background.setToolTip(
            "The class for glass and empty space: where it wins, maps stay unlabelled, tile "
            "tables say 'background', and the slide call leaves it out."
        )
        self.min_confidence = QDoubleSpinBox()
        self.min_confidence.setToolTip("Cells whose best class is less likely stay unlabelled.")
        self.min_confidence.setRange(0.0, 1.0)
        self.min_confidence.setSingleStep(0.05)
        self.min_confidence.setSpecialValueText("off")
        self.run_button = QPushButton("Run segmentation")
        self.run_button.setToolTip(
            "Embed the slide's tissue (the part in view first) and label it with the classes "
            "above; the map redraws as tiles land. Ctrl+Enter."
        )
        self.run_button.clicked.connect(self.run_segmentation)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop after the batch in flight; Run continues later. Esc.")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        self.export_button = QPushButton("Export…")
        self.export_button.setToolTip(
            "Write QuPath GeoJSON, OME-Zarr, OME-TIFF and tile tables into a folder (you "
            "choose the formats; earlier exports are never replaced without asking)."
        )
        self.export_button.setEnabled(False)
        self.export_button.clicked.connect(lambda: self.export_results())
        self.legend = QLabel("")
        self.legend.setTextFormat(Qt.TextFormat.RichText)
        layout.addWidget(self.class_table)
        layout.addWidget(_row(add, remove, load_json, save_json))
        layout.addWidget(self.templates_label)
        form = QFormLayout()
        form.addRow("Background class", self.background)
        form.addRow("Min. confidence", self.min_confidence)
        layout.addLayout(form)
        layout.addWidget(_row(self.run_button, self.cancel_button, self.export_button))
        layout.addWidget(self.legend)
        self.class_table.itemChanged.connect(self._refresh_background_choices)
        return page

    def _explore_tab(self) -> QWidget:
        page, form = _form()
        self.prompt = QLineEdit()
        self.prompt.setPlaceholderText("type a description, e.g. mitotic figure")
        self.prompt.textChanged.connect(lambda _text: self._debounce.start())
        self.negative = QLineEdit()
        self.negative.setPlaceholderText("optional: subtract this prompt")
        self.negative.textChanged.connect(lambda _text: self._debounce.start())
        self.exemplar_button = QPushButton("Exemplar points")
        self.exemplar_button.setToolTip("Add points on tissue: the map shows tiles that look alike")
        self.exemplar_button.clicked.connect(self.start_exemplars)
        self.k = QSpinBox()
        self.k.setRange(1, 500)
        self.k.setValue(20)
        find = QPushButton("Find top tiles")
        find.clicked.connect(self.run_retrieval)
        previous = QPushButton("◀")
        previous.clicked.connect(lambda: self.step_hit(-1))
        following = QPushButton("▶")
        following.clicked.connect(lambda: self.step_hit(1))
        self.hit_label = QLabel("")
        form.addRow("Prompt", self.prompt)
        form.addRow("Minus", self.negative)
        form.addRow(self.exemplar_button)
        form.addRow("Top-k", _row(self.k, find))
        form.addRow(_row(previous, following, self.hit_label))
        return page

    def _call_tab(self) -> QWidget:
        page, form = _form()
        self.top_k = QSpinBox()
        self.top_k.setRange(1, 1000)
        self.top_k.setValue(10)
        call = QPushButton("Call slide (MI-Zero)")
        call.clicked.connect(self.run_slide_call)
        self.call_table = QTableWidget(0, 3)
        self.call_table.setHorizontalHeaderLabels(["Class", "Top-K mean cosine", "Probability"])
        self.call_table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.call_label = QLabel("")
        form.addRow("Top K (choose before looking)", _row(self.top_k, call))
        form.addRow(self.call_table)
        form.addRow(self.call_label)
        return page

    # -- model ------------------------------------------------------------------------------

    def _browse_checkpoint(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Model weights", "", f"Weights ({' '.join('*' + s for s in CHECKPOINT_SUFFIXES)})"
        )
        if path:
            self.checkpoint.setText(path)

    def _browse_checkpoint_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Model folder")
        if path:
            self.checkpoint.setText(path)

    def load_model(self):
        """Load the model chosen in the Model tab (in a worker)."""
        from ..models import load_model

        options = {
            "checkpoint": "random"
            if self.random_weights.isChecked()
            else (self.checkpoint.text().strip() or None),
            "device": self.device.currentText(),
            "precision": self.precision.currentText(),
        }
        token = self.token.text().strip()
        if token:
            options["token"] = token
        name = self.model_name.currentText()
        self.load_button.setEnabled(False)
        self.model_status.setText(f"Loading {name}…")
        self._save_settings()

        def failed(exc):
            # the status says what happened (the notification has the whole message)
            previous = getattr(self.session.model, "name", None)
            still = f" Still using {previous}." if previous else ""
            self.model_status.setText(
                f"<b>Could not load {name}.</b>{still}<br>{_first_sentence(exc)}"
            )

        return self._start(
            load_model,
            name,
            on_return=self.set_model,
            on_error=failed,
            progress={"desc": f"Loading {name}"},
            finished=lambda: self.load_button.setEnabled(True),
            **options,
        )

    def set_model(self, model) -> None:
        """Use ``model`` (any object implementing the model protocol)."""
        from ..protocol import check_model, is_trained

        check_model(model)
        self.session.model = model
        self.session.grid = self.session.embeddings = None
        trained = is_trained(model)
        device = getattr(model, "device", "?")
        warning = (
            ""
            if trained
            else '<br><b style="color:#e0301e">UNTRAINED weights: results are meaningless.</b>'
        )
        geometry = f"input {model.input_size} px at {model.target_mpp} µm/px"
        kind = "trained" if trained else "untrained"
        self.model_status.setText(
            f"<b>{model.name}</b> on {device} · {geometry} · {kind} weights{warning}"
        )
        self.model_status.setTextFormat(Qt.TextFormat.RichText)
        self.tile_um.setValue(float(model.input_size) * float(model.target_mpp))
        self._say(f"{model.name} ready.")

    # -- slide ------------------------------------------------------------------------------

    def _refresh_layers(self, *_args) -> None:
        chosen_mask = self.mask_layer.currentText()
        masks = [
            layer.name
            for layer in self.viewer.layers
            if type(layer).__name__ in ("Labels", "Shapes") and "napari_conch" not in layer.metadata
        ]
        self.mask_layer.blockSignals(True)
        self.mask_layer.clear()
        self.mask_layer.addItems(["(tissue detection)", *masks])
        if chosen_mask in masks:
            self.mask_layer.setCurrentText(chosen_mask)
        self.mask_layer.blockSignals(False)
        current = self.layer_combo.currentText()
        names = [layer.name for layer in self.viewer.layers if _is_rgb_image(layer)]
        self.layer_combo.blockSignals(True)
        self.layer_combo.clear()
        self.layer_combo.addItems(names)
        if current in names:
            self.layer_combo.setCurrentText(current)
        self.layer_combo.blockSignals(False)
        if self.layer_combo.currentText() != current:
            self._on_layer_changed(self.layer_combo.currentText())

    def _open_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open a slide")
        if path:
            self.viewer.open(path, plugin="napari-conch")

    def _on_layer_changed(self, name: str) -> None:
        if not name or name not in self.viewer.layers:
            self.session.reset_slide(None)
            return
        try:
            source = slide_from_layer(self.viewer.layers[name])
        except Exception as exc:  # an image napari-conch cannot use
            self._error(exc)
            return
        self.session.reset_slide(source)
        mpp = source.slide.mpp
        self.mpp.blockSignals(True)
        self.mpp.setValue(mpp or 0.0)
        self.mpp.blockSignals(False)
        where = source.slide.metadata.get("mpp_source")
        self.mpp_note.setText(
            f"from {where}" if mpp and where else "" if mpp else "missing — enter the pixel size"
        )
        if self.tissue_preview.isChecked():
            self._on_tissue_toggled(True)

    def _on_mpp_changed(self, value: float) -> None:
        name = self.layer_combo.currentText()
        if not name or name not in self.viewer.layers:
            return
        source = slide_from_layer(self.viewer.layers[name], mpp=value or None)
        self.session.reset_slide(source)
        self.mpp_note.setText("entered by you" if value else "missing — enter the pixel size")

    def _invalidate_grid(self, *_args) -> None:
        self.session.grid = self.session.embeddings = None
        self.estimate.setText("")

    def _on_tissue_toggled(self, on: bool) -> None:
        from ..tissue import tissue_mask

        name = self._layer_name("tissue")
        if not on:
            if name in self.viewer.layers:
                self.viewer.layers[name].visible = False
            return
        source = self.session.source
        if source is None:
            return

        def shown(mask):
            self.session.tissue = mask
            show_mask(self.viewer, mask, name, source.offset_um).visible = True

        if self.session.tissue is not None:
            shown(self.session.tissue)
        else:
            self._start(
                tissue_mask, source.slide, on_return=shown, progress={"desc": "Tissue mask"}
            )

    def _grid_options(self) -> dict:
        overlap = (0.0, 0.5, 0.75)[self.overlap.currentIndex()]
        return {"tile_um": float(self.tile_um.value()), "overlap": overlap}

    def _user_mask(self):
        """The Labels/Shapes layer chosen to restrict the analysis, or None."""
        name = self.mask_layer.currentText()
        return self.viewer.layers[name] if name and name in self.viewer.layers else None

    def _check_ready(self) -> None:
        s = self.session
        if s.model is None:
            raise NapariConchError("Load a model first (Model tab).")
        if s.source is None:
            raise NapariConchError("Pick an RGB image layer first (Slide tab).")
        s.source.slide.require_mpp("tiling the slide")

    def _cache(self):
        slide = self.session.source.slide
        return "auto" if slide.path is not None and self.cache_on_disk.isChecked() else None

    def estimate_work(self):
        """Lay out the tiles (tissue mask included, in a worker) and say how many and how long."""
        from ..tiling import tile_grid

        try:
            self._check_ready()
        except Exception as exc:
            self._error(exc)
            return None
        s = self.session
        options = self._grid_options()

        def shown(grid):
            s.grid, s.grid_options = grid, options
            self._show_estimate(grid)

        return self._start(
            tile_grid,
            s.source.slide,
            s.model,
            tissue=s.tissue or True,
            on_return=shown,
            progress={"desc": "Tiling"},
            **options,
        )

    def _show_estimate(self, grid) -> None:
        seconds = self.session.estimate_seconds(len(grid))
        when = f", about {_duration(seconds)}" if seconds else ""
        self.estimate.setText(f"{len(grid)} tiles of {grid.tile_um:.0f} µm{when}")

    # -- segmentation -----------------------------------------------------------------------

    def background_class(self) -> str | None:
        """The Segment tab's background class (None: no background class)."""
        background = self.background.currentText()
        return None if background in ("", "(none)") else background

    def prompt_set(self):
        from ..prompts import PromptSet

        classes = {}
        for row in range(self.class_table.rowCount()):
            name_item, syn_item = self.class_table.item(row, 0), self.class_table.item(row, 1)
            name = name_item.text().strip() if name_item else ""
            if not name:
                continue
            synonyms = [
                s.strip() for s in (syn_item.text() if syn_item else "").split(",") if s.strip()
            ]
            classes[name] = synonyms or [name]
        return PromptSet(classes, self._prompts_json_templates)

    def run_segmentation(self):
        """Embed (visible area first, drawn as batches land) and segment with the class table."""
        from ..engine import CancelToken

        try:
            prompts = self.prompt_set()
            self._check_ready()
        except Exception as exc:
            self._error(exc)
            return None
        s = self.session
        background = self.background_class()
        min_conf = self.min_confidence.value() or None
        token = self._cancel = CancelToken()
        last_draw = [0.0]
        live_box: list = [None]
        self._save_settings()

        interval = [LIVE_REDRAW_SECONDS]

        def draw(force=False):
            live = live_box[0]
            if live is None or live.n_done == 0:
                return
            if not force and time.monotonic() - last_draw[0] < interval[0]:
                return
            started = time.monotonic()
            self._draw_segmentation(live, prompts, background, min_conf, final=force)
            last_draw[0] = time.monotonic()
            # Redraws may take at most a tenth of the GUI thread's time.
            interval[0] = max(LIVE_REDRAW_SECONDS, 10 * (last_draw[0] - started))

        def on_step(step):
            if isinstance(step, str):  # a stage of the preparation
                self._say(step)
                return
            if isinstance(step, _Start):
                s.grid, s.grid_options = step.grid, self._grid_options()
                s.embeddings = live_box[0] = step.embeddings
                self._show_estimate(step.grid)
                draw(force=True)
                return
            self._say(f"Embedded {step.done}/{step.total} tiles · {step.tiles_per_s:.1f} tiles/s")
            if step.tiles_per_s:
                s.last_rate = step.tiles_per_s
            draw()

        def on_done(result):
            live = live_box[0]  # the engine returns the live Embeddings it filled
            draw(force=True)
            if live is not None:
                word = "Cancelled" if live.cancelled else "Done"
                self._say(f"{word}: {live.n_done}/{len(live)} tiles embedded.")
            labels = self._layer_name("labels")
            if labels in self.viewer.layers:  # the result, not a hidden map, is selected
                self.viewer.layers.selection.active = self.viewer.layers[labels]
            self._running(False)

        self._running(True)
        self._say("Preparing: tissue, tiles and prompts…")
        mask = self._user_mask()
        restrict = None
        if mask is not None:
            offset = s.source.offset_um

            def restrict(grid, layer=mask):
                return grid.subset(tiles_inside_layer(grid, layer, offset))

        return self._start(
            _segmentation_worker,
            s.source.slide,
            s.model,
            self._grid_options(),
            s.tissue,
            restrict,
            prompts,
            self._viewport_region(),
            token,
            self.batch.value(),
            self._cache(),
            s.embeddings,
            on_yield=on_step,
            on_return=on_done,
            progress={"total": 0, "desc": "Embedding tiles"},
            on_error=lambda exc: self._running(False),
        )

    def _draw_segmentation(self, emb, prompts, background, min_conf, final=True) -> None:
        from ..zeroshot import zero_shot_segment

        try:
            seg = zero_shot_segment(
                emb, self.session.model, prompts, background=background, min_confidence=min_conf
            )
        except Exception as exc:
            self._error(exc)
            return
        show_segmentation(
            self.viewer, seg, offset_um=self.session.source.offset_um, update_hidden=final
        )
        show_scale_bar(self.viewer)
        self.legend.setText(_legend_html(seg))
        self.last_segmentation = seg
        self.export_button.setEnabled(True)

    def export_results(self, out_dir=None, formats=None, overwrite: bool | None = None):
        """Write the last segmentation (with painted corrections), the tile table and the
        current similarity map with :func:`napari_conch.export.export_all`.

        From the *Export…* button it asks for a folder and the formats (the last choice is
        remembered), and — if an earlier export of this slide is there — whether to replace
        it or keep both (the new files then get a numbered name). Called with ``out_dir``,
        it asks nothing: ``formats`` defaults to the last choice, and earlier files are kept
        unless ``overwrite=True``.
        """
        from dataclasses import replace

        from ..export import FORMATS, export_all, export_paths, file_stem, free_stem
        from .export_dialog import KEEP_BOTH, REPLACE, ask_overwrite, choose_formats

        seg = getattr(self, "last_segmentation", None)
        if seg is None:
            self._say("Run a segmentation first: there is nothing to export yet.")
            return None
        interactive = out_dir is None
        saved = self.settings.value("export_formats", None)
        saved = [saved] if isinstance(saved, str) else saved  # QSettings: one item, no list
        saved = [f for f in saved or [] if f in FORMATS]
        chosen = list(formats or saved or FORMATS)
        if interactive:
            out_dir = QFileDialog.getExistingDirectory(self, "Export into folder")
            if not out_dir:
                return None
            chosen = choose_formats(self, chosen)
            if not chosen:
                return None
        self.settings.setValue("export_formats", chosen)
        labels_name = f"{layer_prefix(seg)} labels"
        layer = next(
            (
                layer
                for layer in self.viewer.layers
                if layer.name == labels_name and type(layer).__name__ == "Labels"
            ),
            None,
        )
        if layer is not None and np.shape(layer.data) == seg.labels.shape:
            seg = replace(seg, labels=np.asarray(layer.data).copy())  # keep painted fixes
        sim = getattr(self, "last_similarity", None)
        similarities = [sim] if sim is not None else []
        stem = file_stem(self.session.source.layer_name)
        emb = self.session.embeddings
        layout = {"n_similarities": len(similarities), "with_tiles": emb is not None}
        paths = export_paths(out_dir, stem, chosen, **layout)
        existing = [p for p in paths.values() if p.exists()]
        if existing:
            if overwrite is None:
                answer = ask_overwrite(self, existing) if interactive else KEEP_BOTH
                if answer is None:
                    return None
                overwrite = answer == REPLACE
            if not overwrite:
                stem = free_stem(out_dir, stem, chosen, **layout)

        def done(written):
            self._say(f"Exported {len(written)} files to {out_dir} ({stem}.*).")

        return self._start(
            export_all,
            seg,
            out_dir,
            stem,
            emb=emb,
            similarities=similarities,
            formats=chosen,
            on_return=done,
            progress={"total": 0, "desc": "Exporting"},
        )

    def cancel(self) -> None:
        if self._cancel is not None:
            self._cancel.cancel()
            self._say("Cancelling after the batch in flight…")

    def _running(self, on: bool) -> None:
        self.run_button.setEnabled(not on)
        self.cancel_button.setEnabled(on)

    def _viewport_region(self):
        """The visible part of the slide in µm relative to the slide (viewport-first order)."""
        source = self.session.source
        try:
            y0, x0, y1, x1 = viewport_um(self.viewer)
        except Exception:  # no canvas (headless use)
            return None
        oy, ox = source.offset_um
        return (y0 - oy, x0 - ox, y1 - oy, x1 - ox)

    # -- explore ----------------------------------------------------------------------------

    def _ready_embeddings(self):
        s = self.session
        if s.embeddings is None or s.embeddings.n_done == 0:
            raise NapariConchError(
                "Run a segmentation (or embed the slide) first: there are no embeddings yet."
            )
        return s.embeddings

    def update_similarity(self):
        """Redraw the similarity heatmap for the prompt box (no re-embedding)."""
        from ..zeroshot import similarity_map

        text = self.prompt.text().strip()
        if not text:
            return None
        try:
            emb = self._ready_embeddings()
        except NapariConchError as exc:
            self._say(str(exc))
            return None
        negative = self.negative.text().strip() or None
        self._prompt_seq += 1
        seq = self._prompt_seq
        model = self.session.model

        def shown(sim):
            if seq == self._prompt_seq:  # a newer prompt was typed meanwhile: drop this one
                self.last_similarity = sim
                show_similarity(self.viewer, sim, offset_um=self.session.source.offset_um)

        return self._start(
            similarity_map, emb, model, text=text, negative=negative, on_return=shown
        )

    def start_exemplars(self) -> None:
        """Add (or select) the exemplar Points layer; each change redraws the exemplar map."""
        name = self._layer_name("exemplars")
        if name in self.viewer.layers:
            layer = self.viewer.layers[name]
        else:
            layer = self.viewer.add_points(
                np.zeros((0, 2)),
                name=name,
                size=20,
                face_color="cyan",
                units=("micrometer", "micrometer"),
            )
            layer.events.data.connect(lambda _event: self.update_exemplar())
        self.viewer.layers.selection.active = layer
        layer.mode = "add"
        self._say("Click on tissue to add exemplar points.")

    def update_exemplar(self):
        from ..zeroshot import similarity_map

        names = [layer.name for layer in self.viewer.layers]
        exemplars = self._layer_name("exemplars")
        layer = self.viewer.layers[exemplars] if exemplars in names else None
        if layer is None or len(layer.data) == 0:
            return None
        try:
            emb = self._ready_embeddings()
            oy, ox = self.session.source.offset_um
            points = [(float(y) - oy, float(x) - ox) for y, x in np.asarray(layer.data)[:, -2:]]
            sim = similarity_map(emb, self.session.model, exemplar=points)
        except Exception as exc:
            self._error(exc)
            return None
        return show_similarity(
            self.viewer,
            sim,
            self._layer_name("exemplar similarity"),
            self.session.source.offset_um,
        )

    def run_retrieval(self):
        from ..zeroshot import retrieve

        text = self.prompt.text().strip()
        if not text:
            self._say("Type a prompt in the box above first.")
            return None
        try:
            emb = self._ready_embeddings()
            background = self.background_class()
            if background is not None:  # its phrases compete with the prompt, as in the map
                background = self.prompt_set().classes.get(background, [background])
        except (NapariConchError, ValueError) as exc:
            self._error(exc)
            return None

        def shown(result):
            records = [vars(hit) for hit in result.hits]
            self._hits = records
            self._hit_index = -1
            show_tiles(
                self.viewer, records, self._layer_name("retrieval"), self.session.source.offset_um
            )
            self.step_hit(1)

        return self._start(
            retrieve,
            emb,
            self.session.model,
            text,
            int(self.k.value()),
            background=background,
            on_return=shown,
        )

    def step_hit(self, step: int) -> None:
        if not self._hits:
            return
        self._hit_index = (self._hit_index + step) % len(self._hits)
        hit = self._hits[self._hit_index]
        oy, ox = self.session.source.offset_um
        cam = camera(self.viewer)
        cam.center = (
            hit["y_um"] + hit["size_um"] / 2 + oy,
            hit["x_um"] + hit["size_um"] / 2 + ox,
        )
        # zoom so the tile fills about a third of the view: close enough to judge it
        canvas = getattr(getattr(self.viewer, "window", None), "_qt_viewer", None)
        size = getattr(getattr(canvas, "canvas", None), "size", None) or (600, 600)
        cam.zoom = min(size) / (3.0 * float(hit["size_um"]))
        self.hit_label.setText(
            f"#{self._hit_index + 1} of {len(self._hits)} · score {hit['score']:.3f}"
        )

    # -- slide call -------------------------------------------------------------------------

    def run_slide_call(self):
        from ..zeroshot import classify_slide

        try:
            emb = self._ready_embeddings()
            prompts = self.prompt_set()
        except Exception as exc:
            self._error(exc)
            return None
        return self._start(
            classify_slide,
            emb,
            self.session.model,
            prompts,
            top_k=int(self.top_k.value()),
            background=self.background_class(),  # the Segment tab's: never the call
            on_return=self._show_call,
        )

    def _show_call(self, call) -> None:
        self.call_table.setRowCount(len(call.scores))
        for row, name in enumerate(call.scores):
            for col, text in enumerate(
                (name, f"{call.scores[name]:.4f}", f"{call.probabilities[name]:.3f}")
            ):
                self.call_table.setItem(row, col, QTableWidgetItem(text))
        untrained = "" if call.trained else " — UNTRAINED model, not a result"
        self.call_label.setText(f"Call: <b>{call.call}</b> (top {call.top_k} tiles){untrained}")
        self.call_label.setTextFormat(Qt.TextFormat.RichText)
        show_tiles(
            self.viewer,
            call.evidence[call.call],
            self._layer_name("evidence"),
            self.session.source.offset_um,
            "magenta",
        )
        self.last_call = call

    # -- prompts I/O, classes --------------------------------------------------------------

    def _add_class_row(self, name: str, synonyms: str) -> None:
        row = self.class_table.rowCount()
        self.class_table.insertRow(row)
        self.class_table.setItem(row, 0, QTableWidgetItem(name))
        self.class_table.setItem(row, 1, QTableWidgetItem(synonyms))

    def _remove_class_rows(self) -> None:
        for row in sorted({i.row() for i in self.class_table.selectedIndexes()}, reverse=True):
            self.class_table.removeRow(row)
        self._refresh_background_choices()

    def set_classes(self, classes, templates=None) -> None:
        """Fill the class table: {name: [synonyms]} or names."""
        if not isinstance(classes, dict):
            classes = {c: [c] for c in classes}
        self.class_table.blockSignals(True)
        self.class_table.setRowCount(0)
        for name, synonyms in classes.items():
            self._add_class_row(name, ", ".join(synonyms))
        self.class_table.blockSignals(False)
        self._prompts_json_templates = list(templates) if templates else None
        self._refresh_background_choices()

    def _refresh_background_choices(self, *_args) -> None:
        names = []
        for row in range(self.class_table.rowCount()):
            item = self.class_table.item(row, 0)
            if item and item.text().strip():
                names.append(item.text().strip())
        current = self.background.currentText()
        self.background.blockSignals(True)
        self.background.clear()
        self.background.addItems(["(none)", *names])
        if current in names:
            self.background.setCurrentText(current)
        elif "background" in names:
            self.background.setCurrentText("background")
        self.background.blockSignals(False)
        n = len(self._prompts_json_templates) if self._prompts_json_templates else "default"
        self.templates_label.setText(
            f"Templates: {n} ({'from prompt JSON' if self._prompts_json_templates else 'ours'})"
        )

    def _load_prompts(self) -> None:
        from ..prompts import PromptSet

        path, _ = QFileDialog.getOpenFileName(self, "Prompt JSON", "", "JSON (*.json)")
        if not path:
            return
        try:
            prompts = PromptSet.from_json(path)
        except Exception as exc:
            self._error(exc)
            return
        self.set_classes(prompts.classes, prompts.templates)

    def _save_prompts(self) -> None:
        path, _ = QFileDialog.getSaveFileName(
            self, "Save prompt JSON", "prompts.json", "JSON (*.json)"
        )
        if path:
            try:
                self.prompt_set().to_json(path)
            except Exception as exc:
                self._error(exc)

    # -- settings ----------------------------------------------------------------------------

    def _save_settings(self) -> None:
        s = self.settings
        s.setValue("model", self.model_name.currentText())
        s.setValue("checkpoint", self.checkpoint.text())  # a path; the token is never stored
        s.setValue("device", self.device.currentText())
        s.setValue("precision", self.precision.currentText())
        s.setValue("overlap", self.overlap.currentIndex())
        s.setValue("batch", self.batch.value())
        with contextlib.suppress(Exception):  # an incomplete table: keep the last good one
            s.setValue("classes", self.prompt_set().to_json())

    def _restore_settings(self) -> None:
        s = self.settings
        from ..models import default_model

        self.model_name.setCurrentText(str(s.value("model", "") or default_model()))
        self.checkpoint.setText(str(s.value("checkpoint", "") or ""))
        _set_combo(self.device, s.value("device", "auto"))
        _set_combo(self.precision, s.value("precision", "auto"))
        self.overlap.setCurrentIndex(int(s.value("overlap", 0) or 0))
        self.batch.setValue(int(s.value("batch", 8) or 8))
        saved = s.value("classes", None)
        try:
            from ..prompts import PromptSet

            prompts = PromptSet.from_json(saved) if saved else None
        except Exception:
            prompts = None
        if prompts is not None:
            templates = (
                None if prompts.templates == list(_default_templates()) else prompts.templates
            )
            self.set_classes(prompts.classes, templates)
        else:
            self.set_classes(
                {name: [x.strip() for x in syn.split(",")] for name, syn in DEFAULT_CLASSES}
            )

    # -- plumbing ----------------------------------------------------------------------------

    def _start(
        self,
        function,
        *args,
        on_return=None,
        on_yield=None,
        progress=None,
        finished=None,
        on_error=None,
        **kwargs,
    ):
        from napari.qt.threading import create_worker

        worker = create_worker(function, *args, _progress=progress, _ignore_errors=True, **kwargs)
        if on_return is not None:
            worker.returned.connect(on_return)
        if on_yield is not None and hasattr(worker, "yielded"):
            worker.yielded.connect(on_yield)
        worker.errored.connect(self._error)
        if on_error is not None:
            worker.errored.connect(on_error)
        if finished is not None:
            worker.finished.connect(finished)
        worker.finished.connect(lambda: self._workers.discard(worker))
        self._workers.add(worker)
        worker.start()
        return worker

    def _layer_name(self, kind: str) -> str:
        """Result layers carry the model's name ("plip retrieval"), so two models' results
        sit side by side."""
        return f"{layer_prefix(getattr(self.session.model, 'name', None))} {kind}"

    def _say(self, message: str) -> None:
        self.status.setText(message)

    def _error(self, exc: BaseException) -> None:
        """A napari notification with the reason — never a traceback dialog."""
        from napari.utils.notifications import show_error

        message = (
            describe_error(exc, "napari")  # names the widget's controls, not Python arguments
            if isinstance(exc, (NapariConchError, ValueError, TypeError, OSError))
            else repr(exc)
        )
        logger.info("napari-conch: %s", message)
        self.status.setText(f"⚠ {message.splitlines()[0] if message else type(exc).__name__}")
        show_error(f"napari-conch: {message}")

    def closeEvent(self, event) -> None:
        self.cancel()
        for worker in list(self._workers):
            worker.quit()
        super().closeEvent(event)


class _DeviceCombo(QComboBox):
    """auto and cpu at once; the GPUs (which take torch to find) when the list first opens."""

    def __init__(self):
        super().__init__()
        self.addItems(["auto", "cpu"])
        self._probed = False

    def setCurrentText(self, text: str) -> None:  # a saved value: list it
        if text and self.findText(text) < 0:
            self.addItem(text)
        super().setCurrentText(text)

    def showPopup(self) -> None:
        if not self._probed:
            from ..models.device import available_devices

            self._probed = True
            for name in available_devices():
                if self.findText(name) < 0:
                    self.addItem(name)
        super().showPopup()


class _ModelCombo(QComboBox):
    """The registered models; re-read whenever the list opens, so models registered after
    the widget was created (register_model, entry points) appear."""

    def refresh(self) -> None:
        from ..models import available_models
        from ..models.registry import model_entry

        current = self.currentText()
        names = [n for n in available_models() if n not in HIDDEN_MODELS or n == current]
        self.blockSignals(True)
        self.clear()
        for i, name in enumerate(names):
            self.addItem(name)
            self.setItemData(i, model_entry(name).description, Qt.ItemDataRole.ToolTipRole)
        if current in names:
            self.setCurrentText(current)
        self.blockSignals(False)

    def setCurrentText(self, text: str) -> None:
        """Any registered name, hidden test models too (by name only)."""
        if text and self.findText(text) < 0:
            from ..errors import UnknownModelError
            from ..models.registry import model_entry

            with contextlib.suppress(UnknownModelError, TypeError):
                model_entry(text)
                self.addItem(text)
        super().setCurrentText(text)

    def showPopup(self) -> None:
        self.refresh()
        super().showPopup()


@dataclass
class _Start:
    """First message of a segmentation run: the grid and the embeddings to fill."""

    grid: object
    embeddings: object


def _segmentation_worker(
    slide,
    model,
    grid_options,
    tissue,
    restrict,
    prompts,
    region,
    cancel,
    batch_size,
    cache,
    previous=None,
):
    """Worker body, off the GUI thread: the grid (tissue mask, or the user's region), the
    prompts' text encoding, then the engine's steps — its live Embeddings first (announced
    with the grid, projected once), then each batch. Each stage is announced as it starts.
    ``previous``: the last run's Embeddings, continued when they fit (an in-memory image
    cancelled and run again does not start from zero)."""
    from ..engine import embed_steps
    from ..tiling import tile_grid

    if restrict is not None:  # the user's region instead of tissue detection
        yield "Preparing: laying tiles inside the chosen layer…"
        grid = restrict(tile_grid(slide, model, tissue=False, **grid_options))
        if len(grid) == 0:
            raise NapariConchError("No tile centre lies inside the chosen mask layer.")
    else:
        yield "Preparing: finding the tissue…"
        grid = tile_grid(
            slide, model, tissue=tissue if tissue is not None else True, **grid_options
        )
    yield f"Preparing: encoding {len(prompts.names)} classes' prompts…"
    prompts.class_embeddings(model)
    yield f"Embedding 0/{len(grid)} tiles…"
    steps = embed_steps(
        slide,
        model,
        grid,
        cache=cache,
        region=region,
        cancel=cancel,
        batch_size=batch_size,
        resume=previous,
    )
    live = next(steps)
    live.projected(model)
    yield _Start(grid, live)
    return (yield from steps)


def _first_sentence(exc: BaseException) -> str:
    """The start of an error's widget-worded message, short enough for a status line."""
    import html

    text = describe_error(exc, "napari").strip().splitlines()[0] if str(exc) else repr(exc)
    cut = text.find(". ")
    text = text[: cut + 1] if 0 < cut < 200 else text[:200]
    return html.escape(text)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _legend_html(seg) -> str:
    parts = []
    for label, name in enumerate(seg.class_names, start=1):
        r, g, b, _ = (int(255 * c) for c in seg.colors[label])
        area = seg.areas_mm2.get(name, 0.0)
        parts.append(f'<span style="color:rgb({r},{g},{b})">■</span> {name} ({area:.2f} mm²)')
    note = "" if seg.trained else '<br><b style="color:#e0301e">UNTRAINED model — not a result</b>'
    return "&nbsp;&nbsp;".join(parts) + note


def _default_templates():
    from ..prompts import DEFAULT_TEMPLATES

    return DEFAULT_TEMPLATES


def _is_rgb_image(layer) -> bool:
    return type(layer).__name__ == "Image" and bool(getattr(layer, "rgb", False))


def _set_combo(combo: QComboBox, value) -> None:
    if value is not None and combo.findText(str(value)) >= 0:
        combo.setCurrentText(str(value))


def _form() -> tuple[QWidget, QFormLayout]:
    page = QWidget()
    form = QFormLayout(page)
    return page, form


def _row(*widgets) -> QWidget:
    box = QWidget()
    layout = QHBoxLayout(box)
    layout.setContentsMargins(0, 0, 0, 0)
    for w in widgets:
        layout.addWidget(w)
    return box
