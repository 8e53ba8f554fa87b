"""Explore tab: similarity to typed text or to exemplar points, and the top tiles."""

from __future__ import annotations

import numpy as np
from magicgui.widgets import Label, LineEdit, PushButton, SpinBox
from qtpy.QtCore import QTimer

from ...errors import NapariConchError
from ..layers import camera, own_name, show_segmentation, show_similarity, show_tiles
from ._forms import form, page, row

PROMPT_DEBOUNCE_MS = 350


class ExplorePanel:
    """Heatmaps and retrieval over the embeddings the last run made (nothing re-embedded)."""

    def __init__(self, viewer, session, runner, segment_panel, slide_panel):
        self.viewer = viewer
        self.session = session
        self.runner = runner
        self.segment_panel = segment_panel
        self.slide_panel = slide_panel
        self._prompt_seq = 0

        self.prompt = LineEdit(label="Prompt", tooltip="The map redraws as you type")
        self.prompt.native.setPlaceholderText("type a description, e.g. mitotic figure")
        self.prompt.changed.connect(lambda _text: self._debounce.start())
        self.negative = LineEdit(label="Minus")
        self.negative.native.setPlaceholderText("optional: subtract this prompt")
        self.negative.changed.connect(lambda _text: self._debounce.start())
        self.exemplar_button = PushButton(
            text="Exemplar points",
            tooltip="Add points on tissue: the map shows tiles that look alike",
        )
        self.exemplar_button.changed.connect(self.start_exemplars)
        self.k = SpinBox(min=1, max=500, value=20, tooltip="How many tiles to list")
        find = PushButton(text="Find top tiles", tooltip="The tiles most like the prompt")
        find.changed.connect(self.run_retrieval)
        previous = PushButton(text="◀", tooltip="Previous hit: centre and zoom on it")
        previous.changed.connect(lambda: self.step_hit(-1))
        following = PushButton(text="▶", tooltip="Next hit: centre and zoom on it")
        following.changed.connect(lambda: self.step_hit(1))
        self.hit_label = Label(value="")
        self.sharpen_button = PushButton(
            text="Sharpen view (experimental)",
            tooltip="Maps finer than a tile for the part of the slide in view: one value per "
            "8 µm token (CONCH), drawn over the tile maps as it computes; prompts typed "
            "afterwards reuse it. Experimental: conch only.",
        )
        self.sharpen_button.changed.connect(self.sharpen_view)
        self.form = form(
            self.prompt,
            self.negative,
            self.exemplar_button,
            row(self.k, find, label="Top-k"),
            row(previous, following, self.hit_label),
            self.sharpen_button,
        )
        self.native = page(self.form)
        # typing redraws once the typist pauses (the timer dies with the panel)
        self._debounce = QTimer(self.native)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(PROMPT_DEBOUNCE_MS)
        self._debounce.timeout.connect(self.update_similarity)

    def update_similarity(self):
        """Redraw the similarity heatmap for the prompt box (no re-embedding)."""
        from ...zeroshot import similarity_map

        text = self.prompt.value.strip()
        if not text:
            return None
        try:
            emb = self.session.ready_embeddings()
        except NapariConchError as exc:
            if self.session.dense is not None:  # a sharpened view, no tile run: just that
                self._draw_dense(self.session.dense, labels=False)
            else:
                self.runner.say(str(exc))
            return None
        negative = self.negative.value.strip() or None
        self._prompt_seq += 1
        seq = self._prompt_seq

        def shown(sim):
            if seq == self._prompt_seq:  # a newer prompt was typed meanwhile: drop this one
                self.session.similarity = sim
                show_similarity(self.viewer, sim, offset_um=self.session.source.offset_um)
                self._draw_dense(self.session.dense, labels=False)  # a matrix product

        return self.runner.start(
            similarity_map, emb, self.session.model, text=text, negative=negative, on_return=shown
        )

    # -- sub-tile maps (experimental) -------------------------------------------------------

    def sharpen_view(self):
        """Token-resolution maps of the visible region, drawn as they compute (a worker)."""
        from ...dense import dense_token_steps
        from ...protocol import gives_token_embeddings

        s = self.session
        try:
            s.check_ready()
            if not gives_token_embeddings(s.model):
                raise NapariConchError(
                    f"Sharpen view needs a model with token embeddings (conch); {s.model.name} "
                    "has none."
                )
            region = self.slide_panel.viewport_region()
            if region is None:
                raise NapariConchError("Sharpen view maps the part of the slide in view: no view.")
        except Exception as exc:
            self.runner.error(exc)
            return None
        options = self.slide_panel.grid_options()
        self.sharpen_button.enabled = False
        self.runner.say("Sharpening the view: finding its tiles…")

        def step(update):
            done, total, tokens = update
            self.runner.say(f"Sharpening the view: {done}/{total} tiles")
            if tokens is not None:
                s.dense = tokens
                self._draw_dense(tokens)

        return self.runner.start(
            dense_token_steps,
            s.source.slide,
            s.model,
            region,
            options["tile_um"],
            options["overlap"] or 0.5,
            snapshot_every_s=1.0,
            on_yield=step,
            finished=lambda: setattr(self.sharpen_button, "enabled", True),
            progress={"total": 0, "desc": "Sharpening the view"},
        )

    def _draw_dense(self, tokens, labels: bool = True) -> None:
        """The dense labels (the Segment tab's classes) and, with a prompt, the dense
        similarity, on top of the tile maps."""
        if tokens is None:
            return
        s = self.session
        offset = s.source.offset_um
        try:
            if labels:
                seg = tokens.segment(
                    s.model,
                    self.segment_panel.prompt_set(),
                    background=self.segment_panel.background_class(),
                )
                show_segmentation(self.viewer, seg, offset_um=offset)
            text = self.prompt.value.strip()
            if text:
                sim = tokens.similarity(s.model, text, self.negative.value.strip() or None)
                show_similarity(self.viewer, sim, offset_um=offset)
        except Exception as exc:
            self.runner.error(exc)

    def exemplar_layer_name(self) -> str:
        """This slide's exemplar layer: another slide's exemplars are never reused here."""
        s = self.session
        return own_name(self.viewer, s.layer_name("exemplars"), "points", s.slide_name)

    def start_exemplars(self) -> None:
        """Add (or select) the exemplar Points layer; each change redraws the exemplar map."""
        name = self.exemplar_layer_name()
        if name in self.viewer.layers:
            layer = self.viewer.layers[name]
        else:
            layer = self.viewer.add_points(
                np.zeros((0, 2)),
                name=name,
                size=20,
                face_color="cyan",
                units=("micrometer", "micrometer"),
                metadata={"napari_conch": {"slide": self.session.slide_name}},
            )
            layer.events.data.connect(lambda _event: self.update_exemplar())
        self.viewer.layers.selection.active = layer
        layer.mode = "add"
        self.runner.say("Click on tissue to add exemplar points.")

    def update_exemplar(self):
        from ...zeroshot import similarity_map

        name = self.exemplar_layer_name()
        if name not in self.viewer.layers or len(self.viewer.layers[name].data) == 0:
            return None
        layer = self.viewer.layers[name]
        try:
            emb = self.session.ready_embeddings()
            oy, ox = self.session.source.offset_um
            points = [(float(y) - oy, float(x) - ox) for y, x in np.asarray(layer.data)[:, -2:]]
            sim = similarity_map(emb, self.session.model, exemplar=points)
        except Exception as exc:
            self.runner.error(exc)
            return None
        return show_similarity(
            self.viewer,
            sim,
            self.session.layer_name("exemplar similarity"),
            self.session.source.offset_um,
        )

    def run_retrieval(self):
        from ...zeroshot import retrieve

        text = self.prompt.value.strip()
        if not text:
            self.runner.say("Type a prompt in the box above first.")
            return None
        try:
            emb = self.session.ready_embeddings()
            prompts = self.segment_panel.prompt_set()
        except (NapariConchError, ValueError) as exc:
            self.runner.error(exc)
            return None

        def shown(result):
            s = self.session
            s.hits, s.hit_index = list(result.hits), -1
            show_tiles(
                self.viewer,
                s.hits,
                s.layer_name("retrieval"),
                s.source.offset_um,
                slide=s.slide_name,
            )
            self.step_hit(1)

        return self.runner.start(
            retrieve,
            emb,
            self.session.model,
            text,
            k=int(self.k.value),
            background=self.segment_panel.background_class(),  # competes as in the map
            prompts=prompts,
            negative=self.negative.value.strip() or None,  # ranked as the heatmap shows
            on_return=shown,
        )

    def step_hit(self, step: int) -> None:
        """Centre on the next (or previous) hit and zoom so it fills about a third of the view."""
        s = self.session
        if not s.hits:
            return
        s.hit_index = (s.hit_index + step) % len(s.hits)
        hit = s.hits[s.hit_index]
        oy, ox = s.source.offset_um
        cam = camera(self.viewer)
        cam.center = (hit.y_um + hit.size_um / 2 + oy, hit.x_um + hit.size_um / 2 + ox)
        canvas = getattr(getattr(self.viewer, "window", None), "_qt_viewer", None)
        size = getattr(getattr(canvas, "canvas", None), "size", None) or (600, 600)
        cam.zoom = min(size) / (3.0 * float(hit.size_um))
        self.hit_label.value = f"#{s.hit_index + 1} of {len(s.hits)} · score {hit.score:.3f}"
