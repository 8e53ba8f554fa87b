"""Exception types raised by napari-conch.

Every error a user can trigger derives from :class:`NapariConchError`, so a script or the
GUI can catch the whole family, while the standard bases (``ValueError``,
``FileNotFoundError``) keep ``except ValueError`` style handlers working.
"""

from __future__ import annotations


class NapariConchError(Exception):
    """Base class of all napari-conch errors."""


class CheckpointError(NapariConchError, ValueError):
    """A checkpoint file exists but cannot be used (corrupt, unsafe or of another model)."""


class WeightsNotFoundError(NapariConchError, FileNotFoundError):
    """No model weights were found in any of the places napari-conch looks."""


class TokenizerNotFoundError(NapariConchError, FileNotFoundError):
    """The text tokenizer file was not found."""


class UnknownModelError(NapariConchError, KeyError):
    """``load_model`` was asked for a model name that is not registered."""

    def __str__(self) -> str:  # KeyError would otherwise print the repr of the message
        return str(self.args[0]) if self.args else ""


class SlideReadError(NapariConchError, OSError):
    """A slide or image file cannot be opened or read; the message names the file and why."""


class MissingMppError(NapariConchError, ValueError):
    """An analysis needs the slide's µm per pixel, which the file does not record."""
