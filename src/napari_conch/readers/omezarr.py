"""OME-Zarr (OME-NGFF ``multiscales``, versions 0.4 and 0.5) images."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .base import Backend, LevelReader, chunks_for, to_rgb_uint8, valid_mpp

logger = logging.getLogger(__name__)

_UNIT_TO_UM = {
    "micrometer": 1.0, "micron": 1.0, "um": 1.0, "µm": 1.0, "nanometer": 1e-3, "nm": 1e-3,
    "millimeter": 1e3, "mm": 1e3, "centimeter": 1e4, "meter": 1e6, "angstrom": 1e-4,
}  # fmt: skip


def is_ome_zarr(path: Path) -> bool:
    return path.is_dir() and any((path / n).is_file() for n in (".zattrs", "zarr.json", ".zgroup"))


def open_ome_zarr(path: Path) -> Backend:
    import zarr

    group = zarr.open_group(str(path), mode="r")
    attrs = dict(group.attrs)
    multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    if not multiscales:
        raise ValueError("no OME-NGFF 'multiscales' metadata (is it an OME-Zarr image?)")
    ms = multiscales[0]
    axes = [a["name"] if isinstance(a, dict) else str(a) for a in ms.get("axes", [])]
    units = [a.get("unit") if isinstance(a, dict) else None for a in ms.get("axes", [])]
    datasets = ms["datasets"]
    arrays = [group[d["path"]] for d in datasets]
    if not axes:  # NGFF 0.1–0.3 had no axes; assume the image's conventional order
        axes = ["t", "c", "z", "y", "x"][-arrays[0].ndim :]
    note: dict = {}
    levels = [_ZarrLevel(a, axes, note) for a in arrays]
    mpp = _level0_mpp(ms, datasets[0], axes, units, path)
    metadata = {
        "vendor": "ome-zarr",
        "objective_power": None,
        "origin_px": (0, 0),
        "pyramid_source": "file" if len(levels) > 1 else "single level",
        "ngff_version": ms.get("version") or attrs.get("ome", {}).get("version"),
        "axes": "".join(axes),
        "pixel_conversion": note,
    }
    return Backend("ome-zarr", levels, mpp, "OME-NGFF scale" if mpp else None, metadata)


def _level0_mpp(ms, dataset, axes, units, path) -> float | None:
    if "x" not in axes:
        return None
    xi = axes.index("x")
    scale = 1.0
    found = False
    for transforms in (
        dataset.get("coordinateTransformations", []),
        ms.get("coordinateTransformations", []),
    ):
        for t in transforms or []:
            if t.get("type") == "scale" and "scale" in t:
                scale *= float(t["scale"][xi])
                found = True
    unit = units[xi] if xi < len(units) else None
    if not found or unit is None:
        return None
    factor = _UNIT_TO_UM.get(str(unit).lower())
    if factor is None:
        logger.warning("%s: axis unit %r is not a length; µm/px unknown.", Path(path).name, unit)
        return None
    return valid_mpp(scale * factor, "the OME-NGFF scale", path)


class _ZarrLevel(LevelReader):
    def __init__(self, array, axes, note):
        self._array = array
        self._axes = axes
        self._note = note
        yi, xi = axes.index("y"), axes.index("x")
        shape = (array.shape[yi], array.shape[xi])
        chunks = array.chunks
        super().__init__(shape, chunks_for((chunks[yi], chunks[xi]), shape))

    def _read(self, y0, y1, x0, x1):
        key = []
        for axis in self._axes:
            if axis == "y":
                key.append(slice(y0, y1))
            elif axis == "x":
                key.append(slice(x0, x1))
            elif axis == "c":
                key.append(slice(0, 4))
            else:
                key.append(0)
        data = np.asarray(self._array[tuple(key)])
        kept = [a for a in self._axes if a in "yxc"]
        order = [kept.index("y"), kept.index("x")] + ([kept.index("c")] if "c" in kept else [])
        data = data.transpose(order)
        self._count(1, data.nbytes)
        return to_rgb_uint8(data, self._note)
