"""PLIP on a slide: our pipeline against the way PLIP is usually run on tiles.

The usual way (PLIP's README and the scripts built on it): read each tile with OpenSlide's
``read_region``, convert it to a PIL image, preprocess a batch with transformers'
``CLIPProcessor`` on the CPU, then ``CLIPModel.get_image_features``. Ours: ``tile_grid`` +
``embed`` (tissue mask, threaded reads of the file's tiles, uint8 batches resized and
normalised on the model's device, the same network) and ``project``.

Both run the same full-size PLIP architecture (CLIP ViT-B/32, random weights: speed does not
depend on the values) on the same tissue tiles of a synthetic 20× slide, alternated over
rounds in one run. Printed: tiles/s of each, their ratio, and the largest difference between
the two sets of features on tiles inside the slide (the same computation). Tiles that run
over the slide's edge differ on purpose: we pad them with the slide's background colour,
while OpenSlide's transparent padding turns black in ``convert("RGB")``.

    python bench/plip_peer.py            # a few minutes on 2 CPU cores
    python bench/plip_peer.py --size 2048 --rounds 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from _common import save_result  # noqa: E402
from slides import pyramid, tissue_like, write_svs  # noqa: E402

import napari_conch as nc  # noqa: E402


def peer_features(path, coords, size: int, clip, batch: int) -> np.ndarray:
    """OpenSlide reads + CLIPProcessor + get_image_features, batch by batch."""
    import openslide
    import torch
    from transformers import CLIPImageProcessor

    processor = CLIPImageProcessor()  # PLIP's preprocessor_config: 224 px, CLIP mean/std
    osr = openslide.OpenSlide(str(path))
    out = []
    try:
        for start in range(0, len(coords), batch):
            images = [
                osr.read_region((int(x), int(y)), 0, (size, size)).convert("RGB")
                for y, x in coords[start : start + batch]
            ]
            pixels = processor(images=images, return_tensors="pt")["pixel_values"]
            with torch.inference_mode():
                feats = clip.get_image_features(pixel_values=pixels)
            feats = feats if isinstance(feats, torch.Tensor) else feats.pooler_output
            out.append(torch.nn.functional.normalize(feats, dim=-1).numpy())
    finally:
        osr.close()
    return np.concatenate(out)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=4096, help="slide side in px (0.5 µm/px)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--output", type=Path, default=HERE / "results" / "plip_peer.json")
    args = parser.parse_args(argv)

    model = nc.load_model("plip", checkpoint="random")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "slide.svs"
        image = tissue_like(args.size, args.size, seed=7)
        write_svs(path, pyramid(image, (1, 4, 16)), mpp=0.5, tile=256, compression="jpeg")
        grid = nc.tile_grid(nc.open_slide(path), model)
        coords = grid.coords
        _ = model.weights_hash  # once per process, like loading the model
        peer_features(path, coords[:2], grid.read_px, model.clip, 2)  # warm-up
        times = {"ours": [], "peer": []}
        for r in range(args.rounds):
            for kind in ("peer", "ours") if r % 2 == 0 else ("ours", "peer"):
                start = time.perf_counter()
                if kind == "peer":
                    theirs = peer_features(path, coords, grid.read_px, model.clip, args.batch)
                else:
                    slide = nc.open_slide(path)
                    g = nc.tile_grid(slide, model)
                    emb = nc.embed(slide, model, g, cache=None, batch_size=args.batch)
                    ours = emb.projected(model)
                times[kind].append(time.perf_counter() - start)
    n = len(grid)
    inside = ~grid.partial
    rate = {k: n / statistics.median(v) for k, v in times.items()}
    result = {
        "model": "plip (CLIP ViT-B/32, random weights)",
        "tiles": n,
        "tile_px": int(grid.read_px),
        "batch": args.batch,
        "rounds": args.rounds,
        "tiles_per_s": {k: round(v, 2) for k, v in rate.items()},
        "ratio": round(rate["ours"] / rate["peer"], 2),
        "max_abs_difference_inside": float(np.abs(ours - theirs)[inside].max()),
        "edge_tiles": int((~inside).sum()),
    }
    print(f"PLIP, {n} tissue tiles of {grid.read_px} px, batch {args.batch}")
    print(f"  usual loop (OpenSlide + CLIPProcessor + CLIPModel): {rate['peer']:.2f} tiles/s")
    print(f"  napari-conch (tile_grid + embed + project):         {rate['ours']:.2f} tiles/s")
    print(f"ratio ours / usual: {result['ratio']:.2f}")
    print(
        f"largest feature difference on the {int(inside.sum())} tiles inside the slide: "
        f"{result['max_abs_difference_inside']:.1e} ({result['edge_tiles']} edge tiles "
        "padded differently: background colour here, black there)"
    )
    save_result(result, args.output)
    return result


if __name__ == "__main__":
    main()
