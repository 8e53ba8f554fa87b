"""Prompt ensembling: class names × templates → one embedding per class (DESIGN §3)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

PLACEHOLDER = "CLASSNAME"

# Our own template wording (the CONCH prompt files can be loaded instead).
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "CLASSNAME.",
    "a histology image of CLASSNAME.",
    "a microscopic view of CLASSNAME.",
    "H&E-stained tissue showing CLASSNAME.",
    "a whole-slide image region containing CLASSNAME.",
    "pathology: CLASSNAME.",
    "an example of CLASSNAME in a tissue section.",
)


def class_embeddings(
    model,
    classes: Mapping[str, Sequence[str]] | Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
) -> tuple[list[str], np.ndarray]:
    """One joint-space vector per class: the renormalised mean of normalised prompt embeddings.

    Parameters
    ----------
    model : ImageTextModel
    classes : mapping or sequence
        ``{"tumor": ["tumor", "carcinoma"], ...}`` (name → synonyms) or plain names.
    templates : sequence of str
        Each holds the literal ``CLASSNAME``.

    Returns
    -------
    names : list of str
    weights : ndarray (C, D), float32, rows of unit length
    """
    if not isinstance(classes, Mapping):
        classes = {name: [name] for name in classes}
    if not classes:
        raise ValueError("Give at least one class.")
    templates = list(templates)
    if not templates:
        raise ValueError("Give at least one template.")
    bad = [t for t in templates if PLACEHOLDER not in t]
    if bad:
        raise ValueError(f"Template {bad[0]!r} lacks the placeholder {PLACEHOLDER!r}.")
    names, rows = [], []
    for name, synonyms in classes.items():
        synonyms = [s for s in synonyms if s and s.strip()]
        if not str(name).strip() or not synonyms:
            raise ValueError(f"Class {name!r} has an empty name or no synonyms.")
        prompts = [t.replace(PLACEHOLDER, s) for s in synonyms for t in templates]
        emb = np.asarray(model.encode_texts(prompts, normalize=True), dtype=np.float32)
        mean = emb.mean(axis=0)
        rows.append(mean / max(float(np.linalg.norm(mean)), 1e-12))
        names.append(str(name))
    return names, np.stack(rows).astype(np.float32)


def softmax_probabilities(similarity: np.ndarray, logit_scale: float) -> np.ndarray:
    """Class probabilities from cosine similarities (N, C): ``softmax(exp(logit_scale) · s)``."""
    logits = np.exp(logit_scale) * np.asarray(similarity, dtype=np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return (p / p.sum(axis=1, keepdims=True)).astype(np.float32)
