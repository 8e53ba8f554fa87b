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
            progress=lambda d, t, rate: done.append((d, t)),
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


@pytest.mark.slow
def test_one_slide_across_two_workers_equals_a_local_run_and_survives_a_killed_worker(
    tiny_model, tmp_path
):
    """embed(client=): the tiles of one slide split over two worker processes, one of
    them killed mid-run; the store ends complete, with a local run's features."""
    import os
    import signal

    from dask.distributed import Client, LocalCluster

    synth = nc.synthetic_slide(size=2048, seed=21)
    path = tmp_path / "big.svs"
    write_svs(path, [lv.compute() for lv in synth.slide.levels], mpp=0.5, tile=256)
    model = nc.load_model(**SPEC)  # remembers how to load it: workers build their own
    grid = nc.tile_grid(path, model, overlap=0.75)
    steps, killed = [], []
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True) as cluster,
        Client(cluster) as client,
    ):
        pids = client.run(os.getpid)

        def progress(done, total, rate):
            steps.append(done)
            if len(steps) == 3 and not killed:  # a shard or two in: one worker dies
                victim = max(pids.values())
                os.kill(victim, signal.SIGKILL)
                killed.append(victim)

        result = nc.embed(
            path,
            model,
            grid,
            cache=tmp_path / "cache",
            client=client,
            progress=progress,
            batch_size=2,
        )
        assert killed and len(client.run(lambda: 1)) >= 1
    assert result.complete and len(result) == len(grid) > 100
    assert steps == sorted(steps) and steps[-1] == len(grid)
    local = nc.embed(path, tiny_model, grid, cache=None)
    np.testing.assert_allclose(result.features, local.features, rtol=0, atol=1e-6)
    again = nc.embed(path, tiny_model, grid, cache=tmp_path / "cache")  # the same store
    assert again.store_path == result.store_path and again.complete


def test_embed_with_a_client_needs_a_file_a_cache_and_a_loadable_model(tmp_path, tiny_model):
    from napari_conch.distributed import model_spec

    synth = nc.synthetic_slide(size=512)
    with pytest.raises(ValueError, match="opened from a file"):
        nc.embed(synth.slide, tiny_model, client=object(), cache=tmp_path)
    with pytest.raises(ValueError, match="region_only"):
        nc.embed(synth.slide, tiny_model, client=object(), region=(0, 0, 1, 1), region_only=True)
    assert model_spec(tiny_model)["name"] == "conch_tiny"
    assert "token" not in nc.load_model("conch_tiny", checkpoint="random", token="hf_x").load_spec

    class Homemade:
        pass

    with pytest.raises(TypeError, match="load_model"):
        model_spec(Homemade())


def test_a_worker_that_filled_another_store_is_an_error():
    from napari_conch.distributed import check_store

    assert check_store({"done": 5, "store": "/c/a.zarr"}, "/c/a.zarr", "s.svs") == 5
    with pytest.raises(RuntimeError, match="decode tiles differently"):
        check_store({"done": 5, "store": "/c/b.zarr"}, "/c/a.zarr", "s.svs")


@pytest.mark.slow
def test_device_decoding_on_a_cluster_fills_the_store_a_worker_planned(tmp_path):
    """decode="device" depends on the workers' devices: a worker picks the store, every
    shard fills it, and the result is a local device-decoding run's."""
    from dask.distributed import Client, LocalCluster

    synth = nc.synthetic_slide(size=1536, seed=22)
    path = tmp_path / "jpeg.svs"
    levels = [lv.compute() for lv in synth.slide.levels]
    write_svs(path, levels, mpp=0.5, tile=256, compression="jpeg")
    model = nc.load_model(**SPEC)
    grid = nc.tile_grid(path, model, overlap=0.5)
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True) as cluster,
        Client(cluster) as client,
    ):
        result = nc.embed(
            path, model, grid, cache=tmp_path / "cache", client=client, decode="device"
        )
    assert result.complete and result.metadata["decode"].startswith("JPEG in full on cpu")
    local = nc.embed(path, model, grid, cache=tmp_path / "cache", decode="device")
    assert local.store_path == result.store_path and local.complete


@pytest.mark.slow
def test_a_users_own_model_class_embeds_on_a_cluster_as_it_does_locally(slide_paths, tmp_path):
    """A plain Python model — not registered, not made by load_model — is sent to the
    workers once; embed(client=) and embed_slides give a local run's features."""
    from dask.distributed import Client, LocalCluster
    from homemade import HomemadeModel

    model = HomemadeModel()
    path = slide_paths[0]
    grid = nc.tile_grid(path, model, overlap=0.5)
    local = embed(path, model, grid, cache=None)
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True) as cluster,
        Client(cluster) as client,
    ):
        one = embed(path, model, grid, cache=tmp_path / "one", client=client, batch_size=4)
        many = embed_slides(slide_paths[:2], model, client, cache=tmp_path / "many", overlap=0.5)
        workers = client.run(lambda: 1)
    assert len(workers) == 2
    assert one.complete and len(one) == len(grid) > 20
    np.testing.assert_allclose(one.features, local.features, rtol=0, atol=1e-6)
    np.testing.assert_allclose(many[0].features, local.features, rtol=0, atol=1e-6)
    grid_2 = nc.tile_grid(slide_paths[1], model, overlap=0.5)
    second = embed(slide_paths[1], model, grid_2, cache=None)
    np.testing.assert_allclose(many[1].features, second.features, rtol=0, atol=1e-6)
    assert many[0].metadata["model"]["name"] == "homemade"


def test_a_model_that_cannot_travel_says_what_to_do_instead():
    import threading

    from homemade import HomemadeModel

    from napari_conch.distributed import model_ref

    class Client:  # no cluster is needed to refuse
        def scatter(self, *args, **kwargs):
            raise AssertionError("an unpicklable model was scattered")

    model = HomemadeModel()
    model.lock = threading.Lock()
    with pytest.raises(TypeError, match=r"cannot be sent to the workers.*register_model"):
        model_ref(Client(), model)
    with pytest.raises(TypeError, match="not a usable model"):
        model_ref(Client(), object())
    assert model_ref(Client(), "conch_tiny") == {"name": "conch_tiny"}
