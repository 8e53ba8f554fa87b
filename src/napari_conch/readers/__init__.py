"""Slide readers ("backends") and the registry that picks one for a file.

Each reader is one module here that turns a path into a
:class:`~napari_conch.readers.base.Backend` (its pyramid levels, µm/px and metadata), and
one row of :data:`REGISTRY`: its name (``open_slide(backend=)``), the file endings and
content signatures it reads, the folders it opens, whether it is installed. The napari
manifest's reader patterns are checked against the registry by a test.

Adding a reader: write ``readers/<name>.py`` with ``open_<name>(path) -> Backend``, then add
its row below (docs/architecture.md walks through an example).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import SlideReadError
from . import openslide_reader
from .image import IMAGE_SUFFIXES, open_image
from .omezarr import is_ome_zarr, open_ome_zarr
from .openslide_reader import INSTALL_HINT, open_openslide
from .tiff import open_tiff

__all__ = [
    "BACKENDS",
    "REGISTRY",
    "SUPPORTED_SUFFIXES",
    "Reader",
    "choose_reader",
    "get_reader",
    "readers_to_try",
    "suffix_of",
]

# Bytes of a file's start that content checks see.
HEAD_BYTES = 16


@dataclass(frozen=True)
class Reader:
    """One row of the registry.

    Attributes
    ----------
    name : str
        What ``open_slide(backend=)`` calls it.
    open : callable(Path) -> Backend
    suffixes : frozenset of str
        File endings it reads (lower case, compound ones such as ".ome.zarr" whole).
    recognises : callable(bytes) -> bool, optional
        Whether a file's first :data:`HEAD_BYTES` bytes are its format's signature.
    opens_folder : callable(Path) -> bool, optional
        Whether a folder is one it opens (OME-Zarr, a DICOM series).
    claims_suffixes : bool
        Its endings decide before the content does (formats only it reads well).
    available : callable() -> bool
        Whether its library is installed.
    install_hint : str, optional
        How to install it, said when a file needs it and it is missing.
    second_chance : str, optional
        A reader to try when this one fails on a file (TIFF variants tifffile cannot read).
    """

    name: str
    open: Callable[[Path], object]
    suffixes: frozenset = field(default_factory=frozenset)
    recognises: Callable[[bytes], bool] | None = None
    opens_folder: Callable[[Path], bool] | None = None
    claims_suffixes: bool = False
    available: Callable[[], bool] = lambda: True
    install_hint: str | None = None
    second_chance: str | None = None


def _starts_with(*signatures: bytes) -> Callable[[bytes], bool]:
    return lambda head: any(head.startswith(s) for s in signatures)


def _image_signature(head: bytes) -> bool:
    png_jpeg_bmp_gif = _starts_with(b"\x89PNG", b"\xff\xd8\xff", b"BM", b"GIF8")
    return png_jpeg_bmp_gif(head) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")


REGISTRY: tuple[Reader, ...] = (
    Reader(
        "openslide",
        open_openslide,
        frozenset({".mrxs", ".vms", ".vmu", ".svslide", ".scn", ".bif"}),
        claims_suffixes=True,  # formats only OpenSlide reads, or reads better
        available=lambda: openslide_reader.openslide_available(),  # looked up on each call
        install_hint=INSTALL_HINT,
    ),
    Reader(
        "tifffile",
        open_tiff,
        frozenset(
            {".tif", ".tiff", ".svs", ".ndpi", ".btf", ".tf8", ".tf2", ".qptiff", ".ptif"}
            | {".scn", ".bif"}  # TIFF-based: read here when OpenSlide is not installed
        ),
        recognises=_starts_with(b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"),
        second_chance="openslide",
    ),
    Reader("ome-zarr", open_ome_zarr, frozenset({".zarr", ".ome.zarr"}), opens_folder=is_ome_zarr),
    Reader("image", open_image, frozenset(IMAGE_SUFFIXES), recognises=_image_signature),
)

BACKENDS = ("auto", *(r.name for r in REGISTRY))
SUPPORTED_SUFFIXES = frozenset().union(*(r.suffixes for r in REGISTRY))


def get_reader(name: str) -> Reader:
    """The registry row called ``name``."""
    for reader in REGISTRY:
        if reader.name == name:
            return reader
    raise ValueError(f"Unknown backend {name!r}; use one of {', '.join(BACKENDS)}.")


def suffix_of(path) -> str:
    """A file's ending as the registry lists it: ".ome.zarr" whole, ".ome.tif(f)" as ".tif"."""
    name = Path(path).name.lower()
    for double in (".ome.zarr", ".ome.tif", ".ome.tiff"):
        if name.endswith(double):
            return ".ome.zarr" if double == ".ome.zarr" else ".tif"
    return Path(path).suffix.lower()


def choose_reader(path: Path) -> Reader:
    """The reader for ``path``: by folder kind, by the endings a reader claims, then by
    content. Raises :class:`SlideReadError` saying why none fits."""
    if not path.exists():
        raise SlideReadError(f"Cannot open {path}: no such file or directory.")
    if path.is_dir():
        for reader in REGISTRY:
            if reader.opens_folder is not None and reader.opens_folder(path):
                return reader
        raise SlideReadError(
            f"Cannot open {path}: it is a directory, not an image file or an OME-Zarr image."
        )
    if not os.access(path, os.R_OK):
        raise SlideReadError(f"Cannot open {path}: permission denied (the file is not readable).")
    if path.stat().st_size == 0:
        raise SlideReadError(f"Cannot open {path}: the file is empty (0 bytes).")
    suffix = suffix_of(path)
    claimed = [r for r in REGISTRY if r.claims_suffixes and suffix in r.suffixes]
    for reader in claimed:
        if reader.available():
            return reader
    if claimed and not any(suffix in r.suffixes for r in REGISTRY if not r.claims_suffixes):
        raise SlideReadError(f"Cannot open {path}: {claimed[0].install_hint}")
    head = _head(path)
    for reader in REGISTRY:
        if reader.recognises is not None and reader.recognises(head):
            return reader
    if suffix in SUPPORTED_SUFFIXES:
        raise SlideReadError(
            f"Cannot open {path}: its content is not a {suffix} image (the file does not start "
            "with an image signature; it may be corrupt or mislabelled)."
        )
    raise SlideReadError(
        f"Cannot open {path}: not a supported slide or image format (supported: "
        f"{', '.join(sorted(SUPPORTED_SUFFIXES))})."
    )


def readers_to_try(reader: Reader) -> list[Reader]:
    """``reader``, then its second chance when that one is installed."""
    tried = [reader]
    if reader.second_chance:
        other = get_reader(reader.second_chance)
        if other.available():
            tried.append(other)
    return tried


def _head(path: Path) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(HEAD_BYTES)
    except PermissionError as exc:
        raise SlideReadError(f"Cannot open {path}: permission denied.") from exc
    except OSError as exc:
        raise SlideReadError(f"Cannot open {path}: {exc.strerror or exc}.") from exc
