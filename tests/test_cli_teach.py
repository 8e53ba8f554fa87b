"""``napari-conch teach``, ``segment --classifier`` and ``evaluate --annotations`` from a
shell, with the colour toy on a synthetic slide written as an OME-TIFF."""

from __future__ import annotations

import json

import numpy as np
import pytest
from slides import planted_squares

import napari_conch as nc
from napari_conch.cli import main

NAMES = {"tumor": "class A", "stroma": "class B", "necrosis": "class C"}


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    from napari_conch.export import slide_to_ome_tiff

    folder = tmp_path_factory.mktemp("teach-cli")
    synth = nc.synthetic_slide(size=2048, mpp=0.5, seed=3)
    slide_path = folder / "case.ome.tif"
    slide_to_ome_tiff(synth.slide, slide_path)
    annotations = folder / "case.geojson"
    annotations.write_text(json.dumps(planted_squares(synth, NAMES)), encoding="utf-8")
    readable = folder / "readable.geojson"
    readable.write_text(json.dumps(planted_squares(synth)), encoding="utf-8")
    return folder, slide_path, annotations, readable


def _toy(folder):
    return ["--model", "colour-toy", "--overlap", "0.75", "--cache", str(folder / "cache")]


def test_teach_then_segment_with_the_classifier(case, capsys):
    folder, slide, annotations, _ = case
    out = folder / "clf"
    assert main(["teach", str(slide), "--annotations", str(annotations), "-o", str(out),
                 *_toy(folder)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "linear probe on colour-toy" in printed and "class A" in printed
    assert "held-out agreement (2 spatial folds" in printed
    report = json.loads((out / "teach.json").read_text())
    assert report["held_out"]["class A"]["dice"] >= 0.95
    classifier = nc.load_classifier(out / "classifier.npz")
    assert sorted(classifier.class_names) == sorted(NAMES.values())

    maps = folder / "maps"
    assert main(["segment", str(slide), "--classifier", str(out / "classifier.npz"), "-o",
                 str(maps), *_toy(folder)]) == 0  # fmt: skip
    summary = json.loads((maps / "case.summary.json").read_text())
    assert sorted(summary["classes"]) == sorted(NAMES.values())
    geojson = json.loads((maps / "case.geojson").read_text())
    assert {f["properties"]["name"] for f in geojson["features"]} == set(NAMES.values())
    back = nc.read_annotations(maps / "case.geojson")  # our export reads as annotations
    assert set(back.class_names) == set(NAMES.values())


def test_segment_refuses_a_classifier_of_another_model(case, tmp_path, capsys):
    folder, slide, annotations, _ = case
    out = tmp_path / "clf"
    assert main(["teach", str(slide), "--annotations", str(annotations), "-o", str(out),
                 *_toy(folder)]) == 0  # fmt: skip
    capsys.readouterr()
    code = main(["segment", str(slide), "--classifier", str(out), "-o", str(tmp_path / "m"),
                 "--model", "conch", "--checkpoint", "random"])  # fmt: skip
    assert code == 1
    err = capsys.readouterr().err
    assert "taught on colour-toy" in err
    assert not (tmp_path / "m" / "case.geojson").exists()
    assert main(["segment", str(slide), "--classifier", str(out), "--background", "glass",
                 "-o", str(tmp_path / "m"), *_toy(folder)]) == 1  # fmt: skip
    assert "not a class of the classifier" in capsys.readouterr().err


def test_evaluate_with_annotations_prints_zero_and_few_shot(case, tmp_path, capsys):
    folder, slide, _, readable = case
    target = tmp_path / "agreement.json"
    assert main(["evaluate", str(slide), "--annotations", str(readable), "--classes", "tumor",
                 "stroma", "necrosis", "-o", str(target), *_toy(folder)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "zero-shot" in printed and "few-shot (held out)" in printed
    payload = json.loads(target.read_text())
    assert payload["zero-shot"]["tumor"]["dice"] == pytest.approx(1.0)
    assert payload["few-shot (held out)"]["held_out"] is True
    assert np.isfinite(payload["few-shot (held out)"]["mean_dice"])


def test_teach_refuses_what_is_not_annotations(case, tmp_path, capsys):
    folder, slide, _, _ = case
    bad = tmp_path / "bad.geojson"
    bad.write_text("{}", encoding="utf-8")
    assert main(["teach", str(slide), "--annotations", str(bad), "-o", str(tmp_path / "o"),
                 *_toy(folder)]) == 1  # fmt: skip
    assert "not annotations" in capsys.readouterr().err
