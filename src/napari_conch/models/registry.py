"""The model registry: names → factories, for :func:`load_model`, the widget and the CLI.

Built-in backends register here; so can users (:func:`register_model`) and other packages,
through the ``napari_conch.models`` entry-point group::

    # pyproject.toml of another package
    [project.entry-points."napari_conch.models"]
    my_model = "my_package.models:build_my_model"

A factory is called with the keyword arguments of :func:`load_model` it accepts
(``checkpoint``, ``tokenizer``, ``device``, ``precision`` and any options) and returns an
object implementing :class:`~napari_conch.models.ImageTextModel`.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import UnknownModelError

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "napari_conch.models"


@dataclass(frozen=True)
class ModelEntry:
    name: str
    factory: Callable[..., object]
    description: str = ""
    aliases: tuple[str, ...] = field(default_factory=tuple)
    source: str = "napari-conch"
    # Optional: called with load_model's keyword arguments (those it accepts) before a long
    # job; raises now what prompts would raise later (a missing tokenizer), builds nothing.
    check_text: Callable[..., None] | None = None


_ENTRIES: dict[str, ModelEntry] = {}
_ALIASES: dict[str, str] = {}
_LOCK = threading.Lock()
_ENTRY_POINTS_LOADED = False


def _key(name: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise TypeError(f"A model name must be a non-empty string; got {name!r}.")
    return name.strip().lower()


def register_model(
    name: str,
    factory: Callable[..., object] | None = None,
    *,
    description: str = "",
    aliases: tuple[str, ...] = (),
    overwrite: bool = False,
    check_text: Callable[..., None] | None = None,
):
    """Make ``factory`` loadable as ``load_model(name)`` and selectable in the widget and CLI.

    Parameters
    ----------
    name : str
        The name users type (case-insensitive).
    factory : callable, optional
        Returns a model implementing the protocol. It receives the keyword arguments of
        ``load_model`` that its signature accepts. Omit it to use ``register_model`` as a
        decorator.
    description : str
        One line shown by ``napari-conch info`` and in the widget's tooltip.
    aliases : tuple of str
        Other accepted spellings.
    overwrite : bool
        Replace an existing registration of ``name`` (otherwise that is an error).
    check_text : callable, optional
        Called with the ``load_model`` arguments it accepts before a long job that needs
        prompts; raises (e.g. a missing tokenizer) without building the model, so the
        command line and the widget fail in a second instead of after embedding a slide.

    Examples
    --------
    >>> @register_model("my_model", description="my image–text model")  # doctest: +SKIP
    ... def build(checkpoint=None, device="auto", **options):
    ...     return MyModel(checkpoint, device)
    """
    if factory is None:
        return lambda f: register_model(
            name,
            f,
            description=description,
            aliases=aliases,
            overwrite=overwrite,
            check_text=check_text,
        )
    if not callable(factory):
        raise TypeError(f"The factory for {name!r} must be callable; got {factory!r}.")
    key = _key(name)
    entry = ModelEntry(
        key,
        factory,
        description,
        tuple(_key(a) for a in aliases),
        _where(factory),
        check_text,
    )
    with _LOCK:
        taken = key in _ENTRIES or key in _ALIASES
        if taken and not overwrite:
            raise ValueError(
                f"A model named {name!r} is already registered ({_describe(key)}); pass "
                "overwrite=True to replace it."
            )
        _ENTRIES[key] = entry
        for alias in entry.aliases:
            _ALIASES[alias] = key
    return factory


def unregister_model(name: str) -> None:
    """Remove a registration (for tests and interactive sessions)."""
    key = _key(name)
    with _LOCK:
        entry = _ENTRIES.pop(key, None)
        if entry is None:
            raise UnknownModelError(f"No model named {name!r} is registered.")
        for alias in entry.aliases:
            _ALIASES.pop(alias, None)


def available_models() -> list[str]:
    """Names accepted by :func:`load_model`: built-in, registered and from entry points."""
    _load_entry_points()
    with _LOCK:
        return sorted(_ENTRIES)


def model_entry(name: str) -> ModelEntry:
    """The registration of ``name`` (or of an alias of it)."""
    _load_entry_points()
    key = _key(name)
    with _LOCK:
        key = _ALIASES.get(key, key)
        entry = _ENTRIES.get(key)
    if entry is None:
        raise UnknownModelError(
            f"Unknown model {name!r}. Available: {', '.join(available_models())}. "
            "Register your own with napari_conch.register_model(name, factory)."
        )
    return entry


def check_text_side(name: str, **kwargs) -> None:
    """Raise now if prompts for model ``name`` would fail later (e.g. CONCH without its
    tokenizer); builds nothing. Models registered without a ``check_text`` always pass."""
    entry = model_entry(name)
    if entry.check_text is not None:
        _call_accepting(entry.check_text, entry, kwargs, strict=False)


def call_factory(entry: ModelEntry, **kwargs) -> object:
    """Call a factory with the arguments its signature accepts (None values dropped when it
    does not take them, so simple user factories need not list every option)."""
    return _call_accepting(entry.factory, entry, kwargs)


def _call_accepting(function, entry: ModelEntry, kwargs: dict, strict: bool = True):
    try:
        params = inspect.signature(function).parameters
    except (TypeError, ValueError):  # builtins without a signature: pass everything
        return function(**kwargs)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return function(**kwargs)
    unknown = [k for k, v in kwargs.items() if k not in params and v is not None]
    unused_defaults = {"device": "auto", "precision": "auto"}
    unknown = [k for k in unknown if unused_defaults.get(k, object()) != kwargs[k]]
    if unknown and strict:
        raise TypeError(
            f"The factory of model {entry.name!r} ({entry.source}) does not accept "
            f"{', '.join(unknown)}."
        )
    return function(**{k: v for k, v in kwargs.items() if k in params})


def _where(factory) -> str:
    module = getattr(factory, "__module__", None) or "?"
    return f"{module}.{getattr(factory, '__qualname__', repr(factory))}"


def _describe(key: str) -> str:
    entry = _ENTRIES.get(_ALIASES.get(key, key))
    return entry.source if entry else "an alias"


def _load_entry_points() -> None:
    """Register the factories other packages declare (once; a broken one is logged, not
    fatal, so one bad plugin cannot hide every model)."""
    global _ENTRY_POINTS_LOADED
    if _ENTRY_POINTS_LOADED:
        return
    _ENTRY_POINTS_LOADED = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            factory = ep.load()
            register_model(ep.name, factory, description=f"from {ep.value}")
        except Exception as exc:  # a third-party package's problem: report and go on
            logger.warning("Could not register model %r from %s: %s", ep.name, ep.value, exc)
