"""``diffpde demo``: the main job end to end on a small built-in Darcy problem, on CPU, in minutes.

1. generate a small Darcy dataset (32x32 by default) with the finite-difference solver;
2. train a tiny joint prior over (permeability a, pressure u) with the Accelerate trainer, or reuse
   the one cached under ``~/.cache/diffpde/demo`` (keyed by the settings);
3. reconstruct held-out instances from about 3 % sparse point observations: the forward problem
   (a observed, u wanted) and the inverse problem (u observed, a wanted);
4. print errors and calibration (coverage of the 90 % intervals) and write a PNG with truth,
   observation points, posterior mean and posterior standard deviation.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

DEFAULT_CACHE = Path(os.environ.get("DIFFPDE_CACHE", Path.home() / ".cache" / "diffpde")) / "demo"


def demo_config(resolution: int, n_train: int, train_steps: int, output_dir: Path, data_path: Path) -> dict[str, Any]:
    """The training config of the demo prior (the ``tiny`` variant of ``configs/darcy.yaml``)."""
    return {
        "data": {"path": str(data_path), "problem": "darcy", "fields": ["a", "u"], "resolution": resolution,
                 "in_memory": True},
        "model": {
            "network": {"type": "unet2d", "block_out_channels": [32, 64, 64], "layers_per_block": 1,
                        "attention_levels": [False, False, True], "norm_num_groups": 8},
            "precond": {"type": "edm", "sigma_min": 0.002, "sigma_max": 80.0},
        },
        "loss": {"type": "edm"},
        "optim": {"lr": 2e-3, "warmup_steps": 100, "schedule": "cosine", "min_lr_ratio": 0.05, "grad_clip": 1.0},
        "train": {"batch_size": 16, "max_steps": train_steps, "seed": 0, "checkpoint_every": max(100, train_steps // 4),
                  "keep_checkpoints": 1, "eval_every": 0, "log_every": 50, "output_dir": str(output_dir),
                  "ema_half_life": max(50, train_steps // 10), "num_workers": 0, "log_with": "none"},
        "eval": {"n_samples": 4, "solver": "heun", "steps": 18},
    }


def _key(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def prepare_prior(cache: Path, *, resolution: int, n_train: int, train_steps: int, workers: int, fresh: bool):
    """Generate the training data and train the demo prior unless a cached one with these settings exists."""
    from .data import generate_dataset
    from .models.prior import Prior
    from .training.config import config_from_dict
    from .training.trainer import train

    settings = {"resolution": resolution, "n_train": n_train, "train_steps": train_steps, "version": 2}
    root = cache / f"darcy{resolution}-{_key(settings)}"
    prior_dir = root / "prior"
    if prior_dir.is_dir() and not fresh:
        try:
            prior = Prior.from_pretrained(prior_dir)
            print(f"[demo] reusing the cached prior {prior_dir}")
            return prior, root
        except (OSError, ValueError) as err:
            print(f"[demo] cached prior unusable ({err}); training again")
    if fresh and root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    data = root / "train.h5"
    print(f"[demo] 1/3 generating {n_train} Darcy samples at {resolution}x{resolution} -> {data}")
    start = time.perf_counter()
    generate_dataset("darcy", n_train, data, resolution=resolution, seed=0, workers=workers)
    print(f"[demo]     generated in {time.perf_counter() - start:.0f} s")
    print(f"[demo] 2/3 training a tiny prior for {train_steps} steps (CPU)")
    start = time.perf_counter()
    config = config_from_dict(demo_config(resolution, n_train, train_steps, root / "run", data))
    train(config)
    print(f"[demo]     trained in {time.perf_counter() - start:.0f} s")
    tmp = root / "prior.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(root / "run" / "prior", tmp)
    os.replace(tmp, prior_dir)
    shutil.rmtree(root / "run", ignore_errors=True)
    return Prior.from_pretrained(prior_dir), root


def run_demo(*, cache: Path = DEFAULT_CACHE, resolution: int = 32, n_train: int = 2000, train_steps: int = 1200,
             n_test: int = 4, fraction: float = 0.03, samples: int = 8, steps: int = 50, method: str = "covariance",
             solver: str | None = None, pde_std: float | None = 0.5, cg_iters: int = 2, workers: int = 2,
             out: str = "diffpde_demo.png", fresh: bool = False,
             seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Run the demo and return its metrics ``{task: {field: {metric: mean}}}``."""
    from .data import generate_dataset
    from .data.hdf5 import read_fields
    from .inference import Observations, SparsePoints, metrics, reconstruct
    from .inference.tasks import default_solver
    from .inference.plot import plot_reconstruction

    prior, root = prepare_prior(cache, resolution=resolution, n_train=n_train, train_steps=train_steps,
                                workers=workers, fresh=fresh)
    test = root / f"test-{n_test}.h5"
    generate_dataset("darcy", n_test, test, resolution=resolution, seed=10**6, workers=1, progress=False)
    truth = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in read_fields(test, ["a", "u"]).items()}
    problem = prior.problem
    binary = problem.two_phase_fields()
    shape = tuple(truth["u"].shape[1:])
    solver = solver or default_solver(method)
    print(f"[demo] 3/3 reconstructing {n_test} held-out instances from {fraction:.0%} point observations "
          f"({method}{', PDE residual std ' + format(pde_std, 'g') if method == 'covariance' and pde_std else ''}, "
          f"{solver}, {steps} steps, {samples} samples each)")
    results: dict[str, Any] = {}
    figures = []
    for task, observed, wanted in (("forward", "a", "u"), ("inverse", "u", "a")):
        op = SparsePoints.random(observed, shape, fraction, seed=seed + (task == "inverse"))
        obs = Observations(op, op(truth))
        options = {"pde_std": pde_std, "cg_iters": cg_iters} if method == "covariance" and pde_std else {}
        post = reconstruct(prior, obs, method=method, solver=solver, steps=steps, n_samples=samples,
                           seed=seed, method_options=options, progress=progress)
        m = metrics.evaluate(post.samples, truth, binary=binary)
        results[task] = {f: {k: float(v.mean()) for k, v in fm.items()} for f, fm in m.items()}
        results[task]["nfe"] = int(post.diagnostics["nfe"])
        results[task]["wall_time_s"] = float(post.diagnostics["wall_time"])
        w = results[task][wanted]
        extra = f", {wanted} error rate {w['error_rate']:.1%}" if "error_rate" in w else ""
        print(f"  {task:8s} ({observed} observed -> {wanted}): rel. L2 of the posterior mean {w['rel_l2']:.3f}{extra}, "
              f"90% coverage {w['coverage90']:.2f}, spread/skill {w['spread_skill']:.2f} "
              f"[{results[task]['nfe']} network evaluations, {results[task]['wall_time_s']:.1f} s]")
        figures.append((task, post, obs))
    if out:
        path = Path(out)
        for task, post, obs in figures:
            target = path.with_name(f"{path.stem}_{task}{path.suffix}")
            plot_reconstruction(truth, post, obs, target, instance=0, problem=problem)
            print(f"[demo] wrote {target}")
    return results


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("demo", help="generate, train (or reuse) and reconstruct Darcy from 3 % observations",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--resolution", type=int, default=32)
    p.add_argument("--n-train", type=int, default=2000)
    p.add_argument("--train-steps", type=int, default=1200)
    p.add_argument("--n-test", type=int, default=4)
    p.add_argument("--fraction", type=float, default=0.03, help="fraction of grid nodes observed")
    p.add_argument("--samples", type=int, default=8, help="posterior samples per instance")
    p.add_argument("--steps", type=int, default=50, help="solver steps")
    p.add_argument("--method", default="covariance")
    p.add_argument("--solver", default=None, help="default: the method's (dpmpp_2m_sde for covariance)")
    p.add_argument("--cg-iters", type=int, default=2,
                   help="covariance: conjugate-gradient iterations per step (each one vector-Jacobian product)")
    p.add_argument("--pde-std", type=float, default=0.5,
                   help="covariance: the Darcy residual as virtual observations with this std (0: off)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where data and the trained prior are kept")
    p.add_argument("--fresh", action="store_true", help="ignore a cached prior and train again")
    p.add_argument("--out", default="diffpde_demo.png", help="figure path ('' for none); one file per task")
    p.add_argument("--json", default=None, help="write the metrics to this JSON file")
    return p


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    results = run_demo(cache=args.cache, resolution=args.resolution, n_train=args.n_train,
                       train_steps=args.train_steps, n_test=args.n_test, fraction=args.fraction,
                       samples=args.samples, steps=args.steps, method=args.method, solver=args.solver,
                       pde_std=args.pde_std, cg_iters=args.cg_iters,
                       workers=args.workers, out=args.out, fresh=args.fresh)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    print(f"[demo] done in {time.perf_counter() - start:.0f} s")
    return 0
