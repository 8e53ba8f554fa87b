"""The formats' own validators, applied to our exports: ome-zarr-models for OME-Zarr,
ome-types (validate=True) for OME-TIFF's OME-XML, shapely plus RFC 7946's winding rule and
QuPath's conventions for GeoJSON."""

from __future__ import annotations

import json
import math
from pathlib import Path


def check_ome_zarr(path) -> None:
    """The image group, the labels group and every label image validate as OME-NGFF."""
    import zarr
    from ome_zarr_models import open_ome_zarr
    from ome_zarr_models.v04.image import Image
    from ome_zarr_models.v04.image_label import ImageLabel
    from ome_zarr_models.v04.labels import Labels

    root = zarr.open_group(str(path), mode="r")
    assert isinstance(open_ome_zarr(root), Image), path
    labels = zarr.open_group(str(Path(path) / "labels"), mode="r")
    assert isinstance(open_ome_zarr(labels), Labels), path
    for name in dict(labels.attrs)["labels"]:
        group = zarr.open_group(str(Path(path) / "labels" / name), mode="r")
        assert isinstance(open_ome_zarr(group), ImageLabel), (path, name)


def check_ome_tiff(path) -> None:
    """The OME-XML validates against the OME schema and gives the pixel size in µm."""
    import tifffile
    from ome_types import from_xml

    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome, path
        ome = from_xml(tif.ome_metadata, validate=True)
    pixels = ome.images[0].pixels
    assert pixels.physical_size_x and pixels.physical_size_y, path
    assert pixels.physical_size_x_unit.value == "µm", path


def check_geojson(source) -> dict:
    """RFC 7946 and QuPath: valid geometries, exterior rings counter-clockwise and holes
    clockwise, measurements that are finite numbers, classifications QuPath reads."""
    from shapely import is_ccw
    from shapely.geometry import shape

    collection = json.loads(Path(source).read_text()) if not isinstance(source, dict) else source
    assert collection["type"] == "FeatureCollection"
    for feature in collection["features"]:
        assert feature["type"] == "Feature"
        geometry = shape(feature["geometry"])
        assert geometry.is_valid and not geometry.is_empty, feature["properties"]
        polygons = list(getattr(geometry, "geoms", [geometry]))
        for polygon in polygons:
            assert polygon.geom_type == "Polygon"
            assert is_ccw(polygon.exterior), "exterior rings wind counter-clockwise"
            assert not any(is_ccw(ring) for ring in polygon.interiors), "holes wind clockwise"
        properties = feature["properties"]
        for name, value in properties.get("measurements", {}).items():
            assert isinstance(value, (int, float)) and math.isfinite(value), (name, value)
        classification = properties.get("classification")
        if classification is not None:
            assert isinstance(classification["name"], str) and classification["name"]
            color = classification["color"]
            assert len(color) == 3 and all(isinstance(c, int) and 0 <= c <= 255 for c in color)
    return collection


def check_export_folder(folder) -> list[Path]:
    """Run the right validator on every export in ``folder``; returns the files checked."""
    checked = []
    for path in sorted(Path(folder).iterdir()):
        name = path.name
        if name.endswith(".ome.zarr"):
            check_ome_zarr(path)
        elif name.endswith((".ome.tif", ".ome.tiff")):
            check_ome_tiff(path)
        elif name.endswith(".geojson"):
            check_geojson(path)
        else:
            continue
        checked.append(path)
    return checked
