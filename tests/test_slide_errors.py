"""Files that cannot be opened: one clear error naming the file and why; the napari reader
declines them (returns None) instead of raising."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image
from slides import pyramid, tissue_like, write_svs

from napari_conch import SlideReadError
from napari_conch._napari.reader import napari_get_reader
from napari_conch.slide import open_slide


@pytest.fixture(scope="module")
def good_svs(tmp_path_factory):
    path = tmp_path_factory.mktemp("good") / "good.svs"
    write_svs(path, pyramid(tissue_like(1024, 1024, seed=9)), tile=256)
    return path


def _assert_refused(path, *reasons):
    with pytest.raises(SlideReadError) as info:
        open_slide(path)
    message = str(info.value)
    assert str(path) in message
    assert any(r in message for r in reasons), message
    assert napari_get_reader(str(path)) is None


def test_zero_byte_file(tmp_path):
    (tmp_path / "empty.svs").write_bytes(b"")
    _assert_refused(tmp_path / "empty.svs", "empty (0 bytes)")


def test_missing_file(tmp_path):
    _assert_refused(tmp_path / "nowhere.svs", "no such file")


def test_not_an_image(tmp_path):
    (tmp_path / "notes.svs").write_text("these are my notes, not a slide\n" * 10)
    _assert_refused(tmp_path / "notes.svs", "not a .svs image")


def test_random_bytes_with_a_tiff_signature(tmp_path):
    junk = b"II*\x00" + np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    (tmp_path / "junk.tif").write_bytes(junk)
    _assert_refused(tmp_path / "junk.tif", "Cannot open")


def test_unknown_format(tmp_path):
    (tmp_path / "data.xyz").write_bytes(b"\x00\x01\x02\x03" * 100)
    _assert_refused(tmp_path / "data.xyz", "not a supported slide or image format")


def test_a_directory_that_is_not_ome_zarr(tmp_path):
    folder = tmp_path / "folder.zarr"
    folder.mkdir()
    _assert_refused(folder, "is a directory")


def test_unreadable_file(tmp_path, good_svs, monkeypatch):
    # Tests run as root in CI, where chmod cannot take read access away; simulate the OS answer.
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode: False if str(p).endswith("good.svs") else real_access(p, mode)
    )
    _assert_refused(good_svs, "permission denied")


def test_truncated_file_fails_when_the_missing_tiles_are_read(tmp_path, good_svs):
    data = good_svs.read_bytes()
    cut = tmp_path / "cut.svs"
    cut.write_bytes(data[: len(data) // 3])
    try:
        slide = open_slide(cut)
    except SlideReadError as exc:  # the header of a later level is already gone
        assert str(cut) in str(exc)
        return
    with pytest.raises(SlideReadError, match=r"truncated|ends early|corrupt") as info:
        slide.levels[0].compute()
    assert "cut.svs" in str(info.value)


def test_wrong_extension_is_read_by_content(tmp_path):
    image = tissue_like(100, 120)
    Image.fromarray(image).save(tmp_path / "actually_png.svs", format="PNG")
    slide = open_slide(tmp_path / "actually_png.svs")
    np.testing.assert_array_equal(slide.levels[0].compute(), image)


def test_openslide_formats_without_openslide_say_how_to_install(tmp_path, monkeypatch):
    from napari_conch.readers import openslide_reader

    monkeypatch.setattr(openslide_reader, "openslide_available", lambda: False)
    (tmp_path / "case.mrxs").write_bytes(b"not really")
    with pytest.raises(SlideReadError, match=r"napari-conch\[openslide\]"):
        open_slide(tmp_path / "case.mrxs")


def test_bad_backend_and_level_arguments(good_svs):
    with pytest.raises(ValueError, match="Unknown backend"):
        open_slide(good_svs, backend="bioformats")
    slide = open_slide(good_svs)
    with pytest.raises(IndexError, match="levels 0–2"):
        slide.read_region(0, 0, 10, 10, level=5)
    with pytest.raises(ValueError, match="non-negative"):
        slide.read_region(0, 0, -1, 10)


def test_openslide_backend_reads_the_same_pixels(good_svs):
    ours = open_slide(good_svs)
    theirs = open_slide(good_svs, backend="openslide")
    assert theirs.metadata["backend"] == "openslide" and theirs.metadata["vendor"] == "aperio"
    assert theirs.mpp == pytest.approx(ours.mpp)
    assert [lv.shape for lv in theirs.levels] == [lv.shape for lv in ours.levels]
    for level in range(len(ours.levels)):
        np.testing.assert_array_equal(
            theirs.read_region(256, 128, 200, 150, level),
            ours.read_region(256, 128, 200, 150, level),
        )
