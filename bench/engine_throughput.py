"""The whole engine path with a model that costs nothing, against the OpenSlide loop.

448-px tiles at 0.5 µm/px from a 0.25 µm/px JPEG SVS (16384² px, 256-px JPEG tiles):

* **engine** — ``open_slide`` → ``tile_grid`` (tissue mask) → ``embed`` into a fresh cache,
  with a model whose network costs nothing but whose preprocessing is the real one (uint8
  tiles → float, resize to 448 px when needed, normalisation; on one torch thread, as the
  CPU's share of a GPU run), one reader thread per core and batches of 32, once with the
  default
  ``decode="fast"`` (JPEG tiles decoded at half size in the DCT domain) and once with
  ``decode="exact"`` (full decode, then the reference resize);
* **OpenSlide loop** — what peer pipelines do: ``read_region`` of 896 px → RGB → PIL bicubic
  resize to 448 px, one tile after another, over the same tiles;
* **pure-decode limit** — every JPEG tile those tiles touch decoded once at full size with
  imagecodecs on all cores: no engine can deliver more tiles/s without decoding less.

Also the price of the fast path: pixel difference (max, PSNR) against the exact path's
model input, and the feature difference for CONCH (random weights).

    python bench/engine_throughput.py              # about 3 minutes on 2 cores
    python bench/engine_throughput.py --size 8192  # quicker
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from _common import save_result  # noqa: E402
from read_tiles import make_slide  # noqa: E402

import napari_conch as nc  # noqa: E402

TILE_PX = 448


class CostlessModel:
    """CONCH's geometry and preprocessing, no network: what the engine costs by itself."""

    name = "costless"
    input_size = TILE_PX
    target_mpp = 0.5
    embed_dim = 512
    logit_scale = 100.0
    trained = True
    weights_hash = "costless"

    def encode_images(self, images):
        import torch

        from napari_conch.models.preprocess import as_image_batch, prepare_batch

        batch = prepare_batch(as_image_batch(images), self.input_size, torch.device("cpu"))
        return np.zeros((batch.shape[0], self.embed_dim), np.float32)

    def project(self, features, normalize=True):
        return features

    def encode_texts(self, texts, normalize=True):
        return np.zeros((len(texts), self.embed_dim), np.float32)


def openslide_loop(path: Path, coords, level: int, span: int) -> None:
    import openslide

    osr = openslide.OpenSlide(str(path))
    for y, x in coords:
        region = osr.read_region((int(x), int(y)), level, (span, span)).convert("RGB")
        np.asarray(region.resize((TILE_PX, TILE_PX), Image.BICUBIC))
    osr.close()


def engine(path: Path, cache: Path, decode: str):
    slide = nc.open_slide(path)
    model = CostlessModel()
    grid = nc.tile_grid(slide, model)
    # As the engine runs for a GPU model: one reader per core and large batches (a CPU
    # model would share the cores with the readers).
    emb = nc.embed(
        slide, model, grid, cache=cache, decode=decode, workers=os.cpu_count(), batch_size=32
    )
    assert emb.complete
    return grid


def decode_limit(path: Path, grid, workers: int) -> float:
    """Seconds to decode, once each at full size, every JPEG tile the grid's tiles touch."""
    import imagecodecs
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        th, tw = page.tilelength, page.tilewidth
        cols = -(-page.imagewidth // tw)
        needed = set()
        for y, x in grid.coords:
            for r in range(int(y) // th, (int(y) + grid.read_px - 1) // th + 1):
                for c in range(int(x) // tw, (int(x) + grid.read_px - 1) // tw + 1):
                    if r * cols + c < len(page.dataoffsets):
                        needed.add(r * cols + c)
        fh = tif.filehandle
        blobs = []
        for i in sorted(needed):
            fh.seek(page.dataoffsets[i])
            blobs.append(fh.read(page.databytecounts[i]))
        tables = page.jpegtables
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda b: imagecodecs.jpeg8_decode(b, tables=tables), blobs))
    return time.perf_counter() - start


def fidelity(path: Path, n_tiles: int) -> dict:
    """Fast against exact: the model input's pixels, and CONCH features (random weights)."""
    import torch

    from napari_conch.models.preprocess import as_image_batch, prepare_batch

    slide = nc.open_slide(path)
    model = nc.load_model("conch", checkpoint="random")
    grid = nc.tile_grid(slide, model)
    pick = np.linspace(0, len(grid) - 1, n_tiles).round().astype(int)
    size = grid.read_px
    exact = np.stack([slide.read_region(*map(int, grid.coords[i]), size, size) for i in pick])
    fast = np.stack(
        [slide.read_region(*map(int, grid.coords[i]), size, size, reduce=2) for i in pick]
    )
    cpu = torch.device("cpu")
    # both as the model sees them, on the 0–255 scale (exact: the reference resize)
    ins = [
        prepare_batch(as_image_batch(p), TILE_PX, cpu, mean=(0, 0, 0), std=(1, 1, 1)) * 255
        for p in (exact, fast)
    ]
    diff = (ins[0] - ins[1]).double()
    mse = float((diff**2).mean())
    feats = [np.asarray(model.encode_images(p)) for p in (exact, fast)]
    unit = [f / np.linalg.norm(f, axis=1, keepdims=True) for f in feats]
    cosine = (unit[0] * unit[1]).sum(axis=1)
    return {
        "tiles": n_tiles,
        "pixels_max_abs": round(float(diff.abs().max()), 2),
        "pixels_psnr_db": round(10 * np.log10(255.0**2 / mse), 2),
        "features_max_abs": float(np.abs(feats[0] - feats[1]).max()),
        "features_cosine_min": round(float(cosine.min()), 6),
        "features_cosine_mean": round(float(cosine.mean()), 6),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=16384, help="slide side (multiple of 2048)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--fidelity-tiles", type=int, default=8)
    parser.add_argument("--output", type=Path, default=HERE / "results" / "engine_throughput.json")
    args = parser.parse_args(argv)
    cores = os.cpu_count() or 1
    import torch

    # The costless model's preprocessing stands in for a GPU's: one CPU thread, leaving the
    # cores to the readers (CONCH on the CPU gets them all back for the fidelity check).
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.svs"
        make_slide(path, args.size)
        grid = engine(path, Path(tmp) / "warm", "fast")  # warm-up; the grid for the loop
        level, span = grid.level, grid.read_px
        times: dict[str, list[float]] = {"fast": [], "exact": [], "openslide": []}
        for r in range(args.rounds):
            order = ("openslide", "fast", "exact") if r % 2 == 0 else ("exact", "fast", "openslide")
            for kind in order:
                start = time.perf_counter()
                if kind == "openslide":
                    openslide_loop(path, grid.coords, level, span)
                else:
                    engine(path, Path(tmp) / f"cache-{kind}-{r}", kind)
                times[kind].append(time.perf_counter() - start)
        t_decode = decode_limit(path, grid, cores)
        torch.set_num_threads(cores)
        quality = fidelity(path, args.fidelity_tiles)

    n = len(grid)
    rate = {k: n / statistics.median(v) for k, v in times.items()}
    limit = n / t_decode
    result = {
        "slide_px": args.size,
        "tiles": n,
        "tile_px": TILE_PX,
        "read_px": span,
        "cores": cores,
        "rounds": args.rounds,
        "tiles_per_s": {
            "engine_fast": round(rate["fast"], 1),
            "engine_exact": round(rate["exact"], 1),
            "openslide_loop": round(rate["openslide"], 1),
            "full_decode_limit": round(limit, 1),
        },
        "ratio_fast_vs_openslide": round(rate["fast"] / rate["openslide"], 2),
        "ratio_exact_vs_openslide": round(rate["exact"] / rate["openslide"], 2),
        "fraction_of_full_decode_limit": round(rate["fast"] / limit, 2),
        "fidelity": quality,
    }
    print(f"{n} tiles of {TILE_PX} px from {span}-px reads, {cores} cores, {args.rounds} rounds")
    for key, value in result["tiles_per_s"].items():
        print(f"  {key:<18} {value:8.1f} tiles/s")
    print(f"engine (fast) / OpenSlide loop:  {result['ratio_fast_vs_openslide']:.2f}")
    print(f"engine (exact) / OpenSlide loop: {result['ratio_exact_vs_openslide']:.2f}")
    print(f"engine (fast) / full-decode limit: {result['fraction_of_full_decode_limit']:.2f}")
    print(f"fast vs exact: {quality}")
    save_result(result, args.output)
    return result


if __name__ == "__main__":
    main()
