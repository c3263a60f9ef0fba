"""Forward and inverse Darcy from 3 % point observations: DiffusionPDE's 2000-step preset vs our methods.

    python scripts/bench_inverse.py --prior runs/darcy32/prior --data darcy32_test.h5 --n-test 50

For each task (forward: ``a`` observed at 3 % of the nodes, ``u`` inferred; inverse: ``u`` observed,
``a`` inferred) and each method, the first ``--n-test`` instances of ``--data`` are reconstructed
with the same observation nodes, and the table reports mean metrics over instances: relative L2 of
the posterior mean and of single samples, the Darcy error rate of ``a`` (threshold at the mid
value), CRPS, 90 % / 50 % coverage, spread/skill, the network evaluations, the wall time per
instance and the wall time per posterior sample relative to the preset's.

The ``diffusionpde`` preset is DiffusionPDE's guided Heun sampler (2000 steps, Karras sigmas,
observation loss for the first 80 % of steps, then 0.1 x observation + PDE residual). Its weights
are scale-dependent (DiffusionPDE tuned them by hand for its own normalisation), so the script
tunes them on validation instances (``--tune-indices``, disjoint from the test instances): a grid
of observation weights (PDE weight 0), then a grid of PDE weights at the best observation weight,
at ``--tune-steps`` Heun steps with the weights scaled by ``steps / tune_steps`` (the push per unit
of the sampling path is what matters), all grid values in one batch. ``--zeta-file`` stores the
tuned weights and reuses them.

Costs: on 2 CPU cores with the 1.1 M-parameter 32x32 prior of the README, one guided network
evaluation takes ~11 ms per chain at batch 64, so the preset costs ~45 s per sample chain (94 s
measured while 2-4 benchmark processes shared the cores); the
full protocol (50 instances, K = 8, NFE 20-200, both tasks) is several CPU hours. Everything is
an option; the command that produced a table is printed above it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from diffpde.inference.cli import evaluate_prior, load_instances, load_prior, parse_indices, task_fields
from diffpde.inference.metrics import relative_l2
from diffpde.inference.observations import Observations
from diffpde.inference.spec import expand_amount, parse_observe
from diffpde.inference.tasks import default_solver, reconstruct

ZETA_OBS_GRID = (3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0)
ZETA_PDE_GRID = (0.0, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)


def _args(**kw) -> argparse.Namespace:
    base = dict(task="inverse", observe="0.03", n_test=50, batch=16, method="covariance", solver=None, steps=20,
                samples=8, schedule="karras", seed=0, noise_std=None, method_option=[], solver_option=[], prior="")
    base.update(kw)
    return argparse.Namespace(**base)


def natural_zeta(truth_std: float, m: int, steps: int) -> float:
    """Weight at which the late observation push per step is ``sqrt(m) / steps`` in normalised units.

    ``d ||y - A(x)|| / dz`` has norm ``~ std`` (physical std of the observed field) at small sigma,
    and a residual of ``sqrt(m)`` normalised units must be removed over ``steps`` steps.
    """
    return math.sqrt(m) / (steps * truth_std)


def tune_zeta(prior, data: str, task: str, indices: list[int], steps: int, tune_steps: int,
              seed: int, log=print) -> dict:
    """Grid-search DiffusionPDE's weights for ``task`` on validation instances (one batch per grid)."""
    observed, target = task_fields(prior, task)
    spec = expand_amount("0.03", observed)
    op = parse_observe(spec, prior, seed=seed)
    truth = load_instances(data, prior, indices)
    obs = Observations(op, op.measure(truth))
    field = observed[0]
    std = float(truth[field].std())
    scale = natural_zeta(std, op.num_measurements, steps)
    b = len(indices)
    results = {}

    def run(pairs):
        """Mean rel. L2 of the target over the instances for each ``(zeta_obs, zeta_pde)``, one batch."""
        g = len(pairs)
        rep = Observations(op, obs.values.repeat(g, 1))
        factor = steps / tune_steps
        zo = torch.tensor([a for a, _ in pairs], dtype=torch.float32).repeat_interleave(b) * factor
        zp = torch.tensor([c for _, c in pairs], dtype=torch.float32).repeat_interleave(b) * factor
        t0 = time.perf_counter()
        post = reconstruct(prior, rep, method="diffusionpde", steps=tune_steps, n_samples=1, seed=seed,
                           method_options={"zeta_obs": {field: zo}, "zeta_pde": zp})
        errs = relative_l2(post.mean[target[0]], torch.cat([truth[target[0]]] * g)).reshape(g, b).mean(1)
        log(f"  [{task}] " + ", ".join(f"({a:.3g}, {c:.3g}): {e:.3f}" for (a, c), e in zip(pairs, errs.tolist()))
            + f"  ({time.perf_counter() - t0:.0f} s)")
        return errs

    first = run([(z * scale, 0.0) for z in ZETA_OBS_GRID])
    best_obs = ZETA_OBS_GRID[int(torch.argmin(first))] * scale
    results["obs_grid"] = {f"{z * scale:.6g}": float(e) for z, e in zip(ZETA_OBS_GRID, first)}
    errs = run([(best_obs, c) for c in ZETA_PDE_GRID])
    best_pde = ZETA_PDE_GRID[int(torch.argmin(errs))]
    results["pde_grid"] = {f"{c:g}": float(e) for c, e in zip(ZETA_PDE_GRID, errs)}
    results.update(zeta_obs={field: best_obs}, zeta_pde=best_pde, steps=steps, tune_steps=tune_steps,
                   indices=indices, target=target[0], rel_l2=float(errs.min()))
    return results


def run_method(prior, data, task, method, steps, samples, n_test, batch, seed, options, solver=None) -> dict:
    args = _args(task=task, method=method, steps=steps, samples=samples, n_test=n_test, batch=batch, seed=seed,
                 solver=solver, method_option=[f"{k}={json.dumps(v)}" for k, v in options.items()])
    return evaluate_prior(prior, data, args, progress=False)


def row(name, res, target, binary, n=None) -> dict:
    """Means over the first ``n`` instances (default all) of one ``evaluate_prior`` result."""
    m = res["metrics"][target]
    n = res["n_test"] if n is None else min(n, res["n_test"])

    def mean(metric):
        """Mean over the instances; nan where the metric is undefined (ensemble metrics need K >= 2)."""
        return float(np.mean(m[metric]["values"][:n])) if metric in m else float("nan")

    out = {"method": name, "nfe": res["cost"]["nfe"]["mean"], "vjp": res["cost"]["vjp"]["mean"],
           "K": res["samples"], "n": n, "rel_l2": mean("rel_l2"),
           "rel_l2_sd": float(np.std(m["rel_l2"]["values"][:n], ddof=1) / math.sqrt(n)) if n > 1 else float("nan"),
           "sample_rel_l2": mean("sample_rel_l2"), "crps": mean("crps"), "cov90": mean("coverage90"),
           "cov50": mean("coverage50"), "spread_skill": mean("spread_skill"),
           "time": float(np.mean(res["cost"]["wall_time_per_instance"]["values"][:n]))}
    out["error_rate"] = mean("error_rate") if binary else float("nan")
    return out


def format_rows(task: str, target: str, rows: list[dict]) -> str:
    ref = next((r["time"] / r["K"] for r in rows if r["method"].startswith("diffusionpde")), float("nan"))
    head = (f"| {task} ({target}) | NFE | K | n | rel L2 mean | rel L2 sample | error rate | CRPS | cov 90 | cov 50 "
            f"| spread/skill | s / instance | time / sample vs preset |")
    lines = [head, "|" + "---|" * 13]

    def f(x, spec):
        return "-" if math.isnan(x) else format(x, spec)

    for r in rows:
        lines.append(f"| {r['method']} | {r['nfe']:.0f} | {r['K']} | {r['n']} | {r['rel_l2']:.3f} ± {r['rel_l2_sd']:.3f} "
                     f"| {r['sample_rel_l2']:.3f} | {f(r['error_rate'], '.3f')} | {f(r['crps'], '.3g')} "
                     f"| {f(r['cov90'], '.3f')} | {f(r['cov50'], '.3f')} | {f(r['spread_skill'], '.2f')} "
                     f"| {r['time']:.2f} | {f(r['time'] / r['K'] / ref, '.3f')} |")
    return "\n".join(lines)


def parse_method(spec: str) -> tuple[str, dict]:
    """``"covariance"`` or ``"covariance:pde_std=1.0;solver=dpmpp_2m_sde"`` -> ``(name, options)``
    (``solver`` is taken out by the caller; default: ``default_solver(name)``)."""
    import yaml

    name, _, rest = spec.partition(":")
    options = {}
    for item in filter(None, rest.split(";")):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--methods {spec!r}: expected NAME[:KEY=VALUE;...]")
        options[key] = yaml.safe_load(value)
    return name, options


def combine(paths: list[str]) -> int:
    """Print the tables of several ``--json`` results (same task, same instances) as one per task."""
    tables: dict[str, dict[str, list]] = {}
    for path in paths:
        for task, by_set in json.loads(Path(path).read_text())["tables"].items():
            for key, rows in by_set.items():
                tables.setdefault(task, {}).setdefault(key, []).extend(rows)
    for task, by_set in tables.items():
        target = "u" if task == "forward" else "a"
        for key, rows in by_set.items():
            rows = sorted(rows, key=lambda r: (not r["method"].startswith("diffusionpde"), r["method"].rsplit(" ", 1)[0], r["nfe"]))
            print(f"{task}, {'all instances' if key == 'all' else 'the preset' + chr(39) + 's instances'}:\n"
                  + format_rows(task, target, rows) + "\n")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prior")
    p.add_argument("--data", help="test set (generated with another seed than the training set)")
    p.add_argument("--combine", nargs="+", metavar="JSON", help="only print the tables of earlier --json results")
    p.add_argument("--tasks", default="forward,inverse")
    p.add_argument("--n-test", type=int, default=50)
    p.add_argument("--nfe", default="20,50,100,200", help="network-evaluation budgets of our methods")
    p.add_argument("--methods", default="covariance",
                   help="our methods, comma-separated NAME[:KEY=VALUE;...], e.g. covariance:pde_std=1.0;solver=dpmpp_2m_sde "
                        "(solver default: the package's, dpmpp_2m_sde for covariance)")
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--baseline-steps", type=int, default=2000)
    p.add_argument("--baseline-samples", type=int, default=2)
    p.add_argument("--baseline-n-test", type=int, default=None, help="instances for the preset (default --n-test)")
    p.add_argument("--no-baseline", action="store_true")
    p.add_argument("--tune-indices", default="50-53")
    p.add_argument("--tune-steps", type=int, default=500)
    p.add_argument("--zeta-file", default=None, help="JSON of tuned preset weights (read if present, else written)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.combine:
        return combine(args.combine)
    if not args.prior or not args.data:
        p.error("--prior and --data are required (unless --combine)")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))

    prior = load_prior(args.prior)
    print("command: python " + " ".join([sys.argv[0]] + (argv or sys.argv[1:])), flush=True)
    tasks = [t for t in args.tasks.split(",") if t]
    zetas = {}
    if args.zeta_file and Path(args.zeta_file).exists():
        zetas = json.loads(Path(args.zeta_file).read_text())
    out = {"tables": {}, "zetas": zetas, "args": vars(args)}
    for task in tasks:
        observed, target = task_fields(prior, task)
        binary = target[0] == "a"
        results = []
        n_base = args.baseline_n_test or args.n_test
        if not args.no_baseline:
            if task not in zetas:
                print(f"tuning the diffusionpde weights for {task} on instances {args.tune_indices} "
                      f"({args.tune_steps} steps)", flush=True)
                zetas[task] = tune_zeta(prior, args.data, task, parse_indices(args.tune_indices), args.baseline_steps,
                                        args.tune_steps, args.seed)
                if args.zeta_file:
                    Path(args.zeta_file).write_text(json.dumps(zetas, indent=1) + "\n")
            z = zetas[task]
            res = run_method(prior, args.data, task, "diffusionpde", args.baseline_steps, args.baseline_samples,
                             n_base, args.batch, args.seed, {"zeta_obs": z["zeta_obs"], "zeta_pde": z["zeta_pde"]})
            results.append((f"diffusionpde heun {args.baseline_steps}", res))
            print(format_rows(task, target[0], [row(*results[-1], target[0], binary)]), flush=True)
        for spec in [m for m in args.methods.split(",") if m]:
            method, options = parse_method(spec)
            solver = options.pop("solver", None) or default_solver(method)
            order = 2 if solver in ("heun", "edm") else 1  # network evaluations per step
            label = method + "".join(f" {k}={v}" for k, v in options.items())
            for nfe in [int(n) for n in args.nfe.split(",") if n]:
                steps = (nfe + 1) // 2 if order == 2 else nfe
                res = run_method(prior, args.data, task, method, steps, args.samples, args.n_test, args.batch,
                                 args.seed, options, solver=solver)
                results.append((f"{label} {solver} {nfe}", res))
                print(format_rows(task, target[0], [row(*results[-1], target[0], binary)]), flush=True)
        tables = {"all": [row(name, res, target[0], binary) for name, res in results]}
        if n_base < args.n_test:
            tables["preset_instances"] = [row(name, res, target[0], binary, n_base) for name, res in results]
        out["tables"][task] = tables
        out.setdefault("raw", {})[task] = {name: res for name, res in results}
        for key, rows in tables.items():
            what = "all instances" if key == "all" else f"the first {n_base} instances (the preset's)"
            print(f"{task}, {what}:\n" + format_rows(task, target[0], rows) + "\n", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=float) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
