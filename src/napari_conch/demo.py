"""The main job end to end on a sample: segment it zero-shot, map one query, call it with
MI-Zero, write every export with the slide itself, and — where the truth is planted —
score the segmentation against it. What ``napari-conch demo`` runs and prints."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .evaluate import segmentation_scores
from .formats import FORMATS, export_all
from .formats.files import write_text
from .formats.ome_tiff import slide_to_ome_tiff
from .pipeline import embed_local
from .prompts import PromptSet
from .protocol import is_trained
from .tiling import tile_grid
from .zeroshot import classify_slide, similarity_map, zero_shot_segment

UNTRAINED_NOTE_FILE = "UNTRAINED.txt"


@dataclass
class DemoReport:
    """What a demo run made: the results, the files, and the agreement with the truth."""

    sample: object
    embeddings: object
    segmentation: object
    similarity: object
    call: object
    slide_file: Path
    files: list[Path] = field(default_factory=list)
    scores: dict | None = None  # segmentation_scores against the planted truth

    @property
    def trained(self) -> bool:
        return self.segmentation.trained


def run_demo(model, sample, out_dir, *, progress=None) -> DemoReport:
    """Run the demo of ``sample`` (:func:`~napari_conch.samples.demo_sample`) with ``model``
    into ``out_dir``; ``progress(done, total, tiles_per_s)`` while tiles are embedded."""
    out = Path(out_dir)
    slide = sample.slide
    grid = tile_grid(slide, model, overlap=0.5)
    emb = embed_local(slide, model, grid, cache=None, progress=progress)
    prompts = PromptSet(sample.classes)
    seg = zero_shot_segment(emb, model, prompts, background=sample.background)
    sim = similarity_map(emb, model, text=sample.query)
    call = classify_slide(emb, model, prompts, top_k=3, background=sample.background)
    stem = f"{sample.name}-{model.name}"
    written = list(
        export_all(seg, out, stem, emb=emb, similarities=[sim], formats=FORMATS).values()
    )
    slide_file = slide_to_ome_tiff(slide, out / f"{sample.name}-slide.ome.tif")
    written.append(slide_file)
    if not is_trained(model):  # beside the files, not one of the results
        write_text(
            out / UNTRAINED_NOTE_FILE,
            "These files were made with an UNTRAINED (random) model: they check that the "
            "pipeline runs and are NOT results.\n",
        )
    scores = None
    if sample.truth is not None:
        truth = sample.truth
        scores = segmentation_scores(
            seg, truth.labels, truth.labels_downsample, truth_names=truth.class_names
        )
        written.append(
            write_text(out / f"{stem}.agreement.json", json.dumps(scores, indent=2, default=float))
        )
    return DemoReport(sample, emb, seg, sim, call, slide_file, written, scores)
