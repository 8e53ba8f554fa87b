"""Deprecation paths: renamed public names keep working for one release.

An old name still does what it did, with a :class:`DeprecationWarning` that names its
replacement; docs/api-changes.md lists every one. Three kinds of change are covered — a
name that moved or was renamed (:func:`forward_names`), a keyword argument that was renamed
(:func:`renamed_keywords`), and arguments that became keyword-only
(:func:`keyword_only_since`).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import warnings

# Deprecated names are removed in this release.
REMOVED_IN = "0.3"


def warn_deprecated(old: str, new: str, stacklevel: int = 3) -> None:
    """Warn that ``old`` is deprecated in favour of ``new``."""
    warnings.warn(
        f"{old} is deprecated; use {new} instead (docs/api-changes.md). It goes away in "
        f"napari-conch {REMOVED_IN}.",
        DeprecationWarning,
        stacklevel=stacklevel,
    )


def forward_names(module: str, moves: dict[str, str]):
    """A module ``__getattr__`` for names that moved or were renamed.

    ``moves`` maps an old name to ``"package.module:new_name"`` (or ``"package.module"`` when
    the name stayed the same). The value is imported from its new home on access.
    """

    def __getattr__(name: str):
        target = moves.get(name)
        if target is None:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        home, _, new = target.partition(":")
        new = new or name
        warn_deprecated(f"{module}.{name}", f"{home}.{new}")
        return getattr(importlib.import_module(home), new)

    return __getattr__


def renamed_keywords(**old_to_new: str):
    """Accept a keyword argument under its old name (with a warning)."""

    def decorate(function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            for old, new in old_to_new.items():
                if old in kwargs:
                    if new in kwargs:
                        raise TypeError(
                            f"{function.__name__}() got both {old}= and {new}=; use {new}= only."
                        )
                    warn_deprecated(f"{function.__name__}({old}=...)", f"{new}=")
                    kwargs[new] = kwargs.pop(old)
            return function(*args, **kwargs)

        return wrapper

    return decorate


def keyword_only_since(*names: str):
    """Accept, in this order and with a warning, arguments that used to be positional and
    are keyword-only now (``names``: the keyword-only parameters they map to)."""

    def decorate(function):
        kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        parameters = inspect.signature(function).parameters.values()
        positional = sum(1 for p in parameters if p.kind in kinds)

        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            if len(args) > positional:
                extra = args[positional:]
                if len(extra) > len(names):
                    raise TypeError(
                        f"{function.__name__}() takes {positional} positional arguments "
                        f"but {len(args)} were given."
                    )
                for name, value in zip(names, extra, strict=False):
                    if name in kwargs:
                        raise TypeError(
                            f"{function.__name__}() got multiple values for argument {name!r}."
                        )
                    kwargs[name] = value
                given = ", ".join(names[: len(extra)])
                warn_deprecated(
                    f"passing {given} to {function.__name__}() by position",
                    f"keywords ({names[0]}=...)",
                )
                args = args[:positional]
            return function(*args, **kwargs)

        return wrapper

    return decorate


class renamed_attribute:
    """A class attribute that was renamed: reading the old name (on the class or an
    instance) warns and gives the new one's value."""

    def __init__(self, new: str):
        self.new = new

    def __set_name__(self, owner, name: str) -> None:
        self.old = name

    def __get__(self, instance, owner):
        warn_deprecated(f"{owner.__name__}.{self.old}", f"{owner.__name__}.{self.new}")
        return getattr(owner if instance is None else instance, self.new)
