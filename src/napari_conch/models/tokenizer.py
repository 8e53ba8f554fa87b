"""CONCH's byte-level BPE tokenizer: discovery and encoding.

The tokenizer file (``conch_byte_level_bpe_uncased.json``) belongs to the CONCH authors and is
not shipped with napari-conch. It is looked for, in order:

1. the ``tokenizer=`` argument of :func:`~napari_conch.load_model` (a file or a directory);
2. ``$NAPARI_CONCH_TOKENIZER``;
3. next to the checkpoint file;
4. inside the installed official ``conch`` package (``pip install conch-fork`` or the CONCH
   repository).

Encoding follows the released model: start and end tokens, truncation and padding to 127
ids, then one more pad as the placeholder the text tower replaces with its CLS token.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import TokenizerNotFoundError

logger = logging.getLogger(__name__)

TOKENIZER_ENV = "NAPARI_CONCH_TOKENIZER"
TOKENIZER_FILENAME = "conch_byte_level_bpe_uncased.json"
_PACKAGE_SUBPATH = ("open_clip_custom", "tokenizers", TOKENIZER_FILENAME)

HOW_TO_GET = (
    "The CONCH tokenizer file '{name}' was not found. It comes with the reference package "
    "conch-fork, which napari-conch installs: `pip install conch-fork` repairs an environment "
    "that lost it. Or download the file from https://github.com/mahmoodlab/CONCH "
    "(conch/open_clip_custom/tokenizers/) and «tokenizer='/path/to/{name}'», or set ${env}."
)


def find_tokenizer(
    tokenizer: str | os.PathLike | None = None, checkpoint_path: Path | None = None
) -> Path:
    """Locate the tokenizer file; see the module docstring for the search order."""
    if tokenizer is not None:
        return _check_given(Path(tokenizer).expanduser(), "tokenizer")
    env_value = os.environ.get(TOKENIZER_ENV, "").strip()
    if env_value:
        return _check_given(Path(env_value).expanduser(), f"${TOKENIZER_ENV}")
    if checkpoint_path is not None:
        beside = Path(checkpoint_path).parent / TOKENIZER_FILENAME
        if beside.is_file():
            return beside
    packaged = _from_conch_package()
    if packaged is not None:
        return packaged
    raise TokenizerNotFoundError(HOW_TO_GET.format(name=TOKENIZER_FILENAME, env=TOKENIZER_ENV))


def _check_given(path: Path, label: str) -> Path:
    if path.is_dir():
        path = path / TOKENIZER_FILENAME
    if not path.is_file():
        raise TokenizerNotFoundError(
            f"The {label} {path} does not exist. "
            + HOW_TO_GET.format(name=TOKENIZER_FILENAME, env=TOKENIZER_ENV)
        )
    return path


def _from_conch_package() -> Path | None:
    # find_spec locates the package without importing it (importing pulls in transformers).
    try:
        spec = importlib.util.find_spec("conch")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        candidate = Path(root).joinpath(*_PACKAGE_SUBPATH)
        if candidate.is_file():
            return candidate
    return None


class ConchTokenizer:
    """Turns prompts into the (N, context_length) id arrays the CONCH text tower expects."""

    def __init__(self, path: str | os.PathLike, context_length: int = 128, pad_id: int = 0):
        from tokenizers import Tokenizer

        self.path = Path(path)
        self.context_length = context_length
        self.pad_id = pad_id
        try:
            self._tok = Tokenizer.from_file(str(self.path))
        except Exception as exc:  # the Rust library raises a bare Exception on bad JSON
            raise TokenizerNotFoundError(
                f"{self.path} is not a valid tokenizer file ({exc}). "
                + HOW_TO_GET.format(name=TOKENIZER_FILENAME, env=TOKENIZER_ENV)
            ) from exc
        pad_token = self._tok.id_to_token(pad_id) or "<pad>"
        n = context_length - 1  # the last slot is reserved for the CLS token
        self._tok.enable_truncation(max_length=n)
        self._tok.enable_padding(length=n, pad_id=pad_id, pad_token=pad_token)

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """Encode ``texts`` → int64 array (N, context_length); over-long texts are truncated."""
        texts = list(texts)
        encodings = self._tok.encode_batch(texts, add_special_tokens=True)
        ids = np.full((len(texts), self.context_length), self.pad_id, dtype=np.int64)
        for row, (text, enc) in enumerate(zip(texts, encodings, strict=True)):
            ids[row, : len(enc.ids)] = enc.ids
            if enc.overflowing:
                logger.warning(
                    "Prompt truncated to %d tokens (the model's text limit): %.60r…",
                    self.context_length - 1,
                    text,
                )
        return ids

    def __repr__(self) -> str:
        return f"ConchTokenizer({str(self.path)!r}, context_length={self.context_length})"
