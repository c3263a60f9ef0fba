"""``diffpde fit-solver``: fit a solver to a prior and keep it with the prior.

    diffpde fit-solver PRIOR --solver learned --nfe 5 6 8 10     # one learned solver per NFE budget
    diffpde fit-solver PRIOR --solver dpm_solver_v3              # the prior's empirical model statistics

The states go to ``PRIOR/solvers/`` (safetensors + JSON, tied to the prior's weights); afterwards
``diffpde sample/evaluate --solver learned --steps 8`` (or ``dpm_solver_v3``) find them there.
See :mod:`diffpde.inference.fitted`.
"""

from __future__ import annotations

import argparse
import time


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("fit-solver", help="fit a learned solver or DPM-Solver-v3's statistics to a prior",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prior", help="prior directory (the fitted state is saved inside it)")
    p.add_argument("--solver", required=True, choices=("learned", "dpm_solver_v3"))
    p.add_argument("--nfe", type=int, nargs="+", default=None, help="NFE budgets (learned; one solver each)")
    p.add_argument("--refit", action="store_true", help="fit again even when a state for these weights exists")
    p.add_argument("--n-fit", type=int, default=48, help="learned: fit noises (a quarter held out for validation)")
    p.add_argument("--ref-steps", type=int, default=200, help="learned: Heun steps of the reference end points")
    p.add_argument("--iterations", type=int, default=150, help="learned: optimiser iterations")
    p.add_argument("--samples", type=int, default=128, help="dpm_solver_v3: prior samples the statistics are measured on")
    p.add_argument("--n-grid", type=int, default=24, help="dpm_solver_v3: noise levels of the statistics")
    return p


def run(args: argparse.Namespace) -> int:
    from ..models.prior import Prior
    from .fitted import describe, fitted_solver

    prior = Prior.from_pretrained(args.prior)
    if args.solver == "learned":
        if not args.nfe:
            raise ValueError("--solver learned needs --nfe N [N ...] (one learned solver per budget)")
        budgets, options = args.nfe, {"n_fit": args.n_fit, "ref_steps": args.ref_steps, "iterations": args.iterations}
    else:
        if args.nfe:
            raise ValueError("--nfe is for learned solvers; DPM-Solver-v3's statistics serve every NFE")
        budgets, options = [1], {"n_samples": args.samples, "n_grid": args.n_grid}
    for nfe in budgets:
        t0 = time.perf_counter()
        _, solver_options = fitted_solver(prior, args.solver, nfe, fit=True, refit=args.refit,
                                          log=lambda s: print(f"[fit-solver] {s}", flush=True), **options)
        state = next(iter(solver_options.values()))
        print(f"[fit-solver] {describe(state)} ({time.perf_counter() - t0:.0f} s) -> {args.prior}/solvers/")
    return 0
