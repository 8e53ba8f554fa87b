"""``napari_conch.show`` and ``napari_conch.view``: library results into a napari viewer."""

from __future__ import annotations

import os

from ..slide import Slide, open_slide
from .layers import (
    layer_prefix,
    scale_bar,
    show_mask,
    show_segmentation,
    show_similarity,
    show_tiles,
    slide_layer_data,
)


def show(viewer, obj, **kwargs):
    """Add ``obj`` to ``viewer`` as correctly scaled layers (updating same-named ones).

    Accepts a Slide (or a path), a SegmentationResult, a SimilarityMap, a Retrieval, a
    SlideCall (its evidence tiles) or a TissueMask. Returns the layer(s).
    """
    from ..results import Retrieval, SegmentationResult, SimilarityMap, SlideCall
    from ..tissue import TissueMask

    if isinstance(obj, (str, os.PathLike)):
        obj = open_slide(obj)
    if isinstance(obj, Slide):
        data, layer_kwargs, _ = slide_layer_data(obj, kwargs.get("name"))
        layer = viewer.add_image(data, **layer_kwargs)
        if obj.mpp:
            scale_bar(viewer).visible = True
        return layer
    if isinstance(obj, SegmentationResult):
        return show_segmentation(viewer, obj, **kwargs)
    if isinstance(obj, SimilarityMap):
        return show_similarity(viewer, obj, **kwargs)
    if isinstance(obj, Retrieval):
        return show_tiles(
            viewer,
            obj.hits,
            kwargs.get("name", f"{layer_prefix(obj)} retrieval"),
        )
    if isinstance(obj, SlideCall):
        return show_tiles(
            viewer,
            obj.evidence[obj.call],
            kwargs.get("name", f"{layer_prefix(obj)} evidence"),
            color="magenta",
        )
    if isinstance(obj, TissueMask):
        return show_mask(viewer, obj, **kwargs)
    raise TypeError(f"napari_conch.show cannot display a {type(obj).__name__}.")


def view(
    slide=None,
    model=None,
    *,
    viewer=None,
    classes=None,
    results=None,
    block: bool | None = None,
):
    """Open napari with the napari-conch widget docked (and ``slide`` shown).

    Parameters
    ----------
    slide : path or Slide, optional
    model : model object or name, optional
        A loaded model (any protocol object), or a name to load with default discovery.
    viewer : napari.Viewer, optional
        Use this viewer instead of a new one.
    classes : list or dict, optional
        Classes to put in the segmentation table.
    results : list or path, optional
        Results to show over the slide: segmentations and similarity maps, or a folder of
        napari-conch exports (read with :func:`napari_conch.formats.read_results`).
    block : bool, optional
        Run the Qt event loop until the window closes. Default: yes from a script or the
        command line, no inside IPython/Jupyter (where the loop already runs).

    Returns
    -------
    (viewer, widget)
    """
    _load_model_code()
    import napari

    from .widget import ConchWidget

    viewer = viewer or napari.Viewer(title="napari-conch")
    widget = ConchWidget(viewer)
    viewer.window.add_dock_widget(widget, name="napari-conch", area="right")
    if slide is not None:
        layer = show(viewer, slide)
        widget.choose_slide(layer.name)
    if results is not None:
        if isinstance(results, (str, os.PathLike)):
            from ..formats import read_results

            results = read_results(results)
        for result in results:
            show(viewer, result)
    if model is not None:
        if isinstance(model, str):
            widget.choose_model(model)
            widget.load_model()
        else:
            widget.set_model(model)
    if classes is not None:
        widget.set_classes(classes)
    if block is None:
        block = not _in_ipython()
    if block:
        napari.run()
    return viewer, widget


def _load_model_code() -> None:
    """Import torch and timm before napari starts OpenGL (then triton, if installed, loads
    safely); when Qt is already up, keep triton out instead (see ``guard_triton``)."""
    from . import guard_triton

    if _qt_running():
        guard_triton()
    from ..models import conch  # noqa: F401 - the backend: torch, timm, torchvision


def _qt_running() -> bool:
    try:
        from qtpy.QtWidgets import QApplication
    except Exception:  # no Qt binding
        return False
    return QApplication.instance() is not None


def _in_ipython() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    return get_ipython() is not None
