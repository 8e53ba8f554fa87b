"""OME-Zarr (OME-NGFF ``multiscales``, versions 0.4 and 0.5) images."""

from __future__ import annotations

import logging
from pathlib import Path

from .base import Backend, LevelReader, chunks_for, read_yx, to_rgb_uint8, unit_to_um, valid_mpp

logger = logging.getLogger(__name__)


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
        "origin_px": _level0_origin(ms, datasets[0], axes),
        "translate_um": _level0_translation_um(ms, datasets[0], axes, units),
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
    factor = unit_to_um(unit)
    if factor is None:
        logger.warning("%s: axis unit %r is not a length; µm/px unknown.", Path(path).name, unit)
        return None
    return valid_mpp(scale * factor, "the OME-NGFF scale", path)


def _level0_translation_um(ms, dataset, axes, units) -> tuple[float, float]:
    """The world position (µm) of level-0 pixel (0, 0): the dataset's translation, then the
    multiscale's own scale and translation applied to it (NGFF's order)."""
    if "y" not in axes or "x" not in axes:
        return (0.0, 0.0)
    index = [axes.index("y"), axes.index("x")]
    position = [0.0, 0.0]
    for transforms in (
        dataset.get("coordinateTransformations", []),
        ms.get("coordinateTransformations", []),
    ):
        for t in transforms or []:
            values = t.get("scale") or t.get("translation")
            if not values or len(values) <= max(index):
                continue
            for k, i in enumerate(index):
                if t.get("type") == "scale":
                    position[k] *= float(values[i])
                elif t.get("type") == "translation":
                    position[k] += float(values[i])
    factors = [unit_to_um(units[i]) if i < len(units) else None for i in index]
    if not any(position) or None in factors:
        return (0.0, 0.0)
    return (position[0] * factors[0], position[1] * factors[1])


def _level0_origin(ms, dataset, axes) -> tuple[int, int]:
    """Where level 0 starts, in its own pixels, from the NGFF translation (kept as metadata:
    tiles, maps and exports stay in the image's pixel grid, which starts at 0)."""
    if "y" not in axes or "x" not in axes:
        return (0, 0)
    yi, xi = axes.index("y"), axes.index("x")
    scale, shift = [1.0, 1.0], [0.0, 0.0]
    for transforms in (
        dataset.get("coordinateTransformations", []),
        ms.get("coordinateTransformations", []),
    ):
        for t in transforms or []:
            values = t.get("scale") or t.get("translation")
            if not values or len(values) <= max(yi, xi):
                continue
            if t.get("type") == "scale":
                scale = [scale[0] * float(values[yi]), scale[1] * float(values[xi])]
            elif t.get("type") == "translation":
                shift = [shift[0] + float(values[yi]), shift[1] + float(values[xi])]
    try:
        return (round(shift[0] / scale[0]), round(shift[1] / scale[1]))
    except ZeroDivisionError:
        return (0, 0)


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
        data = read_yx(self._array, "".join(self._axes), y0, y1, x0, x1)
        self._count(1, data.nbytes)
        return to_rgb_uint8(data, self._note)
