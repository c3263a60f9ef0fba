"""Our solvers against k-diffusion's on the same grid and the same exact mixture denoiser."""

import pytest
import torch

import samplers
from samplers import schedules
from samplers.analytic import GaussianMixtureDenoiser

from _kdiffusion import load_sampling  # tests/samplers is on sys.path (rootdir-less test dirs)


def _mixture():
    g = torch.Generator().manual_seed(3)
    means = torch.randn(3, 2, 4, generator=g, dtype=torch.float64) * 2.0
    stds = torch.tensor([0.3, 0.5, 0.8], dtype=torch.float64)
    return GaussianMixtureDenoiser(torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64), means, stds)


@pytest.mark.parametrize(
    "ours, theirs, options, their_options",
    [("euler", "sample_euler", {}, {}),
     ("heun", "sample_heun", {}, {}),
     ("dpmpp_2m", "sample_dpmpp_2m", {}, {}),
     ("dpmpp_2m", "sample_dpmpp_2m", {"lower_order_final": False}, {}),
     ("ipndm", "sample_lms", {"order": 4}, {"order": 4}),
     # k-diffusion's 3M (SDE at eta=0) has the half D2 weight and no lower-order final steps
     ("dpmpp_3m", "sample_dpmpp_3m_sde", {"legacy_weights": True, "lower_order_final": False}, {"eta": 0.0})],
)
@pytest.mark.parametrize("steps", [5, 20])
def test_matches_kdiffusion(ours, theirs, options, their_options, steps):
    k = load_sampling()
    den = _mixture()
    sigmas = schedules.karras(steps, 0.02, 40.0)
    x = torch.randn(6, 2, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 40.0
    expected = getattr(k, theirs)(den, x.clone(), sigmas.clone(), disable=True, **their_options)
    got = samplers.sample(den, x.clone(), sigmas, solver=ours, **options)
    rel = ((got - expected).norm() / expected.norm()).item()
    assert rel < 1e-5, f"{ours} vs k-diffusion {theirs}: relative difference {rel:.2e}"
    # and the comparison can fail: a different solver on the same grid is far off
    other = samplers.sample(den, x.clone(), sigmas, solver="euler" if ours != "euler" else "heun")
    assert ((other - expected).norm() / expected.norm()).item() > 1e-3
