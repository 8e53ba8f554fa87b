"""What a dense (token) map costs per mm², against the tile map of the same region.

CONCH (full size, random weights: speed does not depend on the values) on the CPU, one
region of a synthetic 0.5 µm/px slide, in one run:

* tile map, no overlap (the default) and at 50 % overlap: ``embed`` (region only, no cache)
  + ``zero_shot_segment``;
* dense map at 50 % overlap (its default): ``dense_tokens`` + ``DenseTokens.segment``;
* re-prompting the dense map: a new prompt on the kept tokens (a matrix product).

Printed and written: seconds per mm² of each, the ratios, and the cells per mm² each map has.

    python bench/dense_cost.py            # about 2 minutes on 2 cores
    python bench/dense_cost.py --tiny     # smoke run with the tiny model
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import save_result  # noqa: E402

import napari_conch as nc  # noqa: E402

CLASSES = ["tumor", "stroma", "necrosis"]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiny", action="store_true", help="the tiny model (smoke run)")
    parser.add_argument("--side-um", type=float, default=336.0, help="region side in µm")
    parser.add_argument("--output", type=Path, default=HERE / "results" / "dense_cost.json")
    args = parser.parse_args(argv)

    model = nc.load_model("conch_tiny" if args.tiny else "conch", checkpoint="random")
    _ = model.weights_hash  # once per process, like loading the model
    synth = nc.synthetic_slide(size=2048, seed=5)
    slide = synth.slide
    y0 = x0 = 300.0
    region = (y0, x0, y0 + args.side_um, x0 + args.side_um)
    area_mm2 = (args.side_um / 1000) ** 2
    model.encode_images_with_tokens(slide.read_region(0, 0, 448, 448)[None])  # warm-up

    timings, cells = {}, {}
    for overlap in (0.0, 0.5):
        start = time.perf_counter()
        grid = nc.tile_grid(slide, model, overlap=overlap)
        emb = nc.embed(slide, model, grid, cache=None, region=region, region_only=True)
        seg = nc.zero_shot_segment(emb, model, CLASSES, region=region)
        key = f"tile_map_overlap_{int(overlap * 100)}"
        timings[key] = time.perf_counter() - start
        cells[key] = 1.0 / (seg.scale_um[0] / 1000) ** 2
    start = time.perf_counter()
    tokens = nc.dense_tokens(slide, model, region, overlap=0.5)
    seg = tokens.segment(model, CLASSES)
    timings["dense_map_overlap_50"] = time.perf_counter() - start
    cells["dense_map_overlap_50"] = 1.0 / (seg.scale_um[0] / 1000) ** 2
    tokens.similarity(model, "mitotic figure")  # the text encoder's first call
    start = time.perf_counter()
    tokens.similarity(model, "necrosis")
    timings["dense_reprompt"] = time.perf_counter() - start

    per_mm2 = {k: round(v / area_mm2, 3) for k, v in timings.items()}
    base = timings["tile_map_overlap_0"]
    result = {
        "model": f"{model.name} (random weights)",
        "region_um": list(region),
        "area_mm2": round(area_mm2, 4),
        "dense_tiles": tokens.metadata["tiles"]["done"],
        "token_um": tokens.token_um,
        "seconds_per_mm2": per_mm2,
        "cells_per_mm2": {k: round(v) for k, v in cells.items()},
        "ratio_dense_vs_tile_map_overlap_0": round(timings["dense_map_overlap_50"] / base, 2),
        "ratio_dense_vs_tile_map_overlap_50": round(
            timings["dense_map_overlap_50"] / timings["tile_map_overlap_50"], 2
        ),
    }
    print(f"{result['model']}, region {args.side_um:.0f} µm square ({area_mm2:.3f} mm²)")
    for key, value in per_mm2.items():
        print(f"  {key:<24} {value:9.3f} s/mm²  ({cells.get(key, 0):,.0f} cells/mm²)")
    print(f"dense / tile map (no overlap):  {result['ratio_dense_vs_tile_map_overlap_0']:.2f}")
    print(f"dense / tile map (50 % overlap): {result['ratio_dense_vs_tile_map_overlap_50']:.2f}")
    save_result(result, args.output)
    return result


if __name__ == "__main__":
    main()
