"""Forward and inverse problems from 3 % point observations: DiffusionPDE's 2000-step preset vs our methods.

    python scripts/bench_inverse.py --prior runs/darcy32/prior --data darcy32_test.h5 --n-test 50

For each task (forward: the PDE's input fields observed at 3 % of the nodes, its outputs inferred,
e.g. Darcy's ``a`` -> ``u``; inverse: the other way round) and each method, the first ``--n-test``
instances of ``--data`` are reconstructed with the same observation nodes
(``diffpde.inference.evaluation.evaluate_dataset``), and the table reports mean metrics over
instances: relative L2 of the posterior mean and of single samples, the error rate of a two-phase
target (Darcy's ``a``, threshold at the mid value), CRPS, 90 % / 50 % coverage, spread/skill, the
network evaluations, the wall time per instance and the wall time per posterior sample relative
to the preset's.

The ``diffusionpde`` preset is DiffusionPDE's guided Heun sampler (2000 steps, Karras sigmas,
observation loss for the first 80 % of steps, then 0.1 x observation + PDE residual). Its weights
are scale-dependent (DiffusionPDE tuned them by hand for its own normalisation), so
``diffpde.inference.diffusionpde.tune_zeta`` tunes them on validation instances (``--tune-indices``, disjoint from the test instances): a grid
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
from pathlib import Path

import numpy as np
import torch

from diffpde.inference.cli import load_prior, parse_indices
from diffpde.inference.diffusionpde import tune_zeta
from diffpde.inference.evaluation import evaluate_dataset, task_fields
from diffpde.inference.sampling import Sampling
from diffpde.inference.tasks import default_solver
from diffpde.options import parse_key_values


def run_method(prior, data, task, method, steps, samples, n_test, batch, seed, options, solver=None) -> dict:
    """The ``evaluate_dataset`` results (``to_dict``) of one method on the first ``n_test`` instances."""
    sampling = Sampling(method=method, solver=solver, steps=steps, samples=samples, seed=seed, method_options=options)
    return evaluate_dataset(prior, data, task, n_test=n_test, batch=batch, sampling=sampling).to_dict()


def row(name, res, target, n=None) -> dict:
    """Means over the first ``n`` instances (default all) of one ``evaluate_dataset`` result (``to_dict``)."""
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
           "time": float(np.mean(res["cost"]["wall_time_per_instance"]["values"][:n])),
           "error_rate": mean("error_rate")}  # two-phase targets only (PDE.two_phase_fields)
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
    name, _, rest = spec.partition(":")
    return name, parse_key_values(filter(None, rest.split(";")), f"--methods {name}:")


def combine(paths: list[str]) -> int:
    """Print the tables of several ``--json`` results (same task, same instances) as one per task."""
    tables: dict[str, dict[str, list]] = {}
    targets: dict[str, str] = {}
    for path in paths:
        results = json.loads(Path(path).read_text())
        targets.update(results.get("targets", {}))
        for task, by_set in results["tables"].items():
            for key, rows in by_set.items():
                tables.setdefault(task, {}).setdefault(key, []).extend(rows)
    for task, by_set in tables.items():
        target = targets.get(task, "?")
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
    out = {"tables": {}, "targets": {}, "zetas": zetas, "args": vars(args)}
    for task in tasks:
        observed, target = task_fields(prior, task)
        out["targets"][task] = target[0]
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
            print(format_rows(task, target[0], [row(*results[-1], target[0])]), flush=True)
        for spec in [m for m in args.methods.split(",") if m]:
            method, options = parse_method(spec)
            solver = options.pop("solver", None) or default_solver(method)
            order = 2 if solver in ("heun", "edm") else 1  # network evaluations per step
            if method == "ensemble":  # its own sampler: 1 + corrector_steps (default 1 for variant=ode, else 0)
                order = 1 + int(options.get("corrector_steps", options.get("variant") == "ode"))
            label = method + "".join(f" {k}={v}" for k, v in options.items())
            for nfe in [int(n) for n in args.nfe.split(",") if n]:
                steps = (nfe + order - 1) // order
                res = run_method(prior, args.data, task, method, steps, args.samples, args.n_test, args.batch,
                                 args.seed, options, solver=solver)
                results.append((f"{label} {solver} {nfe}", res))
                print(format_rows(task, target[0], [row(*results[-1], target[0])]), flush=True)
        tables = {"all": [row(name, res, target[0]) for name, res in results]}
        if n_base < args.n_test:
            tables["preset_instances"] = [row(name, res, target[0], n_base) for name, res in results]
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
