"""GENIE: the JVP of the denoiser against closed forms and finite differences, convergence orders on the exact
Gaussian flow, wrappers (differentiable and detaching guidance), hooks, NFE/JVP counts and the step to 0."""

import math

import pytest
import torch
import torch.nn.functional as F

from samplers import SOLVERS, schedules
from samplers.analytic import GaussianDenoiser
from samplers.genie import denoiser_jvp, forward_ad_compat, genie, taylor_step, tuned_sigmas
from samplers.guidance import DPSGuidance, gaussian_nll

F64 = torch.float64


def gaussian(d: int = 8, seed: int = 0) -> GaussianDenoiser:
    """N(mu, C) with a random rotation and eigenvalues 0.01 .. 10."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=F64))
    lam = torch.logspace(-2, 1, d, dtype=F64)
    return GaussianDenoiser(torch.randn(d, generator=g, dtype=F64), q @ torch.diag(lam) @ q.T)


def start(den, n: int = 4, sigma: float = 80.0, seed: int = 1) -> torch.Tensor:
    return sigma * torch.randn(n, den.dim, generator=torch.Generator().manual_seed(seed), dtype=F64)


def slope(steps, errors) -> float:
    logn, loge = torch.tensor(steps, dtype=F64).log(), torch.tensor(errors, dtype=F64).log()
    return -(((logn - logn.mean()) * (loge - loge.mean())).sum() / ((logn - logn.mean()) ** 2).sum()).item()


# ---------------------------------------------------------------------------------------------
# the JVP


@pytest.mark.parametrize("mode", ["func", "autograd"])
def test_jvp_matches_the_closed_form_and_finite_differences(mode):
    den = gaussian()
    x, sigma = start(den, sigma=3.0), 3.0
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=F64)
    value, tangent = denoiser_jvp(den, x, sigma, v, mode)
    assert torch.allclose(value, den(x, torch.full((4,), sigma, dtype=F64)), atol=1e-12)
    # closed form: D = mu + V diag(lam / (lam + s^2)) V^T (x - mu)
    lam, vec = den.eigvals, den.eigvecs
    z, dz = (x - den.mean) @ vec, v @ vec
    exact = (dz * lam / (lam + sigma**2) - z * 2 * sigma * lam / (lam + sigma**2) ** 2) @ vec.T
    assert torch.allclose(tangent, exact, rtol=1e-10, atol=1e-12)
    delta = 1e-5  # central difference along (v, 1)
    sig = lambda s: torch.full((4,), s, dtype=F64)
    fd = (den(x + delta * v, sig(sigma + delta)) - den(x - delta * v, sig(sigma - delta))) / (2 * delta)
    assert torch.allclose(tangent, fd, rtol=1e-7, atol=1e-9)
    _, one_sided = denoiser_jvp(den, x, sigma, v, "fd")
    assert ((one_sided - exact).norm() / exact.norm()).item() < 1e-6


def test_jvp_along_the_flow_is_the_derivative_of_d_on_the_exact_trajectory():
    den = gaussian()
    x, sigma, delta = start(den, sigma=2.0), 2.0, 1e-4
    denoised = den(x, torch.full((4,), sigma, dtype=F64))
    _, d_sigma = denoiser_jvp(den, x, sigma, (x - denoised) / sigma)
    along = [den(den.ode_solution(x, sigma, s), torch.full((4,), s, dtype=F64)) for s in (sigma + delta, sigma - delta)]
    assert torch.allclose(d_sigma, (along[0] - along[1]) / (2 * delta), rtol=1e-6, atol=1e-8)


class TinyNet(torch.nn.Module):
    """Convolution, self-attention by scaled_dot_product_attention and group norm on a non-contiguous input: the
    pieces of a diffusers UNet whose forward-mode derivatives need :func:`forward_ad_compat`."""

    def __init__(self, channels: int = 2, width: int = 8) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv_in = torch.nn.Conv2d(channels + 1, width, 3, padding=1)
        self.norm = torch.nn.GroupNorm(2, width)
        self.conv_out = torch.nn.Conv2d(width, channels, 3, padding=1)

    def forward(self, x, sigma):
        s = sigma.reshape(-1, 1, 1, 1)
        c_in = 1 / torch.sqrt(1 + s**2)
        h = self.conv_in(torch.cat([c_in * x, torch.log(s).expand(-1, 1, *x.shape[2:])], 1))
        b, c, hh, ww = h.shape
        tokens = h.flatten(2).transpose(1, 2)[:, None]                       # [B, 1, L, C]
        attn = F.scaled_dot_product_attention(tokens, tokens, tokens)[:, 0]  # [B, L, C]
        h = h + attn.transpose(1, 2).reshape(b, c, hh, ww)
        h = self.norm(h.permute(0, 1, 3, 2)).permute(0, 1, 3, 2)             # non-contiguous group norm input
        return x / (1 + s**2) + s / torch.sqrt(1 + s**2) * self.conv_out(F.silu(h))


@pytest.mark.parametrize("mode", ["func", "autograd"])
def test_network_jvp_under_the_compat_context(mode):
    net = TinyNet()
    x = 5.0 * torch.randn(2, 2, 6, 6, generator=torch.Generator().manual_seed(0))
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        value, tangent = denoiser_jvp(net, x, 5.0, v, mode)
        assert torch.allclose(value, net(x, torch.full((2,), 5.0)), atol=1e-5)
        net64, delta = TinyNet().double(), 1e-6
        fd = (net64(x.double() + delta * v.double(), torch.full((2,), 5.0 + delta, dtype=F64))
              - net64(x.double() - delta * v.double(), torch.full((2,), 5.0 - delta, dtype=F64))) / (2 * delta)
    assert ((tangent.double() - fd).norm() / fd.norm()).item() < 1e-4
    with forward_ad_compat():  # values unchanged inside the context
        assert torch.allclose(net(x, torch.full((2,), 5.0)), value, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# convergence on the exact Gaussian flow (80 -> 0.002, the last jump to 0 excluded)


ORDER_CASES = [("ddim", 2, 2), ("exp", 2, 2), ("ddim", 3, 3), ("exp", 3, 3), ("ddim", 4, 4)]


@pytest.mark.parametrize("form, order, expected", ORDER_CASES)
def test_convergence_order_on_the_gaussian_flow(form, order, expected):
    den = gaussian()
    x = start(den)
    exact = den.ode_solution(x, 80.0, 0.002)
    steps, errors = (16, 32, 64), []
    for n in steps:
        seen = {}
        genie(den, x, schedules.karras(n, 0.002, 80.0), form=form, order=order,
              callback=lambda info: seen.update(x=info["x"]) if info["step"] == n - 2 else None)
        errors.append(((seen["x"] - exact).norm() / exact.norm()).item())
    assert abs(slope(steps, errors) - expected) < 0.3, f"{form} order {order}: errors {errors}"


@pytest.mark.parametrize("form", ["ddim", "exp"])
def test_the_step_to_zero_has_a_third_order_local_error(form):
    # one step sigma -> 0 from the exact trajectory: the error shrinks like sigma^3 or faster (the Gaussian
    # trajectory is even in sigma, so the ddim step gains one order there)
    den = gaussian()
    x80 = start(den)
    levels, errors = (0.02, 0.01, 0.005), []
    for s in levels:
        x = den.ode_solution(x80, 80.0, s)
        out = genie(den, x, torch.tensor([s, 0.0], dtype=F64), form=form)
        errors.append(((out - den.ode_solution(x, s, 0.0)).norm() / x.norm()).item())
    assert -slope(levels, errors) > 2.7, errors


@pytest.mark.parametrize("form", ["ddim", "exp"])
def test_one_step_to_zero_is_the_taylor_step(form):
    den = gaussian()
    x, sigma = start(den, n=3, sigma=0.05).to(torch.float32), 0.05
    out = genie(den, x, torch.tensor([sigma, 0.0]), form=form)
    denoised = den(x, torch.full((3,), sigma))
    _, d_sigma = denoiser_jvp(den, x.double(), sigma, ((x - denoised) / sigma).double())
    expected = denoised - 0.5 * sigma * d_sigma.float()
    assert out.dtype == torch.float32 and torch.allclose(out, expected, atol=1e-5)
    exact = den.ode_solution(x.double(), sigma, 0.0)
    assert (out.double() - exact).norm() < 0.25 * (denoised.double() - exact).norm()  # better than x = D
    plain = genie(den, x, torch.tensor([sigma, 0.0]), form=form, denoise_to_zero=True)
    assert torch.equal(plain, denoised)


def test_taylor_step_with_no_derivatives_is_ddim():
    x, denoised = torch.randn(2, 3, dtype=F64), torch.randn(2, 3, dtype=F64)
    ddim = 0.25 * x + 0.75 * denoised
    zero = torch.zeros_like(x)
    assert torch.allclose(taylor_step(x, denoised, [zero], 2.0, 0.5, "ddim"), ddim)
    assert torch.allclose(taylor_step(x, denoised, [zero], 2.0, 0.5, "exp"), ddim)


# ---------------------------------------------------------------------------------------------
# wrappers, hooks, counts, errors


def test_a_differentiable_wrapper_keeps_the_order():
    # classifier-free-guidance-like mixing of two exact denoisers: differentiable, the exact JVP applies
    a, b = gaussian(seed=0), gaussian(seed=3)
    mixed = lambda x, sigma: 1.2 * a(x, sigma) - 0.2 * b(x, sigma)
    x = start(a)
    fine = SOLVERS["dpmpp_3m"](mixed, x, schedules.karras(1000, 0.002, 80.0))
    steps, errors, stats = (16, 32, 64), [], {}
    for n in steps:
        out = genie(mixed, x, schedules.karras(n, 0.002, 80.0), denoise_to_zero=True, stats=stats)
        errors.append(((out - fine).norm() / fine.norm()).item())
    assert stats["jvp_mode"] == "func"
    assert abs(slope(steps, errors) - 2) < 0.3, errors


def test_detaching_guidance_is_refused_by_the_exact_jvp_and_runs_with_finite_differences():
    den = gaussian()
    observed = torch.zeros(1, 2, dtype=F64)
    guided = DPSGuidance(den, gaussian_nll(lambda x0: x0[:, :2], observed, noise_std=0.5),
                         weight=lambda s: 0.5 * s**2 / (1 + s**2))
    x = start(den, sigma=20.0)
    with pytest.raises((ValueError, RuntimeError), match="jvp='fd'"):
        genie(guided, x, schedules.karras(8, 0.01, 20.0))
    fine = SOLVERS["heun"](guided, x, schedules.karras(400, 0.01, 20.0))
    stats, errors = {}, []
    for n in (8, 16, 32):
        out = genie(guided, x, schedules.karras(n, 0.01, 20.0), jvp="fd", stats=stats)
        errors.append(((out - fine).norm() / fine.norm()).item())
    assert stats == {"nfe": 64, "steps": 32, "jvp": 0, "jvp_mode": "fd"}
    assert errors[0] / errors[2] > 2 ** (2 * 2 - 0.6), errors  # second order on the guided flow


def test_hooked_state_is_what_the_next_step_sees():
    den = gaussian()
    events = []

    def recording(x, sigma):
        events.append(("denoise", x.clone()))
        return den(x, sigma)

    def hook(x, sigma, step, denoised):
        x = x + 0.01 * (step + 1)
        events.append(("hook", x.clone()))
        return x

    x = start(den, n=3, sigma=10.0)
    final = genie(recording, x, schedules.karras(7, 0.05, 10.0), order=3, hooks=[hook], jvp="fd")
    hooked = [i for i, (kind, _) in enumerate(events) if kind == "hook"]
    assert len(hooked) == 7
    for i in hooked[:-1]:
        assert events[i + 1][0] == "denoise" and torch.equal(events[i + 1][1], events[i][1])
    assert torch.equal(final, events[hooked[-1]][1])


@pytest.mark.parametrize("options, nfe, jvp", [({}, 7, 6), ({"verify": False}, 6, 6),
                                               ({"denoise_to_zero": True}, 7, 5), ({"jvp": "fd"}, 12, 0),
                                               ({"jvp": "autograd", "order": 3}, 7, 6)])
def test_nfe_and_jvp_counts(options, nfe, jvp):
    den, calls, seen = gaussian(), [], []
    counted = lambda x, sigma: calls.append(1) or den(x, sigma)
    stats = {}
    genie(counted, start(den), schedules.karras(6, 0.01, 80.0), stats=stats, callback=lambda i: seen.append(i["nfe"]),
          **options)
    assert stats["nfe"] == nfe and stats["jvp"] == jvp and stats["steps"] == 6
    assert stats["jvp_mode"] == options.get("jvp", "func")
    assert seen[-1] == nfe and len(calls) == nfe + jvp  # every JVP evaluates the callable once more
    assert SOLVERS["genie"].fn is genie


@pytest.mark.parametrize("shape", [(3, 5), (2, 2, 3), (2, 1, 2, 2, 2)])
def test_any_rank_and_float32(shape):
    d = math.prod(shape[1:])
    den = GaussianDenoiser(torch.zeros(shape[1:], dtype=F64), torch.eye(d, dtype=F64) * 0.5)
    x = 10.0 * torch.randn(shape, generator=torch.Generator().manual_seed(0))
    out = genie(den, x, schedules.karras(10, 0.01, 10.0))
    exact = den.ode_solution(x.double(), 10.0, 0.0)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert ((out.double() - exact).norm() / exact.norm()).item() < 0.06


def test_a_callable_that_cannot_be_differentiated_gets_a_clear_error():
    den = gaussian()
    through_numpy = lambda x, sigma: torch.from_numpy(den(x, sigma).detach().numpy().copy())
    with pytest.raises(RuntimeError, match="jvp='fd'"):
        genie(through_numpy, start(den), schedules.karras(4, 0.01, 80.0))
    out = genie(through_numpy, start(den), schedules.karras(4, 0.01, 80.0), jvp="fd")
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("options, message", [({"form": "taylor"}, "form"), ({"order": 5}, "order"),
                                              ({"jvp": "forward"}, "jvp")])
def test_bad_options_are_named(options, message):
    den = gaussian()
    with pytest.raises(ValueError, match=message):
        genie(den, start(den), schedules.karras(4, 0.01, 80.0), **options)


# ---------------------------------------------------------------------------------------------
# tuned grids


def test_tuned_grid_beats_karras_and_loglinear_on_fresh_noise():
    from samplers.analytic import GaussianMixtureDenoiser
    from samplers.reference import reference
    from samplers.tuning import calibrate

    g = torch.Generator().manual_seed(0)
    den = GaussianMixtureDenoiser(torch.ones(4, dtype=F64), 1.5 * torch.randn(4, 8, generator=g, dtype=F64),
                                  torch.tensor([0.1, 0.3, 0.6, 1.0], dtype=F64))
    calibration = 80.0 * torch.randn(12, 8, generator=torch.Generator().manual_seed(1), dtype=F64)
    fresh = 80.0 * torch.randn(32, 8, generator=torch.Generator().manual_seed(2), dtype=F64)
    truth = reference(den, fresh, (80.0, 0.002 * 1e-3), rtol=1e-6, atol=1e-6)
    error = lambda grid: (genie(den, fresh, grid, jvp="fd", denoise_to_zero=True) - truth).norm(dim=1).mean().item()
    calib = calibrate(den, calibration, sigma_max=80.0, sigma_min=0.002, fine_steps=32, rtol=1e-6)
    for steps in (3, 5):
        grid = tuned_sigmas(den, calibration, steps, calibration=calib)
        assert grid.dtype == F64 and grid.numel() == steps + 1 and grid[0] == 80.0 and grid[-1] == 0
        assert all(bool((calib.candidates == s).any()) for s in grid)
        fixed = min(error(schedules.karras(steps, 0.002, 80.0)), error(schedules.loglinear(steps, 0.002, 80.0)))
        assert error(grid) < 0.8 * fixed, (steps, error(grid), fixed)
    with pytest.raises(ValueError, match="different batch"):
        tuned_sigmas(den, fresh, 3, calibration=calib)
