"""The ``ensemble`` method (the approximation-free ensemble sampler) through ``reconstruct``, the
evaluation layer and scripts/bench_inverse.py."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from diffpde.inference import CallableObservation, GaussianPrior, Observations, SparsePoints, reconstruct
from diffpde.inference.methods import get_method

F64 = torch.float64
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def problem():
    prior = GaussianPrior.from_grf(8, alpha=2.0, tau=3.0, boundary="neumann")
    op = SparsePoints.random("u", (8, 8), count=6, seed=0, noise_std=0.1 * prior.scale)
    g = torch.Generator().manual_seed(5)
    truth = prior.sample(4, g)
    return prior, op, truth, Observations(op, op.measure(truth, g))


def test_the_method_is_registered_and_samples_toward_the_exact_posterior(problem):
    prior, op, truth, obs = problem
    assert get_method("ensemble").__name__ == "ensemble"
    mean, cov = prior.exact_posterior(op, obs.values)
    sd = cov.diagonal().sqrt()
    prior_mean = prior.sample(256, torch.Generator().manual_seed(0))["u"].flatten(1).mean(0)
    prior_err = ((prior_mean - mean) / sd).pow(2).mean().sqrt()
    errors = {}
    for k in (4, 128):
        post = reconstruct(prior, obs, method="ensemble", steps=30, n_samples=k, dtype=F64)
        s = post.samples["u"].reshape(4, k, -1)
        assert torch.isfinite(s).all()
        errors[k] = float(((s.mean(1) - mean) / sd).pow(2).mean().sqrt())
        d = post.diagnostics
        assert d["nfe"] == 30 and d["vjp"] == 0 and d["likelihood_grads"] == 30
        assert d["ess"].shape == (31, 4) and d["log_evidence"].shape == (4,)
    # the posterior mean error, in posterior sds, falls with K and is far below the prior's
    # (measured 1.25 at K = 4, 0.55 at K = 128; the prior mean is 3.4 sds away)
    assert errors[128] < errors[4] and errors[128] < min(0.8, 0.25 * float(prior_err))
    # the data are fit at the noise level (chi-squared per measurement of the posterior mean)
    assert post.diagnostics["misfit"].max() < 3


def test_the_ode_variant_counts_its_corrector_evaluations(problem):
    prior, op, truth, obs = problem
    post = reconstruct(prior, obs, method="ensemble", steps=10, n_samples=8, dtype=F64,
                       method_options={"variant": "ode", "corrector_steps": 2})
    assert post.diagnostics["nfe"] == 10 + 2 * 9
    assert torch.isfinite(post.samples["u"]).all()


def test_the_method_refuses_what_it_cannot_use(problem):
    prior, op, truth, obs = problem
    box = CallableObservation(lambda f: f["u"].flatten(1)[:, :3], ("u",), 3)
    with pytest.raises(TypeError, match="differentiable"):
        reconstruct(prior, Observations(box, torch.ones(1, 3)), method="ensemble")
    with pytest.raises(ValueError, match="ensemble method runs its own particle sampler"):
        reconstruct(prior, obs, method="ensemble", steps=3, n_samples=2, solver_options={"eta": 0.5},
                    solver="dpmpp_2m_sde")
    for options, message in [({"path": "exact"}, "path must be"), ({"gamma": -1.0}, "gamma must be"),
                             ({"variant": "pf"}, "variant must be"), ({"corrector_step": "big"}, "must be a number")]:
        with pytest.raises(ValueError, match=message):
            reconstruct(prior, obs, method="ensemble", steps=3, n_samples=2, method_options=options)


def test_a_nonlinear_decoded_likelihood_gets_hutchinson_probes(problem):
    # a nonlinear operator: the sde's Feynman-Kac weights estimate the Laplacian (one probe by default)
    prior, op, truth, obs = problem
    square = CallableObservation(lambda f: f["u"].flatten(1)[:, :3] ** 2, ("u",), 3, differentiable=True,
                                 noise_std=0.05)
    y = Observations(square, square(truth))
    post = reconstruct(prior, y, method="ensemble", steps=12, n_samples=8, dtype=F64)
    assert post.diagnostics["likelihood_grads"] == 12 and torch.isfinite(post.samples["u"]).all()


def test_bench_inverse_runs_the_ensemble_on_a_trained_prior(tiny_darcy, tmp_path):
    _, data, prior = tiny_darcy
    spec = importlib.util.spec_from_file_location("bench_inverse", ROOT / "scripts" / "bench_inverse.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    argv = ["--prior", prior, "--data", data, "--tasks", "inverse", "--n-test", "2", "--nfe", "5", "--samples", "2",
            "--no-baseline", "--methods", "ensemble,ensemble:variant=ode", "--json", str(out)]
    assert bench.main(argv) == 0
    rows = json.loads(out.read_text())["tables"]["inverse"]["all"]
    # the ode variant spends two evaluations per step but the last: 3 steps for a budget of 5
    assert [r["nfe"] for r in rows] == [5, 5] and [r["vjp"] for r in rows] == [0, 0]
    for r in rows:
        assert 0 < r["rel_l2"] < 10 and 0 <= r["cov90"] <= 1
