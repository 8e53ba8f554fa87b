"""Slide tab: which image layer, its pixel size, where to look, and how to tile it."""

from __future__ import annotations

from magicgui.widgets import CheckBox, ComboBox, FloatSpinBox, Label, PushButton
from qtpy.QtWidgets import QFileDialog

from ..layers import show_mask, viewport_um
from ..session import slide_from_layer
from ._forms import form, page, row

OVERLAPS = (("0 %", 0.0), ("50 %", 0.5), ("75 %", 0.75))
# 0: the engine's own choice for the model and device
BATCH_SIZES = (("auto", 0), *((str(n), n) for n in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)))
TISSUE_DETECTION = "(tissue detection)"


class SlidePanel:
    """Keeps ``session.source`` in step with the chosen layer and pixel size."""

    def __init__(self, viewer, session, runner, on_slide=lambda: None):
        self.viewer = viewer
        self.session = session
        self.runner = runner
        self.on_slide = on_slide

        self._layer = None  # the layer the session's slide comes from
        self.layer_combo = ComboBox(label="", choices=self._image_layers)
        self.layer_combo.changed.connect(self._on_layer_changed)
        open_button = PushButton(
            text="Open file…", tooltip="Open a slide with napari-conch's reader"
        )
        open_button.changed.connect(self._open_file)
        self.mpp = FloatSpinBox(label="Pixel size", min=0.0, max=50.0, step=0.01)
        self.mpp.native.setDecimals(4)
        self.mpp.native.setSpecialValueText("unknown")
        self.mpp.native.setSuffix(" µm/px")
        self.mpp.changed.connect(self._on_mpp_changed)
        self.mpp_note = Label(value="", label="")
        self.tissue_preview = CheckBox(text="show tissue mask", label="")
        self.tissue_preview.changed.connect(self._on_tissue_toggled)
        self.mask_layer = ComboBox(
            label="Only inside",
            choices=self._mask_layers,
            tooltip="Analyse only inside a Labels layer you painted or a Shapes layer you drew",
        )
        self.mask_layer.changed.connect(self.invalidate_grid)
        self.tile_um = FloatSpinBox(
            label="Tile",
            min=8.0,
            max=4096.0,
            value=224.0,
            tooltip="Tile side in µm (default: the model's own: 224 µm for CONCH).",
        )
        self.tile_um.native.setSuffix(" µm")
        self.tile_um.changed.connect(self.invalidate_grid)
        self.overlap = ComboBox(
            label="Overlap",
            choices=OVERLAPS,
            tooltip="Share of a tile its neighbour also covers: finer maps, more tiles "
            "(75 %: 16×).",
        )
        self.overlap.changed.connect(self.invalidate_grid)
        self.batch = ComboBox(
            label="Batch",
            choices=BATCH_SIZES,
            value=0,
            tooltip="Tiles per model call. auto: what suits the model and the device (on the "
            "CPU a multiple of the pieces the model computes at once; on a GPU from its free "
            "memory).",
        )
        self.cache_on_disk = CheckBox(
            text="cache embeddings on disk (slides opened from files)", value=True, label=""
        )
        estimate = PushButton(text="Estimate", tooltip="How many tiles, and how long")
        estimate.changed.connect(self.estimate_work)
        self.estimate = Label(value="")
        self.form = form(
            row(self.layer_combo, open_button, label="Image layer"),
            self.mpp,
            self.mpp_note,
            self.tissue_preview,
            self.mask_layer,
            self.tile_um,
            self.overlap,
            self.batch,
            self.cache_on_disk,
            row(estimate, self.estimate),
        )
        self.native = page(self.form)

    # -- layers -----------------------------------------------------------------------------

    def _image_layers(self, _widget=None) -> list[str]:
        return [layer.name for layer in self.viewer.layers if _is_rgb_image(layer)]

    def _mask_layers(self, _widget=None) -> list[str]:
        masks = [
            layer.name
            for layer in self.viewer.layers
            if type(layer).__name__ in ("Labels", "Shapes") and "napari_conch" not in layer.metadata
        ]
        return [TISSUE_DETECTION, *masks]

    def refresh_layers(self, *_args) -> None:
        """Re-read the layer lists (a changed choice of slide resets the session's slide)."""
        with self.mask_layer.changed.blocked():
            self.mask_layer.reset_choices()
        self.layer_combo.reset_choices()
        if self.layer_combo.value != self._layer:  # e.g. the first layer: no change event
            self._on_layer_changed(self.layer_combo.value)

    def _open_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self.form.native, "Open a slide")
        if path:
            self.viewer.open(path, plugin="napari-conch")

    def _on_layer_changed(self, name) -> None:
        self._layer = name
        if not name or name not in self.viewer.layers:
            self.session.reset_slide(None)
            self.on_slide()
            return
        try:
            source = slide_from_layer(self.viewer.layers[name])
        except Exception as exc:  # an image napari-conch cannot use
            self.runner.error(exc)
            return
        self.session.reset_slide(source)
        mpp = source.slide.mpp
        with self.mpp.changed.blocked():
            self.mpp.value = mpp or 0.0
        where = source.slide.metadata.get("mpp_source")
        if not mpp:
            self.mpp_note.value = "missing — enter the pixel size"
        elif where == "argument":  # given with the image (a script, a sample, µm layer scale)
            self.mpp_note.value = "given with the image"
        else:
            self.mpp_note.value = f"from {where}" if where else ""
        self.estimate.value = ""
        self.on_slide()
        if self.tissue_preview.value:
            self._on_tissue_toggled(True)

    def _on_mpp_changed(self, value: float) -> None:
        name = self.layer_combo.value
        if not name or name not in self.viewer.layers:
            return
        layer = self.viewer.layers[name]
        if not value:  # "unknown" cannot replace a size the file records: show it again
            recorded = slide_from_layer(layer).slide.mpp
            if recorded:
                self._on_layer_changed(name)
                self.runner.say(f"The slide records {recorded:g} µm/px; type another to override.")
                return
        self.session.reset_slide(slide_from_layer(layer, mpp=value or None))
        self.mpp_note.value = "entered by you" if value else "missing — enter the pixel size"
        self.estimate.value = ""
        self.on_slide()

    def invalidate_grid(self, *_args) -> None:
        self.session.grid = self.session.embeddings = None
        self.estimate.value = ""

    def _on_tissue_toggled(self, on: bool) -> None:
        from ...tissue import tissue_mask

        name = self.session.layer_name("tissue")
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
            self.runner.start(
                tissue_mask, source.slide, on_return=shown, progress={"desc": "Tissue mask"}
            )

    # -- what a run needs -----------------------------------------------------------------

    def grid_options(self) -> dict:
        return {"tile_um": float(self.tile_um.value), "overlap": float(self.overlap.value)}

    def user_mask(self):
        """The Labels/Shapes layer chosen to restrict the analysis, or None."""
        name = self.mask_layer.value
        if name == TISSUE_DETECTION or not name or name not in self.viewer.layers:
            return None
        return self.viewer.layers[name]

    def cache(self):
        """Where embeddings go: the disk cache for slides opened from files (if wanted)."""
        slide = self.session.source.slide
        return "auto" if slide.path is not None and self.cache_on_disk.value else None

    def viewport_region(self):
        """The visible part of the slide in µm relative to the slide (viewport-first order)."""
        try:
            y0, x0, y1, x1 = viewport_um(self.viewer)
        except Exception:  # no canvas (headless use)
            return None
        oy, ox = self.session.source.offset_um
        return (y0 - oy, x0 - ox, y1 - oy, x1 - ox)

    def use_model_tile(self, model) -> None:
        """The model's own tile side (input size × µm/px) as the tile size."""
        self.tile_um.value = float(model.input_size) * float(model.target_mpp)

    # -- estimate ---------------------------------------------------------------------------

    def estimate_work(self):
        """Lay out the tiles (tissue mask included, in a worker) and say how many and how long."""
        from ...tiling import tile_grid

        s = self.session
        try:
            s.check_ready()
        except Exception as exc:
            self.runner.error(exc)
            return None
        options = self.grid_options()

        def shown(grid):
            s.grid, s.grid_options = grid, options
            self.show_estimate(grid)

        return self.runner.start(
            tile_grid,
            s.source.slide,
            s.model,
            tissue=s.tissue or True,
            on_return=shown,
            progress={"desc": "Tiling"},
            **options,
        )

    def show_estimate(self, grid) -> None:
        seconds = self.session.estimate_seconds(len(grid))
        when = f", about {_duration(seconds)}" if seconds else ""
        self.estimate.value = f"{len(grid)} tiles of {grid.tile_um:.0f} µm{when}"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _is_rgb_image(layer) -> bool:
    return type(layer).__name__ == "Image" and bool(getattr(layer, "rgb", False))
