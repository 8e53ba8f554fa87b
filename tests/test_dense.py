"""Sub-tile (token) maps, experimental: the pooling identity and planted geometry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import napari_conch as nc
from napari_conch.synthetic import BACKGROUND_COLOR, CLASS_COLORS


def test_the_pooled_feature_is_the_attention_weighted_sum_of_the_token_values(tiny_model):
    """The identity behind the dense map: per head, the pooler's output is the attention-
    weighted sum of the tokens' values (then the output projection); a token's dense
    embedding is its value through the same output projection, ln_contrast and
    proj_contrast as the pooled feature."""
    visual = tiny_model.network.visual
    pool = visual.attn_pool_contrast
    attn = pool.attn
    pixels = torch.randn(2, 3, 448, 448)
    with torch.no_grad():
        tokens = visual.trunk.forward_features(pixels)
        context = pool.ln_k(tokens)
        queries = pool.ln_q(pool.query).unsqueeze(0).expand(2, -1, -1)
        pooled, weights = attn(
            queries, context, context, need_weights=True, average_attn_weights=False
        )
        width, heads = attn.embed_dim, attn.num_heads
        values = torch.nn.functional.linear(
            context, attn.v_proj_weight, attn.in_proj_bias[2 * width :]
        )  # (B, N, D)
        per_head = values.reshape(2, -1, heads, width // heads)  # (B, N, H, d)
        mixed = torch.einsum("bhn,bnhd->bhd", weights[:, :, 0], per_head).reshape(2, width)
        rebuilt = attn.out_proj(mixed)
        np.testing.assert_allclose(rebuilt, pooled[:, 0], rtol=1e-5, atol=1e-5)
        # the weights are a distribution over the tokens, for every head
        np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-5)
        # token values through the output projection: what the dense map is built from
        np.testing.assert_allclose(
            pool.token_values(tokens), attn.out_proj(values), rtol=1e-5, atol=1e-6
        )
        features, dense = visual.forward_with_tokens(pixels)
        expected = torch.nn.functional.normalize(
            visual.ln_contrast(attn.out_proj(values[:, 1:])) @ visual.proj_contrast, dim=-1
        )
    np.testing.assert_allclose(features, visual(pixels).detach(), rtol=1e-5, atol=1e-6)
    assert dense.shape == (2, 28, 28, tiny_model.embed_dim)
    np.testing.assert_allclose(dense.reshape(2, 784, -1), expected, rtol=1e-4, atol=1e-5)


def test_conch_gives_tokens_from_the_same_pass_and_other_models_say_they_cannot(tiny_model):
    tiles = np.random.default_rng(0).integers(0, 255, (2, 448, 448, 3), dtype=np.uint8)
    features, tokens = tiny_model.encode_images_with_tokens(tiles)
    np.testing.assert_array_equal(features, tiny_model.encode_images(tiles))
    assert tokens.shape == (2, 28, 28, tiny_model.embed_dim)
    np.testing.assert_allclose(np.linalg.norm(tokens, axis=-1), 1.0, rtol=1e-5)
    plip = nc.load_model("plip", checkpoint="random")
    with pytest.raises(NotImplementedError, match="conch only"):
        plip.encode_image_tokens(tiles[:, :224, :224])


def _planted_edge(edge_px: int, size: int = 512, seed: int = 0):
    """Tumour left of column ``edge_px``, stroma right of it, at 1 µm/px."""
    rng = np.random.default_rng(seed)
    image = np.empty((size, size, 3), np.int16)
    image[:, :edge_px] = CLASS_COLORS["tumor"]
    image[:, edge_px:] = CLASS_COLORS["stroma"]
    image += rng.integers(-6, 7, image.shape, dtype=np.int16)
    return nc.Slide.from_array(np.clip(image, 0, 255).astype(np.uint8), mpp=1.0, name="edge")


def _boundary_um(seg, row: int) -> float:
    """Where the map's row turns from tumour (1) to stroma (2), in µm."""
    labels = seg.labels[row]
    first_stroma = int(np.argmax(labels == 2))
    return seg.translate_um[1] - seg.scale_um[1] / 2 + first_stroma * seg.scale_um[1]


@pytest.mark.parametrize("edge_px", [203, 250, 317])
def test_a_planted_edge_lands_within_one_token_where_the_tile_map_misses_by_up_to_a_cell(
    edge_px,
):
    model = nc.load_model("colour-toy")
    slide = _planted_edge(edge_px)
    region = (128.0, 64.0, 384.0, 448.0)
    dense = nc.dense_segment(slide, model, ["tumor", "stroma"], region=region, overlap=0.5)
    assert dense.scale_um == (8.0, 8.0) and "experimental" in dense.metadata
    emb = nc.embed(slide, model, nc.tile_grid(slide, model, overlap=0.5), cache=None)
    tiles = nc.zero_shot_segment(emb, model, ["tumor", "stroma"])
    assert tiles.scale_um == (32.0, 32.0)
    row_dense = dense.labels.shape[0] // 2
    row_tiles = int((256 - tiles.translate_um[0] + 16) // 32)
    dense_error = abs(_boundary_um(dense, row_dense) - edge_px)
    tile_error = abs(_boundary_um(tiles, row_tiles) - edge_px)
    assert dense_error <= 8.0, dense_error
    assert tile_error <= 32.0
    assert dense_error <= tile_error
    # every row agrees: the edge is straight
    boundaries = {_boundary_um(dense, r) for r in range(dense.labels.shape[0])}
    assert len(boundaries) == 1


def test_dense_maps_keep_the_tissue_and_edge_rules_and_reprompting_reuses_tokens(monkeypatch):
    model = nc.load_model("colour-toy")
    image = np.full((300, 300, 3), BACKGROUND_COLOR, np.uint8)
    image[:, :150] = CLASS_COLORS["necrosis"]  # tissue on the left, glass on the right
    slide = nc.Slide.from_array(image, mpp=1.0, name="half")
    region = (0.0, 0.0, 400.0, 400.0)  # past the image's edge (300 µm)
    tokens = nc.dense_tokens(slide, model, region, overlap=0.5)
    sim = tokens.similarity(model, "necrosis")
    rows, cols = sim.values.shape
    assert cols * 8 <= 300 + 8 and rows * 8 <= 300 + 8  # cells stop at the image's edge
    x_um = sim.translate_um[1] - 4 + 8 * np.arange(cols)
    left = np.isfinite(sim.values).all(axis=0)
    assert left[x_um + 8 <= 150].all() and not left[x_um >= 152].any()  # glass: NaN
    seg = tokens.segment(model, ["necrosis", "tumor"])
    assert seg.areas_mm2["necrosis"] == pytest.approx(0.3 * 0.15, rel=0.06)
    # a second prompt on the same region: no model call
    calls = []
    original = model.encode_image_tokens
    monkeypatch.setattr(model, "encode_image_tokens", lambda x: calls.append(1) or original(x))
    nc.dense_similarity(slide, model, "necrosis", region=region, overlap=0.5)
    first = len(calls)
    nc.dense_similarity(slide, model, "tumor", region=region, overlap=0.5)
    assert len(calls) == first > 0
    with pytest.raises(ValueError, match="needs region"):
        nc.dense_similarity(slide, model, "tumor")
    with pytest.raises(ValueError, match="No tissue tile"):
        nc.dense_similarity(slide, model, "tumor", region=(0, 250, 100, 300))


def test_the_command_line_writes_dense_maps_for_a_region(tmp_path, capsys):
    import tifffile
    from slides import write_svs

    from napari_conch.cli import main
    from napari_conch.readback import read_result_file

    slide = _planted_edge(203)
    path = tmp_path / "edge.svs"
    write_svs(path, [np.asarray(slide.levels[0])], mpp=1.0, tile=256)
    out = tmp_path / "out"
    assert (
        main(
            [
                "similarity",
                str(path),
                "--model",
                "colour-toy",
                "--text",
                "tumor",
                "--dense",
                "-o",
                str(out),
            ]
        )
        == 1
    )
    assert "--dense needs --region" in capsys.readouterr().err
    region = ["128", "64", "384", "448"]
    common = [str(path), "--model", "colour-toy", "--dense", "--region", *region, "-o", str(out)]
    assert main(["similarity", *common, "--text", "tumor"]) == 0
    sim = tifffile.imread(out / "edge.dense.similarity.ome.tif")
    assert sim.shape == (32, 48)
    assert main(["segment", *common, "--classes", "tumor", "stroma"]) == 0
    (seg,) = read_result_file(out / "edge.dense.ome.zarr")
    assert seg.scale_um == (8.0, 8.0) and seg.labels.shape == (32, 48)
    assert not (out / "edge.dense.tiles.csv").exists()  # no tiles to tabulate
    plip = [str(path), "--model", "plip", "--checkpoint", "random", "--text", "x"]
    assert main(["similarity", *plip, "--dense", "--region", *region, "-o", str(out)]) == 1
    assert "conch only" in capsys.readouterr().err


def test_the_evaluation_scores_tile_and_dense_maps_side_by_side(tmp_path):
    from napari_conch.evaluate import dense_and_tile_scores

    model = nc.load_model("colour-toy")
    synth = nc.synthetic_slide(size=2048, seed=3)
    region = (200.0, 200.0, 700.0, 700.0)  # µm: the tumour region's corner and its border
    scores = dense_and_tile_scores(
        synth.slide,
        model,
        ["tumor", "stroma", "necrosis"],
        synth.labels,
        region,
        truth_downsample=synth.labels_downsample,
        truth_names=synth.class_names,
        background="background",
        cache=tmp_path,
    )
    assert set(scores) == {"tile", "dense"}
    tile, dense = scores["tile"]["tumor"]["dice"], scores["dense"]["tumor"]["dice"]
    assert tile > 0.8 and dense > 0.8
    assert dense >= tile - 0.02  # finer cells: at least as good at the region's borders


def test_the_dense_cost_benchmark_runs(tmp_path):
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    import dense_cost

    result = dense_cost.main(["--tiny", "--side-um", "200", "--output", str(tmp_path / "d.json")])
    assert json.loads((tmp_path / "d.json").read_text())["token_um"] == result["token_um"] == 8.0
    assert set(result["seconds_per_mm2"]) >= {"tile_map_overlap_0", "dense_map_overlap_50"}
