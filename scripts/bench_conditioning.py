"""Text2PDE's tasks on a trajectory prior with text and first-frame conditioning: accuracy, guidance,
parameter recovery and physical consistency.

    python scripts/bench_conditioning.py --prior runs/burgers_text_tiny/prior --data data/burgers_text_32_test64.h5

The prior is a DiT with text and first-frame encoders trained with condition dropout
(``configs/burgers_text.yaml``); the test set holds held-out trajectories of the classical solver and
their captions (``diffpde generate ... --seed 1`` writes them). Three tables:

1. **First frame -> trajectory**: each test instance's first frame is given (``frames``), the whole
   trajectory is sampled, and its relative L2 against the solver's trajectory from that frame is
   averaged over instances (``consistency.rollout_error``), for our solvers at NFE 10, 20, 50 and for
   Text2PDE's protocol, 1000-step ancestral DDPM (``euler_ancestral`` with eta 1 on the 1000-step
   DDPM grid: Text2PDE's betas, scaled-linear 8.5e-4 .. 1.2e-2, sigma_max 14.6, and diffusers'
   default linear 1e-4 .. 2e-2, sigma_max 157; both the same trained network) on
   ``--ddpm-n`` instances. The unconditional prior is the reference row (what knowing the frame buys);
   ``--unet-prior`` adds an unconditional pixel prior of the same data given the first frame as an
   observation (``tasks.simulate``: covariance guidance, or projection as WDNO does).
   Also: physical consistency (the relative L2 between each sample and the solver re-run from the
   sample's own first frame, Text2PDE's re-simulation check) and the wall time per sample.
2. **Text -> trajectory, guidance-scale sweep**: each test instance's caption (phrasing
   ``--phrasing``) is given, one trajectory is sampled per caption at scales ``--scales`` (0 is the
   unconditional prior, 1 the conditional one), and the family's features of each sample are
   compared with the numbers its caption states (``consistency.parameter_recovery``): per feature
   the correlation over the captions and the median relative error; ``nu`` is measured from the
   trajectory alone (the viscosity that fits its energy decay). The solver's own trajectories give
   the ceiling row.
3. The same table's physical consistency with the viscosity the caption states.

CPU timings depend on the machine's load: compare rows of one run.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch

#: solvers and the solver steps that spend a given NFE
SOLVERS = {"dpmpp_2m": 1, "unipc": 1, "heun": 2, "dpmpp_2m_sde": 1, "euler_ancestral": 1}
#: Text2PDE's betas (its configs: "linear" = sqrt-linear 8.5e-4 .. 1.2e-2 over 1000 steps) and diffusers' default
DDPM_BETAS = {"text2pde": {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
              "linear": {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02}}
FEATURES = ("u0_max", "energy0", "energyT", "k0", "front_steepness", "front_x", "front_t", "re", "nu")


def steps_for(solver: str, nfe: int) -> int:
    """Solver steps with ``nfe`` network evaluations (Heun: ``2 steps - 1``)."""
    return (nfe + 1) // 2 if SOLVERS.get(solver, 1) == 2 else nfe


def ddpm_sigmas(kind: str, steps: int = 1000) -> torch.Tensor:
    from diffusers import DDPMScheduler

    from samplers.scheduler_bridge import sigmas_of

    return sigmas_of(DDPMScheduler(num_train_timesteps=1000, **DDPM_BETAS[kind]), steps)


def load_test(path: str, n: int, phrasing: int):
    import h5py

    with h5py.File(path, "r") as f:
        u = torch.as_tensor(f["fields/u"][:n], dtype=torch.float64)
        texts = [row[phrasing] for row in f["captions"].asstr()[:n]]
    return u, texts


def fmt(x: float | None, digits: int = 3) -> str:
    return f"{x:.{digits}g}" if x is not None and math.isfinite(x) else "n/a"


def first_frame_rows(prior, problem, u, args) -> list[dict]:
    from diffpde.inference.consistency import generate, physical_consistency, rollout, rollout_error

    frames = prior.frames_of({"u": u})
    start = time.perf_counter()
    reference = rollout(problem, u[:, 0])              # the solver from the given first frames
    solver_time = (time.perf_counter() - start) / u.shape[0]
    rows = [{"method": "classical solver (ETDRK4)", "nfe": None, "rel_l2": 0.0, "consistency": None,
             "time_per_sample": solver_time, "n": int(u.shape[0])}]
    b = u.shape[0]

    def measure(label: str, nfe: int | None, n: int, **kw) -> dict:
        conditioned = kw.pop("conditioned", True)
        if conditioned:
            post = generate(prior, frames={k: v[:n] for k, v in frames.items()}, n_samples=args.samples,
                            seed=args.seed, **kw)
        else:   # the unconditional prior: same solver, no frame
            from diffpde.inference.tasks import Posterior

            t0 = time.perf_counter()
            out = prior.sample(n * args.samples, generator=torch.Generator().manual_seed(args.seed), **kw)
            wall = time.perf_counter() - t0
            post = Posterior({"u": out["u"].reshape(n, args.samples, *out["u"].shape[1:]).double()},
                             {"wall_time_per_sample": wall / (n * args.samples)})
        err = rollout_error(problem, post.samples, u[:n, 0], reference=reference[:n])
        cons = physical_consistency(problem, post.samples)["rel_l2"]
        first = post.samples["u"][:, :, 0]             # the samples' own first frames against the given ones
        frame = (first - u[:n, None, 0]).flatten(2).norm(dim=2) / u[:n, None, 0].flatten(1).norm(dim=1)[:, None]
        row = {"method": label, "nfe": nfe, "rel_l2": float(err.mean()), "rel_l2_std": float(err.std()),
               "frame0_rel_l2": float(frame.mean()), "consistency": float(cons.mean()),
               "time_per_sample": float(post.diagnostics["wall_time_per_sample"]), "n": n}
        print(f"  {label:42s} NFE {nfe!s:5s} rel L2 {fmt(row['rel_l2'])}  t=0 {fmt(row['frame0_rel_l2'])}  "
              f"consistency {fmt(row['consistency'])}  {row['time_per_sample']:.3g} s/sample", flush=True)
        return row

    for solver in args.solvers:
        for nfe in args.nfe:
            options = {"eta": 1.0} if solver == "euler_ancestral" else {}
            rows.append(measure(solver, nfe, b, solver=solver, steps=steps_for(solver, nfe), solver_options=options))
    for kind in args.ddpm:
        rows.append(measure(f"ancestral DDPM, 1000 steps ({kind} betas)", 1000, min(args.ddpm_n, b),
                            solver="euler_ancestral", schedule=ddpm_sigmas(kind), solver_options={"eta": 1.0}))
    rows.append(measure("unconditional prior (no frame), dpmpp_2m", 20, b, conditioned=False, solver="dpmpp_2m",
                        steps=20))
    if args.unet_prior:
        rows += unet_rows(args.unet_prior, problem, u, reference, args)
    return rows


def unet_rows(path: str, problem, u, reference, args) -> list[dict]:
    """An unconditional pixel prior (no first-frame encoder) given the first frame as an observation
    (``tasks.simulate``: covariance guidance or projection of the observed frame)."""
    from diffpde.inference.consistency import physical_consistency, rollout_error
    from diffpde.inference.tasks import simulate
    from diffpde.models.prior import Prior

    prior = Prior.from_pretrained(path).eval()
    size = sum(p.numel() for p in prior.parameters()) / 1e6
    rows = []
    for method in args.unet_methods:
        for nfe in args.unet_nfe:
            post = simulate(prior, initial={"u": u[:, 0]}, method=method, n_samples=args.samples, steps=nfe,
                            seed=args.seed)
            err = rollout_error(problem, post.samples, u[:, 0], reference=reference)
            cons = physical_consistency(problem, post.samples)["rel_l2"]
            first = post.samples["u"][:, :, 0]
            frame = (first - u[:, None, 0]).flatten(2).norm(dim=2) / u[:, None, 0].flatten(1).norm(dim=1)[:, None]
            label = f"{prior.net.config_type} {size:.2f} M, frame by {method} ({post.diagnostics['solver']})"
            row = {"method": label, "nfe": nfe, "rel_l2": float(err.mean()), "rel_l2_std": float(err.std()),
                   "frame0_rel_l2": float(frame.mean()), "consistency": float(cons.mean()),
                   "time_per_sample": post.diagnostics["wall_time"] / (u.shape[0] * args.samples), "n": u.shape[0]}
            print(f"  {label:42s} NFE {nfe!s:5s} rel L2 {fmt(row['rel_l2'])}  t=0 {fmt(row['frame0_rel_l2'])}  "
                  f"consistency {fmt(row['consistency'])}  {row['time_per_sample']:.3g} s/sample", flush=True)
            rows.append(row)
    return rows


def text_rows(prior, problem, u, texts, args) -> list[dict]:
    from diffpde.inference.consistency import generate, parameter_recovery, physical_consistency

    def summarise(label: str, samples: torch.Tensor, wall: float | None) -> dict:
        flat = samples.reshape(-1, *samples.shape[-2:])
        rec = parameter_recovery(problem, {"u": flat}, texts).summary()
        cons = physical_consistency(problem, {"u": flat}, texts=texts)["rel_l2"]
        row = {"scale": label, "recovery": rec, "consistency": float(cons.mean()), "time_per_sample": wall}
        shown = ", ".join(f"{k} {fmt(rec[k]['corr'], 2)}/{fmt(rec[k]['median_rel_error'], 2)}"
                          for k in FEATURES if k in rec)
        print(f"  w={label:8s} consistency {fmt(row['consistency'])}  corr/median rel err: {shown}", flush=True)
        return row

    rows = [summarise("solver", u, None)]
    for w in args.scales:
        post = generate(prior, text=texts, n_samples=1, solver=args.text_solver,
                        steps=steps_for(args.text_solver, args.text_nfe), guidance_scale=w, seed=args.seed)
        rows.append(summarise(f"{w:g}", post.samples["u"], post.diagnostics["wall_time_per_sample"]))
    return rows


def markdown(first: list[dict], text: list[dict], args) -> str:
    lines = []
    if first:
        lines += ["First frame -> trajectory (relative L2 against the solver from the given frame; mean over "
                  f"the held-out instances, K = {args.samples}):", "",
                  "| method | NFE | rel. L2 vs solver | rel. L2 at t = 0 | physical consistency | s / sample "
                  "| instances |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in first:
        lines.append(f"| {r['method']} | {r['nfe'] if r['nfe'] is not None else '-'} | {fmt(r['rel_l2'])} | "
                     f"{fmt(r['frame0_rel_l2']) if 'frame0_rel_l2' in r else '-'} | "
                     f"{fmt(r['consistency']) if r['consistency'] is not None else '-'} | "
                     f"{r['time_per_sample']:.3g} | {r['n']} |")
    if not text:
        return "\n".join(lines)
    keys = [k for k in FEATURES if any(k in r["recovery"] for r in text)]
    lines += [""] if lines else []
    lines += [f"Text -> trajectory ({args.text_solver}, NFE {args.text_nfe}; one sample per held-out caption): "
              "correlation between stated and measured / median relative error, per feature; physical "
              "consistency with the caption's viscosity:", "",
              "| guidance scale | " + " | ".join(k if k != "nu" else "nu (energy decay)" for k in keys)
              + " | physical consistency | s / sample |",
              "| --- |" + " --- |" * (len(keys) + 2)]
    for r in text:
        cells = [f"{fmt(r['recovery'][k]['corr'], 2)} / {fmt(r['recovery'][k]['median_rel_error'], 2)}"
                 if k in r["recovery"] else "-" for k in keys]
        label = "solver data (ceiling)" if r["scale"] == "solver" else r["scale"]
        wall = f"{r['time_per_sample']:.3g}" if r["time_per_sample"] is not None else "-"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {fmt(r['consistency'])} | {wall} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prior", required=True, help="a prior with text and first-frame conditioning")
    ap.add_argument("--data", required=True, help="held-out test set with captions")
    ap.add_argument("--n", type=int, default=64, help="test instances")
    ap.add_argument("--samples", type=int, default=1, help="samples per instance (first-frame task)")
    ap.add_argument("--solvers", nargs="+", default=["dpmpp_2m", "unipc", "heun", "dpmpp_2m_sde", "euler_ancestral"])
    ap.add_argument("--nfe", type=int, nargs="+", default=[10, 20, 50])
    ap.add_argument("--ddpm", nargs="*", default=["text2pde", "linear"], choices=sorted(DDPM_BETAS),
                    help="1000-step ancestral DDPM rows (Text2PDE's protocol)")
    ap.add_argument("--ddpm-n", type=int, default=64, help="instances for the 1000-step rows")
    ap.add_argument("--scales", type=float, nargs="+", default=[0.0, 1.0, 2.0, 4.0])
    ap.add_argument("--phrasing", type=int, default=0, help="which caption of each instance (0 states every clause)")
    ap.add_argument("--text-solver", default="dpmpp_2m")
    ap.add_argument("--text-nfe", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--unet-prior", default=None, help="an unconditional pixel prior of the same data: rows with the "
                    "first frame given as an observation (tasks.simulate)")
    ap.add_argument("--unet-methods", nargs="+", default=["covariance", "projection"])
    ap.add_argument("--unet-nfe", type=int, nargs="+", default=[20])
    ap.add_argument("--skip-text", action="store_true")
    ap.add_argument("--skip-frames", action="store_true")
    ap.add_argument("--json", default=None, help="write the results as JSON")
    args = ap.parse_args(argv)

    from diffpde.models.prior import Prior

    torch.manual_seed(args.seed)
    prior = Prior.from_pretrained(args.prior).eval()
    problem = prior.problem
    u, texts = load_test(args.data, args.n, args.phrasing)
    print(f"prior {args.prior}: {sum(p.numel() for p in prior.parameters()) / 1e6:.2f} M parameters, "
          f"conditions {list(prior.conditioning.kinds)}; {u.shape[0]} test instances of {args.data}", flush=True)
    first = [] if args.skip_frames else first_frame_rows(prior, problem, u, args)
    text = [] if args.skip_text else text_rows(prior, problem, u, texts, args)
    print()
    print(markdown(first, text, args))
    if args.json:
        def clean(v):
            if isinstance(v, float) and not math.isfinite(v):
                return None
            if isinstance(v, dict):
                return {k: clean(x) for k, x in v.items()}
            if isinstance(v, list):
                return [clean(x) for x in v]
            if isinstance(v, np.generic):
                return v.item()
            return v

        with open(args.json, "w") as f:
            json.dump(clean({"args": vars(args), "first_frame": first, "text": text}), f, indent=1)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
