"""Stochastic solvers against exact Gaussian moments, k-diffusion's reference samplers and the hook contract."""

import importlib.metadata
import importlib.util
import math
import sys
import types

import pytest
import torch

import samplers
from samplers import sde  # noqa: F401  (registers the solvers even if the package does not import it)
from samplers._core import SOLVERS, randn_like
from samplers.analytic import GaussianDenoiser, GaussianMixtureDenoiser
from samplers.schedules import karras

F64 = torch.float64


def gaussian(d: int = 5, seed: int = 0) -> GaussianDenoiser:
    """N(mu, C) with a random rotation and eigenvalues from 0.1 to 3."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=F64))
    lam = torch.logspace(-1, math.log10(3), d, dtype=F64)
    return GaussianDenoiser(torch.randn(d, generator=g, dtype=F64), q @ torch.diag(lam) @ q.T)


def mixture() -> GaussianMixtureDenoiser:
    g = torch.Generator().manual_seed(1)
    return GaussianMixtureDenoiser(torch.tensor([0.3, 0.7]), torch.randn(2, 2, 3, generator=g, dtype=F64),
                                   torch.tensor([0.4, 0.9], dtype=F64))


def moment_zscores(samples: torch.Tensor, den: GaussianDenoiser) -> torch.Tensor:
    """Errors of the sample mean and covariance in units of their standard errors under the true law."""
    n = samples.shape[0]
    c = den.cov
    var = c.diag()
    z_mean = (samples.mean(0) - den.mean) / (var / n).sqrt()
    se_cov = ((torch.outer(var, var) + c**2) / n).sqrt()      # sd of a sample covariance entry
    z_cov = (torch.cov(samples.T) - c) / se_cov
    iu = torch.triu_indices(c.shape[0], c.shape[0])
    return torch.cat([z_mean, z_cov[iu[0], iu[1]]])


def sample(name, den, steps, n=4000, seed=1, **options):
    sigmas = karras(steps, 0.002, 80.0)
    g = torch.Generator().manual_seed(seed)
    x = den.sample(n, g) + sigmas[0] * torch.randn(n, den.dim, generator=g, dtype=F64)  # exact p_sigma_max
    return SOLVERS[name](den, x, sigmas, generator=g, **options)


# steps chosen so that the discretisation bias is well below the sampling error of 4000 samples
MOMENT_CASES = [
    ("euler_ancestral", 400, {}),
    ("edm", 200, {}),
    ("dpmpp_2m_sde", 100, {}),
    ("dpmpp_2m_sde", 100, {"solver_type": "heun", "eta": 0.5}),
    ("euler_maruyama", 1000, {}),
    ("pc", 50, {"predictor": "heun", "snr": 0.05}),
    ("pc", 200, {"snr": 0.05}),
]


@pytest.mark.parametrize("name, steps, options", MOMENT_CASES)
def test_sde_solvers_reproduce_gaussian_moments(name, steps, options):
    den = gaussian()
    z = moment_zscores(sample(name, den, steps, **options), den)
    assert z.abs().max() < 4.0, f"{name} {options}: worst moment error {z.abs().max():.2f} standard errors"


def test_moment_check_detects_misscaled_noise():
    # the same check fails for noise 10% too strong, so the tolerance above is not vacuous
    den = gaussian()
    z = moment_zscores(sample("dpmpp_2m_sde", den, 100, s_noise=1.1), den)
    assert z.abs().max() > 6.0


def test_euler_ancestral_with_eta_zero_is_euler():
    den = mixture()
    sigmas = karras(15, 0.01, 20.0)
    x = 20.0 * torch.randn(6, 2, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    out = SOLVERS["euler_ancestral"](den, x, sigmas, eta=0.0, generator=torch.Generator().manual_seed(1))
    ref = SOLVERS["euler"](den, x, sigmas)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


@pytest.fixture(scope="module")
def k_sampling():
    """k-diffusion's ``sampling.py`` loaded on its own, with a stub for the one helper it imports."""
    for dep in ("scipy", "torchdiffeq", "torchsde", "tqdm"):
        pytest.importorskip(dep)
    try:
        path = importlib.metadata.distribution("k-diffusion").locate_file("k_diffusion/sampling.py")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("k-diffusion is not installed")
    package, utils = types.ModuleType("_kd_ref"), types.ModuleType("_kd_ref.utils")
    package.__path__ = []
    utils.append_dims = lambda x, n: x[(...,) + (None,) * (n - x.ndim)]
    package.utils = utils
    saved = {k: sys.modules.get(k) for k in ("_kd_ref", "_kd_ref.utils")}
    sys.modules.update({"_kd_ref": package, "_kd_ref.utils": utils})
    try:
        spec = importlib.util.spec_from_file_location("_kd_ref.sampling", str(path))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return module


@pytest.mark.parametrize("name, reference, options", [
    ("euler_ancestral", "sample_euler_ancestral", {"eta": 0.7, "s_noise": 1.1}),
    ("dpmpp_2m_sde", "sample_dpmpp_2m_sde", {"eta": 0.8, "solver_type": "midpoint"}),
    ("dpmpp_2m_sde", "sample_dpmpp_2m_sde", {"eta": 1.0, "solver_type": "heun"}),
])
def test_matches_k_diffusion_with_the_same_noise(k_sampling, name, reference, options):
    den = mixture()
    sigmas = karras(12, 0.01, 20.0)
    x = 20.0 * torch.randn(5, 2, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    ours = SOLVERS[name](den, x, sigmas, generator=torch.Generator().manual_seed(3), **options)
    g = torch.Generator().manual_seed(3)
    ref = getattr(k_sampling, reference)(den, x, sigmas, noise_sampler=lambda s, t: randn_like(x, g),
                                        disable=True, **options)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)


def test_edm_matches_k_diffusion_heun_with_churn(k_sampling, monkeypatch):
    # k-diffusion draws the churn noise with torch.randn_like at every step; churn at every step keeps
    # the two noise streams aligned
    den = mixture()
    sigmas = karras(12, 0.01, 20.0)
    x = 20.0 * torch.randn(5, 2, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    ours = SOLVERS["edm"](den, x, sigmas, generator=torch.Generator().manual_seed(3), S_churn=5.0, S_min=0.0,
                          S_max=math.inf, S_noise=1.02)
    g = torch.Generator().manual_seed(3)
    monkeypatch.setattr(torch, "randn_like", lambda t: randn_like(t, g))
    ref = k_sampling.sample_heun(den, x, sigmas, s_churn=5.0, s_noise=1.02, disable=True)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)


STOCHASTIC = sorted(name for name, info in SOLVERS.items() if info.stochastic)


@pytest.mark.parametrize("name", STOCHASTIC)
def test_seeded_runs_are_reproducible_and_seeds_differ(name):
    den = mixture()
    sigmas = karras(8, 0.01, 20.0)
    x = 20.0 * torch.randn(4, 2, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float32)
    run = lambda seed: SOLVERS[name](den, x, sigmas, generator=torch.Generator().manual_seed(seed))  # noqa: E731
    a, b, c = run(5), run(5), run(6)
    assert a.dtype == x.dtype and a.shape == x.shape
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("name", STOCHASTIC)
def test_hooked_state_is_where_the_next_step_starts(name):
    den = mixture()
    sigmas = karras(6, 0.01, 20.0)
    x = 20.0 * torch.randn(3, 2, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    events = []

    def recording(x, sigma):
        events.append(("denoise", x.clone()))
        return den(x, sigma)

    def hook(x, sigma, step, denoised):
        x = x + 0.37 * (step + 1)      # a state no solver would produce by itself
        events.append(("hook", x.clone()))
        return x

    options = {"S_churn": 0.0} if name == "edm" else {}  # EDM's churn perturbs the state before its first call
    out = SOLVERS[name](recording, x, sigmas, hooks=[hook], generator=torch.Generator().manual_seed(1), **options)
    hooked = [i for i, (kind, _) in enumerate(events) if kind == "hook"]
    assert len(hooked) == len(sigmas) - 1
    for i in hooked[:-1]:
        assert events[i + 1][0] == "denoise"
        assert torch.equal(events[i + 1][1], events[i][1])
    assert torch.equal(out, events[hooked[-1]][1])


@pytest.mark.parametrize("name, options, expected", [
    ("euler_ancestral", {}, lambda n: n),
    ("edm", {}, lambda n: 2 * n - 1),
    ("dpmpp_2m_sde", {}, lambda n: n),
    ("euler_maruyama", {}, lambda n: n),
    ("pc", {}, lambda n: 2 * n - 1),
    ("pc", {"predictor": "heun", "corrector_steps": 2}, lambda n: 4 * n - 3),
])
def test_nfe_is_reported(name, options, expected):
    den, stats = gaussian(), {}
    sample(name, den, 7, n=3, stats=stats, **options)
    assert stats == {"nfe": expected(7), "steps": 7}


def test_bad_options_are_named():
    den = gaussian()
    with pytest.raises(ValueError, match="single-step"):
        sample("pc", den, 4, n=2, predictor="dpmpp_2m")
    with pytest.raises(ValueError, match="solver_type"):
        sample("dpmpp_2m_sde", den, 4, n=2, solver_type="rk4")


def test_registered_in_the_package():
    assert {"euler_ancestral", "edm", "dpmpp_2m_sde", "euler_maruyama", "pc"} <= set(samplers.SOLVERS)


@pytest.mark.parametrize("name, options", [
    ("dpmpp_2m_sde", {"eta": -1.0}), ("euler_ancestral", {"eta": -0.5}), ("euler_ancestral", {"s_noise": -1.0}),
    ("dpmpp_2m_sde", {"s_noise": float("nan")}), ("edm", {"S_churn": -1.0}),
])
def test_negative_noise_amounts_are_named(name, options):
    """A negative eta used to fail deep inside as "math domain error" (or silently run deterministic)."""
    key, value = next(iter(options.items()))
    with pytest.raises(ValueError, match=f"{key} must be a finite number >= 0, got {value}"):
        SOLVERS[name](lambda x, s: 0 * x, torch.randn(2, 3), samplers.schedules.karras(4, 0.1, 10.0), **options)
