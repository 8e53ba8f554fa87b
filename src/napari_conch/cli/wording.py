"""How the command line words the library's fix-it instructions: its options, not Python
arguments (see :class:`napari_conch.errors.Wording`)."""

from __future__ import annotations

from ..errors import Wording

WORDING = Wording(
    set="pass {flag} {bare}",
    unset="leave out {flag}",
    options={
        # never a command-line argument: process listings would show it
        "token": {"set": "set $HF_TOKEN (or run `huggingface-cli login`)"},
    },
)
