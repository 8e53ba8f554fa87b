"""Tiles per second: napari-conch's ``encode_images`` against the reference ``encode_image``.

Both models carry the same random weights (the reference's, saved and loaded through
``load_model``), run on the same device with the same batch size and thread count, and are
timed alternately in one process so machine load affects both alike. Three comparisons:

* ``model``: the reference gets tensors already normalised (its best case: no
  preprocessing counted) and we get the raw uint8 tiles (our preprocessing counted);
* ``pipeline``: the reference also runs its own ``preprocess`` (PIL → tensor) per tile, as a
  user of the reference package does;
* ``bf16`` (information only): our ``precision="bf16"`` autocast against the fp32 reference.

Prints the ratios (ours / reference; ≥ 1.0 means we are faster) and writes JSON.

    python bench/model_throughput.py                 # full CONCH, batch 8, 5 rounds
    python bench/model_throughput.py --tiny --rounds 5
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))  # the reference-model helpers live with the tests

from _common import save_result  # noqa: E402
from helpers import build_reference, public_state_dict, reference_pixels  # noqa: E402

from napari_conch.models import load_model  # noqa: E402


def _tiles(n: int, size: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


def _time(fn, repeats: int) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiny", action="store_true", help="tiny configuration (smoke run)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5, help="alternating timing rounds")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", type=Path, default=HERE / "results" / "model_throughput.json")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name = "conch_tiny" if args.tiny else "conch"
    ref = build_reference(tiny=args.tiny, seed=0).to(device)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pytorch_model.bin"
        torch.save(public_state_dict(ref), path)
        ours = load_model(name, checkpoint=path, device=args.device, precision="fp32")
        ours_bf16 = load_model(name, checkpoint=path, device=args.device, precision="bf16")

    from conch.open_clip_custom.transform import image_transform
    from PIL import Image

    size = ours.input_size
    preprocess = image_transform(size, mean=ours.mean, std=ours.std)
    tiles = _tiles(args.batch, size)
    pils = [Image.fromarray(t) for t in tiles]
    pixels = reference_pixels(tiles).to(device)

    def reference_model():
        with torch.inference_mode():
            ref.encode_image(pixels)

    def reference_pipeline():
        with torch.inference_mode():
            batch = torch.stack([preprocess(im) for im in pils]).to(device)
            ref.encode_image(batch)

    fp32_runs = {
        "ours": lambda: ours.encode_images(tiles),
        "reference_model": reference_model,
        "reference_pipeline": reference_pipeline,
    }
    for fn in fp32_runs.values():  # warm-up: first-call allocations, kernel selection
        fn()
    seconds: dict[str, list[float]] = {k: [] for k in fp32_runs}
    order = list(fp32_runs)
    for round_ in range(args.rounds):
        # Alternate the order each round so drift in machine speed hits every contender.
        for key in order if round_ % 2 == 0 else order[::-1]:
            seconds[key].append(_time(fp32_runs[key], 1))
    # bf16 last: AMX/AVX-512 work can lower the clock for a while and must not slow fp32 runs.
    ours_bf16.encode_images(tiles)
    seconds["ours_bf16"] = [
        _time(lambda: ours_bf16.encode_images(tiles), 1) for _ in range(args.rounds)
    ]

    def tiles_per_s(key):
        return args.batch / statistics.median(seconds[key])

    def paired_ratio(key):
        # Median over rounds of reference time / our time, measured side by side.
        return statistics.median(r / o for r, o in zip(seconds[key], seconds["ours"], strict=True))

    result = {
        "model": name,
        "device": str(device),
        "batch": args.batch,
        "threads": args.threads,
        "input_px": size,
        "rounds": args.rounds,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "tiles_per_s": {k: round(tiles_per_s(k), 3) for k in seconds},
        "ratio_model": round(paired_ratio("reference_model"), 3),
        "ratio_pipeline": round(paired_ratio("reference_pipeline"), 3),
        "ratio_bf16_vs_reference_fp32": round(
            tiles_per_s("ours_bf16") / tiles_per_s("reference_model"), 3
        ),
    }
    setup = f"batch {args.batch}, {args.threads} threads, {size} px, median of {args.rounds}"
    print(f"{name} on {device}, {setup}")
    for key in seconds:
        print(f"  {key:<20} {tiles_per_s(key):8.2f} tiles/s")
    print(f"ratio ours/reference, model only (fp32):  {result['ratio_model']:.3f}")
    print(f"ratio ours/reference, with preprocessing: {result['ratio_pipeline']:.3f}")
    print(f"ratio ours bf16 / reference fp32:         {result['ratio_bf16_vs_reference_fp32']:.3f}")
    save_result(result, args.output)
    return result


if __name__ == "__main__":
    main()
