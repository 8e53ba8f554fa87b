"""Prompt sets: classes × synonyms × templates → one text embedding per class (DESIGN §3).

The class embedding is the mean of the L2-normalised text embeddings of every synonym in
every template (the literal ``CLASSNAME`` replaced), renormalised — the recipe of CONCH's
``zero_shot_classifier``. Prompt files in CONCH's JSON format load and save unchanged::

    {"0": {"classnames": {"LUAD": ["adenocarcinoma", "lung adenocarcinoma"], ...},
           "templates": ["CLASSNAME.", "an H&E image of CLASSNAME.", ...]}}
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

PLACEHOLDER = "CLASSNAME"

# Our own template wording (CONCH's prompt files can be loaded instead).
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "CLASSNAME.",
    "a histology image of CLASSNAME.",
    "a microscopic view of CLASSNAME.",
    "H&E-stained tissue showing CLASSNAME.",
    "a whole-slide image region containing CLASSNAME.",
    "pathology: CLASSNAME.",
    "an example of CLASSNAME in a tissue section.",
)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _read_json_source(source):
    """A path to a prompt file, or JSON text (anything that is not an existing file and
    parses as JSON)."""
    text = source if isinstance(source, str) else None
    looks_like_json = text is not None and text.lstrip()[:1] in ("{", "[")
    if not looks_like_json:
        path = Path(source)
        try:
            is_file = path.is_file()
        except (OSError, ValueError):  # not a usable path (too long, NUL bytes, ...)
            is_file = False
        if is_file:
            try:
                return json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise ValueError(f"Prompt file {path} is not valid JSON: {exc}") from exc
            except (OSError, UnicodeDecodeError) as exc:
                raise ValueError(f"Prompt file {path} cannot be read: {exc}") from exc
        if text is None:
            raise FileNotFoundError(f"Prompt file {path} does not exist.")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        if looks_like_json:
            raise ValueError(f"Prompt JSON is not valid: {exc}") from exc
        raise FileNotFoundError(
            f"Prompt file {source} does not exist (and the text is not JSON either)."
        ) from exc


class PromptSet:
    """Classes, each with synonyms, and the templates they are put into.

    Parameters
    ----------
    classes : mapping or sequence
        ``{"tumor": ["tumor", "carcinoma"], ...}`` or plain names (each its own synonym).
    templates : sequence of str, optional
        Each contains ``CLASSNAME``; default :data:`DEFAULT_TEMPLATES`.

    Raises
    ------
    ValueError
        No classes, an empty or blank name or synonym, two classes with the same name, or a
        template without ``CLASSNAME``. Repeated synonyms are dropped with a warning.
    """

    def __init__(self, classes, templates: Sequence[str] | None = None):
        if isinstance(classes, PromptSet):
            templates = classes.templates if templates is None else templates
            classes = classes.classes
        if isinstance(classes, str):
            classes = [classes]
        if not isinstance(classes, Mapping):
            classes = {name: [name] for name in _as_list(classes, "class names")}
        if not classes:
            raise ValueError("A prompt set needs at least one class.")
        cleaned: dict[str, list[str]] = {}
        seen: dict[str, str] = {}
        for name, synonyms in classes.items():
            name = _clean(name, "class name")
            key = name.casefold()
            if key in seen:
                raise ValueError(
                    f"Class {name!r} appears twice (as {seen[key]!r}); class names must differ."
                )
            seen[key] = name
            if isinstance(synonyms, str):
                synonyms = [synonyms]
            synonyms = [
                _clean(s, f"synonym of {name!r}")
                for s in _as_list(synonyms, f"synonyms of {name!r}")
            ]
            if not synonyms:
                raise ValueError(f"Class {name!r} has no synonyms; give at least one phrase.")
            unique = list(dict.fromkeys(synonyms))
            if len(unique) < len(synonyms):
                logger.warning("Class %r lists a synonym more than once; using each once.", name)
            cleaned[name] = unique
        templates = list(
            DEFAULT_TEMPLATES if templates is None else _as_list(templates, "templates")
        )
        if not templates:
            raise ValueError("A prompt set needs at least one template.")
        templates = [_clean(t, "template") for t in templates]
        for template in templates:
            if PLACEHOLDER not in template:
                raise ValueError(
                    f"Template {template!r} lacks the placeholder {PLACEHOLDER!r} where the "
                    "class name goes, e.g. 'an H&E image of CLASSNAME.'"
                )
        self.classes: dict[str, list[str]] = cleaned
        self.templates: list[str] = list(dict.fromkeys(templates))
        self._embeddings: dict[str, np.ndarray] = {}

    # -- construction & I/O --------------------------------------------------------------

    @classmethod
    def from_json(cls, source) -> PromptSet:
        """Read CONCH's prompt JSON (a path, a JSON string or the parsed dict)."""
        data = source
        if isinstance(source, str) and not source.strip():
            raise ValueError("The prompt JSON is empty; give a file or a JSON object.")
        if isinstance(source, (str, os.PathLike)):
            data = _read_json_source(source)
        if not isinstance(data, Mapping):
            raise ValueError(
                'Prompt JSON must be an object like {"0": {"classnames": …, "templates": […]}}.'
            )
        body = data
        if "classnames" not in data:
            inner = [v for v in data.values() if isinstance(v, Mapping) and "classnames" in v]
            if len(inner) != 1:
                raise ValueError(
                    "Prompt JSON must hold one prompt set with 'classnames' and 'templates', "
                    'as in CONCH\'s prompts/*.json: {"0": {"classnames": {"tumor": '
                    '["tumor", ...]}, "templates": ["CLASSNAME.", ...]}}.'
                )
            body = inner[0]
        classnames = body.get("classnames")
        if not isinstance(classnames, (Mapping, list)):
            raise ValueError("'classnames' must map each class to a list of synonyms.")
        return cls(classnames, body.get("templates"))

    def to_json(self, path: str | os.PathLike | None = None) -> dict:
        """The set in CONCH's prompt-JSON format; also written to ``path`` when given."""
        data = {
            "0": {
                "classnames": {k: list(v) for k, v in self.classes.items()},
                "templates": list(self.templates),
            }
        }
        if path is not None:
            Path(path).write_text(
                json.dumps(data, indent=4, ensure_ascii=False) + "\n", encoding="utf-8"
            )
        return data

    # -- use ------------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        return list(self.classes)

    def __len__(self) -> int:
        return len(self.classes)

    def prompts(self, name: str) -> list[str]:
        """Every synonym of class ``name`` in every template."""
        return [t.replace(PLACEHOLDER, s) for s in self.classes[name] for t in self.templates]

    def class_embeddings(self, model) -> np.ndarray:
        """(C, D) unit vectors, one per class, in the model's joint space (cached per model)."""
        from .protocol import weights_hash

        key = f"{model.name}:{weights_hash(model)}"
        cached = self._embeddings.get(key)
        if cached is not None:
            return cached
        rows = []
        for name in self.classes:
            emb = np.asarray(
                model.encode_texts(self.prompts(name), normalize=True), dtype=np.float32
            )
            emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
            mean = emb.mean(axis=0)
            rows.append(mean / max(float(np.linalg.norm(mean)), 1e-12))
        weights = np.stack(rows).astype(np.float32)
        self._embeddings[key] = weights
        return weights

    def with_class(self, name: str, synonyms: Sequence[str]) -> PromptSet:
        """A copy with one more class."""
        return PromptSet({**self.classes, name: list(synonyms)}, self.templates)

    def with_background(self, background) -> tuple[PromptSet, int | None]:
        """The prompts an analysis with ``background`` uses, and the background's index.

        ``background`` is a class of this set (its index is returned), phrases for an extra
        class called "background" (appended), or None (no background class).
        """
        if background is None:
            return self, None
        if isinstance(background, str) and background in self.classes:
            return self, self.names.index(background)
        phrases = [background] if isinstance(background, str) else list(background)
        if "background" in self.classes:
            raise ValueError(
                "The prompts already have a 'background' class; pass background='background'."
            )
        extended = self.with_class("background", phrases)
        return extended, len(extended) - 1

    def __eq__(self, other) -> bool:
        return (
            isinstance(other, PromptSet)
            and self.classes == other.classes
            and self.templates == other.templates
        )

    def __repr__(self) -> str:
        names = ", ".join(self.names)
        return f"PromptSet({len(self)} classes: {names}; {len(self.templates)} templates)"


def as_prompt_set(prompts) -> PromptSet:
    """Accept a PromptSet, a prompt-JSON path, or class names / a name→synonyms mapping."""
    if isinstance(prompts, PromptSet):
        return prompts
    if isinstance(prompts, os.PathLike) or (
        isinstance(prompts, str) and prompts.lower().endswith(".json")
    ):
        return PromptSet.from_json(prompts)
    return PromptSet(prompts)


def encode_prompts(model, prompts, background=None) -> np.ndarray:
    """The class embeddings an analysis of ``prompts`` (with ``background``) will use,
    computed now — so a prompt the model cannot encode surfaces before any tile is embedded
    (the model's text cache keeps them for the analysis)."""
    prompt_set, _ = as_prompt_set(prompts).with_background(background)
    return prompt_set.class_embeddings(model)


def _as_list(value, what: str) -> list:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise TypeError(f"Expected a list of {what}; got {type(value).__name__}.")
    return list(value)


def _clean(text, what: str) -> str:
    """Strip surrounding blanks; replace control characters (which the tokenizer would turn
    into noise) with spaces, saying so."""
    if not isinstance(text, str):
        raise TypeError(f"Each {what} must be text; got {type(text).__name__}: {text!r}.")
    cleaned = _CONTROL.sub(" ", text)
    if cleaned != text:
        logger.warning("Replaced control characters in %s %r with spaces.", what, text[:40])
    cleaned = cleaned.strip()
    if not cleaned:
        raise ValueError(f"Empty {what}: {text!r}. Give some text.")
    return cleaned


def softmax_probabilities(similarity: np.ndarray, logit_scale: float) -> np.ndarray:
    """Class probabilities from cosine similarities (..., C): ``softmax(exp(logit_scale) · s)``."""
    logits = np.exp(logit_scale) * np.asarray(similarity, dtype=np.float64)
    logits -= np.nanmax(logits, axis=-1, keepdims=True)
    p = np.exp(logits)
    return (p / p.sum(axis=-1, keepdims=True)).astype(np.float32)
