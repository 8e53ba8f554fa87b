"""Bring your own model: the registry, entry points, and a protocol object end to end."""

from __future__ import annotations

import importlib.metadata
import logging

import numpy as np
import pytest
from helpers import ColourModel

import napari_conch as nc
from napari_conch import UnknownModelError
from napari_conch.models import registry


@pytest.fixture
def colour_registered():
    nc.register_model("colour", lambda checkpoint=None: ColourModel(), aliases=("rgb",))
    yield
    registry.unregister_model("colour")


def test_registered_model_loads_by_name_and_alias(colour_registered):
    assert "colour" in nc.available_models()
    assert isinstance(nc.load_model("colour"), ColourModel)
    assert isinstance(nc.load_model(" RGB "), ColourModel)


def test_a_custom_model_runs_through_engine_and_analyses(colour_registered):
    synth = nc.synthetic_slide(size=1024, seed=3)
    model = nc.load_model("colour")
    grid = nc.tile_grid(synth.slide, model)
    emb = nc.embed(synth.slide, model, grid, cache=None)
    seg = nc.zero_shot_segment(emb, model, nc.PromptSet(["tumor", "stroma", "necrosis"]))
    assert seg.metadata["model"]["name"] == "colour-toy"  # the model's own name, not the key
    # the colour model knows the planted regions: tile centres get their region's class
    centres = grid.coords * synth.slide.mpp + grid.tile_um / 2
    truth = np.array([synth.label_at_um(y, x) for y, x in centres])
    got = seg.labels[grid.indices[:, 0], grid.indices[:, 1]]
    assert (got[truth > 0] == truth[truth > 0]).mean() > 0.7  # boundary tiles mix classes
    hits = nc.retrieve(emb, model, "tumor", k=3)
    assert len(hits) == 3


def test_decorator_duplicates_and_overwrite():
    @nc.register_model("mine", description="a test model")
    def build(checkpoint=None, device="auto"):
        return ColourModel()

    try:
        assert registry.model_entry("mine").description == "a test model"
        with pytest.raises(ValueError, match="already registered"):
            nc.register_model("mine", build)
        with pytest.raises(ValueError, match="already registered"):
            nc.register_model("conch", build)  # built-ins are protected too
        nc.register_model("mine", build, overwrite=True)
    finally:
        registry.unregister_model("mine")
    with pytest.raises(UnknownModelError, match="register_model"):
        nc.load_model("mine")


def test_factories_that_misbehave_are_named():
    nc.register_model("broken", lambda checkpoint=None: object())
    nc.register_model("narrow", lambda: ColourModel())
    try:
        with pytest.raises(TypeError, match=r"factory of model 'broken'.*lacks name"):
            nc.load_model("broken")
        assert isinstance(nc.load_model("narrow"), ColourModel)  # defaults are not forced on it
        with pytest.raises(TypeError, match="does not accept checkpoint"):
            nc.load_model("narrow", checkpoint="x.bin")
    finally:
        registry.unregister_model("broken")
        registry.unregister_model("narrow")


class _EntryPoint:
    def __init__(self, name, value, loader):
        self.name, self.value, self._loader = name, value, loader

    def load(self):
        return self._loader()


def _fail():
    raise ImportError("package half-installed")


def test_entry_points_register_models_and_broken_ones_are_logged(monkeypatch, caplog):
    points = [
        _EntryPoint("third_party", "pkg.models:build", lambda: lambda **kw: ColourModel()),
        _EntryPoint("broken_pkg", "broken.models:build", _fail),
    ]

    def fake_entry_points(group=None):
        return points if group == registry.ENTRY_POINT_GROUP else []

    monkeypatch.setattr(importlib.metadata, "entry_points", fake_entry_points)
    monkeypatch.setattr(registry, "_ENTRY_POINTS_LOADED", False)
    try:
        with caplog.at_level(logging.WARNING):
            names = nc.available_models()
        assert "third_party" in names and "broken_pkg" not in names
        assert "half-installed" in caplog.text
        assert isinstance(nc.load_model("third_party"), ColourModel)
    finally:
        registry.unregister_model("third_party")


def test_protocol_is_all_that_is_asked(tmp_path):
    """A minimal numpy-only object (no torch, no attributes beyond the protocol) works."""

    class Minimal:
        name, input_size, target_mpp, embed_dim, logit_scale = "minimal", 32, 2.0, 3, 4.0

        def encode_images(self, images):
            x = np.asarray(images, np.float32)
            x = x if x.shape[-1] == 3 else np.moveaxis(x, 1, -1)
            return x.mean(axis=(1, 2))

        def project(self, features, normalize=True):
            f = np.asarray(features, np.float32) - 128
            return f / np.linalg.norm(f, axis=1, keepdims=True) if normalize else f

        def encode_texts(self, texts, normalize=True):
            rng = np.random.default_rng(len(texts))
            out = rng.normal(size=(len(texts), 3)).astype(np.float32)
            return out / np.linalg.norm(out, axis=1, keepdims=True)

    synth = nc.synthetic_slide(size=512, seed=1)
    model = Minimal()
    emb = nc.embed(synth.slide, model, nc.tile_grid(synth.slide, model), cache=tmp_path)
    assert emb.complete and emb.features.shape[1] == 3
    sim = nc.similarity_map(emb, model, text="anything")
    assert np.isfinite(sim.values[~np.isnan(sim.values)]).all()
