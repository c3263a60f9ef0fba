"""Classifier-free guidance: exact at scales 0 and 1, one batched call, every solver, and composed with
observation guidance (covariance, DPS, TDS) against closed forms.

Truth: for two Gaussians of one covariance ``C`` and means ``m_c``, ``m_u``, the denoisers are
``m + K (x - m)`` with ``K = C (C + s^2 I)^-1``, linear in the mean, so the guided denoiser
``D_u + w (D_c - D_u)`` is exactly the Gaussian denoiser of the mean ``m_u + w (m_c - m_u)``.
"""

import pytest
import torch

import samplers
from samplers.analytic import GaussianDenoiser
from samplers.cfg import ClassifierFreeGuidance, switch
from samplers.covariance import CovarianceGuidance
from samplers.guidance import DPSGuidance, gaussian_nll
from samplers.smc import tds

D = 5


def gaussians(seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(D, D, generator=g, dtype=torch.float64)
    cov = a @ a.T / D + 0.2 * torch.eye(D, dtype=torch.float64)
    m_c, m_u = torch.randn(2, D, generator=g, dtype=torch.float64)
    return GaussianDenoiser(m_c, cov), GaussianDenoiser(m_u, cov), m_c, m_u, cov


def guided(w, batched=True, seed=0):
    cond, uncond, m_c, m_u, cov = gaussians(seed)
    return ClassifierFreeGuidance(switch(cond, uncond), w, batched=batched), GaussianDenoiser(m_u + w * (m_c - m_u), cov)


def state(b=4, sigma=1.5, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, D, generator=g, dtype=torch.float64) * (1 + sigma), torch.full((b,), sigma, dtype=torch.float64)


def test_scale_0_and_1_are_the_unconditional_and_conditional_denoisers_bit_for_bit():
    cond, uncond, *_ = gaussians()
    x, s = state()
    for w, want in ((0.0, uncond), (1.0, cond)):
        cfg = ClassifierFreeGuidance(switch(cond, uncond), w)
        assert torch.equal(cfg(x, s), want(x, s)) and cfg.network_calls == 1
    # per-sample scales of 0 and 1 in one batched call: torch.lerp is exact at both ends
    cfg = ClassifierFreeGuidance(switch(cond, uncond), torch.tensor([0.0, 1.0, 1.0, 0.0]))
    got, c, u = cfg(x, s), cond(x, s), uncond(x, s)
    assert torch.equal(got[[1, 2]], c[[1, 2]]) and torch.equal(got[[0, 3]], u[[0, 3]]) and cfg.network_calls == 1


@pytest.mark.parametrize("w", [-0.5, 0.3, 2.0, 7.5])
def test_guided_gaussians_are_the_gaussian_of_the_mixed_mean(w):
    x, s = state()
    cfg, truth = guided(w)
    torch.testing.assert_close(cfg(x, s), truth(x, s), rtol=1e-12, atol=1e-12)
    assert cfg.network_calls == 1          # both branches in one call on the doubled batch
    two = guided(w, batched=False)[0]
    torch.testing.assert_close(two(x, s), truth(x, s), rtol=1e-12, atol=1e-12)
    assert two.network_calls == 2


def test_the_batched_call_doubles_the_batch_with_the_second_half_unconditional():
    seen = []

    def switched(x, sigma, conditional):
        seen.append((x.shape[0], sigma.shape[0], conditional.tolist()))
        return x * torch.where(conditional, 2.0, 1.0).reshape(-1, 1)

    x = torch.ones(3, 2)
    out = ClassifierFreeGuidance(switched, 3.0)(x, torch.tensor(0.5))
    assert seen == [(6, 6, [True] * 3 + [False] * 3)]
    torch.testing.assert_close(out, torch.full((3, 2), 1 + 3.0 * (2 - 1)))


def test_scale_may_depend_on_sigma():
    cond, uncond, m_c, m_u, cov = gaussians()
    cfg = ClassifierFreeGuidance(switch(cond, uncond), lambda sigma: torch.where(sigma > 1, 0.0, 3.0))
    for sigma, w in ((2.0, 0.0), (0.5, 3.0)):
        x, s = state(sigma=sigma)
        torch.testing.assert_close(cfg(x, s), GaussianDenoiser(m_u + w * (m_c - m_u), cov)(x, s), rtol=1e-12, atol=1e-12)


def test_bad_scales_are_refused():
    cond, uncond, *_ = gaussians()
    with pytest.raises(ValueError, match="finite"):
        ClassifierFreeGuidance(switch(cond, uncond), float("nan"))
    x, s = state()
    with pytest.raises(ValueError, match="one value per sample"):
        ClassifierFreeGuidance(switch(cond, uncond), torch.ones(3))(x, s)


FITTED = {"dpm_solver_v3", "learned"}   # take statistics or weights fitted to one denoiser (see their tests)


@pytest.mark.parametrize("solver", sorted(set(samplers.SOLVERS) - FITTED))
def test_every_solver_samples_the_guided_gaussian(solver):
    cfg, truth = guided(2.5)
    x0 = torch.randn(3, D, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 20
    sigmas = samplers.schedules.get_schedule("karras", 6, sigma_min=0.01, sigma_max=20.0)
    got = samplers.sample(cfg, x0, sigmas, solver=solver, generator=torch.Generator().manual_seed(3))
    want = samplers.sample(truth, x0, sigmas, solver=solver, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def _posterior_denoiser(mean, cov, A, noise, x, sigma, y):
    """E[x0 | x, y] for x0 ~ N(mean, cov), x = x0 + sigma e, y = A x0 + noise n (closed form)."""
    H = torch.cat([torch.eye(D, dtype=torch.float64), A])
    R = torch.block_diag(sigma**2 * torch.eye(D, dtype=torch.float64), noise**2 * torch.eye(A.shape[0], dtype=torch.float64))
    gain = cov @ H.T @ torch.linalg.inv(H @ cov @ H.T + R)
    return mean + (torch.cat([x, y.expand(x.shape[0], -1)], 1) - H @ mean) @ gain.T


@pytest.mark.parametrize("sigma", [0.05, 1.0, 20.0])
def test_cfg_composes_with_covariance_guidance_into_the_exact_posterior(sigma):
    w, noise = 3.0, 0.2
    cfg, truth = guided(w)
    A = torch.randn(3, D, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    y = torch.randn(1, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    x, s = state(sigma=sigma)
    posterior = CovarianceGuidance(cfg, lambda x0: x0 @ A.T, y, noise**2, cg_iters=3, cg_tol=0)
    want = _posterior_denoiser(truth.mean, truth.cov, A, noise, x, sigma, y)
    torch.testing.assert_close(posterior(x, s), want, rtol=1e-8, atol=1e-8)
    # and a whole guided sampling run: CFG inside covariance guidance inside a solver
    x_T = torch.randn(2, D, generator=torch.Generator().manual_seed(6), dtype=torch.float64) * 20
    sigmas = samplers.schedules.get_schedule("karras", 8, sigma_min=0.01, sigma_max=20.0)
    got = samplers.sample(posterior, x_T, sigmas, solver="heun")
    ref = samplers.sample(CovarianceGuidance(truth, lambda x0: x0 @ A.T, y, noise**2, cg_iters=3, cg_tol=0), x_T, sigmas,
                          solver="heun")
    torch.testing.assert_close(got, ref, rtol=1e-7, atol=1e-7)


def test_cfg_composes_with_dps_and_tds():
    cfg, truth = guided(1.7)
    A = torch.randn(2, D, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    y = torch.randn(2, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    loss = gaussian_nll(lambda x0: x0 @ A.T, y, 0.3)
    x, s = state(sigma=0.7)
    torch.testing.assert_close(DPSGuidance(cfg, loss, weight=0.49)(x, s), DPSGuidance(truth, loss, weight=0.49)(x, s),
                               rtol=1e-10, atol=1e-10)
    sigmas = samplers.schedules.get_schedule("karras", 5, sigma_min=0.02, sigma_max=10.0)
    particles = torch.randn(1, 6, D, generator=torch.Generator().manual_seed(9), dtype=torch.float64) * 10
    log_lik = lambda x0: -((x0 @ A.T - y) ** 2).sum(-1) / (2 * 0.3**2)  # noqa: E731
    got = tds(cfg, log_lik, particles, sigmas, generator=torch.Generator().manual_seed(10))
    want = tds(truth, log_lik, particles, sigmas, generator=torch.Generator().manual_seed(10))
    torch.testing.assert_close(got.particles, want.particles, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(got.log_weights, want.log_weights, rtol=1e-9, atol=1e-9)


def test_switch_calls_each_denoiser_on_its_part_only():
    calls = []

    def tagged(tag):
        def denoise(x, sigma):
            calls.append((tag, x.shape[0]))
            return x + (1.0 if tag == "c" else -1.0)
        return denoise

    x = torch.zeros(4, 2, requires_grad=True)
    out = switch(tagged("c"), tagged("u"))(x, torch.ones(4), torch.tensor([True, False, True, False]))
    assert calls == [("c", 2), ("u", 2)]
    torch.testing.assert_close(out[:, 0], torch.tensor([1.0, -1.0, 1.0, -1.0]))
    out.sum().backward()
    torch.testing.assert_close(x.grad, torch.ones(4, 2))
