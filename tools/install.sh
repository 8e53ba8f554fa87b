#!/usr/bin/env bash
# Set up napari-conch from a source checkout on Debian/Ubuntu (what CI runs; new machines too).
#   bash tools/install.sh          system libraries + .venv + napari-conch[all]
#   bash tools/install.sh --test   the same with the test extra (pytest, Xvfb, build tools, ruff)
# Re-running is safe: installed system packages and an existing .venv are reused.
#
# PyTorch: the pinned torch==2.14.1 from PyPI is, on Linux x86-64, the CUDA build — it pulls
# about 3 GB of NVIDIA wheels (about 5.5 GB in the .venv) and runs on the CPU too. On a
# machine without an NVIDIA GPU, a CPU-only build is about five times smaller: set
#   NAPARI_CONCH_TORCH_INDEX=https://download.pytorch.org/whl/cpu bash tools/install.sh
# to install torch and torchvision from that index instead (any PyTorch wheel index works,
# e.g. .../whl/cu126 for another CUDA version). Unset, PyPI's default build is installed.
# Other variables: NAPARI_CONCH_VENV (default .venv), PYTHON (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."

extra="all"
[ "${1:-}" = "--test" ] && extra="test"
venv="${NAPARI_CONCH_VENV:-.venv}"
python="${PYTHON:-python3}"

# napari renders through OpenGL and Qt's xcb platform; tests run under Xvfb.
system_packages=(xvfb xauth libgl1 libegl1 libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0
  libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-xinerama0 libxcb-xinput0
  libxcb-xfixes0 libxcb-shape0 libxcb-cursor0 libdbus-1-3 libfontconfig1)

if command -v apt-get >/dev/null 2>&1; then
  missing=()
  for pkg in "${system_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    echo "install.sh: installing system packages: ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
else
  echo "install.sh: no apt-get here; install Xvfb/OpenGL/xcb libraries with your package manager." >&2
fi

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
# The torch release this project is tested with (pinned: an unpinned torch may pull a newer,
# untested multi-GB build). See the header for NAPARI_CONCH_TORCH_INDEX.
torch_index=()
if [ -n "${NAPARI_CONCH_TORCH_INDEX:-}" ]; then
  torch_index=(--index-url "$NAPARI_CONCH_TORCH_INDEX")
  echo "install.sh: torch from $NAPARI_CONCH_TORCH_INDEX"
fi
"$venv/bin/python" -m pip install -q ${torch_index[@]+"${torch_index[@]}"} \
  "torch==2.14.1" "torchvision==0.29.1"
# Editable, so a checkout's changes apply at once; users of the published package get the
# wheel from PyPI instead (pip install "napari-conch[all]").
"$venv/bin/python" -m pip install -q -e ".[$extra]"
echo "install.sh: ready in $venv ($("$venv/bin/python" -c 'import napari_conch; print("napari-conch", napari_conch.__version__)'))"
