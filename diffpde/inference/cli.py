"""``diffpde sample`` and ``diffpde evaluate``: posterior sampling and its evaluation from the command line.

    diffpde sample --prior runs/darcy --data test.h5 --index 0,1 --observe u:0.03 --out post.h5 --plot post.png
    diffpde sample --prior runs/darcy --observations obs.h5 --data test.h5 --out post.h5
    diffpde sample --prior runs/burgers_text/prior --text "A periodic Burgers trajectory; viscosity 0.01." --out gen.h5
    diffpde sample --prior runs/burgers_text/prior --data test.h5 --index 0-3 --frames-from-data --samples 4
    diffpde sample --prior runs/burgers_text/prior --data test.h5 --observe u:0.03 --text-from-data --guidance-scale 2
    diffpde evaluate --prior runs/darcy --data test.h5 --task inverse --n-test 100 --observe 0.03 --json inverse.json
    accelerate launch --num_processes 4 -m diffpde.cli evaluate ...   # the instances split over 4 processes

Observation specs (``--observe``) are described in :mod:`diffpde.inference.spec` (``u:0.03``,
``u:500``, ``a:1.0,u:0.03@0.01``). For ``evaluate --task forward|inverse`` a bare amount (``0.03``,
``500``, ``1.0``, optionally ``@NOISE``) applies to the observed fields of the task: the input
fields of the PDE family (forward) or its output fields (inverse).

Conditions (a prior with conditioning encoders): ``--text`` (one caption for every instance),
``--text-from-data [K]`` (phrasing ``K`` of each instance's captions in ``--data``),
``--frames-from-data`` (the frames of the prior's frame encoder, e.g. the first frame, cut out of
each instance of ``--data``) and ``--guidance-scale W`` (classifier-free guidance). With
observations they condition the posterior (every method); without, ``sample`` generates
trajectories from the conditions alone (text to trajectory, first frame to trajectory) and reports,
for trajectory families, the relative L2 against ``--data`` (the solver's trajectory) and the
physical consistency (the relative L2 between each sample and the solver re-run from its own first
frame; :mod:`diffpde.inference.consistency`).

Observations made from a dataset record their provenance (problem, dataset, instances); an
observations file is checked against the prior's problem and against ``--index``, and without
``--index`` its own instances of ``--data`` are the truth.

Seeds: the measurement noise of instance ``i`` and the sampling of the batch starting at instance
``i`` have their own seeds derived from ``--seed`` (see :mod:`diffpde.inference.evaluation`), so
the numbers depend on ``--seed`` and ``--batch`` only, not on the number of processes. The
posterior file is described in :mod:`diffpde.inference.posterior_io`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import Any

import torch

COMMAND_NAMES = ("sample", "evaluate")


# -- parsers ---------------------------------------------------------------------------------------


def _add_sampling_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prior", required=True, metavar="DIR", help="a saved prior (Prior.save_pretrained)")
    p.add_argument("--method", default="covariance", help="covariance (default), dps, projection, tds, ensemble, diffusionpde")
    p.add_argument("--solver", default=None, help="samplers solver (default: dpmpp_2m_sde for covariance, heun for diffusionpde, "
                   "dpmpp_2m otherwise); learned and dpm_solver_v3 read their fitted state from the prior "
                   "(diffpde fit-solver)")
    p.add_argument("--steps", type=int, default=20, help="solver steps (default 20)")
    p.add_argument("--samples", type=int, default=8, metavar="K", help="posterior samples per instance (default 8)")
    p.add_argument("--schedule", default="karras", help="sigma schedule (default karras)")
    p.add_argument("--seed", type=int, default=0, help="root seed of the observation points, noise and sampling (default 0)")
    p.add_argument("--noise-std", type=float, default=None, metavar="X",
                   help="observation noise std in physical units (default 0; with --observations: the file's)")
    p.add_argument("--batch", type=int, default=4, metavar="B", help="instances per sampling batch (default 4)")
    p.add_argument("--method-option", action="append", default=[], metavar="KEY=VALUE",
                   help="option of the method (repeatable), e.g. cg_iters=8 or zeta_obs=100")
    p.add_argument("--solver-option", action="append", default=[], metavar="KEY=VALUE", help="option of the solver (repeatable)")
    p.add_argument("--device", default=None,
                   help="torch device (default cpu; under accelerate launch, each process's device)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_condition_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("conditions (priors with conditioning encoders)")
    text = g.add_mutually_exclusive_group()
    text.add_argument("--text", default=None, metavar="CAPTION", help="a caption, for every instance")
    text.add_argument("--text-from-data", nargs="?", type=int, const=0, default=None, metavar="K",
                      help="each instance's caption from --data (phrasing K, default 0)")
    g.add_argument("--frames-from-data", action="store_true",
                   help="each instance's frames from --data (those the prior's frame encoder takes, e.g. u at t = 0)")
    g.add_argument("--guidance-scale", type=float, default=None, metavar="W",
                   help="classifier-free guidance scale (0: unconditional, 1: conditional; default: the conditional "
                   "denoiser)")


def add_parser(subparsers: argparse._SubParsersAction, name: str | None = None) -> argparse.ArgumentParser:
    """Add the parser of ``name`` (``sample`` or ``evaluate``).

    ``diffpde.cli`` calls ``add_parser(subparsers)`` only for the command being run, after it has
    registered the commands listed before it in ``COMMANDS``; since this module serves two
    commands, without ``name`` it adds the first of its commands in that order not registered yet.
    """
    if name is None:
        from ..cli import COMMANDS

        ours = [n for n, (module, _) in COMMANDS.items() if module == __name__ and n in COMMAND_NAMES]
        name = next((n for n in ours or COMMAND_NAMES if n not in subparsers.choices), None)
    if name == "sample":
        p = subparsers.add_parser("sample", help="sample a posterior from observations", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        src = p.add_mutually_exclusive_group()
        src.add_argument("--observe", metavar="SPEC",
                         help="observe instances of --data, e.g. u:0.03 or a:1.0,u:500@0.01 (or no observations: "
                         "generate from --text / --frames-from-data)")
        src.add_argument("--observations", metavar="FILE.h5", help="an observations file (Observations.save)")
        p.add_argument("--data", metavar="TEST.h5", help="dataset file the instances come from (truth for metrics)")
        p.add_argument("--index", default=None, help="instances of --data: 0 or 0,3,7 or 0-3 (default: 0 with --observe, "
                       "the file's instances with --observations)")
        _add_sampling_options(p)
        _add_condition_options(p)
        p.add_argument("--out", metavar="FILE.h5", help="write the posterior (samples, mean, std, diagnostics, observations)")
        p.add_argument("--plot", metavar="FILE.png", help="write a figure (one file per instance when several)")
        return p
    if name == "evaluate":
        p = subparsers.add_parser("evaluate", help="evaluate a prior on forward / inverse / reconstruction tasks",
                                  description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--data", required=True, metavar="TEST.h5", help="test dataset file")
        p.add_argument("--task", required=True, choices=("forward", "inverse", "reconstruct"))
        which = p.add_mutually_exclusive_group()
        which.add_argument("--n-test", type=int, default=None, metavar="N", help="first N instances of --data (default all)")
        which.add_argument("--index", default=None, help="these instances of --data: 0,3,7 or 0-3")
        p.add_argument("--observe", default="0.03", metavar="SPEC",
                       help="a spec (u:0.03) or an amount for the task's observed fields (default 0.03)")
        _add_sampling_options(p)
        p.add_argument("--json", metavar="FILE", help="write the results as JSON")
        return p
    raise ValueError(f"diffpde.inference.cli serves {COMMAND_NAMES}; cannot add {name!r}")


# -- building blocks -------------------------------------------------------------------------------


def check_device(text: str) -> torch.device:
    """``torch.device(text)`` if this machine has it, else a ``ValueError`` naming what is missing."""
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"--device {text!r} is not a torch device (e.g. cpu, cuda, cuda:1, mps)") from None
    if device.type == "cpu":
        return device
    backend = getattr(torch, device.type, None) if device.type != "mps" else torch.backends.mps
    available = getattr(backend, "is_available", None)
    if available is None or not available():
        raise ValueError(f"--device {text}: this machine has no {device.type} device (torch {torch.__version__}); "
                         "use --device cpu")
    count = getattr(backend, "device_count", None)
    if device.index is not None and count is not None and device.index >= count():
        raise ValueError(f"--device {text}: this machine has {count()} {device.type} device(s) "
                         f"({device.type}:0..{count() - 1})")
    return device


def process_state(device: str | None):
    """``(accelerate.PartialState, torch device)``. The device is ``device`` (checked) when given, else
    the CPU; under ``accelerate launch`` each process takes its own device of that type (``cuda``
    becomes ``cuda:<local rank>``; no ``--device``: the process's device)."""
    from accelerate import PartialState

    chosen = check_device(device) if device is not None else None
    cpu = (chosen.type == "cpu") if chosen is not None else not torch.cuda.is_available()
    state = PartialState(cpu=cpu)
    if state.num_processes > 1 and (chosen is None or (chosen.index is None and chosen.type == state.device.type)):
        return state, state.device
    return state, chosen if chosen is not None else torch.device("cpu")


def load_prior(directory: str, device: str | torch.device = "cpu"):
    """``Prior.from_pretrained`` with the command line's checks (no scalar parameters yet)."""
    from ..models.prior import Prior

    prior = Prior.from_pretrained(directory, device=device)
    if prior.param_names:
        raise ValueError(f"prior {directory} takes scalar parameters {list(prior.param_names)}, which the command "
                         "line cannot pass yet; use diffpde.inference.reconstruct(..., params=...)")
    return prior


def parse_indices(text: str) -> list[int]:
    """``"0"``, ``"0,3,7"``, ``"0-3"`` (inclusive) -> a list of indices."""
    out: list[int] = []
    try:
        for part in text.replace(" ", "").split(","):
            lo, sep, hi = part.partition("-")
            out.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
    except ValueError:
        raise ValueError(f"--index {text!r}: expected indices like 0 or 0,3,7 or 0-3") from None
    if not out:
        raise ValueError(f"--index {text!r} selects no instance")
    return out


def _sampling(args: argparse.Namespace):
    from ..options import parse_key_values
    from .sampling import Sampling

    return Sampling(method=args.method, solver=args.solver, steps=args.steps, samples=args.samples,
                    schedule=args.schedule, seed=args.seed,
                    method_options=parse_key_values(args.method_option, "--method-option"),
                    solver_options=parse_key_values(args.solver_option, "--solver-option"))


def _check_arguments(args: argparse.Namespace, *outputs: str) -> None:
    """Number ranges and output directories, before anything is loaded."""
    for flag in ("steps", "samples", "batch"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    if args.noise_std is not None and not (math.isfinite(args.noise_std) and args.noise_std >= 0):
        raise ValueError(f"--noise-std must be a finite number >= 0, got {args.noise_std}")
    for flag in outputs:
        value = getattr(args, flag)
        if value and not Path(value).resolve().parent.is_dir():
            raise FileNotFoundError(f"--{flag} {value}: the directory {Path(value).resolve().parent} does not exist")


def _fmt(x: float) -> str:
    return f"{x:.4g}" if math.isfinite(x) else str(x)


def _write_json(path: str, value: Any) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=1, allow_nan=True)
        f.write("\n")
    os.replace(tmp, path)


# -- diffpde sample --------------------------------------------------------------------------------


def _observations(args: argparse.Namespace, prior) -> tuple[Any, list[int], dict | None]:
    """``(observations, indices, truth)`` for ``sample``: made from --data, or read and checked."""
    from .evaluation import dataset_provenance, load_instances, observe
    from .observations import Observations, check_provenance

    if args.observe is not None:
        indices = parse_indices(args.index or "0")
        truth = load_instances(args.data, prior, indices)
        observations = observe(prior, truth, args.observe, seed=args.seed, noise_std=args.noise_std or 0.0,
                               keys=indices, provenance=dataset_provenance(args.data, indices))
        return observations, indices, truth
    observations = Observations.load(args.observations)
    indices = parse_indices(args.index) if args.index is not None else None
    check_provenance(observations, getattr(prior, "problem_config", None), indices)
    if not args.data:
        if indices is not None:
            raise ValueError("--index selects instances of --data: give --data TEST.h5 as well")
        return observations, [], None
    if indices is None:
        indices = (observations.provenance or {}).get("indices")
        if indices is None:
            raise ValueError(f"{args.observations} records no instances: give --index to say which instances of "
                             f"{args.data} it observed")
    if len(indices) != observations.batch_size:
        raise ValueError(f"{args.observations} holds {observations.batch_size} observed instance(s) but --index "
                         f"selects {len(indices)}")
    return observations, list(indices), load_instances(args.data, prior, indices)


def run_sample(args: argparse.Namespace) -> int:
    from .evaluation import METRIC_LABELS, problem_of, two_phase_fields
    from .metrics import evaluate
    from .plot import plot_reconstruction
    from .posterior_io import write_posterior
    from .sampling import sample_batches
    from .spec import describe_operator

    if args.observe is not None and not args.data:
        raise ValueError("--observe makes observations of dataset instances: give --data TEST.h5 (and --index)")
    if args.observe is None and args.observations is None:
        return run_generate(args)
    _check_arguments(args, "out", "plot")
    sampling = _sampling(args)
    state, device = process_state(args.device)
    prior = load_prior(args.prior, device)
    problem = problem_of(prior)
    observations, indices, truth = _observations(args, prior)
    likelihood_std = None if args.observe is not None else args.noise_std
    conditions = _conditions(args, prior, indices, truth)
    if conditions:
        posterior = _sample_conditioned(prior, observations, sampling, conditions, keys=indices or None,
                                        batch=args.batch, truth=truth, noise_std=likelihood_std,
                                        progress=not args.quiet, state=state)
    else:
        posterior = sample_batches(prior, observations, sampling, keys=indices or None, batch=args.batch, truth=truth,
                                   noise_std=likelihood_std, progress=not args.quiet, state=state)
    if not state.is_main_process:
        return 0
    metrics = None
    if truth is not None:
        metrics = evaluate(posterior.samples, {n: truth[n] for n in prior.fields}, binary=two_phase_fields(problem))
    d = posterior.diagnostics
    where = f"{problem.name} {'x'.join(map(str, prior.grid_shape))}" if problem is not None else "x".join(map(str, prior.grid_shape))
    print(f"prior {args.prior} ({where}; fields {', '.join(prior.fields)}); method {d['method']}, solver {d['solver']}, "
          f"{d['steps']} steps, K={posterior.num_samples}")
    print(f"observed: {describe_operator(observations.operator)}")
    for b in range(observations.batch_size):
        line = f"instance {indices[b] if indices else b}: misfit {_fmt(float(d['misfit'][b]))}"
        if "pde_residual" in d:
            line += f", PDE residual {_fmt(float(d['pde_residual'][b]))}"
        for name, m in (metrics or {}).items():
            shown = ", ".join(f"{METRIC_LABELS[k]} {_fmt(float(m[k][b]))}"
                              for k in ("rel_l2", "error_rate", "crps", "coverage90") if k in m)
            line += f"; {name}: {shown}"
        print(line)
    print(f"NFE {d.get('nfe')}, VJP {d.get('vjp')}, wall time {d['wall_time']:.3g} s")
    if args.out:
        attrs = {"prior": str(args.prior), "data": str(args.data or ""), "indices": indices, "method": d["method"],
                 "solver": d["solver"], "steps": int(d["steps"]), "schedule": args.schedule,
                 "n_samples": posterior.num_samples, "seed": args.seed, "batch": args.batch,
                 "observe": args.observe or f"file:{args.observations}"}
        write_posterior(args.out, posterior, observations, truth=truth, metrics=metrics, attrs=attrs)
        print(f"wrote {args.out}")
    if args.plot:
        for b in range(observations.batch_size):
            path = args.plot
            if observations.batch_size > 1:
                p = Path(args.plot)
                path = str(p.with_name(f"{p.stem}_{indices[b] if indices else b}{p.suffix}"))
            label = f"instance {indices[b]} of {args.data}" if indices else f"observed instance {b}"
            plot_reconstruction(truth, posterior, observations, path, instance=b, problem=problem,
                                title=f"{label}: {d['method']} / {d['solver']}, {d['steps']} steps, NFE {d.get('nfe')}")
            print(f"wrote {path}")
    return 0


# -- conditions: text, frames, classifier-free guidance -----------------------------------------------


def _conditions(args: argparse.Namespace, prior, indices: list[int], truth: dict | None) -> dict[str, Any]:
    """``{"text", "frames", "guidance_scale"}`` of the command line (only those given), per instance."""
    out: dict[str, Any] = {}
    from_data = args.text_from_data is not None or args.frames_from_data
    if from_data and (truth is None or not indices):
        raise ValueError("--text-from-data and --frames-from-data read the instances of --data: give --data TEST.h5 "
                         "(and --index)")
    if args.text is not None:
        out["text"] = args.text
    elif args.text_from_data is not None:
        from ..data.hdf5 import read_captions

        k = args.text_from_data
        texts = []
        for i in indices:
            phrasings = read_captions(args.data, i)
            if not -len(phrasings) <= k < len(phrasings) or not phrasings[k]:
                raise ValueError(f"--text-from-data {k}: instance {i} of {args.data} has {len(phrasings)} phrasing(s)"
                                 + (f" and phrasing {k} is empty" if -len(phrasings) <= k < len(phrasings) else ""))
            texts.append(phrasings[k])
        out["text"] = texts
    if args.frames_from_data:
        out["frames"] = prior.frames_of(truth)
    if args.guidance_scale is not None:
        if not math.isfinite(args.guidance_scale):
            raise ValueError(f"--guidance-scale must be a finite number, got {args.guidance_scale}")
        if "text" not in out and "frames" not in out:
            raise ValueError("--guidance-scale needs a condition to guide by: --text, --text-from-data or "
                             "--frames-from-data")
        out["guidance_scale"] = args.guidance_scale
    if ("text" in out or "frames" in out) and getattr(prior, "conditioning", None) is None:
        raise ValueError(f"prior {args.prior} has no conditioning encoders: it takes no --text or frames")
    return out


def _rows(conditions: dict[str, Any], lo: int, hi: int) -> dict[str, Any]:
    """The conditions of instances ``lo:hi`` (a single caption applies to all)."""
    out = dict(conditions)
    if isinstance(out.get("text"), list):
        out["text"] = out["text"][lo:hi]
    if "frames" in out:
        out["frames"] = {n: v[lo:hi] for n, v in out["frames"].items()}
    return out


def _to_cpu(posterior):
    from .tasks import Posterior

    move = (lambda v: v.detach().cpu() if isinstance(v, torch.Tensor) else v)
    return Posterior({k: move(v) for k, v in posterior.samples.items()},
                     {k: move(v) for k, v in posterior.diagnostics.items()})


def _sample_conditioned(prior, observations, sampling, conditions: dict[str, Any], *, keys, batch: int, truth,
                        noise_std, progress: bool, state):
    """:func:`~.sampling.sample_batches` with text / frames / guidance bound per batch (same seeds)."""
    from .observations import Observations
    from .sampling import concat_posteriors, map_batches, seeded_generator
    from .tasks import reconstruct

    n = observations.batch_size
    keys = list(range(n)) if keys is None else [int(k) for k in keys]

    def run(lo: int, hi: int):
        part = Observations(observations.operator, observations.values[lo:hi])
        cond = None
        if prior.cond_fields:
            if truth is None:
                raise ValueError(f"the prior is conditioned on {list(prior.cond_fields)}: give --data")
            cond = {name: truth[name][lo:hi] for name in prior.cond_fields}
        try:
            post = reconstruct(prior, part, method=sampling.method, solver=sampling.solver_name, steps=sampling.steps,
                               n_samples=sampling.samples, schedule=sampling.schedule, cond=cond, noise_std=noise_std,
                               generator=seeded_generator(sampling.seed, "sampling", keys[lo]),
                               method_options=dict(sampling.method_options),
                               solver_options=dict(sampling.solver_options),
                               progress=progress and state.is_main_process, **_rows(conditions, lo, hi))
        except FloatingPointError as e:
            raise ValueError(f"sampling diverged ({e}); try more steps, another method or a larger noise std") from None
        return _to_cpu(post)

    return concat_posteriors(map_batches(run, n, batch, state=state, progress=progress and n > batch, desc="batches"))


def _write_generated(path: str, posterior, truth: dict | None, consistency: dict | None, attrs: dict[str, Any]) -> None:
    """Samples ``[B, K, *grid]``, their mean and std, the truth and the consistency errors, written to a
    temporary name and renamed."""
    import h5py
    import numpy as np

    tmp = f"{path}.tmp"
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = "diffpde.generated"
            f.attrs["format_version"] = 1
            for key, value in attrs.items():
                f.attrs[key] = value if isinstance(value, (str, int, float)) else json.dumps(value)
            mean, std = posterior.mean, posterior.std
            for name, s in posterior.samples.items():
                f.create_dataset(f"samples/{name}", data=s.numpy().astype(np.float32), compression="gzip")
                f.create_dataset(f"mean/{name}", data=mean[name].numpy())
                f.create_dataset(f"std/{name}", data=std[name].numpy())
                if truth is not None and name in truth:
                    f.create_dataset(f"truth/{name}", data=torch.as_tensor(truth[name]).numpy())
            for key, value in (consistency or {}).items():
                f.create_dataset(f"consistency/{key}", data=torch.as_tensor(value).numpy())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def run_generate(args: argparse.Namespace) -> int:
    """``diffpde sample`` without observations: trajectories from --text / --frames-from-data alone."""
    from .consistency import generate, physical_consistency, trajectory_field
    from .evaluation import METRIC_LABELS, load_instances, problem_of
    from .metrics import evaluate
    from .sampling import concat_posteriors, map_batches, seeded_generator

    if args.text is None and args.text_from_data is None and not args.frames_from_data:
        raise ValueError("give observations (--observe SPEC with --data, or --observations FILE), or conditions to "
                         "generate from (--text, --text-from-data, --frames-from-data)")
    if args.plot:
        raise ValueError("--plot draws observations: it needs --observe or --observations")
    unused = [flag for flag, given in (("--method-option", args.method_option),
                                       ("--noise-std", args.noise_std is not None)) if given]
    if unused:
        raise ValueError(f"{', '.join(unused)} only apply to sampling from observations")
    _check_arguments(args, "out")
    state, device = process_state(args.device)
    prior = load_prior(args.prior, device)
    problem = problem_of(prior)
    if args.data:
        indices = parse_indices(args.index or "0")
        truth = load_instances(args.data, prior, indices)
    elif args.index is not None:
        raise ValueError("--index selects instances of --data: give --data TEST.h5 as well")
    else:
        indices, truth = [], None
    conditions = _conditions(args, prior, indices, truth)
    n = len(indices) or 1
    keys = indices or [0]
    solver = args.solver or "dpmpp_2m"
    from ..options import parse_key_values

    solver_options = parse_key_values(args.solver_option, "--solver-option")

    def run(lo: int, hi: int):
        rows = _rows(conditions, lo, hi)
        if isinstance(rows.get("text"), str):
            rows["text"] = [rows["text"]] * (hi - lo)
        return _to_cpu(generate(prior, text=rows.get("text"), frames=rows.get("frames"), n_samples=args.samples,
                                solver=solver, steps=args.steps, schedule=args.schedule,
                                guidance_scale=rows.get("guidance_scale"),
                                generator=seeded_generator(args.seed, "sampling", keys[lo]),
                                solver_options=solver_options))

    posterior = concat_posteriors(map_batches(run, n, args.batch, state=state, desc="batches",
                                              progress=not args.quiet and n > args.batch))
    if not state.is_main_process:
        return 0
    metrics = None
    if truth is not None:
        metrics = evaluate(posterior.samples, {name: truth[name] for name in prior.fields})
    consistency = None
    traj = None
    if problem is not None:
        try:
            traj, _ = trajectory_field(problem)
        except ValueError:
            traj = None
    k = posterior.num_samples
    if traj is not None and traj in posterior.samples:
        text = conditions.get("text")
        texts = None if text is None else [t for t in ([text] * n if isinstance(text, str) else text) for _ in range(k)]
        checked = physical_consistency(problem, {traj: posterior.samples[traj]}, texts=texts)
        consistency = {"rel_l2": checked["rel_l2"].reshape(n, k)}
    d = posterior.diagnostics
    given = " and ".join(w for w, c in (("text", "text" in conditions), ("frames", "frames" in conditions)) if c)
    grid = "x".join(map(str, prior.grid_shape))
    where = f"{problem.name} {grid}" if problem is not None else grid
    scale = conditions.get("guidance_scale")
    print(f"prior {args.prior} ({where}; fields {', '.join(prior.fields)}); generated from {given}"
          f"{f', guidance scale {scale:g}' if scale is not None else ''}; solver {d['solver']}, {d['steps']} steps, "
          f"K={k}")
    for b in range(n):
        label = f"instance {indices[b]}" if indices else "caption"
        parts = []
        for name, m in (metrics or {}).items():
            parts.append(f"{name}: " + ", ".join(f"{METRIC_LABELS[key]} {_fmt(float(m[key][b]))}"
                                                 for key in ("rel_l2", "crps") if key in m))
        if consistency is not None:
            value = float(consistency["rel_l2"][b].mean())
            parts.append(f"physical consistency (rel. L2 to the re-simulation) {_fmt(value)}")
        print(f"{label}: " + "; ".join(parts) if parts else label)
    print(f"NFE {d.get('nfe')}, wall time {d['wall_time']:.3g} s ({d['wall_time'] / (n * k):.3g} s per sample)")
    if args.out:
        text = conditions.get("text")
        attrs = {"prior": str(args.prior), "data": str(args.data or ""), "indices": indices, "solver": d["solver"],
                 "steps": int(d["steps"]), "schedule": args.schedule, "n_samples": k, "seed": args.seed,
                 "batch": args.batch, "text": text if text is not None else "",
                 "frames_from_data": int(bool(args.frames_from_data)),
                 "guidance_scale": scale if scale is not None else "", "nfe": d.get("nfe") or 0,
                 "wall_time": float(d["wall_time"])}
        _write_generated(args.out, posterior, truth, consistency, attrs)
        print(f"wrote {args.out}")
    return 0


# -- diffpde evaluate ------------------------------------------------------------------------------


def run_evaluate(args: argparse.Namespace) -> int:
    from .evaluation import evaluate_dataset

    _check_arguments(args, "json")
    sampling = _sampling(args)
    state, device = process_state(args.device)
    prior = load_prior(args.prior, device)
    indices = parse_indices(args.index) if args.index is not None else None
    result = evaluate_dataset(prior, args.data, args.task, observe=args.observe, n_test=args.n_test, indices=indices,
                              batch=args.batch, sampling=sampling, noise_std=args.noise_std or 0.0,
                              progress=not args.quiet, state=state)
    result.prior = str(args.prior)
    if state.is_main_process:
        print(result.format_table())
        if args.json:
            _write_json(args.json, result.to_dict())
            print(f"wrote {args.json}")
    return 0


def run(args: argparse.Namespace) -> int:
    return run_evaluate(args) if args.command == "evaluate" else run_sample(args)
