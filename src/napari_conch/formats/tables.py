"""Tile tables: one row per tile — coordinates in px and µm, tissue fraction, per-class
scores, similarity values, the model that made them — as CSV or Parquet."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..deprecation import keyword_only_since
from ..provenance import Provenance
from .files import atomic_path
from .ome_zarr import SIMILARITY_CHANNEL


@keyword_only_since("similarities", "path")
def tile_table(emb, seg=None, *, similarities=(), path=None):
    """A pandas DataFrame with one row per tile (written to ``.csv`` or ``.parquet``).

    Every row says which model made it (``model``, ``weights_hash``, ``trained``) — plain
    columns, so ``pd.read_csv`` users see them without tricks. ``frame.attrs["napari_conch"]``
    holds the whole provenance (model, grid, prompts, queries), which Parquet files keep as
    key-value metadata (``pyarrow.parquet.read_schema(path).metadata[b"napari_conch"]``).
    """
    import pandas as pd

    grid = emb.grid
    coords = emb.coords
    mpp = grid.mpp
    table = {
        "tile": np.arange(len(emb)),
        "row": grid.indices[:, 0],
        "col": grid.indices[:, 1],
        "y_px": coords[:, 0],
        "x_px": coords[:, 1],
        "y_um": grid.offset_um[0] + coords[:, 0] * mpp,  # world µm (an OME-Zarr's translation)
        "x_um": grid.offset_um[1] + coords[:, 1] * mpp,
        "size_px": grid.tile_px,
        "size_um": grid.tile_um,
        "tissue_fraction": grid.tissue_fraction,
        "embedded": emb.done,
    }
    provenance = Provenance.from_metadata((seg if seg is not None else emb).metadata).summary()
    for key in ("model", "weights_hash", "trained"):
        table[key] = provenance[key]
    if seg is not None:
        for i, name in enumerate(seg.class_names):
            table[f"p({name})"] = seg.tile_probabilities[:, i]
        if seg.tile_background_probability is not None:  # the row's probabilities sum to 1
            background = (seg.metadata or {}).get("background") or "background"
            table[f"p({background})"] = seg.tile_background_probability
        table["class"] = seg.tile_classes()  # the map's rule: "background" where it wins
    for sim in similarities:
        values = sim.tile_values if sim.tile_values.ndim == 2 else sim.tile_values[None]
        for query, column in zip(sim.queries, values, strict=True):
            table[f"{SIMILARITY_CHANNEL}{query}"] = column
    frame = pd.DataFrame(table)
    frame.attrs["napari_conch"] = {
        **provenance,
        "grid": grid.to_dict(),
        "slide": (emb.metadata or {}).get("slide"),
        "prompts": (seg.metadata or {}).get("prompts") if seg is not None else None,
        "background": (seg.metadata or {}).get("background") if seg is not None else None,
        "similarity_queries": [q for sim in similarities for q in sim.queries],
    }
    if path is not None:
        path = Path(path)
        with atomic_path(path) as tmp:
            if path.suffix.lower() == ".parquet":
                _write_parquet(frame, tmp)
            else:
                frame.to_csv(tmp, index=False)
    return frame


def _write_parquet(frame, path: Path) -> None:
    """Parquet with the provenance as key-value metadata (``b"napari_conch"``: JSON)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ImportError("Writing Parquet needs pyarrow: pip install pyarrow.") from exc
    table = pa.Table.from_pandas(frame, preserve_index=False)
    extra = {b"napari_conch": json.dumps(frame.attrs["napari_conch"], default=str).encode()}
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **extra})
    pq.write_table(table, path)


def write(job, path) -> None:
    """export_all's writer: the tile table with the segmentation's and maps' columns
    (CSV or Parquet, by the file's suffix)."""
    tile_table(job.emb, job.seg, similarities=job.similarities, path=path)
