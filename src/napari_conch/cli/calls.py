"""``napari-conch classify`` and ``retrieve``: tables over slides — MI-Zero calls, and the
tiles most like a prompt."""

from __future__ import annotations

from pathlib import Path

from .checks import check_prompts, prepare
from .options import command, model_options, prompt_options, slide_options
from .steps import embed_slide, load_models


def register(sub) -> None:
    classify = command(
        sub,
        "classify",
        "MI-Zero slide-level calls (a table)",
        "Call each slide with MI-Zero: per class, the mean of its top-K tile similarities. "
        "Choose K before looking at labels.",
        ["napari-conch classify *.svs --prompts nsclc_prompts.json --top-k 10 -o calls.csv"],
    )
    classify.add_argument("slides", nargs="+")
    model_options(classify)
    slide_options(classify)
    prompt_options(classify)
    classify.add_argument("--top-k", type=int, default=10)
    classify.add_argument(
        "--background",
        help="class (or phrase) for non-tissue: its tiles are left out and it is never the call",
    )
    classify.add_argument("-o", "--output", type=Path, help="also write the table (.csv)")
    classify.set_defaults(func=run_classify)

    retrieve = command(
        sub,
        "retrieve",
        "the tiles most similar to a prompt across slides",
        "Rank the tiles of all slides by similarity to --text and list the top k.",
        ['napari-conch retrieve *.svs --text "signet ring cells" -k 20 -o hits.csv'],
    )
    retrieve.add_argument("slides", nargs="+")
    model_options(retrieve)
    slide_options(retrieve)
    retrieve.add_argument("--text", required=True)
    retrieve.add_argument("-k", type=int, default=20)
    retrieve.add_argument(
        "--background", help="phrase for non-tissue: tiles it wins over --text are not hits"
    )
    retrieve.add_argument("--negative", help="rank by similarity to --text minus this prompt")
    retrieve.add_argument("-o", "--output", type=Path, help="also write the hits (.csv)")
    retrieve.set_defaults(func=run_retrieve)


def run_classify(args) -> int:
    names, prompts = prepare(args, slides=args.slides, file=args.output, prompts=True)
    import pandas as pd

    from ..formats.files import write_csv
    from ..zeroshot import classify_slide

    models = load_models(args, names)
    check_prompts(models, prompts, args.background)
    rows = []
    for path, model in ((p, m) for p in args.slides for m in models):
        _, emb = embed_slide(path, model, args)
        call = classify_slide(emb, model, prompts, top_k=args.top_k, background=args.background)
        rows.append(
            {
                "slide": str(path),
                **({"model": model.name} if len(models) > 1 else {}),
                "call": call.call,
                "top_k": call.top_k,
                "trained": call.trained,
                **{f"score({n})": s for n, s in call.scores.items()},
            }
        )
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    if args.output:
        write_csv(table, args.output)
    return 0


def run_retrieve(args) -> int:
    if not args.text.strip():
        raise ValueError("--text is empty; give the phrase to search for.")
    names, _ = prepare(args, slides=args.slides, file=args.output, text=True)
    import pandas as pd

    from ..formats.files import write_csv
    from ..zeroshot import retrieve

    models = load_models(args, names)
    texts = [args.text, *([args.negative] if args.negative else [])]
    check_prompts(models, background=args.background, texts=texts)
    frames = []
    for model in models:
        sources = [embed_slide(path, model, args)[1] for path in args.slides]
        found = retrieve(
            sources,
            model,
            args.text,
            k=args.k,
            background=args.background,
            negative=args.negative,
        )
        hits = pd.DataFrame([hit.to_dict() for hit in found])
        if len(models) > 1:
            hits.insert(0, "model", model.name)
        frames.append(hits)
    table = pd.concat(frames, ignore_index=True)
    print(table.to_string(index=False) if len(table) else "no tiles")
    if args.output:
        write_csv(table, args.output)
    return 0
