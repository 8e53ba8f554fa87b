"""Class colours: a fixed colour per class name, the same in every session and every tool.

Readable over H&E; common classes keep the colours QuPath gives them, so a pathologist sees
tumour in the same red here and there.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

# Class colours (RGBA, 0–1): distinct, readable over H&E; each class name keeps its own
# (class_colors).
PALETTE: tuple[tuple[float, float, float, float], ...] = (
    (0.89, 0.10, 0.11, 1.0),  # red
    (0.22, 0.49, 0.72, 1.0),  # blue
    (0.30, 0.69, 0.29, 1.0),  # green
    (1.00, 0.50, 0.00, 1.0),  # orange
    (0.60, 0.31, 0.64, 1.0),  # purple
    (1.00, 0.93, 0.20, 1.0),  # yellow
    (0.65, 0.34, 0.16, 1.0),  # brown
    (0.97, 0.51, 0.75, 1.0),  # pink
    (0.00, 0.75, 0.75, 1.0),  # teal
    (0.50, 0.50, 0.50, 1.0),  # grey
)
# Classes pathologists meet everywhere keep QuPath's default colours (the convention their
# other tool uses), and keep them in any set of classes; the palette slot each resembles is
# left to the other classes. Names compare lower-cased, "tumour" as "tumor".
CONVENTIONAL_COLORS: dict[str, tuple[tuple[int, int, int], int | None]] = {
    "tumor": ((200, 0, 0), 0),
    "stroma": ((150, 200, 150), 2),
    "immune cells": ((160, 90, 160), 4),
    "necrosis": ((50, 50, 50), None),
    "other": ((255, 200, 0), 5),
    "background": ((180, 180, 180), 9),
}


def class_colors(names: Sequence[str], overrides: dict | None = None) -> dict[str, tuple]:
    """A fixed colour per class name, the same in every session and whatever the classes'
    order. Common classes (tumor, stroma, necrosis, immune cells, other, background) have
    QuPath's colours; any other name has a palette colour of its own (from a digest of the
    lower-cased name); when two classes of the set want the same one, the later in
    alphabetical order takes the next free. ``overrides`` (name → RGBA 0–1 or "#rrggbb")
    win."""
    chosen: dict[str, tuple] = {}
    taken: set[int] = set()
    for name in sorted(names, key=lambda n: (n.lower(), n)):
        key = name.strip().lower().replace("tumour", "tumor")
        if key in CONVENTIONAL_COLORS and not any(
            c == CONVENTIONAL_COLORS[key][0] for c in chosen.values()
        ):
            rgb, slot = CONVENTIONAL_COLORS[key]
            chosen[name] = (*(round(v / 255, 4) for v in rgb), 1.0)
            taken |= {slot} if slot is not None else set()
    for name in sorted(names, key=lambda n: (n.lower(), n)):
        if name in chosen:
            continue
        digest = hashlib.blake2b(name.strip().lower().encode(), digest_size=4).digest()
        index = int.from_bytes(digest, "big") % len(PALETTE)
        for step in range(len(PALETTE)):
            if (index + step) % len(PALETTE) not in taken or len(taken) >= len(PALETTE):
                index = (index + step) % len(PALETTE)
                break
        taken.add(index)
        chosen[name] = PALETTE[index]
    for name, value in (overrides or {}).items():
        if name in chosen:
            chosen[name] = rgba(value)
    return chosen


def label_colors(names: Sequence[str], overrides: dict | None = None) -> dict[int, tuple]:
    """Colours by label value: 0 transparent, label ``i + 1`` the colour of ``names[i]``."""
    by_name = class_colors(names, overrides)
    return {0: (0.0, 0.0, 0.0, 0.0), **{i: by_name[n] for i, n in enumerate(names, start=1)}}


def rgba(value) -> tuple[float, float, float, float]:
    """A colour as an RGBA 0–1 tuple: from "#rrggbb[aa]", 0–1 values or 0–255 values."""
    if isinstance(value, str):
        h = value.lstrip("#")
        if len(h) not in (6, 8):
            raise ValueError(f"Colour {value!r} must be '#rrggbb' or '#rrggbbaa'.")
        parts = [int(h[i : i + 2], 16) / 255 for i in range(0, len(h), 2)]
        return tuple(parts + [1.0] * (4 - len(parts)))
    parts = [float(v) for v in value]
    if any(v > 1 for v in parts):
        parts = [v / 255 for v in parts]
    return tuple(parts + [1.0] * (4 - len(parts)))


def rgb255(color) -> list[int]:
    """An RGBA 0–1 colour as [r, g, b] in 0–255 (GeoJSON, QuPath)."""
    return [round(255 * float(c)) for c in color[:3]]


def hex_rgb(color) -> str:
    """An RGBA 0–1 colour as "RRGGBB" (OMERO channel colours)."""
    return "".join(f"{round(255 * float(c)):02X}" for c in color[:3])
