"""The napari-conch dock widget: a thin shell of tabs over one session.

Each tab is a panel module under :mod:`.panels`; what the widget works on and found lives
in :class:`.session.Session`; heavy work runs in napari thread workers through
:class:`.runner.Runner`; what is remembered between sessions is in :mod:`.settings`.
"""

from __future__ import annotations

import logging

from qtpy.QtCore import QSettings, Qt
from qtpy.QtGui import QKeySequence, QShortcut
from qtpy.QtWidgets import QLabel, QTabWidget, QVBoxLayout, QWidget

from . import guard_triton
from .panels import CallPanel, ExplorePanel, ModelPanel, SegmentPanel, SlidePanel, TeachPanel
from .panels.model import HIDDEN_MODELS
from .runner import Runner
from .session import Session
from .settings import WidgetSettings

logger = logging.getLogger(__name__)
guard_triton()  # before anything imports timm/torchvision (see guard_triton)

__all__ = ["HIDDEN_MODELS", "ConchWidget"]
# the panels' plumbing, not controls (napari looks for some of these names on dock widgets)
_NOT_FORWARDED = frozenset(
    {"native", "form", "viewer", "session", "runner", "settings", "reset_choices"}
)


class ConchWidget(QWidget):
    """Dock widget; ``napari_viewer`` is given by napari (or by :func:`napari_conch.view`).

    Scripts drive it through the panels' controls (``widget.slide.tile_um.value = 64``),
    or by the names forwarded here (``widget.tile_um``, ``widget.run_segmentation()``).
    """

    def __init__(self, napari_viewer, settings: QSettings | None = None):
        super().__init__()
        self.viewer = napari_viewer
        self.session = Session()
        self.status = QLabel("Load a model, pick a slide layer.")
        self.status.setWordWrap(True)
        self.runner = Runner(self.status, self.session)
        store = settings if settings is not None else QSettings("napari-conch", "widget")
        self.settings = WidgetSettings(store)

        self.model = ModelPanel(self.session, self.runner, self.settings, self.set_model)
        self.slide = SlidePanel(napari_viewer, self.session, self.runner, self._slide_changed)
        self.segment = SegmentPanel(
            napari_viewer, self.session, self.runner, self.slide, self.settings
        )
        self.explore = ExplorePanel(
            napari_viewer, self.session, self.runner, self.segment, self.slide
        )
        self.call = CallPanel(napari_viewer, self.session, self.runner, self.segment)
        self.teach = TeachPanel(napari_viewer, self.session, self.runner, self.segment)
        self.settings.bind(self.model, self.slide, self.segment)

        self.tabs = QTabWidget()
        for panel, title in (
            (self.model, "Model"),
            (self.slide, "Slide"),
            (self.segment, "Segment"),
            (self.explore, "Explore"),
            (self.call, "Slide call"),
            (self.teach, "Teach"),
        ):
            self.tabs.addTab(panel.native, title)
        layout = QVBoxLayout(self)
        layout.addWidget(self.tabs)
        layout.addWidget(self.status)

        # Keys while the widget has focus: run and cancel without reaching for the mouse.
        self.run_shortcut = self._shortcut("Ctrl+Return", self.segment.run_segmentation)
        self.cancel_shortcut = self._shortcut("Escape", self.segment.cancel)

        events = napari_viewer.layers.events
        for event in (events.inserted, events.removed, events.renamed):
            event.connect(self.slide.refresh_layers)
        self.settings.restore()
        self.slide.refresh_layers()

    def _shortcut(self, keys: str, action) -> QShortcut:
        shortcut = QShortcut(QKeySequence(keys), self)
        shortcut.setContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
        shortcut.activated.connect(action)
        return shortcut

    # -- what scripts and the other panels call ---------------------------------------------

    def set_model(self, model) -> None:
        """Use ``model`` (any object implementing the model protocol)."""
        from ..protocol import check_model

        check_model(model)
        self.session.use_model(model)
        self.model.show_model(model)
        self.slide.use_model_tile(model)
        self.runner.say(f"{model.name} ready.")

    def choose_model(self, name: str) -> None:
        """Select a registered model by name in the Model tab (hidden test models too)."""
        self.model.choose(name)

    def choose_slide(self, layer_name: str) -> None:
        """Analyse the image layer called ``layer_name``."""
        self.slide.refresh_layers()
        self.slide.layer_combo.value = layer_name

    def _slide_changed(self) -> None:
        self.segment.slide_changed()
        self.teach.slide_changed()

    @property
    def last_segmentation(self):
        return self.session.segmentation

    @property
    def last_similarity(self):
        return self.session.similarity

    @property
    def last_call(self):
        return self.session.call

    @property
    def _workers(self) -> set:
        return self.runner.workers

    def __getattr__(self, name: str):
        # Controls and actions live on their panels; scripts reach them by name here.
        if not name.startswith("_") and name not in _NOT_FORWARDED:
            for panel in ("model", "slide", "segment", "explore", "call", "teach"):
                holder = self.__dict__.get(panel)
                if holder is not None and hasattr(holder, name):
                    return getattr(holder, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def closeEvent(self, event) -> None:
        self.teach.slide_changed()  # no refit after the widget is gone
        self.segment.cancel()
        self.runner.quit()
        super().closeEvent(event)
