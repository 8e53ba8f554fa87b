"""Exception types raised by napari-conch.

Every error a user can trigger derives from :class:`NapariConchError`, so a script or the
GUI can catch the whole family, while the standard bases (``ValueError``,
``FileNotFoundError``) keep ``except ValueError`` style handlers working.
"""

from __future__ import annotations

import re

# An instruction to set an option, written «name=value» inside a message (or «!name»: leave
# it unset). Python users read "pass name=value", the command line "pass --name value", the
# napari widget the control that sets it; see :func:`for_interface`.
_OPTION = re.compile(r"«(!?)(\w+)(?:=([^»]*))?»")
INTERFACES = ("python", "cli", "napari")

# How each interface sets an option ({value}: the value named in the message, unquoted).
# Options missing here read "pass name=value" (Python), "pass --name value" (command line)
# and "set name to value" (widget).
_PHRASES = {
    "checkpoint": {
        "napari": "enter {value} in the Model tab's Weights field (or pick it with File…)",
        "napari-unset": "clear the Model tab's Weights field and untick 'untrained (random) "
        "weights'",
    },
    "tokenizer": {
        "napari": "set the NAPARI_CONCH_TOKENIZER environment variable to {value} and "
        "restart napari",
    },
    "mpp": {
        "python": "pass mpp={value} to open_slide",
        "napari": "enter it in the Slide tab's Pixel size field (for example {value})",
    },
    "token": {  # never a command-line argument: process listings would show it
        "python": "pass token=… (or set $HF_TOKEN, or run `huggingface-cli login`)",
        "cli": "set $HF_TOKEN (or run `huggingface-cli login`)",
        "napari": "paste a Hugging Face token into the Model tab's Token field",
    },
}
_SPECIAL = {
    ("napari", "checkpoint", "random"): "tick 'untrained (random) weights' in the Model tab",
}


def for_interface(message: str, interface: str = "python") -> str:
    """Render the option instructions in ``message`` for the interface showing it.

    ``«checkpoint='random'»`` becomes "pass checkpoint='random'" for Python,
    "pass --checkpoint random" on the command line, and "tick 'untrained (random) weights'
    in the Model tab" in the napari widget.
    """
    if interface not in INTERFACES:
        raise ValueError(f"interface must be one of {INTERFACES}; got {interface!r}.")

    def render(match: re.Match) -> str:
        unset, name, value = match.group(1), match.group(2), match.group(3) or ""
        flag = f"--{name.replace('_', '-')}"
        if unset:
            default = {
                "python": f"leave {name} unset",
                "cli": f"leave out {flag}",
                "napari": f"leave {name.replace('_', ' ')} empty",
            }[interface]
            return _PHRASES.get(name, {}).get(f"{interface}-unset", default)
        bare = value.strip("'\"")
        special = _SPECIAL.get((interface, name, bare))
        if special:
            return special
        default = {
            "python": f"pass {name}={value}",
            "cli": f"pass {flag} {bare}",
            "napari": f"set {name.replace('_', ' ')} to {bare}",
        }[interface]
        phrase = _PHRASES.get(name, {}).get(interface)
        return phrase.format(value=bare) if phrase else default

    return _OPTION.sub(render, message)


def describe(exc: BaseException, interface: str = "python") -> str:
    """The message of ``exc`` as the given interface should show it."""
    text = exc.render(interface) if isinstance(exc, NapariConchError) else str(exc)
    return text or type(exc).__name__


class NapariConchError(Exception):
    """Base class of all napari-conch errors.

    Messages may hold option instructions (``«name=value»``); ``str(exc)`` phrases them for
    Python, :meth:`render` for the command line or the napari widget.
    """

    def _raw(self) -> str:
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()

    def render(self, interface: str = "python") -> str:
        return for_interface(self._raw(), interface)

    def __str__(self) -> str:
        return self.render("python")


class CheckpointError(NapariConchError, ValueError):
    """A checkpoint file exists but cannot be used (corrupt, unsafe or of another model)."""


class WeightsNotFoundError(NapariConchError, FileNotFoundError):
    """No model weights were found in any of the places napari-conch looks."""


class TokenizerNotFoundError(NapariConchError, FileNotFoundError):
    """The text tokenizer file was not found."""


class UnknownModelError(NapariConchError, KeyError):
    """``load_model`` was asked for a model name that is not registered."""

    def _raw(self) -> str:  # KeyError would otherwise print the repr of the message
        return str(self.args[0]) if self.args else ""


class SlideReadError(NapariConchError, OSError):
    """A slide or image file cannot be opened or read; the message names the file and why."""


class MissingMppError(NapariConchError, ValueError):
    """An analysis needs the slide's µm per pixel, which the file does not record."""


class OutputError(NapariConchError, OSError):
    """An output file or folder cannot be written (not a folder, no permission, full disk)."""


class CacheError(NapariConchError, OSError):
    """The embedding cache cannot be used (location not writable, store damaged, …)."""
