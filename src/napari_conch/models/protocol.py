"""The model protocol moved to :mod:`napari_conch.protocol` (importable without torch);
this module keeps the old import path working."""

from ..protocol import (
    REQUIRED_ATTRIBUTES,
    REQUIRED_METHODS,
    ImageTextModel,
    check_model,
    is_trained,
    weights_hash,
)

__all__ = [
    "REQUIRED_ATTRIBUTES",
    "REQUIRED_METHODS",
    "ImageTextModel",
    "check_model",
    "is_trained",
    "weights_hash",
]
