"""Few-shot maps: a tile classifier taught from a pathologist's annotations, on the cached
features.

The classifier is linear on the model's joint-space embeddings (projected, L2-normalised),
where the text prompts live: with ``model`` and ``prompts`` its class weights start as the
prompts' class embeddings and the logit scale as the model's, so before any annotation it
*is* the zero-shot classifier, and fitting moves it only as far as the annotations ask
(a penalty on the distance to the text weights — the text-initialised linear probe of LP++
and "LP+text"). Classes nobody annotated keep their text. Without text it is a plain,
ridge-regularised linear probe on the normalised features.

Examples are the tiles the annotations cover: a tile whose tissue lies at least half
(:data:`~napari_conch.tiling.CELL_TISSUE_MIN`) in one class's regions, measured on the map
cells as the maps measure tissue. A classifier carries everything it needs (the projection
too, for models whose projection is linear — every built-in one), so it applies to any
slide embedded by the same model, without the model; it is saved as NPZ + JSON, never
pickle, and refuses features of another model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import maps
from .annotations import Annotations, read_annotations
from .deprecation import keyword_only_since
from .embeddings import Embeddings
from .provenance import Provenance
from .tiling import CELL_TISSUE_MIN

logger = logging.getLogger(__name__)

__all__ = [
    "CLASSIFIER_SUFFIX",
    "TileClassifier",
    "fit_classifier",
    "load_classifier",
    "tile_examples",
]

CLASSIFIER_SUFFIX = ".classifier.npz"
FORMAT = "napari-conch tile classifier"
FORMAT_VERSION = 1
# Strength of the pull toward the starting weights (text, or zero for a plain probe),
# relative to the mean cross-entropy over the examples.
DEFAULT_REGULARIZATION = {"text": 1e-2, "plain": 1e-4}
# A plain probe's fixed temperature on unit vectors (its weights set the scale).
_PLAIN_SCALE = 10.0
# (weights hash, width) → the model's projection as (matrix, bias), worked out once
_PROJECTIONS: dict = {}


@dataclass
class TileClassifier:
    """A linear classifier of tile features, taught from annotations.

    Attributes
    ----------
    class_names : list of str
    weights : ndarray (C, E) float32
        Class directions in the space the classifier reads (joint space with a
        projection, else the normalised features).
    bias : ndarray (C,) float32
    scale : float
        Multiplies the cosines before the softmax (the model's ``exp(logit_scale)`` when
        text-initialised).
    projection : ndarray (D, E) float32 or None
        Pre-projection features → joint space (then L2-normalised); None: the features
        themselves are normalised.
    projection_bias : ndarray (E,) float32 or None
    model : dict
        ``name``, ``weights_hash``, ``trained`` of the model whose features it reads.
    method : str
        ``"text-initialised linear probe"`` or ``"linear probe"``.
    details : dict
        Prompts, regularisation, the annotations it was taught on (fingerprint, regions,
        examples per class), when.
    """

    class_names: list[str]
    weights: np.ndarray
    bias: np.ndarray
    scale: float
    projection: np.ndarray | None
    projection_bias: np.ndarray | None
    model: dict
    method: str
    details: dict = field(default_factory=dict)

    @property
    def feature_dim(self) -> int:
        return int(
            self.projection.shape[0] if self.projection is not None else self.weights.shape[1]
        )

    @property
    def trained_on(self) -> Annotations | None:
        """The annotations it was taught on (level-0 px), when it records them."""
        regions = self.details.get("annotations", {}).get("geojson")
        if not regions:
            return None
        return read_annotations(regions)

    def check_features(self, emb: Embeddings) -> None:
        """Refuse embeddings made by another model (or of another width)."""
        made_by = (emb.metadata.get("model") or {}) if emb.metadata else {}
        ours, theirs = self.model.get("weights_hash"), made_by.get("weights_hash")
        if ours and theirs and ours != theirs:
            raise ValueError(
                f"This classifier was taught on {self.model.get('name')} features (weights "
                f"{ours[:12]}…); these embeddings come from {made_by.get('name')} (weights "
                f"{theirs[:12]}…). Embed the slide with the model it was taught on, or teach "
                "a classifier on this model's features."
            )
        if emb.features.shape[1] != self.feature_dim:
            raise ValueError(
                f"This classifier reads {self.feature_dim}-wide features; these are "
                f"{emb.features.shape[1]} wide."
            )

    def embed(self, features, dtype=np.float64) -> np.ndarray:
        """Features (N, D) → the unit vectors the classifier reads (N, E), in ``dtype``
        (float64 for the few examples a fit reads, float32 for a whole slide)."""
        x = np.asarray(features, dtype)
        if self.projection is not None:
            x = x @ self.projection.astype(dtype)
            if self.projection_bias is not None:
                x = x + self.projection_bias.astype(dtype)
        return _unit(x)

    def probabilities(self, unit_vectors) -> np.ndarray:
        """Class probabilities (N, C) float32 of vectors already in the classifier's space
        (what :meth:`embed` gives; token embeddings for a joint-space classifier)."""
        z = np.asarray(unit_vectors)
        cosine = z @ np.asarray(self.weights, z.dtype).T
        return _softmax(self.scale * cosine.astype(np.float64) + self.bias).astype(np.float32)

    def predict_proba(self, features) -> np.ndarray:
        """Class probabilities (N, C) float32; NaN rows for NaN features."""
        x = np.asarray(features, np.float64)
        finite = np.isfinite(x).all(axis=1)
        out = np.full((len(x), len(self.class_names)), np.nan, np.float32)
        if finite.any():
            out[finite] = self.probabilities(self.embed(x[finite]))
        return out

    def tile_probabilities(self, emb: Embeddings) -> np.ndarray:
        """Class probabilities of every tile of ``emb`` (N, C); NaN for tiles not embedded.
        The tiles' view in the classifier's space is kept with ``emb``, so refitting on the
        same slide (each new annotation) only pays a (N, E) × (E, C) product."""
        key = "tile space " + _space_key(self.projection, self.projection_bias)
        space = emb.derived(key, lambda features: self._space(features, emb.done))
        out = self.probabilities(space)  # all rows at once: rows not embedded are zeros
        out[~emb.done] = np.nan
        return out

    def _space(self, features, done) -> np.ndarray:
        """Unit vectors (float32) of the embedded tiles in this classifier's space."""
        x = np.zeros((len(features), self.weights.shape[1]), np.float32)
        rows = np.flatnonzero(done)
        for start in range(0, len(rows), 65536):  # bounded temporary memory
            part = rows[start : start + 65536]
            x[part] = self.embed(features[part], np.float32)
        return x

    # -- files --------------------------------------------------------------------------

    def save(self, path) -> Path:
        """Write it as one ``.npz`` (arrays + a JSON record; no pickle). A folder gets
        ``classifier.npz`` inside. Returns the file written."""
        from .formats.files import atomic_path

        target = _file_in(path, create=True)
        record = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "class_names": self.class_names,
            "scale": self.scale,
            "model": self.model,
            "method": self.method,
            "details": self.details,
        }
        arrays = {
            "weights": self.weights.astype(np.float32),
            "bias": self.bias.astype(np.float32),
            "record": np.frombuffer(json.dumps(record).encode("utf-8"), np.uint8),
        }
        if self.projection is not None:
            arrays["projection"] = self.projection.astype(np.float32)
        if self.projection_bias is not None:
            arrays["projection_bias"] = self.projection_bias.astype(np.float32)
        with atomic_path(target) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
        return target

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for array in (self.weights, self.bias, self.projection, self.projection_bias):
            if array is not None:
                digest.update(np.ascontiguousarray(array, np.float32).tobytes())
        digest.update(json.dumps(self.class_names).encode())
        return digest.hexdigest()

    def record(self) -> dict:
        """How results name it: method, classes, fingerprint, what it was taught on."""
        # the training regions (as GeoJSON features) go with it: scores leave them out
        taught = dict(self.details.get("annotations") or {})
        return {
            "method": self.method,
            "class_names": list(self.class_names),
            "fingerprint": self.fingerprint(),
            "annotations": taught,
            "regularization": self.details.get("regularization"),
        }

    def __repr__(self) -> str:
        examples = (self.details.get("annotations") or {}).get("examples") or {}
        counts = ", ".join(f"{n}: {examples.get(n, 0)}" for n in self.class_names)
        return (
            f"TileClassifier({self.method} on {self.model.get('name')}; examples per class "
            f"{{{counts}}})"
        )


def load_classifier(path, model=None) -> TileClassifier:
    """Read a classifier :meth:`TileClassifier.save` wrote. With ``model``, refuse one
    taught on another model's features. Files that are not ours (a pickle, a checkpoint)
    are refused without running anything in them."""
    from .protocol import weights_hash

    target = _file_in(path)
    try:
        with np.load(target, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError, EOFError) as exc:
        raise ValueError(
            f"{target} is not a napari-conch classifier ({exc}). Classifiers are .npz files "
            "written by TileClassifier.save or `napari-conch teach`; pickles are never loaded."
        ) from exc
    try:
        record = json.loads(bytes(arrays["record"]).decode("utf-8"))
        if record.get("format") != FORMAT:
            raise KeyError("format")
    except (KeyError, ValueError) as exc:
        raise ValueError(
            f"{target} is an .npz file but not a napari-conch classifier (no classifier record)."
        ) from exc
    if int(record.get("version", 0)) > FORMAT_VERSION:
        raise ValueError(
            f"{target} was written by a newer napari-conch (classifier format "
            f"{record['version']}); upgrade napari-conch to read it."
        )
    classifier = TileClassifier(
        class_names=list(record["class_names"]),
        weights=arrays["weights"],
        bias=arrays["bias"],
        scale=float(record["scale"]),
        projection=arrays.get("projection"),
        projection_bias=arrays.get("projection_bias"),
        model=dict(record["model"]),
        method=str(record["method"]),
        details=dict(record.get("details") or {}),
    )
    if model is not None:
        ours, theirs = classifier.model.get("weights_hash"), weights_hash(model)
        if ours and ours != theirs:
            raise ValueError(
                f"{target} was taught on {classifier.model.get('name')} (weights {ours[:12]}…), "
                f"not on this model ({model.name}, weights {theirs[:12]}…)."
            )
    return classifier


def _file_in(path, create: bool = False) -> Path:
    path = Path(os.fspath(path))
    if path.is_dir() or (create and not path.suffix):
        if create:
            path.mkdir(parents=True, exist_ok=True)
        return path / "classifier.npz"
    return path


# -- examples --------------------------------------------------------------------------------


def tile_examples(emb: Embeddings, annotations: Annotations, class_names=None):
    """Which class each tile is an example of: (N,) int, -1 for none, for ``class_names``
    (default the annotations'). A tile is an example of a class when at least half of its
    tissue lies in that class's regions (and no more than half in ``Ignore*`` regions);
    tiles not embedded yet are not examples."""
    grid = emb.grid
    placed = annotations.placed(grid)
    names = placed.class_names if class_names is None else list(class_names)
    fractions, ignored = placed.cell_fractions(
        grid.cell_shape, grid.stride_px, grid.origin_px, names
    )
    tissue = grid.cell_tissue_fraction.astype(np.float64)
    per_tile = maps.tiles_from_cells(grid, np.concatenate([fractions, ignored[None]]), tissue)
    covered, ignore = per_tile[:, :-1], per_tile[:, -1]
    best = np.argmax(covered, axis=1) if len(names) else np.zeros(len(grid), int)
    best_cover = covered[np.arange(len(grid)), best] if len(names) else np.zeros(len(grid))
    labels = np.where(best_cover >= CELL_TISSUE_MIN, best, -1)
    labels[(ignore > CELL_TISSUE_MIN) | ~emb.done] = -1
    return labels


# -- fitting --------------------------------------------------------------------------------


@keyword_only_since("model", "prompts")
def fit_classifier(
    emb: Embeddings,
    annotations,
    *,
    model=None,
    prompts=None,
    regularization: float | None = None,
    slide=None,
) -> TileClassifier:
    """Teach a tile classifier from annotations on one slide's cached features.

    Parameters
    ----------
    emb : Embeddings
        The slide's embeddings (tiles the annotations cover must be embedded).
    annotations : Annotations, path or napari layer
        See :func:`~napari_conch.read_annotations`.
    model : ImageTextModel, optional
        The model that made ``emb``. With ``prompts``: a text-initialised probe. Without
        prompts, a plain probe in its joint space.
    prompts : PromptSet, prompt JSON, class names or name → synonyms, optional
        Classes the model reads from text; annotated classes not in them are added (their
        text is their name). A class nobody annotated keeps its text weights.
    regularization : float, optional
        Pull toward the starting weights (default 0.01 with text, 1e-4 without).
    slide : optional
        Passed to :func:`~napari_conch.read_annotations` for layers and files.

    The fit is deterministic: the same inputs give the same classifier.
    """
    if not isinstance(annotations, Annotations):
        annotations = read_annotations(annotations, slide=slide)
    if prompts is not None and model is None:
        raise ValueError("prompts= needs model= to read them (the model that made emb).")
    space = _joint_space(model, emb) if model is not None else None
    names, start = _classes_and_start(model, prompts, annotations)
    if len(names) < 2:
        raise ValueError(
            f"A classifier needs at least two classes; the annotations hold only "
            f"{names[0]!r}. Annotate another class, or give the others as text (model= and "
            "prompts=)."
        )
    examples = tile_examples(emb, annotations, names)
    used = examples >= 0
    if not used.any():
        raise ValueError(
            f"No embedded tile lies at least half in an annotated region ({len(annotations)} "
            "regions). Annotate larger regions (a region should cover a few tiles: "
            f"{emb.grid.tile_um:.0f} µm each), or embed the annotated area first."
        )
    counts = {n: int((examples == i).sum()) for i, n in enumerate(names)}
    untaught = [n for n, c in counts.items() if c == 0]
    if untaught and start is None:
        raise ValueError(
            f"No examples of {', '.join(map(repr, untaught))}: without text (model= and "
            "prompts=) every class needs annotated tiles."
        )
    projection, projection_bias = space if space is not None else (None, None)
    probe = TileClassifier(
        names, np.zeros((len(names), 1)), np.zeros(len(names)), 1.0, projection,
        projection_bias, {}, "",
    )  # fmt: skip
    z = probe.embed(emb.features[used])
    y = examples[used]
    if start is not None:
        w0, scale = start, float(np.exp(model.logit_scale))
        method, kind = "text-initialised linear probe", "text"
    else:
        w0, scale = np.zeros((len(names), z.shape[1])), _PLAIN_SCALE
        method, kind = "linear probe", "plain"
    lam = DEFAULT_REGULARIZATION[kind] if regularization is None else float(regularization)
    if lam < 0:
        raise ValueError(f"regularization must be ≥ 0; got {regularization!r}.")
    weights, bias = _fit(z, y, len(names), w0, scale, lam)
    record = _model_record(model, emb)
    placed = annotations.placed(emb.grid)
    made = Provenance.of_features("fit_classifier", record, emb)
    details = {
        "prompts": None if prompts is None else _prompt_json(prompts),
        "regularization": lam,
        "created": made.created,
        "napari_conch": made.napari_conch,
        "annotations": {
            "source": annotations.source,
            "fingerprint": annotations.fingerprint(),
            "regions": {n: sum(r.name == n for r in placed.regions) for n in names},
            "examples": counts,
            "geojson": placed.to_geojson()["features"],
            "slide": (emb.metadata.get("slide") or {}).get("name"),
        },
    }
    if untaught:
        logger.info("Classes taught by text only: %s.", ", ".join(untaught))
    return TileClassifier(
        names, weights.astype(np.float32), bias.astype(np.float32), scale, projection,
        projection_bias, record, method, details,
    )  # fmt: skip


def _joint_space(model, emb: Embeddings):
    """The model's projection as a matrix (D, E) and bias (E,), checked to be linear on these
    features — so the classifier can apply it without the model."""
    from .protocol import check_model, weights_hash

    check_model(model)
    d = emb.features.shape[1]
    key = (weights_hash(model), d)
    if key not in _PROJECTIONS:  # the identity through the projection: its matrix
        eye = np.eye(d, dtype=np.float32)
        zero = np.asarray(model.project(np.zeros((1, d), np.float32), normalize=False))[0]
        matrix = np.asarray(model.project(eye, normalize=False), np.float64) - zero
        while len(_PROJECTIONS) >= 4:  # a few models at most: 1 MB each
            _PROJECTIONS.pop(next(iter(_PROJECTIONS)))
        _PROJECTIONS[key] = (matrix, np.asarray(zero, np.float64))
    matrix, zero = _PROJECTIONS[key]
    rows = np.flatnonzero(emb.done)[:16]
    sample = np.asarray(emb.features[rows], np.float32)
    if len(sample):
        direct = np.asarray(model.project(sample, normalize=False), np.float64)
        through = sample @ matrix + zero
        if not np.allclose(direct, through, rtol=1e-3, atol=1e-4 * np.abs(direct).max()):
            raise ValueError(
                f"{model.name}'s projection is not linear, so a classifier cannot carry it: "
                "fit without model= (a plain linear probe on the features)."
            )
    bias = zero if np.abs(zero).max() > 0 else None
    return matrix.astype(np.float32), None if bias is None else bias.astype(np.float32)


def _classes_and_start(model, prompts, annotations: Annotations):
    """Class names, and the text weights (C, E) to start from (None without text)."""
    from .prompts import as_prompt_set

    if prompts is None:
        return annotations.class_names, None
    prompt_set = as_prompt_set(prompts)
    extra = [n for n in annotations.class_names if n not in prompt_set.names]
    for name in extra:
        prompt_set = prompt_set.with_class(name, [name])
    try:
        start = np.asarray(prompt_set.class_embeddings(model), np.float64)
    except ValueError as exc:
        raise ValueError(
            f"{model.name} cannot read the class names as text ({exc}). Give the classes it "
            "can read in prompts=, or fit without model= and prompts= (a plain probe)."
        ) from exc
    return list(prompt_set.names), _unit(start)


def _fit(z, y, n_classes: int, w0, scale: float, lam: float):
    """Minimise class-balanced cross-entropy + lam · ‖W − W0‖² (L-BFGS, float64 throughout,
    fixed start: deterministic)."""
    from scipy.optimize import minimize

    n, e = z.shape
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    present = counts > 0
    sample_weight = 1.0 / (counts[y] * present.sum())  # each taught class weighs the same
    onehot = np.zeros((n, n_classes))
    onehot[np.arange(n), y] = 1.0

    def loss(theta):
        w = theta[: n_classes * e].reshape(n_classes, e)
        b = theta[n_classes * e :]
        logits = scale * (z @ w.T) + b
        logits -= logits.max(axis=1, keepdims=True)
        log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        value = -(sample_weight * (onehot * log_p).sum(axis=1)).sum()
        grad_logits = (np.exp(log_p) - onehot) * sample_weight[:, None]
        diff = w - w0
        value += lam * (diff**2).sum()
        grad_w = scale * grad_logits.T @ z + 2 * lam * diff
        grad_b = grad_logits.sum(axis=0)
        return value, np.concatenate([grad_w.ravel(), grad_b])

    theta0 = np.concatenate([np.asarray(w0, np.float64).ravel(), np.zeros(n_classes)])
    solution = minimize(loss, theta0, jac=True, method="L-BFGS-B", options={"maxiter": 500})
    theta = solution.x
    return theta[: n_classes * e].reshape(n_classes, e), theta[n_classes * e :]


def _model_record(model, emb: Embeddings) -> dict:
    if model is not None:
        from .provenance import model_record

        return model_record(model)
    made_by = dict(emb.metadata.get("model") or {}) if emb.metadata else {}
    if emb.model is not None:
        from .provenance import model_record

        return model_record(emb.model)
    return {k: made_by.get(k) for k in ("name", "weights_hash", "trained")}


def _prompt_json(prompts):
    from .prompts import as_prompt_set

    return as_prompt_set(prompts).to_json()


def _space_key(projection, bias) -> str:
    if projection is None:
        return "features"
    digest = hashlib.sha256(np.ascontiguousarray(projection, np.float32).tobytes())
    if bias is not None:
        digest.update(np.ascontiguousarray(bias, np.float32).tobytes())
    return digest.hexdigest()


def _unit(x) -> np.ndarray:
    """Rows of ``x`` at unit length (zero rows stay zero), in ``x``'s float type."""
    x = np.asarray(x)
    if x.dtype.kind != "f":
        x = x.astype(np.float64)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


def _softmax(logits) -> np.ndarray:
    logits = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)
