"""What the widget remembers between sessions — in one place, and never a secret.

Saved: the model's name, the weights path, device, precision, overlap, batch size, the
class table and the last export formats. Never saved: the Hugging Face token.
"""

from __future__ import annotations

import contextlib

DEFAULT_CLASSES = {
    "tumor": ["tumor", "carcinoma"],
    "stroma": ["stroma"],
    "necrosis": ["necrosis"],
    "background": ["background", "white space"],
}


class WidgetSettings:
    """Saves and restores the panels' choices in a QSettings store."""

    def __init__(self, store):
        self.store = store
        self.model_panel = self.slide_panel = self.segment_panel = None

    def bind(self, model_panel, slide_panel, segment_panel) -> None:
        """The panels whose controls are saved (they save through this object too)."""
        self.model_panel = model_panel
        self.slide_panel = slide_panel
        self.segment_panel = segment_panel

    def save(self) -> None:
        m, sl, st = self.model_panel, self.slide_panel, self.store
        st.setValue("model", m.model_name.value)
        st.setValue("checkpoint", m.checkpoint.value)  # a path; the token is never stored
        st.setValue("device", m.device.value)
        st.setValue("precision", m.precision.value)
        st.setValue("overlap_fraction", float(sl.overlap.value))
        st.setValue("batch", int(sl.batch.value))
        with contextlib.suppress(Exception):  # an incomplete table: keep the last good one
            st.setValue("classes", self.segment_panel.prompt_set().to_json())

    def restore(self) -> None:
        from ..models import default_model

        m, sl, st = self.model_panel, self.slide_panel, self.store
        m.choose(str(st.value("model", "") or default_model()))
        m.checkpoint.value = str(st.value("checkpoint", "") or "")
        m.choose_device(str(st.value("device", "auto") or "auto"))
        _set_choice(m.precision, st.value("precision", "auto"))
        with contextlib.suppress(TypeError, ValueError):  # an ini store gives strings
            _set_choice(sl.overlap, float(st.value("overlap_fraction", 0.0) or 0.0))
        with contextlib.suppress(TypeError, ValueError):
            _set_choice(sl.batch, int(st.value("batch", 0) or 0))  # 0: auto
        self._restore_classes(st.value("classes", None))

    def _restore_classes(self, saved) -> None:
        from ..prompts import DEFAULT_TEMPLATES, PromptSet

        try:
            prompts = PromptSet.from_json(saved) if saved else None
        except Exception:  # a damaged entry: start from the defaults
            prompts = None
        if prompts is None:
            self.segment_panel.set_classes(DEFAULT_CLASSES)
            return
        ours = prompts.templates == list(DEFAULT_TEMPLATES)
        self.segment_panel.set_classes(prompts.classes, None if ours else prompts.templates)

    def export_formats(self) -> list[str]:
        """The formats chosen at the last export (none: all)."""
        from ..export import FORMATS

        saved = self.store.value("export_formats", None)
        saved = [saved] if isinstance(saved, str) else saved  # QSettings: one item, no list
        return [f for f in saved or [] if f in FORMATS]

    def remember_export_formats(self, formats) -> None:
        self.store.setValue("export_formats", list(formats))


def _set_choice(combo, value) -> None:
    if value is not None and value in combo.choices:
        combo.value = value
