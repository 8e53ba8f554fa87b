"""Packaging promises: the plugin manifest, metadata, layout, and an honest CI script."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata, resources
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DIST = "napari-conch"
QT_BINDINGS = {"pyqt5", "pyqt6", "pyside2", "pyside6"}


def _requirement_name(req: str) -> str:
    return re.split(r"[\s\[<>=!~;(]", req, maxsplit=1)[0].lower().replace("_", "-")


def test_manifest_validates_and_is_discovered():
    from npe2 import PluginManager, PluginManifest

    manifest = PluginManifest.from_distribution(DIST)
    manifest.validate_imports()
    assert manifest.name == DIST == metadata.metadata(DIST)["Name"]
    pm = PluginManager()
    pm.discover()
    assert pm.get_manifest(DIST).name == DIST


def test_manifest_ships_inside_the_package_and_matches_the_top_level_file():
    shipped = resources.files("napari_conch") / "napari.yaml"
    assert shipped.is_file()
    assert shipped.read_text() == (ROOT / "napari.yaml").read_text()
    (entry,) = [ep for ep in metadata.entry_points(group="napari.manifest") if ep.name == DIST]
    assert entry.value == "napari_conch:napari.yaml"


def test_npe2_validate_command_passes():
    result = subprocess.run(
        [sys.executable, "-m", "npe2", "validate", DIST],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid" in (result.stdout + result.stderr).lower()


def test_metadata_follows_napari_conventions():
    meta = metadata.metadata(DIST)
    assert "Framework :: napari" in meta.get_all("Classifier")
    urls = meta.get_all("Project-URL")
    assert len(urls) >= 4
    requires = metadata.requires(DIST)
    base = [r for r in requires if "extra ==" not in r]
    assert not {_requirement_name(r) for r in base} & QT_BINDINGS, "no Qt binding in base deps"
    assert "napari" not in {_requirement_name(r) for r in base}
    all_extra = [r for r in requires if re.search(r"extra\s*==\s*['\"]all['\"]", r)]
    assert any(r.lower().startswith("napari[") and "pyqt" in r.lower() for r in all_extra)
    test_extra = {
        _requirement_name(r) for r in requires if re.search(r"extra\s*==\s*['\"]test['\"]", r)
    }
    assert {"pytest", "pytest-qt", "pytest-xvfb", "conch-fork"} <= test_extra
    scripts = {ep.name: ep.value for ep in metadata.entry_points(group="console_scripts")}
    assert scripts.get("napari-conch") == "napari_conch.cli:main"


def test_repository_layout():
    for name in (
        "pyproject.toml",
        "napari.yaml",
        "src/napari_conch",
        "tests",
        "docs",
        "README.md",
        "bench",
    ):
        assert (ROOT / name).exists(), name


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Run the tests", 1)[1]
    command = re.search(r"```bash\n(.+?)\n```", section, re.S).group(1).strip()
    ci_lines = [line.strip() for line in (ROOT / ".ci/run").read_text().splitlines()]
    assert command in ci_lines
    assert "set -euo pipefail" in ci_lines
    assert (ROOT / ".ci/run").stat().st_mode & 0o111, ".ci/run must be executable"


def test_importing_the_package_does_not_import_torch_or_qt():
    code = (
        "import sys, napari_conch; "
        "print(napari_conch.__version__); "
        "print(sorted(m for m in ('torch', 'napari', 'qtpy', 'PyQt6') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == "[]"


def test_library_modules_do_not_import_gui_packages():
    offenders = []
    for path in (ROOT / "src/napari_conch").rglob("*.py"):
        if "_napari" in path.parts:
            continue
        text = path.read_text()
        if re.search(r"^\s*(import|from)\s+(napari|qtpy|magicgui|PyQt\d|PySide\d)\b", text, re.M):
            offenders.append(path.name)
    assert not offenders


@pytest.mark.gui
def test_napari_starts_with_the_plugin_registered(make_napari_viewer):
    """The display stack (Xvfb, OpenGL, xcb) works and napari sees the plugin."""
    from npe2 import PluginManager

    viewer = make_napari_viewer()
    assert viewer.window is not None
    assert PluginManager.instance().get_manifest(DIST).name == DIST
