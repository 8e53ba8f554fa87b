"""End-to-end embedding throughput against the model alone, and peak memory on a huge slide.

1. Pipeline overhead (full-size CONCH, random weights): tiles/s of ``tile_grid`` + ``embed``
   (open → tissue mask → read → preprocess → model → cache) against tiles/s of
   ``encode_images`` alone on the same tiles, already in memory, same batch size — alternated
   over rounds in one run. The ratio pipeline / model-only says how much the rest costs
   (goal ≥ 0.9).
2. Peak resident memory of a fresh process embedding a 100,000 × 100,000 px pyramid (sparse,
   with a 10,000 × 10,000 px tissue block) with the tiny model (goal < 2 GiB).

    python bench/pipeline.py             # about 3 minutes on 2 CPU cores
    python bench/pipeline.py --tiny      # smoke run of part 1 with the tiny model
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from _common import save_result  # noqa: E402
from slides import pyramid, tissue_like, write_sparse_pyramid, write_svs  # noqa: E402

import napari_conch as nc  # noqa: E402

_RSS_CHILD = """
import resource, sys
import napari_conch as nc
path, cache = sys.argv[1], sys.argv[2]
model = nc.load_model("conch_tiny", checkpoint="random")
slide = nc.open_slide(path, mpp=0.25)
emb = nc.embed(slide, model, cache=cache, batch_size=16)
# VmHWM is this process's own peak. ru_maxrss is not: on Linux an exec'd child inherits the
# parent's RSS at fork time as its starting maximum.
try:
    peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
except (OSError, StopIteration):
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
print(len(emb), emb.n_done, peak)
"""


def pipeline_overhead(tiny: bool, rounds: int, batch: int) -> dict:
    model = nc.load_model("conch_tiny" if tiny else "conch", checkpoint="random")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.svs"
        write_svs(
            path,
            pyramid(tissue_like(4096, 4096, seed=3), (1, 4, 16)),
            mpp=0.25,
            tile=256,
            compression="jpeg",
        )
        slide = nc.open_slide(path)
        grid = nc.tile_grid(slide, model)
        pixels = np.stack(
            [
                slide.read_region(int(y), int(x), grid.read_px, grid.read_px, grid.level)
                for y, x in grid.coords
            ]
        )
        model.encode_images(pixels[:1])  # warm-up
        # Once per process and model, like loading it: the weights hash (cache key, ~0.5 s).
        _ = model.weights_hash
        t_pipe, t_model = [], []
        for r in range(rounds):
            for kind in ("model", "pipeline") if r % 2 == 0 else ("pipeline", "model"):
                start = time.perf_counter()
                if kind == "model":
                    for i in range(0, len(pixels), batch):
                        model.encode_images(pixels[i : i + batch])
                    t_model.append(time.perf_counter() - start)
                else:
                    fresh = nc.open_slide(path)  # from the file, as a user would
                    g = nc.tile_grid(fresh, model)
                    emb = nc.embed(fresh, model, g, cache=Path(tmp) / f"cache{r}", batch_size=batch)
                    assert emb.complete
                    t_pipe.append(time.perf_counter() - start)
    n = len(grid)
    pipe, only = n / statistics.median(t_pipe), n / statistics.median(t_model)
    return {
        "model": model.name,
        "tiles": n,
        "batch": batch,
        "rounds": rounds,
        "tiles_per_s": {"pipeline": round(pipe, 3), "model_only": round(only, 3)},
        "ratio": round(pipe / only, 3),
    }


def peak_memory_huge_slide() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "huge.tif"
        write_sparse_pyramid(
            path, size=100_000, tile=512, real_box=(40_000, 40_000, 50_000, 50_000), seed=1
        )
        start = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-c", _RSS_CHILD, str(path), str(Path(tmp) / "cache")],
            capture_output=True,
            text=True,
            check=True,
        )
        seconds = time.perf_counter() - start
    tiles, done, peak_kib = (int(v) for v in out.stdout.split()[-3:])
    return {
        "slide_px": 100_000,
        "tiles": tiles,
        "done": done,
        "seconds": round(seconds, 1),
        "peak_rss_mib": round(peak_kib / 1024, 1),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiny", action="store_true", help="tiny model for part 1 (smoke run)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--output", type=Path, default=HERE / "results" / "pipeline.json")
    args = parser.parse_args(argv)

    result = {"overhead": pipeline_overhead(args.tiny, args.rounds, args.batch)}
    o = result["overhead"]
    print(f"{o['model']}: {o['tiles']} tiles, batch {o['batch']}, median of {o['rounds']}")
    print(
        f"  pipeline (open, tissue, read, model, cache): {o['tiles_per_s']['pipeline']:.3f} tiles/s"
    )
    only = o["tiles_per_s"]["model_only"]
    print(f"  model only (tiles in memory):               {only:.3f} tiles/s")
    print(f"ratio pipeline / model only: {o['ratio']:.3f}")
    if not args.skip_memory:
        m = result["memory"] = peak_memory_huge_slide()
        print(
            f"100,000² px slide, {m['tiles']} tissue tiles, tiny model: peak RSS "
            f"{m['peak_rss_mib']:.0f} MiB in {m['seconds']:.0f} s"
        )
    save_result(result, args.output)
    return result


if __name__ == "__main__":
    main()
