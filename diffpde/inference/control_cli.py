"""``diffpde control``: steer a PDE's final state to a target by guided sampling, against the classical optimum.

    diffpde control runs/burgers_wdno_tiny --data test.h5 --instances 0-7 --nfe 10 20 --json control.json
    diffpde control runs/burgers_wdno_tiny --data test.h5 --instances 0-3 --guidance decoder:1000 covariance:1e4
    diffpde control gaussian --problem navier_stokes --resolution 8 --param store=trajectory --param nt=5 \\
        --bound 2 --instances 4 --json ns_control.json

PRIOR is a saved joint prior over the forcing and the state trajectory (``f`` and ``u`` for
``burgers_dirichlet``, ``f`` and ``w`` for ``navier_stokes``), or ``gaussian``: a Gaussian fitted to
``--fit-samples`` solver samples of the problem, whose denoiser is exact (no network; the
dynamics only to second order), for problems without a trained prior. Instances: with ``--data``,
``--instances`` selects dataset instances (``0-7``, ``0,3``); the initial state is ``u[0]``, the
target the final state ``u[-1]`` and the dataset's own forcing is scored as the reference. Without
``--data`` it is a number of fresh instances drawn from the family (seeded by ``--seed``).

For every guidance (``--guidance MODE[:SCALE[:OBJECTIVE]]``, several: ``decoder``, ``network``,
``covariance``, ``none``; ``decoder:100:simulated`` guides by ``J`` of re-simulating the generated
forcing) and every ``--nfe``, each instance gets ``--samples`` forcings; each is
re-simulated with the classical solver. The JSON holds J_generated, J_actual (mean, median, best
of K by J_generated), the relative L2 of the generated against the re-simulated trajectory, the
costs of no control, the reference and the adjoint optimum (L-BFGS through the solver, stopped
when an iteration gains less than ``--adjoint-tol`` of the no-control cost), and wall times.
See :mod:`diffpde.inference.control` for the cost and the guidance.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import Any

import torch


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("control", help="control a PDE by guided sampling; baselines no control and the adjoint",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prior", metavar="PRIOR", help="a saved prior directory, or 'gaussian' (fitted to solver samples)")
    p.add_argument("--problem", default=None, help="PDE family (default: the prior's; with 'gaussian': required "
                   "unless --data names it)")
    p.add_argument("--resolution", type=int, default=None, help="'gaussian' without --data: the grid resolution")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="'gaussian' without --data: a family parameter (repeatable)")
    p.add_argument("--fit-samples", type=int, default=2000, metavar="N",
                   help="'gaussian': solver samples fitted (2000)")
    p.add_argument("--data", default=None, metavar="H5",
                   help="dataset of trajectories (initial state, target, reference forcing)")
    p.add_argument("--instances", default="0-3", metavar="SPEC",
                   help="with --data: indices (0-7, 0,3); without: a number of fresh instances (default 0-3 / 4)")
    p.add_argument("--lam", type=float, default=None, help="weight of the control cost (default: the family's, 0.01)")
    p.add_argument("--bound", type=float, default=None, help="bound of the applied forcing |f| (default none)")
    p.add_argument("--guidance", nargs="+", default=["decoder"], metavar="MODE[:SCALE[:OBJECTIVE]]",
                   help="guidance runs: decoder (WDNO), network (DPS), covariance, none, each with an optional "
                        "scale and objective (generated, simulated); default decoder")
    p.add_argument("--schedule", default="sigma",
                   help="w(sigma) of decoder/network guidance: sigma (WDNO), sigma2, constant")
    p.add_argument("--objective", default="generated", choices=("generated", "simulated"),
                   help="J of the generated trajectory (default) or of re-simulating the generated forcing")
    p.add_argument("--initial", default="project", choices=("project", "guide", "none"),
                   help="impose the initial state on every denoiser output (default), by a penalty, or not")
    p.add_argument("--max-rms", type=float, default=3.0, help="trust region of a guidance correction (normalised "
                   "frame; 0: none)")
    p.add_argument("--cg-iters", type=int, default=4, help="covariance guidance: CG iterations (4)")
    p.add_argument("--solver", default="dpmpp_2m", help="samplers solver (default dpmpp_2m)")
    p.add_argument("--nfe", type=int, nargs="+", default=[20], help="network evaluations per sample (default 20)")
    p.add_argument("--samples", type=int, default=4, metavar="K", help="forcings per instance (default 4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling noise (and of fresh instances)")
    p.add_argument("--adjoint-iters", type=int, default=100, help="adjoint baseline: L-BFGS iterations at most (100)")
    p.add_argument("--adjoint-tol", type=float, default=1e-5,
                   help="adjoint baseline: stop when an iteration gains less than this fraction of the no-control "
                        "cost (1e-5)")
    p.add_argument("--no-adjoint", action="store_true", help="skip the adjoint baseline")
    p.add_argument("--json", default=None, metavar="OUT", help="write the results here")
    p.add_argument("--device", default=None, help="torch device of the prior (default cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


def parse_guidances(items: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """``["decoder", "covariance:1e4", "decoder:100:simulated"]`` -> ``{item: Guidance}``: a mode, an
    optional scale and an optional objective, the other options shared (from ``args``)."""
    from .control import Guidance

    out = {}
    for item in items:
        parts = item.split(":")
        options: dict[str, Any] = {"mode": parts[0], "schedule": args.schedule, "objective": args.objective,
                                   "initial": args.initial, "cg_iters": args.cg_iters,
                                   "max_rms": args.max_rms if args.max_rms > 0 else None}
        try:
            if len(parts) > 3:
                raise ValueError
            if len(parts) > 1 and parts[1]:
                options["scale"] = float(parts[1])
        except ValueError:
            raise ValueError(f"--guidance {item!r}: expected MODE, MODE:SCALE or MODE:SCALE:OBJECTIVE, "
                             "e.g. decoder:10 or decoder:100:simulated") from None
        if len(parts) == 3:
            options["objective"] = parts[2]
        elif options["mode"] == "covariance":
            options["objective"] = "generated"
        out[item] = Guidance(**options)
    return out


def _fresh_problem(args: argparse.Namespace):
    from .. import pdes
    from ..options import parse_key_values

    if args.problem is None or args.resolution is None:
        raise ValueError("PRIOR 'gaussian' without --data needs --problem and --resolution (and --param KEY=VALUE)")
    return pdes.get(args.problem, args.resolution, **parse_key_values(args.param, "--param"))


def load_setting(args: argparse.Namespace, device: torch.device):
    """``(prior, control problem, instances dict, indices or None)``."""
    from .. import pdes
    from ..data import read_fields, read_info
    from .cli import load_prior, parse_indices
    from .control import control_problem, gaussian_surrogate, sample_instances
    from .evaluation import load_instances, select_instances

    gaussian = args.prior == "gaussian"
    if gaussian:
        if args.data:
            made = read_info(args.data).config
            problem = pdes.get(made["name"], made["resolution"], **made.get("parameters", {}))
            if args.problem not in (None, problem.name):
                raise ValueError(f"--problem {args.problem} but {args.data} holds {problem.name}")
        else:
            problem = _fresh_problem(args)
        cp = control_problem(problem, args.lam, args.bound)
        prior = gaussian_surrogate(cp, args.fit_samples, seed=10**6)
    else:
        prior = load_prior(args.prior, device)
        problem = prior.problem
        if args.problem not in (None, problem.name):
            raise ValueError(f"--problem {args.problem} but the prior {args.prior} was trained on {problem.name}")
        cp = control_problem(problem, args.lam, args.bound)
    if args.data:
        indices = parse_indices(args.instances)
        if gaussian:
            info = read_info(args.data)
            indices = select_instances(info.n_samples, indices=indices, where=str(args.data))
            data = {k: torch.as_tensor(v, dtype=torch.float64)
                    for k, v in read_fields(args.data, (cp.control, cp.state), indices).items()}
        else:
            data = load_instances(args.data, prior, indices)
        traj = data[cp.state]
        return prior, cp, {"initial": traj[:, 0], "target": traj[:, -1], "control": data[cp.control]}, indices
    try:
        n = int(args.instances)
    except ValueError:
        raise ValueError(f"--instances {args.instances!r}: without --data, give a number of fresh instances") from None
    if n < 1:
        raise ValueError(f"--instances must be >= 1, got {n}")
    return prior, cp, sample_instances(cp, n, seed=args.seed), None


def _check(args: argparse.Namespace) -> None:
    for flag in ("samples", "fit_samples", "cg_iters"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if min(args.nfe) < 1:
        raise ValueError(f"--nfe must be >= 1, got {min(args.nfe)}")
    if args.adjoint_iters < 0 or not (math.isfinite(args.adjoint_tol) and args.adjoint_tol >= 0):
        raise ValueError("--adjoint-iters must be >= 0 and --adjoint-tol a finite number >= 0")
    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    if args.json and not Path(args.json).resolve().parent.is_dir():
        raise FileNotFoundError(f"--json {args.json}: the directory {Path(args.json).resolve().parent} does not exist")


def format_results(result: dict[str, Any]) -> str:
    """A plain-text table of :func:`~diffpde.inference.control.evaluate_control`'s result."""
    lines = [f"{'method':44s} {'NFE':>4s} {'J_generated':>12s} {'J_actual':>10s} {'best of K':>10s} "
             f"{'rel L2':>7s} {'s/instance':>10s}"]
    for name, b in result["baselines"].items():
        extra = f" ({b['iterations']} it, {b['evaluations']} solves)" if "iterations" in b else ""
        lines.append(f"{name + extra:44s} {'':>4s} {'':>12s} {b['J']['mean']:10.4g} {'':>10s} {'':>7s} "
                     f"{b['time_per_instance']:10.3g}")
    for r in result["guided"]:
        lines.append(f"{r['name'][:44]:44s} {r['nfe']:4d} {r['J_generated']['mean']:12.4g} "
                     f"{r['J_actual']['mean']:10.4g} {r['J_actual_best_of_k']['mean']:10.4g} "
                     f"{r['rel_l2']['mean']:7.3f} {r['time_per_instance']:10.3g}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from .cli import process_state
    from .control import evaluate_control

    _check(args)
    guidances = parse_guidances(args.guidance, args)
    _, device = process_state(args.device)
    prior, cp, inst, indices = load_setting(args, device)
    log = None if args.quiet else (lambda s: print(f"[control] {s}", flush=True))
    adjoint = None if args.no_adjoint else {"max_iter": args.adjoint_iters, "tol": args.adjoint_tol}
    result = evaluate_control(prior, cp, inst["initial"], inst["target"], guidances=guidances, nfes=args.nfe,
                              solver=args.solver, n_samples=args.samples, seed=args.seed,
                              reference=inst["control"], adjoint=adjoint, log=log)
    result.update(prior=str(args.prior), data=args.data, indices=indices)
    print(format_results(result))
    if args.json:
        tmp = f"{args.json}.tmp"
        with open(tmp, "w") as f:
            json.dump(result, f, indent=1, allow_nan=True)
            f.write("\n")
        os.replace(tmp, args.json)
        print(f"wrote {args.json}")
    return 0
