"""The reliability and security battery (docs/reliability.md): bad inputs, faults, load,
secrets and fuzzing. Each case has an id; the table in docs/reliability.md lists exactly
these ids (checked by ``test_the_reliability_table_lists_every_case``).

Cases already proven elsewhere in the suite are listed in ``ELSEWHERE`` with the test that
proves them, so the table stays complete without running the same thing twice.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import json
import logging
import os
import re
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import CountingModel
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from slides import pyramid, tissue_like, write_svs

import napari_conch as nc
from napari_conch import (
    CacheError,
    MissingMppError,
    PromptSet,
    SlideReadError,
)

ROOT = Path(__file__).resolve().parents[1]
CASES: dict[str, str] = {}  # case id → the test in this module that proves it
ELSEWHERE = {  # case id → test elsewhere in the suite that proves it
    "slide-wrong-extension": "test_slide_errors.py::test_wrong_extension_is_read_by_content",
    "cache-read-only": "test_engine.py::test_read_only_cache_says_what_to_do",
    "checkpoint-truncated": "test_loading.py::test_truncated_file_is_refused",
    "checkpoint-other-model": "test_loading.py::test_checkpoint_of_another_architecture_lists_keys",
    "checkpoint-runs-code": "test_loading.py::test_pickle_that_would_run_code_is_refused",
    "checkpoint-other-backend": "test_backends.py::test_wrong_checkpoints_are_refused_clearly",
    "fault-kill-9": "test_engine.py::test_kill_9_mid_run_then_resume_gives_identical_features",
    "fault-two-processes": (
        "test_engine.py::test_two_processes_embedding_one_slide_share_the_cache"
    ),
    "fault-cancel-anywhere": (
        "test_engine.py::test_cancel_at_any_point_then_resume_gives_the_same_features"
    ),
    "fuzz-tiling": "test_tiling.py::test_every_tissue_pixel_is_covered_by_a_kept_tile",
    "secret-settings": "test_widget.py::test_settings_are_remembered_but_never_the_token",
}
SECRET = "hf_SECRETtoken0987654321zyxwvu"


def case(*ids):
    def mark(function):
        for case_id in ids:
            assert case_id not in CASES, case_id
            CASES[case_id] = function.__name__
        return function

    return mark


@pytest.fixture(scope="module")
def good_svs(tmp_path_factory):
    path = tmp_path_factory.mktemp("good") / "good.svs"
    write_svs(path, pyramid(tissue_like(1024, 1024), (1, 4)), mpp=0.5)
    return path


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


def _embed(path, model, cache, **kwargs):
    slide = nc.open_slide(path, **kwargs)
    return nc.embed(slide, model, nc.tile_grid(slide, model), cache=cache)


def _stores(cache):
    return list(Path(cache).rglob("*.zarr")) if Path(cache).exists() else []


# -- bad slides -----------------------------------------------------------------------------


@case("slide-zero-byte", "slide-random-bytes")
def test_empty_and_random_files_fail_before_any_output(tmp_path, cache, tiny_model):
    empty = tmp_path / "empty.svs"
    empty.write_bytes(b"")
    noise = tmp_path / "noise.tif"
    noise.write_bytes(b"II*\x00" + np.random.default_rng(0).bytes(5000))
    for path, match in ((empty, "empty"), (noise, "Cannot open")):
        with pytest.raises(SlideReadError, match=match):
            _embed(path, tiny_model, cache)
    assert not _stores(cache)


@case("slide-truncated")
def test_truncated_slide_keeps_only_real_features(good_svs, tmp_path, cache, tiny_model):
    cut = tmp_path / "cut.svs"
    data = good_svs.read_bytes()
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(SlideReadError, match="truncated"):
        _embed(cut, tiny_model, cache)
    for store in _stores(cache):  # what was stored before the failure is real and finite
        emb = nc.Embeddings.open(store)
        assert not emb.complete
        assert np.isfinite(emb.features[emb.done]).all()


@case("slide-huge-declared")
def test_a_header_declaring_gigapixels_of_tiny_data_is_refused(tmp_path):
    import struct
    import zlib

    def chunk(kind, body):
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    path = tmp_path / "bomb.png"
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 10))
        + chunk(b"IEND", b"")
    )
    with pytest.raises(SlideReadError, match="tiled pyramidal TIFF"):
        nc.open_slide(path)


@case("slide-levels-disagree")
def test_a_pyramid_level_that_does_not_line_up_is_dropped(tmp_path, caplog):
    levels = pyramid(tissue_like(2048, 2048), (1, 4, 16))
    levels[1] = levels[1][:, :300]  # shrunk by 4 vertically but 6.8 horizontally
    path = tmp_path / "skewed.svs"
    write_svs(path, levels, mpp=0.5)
    with caplog.at_level(logging.WARNING):
        slide = nc.open_slide(path)
    assert slide.downsamples == [1.0, 16.0]
    assert "does not line up" in caplog.text
    np.testing.assert_array_equal(slide.read_region(0, 0, 64, 64, 1), levels[2][:64, :64])


@case("slide-origin-nonzero")
def test_a_slide_placed_away_from_the_origin_is_placed_consistently(tmp_path, tiny_model):
    from slides import write_ome_zarr

    from napari_conch._napari.layers import slide_layer_data
    from napari_conch.export import tile_table, to_geojson, to_ome_zarr
    from napari_conch.readback import read_ome_zarr

    levels = pyramid(tissue_like(1024, 1024), (1, 4))
    write_ome_zarr(tmp_path / "at0.zarr", levels, mpp=0.5)
    write_ome_zarr(tmp_path / "moved.zarr", levels, mpp=0.5, translation_um=(1000.0, 250.0))
    moved, at0 = nc.open_slide(tmp_path / "moved.zarr"), nc.open_slide(tmp_path / "at0.zarr")
    assert moved.origin_um == (1000.0, 250.0) and at0.origin_um == (0.0, 0.0)
    assert slide_layer_data(moved)[1]["translate"] == (1000.0, 250.0)  # the slide layer …
    prompts = PromptSet(["tumor", "stroma"])
    emb_a, emb_b = (nc.embed(s, tiny_model, cache=None) for s in (moved, at0))
    a = nc.zero_shot_segment(emb_a, tiny_model, prompts)
    b = nc.zero_shot_segment(emb_b, tiny_model, prompts)
    # … the maps, tile positions in µm and OME-Zarr exports move with it …
    assert np.subtract(a.translate_um, b.translate_um) == pytest.approx((1000.0, 250.0))
    assert a.scale_um == b.scale_um
    np.testing.assert_array_equal(a.labels, b.labels)
    table = tile_table(emb_a, a)
    np.testing.assert_allclose(table["y_um"] - table["y_px"] * 0.5, 1000.0)
    back, _ = read_ome_zarr(to_ome_zarr(a, tmp_path / "a.ome.zarr"))
    assert back.translate_um == pytest.approx(a.translate_um)
    # … while pixel positions (QuPath's GeoJSON) stay those of the image
    assert to_geojson(a)["features"] == to_geojson(b)["features"]


@case("mpp-missing")
def test_missing_pixel_size_stops_with_how_to_pass_it(tmp_path, cache, tiny_model):
    import tifffile

    path = tmp_path / "no mpp.tif"
    tifffile.imwrite(path, tissue_like(512, 512), tile=(256, 256), photometric="rgb")
    with pytest.raises(MissingMppError, match="mpp="):
        _embed(path, tiny_model, cache)
    assert not _stores(cache)
    assert _embed(path, tiny_model, cache, mpp=0.5).complete


@case("mpp-absurd")
@pytest.mark.parametrize("mpp", [0, -0.5, 1e6, float("nan"), float("inf")])
def test_absurd_pixel_sizes_are_refused(good_svs, mpp):
    with pytest.raises(ValueError, match="not a plausible"):
        nc.open_slide(good_svs, mpp=mpp)


@case("slide-all-white")
def test_an_all_white_slide_gives_empty_results_not_crashes(tmp_path, cache, tiny_model):
    path = tmp_path / "white.svs"
    write_svs(path, pyramid(np.full((1024, 1024, 3), 255, np.uint8), (1, 4)), mpp=0.5)
    emb = _embed(path, tiny_model, cache)
    assert len(emb) == 0 and emb.complete
    prompts = PromptSet(["tumor", "stroma"])
    seg = nc.zero_shot_segment(emb, tiny_model, prompts)
    assert seg.areas_mm2 == {"tumor": 0.0, "stroma": 0.0}
    assert len(nc.retrieve(emb, tiny_model, "tumor", k=5)) == 0
    with pytest.raises(ValueError, match="No embedded tissue tiles"):
        nc.classify_slide(emb, tiny_model, prompts, top_k=3)


@case("slide-one-tile", "path-unicode-spaces")
def test_one_tile_slide_at_a_unicode_path_with_spaces(tmp_path, tiny_model):
    import tifffile

    folder = tmp_path / "Präparate ü 2024" / "Fall #1 (ÄÖ)"
    folder.mkdir(parents=True)
    path = folder / "schnitt eins µ.tif"
    tifffile.imwrite(
        path,
        tissue_like(256, 256),
        tile=(256, 256),
        photometric="rgb",
        resolution=(20000, 20000),
        resolutionunit="CENTIMETER",
    )
    cache = tmp_path / "cache dir ü"
    emb = _embed(path, tiny_model, cache)
    assert len(emb) == 1 and emb.complete
    again = nc.Embeddings.open(emb.store_path)
    np.testing.assert_array_equal(again.features, emb.features)
    seg = nc.zero_shot_segment(emb, tiny_model, PromptSet(["tumor", "stroma"]))
    assert seg.labels.shape == (1, 1)


# -- the cache ------------------------------------------------------------------------------


@case("cache-missing")
def test_a_missing_cache_folder_is_created(good_svs, tmp_path, tiny_model):
    cache = tmp_path / "does" / "not" / "exist yet"
    assert _embed(good_svs, tiny_model, cache).store_path.is_relative_to(cache)


@case("cache-uncreatable")
def test_a_cache_that_cannot_be_created_says_what_to_do(good_svs, tmp_path, tiny_model):
    blocker = tmp_path / "a file"
    blocker.write_text("not a folder")
    with pytest.raises(CacheError, match="Cannot create the embedding cache"):
        _embed(good_svs, tiny_model, blocker / "cache")


@case("cache-disk-full")
def test_disk_full_during_a_write_keeps_finished_tiles_and_resumes(
    good_svs, cache, tiny_model, monkeypatch
):
    from zarr.storage import LocalStore

    reference = _embed(good_svs, tiny_model, None)
    real_set = LocalStore.set
    calls = {"features": 0}

    async def full_disk_set(self, key, value, *args, **kwargs):
        if key.startswith("features/"):
            calls["features"] += 1
            if calls["features"] >= 3:  # the third batch finds the disk full
                raise OSError(errno.ENOSPC, "No space left on device")
        return await real_set(self, key, value, *args, **kwargs)

    monkeypatch.setattr(LocalStore, "set", full_disk_set)
    slide = nc.open_slide(good_svs)
    grid = nc.tile_grid(slide, tiny_model)
    with pytest.raises(CacheError, match="disk is full") as info:
        nc.embed(slide, tiny_model, grid, cache=cache, batch_size=2)
    assert "run again to resume" in str(info.value)
    monkeypatch.setattr(LocalStore, "set", real_set)  # space freed
    (path,) = _stores(cache)
    partial = nc.Embeddings.open(path)
    assert 0 < partial.n_done < len(grid)  # two batches kept, the failed one not marked done
    counting = CountingModel(tiny_model)
    resumed = nc.embed(slide, counting, grid, cache=cache)
    assert counting.tiles == len(grid) - partial.n_done
    np.testing.assert_array_equal(resumed.features, reference.features)


@case("export-fails-midway")
def test_a_failed_export_leaves_no_half_written_file(tmp_path, tiny_model, monkeypatch):
    import tifffile

    from napari_conch.export import export_all

    synth = nc.synthetic_slide(size=1024, seed=4)
    emb = nc.embed(synth.slide, tiny_model, cache=None)
    seg = nc.zero_shot_segment(emb, tiny_model, PromptSet(["tumor", "stroma"]))
    out = tmp_path / "out"
    formats = ("geojson", "ome-zarr", "ome-tiff", "csv")
    export_all(seg, out, "case", emb=emb, formats=formats)
    before = (out / "case.labels.ome.tif").read_bytes()
    real_write = tifffile.TiffWriter.write

    def full_disk(self, *args, **kwargs):
        real_write(self, *args, **kwargs)  # some bytes reach the file, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tifffile.TiffWriter, "write", full_disk)
    with pytest.raises(OSError, match="No space left"):
        export_all(seg, out, "case", emb=emb, formats=formats)
    assert (out / "case.labels.ome.tif").read_bytes() == before  # the old export is intact
    assert not [p.name for p in out.iterdir() if ".partial" in p.name]
    assert json.loads((out / "case.geojson").read_text())["type"] == "FeatureCollection"


# -- prompts --------------------------------------------------------------------------------


@case("prompt-empty")
@pytest.mark.parametrize("classes", [[], [""], ["   "], {"tumor": []}, {"": ["x"]}])
def test_empty_prompts_are_refused(classes):
    with pytest.raises(ValueError):
        PromptSet(classes)


@case("prompt-10000-chars")
def test_a_10000_character_prompt_is_truncated_with_a_warning(tiny_model, caplog):
    long = ("tumor cells " * 834).strip()  # 10,007 characters
    with caplog.at_level(logging.WARNING):
        prompts = PromptSet({"tumor": [long], "stroma": ["stroma"]})
        emb = tiny_model.encode_texts([long])
    assert prompts.classes["tumor"] == [long]
    assert emb.shape == (1, tiny_model.embed_dim) and np.isfinite(emb).all()
    assert "truncated" in caplog.text


@case("prompt-control-characters", "prompt-duplicates")
def test_control_characters_and_duplicates(caplog):
    with caplog.at_level(logging.WARNING):
        prompts = PromptSet({"tumor": ["tu\x07mor\x1b[31m", "tumor", "tumor"]})
    assert all("\x07" not in s and "\x1b" not in s for s in prompts.classes["tumor"])
    assert "control characters" in caplog.text and "more than once" in caplog.text
    with pytest.raises(ValueError, match="appears twice"):
        PromptSet(["Tumor", "tumor "])


@case("prompt-json-wrong-shape")
@pytest.mark.parametrize(
    "text",
    [
        "[]",
        '{"0": {"classnames": 3}}',
        '{"0": {"classnames": {"a": ["a"]}, "templates": "CLASSNAME"}}',
        '{"a": {"classnames": {"x": ["x"]}}, "b": {"classnames": {"y": ["y"]}}}',
        '{"0": {"classnames": {"a": [1, 2]}}}',
        "{",
        "",
    ],
)
def test_prompt_json_of_the_wrong_shape_is_refused(text):
    with pytest.raises((ValueError, TypeError, FileNotFoundError)):
        PromptSet.from_json(text)


# -- faults ---------------------------------------------------------------------------------


def _slow_tiny_plugin():
    from distributed.diagnostics.plugin import WorkerPlugin

    class SlowTinyPlugin(WorkerPlugin):
        """Registers ``slow_tiny`` (the tiny CONCH, slowed down) on every worker, including
        workers the nanny restarts after a kill."""

        name = "napari-conch-slow-tiny"

        def setup(self, worker):
            register_slow_tiny()

    return SlowTinyPlugin()


def register_slow_tiny():
    """``slow_tiny``: the tiny CONCH (same weights and cache entry), slowed down."""
    from helpers import CountingModel

    def build(**_):
        inner = nc.load_model("conch_tiny", checkpoint="random", seed=0)
        return CountingModel(inner, delay=0.1)

    nc.register_model("slow_tiny", build, overwrite=True)


@case("fault-dask-worker-killed")
@pytest.mark.slow
def test_a_killed_dask_worker_loses_no_tiles(good_svs, tmp_path, tiny_model):
    from dask.distributed import Client, LocalCluster

    second = tmp_path / "second.svs"
    write_svs(second, pyramid(tissue_like(1024, 1024, seed=5), (1, 4)), mpp=0.5)
    paths = [good_svs, second]
    cache = tmp_path / "cache"
    result: dict = {}
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True) as cluster,
        Client(cluster) as client,
    ):
        client.register_plugin(_slow_tiny_plugin())

        def run():
            try:
                result["embs"] = nc.embed_slides(
                    paths, {"name": "slow_tiny"}, client, cache=cache, shard_tiles=3, batch_size=1
                )
            except Exception as exc:  # reported below
                result["error"] = exc

        thread = threading.Thread(target=run)
        thread.start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not _done_tiles(cache):
            time.sleep(0.1)
        victims = client.run(os.getpid)
        os.kill(next(iter(victims.values())), signal.SIGKILL)  # mid-job
        thread.join(timeout=300)
    assert "error" not in result, result.get("error")
    for path, emb in zip(paths, result["embs"], strict=True):
        assert emb.complete  # nothing lost
        fresh = _embed(path, tiny_model, None)
        np.testing.assert_array_equal(emb.features, fresh.features)  # nothing wrong


def _done_tiles(cache) -> int:
    """Tiles finished so far, read while workers create and fill stores: a folder renamed
    under the scan (a store appearing) just means "look again"."""
    try:
        stores = _stores(cache)
    except FileNotFoundError:
        return 0
    total = 0
    for store in stores:
        with contextlib.suppress(Exception):  # a store being created
            total += nc.Embeddings.open(store).n_done
    return total


# -- load -----------------------------------------------------------------------------------


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@case("load-100-slides")
@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="needs Linux /proc")
def test_100_slides_in_one_process_leak_neither_memory_nor_files(tmp_path, tiny_model):
    folder = tmp_path / "slides"
    folder.mkdir()
    paths = []
    for i in range(100):
        path = folder / f"slide {i:03d}.svs"
        write_svs(path, pyramid(tissue_like(512, 512, seed=i), (1, 4)), mpp=0.5)
        paths.append(path)
    cache = tmp_path / "cache"

    def run(batch):
        for path in batch:
            slide = nc.open_slide(path)
            emb = nc.embed(slide, tiny_model, nc.tile_grid(slide, tiny_model), cache=cache)
            assert emb.complete
            nc.zero_shot_segment(emb, tiny_model, PromptSet(["tumor", "stroma"]))
            slide.close()

    run(paths[:10])  # warm up: imports, allocator pools, the text cache
    gc.collect()
    fds, rss = _open_fds(), _rss_mb()
    run(paths[10:])
    gc.collect()
    assert _open_fds() - fds <= 2, "file handles leak per slide"
    assert _rss_mb() - rss < 150, f"memory grew by {_rss_mb() - rss:.0f} MB over 90 slides"
    assert len(_stores(cache)) == 100


@case("load-1000-prompts")
@pytest.mark.slow
def test_1000_prompt_changes_keep_memory_and_caches_bounded(tiny_model, tmp_path):
    from napari_conch.models import base

    synth = nc.synthetic_slide(size=1024, seed=2)
    emb = nc.embed(synth.slide, tiny_model, nc.tile_grid(synth.slide, tiny_model), cache=None)
    gc.collect()
    rss = _rss_mb()
    limit = base._TEXT_CACHE_SIZE
    try:
        base._TEXT_CACHE_SIZE = 200  # small, so 1,000 prompts must evict
        for i in range(1000):
            sim = nc.similarity_map(emb, tiny_model, text=f"tumor region number {i}")
            assert np.isfinite(sim.values[~np.isnan(sim.values)]).all()
    finally:
        base._TEXT_CACHE_SIZE = limit
    assert len(tiny_model._text_cache) <= 200
    gc.collect()
    assert _rss_mb() - rss < 100


# -- secrets --------------------------------------------------------------------------------


@case("secret-token")
def test_a_token_never_reaches_logs_caches_exports_or_errors(
    tmp_path, monkeypatch, caplog, tiny_checkpoint, good_svs
):
    import huggingface_hub
    from huggingface_hub import constants

    from napari_conch.export import export_all

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_TOKEN", SECRET)
    seen = []

    def fake_download(repo_id, filename, token=None, **kwargs):
        seen.append(token)
        return str(tiny_checkpoint)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    cache = tmp_path / "cache"
    out = tmp_path / "out"
    with caplog.at_level(logging.DEBUG):
        # passed as an argument …
        model = nc.load_model("conch_tiny", checkpoint="hf_hub:MahmoodLab/conch", token=SECRET)
        emb = _embed(good_svs, model, cache)
        seg = nc.zero_shot_segment(emb, model, PromptSet(["tumor", "stroma"]))
        export_all(seg, out, "case", emb=emb, formats=("geojson", "ome-zarr", "ome-tiff", "csv"))
        # … and in the environment, through a failing download
        monkeypatch.setattr(huggingface_hub, "hf_hub_download", _gated_download)
        with pytest.raises(nc.WeightsNotFoundError) as info:
            nc.load_model("conch_tiny", checkpoint="hf_hub:other/repo")
    assert seen == [SECRET]  # it did reach the hub client, and only that
    places = {"logs": caplog.text, "error": str(info.value), "model": repr(model)}
    places["model info"] = json.dumps(model.info(), default=str)
    for folder in (cache, out):
        for path in folder.rglob("*"):
            if path.is_file():
                places[str(path)] = path.read_bytes().decode("latin-1")
    leaks = [where for where, text in places.items() if SECRET in text or SECRET[3:] in text]
    assert not leaks, leaks


def _gated_download(repo_id, filename, token=None, **kwargs):
    from huggingface_hub import errors

    exc = errors.GatedRepoError.__new__(errors.GatedRepoError)
    Exception.__init__(exc, f"403 for token {token}")
    raise exc


# -- fuzzing --------------------------------------------------------------------------------

_OUR_ERRORS = (ValueError, TypeError)
_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=40)


@case("fuzz-prompt-parsing")
@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.lists(_text, max_size=5),
        st.dictionaries(_text, st.lists(_text, max_size=4), max_size=4),
    ),
    st.one_of(st.none(), st.lists(_text, max_size=3)),
)
def test_prompt_sets_are_built_or_refused_cleanly(classes, templates):
    try:
        prompts = PromptSet(classes, templates)
    except _OUR_ERRORS:
        return
    assert prompts.names
    for name, synonyms in prompts.classes.items():
        assert name.strip() and synonyms
        assert not any(ch in s for s in synonyms for ch in "\x00\x07\x1b")
    assert all("CLASSNAME" in t for t in prompts.templates)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=20,
)
_prompt_shaped = st.fixed_dictionaries(
    {
        "0": st.fixed_dictionaries(
            {"classnames": _json | st.dictionaries(_text, st.lists(_text, max_size=3))},
            optional={"templates": _json | st.lists(_text, max_size=3)},
        )
    }
)


@case("fuzz-prompt-json")
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(_json, _prompt_shaped))
def test_the_prompt_json_reader_never_fails_uncleanly(data):
    try:
        prompts = PromptSet.from_json(json.dumps(data))
    except _OUR_ERRORS:
        return
    again = PromptSet.from_json(json.dumps(prompts.to_json()))  # what it reads, it writes
    assert again.classes == prompts.classes and again.templates == prompts.templates


# -- the table ------------------------------------------------------------------------------


def test_the_reliability_table_lists_every_case():
    doc = (ROOT / "docs" / "reliability.md").read_text(encoding="utf-8")
    listed = re.findall(r"^\| `([a-z0-9-]+)` \|", doc, flags=re.MULTILINE)
    assert len(listed) == len(set(listed)), "a case is listed twice"
    assert set(listed) == set(CASES) | set(ELSEWHERE)
    assert not set(CASES) & set(ELSEWHERE)
    for case_id, where in ELSEWHERE.items():
        module, name = where.split("::")
        source = (ROOT / "tests" / module).read_text(encoding="utf-8")
        assert f"def {name}(" in source, f"{case_id}: {where} does not exist"
    count = re.search(r"(\d+) cases", doc)
    assert count and int(count.group(1)) == len(listed)
