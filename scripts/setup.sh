#!/usr/bin/env bash
# Set up the project's virtual environment and install diffpde (editable) into it.
#
#   bash scripts/setup.sh          # the package
#   bash scripts/setup.sh test     # the package and what the tests need
#
# The environment is $VENV: the active virtual environment when there is one, else ./.venv, created
# with $PYTHON (default python3) when missing. Nothing is installed into the interpreter itself, so
# two checkouts never share an install and a Python that refuses global installs (PEP 668) works.
# The CPU build torch==2.13.0 is installed first when the environment has no torch (an unpinned
# torch would pull a CUDA build of several GB). A finished install leaves a stamp keyed by
# pyproject.toml, the checkout and the mode, so running it again takes a second. Packages are
# installed without byte-compiling them (--no-compile): compiling all of torch's modules took
# 158 s of a 191 s install here, while Python compiles the few hundred modules it imports on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd -P)
PYTHON=${PYTHON:-python3}
VENV=${VENV:-${VIRTUAL_ENV:-.venv}}
MODE=${1:-package}

if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating the virtual environment $VENV with $PYTHON"
    if ! "$PYTHON" -m venv "$VENV"; then
        echo "[setup] error: '$PYTHON -m venv $VENV' failed; on Debian/Ubuntu install the venv module" \
             "(apt-get install python3-venv) or activate a virtual environment and run again" >&2
        exit 1
    fi
fi
PY="$VENV/bin/python"

key=$( { cat pyproject.toml; echo "$ROOT $MODE"; } | "$PY" -c "import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest()[:16])")
stamp="$VENV/.diffpde-setup-$MODE-$key"
if [ -f "$stamp" ] && "$PY" - "$ROOT" <<'PYEOF' 2>/dev/null
import os, sys
import diffpde, samplers  # noqa: E401  the install must point at this checkout
root = sys.argv[1]
sys.exit(0 if all(os.path.realpath(m.__file__).startswith(root + os.sep) for m in (diffpde, samplers)) else 1)
PYEOF
then
    echo "[setup] $VENV is up to date ($MODE)"
    exit 0
fi

if ! "$PY" -c "import torch" 2>/dev/null; then
    echo "[setup] installing torch==2.13.0 (CPU build) into $VENV"
    "$PY" -m pip install --quiet --no-compile "torch==2.13.0"
fi
echo "[setup] installing diffpde (editable, $MODE) into $VENV"
if [ "$MODE" = "test" ]; then
    "$PY" -m pip install --quiet --no-compile -e ".[test]"
    # k-diffusion is a reference implementation for tests only; its own dependencies
    # (torchvision, scikit-image, ...) are not needed for k_diffusion/sampling.py.
    "$PY" -m pip install --quiet --no-compile --no-deps "k-diffusion==0.1.1.post1"
else
    "$PY" -m pip install --quiet --no-compile -e .
fi
rm -f "$VENV"/.diffpde-setup-"$MODE"-*
touch "$stamp"
