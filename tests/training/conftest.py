import pytest


@pytest.fixture(scope="module")
def darcy_file(tmp_path_factory):
    """A complete 16-sample Darcy 16x16 dataset, generated once per test module."""
    from diffpde.data import generate_dataset

    out = tmp_path_factory.mktemp("data") / "darcy16.h5"
    return generate_dataset("darcy", 16, out, resolution=16, seed=0, progress=False)


@pytest.fixture(autouse=True)
def fresh_accelerate():
    """A fresh Accelerate state for every test (it is a process-wide singleton)."""
    from accelerate.state import AcceleratorState, GradientState

    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
