"""Shared fixtures. The suite never touches the network and never sees a user's own weights."""

from __future__ import annotations

import os
import tempfile

# Before anything imports huggingface_hub: no network, and an empty private cache so a
# developer's real downloads cannot change what the tests see.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="napari-conch-test-hf-")
os.environ.pop("HF_TOKEN", None)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import pytest
import torch
from hypothesis import settings
from hypothesis.configuration import set_hypothesis_home_dir

from napari_conch.models import load_model

# Tests leave nothing in the checkout: hypothesis keeps its files in a temporary folder.
set_hypothesis_home_dir(tempfile.mkdtemp(prefix="napari-conch-test-hypothesis-"))
settings.register_profile("napari-conch", database=None)
settings.load_profile("napari-conch")

_USER_ENV = ("NAPARI_CONCH_CHECKPOINT", "NAPARI_CONCH_TOKENIZER", "HF_TOKEN")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch, tmp_path_factory):
    """Each test starts without the user's checkpoint/tokenizer/token settings, and caches
    embeddings in a temporary folder, never in the user's cache."""
    for name in _USER_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NAPARI_CONCH_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="session")
def tiny_model():
    """An untrained tiny CONCH (same code as the full model, small widths)."""
    return load_model("conch_tiny", checkpoint="random", seed=0)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_model):
    """The tiny model's weights saved as a ``pytorch_model.bin``."""
    path = tmp_path_factory.mktemp("tiny-ckpt") / "pytorch_model.bin"
    torch.save(tiny_model.network.state_dict(), path)
    return path


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
