"""Small pieces the panels' magicgui forms share."""

from __future__ import annotations

from magicgui.widgets import Container
from qtpy.QtCore import QEvent, QObject, Qt
from qtpy.QtWidgets import QSizePolicy, QVBoxLayout, QWidget


def form(*widgets) -> Container:
    """A labelled form (label column on the left), as napari's plugins lay theirs out."""
    return Container(widgets=list(widgets), labels=True)


def row(*widgets, label: str = "") -> Container:
    """Widgets side by side, one row of a form."""
    box = Container(widgets=list(widgets), layout="horizontal", labels=False, label=label)
    box.margins = (0, 0, 0, 0)
    return box


def page(*parts) -> QWidget:
    """A tab: its parts (magicgui or Qt widgets) stacked at the top, full width."""
    tab = QWidget()
    layout = QVBoxLayout(tab)
    for part in parts:
        layout.addWidget(getattr(part, "native", part))
    layout.addStretch(1)
    return tab


def rich(label) -> None:
    """A magicgui Label that wraps and shows HTML (status lines, legends)."""
    label.native.setWordWrap(True)
    wide = QSizePolicy.Policy.Expanding
    label.native.setSizePolicy(wide, QSizePolicy.Policy.Preferred)  # the tab's full width
    label.native.setTextFormat(Qt.TextFormat.RichText)


class _BeforeOpening(QObject):
    def __init__(self, parent, callback):
        super().__init__(parent)
        self._callback = callback

    def eventFilter(self, _obj, event):
        if event.type() in (QEvent.Type.MouseButtonPress, QEvent.Type.KeyPress):
            self._callback()
        return False  # the combo box opens as usual


def refresh_before_opening(combo, callback) -> None:
    """Call ``callback`` (re-reading the choices) just before a combo box's list opens."""
    combo.native.installEventFilter(_BeforeOpening(combo.native, callback))
