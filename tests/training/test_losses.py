"""Losses against closed forms: the exact Gaussian denoiser's expected loss, masks, generators."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from diffpde.models import EDMPrecond, UNet1D
from diffpde.training.losses import EDMLoss, FlowMatchingLoss, VELoss, VPLoss, build_loss
from samplers.analytic import GaussianDenoiser

SHAPE = (2, 4)  # [C, N]


def gaussian(seed=0):
    g = torch.Generator().manual_seed(seed)
    d = math.prod(SHAPE)
    a = torch.randn(d, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    cov = 0.6 * (a @ a.T) + 0.02 * torch.eye(d, dtype=torch.float64)
    return GaussianDenoiser(0.5 * torch.randn(SHAPE, generator=g, dtype=torch.float64), cov)


class ExactPrecond(nn.Module):
    """The exact denoiser of Gaussian data, optionally perturbed, behind the precond interface."""

    def __init__(self, gd, sigma_data=0.5, perturb=0.0, channel=None):
        super().__init__()
        self.gd, self.sigma_data, self.perturb, self.channel = gd, sigma_data, perturb, channel

    def forward(self, x, sigma, cond=None, params=None):
        d = self.gd(x.double(), sigma.double())
        if self.perturb:
            bump = self.perturb * torch.cos(torch.arange(x[0].numel(), dtype=torch.float64)).reshape(x.shape[1:])
            if self.channel is not None:
                keep = torch.zeros(x.shape[1], dtype=torch.float64)
                keep[self.channel] = 1
                bump = bump * keep.reshape(-1, *([1] * (x.ndim - 2)))
            d = d + bump
        return d.float()


LOSSES = [EDMLoss(), VPLoss(), VELoss(), FlowMatchingLoss(), FlowMatchingLoss(t_dist="logit_normal")]


def data(gd, n, seed=1):
    return gd.sample(n, torch.Generator().manual_seed(seed)).float()


def expected_loss(loss, lam, sigma_data):
    """E over the loss's sigma distribution of ``weight(sigma) * mean_i lam_i sigma^2 / (lam_i + sigma^2)``,
    the exact denoiser's posterior variance per entry, by quadrature."""
    lam = np.asarray(lam)

    def per_sigma(s):
        s = np.asarray(s)[:, None]
        return (lam * s**2 / (lam + s**2)).mean(-1)

    if isinstance(loss, EDMLoss):
        z, w = np.polynomial.hermite_e.hermegauss(120)
        s = np.exp(loss.P_mean + loss.P_std * z)
        wt = (s**2 + sigma_data**2) / (s * sigma_data) ** 2
        return float((w * wt * per_sigma(s)).sum() / w.sum())
    if isinstance(loss, VELoss):
        u = np.linspace(0, 1, 200001)
        s = loss.sigma_min * (loss.sigma_max / loss.sigma_min) ** u
        return float(np.trapezoid(per_sigma(s) / s**2, u))
    if isinstance(loss, VPLoss):
        t = np.linspace(loss.epsilon_t, 1, 200001)
        s = np.sqrt(np.expm1(0.5 * loss.beta_d * t**2 + loss.beta_min * t))
        return float(np.trapezoid(per_sigma(s) / s**2, t) / (1 - loss.epsilon_t))
    if isinstance(loss, FlowMatchingLoss):
        if loss.t_dist == "uniform":
            t = np.linspace(loss.t_eps, 1 - loss.t_eps, 200001)
            dens = np.full_like(t, 1 / (1 - 2 * loss.t_eps))
        else:  # logit-normal density; the clamped tails carry negligible mass
            t = np.linspace(1e-6, 1 - 1e-6, 400001)
            logit = np.log(t / (1 - t))
            dens = np.exp(-0.5 * ((logit - loss.logit_mean) / loss.logit_std) ** 2) / (
                loss.logit_std * math.sqrt(2 * math.pi) * t * (1 - t))
        s = t / (1 - t)
        return float(np.trapezoid(dens * per_sigma(s) * ((1 + s) / s) ** 2, t))
    raise TypeError(loss)


@pytest.mark.parametrize("loss", LOSSES, ids=lambda l: repr(l))
def test_expected_loss_of_the_exact_denoiser(loss):
    """Monte Carlo mean of the per-sample loss matches the closed form within 4 standard errors."""
    gd = gaussian()
    x0 = data(gd, 20000)
    per_sample = loss(ExactPrecond(gd), x0, generator=torch.Generator().manual_seed(2)).double()
    assert per_sample.shape == (20000,)
    mc, se = per_sample.mean().item(), per_sample.std().item() / math.sqrt(per_sample.numel())
    truth = expected_loss(loss, gd.eigvals.numpy(), 0.5)
    assert abs(mc - truth) < 4 * se, (mc, truth, se)
    # the check is sharp enough to see a 5 % error in the expectation
    assert 4 * se < 0.05 * truth


def test_edm_loss_is_one_per_entry_for_data_of_std_sigma_data():
    """The EDM weight makes the exact denoiser of N(mu, sd^2 I) score 1 at every noise level."""
    sd = 0.7
    d = math.prod(SHAPE)
    gd = GaussianDenoiser(torch.zeros(SHAPE, dtype=torch.float64), sd**2 * torch.eye(d, dtype=torch.float64))
    x0 = data(gd, 20000)
    per_sample = EDMLoss(P_mean=0.5, P_std=2.0)(ExactPrecond(gd, sigma_data=sd), x0,
                                                generator=torch.Generator().manual_seed(3))
    assert per_sample.mean().item() == pytest.approx(1.0, abs=4 * per_sample.std().item() / math.sqrt(20000))


@pytest.mark.parametrize("loss", LOSSES, ids=lambda l: repr(l))
def test_exact_denoiser_beats_a_perturbed_one(loss):
    gd = gaussian()
    x0 = data(gd, 4000)
    exact = loss(ExactPrecond(gd), x0, generator=torch.Generator().manual_seed(4)).mean()
    worse = loss(ExactPrecond(gd, perturb=0.05), x0, generator=torch.Generator().manual_seed(4)).mean()
    assert exact < worse


def test_mask_removes_channels_from_the_loss():
    gd = gaussian()
    x0 = data(gd, 256)
    loss = EDMLoss()

    def run(precond, mask):
        return loss(precond, x0, mask=mask, generator=torch.Generator().manual_seed(5))

    exact, bad1 = ExactPrecond(gd), ExactPrecond(gd, perturb=0.3, channel=1)
    # an error in channel 1 only is invisible when channel 1 is masked out, visible otherwise
    assert torch.equal(run(exact, torch.tensor([1.0, 0.0])), run(bad1, torch.tensor([1.0, 0.0])))
    assert run(bad1, None).mean() > 1.5 * run(exact, None).mean()
    assert run(bad1, torch.tensor([0.0, 1.0])).mean() > 1.5 * run(exact, torch.tensor([0.0, 1.0])).mean()
    # the masked loss is the mean over the kept channel only
    per_channel = [run(exact, torch.tensor(m)) for m in ([1.0, 0.0], [0.0, 1.0])]
    torch.testing.assert_close(0.5 * (per_channel[0] + per_channel[1]), run(exact, None), rtol=1e-5, atol=1e-6)
    # a full-shape mask [B, C, N] agrees with the per-channel one
    m = torch.zeros(256, *SHAPE)
    m[:, 0] = 1
    torch.testing.assert_close(run(exact, m), per_channel[0], rtol=0, atol=0)
    with pytest.raises(ValueError, match="mask"):
        run(exact, torch.ones(3))


def test_generator_reproducibility_and_build_loss():
    gd = gaussian()
    x0 = data(gd, 64)
    for loss in LOSSES:
        a = loss(ExactPrecond(gd), x0, generator=torch.Generator().manual_seed(7))
        b = loss(ExactPrecond(gd), x0, generator=torch.Generator().manual_seed(7))
        assert torch.equal(a, b)
        again = build_loss(loss.config())
        assert type(again) is type(loss) and again.config() == loss.config()
    assert isinstance(build_loss("edm"), EDMLoss)
    with pytest.raises(ValueError, match="unknown loss"):
        build_loss({"type": "l1"})
    with pytest.raises(ValueError, match="P_mena"):
        build_loss({"type": "edm", "P_mena": 0.0})


def test_loss_trains_a_network():
    """Gradients reach the network, and a few Adam steps lower the EDM loss of a tiny UNet1D."""
    torch.manual_seed(0)
    gd = gaussian()
    x0 = data(gd, 64)
    pre = EDMPrecond(UNet1D(2, 2, block_out_channels=(8, 16), norm_num_groups=4), sigma_data=0.5)
    loss = EDMLoss()
    opt = torch.optim.Adam(pre.parameters(), lr=3e-3)

    def evaluate():
        with torch.no_grad():
            return loss(pre, x0, generator=torch.Generator().manual_seed(11)).mean().item()

    before = evaluate()
    for step in range(30):
        opt.zero_grad()
        loss(pre, x0, generator=torch.Generator().manual_seed(step)).mean().backward()
        opt.step()
    assert evaluate() < 0.9 * before


def test_edm_weight_finds_sigma_data_through_wrappers():
    """Accelerate/DDP wrap the model in ``.module``; the EDM weight must still see sigma_data."""
    gd = gaussian()
    x0 = data(gd, 32)

    class Wrapper(nn.Module):  # what DistributedDataParallel looks like from outside
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, *args, **kwargs):
            return self.module(*args, **kwargs)

    direct = EDMLoss()(ExactPrecond(gd, sigma_data=0.8), x0, generator=torch.Generator().manual_seed(0))
    wrapped = EDMLoss()(Wrapper(ExactPrecond(gd, sigma_data=0.8)), x0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(direct, wrapped)
    with pytest.raises(AttributeError, match="sigma_data"):
        EDMLoss()(lambda x, s, cond=None, params=None: x, x0)


def test_flow_and_vp_losses_are_the_velocity_and_eps_losses():
    """Through FlowPrecond / VPPrecond the losses equal ||v_hat - (eps - x0)||^2 and ||eps_hat - eps||^2."""
    from diffpde.models import FlowPrecond, VPPrecond

    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(64, *SHAPE, generator=g)
    weight = torch.randn(SHAPE[0], SHAPE[0], generator=g)

    class Linear(nn.Module):  # some fixed, non-trivial network output
        def forward(self, x, c_noise, cond=None, params=None):
            return torch.einsum("ij,bjn->bin", weight, x) + 1e-3 * c_noise.reshape(-1, 1, 1)

    net = Linear()
    for loss, pre in [(FlowMatchingLoss(t_eps=0.01), FlowPrecond(net)), (VPLoss(), VPPrecond(net))]:
        got = loss(pre, x0, generator=torch.Generator().manual_seed(1))
        g = torch.Generator().manual_seed(1)  # the same draws, in the same order
        sigma = loss.sample_sigma(64, x0, g).double()
        eps = torch.randn(x0.shape, generator=g).double()
        s = sigma.reshape(-1, 1, 1)
        if isinstance(loss, FlowMatchingLoss):
            t = s / (1 + s)
            x_t = (1 - t) * x0.double() + t * eps
            target, pred = eps - x0.double(), net(x_t.float(), (1000 * t).flatten().float()).double()
        else:
            t_of_s = ((0.1**2 + 2 * 19.9 * torch.log1p(s**2)).sqrt() - 0.1) / 19.9
            x_in = (x0.double() + s * eps) / (s**2 + 1).sqrt()
            target, pred = eps, net(x_in.float(), (999 * t_of_s).flatten().float()).double()
        torch.testing.assert_close(got.double(), (pred - target).pow(2).flatten(1).mean(1), rtol=2e-3, atol=1e-4)


def test_vp_and_flow_losses_draw_sigma_from_their_time():
    """VP: t ~ U(epsilon_t, 1), sigma = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1); flow: t ~ U(t_eps, 1 - t_eps),
    sigma = t / (1 - t), weight 1 / t^2."""
    like = torch.zeros(1)
    u = torch.rand(500, generator=torch.Generator().manual_seed(3), dtype=torch.float32).double()
    vp = VPLoss(beta_d=10.0, beta_min=0.5, epsilon_t=1e-3).sample_sigma(500, like, torch.Generator().manual_seed(3))
    t = 1 + u * (1e-3 - 1)
    torch.testing.assert_close(vp.double(), torch.sqrt(torch.exp(5.0 * t**2 + 0.5 * t) - 1), rtol=1e-6, atol=0)
    flow = FlowMatchingLoss(t_eps=0.01)
    sigma = flow.sample_sigma(500, like, torch.Generator().manual_seed(3))
    t = 0.01 + 0.98 * u
    torch.testing.assert_close(sigma.double(), t / (1 - t), rtol=1e-5, atol=0)
    torch.testing.assert_close(flow.weight(sigma, None).double(), ((1 + sigma.double()) / sigma.double()) ** 2,
                               rtol=1e-6, atol=0)
