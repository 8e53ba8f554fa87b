"""Latency of a new prompt → full similarity map on 100,000 cached tiles (CPU).

The features are random 512-d vectors standing in for a cached slide (the arithmetic does not
care what they are); the model is full-size CONCH with random weights. Timed separately:

* ``first map``: the first map of a session, which projects and normalises all features once
  (then kept with the embeddings);
* ``new prompt``: a prompt never seen — text encoding plus the map;
* ``cached prompt``: a prompt encoded before — the map alone (goal < 50 ms);
* ``churn``: 1,000 different prompts in a row — the median latency of the last 100 over
  that of the first 100 (1.0 = flat: nothing accumulates from prompt to prompt).

    python bench/reprompt.py              # about a minute
    python bench/reprompt.py --tiles 20000 --tiny
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import save_result  # noqa: E402

import napari_conch as nc  # noqa: E402
from napari_conch.embeddings import Embeddings  # noqa: E402
from napari_conch.tiling import TileGrid  # noqa: E402


def fake_embeddings(n: int, dim: int, weights_hash: str) -> Embeddings:
    side = math.ceil(math.sqrt(n))
    indices = np.stack(np.divmod(np.arange(n), side), axis=1)
    grid = TileGrid.from_indices(indices, tile_px=448, mpp=0.5)
    features = np.random.default_rng(0).normal(size=(n, dim)).astype(np.float32)
    return Embeddings(features, np.ones(n, bool), grid, {"model": {"weights_hash": weights_hash}})


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiles", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--churn", type=int, default=1000, help="prompts in the churn run")
    parser.add_argument("--output", type=Path, default=HERE / "results" / "reprompt.json")
    args = parser.parse_args(argv)

    model = nc.load_model("conch_tiny" if args.tiny else "conch", checkpoint="random")
    emb = fake_embeddings(args.tiles, model.embed_dim, model.weights_hash)
    first = timed(lambda: nc.similarity_map(emb, model, text="tumor"))
    new = [
        timed(lambda i=i: nc.similarity_map(emb, model, text=f"new prompt number {i}"))
        for i in range(args.repeats)
    ]
    cached = [
        timed(lambda: nc.similarity_map(emb, model, text="tumor")) for _ in range(args.repeats)
    ]
    segment = [
        timed(lambda: nc.zero_shot_segment(emb, model, ["tumor", "stroma", "necrosis"]))
        for _ in range(5)
    ]
    churn = [
        timed(lambda i=i: nc.similarity_map(emb, model, text=f"churn prompt {i} of many"))
        for i in range(args.churn)
    ]
    window = max(1, min(100, args.churn // 10))
    first_w, last_w = statistics.median(churn[:window]), statistics.median(churn[-window:])
    result = {
        "model": model.name,
        "churn": {
            "prompts": args.churn,
            "window": window,
            "first_median_ms": round(first_w, 1),
            "last_median_ms": round(last_w, 1),
            "last_over_first": round(last_w / first_w, 2),
        },
        "tiles": args.tiles,
        "map_shape": list(nc.similarity_map(emb, model, text="tumor").values.shape),
        "ms": {
            "first_map_projects_features": round(first, 1),
            "new_prompt_median": round(statistics.median(new), 1),
            "cached_prompt_median": round(statistics.median(cached), 1),
            "cached_prompt_p90": round(sorted(cached)[int(0.9 * (len(cached) - 1))], 1),
            "segmentation_3_classes_cached_median": round(statistics.median(segment), 1),
        },
    }
    ms = result["ms"]
    print(f"{model.name}, {args.tiles:,} cached tiles, map {result['map_shape']}")
    print(f"  first map (projects all features once): {ms['first_map_projects_features']:8.1f} ms")
    print(f"  new prompt (text encoding + map):       {ms['new_prompt_median']:8.1f} ms")
    cached_ms, p90 = ms["cached_prompt_median"], ms["cached_prompt_p90"]
    print(f"  cached prompt (map only):               {cached_ms:8.1f} ms (p90 {p90})")
    segment_ms = ms["segmentation_3_classes_cached_median"]
    print(f"  3-class segmentation, cached prompts:   {segment_ms:8.1f} ms")
    ch = result["churn"]
    print(
        f"  {ch['prompts']} prompts in a row: last {ch['window']} / first {ch['window']} "
        f"median latency = {ch['last_over_first']:.2f} ({ch['last_median_ms']} vs "
        f"{ch['first_median_ms']} ms)"
    )
    save_result(result, args.output)
    return result


if __name__ == "__main__":
    main()
