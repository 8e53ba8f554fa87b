"""The layout keeps its promises: imports flow one way, modules stay small and keep their
private names, and each format or reader is one module plus one registry row that every
front end reads."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

import napari_conch as nc
from napari_conch import formats, readers

PACKAGE = Path(nc.__file__).parent
MAX_LINES = 600


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict) -> set[str]:
    """Every napari_conch module ``name`` imports, at the top or inside functions."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            candidates = [f"{module}.{alias.name}" for alias in node.names] + [module]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        for candidate in candidates:
            while candidate not in modules and "." in candidate:
                candidate = candidate.rsplit(".", 1)[0]
            if candidate in modules and candidate != name and candidate.startswith("napari_conch"):
                targets.add(candidate)
    return targets


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_circles_even_through_imports_inside_functions():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert "napari_conch.pipeline" in graph["napari_conch.distributed"]  # the graph is real
    assert _cycles(graph) == []


def test_the_circle_finder_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_is_over_six_hundred_lines():
    sizes = {
        str(path.relative_to(PACKAGE)): len(path.read_text(encoding="utf-8").splitlines())
        for path in PACKAGE.rglob("*.py")
    }
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}


def test_no_private_name_is_imported_from_another_module():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level:
                offenders += [
                    f"{path.relative_to(PACKAGE)}: {a.name}"
                    for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")
                ]
    assert offenders == []


# -- formats ---------------------------------------------------------------------------------


def _manifest() -> dict:
    return yaml.safe_load((PACKAGE / "napari.yaml").read_text(encoding="utf-8"))


def test_napari_manifest_matches_the_format_and_reader_registries():
    contributions = _manifest()["contributions"]
    (writer,) = contributions["writers"]
    layer_formats = [f for f in formats.REGISTRY if f.writes_layers]
    assert writer["filename_extensions"] == [f.extensions[0] for f in layer_formats]
    (reader,) = contributions["readers"]
    patterns = set(reader["filename_patterns"])
    readable = [ext for f in formats.REGISTRY if f.read for ext in f.extensions]
    slides = [s for r in readers.REGISTRY for s in r.suffixes]
    wanted = {"*." + ext.rsplit(".", 1)[-1] for ext in [*readable, *slides]}
    assert wanted <= patterns, sorted(wanted - patterns)
    assert patterns <= wanted, sorted(patterns - wanted)  # nothing claimed that no one reads


def test_every_front_end_offers_the_registered_formats():
    from napari_conch.cli import build_parser

    parser = build_parser()
    segment = parser._subparsers._group_actions[0].choices["segment"]
    (option,) = [a for a in segment._actions if "--formats" in a.option_strings]
    assert tuple(option.choices) == formats.FORMATS
    assert tuple(option.default) == formats.default_formats()
    assert all(f.label for f in formats.REGISTRY)  # what the export dialog shows


def _toy_format():
    """A format as a contributor adds one: a writer and a reader, in one row."""

    def write(job, path):
        Path(path).write_text(json.dumps({"toy": job.seg.class_names}), encoding="utf-8")

    def is_ours(path):
        return "toy" in json.loads(Path(path).read_text(encoding="utf-8"))

    def read(path):
        names = json.loads(Path(path).read_text(encoding="utf-8"))["toy"]
        return [nc.SegmentationResult.from_labels(np.zeros((2, 2), np.uint8), names)]

    return formats.Format(
        "toy", ".toy.json", "A toy format", write, read, is_ours, (".toy.json",), default=True
    )


def test_a_format_is_one_row_and_everything_uses_it(monkeypatch, tmp_path):
    toy = _toy_format()
    monkeypatch.setattr(formats, "REGISTRY", (*formats.REGISTRY, toy))
    monkeypatch.setattr(formats, "FORMATS", (*formats.FORMATS, "toy"))
    seg = nc.SegmentationResult.from_labels(np.array([[1, 2]], np.uint8), ["a", "b"])
    written = formats.export_all(seg, tmp_path, "case", formats=["toy"])
    assert written["toy"] == tmp_path / "case.toy.json"
    assert "toy" in formats.default_formats()
    assert formats.is_result_file(written["toy"])
    (back,) = formats.read_result_file(written["toy"])
    assert back.class_names == ["a", "b"]
    summary = json.loads(written["summary"].read_text())
    assert summary["files"] == {"toy": str(written["toy"])}


def test_a_reader_is_one_row(monkeypatch, tmp_path):
    from napari_conch.readers.base import Backend
    from napari_conch.readers.image import ArrayLevel

    def open_toy(path):
        pixels = np.full((64, 96, 3), int(Path(path).read_text()), np.uint8)
        return Backend("toy", [ArrayLevel(pixels, {})], 0.5, "toy header", {"vendor": "toy"})

    row = readers.Reader("toy", open_toy, frozenset({".toy"}), claims_suffixes=True)
    monkeypatch.setattr(readers, "REGISTRY", (row, *readers.REGISTRY))
    (tmp_path / "a.toy").write_text("200")
    slide = nc.open_slide(tmp_path / "a.toy")
    assert slide.shape == (64, 96) and slide.mpp == 0.5 and slide.metadata["backend"] == "toy"
    assert int(slide.read_region(0, 0, 4, 4)[0, 0, 0]) == 200


@pytest.mark.parametrize("name", ["tifffile", "openslide", "ome-zarr", "image"])
def test_every_backend_name_is_a_registry_row(name):
    assert readers.get_reader(name).name == name
    assert name in readers.BACKENDS
