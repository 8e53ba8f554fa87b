"""The model protocol as implemented by ConchModel: inputs, outputs, caching, devices."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import random_tiles

from napari_conch import TokenizerNotFoundError, UnknownModelError
from napari_conch import errors as nc_errors
from napari_conch.models import ImageTextModel, available_models, check_model, load_model
from napari_conch.models.device import resolve_device, resolve_precision
from napari_conch.protocol import is_trained, weights_hash


def test_protocol_members(tiny_model):
    assert isinstance(tiny_model, ImageTextModel)
    check_model(tiny_model)
    assert tiny_model.name == "conch_tiny"
    assert (tiny_model.input_size, tiny_model.embed_dim) == (448, 32)
    assert tiny_model.target_mpp == 0.5
    assert tiny_model.logit_scale == pytest.approx(np.log(1 / 0.07))


def test_full_conch_reports_the_published_geometry():
    model = load_model("conch", checkpoint="random")
    assert (model.name, model.input_size, model.embed_dim, model.target_mpp) == (
        "conch",
        448,
        512,
        0.5,
    )
    assert model.mean == (0.48145466, 0.4578275, 0.40821073)
    assert model.std == (0.26862954, 0.26130258, 0.27577711)


def test_check_model_names_what_is_missing():
    class Half:
        name = "half"

        def encode_images(self, x):
            return x

    with pytest.raises(TypeError, match="input_size, target_mpp, embed_dim, logit_scale, project"):
        check_model(Half())
    assert is_trained(Half()) and weights_hash(Half()) == "half"


def test_uint8_float_and_layouts_agree(tiny_model, rng):
    """Every accepted form of the same pixels gives bit-identical features: preprocessing
    brings them into one contiguous layout, so the network always takes the same kernels."""
    tiles = random_tiles(rng, n=2)
    reference = tiny_model.encode_images(tiles)
    assert reference.dtype == np.float32 and reference.shape == (2, 32)
    chw_view = tiles.transpose(0, 3, 1, 2)  # a strided view, not a copy
    forms = {
        "numpy CHW view": chw_view,
        "numpy CHW copy": np.ascontiguousarray(chw_view),
        "torch CHW view": torch.from_numpy(chw_view),
        "torch channels_last": torch.from_numpy(np.ascontiguousarray(chw_view)).to(
            memory_format=torch.channels_last
        ),
        "torch HWC": torch.from_numpy(tiles),
        "list of HWC": list(tiles),
        "float64 HWC": tiles / 255.0,
        "float32 CHW view": (tiles / np.float32(255)).astype(np.float32).transpose(0, 3, 1, 2),
        "float32 torch": torch.from_numpy(tiles).float().div(255).permute(0, 3, 1, 2),
    }
    for label, images in forms.items():
        np.testing.assert_array_equal(tiny_model.encode_images(images), reference, err_msg=label)
    np.testing.assert_array_equal(tiny_model.encode_images(tiles[0]), reference[:1])


def test_cpu_features_do_not_depend_on_batch_composition(tiny_model, rng):
    """On CPU each tile runs alone through the network, so its features are bit-identical
    whatever batch (size, neighbours, order) it arrives in."""
    tiles = random_tiles(rng, n=4)
    whole = tiny_model.encode_images(tiles)
    np.testing.assert_array_equal(tiny_model.encode_images(tiles[::-1]), whole[::-1])
    np.testing.assert_array_equal(tiny_model.encode_images(tiles[1:3]), whole[1:3])
    np.testing.assert_array_equal(tiny_model.encode_images(tiles[2]), whole[2:3])


def test_resize_is_bicubic_antialiased_on_the_shortest_edge(tiny_model, rng):
    """Non-square tiles: shortest edge to 448, then a centre crop (reference preprocessing)."""
    tile = random_tiles(rng, n=1, size=600)[:, :500]  # 500 × 600
    x = torch.from_numpy(tile).permute(0, 3, 1, 2).float() / 255
    resized = F.interpolate(x, size=(448, 538), mode="bicubic", antialias=True, align_corners=False)
    left = round((538 - 448) / 2)
    manual = resized.clamp(0, 1)[..., :, left : left + 448]
    np.testing.assert_allclose(
        tiny_model.encode_images(tile), tiny_model.encode_images(manual), atol=1e-6
    )


@pytest.mark.parametrize(
    "bad, error, match",
    [
        (np.zeros((1, 448, 448, 4), np.uint8), ValueError, "3 colour channels"),
        (np.zeros((1, 1, 448, 448), np.uint8), ValueError, "3 colour channels"),
        (np.zeros((448, 448), np.uint8), ValueError, "image batch"),
        (np.zeros((1, 3, 448, 448), np.int16), TypeError, "uint8"),
        (np.full((1, 3, 448, 448), 255.0, np.float32), ValueError, r"\[0, 1\]"),
        (np.full((1, 3, 448, 448), -0.5, np.float32), ValueError, "normalises them itself"),
        (np.zeros((0, 3, 448, 448), np.uint8), ValueError, "empty batch"),
        ([], ValueError, "empty list"),
        (
            [np.zeros((448, 448, 3), np.uint8), np.zeros((224, 224, 3), np.uint8)],
            ValueError,
            "share one shape",
        ),
    ],
)
def test_bad_image_batches_get_clear_errors(tiny_model, bad, error, match):
    with pytest.raises(error, match=match):
        tiny_model.encode_images(bad)


def test_project_normalises_and_checks_shape(tiny_model, rng):
    feats = tiny_model.encode_images(random_tiles(rng, n=3))
    projected = tiny_model.project(feats)
    np.testing.assert_allclose(np.linalg.norm(projected, axis=1), 1.0, atol=1e-6)
    raw = tiny_model.project(feats, normalize=False)
    manual = feats @ tiny_model.network.visual.proj_contrast.numpy()
    np.testing.assert_allclose(raw, manual, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"\(N, 32\)"):
        tiny_model.project(np.zeros((3, 31), np.float32))


def test_text_embeddings_are_cached_per_prompt(tiny_checkpoint, monkeypatch):
    model = load_model("conch_tiny", checkpoint=tiny_checkpoint)
    calls: list[list[str]] = []
    original = model._encode_text_batch

    def counting(texts):
        calls.append(list(texts))
        return original(texts)

    monkeypatch.setattr(model, "_encode_text_batch", counting)
    first = model.encode_texts(["tumor", "stroma", "tumor"])
    assert calls == [["tumor", "stroma"]]
    np.testing.assert_array_equal(first[0], first[2])
    second = model.encode_texts(["stroma", "necrosis"])
    assert calls[-1] == ["necrosis"]
    np.testing.assert_array_equal(second[0], first[1])
    np.testing.assert_allclose(np.linalg.norm(second, axis=1), 1.0, atol=1e-6)
    raw = model.encode_texts(["necrosis"], normalize=False)
    assert len(calls) == 2  # served from the cache, normalised or not
    np.testing.assert_allclose(raw[0] / np.linalg.norm(raw[0]), second[1], atol=1e-6)


def test_text_batches_do_not_change_embeddings(tiny_checkpoint):
    prompts = [f"prompt number {i}" for i in range(70)]  # more than one internal batch
    together = load_model("conch_tiny", checkpoint=tiny_checkpoint).encode_texts(prompts)
    alone = load_model("conch_tiny", checkpoint=tiny_checkpoint)
    singles = np.concatenate([alone.encode_texts([p]) for p in prompts[::17]])
    np.testing.assert_allclose(together[::17], singles, atol=1e-5)


def test_bad_prompts_get_clear_errors(tiny_model):
    with pytest.raises(ValueError, match="at least one prompt"):
        tiny_model.encode_texts([])
    with pytest.raises(TypeError, match="must be strings"):
        tiny_model.encode_texts(["ok", 3])
    assert tiny_model.encode_texts("tumor").shape == (1, 32)


def test_over_long_prompt_is_truncated_with_a_warning(tiny_model, caplog):
    with caplog.at_level(logging.WARNING, logger="napari_conch"):
        emb = tiny_model.encode_texts(["necrosis " * 400])
    assert emb.shape == (1, 32)
    assert any("truncated to 127 tokens" in r.getMessage() for r in caplog.records)


def test_random_weights_warn_and_say_untrained(caplog):
    with caplog.at_level(logging.WARNING, logger="napari_conch"):
        model = load_model("conch_tiny", checkpoint="random", seed=5)
    assert model.trained is False and not is_trained(model)
    assert "UNTRAINED" in repr(model)
    assert model.info()["trained"] is False
    assert any("RANDOM weights" in r.getMessage() for r in caplog.records)


def test_loaded_weights_say_trained(tiny_checkpoint):
    model = load_model("conch_tiny", checkpoint=tiny_checkpoint)
    assert model.trained is True and model.weights.origin == "argument"


def test_weights_hash_identifies_the_weights(tiny_model, tiny_checkpoint):
    again = load_model("conch_tiny", checkpoint="random", seed=0)
    other = load_model("conch_tiny", checkpoint="random", seed=1)
    from_file = load_model("conch_tiny", checkpoint=tiny_checkpoint)
    assert tiny_model.weights_hash == again.weights_hash == from_file.weights_hash
    assert other.weights_hash != tiny_model.weights_hash
    with torch.no_grad():
        from_file.network.logit_scale.add_(1e-3)
    from_file._weights_hash = None
    assert from_file.weights_hash != tiny_model.weights_hash


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(UnknownModelError, match="Available: colour-toy, conch, conch_tiny"):
        load_model("conchh")
    assert {"conch", "conch_tiny"} <= set(available_models())
    with pytest.raises(nc_errors.WeightsNotFoundError, match="test configuration"):
        load_model("conch_tiny")


def test_device_resolution():
    assert resolve_device("auto") == torch.device(
        "cuda" if torch.cuda.is_available() else "cpu"
    ) or (resolve_device("auto").type == "mps")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="Unknown device"):
        resolve_device("tpu-please")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_precision_resolution():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == "fp32"
    assert resolve_precision("bfloat16", cpu) == "bf16"
    with pytest.raises(ValueError, match="Unknown precision"):
        resolve_precision("int4", cpu)


def test_bf16_autocast_runs_on_cpu_and_stays_close(tiny_checkpoint, tiny_model, rng):
    tiles = random_tiles(rng, n=2)
    fast = load_model("conch_tiny", checkpoint=tiny_checkpoint, precision="bf16")
    assert fast.precision == "bf16"
    a, b = fast.encode_images(tiles), tiny_model.encode_images(tiles)
    assert a.dtype == np.float32
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert (cos > 0.99).all()
    assert not np.array_equal(a, b)  # autocast really ran in reduced precision


def test_missing_tokenizer_fails_only_for_text(tiny_checkpoint, monkeypatch, rng):
    from napari_conch.models import tokenizer as tok

    monkeypatch.setattr(tok, "_from_conch_package", lambda: None)
    model = load_model("conch_tiny", checkpoint=tiny_checkpoint)
    assert model.encode_images(random_tiles(rng, n=1)).shape == (1, 32)
    with pytest.raises(TokenizerNotFoundError, match="pip install conch-fork"):
        model.encode_texts(["tumor"])
