"""Solvers fitted to a prior: `diffpde fit-solver` saves them with it, reconstruct finds them, a missing
or foreign state is an error that says what to run."""

import shutil
from pathlib import Path

import pytest
import torch

from diffpde.cli import main
from diffpde.data.hdf5 import read_fields
from diffpde.inference import Observations, SparsePoints, reconstruct
from diffpde.inference.fitted import fitted_solver
from diffpde.models.prior import Prior


@pytest.fixture
def prior_dir(tiny_darcy, tmp_path):
    return Path(shutil.copytree(tiny_darcy[2], tmp_path / "prior"))


def observations(tiny_darcy, prior):
    fields = {k: torch.as_tensor(v) for k, v in read_fields(tiny_darcy[1], ["a", "u"], [0]).items()}
    op = SparsePoints.random("u", prior.grid_shape, 0.1, seed=0, noise_std=1e-2)
    return Observations(op, op.measure(fields, torch.Generator().manual_seed(0)))


def test_learned_solver_fitted_by_the_command_is_used_by_reconstruct(tiny_darcy, prior_dir, capsys):
    assert main(["fit-solver", str(prior_dir), "--solver", "learned", "--nfe", "3", "--n-fit", "8",
                 "--ref-steps", "16", "--iterations", "4"]) == 0
    assert (prior_dir / "solvers" / "learned-nfe3.safetensors").is_file()
    assert "learned solver, 3 steps" in capsys.readouterr().out
    prior = Prior.from_pretrained(prior_dir)
    grid, options = fitted_solver(prior, "learned", 3)
    assert torch.equal(grid, options["params"].sigmas)
    post = reconstruct(prior, observations(tiny_darcy, prior), method="covariance", solver="learned", steps=3,
                       n_samples=2, seed=0)
    assert post.diagnostics["steps"] == 3 and torch.isfinite(post.samples["u"]).all()
    with pytest.raises(FileNotFoundError, match="diffpde fit-solver .* --solver learned --nfe 5"):
        reconstruct(prior, observations(tiny_darcy, prior), method="dps", solver="learned", steps=5, n_samples=1)


def test_statistics_of_dpm_solver_v3_serve_any_step_count_and_are_tied_to_the_weights(tiny_darcy, prior_dir):
    prior = Prior.from_pretrained(prior_dir)
    with pytest.raises(FileNotFoundError, match="--solver dpm_solver_v3"):
        fitted_solver(prior, "dpm_solver_v3", 6)
    assert main(["fit-solver", str(prior_dir), "--solver", "dpm_solver_v3", "--samples", "8", "--n-grid", "8"]) == 0
    for steps in (4, 7):
        post = reconstruct(prior, observations(tiny_darcy, prior), method="dps", solver="dpm_solver_v3", steps=steps,
                           n_samples=1, seed=0)
        assert torch.isfinite(post.samples["u"]).all()
    with torch.no_grad():
        next(prior.parameters()).add_(0.01)
    with pytest.raises(ValueError, match="other weights"):
        fitted_solver(prior, "dpm_solver_v3", 6)
