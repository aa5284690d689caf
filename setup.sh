#!/usr/bin/env bash
# Idempotent set-up: system packages FFCV needs to build, a virtual environment at .venv,
# and normfast installed into it in editable mode. A second run checks and returns quickly.
set -euo pipefail
cd "$(dirname "$0")"

need_apt=()
for pkg in pkg-config libopencv-dev libturbojpeg0-dev; do
  [ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null)" = "install ok installed" ] || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing system packages: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
fi

# Re-install only when the declared dependencies changed.
stamp=.venv/.normfast-setup
want=$(cat setup.py setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && .venv/bin/python -c "import importlib.util as u, sys; sys.exit(not all(u.find_spec(m) for m in ('normfast', 'ffcv', 'nvidia.dali', 'torchvision', 'pytest', 'ruff')))" 2>/dev/null; then
  exit 0
fi
echo "setup: installing Python packages into .venv (first time: a few minutes)"
.venv/bin/python -m pip install -q --upgrade pip setuptools wheel
# torch/torchvision first, pinned to the releases that install from this machine's disk
# (a CUDA build that also runs on the CPU); FFCV's build needs torch and numpy present.
.venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1" numpy
.venv/bin/python -m pip install -q --no-build-isolation -e ".[test]"
echo "$want" > "$stamp"
echo "setup: done"
