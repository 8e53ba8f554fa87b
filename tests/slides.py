"""Slide files written by the tests (tifffile / zarr / Pillow), with their ground truth."""

from __future__ import annotations

import numpy as np
import tifffile


def tissue_like(height: int, width: int, seed: int = 0) -> np.ndarray:
    """RGB uint8 with structure at several scales, so tiles differ from one another."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.sin(yy / 23.0) + np.cos(xx / 31.0) + np.sin((yy + xx) / 57.0)
    rgb = np.stack([150 + 35 * base, 100 + 30 * base, 170 + 25 * base], axis=-1)
    rgb += rng.normal(0, 12, size=rgb.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def pyramid(image: np.ndarray, factors=(1, 4, 16)) -> list[np.ndarray]:
    """Levels by block mean (what a scanner stores, near enough)."""
    levels = []
    for f in factors:
        h, w = image.shape[0] // f, image.shape[1] // f
        block = image[: h * f, : w * f].reshape(h, f, w, f, -1).mean(axis=(1, 3))
        levels.append(np.round(block).astype(np.uint8).reshape(h, w, *image.shape[2:]))
    return levels


def write_svs(path, levels, mpp=0.25, tile=256, compression="zlib", app_mag=40):
    """An Aperio-style SVS: tiled baseline, stripped thumbnail, tiled levels, Aperio text."""
    H, W = levels[0].shape[:2]
    desc = (
        f"Aperio Image Library v12.0.15\r\n{W}x{H} [0,0 {W}x{H}] ({tile}x{tile}) "
        f"{compression.upper()}/RGB Q=90|AppMag = {app_mag}|MPP = {mpp:.4f}|Filename = test"
    )
    opts = dict(photometric="rgb", compression=compression, metadata=None)
    with tifffile.TiffWriter(path, bigtiff=False) as tw:
        tw.write(levels[0], tile=(tile, tile), description=desc, **opts)
        thumb = levels[-1][::2, ::2]
        tw.write(
            np.ascontiguousarray(thumb), rowsperstrip=16, description=f"{desc} thumbnail", **opts
        )
        for level in levels[1:]:
            tw.write(level, tile=(tile, tile), description=desc, **opts)


def write_rgb_jpeg_tiff(path, image, tile=256):
    """A tiled TIFF whose JPEG tiles store R, G, B as they are (photometric RGB, no YCbCr
    transform): the flavour whose colours a decoder must be told about."""
    tifffile.imwrite(
        path,
        image,
        tile=(tile, tile),
        photometric="rgb",
        compression="jpeg",
        compressionargs={"level": 95, "outcolorspace": "rgb"},
    )
    assert tifffile.TiffFile(path).pages[0].photometric == 2


def write_ome_tiff(path, levels, mpp=0.5, tile=256, unit="µm"):
    """A pyramidal OME-TIFF (levels in SubIFDs) with PhysicalSizeX/Y."""
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        meta = {
            "axes": "YXS",
            "PhysicalSizeX": mpp,
            "PhysicalSizeXUnit": unit,
            "PhysicalSizeY": mpp,
            "PhysicalSizeYUnit": unit,
        }
        tw.write(
            levels[0],
            subifds=len(levels) - 1,
            tile=(tile, tile),
            photometric="rgb",
            compression="zlib",
            metadata=meta,
        )
        for level in levels[1:]:
            tw.write(level, subfiletype=1, tile=(tile, tile), photometric="rgb", compression="zlib")


def write_strip_pyramid(path, levels, rows_per_strip=8, mpp=0.5):
    """An NDPI-like layout: every level stored in thin full-width strips (SubIFD pyramid),
    with the pixel size in the TIFF resolution tags (centimetres)."""
    res = 1e4 / mpp  # pixels per cm
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        tw.write(
            levels[0],
            subifds=len(levels) - 1,
            rowsperstrip=rows_per_strip,
            photometric="rgb",
            compression="zlib",
            resolution=(res, res),
            resolutionunit="CENTIMETER",
        )
        for i, level in enumerate(levels[1:], start=1):
            scale = res / (levels[0].shape[0] / level.shape[0])
            tw.write(
                level,
                subfiletype=1,
                rowsperstrip=rows_per_strip,
                photometric="rgb",
                compression="zlib",
                resolution=(scale, scale),
                resolutionunit="CENTIMETER",
            )
            assert i


def write_ome_zarr(path, levels, mpp=0.5, version="0.4", translation_um=None):
    """OME-NGFF multiscales, channels first (c, y, x); ``translation_um`` (y, x) places
    level 0 away from the origin."""
    import zarr

    zarr_format = 2 if version == "0.4" else 3
    group = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
    datasets = []
    for i, level in enumerate(levels):
        factor = levels[0].shape[0] / level.shape[0]
        data = np.moveaxis(level, -1, 0)
        arr = group.create_array(str(i), shape=data.shape, dtype=data.dtype, chunks=(3, 256, 256))
        arr[:] = data
        datasets.append(
            {
                "path": str(i),
                "coordinateTransformations": [
                    {"type": "scale", "scale": [1.0, mpp * factor, mpp * factor]},
                    *(
                        [{"type": "translation", "translation": [0.0, *translation_um]}]
                        if translation_um
                        else []
                    ),
                ],
            }
        )
    multiscales = [
        {
            "version": version,
            "axes": [
                {"name": "c", "type": "channel"},
                {"name": "y", "type": "space", "unit": "micrometer"},
                {"name": "x", "type": "space", "unit": "micrometer"},
            ],
            "datasets": datasets,
        }
    ]
    if version == "0.4":
        group.attrs["multiscales"] = multiscales
    else:
        for m in multiscales:
            m.pop("version")
        group.attrs["ome"] = {"version": version, "multiscales": multiscales}


def write_sparse_pyramid(path, size=100_000, tile=512, real_box=None, coarsest_factor=64, seed=0):
    """A huge tiled pyramid written sparsely: only the tiles inside ``real_box`` (level-0
    (y0, x0, y1, x1)), the first tile of each level and the whole coarsest level hold
    pixels; all other tiles are empty (zero byte count), which readers treat as background.

    Returns {level index: (factor, {(tile row, tile col): tile array})} for the real tiles.
    """
    rng = np.random.default_rng(seed)
    factors = [1]
    while factors[-1] < coarsest_factor:
        factors.append(factors[-1] * 4)
    truth: dict = {}
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for li, f in enumerate(factors):
            h = w = size // f
            rows, cols = -(-h // tile), -(-w // tile)
            real = {}
            if f == factors[-1]:
                whole = rng.integers(0, 256, (rows * tile, cols * tile, 3), dtype=np.uint8)
                real = {
                    (r, c): whole[r * tile : (r + 1) * tile, c * tile : (c + 1) * tile]
                    for r in range(rows)
                    for c in range(cols)
                }
            elif real_box is not None:
                y0, x0, y1, x1 = (v // f for v in real_box)
                for r in range(y0 // tile, (y1 - 1) // tile + 1):
                    for c in range(x0 // tile, (x1 - 1) // tile + 1):
                        real[(r, c)] = rng.integers(0, 256, (tile, tile, 3), dtype=np.uint8)
            # tifffile takes the pixel type from the first tile, so that one is always real.
            real.setdefault((0, 0), np.full((tile, tile, 3), 200, np.uint8))

            def tiles(rows=rows, cols=cols, real=real):
                for r in range(rows):
                    for c in range(cols):
                        yield real.get((r, c))

            kwargs = dict(
                shape=(h, w, 3),
                dtype=np.uint8,
                tile=(tile, tile),
                photometric="rgb",
                metadata=None,
            )
            if li == 0:
                kwargs.update(subifds=len(factors) - 1, description=f"sparse test pyramid {size}")
            else:
                kwargs.update(subfiletype=1)
            tw.write(tiles(), **kwargs)
            truth[li] = (f, real)
    return truth


def planted_squares(synth, names=None, per_region=2, size=0.22):
    """QuPath-style annotations: small squares inside the planted regions (a few % of each),
    in level-0 pixels, classified by ``names[class]``."""
    names = names or {n: n for n in synth.class_names}
    mpp = synth.slide.mpp
    features = []
    for region in synth.regions_um:
        (cy, cx), (hy, hx) = region["centre_um"], region["half_size_um"]
        offsets = (-0.3, 0.3) if per_region == 2 else (0.0,)
        for dy in offsets:
            y, x, h = (cy + dy * hy) / mpp, cx / mpp, size * min(hy, hx) / mpp
            ring = [[x - h, y - h], [x + h, y - h], [x + h, y + h], [x - h, y + h], [x - h, y - h]]
            features.append(
                {
                    "type": "Feature",
                    "geometry": {"type": "Polygon", "coordinates": [ring]},
                    "properties": {
                        "objectType": "annotation",
                        "classification": {"name": names[region["class"]], "color": [200, 0, 0]},
                    },
                }
            )
    return {"type": "FeatureCollection", "features": features}
