"""Slide call tab: MI-Zero's top-K pooling over the tiles, with the evidence shown."""

from __future__ import annotations

from magicgui.widgets import Label, PushButton, SpinBox
from qtpy.QtWidgets import QHeaderView, QTableWidget, QTableWidgetItem

from ..layers import show_tiles
from ._forms import form, page, rich, row


class CallPanel:
    """One call per slide from the Segment tab's classes (never its background class)."""

    def __init__(self, viewer, session, runner, segment_panel):
        self.viewer = viewer
        self.session = session
        self.runner = runner
        self.segment_panel = segment_panel

        self.top_k = SpinBox(
            min=1, max=1000, value=10, tooltip="Tiles pooled per class (choose before looking)"
        )
        call = PushButton(text="Call slide (MI-Zero)", tooltip="One class for the whole slide")
        call.changed.connect(self.run_slide_call)
        self.call_label = Label(value="")
        rich(self.call_label)
        # plain Qt: a read-only result table
        self.call_table = QTableWidget(0, 3)
        self.call_table.setHorizontalHeaderLabels(["Class", "Top-K mean cosine", "Probability"])
        self.call_table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.native = page(
            form(row(self.top_k, call, label="Top K")), self.call_table, self.call_label
        )

    def run_slide_call(self):
        from ...zeroshot import classify_slide

        try:
            emb = self.session.ready_embeddings()
            prompts = self.segment_panel.prompt_set()
        except Exception as exc:
            self.runner.error(exc)
            return None
        return self.runner.start(
            classify_slide,
            emb,
            self.session.model,
            prompts,
            top_k=int(self.top_k.value),
            background=self.segment_panel.background_class(),
            on_return=self.show_call,
        )

    def show_call(self, call) -> None:
        self.call_table.setRowCount(len(call.scores))
        for r, name in enumerate(call.scores):
            cells = (name, f"{call.scores[name]:.4f}", f"{call.probabilities[name]:.3f}")
            for col, text in enumerate(cells):
                self.call_table.setItem(r, col, QTableWidgetItem(text))
        untrained = "" if call.trained else " — UNTRAINED model, not a result"
        close = (
            f"<br>A close call: the next class is within {call.margin:.3f} in "
            "probability — read the evidence tiles before trusting it."
            if call.is_close
            else ""
        )
        self.call_label.value = (
            f"Call: <b>{call.call}</b> (top {call.top_k} tiles){untrained}{close}"
        )
        self.runner.say(f"Slide called {call.call}; its evidence tiles are on the slide.")
        s = self.session
        show_tiles(
            self.viewer,
            call.evidence[call.call],
            s.layer_name("evidence"),
            s.source.offset_um,
            "magenta",
            slide=s.slide_name,
        )
        s.call = call
