"""PLIP and QuiltNet backends: native-format folders through our loader, parity with the
upstream classes (transformers CLIPModel, open_clip), discovery and errors."""

from __future__ import annotations

import logging
import shutil

import numpy as np
import pytest
import torch
from helpers import make_plip_folder, make_quiltnet_folder, random_tiles
from PIL import Image

from napari_conch import CheckpointError, WeightsNotFoundError
from napari_conch.models import ClipModel, OpenClipModel, check_model, load_model
from napari_conch.protocol import is_trained

TEXTS = ["an H&E image of tumor", "necrosis", "an H&E image of stroma with lymphocytes"]


@pytest.fixture(scope="module")
def plip_dir(tmp_path_factory):
    return make_plip_folder(tmp_path_factory.mktemp("plip"))


@pytest.fixture(scope="module")
def quilt_dir(tmp_path_factory):
    return make_quiltnet_folder(tmp_path_factory.mktemp("quiltnet"))


@pytest.fixture(scope="module")
def plip(plip_dir):
    return load_model("plip", checkpoint=plip_dir)


@pytest.fixture(scope="module")
def quilt(quilt_dir):
    return load_model("quiltnet", checkpoint=quilt_dir)


def _pil(tiles):
    return [Image.fromarray(t) for t in tiles]


def _tensor(out):
    """transformers 5 returns model outputs from get_*_features; 4.x returned tensors."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def test_plip_matches_transformers_clip(plip, plip_dir):
    from transformers import CLIPModel, CLIPProcessor

    upstream = CLIPModel.from_pretrained(plip_dir).eval()
    processor = CLIPProcessor.from_pretrained(plip_dir)
    tiles = random_tiles(np.random.default_rng(0), n=3, size=224)
    with torch.no_grad():
        pixels = processor(images=_pil(tiles), return_tensors="pt")["pixel_values"]
        want_img = _tensor(upstream.get_image_features(pixel_values=pixels)).numpy()
        enc = processor(
            text=TEXTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
        )
        want_txt = _tensor(
            upstream.get_text_features(
                input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]
            )
        ).numpy()
    feats = plip.encode_images(tiles)
    assert feats.shape == (3, plip.embed_dim) == (3, 48)  # pooled vision output
    np.testing.assert_allclose(plip.project(feats, normalize=False), want_img, atol=1e-5)
    np.testing.assert_allclose(plip.encode_texts(TEXTS, normalize=False), want_txt, atol=1e-5)
    assert plip.logit_scale == pytest.approx(float(upstream.logit_scale.detach()))


def test_quiltnet_matches_open_clip(quilt, quilt_dir):
    import open_clip

    upstream, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{quilt_dir}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{quilt_dir}")
    upstream.eval()
    tiles = random_tiles(np.random.default_rng(1), n=3, size=224)
    with torch.no_grad():
        pixels = torch.stack([preprocess(im) for im in _pil(tiles)])
        want_img = upstream.encode_image(pixels).numpy()
        want_txt = upstream.encode_text(tokenizer(TEXTS)).numpy()
    feats = quilt.encode_images(tiles)
    assert feats.shape == (3, quilt.embed_dim) == (3, 64)  # before visual.proj
    np.testing.assert_allclose(quilt.project(feats, normalize=False), want_img, atol=1e-5)
    np.testing.assert_allclose(quilt.encode_texts(TEXTS, normalize=False), want_txt, atol=1e-5)
    assert quilt.logit_scale == pytest.approx(float(upstream.logit_scale.detach()))


@pytest.mark.parametrize("which", ["plip", "quilt"])
def test_backends_report_the_protocol_members(which, plip, quilt):
    model = {"plip": plip, "quilt": quilt}[which]
    check_model(model)
    assert isinstance(model, {"plip": ClipModel, "quilt": OpenClipModel}[which])
    assert model.input_size == 224 and model.target_mpp == 0.5
    assert is_trained(model)
    assert len(model.weights_hash) == 32
    # tiles larger than the input are resized on the device, like CONCH's
    big = random_tiles(np.random.default_rng(2), n=2, size=448)
    assert model.encode_images(big).shape == (2, model.embed_dim)


def test_weights_hash_tells_different_weights_apart(plip_dir, tmp_path, plip):
    other = make_plip_folder(tmp_path / "other", seed=1)
    assert load_model("plip", checkpoint=other).weights_hash != plip.weights_hash
    assert load_model("plip", checkpoint=plip_dir).weights_hash == plip.weights_hash


def test_target_mpp_is_overridable(quilt_dir):
    model = load_model("quiltnet", checkpoint=quilt_dir, target_mpp=1.0)
    assert model.target_mpp == 1.0
    with pytest.raises(ValueError, match="target_mpp"):
        load_model("quiltnet", checkpoint=quilt_dir, target_mpp=-1)


def test_plip_legacy_bin_with_position_ids_loads(tmp_path, plip):
    folder = make_plip_folder(tmp_path / "legacy", safetensors=False)
    path = folder / "pytorch_model.bin"
    state = torch.load(path, weights_only=True)
    # checkpoints saved by transformers 4.2x carry the position-id buffers
    state["text_model.embeddings.position_ids"] = torch.arange(77)[None]
    state["vision_model.embeddings.position_ids"] = torch.arange(50)[None]
    torch.save(state, path)
    model = load_model("plip", checkpoint=folder)
    tiles = random_tiles(np.random.default_rng(3), n=1, size=224)
    np.testing.assert_array_equal(model.encode_images(tiles), plip.encode_images(tiles))
    np.testing.assert_array_equal(model.encode_texts(TEXTS), plip.encode_texts(TEXTS))


def test_quiltnet_weights_file_alone_uses_the_named_architecture(quilt_dir, tmp_path, quilt):
    lone = tmp_path / "weights.bin"
    shutil.copy(quilt_dir / "open_clip_pytorch_model.bin", lone)
    with pytest.raises(CheckpointError, match=r"(?s)not a quiltnet checkpoint.*arch="):
        load_model("quiltnet", checkpoint=lone)  # default ViT-B-32 is deeper than this file
    model = load_model("quiltnet", checkpoint=lone, config=quilt_dir / "open_clip_config.json")
    assert model.weights_hash == quilt.weights_hash


def test_random_weights_are_marked_untrained(plip_dir, caplog):
    with caplog.at_level(logging.WARNING):
        model = load_model("plip", checkpoint="random", config=plip_dir)
    assert not model.trained and "RANDOM" in caplog.text
    assert model.encode_texts(["tumor"]).shape == (1, 24)


def test_folder_without_tokenizer_files_uses_the_bundled_clip_vocabulary(
    plip, plip_dir, tmp_path, caplog
):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(plip_dir / name, bare / name)
    model = load_model("plip", checkpoint=bare)
    with caplog.at_level(logging.WARNING):
        got = model.encode_texts(TEXTS)
    assert "standard CLIP vocabulary" in caplog.text
    np.testing.assert_allclose(got, plip.encode_texts(TEXTS), atol=1e-6)


def test_wrong_checkpoints_are_refused_clearly(plip_dir, quilt_dir, tiny_checkpoint, tmp_path):
    # CONCH weights in a PLIP folder
    folder = tmp_path / "mixed"
    shutil.copytree(plip_dir, folder)
    (folder / "model.safetensors").unlink()
    shutil.copy(tiny_checkpoint, folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="not a plip checkpoint") as info:
        load_model("plip", checkpoint=folder)
    assert "vinid/plip" in str(info.value)
    # PLIP weights given to QuiltNet
    with pytest.raises(CheckpointError, match="not a quiltnet checkpoint"):
        load_model("quiltnet", checkpoint=plip_dir / "model.safetensors", config=quilt_dir)
    # a folder that is not a model folder
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(WeightsNotFoundError, match="is not a plip folder"):
        load_model("plip", checkpoint=empty)
    shutil.copy(plip_dir / "model.safetensors", empty / "model.safetensors")
    with pytest.raises(WeightsNotFoundError, match=r"needs 'config\.json' beside"):
        load_model("plip", checkpoint=empty / "model.safetensors")
    # a truncated weights file
    broken = tmp_path / "broken"
    shutil.copytree(quilt_dir, broken)
    path = broken / "open_clip_pytorch_model.bin"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_model("quiltnet", checkpoint=broken)


def test_nothing_found_offline_says_how_to_get_the_weights():
    with pytest.raises(WeightsNotFoundError, match="HF_HUB_OFFLINE") as info:
        load_model("plip")
    assert "openly available" in str(info.value) and "vinid/plip" in str(info.value)


def test_environment_variables_point_at_folders(plip_dir, quilt_dir, monkeypatch):
    monkeypatch.setenv("NAPARI_CONCH_PLIP", str(plip_dir))
    monkeypatch.setenv("NAPARI_CONCH_QUILTNET", str(quilt_dir))
    assert load_model("plip").weights.origin == "environment"
    assert load_model("quilt").weights.origin == "environment"  # an alias


def _fake_snapshot(root, repo_id, source):
    repo = root / f"models--{repo_id.replace('/', '--')}"
    revision = "89abcdef0123456789abcdef0123456789abcdef"
    shutil.copytree(source, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)


def test_hugging_face_cache_and_download(plip_dir, quilt_dir, tmp_path, monkeypatch, plip):
    import huggingface_hub
    from huggingface_hub import constants

    root = tmp_path / "hub"
    root.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(root))
    _fake_snapshot(root, "vinid/plip", plip_dir)
    model = load_model("plip")
    assert model.weights.origin == "hf-cache"
    assert model.weights_hash == plip.weights_hash

    # not cached and online: the open repository is downloaded without any token
    monkeypatch.delenv("HF_HUB_OFFLINE")
    seen = {}

    def fake_snapshot_download(repo_id, allow_patterns=None, token=None, **kwargs):
        seen.update(repo_id=repo_id, patterns=set(allow_patterns), token=token)
        return str(quilt_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    model = load_model("quiltnet")
    assert model.weights.origin == "hf-hub"
    assert seen["repo_id"] == "wisdomik/QuiltNet-B-32" and seen["token"] is None
    assert {"open_clip_config.json", "open_clip_pytorch_model.bin"} <= seen["patterns"]


def test_plip_long_prompt_is_truncated_with_a_warning(plip, caplog):
    with caplog.at_level(logging.WARNING):
        out = plip.encode_texts(["tumor " * 200])
    assert out.shape == (1, 24) and "truncated" in caplog.text


@pytest.mark.parametrize("which", ["plip", "quilt"])
def test_features_do_not_depend_on_batch_size_or_order(which, plip, quilt):
    model = {"plip": plip, "quilt": quilt}[which]
    assert model.cpu_micro_batch > 1  # pieces of several tiles, padded to a fixed size
    tiles = random_tiles(np.random.default_rng(4), n=13, size=224)
    whole = model.encode_images(tiles)
    for size in (1, 3, 8, 13):
        parts = np.concatenate(
            [model.encode_images(tiles[i : i + size]) for i in range(0, len(tiles), size)]
        )
        np.testing.assert_array_equal(parts, whole)  # bit for bit
    order = np.random.default_rng(5).permutation(len(tiles))
    np.testing.assert_array_equal(model.encode_images(tiles[order]), whole[order])
