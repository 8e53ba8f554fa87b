"""Provenance: what made a result — model and weights, trained or not, slide, grid, prompts.

One record type, :class:`Provenance`, for every result and export: analyses make one
(:meth:`Provenance.of_analysis`), the embedding cache keeps one with the features
(:meth:`Provenance.of_embeddings`), results carry it as their ``metadata`` dict
(:meth:`~Provenance.to_metadata`, the layout the public API documents), exports write its
flat :meth:`~Provenance.summary`, and readers of our exports make it again from that
(:meth:`Provenance.from_summary`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

from .protocol import is_trained, weights_hash

UNTRAINED_NOTE = "UNTRAINED model: a pipeline check, not a result"
# Keys of the metadata dict that are fields of the record; everything else is a detail.
_FIELDS = ("analysis", "model", "slide", "grid", "napari_conch", "created", "decode")


def model_record(model, *, details: bool = False) -> dict:
    """How results name the model: name, weights hash, trained; with ``details`` also the
    geometry the cache records (feature width, input size, µm/px, logit scale)."""
    record = {
        "name": str(model.name),
        "weights_hash": weights_hash(model),
        "trained": is_trained(model),
    }
    if details:
        record.update(
            embed_dim=int(model.embed_dim),
            input_size=int(model.input_size),
            target_mpp=float(model.target_mpp),
            logit_scale=float(model.logit_scale),
        )
    return record


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _version() -> str:
    from . import __version__

    return __version__


@dataclass(frozen=True)
class Provenance:
    """Where a result comes from.

    Attributes
    ----------
    model : dict
        ``name``, ``weights_hash``, ``trained`` (and, for embeddings, their geometry).
    analysis : str or None
        The function that made the result (``"zero_shot_segment"``, …).
    slide, grid : dict or None
        The slide (name, path, µm/px, fingerprint) and the tile grid's geometry.
    napari_conch, created : str or None
        The version that made it, and when.
    decode : str or None
        How tiles were decoded, when not in full (JPEG at reduced size, on a device).
    details : dict
        What the analysis adds: prompts, background, queries, tiles used, …
    """

    model: dict = field(default_factory=dict)
    analysis: str | None = None
    slide: dict | None = None
    grid: dict | None = None
    napari_conch: str | None = None
    created: str | None = None
    decode: str | None = None
    details: dict = field(default_factory=dict)

    # -- making one ---------------------------------------------------------------------

    @classmethod
    def of_analysis(cls, analysis: str, model, emb=None, **details) -> Provenance:
        """A new result of ``analysis`` by ``model``, on ``emb``'s tiles when given."""
        return cls.of_features(analysis, model_record(model), emb, **details)

    @classmethod
    def of_features(cls, analysis: str, model: dict, emb=None, **details) -> Provenance:
        """A new result of ``analysis`` on features of the model ``model`` records (name,
        weights hash, trained) — for analyses that need the features, not the model."""
        origin = (emb.metadata or {}) if emb is not None else {}
        return cls(
            model=dict(model),
            analysis=analysis,
            slide=origin.get("slide"),
            grid=emb.grid.to_dict() if emb is not None else None,
            napari_conch=_version(),
            created=_now(),
            decode=origin.get("decode") or None,
            details=details,
        )

    @classmethod
    def of_embeddings(
        cls, slide, model, grid, fingerprint: str, decode: str | None = None
    ) -> Provenance:
        """What the cache keeps with one slide's features."""
        return cls(
            model=model_record(model, details=True),
            slide={
                "name": slide.name,
                "path": str(slide.path) if slide.path else None,
                "mpp": slide.mpp,
                "shape": list(slide.shape),
                "fingerprint": fingerprint,
            },
            grid=grid.to_dict(),
            created=_now(),
            decode=decode or None,
        )

    @classmethod
    def from_metadata(cls, metadata: dict | None) -> Provenance:
        """The record behind a result's ``metadata`` dict."""
        metadata = dict(metadata or {})
        values = {k: metadata.pop(k, None) for k in _FIELDS}
        values["model"] = dict(values["model"] or {})
        return cls(**values, details=metadata)

    @classmethod
    def from_summary(cls, summary: dict, **details) -> Provenance:
        """The record an export's :meth:`summary` was written from (as far as it says)."""
        return cls(
            model={
                "name": summary.get("model"),
                "weights_hash": summary.get("weights_hash"),
                "trained": bool(summary.get("trained", True)),
            },
            slide=summary.get("slide"),
            grid=summary.get("grid"),
            napari_conch=summary.get("napari_conch"),
            created=summary.get("created"),
            decode=summary.get("decode"),
            details={"prompts": summary.get("prompts"), **details},
        )

    def with_details(self, **details) -> Provenance:
        """The same record with more (or other) details."""
        return replace(self, details={**self.details, **details})

    # -- reading it ---------------------------------------------------------------------

    @property
    def trained(self) -> bool:
        """False when an untrained model (``checkpoint="random"``) made the result."""
        return bool(self.model.get("trained", True))

    def to_metadata(self) -> dict:
        """The ``metadata`` dict results carry (fields that are unset are left out)."""
        head = {k: getattr(self, k) for k in ("analysis", "model", "slide", "grid")}
        tail = {k: getattr(self, k) for k in ("napari_conch", "created", "decode")}
        return {
            **{k: v for k, v in head.items() if v is not None},
            **self.details,
            **{k: v for k, v in tail.items() if v is not None},
        }

    def summary(self) -> dict:
        """The flat form every export writes: model, weights hash, trained, version, date,
        decoding (when not full) and, for untrained weights, a note saying so."""
        info = {
            "model": self.model.get("name"),
            "weights_hash": self.model.get("weights_hash"),
            "trained": self.trained,
            "napari_conch": self.napari_conch,
            "created": self.created,
        }
        if self.decode:
            info["decode"] = self.decode
        if not self.trained:
            info["note"] = UNTRAINED_NOTE
        return info
