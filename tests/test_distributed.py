"""Many slides on a dask.distributed LocalCluster: same stores, same features as local runs."""

from __future__ import annotations

import numpy as np
import pytest
from slides import write_svs

import napari_conch as nc
from napari_conch import Embeddings, embed, embed_slides

SPEC = {"name": "conch_tiny", "checkpoint": "random", "seed": 0}


@pytest.fixture(scope="module")
def slide_paths(tmp_path_factory):
    folder = tmp_path_factory.mktemp("many")
    paths = []
    for seed in (11, 12, 13):
        synth = nc.synthetic_slide(size=1536, seed=seed)
        path = folder / f"slide{seed}.svs"
        write_svs(path, [lv.compute() for lv in synth.slide.levels], mpp=0.5, tile=256)
        paths.append(path)
    return paths


@pytest.mark.slow
def test_local_cluster_with_two_worker_processes_matches_local_runs(
    slide_paths, tiny_model, tmp_path
):
    from dask.distributed import Client, LocalCluster

    done = []
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True) as cluster,
        Client(cluster) as client,
    ):
        results = embed_slides(
            slide_paths,
            SPEC,
            client,
            cache=tmp_path,
            overlap=0.5,
            shard_tiles=7,
            progress=lambda d, t: done.append((d, t)),
        )
        workers = client.run(lambda: 1)  # both worker processes were there
    assert len(workers) == 2
    assert done[-1] == (3, 3)
    for path, result in zip(slide_paths, results, strict=True):
        assert isinstance(result, Embeddings) and result.complete
        assert result.store_path.is_relative_to(tmp_path)
        local = embed(path, tiny_model, nc.tile_grid(path, tiny_model, overlap=0.5), cache=tmp_path)
        assert local.store_path == result.store_path  # the same cache entry a local run uses
        fresh = embed(path, tiny_model, nc.tile_grid(path, tiny_model, overlap=0.5), cache=None)
        np.testing.assert_array_equal(result.features, fresh.features)


def test_embed_slides_validates_its_input(tmp_path):
    assert embed_slides([], SPEC, cache=tmp_path) == []
    with pytest.raises(ValueError, match="shared by the workers"):
        embed_slides(["x.svs"], SPEC, cache=None)
