"""Each adapter, fed the exact network of Gaussian data in its own frame, must give back the exact VE denoiser."""

import math

import pytest
import torch

from samplers.analytic import GaussianDenoiser
from samplers.denoisers import (CosineVPTimestep, DiscreteVPTimestep, FlowDenoiser, LinearVPTimestep, VPDenoiser,
                                from_diffusers)


def _gaussian():
    g = torch.Generator().manual_seed(7)
    a = torch.randn(4, 4, generator=g, dtype=torch.float64)
    return GaussianDenoiser(torch.randn(1, 2, 2, generator=g, dtype=torch.float64), a @ a.T + 0.05 * torch.eye(4, dtype=torch.float64))


def _exact_vp_network(den, prediction, sigma_of_t):
    """The ideal VP network, written from the VP frame's own definitions: x_vp = alpha x0 + sigma_vp eps."""

    def net(x_vp, t):
        sigma_vp2 = 1 - 1 / (1 + sigma_of_t(t) ** 2)                 # sigma_vp^2 = 1 - alpha^2
        alpha = torch.sqrt(1 - sigma_vp2).reshape(-1, 1, 1, 1)
        sigma_vp = torch.sqrt(sigma_vp2).reshape(-1, 1, 1, 1)
        x0 = den(x_vp / alpha, (sigma_vp / alpha).flatten())        # E[x0 | x_vp]
        eps = (x_vp - alpha * x0) / sigma_vp
        return {"eps": eps, "x0": x0, "v": alpha * eps - sigma_vp * x0}[prediction]

    return net


SIGMAS = torch.tensor([0.02, 0.3, 1.0, 7.0, 60.0], dtype=torch.float64)


def _check(adapter, den, sigmas=SIGMAS, tol=1e-6):
    x = den.sample(len(sigmas), torch.Generator().manual_seed(1)) + sigmas.reshape(-1, 1, 1, 1) * torch.randn(
        len(sigmas), 1, 2, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    got, want = adapter(x, sigmas), den(x, sigmas)
    assert got.shape == x.shape and got.dtype == x.dtype
    assert torch.allclose(got, want, rtol=tol, atol=tol), (got - want).abs().max()


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
@pytest.mark.parametrize("schedule", [LinearVPTimestep(0.1, 20.0), LinearVPTimestep(0.1, 20.0, scale=999.0),
                                      CosineVPTimestep()], ids=["linear", "linear999", "cosine"])
def test_vp_adapters_recover_the_exact_denoiser(prediction, schedule):
    den = _gaussian()
    if isinstance(schedule, LinearVPTimestep):  # the network's own sigma(t), written independently of the adapter
        b0, bd, scale = schedule.beta_min, schedule.beta_d, schedule.scale
        sigma_of_t = lambda t: torch.sqrt(torch.exp(0.5 * bd * (t / scale) ** 2 + b0 * (t / scale)) - 1)
    else:
        f = lambda t: torch.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
        sigma_of_t = lambda t: torch.sqrt(f(torch.zeros_like(t)) / f(t) - 1)
    _check(VPDenoiser(_exact_vp_network(den, prediction, sigma_of_t), prediction, schedule), den)
    # and a wrong parameterisation is detected
    wrong = {"eps": "v", "v": "x0", "x0": "eps"}[prediction]
    with pytest.raises(AssertionError):
        _check(VPDenoiser(_exact_vp_network(den, prediction, sigma_of_t), wrong, schedule), den)


def test_flow_adapter_recovers_the_exact_denoiser():
    den = _gaussian()

    def velocity(x_t, t):  # x_t = (1 - t) x0 + t eps, v = eps - x0
        t = t.reshape(-1, 1, 1, 1) / 1000.0
        x0 = den(x_t / (1 - t), (t / (1 - t)).flatten())
        eps = (x_t - (1 - t) * x0) / t
        return eps - x0

    _check(FlowDenoiser(velocity, scale=1000.0), den)


def _ddpm_alphas_cumprod(n=1000):
    betas = torch.linspace(1e-4, 0.02, n, dtype=torch.float64)
    return torch.cumprod(1 - betas, 0)


def test_discrete_timesteps_interpolate_in_log_sigma():
    ts = DiscreteVPTimestep(_ddpm_alphas_cumprod())
    table = ts.sigmas
    assert torch.allclose(ts(table[[0, 10, 500, 999]]), torch.tensor([0.0, 10.0, 500.0, 999.0], dtype=torch.float64), atol=1e-9)
    between = torch.sqrt(table[10] * table[11])  # geometric midpoint
    assert ts(between.reshape(1)).item() == pytest.approx(10.5, abs=1e-9)
    t = torch.tensor([0.0, 3.25, 411.7, 998.9], dtype=torch.float64)
    assert torch.allclose(ts(ts.sigma(t)), t, atol=1e-9)
    with pytest.raises(ValueError, match="outside the trained range"):
        ts(torch.tensor([table[-1].item() * 1.01]))
    clamped = DiscreteVPTimestep(_ddpm_alphas_cumprod(), out_of_range="clamp")
    assert clamped(torch.tensor([1e-5, 1e3], dtype=torch.float64)).tolist() == [0.0, 999.0]


class _FakeDiffusersModel(torch.nn.Module):
    """Diffusers-like: float32 weights, ``model(sample, timestep).sample``; the exact network inside."""

    def __init__(self, net, learned_variance=False):
        super().__init__()
        self.net, self.learned_variance = net, learned_variance
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.timesteps_seen = []

    @property
    def dtype(self):
        return torch.float64  # the exact network is evaluated in float64 for a 1e-6 comparison

    def forward(self, sample, timestep):
        self.timesteps_seen.append(timestep)
        out = self.net(sample, timestep)
        out = torch.cat([out, torch.zeros_like(out)], 1) if self.learned_variance else out
        return type("Output", (), {"sample": out})()


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_from_diffusers_with_a_scheduler(prediction_type):
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type=prediction_type)
    table = DiscreteVPTimestep(scheduler.alphas_cumprod)
    den = _gaussian()
    prediction = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}[prediction_type]
    model = _FakeDiffusersModel(_exact_vp_network(den, prediction, table.sigma), learned_variance=prediction == "eps")
    adapter = from_diffusers(model, scheduler)
    sigmas = torch.cat([table.sigmas[[0, 17, 999]], torch.tensor([0.5, 20.0], dtype=torch.float64)])
    _check(adapter, den, sigmas)
    assert all(((t >= 0) & (t <= 999)).all() for t in model.timesteps_seen)
    # the same from the config dict (DDPMScheduler builds alphas_cumprod from beta_schedule)
    _check(from_diffusers(model, dict(scheduler.config)), den, sigmas)


def test_from_diffusers_unet_smoke():
    from diffusers import DDPMScheduler, UNet2DModel

    unet = UNet2DModel(sample_size=8, in_channels=2, out_channels=2, block_out_channels=(8, 8), norm_num_groups=4,
                       layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D")).eval()
    config = dict(DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction").config)
    den = from_diffusers(unet, config)
    x = torch.randn(2, 2, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        out = den(x, torch.tensor([0.1, 5.0], dtype=torch.float64))
    assert out.shape == x.shape and out.dtype == torch.float64 and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="prediction_type"):
        from_diffusers(unet, {**config, "prediction_type": "flow"})
    with pytest.raises(ValueError, match="FlowDenoiser"):
        from_diffusers(unet, {"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0})
