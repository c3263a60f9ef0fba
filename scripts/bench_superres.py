"""Super-resolution beyond the training grid on periodic Burgers: the SR prior against interpolation.

    python scripts/bench_superres.py --config configs/burgers_sr.yaml --variant tiny --train
    python scripts/bench_superres.py --prior runs/burgers_sr_tiny/prior --n-test 8

The prior (``diffpde.models.superres``) was trained on pairs cut from a dataset whose finest grid is
the *training grid* (``128 x 129`` for the tiny variant). Test instances are fresh initial
conditions (``--test-seed``, another dataset seed than the training data's); for each

- the *coarse* field is the classical solver's trajectory on the training grid;
- the *truth* at ``2x`` / ``4x`` is the solver run at 2 / 4 times the resolution in t and x from the
  same initial condition (resampled spectrally, ``diffpde.inference.superres.burgers_truth``);
- super-resolution chains 1 / 2 refinements of factor (2, 2) with ``--solver`` at each ``--nfe``
  per refinement; the baselines interpolate the coarse field by the total factor: nearest,
  bilinear, spectral (Fourier in x, cosine in t) and linear in t with Fourier in x.

A third case, ``2x within`` (64 -> 128, the finest pairs seen in training), takes the training-grid
solution as truth and its subsampled copy as the coarse field, as the training pairs are made.
``--cases`` picks among ``2x``, ``4x`` and ``within``.

``--t-window T0 T1`` restricts every case to the times in [T0, T1] (fractions of T; the coarse
grid's indices there must be multiples of 4) to save CPU time: the network is local (a receptive
field of a few tens of points), so a window changes its result only near the window's ends, and
every method sees the same window.

The table reports the mean relative L2 over instances (and its std), the NFE of the whole chain,
the wall time per sample (CPU timings depend on the machine's load: compare rows of one run),
and the floor: the error of the coarse field itself at the coarse points, which an estimate that
keeps the coarse values inherits there. ``--figure`` draws instance 0 of the ``2x`` case (t-x
images: truth, coarse, super-resolution, its error, the best baseline's error).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prior", help="a trained super-resolution prior (default: <config's train.output_dir>/prior)")
    ap.add_argument("--config", help="configs/burgers_sr.yaml (to train, or to find the prior)")
    ap.add_argument("--variant", default=None, help="config variant, e.g. tiny")
    ap.add_argument("--train", action="store_true", help="train the prior first (when it does not exist yet)")
    ap.add_argument("--override", nargs="*", default=[], help="config overrides section.key=value")
    ap.add_argument("--n-test", type=int, default=8)
    ap.add_argument("--test-seed", type=int, default=1, help="dataset seed of the test initial conditions")
    ap.add_argument("--nfe", type=int, nargs="+", default=[10, 20], help="network evaluations per refinement")
    ap.add_argument("--solver", default="dpmpp_2m")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0, help="sampling seed")
    ap.add_argument("--cases", nargs="+", default=["2x", "4x", "within"], choices=["2x", "4x", "within"],
                    help="2x / 4x beyond the training grid, and 64 -> 128 within it")
    ap.add_argument("--t-window", type=float, nargs=2, default=None, metavar=("T0", "T1"),
                    help="evaluate on the times in [T0, T1] (fractions of T) only")
    ap.add_argument("--json", default=None, help="write the table as JSON")
    ap.add_argument("--figure", default=None, help="write the t-x figure (PNG)")
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

    from diffpde import pdes
    from diffpde.data import sample_seed
    from diffpde.data.pairs import downsample
    from diffpde.inference.superres import burgers_truth, coarse_floor, evaluate_superres, superres_figure
    from diffpde.models.superres import SuperResolver, load_superres_config, train_from_config

    prior_dir = args.prior
    if prior_dir is None:
        if args.config is None:
            ap.error("give --prior or --config")
        cfg, _ = load_superres_config(args.config, args.variant, args.override)
        prior_dir = str(Path(cfg.train.output_dir) / "prior")
    if args.train and not Path(prior_dir, "superres.json").is_file():
        if args.config is None:
            ap.error("--train needs --config")
        train_from_config(args.config, args.variant, args.override)
    resolver = SuperResolver.from_pretrained(prior_dir)
    spec = resolver.spec
    src = spec.source["problem"]
    if src["name"] != "burgers" or spec.dims != ("t", "x"):
        sys.exit(f"this benchmark is for periodic Burgers trajectories u[t, x]; the prior was trained on {src['name']}")
    problem = pdes.get("burgers", src["resolution"], **src.get("parameters", {}))
    n = args.n_test
    u0 = torch.stack([torch.as_tensor(problem.sample_inputs(1, sample_seed(args.test_seed, i))["u0"][0])
                      for i in range(n)])
    coarse = torch.as_tensor(problem.solve(u0.numpy()))
    cases = {k: ((f, f), burgers_truth(problem, u0, (f, f))) for k, f in (("2x", 2), ("4x", 4)) if k in args.cases}
    i0, i1 = 0, problem.nt - 1
    if args.t_window is not None:
        i0, i1 = (round(f * (problem.nt - 1)) for f in args.t_window)
        if not 0 <= i0 < i1 < problem.nt or i0 % 4 or i1 % 4:
            ap.error(f"--t-window gives coarse time indices {i0}..{i1}; "
                     f"they must be multiples of 4 in 0..{problem.nt - 1}")
        cases = {k: (f, truth[:, f[0] * i0:f[0] * i1 + 1]) for k, (f, truth) in cases.items()}
        coarse = coarse[:, i0:i1 + 1]
    coarse_of = {k: coarse for k in cases}
    if "within" in args.cases:
        coarse_of["2x within"] = downsample(coarse, (2, 2), spec.kinds)
        cases["2x within"] = ((2, 2), coarse)
    rows, samples = [], {}
    for label, (factors, truth) in cases.items():
        case_rows = evaluate_superres(resolver, coarse_of[label], {label: (factors, truth)}, nfes=args.nfe,
                                      solver=args.solver, batch_size=args.batch, seed=args.seed, samples=samples)
        floor = coarse_floor(coarse_of[label], truth, factors, spec.kinds)
        for r in case_rows:
            r["grid"] = f"{tuple(coarse_of[label].shape[1:])} -> {tuple(truth.shape[1:])}"
            r["floor"] = floor
        rows += case_rows
        print_rows(case_rows, header=label == next(iter(cases)))
    command = "python scripts/bench_superres.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(f"\n{command}")
    summary = {}
    for label in cases:
        base = [r for r in rows if r["case"] == label and r["nfe"] == 0]
        best = min(base, key=lambda r: r["rel_l2"])
        for r in rows:
            if r["case"] == label and r["nfe"] > 0:
                summary[f"{label} nfe {r['nfe']}"] = {"superres": r["rel_l2"], "best_baseline": best["method"],
                                                      "baseline": best["rel_l2"], "ratio": r["rel_l2"] / best["rel_l2"]}
    for k, v in summary.items():
        print(f"{k:>16}: superres {v['superres']:.3e} vs {v['best_baseline']} {v['baseline']:.3e} "
              f"(ratio {v['ratio']:.2f})")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"command": command, "prior": prior_dir, "n_test": n, "rows": rows,
                                               "summary": summary}, indent=1))
    if args.figure and "2x" in cases:
        nfe = max(args.nfe)
        best = min((r for r in rows if r["case"] == "2x" and r["nfe"] == 0), key=lambda r: r["rel_l2"])["method"]
        Path(args.figure).parent.mkdir(parents=True, exist_ok=True)
        T = float(problem.parameters["T"])
        labels = ("truth (solver)", "coarse (solver)", f"super-resolution NFE {nfe}", "|SR error|")
        superres_figure(cases["2x"][1][0], coarse[0], samples[("2x", f"superres nfe {nfe}")][0],
                        samples[("2x", best)][0], labels=labels, baseline_label=f"|{best} error|",
                        extent=(0.0, 1.0, T * i0 / (problem.nt - 1), T * i1 / (problem.nt - 1)), path=args.figure)
    return 0


def print_rows(rows: list[dict], header: bool = True) -> None:
    if header:
        print(f"| {'case':<10} | {'grid':<26} | {'method':<22} | {'NFE':>4} | {'rel L2':>9} | {'std':>8} | "
              f"{'s/sample':>8} | {'floor':>8} |")
        print("|" + "|".join("-" * w for w in (12, 28, 24, 6, 11, 10, 10, 10)) + "|")
    for r in rows:
        print(f"| {r['case']:<10} | {r['grid']:<26} | {r['method']:<22} | {r['nfe']:>4} | {r['rel_l2']:>9.3e} | "
              f"{r['rel_l2_std']:>8.1e} | {r['seconds_per_sample']:>8.3f} | {r['floor']:>8.1e} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
