"""OME-TIFF: a pyramidal label image or similarity map with physical pixel sizes (and, for
in-memory images, the slide itself) — written, and read back as results."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..colors import rgb255
from ..errors import ResultReadError
from ..provenance import Provenance
from ..results import SegmentationResult, SimilarityMap
from .files import atomic_path
from .ome_zarr import SIMILARITY_CHANNEL

EXTENSIONS = (".ome.tif", ".ome.tiff")


def to_ome_tiff(result, path, *, what: str = "labels") -> Path:
    """A pyramidal OME-TIFF of the label map (``what="labels"``) or of a similarity map
    (``what="similarity"``; float32), with PhysicalSizeX/Y in µm.

    The channel is named (``labels`` or the similarity query), and the image's Description
    holds napari-conch's JSON: provenance, the map's placement (``scale_um``,
    ``translate_um``), class names and colours for labels, query and display window
    (``contrast_limits``) for a similarity map — what our reader needs to bring it back.
    """
    import tifffile

    path = Path(path)
    info = result.provenance.summary() | {
        "kind": what,
        "scale_um": [float(v) for v in result.scale_um],
        "translate_um": [float(v) for v in result.translate_um],
        "grid": result.metadata.get("grid"),
    }
    if what == "labels":
        data = result.labels
        channel = "labels"
        info["class_names"] = list(result.class_names)
        info["colors"] = {
            str(i): rgb255(result.colors[i]) for i in range(1, len(result.class_names) + 1)
        }
        info["areas_mm2"] = {k: float(v) for k, v in result.areas_mm2.items()}
    elif what == "similarity":
        data = (result.values if result.values.ndim == 2 else result.values[0]).astype(np.float32)
        channel = f"{SIMILARITY_CHANNEL}{result.queries[0]}"
        info["query"] = result.queries[0]
        info["contrast_limits"] = [float(v) for v in result.contrast_limits]
    else:
        raise ValueError(f"what must be 'labels' or 'similarity'; got {what!r}.")
    levels = [data]
    while min(levels[-1].shape) >= 128:
        levels.append(levels[-1][::2, ::2])
    sy, sx = (float(v) for v in result.scale_um)
    metadata = {
        "axes": "YX",
        "Name": channel,
        "Channel": {"Name": [channel]},
        "PhysicalSizeX": sx,
        "PhysicalSizeXUnit": "µm",
        "PhysicalSizeY": sy,
        "PhysicalSizeYUnit": "µm",
        "Description": json.dumps({"napari_conch": info}),
    }
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=True, ome=True) as tw:
        tw.write(levels[0], subifds=len(levels) - 1, metadata=metadata, tile=_tile(levels[0]))
        for level in levels[1:]:
            tw.write(level, subfiletype=1, tile=_tile(level))
    return path


def _tile(array) -> tuple[int, int] | None:
    return (256, 256) if min(array.shape[:2]) >= 256 else None


def slide_to_ome_tiff(slide, path, *, quality: int = 90) -> Path:
    """Write a slide's pyramid as a tiled, JPEG-compressed pyramidal OME-TIFF with its µm per
    pixel — for in-memory images (the samples, arrays) that the exports should sit on."""
    import tifffile

    path = Path(path)
    levels = [np.asarray(level) for level in slide.levels]
    metadata = {"axes": "YXS", "Name": slide.name}
    if slide.mpp:
        metadata.update(
            PhysicalSizeX=float(slide.mpp),
            PhysicalSizeXUnit="µm",
            PhysicalSizeY=float(slide.mpp),
            PhysicalSizeYUnit="µm",
        )
    options = {"photometric": "rgb", "compression": "jpeg", "compressionargs": {"level": quality}}
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=True, ome=True) as tw:
        tw.write(
            levels[0],
            subifds=len(levels) - 1,
            metadata=metadata,
            tile=_tile(levels[0]),
            **options,
        )
        for level in levels[1:]:
            tw.write(level, subfiletype=1, tile=_tile(level), **options)
    return path


# -- reading back ----------------------------------------------------------------------------


def _info(path) -> dict | None:
    """napari-conch's JSON from an OME-TIFF's image Description (None if it is not ours)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.is_ome:
                return None
            from xml.etree import ElementTree

            root = ElementTree.fromstring(tif.ome_metadata)
    except Exception:  # not a TIFF, or not OME: not ours
        return None
    for element in root.iter():
        if element.tag.endswith("Description") and element.text:
            try:
                info = json.loads(element.text).get("napari_conch")
            except (ValueError, AttributeError):
                continue
            if isinstance(info, dict) and "kind" in info:
                return info
    return None


def is_ours(path) -> bool:
    """True for a label or similarity OME-TIFF napari-conch wrote (reads its header)."""
    return _info(path) is not None


def read_ome_tiff(path):
    """A label OME-TIFF → SegmentationResult (labels only); a similarity one → SimilarityMap."""
    import tifffile

    path = Path(path)
    info = _info(path)
    if info is None:
        raise ResultReadError(f"{path} is not an OME-TIFF written by napari-conch.")
    with tifffile.TiffFile(path) as tif:
        data = tif.series[0].levels[0].asarray()
    scale = tuple(float(v) for v in info["scale_um"])
    translate = tuple(float(v) for v in info["translate_um"])
    metadata = Provenance.from_summary(info, source_file=str(path)).to_metadata()
    if info["kind"] == "similarity":
        return SimilarityMap(
            values=data.astype(np.float32),
            tile_values=np.zeros(0, np.float32),
            queries=[info["query"]],
            scale_um=scale,
            translate_um=translate,
            contrast_limits=tuple(float(v) for v in info["contrast_limits"]),
            metadata=metadata,
        )
    return SegmentationResult.from_labels(
        data,
        info["class_names"],
        scale_um=scale,
        translate_um=translate,
        colors={k: [c / 255 for c in v] for k, v in info["colors"].items()},
        areas_mm2=info.get("areas_mm2") or {},
        metadata=metadata,
    )


def write(job, path) -> None:
    """export_all's writer: the label image."""
    to_ome_tiff(job.seg, path)


def write_similarity(job, path, index: int) -> None:
    """export_all's writer: the ``index``-th similarity map."""
    to_ome_tiff(job.similarities[index], path, what="similarity")


def read(path) -> list:
    """The result in one of our OME-TIFFs."""
    return [read_ome_tiff(path)]
