"""Renamed API: every old name still works for one release, warns, and names its
replacement (docs/api-changes.md lists them all)."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import numpy as np
import pytest
from helpers import ColourModel

import napari_conch as nc

DOC = Path(__file__).resolve().parents[1] / "docs/api-changes.md"
CLASSES = ["tumor", "stroma", "necrosis"]

MOVED = [
    ("napari_conch.zeroshot", "SegmentationResult", "napari_conch.results", "SegmentationResult"),
    ("napari_conch.zeroshot", "class_colors", "napari_conch.colors", "class_colors"),
    ("napari_conch.zeroshot", "cells_from_tiles", "napari_conch.maps", "cells_from_tiles"),
    ("napari_conch.zeroshot", "decide", "napari_conch.maps", "decide"),
    ("napari_conch.zeroshot", "encode_prompts", "napari_conch.prompts", "encode_prompts"),
    ("napari_conch.zeroshot", "text_queries", "napari_conch.queries", "text_queries"),
    ("napari_conch.engine", "embed_steps", "napari_conch.pipeline", "embed_steps"),
    ("napari_conch.engine", "Progress", "napari_conch.pipeline", "Progress"),
    ("napari_conch.engine", "decode_plan", "napari_conch.decoding", "decode_plan"),
    ("napari_conch.engine", "decode_reduction", "napari_conch.decoding", "decode_reduction"),
    ("napari_conch.slide", "SUPPORTED_SUFFIXES", "napari_conch.readers", "SUPPORTED_SUFFIXES"),
    ("napari_conch.slide", "MPP_UNKNOWN_NOTE", "napari_conch.formats.files", "MPP_UNKNOWN_NOTE"),
    ("napari_conch.synthetic", "CLASS_COLOURS", "napari_conch.synthetic", "CLASS_COLORS"),
    ("napari_conch.synthetic", "BACKGROUND_COLOUR", "napari_conch.synthetic", "BACKGROUND_COLOR"),
    ("napari_conch.models", "ColourToyModel", "napari_conch.models.color_toy", "ColorToyModel"),
    ("napari_conch.models.colour_toy", "ColourToyModel", "napari_conch.models", "ColorToyModel"),
    ("napari_conch.models.colour_toy", "COLOUR_TOY", "napari_conch.models.color_toy", "COLOR_TOY"),
    ("napari_conch.models.protocol", "check_model", "napari_conch.protocol", "check_model"),
]


@pytest.mark.parametrize(("old_module", "old", "new_module", "new"), MOVED)
def test_moved_and_renamed_names_still_import_with_a_warning(old_module, old, new_module, new):
    expected = getattr(importlib.import_module(new_module), new)
    with pytest.warns(DeprecationWarning, match=rf"{re.escape(old)} is deprecated; use .*{new}"):
        value = getattr(importlib.import_module(old_module), old)
    assert value is expected


def test_every_deprecation_is_in_the_changes_document():
    text = DOC.read_text(encoding="utf-8")
    lines = text.splitlines()
    for old_module, old, _new_module, new in MOVED:
        assert any(old_module in line and old in line and new in line for line in lines), old
    renamed = ("Retrieval.query", 'hit["…"]', "similarity=", "model_spec=", "source=")
    for old in (*renamed, "(done, total)"):
        assert old in text, old


@pytest.fixture(scope="module")
def toy():
    synth = nc.synthetic_slide(size=1024, seed=5)
    model = ColourModel()
    grid = nc.tile_grid(synth.slide, model, overlap=0.5)
    return synth.slide, model, nc.embed(synth.slide, model, grid, cache=None)


def test_background_and_min_confidence_by_position(toy):
    _, model, emb = toy
    new = nc.zero_shot_segment(emb, model, CLASSES, background="background", min_confidence=0.2)
    with pytest.warns(DeprecationWarning, match="by position"):
        old = nc.zero_shot_segment(emb, model, CLASSES, "background", 0.2)
    np.testing.assert_array_equal(old.labels, new.labels)
    with pytest.raises(TypeError, match="multiple values"):
        nc.zero_shot_segment(emb, model, CLASSES, "background", background="background")


def test_top_k_exemplar_and_k_by_position(toy):
    _, model, emb = toy
    with pytest.warns(DeprecationWarning, match="top_k"):
        call = nc.classify_slide(emb, model, CLASSES, 3)
    assert call.top_k == 3
    with pytest.warns(DeprecationWarning, match=r"k to retrieve\(\)"):
        hits = nc.retrieve(emb, model, "tumor", 4)
    assert len(hits) == 4
    with pytest.warns(DeprecationWarning, match="exemplar"):
        sim = nc.similarity_map(emb, model, None, [(200.0, 200.0)])
    assert sim.queries == ["exemplar"]


def test_retrieve_source_keyword_and_query_attribute(toy):
    _, model, emb = toy
    with pytest.warns(DeprecationWarning, match=r"retrieve\(source=...\)"):
        found = nc.retrieve(source=emb, model=model, text="tumor", k=3)
    assert len(found) == 3
    with pytest.warns(DeprecationWarning, match="Retrieval.queries"):
        assert found.query == found.queries == ["tumor"]


def test_evidence_tiles_read_as_dicts_with_a_warning(toy):
    _, model, emb = toy
    call = nc.classify_slide(emb, model, CLASSES, top_k=2)
    hit = call.evidence[call.call][0]
    assert isinstance(hit, nc.Hit)
    with pytest.warns(DeprecationWarning, match=r"hit.score"):
        assert hit["score"] == hit.score
    with pytest.warns(DeprecationWarning), pytest.raises(KeyError):
        hit["nothing"]


def test_export_keywords(toy, tmp_path):
    from napari_conch.export import tile_table, to_ome_zarr
    from napari_conch.readback import read_ome_zarr

    _, model, emb = toy
    seg = nc.zero_shot_segment(emb, model, CLASSES)
    sim = nc.similarity_map(emb, model, text="tumor")
    with pytest.warns(DeprecationWarning, match="similarities="):
        to_ome_zarr(seg, tmp_path / "a.ome.zarr", similarity=sim)
    assert [s.queries for s in read_ome_zarr(tmp_path / "a.ome.zarr")[1]] == [["tumor"]]
    with pytest.warns(DeprecationWarning, match="by position"):
        frame = tile_table(emb, seg, [sim])
    assert "similarity: tumor" in frame.columns


def test_dense_region_and_embed_cache_by_position(toy, tmp_path):
    slide, model, emb = toy
    region = (100.0, 100.0, 300.0, 300.0)
    with pytest.warns(DeprecationWarning, match="region"):
        old = nc.dense_segment(slide, model, CLASSES, region)
    new = nc.dense_segment(slide, model, CLASSES, region=region)
    np.testing.assert_array_equal(old.labels, new.labels)
    with pytest.warns(DeprecationWarning, match="cache"):
        again = nc.embed(slide, model, emb.grid, None)
    np.testing.assert_array_equal(again.features, emb.features)


def test_two_argument_progress_callbacks_still_work(toy):
    slide, model, emb = toy
    seen = []
    with pytest.warns(DeprecationWarning, match=r"\(done, total, rate\)"):
        nc.embed(slide, model, emb.grid, cache=None, progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (len(emb), len(emb))
    three = []
    nc.dense_tokens(slide, model, (100, 100, 200, 200), progress=lambda *a: three.append(a))
    assert len(three[-1]) == 3 and three[-1][0] == three[-1][1]


def test_embed_slides_model_spec_keyword(tmp_path):
    with pytest.warns(DeprecationWarning, match="model_spec"):
        assert nc.embed_slides([], model_spec="colour-toy", cache=tmp_path) == []


def test_renamed_attribute_and_method():
    from napari_conch.models.color_toy import ColorToyModel
    from napari_conch.models.weights import WeightsSource

    with pytest.warns(DeprecationWarning, match="ColorToyModel.COLORS"):
        assert ColorToyModel.COLOURS is ColorToyModel.COLORS
    source = WeightsSource(None, "random")
    with pytest.warns(DeprecationWarning, match="description"):
        assert source.describe() == source.description == "random (untrained) weights"
