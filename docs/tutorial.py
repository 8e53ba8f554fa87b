# %% [markdown]
# # napari-conch from Python: a tutorial
#
# This file is both a notebook (open it in Jupyter with jupytext, or run cell by cell in VS
# Code) and a script that the test suite runs end to end with the tiny model. Set
# `NAPARI_CONCH_TUTORIAL_MODEL=conch` (the default) with CONCH weights available to get real
# results; the tests use `conch_tiny` with random weights, which only checks the pipeline.

# %%
import os
import tempfile
from pathlib import Path

import napari_conch as nc

MODEL = os.environ.get("NAPARI_CONCH_TUTORIAL_MODEL", "conch")
OUT = Path(
    os.environ.get("NAPARI_CONCH_TUTORIAL_OUT", tempfile.mkdtemp(prefix="napari-conch-tutorial-"))
)

# %% [markdown]
# ## 1. A slide
# Any whole-slide image opens lazily (`nc.open_slide("case.svs")`); here the synthetic sample,
# which has planted tumour, stroma and necrosis regions at known positions.

# %%
synth = nc.synthetic_slide(size=4096, mpp=0.5)
slide = synth.slide
print(slide)

# %% [markdown]
# ## 2. The model
# `load_model("conch")` finds the weights (see docs/getting-started.md). Without them we fall
# back to random weights, loudly: everything made with them says `trained = False`.

# %%
try:
    model = nc.load_model(MODEL)
except nc.WeightsNotFoundError as exc:
    print(exc)
    model = nc.load_model(MODEL, checkpoint="random")
print(model)

# %% [markdown]
# ## 3. Tiles and embeddings
# Tiles of the model's size (CONCH: 224 µm) on tissue, with 50 % overlap; the features are
# cached, so running this cell again is instant.

# %%
grid = nc.tile_grid(slide, model, overlap=0.5)
emb = nc.embed(slide, model, grid, cache=OUT / "cache")
print(grid)
print(emb)

# %% [markdown]
# ## 4. Questions
# A zero-shot segmentation, a similarity map, an MI-Zero slide call and a retrieval: each is
# arithmetic on the cached features.

# %%
prompts = nc.PromptSet(
    {
        "tumor": ["tumor", "carcinoma"],
        "stroma": ["stroma"],
        "necrosis": ["necrosis"],
        "background": ["background"],
    }
)
seg = nc.zero_shot_segment(emb, model, prompts, background="background")
print(seg.class_names, {k: round(v, 3) for k, v in seg.areas_mm2.items()})
sim = nc.similarity_map(emb, model, text="necrosis")
call = nc.classify_slide(emb, model, prompts.names[:3], top_k=5)
hits = nc.retrieve(emb, model, "tumor", k=5)
print(call.call, call.scores)
print([round(h.score, 3) for h in hits])

# %% [markdown]
# ## 5. Take the results elsewhere
# QuPath GeoJSON, OME-Zarr, OME-TIFF and a tile table.

# %%
from napari_conch.export import export_all  # noqa: E402

written = export_all(seg, OUT, "synthetic", emb=emb, similarities=[sim])
print({k: str(v) for k, v in written.items()})

# %% [markdown]
# ## 6. Look at it in napari
# In Jupyter the viewer opens next to the notebook: `viewer, widget = nc.view(slide,
# model=model)` docks the widget; `nc.show(viewer, seg)` adds any result.

# %%
if os.environ.get("NAPARI_CONCH_TUTORIAL_VIEWER"):
    viewer, widget = nc.view(slide, model=model, block=False)
    nc.show(viewer, seg)
    nc.show(viewer, sim)
