"""Exception types raised by napari-conch.

Every error a user can trigger derives from :class:`NapariConchError`, so a script or the
GUI can catch the whole family, while the standard bases (``ValueError``,
``FileNotFoundError``) keep ``except ValueError`` style handlers working.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field

# An instruction to set an option, written «name=value» inside a message (or «!name»: leave
# it unset). Each interface words it for its own controls: Python users read "pass
# name=value", the command line "pass --name value", the napari widget the control that sets
# it. The library knows only the Python wording; the front ends bring theirs.
_OPTION = re.compile(r"«(!?)(\w+)(?:=([^»]*))?»")


@dataclass(frozen=True)
class Wording:
    """How one interface phrases option instructions.

    ``set`` and ``unset`` are the defaults, formatted with ``name`` (as given), ``words``
    (underscores as spaces), ``flag`` (``--name-like-this``), ``value`` (as written) and
    ``bare`` (without quotes). ``options`` holds per-option texts (keys ``"set"``,
    ``"unset"``; ``{value}`` is the bare value); ``special`` texts for one value of one
    option.
    """

    set: str = "pass {name}={value}"
    unset: str = "leave {name} unset"
    options: dict = field(default_factory=dict)
    special: dict = field(default_factory=dict)

    def render(self, message: str) -> str:
        def phrase(match: re.Match) -> str:
            unset, name, value = match.group(1), match.group(2), match.group(3) or ""
            bare = value.strip("'\"")
            names = {
                "name": name,
                "words": name.replace("_", " "),
                "flag": f"--{name.replace('_', '-')}",
                "value": value,
                "bare": bare,
            }
            own = self.options.get(name, {})
            if unset:
                return own.get("unset") or self.unset.format(**names)
            special = self.special.get((name, bare))
            if special:
                return special
            text = own.get("set")
            return text.format(value=bare) if text else self.set.format(**names)

        return _OPTION.sub(phrase, message)


PYTHON = Wording(
    options={
        "mpp": {"set": "pass mpp={value} to open_slide"},
        "token": {"set": "pass token=… (or set $HF_TOKEN, or run `huggingface-cli login`)"},
    }
)
# The front ends' wordings, imported when first needed (each module defines WORDING).
_WORDINGS: dict = {"python": PYTHON}
_FRONT_ENDS = {"cli": "napari_conch.cli.wording", "napari": "napari_conch._napari.wording"}
INTERFACES = ("python", *_FRONT_ENDS)


def register_wording(interface: str, wording: Wording) -> None:
    """Phrase option instructions for another front end (a plugin's own GUI)."""
    _WORDINGS[interface] = wording


def wording(interface: str) -> Wording:
    """The :class:`Wording` of ``interface`` ("python", "cli", "napari" or a registered one)."""
    if interface not in _WORDINGS and interface in _FRONT_ENDS:
        _WORDINGS[interface] = importlib.import_module(_FRONT_ENDS[interface]).WORDING
    if interface not in _WORDINGS:
        raise ValueError(
            f"interface must be one of {sorted({*INTERFACES, *_WORDINGS})}; got {interface!r}."
        )
    return _WORDINGS[interface]


def for_interface(message: str, interface: str = "python") -> str:
    """Render the option instructions in ``message`` for the interface showing it.

    ``«checkpoint='random'»`` becomes "pass checkpoint='random'" for Python; the command
    line and the napari widget name their own option or control for it.
    """
    return wording(interface).render(message)


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


class ResultReadError(NapariConchError, ValueError):
    """A file or folder does not hold a napari-conch result."""
