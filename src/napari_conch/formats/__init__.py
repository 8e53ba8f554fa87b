"""Every file format napari-conch writes and reads back, in one registry.

Each format is one module here (its writer and its reader side by side) and one row of
:data:`REGISTRY`. Everything that offers formats reads the registry: :func:`export_all`, the
command line's ``--formats``, the widget's export dialog, napari's writer and reader
(``napari.yaml`` is checked against it by a test), and :func:`read_result_file`.

Adding a format: write ``formats/<name>.py`` with ``write(job, path)`` (and, if it can be
read back, ``read(path) -> list of results`` and ``is_ours(path) -> bool``), then add its
row below. docs/architecture.md walks through an example.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import OutputError, ResultReadError
from . import geojson, ome_tiff, ome_zarr, tables
from .files import atomic_path, file_stem

__all__ = [
    "FORMATS",
    "REGISTRY",
    "ExportJob",
    "Format",
    "default_formats",
    "export_all",
    "export_paths",
    "file_stem",
    "format_for_layer_path",
    "free_stem",
    "get_format",
    "is_result_file",
    "missing_requirements",
    "read_result_file",
    "read_results",
]


@dataclass(frozen=True)
class ExportJob:
    """What an export writes: a segmentation, its embeddings (tile positions) and the
    similarity maps that go with it."""

    seg: object
    emb: object = None
    similarities: Sequence = ()


@dataclass(frozen=True)
class Format:
    """One row of the registry.

    Attributes
    ----------
    name : str
        The format's word in ``export_all(formats=)``, ``--formats`` and the settings.
    suffix : str
        What :func:`export_all` appends to the stem ("case" → "case.labels.ome.tif").
    label : str
        How the widget's export dialog offers it.
    write : callable(job, path)
        Writes an :class:`ExportJob`.
    read : callable(path) -> list, optional
        Reads one of our files back as results (segmentations, similarity maps).
    is_ours : callable(path) -> bool, optional
        Cheap check (headers, JSON attributes) that a file is one of ours.
    extensions : tuple of str
        File endings of this format (what the reader and napari's writer go by).
    needs_tiles : bool
        Needs the embeddings (one record per tile); left out when there are none.
    writes_layers : bool
        napari's "Save layer" writes Labels layers in it.
    default : bool
        Written when no formats are chosen.
    requires : str, optional
        An optional module it needs (checked before any work starts).
    per_similarity : callable(job, path, index), optional
        Also writes one file per similarity map, named ``<stem>.similarity[-N]`` + the
        format's extension.
    """

    name: str
    suffix: str
    label: str
    write: Callable
    read: Callable | None = None
    is_ours: Callable | None = None
    extensions: tuple[str, ...] = field(default=())
    needs_tiles: bool = False
    writes_layers: bool = False
    default: bool = False
    requires: str | None = None
    per_similarity: Callable | None = None

    def matches(self, path) -> bool:
        """Whether ``path`` ends like a file of this format."""
        name = Path(path).name.lower()
        return any(name.endswith(ext) for ext in self.extensions or (self.suffix,))

    def targets(self, out_dir, stem: str, *, n_similarities: int = 0) -> dict:
        """{kind: path} of the files this format writes for ``stem``."""
        out = Path(out_dir)
        paths = {self.name: out / f"{stem}{self.suffix}"}
        if self.per_similarity is not None:
            extension = self.extensions[0] if self.extensions else self.suffix
            for i in range(n_similarities):
                kind = "similarity" if n_similarities == 1 else f"similarity-{i + 1}"
                paths[kind] = out / f"{stem}.{kind}{extension}"
        return paths


REGISTRY: tuple[Format, ...] = (
    Format(
        "geojson",
        ".geojson",
        "QuPath GeoJSON — one region per class",
        geojson.write,
        geojson.read,
        geojson.is_ours,
        geojson.EXTENSIONS,
        writes_layers=True,
        default=True,
    ),
    Format(
        "geojson-tiles",
        ".tiles.geojson",
        "QuPath GeoJSON — one square per tile, with its scores",
        geojson.write_tiles,
        extensions=(".tiles.geojson",),
        needs_tiles=True,
    ),
    Format(
        "ome-zarr",
        ".ome.zarr",
        "OME-Zarr — labels, probabilities and the similarity maps",
        ome_zarr.write,
        ome_zarr.read,
        ome_zarr.is_ours,
        ome_zarr.EXTENSIONS,
        writes_layers=True,
        default=True,
    ),
    Format(
        "ome-tiff",
        ".labels.ome.tif",
        "OME-TIFF — label image, and the similarity maps",
        ome_tiff.write,
        ome_tiff.read,
        ome_tiff.is_ours,
        ome_tiff.EXTENSIONS,
        writes_layers=True,
        default=True,
        per_similarity=ome_tiff.write_similarity,
    ),
    Format(
        "csv",
        ".tiles.csv",
        "Tile table (CSV)",
        tables.write,
        needs_tiles=True,
        default=True,
    ),
    Format(
        "parquet",
        ".tiles.parquet",
        "Tile table (Parquet)",
        tables.write,
        needs_tiles=True,
        requires="pyarrow",
    ),
)

# Every format's name, in the registry's order (the CLI's --formats choices).
FORMATS: tuple[str, ...] = tuple(f.name for f in REGISTRY)


def format_function(name: str):
    """A function of a registered format's module by name (``to_geojson``, ``read_ome_tiff``,
    …), so the ``export`` and ``readback`` facades offer each new format's own functions
    without a list to keep; None when no format module has it."""
    import sys

    for fmt in REGISTRY:
        module = sys.modules[fmt.write.__module__]
        if hasattr(module, name):
            return getattr(module, name)
    return None


def get_format(name: str) -> Format:
    """The registry row called ``name``."""
    for fmt in REGISTRY:
        if fmt.name == name:
            return fmt
    raise ValueError(f"Unknown export format {name!r}; choose from {', '.join(FORMATS)}.")


def default_formats() -> tuple[str, ...]:
    """The formats written when none are chosen."""
    return tuple(f.name for f in REGISTRY if f.default)


def missing_requirements(formats) -> list[tuple[str, str]]:
    """(format, module) pairs for chosen formats whose optional module is not installed."""
    return [
        (fmt.name, fmt.requires)
        for fmt in map(get_format, formats)
        if fmt.requires and importlib.util.find_spec(fmt.requires) is None
    ]


def format_for_layer_path(path) -> Format:
    """The format napari's writer saves a Labels layer in, by the file's name (a bare
    ``.tif`` or ``.zarr`` counts as its OME kind)."""
    writers = [f for f in REGISTRY if f.writes_layers]
    for fmt in writers:
        if fmt.matches(path):
            return fmt
    suffix = Path(path).suffix.lower()
    for fmt in writers:
        if any(ext.endswith(suffix) for ext in fmt.extensions) and suffix:
            return fmt
    names = ", ".join(f.extensions[0] for f in writers)
    raise ValueError(f"napari-conch writes labels as {names}, not {Path(path).name!r}.")


# -- writing ---------------------------------------------------------------------------------


def export_paths(
    out_dir, stem: str, formats=FORMATS, *, n_similarities: int = 0, with_tiles: bool = True
) -> dict:
    """Where :func:`export_all` writes each kind of file — {kind: path}, the summary too — so
    a caller can see what an export would overwrite before it starts."""
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise ValueError(f"Unknown export formats {unknown}; choose from {', '.join(FORMATS)}.")
    chosen = [get_format(name) for name in formats]
    paths = {}
    for fmt in REGISTRY:  # the registry's order, whatever order they were asked in
        if fmt in chosen and (with_tiles or not fmt.needs_tiles):
            paths.update(fmt.targets(out_dir, stem, n_similarities=n_similarities))
    paths["summary"] = Path(out_dir) / f"{stem}.summary.json"
    return paths


def free_stem(out_dir, stem: str, formats=FORMATS, **kwargs) -> str:
    """``stem``, or ``stem-2``, ``stem-3``, … — the first whose files do not exist yet."""
    candidate, n = stem, 1
    while any(p.exists() for p in export_paths(out_dir, candidate, formats, **kwargs).values()):
        n += 1
        candidate = f"{stem}-{n}"
    return candidate


def export_all(seg, out_dir, stem: str, *, emb=None, similarities=(), formats=None) -> dict:
    """Write a segmentation (and similarity maps) in every requested format into ``out_dir``.

    ``formats`` is any of :data:`FORMATS` (default: :func:`default_formats`). Formats that
    need one record per tile (tile tables, tile squares) need ``emb`` and are left out
    without it; ``"ome-tiff"`` writes the label image and one float OME-TIFF per similarity
    map. A ``<stem>.summary.json`` with provenance, areas, the maps' placement in µm and the
    list of files is always written. Returns {kind: path}; the names are
    :func:`export_paths`'s. Files of the same names are replaced (each only once its new
    version is complete); :func:`free_stem` finds a stem that replaces nothing.
    """
    formats = default_formats() if formats is None else tuple(formats)
    paths = export_paths(  # unknown formats are refused here, before anything is written
        out_dir, stem, formats, n_similarities=len(similarities), with_tiles=emb is not None
    )
    missing = missing_requirements(formats)
    if missing:
        name, module = missing[0]
        raise OutputError(f"Writing {name} needs {module}: pip install {module}.")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    job = ExportJob(seg, emb, tuple(similarities))
    for fmt in map(get_format, formats):
        targets = fmt.targets(out_dir, stem, n_similarities=len(similarities))
        for kind, path in targets.items():
            if kind not in paths:
                continue  # a tile format without embeddings
            if kind == fmt.name:
                fmt.write(job, path)
            else:
                fmt.per_similarity(job, path, _similarity_index(kind))
    written = {k: p for k, p in paths.items() if k != "summary"}
    summary = {
        **seg.provenance.summary(),
        "classes": seg.class_names,
        "areas_mm2": seg.areas_mm2,
        "scale_um": [float(v) for v in seg.scale_um],
        "translate_um": [float(v) for v in seg.translate_um],
        "similarity_queries": [q for sim in similarities for q in sim.queries],
        "files": {k: str(v) for k, v in written.items()},
        "slide": seg.metadata.get("slide"),
        "prompts": seg.metadata.get("prompts"),
    }
    with atomic_path(paths["summary"]) as tmp:
        tmp.write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    return paths


def _similarity_index(kind: str) -> int:
    return 0 if kind == "similarity" else int(kind.rsplit("-", 1)[1]) - 1


# -- reading back ----------------------------------------------------------------------------


def _reader_for(path) -> Format | None:
    for fmt in REGISTRY:
        if fmt.read is not None and fmt.matches(path) and fmt.is_ours(path):
            return fmt
    return None


def is_result_file(path) -> bool:
    """True for a file or folder napari-conch exported (cheap checks: headers and JSON
    attributes only)."""
    return _reader_for(path) is not None


def read_result_file(path) -> list:
    """The results an exported file holds (segmentations and similarity maps): an OME-Zarr's
    segmentation and maps, a label OME-TIFF's segmentation (labels only), a similarity
    OME-TIFF's map, or a GeoJSON's segmentation (its class polygons drawn back onto the
    map's cells)."""
    fmt = _reader_for(path)
    if fmt is None:
        raise ResultReadError(f"{path} is not a napari-conch export.")
    return fmt.read(path)


def read_results(folder) -> list:
    """Every napari-conch result exported into ``folder`` (its ``*.ome.zarr`` files), as a
    flat list of segmentation results and similarity maps, sorted by file name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ResultReadError(f"{folder} is not a folder of napari-conch exports.")
    results = []
    for path in sorted(folder.glob("*.ome.zarr")):
        if ome_zarr.is_ours(path):
            results += ome_zarr.read(path)
    if not results:
        raise ResultReadError(
            f"{folder} holds no napari-conch OME-Zarr results (*.ome.zarr); write them with "
            "napari-conch segment or demo (format ome-zarr)."
        )
    return results
