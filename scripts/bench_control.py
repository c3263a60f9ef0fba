"""Benchmark: control by guidance against no control and the adjoint optimum (issue 11 item 5).

    python scripts/bench_control.py --prior runs/burgers_wdno_tiny --data data/burgers_wdno_32_test64.h5 \\
        --n 8 --nfe 10 20 50 --json control.json --markdown control.md --figure control.png

On the first ``--n`` instances of ``--data`` (initial state ``u[0]``, target ``u[-1]``, the dataset's
own forcing scored as the reference), for every ``--guidance MODE[:SCALE[:OBJECTIVE]]`` and ``--nfe``: K
forcings per instance, each re-simulated with the classical solver (J_actual beside J_generated),
against no control and the adjoint optimum (L-BFGS through the differentiable solver). Prints a
markdown table (also ``--markdown``), writes the full result (``--json``) and a figure of target
against achieved final states (``--figure``). ``--prior gaussian`` uses the Gaussian fitted to solver
samples of the data's problem (no network). What is computed lives in
:mod:`diffpde.inference.control`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prior", required=True, help="prior directory, or 'gaussian'")
    p.add_argument("--data", required=True, help="test trajectories (HDF5)")
    p.add_argument("--n", type=int, default=8, help="instances: the first N of --data (8)")
    p.add_argument("--first", type=int, default=0, help="index of the first instance (0)")
    p.add_argument("--nfe", type=int, nargs="+", default=[10, 20, 50])
    p.add_argument("--guidance", nargs="+", default=["decoder", "network", "covariance", "decoder:100:simulated"],
                   metavar="MODE[:SCALE[:OBJECTIVE]]")
    p.add_argument("--schedule", default="sigma")
    p.add_argument("--objective", default="generated", choices=("generated", "simulated"))
    p.add_argument("--initial", default="project", choices=("project", "guide", "none"))
    p.add_argument("--max-rms", type=float, default=3.0)
    p.add_argument("--cg-iters", type=int, default=4)
    p.add_argument("--solver", default="dpmpp_2m")
    p.add_argument("--samples", type=int, default=4, metavar="K")
    p.add_argument("--lam", type=float, default=None)
    p.add_argument("--bound", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fit-samples", type=int, default=2000, help="--prior gaussian: solver samples fitted")
    p.add_argument("--adjoint-iters", type=int, default=100)
    p.add_argument("--adjoint-tol", type=float, default=1e-5)
    p.add_argument("--json", default=None)
    p.add_argument("--markdown", default=None)
    p.add_argument("--figure", default=None)
    p.add_argument("--figure-run", nargs="+", default=None, metavar="NAME@NFE",
                   help="the guided runs drawn, e.g. decoder:10@20 (default: the first guided run at the largest NFE)")
    p.add_argument("--instances-shown", type=int, default=4)
    p.add_argument("--device", default=None)
    return p.parse_args(argv)


def markdown_table(result: dict) -> str:
    """The benchmark table: J (mean over instances, and samples), its ratio to the adjoint optimum, times."""
    base = result["baselines"]
    adj = base.get("adjoint")
    j_opt = adj["J"]["mean"] if adj else None
    t_opt = adj["time_per_instance"] if adj else None

    def ratio(x, ref):
        return f"{x / ref:.3g}" if ref else "-"

    rows = ["| method | NFE | J_generated | J_actual | J_actual best of K | J_actual / adjoint | rel. L2 generated vs "
            "re-simulated | s / instance | time / adjoint's |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    labels = {"no control": "no control (f = 0)", "reference": "dataset forcing (reaches the target)"}
    for name, b in base.items():
        label = labels.get(name, name)
        if name == "adjoint":
            label = f"adjoint optimum (L-BFGS, {b['iterations']} it., {b['evaluations']} solves)"
        rows.append(f"| {label} | | | {b['J']['mean']:.4g} | | {ratio(b['J']['mean'], j_opt)} | | "
                    f"{b['time_per_instance']:.3g} | {ratio(b['time_per_instance'], t_opt)} |")
    for r in result["guided"]:
        rows.append(f"| {r['guidance']} | {r['nfe']} | {r['J_generated']['mean']:.4g} | {r['J_actual']['mean']:.4g} | "
                    f"{r['J_actual_best_of_k']['mean']:.4g} | {ratio(r['J_actual']['mean'], j_opt)} | "
                    f"{r['rel_l2']['mean']:.3f} | {r['time_per_instance']:.3g} | "
                    f"{ratio(r['time_per_instance'], t_opt)} |")
    return "\n".join(rows)


def _runs_shown(samples: dict, runs: list[str] | None) -> list[tuple[str, int]]:
    """The guided runs drawn: ``NAME@NFE`` each, default the first guided (not ``none``) run at the largest NFE."""
    if not runs:
        top = max(n for _, n in samples)
        guided = [k for k in samples if k[1] == top and not k[0].startswith("none")]
        return guided[:1] or [next(k for k in samples if k[1] == top)]
    keys = []
    for run in runs:
        name, _, nfe = run.rpartition("@")
        key = (name, int(nfe)) if nfe.isdigit() else None
        if key not in samples:
            raise ValueError(f"--figure-run {run}: no such run; runs: {[f'{a}@{b}' for a, b in samples]}")
        keys.append(key)
    return keys


def figure(result: dict, cp, inst: dict, path: str, runs: list[str] | None, shown: int) -> None:
    """Target against achieved final states: no control, the adjoint optimum, and each guided run drawn
    (re-simulated, solid; generated, dashed; the best of K by J_generated)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples, out = result["_samples"], result["_outcomes"]
    keys = _runs_shown(samples, runs)
    n = min(shown, inst["target"].shape[0])
    rows_b = torch.arange(inst["target"].shape[0])
    colours = ["tab:red", "tab:green", "tab:purple", "tab:orange"]
    if cp.space_dims == 1:
        x = cp.problem.grid.coords["x"]
        fig, axes = plt.subplots(1, n, figsize=(4 * n, 3.6), squeeze=False)
        for i, ax in enumerate(axes[0]):
            ax.plot(x, inst["initial"][i], color="0.6", ls=":", label="initial u0")
            ax.plot(x, inst["target"][i], color="k", lw=3, label="target")
            ax.plot(x, out["no control"].trajectory[i, -1], color="tab:gray", label="no control")
            costs = [f"none {float(out['no control'].cost[i]):.2g}"]
            if "adjoint" in out:
                ax.plot(x, out["adjoint"].trajectory[i, -1], color="tab:blue", label="adjoint optimum")
                costs.append(f"adjoint {float(out['adjoint'].cost[i]):.2g}")
            for key, colour in zip(keys, colours):
                s = samples[key]
                b = int(s.best()[i])
                ax.plot(x, s.actual.trajectory[i, b, -1], color=colour,
                        label=f"{key[0]}, NFE {s.info['nfe']}: re-simulated")
                ax.plot(x, s.state[i, b, -1], color=colour, ls="--", lw=1, label=f"{key[0]}: generated")
                costs.append(f"{key[0]} {float(s.actual.cost[i, b]):.2g}")
            ax.set_title(f"instance {i}, J_actual:\n" + "\n".join(", ".join(costs[j:j + 2])
                                                               for j in range(0, len(costs), 2)), fontsize=7)
            ax.set_xlabel("x")
        axes[0, 0].set_ylabel("u(T, x)")
        handles, labels = axes[0, 0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=8)
        fig.subplots_adjust(bottom=0.3, top=0.74)
    else:
        cols = [("target", inst["target"]), ("no control", out["no control"].trajectory[:, -1])]
        if "adjoint" in out:
            cols.append(("adjoint optimum", out["adjoint"].trajectory[:, -1]))
        for key in keys:
            s = samples[key]
            best = s.best()
            cols += [(f"{key[0]}: re-simulated", s.actual.trajectory[rows_b, best, -1]),
                     (f"{key[0]}: generated", s.state[rows_b, best, -1])]
        fig, axes = plt.subplots(n, len(cols), figsize=(2.6 * len(cols), 2.4 * n), squeeze=False)
        for i in range(n):
            lim = float(inst["target"][i].abs().max())
            for j, (title, v) in enumerate(cols):
                axes[i, j].imshow(v[i], origin="lower", cmap="RdBu_r", vmin=-lim, vmax=lim)
                axes[i, j].set_xticks([]), axes[i, j].set_yticks([])
                if i == 0:
                    axes[i, j].set_title(title, fontsize=8)
    fig.suptitle(f"{cp.problem.name}: target vs achieved final state (guided: best of {s.control.shape[1]} "
                 "by J_generated)", fontsize=10)
    if cp.space_dims != 1:
        fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    from diffpde.inference.control import evaluate_control
    from diffpde.inference.control_cli import load_setting, parse_guidances

    args = parse_args(argv)
    if args.n < 1 or args.first < 0:
        raise SystemExit("--n must be >= 1 and --first >= 0")
    args.instances = f"{args.first}-{args.first + args.n - 1}"
    args.problem, args.resolution, args.param = None, None, []
    device = torch.device(args.device or "cpu")
    prior, cp, inst, indices = load_setting(args, device)
    guidances = parse_guidances(args.guidance, args)
    adjoint = {"max_iter": args.adjoint_iters, "tol": args.adjoint_tol} if args.adjoint_iters > 0 else None
    result = evaluate_control(prior, cp, inst["initial"], inst["target"], guidances=guidances, nfes=args.nfe,
                              solver=args.solver, n_samples=args.samples, seed=args.seed, reference=inst["control"],
                              adjoint=adjoint, keep=bool(args.figure),
                              log=lambda s: print(f"[bench_control] {s}", file=sys.stderr, flush=True))
    result.update(prior=args.prior, data=args.data, indices=indices, command=" ".join(sys.argv))
    table = markdown_table(result)
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    if args.figure:
        figure(result, cp, inst, args.figure, args.figure_run, args.instances_shown)
        print(f"wrote {args.figure}")
    result.pop("_samples", None), result.pop("_outcomes", None)
    if args.json:
        tmp = f"{args.json}.tmp"
        with open(tmp, "w") as f:
            json.dump(result, f, indent=1, allow_nan=True)
        os.replace(tmp, args.json)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
