"""Zero-shot analyses: prompts, segmentation geometry, similarity, MI-Zero, retrieval,
parity with the reference's classifier and top-K pooling."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from helpers import ColourModel, build_reference, public_state_dict, reference_token_ids

import napari_conch as nc
from napari_conch import (
    PromptSet,
    classify_slide,
    embed,
    retrieve,
    similarity_map,
    zero_shot_segment,
)
from napari_conch.embeddings import Embeddings
from napari_conch.evaluate import segmentation_scores
from napari_conch.maps import cells_from_tiles
from napari_conch.prompts import DEFAULT_TEMPLATES
from napari_conch.tiling import TileGrid

CLASSES = ["tumor", "stroma", "necrosis"]


@pytest.fixture(scope="module")
def synth():
    return nc.synthetic_slide(size=2048, mpp=1.0, seed=3)  # 2 × 2 mm


@pytest.fixture(scope="module")
def colour_emb(synth):
    model = ColourModel()
    grid = nc.tile_grid(synth.slide, model, tile_um=32, overlap=0.5, min_tissue=0)
    return model, embed(synth.slide, model, grid, cache=None)


# -- prompts --------------------------------------------------------------------------------


def test_prompt_json_round_trips_unchanged(tmp_path):
    original = {
        "0": {
            "classnames": {
                "LUAD": ["adenocarcinoma", "lung adenocarcinoma"],
                "LUSC": ["squamous cell carcinoma"],
            },
            "templates": ["CLASSNAME.", "an H&E image of CLASSNAME."],
        }
    }
    path = tmp_path / "p.json"
    path.write_text(json.dumps(original))
    prompts = PromptSet.from_json(path)
    assert prompts.names == ["LUAD", "LUSC"]
    assert prompts.prompts("LUSC") == [
        "squamous cell carcinoma.",
        "an H&E image of squamous cell carcinoma.",
    ]
    assert prompts.to_json() == original
    prompts.to_json(tmp_path / "out.json")
    assert json.loads((tmp_path / "out.json").read_text()) == original
    assert PromptSet.from_json(json.dumps(original)) == prompts


def test_plain_class_names_get_our_default_templates():
    prompts = PromptSet(["tumor", "stroma"])
    assert prompts.templates == list(DEFAULT_TEMPLATES)
    assert prompts.classes == {"tumor": ["tumor"], "stroma": ["stroma"]}


@pytest.mark.parametrize(
    "classes, templates, error, match",
    [
        ([], None, ValueError, "at least one class"),
        (["tumor", "  "], None, ValueError, "Empty class name"),
        (["Tumor", "tumor"], None, ValueError, "appears twice"),
        ({"tumor": []}, None, ValueError, "no synonyms"),
        ({"tumor": ["", "x"]}, None, ValueError, "Empty synonym"),
        (["tumor"], ["an image of a tumour."], ValueError, "lacks the placeholder"),
        (["tumor"], [], ValueError, "at least one template"),
        ([3], None, TypeError, "must be text"),
        ({"tumor": 5}, None, TypeError, "Expected a list"),
    ],
)
def test_bad_prompt_sets_get_clear_errors(classes, templates, error, match):
    with pytest.raises(error, match=match):
        PromptSet(classes, templates)


def test_prompt_json_of_the_wrong_shape(tmp_path):
    for bad in (
        '{"tumor": "x"}',
        "[1, 2]",
        '{"0": {"classnames": 3, "templates": []}}',
        "{not json",
    ):
        with pytest.raises(ValueError):
            PromptSet.from_json(bad)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        PromptSet.from_json(tmp_path / "missing.json")


def test_repeated_synonyms_and_control_characters_are_cleaned_with_warnings(caplog):
    with caplog.at_level(logging.WARNING, logger="napari_conch"):
        prompts = PromptSet({"tumor": ["tumor", "tumor", "carci\x00noma"]})
    assert prompts.classes["tumor"] == ["tumor", "carci noma"]
    assert "more than once" in caplog.text and "control characters" in caplog.text


def test_class_embeddings_are_unit_and_cached(tiny_model):
    prompts = PromptSet(CLASSES)
    first = prompts.class_embeddings(tiny_model)
    assert first.shape == (3, 32)
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-6)
    assert prompts.class_embeddings(tiny_model) is first


def test_class_weights_equal_the_reference_zero_shot_classifier(tmp_path, monkeypatch):
    """Same random weights: our class embeddings = conch's zero_shot_classifier."""
    import torch.nn.functional as F
    from conch.downstream import zeroshot_path

    ref = build_reference(tiny=True, seed=21)
    torch.save(public_state_dict(ref), tmp_path / "pytorch_model.bin")
    ours = nc.load_model("conch_tiny", checkpoint=tmp_path / "pytorch_model.bin")
    prompts = PromptSet(
        {
            "LUAD": ["adenocarcinoma", "lung adenocarcinoma"],
            "LUSC": ["squamous cell carcinoma", "lung squamous"],
        },
        ["CLASSNAME.", "an H&E image of CLASSNAME.", "presence of CLASSNAME."],
    )
    # The reference's tokenize() calls batch_encode_plus, gone in transformers 5: give it the
    # same tokenisation through the tokenizer call (helpers.reference_token_ids).
    monkeypatch.setattr(
        zeroshot_path,
        "tokenize",
        lambda tok, texts: torch.from_numpy(reference_token_ids(list(texts))),
    )
    with torch.no_grad():
        expected = zeroshot_path.zero_shot_classifier(
            ref, [prompts.classes[n] for n in prompts.names], prompts.templates
        )
    np.testing.assert_allclose(prompts.class_embeddings(ours), expected.T.numpy(), atol=1e-5)
    # MI-Zero: our top-K means equal the reference's topj_pooling on its forward_project path.
    feats = np.random.default_rng(0).normal(size=(40, 32)).astype(np.float32)
    grid = TileGrid.from_indices(np.argwhere(np.ones((5, 8))), tile_px=32)
    emb = Embeddings(feats, np.ones(40, bool), grid, {"model": {"weights_hash": ours.weights_hash}})
    with torch.no_grad():
        projected = F.normalize(ref.visual.forward_project(torch.from_numpy(feats)), dim=-1)
        _, pooled = zeroshot_path.topj_pooling(projected @ expected, topj=(1, 5, 10))
    for k in (1, 5, 10):
        call = classify_slide(emb, ours, prompts, top_k=k)
        np.testing.assert_allclose(
            [call.scores[n] for n in prompts.names], pooled[k][0].numpy(), atol=1e-5
        )


# -- segmentation ---------------------------------------------------------------------------


def test_labels_land_on_the_planted_regions(synth, colour_emb):
    model, emb = colour_emb
    seg = zero_shot_segment(emb, model, CLASSES, background="background")
    assert seg.class_names == CLASSES
    scores = segmentation_scores(seg, synth.labels, synth.labels_downsample)
    for name in CLASSES:
        assert scores[name]["dice"] >= 0.95, (name, scores[name])
    assert seg.labels.shape == seg.probabilities.shape[1:] == seg.uncertainty.shape
    assert seg.metadata["background"] == "background"


def test_maps_line_up_in_micrometres(synth, colour_emb):
    model, emb = colour_emb
    seg = zero_shot_segment(emb, model, CLASSES, background="background")
    assert seg.scale_um == (16.0, 16.0)  # stride 16 µm at 1 µm/px
    assert seg.translate_um == pytest.approx((7.5, 7.5))
    for region in synth.regions_um:
        cy, cx = region["centre_um"]
        if region["class"] == "stroma":  # its centre holds a tumour nest: look beside it
            cx -= 0.8 * region["half_size_um"][1]
        # world → cell: napari puts cell (i, j) centre at translate + i·scale
        i = round((cy - seg.translate_um[0]) / seg.scale_um[0])
        j = round((cx - seg.translate_um[1]) / seg.scale_um[1])
        assert seg.class_names[seg.labels[i, j] - 1] == region["class"]
    corner_i = round((10 - seg.translate_um[0]) / seg.scale_um[0])
    assert seg.labels[corner_i, corner_i] == 0  # the blank corner is background


def test_overlap_averaging_equals_a_hand_computed_case():
    """2 × 2 tiles at 50 % overlap (k = 2): the centre cell averages all four tiles."""
    grid = TileGrid.from_indices([[0, 0], [0, 1], [1, 0], [1, 1]], tile_px=2, stride_px=1)
    values = np.array([1.0, 2.0, 3.0, 10.0])
    cells = cells_from_tiles(grid, values)[0]
    expected = np.array(
        [
            [1.0, (1 + 2) / 2, 2.0],
            [(1 + 3) / 2, (1 + 2 + 3 + 10) / 4, (2 + 10) / 2],
            [3.0, (3 + 10) / 2, 10.0],
        ]
    )
    np.testing.assert_allclose(cells, expected)
    missing = values.copy()
    missing[3] = np.nan  # a tile not computed is left out, not counted as zero
    cells = cells_from_tiles(grid, missing)[0]
    assert cells[1, 1] == pytest.approx(2.0) and np.isnan(cells[2, 2])


def test_min_confidence_and_colours_and_areas(colour_emb):
    model, emb = colour_emb
    seg = zero_shot_segment(
        emb, model, CLASSES, background="background", colors={"tumor": "#00ff00"}
    )
    assert seg.colors[1] == (0.0, 1.0, 0.0, 1.0) and seg.colors[0][3] == 0
    assert len({seg.colors[i] for i in (1, 2, 3)}) == 3
    cell_mm2 = (16 / 1000) ** 2
    # a class's area is the tissue of the cells it wins: the labelled ones, plus the tissue
    # of cells under half tissue that the map leaves unlabelled
    tissue = emb.grid.cell_tissue_fraction
    labelled = tissue[seg.labels == 1].sum() * cell_mm2
    minority = tissue[~emb.grid.cell_is_tissue].sum() * cell_mm2
    assert labelled <= seg.areas_mm2["tumor"] <= labelled + minority
    strict = zero_shot_segment(emb, model, CLASSES, background="background", min_confidence=0.999)
    assert (strict.labels > 0).sum() < (seg.labels > 0).sum()
    with pytest.raises(ValueError, match="min_confidence"):
        zero_shot_segment(emb, model, CLASSES, min_confidence=2)


def test_region_restriction_and_the_lazy_path(synth, tmp_path):
    model = ColourModel()
    grid = nc.tile_grid(synth.slide, model, tile_um=32, overlap=0.5, min_tissue=0)
    region = (400.0, 400.0, 800.0, 800.0)
    partial = embed(synth.slide, model, grid, cache=tmp_path, region=region, region_only=True)
    whole = zero_shot_segment(partial, model, CLASSES, background="background")
    assert whole.metadata["missing_tiles"] == len(grid) - partial.n_done  # reported, not computed
    inside = zero_shot_segment(partial, model, CLASSES, background="background", region=region)
    assert inside.metadata["missing_tiles"] == 0
    assert (inside.labels[:10, :10] == 0).all()  # outside the region: nothing
    lazy = Embeddings.open(partial.store_path)
    bigger = (400.0, 400.0, 1200.0, 1200.0)
    result = zero_shot_segment(
        lazy, model, CLASSES, background="background", region=bigger, slide=synth.slide
    )
    assert result.metadata["missing_tiles"] == 0
    assert lazy.done[grid.tiles_in_box_um(bigger)].all()
    assert Embeddings.open(partial.store_path).n_done == lazy.n_done  # computed into the cache


def test_untrained_models_mark_their_results(tiny_model, synth):
    grid = nc.tile_grid(synth.slide, tiny_model, tissue=False)
    emb = embed(synth.slide, tiny_model, grid, cache=None)
    seg = zero_shot_segment(emb, tiny_model, CLASSES)
    assert seg.trained is False and seg.metadata["model"]["trained"] is False


# -- similarity, MI-Zero, retrieval ---------------------------------------------------------


def test_similarity_to_text_and_to_an_exemplar(synth, colour_emb):
    model, emb = colour_emb
    sim = similarity_map(emb, model, text="tumor")
    assert sim.values.shape == emb.grid.cell_shape  # up to the image's edge, not past it
    tumour = synth.regions_um[1]["centre_um"]
    i = round((tumour[0] - sim.translate_um[0]) / sim.scale_um[0])
    j = round((tumour[1] - sim.translate_um[1]) / sim.scale_um[1])
    assert sim.values[i, j] > 0.95  # tumour's nuclei pull its mean colour a little aside
    assert np.isnan(sim.values[0, 0])  # no tissue there: no tile looked
    necrosis = synth.regions_um[2]["centre_um"]
    ni = round((necrosis[0] - sim.translate_um[0]) / sim.scale_um[0])
    nj = round((necrosis[1] - sim.translate_um[1]) / sim.scale_um[1])
    assert sim.values[ni, nj] < 0.5
    lo, hi = sim.contrast_limits
    assert lo == np.nanmin(sim.values) and hi == np.nanmax(sim.values)
    several = similarity_map(emb, model, text=["tumor", "necrosis"])
    assert several.values.shape[0] == 2 and several.queries == ["tumor", "necrosis"]
    contrast = similarity_map(emb, model, text="tumor", negative="stroma")
    np.testing.assert_allclose(
        contrast.tile_values,
        sim.tile_values - similarity_map(emb, model, text="stroma").tile_values,
        atol=1e-5,
    )
    example = similarity_map(emb, model, exemplar=tumour)
    best = int(np.nanargmax(example.tile_values))
    assert example.tile_values[best] == pytest.approx(1.0, abs=1e-5)
    assert synth.label_at_um(*(emb.coords[best] + 16)) == 1  # the most similar tile is tumour
    from_features = similarity_map(emb, model, exemplar=emb.features[[best]])
    np.testing.assert_allclose(from_features.tile_values, example.tile_values, atol=1e-5)
    with pytest.raises(ValueError, match="either text= or exemplar="):
        similarity_map(emb, model)
    with pytest.raises(ValueError, match="No tile covers"):
        similarity_map(emb, model, exemplar=(-500.0, -500.0))


def test_mi_zero_is_the_top_k_mean():
    class Fixed(ColourModel):
        embed_dim = 2

        def project(self, features, normalize=True):
            return np.asarray(features, np.float32)

        def encode_texts(self, texts, normalize=True):
            return np.array([[1.0, 0.0] if t[0] == "a" else [0.0, 1.0] for t in texts], np.float32)

    feats = np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5], [0.7, 0.3], [0.1, 0.95]], np.float32)
    grid = TileGrid.from_indices([[0, i] for i in range(5)], tile_px=32)
    emb = Embeddings(feats, np.ones(5, bool), grid, {})
    call = classify_slide(emb, Fixed(), PromptSet({"a": ["a"], "b": ["b"]}, ["CLASSNAME"]), top_k=2)
    assert call.scores["a"] == pytest.approx((0.9 + 0.7) / 2)
    assert call.scores["b"] == pytest.approx((0.95 + 0.8) / 2)
    assert call.call == "b" and call.top_k == 2
    assert [e.position for e in call.evidence["b"]] == [4, 1]
    assert call.evidence["b"][0].x_um == 4 * 32.0
    assert sum(call.probabilities.values()) == pytest.approx(1.0)
    assert (
        classify_slide(
            emb, Fixed(), PromptSet({"a": ["a"], "b": ["b"]}, ["CLASSNAME"]), top_k=99
        ).top_k
        == 5
    )
    with pytest.raises(ValueError, match="positive integer"):
        classify_slide(emb, Fixed(), ["a"], top_k=0)


def test_colour_model_calls_the_slide_by_its_dominant_class(colour_emb):
    model, emb = colour_emb
    call = classify_slide(emb, model, CLASSES, top_k=50)
    assert set(call.scores) == set(CLASSES) and call.call in CLASSES


def test_retrieval_across_slides(synth, colour_emb):
    model, emb = colour_emb
    other = nc.synthetic_slide(size=1024, mpp=1.0, seed=9)
    other_emb = embed(
        other.slide, model, nc.tile_grid(other.slide, model, tile_um=32, min_tissue=0), cache=None
    )
    hits = retrieve([emb, other_emb], model, "necrosis", k=5)
    assert len(hits) == 5 and hits[0].score >= hits[-1].score
    for hit in hits:
        assert hit.size_um == 32.0 and hit.y_um == hit.y_px * 1.0
    top = hits[0]
    slide = synth if top.source == emb.metadata["slide"]["name"] else other
    assert slide.label_at_um(top.y_um + 16, top.x_um + 16) == 3  # necrosis
    with pytest.raises(ValueError, match="k must be"):
        retrieve(emb, model, "necrosis", k=0)


def test_class_colours_are_a_function_of_the_names():
    from napari_conch.colors import class_colors

    names = ["tumor", "stroma", "necrosis", "immune cells", "fat", "mucin"]
    first = class_colors(names)
    assert class_colors(list(reversed(names))) == first  # order does not matter
    assert len(set(first.values())) == len(names)  # distinct within one set
    assert class_colors(["Tumor ", "stroma"])["Tumor "] == class_colors(["tumor"])["tumor"]
    assert class_colors(names, {"fat": "#00ff00"})["fat"] == (0.0, 1.0, 0.0, 1.0)


def test_common_classes_keep_qupaths_colours_in_any_set():
    from napari_conch.colors import class_colors

    alone = class_colors(["Tumour"])["Tumour"]
    in_set = class_colors(["necrosis", "stroma", "tumor", "background"])
    assert alone == in_set["tumor"] == (round(200 / 255, 4), 0.0, 0.0, 1.0)
    colours = list(class_colors(["tumor", "stroma", "necrosis", "gland", "mucin"]).values())
    assert len(set(colours)) == len(colours)  # never two classes in one colour


def test_retrieval_with_a_negative_ranks_as_the_heatmap_shows(colour_emb):
    model, emb = colour_emb
    sim = nc.similarity_map(emb, model, text="necrosis", negative="tumor")
    hits = retrieve(emb, model, "necrosis", k=10, negative="tumor")
    values = sim.tile_values
    expected = np.argsort(-np.where(np.isfinite(values), values, -np.inf), kind="stable")[:10]
    assert [h.position for h in hits] == list(expected)
    np.testing.assert_allclose([h.score for h in hits], values[expected], rtol=1e-6)
    plain = retrieve(emb, model, "necrosis", k=10)
    assert [h.score for h in plain] != [h.score for h in hits]
    assert hits.metadata["negative"] == "tumor"
