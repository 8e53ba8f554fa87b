"""The package as PyPI and the napari hub deliver it: an sdist and a wheel, built from this
checkout, checked with twine, and the wheel installed (never editable) into a fresh virtual
environment where the command, the napari manifest and a small analysis work."""

from __future__ import annotations

import re
import subprocess
import sys
import sysconfig
import venv
from importlib import metadata
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def _run(args, **kwargs):
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600, **kwargs)
    assert proc.returncode == 0, f"{args}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def dists(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    # --no-isolation: the build backend (hatchling) comes from the test environment, so the
    # build needs no network; the floor in [build-system] is checked below.
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)])
    (wheel,) = out.glob("*.whl")
    (sdist,) = out.glob("*.tar.gz")
    return wheel, sdist


def test_sdist_and_wheel_pass_twine_check(dists):
    wheel, sdist = dists
    proc = _run([sys.executable, "-m", "twine", "check", "--strict", str(wheel), str(sdist)])
    assert proc.stdout.count("PASSED") == 2


def test_wheel_holds_the_package_and_its_manifest(dists):
    import zipfile

    wheel, _ = dists
    names = zipfile.ZipFile(wheel).namelist()
    assert "napari_conch/napari.yaml" in names and "napari_conch/cli/__init__.py" in names
    assert "napari_conch/__init__.pyi" in names  # the public API, listed once
    assert not [n for n in names if n.startswith(("tests/", "docs/", "bench/"))]
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA")))
    meta = meta.decode()
    assert "License-Expression: BSD-3-Clause" in meta
    assert "Requires-Dist: conch-fork" in meta


def test_build_backend_floor_is_one_that_writes_this_metadata():
    """License-Expression (PEP 639) needs hatchling 1.27; an older floor would build a
    wheel without it."""
    text = (ROOT / "pyproject.toml").read_text()
    floor = re.search(r'requires = \["hatchling>=([\d.]+)"\]', text).group(1)
    assert tuple(int(p) for p in floor.split(".")) >= (1, 27)


@pytest.fixture(scope="module")
def fresh_env(dists, tmp_path_factory):
    """A new virtual environment with the wheel installed as pip installs it from PyPI. The
    dependencies (torch and friends, gigabytes) are borrowed from the test environment via a
    path entry placed after the environment's own site-packages, so the wheel's copy of
    napari-conch is the one imported."""
    wheel, _ = dists
    root = tmp_path_factory.mktemp("fresh") / "venv"
    venv.EnvBuilder(with_pip=False).create(root)
    python = root / "bin" / "python"
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--no-deps",
            "--no-index",
            "--no-compile",
            str(wheel),
        ]
    )
    site = Path(
        _run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
        ).stdout.strip()
    )
    borrowed = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "zz_borrowed_dependencies.pth").write_text("\n".join(sorted(borrowed)) + "\n")
    return root


def test_wheel_dependencies_are_declared_and_satisfied(dists):
    """Everything the wheel needs is declared, and the declared versions are installable
    together (the test environment satisfies them)."""
    import zipfile

    from packaging.requirements import Requirement

    wheel, _ = dists
    names = zipfile.ZipFile(wheel).namelist()
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA")))
    unmet = []
    for line in meta.decode().splitlines():
        if not line.startswith("Requires-Dist: ") or "extra ==" in line:
            continue
        req = Requirement(line.removeprefix("Requires-Dist: "))
        try:
            installed = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            unmet.append(f"{req} (missing)")
            continue
        if not req.specifier.contains(installed, prereleases=True):
            unmet.append(f"{req} (have {installed})")
    assert not unmet


def test_fresh_environment_runs_the_installed_wheel(fresh_env):
    python = fresh_env / "bin" / "python"
    where = _run(
        [str(python), "-c", "import napari_conch, sys; print(napari_conch.__file__)"]
    ).stdout.strip()
    assert where.startswith(str(fresh_env)), f"imported {where}, not the wheel"
    help_text = _run([str(fresh_env / "bin" / "napari-conch"), "--help"]).stdout
    assert "demo" in help_text and "segment" in help_text
    validated = _run([str(python), "-m", "npe2", "validate", "napari-conch"])
    assert "valid" in (validated.stdout + validated.stderr).lower()


def test_fresh_environment_runs_a_small_analysis(fresh_env, tmp_path):
    python = fresh_env / "bin" / "python"
    code = """
import napari_conch as nc
from napari_conch.export import to_geojson
synth = nc.synthetic_slide(size=1024)
model = nc.load_model("colour-toy")
emb = nc.embed(synth.slide, model, nc.tile_grid(synth.slide, model), cache=None)
seg = nc.zero_shot_segment(emb, model, ["tumor", "stroma", "necrosis", "background"],
                           background="background")
print(sorted(seg.areas_mm2), len(to_geojson(seg)["features"]))
tok = nc.load_model("conch_tiny", checkpoint="random").tokenize(["tumor"])
print(tok.shape)
"""
    out = _run([str(python), "-c", code], cwd=tmp_path).stdout.splitlines()
    assert out[0].startswith("['necrosis', 'stroma', 'tumor']")
    assert out[1] == "(1, 128)"
