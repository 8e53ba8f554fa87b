"""Writing files safely and naming them: what every export shares."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from pathlib import Path

# Appended to a slide layer's name in napari when the file records no pixel size; never
# part of an output's name.
MPP_UNKNOWN_NOTE = " (µm/px unknown)"


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary sibling of ``path`` to write; it replaces ``path`` only once the
    writing succeeded, and is removed otherwise — a failed export (full disk, interrupt)
    never leaves a half-written file that looks finished."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    remove(tmp)
    try:
        yield tmp
    except BaseException:
        remove(tmp)
        raise
    if path.is_dir() and tmp.is_dir():
        remove(path)  # an older export of the same name (a folder cannot be replaced)
    os.replace(tmp, path)


def remove(path: Path) -> None:
    """Delete a file or a folder, if it is there."""
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def write_text(path, text: str) -> Path:
    """Write ``text`` (UTF-8) atomically, making the folder first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def write_csv(table, path) -> Path:
    """Write a pandas table as CSV atomically, making the folder first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)
    return path


def file_stem(path_or_name) -> str:
    """The name outputs are called after — one rule for slide paths (the CLI) and napari
    layer names (the widget): the file name without its extension, OME compound suffixes
    whole ("case 1.ome.tif" → "case 1"), napari-conch's "(µm/px unknown)" layer note left
    out, and characters that file systems refuse replaced by "_"."""
    name = Path(str(path_or_name).removesuffix(MPP_UNKNOWN_NOTE)).name
    for suffix in (".ome.tiff", ".ome.tif", ".ome.zarr"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    else:
        name = Path(name).stem
    return re.sub(r'[\\/:*?"<>|\x00-\x1f]+', "_", name).strip(" .") or "slide"
