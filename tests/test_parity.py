"""Parity with the reference CONCH implementation (``conch-fork``) for the same weights.

The reference model gets random weights (fixed seed, every tensor perturbed), its state dict
is saved as a ``pytorch_model.bin`` the way the public weights are (no caption decoder), and
that file is loaded through ``load_model``. Pre-projection, projected and text embeddings
must agree to 1e-5 in float32.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import (
    build_reference,
    public_state_dict,
    random_tiles,
    reference_config,
    reference_pixels,
    reference_token_ids,
)

from napari_conch.models import load_model

TOL = 1e-5

# Prompts for the text and tokenizer checks: pathology phrases, templates, unicode, accents,
# punctuation, special-token look-alikes, whitespace oddities, empty and over-long text.
PROMPTS = [
    "tumor",
    "stroma",
    "necrosis",
    "an H&E image of invasive ductal carcinoma.",
    "a photomicrograph showing lung adenocarcinoma.",
    "CLASSNAME is present.",
    "Squamous Cell Carcinoma, H&E.",
    "LYMPHOCYTES",
    "mitotic figure",
    "adipose tissue; fat",
    "mucin-producing glands (colloid)",
    "Ki-67 > 30% positive nuclei",
    "grade 3/3, pT2 N1 M0",
    "café-au-lait macule",
    "naïve B cells in the germinal centre",
    "Ångström-scale résumé of São Paulo biopsy",
    "µm, µm/px and 0.5 μm per pixel",
    "Größe: 5 × 3 mm",
    "œdème and æsthetics",
    "ñandú — señal",
    "ΑΒΓ αβγ Ωmega",
    "рак молочной железы",
    "肺腺癌",
    "腫瘍の組織像",
    "유방암 조직",
    "ปอด",
    "emoji 🧫🔬🩺",
    "tabs\tand\nnewlines\r\nhere",
    "   leading and trailing spaces   ",
    "double  spaces   inside",
    "",
    " ",
    "!!!???...,,,;;;:::",
    "\"quoted\" and 'single' and `back`",
    "a/b\\c|d_e~f^g",
    "<pad>",
    "<start_of_text> inside text <end_of_text>",
    "<|person|> <|mrn|> <|specimen_id|> <|date|>",
    "<unknown_token>",
    "HTML &amp; entities &lt;b&gt;",
    "1234567890",
    "3.14159 2.71828 -1e-5",
    "x" * 300,
    "word " * 200,
    "carcinoma " * 126,
    "a " * 125,
    "a " * 126,
    "Pneumonoultramicroscopicsilicovolcanoconiosis",
    "well-differentiated, moderately-differentiated and poorly-differentiated",
    "CamelCaseWordsTogether",
    "MiXeD cAsE cOnTeNt",
    "tumour vs. tumor (British vs. American)",
    "e.g., i.e., etc.",
    "n\u0303o combining tilde",
    "zero\u200bwidth\u200bspace",
    "non\u00a0breaking\u00a0space",
]


def _max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))


def _reference_image_outputs(ref, pixels):
    with torch.no_grad():
        pre = ref.encode_image(pixels, proj_contrast=False, normalize=False).numpy()
        proj_raw = ref.encode_image(pixels, proj_contrast=True, normalize=False).numpy()
        proj = ref.encode_image(pixels).numpy()  # reference defaults: projected, normalised
    return pre, proj_raw, proj


def _assert_image_parity(ref, ours, tiles):
    pre_ref, proj_raw_ref, proj_ref = _reference_image_outputs(ref, reference_pixels(tiles))
    pre = ours.encode_images(tiles)
    assert pre.shape == pre_ref.shape
    assert _max_diff(pre, pre_ref) <= TOL
    assert _max_diff(ours.project(pre, normalize=False), proj_raw_ref) <= TOL
    assert _max_diff(ours.project(pre), proj_ref) <= TOL


def _assert_text_parity(ref, ours, prompts):
    ids = torch.from_numpy(reference_token_ids(prompts))
    with torch.no_grad():
        ref_raw = ref.encode_text(ids, normalize=False).numpy()
        ref_norm = ref.encode_text(ids).numpy()
    assert _max_diff(ours.encode_texts(prompts, normalize=False), ref_raw) <= TOL
    assert _max_diff(ours.encode_texts(prompts), ref_norm) <= TOL


def _save(state_dict, path):
    torch.save(state_dict, path)
    return path


# -- tiny configuration: same code paths, runs in seconds ------------------------------------


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    ref = build_reference(tiny=True, seed=3)
    path = _save(public_state_dict(ref), tmp_path_factory.mktemp("ref-tiny") / "pytorch_model.bin")
    ours = load_model("conch_tiny", checkpoint=path, device="cpu", precision="fp32")
    return ref, ours, path


def test_tiny_image_parity(tiny_pair, rng):
    ref, ours, _ = tiny_pair
    _assert_image_parity(ref, ours, random_tiles(rng, n=3))


def test_tiny_text_parity(tiny_pair):
    ref, ours, _ = tiny_pair
    _assert_text_parity(ref, ours, PROMPTS)


def test_tiny_parity_at_224_matches_reference_force_image_size(tiny_pair, rng):
    """``input_size=224`` resamples the position embedding exactly as the reference's
    ``force_image_size=224`` does (its own loader, from the same file)."""
    from conch.open_clip_custom import create_model

    _, _, path = tiny_pair
    ref224 = create_model(
        reference_config(tiny=True), checkpoint_path=str(path), force_image_size=224
    )
    ours224 = load_model("conch_tiny", checkpoint=path, input_size=224)
    assert ours224.input_size == 224
    _assert_image_parity(ref224.eval(), ours224, random_tiles(rng, n=2, size=224))


def test_logit_scale_is_read_from_the_weights(tiny_pair):
    ref, ours, _ = tiny_pair
    assert ours.logit_scale == pytest.approx(float(ref.logit_scale.detach()), abs=0)


def test_tokenizer_ids_equal_reference(tiny_model):
    assert len(PROMPTS) >= 50
    ours = tiny_model.tokenize(PROMPTS)
    ref = reference_token_ids(PROMPTS)
    assert ours.shape == ref.shape == (len(PROMPTS), 128)
    mismatched = [p for p, a, b in zip(PROMPTS, ours, ref, strict=True) if not np.array_equal(a, b)]
    assert not mismatched, f"token ids differ for {mismatched[:5]}"
    # Over-long prompts are truncated to 127 ids ending in <end_of_text>, plus the pad slot.
    long_row = ours[PROMPTS.index("word " * 200)]
    assert long_row[126] == 2 and long_row[127] == 0


def test_input_at_other_sizes_is_resized_not_resampled_in_the_trunk(tiny_model, rng):
    """A peer tool fed 224-px tiles to the 448 model and let the trunk resample its position
    embedding. Here tiles are resized to the model's input size first, and the trunk itself
    refuses a wrongly sized input."""
    import torch.nn.functional as F

    small = random_tiles(rng, n=2, size=224)
    up = F.interpolate(
        torch.from_numpy(small).permute(0, 3, 1, 2).float() / 255,
        size=(448, 448),
        mode="bicubic",
        antialias=True,
        align_corners=False,
    ).clamp(0, 1)
    assert _max_diff(tiny_model.encode_images(small), tiny_model.encode_images(up)) <= 1e-6
    with pytest.raises(AssertionError, match="Input height"):
        tiny_model.network.visual(torch.zeros(1, 3, 224, 224))


# -- the full-size CONCH configuration -------------------------------------------------------


@pytest.fixture(scope="module")
def full_pair(tmp_path_factory):
    ref = build_reference(tiny=False, seed=7)
    path = _save(public_state_dict(ref), tmp_path_factory.mktemp("ref-full") / "pytorch_model.bin")
    ours = load_model("conch", checkpoint=path, device="cpu", precision="fp32")
    return ref, ours, path


@pytest.mark.slow
def test_full_model_image_parity_448(full_pair, rng):
    ref, ours, _ = full_pair
    assert (ours.input_size, ours.embed_dim) == (448, 512)
    _assert_image_parity(ref, ours, random_tiles(rng, n=2, size=448))


@pytest.mark.slow
def test_full_model_image_parity_224(full_pair, rng):
    from conch.open_clip_custom import create_model

    _, _, path = full_pair
    ref224 = create_model(
        reference_config(tiny=False), checkpoint_path=str(path), force_image_size=224
    )
    ours224 = load_model("conch", checkpoint=path, input_size=224)
    _assert_image_parity(ref224.eval(), ours224, random_tiles(rng, n=2, size=224))


@pytest.mark.slow
def test_full_model_text_parity(full_pair):
    ref, ours, _ = full_pair
    prompts = [PROMPTS[i] for i in (0, 3, 4, 13, 22, 26, 30, 43, 45, 46)]
    _assert_text_parity(ref, ours, prompts)
    assert ours.logit_scale == pytest.approx(float(ref.logit_scale.detach()), abs=0)
