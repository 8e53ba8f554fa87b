"""Where weights and the tokenizer are found, and what users are told when they are not.

No test reaches the network: HF_HUB_OFFLINE is set for the suite, and the hub download
function is replaced where a test needs to see how its failures are reported.
"""

from __future__ import annotations

import logging
import shutil

import pytest

from napari_conch import TokenizerNotFoundError, WeightsNotFoundError
from napari_conch.models import load_model, weights
from napari_conch.models import tokenizer as tok

SECRET = "hf_SECRETtoken1234567890abcdef"


def _fake_hf_cache(root, repo_id, filename, source):
    """Lay out a Hugging Face cache entry the way huggingface_hub does."""
    repo_dir = root / f"models--{repo_id.replace('/', '--')}"
    revision = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo_dir / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(revision)
    shutil.copy(source, snapshot / filename)
    return snapshot / filename


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    root = tmp_path / "hub"
    root.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(root))
    return root


def test_explicit_checkpoint_wins_over_environment(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_CONCH_CHECKPOINT", str(tmp_path / "elsewhere.bin"))
    source = weights.find_checkpoint(tiny_checkpoint, repo_id="MahmoodLab/conch")
    assert (source.path, source.origin) == (tiny_checkpoint, "argument")


def test_environment_variable(tiny_checkpoint, monkeypatch):
    monkeypatch.setenv("NAPARI_CONCH_CHECKPOINT", str(tiny_checkpoint))
    source = weights.find_checkpoint(None, repo_id="MahmoodLab/conch")
    assert (source.path, source.origin) == (tiny_checkpoint, "environment")


def test_environment_variable_pointing_nowhere_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_CONCH_CHECKPOINT", str(tmp_path / "gone.bin"))
    with pytest.raises(WeightsNotFoundError, match=r"\$NAPARI_CONCH_CHECKPOINT file .*gone\.bin"):
        load_model("conch")


def test_hugging_face_cache_entry_is_used(tiny_checkpoint, hf_cache):
    cached = _fake_hf_cache(hf_cache, "MahmoodLab/conch", "pytorch_model.bin", tiny_checkpoint)
    source = weights.find_checkpoint(None, repo_id="MahmoodLab/conch")
    assert source.path == cached and source.origin == "hf-cache"
    by_name = weights.find_checkpoint("hf_hub:MahmoodLab/conch", repo_id="MahmoodLab/conch")
    assert by_name.path == cached
    model = load_model("conch_tiny", checkpoint="hf_hub:MahmoodLab/conch")
    assert model.trained and model.weights.origin == "hf-cache"


def test_nothing_found_explains_how_to_get_weights(hf_cache):
    with pytest.raises(WeightsNotFoundError) as info:
        load_model("conch")
    message = str(info.value)
    for needle in (
        "https://huggingface.co/MahmoodLab/conch",
        "checkpoint='/path/to/pytorch_model.bin'",
        "$NAPARI_CONCH_CHECKPOINT",
        "$HF_TOKEN",
        "checkpoint='random'",
    ):
        assert needle in message


def test_messages_name_the_options_of_the_interface_showing_them(hf_cache):
    """The same error reads as Python, as command-line options, or as the widget's controls."""
    from napari_conch.errors import describe

    with pytest.raises(WeightsNotFoundError) as info:
        load_model("conch")
    cli, gui = describe(info.value, "cli"), describe(info.value, "napari")
    assert "--checkpoint random" in cli and "--checkpoint /path/to/pytorch_model.bin" in cli
    assert "$HF_TOKEN" in cli and "--token" not in cli  # a token never goes on a command line
    assert "'untrained (random) weights'" in gui and "Weights field" in gui
    assert "Token field" in gui
    for text in (cli, gui):
        assert "checkpoint=" not in text and "«" not in text
    assert describe(ValueError("plain"), "cli") == "plain"


def test_offline_hub_request_says_offline(hf_cache):
    with pytest.raises(WeightsNotFoundError, match="HF_HUB_OFFLINE"):
        load_model("conch", checkpoint="hf_hub:MahmoodLab/conch", token=SECRET)


def _fail_download(exc_factory):
    def fake(repo_id, filename, token=None, **kwargs):
        assert token == SECRET  # the token reaches huggingface_hub unchanged
        raise exc_factory()

    return fake


def _hub_error(name: str, message: str):
    """A huggingface_hub exception instance, made without the HTTP response object its
    constructor wants (that object's type changes between huggingface_hub versions)."""
    from huggingface_hub import errors

    cls = getattr(errors, name)
    exc = cls.__new__(cls)
    Exception.__init__(exc, message)
    return exc


def _gated():
    return _hub_error("GatedRepoError", "403 gated")


def _not_found():
    return _hub_error("RepositoryNotFoundError", "404")


def _unreachable():
    return _hub_error("LocalEntryNotFoundError", "no connection")


@pytest.mark.parametrize(
    "factory, match",
    [(_gated, "gated"), (_not_found, "was not found"), (_unreachable, "unreachable")],
)
def test_hub_failures_are_explained_and_never_show_the_token(
    hf_cache, monkeypatch, caplog, factory, match
):
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _fail_download(factory))
    with (
        caplog.at_level(logging.DEBUG, logger="napari_conch"),
        pytest.raises(WeightsNotFoundError, match=match) as info,
    ):
        load_model("conch", token=SECRET)
    assert SECRET not in str(info.value)
    assert SECRET not in caplog.text


def test_hub_download_with_a_token_in_the_environment(
    hf_cache, tiny_checkpoint, monkeypatch, caplog
):
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_TOKEN", SECRET)
    seen = {}

    def fake(repo_id, filename, token=None, **kwargs):
        seen.update(repo_id=repo_id, filename=filename, token=token)
        return str(tiny_checkpoint)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake)
    with caplog.at_level(logging.DEBUG, logger="napari_conch"):
        model = load_model("conch_tiny", checkpoint="hf_hub:MahmoodLab/conch")
    # token=None: huggingface_hub reads $HF_TOKEN itself, so it never passes through us.
    assert seen == {"repo_id": "MahmoodLab/conch", "filename": "pytorch_model.bin", "token": None}
    assert model.weights.origin == "hf-hub"
    assert SECRET not in caplog.text
    assert SECRET not in repr(model) and SECRET not in str(model.info())


# -- tokenizer -----------------------------------------------------------------------------


def test_tokenizer_search_order(tiny_checkpoint, tmp_path, monkeypatch):
    packaged = tok.find_tokenizer()
    assert packaged.name == tok.TOKENIZER_FILENAME and "conch" in str(packaged)

    beside_dir = tmp_path / "weights"
    beside_dir.mkdir()
    shutil.copy(tiny_checkpoint, beside_dir / "pytorch_model.bin")
    beside = beside_dir / tok.TOKENIZER_FILENAME
    shutil.copy(packaged, beside)
    assert tok.find_tokenizer(None, beside_dir / "pytorch_model.bin") == beside

    env_copy = tmp_path / "env" / tok.TOKENIZER_FILENAME
    env_copy.parent.mkdir()
    shutil.copy(packaged, env_copy)
    monkeypatch.setenv("NAPARI_CONCH_TOKENIZER", str(env_copy.parent))
    assert tok.find_tokenizer(None, beside_dir / "pytorch_model.bin") == env_copy

    explicit = tmp_path / "mine.json"
    shutil.copy(packaged, explicit)
    assert tok.find_tokenizer(explicit, beside_dir / "pytorch_model.bin") == explicit

    model = load_model("conch_tiny", checkpoint=beside_dir)
    assert model.tokenizer_path == env_copy


def test_named_tokenizer_that_is_missing_fails_at_load(tiny_checkpoint, tmp_path):
    with pytest.raises(TokenizerNotFoundError, match="does not exist"):
        load_model("conch_tiny", checkpoint=tiny_checkpoint, tokenizer=tmp_path / "nope.json")


def test_tokenizer_not_found_anywhere_says_how_to_get_it(monkeypatch):
    monkeypatch.setattr(tok, "_from_conch_package", lambda: None)
    with pytest.raises(TokenizerNotFoundError) as info:
        tok.find_tokenizer()
    assert "pip install conch-fork" in str(info.value)
    assert "NAPARI_CONCH_TOKENIZER" in str(info.value)


def test_corrupt_tokenizer_file_is_reported(tmp_path):
    bad = tmp_path / tok.TOKENIZER_FILENAME
    bad.write_text("{not json")
    with pytest.raises(TokenizerNotFoundError, match="not a valid tokenizer file"):
        tok.ConchTokenizer(bad)
