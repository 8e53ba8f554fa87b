"""The ``napari-conch`` command."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from napari_conch.cli import main


def test_console_script_help():
    exe = shutil.which("napari-conch") or shutil.which(
        "napari-conch", path=str(sys.prefix) + "/bin"
    )
    assert exe, "the napari-conch console script is not installed"
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    assert "info" in out.stdout and "demo" in out.stdout


@pytest.mark.parametrize(
    "command",
    [
        "info",
        "demo",
        "view",
        "embed",
        "segment",
        "similarity",
        "teach",
        "classify",
        "retrieve",
        "evaluate",
    ],
)
def test_every_command_has_help_with_examples(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert "example" in capsys.readouterr().out


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "usage" in capsys.readouterr().out


def test_info_reports_missing_weights_without_crashing(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "CONCH weights: not found" in out
    assert "huggingface.co/MahmoodLab/conch" in out
    assert "CONCH tokenizer:" in out and "conch_byte_level_bpe_uncased.json" in out


def test_info_reports_weights_from_the_environment(tiny_checkpoint, monkeypatch, capsys):
    monkeypatch.setenv("NAPARI_CONCH_CHECKPOINT", str(tiny_checkpoint))
    assert main(["info"]) == 0
    assert f"CONCH weights: {tiny_checkpoint} ($NAPARI_CONCH_CHECKPOINT)" in capsys.readouterr().out


def test_info_describes_slides_and_fails_for_unreadable_ones(tmp_path, capsys):
    from slides import pyramid, tissue_like, write_svs

    write_svs(tmp_path / "s.svs", pyramid(tissue_like(512, 768)), mpp=0.5, tile=256)
    (tmp_path / "bad.svs").write_text("no")
    assert main(["info", str(tmp_path / "s.svs")]) == 0
    out = capsys.readouterr().out
    assert "vendor: aperio" in out and "0.5 µm/px (SVS MPP)" in out
    assert "level 1: 128 × 192 px (downsample 4, 2 µm/px)" in out
    assert main(["info", str(tmp_path / "s.svs"), str(tmp_path / "bad.svs")]) == 1
    assert "bad.svs: Cannot open" in capsys.readouterr().out


def test_demo_on_an_untrained_model_says_so(tmp_path, capsys):
    code = main(["demo", "--model", "conch_tiny", "--checkpoint", "random", "-o", str(tmp_path)])
    assert code == 0
    captured = capsys.readouterr()
    assert "UNTRAINED MODEL" in captured.err
    assert "[UNTRAINED" in captured.out
    assert (tmp_path / "UNTRAINED.txt").exists()
    summary = json.loads((tmp_path / "ihc-conch_tiny.summary.json").read_text())
    assert summary["trained"] is False and "not a result" in summary["note"]
    for name in (
        "ihc-conch_tiny.geojson",
        "ihc-conch_tiny.tiles.geojson",
        "ihc-conch_tiny.ome.zarr",
        "ihc-conch_tiny.labels.ome.tif",
        "ihc-conch_tiny.tiles.csv",
        "ihc-slide.ome.tif",
    ):
        assert (tmp_path / name).exists(), name
    geojson = json.loads((tmp_path / "ihc-conch_tiny.geojson").read_text())
    assert geojson["properties"]["napari_conch"]["trained"] is False


def test_demo_with_trained_weights_has_no_banner(tiny_checkpoint, tmp_path, capsys):
    assert (
        main(
            [
                "demo",
                "--model",
                "conch_tiny",
                "--checkpoint",
                str(tiny_checkpoint),
                "-o",
                str(tmp_path),
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert "UNTRAINED" not in captured.err + captured.out
    assert not (tmp_path / "UNTRAINED.txt").exists()


def test_demo_with_a_missing_checkpoint_fails_clearly(tmp_path, capsys):
    assert main(["demo", "--checkpoint", str(tmp_path / "missing.bin"), "-o", str(tmp_path)]) == 1
    assert "missing.bin does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_pipeline_check_on_untrained_full_size_conch(capsys, tmp_path):
    """`demo --checkpoint random`: the full CONCH model, untrained, on the real-tissue sample;
    it says so loudly and everywhere."""
    assert main(["demo", "--checkpoint", "random", "-o", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "UNTRAINED MODEL" in captured.err
    assert "ConchModel(name='conch', UNTRAINED" in captured.out
    assert "slide call (MI-Zero, top 3):" in captured.out and "[UNTRAINED" in captured.out
    assert (tmp_path / "ihc-conch.tiles.parquet").exists()
    assert (tmp_path / "UNTRAINED.txt").exists()


@pytest.mark.slow
def test_the_tutorial_runs_end_to_end(tmp_path):
    """docs/tutorial.py, the scripting guide's notebook, runs as written (tiny model)."""
    from pathlib import Path

    tutorial = Path(__file__).resolve().parents[1] / "docs" / "tutorial.py"
    env = {
        **__import__("os").environ,
        "NAPARI_CONCH_TUTORIAL_MODEL": "conch_tiny",
        "NAPARI_CONCH_TUTORIAL_OUT": str(tmp_path),
    }
    out = subprocess.run(
        [sys.executable, str(tutorial)], capture_output=True, text=True, timeout=600, env=env
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "UNTRAINED" in out.stdout  # the tests run it without CONCH weights
    for name in (
        "synthetic.geojson",
        "synthetic.ome.zarr",
        "synthetic.labels.ome.tif",
        "synthetic.tiles.csv",
    ):
        assert (tmp_path / name).exists(), name


def test_the_cli_reference_lists_every_command():
    from pathlib import Path

    from napari_conch.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    page = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()
    missing = [c for c in commands if f"`{c}" not in page]
    assert not missing, f"docs/cli.md does not describe {missing}"
