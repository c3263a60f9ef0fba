"""Sample a 2D Gaussian mixture with its exact denoiser: error of fast ODE solvers against the adaptive reference.

Run: python scripts/example_samplers.py   (a few seconds on a CPU)
"""

import time

import torch

import samplers
from samplers.analytic import GaussianMixtureDenoiser
from samplers.reference import reference


def main() -> None:
    torch.set_num_threads(1)  # tiny tensors: threads only add overhead
    g = torch.Generator().manual_seed(0)
    angles = torch.arange(6, dtype=torch.float64) * torch.pi / 3
    denoiser = GaussianMixtureDenoiser(                       # six blobs on a ring of radius 2
        weights=torch.ones(6, dtype=torch.float64),
        means=2.0 * torch.stack([angles.cos(), angles.sin()], 1),
        stds=torch.full((6,), 0.3, dtype=torch.float64),
    )
    sigma_min, sigma_max, n = 0.02, 20.0, 512
    x = torch.randn(n, 2, generator=g, dtype=torch.float64) * sigma_max

    runs = [("euler", 10, {}), ("heun", 6, {}), ("heun", 10, {}), ("dpmpp_2m", 10, {}), ("dpmpp_3m", 10, {}),
            ("unipc", 10, {"order": 2}), ("ipndm", 10, {}), ("dpmpp_2m", 20, {}), ("unipc", 20, {"order": 3})]
    print(f"{'solver':<12}{'steps':>6}{'NFE':>6}{'rel. error':>12}{'seconds':>10}")
    for solver, steps, options in runs:
        sigmas = samplers.schedules.karras(steps, sigma_min, sigma_max)
        truth = reference(denoiser, x, sigmas, rtol=1e-9, atol=1e-9)
        stats, start = {}, time.perf_counter()
        out = samplers.sample(denoiser, x, sigmas, solver=solver, stats=stats, **options)
        seconds = time.perf_counter() - start
        error = ((out - truth).norm() / truth.norm()).item()
        print(f"{solver:<12}{steps:>6}{stats['nfe']:>6}{error:>12.2e}{seconds:>10.3f}")

    stats = {}
    reference(denoiser, x, (sigma_max, sigma_min), rtol=1e-9, atol=1e-9, stats=stats)
    print(f"adaptive reference (DOP853, rtol 1e-9): {stats['nfe']} NFE")


if __name__ == "__main__":
    main()
