"""Benchmark dataset generation: samples per second of every registered PDE family.

For each family, at 64^2 and 128^2 (1D families: 256 and 1024 points), times
``diffpde.data.generate_dataset`` (solver, checks and HDF5 writes) with 1 and 2 workers, and
reports the rms of the family's own residual on one generated sample (float64, before storage) and
the solver's error against the family's truth case at that resolution (``truth error``: the relative
L2 error ``||u - u_exact|| / ||u_exact||`` of ``diffpde.pdes.verification.truth_error`` -- manufactured
solutions for darcy/poisson/helmholtz, Cole-Hopf for burgers, Taylor-Green for navier_stokes; nan for a
family without a truth case). It is computed outside the timing.
Runs of 1 and 2 workers are interleaved and repeated; the best rate counts (the machine may be shared).
Every run uses one torch thread per process. The process server is started outside the timing
(a warm-up run), the start of the worker pool (~0.1 s) is inside it.

    python scripts/bench_data.py                      # all families, table on stdout
    python scripts/bench_data.py --problems darcy --budget 5 --json bench_data.json
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import tempfile
import time
from pathlib import Path

import torch

import diffpde.pdes as pdes
from diffpde.data import generate_dataset
from diffpde.pdes.verification import TRUTH_CASES, truth_error


def import_families() -> list[str]:
    """Import every public module of ``diffpde.pdes`` (so each family registers) and list the families."""
    for module in pkgutil.iter_modules(pdes.__path__):
        if not module.name.startswith("_") and module.name != "base":
            try:
                importlib.import_module(f"{pdes.__name__}.{module.name}")
            except Exception as e:  # a family under construction must not stop the others
                print(f"skipping diffpde.pdes.{module.name}: {type(e).__name__}: {e}")
    return pdes.names()


def space_dims(name: str) -> int:
    pde = pdes.get(name, 64)
    return sum(axis != "t" for axis in pde.grid.coords)


def bench(name: str, resolution: int, workers: list[int], budget: float, max_n: int, repeats: int, scratch: Path) -> dict:
    pde = pdes.get(name, resolution)
    torch.set_num_threads(1)  # as generate_dataset runs the solver
    sample = pde.generate(0)  # warm-up (caches, factorisations)
    start = time.perf_counter()
    pde.generate(1)
    per_sample = time.perf_counter() - start
    fields = {k: torch.from_numpy(v)[None] for k, v in sample.items()}
    try:
        residual = float(pde.residual_norm(fields)[0])
    except NotImplementedError:
        residual = float("nan")
    truth = truth_error(name, resolution) if name in TRUTH_CASES else float("nan")
    n = int(max(8, min(max_n, budget / max(per_sample, 1e-6))))
    row = {"problem": name, "resolution": resolution, "n": n, "residual_rms": residual, "truth_error": truth}
    for w in workers:
        if w > 1:  # start the process server, outside the timing
            generate_dataset(name, w, scratch / f"warm-{name}-{resolution}-{w}.h5", resolution=resolution,
                             workers=w, progress=False)
    for _ in range(repeats):  # interleaved, best of: the machine is shared
        for w in workers:
            out = scratch / f"{name}-{resolution}-{w}.h5"
            start = time.perf_counter()
            generate_dataset(name, n, out, resolution=resolution, workers=w, seed=1, progress=False)
            rate = n / (time.perf_counter() - start)
            row[f"samples_per_s_w{w}"] = max(rate, row.get(f"samples_per_s_w{w}", 0.0))
            out.unlink()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", help="comma-separated families (default: all registered)")
    parser.add_argument("--res-2d", type=int, nargs="+", default=[64, 128], help="2D resolutions")
    parser.add_argument("--res-1d", type=int, nargs="+", default=[256, 1024], help="1D resolutions")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--budget", type=float, default=5.0, help="seconds of single-worker work per timed run")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per setting; the best counts")
    parser.add_argument("--max-n", type=int, default=256, help="most samples per timed run")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args()

    names = import_families() if not args.problems else args.problems.split(",")
    rows = []
    header = f"{'problem':<14}{'res':>6}{'n':>5}" + "".join(f"{f'samples/s W={w}':>17}" for w in args.workers) + \
        f"{'speedup':>9}{'residual rms':>14}{'truth error':>13}"
    print(header)
    with tempfile.TemporaryDirectory() as scratch:
        for name in names:
            for resolution in (args.res_1d if space_dims(name) == 1 else args.res_2d):
                row = bench(name, resolution, args.workers, args.budget, args.max_n, args.repeats, Path(scratch))
                rates = [row[f"samples_per_s_w{w}"] for w in args.workers]
                row["speedup"] = rates[-1] / rates[0]
                rows.append(row)
                print(f"{name:<14}{resolution:>6}{row['n']:>5}" + "".join(f"{r:>17.2f}" for r in rates)
                      + f"{row['speedup']:>9.2f}{row['residual_rms']:>14.2e}{row['truth_error']:>13.2e}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"torch_threads": torch.get_num_threads(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
