"""Tiles per second delivered at 0.5 µm/px (448 px) from a JPEG-compressed tiled pyramid.

napari-conch's reader (``Slide.read_region`` from reader threads, as the inference engine
uses it) against the loop peer pipelines use: ``openslide.OpenSlide.read_region`` + RGBA→RGB +
PIL resize, one tile after another. Same slide, same tiles, same resize (PIL bicubic), in one
run; prints tiles/s and the ratio (ours / reference), and writes JSON.

    python bench/read_tiles.py                  # 16384² px SVS at 0.25 µm/px, ~1 minute
    python bench/read_tiles.py --size 8192
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))  # the slide writers live with the tests

from _common import save_result  # noqa: E402
from slides import pyramid, tissue_like, write_svs  # noqa: E402

from napari_conch import open_slide  # noqa: E402

TILE_PX = 448
TARGET_MPP = 0.5
SLIDE_MPP = 0.25


def make_slide(path: Path, size: int) -> None:
    block = tissue_like(2048, 2048, seed=0)
    rng = np.random.default_rng(1)
    rows = []
    for _ in range(size // 2048):
        row = [
            np.roll(block, tuple(rng.integers(0, 2048, 2)), axis=(0, 1))
            for _ in range(size // 2048)
        ]
        rows.append(np.concatenate(row, axis=1))
    image = np.concatenate(rows, axis=0)
    write_svs(path, pyramid(image, (1, 4, 16)), mpp=SLIDE_MPP, tile=256, compression="jpeg")


def resize(tile: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(tile).resize((TILE_PX, TILE_PX), Image.BICUBIC))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--size", type=int, default=16384, help="slide side in px (multiple of 2048)"
    )
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--output", type=Path, default=HERE / "results" / "read_tiles.json")
    args = parser.parse_args(argv)

    import openslide

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.svs"
        make_slide(path, args.size)
        slide = open_slide(path)
        level = slide.level_for_mpp(TARGET_MPP)
        span = round(TILE_PX * TARGET_MPP / slide.level_mpp(level))  # level px per tile
        step0 = round(span * slide.downsamples[level])  # level-0 px per tile
        coords = [
            (y, x)
            for y in range(0, slide.shape[0] - step0 + 1, step0)
            for x in range(0, slide.shape[1] - step0 + 1, step0)
        ]

        def ours_one(yx):
            return resize(slide.read_region(yx[0], yx[1], span, span, level))

        osr = openslide.OpenSlide(str(path))

        def reference_one(yx):
            region = osr.read_region((yx[1], yx[0]), level, (span, span)).convert("RGB")
            return np.asarray(region.resize((TILE_PX, TILE_PX), Image.BICUBIC))

        # Same pixels from both readers (sanity check, first tile).
        first_ours, first_ref = ours_one(coords[0]), reference_one(coords[0])
        max_diff = int(np.abs(first_ours.astype(int) - first_ref).max())

        # Fresh handles so neither side starts with a warm tile cache from the check above.
        slide = open_slide(path)
        osr = openslide.OpenSlide(str(path))
        start = time.perf_counter()
        for yx in coords:
            reference_one(yx)
        t_ref = time.perf_counter() - start

        start = time.perf_counter()
        for yx in coords:
            ours_one(yx)
        t_single = time.perf_counter() - start

        slide = open_slide(path)
        start = time.perf_counter()
        with ThreadPoolExecutor(args.workers) as pool:
            for _ in pool.map(ours_one, coords):
                pass
        t_threads = time.perf_counter() - start

    n = len(coords)
    result = {
        "slide_px": args.size,
        "slide_mpp": SLIDE_MPP,
        "tiles": n,
        "tile_px": TILE_PX,
        "read_level": level,
        "read_px": span,
        "workers": args.workers,
        "max_pixel_difference": max_diff,
        "tiles_per_s": {
            "ours_threads": round(n / t_threads, 2),
            "ours_single_thread": round(n / t_single, 2),
            "openslide_loop": round(n / t_ref, 2),
        },
        "ratio": round(t_ref / t_threads, 2),
        "ratio_single_thread": round(t_ref / t_single, 2),
    }
    print(
        f"{n} tiles of {TILE_PX} px at {TARGET_MPP} µm/px from a {args.size}² px JPEG SVS "
        f"(level {level}, {span} px reads)"
    )
    for key, value in result["tiles_per_s"].items():
        print(f"  {key:<20} {value:8.1f} tiles/s")
    print(f"ratio ours ({args.workers} threads) / openslide loop: {result['ratio']:.2f}")
    print(f"ratio ours (1 thread) / openslide loop:  {result['ratio_single_thread']:.2f}")
    print(f"largest pixel difference between the readers: {max_diff}")
    save_result(result, args.output)
    return result


if __name__ == "__main__":
    main()
