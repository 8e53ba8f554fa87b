"""OME-Zarr (OME-NGFF 0.4): class probabilities, the uncertainty and similarity maps as the
image's channels, the label map under ``labels/segmentation`` with class names and colours
— written, and read back as results."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

from ..colors import hex_rgb
from ..deprecation import renamed_keywords
from ..errors import ResultReadError
from ..maps import contrast_limits, normalized_entropy
from ..provenance import Provenance
from ..results import SegmentationResult, SimilarityMap
from .files import atomic_path

EXTENSIONS = (".ome.zarr", ".zarr")
UNCERTAINTY_CHANNEL = "uncertainty"
SIMILARITY_CHANNEL = "similarity: "


@renamed_keywords(similarity="similarities")
def to_ome_zarr(seg, path, *, similarities=()) -> Path:
    """Write an OME-NGFF (0.4) image: class probabilities, the uncertainty and the
    similarity maps (a :class:`SimilarityMap` or a list; one channel per query) as
    channels, and the label map under ``labels/segmentation`` with class names and
    colours."""
    path = Path(path)
    if similarities is None or isinstance(similarities, SimilarityMap):
        similarities = [] if similarities is None else [similarities]
    channels = [seg.probabilities.astype(np.float32), seg.uncertainty[None].astype(np.float32)]
    names = [*(f"p({n})" for n in seg.class_names), UNCERTAINTY_CHANNEL]
    for sim in similarities:
        values = sim.values if sim.values.ndim == 3 else sim.values[None]
        channels.append(values.astype(np.float32))
        names += [f"{SIMILARITY_CHANNEL}{q}" for q in sim.queries]
    image = np.concatenate(channels, axis=0)
    # Display colours: each class's own, white for the uncertainty, magenta for similarity.
    colors = [hex_rgb(seg.colors[i]) for i in range(1, len(seg.class_names) + 1)]
    colors += ["FFFFFF"] + ["FF00FF"] * (len(names) - len(colors) - 1)
    scale = [float(v) for v in seg.scale_um]
    translate = [float(v) for v in seg.translate_um]
    with atomic_path(path) as tmp:
        _write(tmp, seg, image, names, colors, scale, translate)
    return path


def _window(values: np.ndarray, fixed: tuple[float, float] | None) -> dict:
    """An OMERO display window: fixed bounds (probabilities 0–1), else the data's range."""
    finite = values[np.isfinite(values)]
    lo, hi = (
        fixed
        if fixed is not None
        else ((float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0))
    )
    if hi <= lo:
        hi = lo + 1e-6
    return {"start": lo, "end": hi, "min": lo, "max": hi}


def _write(path: Path, seg, image, names, colors, scale, translate) -> None:
    import zarr

    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    axes_cyx = [
        {"name": "c", "type": "channel"},
        {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "micrometer"},
    ]
    _write_multiscale(root, image, axes_cyx, [1.0, *scale], [0.0, *translate], nearest=False)
    root.attrs["omero"] = {
        "channels": [
            {
                "label": name,
                "color": color,
                "active": i == 0,
                "window": _window(
                    image[i], None if name.startswith(SIMILARITY_CHANNEL) else (0.0, 1.0)
                ),
            }
            for i, (name, color) in enumerate(zip(names, colors, strict=True))
        ],
        "rdefs": {"model": "color"},
    }
    root.attrs["napari_conch"] = {
        **seg.provenance.summary(),
        "class_names": seg.class_names,
        "prompts": seg.metadata.get("prompts"),
        "grid": seg.metadata.get("grid"),
    }
    labels_group = root.require_group("labels")
    labels_group.attrs["labels"] = ["segmentation"]
    seg_group = labels_group.require_group("segmentation")
    axes_yx = axes_cyx[1:]
    _write_multiscale(seg_group, seg.labels, axes_yx, scale, translate, nearest=True)
    seg_group.attrs["image-label"] = {
        "version": "0.4",
        "colors": [
            {"label-value": label, "rgba": [round(255 * c) for c in seg.colors[label]]}
            for label in range(1, len(seg.class_names) + 1)
        ],
        "properties": [
            {"label-value": label, "class": name, "area (mm2)": float(seg.areas_mm2.get(name, 0.0))}
            for label, name in enumerate(seg.class_names, start=1)
        ],
        "source": {"image": "../../"},
    }


def _write_multiscale(
    group, data, axes, scale, translate, nearest: bool, min_side: int = 64
) -> None:
    """Levels halving y and x until the smaller side is below ``min_side``."""
    levels = [data]
    while min(levels[-1].shape[-2:]) >= 2 * min_side:
        prev = levels[-1]
        if nearest:
            levels.append(prev[..., ::2, ::2])
        else:
            h, w = (prev.shape[-2] // 2) * 2, (prev.shape[-1] // 2) * 2
            cut = prev[..., :h, :w]
            with warnings.catch_warnings():  # all-NaN blocks (no tissue) stay NaN
                warnings.simplefilter("ignore", RuntimeWarning)
                blocks = cut.reshape(*cut.shape[:-2], h // 2, 2, w // 2, 2)
                levels.append(np.nanmean(blocks, axis=(-3, -1)))
    datasets = []
    for i, level in enumerate(levels):
        factor = 2**i
        arr = group.create_array(
            str(i), shape=level.shape, dtype=level.dtype, chunks=level.shape, overwrite=True
        )
        arr[...] = level
        level_scale = [s * factor if j >= len(scale) - 2 else s for j, s in enumerate(scale)]
        level_translate = [
            t + (factor - 1) / 2 * scale[j] if j >= len(scale) - 2 else t
            for j, t in enumerate(translate)
        ]
        datasets.append(
            {
                "path": str(i),
                "coordinateTransformations": [
                    {"type": "scale", "scale": level_scale},
                    {"type": "translation", "translation": level_translate},
                ],
            }
        )
    method = "every second cell (nearest)" if nearest else "2 × 2 mean ignoring NaN"
    group.attrs["multiscales"] = [
        {
            "version": "0.4",
            "axes": axes,
            "datasets": datasets,
            "name": "napari-conch",
            "type": "nearest" if nearest else "mean",
            "metadata": {"description": f"levels halve y and x: {method}", "method": method},
        }
    ]


# -- reading back ----------------------------------------------------------------------------


def is_ours(path) -> bool:
    """True for an OME-Zarr folder written by napari-conch (cheap: reads one JSON file)."""
    path = Path(path)
    for name in (".zattrs", "zarr.json"):
        attrs_file = path / name
        if attrs_file.is_file():
            try:
                attrs = json.loads(attrs_file.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return False
            attrs = attrs.get("attributes", attrs)  # zarr v3 nests user attributes
            return "napari_conch" in attrs
    return False


def read_ome_zarr(path) -> tuple:
    """A napari-conch OME-Zarr export → ``(SegmentationResult, [SimilarityMap, ...])``."""
    import zarr

    path = Path(path)
    if not is_ours(path):
        raise ResultReadError(f"{path} is not an OME-Zarr written by napari-conch.")
    root = zarr.open_group(str(path), mode="r")
    attrs = dict(root.attrs)
    info = attrs["napari_conch"]
    class_names = list(info["class_names"])
    channel_names = [c.get("label", "") for c in attrs.get("omero", {}).get("channels", [])]
    image = np.asarray(root["0"][...], np.float32)
    scale, translate = _placement(attrs["multiscales"][0])
    seg_group = root["labels"]["segmentation"]
    labels = np.asarray(seg_group["0"][...])
    label_attrs = dict(seg_group.attrs).get("image-label", {})
    colors = {
        int(c["label-value"]): tuple(v / 255.0 for v in c["rgba"])
        for c in label_attrs.get("colors", [])
    }
    areas = {p["class"]: float(p.get("area (mm2)", 0.0)) for p in label_attrs.get("properties", [])}
    n = len(class_names)
    probabilities = image[:n]
    if UNCERTAINTY_CHANNEL in channel_names:
        uncertainty = image[channel_names.index(UNCERTAINTY_CHANNEL)]
    else:  # written before the channel existed: the entropy of the classes stored
        uncertainty = normalized_entropy(probabilities)
    metadata = Provenance.from_summary(info, source_file=str(path)).to_metadata()
    seg = SegmentationResult(
        labels=labels,
        probabilities=probabilities,
        uncertainty=uncertainty,
        class_names=class_names,
        colors=colors,
        areas_mm2=areas,
        scale_um=scale,
        translate_um=translate,
        tile_probabilities=np.zeros((0, n), np.float32),
        metadata=metadata,
    )
    similarities = [
        SimilarityMap(
            values=image[channel],
            tile_values=np.zeros(0, np.float32),
            queries=[name[len(SIMILARITY_CHANNEL) :]],
            scale_um=scale,
            translate_um=translate,
            contrast_limits=contrast_limits(image[channel]),
            metadata=dict(metadata),
        )
        for channel, name in enumerate(channel_names)
        if channel >= n and name.startswith(SIMILARITY_CHANNEL)
    ]
    return seg, similarities


def _placement(multiscale: dict) -> tuple[tuple[float, float], tuple[float, float]]:
    """Level 0's scale and translation for the last two (y, x) axes."""
    transforms = multiscale["datasets"][0]["coordinateTransformations"]
    scale = next(t["scale"] for t in transforms if t["type"] == "scale")
    translate = next(
        (t["translation"] for t in transforms if t["type"] == "translation"), [0.0] * len(scale)
    )
    return (float(scale[-2]), float(scale[-1])), (float(translate[-2]), float(translate[-1]))


def write(job, path) -> None:
    """export_all's writer: the segmentation with every similarity map as channels."""
    to_ome_zarr(job.seg, path, similarities=job.similarities)


def read(path) -> list:
    """The results in one of our OME-Zarr folders: the segmentation, then its maps."""
    seg, similarities = read_ome_zarr(path)
    return [seg, *similarities]
