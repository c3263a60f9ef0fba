"""WDNO's Burgers benchmark: pixel-space against wavelet priors on the same data, network and steps.

    python scripts/bench_wdno.py --pixel runs/wdno_pixel/prior --wavelet runs/wdno_wavelet/prior \
        --data data/burgers_wdno_32_test64.h5 --n 16 --nfes 10 20 50

Conditional simulation ``p(u | u0, f)`` with joint priors over ``(f, u)`` (``configs/burgers_wdno.yaml``,
variants ``tiny`` and ``tiny+wavelet``): for each held-out instance the forcing ``f`` and the initial
state ``u0 = u(t=0)`` are given and ``u`` is generated; the truth is the classical solver's
trajectory stored in the test file (``diffpde generate burgers_dirichlet``: the data are solver
outputs), so the relative L2 of ``u`` is the error against re-simulation. Rows:

* ``projection``: WDNO's way, the given values written into the state after every step
  (``samplers.guidance.inpaint_decoded``: in wavelet space the decoded values are overwritten and the
  change written back to the coefficients), with our solvers at each NFE;
* ``covariance``: covariance guidance with ``f`` and ``u0`` as exact observations (noise 1e-3);
* ``wdno``: WDNO's protocol, DDIM with eta 1 on 50 steps of the DDPM linear schedule (``euler_ancestral``
  with eta 1 on that grid is the same update in the VE frame), with projection.

``--conditional NAME=DIR`` adds conditional priors ``p(u | f, u0)`` (variant ``cond``: ``f`` and ``u0``
repeated along time are network inputs, the loss is on ``u`` only; on the wavelet representation they
enter through their own wavelet transform), sampled directly with our solvers at each NFE and with
WDNO's protocol (no guidance needed).

Reported per row: mean relative L2 of ``u`` over the trajectory and of ``u(T)``, relative L2 of the
generated ``f`` against the given one (0 for projection), network evaluations and wall time per sample
(one torch thread; compare rows of one run). A figure (``--figure``) shows t-x images of truth, sample
and error for one instance.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from diffpde.inference import simulate
from diffpde.inference.cli import load_prior


def ddpm_grid(steps: int = 50) -> torch.Tensor:
    """The VE noise levels of diffusers' DDIM with ``steps`` steps on the linear DDPM schedule (1000 steps), then 0."""
    from diffusers import DDIMScheduler

    from samplers.scheduler_bridge import sigmas_of

    return sigmas_of(DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear"), steps).to(torch.float64)


def load_instances(path: str, n: int) -> dict[str, torch.Tensor]:
    with h5py.File(path, "r") as f:
        out = {k: torch.as_tensor(np.asarray(f["fields"][k][:n]), dtype=torch.float64) for k in ("f", "u")}
    out["u0"] = out["u"][:, 0]
    return out


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-instance relative L2 ``||a - b|| / ||b||`` over all axes but the first."""
    a, b = a.flatten(1), b.flatten(1)
    return (a - b).norm(dim=1) / b.norm(dim=1).clamp_min(1e-12)


def run_row(prior, data, *, method, solver, steps, schedule="karras", batch=8, seed=0) -> dict:
    n = data["u"].shape[0]
    errs, final, ferr, nfe = [], [], [], None
    conditional = "u0" in getattr(prior, "cond_fields", ())
    start = time.perf_counter()
    for lo in range(0, n, batch):
        sl = slice(lo, lo + batch)
        if conditional:
            post = simulate(prior, initial={"u0": data["u0"][sl]}, given={"f": data["f"][sl]}, solver=solver,
                            steps=steps, schedule=schedule, seed=seed + lo, n_samples=1)
        else:
            post = simulate(prior, initial={"u": data["u0"][sl]}, given={"f": data["f"][sl]}, method=method,
                            solver=solver, steps=steps, schedule=schedule, seed=seed + lo, n_samples=1)
        u = post.samples["u"][:, 0]
        errs.append(rel_l2(u, data["u"][sl]))
        final.append(rel_l2(u[:, -1], data["u"][sl, -1]))
        ferr.append(rel_l2(post.samples["f"][:, 0], data["f"][sl]) if "f" in post.samples else torch.zeros(u.shape[0]))
        nfe = post.diagnostics.get("nfe")
    wall = (time.perf_counter() - start) / n
    e, fe = torch.cat(errs), torch.cat(final)
    return {"u_rel_l2": float(e.mean()), "u_rel_l2_sem": float(e.std() / math.sqrt(len(e))),
            "uT_rel_l2": float(fe.mean()), "f_rel_l2": float(torch.cat(ferr).mean()), "nfe": nfe,
            "seconds_per_sample": wall}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pixel", required=True, help="joint (f, u) prior in pixel space")
    p.add_argument("--wavelet", required=True, help="joint (f, u) prior over wavelet coefficients")
    p.add_argument("--data", required=True, help="held-out burgers_dirichlet trajectories (HDF5)")
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--nfes", type=int, nargs="+", default=[10, 20, 50])
    p.add_argument("--methods", nargs="*", default=["projection", "covariance", "wdno"],
                   help="rows of the joint priors (none: only --conditional priors)")
    p.add_argument("--conditional", action="append", default=[], metavar="NAME=DIR",
                   help="a conditional prior p(u | f, u0) (variant cond), e.g. wavelet-cond=runs/x/prior")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    p.add_argument("--figure", default=None, help="PNG: truth, samples and errors of the first instance")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = load_instances(args.data, args.n)
    priors = {"pixel": load_prior(args.pixel), "wavelet": load_prior(args.wavelet)}
    for name, prior in priors.items():
        if tuple(prior.fields) != ("f", "u") or prior.grid_shape != tuple(data["u"].shape[1:]):
            raise SystemExit(f"--{name}: a joint (f, u) prior on {tuple(data['u'].shape[1:])} is needed, got fields "
                             f"{list(prior.fields)} on {prior.grid_shape}")
        problem = prior.problem_config or {}
        with h5py.File(args.data, "r") as f:
            if problem.get("name") != f.attrs["problem"]:
                raise SystemExit(f"--{name} was trained on {problem.get('name')!r}, the data are {f.attrs['problem']!r}")
    rows = []
    for spec in args.conditional:
        name, _, directory = spec.partition("=")
        prior = load_prior(directory)
        if set(prior.cond_fields) != {"f", "u0"} or tuple(prior.fields) != ("u",):
            raise SystemExit(f"--conditional {spec}: a prior of u given (f, u0) is needed, got fields {list(prior.fields)} "
                             f"given {list(prior.cond_fields)}")
        plan = [("dpmpp_2m", n, "karras") for n in args.nfes] + [("euler_ancestral", 50, ddpm_grid(50))]
        for solver, steps, schedule in plan:
            r = run_row(prior, data, method="conditional", solver=solver, steps=steps, schedule=schedule,
                        batch=args.batch)
            r.update(representation=name, method="conditional" if solver == "dpmpp_2m" else "wdno (conditional)",
                     solver=solver, steps=steps)
            rows.append(r)
            print(f"{name:8s} {r['method']:11s} {solver:16s} NFE {r['nfe']:4d}  u {r['u_rel_l2']:.4f} "
                  f"(+-{r['u_rel_l2_sem']:.4f})  u(T) {r['uT_rel_l2']:.4f}  {1000 * r['seconds_per_sample']:.0f} ms/sample",
                  flush=True)
    for rep, prior in priors.items():
        for method in args.methods:
            if method == "wdno":
                plan = [("euler_ancestral", 50, ddpm_grid(50), "projection")]
            elif method == "covariance":
                plan = [("dpmpp_2m_sde", n, "karras", "covariance") for n in args.nfes]
            else:
                plan = [("dpmpp_2m", n, "karras", method) for n in args.nfes]
            for solver, steps, schedule, how in plan:
                r = run_row(prior, data, method=how, solver=solver, steps=steps, schedule=schedule, batch=args.batch)
                r.update(representation=rep, method=method, solver=solver, steps=steps)
                rows.append(r)
                print(f"{rep:8s} {method:11s} {solver:16s} NFE {r['nfe']:4d}  u {r['u_rel_l2']:.4f} "
                      f"(+-{r['u_rel_l2_sem']:.4f})  u(T) {r['uT_rel_l2']:.4f}  f {r['f_rel_l2']:.2e}  "
                      f"{1000 * r['seconds_per_sample']:.0f} ms/sample", flush=True)
    print()
    print("| prior | method | solver | NFE | rel. L2 of u | rel. L2 of u(T) | ms per sample |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['representation']} | {r['method']} | {r['solver']} | {r['nfe']} | {r['u_rel_l2']:.3f} | "
              f"{r['uT_rel_l2']:.3f} | {1000 * r['seconds_per_sample']:.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    if args.figure:
        figure(priors, data, args.figure)
    return 0


def figure(priors, data, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    truth = data["u"][0]
    panels = [("truth u (solver)", truth)]
    for rep, prior in priors.items():
        post = simulate(prior, initial={"u": data["u0"][:1]}, given={"f": data["f"][:1]}, method="projection",
                        solver="dpmpp_2m", steps=20, seed=0)
        u = post.samples["u"][0, 0]
        panels += [(f"{rep} sample (20 NFE)", u), (f"{rep} error", u - truth)]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.0))
    lim = float(truth.abs().max())
    for ax, (title, img) in zip(axes, panels):
        err = "error" in title
        v = float(img.abs().max()) if err else lim
        im = ax.imshow(img.numpy(), origin="lower", aspect="auto", cmap="RdBu_r", vmin=-v, vmax=v,
                       extent=[0, 1, 0, 8])
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("x")
        fig.colorbar(im, ax=ax, fraction=0.046)
    axes[0].set_ylabel("t")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
