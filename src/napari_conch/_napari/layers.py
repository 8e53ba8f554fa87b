"""Turning library objects into napari layer data, correctly placed in micrometres."""

from __future__ import annotations

from ..slide import Slide

MICROMETRE = "micrometer"


def slide_layer_data(slide: Slide, name: str | None = None) -> tuple:
    """A (data, kwargs, "image") tuple showing ``slide`` as one (multiscale) RGB layer.

    With µm/px known, world units are micrometres: scale = (mpp, mpp) per level-0 pixel
    (napari scales coarser levels itself). Without it the layer stays in pixels and its name
    says so.
    """
    data = slide.levels if len(slide.levels) > 1 else slide.levels[0]
    label = name or slide.name
    kwargs = {
        "name": label if slide.mpp else f"{label} (µm/px unknown)",
        "rgb": True,
        "multiscale": len(slide.levels) > 1,
        "contrast_limits": (0, 255),
        "metadata": {
            "napari_conch": {"slide": slide, "path": str(slide.path or ""), "mpp": slide.mpp}
        },
    }
    if slide.mpp:
        kwargs["scale"] = (slide.mpp, slide.mpp)
        kwargs["units"] = (MICROMETRE, MICROMETRE)
    return (data, kwargs, "image")


def show_scale_bar() -> None:
    """Turn the scale bar on in the current viewer, if there is one."""
    try:
        import napari

        viewer = napari.current_viewer()
    except Exception:  # no Qt app, or napari not fully started
        return
    if viewer is not None:
        scale_bar(viewer).visible = True


def scale_bar(viewer):
    """The viewer's scale-bar overlay (napari ≥ 0.9 moved it under ``viewer.canvas``)."""
    canvas = getattr(viewer, "canvas", None)
    overlays = getattr(canvas, "overlays", None)
    return getattr(overlays, "scale_bar", None) or viewer.scale_bar
