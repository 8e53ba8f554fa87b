"""CONCH on a GPU: model-only and end-to-end tiles/s, and whether the GPU path is right.

Runs the full-size CONCH architecture (random weights: speed does not depend on them) on
CUDA and reports, in one run:

* **agreement**: features of the same tiles on the GPU (fp32, and bf16/fp16 autocast)
  against the CPU in fp32 — the largest difference and the smallest cosine similarity;
* **model-only** tiles/s per precision and batch size (uint8 tiles already on the device in
  pinned memory: preprocessing on the device is counted, host reading is not), with the
  fraction of the GPU's measured bf16 matrix-multiply rate that it reaches
  (CONCH at 448 px ≈ 157 GFLOP per tile);
* **end-to-end** tiles/s of ``nc.embed`` (reader threads, pinned host buffers, non-blocking
  copies, the engine's own batching) and end-to-end / model-only: over an in-memory slide
  (no decoding), and from a JPEG SVS at 0.25 µm/px (448-px tiles from 896-px reads) with
  ``decode="fast"`` (half-size JPEG decoding on the CPU's cores) and ``decode="device"``
  (the batch's JPEG tiles decoded by nvJPEG on the GPU).

Without CUDA (or with ``--smoke``) it runs the same code on the CPU with a handful of tiles
and CONCH's code at small widths (``conch_tiny``): a smoke test that the script works (the
test suite runs it), whose figures mean nothing.

    python bench/gpu.py                        # the whole benchmark (CUDA), prints ratios
    python bench/gpu.py --smoke                # a few tiles on whatever device exists
    python bench/gpu.py --compile              # also try torch.compile for model-only
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import save_result  # noqa: E402

import napari_conch as nc  # noqa: E402

GFLOP_PER_TILE = 157.0  # CONCH ViT-B/16 at 448 px (trunk + pooler), forward pass
MODEL = {"name": "conch"}  # "conch_tiny" for smoke runs


def _tiles(n: int, size: int = 448, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (n, size // 16, size // 16, 3), dtype=np.uint8)
    return np.repeat(np.repeat(coarse, 16, axis=1), 16, axis=2)  # structure, not just noise


def _model(device, precision):
    """The benchmarked model with random weights (speed does not depend on them)."""
    return nc.load_model(MODEL["name"], checkpoint="random", device=device, precision=precision)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_tflops(device: torch.device, seconds: float = 1.0) -> float | None:
    """The device's bf16 matrix-multiply rate measured here (the ceiling for a ViT)."""
    if device.type != "cuda":
        return None
    n = 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    _sync(device)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    _sync(device)
    return 2 * n**3 * count / (time.perf_counter() - start) / 1e12


def agreement(device: torch.device, tiles: np.ndarray) -> dict:
    """The same tiles through CPU fp32 and every device precision."""
    cpu = _model("cpu", "fp32")
    reference = cpu.encode_images(tiles)
    out = {}
    for precision in _precisions(device):
        got = _model(device, precision).encode_images(tiles)
        cos = (got * reference).sum(1) / (
            np.linalg.norm(got, axis=1) * np.linalg.norm(reference, axis=1)
        )
        out[precision] = {
            "max_abs_diff": float(np.abs(got - reference).max()),
            "min_cosine": float(cos.min()),
        }
        print(
            f"agreement {precision:>4} vs CPU fp32: max |Δ| {out[precision]['max_abs_diff']:.2e}, "
            f"min cosine {out[precision]['min_cosine']:.6f}"
        )
    return out


def _precisions(device: torch.device) -> list[str]:
    if device.type != "cuda":
        return ["fp32"]
    return ["fp32", "bf16", "fp16"] if torch.cuda.is_bf16_supported() else ["fp32", "fp16"]


def model_only(device, precision, batch, seconds, compile_model=False) -> float:
    """Tiles/s of encode_images on uint8 tiles held in pinned host memory."""
    model = _model(device, precision)
    if compile_model:
        model.network.visual = torch.compile(model.network.visual)
    host = torch.from_numpy(_tiles(batch)).permute(0, 3, 1, 2)
    if device.type == "cuda":
        host = host.contiguous().pin_memory()
    model.encode_images(host)  # warm-up (and compilation)
    _sync(device)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        model.encode_images(host)
        count += batch
    _sync(device)
    return count / (time.perf_counter() - start)


def in_memory_slide(side_px: int):
    """A tiled synthetic slide held in memory at 0.5 µm/px: reading costs no decoding."""
    synth = nc.synthetic_slide(size=min(4096, side_px), seed=1)
    base = np.asarray(synth.slide.levels[0])
    reps = max(1, side_px // base.shape[0])
    return nc.Slide.from_array(np.tile(base, (reps, reps, 1)), mpp=0.5, name="tiled synthetic")


def end_to_end(model, slide, batch: int | None, decode: str = "fast") -> tuple[float, int]:
    """Tiles/s of nc.embed over ``slide`` (reading, decoding, batching, copies, model)."""
    device = model.device
    grid = nc.tile_grid(slide, model, tissue=False)
    warm = nc.synthetic_slide(size=512).slide  # kernels chosen, memory allocated
    nc.embed(warm, model, nc.tile_grid(warm, model, tissue=False), cache=None, batch_size=batch)
    start = time.perf_counter()
    emb = nc.embed(slide, model, grid, cache=None, batch_size=batch, decode=decode)
    _sync(device)
    elapsed = time.perf_counter() - start
    assert emb.complete
    decoded = str(emb.metadata.get("decode"))
    if decode == "device" and device.type == "cuda" and "on cuda" not in decoded:
        print(f"  (decode='device' fell back to the CPU: {decoded})")
    return len(grid) / elapsed, len(grid)


def jpeg_svs(directory: Path, side_px: int) -> Path:
    """A JPEG SVS at 0.25 µm/px (256-px tiles), as scanners write them."""
    from read_tiles import make_slide  # (it puts the tests' slide writers on the path)

    path = directory / "bench.svs"
    make_slide(path, max(2048, side_px // 2048 * 2048))
    return path


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="a few tiles, any device")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seconds", type=float, default=4.0, help="per model-only timing")
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 256, 512])
    parser.add_argument("--side", type=int, default=16384, help="in-memory slide side (px)")
    parser.add_argument(
        "--jpeg-side", type=int, default=32768, help="JPEG SVS side (px at 0.25 µm/px)"
    )
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    parser.add_argument("--output", type=Path, default=HERE / "results" / "gpu.json")
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.device != "auto":
        device = torch.device(args.device)
    smoke = args.smoke or device.type != "cuda"
    if smoke:
        args.seconds, args.batches, args.side, args.jpeg_side = 0.5, [2], 1024, 2048
        MODEL["name"] = "conch_tiny"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    print(f"device: {device} ({name}); torch {torch.__version__}; smoke={smoke}")
    result = {
        "device": str(device),
        "device_name": name,
        "torch": torch.__version__,
        "smoke": smoke,
        "gflop_per_tile": GFLOP_PER_TILE,
        "model": MODEL["name"],
    }
    result["agreement"] = agreement(device, _tiles(2 if smoke else 8, seed=3))
    peak = matmul_tflops(device)
    result["bf16_matmul_tflops"] = peak
    if peak:
        print(f"bf16 matrix multiply here: {peak:.0f} TFLOP/s")

    result["model_only"] = {}
    best = {}
    for precision in _precisions(device):
        for batch in args.batches:
            try:
                rate = model_only(device, precision, batch, args.seconds)
            except torch.cuda.OutOfMemoryError:
                print(f"model-only {precision} batch {batch}: out of memory")
                torch.cuda.empty_cache()
                continue
            result["model_only"][f"{precision}/{batch}"] = rate
            best[precision] = max(best.get(precision, 0.0), rate)
            share = f", {rate * GFLOP_PER_TILE / 1e3 / peak:.0%} of bf16 peak" if peak else ""
            print(f"model-only {precision:>4} batch {batch:>4}: {rate:8.1f} tiles/s{share}")
    save_result(result, args.output)  # kept if a later stage fails
    model = _model(device, "auto")
    auto = model.precision
    e2e_batch = None if not smoke else 2
    rate, n = end_to_end(model, in_memory_slide(args.side), e2e_batch)
    ratio = rate / best[auto] if best.get(auto) else None
    result["end_to_end"] = {"precision": auto, "tiles": n, "tiles_per_s": rate, "ratio": ratio}
    print(
        f"end-to-end ({auto}, engine's own batch size, {n} tiles, in memory): {rate:.1f} "
        "tiles/s" + (f" = {ratio:.2f} × model-only" if ratio else "")
    )
    save_result(result, args.output)
    with tempfile.TemporaryDirectory() as tmp:
        svs = nc.open_slide(jpeg_svs(Path(tmp), args.jpeg_side))
        for decode in ("fast", "device"):
            rate, n = end_to_end(model, svs, e2e_batch, decode)
            ratio = rate / best[auto] if best.get(auto) else None
            result["end_to_end"][f"jpeg_{decode}"] = {
                "tiles": n,
                "tiles_per_s": rate,
                "ratio": ratio,
            }
            print(
                f"end-to-end from a JPEG SVS, decode={decode!r} ({n} tiles): {rate:.1f} tiles/s"
                + (f" = {ratio:.2f} × model-only" if ratio else "")
            )
            save_result(result, args.output)
    if args.compile:
        for precision in _precisions(device)[1:] or ["fp32"]:
            batch = args.batches[-1]
            rate = model_only(device, precision, batch, args.seconds, compile_model=True)
            result["model_only"][f"{precision}/{batch}/compiled"] = rate
            result["end_to_end"][f"ratio_to_compiled_{precision}"] = (
                result["end_to_end"]["tiles_per_s"] / rate
            )
            print(f"model-only {precision:>4} batch {batch:>4} compiled: {rate:8.1f} tiles/s")

        save_result(result, args.output)
    return result


if __name__ == "__main__":
    main()
