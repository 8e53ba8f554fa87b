"""The widget's tabs, one module each, over a shared :class:`~.session.Session`.

Parameter forms are magicgui widgets (as in napari's own plugins); plain Qt only where
magicgui has none (the class table, the slide-call table). A panel reads its controls,
calls the library through the :class:`~.runner.Runner`, and shows results as layers.
"""

from .call import CallPanel
from .explore import ExplorePanel
from .model import ModelPanel
from .segment import SegmentPanel
from .slide import SlidePanel
from .teach import TeachPanel

__all__ = ["CallPanel", "ExplorePanel", "ModelPanel", "SegmentPanel", "SlidePanel", "TeachPanel"]
