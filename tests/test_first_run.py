"""A newcomer's first minutes: the demo without weights, commands that check their inputs
before any model is built, errors in the command line's own words."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from slides import pyramid, tissue_like, write_svs

import napari_conch as nc
from napari_conch.cli import main
from napari_conch.models import registry


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """``napari-conch demo`` as the README runs it: no weights anywhere."""
    out = tmp_path_factory.mktemp("demo") / "napari-conch-demo"
    with pytest.MonkeyPatch.context() as mp:
        for name in ("NAPARI_CONCH_CHECKPOINT", "NAPARI_CONCH_TOKENIZER", "HF_TOKEN"):
            mp.delenv(name, raising=False)
        proc = subprocess.run(
            [sys.executable, "-m", "napari_conch.cli", "demo", "-o", str(out)],
            capture_output=True,
            text=True,
            timeout=300,
        )
    return proc, out


def test_demo_without_weights_runs_the_colour_toy_and_scores_it(demo):
    proc, out = demo
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "No CONCH weights" in proc.stdout and "colour toy" in proc.stdout
    assert "UNTRAINED" not in proc.stdout + proc.stderr  # a toy, not an untrained CONCH
    dice = {}
    for line in proc.stdout.split("Dice per class")[1].splitlines()[1:5]:
        name, value = line.split()
        dice[name] = float(value)
    assert set(dice) == {"tumor", "stroma", "necrosis", "mean"}
    assert min(dice.values()) > 0.9, dice
    saved = json.loads((out / "synthetic-colour-toy.agreement.json").read_text())
    assert saved["mean_dice"] == pytest.approx(dice["mean"], abs=5e-4)


def test_demo_writes_every_export_it_advertises(demo):
    _, out = demo
    stem = out / "synthetic-colour-toy"
    for suffix in (
        ".geojson",
        ".tiles.geojson",
        ".ome.zarr",
        ".labels.ome.tif",
        ".similarity.ome.tif",
        ".tiles.csv",
        ".tiles.parquet",
        ".summary.json",
    ):
        assert stem.with_name(stem.name + suffix).exists(), suffix
    summary = json.loads((out / "synthetic-colour-toy.summary.json").read_text())
    assert summary["model"] == "colour-toy" and summary["similarity_queries"] == ["tumor"]
    for path in summary["files"].values():
        assert (out.parent / path).exists() or __import__("pathlib").Path(path).exists()
    with tifffile.TiffFile(out / "synthetic-slide.ome.tif") as tif:
        assert tif.is_ome and len(tif.series[0].levels) >= 2
        assert tif.series[0].shape == (4096, 4096, 3)
    import pandas as pd

    table = pd.read_parquet(out / "synthetic-colour-toy.tiles.parquet")
    assert "similarity: tumor" in table.columns and len(table) > 1000


def test_every_demo_export_passes_its_formats_validator(demo):
    from validators import check_export_folder

    _, out = demo
    checked = {p.name for p in check_export_folder(out)}
    assert {
        "synthetic-colour-toy.ome.zarr",
        "synthetic-colour-toy.labels.ome.tif",
        "synthetic-colour-toy.similarity.ome.tif",
        "synthetic-slide.ome.tif",
        "synthetic-colour-toy.geojson",
        "synthetic-colour-toy.tiles.geojson",
    } <= checked


def test_demo_ends_with_what_to_do_next(demo):
    proc, out = demo
    tail = proc.stdout.split("Next:")[1]
    assert f"napari-conch view {out}/synthetic-slide.ome.tif --results {out}" in tail
    assert "NAPARI_CONCH_CHECKPOINT" in tail and "huggingface.co/MahmoodLab/conch" in tail


def test_the_demo_folder_reads_back_as_the_results_it_wrote(demo):
    from napari_conch.readback import read_results

    _, out = demo
    seg, sim = read_results(out)
    assert seg.class_names == ["tumor", "stroma", "necrosis"]
    assert seg.metadata["model"]["name"] == "colour-toy"
    assert sim.queries == ["tumor"]
    summary = json.loads((out / "synthetic-colour-toy.summary.json").read_text())
    assert list(seg.scale_um) == summary["scale_um"]
    assert list(seg.translate_um) == summary["translate_um"]
    with tifffile.TiffFile(out / "synthetic-colour-toy.labels.ome.tif") as tif:
        np.testing.assert_array_equal(tif.series[0].asarray(), seg.labels)


def test_demo_output_folder_is_ignored_by_git():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    ignore = (root / ".gitignore").read_text().splitlines()
    assert "/napari-conch-demo/" in ignore


# -- checks before any model is built ---------------------------------------------------------


@pytest.fixture
def no_model(monkeypatch):
    """Fails the test if a command gets as far as building a model."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was built before the inputs were checked")

    monkeypatch.setattr("napari_conch.models.load_model", refuse)


def test_a_missing_slide_is_reported_without_loading_torch(tmp_path):
    code = (
        "import sys; from napari_conch.cli import main; "
        f"rc = main(['segment', {str(tmp_path / 'nope.svs')!r}, '--classes', 'a', '-o', "
        f"{str(tmp_path / 'out')!r}]); print(rc, 'torch' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.split() == ["1", "False"], proc.stderr
    assert "No such file" in proc.stderr and "nope.svs" in proc.stderr


@pytest.fixture(scope="module")
def svs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("first-run")
    levels = pyramid(tissue_like(512, 512, seed=2))
    write_svs(folder / "case.svs", levels, mpp=0.5, tile=256)
    tifffile.imwrite(folder / "no-mpp.tif", levels[0], photometric="rgb")  # no pixel size
    (folder / "broken.svs").write_bytes(b"not a slide")
    return folder


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["segment", "{d}/broken.svs", "--classes", "a", "-o", "{t}"], "broken.svs"),
        (["segment", "{d}/no-mpp.tif", "--classes", "a", "-o", "{t}"], "pass --mpp 0.25"),
        (["segment", "{d}/case.svs", "--classes", "a", "-o", "{d}/case.svs"], "is a file"),
        (["segment", "{d}/case.svs", "--prompts", "{t}/none.json", "-o", "{t}"], "none.json"),
        (["similarity", "{d}/case.svs", "--text", " ", "-o", "{t}"], "--text is empty"),
        (["classify", "{d}/case.svs", "--classes", "a", "--model", "nope"], "Unknown model"),
        (["evaluate", "{t}/no-dataset", "--classes", "a"], "No such dataset"),
    ],
)
def test_inputs_are_checked_before_a_model_is_built(
    svs, tmp_path, no_model, capsys, args, expected
):
    args = [a.format(d=svs, t=tmp_path) for a in args]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert expected in err, err
    assert "a model was built" not in err


def test_an_output_folder_under_a_file_is_reported_first(svs, tmp_path, no_model, capsys):
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "sub"
    assert main(["segment", str(svs / "case.svs"), "--classes", "a", "-o", str(out)]) == 1
    assert "Cannot write into" in capsys.readouterr().err


def test_a_missing_tokenizer_stops_before_any_tile_is_embedded(svs, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NAPARI_CONCH_TOKENIZER", str(tmp_path / "gone.json"))

    def no_embedding(*args, **kwargs):
        raise AssertionError("a tile was embedded before the tokenizer was checked")

    monkeypatch.setattr("napari_conch.engine.embed", no_embedding)
    args = ["segment", str(svs / "case.svs"), "--classes", "tumor", "-o", str(tmp_path)]
    assert main([*args, "--model", "conch_tiny", "--checkpoint", "random"]) == 1
    err = capsys.readouterr().err
    assert "gone.json does not exist" in err and "--tokenizer /path/to/" in err
    assert "tokenizer=" not in err  # the command line's words, not Python's


def test_prompts_a_model_cannot_read_stop_before_any_tile_is_embedded(
    svs, tmp_path, monkeypatch, capsys
):
    def no_embedding(*args, **kwargs):
        raise AssertionError("a tile was embedded before the prompts were checked")

    monkeypatch.setattr("napari_conch.engine.embed", no_embedding)
    slide = str(svs / "case.svs")
    toy = ["--model", "colour-toy", "--cache", "none"]
    args = ["segment", slide, "--classes", "tumor", "--background", "backgrnd", "-o", str(tmp_path)]
    assert main([*args, *toy]) == 1
    assert "'backgrnd.' names none of them" in capsys.readouterr().err
    fresh = tmp_path / "new-folder"
    assert main(["similarity", slide, "--text", "mitosis", "-o", str(fresh), *toy]) == 1
    assert "'mitosis' names none of them" in capsys.readouterr().err
    assert not fresh.exists()  # a failed command leaves no empty output folder behind


def test_parquet_without_pyarrow_is_reported_before_any_work(svs, tmp_path, no_model, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "pyarrow" else real(name, *a)
    )
    args = ["segment", str(svs / "case.svs"), "--classes", "a", "-o", str(tmp_path)]
    assert main([*args, "--formats", "geojson", "parquet"]) == 1
    assert main(["demo", "-o", str(tmp_path)]) == 1


def test_parquet_comes_with_a_plain_install():
    from importlib import metadata

    base = [r for r in metadata.requires("napari-conch") if "extra ==" not in r]
    assert any(r.startswith("pyarrow") for r in base)


def test_image_only_commands_do_not_need_the_tokenizer(svs, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NAPARI_CONCH_TOKENIZER", str(tmp_path / "gone.json"))
    tiny = ["--model", "conch_tiny", "--checkpoint", "random", "--cache", str(tmp_path)]
    assert main(["embed", str(svs / "case.svs"), *tiny]) == 0
    assert "case.svs: 4/4 tiles" in capsys.readouterr().out


def test_the_tokenizer_comes_with_a_plain_install():
    """conch-fork is a dependency, so CONCH's text side works without extra steps."""
    path = registry.model_entry("conch").check_text()
    assert path.name == "conch_byte_level_bpe_uncased.json" and path.is_file()
    registry.check_text_side("colour-toy")  # models without a text check always pass


def test_cli_errors_name_command_line_options(tmp_path, capsys):
    assert main(["demo", "--model", "conch_tiny", "-o", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "pass --checkpoint random" in err and "checkpoint='random'" not in err
    toy = ["demo", "--model", "colour-toy", "--checkpoint", "w.bin", "-o", str(tmp_path)]
    assert main(toy) == 1
    assert "leave out --checkpoint" in capsys.readouterr().err


def test_suggested_commands_run_as_the_user_called_us(monkeypatch):
    from napari_conch.cli import steps

    monkeypatch.setattr(sys, "argv", [".venv/bin/napari-conch", "demo"])
    monkeypatch.setattr("shutil.which", lambda name: None)
    assert steps.program_name() == ".venv/bin/napari-conch"
    monkeypatch.setattr(sys, "argv", ["/x/napari_conch/cli/__init__.py", "demo"])
    assert steps.program_name() == "napari-conch"


# -- the colour toy ---------------------------------------------------------------------------


def test_colour_toy_is_a_registered_protocol_model():
    from napari_conch.models import check_model

    model = nc.load_model("colour-toy")
    check_model(model)
    assert model.name == "colour-toy" and "not a pathology model" in repr(model)
    assert "colour-toy" in nc.available_models()
    with pytest.raises(ValueError, match="has no weights"):
        nc.load_model("colour-toy", checkpoint="weights.bin")


def test_colour_toy_accepts_every_image_form_alike():
    model = nc.load_model("colour-toy")
    rng = np.random.default_rng(0)
    tiles = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    reference = model.encode_images(tiles)
    np.testing.assert_allclose(model.encode_images(tiles.transpose(0, 3, 1, 2)), reference)
    np.testing.assert_allclose(model.encode_images(tiles / 255.0), reference, atol=1e-3)
    np.testing.assert_allclose(model.encode_images(tiles[0]), reference[:1])


def test_colour_toy_knows_only_the_synthetic_classes():
    model = nc.load_model("colour-toy")
    emb = model.encode_texts(["an H&E image of carcinoma.", "white space"])
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-6)
    assert emb[0] @ model.encode_texts(["tumor"])[0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="not a pathology model"):
        model.encode_texts(["mitotic figure"])


# -- a clean repository -----------------------------------------------------------------------


def test_no_large_files_are_tracked_outside_the_images_folder():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=root, capture_output=True, text=True, timeout=60
    )
    if listed.returncode != 0:
        pytest.skip("not a git checkout (an unpacked sdist)")
    big = [
        name
        for name in listed.stdout.split("\0")
        if name
        and not name.startswith("docs/images/")
        and (root / name).is_file()
        and (root / name).stat().st_size > 1_000_000
    ]
    assert not big, f"files over 1 MB are tracked: {big}"
