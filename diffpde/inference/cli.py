"""``diffpde sample`` and ``diffpde evaluate``: posterior sampling and its evaluation from the command line.

    diffpde sample --prior runs/darcy --data test.h5 --index 0,1 --observe u:0.03 --out post.h5 --plot post.png
    diffpde sample --prior runs/darcy --observations obs.h5 --out post.h5
    diffpde evaluate --prior runs/darcy --data test.h5 --task inverse --n-test 100 --observe 0.03 --json inverse.json

Observation specs (``--observe``) are described in :mod:`diffpde.inference.spec` (``u:0.03``,
``u:500``, ``a:1.0,u:0.03@0.01``). For ``evaluate --task forward|inverse`` a bare amount (``0.03``,
``500``, ``1.0``, optionally ``@NOISE``) applies to the observed fields of the task: the input
fields of the PDE family (forward) or its output fields (inverse).

Posterior file written by ``sample --out`` (HDF5, ``format = "diffpde.posterior"``, written to a
temporary name and renamed)::

    /                  attrs: format, format_version, prior, data, indices (JSON), method, solver,
                              steps, schedule, n_samples, seed, observe, diagnostics (JSON of the
                              scalar diagnostics), diffpde_observations (JSON of the operator)
    /values            [B, m] the observations (physical units); with the root attribute and
                       /coordinates this is also an observations file (``Observations.load``)
    /coordinates/<f>   [m_f, ndim] grid indices of the observed nodes of field f
    /samples/<f>       [B, K, *grid] posterior samples (physical units)
    /mean/<f>, /std/<f> [B, *grid]
    /truth/<f>         [B, *grid] (when the observations were made from a dataset)
    /diagnostics/<d>   [B] per-instance diagnostics (misfit, pde_residual)
    /metrics/<f>/<m>   [B] metrics against the truth (when known)
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

COMMAND_NAMES = ("sample", "evaluate")
POSTERIOR_FORMAT = "diffpde.posterior"
POSTERIOR_FORMAT_VERSION = 1
METRIC_LABELS = {
    "rel_l2": "rel L2 of mean", "sample_rel_l2": "rel L2 per sample", "error_rate": "error rate",
    "crps": "CRPS", "spread_skill": "spread/skill", "coverage50": "coverage 50%", "coverage90": "coverage 90%",
}
DIAGNOSTIC_LABELS = {"misfit": "misfit (chi2/m)", "pde_residual": "PDE residual (RMS)"}


# -- parsers ---------------------------------------------------------------------------------------


def _key_values(items: Sequence[str], what: str) -> dict[str, Any]:
    """``["cg_iters=8", "zeta_obs=1e2"]`` -> ``{"cg_iters": 8, "zeta_obs": 100.0}`` (values in YAML)."""
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{what} {item!r}: expected KEY=VALUE")
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ValueError(f"{what} {item!r}: the value is not valid YAML ({e})") from None
    return out


def _add_sampling_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prior", required=True, metavar="DIR", help="a saved prior (Prior.save_pretrained)")
    p.add_argument("--method", default="covariance", help="covariance (default), dps, projection, tds, diffusionpde")
    p.add_argument("--solver", default=None, help="samplers solver (default: dpmpp_2m_sde for covariance, heun for diffusionpde, "
                   "dpmpp_2m otherwise)")
    p.add_argument("--steps", type=int, default=20, help="solver steps (default 20)")
    p.add_argument("--samples", type=int, default=8, metavar="K", help="posterior samples per instance (default 8)")
    p.add_argument("--schedule", default="karras", help="sigma schedule (default karras)")
    p.add_argument("--seed", type=int, default=0, help="seed of the observation points, noise and sampling (default 0)")
    p.add_argument("--noise-std", type=float, default=None, metavar="X",
                   help="observation noise std in physical units (default 0; with --observations: the file's)")
    p.add_argument("--method-option", action="append", default=[], metavar="KEY=VALUE",
                   help="option of the method (repeatable), e.g. cg_iters=8 or zeta_obs=100")
    p.add_argument("--solver-option", action="append", default=[], metavar="KEY=VALUE", help="option of the solver (repeatable)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")


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
        src = p.add_mutually_exclusive_group(required=True)
        src.add_argument("--observe", metavar="SPEC", help="observe instances of --data, e.g. u:0.03 or a:1.0,u:500@0.01")
        src.add_argument("--observations", metavar="FILE.h5", help="an observations file (Observations.save)")
        p.add_argument("--data", metavar="TEST.h5", help="dataset file the instances come from (truth for metrics)")
        p.add_argument("--index", default="0", help="instances of --data: 0 or 0,3,7 or 0-3 (default 0)")
        _add_sampling_options(p)
        p.add_argument("--out", metavar="FILE.h5", help="write the posterior (samples, mean, std, diagnostics, observations)")
        p.add_argument("--plot", metavar="FILE.png", help="write a figure (one file per instance when several)")
        return p
    if name == "evaluate":
        p = subparsers.add_parser("evaluate", help="evaluate a prior on forward / inverse / reconstruction tasks",
                                  description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--data", required=True, metavar="TEST.h5", help="test dataset file")
        p.add_argument("--task", required=True, choices=("forward", "inverse", "reconstruct"))
        p.add_argument("--n-test", type=int, default=None, metavar="N", help="first N instances of --data (default all)")
        p.add_argument("--observe", default="0.03", metavar="SPEC",
                       help="a spec (u:0.03) or an amount for the task's observed fields (default 0.03)")
        p.add_argument("--batch", type=int, default=4, metavar="B", help="instances per sampling batch (default 4)")
        _add_sampling_options(p)
        p.add_argument("--json", metavar="FILE", help="write the results as JSON")
        p.add_argument("--quiet", action="store_true", help="no progress bar")
        return p
    raise ValueError(f"diffpde.inference.cli serves {COMMAND_NAMES}; cannot add {name!r}")


# -- building blocks -------------------------------------------------------------------------------


def load_prior(directory: str, device: str = "cpu"):
    """``Prior.from_pretrained`` with the command line's checks (no scalar parameters yet)."""
    from ..models.prior import Prior

    prior = Prior.from_pretrained(directory, device=device)
    if prior.param_names:
        raise ValueError(f"prior {directory} takes scalar parameters {list(prior.param_names)}, which the command "
                         "line cannot pass yet; use diffpde.inference.reconstruct(..., params=...)")
    return prior


def problem_of(prior) -> Any:
    """The prior's PDE family instance, or ``None``."""
    try:
        return prior.problem
    except ValueError:
        return None


def binary_fields(problem: Any) -> dict[str, tuple[float, float]]:
    """Two-phase fields for the error rate: Darcy's ``a`` with ``(a_low, a_high)``."""
    p = getattr(problem, "parameters", None) or {}
    if "a_low" in p and "a_high" in p:
        return {"a": (float(p["a_low"]), float(p["a_high"]))}
    return {}


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


def load_instances(path: str, prior, indices: Sequence[int]) -> dict[str, torch.Tensor]:
    """Fields of the prior (generated and conditioning) of instances ``indices`` of a dataset file, float64."""
    from ..data import read_fields, read_info

    info = read_info(path)
    config = getattr(prior, "problem_config", None) or {}
    if config and (config.get("name"), config.get("resolution")) != (info.config.get("name"), info.config.get("resolution")):
        raise ValueError(f"{path} holds {info.problem} at resolution {info.config.get('resolution')}, but the prior was "
                         f"trained on {config.get('name')} at resolution {config.get('resolution')}")
    names = tuple(prior.fields) + tuple(prior.cond_fields)
    missing = [n for n in names if n not in info.field_names]
    if missing:
        raise ValueError(f"{path} has no field(s) {missing} that the prior needs; fields in the file: "
                         f"{', '.join(info.field_names)}")
    bad = [i for i in indices if not 0 <= i < info.n_samples]
    if bad:
        raise ValueError(f"instance index {bad[0]} is out of range: {path} has {info.n_samples} instances "
                         f"(0..{info.n_samples - 1})")
    fields = read_fields(path, names, list(indices))
    out = {}
    for name, value in fields.items():
        if tuple(value.shape[1:]) != tuple(prior.grid_shape):
            raise ValueError(f"{path}: field {name!r} has shape {tuple(value.shape[1:])}, the prior's grid is "
                             f"{tuple(prior.grid_shape)}")
        out[name] = torch.as_tensor(value, dtype=torch.float64)
    return out


def observe(prior, truth: Mapping[str, torch.Tensor], spec: str, seed: int = 0, noise_std: float = 0.0):
    """Observations of ``truth`` by the operator of ``spec`` (noise drawn with ``seed``)."""
    from .observations import Observations
    from .spec import parse_observe

    op = parse_observe(spec, prior, seed=seed, noise_std=noise_std)
    return Observations(op, op.measure(truth, generator=torch.Generator().manual_seed(seed)))


def _cond(prior, truth: Mapping[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
    if not prior.cond_fields:
        return None
    if truth is None:
        raise ValueError(f"the prior is conditioned on {list(prior.cond_fields)}: give --data and --index to supply them")
    return {n: truth[n] for n in prior.cond_fields}


def _sample(prior, observations, args: argparse.Namespace, cond=None, generator=None, noise_std=None):
    from .tasks import default_solver, reconstruct

    solver = args.solver or default_solver(args.method)
    for name, value in (("--steps", args.steps), ("--samples", args.samples)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    try:
        return reconstruct(prior, observations, method=args.method, solver=solver, steps=args.steps,
                           n_samples=args.samples, schedule=args.schedule, cond=cond, noise_std=noise_std,
                           generator=generator, seed=args.seed,
                           method_options=_key_values(args.method_option, "--method-option"),
                           solver_options=_key_values(args.solver_option, "--solver-option"))
    except FloatingPointError as e:
        raise ValueError(f"sampling diverged ({e}); try more --steps, another --method or a larger --noise-std") from None


def _scalar(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    return value


def write_posterior(path: str, posterior, observations, *, truth=None, metrics=None, attrs=None) -> str:
    """Write the posterior file described in the module docstring (temporary name, then rename)."""
    import h5py

    from .observations import MaskObservation, StackedObservation

    tmp = f"{path}.tmp"
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = POSTERIOR_FORMAT
            f.attrs["format_version"] = POSTERIOR_FORMAT_VERSION
            for key, value in (attrs or {}).items():
                f.attrs[key] = value if isinstance(value, (str, int, float)) else json.dumps(value)
            op = observations.operator
            f.attrs["diffpde_observations"] = json.dumps(op.to_dict())
            f.create_dataset("values", data=observations.values.detach().cpu().numpy())
            for o in (op.operators if isinstance(op, StackedObservation) else (op,)):
                if isinstance(o, MaskObservation):
                    f.create_dataset(f"coordinates/{o.field}", data=o.coordinates())
            mean, std = posterior.mean, posterior.std
            for name, s in posterior.samples.items():
                f.create_dataset(f"samples/{name}", data=s.cpu().numpy().astype(np.float32), compression="gzip")
                f.create_dataset(f"mean/{name}", data=mean[name].cpu().numpy())
                f.create_dataset(f"std/{name}", data=std[name].cpu().numpy())
                if truth is not None and name in truth:
                    f.create_dataset(f"truth/{name}", data=truth[name].cpu().numpy())
            scalars = {}
            for key, value in posterior.diagnostics.items():
                if isinstance(value, torch.Tensor) and value.ndim == 1 and value.numel() == observations.batch_size:
                    f.create_dataset(f"diagnostics/{key}", data=value.cpu().numpy())
                else:
                    scalars[key] = _scalar(value)
            f.attrs["diagnostics"] = json.dumps(scalars)
            for name, values in (metrics or {}).items():
                for metric, v in values.items():
                    f.create_dataset(f"metrics/{name}/{metric}", data=v.cpu().numpy())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _fmt(x: float) -> str:
    return f"{x:.4g}" if math.isfinite(x) else str(x)


# -- diffpde sample --------------------------------------------------------------------------------


def run_sample(args: argparse.Namespace) -> int:
    from .metrics import evaluate
    from .observations import Observations
    from .plot import plot_reconstruction
    from .spec import describe_operator

    if args.observe is not None and not args.data:
        raise ValueError("--observe makes observations of dataset instances: give --data TEST.h5 (and --index)")
    for flag, value in (("--out", args.out), ("--plot", args.plot)):
        if value and not Path(value).resolve().parent.is_dir():
            raise FileNotFoundError(f"{flag} {value}: the directory {Path(value).resolve().parent} does not exist")
    prior = load_prior(args.prior, args.device)
    problem = problem_of(prior)
    indices = parse_indices(args.index) if args.data else []
    truth = load_instances(args.data, prior, indices) if args.data else None
    if args.observe is not None:
        observations = observe(prior, truth, args.observe, args.seed, args.noise_std or 0.0)
        likelihood_std = None
    else:
        observations = Observations.load(args.observations)
        likelihood_std = args.noise_std
        if truth is not None and len(indices) != observations.batch_size:
            raise ValueError(f"{args.observations} holds {observations.batch_size} observed instance(s) but --index "
                             f"selects {len(indices)}")
    posterior = _sample(prior, observations, args, cond=_cond(prior, truth), noise_std=likelihood_std)

    metrics = None
    if truth is not None:
        metrics = evaluate(posterior.samples, {n: truth[n] for n in prior.fields}, binary=binary_fields(problem))
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
                 "n_samples": posterior.num_samples, "seed": args.seed,
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


# -- diffpde evaluate ------------------------------------------------------------------------------


def task_fields(prior, task: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(observed, target)`` generated fields of a task: forward observes the PDE's input fields and
    targets its outputs, inverse the other way round, reconstruct has every field as target."""
    fields = tuple(prior.fields)
    if task == "reconstruct":
        return fields, fields
    problem = problem_of(prior)
    if problem is None:
        raise ValueError(f"--task {task} needs a prior with a PDE family (input/output fields); use --task reconstruct")
    role = {n: problem.field(n).role for n in fields}
    inputs = tuple(n for n in fields if role[n] == "input")
    outputs = tuple(n for n in fields if role[n] == "output")
    observed, target = (inputs, outputs) if task == "forward" else (outputs, inputs)
    if not observed or not target:
        raise ValueError(f"--task {task}: the prior generates {list(fields)} ({', '.join(f'{n}: {r}' for n, r in role.items())}) "
                         f"and so has no {'input' if not (inputs) else 'output'} field to "
                         f"{'observe' if not observed else 'infer'}; use --task reconstruct with an explicit --observe")
    return observed, target


def _summary(values: list[float]) -> dict[str, Any]:
    a = np.asarray(values, dtype=np.float64)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if a.size > 1 else 0.0, "values": a.tolist()}


def evaluate_prior(prior, data: str, args: argparse.Namespace, progress: bool = True) -> dict[str, Any]:
    """Run ``args.task`` over the first ``args.n_test`` instances of ``data``; return the results dict.

    ``args`` holds the options of ``diffpde evaluate`` (task, observe, n_test, batch, method, solver,
    steps, samples, schedule, seed, noise_std, method/solver options). One observation operator
    (same nodes) serves every instance; measurement noise and sampling are drawn from generators
    seeded with ``seed``. Results: per field and metric the mean, the std over instances (ddof 1)
    and the values; the same for the diagnostics (misfit, PDE residual); NFE, VJPs and wall time
    per instance (the wall time of a batch divided by its size).
    """
    from tqdm.auto import tqdm

    from ..data import read_info
    from .metrics import evaluate
    from .observations import Observations
    from .spec import describe_operator, expand_amount, parse_observe
    from .tasks import default_solver

    observed, target = task_fields(prior, args.task)
    spec = expand_amount(args.observe, observed)
    noise = args.noise_std or 0.0
    operator = parse_observe(spec, prior, seed=args.seed, noise_std=noise)
    n_total = read_info(data).n_samples
    n = n_total if args.n_test is None else args.n_test
    if not 0 < n <= n_total:
        raise ValueError(f"--n-test must be in [1, {n_total}] ({data} has {n_total} instances), got {n}")
    if args.batch < 1:
        raise ValueError(f"--batch must be >= 1, got {args.batch}")
    problem = problem_of(prior)
    measure_gen = torch.Generator().manual_seed(args.seed)
    sample_gen = torch.Generator().manual_seed(args.seed)
    per_metric: dict[str, dict[str, list[float]]] = {}
    diagnostics: dict[str, list[float]] = {}
    cost: dict[str, list[float]] = {"nfe": [], "vjp": [], "wall_time": []}
    for start in tqdm(range(0, n, args.batch), desc=f"{args.task}", unit="batch", disable=None if progress else True):
        indices = list(range(start, min(n, start + args.batch)))
        truth = load_instances(data, prior, indices)
        observations = Observations(operator, operator.measure(truth, generator=measure_gen))
        posterior = _sample(prior, observations, args, cond=_cond(prior, truth), generator=sample_gen)
        results = evaluate(posterior.samples, {k: truth[k] for k in prior.fields}, binary=binary_fields(problem))
        for name in target + tuple(f for f in prior.fields if f not in target):
            for metric, values in results[name].items():
                per_metric.setdefault(name, {}).setdefault(metric, []).extend(values.tolist())
        d = posterior.diagnostics
        for key in ("misfit", "pde_residual"):
            if key in d:
                diagnostics.setdefault(key, []).extend(torch.as_tensor(d[key]).tolist())
        cost["nfe"] += [float(d.get("nfe", float("nan")))] * len(indices)
        cost["vjp"] += [float(d.get("vjp", float("nan")))] * len(indices)
        cost["wall_time"] += [d["wall_time"] / len(indices)] * len(indices)
    return {
        "task": args.task, "prior": str(args.prior), "data": str(data),
        "problem": getattr(prior, "problem_config", None), "n_test": n, "method": args.method,
        "solver": args.solver or default_solver(args.method), "steps": args.steps,
        "samples": args.samples, "batch": args.batch, "seed": args.seed, "observe": spec,
        "observed": describe_operator(operator), "targets": list(target),
        "metrics": {name: {k: _summary(v) for k, v in m.items()} for name, m in per_metric.items()},
        "diagnostics": {k: _summary(v) for k, v in diagnostics.items()},
        "cost": {"nfe": _summary(cost["nfe"]), "vjp": _summary(cost["vjp"]),
                 "wall_time_per_instance": _summary(cost["wall_time"])},
    }


def format_table(results: Mapping[str, Any]) -> str:
    """The results of :func:`evaluate_prior` as a plain-text table (mean and std over instances)."""
    lines = [f"{results['task']} on {results['n_test']} instance(s) of {results['data']}: method {results['method']}, "
             f"solver {results['solver']}, {results['steps']} steps, K={results['samples']}",
             f"observed: {results['observed']}; target: {', '.join(results['targets'])}", ""]
    rows = [("field", "metric", "mean", "std")]
    for name, metrics in results["metrics"].items():
        label = name + (" (target)" if name in results["targets"] else "")
        for key in METRIC_LABELS:
            if key in metrics:
                rows.append((label, METRIC_LABELS[key], _fmt(metrics[key]["mean"]), _fmt(metrics[key]["std"])))
                label = ""
    for key, value in results["diagnostics"].items():
        rows.append(("-", DIAGNOSTIC_LABELS.get(key, key), _fmt(value["mean"]), _fmt(value["std"])))
    c = results["cost"]
    rows.append(("-", "NFE per instance", _fmt(c["nfe"]["mean"]), _fmt(c["nfe"]["std"])))
    rows.append(("-", "VJP per instance", _fmt(c["vjp"]["mean"]), _fmt(c["vjp"]["std"])))
    rows.append(("-", "wall time per instance (s)", _fmt(c["wall_time_per_instance"]["mean"]),
                 _fmt(c["wall_time_per_instance"]["std"])))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for k, r in enumerate(rows):
        lines.append(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]:>{widths[3]}}")
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run_evaluate(args: argparse.Namespace) -> int:
    if args.json and not Path(args.json).resolve().parent.is_dir():
        raise FileNotFoundError(f"--json {args.json}: the directory {Path(args.json).resolve().parent} does not exist")
    prior = load_prior(args.prior, args.device)
    results = evaluate_prior(prior, args.data, args, progress=not args.quiet)
    print(format_table(results))
    if args.json:
        tmp = f"{args.json}.tmp"
        with open(tmp, "w") as f:
            json.dump(results, f, indent=1, allow_nan=True)
            f.write("\n")
        os.replace(tmp, args.json)
        print(f"wrote {args.json}")
    return 0


def run(args: argparse.Namespace) -> int:
    return run_evaluate(args) if args.command == "evaluate" else run_sample(args)
