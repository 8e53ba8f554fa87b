"""Queries in the joint image–text space: prompts and example tiles as unit vectors, and
the scores of embeddings against them (minus a negative prompt, as the maps draw it)."""

from __future__ import annotations

import numpy as np


def text_queries(model, text) -> tuple[np.ndarray, list[str]]:
    """Unit text embeddings (Q, D) of one prompt or a list, and the prompts."""
    queries = [text] if isinstance(text, str) else list(text)
    if not queries or not all(isinstance(q, str) and q.strip() for q in queries):
        raise ValueError("text must be a non-empty prompt or a list of them.")
    return np.asarray(model.encode_texts(queries, normalize=True), np.float32), queries


def phrase_direction(model, phrases) -> np.ndarray:
    """One query from several phrases: the unit mean of their embeddings."""
    return mean_direction(text_queries(model, phrases)[0])


def query_scores(projected, vectors, labels, model, negative=None):
    """Cosines (N, Q) of joint-space rows to the query vectors, minus their cosine to the
    negative prompts' mean direction when given; with the queries' labels."""
    scores = projected @ vectors.T
    if negative is None:
        return scores, list(labels)
    negatives = [negative] if isinstance(negative, str) else list(negative)
    against = phrase_direction(model, negatives)
    return (
        scores - (projected @ against)[:, None],
        [f"{q} − {', '.join(negatives)}" for q in labels],
    )


def mean_direction(vectors) -> np.ndarray:
    """The unit vector along the mean of ``vectors`` (several prompts or tiles → one query)."""
    mean = np.asarray(vectors, np.float32).mean(axis=0)
    return (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)


def exemplar_direction(emb, model, exemplar, projected: np.ndarray) -> np.ndarray:
    """The query of example tiles: (y, x) µm points (the tiles around them), tile
    positions, or (M, D) pre-projection features — the unit mean of their embeddings."""
    array = np.asarray(exemplar)
    if array.ndim == 2 and array.shape[1] == emb.features.shape[1] and array.dtype.kind == "f":
        vectors = np.asarray(model.project(array, normalize=True), np.float32)
    else:
        if array.dtype.kind in "iu":
            positions = array.ravel().astype(np.int64)
        else:
            points = np.atleast_2d(array.astype(float))
            if points.shape[1] != 2:
                raise ValueError("exemplar points must be (y, x) pairs in µm.")
            positions = np.array([emb.grid.tile_at_um(y, x) for y, x in points], np.int64)
        if len(positions) == 0 or positions.min() < 0 or positions.max() >= len(emb):
            raise ValueError("exemplar tiles must be positions of tiles in these embeddings.")
        vectors = projected[positions]
        vectors = vectors[np.isfinite(vectors).all(axis=1)]
        if len(vectors) == 0:
            raise ValueError("The exemplar tiles are not embedded yet.")
    return mean_direction(vectors)
