"""The evaluation harness: tile datasets, metrics, segmentation and slide scores."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import ColourModel
from PIL import Image

from napari_conch import PromptSet
from napari_conch.evaluate import evaluate_tiles, load_tile_dataset, slide_scores, tile_metrics
from napari_conch.results import SlideCall

CLASSES = ["tumor", "stroma", "necrosis"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Tiles of the synthetic classes' colours with noise, a folder per class."""
    root = tmp_path_factory.mktemp("tiles")
    rng = np.random.default_rng(0)
    for name in CLASSES:
        (root / name).mkdir()
        for i in range(6):
            colour = np.array(ColourModel.COLORS[name], float)
            tile = np.clip(colour + rng.normal(0, 8, size=(48, 48, 3)), 0, 255).astype(np.uint8)
            size = 48 if i % 2 else 40  # mixed tile sizes are fine
            Image.fromarray(tile[:size, :size]).save(root / name / f"{i}.png")
    return root


def test_folder_dataset_is_classified_and_scored(dataset):
    result = evaluate_tiles(ColourModel(), dataset, CLASSES, batch_size=4)
    assert result.metrics["n"] == 18
    assert result.metrics["balanced_accuracy"] == 1.0 and result.metrics["weighted_f1"] == 1.0
    assert result.metrics["kappa"] == 1.0 and result.metrics["auc"] == 1.0
    np.testing.assert_array_equal(result.confusion, np.diag([6, 6, 6]))
    assert result.probabilities.shape == (18, 3)


def test_csv_dataset_with_a_label_map(dataset, tmp_path):
    lines = ["path,label"] + [
        f"{p},{'T' if lab == 'tumor' else lab}"
        for p, lab in zip(*load_tile_dataset(dataset), strict=True)
    ]
    csv_path = tmp_path / "tiles.csv"
    csv_path.write_text("\n".join(lines))
    paths, labels = load_tile_dataset(csv_path)
    assert len(paths) == 18 and "T" in labels
    with pytest.raises(ValueError, match=r"no prompt class.*label_map"):
        evaluate_tiles(ColourModel(), csv_path, CLASSES)
    result = evaluate_tiles(ColourModel(), csv_path, CLASSES, label_map={"T": "tumor"})
    assert result.metrics["accuracy"] == 1.0


def test_bad_datasets(tmp_path):
    with pytest.raises(ValueError, match="no images"):
        load_tile_dataset(tmp_path)
    (tmp_path / "x.csv").write_text("a.png,tumor\nmissing.png,tumor\n")
    with pytest.raises(FileNotFoundError, match="not found"):
        load_tile_dataset(tmp_path / "x.csv")
    with pytest.raises(ValueError, match="neither"):
        load_tile_dataset(tmp_path / "x.txt")


def test_metrics_match_hand_computed_values():
    y_true = np.array([0, 0, 1, 1, 1, 1])
    y_pred = np.array([0, 1, 1, 1, 1, 0])
    probs = np.array([[0.8, 0.2], [0.4, 0.6], [0.3, 0.7], [0.2, 0.8], [0.1, 0.9], [0.6, 0.4]])
    m = tile_metrics(y_true, y_pred, probs, ["a", "b"])
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["balanced_accuracy"] == pytest.approx((1 / 2 + 3 / 4) / 2)
    # AUC: positives score .7 .8 .9 .4, negatives .2 .6; positives win 7 of the 8 pairs
    assert m["auc"] == pytest.approx(7 / 8)
    np.testing.assert_array_equal(m["confusion"], [[1, 1], [1, 3]])


def test_slide_scores():
    calls = [SlideCall(c, {}, {}, 5, {}) for c in ["LUAD", "LUAD", "LUSC", "LUAD"]]
    scores = slide_scores(calls, ["LUAD", "LUSC", "LUSC", "LUAD"], PromptSet(["LUAD", "LUSC"]))
    assert scores["balanced_accuracy"] == pytest.approx(0.75)
    np.testing.assert_array_equal(scores["confusion"], [[2, 0], [1, 1]])
    with pytest.raises(ValueError, match="calls but"):
        slide_scores(calls, ["LUAD"])
