"""Moved to :mod:`napari_conch.protocol` (importable without torch); this module keeps the
old import path for one release."""

from ..deprecation import forward_names

__getattr__ = forward_names(
    __name__,
    {
        name: "napari_conch.protocol"
        for name in (
            "REQUIRED_ATTRIBUTES",
            "REQUIRED_METHODS",
            "ImageTextModel",
            "check_model",
            "is_trained",
            "weights_hash",
        )
    },
)
