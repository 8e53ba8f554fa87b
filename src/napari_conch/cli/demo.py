"""``napari-conch demo``: the main job end to end on a sample, checked against its truth
(the workflow is :func:`napari_conch.demo.run_demo`; this prints it)."""

from __future__ import annotations

from pathlib import Path

from ..samples import DEMO_SAMPLES
from .checks import check_formats, check_models, check_prompts, output_folder
from .options import command, model_options
from .steps import load_one, program_name, progress_bar, single_model


def register(sub) -> None:
    parser = command(
        sub,
        "demo",
        "the main job end to end on a sample, checked against its known truth",
        "Segment a sample zero-shot, call it with MI-Zero and write every export (with the "
        "sample itself) into OUTPUT. With CONCH weights (--checkpoint, "
        "$NAPARI_CONCH_CHECKPOINT or the Hugging Face cache) it runs CONCH on scikit-image's "
        "IHC colon sample. Without, it runs the colour toy — a demonstration model that "
        "tells colours apart, not pathology — on the synthetic slide, whose planted regions "
        "are known, and prints how well the segmentation agrees with them (Dice per class). "
        "--checkpoint random runs untrained CONCH: a pipeline check, not a result.",
        [
            "napari-conch demo",
            "napari-conch demo -o my-demo/",
            "napari-conch demo --checkpoint ~/weights/conch/pytorch_model.bin",
            "napari-conch demo --checkpoint random --sample synthetic   # untrained CONCH",
        ],
    )
    model_options(
        parser,
        default_model=None,
        help_text="model name (default: conch when its weights are found, else colour-toy); "
        "plip, quiltnet or a registered one also work",
    )
    parser.add_argument(
        "--sample",
        choices=DEMO_SAMPLES,
        help="synthetic (planted regions, scored against the truth) or ihc (real tissue); "
        "default: synthetic for the colour toy, ihc for CONCH",
    )
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        default=Path("napari-conch-demo"),
        help="output folder (default: napari-conch-demo)",
    )
    parser.set_defaults(func=run)


def run(args) -> int:
    from ..formats import FORMATS
    from ..models.color_toy import COLOR_TOY
    from ..samples import demo_sample

    out = output_folder(args.output)
    check_formats(FORMATS)
    name, checkpoint, why = _demo_model(args)
    sample = demo_sample(args.sample or ("synthetic" if name == COLOR_TOY else "ihc"))
    check_models(args, [name], text=True)
    model = load_one(args, name, checkpoint)
    check_prompts([model], sample.classes, sample.background, texts=[sample.query])
    if why:
        print(why)
    return _run(model, sample, out, quiet=args.quiet)


def _demo_model(args) -> tuple[str, object, str]:
    """The model the demo runs: the one asked for; else CONCH when its weights are on this
    machine; else the colour toy. Returns (name, checkpoint, why that model)."""
    if args.model:
        return single_model(args), args.checkpoint, ""
    if args.checkpoint:
        return "conch", args.checkpoint, ""
    from ..models import default_model

    name = default_model()
    if name == "conch":
        return name, None, ""
    return (
        name,
        None,
        "No CONCH weights on this machine: running the colour toy, a demonstration model "
        "that tells colours apart (not pathology), on the synthetic slide with planted "
        "regions.",
    )


def _run(model, sample, out: Path, *, quiet: bool) -> int:
    from ..demo import run_demo

    with progress_bar(sample.slide.name, 0, quiet=quiet) as progress:
        report = run_demo(model, sample, out, progress=progress)
    tag = "" if report.trained else "  [UNTRAINED — not a result]"
    seg, emb = report.segmentation, report.embeddings
    print(f"model: {model!r}{tag}")
    print(f"sample: {sample.slide.name}, {len(emb)} tiles of {emb.grid.tile_um:.0f} µm")
    print("areas (mm²): " + ", ".join(f"{k} {v:.4f}" for k, v in seg.areas_mm2.items()))
    if report.scores is not None:
        print("agreement with the planted truth (Dice per class, 1 = perfect):")
        for name in sample.truth.class_names:
            print(f"  {name:<10} {report.scores[name]['dice']:.3f}")
        print(f"  {'mean':<10} {report.scores['mean_dice']:.3f}{tag}")
    print(f"slide call (MI-Zero, top 3): {report.call.call}{tag}")
    print(f"wrote {len(report.files)} files to {out}/")
    print(_next_steps(model, report.slide_file, out))
    return 0


def _next_steps(model, slide_file: Path, out: Path) -> str:
    from ..protocol import is_trained

    program = program_name()
    lines = [
        "",
        "Next:",
        f"  see it in napari:   {program} view {slide_file} --results {out}",
        f"  your own slide:     {program} segment case.svs --classes tumor stroma "
        "necrosis background --background background -o results/",
    ]
    if model.name != "conch" or not is_trained(model):
        lines += [
            "  CONCH weights:      request access at https://huggingface.co/MahmoodLab/conch, "
            "download pytorch_model.bin, then",
            "                      export NAPARI_CONCH_CHECKPOINT=/path/to/pytorch_model.bin",
            f"                      (or pass --checkpoint PATH); `{program} info` shows what "
            f"is found, and `{program} demo` then runs CONCH.",
        ]
    return "\n".join(lines)
