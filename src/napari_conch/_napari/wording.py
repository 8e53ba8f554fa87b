"""How the widget words the library's fix-it instructions: its own controls, not Python
arguments (see :class:`napari_conch.errors.Wording`)."""

from __future__ import annotations

from ..errors import Wording

WORDING = Wording(
    set="set {words} to {bare}",
    unset="leave {words} empty",
    options={
        "checkpoint": {
            "set": "enter {value} in the Model tab's Weights field (or pick it with File…)",
            "unset": "clear the Model tab's Weights field and untick 'untrained (random) weights'",
        },
        "tokenizer": {
            "set": "set the NAPARI_CONCH_TOKENIZER environment variable to {value} and "
            "restart napari",
        },
        "mpp": {"set": "enter it in the Slide tab's Pixel size field (for example {value})"},
        "token": {"set": "paste a Hugging Face token into the Model tab's Token field"},
    },
    special={("checkpoint", "random"): "tick 'untrained (random) weights' in the Model tab"},
)
