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


def test_one_manifest_inside_the_package():
    shipped = ROOT / "src/napari_conch/napari.yaml"
    assert shipped.is_file() and not shipped.is_symlink()
    assert not (ROOT / "napari.yaml").exists(), "one manifest only: the one in the package"
    assert (resources.files("napari_conch") / "napari.yaml").is_file()
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
    assert {"pytest", "pytest-qt", "pytest-xvfb", "build", "twine", "ruff"} <= test_extra
    # text prompts work after a plain install: CONCH's tokenizer comes with conch-fork
    assert "conch-fork" in {_requirement_name(r) for r in base}
    assert not any("License ::" in c for c in meta.get_all("Classifier")), "SPDX license only"
    assert meta["License-Expression"] == "BSD-3-Clause"
    scripts = {ep.name: ep.value for ep in metadata.entry_points(group="console_scripts")}
    assert scripts.get("napari-conch") == "napari_conch.cli:main"


def test_repository_layout():
    for name in (
        "pyproject.toml",
        "src/napari_conch/napari.yaml",
        "src/napari_conch",
        "tests",
        "docs",
        "README.md",
        "bench",
    ):
        assert (ROOT / name).exists(), name


def test_readme_links_work_off_github():
    """PyPI and the napari hub show the README without the repository: links to our docs
    and the screenshot are absolute, and point at files that exist."""
    readme = (ROOT / "README.md").read_text()
    assert not re.findall(r"\]\((?!https?://|#)([^)]+)\)", readme), "relative links"
    ours = re.findall(
        r"https://(?:github\.com/napari-conch/napari-conch/blob|"
        r"raw\.githubusercontent\.com/napari-conch/napari-conch)/main/([^)\s]+)",
        readme,
    )
    assert len(ours) > 10 and "docs/images/screenshot.png" in ours
    assert [p for p in ours if not (ROOT / p).exists()] == []


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Run the tests", 1)[1]
    command = re.search(r"```bash\n(.+?)\n```", section, re.S).group(1).strip()
    ci_lines = [line.strip() for line in (ROOT / ".ci/run").read_text().splitlines()]
    assert command in ci_lines
    assert "set -euo pipefail" in ci_lines
    assert (ROOT / ".ci/run").stat().st_mode & 0o111, ".ci/run must be executable"


CORE = (
    "slide",
    "tissue",
    "tiling",
    "store",
    "embeddings",
    "prompts",
    "zeroshot",
    "dense",
    "device_decode",  # torch and torchvision on first use only
    "export",
)


def test_importing_the_core_does_not_import_torch_or_qt():
    """A dask worker or a notebook that only reads a cache pays for numpy, not for torch:
    the package and its analysis modules load no model backend."""
    modules = ", ".join(f"napari_conch.{m}" for m in CORE)
    code = (
        f"import sys, napari_conch, {modules}; "
        "import napari_conch.models; napari_conch.load_model; "
        "print(napari_conch.__version__); "
        "print(sorted(m for m in ('torch', 'timm', 'transformers', 'open_clip', 'napari', "
        "'qtpy', 'PyQt6') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == "[]"


def test_backends_load_on_first_use():
    code = (
        "import sys, napari_conch as nc; "
        "m = nc.load_model('colour-toy'); print('torch' in sys.modules); "
        "nc.load_model('conch_tiny', checkpoint='random'); print('torch' in sys.modules); "
        "from napari_conch.models import ConchModel; print(ConchModel.__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True", "ConchModel"]


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


def test_release_workflow_builds_checks_and_publishes_on_version_tags():
    import yaml

    workflow = yaml.safe_load((ROOT / ".github/workflows/release.yml").read_text())
    assert workflow[True]["push"]["tags"] == ["v*"]  # YAML reads the key `on` as True
    build = " ".join(str(step.get("run", "")) for step in workflow["jobs"]["build"]["steps"])
    assert "python -m build" in build and "twine check --strict" in build
    assert "__version__" in build  # the tag must name the package's version
    publish = workflow["jobs"]["publish"]
    assert publish["needs"] == "build" and publish["permissions"] == {"id-token": "write"}
    assert any("pypa/gh-action-pypi-publish" in s.get("uses", "") for s in publish["steps"])


def test_the_public_api_is_listed_once_and_every_name_resolves():
    import napari_conch as nc

    stub = (ROOT / "src/napari_conch/__init__.pyi").read_text()
    listed = re.findall(r"^from \S+ import (\w+) as \1$", stub, re.M)
    assert sorted(listed) == sorted(n for n in nc.__all__ if n != "__version__")
    assert {"open_slide", "embed", "zero_shot_segment", "show"} <= set(listed)
    for name in listed:
        assert getattr(nc, name) is not None, name
    assert set(listed) <= set(dir(nc))
