"""Run by tests in a subprocess: embed a slide into a cache with a slowed tiny model,
printing "done total" after every batch (so the test can kill it mid-run)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from helpers import CountingModel

import napari_conch as nc

if __name__ == "__main__":
    path, cache, delay, overlap = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
    model = CountingModel(nc.load_model("conch_tiny", checkpoint="random", seed=0), delay=delay)
    grid = nc.tile_grid(path, model, overlap=overlap)
    nc.embed(
        path,
        model,
        grid,
        cache=cache,
        batch_size=2,
        progress=lambda d, t, r: print(d, t, flush=True),
    )
    print("TILES", model.tiles, flush=True)
