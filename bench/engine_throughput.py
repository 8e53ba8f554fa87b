"""The whole engine path with a model that costs nothing, against the OpenSlide loop.

448-px tiles at 0.5 µm/px from a 0.25 µm/px JPEG SVS (16384² px, 256-px JPEG tiles):

* **engine** — ``open_slide`` → ``tile_grid`` (tissue mask) → ``embed`` into a fresh cache
  with a model that costs nothing (``encode_images`` returns zeros: on a GPU the network and
  the preprocessing run on the device), the engine's GPU default of one reader thread more
  than the cores and batches of 32, once
  with the default ``decode="fast"`` (JPEG tiles decoded at half size in the DCT domain) and
  once with ``decode="exact"`` (full decode, then the reference resize); and once more
  (fast) with the real preprocessing on one CPU thread (uint8 → float, normalisation), what
  a model running on the CPU adds before its network;
* **OpenSlide loop** — what peer pipelines do: ``read_region`` of 896 px → RGB → PIL bicubic
  resize to 448 px, one tile after another, over the same tiles;
* **pure-decode limits** — every JPEG tile those tiles touch decoded once, on all cores: at
  full size with imagecodecs (no engine decoding in full can deliver more tiles/s), and at
  half size with simplejpeg as the fast engine does (its own ceiling on this machine).

Also the price of the fast path: pixel difference (max, PSNR) against the exact path's
model input, and the feature difference for CONCH (random weights).

    python bench/engine_throughput.py              # about 4 minutes on 2 cores
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
    """CONCH's geometry, no network and no preprocessing: what the engine costs by itself."""

    name = "costless"
    input_size = TILE_PX
    target_mpp = 0.5
    embed_dim = 512
    logit_scale = 100.0
    trained = True
    weights_hash = "costless"

    def encode_images(self, images):
        return np.zeros((len(images), self.embed_dim), np.float32)

    def project(self, features, normalize=True):
        return features

    def encode_texts(self, texts, normalize=True):
        return np.zeros((len(texts), self.embed_dim), np.float32)


class CpuPreprocessingModel(CostlessModel):
    """The costless model plus the real preprocessing on the CPU (one thread)."""

    def encode_images(self, images):
        import torch

        from napari_conch.models.preprocess import as_image_batch, prepare_batch

        batch = prepare_batch(as_image_batch(images), self.input_size, torch.device("cpu"))
        return np.zeros((batch.shape[0], self.embed_dim), np.float32)


def openslide_loop(path: Path, coords, level: int, span: int) -> None:
    import openslide

    osr = openslide.OpenSlide(str(path))
    for y, x in coords:
        region = osr.read_region((int(x), int(y)), level, (span, span)).convert("RGB")
        np.asarray(region.resize((TILE_PX, TILE_PX), Image.BICUBIC))
    osr.close()


def engine(path: Path, cache: Path, decode: str, model=None):
    slide = nc.open_slide(path)
    model = model or CostlessModel()
    grid = nc.tile_grid(slide, model)
    # As the engine runs for a GPU model: its default readers (one more than the cores) and
    # large batches (a CPU model would share the cores with the readers).
    readers = (os.cpu_count() or 1) + 1
    emb = nc.embed(slide, model, grid, cache=cache, decode=decode, workers=readers, batch_size=32)
    assert emb.complete
    return grid


def jpeg_tiles(path: Path, grid) -> tuple[list[bytes], bytes | None]:
    """The bytes of every JPEG tile the grid's tiles touch, and the shared JPEG tables."""
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
        return blobs, page.jpegtables


def decode_limits(blobs, tables, size: int, workers: int) -> dict[str, float]:
    """Seconds to decode every tile once on ``workers`` threads: at full size (imagecodecs)
    and at half size in the DCT domain (simplejpeg, as the fast engine does)."""
    import imagecodecs
    import simplejpeg

    streams = [tables[:-2] + b[2:] if tables else b for b in blobs]
    half = size // 2

    def full(blob):
        return imagecodecs.jpeg8_decode(blob, tables=tables)

    def reduced(stream):
        return simplejpeg.decode_jpeg(
            stream, colorspace="RGB", fastupsample=True, min_height=half, min_width=half
        )

    seconds = {}
    with ThreadPoolExecutor(workers) as pool:
        for name, decode, items in (("full", full, blobs), ("half", reduced, streams)):
            start = time.perf_counter()
            list(pool.map(decode, items))
            seconds[name] = time.perf_counter() - start
    return seconds


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
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--fidelity-tiles", type=int, default=8)
    parser.add_argument("--output", type=Path, default=HERE / "results" / "engine_throughput.json")
    args = parser.parse_args(argv)
    cores = os.cpu_count() or 1
    import torch

    # The preprocessing model's share stays on one CPU thread, leaving the cores to the
    # readers (CONCH on the CPU gets them all back for the fidelity check).
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.svs"
        make_slide(path, args.size)
        grid = engine(path, Path(tmp) / "warm", "fast")  # warm-up; the grid for the loop
        level, span = grid.level, grid.read_px
        blobs, tables = jpeg_tiles(path, grid)
        runs = {
            "openslide": lambda r: openslide_loop(path, grid.coords, level, span),
            "fast": lambda r: engine(path, Path(tmp) / f"fast-{r}", "fast"),
            "fast_cpu_preprocessing": lambda r: engine(
                path, Path(tmp) / f"prep-{r}", "fast", CpuPreprocessingModel()
            ),
            "exact": lambda r: engine(path, Path(tmp) / f"exact-{r}", "exact"),
        }
        times: dict[str, list[float]] = {k: [] for k in (*runs, "full_decode", "half_decode")}
        for r in range(args.rounds):
            order = list(runs) if r % 2 == 0 else list(runs)[::-1]
            for kind in order:
                start = time.perf_counter()
                runs[kind](r)
                times[kind].append(time.perf_counter() - start)
            limits = decode_limits(blobs, tables, 256, cores)
            times["full_decode"].append(limits["full"])
            times["half_decode"].append(limits["half"])
        torch.set_num_threads(cores)
        quality = fidelity(path, args.fidelity_tiles)

    n = len(grid)
    rate = {k: n / statistics.median(v) for k, v in times.items()}
    result = {
        "slide_px": args.size,
        "tiles": n,
        "tile_px": TILE_PX,
        "read_px": span,
        "jpeg_tiles_decoded": len(blobs),
        "cores": cores,
        "rounds": args.rounds,
        "tiles_per_s": {
            "engine_fast": round(rate["fast"], 1),
            "engine_fast_cpu_preprocessing": round(rate["fast_cpu_preprocessing"], 1),
            "engine_exact": round(rate["exact"], 1),
            "openslide_loop": round(rate["openslide"], 1),
            "full_decode_limit": round(rate["full_decode"], 1),
            "half_decode_limit": round(rate["half_decode"], 1),
        },
        "ratio_fast_vs_openslide": round(rate["fast"] / rate["openslide"], 2),
        "ratio_fast_cpu_preprocessing_vs_openslide": round(
            rate["fast_cpu_preprocessing"] / rate["openslide"], 2
        ),
        "ratio_exact_vs_openslide": round(rate["exact"] / rate["openslide"], 2),
        "ratio_half_decode_limit_vs_openslide": round(rate["half_decode"] / rate["openslide"], 2),
        "fraction_of_full_decode_limit": round(rate["fast"] / rate["full_decode"], 2),
        "fraction_of_half_decode_limit": round(rate["fast"] / rate["half_decode"], 2),
        "fidelity": quality,
    }
    print(f"{n} tiles of {TILE_PX} px from {span}-px reads, {cores} cores, {args.rounds} rounds")
    for key, value in result["tiles_per_s"].items():
        print(f"  {key:<30} {value:8.1f} tiles/s")
    for key in (
        "ratio_fast_vs_openslide",
        "ratio_fast_cpu_preprocessing_vs_openslide",
        "ratio_exact_vs_openslide",
        "ratio_half_decode_limit_vs_openslide",
        "fraction_of_full_decode_limit",
        "fraction_of_half_decode_limit",
    ):
        print(f"{key:<45} {result[key]:.2f}")
    print(f"fast vs exact: {quality}")
    save_result(result, args.output)
    return result


if __name__ == "__main__":
    main()
