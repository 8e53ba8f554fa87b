"""Checkpoint loading: accepted layouts, refused files, and clear messages."""

from __future__ import annotations

import logging
import pickle

import numpy as np
import pytest
import torch
from helpers import build_reference, random_tiles

from napari_conch import CheckpointError, WeightsNotFoundError
from napari_conch.models import load_model


@pytest.fixture(scope="module")
def reference_tiny():
    """The reference tiny CoCa: its state dict includes the caption decoder and pooler."""
    return build_reference(tiny=True, seed=11)


@pytest.fixture(scope="module")
def tiles():
    return random_tiles(np.random.default_rng(5), n=2)


@pytest.fixture(scope="module")
def expected(reference_tiny, tiles, tmp_path_factory):
    """Features from a plain state-dict file, the baseline every layout must reproduce."""
    sd = {k: v for k, v in reference_tiny.state_dict().items() if not k.startswith("text_decoder.")}
    path = tmp_path_factory.mktemp("plain") / "pytorch_model.bin"
    torch.save(sd, path)
    return load_model("conch_tiny", checkpoint=path).encode_images(tiles)


def _load_features(path, tiles):
    return load_model("conch_tiny", checkpoint=path).encode_images(tiles)


def test_decoder_keys_are_ignored_and_said_at_debug_level(
    reference_tiny, tiles, expected, tmp_path, caplog
):
    sd = reference_tiny.state_dict()
    assert any(k.startswith("text_decoder.") for k in sd)
    path = tmp_path / "with_decoder.bin"
    torch.save(sd, path)
    with caplog.at_level(logging.DEBUG, logger="napari_conch"):
        feats = _load_features(path, tiles)
    np.testing.assert_array_equal(feats, expected)
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any("text_decoder" in m and "Ignoring" in m for m in debug)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_module_prefix_is_stripped(reference_tiny, tiles, expected, tmp_path):
    sd = {f"module.{k}": v for k, v in reference_tiny.state_dict().items()}
    torch.save(sd, tmp_path / "dp.bin")
    np.testing.assert_array_equal(_load_features(tmp_path / "dp.bin", tiles), expected)


@pytest.mark.parametrize("key", ["state_dict", "model"])
def test_nested_state_dict(reference_tiny, tiles, expected, tmp_path, key):
    torch.save({key: reference_tiny.state_dict(), "epoch": 3, "note": "trained"}, tmp_path / "n.pt")
    np.testing.assert_array_equal(_load_features(tmp_path / "n.pt", tiles), expected)


def test_safetensors(reference_tiny, tiles, expected, tmp_path):
    from safetensors.torch import save_file

    sd = {k: v.contiguous().clone() for k, v in reference_tiny.state_dict().items()}
    save_file(sd, tmp_path / "model.safetensors")
    np.testing.assert_array_equal(_load_features(tmp_path / "model.safetensors", tiles), expected)


def test_directory_holding_a_checkpoint(tiny_checkpoint, tiny_model, tiles):
    model = load_model("conch_tiny", checkpoint=tiny_checkpoint.parent)
    assert model.weights.path == tiny_checkpoint
    np.testing.assert_array_equal(model.encode_images(tiles), tiny_model.encode_images(tiles))


def test_half_precision_checkpoint_loads_into_float32(reference_tiny, tiles, expected, tmp_path):
    torch.save({k: v.half() for k, v in reference_tiny.state_dict().items()}, tmp_path / "h.bin")
    model = load_model("conch_tiny", checkpoint=tmp_path / "h.bin")
    assert model.network.visual.proj_contrast.dtype == torch.float32
    np.testing.assert_allclose(model.encode_images(tiles), expected, atol=0.05)


def test_truncated_file_is_refused(tiny_checkpoint, tmp_path):
    data = tiny_checkpoint.read_bytes()
    bad = tmp_path / "pytorch_model.bin"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_model("conch_tiny", checkpoint=bad)


def test_truncated_safetensors_is_refused(reference_tiny, tmp_path):
    from safetensors.torch import save_file

    good = tmp_path / "good.safetensors"
    save_file({k: v.contiguous() for k, v in reference_tiny.state_dict().items()}, good)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(good.read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match="safetensors"):
        load_model("conch_tiny", checkpoint=bad)


def test_empty_and_garbage_files_are_refused(tmp_path):
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_model("conch_tiny", checkpoint=empty)
    junk = tmp_path / "junk.bin"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(CheckpointError):
        load_model("conch_tiny", checkpoint=junk)


def test_checkpoint_of_another_architecture_lists_keys(tmp_path):
    import timm

    other = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0)
    torch.save(other.state_dict(), tmp_path / "vit.bin")
    with pytest.raises(CheckpointError) as info:
        load_model("conch_tiny", checkpoint=tmp_path / "vit.bin")
    message = str(info.value)
    assert "not a conch_tiny checkpoint" in message
    assert "missing key(s)" in message and "visual.trunk.blocks.[0-1].* (" in message
    assert "text.transformer.resblocks.[0-1].* (" in message
    assert "unexpected key(s)" in message and "blocks.[0-11].* (" in message


def test_checkpoint_with_fewer_layers_says_which(tiny_checkpoint):
    """The tiny weights have CONCH's names but only 2 of its 12 layers."""
    with pytest.raises(CheckpointError) as info:
        load_model("conch", checkpoint=tiny_checkpoint)
    message = str(info.value)
    assert "visual.trunk.blocks.[2-11].* (" in message
    assert "text.transformer.resblocks.[2-11].* (" in message


def test_checkpoint_of_another_width_names_the_shapes(tiny_checkpoint):
    from napari_conch.models.conch import load_network
    from napari_conch.models.conch_net import ConchConfig

    wider = ConchConfig.tiny(vision_width=96)
    with pytest.raises(
        CheckpointError, match=r"other sizes[\s\S]*checkpoint \(48,\) vs model \(96,\)"
    ):
        load_network(wider, tiny_checkpoint, torch.device("cpu"), model_name="wide")


class _RunsCode:
    """Unpickling this would create a file: what a malicious checkpoint could do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_that_would_run_code_is_refused(tiny_model, tmp_path):
    marker = tmp_path / "pwned"
    payload = {**tiny_model.network.state_dict(), "extra": _RunsCode(marker)}
    path = tmp_path / "evil.bin"
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="run code"):
        load_model("conch_tiny", checkpoint=path)
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_legacy_pickle_with_code_is_refused(tmp_path):
    marker = tmp_path / "pwned-legacy"
    path = tmp_path / "legacy.pt"
    with open(path, "wb") as fh:
        pickle.dump({"x": _RunsCode(marker)}, fh)
    with pytest.raises(CheckpointError, match="run code"):
        load_model("conch_tiny", checkpoint=path)
    assert not marker.exists()


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(WeightsNotFoundError, match=r"nope\.bin does not exist"):
        load_model("conch_tiny", checkpoint=tmp_path / "nope.bin")
    with pytest.raises(WeightsNotFoundError, match="holds no weights file"):
        load_model("conch_tiny", checkpoint=tmp_path)


def test_position_embedding_is_resized_for_another_grid(tiny_checkpoint, rng):
    model = load_model("conch_tiny", checkpoint=tiny_checkpoint, input_size=224)
    assert model.network.visual.trunk.pos_embed.shape == (1, 1 + 14 * 14, 48)
    feats = model.encode_images(random_tiles(rng, n=1, size=224))
    assert feats.shape == (1, 32) and np.isfinite(feats).all()


def test_bad_input_size_is_refused(tiny_checkpoint):
    with pytest.raises(ValueError, match="multiple of the patch size 16"):
        load_model("conch_tiny", checkpoint=tiny_checkpoint, input_size=225)


@pytest.mark.parametrize(
    ("native", "precision", "advice"),
    [
        (None, "bf16", "Use precision='fp32'"),
        ("AMX", "bf16", None),
        ("AVX-512-BF16", "fp16", "consider 'bf16'"),
        (None, "fp16", "consider 'fp32'"),
    ],
)
def test_cpu_precision_advice_follows_what_the_cpu_can_do(
    monkeypatch, caplog, native, precision, advice
):
    import torch

    from napari_conch.models import device

    monkeypatch.setattr(device, "cpu_bf16", lambda: native)
    with caplog.at_level("WARNING", logger="napari_conch.models.device"):
        assert device.resolve_precision(precision, torch.device("cpu")) == precision
    if advice is None:
        assert not caplog.records
    else:
        assert advice in caplog.text


def test_the_cpus_bf16_instructions_are_read_from_its_flags(monkeypatch, tmp_path):
    import builtins

    from napari_conch.models import device

    cpuinfo = tmp_path / "cpuinfo"
    real_open = builtins.open

    def fake_open(path, *args, **kwargs):
        return real_open(cpuinfo if path == "/proc/cpuinfo" else path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)
    for flags, expected in (
        ("fpu sse avx512f amx_bf16 amx_tile", "AMX"),
        ("fpu avx512f avx512_bf16", "AVX-512-BF16"),
        ("fpu avx2", None),
    ):
        cpuinfo.write_text(f"model name\t: Test CPU\nflags\t\t: {flags}\n")
        assert device.cpu_bf16() == expected
    assert device.cpu_name() == "Test CPU"
