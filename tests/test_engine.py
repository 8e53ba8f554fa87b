"""The inference engine and the embedding cache: results, order, resume, cancel, concurrency."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import CountingModel
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from slides import write_svs

import napari_conch as nc
from napari_conch import CacheError, CancelToken, Embeddings, embed, tile_grid
from napari_conch.store import EmbeddingStore, cache_root

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory):
    synth = nc.synthetic_slide(size=2048, seed=7)
    path = tmp_path_factory.mktemp("engine") / "synthetic.svs"
    write_svs(path, [level.compute() for level in synth.slide.levels], mpp=0.5, tile=256)
    return path


@pytest.fixture(scope="module")
def grid(slide_path, tiny_model):
    return tile_grid(slide_path, tiny_model, overlap=0.5)


@pytest.fixture(scope="module")
def reference(slide_path, tiny_model, grid):
    """Features computed tile by tile, straight from the slide and the model."""
    slide = nc.open_slide(slide_path)
    tiles = [
        slide.read_region(int(y), int(x), grid.read_px, grid.read_px, grid.level)
        for y, x in grid.coords
    ]
    return np.concatenate([tiny_model.encode_images(t) for t in tiles])


def test_features_equal_direct_model_calls(slide_path, tiny_model, grid, reference, tmp_path):
    emb = embed(slide_path, tiny_model, grid, cache=tmp_path)
    assert emb.complete and len(emb) == len(grid) > 20
    np.testing.assert_array_equal(emb.features, reference)
    np.testing.assert_array_equal(emb.coords, grid.coords)
    assert (
        emb.metadata["model"]["name"] == "conch_tiny" and emb.metadata["model"]["trained"] is False
    )
    assert emb.metadata["slide"]["mpp"] == 0.5


@pytest.mark.parametrize(
    "options",
    [
        {"batch_size": 1, "workers": 1},
        {"batch_size": 5, "workers": 3},
        {"batch_size": 64, "workers": 2},
        {"batch_size": 3, "region": (600.0, 300.0, 800.0, 700.0)},
    ],
)
def test_results_do_not_depend_on_batch_size_threads_or_order(
    slide_path, tiny_model, grid, reference, options
):
    emb = embed(slide_path, tiny_model, grid, cache=None, **options)
    np.testing.assert_array_equal(emb.features, reference)


def test_second_call_reuses_the_cache(slide_path, tiny_model, grid, tmp_path):
    first = CountingModel(tiny_model)
    embed(slide_path, first, grid, cache=tmp_path)
    assert first.tiles == len(grid)
    again = CountingModel(tiny_model)
    emb = embed(slide_path, again, grid, cache=tmp_path)
    assert again.tiles == 0 and emb.complete


def test_viewport_tiles_come_first_and_the_rest_follow_outward(slide_path, tiny_model, grid):
    region = (250.0, 250.0, 450.0, 450.0)  # µm
    inside = set(grid.tiles_in_box_um(region).tolist())
    order: list[int] = []
    embed(
        slide_path,
        tiny_model,
        grid,
        cache=None,
        region=region,
        batch_size=2,
        on_batch=lambda positions, feats: order.extend(positions.tolist()),
    )
    assert set(order[: len(inside)]) == inside
    centre = np.array([350.0, 350.0]) / grid.mpp
    rest = order[len(inside) :]
    distance = np.hypot(*(grid.coords[rest] + grid.tile_px / 2 - centre).T)
    assert (np.diff(distance) >= -1e-9).all()


def test_region_only_computes_just_the_region(slide_path, tiny_model, grid, reference, tmp_path):
    region = (250.0, 250.0, 450.0, 450.0)
    emb = embed(slide_path, tiny_model, grid, cache=tmp_path, region=region, region_only=True)
    inside = grid.tiles_in_box_um(region)
    assert not emb.complete and emb.n_done == len(inside)
    np.testing.assert_array_equal(emb.features[inside], reference[inside])
    assert np.isnan(np.delete(emb.features, inside, axis=0)).all()


def test_progress_reports_done_total_and_rate(slide_path, tiny_model, grid):
    seen = []
    embed(
        slide_path,
        tiny_model,
        grid,
        cache=None,
        batch_size=4,
        progress=lambda d, t, r: seen.append((d, t, r)),
    )
    assert seen[0] == (0, len(grid), 0.0)
    assert seen[-1][0] == seen[-1][1] == len(grid)
    assert all(b[0] >= a[0] for a, b in itertools.pairwise(seen))
    assert all(r > 0 for _, _, r in seen[1:])


def _cancel_after(token, tiles):
    def progress(done, total, rate):
        if done >= tiles:
            token.cancel()

    return progress


def test_cancel_keeps_a_consistent_cache_and_resume_finishes(
    slide_path, tiny_model, grid, reference, tmp_path
):
    token = CancelToken()
    emb = embed(
        slide_path,
        tiny_model,
        grid,
        cache=tmp_path,
        batch_size=3,
        cancel=token,
        progress=_cancel_after(token, 6),
    )
    assert emb.cancelled and not emb.complete and 6 <= emb.n_done < len(grid)
    reopened = Embeddings.open(emb.store_path)
    np.testing.assert_array_equal(reopened.done, emb.done)
    np.testing.assert_array_equal(reopened.features[reopened.done], reference[reopened.done])
    assert np.isnan(reopened.features[~reopened.done]).all()
    counting = CountingModel(tiny_model)
    resumed = embed(slide_path, counting, grid, cache=tmp_path)
    assert resumed.complete and counting.tiles == len(grid) - emb.n_done
    np.testing.assert_array_equal(resumed.features, reference)


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.integers(1, 7), st.integers(0, 40))
def test_cancel_at_any_point_then_resume_gives_the_same_features(
    slide_path, tiny_model, grid, reference, tmp_path_factory, batch_size, stop_after
):
    cache = tmp_path_factory.mktemp("cancel")
    token = CancelToken()
    embed(
        slide_path,
        tiny_model,
        grid,
        cache=cache,
        batch_size=batch_size,
        cancel=token,
        progress=_cancel_after(token, stop_after),
    )
    resumed = embed(slide_path, tiny_model, grid, cache=cache)
    np.testing.assert_array_equal(resumed.features, reference)


def _run_worker(slide_path, cache, delay):
    return subprocess.Popen(
        [
            sys.executable,
            str(HERE / "embed_worker.py"),
            str(slide_path),
            str(cache),
            str(delay),
            "0.5",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(HERE)},
    )


@pytest.mark.slow
def test_kill_9_mid_run_then_resume_gives_identical_features(
    slide_path, tiny_model, grid, reference, tmp_path
):
    proc = _run_worker(slide_path, tmp_path, delay=0.15)
    done = 0
    for line in proc.stdout:
        done = int(line.split()[0]) if line[0].isdigit() else done
        if done >= 12:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    store_path = next(tmp_path.rglob("*.zarr"))
    partial = Embeddings.open(store_path)
    # the cache writer runs behind the model by at most a few batches: those are lost, the
    # rest is intact and marked done
    assert 0 < partial.n_done < len(grid)
    np.testing.assert_array_equal(partial.features[partial.done], reference[partial.done])
    counting = CountingModel(tiny_model)
    resumed = embed(slide_path, counting, grid, cache=tmp_path)
    assert resumed.complete and counting.tiles == len(grid) - partial.n_done
    assert resumed.features.dtype == np.float32
    np.testing.assert_array_equal(resumed.features, reference)  # byte for byte
    assert not list(store_path.rglob("*.partial"))


@pytest.mark.slow
def test_two_processes_embedding_one_slide_share_the_cache(slide_path, grid, reference, tmp_path):
    a = _run_worker(slide_path, tmp_path, delay=0.05)
    b = _run_worker(slide_path, tmp_path, delay=0.05)
    outs = [p.communicate(timeout=300) for p in (a, b)]
    assert a.returncode == 0 and b.returncode == 0, outs
    tiles = [int(out.strip().splitlines()[-1].split()[1]) for out, _ in outs]
    assert sum(tiles) < 2 * len(grid)  # each skipped tiles the other had finished
    (store_path,) = list(tmp_path.rglob("*.zarr"))
    emb = Embeddings.open(store_path)
    assert emb.complete
    np.testing.assert_array_equal(emb.features, reference)


def test_embeddings_open_without_the_slide_and_project(slide_path, tiny_model, grid, tmp_path):
    emb = embed(slide_path, tiny_model, grid, cache=tmp_path)
    opened = Embeddings.open(emb.store_path)
    assert opened.grid.signature() == grid.signature()
    np.testing.assert_array_equal(opened.coords, grid.coords)
    with pytest.raises(ValueError, match="needs the model"):
        opened.projected()
    projected = opened.projected(tiny_model)
    np.testing.assert_allclose(np.linalg.norm(projected, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(projected, emb.projected())
    other = nc.load_model("conch_tiny", checkpoint="random", seed=1)
    with pytest.raises(ValueError, match="made with weights"):
        opened.projected(other)


def test_float16_storage(slide_path, tiny_model, grid, reference, tmp_path):
    emb = embed(slide_path, tiny_model, grid, cache=tmp_path, dtype="float16")
    full = embed(slide_path, tiny_model, grid, cache=tmp_path)
    assert emb.store_path != full.store_path
    np.testing.assert_allclose(emb.features, reference, rtol=2e-3, atol=2e-3)


def test_other_weights_never_reuse_the_cache(slide_path, tiny_model, grid, tmp_path):
    other = CountingModel(nc.load_model("conch_tiny", checkpoint="random", seed=1))
    a = embed(slide_path, tiny_model, grid, cache=tmp_path)
    b = embed(slide_path, other, grid, cache=tmp_path)
    assert a.store_path != b.store_path and other.tiles == len(grid)
    assert not np.array_equal(a.features, b.features)


def test_a_store_with_a_wrong_signature_is_set_aside(
    slide_path, tiny_model, grid, reference, tmp_path
):
    import zarr

    emb = embed(slide_path, tiny_model, grid, cache=tmp_path)
    group = zarr.open_group(str(emb.store_path), mode="r+")
    signature = dict(group.attrs["signature"])
    signature["model"] = {**signature["model"], "weights": "0" * 32}
    group.attrs["signature"] = signature
    group["features"][0] = np.zeros(
        group["features"].shape[1]
    )  # stale data that must not be reused
    counting = CountingModel(tiny_model)
    fresh = embed(slide_path, counting, grid, cache=tmp_path)
    assert counting.tiles == len(grid)
    np.testing.assert_array_equal(fresh.features, reference)
    assert list(emb.store_path.parent.glob("*.stale-*"))


def test_cache_location(monkeypatch, tmp_path):
    monkeypatch.setenv("NAPARI_CONCH_CACHE", str(tmp_path / "env-cache"))
    assert cache_root("auto") == tmp_path / "env-cache"
    monkeypatch.delenv("NAPARI_CONCH_CACHE")
    assert "napari-conch" in str(cache_root("auto"))
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(CacheError, match="Cannot create the embedding cache"):
        cache_root(blocker / "cache")


def test_read_only_cache_says_what_to_do(monkeypatch, tmp_path, slide_path, tiny_model, grid):
    # CI runs as root, for whom chmod cannot make a folder read-only; simulate the OS answer.
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, m: False if Path(p) == tmp_path else real(p, m))
    with pytest.raises(CacheError, match=r"read-only.*cache=None"):
        embed(slide_path, tiny_model, grid, cache=tmp_path)


def test_grid_of_another_slide_is_refused(slide_path, tiny_model):
    other = nc.synthetic_slide(size=1024).slide
    with pytest.raises(ValueError, match="grid was made for"):
        embed(slide_path, tiny_model, tile_grid(other, tiny_model), cache=None)


class ColourModel:
    """A model of our own (numpy only): a tile's feature is its mean colour, repeated."""

    name = "colour"
    input_size = 64
    target_mpp = 1.0
    embed_dim = 6
    logit_scale = 4.6

    def encode_images(self, images):
        x = np.asarray(images, np.float32)
        return np.concatenate([x.mean(axis=(1, 2)), x.std(axis=(1, 2))], axis=1) / 255.0

    def project(self, features, normalize=True):
        f = np.asarray(features, np.float32)
        return f / np.linalg.norm(f, axis=1, keepdims=True) if normalize else f

    def encode_texts(self, texts, normalize=True):
        return np.ones((len(texts), 6), np.float32)


def test_any_protocol_model_runs_through_the_engine(slide_path, tmp_path):
    model = ColourModel()
    emb = embed(slide_path, model, cache=tmp_path)
    assert emb.complete and emb.features.shape[1] == 6
    slide = nc.open_slide(slide_path)
    y, x = emb.coords[0]
    tile = slide.read_region(int(y), int(x), emb.grid.read_px, emb.grid.read_px, emb.grid.level)
    np.testing.assert_allclose(emb.features[0], model.encode_images(tile[None])[0], rtol=1e-6)


def test_a_model_returning_the_wrong_shape_is_reported(slide_path):
    class Broken(ColourModel):
        def encode_images(self, images):
            return np.zeros((1, 6), np.float32)

    with pytest.raises(ValueError, match="returned shape"):
        embed(slide_path, Broken(), cache=None, batch_size=4)


def test_store_write_marks_done_only_with_features(slide_path, tiny_model, grid, tmp_path):
    slide = nc.open_slide(slide_path)
    store = EmbeddingStore.open_or_create(tmp_path, slide, tiny_model, grid)
    assert not store.done_mask().any()
    store.write(np.array([5, 2]), np.ones((2, tiny_model.embed_dim), np.float32))
    assert store.done_mask()[[2, 5]].all() and store.done_mask().sum() == 2
    emb = nc.Embeddings.open(store.path)
    np.testing.assert_array_equal(emb.features[[2, 5]], 1.0)


def test_embed_steps_yields_the_live_embeddings_first_and_returns_them(slide_path, tmp_path):
    """The one engine path: the first step is the run's Embeddings (grid, store, what is
    done), filled as batches land; the run returns that same object."""
    from napari_conch import Embeddings
    from napari_conch.pipeline import Progress, embed_steps

    model = nc.load_model("colour-toy")
    grid = tile_grid(slide_path, model)
    steps = embed_steps(slide_path, model, grid, cache=tmp_path, batch_size=16)
    live = next(steps)
    assert isinstance(live, Embeddings) and live.grid is not None and live.n_done == 0
    assert live.store_path is not None and live.store_path.exists()
    seen = []
    while True:
        try:
            step = next(steps)
        except StopIteration as finished:
            result = finished.value
            break
        assert isinstance(step, Progress)
        seen.append(live.n_done)
        assert live.n_done == step.done  # filled as the batches land
    assert result is live and live.complete and seen[-1] == len(grid)
    # closed after its first step, a run computes nothing (how cluster code plans work)
    fresh = embed_steps(slide_path, model, grid, cache=tmp_path / "other")
    planned = next(fresh)
    fresh.close()
    assert planned.n_done == 0 and not Embeddings.open(planned.store_path).done.any()


def test_the_napari_layer_leaves_the_cache_to_the_engine():
    from pathlib import Path

    folder = Path(nc.__file__).parent / "_napari"
    paths = list(folder.rglob("*.py"))
    assert any(p.parent.name == "panels" for p in paths)  # the tabs are looked at too
    for path in paths:
        text = path.read_text()
        for word in ("EmbeddingStore", "slide_fingerprint", "store import", "cache_root("):
            assert word not in text, (path.name, word)


def test_what_a_caller_does_to_a_batchs_features_never_reaches_the_cache(
    slide_path, tiny_model, grid, reference, tmp_path
):
    """Cache writes run behind the model on their own thread: the features a callback sees
    are not the ones queued for the cache."""

    def scribble(positions, features):
        features[:] = -1.0

    emb = embed(slide_path, tiny_model, grid, cache=tmp_path, on_batch=scribble, batch_size=3)
    np.testing.assert_array_equal(emb.features, reference)
    np.testing.assert_array_equal(Embeddings.open(emb.store_path).features, reference)


def test_default_cpu_batches_are_whole_pieces_of_what_the_model_computes_at_once(tmp_path):
    """PLIP computes 16 tiles at a time on the CPU: a default batch of 8 would be padded to
    16, computing 8 tiles for nothing."""
    toy = nc.load_model("colour-toy")

    class InPiecesOf16(type(toy)):
        cpu_micro_batch = 16
        sizes: list

        def encode_images(self, images):
            self.sizes.append(len(images))
            return super().encode_images(images)

    model = InPiecesOf16()
    model.sizes = []
    synth = nc.synthetic_slide(size=1024, seed=3)
    grid = nc.tile_grid(synth.slide, model, tissue=False)
    assert len(grid) > 16
    nc.embed(synth.slide, model, grid, cache=None)
    assert set(model.sizes[:-1]) == {16}
    toy_sizes = []
    toy.encode_images = lambda images, real=toy.encode_images: (
        toy_sizes.append(len(images)) or real(images)
    )
    nc.embed(synth.slide, toy, grid, cache=None)
    assert toy_sizes[0] == 8  # one tile at a time: the usual 8
