"""Exports that other tools open: QuPath GeoJSON, OME-Zarr, OME-TIFF, tile tables.

- :func:`to_geojson` — a FeatureCollection QuPath imports: one merged (multi)polygon per
  class, holes kept, with ``classification`` {name, color} and measurements (area µm², mean
  probability); optionally one square per tile with per-class scores. Coordinates are
  level-0 pixels, as QuPath expects.
- :func:`to_ome_zarr` — OME-NGFF: probability maps as the image, the label map under
  ``labels/segmentation`` with class names and colours in its ``image-label`` metadata.
- :func:`to_ome_tiff` — a pyramidal OME-TIFF label image with physical pixel sizes.
- :func:`tile_table` — a pandas table (CSV or Parquet) of tiles: coordinates in px and µm,
  tissue fraction, per-class scores, similarity values.

Every export records the model, whether its weights were trained, and the prompts.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import warnings
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

UNCERTAINTY_CHANNEL = "uncertainty"
SIMILARITY_CHANNEL = "similarity: "
BACKGROUND_RGB = (160, 160, 160)  # tiles the background class wins (QuPath colour)
# Every format export_all writes (the CLI's --formats choices).
FORMATS = ("geojson", "geojson-tiles", "ome-zarr", "ome-tiff", "csv", "parquet")


# -- geometry ------------------------------------------------------------------------------


def label_polygons(labels: np.ndarray, value: int, cell_px: float, origin_px=(0.0, 0.0)):
    """The cells equal to ``value`` as one shapely (Multi)Polygon in level-0 pixels (x, y),
    exact on the cell grid, holes kept. Rows are merged into runs before the union."""
    from shapely import box
    from shapely.ops import unary_union

    mask = labels == value
    boxes = []
    oy, ox = origin_px
    for row in np.flatnonzero(mask.any(axis=1)):
        line = np.concatenate([[False], mask[row], [False]])
        edges = np.flatnonzero(np.diff(line.astype(np.int8)))
        for start, stop in zip(edges[::2], edges[1::2], strict=True):
            boxes.append(
                box(
                    ox + start * cell_px,
                    oy + row * cell_px,
                    ox + stop * cell_px,
                    oy + (row + 1) * cell_px,
                )
            )
    return unary_union(boxes) if boxes else None


def _rgb255(rgba) -> list[int]:
    return [round(255 * float(c)) for c in rgba[:3]]


def _provenance(result) -> dict:
    meta = result.metadata or {}
    model = meta.get("model", {}) or {}
    info = {
        "model": model.get("name"),
        "weights_hash": model.get("weights_hash"),
        "trained": bool(model.get("trained", True)),
        "napari_conch": meta.get("napari_conch"),
        "created": meta.get("created"),
    }
    if meta.get("decode"):  # tiles decoded at reduced size (JPEG, DCT domain)
        info["decode"] = meta["decode"]
    if not info["trained"]:
        info["note"] = "UNTRAINED model: a pipeline check, not a result"
    return info


def file_stem(path_or_name) -> str:
    """The name outputs are called after — one rule for slide paths (the CLI) and napari
    layer names (the widget): the file name without its extension, OME compound suffixes
    whole ("case 1.ome.tif" → "case 1"), napari-conch's "(µm/px unknown)" layer note left
    out, and characters that file systems refuse replaced by "_"."""
    from .slide import MPP_UNKNOWN_NOTE

    name = Path(str(path_or_name).removesuffix(MPP_UNKNOWN_NOTE)).name
    for suffix in (".ome.tiff", ".ome.tif", ".ome.zarr"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    else:
        name = Path(name).stem
    return re.sub(r'[\\/:*?"<>|\x00-\x1f]+', "_", name).strip(" .") or "slide"


@contextlib.contextmanager
def _atomic(path: Path):
    """Yield a temporary sibling of ``path`` to write; it replaces ``path`` only once the
    writing succeeded, and is removed otherwise — a failed export (full disk, interrupt)
    never leaves a half-written file that looks finished."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    _remove(tmp)
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    if path.is_dir() and tmp.is_dir():
        _remove(path)  # an older export of the same name (a folder cannot be replaced)
    os.replace(tmp, path)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


# -- GeoJSON ---------------------------------------------------------------------------------


def to_geojson(seg, path=None, *, tiles: bool = False, emb=None) -> dict:
    """A QuPath-readable FeatureCollection of a :class:`SegmentationResult`.

    Parameters
    ----------
    seg : SegmentationResult
    path : path, optional
        Also write it there (``.geojson``).
    tiles : bool
        Add one square "detection" per tile with its per-class probabilities (needs the
        tile positions: taken from ``seg.metadata["grid"]`` and ``emb``).
    emb : Embeddings, optional
        The embeddings the segmentation came from (for tile squares).
    """
    from shapely import box, orient_polygons
    from shapely.geometry import mapping

    grid = seg.metadata["grid"]
    cell_px = float(grid["stride_px"])
    origin = tuple(float(v) for v in grid.get("origin_px", (0, 0)))
    # The image's edge is the edge: polygons and tile squares are cut there.
    image = None
    if grid.get("slide_shape"):
        height, width = (float(v) for v in grid["slide_shape"])
        image = box(0.0, 0.0, width, height)
    features = []
    for label, name in enumerate(seg.class_names, start=1):
        geometry = label_polygons(seg.labels, label, cell_px, origin)
        if geometry is not None and image is not None:
            geometry = geometry.intersection(image)
        if geometry is None or geometry.is_empty:
            continue
        geometry = orient_polygons(geometry, exterior_cw=False)  # RFC 7946 § 3.1.6
        measurements = {"Tissue area µm^2": float(seg.areas_mm2.get(name, 0.0) * 1e6)}
        probability = seg.probabilities[label - 1][seg.labels == label]
        probability = probability[np.isfinite(probability)]  # painted cells may have none
        if probability.size:  # QuPath reads every measurement as a number: never null
            measurements["Mean probability"] = float(probability.mean())
        features.append(
            {
                "type": "Feature",
                "geometry": mapping(geometry),
                "properties": {
                    "objectType": "annotation",
                    "name": name,
                    "classification": {"name": name, "color": _rgb255(seg.colors[label])},
                    "measurements": measurements,
                    "isLocked": False,
                },
            }
        )
    if tiles:
        if emb is None:
            raise ValueError("tiles=True needs the embeddings (emb=) for the tile positions.")
        features += _tile_features(seg, emb, float(grid["tile_px"]), image)
    # The map's own geometry, so napari-conch's reader can rebuild the label image exactly.
    raster = {
        "cell_px": cell_px,
        "origin_px": list(origin),
        "shape": list(seg.labels.shape),
        "scale_um": [float(v) for v in seg.scale_um],
        "translate_um": [float(v) for v in seg.translate_um],
        "class_names": list(seg.class_names),
        "colors": {str(i): _rgb255(seg.colors[i]) for i in range(1, len(seg.class_names) + 1)},
        "image_shape": [float(v) for v in grid["slide_shape"]] if grid.get("slide_shape") else None,
    }
    collection = {
        "type": "FeatureCollection",
        "features": features,
        "properties": {
            "napari_conch": {**_provenance(seg), "map": raster},
            "coordinates": "level-0 pixels (x, y)",
        },
    }
    text = json.dumps(collection)
    if path is not None:
        with _atomic(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
    return json.loads(text)  # plain lists, exactly what the file holds


def _tile_features(seg, emb, size: float, image) -> list[dict]:
    """One square "detection" per embedded tile, classified by the map's decision rule
    (``"background"`` where the background class wins; no class below min_confidence)."""
    from shapely import box, orient_polygons
    from shapely.geometry import mapping

    classes = seg.tile_classes()
    colors = {name: _rgb255(seg.colors[i]) for i, name in enumerate(seg.class_names, start=1)}
    colors["background"] = list(BACKGROUND_RGB)
    features = []
    for position, (y, x) in enumerate(emb.coords):
        probs = seg.tile_probabilities[position]
        name = classes[position]
        if not name:  # not embedded
            continue
        square = box(float(x), float(y), float(x) + size, float(y) + size)
        if image is not None:
            square = square.intersection(image)
        square = orient_polygons(square, exterior_cw=False)
        properties = {
            "objectType": "detection",
            "measurements": {
                f"p({n})": float(p) for n, p in zip(seg.class_names, probs, strict=True)
            },
            "tile": position,
        }
        if name in colors:
            properties["classification"] = {"name": name, "color": colors[name]}
        features.append({"type": "Feature", "geometry": mapping(square), "properties": properties})
    return features


# -- OME-Zarr --------------------------------------------------------------------------------


def to_ome_zarr(seg, path, *, similarity=None) -> Path:
    """Write an OME-NGFF (0.4) image: class probabilities, the uncertainty (and similarity
    maps) as channels, and the label map under ``labels/segmentation`` with class names and
    colours."""

    path = Path(path)
    channels = [seg.probabilities.astype(np.float32), seg.uncertainty[None].astype(np.float32)]
    names = [*(f"p({n})" for n in seg.class_names), UNCERTAINTY_CHANNEL]
    if similarity is not None:
        values = similarity.values if similarity.values.ndim == 3 else similarity.values[None]
        channels.append(values.astype(np.float32))
        names += [f"{SIMILARITY_CHANNEL}{q}" for q in similarity.queries]
    image = np.concatenate(channels, axis=0)
    # Display colours: each class's own, white for the uncertainty, magenta for similarity.
    colors = [_hex(seg.colors[i]) for i in range(1, len(seg.class_names) + 1)]
    colors += ["FFFFFF"] + ["FF00FF"] * (len(names) - len(colors) - 1)
    scale = [float(v) for v in seg.scale_um]
    translate = [float(v) for v in seg.translate_um]
    with _atomic(path) as tmp:
        _write_ome_zarr(tmp, seg, image, names, colors, scale, translate)
    return path


def _hex(rgba) -> str:
    return "".join(f"{round(255 * float(c)):02X}" for c in rgba[:3])


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


def _write_ome_zarr(path: Path, seg, image, names, colors, scale, translate) -> None:
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
        **_provenance(seg),
        "class_names": seg.class_names,
        "prompts": seg.metadata.get("prompts"),
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


# -- OME-TIFF --------------------------------------------------------------------------------


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
    info = _provenance(result) | {
        "kind": what,
        "scale_um": [float(v) for v in result.scale_um],
        "translate_um": [float(v) for v in result.translate_um],
    }
    if what == "labels":
        data = result.labels
        channel = "labels"
        info["class_names"] = list(result.class_names)
        info["colors"] = {
            str(i): _rgb255(result.colors[i]) for i in range(1, len(result.class_names) + 1)
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
    with _atomic(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=True, ome=True) as tw:
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
    with _atomic(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=True, ome=True) as tw:
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


# -- tables ----------------------------------------------------------------------------------


def tile_table(emb, seg=None, similarities=(), path=None):
    """A pandas DataFrame with one row per tile (written to ``.csv`` or ``.parquet``).

    Every row says which model made it (``model``, ``weights_hash``, ``trained``) — plain
    columns, so ``pd.read_csv`` users see them without tricks. ``frame.attrs["napari_conch"]``
    holds the whole provenance (model, grid, prompts, queries), which Parquet files keep as
    key-value metadata (``pyarrow.parquet.read_schema(path).metadata[b"napari_conch"]``).
    """
    import pandas as pd

    grid = emb.grid
    coords = emb.coords
    mpp = grid.mpp
    table = {
        "tile": np.arange(len(emb)),
        "row": grid.indices[:, 0],
        "col": grid.indices[:, 1],
        "y_px": coords[:, 0],
        "x_px": coords[:, 1],
        "y_um": grid.offset_um[0] + coords[:, 0] * mpp,  # world µm (an OME-Zarr's translation)
        "x_um": grid.offset_um[1] + coords[:, 1] * mpp,
        "size_px": grid.tile_px,
        "size_um": grid.tile_um,
        "tissue_fraction": grid.tissue_fraction,
        "embedded": emb.done,
    }
    provenance = _provenance(seg if seg is not None else emb)
    for key in ("model", "weights_hash", "trained"):
        table[key] = provenance[key]
    if seg is not None:
        for i, name in enumerate(seg.class_names):
            table[f"p({name})"] = seg.tile_probabilities[:, i]
        if seg.tile_background_probability is not None:  # the row's probabilities sum to 1
            background = (seg.metadata or {}).get("background") or "background"
            table[f"p({background})"] = seg.tile_background_probability
        table["class"] = seg.tile_classes()  # the map's rule: "background" where it wins
    for sim in similarities:
        values = sim.tile_values if sim.tile_values.ndim == 2 else sim.tile_values[None]
        for query, column in zip(sim.queries, values, strict=True):
            table[f"{SIMILARITY_CHANNEL}{query}"] = column
    frame = pd.DataFrame(table)
    frame.attrs["napari_conch"] = {
        **provenance,
        "grid": grid.to_dict(),
        "slide": (emb.metadata or {}).get("slide"),
        "prompts": (seg.metadata or {}).get("prompts") if seg is not None else None,
        "background": (seg.metadata or {}).get("background") if seg is not None else None,
        "similarity_queries": [q for sim in similarities for q in sim.queries],
    }
    if path is not None:
        path = Path(path)
        with _atomic(path) as tmp:
            if path.suffix.lower() == ".parquet":
                _write_parquet(frame, tmp)
            else:
                frame.to_csv(tmp, index=False)
    return frame


def _write_parquet(frame, path: Path) -> None:
    """Parquet with the provenance as key-value metadata (``b"napari_conch"``: JSON)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ImportError("Writing Parquet needs pyarrow: pip install pyarrow.") from exc
    table = pa.Table.from_pandas(frame, preserve_index=False)
    extra = {b"napari_conch": json.dumps(frame.attrs["napari_conch"], default=str).encode()}
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **extra})
    pq.write_table(table, path)


def export_paths(
    out_dir, stem: str, formats=FORMATS, *, n_similarities: int = 0, with_tiles: bool = True
) -> dict:
    """Where :func:`export_all` writes each kind of file — {kind: path}, the summary too — so
    a caller can see what an export would overwrite before it starts."""
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise ValueError(f"Unknown export formats {unknown}; choose from {', '.join(FORMATS)}.")
    out = Path(out_dir)
    paths = {}
    if "geojson" in formats:
        paths["geojson"] = out / f"{stem}.geojson"
    if "geojson-tiles" in formats and with_tiles:
        paths["geojson-tiles"] = out / f"{stem}.tiles.geojson"
    if "ome-zarr" in formats:
        paths["ome-zarr"] = out / f"{stem}.ome.zarr"
    if "ome-tiff" in formats:
        paths["ome-tiff"] = out / f"{stem}.labels.ome.tif"
        for i in range(n_similarities):
            name = "similarity" if n_similarities == 1 else f"similarity-{i + 1}"
            paths[name] = out / f"{stem}.{name}.ome.tif"
    for suffix in ("csv", "parquet"):
        if with_tiles and suffix in formats:
            paths[suffix] = out / f"{stem}.tiles.{suffix}"
    paths["summary"] = out / f"{stem}.summary.json"
    return paths


def free_stem(out_dir, stem: str, formats=FORMATS, **kwargs) -> str:
    """``stem``, or ``stem-2``, ``stem-3``, … — the first whose files do not exist yet."""
    candidate, n = stem, 1
    while any(p.exists() for p in export_paths(out_dir, candidate, formats, **kwargs).values()):
        n += 1
        candidate = f"{stem}-{n}"
    return candidate


def export_all(
    seg,
    out_dir,
    stem: str,
    *,
    emb=None,
    similarities=(),
    formats=("geojson", "ome-zarr", "ome-tiff", "csv"),
) -> dict:
    """Write a segmentation (and similarity maps) in every requested format into ``out_dir``.

    ``formats`` is any of :data:`FORMATS`. ``"ome-tiff"`` writes the label image and one
    float OME-TIFF per similarity map; ``"csv"`` and ``"parquet"`` write the tile table
    (they need ``emb``). A ``<stem>.summary.json`` with provenance, areas, the maps'
    placement in µm and the list of files is always written. Returns {kind: path}; the names
    are :func:`export_paths`'s. Files of the same names are replaced (each only once its new
    version is complete); :func:`free_stem` finds a stem that replaces nothing.
    """
    paths = export_paths(
        out_dir, stem, formats, n_similarities=len(similarities), with_tiles=emb is not None
    )
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    for kind, path in paths.items():
        if kind == "geojson":
            to_geojson(seg, path, tiles=False)
        elif kind == "geojson-tiles":
            to_geojson(seg, path, tiles=True, emb=emb)
        elif kind == "ome-zarr":
            to_ome_zarr(seg, path, similarity=similarities[0] if similarities else None)
        elif kind == "ome-tiff":
            to_ome_tiff(seg, path)
        elif kind.startswith("similarity"):
            index = 0 if kind == "similarity" else int(kind.rsplit("-", 1)[1]) - 1
            to_ome_tiff(similarities[index], path, what="similarity")
        elif kind in ("csv", "parquet"):
            tile_table(emb, seg, similarities, path)
    written = {k: p for k, p in paths.items() if k != "summary"}
    summary = {
        **_provenance(seg),
        "classes": seg.class_names,
        "areas_mm2": seg.areas_mm2,
        "scale_um": [float(v) for v in seg.scale_um],
        "translate_um": [float(v) for v in seg.translate_um],
        "similarity_queries": [q for sim in similarities for q in sim.queries],
        "files": {k: str(v) for k, v in written.items()},
        "slide": seg.metadata.get("slide"),
        "prompts": seg.metadata.get("prompts"),
    }
    with _atomic(paths["summary"]) as tmp:
        tmp.write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    return paths
