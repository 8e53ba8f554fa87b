"""Exports: QuPath GeoJSON, OME-Zarr, OME-TIFF and tile tables read back correctly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from helpers import ColourModel

import napari_conch as nc
from napari_conch.export import (
    export_all,
    label_polygons,
    tile_table,
    to_geojson,
    to_ome_tiff,
    to_ome_zarr,
)

CLASSES = ["tumor", "stroma", "necrosis"]


@pytest.fixture(scope="module")
def result():
    synth = nc.synthetic_slide(size=2048, mpp=1.0, seed=3)
    model = ColourModel()
    grid = nc.tile_grid(synth.slide, model, tile_um=16, overlap=0.5, min_tissue=0)  # 8 µm cells
    emb = nc.embed(synth.slide, model, grid, cache=None)
    seg = nc.zero_shot_segment(emb, model, CLASSES, background="background")
    sim = nc.similarity_map(emb, model, text="tumor")
    return emb, seg, sim


def test_geojson_polygons_match_the_label_map(result, tmp_path):
    from shapely import contains_xy
    from shapely.geometry import shape

    emb, seg, _ = result
    collection = to_geojson(seg, tmp_path / "seg.geojson")
    assert json.loads((tmp_path / "seg.geojson").read_text()) == collection
    assert collection["properties"]["napari_conch"]["trained"] is True
    s = emb.grid.stride_px
    rows, cols = np.mgrid[0 : seg.labels.shape[0], 0 : seg.labels.shape[1]]
    cx, cy = (cols + 0.5) * s, (rows + 0.5) * s  # cell centres, level-0 px (x, y)
    assert [f["properties"]["classification"]["name"] for f in collection["features"]] == CLASSES
    for k, feature in enumerate(collection["features"], start=1):
        geometry = shape(feature["geometry"])
        assert geometry.is_valid
        inside = contains_xy(geometry, cx, cy)
        np.testing.assert_array_equal(inside, seg.labels == k)
        props = feature["properties"]
        assert props["objectType"] == "annotation"
        assert props["classification"]["color"] == [round(255 * c) for c in seg.colors[k][:3]]
        # one answer everywhere: the measurement is the class's area in the result
        area = props["measurements"]["Tissue area µm^2"]
        assert area == pytest.approx(seg.areas_mm2[CLASSES[k - 1]] * 1e6)
        assert 0 < props["measurements"]["Mean probability"] <= 1


def test_polygons_keep_holes():
    labels = np.zeros((7, 7), np.uint8)
    labels[1:6, 1:6] = 1
    labels[3, 3] = 0  # a hole
    polygon = label_polygons(labels, 1, cell_px=10)
    assert polygon.geom_type == "Polygon" and len(polygon.interiors) == 1
    assert polygon.area == (25 - 1) * 100


def test_geojson_tiles_carry_per_class_scores(result, tmp_path):
    emb, seg, _ = result
    collection = to_geojson(seg, tiles=True, emb=emb)
    tiles = [f for f in collection["features"] if f["properties"]["objectType"] == "detection"]
    assert len(tiles) == emb.n_done
    first = tiles[0]["properties"]
    assert set(first["measurements"]) == {f"p({c})" for c in CLASSES}
    ring = tiles[0]["geometry"]["coordinates"][0]
    y, x = emb.coords[first["tile"]]
    assert ring[0] == [float(x), float(y)] and ring[2] == [
        x + emb.grid.tile_px,
        y + emb.grid.tile_px,
    ]
    with pytest.raises(ValueError, match="needs the embeddings"):
        to_geojson(seg, tiles=True)


def test_ome_zarr_reads_back_with_ome_zarr(result, tmp_path):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    _, seg, sim = result
    path = to_ome_zarr(seg, tmp_path / "seg.ome.zarr", similarities=[sim])
    nodes = list(Reader(parse_url(str(path)))())
    image, label = nodes[0], nodes[-1]
    # probabilities, uncertainty, similarity
    assert image.data[0].shape == (len(CLASSES) + 2, *seg.labels.shape)
    transforms = image.metadata["coordinateTransformations"][0]
    assert transforms[0]["scale"][1:] == list(seg.scale_um)
    np.testing.assert_array_equal(np.asarray(label.data[0]), seg.labels)
    import zarr

    attrs = zarr.open_group(str(path / "labels" / "segmentation"), mode="r").attrs["image-label"]
    assert [p["class"] for p in attrs["properties"]] == CLASSES
    assert attrs["colors"][0]["rgba"] == [round(255 * c) for c in seg.colors[1]]


def test_ome_tiff_has_physical_sizes_and_a_pyramid(result, tmp_path):
    _, seg, sim = result
    path = to_ome_tiff(seg, tmp_path / "labels.ome.tif")
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome
        series = tif.series[0]
        np.testing.assert_array_equal(series.asarray(), seg.labels)
        assert len(series.levels) >= 2
        xml = tif.ome_metadata
    assert f'PhysicalSizeX="{seg.scale_um[1]}"' in xml and 'PhysicalSizeXUnit="µm"' in xml
    path = to_ome_tiff(sim, tmp_path / "sim.ome.tif", what="similarity")
    np.testing.assert_allclose(tifffile.imread(path), sim.values, equal_nan=True)


def test_tile_table_csv_and_parquet(result, tmp_path):
    import pandas as pd

    emb, seg, sim = result
    frame = tile_table(emb, seg, similarities=[sim], path=tmp_path / "tiles.csv")
    back = pd.read_csv(tmp_path / "tiles.csv")
    assert len(back) == len(emb)
    for column in ("y_px", "x_um", "tissue_fraction", "p(tumor)", "class", "similarity: tumor"):
        assert column in back.columns
    np.testing.assert_allclose(back["y_um"], emb.coords[:, 0] * emb.grid.mpp)
    np.testing.assert_allclose(
        back["p(stroma)"], seg.tile_probabilities[:, 1], rtol=1e-6, atol=1e-12
    )
    tile_table(emb, seg, similarities=[sim], path=tmp_path / "tiles.parquet")
    assert pd.read_parquet(tmp_path / "tiles.parquet").shape == frame.shape


def test_export_all_writes_a_summary(result, tmp_path):
    emb, seg, sim = result
    written = export_all(seg, tmp_path, "case", emb=emb, similarities=[sim])
    summary = json.loads(written["summary"].read_text())
    assert summary["classes"] == CLASSES and summary["trained"] is True
    assert set(summary["files"]) == {"geojson", "ome-zarr", "ome-tiff", "similarity", "csv"}
    for path in summary["files"].values():
        assert (tmp_path / path.split("/")[-1]).exists()
    assert summary["similarity_queries"] == ["tumor"]
    assert summary["scale_um"] == list(seg.scale_um)
    assert summary["translate_um"] == list(seg.translate_um)


def test_export_all_writes_both_tables_and_refuses_unknown_formats(result, tmp_path):
    from napari_conch.export import FORMATS

    emb, seg, sim = result
    written = export_all(seg, tmp_path, "case", emb=emb, similarities=[sim, sim], formats=FORMATS)
    assert {"csv", "parquet", "similarity-1", "similarity-2", "geojson-tiles"} <= set(written)
    assert all(path.exists() for path in written.values())
    with pytest.raises(ValueError, match="Unknown export formats"):
        export_all(seg, tmp_path, "case", formats=("geojson", "shapefile"))


def test_ome_zarr_export_reads_back_as_the_same_result(result, tmp_path):
    from napari_conch.readback import read_ome_zarr, read_results

    _, seg, sim = result
    to_ome_zarr(seg, tmp_path / "case.ome.zarr", similarities=[sim])
    back, (back_sim,) = read_ome_zarr(tmp_path / "case.ome.zarr")
    np.testing.assert_array_equal(back.labels, seg.labels)
    np.testing.assert_allclose(back.probabilities, seg.probabilities, equal_nan=True)
    np.testing.assert_allclose(back.uncertainty, seg.uncertainty, atol=1e-6, equal_nan=True)
    assert back.class_names == seg.class_names
    assert back.scale_um == seg.scale_um and back.translate_um == pytest.approx(seg.translate_um)
    for label in range(1, len(seg.class_names) + 1):
        np.testing.assert_allclose(back.colors[label], seg.colors[label], atol=1 / 255)
    assert back.areas_mm2 == pytest.approx(seg.areas_mm2)
    assert back.metadata["model"]["name"] == seg.metadata["model"]["name"]
    np.testing.assert_allclose(back_sim.values, sim.values, equal_nan=True)
    assert back_sim.queries == sim.queries
    assert [type(r).__name__ for r in read_results(tmp_path)] == [
        "SegmentationResult",
        "SimilarityMap",
    ]
    (tmp_path / "other").mkdir()
    with pytest.raises(ValueError, match="holds no napari-conch"):
        read_results(tmp_path / "other")


def test_every_export_passes_its_formats_validator(result, tmp_path):
    from validators import check_export_folder

    from napari_conch.export import FORMATS

    emb, seg, sim = result
    export_all(seg, tmp_path, "case", emb=emb, similarities=[sim], formats=FORMATS)
    assert len(check_export_folder(tmp_path)) == 5  # GeoJSON ×2, OME-Zarr, OME-TIFF ×2


def test_tile_tables_carry_their_provenance(result, tmp_path):
    import pandas as pd
    import pyarrow.parquet as pq

    emb, seg, sim = result
    tile_table(emb, seg, similarities=[sim], path=tmp_path / "t.csv")
    tile_table(emb, seg, similarities=[sim], path=tmp_path / "t.parquet")
    for table in (pd.read_csv(tmp_path / "t.csv"), pd.read_parquet(tmp_path / "t.parquet")):
        assert set(table["model"]) == {seg.metadata["model"]["name"]}
        assert set(table["trained"]) == {True} and table["weights_hash"].nunique() == 1
    meta = json.loads(pq.read_schema(tmp_path / "t.parquet").metadata[b"napari_conch"])
    assert meta["grid"]["stride_px"] == emb.grid.stride_px
    assert meta["prompts"] == seg.metadata["prompts"]
    assert meta["similarity_queries"] == ["tumor"]


def test_similarity_exports_name_their_query_and_show_the_data_range(result, tmp_path):
    import zarr

    _, seg, sim = result
    path = to_ome_tiff(sim, tmp_path / "sim.ome.tif", what="similarity")
    with tifffile.TiffFile(path) as tif:
        from ome_types import from_xml

        image = from_xml(tif.ome_metadata).images[0]
        info = json.loads(image.description)["napari_conch"]
    assert image.pixels.channels[0].name == "similarity: tumor"
    assert info["query"] == "tumor"
    assert info["contrast_limits"] == pytest.approx(list(sim.contrast_limits))
    channels = zarr.open_group(
        str(to_ome_zarr(seg, tmp_path / "s.ome.zarr", similarities=[sim])), mode="r"
    ).attrs["omero"]["channels"]
    window = channels[-1]["window"]
    assert channels[-1]["label"] == "similarity: tumor"
    assert (window["start"], window["end"]) == pytest.approx(sim.contrast_limits)
    assert channels[0]["window"]["end"] == 1.0  # probabilities keep their 0–1 window


def test_every_export_reads_back_with_the_same_labels(result, tmp_path):
    from napari_conch.export import FORMATS
    from napari_conch.readback import is_result_file, read_result_file

    emb, seg, sim = result
    written = export_all(seg, tmp_path, "case", emb=emb, similarities=[sim], formats=FORMATS)
    for kind in ("ome-zarr", "ome-tiff", "geojson", "geojson-tiles"):
        back = read_result_file(written[kind])[0]
        np.testing.assert_array_equal(back.labels, seg.labels, err_msg=kind)
        assert back.class_names == seg.class_names, kind
        assert back.scale_um == seg.scale_um and back.translate_um == pytest.approx(
            seg.translate_um
        )
        for label in range(1, len(seg.class_names) + 1):
            np.testing.assert_allclose(back.colors[label], seg.colors[label], atol=1 / 255)
        assert back.areas_mm2 == pytest.approx(seg.areas_mm2, rel=1e-6), kind
    (back_sim,) = read_result_file(written["similarity"])
    np.testing.assert_allclose(back_sim.values, sim.values, equal_nan=True)
    assert back_sim.queries == ["tumor"] and back_sim.contrast_limits == pytest.approx(
        sim.contrast_limits
    )
    assert not is_result_file(written["csv"]) and not is_result_file(written["summary"])


def test_one_file_stem_rule_for_slide_paths_and_layer_names():
    from napari_conch.export import file_stem

    assert file_stem("/data/case 1.svs") == file_stem("case 1.svs") == "case 1"
    assert file_stem("case.ome.tif") == file_stem("case.ome.zarr") == "case"
    assert file_stem("case.svs (µm/px unknown)") == "case"  # the widget's layer-name note
    assert file_stem("case (copy).svs") == "case (copy)"
    assert file_stem('a:b?"c.tif') == "a_b_c"
