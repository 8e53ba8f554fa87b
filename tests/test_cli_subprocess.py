"""The command line run as users run it (subprocesses) on the synthetic sample; every output
file is checked."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from slides import write_svs

import napari_conch as nc

pytestmark = pytest.mark.slow
TINY = ["--model", "conch_tiny", "--checkpoint", "random"]


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    paths = []
    for seed in (1, 2):
        synth = nc.synthetic_slide(size=2048, seed=seed)
        path = folder / f"case {seed}.svs"
        write_svs(path, [lv.compute() for lv in synth.slide.levels], mpp=0.5, tile=256)
        paths.append(path)
    return paths


def run(*args, cache):
    exe = shutil.which("napari-conch") or shutil.which("napari-conch", path=f"{sys.prefix}/bin")
    env = {**os.environ, "NAPARI_CONCH_CACHE": str(cache)}
    out = subprocess.run(
        [exe, *map(str, args)], capture_output=True, text=True, timeout=600, env=env
    )
    return out


def test_embed_then_segment_uses_the_cache(slides, tmp_path):
    cache = tmp_path / "cache"
    out = run("embed", *slides, *TINY, "--overlap", "0.5", cache=cache)
    assert out.returncode == 0, out.stderr
    assert "UNTRAINED MODEL" in out.stderr
    assert len(list(cache.rglob("*.zarr"))) == 2
    result = tmp_path / "out"
    out = run(
        "segment",
        slides[0],
        *TINY,
        "--overlap",
        "0.5",
        "--classes",
        "tumor",
        "stroma",
        "necrosis",
        "background",
        "--background",
        "background",
        "-o",
        result,
        "--formats",
        "geojson",
        "geojson-tiles",
        "ome-zarr",
        "ome-tiff",
        "parquet",
        cache=cache,
    )
    assert out.returncode == 0, out.stderr
    stem = "case 1"
    for suffix in (
        ".geojson",
        ".tiles.geojson",
        ".ome.zarr",
        ".labels.ome.tif",
        ".tiles.parquet",
        ".summary.json",
    ):
        assert (result / f"{stem}{suffix}").exists(), suffix
    summary = json.loads((result / f"{stem}.summary.json").read_text())
    assert summary["classes"] == ["tumor", "stroma", "necrosis"] and summary["trained"] is False
    geojson = json.loads((result / f"{stem}.geojson").read_text())
    assert {f["properties"]["classification"]["name"] for f in geojson["features"]} <= set(
        summary["classes"]
    )


def test_similarity_classify_and_retrieve(slides, tmp_path):
    cache = tmp_path / "cache"
    result = tmp_path / "sim"
    out = run("similarity", slides[0], *TINY, "--text", "necrosis", "-o", result, cache=cache)
    assert out.returncode == 0, out.stderr
    import pandas as pd
    import tifffile

    stem = "case 1"
    with tifffile.TiffFile(result / f"{stem}.similarity.ome.tif") as tif:
        assert tif.is_ome and np.isfinite(tif.asarray()).any()
    table = pd.read_csv(result / f"{stem}.similarity.csv")
    assert "similarity: necrosis" in table.columns
    calls = tmp_path / "calls.csv"
    prompts = tmp_path / "prompts.json"
    nc.PromptSet({"tumor": ["tumor"], "necrosis": ["necrosis"]}).to_json(prompts)
    out = run(
        "classify", *slides, *TINY, "--prompts", prompts, "--top-k", "3", "-o", calls, cache=cache
    )
    assert out.returncode == 0, out.stderr
    frame = pd.read_csv(calls)
    assert list(frame["slide"]) == [str(p) for p in slides] and set(frame["call"]) <= {
        "tumor",
        "necrosis",
    }
    assert (frame["top_k"] == 3).all() and not frame["trained"].any()
    hits = tmp_path / "hits.csv"
    out = run("retrieve", *slides, *TINY, "--text", "tumor", "-k", "4", "-o", hits, cache=cache)
    assert out.returncode == 0, out.stderr
    frame = pd.read_csv(hits)
    assert len(frame) == 4 and (np.diff(frame["score"]) <= 0).all()
    minus = tmp_path / "minus.csv"
    out = run(
        "retrieve",
        *slides,
        *TINY,
        "--text",
        "tumor",
        "--negative",
        "necrosis",
        "-k",
        "4",
        "-o",
        minus,
        cache=cache,
    )
    assert out.returncode == 0, out.stderr
    assert not np.allclose(pd.read_csv(minus)["score"], frame["score"])  # ranked otherwise


def test_evaluate_on_a_folder_dataset(tmp_path):
    rng = np.random.default_rng(0)
    for name, colour in {"tumor": (112, 62, 152), "stroma": (226, 142, 178)}.items():
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(3):
            tile = np.clip(np.array(colour) + rng.normal(0, 5, (64, 64, 3)), 0, 255).astype(
                np.uint8
            )
            Image.fromarray(tile).save(tmp_path / "data" / name / f"{i}.png")
    metrics = tmp_path / "metrics.json"
    out = run(
        "evaluate",
        tmp_path / "data",
        *TINY,
        "--classes",
        "tumor",
        "stroma",
        "-o",
        metrics,
        cache=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    payload = json.loads(metrics.read_text())
    assert payload["n"] == 6 and len(payload["confusion"]) == 2 and payload["trained"] is False
    assert "balanced_accuracy" in out.stdout


def test_failures_exit_non_zero_with_a_message(tmp_path):
    out = run(
        "segment", tmp_path / "missing.svs", *TINY, "--classes", "a", "-o", tmp_path, cache=tmp_path
    )
    assert out.returncode == 1 and "missing.svs" in out.stderr
    out = run("segment", tmp_path / "x.svs", *TINY, "-o", tmp_path, cache=tmp_path)  # no prompts
    assert out.returncode == 2 and "--prompts" in out.stderr


def test_segment_compares_models(slides, tmp_path):
    from helpers import make_plip_folder, make_quiltnet_folder

    plip = make_plip_folder(tmp_path / "plip")
    quilt = make_quiltnet_folder(tmp_path / "quilt")
    result = tmp_path / "compare"
    out = run(
        "segment",
        slides[0],
        "--model",
        "plip,quiltnet",
        "--checkpoint",
        f"{plip},{quilt}",
        "--classes",
        "tumor",
        "stroma",
        "--formats",
        "geojson",
        "csv",
        "-o",
        result,
        cache=tmp_path / "cache",
    )
    assert out.returncode == 0, out.stderr
    assert "model comparison" in out.stdout
    for model in ("plip", "quiltnet"):
        summary = json.loads((result / f"case 1.{model}.summary.json").read_text())
        assert summary["model"] == model and summary["classes"] == ["tumor", "stroma"]
        assert (result / f"case 1.{model}.geojson").is_file()
        assert (result / f"case 1.{model}.tiles.csv").is_file()
    table = (result / "comparison.csv").read_text().splitlines()
    assert table[0] == "slide,model,tumor,stroma" and len(table) == 3
    # a mismatched list of checkpoints is refused before any work
    out = run(
        "segment",
        slides[0],
        "--model",
        "plip,quiltnet",
        "--checkpoint",
        "a,b,c",
        "--classes",
        "x",
        "-o",
        result,
        cache=tmp_path / "cache",
    )
    assert out.returncode == 1 and "3 values for 2 models" in out.stderr
