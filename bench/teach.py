"""Few-shot teaching: what one more annotation costs, and what annotations buy.

Part 1, cost (CPU): 100,000 cached tiles (random 512-d features standing in for a cached
slide; full-size CONCH with random weights for the text and the projection). One round
of the Teach tab after a new annotation — refit the text-initialised classifier and remap
the slide — against ``zero_shot_segment`` on the same embeddings with prompts already
encoded, as a ratio (goal ≤ 3×).

Part 2, value: on synthetic slides with planted truth, held-out Dice (cells within one tile
of a training region never scored) of the few-shot map taught on 1, 2, 4, 8 small regions
per class, beside the zero-shot map's Dice on the same cells — for the colour toy (a
demonstration model whose zero-shot map is right) and for untrained CONCH (whose zero-shot
map is noise: what annotations recover from its random features).

    python bench/teach.py                 # a few minutes
    python bench/teach.py --tiles 20000 --tiny --regions 1 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import save_result  # noqa: E402
from reprompt import fake_embeddings  # noqa: E402

import napari_conch as nc  # noqa: E402
from napari_conch.annotations import Annotations, Region  # noqa: E402

CLASSES = ["tumor", "stroma", "necrosis"]


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def _boxes(emb, n_regions: int, per_class: int, side_tiles: int, rng) -> Annotations:
    """Square regions of ``side_tiles`` tiles at random places of the fake grid."""
    from shapely import box

    grid = emb.grid
    regions = []
    rows, cols = grid.shape
    for c, name in enumerate(CLASSES[:per_class] if per_class else CLASSES):
        for _ in range(n_regions):
            r0, c0 = rng.integers(0, rows - side_tiles), rng.integers(0, cols - side_tiles)
            y0, x0 = (
                grid.origin_px[0] + r0 * grid.stride_px,
                grid.origin_px[1] + c0 * grid.stride_px,
            )
            side = side_tiles * grid.stride_px

            regions.append(Region(name, box(x0, y0, x0 + side, y0 + side)))
        del c
    return Annotations(regions, grid.mpp)


def cost(args) -> dict:
    model = nc.load_model("conch_tiny" if args.tiny else "conch", checkpoint="random")
    emb = fake_embeddings(args.tiles, model.embed_dim, model.weights_hash)
    rng = np.random.default_rng(0)
    annotations = _boxes(emb, 2, 0, 4, rng)
    nc.zero_shot_segment(emb, model, CLASSES)  # projects the features, encodes the prompts once
    zero = [timed(lambda: nc.zero_shot_segment(emb, model, CLASSES)) for _ in range(5)]
    classifier = nc.fit_classifier(emb, annotations, model=model, prompts=CLASSES)
    nc.few_shot_segment(emb, classifier)  # the tiles' view in the classifier's space, once
    rounds = []
    for i in range(5):
        more = Annotations([*annotations.regions, *_boxes(emb, 1, 1, 4, rng).regions], emb.grid.mpp)

        def one_round(more=more):
            taught = nc.fit_classifier(emb, more, model=model, prompts=CLASSES)
            nc.few_shot_segment(emb, taught)

        rounds.append(timed(one_round))
        annotations = more
        del i
    z, r = statistics.median(zero), statistics.median(rounds)
    return {
        "model": model.name,
        "tiles": args.tiles,
        "zero_shot_segment_ms": round(z, 1),
        "refit_and_remap_ms": round(r, 1),
        "ratio_refit_remap_vs_zero_shot": round(r / z, 2),
    }


def _squares_in(
    truth: Annotations, name: str, k: int, side_px: float, rng, gap: float
) -> list[Region]:
    """``k`` non-overlapping squares of ``side_px`` inside the planted regions of ``name``."""
    from shapely import box
    from shapely.ops import unary_union

    area = unary_union([r.polygon for r in truth.regions if r.name == name])
    x0, y0, x1, y1 = area.bounds
    chosen: list = []
    if x1 - x0 < side_px or y1 - y0 < side_px:
        return []
    for _ in range(5000):
        if len(chosen) == k:
            break
        x, y = rng.uniform(x0, x1 - side_px), rng.uniform(y0, y1 - side_px)
        square = box(x, y, x + side_px, y + side_px)
        if area.contains(square) and not any(square.intersects(c.buffer(gap)) for c in chosen):
            chosen.append(square)
    return [Region(name, s) for s in chosen]


def value(args) -> dict:
    rng = np.random.default_rng(1)
    out = {}
    for label, name, options in (
        ("colour toy", "colour-toy", {"overlap": 0.75}),
        # 112 µm tiles (read at 2×): the planted regions hold several of them
        ("untrained CONCH", "conch_tiny" if args.tiny else "conch", {"tile_um": 112.0}),
    ):
        model = nc.load_model(name, checkpoint=None if name == "colour-toy" else "random")
        rows = []
        for seed in range(args.slides):
            synth = nc.synthetic_slide(size=args.slide_px, mpp=0.5, seed=seed)
            grid = nc.tile_grid(synth.slide, model, **options)
            emb = nc.embed(synth.slide, model, grid, cache=None, progress=None)
            truth = synth.truth_annotations()
            zero = nc.zero_shot_segment(emb, model, CLASSES)
            for k in args.regions:
                # wide enough to hold half of a tile wherever it falls on the grid
                side = max(1.2 * grid.tile_px, grid.tile_px + grid.stride_px)
                regions = []
                for cls in CLASSES:
                    regions += _squares_in(truth, cls, k, side, rng, gap=grid.stride_px)
                placed = {c: sum(r.name == c for r in regions) for c in CLASSES}
                if min(placed.values()) < k:
                    print(f"  {label}, slide {seed}: only {placed} squares fit for k = {k}")
                if min(placed.values()) == 0:
                    continue
                taught = Annotations(regions, synth.slide.mpp)
                few = nc.few_shot_segment(emb, nc.fit_classifier(emb, taught))
                few_scores = nc.agreement(few, truth)  # training surroundings left out
                # the zero-shot map scored on exactly the same cells
                zero.metadata["classifier"] = few.metadata["classifier"]
                zero_scores = nc.agreement(zero, truth)
                del zero.metadata["classifier"]
                rows.append(
                    {
                        "slide": seed,
                        "regions_per_class": k,
                        "few_shot_dice": few_scores["mean_dice"],
                        "zero_shot_dice": zero_scores["mean_dice"],
                        "fewest_regions_placed": min(placed.values()),
                        "annotated_fraction": sum(r.polygon.area for r in regions)
                        / float(args.slide_px) ** 2,
                    }
                )
        summary = {}
        for k in args.regions:
            chosen = [r for r in rows if r["regions_per_class"] == k]
            if not chosen:
                continue
            summary[str(k)] = {
                "few_shot_dice": round(float(np.mean([r["few_shot_dice"] for r in chosen])), 3),
                "zero_shot_dice": round(float(np.mean([r["zero_shot_dice"] for r in chosen])), 3),
                "fewest_regions_placed": min(r["fewest_regions_placed"] for r in chosen),
                "annotated_percent": round(
                    100 * float(np.mean([r["annotated_fraction"] for r in chosen])), 2
                ),
            }
        out[label] = {"model": model.name, "tile_um": grid.tile_um, "by_regions": summary}
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiles", type=int, default=100_000)
    parser.add_argument("--tiny", action="store_true", help="conch_tiny instead of CONCH")
    parser.add_argument("--regions", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--slides", type=int, default=3, help="synthetic slides per model")
    parser.add_argument("--slide-px", type=int, default=4096)
    parser.add_argument("--output", type=Path, default=HERE / "results" / "teach.json")
    args = parser.parse_args(argv)

    result = {"cost": cost(args), "value": value(args)}
    c = result["cost"]
    print(f"{c['model']}, {c['tiles']:,} cached tiles")
    print(f"  zero_shot_segment (prompts encoded):  {c['zero_shot_segment_ms']:8.1f} ms")
    print(f"  one more annotation: refit + remap:   {c['refit_and_remap_ms']:8.1f} ms")
    print(f"  ratio: {c['ratio_refit_remap_vs_zero_shot']:.2f}× (goal ≤ 3×)")
    for label, v in result["value"].items():
        print(f"{label} ({v['model']}): held-out mean Dice, few-shot vs zero-shot")
        for k, s in v["by_regions"].items():
            print(
                f"  {k} region(s)/class (fewest placed {s['fewest_regions_placed']}, "
                f"{s['annotated_percent']:.2f} % of the slide): "
                f"{s['few_shot_dice']:.3f} vs {s['zero_shot_dice']:.3f}"
            )
    save_result(result, args.output)
    return result


if __name__ == "__main__":
    main()
