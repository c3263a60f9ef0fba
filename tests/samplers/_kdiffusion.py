"""Load k-diffusion's ``sampling.py`` alone, as a test reference.

k-diffusion's package ``__init__`` imports torchvision and more, which are not installable here; its
sampling module needs only torch, scipy, torchdiffeq, torchsde, tqdm and ``utils.append_dims``. The
module is loaded under a private package name with a stub ``utils`` so the real ``k_diffusion`` name
is never half-imported.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest

from samplers._core import append_dims

_PACKAGE = "_kdiffusion_reference"


def load_sampling():
    """Return k-diffusion's sampling module, or skip the calling test if k-diffusion is not installed."""
    if f"{_PACKAGE}.sampling" in sys.modules:
        return sys.modules[f"{_PACKAGE}.sampling"]
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("k-diffusion is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "sampling.py"
    for dependency in ("torchdiffeq", "torchsde", "tqdm", "scipy"):
        pytest.importorskip(dependency)
    package = types.ModuleType(_PACKAGE)
    package.__path__ = []
    utils = types.ModuleType(f"{_PACKAGE}.utils")
    utils.append_dims = append_dims
    package.utils = utils
    sys.modules[_PACKAGE], sys.modules[f"{_PACKAGE}.utils"] = package, utils
    module_spec = importlib.util.spec_from_file_location(f"{_PACKAGE}.sampling", path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_spec.name] = module
    module_spec.loader.exec_module(module)
    return module
