#!/usr/bin/env bash
# Install diffpde (editable) into the current Python, with the CPU build of PyTorch when none is present.
# Usage: bash scripts/setup.sh [test]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" 2>/dev/null; then
    "$PY" -m pip install --quiet "torch==2.13.0"
fi
if [ "${1:-}" = "test" ]; then
    "$PY" -m pip install --quiet -e ".[test]"
    # k-diffusion is a reference implementation for tests only; its own dependencies
    # (torchvision, scikit-image, ...) are not needed for k_diffusion/sampling.py.
    "$PY" -m pip install --quiet --no-deps "k-diffusion==0.1.1.post1"
else
    "$PY" -m pip install --quiet -e .
fi
