"""Guidance wrappers and step-end hooks: gradients against finite differences, one backward pass per call,
a linear-Gaussian posterior, inpainting and callbacks with real solvers."""

import math

import pytest
import torch

from samplers import guidance  # noqa: F401
from samplers._core import SOLVERS
from samplers.analytic import GaussianDenoiser, GaussianMixtureDenoiser
from samplers.guidance import DPSGuidance, gaussian_nll, inpaint, posterior_weight, project, residual_norm
from samplers.schedules import karras

F64 = torch.float64


def mixture() -> GaussianMixtureDenoiser:
    g = torch.Generator().manual_seed(1)
    return GaussianMixtureDenoiser(torch.tensor([0.3, 0.7]), torch.randn(2, 2, 3, generator=g, dtype=F64),
                                   torch.tensor([0.4, 0.9], dtype=F64))


def linear_gaussian(d=6, rows=(0, 2, 4), noise_std=0.3, seed=0):
    """Prior N(mu, C), y = A x0 + noise with A selecting ``rows``; returns the closed-form posterior too."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=F64))
    cov = q @ torch.diag(torch.logspace(-0.5, 0.5, d, dtype=F64)) @ q.T
    den = GaussianDenoiser(torch.randn(d, generator=g, dtype=F64), cov)
    a = torch.eye(d, dtype=F64)[list(rows)]
    y = a @ den.sample(1, g)[0] + noise_std * torch.randn(len(rows), generator=g, dtype=F64)
    post_cov = torch.linalg.inv(torch.linalg.inv(cov) + a.T @ a / noise_std**2)
    post_mean = post_cov @ (torch.linalg.solve(cov, den.mean) + a.T @ y / noise_std**2)
    return den, a, y, post_mean, post_cov


def test_guidance_gradient_matches_finite_differences():
    den = mixture()
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4, 6, generator=g, dtype=F64)
    y = torch.randn(4, generator=g, dtype=F64)
    terms = {"fit": (gaussian_nll(lambda x0: x0.flatten(1) @ a.T, y, noise_std=0.5), 2.0),
             "smooth": lambda x0: torch.sin(3 * x0).pow(2).flatten(1).sum(1)}
    x = 1.5 * torch.randn(3, 2, 3, generator=g, dtype=F64)
    sigma = torch.full((3,), 0.8, dtype=F64)

    def total(x):  # the loss as a function of the noisy state, through the denoiser
        x0 = den(x, sigma)
        return 2.0 * terms["fit"][0](x0) + terms["smooth"](x0)

    for normalize in (False, True):
        guided = DPSGuidance(den, terms, weight=posterior_weight(0.7), normalize=normalize)
        out = guided(x, sigma)
        grad = (den(x, sigma) - out) / (0.7 * 0.8**2)
        h = 1e-6
        for b, i, j in [(0, 0, 0), (1, 1, 2), (2, 0, 1), (2, 1, 0)]:
            e = torch.zeros_like(x)
            e[b, i, j] = h
            fd = (total(x + e) - total(x - e))[b] / (2 * h)
            if normalize:
                fd = fd / (2 * total(x)[b].sqrt())
            assert grad[b, i, j].item() == pytest.approx(fd.item(), rel=1e-6, abs=1e-8)


def test_one_backward_pass_per_call_whatever_the_number_of_terms():
    den = mixture()
    backward_passes = []

    def counted(x, sigma):
        out = den(x, sigma)
        if out.requires_grad:
            out.register_hook(lambda grad: backward_passes.append(1))
        return out

    terms = [lambda x0: x0.pow(2).flatten(1).sum(1), (lambda x0: x0.flatten(1)[:, 0], 3.0),
             lambda x0: x0.cos().flatten(1).sum(1)]
    guided = DPSGuidance(counted, terms, weight=0.5)
    x = torch.randn(4, 2, 3, dtype=F64)
    sigmas = karras(5, 0.05, 10.0)
    SOLVERS["heun"](guided, x, sigmas)
    assert guided.calls == 9 and guided.vjp_count == 9 and len(backward_passes) == 9
    assert set(guided.last_losses) == {"term0", "term1", "term2"}
    # the summed terms give the same correction as one loss holding the weighted sum
    weighted = [(terms[0], 1.0), (terms[1][0], 3.0), (terms[2], 1.0)]
    single = DPSGuidance(den, lambda x0: sum(w * f(x0) for f, w in weighted), weight=0.5)
    s = torch.full((4,), 0.7, dtype=F64)
    torch.testing.assert_close(guided(x, s), single(x, s), rtol=1e-12, atol=1e-12)


def test_guidance_runs_under_no_grad_and_returns_no_graph():
    den = mixture()
    guided = DPSGuidance(den, lambda x0: x0.pow(2).flatten(1).sum(1), weight=1.0)
    with torch.no_grad():
        out = guided(torch.randn(2, 2, 3, dtype=F64), torch.full((2,), 1.0, dtype=F64))
    assert not out.requires_grad
    with pytest.raises(ValueError, match="one value per sample"):
        DPSGuidance(den, lambda x0: x0.sum())(torch.randn(2, 2, 3, dtype=F64), torch.ones(2, dtype=F64))


def test_residual_norm_is_the_normalized_gaussian_loss():
    den, a, y, _, _ = linear_gaussian()
    x = 2.0 * torch.randn(5, 6, dtype=F64)
    s = torch.full((5,), 1.3, dtype=F64)
    forward = lambda x0: x0 @ a.T  # noqa: E731
    dps_norm = DPSGuidance(den, residual_norm(forward, y), weight=1.0)
    normalized = DPSGuidance(den, gaussian_nll(forward, y, noise_std=0.3), weight=math.sqrt(2) * 0.3, normalize=True)
    torch.testing.assert_close(dps_norm(x, s), normalized(x, s), rtol=1e-10, atol=1e-12)


def test_dps_guidance_moves_samples_to_the_linear_gaussian_posterior():
    den, a, y, post_mean, post_cov = linear_gaussian()
    sigmas = karras(50, 0.01, 20.0)
    g = torch.Generator().manual_seed(1)
    n = 2000
    x = den.sample(n, g) + sigmas[0] * torch.randn(n, 6, generator=g, dtype=F64)
    guided = DPSGuidance(den, gaussian_nll(lambda x0: x0 @ a.T, y, noise_std=0.3), weight=posterior_weight())
    prior = SOLVERS["euler_ancestral"](den, x, sigmas, generator=torch.Generator().manual_seed(2))
    posterior = SOLVERS["euler_ancestral"](guided, x, sigmas, generator=torch.Generator().manual_seed(2))
    sd = post_cov.diag().sqrt()
    err_prior = ((prior.mean(0) - post_mean) / sd).norm()
    err_guided = ((posterior.mean(0) - post_mean) / sd).norm()
    assert err_guided < 0.1 * err_prior          # measured: 0.98 vs 20.3 posterior standard deviations
    observed = [0, 2, 4]
    assert (posterior.var(0)[observed] < 0.6 * den.cov.diag()[observed]).all()


@pytest.mark.parametrize("name", ["euler_ancestral", "edm", "heun", "dpmpp_2m"])
def test_inpaint_hook_ends_exactly_on_the_observations(name):
    den = mixture()
    sigmas = karras(10, 0.01, 20.0)
    g = torch.Generator().manual_seed(0)
    x = 20.0 * torch.randn(64, 2, 3, generator=g, dtype=F64)
    mask = torch.tensor([[True, False, True], [False, False, True]])
    observed = torch.randn(2, 3, generator=g, dtype=F64)
    residuals = []

    def callback(info):
        if info["sigma_next"] > 0:
            residuals.append(((info["x"] - observed)[:, mask] / info["sigma_next"]).flatten())

    out = SOLVERS[name](den, x, sigmas, hooks=inpaint(mask, observed, torch.Generator().manual_seed(3)),
                        callback=callback, generator=torch.Generator().manual_seed(4))
    assert torch.equal(out[:, mask], observed[mask].expand(64, -1))
    assert not torch.equal(out[:, ~mask], x[:, ~mask])
    # before the end the observed entries carry noise of exactly the state's level sigma
    z = torch.cat(residuals)
    assert abs(z.mean()) < 4 / math.sqrt(z.numel()) and abs(z.std() - 1) < 4 / math.sqrt(2 * z.numel())


def test_inpaint_names_a_shape_mismatch():
    hook = inpaint(torch.ones(4, dtype=torch.bool), torch.zeros(4))
    with pytest.raises(ValueError, match="inpaint"):
        hook(torch.zeros(2, 3), 1.0, 0, torch.zeros(2, 3))


def test_project_hook_constrains_every_step():
    den = mixture()
    seen = []
    hook = project(lambda x, sigma: x.clamp(-1 - sigma, 1 + sigma))
    out = SOLVERS["euler_ancestral"](den, 20.0 * torch.randn(8, 2, 3, dtype=F64), karras(6, 0.01, 20.0),
                                     hooks=[hook], callback=lambda info: seen.append(info))
    assert out.abs().max() <= 1.0
    assert all(info["x"].abs().max() <= 1 + info["sigma_next"] for info in seen)


def test_callback_sees_step_sigma_state_and_denoised():
    den = mixture()
    sigmas = karras(7, 0.01, 20.0)
    x = 20.0 * torch.randn(5, 2, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    infos = []
    out = SOLVERS["euler_ancestral"](den, x, sigmas, callback=infos.append, generator=torch.Generator().manual_seed(1))
    assert [info["step"] for info in infos] == list(range(7))
    assert [info["nfe"] for info in infos] == list(range(1, 8))
    state = x
    for info in infos:
        i = info["step"]
        assert info["sigma"] == sigmas[i].item() and info["sigma_next"] == sigmas[i + 1].item()
        # the denoised output the step used is D at the state the step started from
        torch.testing.assert_close(info["denoised"], den(state, torch.full((5,), info["sigma"], dtype=F64)))
        state = info["x"]
    assert torch.equal(infos[-1]["x"], out) and torch.equal(out, infos[-1]["denoised"])


def _heun_step_map(den, x, sigma, sigma_next):
    """The last denoiser output of one Heun step from ``x``: D(x_euler, sigma_next), or D(x, sigma) to 0."""
    b = x.shape[0]
    d = den(x, torch.full((b,), sigma, dtype=F64))
    if sigma_next == 0:
        return d
    x_euler = x + (sigma_next - sigma) * (x - d) / sigma
    return den(x_euler, torch.full((b,), sigma_next, dtype=F64))


@pytest.mark.parametrize("active_step", [0, 1])
def test_heun_step_guidance_corrects_by_the_gradient_through_the_whole_step(active_step):
    """x_next <- x_next - grad_x L(D_last(x)), differentiated through the Euler predictor (finite differences)."""
    from samplers.guidance import HeunStepGuidance

    den = mixture()
    sigmas = torch.tensor([1.2, 0.5, 0.0], dtype=F64)
    g = torch.Generator().manual_seed(0)
    x = 1.2 * torch.randn(3, 2, 3, generator=g, dtype=F64)
    target = torch.randn(2, 3, generator=g, dtype=F64)

    def loss_of(d):
        return (torch.sin(2 * d) - target).pow(2).flatten(1).sum(1)

    seen = []
    guided = HeunStepGuidance(den, lambda d, step, sigma_next: (seen.append((step, sigma_next)),
                                                                loss_of(d) if step == active_step else None)[1],
                              sigmas)
    states = {}
    out = SOLVERS["heun"](guided.denoiser, x, sigmas, hooks=[guided.hook],
                          callback=lambda info: states.setdefault("guided", []).append(info["x"]))
    plain = []
    SOLVERS["heun"](den, x, sigmas, callback=lambda info: plain.append(info["x"]))
    assert seen == [(0, 0.5), (1, 0.0)] and guided.vjp_count == 1 and guided.calls == []
    start = x if active_step == 0 else plain[0]
    correction = plain[active_step] - states["guided"][active_step]
    sigma, sigma_next = sigmas[active_step].item(), sigmas[active_step + 1].item()
    h = 1e-6
    for b, i, j in [(0, 0, 0), (1, 1, 2), (2, 0, 1)]:
        e = torch.zeros_like(start)
        e[b, i, j] = h
        fd = (loss_of(_heun_step_map(den, start + e, sigma, sigma_next))
              - loss_of(_heun_step_map(den, start - e, sigma, sigma_next)))[b] / (2 * h)
        assert correction[b, i, j].item() == pytest.approx(fd.item(), rel=1e-6, abs=1e-9)
    # only the corrected step differs from plain Heun
    if active_step == 1:
        assert torch.equal(states["guided"][0], plain[0])
    assert torch.equal(out, states["guided"][-1])


def test_heun_step_guidance_refuses_other_solvers():
    from samplers.guidance import HeunStepGuidance

    den = mixture()
    sigmas = karras(4, 0.05, 5.0)
    guided = HeunStepGuidance(den, lambda d, step, sigma_next: d.flatten(1).sum(1), sigmas)
    with pytest.raises(RuntimeError, match="heun solver only: step 0 made 1 denoiser call"):
        SOLVERS["euler"](guided.denoiser, torch.randn(2, 2, 3, dtype=F64), sigmas, hooks=[guided.hook])


def test_inpaint_decoded_with_the_identity_is_inpaint_draw_for_draw():
    from samplers.guidance import inpaint_decoded

    den = mixture()
    sigmas = karras(8, 0.01, 20.0)
    x = 20.0 * torch.randn(16, 2, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    mask = torch.tensor([[True, False, True], [False, False, True]])
    observed = torch.randn(2, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    ident = lambda v: v  # noqa: E731
    runs = [SOLVERS["euler_ancestral"](den, x, sigmas, hooks=[hook], generator=torch.Generator().manual_seed(4))
            for hook in (inpaint(mask, observed, torch.Generator().manual_seed(3)),
                         inpaint_decoded(mask, observed, ident, ident, torch.Generator().manual_seed(3)))]
    assert torch.allclose(runs[0], runs[1], rtol=0, atol=1e-12)


def test_inpaint_decoded_sets_decoded_values_through_an_affine_code():
    """A scaled orthogonal transform plus padding: decoded observed values end exact, noise law kept."""
    from samplers.guidance import inpaint_decoded

    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=F64))
    scale = torch.linspace(0.5, 2.0, 6, dtype=F64)
    shift = torch.randn(6, generator=g, dtype=F64)

    def encode(v):                       # [B, 6] -> [B, 8] (two padding entries, always 0)
        z = (v @ q) / scale - shift
        return torch.cat([z, torch.zeros(v.shape[0], 2, dtype=v.dtype)], 1)

    def decode(z):
        return ((z[:, :6] + shift) * scale) @ q.T

    mask = torch.tensor([True, False, True, False, False, True])
    observed = torch.randn(6, generator=g, dtype=F64)
    hook = inpaint_decoded(mask, observed, encode, decode, torch.Generator().manual_seed(1))
    z = torch.randn(20000, 8, generator=g, dtype=F64)
    out = hook(z, 0.0, 0, z)
    assert torch.allclose(decode(out)[:, mask], observed[mask].expand(20000, -1), atol=1e-12)
    assert torch.allclose(decode(out)[:, ~mask], decode(z)[:, ~mask], atol=1e-12)
    assert torch.equal(out[:, 6:], z[:, 6:])                    # padding keeps its own noise
    sigma = 3.0
    noisy = hook(z, sigma, 0, z)
    # the observed decoded values carry the state's own noise law: decode(z + sigma eps) - decode(z)
    resid = decode(noisy)[:, mask] - observed[mask]
    law = (((sigma * torch.eye(6, dtype=F64)) * scale) @ q.T)[:, mask]     # rows: unit directions of eps
    cov = law.T @ law
    assert torch.allclose(torch.cov(resid.T), cov, rtol=0.06, atol=0.06 * cov.diagonal().max())
