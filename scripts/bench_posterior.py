"""Every posterior method against the closed-form posterior of a Gaussian-random-field prior.

Prior: zero-mean GRF (alpha 2, tau 3, cosine basis) on an 8x8 grid with its exact denoiser.
Observations: 6 random nodes with noise std 0.1 x the field scale. For each method the table gives
the RMS error of the posterior mean in posterior standard deviations (Monte Carlo error alone is
sqrt(1/K)), the ratio of sample to exact variance, the coverage of the central 90 % and 50 %
intervals of the truth, and the cost.

    python scripts/bench_posterior.py [--instances 16] [--samples 256] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from diffpde.inference import GaussianPrior, Observations, SparsePoints, metrics, reconstruct

CASES = [  # method, solver, steps, method options
    ("covariance", "dpmpp_2m", 10, {"cg_iters": 6}),
    ("covariance", "dpmpp_2m", 20, {"cg_iters": 6}),
    ("covariance", "dpmpp_2m", 50, {"cg_iters": 6}),
    ("covariance", "unipc", 20, {"cg_iters": 6}),
    ("covariance", "dpmpp_2m_sde", 20, {"cg_iters": 6}),
    ("covariance", "dpmpp_2m_sde", 50, {"cg_iters": 6}),
    ("covariance", "edm", 50, {"cg_iters": 6}),
    ("tds", "-", 50, {}),
    ("tds", "-", 200, {}),
    ("ensemble", "-", 50, {}),
    ("ensemble", "-", 200, {}),
    ("ensemble", "-", 50, {"variant": "ode", "corrector_step": 0.5}),
    ("dps", "heun", 50, {}),
    ("dps", "euler_ancestral", 200, {}),
    ("projection", "euler_ancestral", 200, {}),
    ("diffusionpde", "heun", 200, {}),
    ("diffusionpde", "heun", 2000, {}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--instances", type=int, default=16)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--json", default=None)
    parser.add_argument("--quick", action="store_true", help="skip the 2000-step case")
    args = parser.parse_args()
    torch.set_num_threads(1)

    prior = GaussianPrior.from_grf(8, alpha=2.0, tau=3.0, boundary="neumann")
    op = SparsePoints.random("u", (8, 8), count=6, seed=0, noise_std=0.1 * prior.scale)
    g = torch.Generator().manual_seed(0)
    truth = prior.sample(args.instances, g)
    obs = Observations(op, op.measure(truth, g))
    mean, cov = prior.exact_posterior(op, obs.values)
    sd = cov.diagonal().sqrt()
    b, k = args.instances, args.samples

    rows = []
    header = f"{'method':12s} {'solver':16s} {'steps':>5s} {'NFE':>5s} {'VJP':>5s} {'mean err/sd':>11s} {'var ratio':>9s} {'cov90':>6s} {'cov50':>6s} {'time s':>7s}"
    print(header)
    print("-" * len(header))
    for method, solver, steps, options in CASES:
        if args.quick and steps > 500:
            continue
        start = time.perf_counter()
        post = reconstruct(prior, obs, method=method, solver="heun" if solver == "-" else solver, steps=steps,
                           n_samples=k, method_options=options, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        wall = time.perf_counter() - start
        s = post.samples["u"].reshape(b, k, -1)
        m = metrics.evaluate(post.samples, truth)["u"]
        row = {
            "method": method, "solver": solver, "steps": steps, "nfe": int(post.diagnostics["nfe"]),
            "vjp": int(post.diagnostics.get("vjp", 0)),
            "mean_error_sd": float(((s.mean(1) - mean) / sd).pow(2).mean().sqrt()),
            "var_ratio": float((s.var(1) / sd**2).mean()),
            "coverage90": float(m["coverage90"].mean()), "coverage50": float(m["coverage50"].mean()),
            "time_s": wall,
        }
        rows.append(row)
        print(f"{method:12s} {solver:16s} {steps:5d} {row['nfe']:5d} {row['vjp']:5d} {row['mean_error_sd']:11.3f} "
              f"{row['var_ratio']:9.3f} {row['coverage90']:6.3f} {row['coverage50']:6.3f} {wall:7.1f}")
    print(f"\n{b} instances x {k} samples; Monte Carlo error of the mean alone: {1 / k**0.5:.3f} sd")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"instances": b, "samples": k, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
