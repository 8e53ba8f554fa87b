"""Moved to :mod:`napari_conch.models.color_toy` (the API spells colour "color"); this module
keeps the old import path for one release."""

from ..deprecation import forward_names

__getattr__ = forward_names(
    __name__,
    {
        "ColourToyModel": "napari_conch.models.color_toy:ColorToyModel",
        "COLOUR_TOY": "napari_conch.models.color_toy:COLOR_TOY",
        "build_colour_toy": "napari_conch.models.color_toy:build_color_toy",
    },
)
