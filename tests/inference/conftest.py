"""A tiny Darcy test set and a prior whose denoiser is exact for a standard normal (shared fixtures)."""

import pytest
import torch

from diffpde.data import FieldDataset, generate_dataset
from diffpde.models.prior import Prior


def standard_normal_prior(data, fields, directory):
    """An untrained tiny prior on ``data`` with the network's last convolution set to zero, so the denoiser
    is ``c_skip(sigma) * z``: the exact denoiser of a standard normal in the normalised frame; saved to
    ``directory``."""
    model = {"network": {"type": "unet2d", "block_out_channels": [8, 16], "attention_levels": [False, False],
                         "norm_num_groups": 4}, "precond": {"type": "edm"}}
    torch.manual_seed(0)
    prior = Prior.from_dataset(FieldDataset(data, tuple(fields)), model)
    with torch.no_grad():
        prior.net.unet.conv_out.weight.zero_()
        prior.net.unet.conv_out.bias.zero_()
    prior.save_pretrained(directory)
    return prior


@pytest.fixture(scope="session")
def make_standard_normal_prior():
    """:func:`standard_normal_prior`, for test modules (they do not import conftest)."""
    return standard_normal_prior


@pytest.fixture(scope="session")
def tiny_darcy(tmp_path_factory):
    """``(root, test.h5, prior dir)``: 4 Darcy instances at 16x16 and an untrained prior with the
    network's last convolution set to zero, so the denoiser is ``c_skip(sigma) * z``, the exact
    denoiser of a standard normal in the normalised frame (every guidance method runs stably)."""
    root = tmp_path_factory.mktemp("tiny_darcy")
    data = generate_dataset("darcy", 4, root / "test.h5", resolution=16, seed=0, progress=False)
    standard_normal_prior(data, ("a", "u"), root / "prior")
    return root, str(data), str(root / "prior")


@pytest.fixture(autouse=True)
def fresh_accelerate():
    """The commands create Accelerate's process-wide state; leave none behind for other tests."""
    from accelerate.state import AcceleratorState, GradientState

    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
