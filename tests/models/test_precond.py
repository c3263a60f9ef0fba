"""Preconditioning against the formulas of Karras et al. (2022) and exact Gaussian denoisers."""

import json
import math

import pytest
import torch
from torch import nn

from diffpde.models import EDMPrecond, FlowPrecond, UNet2D, VEPrecond, VPPrecond, build, measure_sigma_data
from samplers.analytic import GaussianDenoiser

SHAPE = (2, 3, 4)  # [C, H, W] of one sample; d = 24


def gaussian(seed=0, scale=0.7):
    g = torch.Generator().manual_seed(seed)
    d = math.prod(SHAPE)
    a = torch.randn(d, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    cov = scale**2 * (a @ a.T + 0.05 * torch.eye(d, dtype=torch.float64))
    mean = 0.3 * torch.randn(SHAPE, generator=g, dtype=torch.float64)
    return GaussianDenoiser(mean, cov)


class Recorder(nn.Module):
    """A network that hands its inputs to ``fn(x_in, c_noise)`` and records them."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn
        self.calls = []

    def forward(self, x, c_noise, cond=None, params=None):
        self.calls.append((x, c_noise, cond, params))
        return self.fn(x, c_noise)


def zero_net():
    return Recorder(lambda x, c: torch.zeros_like(x))


def noisy_batch(b=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    sigma = torch.exp(torch.linspace(math.log(0.01), math.log(50.0), b))
    x = torch.randn(b, *SHAPE, generator=g) * (1 + sigma.reshape(-1, 1, 1, 1))
    return x, sigma


def test_zero_network_gives_c_skip_times_x():
    x, sigma = noisy_batch()
    s = sigma.double().reshape(-1, 1, 1, 1)
    sd = 0.6
    expected = {
        "edm": (EDMPrecond(zero_net(), sigma_data=sd), sd**2 / (s**2 + sd**2)),
        "vp": (VPPrecond(zero_net()), torch.ones_like(s)),
        "ve": (VEPrecond(zero_net()), torch.ones_like(s)),
        "flow": (FlowPrecond(zero_net()), 1 / (1 + s)),
    }
    for name, (pre, c_skip) in expected.items():
        out = pre(x, sigma)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out.double(), c_skip * x.double(), rtol=1e-6, atol=1e-6, msg=name)


def test_network_inputs_follow_the_formulas():
    x, sigma = noisy_batch()
    s = sigma.double()
    sd = 0.6
    cases = {
        "edm": (EDMPrecond(zero_net(), sigma_data=sd), 1 / (s**2 + sd**2).sqrt(), s.log() / 4),
        "ve": (VEPrecond(zero_net()), torch.ones_like(s), (s / 2).log()),
        "flow": (FlowPrecond(zero_net()), 1 / (1 + s), 1000 * s / (1 + s)),
    }
    beta_d, beta_min = 19.9, 0.1
    t = ((beta_min**2 + 2 * beta_d * torch.log(1 + s**2)).sqrt() - beta_min) / beta_d
    cases["vp"] = (VPPrecond(zero_net()), 1 / (s**2 + 1).sqrt(), 999 * t)
    for name, (pre, c_in, c_noise) in cases.items():
        cond, params = torch.randn(5, 1, 3, 4), torch.randn(5, 2)
        pre(x, sigma, cond=cond, params=params)
        x_in, c, cond_in, params_in = pre.net.calls[-1]
        torch.testing.assert_close(x_in.double(), c_in.reshape(-1, 1, 1, 1) * x.double(), rtol=1e-6, atol=1e-6, msg=name)
        torch.testing.assert_close(c.double(), c_noise, rtol=1e-5, atol=1e-5, msg=name)
        assert torch.equal(cond_in, cond) and torch.equal(params_in, params)


def test_vp_default_sigma_range():
    pre = VPPrecond(zero_net())
    assert pre.sigma_max == pytest.approx(math.sqrt(math.exp(0.5 * 19.9 + 0.1) - 1))
    assert pre.sigma_min == pytest.approx(math.sqrt(math.exp(0.5 * 19.9 * 1e-10 + 0.1 * 1e-5) - 1))


def test_exact_F_reproduces_the_gaussian_denoiser():
    """Nets that output the ideal target of each parameterisation, written from the papers'
    definitions (not from the preconditioner), give the exact denoiser through each precond."""
    gd = gaussian()
    sd = 0.55
    x, sigma = noisy_batch()

    def edm_F(x_in, c_noise):          # F = (D - c_skip x) / c_out
        s = torch.exp(4 * c_noise.double()).reshape(-1, 1, 1, 1)
        xx = x_in.double() * (s**2 + sd**2).sqrt()
        d = gd(xx, s.flatten())
        return ((d - sd**2 / (s**2 + sd**2) * xx) / (s * sd / (s**2 + sd**2).sqrt())).float()

    def vp_eps(x_in, c_noise):         # eps_hat = (x - D) / sigma at t = c_noise / (M - 1)
        t = c_noise.double() / 999
        s = torch.sqrt(torch.expm1(0.5 * 19.9 * t**2 + 0.1 * t)).reshape(-1, 1, 1, 1)
        xx = x_in.double() * (s**2 + 1).sqrt()
        return ((xx - gd(xx, s.flatten())) / s).float()

    def ve_F(x_in, c_noise):           # F = (D - x) / sigma = -eps_hat, sigma = 2 exp(c_noise)
        s = 2 * torch.exp(c_noise.double()).reshape(-1, 1, 1, 1)
        return ((gd(x_in.double(), s.flatten()) - x_in.double()) / s).float()

    lam, vec = torch.linalg.eigh(gd.cov)
    mu = gd.mean

    def flow_v(x_t, c_noise):          # E[eps - x0 | x_t], x_t = (1-t) x0 + t eps, x0 ~ N(mu, C)
        t = (c_noise.double() / 1000).reshape(-1, 1)
        xt = x_t.double().reshape(x_t.shape[0], -1)
        gain = (1 - t) * lam / ((1 - t) ** 2 * lam + t**2)
        x0 = mu + ((xt - (1 - t) * mu) @ vec * gain) @ vec.T
        return ((xt - x0) / t).reshape(x_t.shape).float()

    truth = gd(x.double(), sigma.double())
    for pre in (EDMPrecond(Recorder(edm_F), sigma_data=sd), VPPrecond(Recorder(vp_eps)),
                VEPrecond(Recorder(ve_F)), FlowPrecond(Recorder(flow_v))):
        out = pre(x, sigma)
        torch.testing.assert_close(out.double(), truth, rtol=1e-4, atol=1e-4, msg=pre.kind)
        # a wrong sigma_data / time scale must be noticed by the same comparison
    wrong = EDMPrecond(Recorder(edm_F), sigma_data=2 * sd)(x, sigma)
    assert (wrong.double() - truth).abs().max() > 1e-2


def test_config_round_trip_and_errors():
    for pre in (EDMPrecond(zero_net(), sigma_data=0.3, sigma_max=50), VPPrecond(zero_net(), beta_d=10.0),
                VEPrecond(zero_net(), sigma_min=0.01), FlowPrecond(zero_net(), time_scale=1.0)):
        again = build("preconditioner", json.loads(json.dumps(pre.config())), net=zero_net())
        assert type(again) is type(pre) and again.config() == pre.config()
        assert (again.sigma_min, again.sigma_max, again.sigma_data) == (pre.sigma_min, pre.sigma_max, pre.sigma_data)
    assert EDMPrecond(zero_net(), sigma_data=0.3, sigma_max=50).config() == {
        "type": "edm", "sigma_min": 0.002, "sigma_max": 50, "sigma_data": 0.3}
    vp = VPPrecond(zero_net(), beta_d=10.0).config()   # the resolved default range is recorded
    assert vp["sigma_max"] == pytest.approx(math.sqrt(math.expm1(5.0 + 0.1))) and vp["beta_d"] == 10.0
    with pytest.raises(ValueError, match="unknown preconditioner type 'ddim'"):
        build("preconditioner", {"type": "ddim"}, net=zero_net())
    with pytest.raises(ValueError, match="'sigma_datum' .did you mean 'sigma_data'"):
        build("preconditioner", {"type": "edm", "sigma_datum": 1.0}, net=zero_net())
    with pytest.raises(ValueError, match="'net'.*passed as an object"):
        build("preconditioner", {"type": "edm", "net": "unet"}, net=zero_net())
    with pytest.raises(ValueError, match="sigma_max must be a number, got 'big'"):
        build("preconditioner", {"type": "ve", "sigma_max": "big"}, net=zero_net())
    with pytest.raises(ValueError, match="sigma"):
        EDMPrecond(zero_net())(torch.zeros(2, 1, 4, 4), torch.ones(3))


def test_precond_with_unet_and_autocast():
    torch.manual_seed(0)
    net = UNet2D(2, 2, block_out_channels=(16, 32), attention_levels=(False, False))
    pre = EDMPrecond(net, sigma_data=0.5)
    x = torch.randn(2, 2, 8, 8, dtype=torch.float64)
    sigma = torch.tensor([0.1, 3.0], dtype=torch.float64)
    ref = pre(x, sigma)
    assert ref.dtype == torch.float32 and ref.shape == x.shape
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = pre(x, sigma)
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, ref, rtol=0.05, atol=0.05)


def test_measure_sigma_data():
    g = torch.Generator().manual_seed(0)
    data = 0.37 * torch.randn(200, 2, 8, 8, generator=g) + 1.5
    expected = data.double().std().item()
    assert measure_sigma_data(data) == pytest.approx(expected, rel=1e-9)
    assert measure_sigma_data(list(data)) == pytest.approx(expected, rel=1e-9)
    assert measure_sigma_data([(d, 0) for d in data]) == pytest.approx(expected, rel=1e-9)
    assert measure_sigma_data(data, max_samples=50) == pytest.approx(data[:50].double().std().item(), rel=1e-9)
    bad = data.clone()
    bad[3, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        measure_sigma_data(list(bad))
