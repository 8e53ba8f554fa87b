"""Library objects → napari layers, placed in micrometres, reused and updated in place."""

from __future__ import annotations

import contextlib

import numpy as np

from ..formats.files import MPP_UNKNOWN_NOTE
from ..results import SegmentationResult
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
        "name": label if slide.mpp else f"{label}{MPP_UNKNOWN_NOTE}",
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
        if any(slide.origin_um):  # an OME-Zarr's translation: where its maps go too
            kwargs["translate"] = slide.origin_um
    return (data, kwargs, "image")


def show_scale_bar(viewer=None) -> None:
    """Turn the scale bar on (in ``viewer``, or the current viewer if there is one)."""
    if viewer is None:
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


def camera(viewer):
    """The viewer's camera (napari ≥ 0.9 moved it under ``viewer.scene``)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None else viewer.camera


def viewport_um(viewer) -> tuple[float, float, float, float]:
    """The visible area in world units (µm for slides with a pixel size): (y0, x0, y1, x1)."""
    cam = camera(viewer)
    cy, cx = (float(v) for v in cam.center[-2:])
    size = getattr(getattr(viewer, "canvas", None), "size", None) or (800, 600)
    half = max(size) / max(float(cam.zoom), 1e-9) / 2
    return (cy - half, cx - half, cy + half, cx + half)


def _find(viewer, name: str, kind: str):
    for layer in viewer.layers:
        if layer.name == name and type(layer).__name__.lower() == kind:
            return layer
    return None


def slide_of(result) -> str | None:
    """The name of the slide a result was made on (from its metadata), if it says."""
    return ((getattr(result, "metadata", None) or {}).get("slide") or {}).get("name")


def own_name(viewer, name: str, kind: str, slide: str | None) -> str:
    """``name``, or ``"name [slide]"`` when a layer called ``name`` already shows another
    slide's result: a second slide's map never overwrites the first one's (and the
    corrections painted into it)."""
    existing = _find(viewer, name, kind)
    if slide is None or existing is None:
        return name
    theirs = existing.metadata.get("napari_conch", {}).get("slide")
    return name if theirs in (None, slide) else f"{name} [{slide}]"


def result_layer(viewer, result):
    """The layer showing ``result`` (the labels of a segmentation), or None."""
    for layer in viewer.layers:
        if layer.metadata.get("napari_conch", {}).get("result") is result:
            return layer
    return None


def upsert(viewer, kind: str, name: str, data, slide: str | None = None, **kwargs):
    """Add a layer, or update the one of that name and type in place (keeps user settings
    such as visibility and opacity). ``slide``: the slide the data belongs to — recorded on
    the layer; another slide's layer of that name is left alone (see :func:`own_name`)."""
    name = own_name(viewer, name, kind, slide)
    if slide is not None:
        metadata = dict(kwargs.get("metadata") or {})
        metadata["napari_conch"] = {**metadata.get("napari_conch", {}), "slide": slide}
        kwargs["metadata"] = metadata
    layer = _find(viewer, name, kind)
    if layer is None:
        adder = getattr(viewer, f"add_{kind}")
        return adder(data, name=name, **kwargs)
    for key in ("scale", "translate", "units"):
        if key in kwargs:
            setattr(layer, key, kwargs[key])
    for key in ("contrast_limits", "colormap", "features", "metadata", "text"):
        if key in kwargs:
            setattr(layer, key, kwargs[key])
    layer.data = data  # last: one redraw with everything in place
    return layer


def layer_prefix(result_or_name) -> str:
    """Layer-name prefix for a result or model name: "conch" for CONCH (and its tiny test
    configuration), otherwise the model's name — so results of two models land in their
    own layers, side by side, and can be compared."""
    name = result_or_name
    dense = False
    if not isinstance(name, str) and name is not None:
        metadata = getattr(name, "metadata", None) or {}
        name = metadata.get("model", {}).get("name")
        dense = bool(metadata.get("dense"))  # sub-tile maps sit beside the tile maps
    prefix = (name or "conch").removesuffix("_tiny")
    return f"{prefix} dense (experimental)" if dense else prefix


def _placement(result, offset_um=(0.0, 0.0)) -> dict:
    return {
        "scale": tuple(result.scale_um),
        "translate": tuple(t + o for t, o in zip(result.translate_um, offset_um, strict=True)),
        "units": (MICROMETRE, MICROMETRE),
    }


def _labels_style(seg) -> dict:
    """Class colours (fixed per label) and class names as features, for a Labels layer."""
    from napari.utils.colormaps import DirectLabelColormap

    colors = {label: np.asarray(rgba, float) for label, rgba in seg.colors.items()}
    colors[None] = np.zeros(4)
    return {
        "colormap": DirectLabelColormap(color_dict=colors),
        "features": {"class": ["none", *seg.class_names]},
    }


def _segmentation_layers(seg, prefix: str, placement: dict) -> list[tuple]:
    """(data, kwargs, kind) of a segmentation's layers: the labels, then each class's
    probability and the uncertainty (hidden) — what the reader returns and what
    :func:`show_segmentation` puts into a viewer."""
    slide = slide_of(seg)  # which slide's map: another slide's never replaces it
    labels = {
        "name": f"{prefix} labels",
        "opacity": 0.55,
        "metadata": {
            "napari_conch": {"result": seg, "classes": list(seg.class_names), "slide": slide}
        },
        **placement,
    }
    hidden = {
        "visible": False,
        "opacity": 0.6,
        "contrast_limits": (0.0, 1.0),
        "metadata": {"napari_conch": {"slide": slide}},
        **placement,
    }
    layers = [(seg.labels, labels, "labels")]
    for i, name in enumerate(seg.class_names):
        kwargs = {"name": f"{prefix} p({name})", "colormap": "magma", **hidden}
        layers.append((seg.probabilities[i], kwargs, "image"))
    kwargs = {"name": f"{prefix} uncertainty", "colormap": "gray", **hidden}
    layers.append((seg.uncertainty, kwargs, "image"))
    return layers


def result_layer_data(result, prefix: str | None = None) -> list[tuple]:
    """napari layer tuples (data, kwargs, kind) for a SegmentationResult or SimilarityMap —
    what the reader returns for napari-conch's own exports. Probability and uncertainty
    images come along (hidden) when the result holds them."""
    prefix = prefix or layer_prefix(result)
    placement = _placement(result)
    if not isinstance(result, SegmentationResult):
        values = result.values if result.values.ndim == 2 else result.values[0]
        kwargs = {
            "name": f"{prefix} similarity: {result.queries[0]}",
            "contrast_limits": tuple(result.contrast_limits),
            "colormap": "turbo",
            "opacity": 0.55,
            "metadata": {"napari_conch": {"result": result}},
        }
        return [(values, {**kwargs, **placement}, "image")]
    (labels, *maps) = _segmentation_layers(result, prefix, placement)
    labels[1].update(_labels_style(result))
    return [labels, *(m for m in maps if np.isfinite(m[0]).any())]


def show_segmentation(
    viewer, seg, prefix: str | None = None, offset_um=(0.0, 0.0), update_hidden: bool = True
) -> list:
    """Labels layer (class names as features, fixed colours) plus hidden probability and
    uncertainty layers, all aligned with the slide, named "<prefix> labels" and so on
    (default prefix: from the model that made ``seg``, see :func:`layer_prefix`).

    ``update_hidden=False`` (live redraws) leaves existing hidden layers alone: redrawing
    what nobody sees only costs GUI time.
    """
    prefix = prefix or layer_prefix(seg)
    slide = slide_of(seg)
    shown = []
    for data, kwargs, kind in _segmentation_layers(seg, prefix, _placement(seg, offset_um)):
        name = own_name(viewer, kwargs.pop("name"), kind, slide)
        existing = _find(viewer, name, kind)
        if kind == "labels":
            classes = existing.metadata.get("napari_conch", {}).get("classes") if existing else None
            if classes != seg.class_names:
                # Colours and class names only when they change: resetting them is not free.
                kwargs.update(_labels_style(seg))
        elif not update_hidden and (existing is None or not existing.visible):
            continue  # live redraws leave hidden (or not yet created) maps for the end
        shown.append(upsert(viewer, kind, name, data, slide=slide, **kwargs))
    return shown


def show_similarity(viewer, sim, name: str | None = None, offset_um=(0.0, 0.0)):
    """The heatmap of a similarity map, with a colour bar. Redrawn for a new prompt, it
    keeps what the user set: the colormap always, the contrast limits once changed by hand
    (until then they follow each map's range)."""
    slide = slide_of(sim)
    name = own_name(viewer, name or f"{layer_prefix(sim)} similarity", "image", slide)
    values = sim.values if sim.values.ndim == 2 else sim.values[0]
    limits = tuple(float(v) for v in sim.contrast_limits)
    existing = _find(viewer, name, "image")
    style = {"contrast_limits": limits}
    if existing is None:
        style["colormap"] = "turbo"
    else:
        ours = existing.metadata.get("napari_conch", {}).get("contrast_limits")
        if ours is not None and tuple(existing.contrast_limits) != tuple(ours):
            style = {}  # the user's contrast limits
            limits = tuple(existing.contrast_limits)
    layer = upsert(
        viewer,
        "image",
        name,
        values,
        slide=slide,
        opacity=0.55,
        metadata={"napari_conch": {"result": sim, "contrast_limits": limits}},
        **style,
        **_placement(sim, offset_um),
    )
    with contextlib.suppress(AttributeError):  # napari without per-layer colour bars
        layer.colorbar.visible = True
    _points_on_top(viewer)
    return layer


def _points_on_top(viewer) -> None:
    """Points (exemplars, retrieval hits, evidence) stay above the maps, where they can be
    seen and clicked."""
    layers = viewer.layers
    points = [i for i, layer in enumerate(layers) if type(layer).__name__ == "Points"]
    others = [i for i, layer in enumerate(layers) if type(layer).__name__ != "Points"]
    if points and others and min(points) < max(others):
        for index in sorted(points, reverse=True):
            layers.move(index, len(layers))


def show_tiles(
    viewer,
    hits: list,
    name: str,
    offset_um=(0.0, 0.0),
    color="yellow",
    slide: str | None = None,
):
    """Tile centres of :class:`~napari_conch.results.Hit` objects as points, with their score
    (and rank) as features and text. ``slide``: the slide they were found on (another
    slide's points of that name are left alone)."""
    if hits:
        points = np.array([[h.y_um + h.size_um / 2, h.x_um + h.size_um / 2] for h in hits])
        points = points + np.asarray(offset_um)
        size = float(hits[0].size_um)
    else:
        points, size = np.zeros((0, 2)), 10.0
    features = {
        "rank": np.arange(1, len(hits) + 1),
        "score": np.array([h.score for h in hits], float),
    }
    layer = upsert(
        viewer,
        "points",
        name,
        points,
        slide=slide,
        features=features,
        size=size * 0.3,
        face_color=color,
        border_color="black",
        units=(MICROMETRE, MICROMETRE),
        # the rank only: short labels stay readable when tiles crowd at slide zoom (the
        # score is a feature, shown on hover and in the widget)
        text={"string": "{rank}", "size": 9, "color": "white", "anchor": "upper_left"},
    )
    _points_on_top(viewer)
    return layer


def show_mask(viewer, mask, name: str = "conch tissue", offset_um=(0.0, 0.0)):
    """The tissue mask as a Labels layer, in µm like the slide (in pixels only when the
    slide's pixel size is unknown)."""
    scale = mask.scale_um or mask.downsample
    translate = mask.translate_um or tuple((d - 1) / 2 for d in mask.downsample)
    units = {"units": (MICROMETRE, MICROMETRE)} if mask.scale_um else {}
    return upsert(
        viewer,
        "labels",
        name,
        mask.mask.astype(np.uint8),
        scale=tuple(scale),
        translate=tuple(t + o for t, o in zip(translate, offset_um, strict=True)),
        opacity=0.3,
        metadata={"napari_conch": {"result": mask}},
        **units,
    )
