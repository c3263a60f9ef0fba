"""Evaluation over a dataset: instances, task fields, observations, batched sampling and metrics.

    result = evaluate_dataset(prior, "test.h5", "inverse", observe="0.03", n_test=50,
                              sampling=Sampling(steps=50, samples=8))
    print(result.format_table())
    json.dump(result.to_dict(), f)            # the JSON of ``diffpde evaluate --json``

Tasks: ``forward`` observes the PDE family's input fields and infers its outputs, ``inverse`` the
other way round, ``reconstruct`` observes what the spec says and scores every field. One
observation operator (the same nodes, drawn with the seed) serves every instance; measurement
noise and sampling are seeded per instance and per batch, and the batches are spread over the
processes of ``accelerate launch`` with the single-process result (see :mod:`.sampling`).
Datasets are checked against the prior: problem, resolution, every PDE parameter and the fields.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .metrics import evaluate
from .observations import ObservationOperator, Observations
from .sampling import Sampling, map_batches, measure, resolve_state, sample_posterior, seeded_generator
from .spec import describe_operator, expand_amount, parse_observe

__all__ = [
    "TASKS", "EvaluationResult", "check_dataset", "dataset_provenance", "evaluate_dataset", "format_table",
    "load_instances", "observe", "problem_of", "select_instances", "task_fields", "two_phase_fields",
]

TASKS = ("forward", "inverse", "reconstruct")
METRIC_LABELS = {
    "rel_l2": "rel L2 of mean", "sample_rel_l2": "rel L2 per sample", "error_rate": "error rate",
    "crps": "CRPS", "spread_skill": "spread/skill", "coverage50": "coverage 50%", "coverage90": "coverage 90%",
}
DIAGNOSTIC_LABELS = {"misfit": "misfit (chi2/m)", "pde_residual": "PDE residual (RMS)"}


# -- the prior's problem and the task ---------------------------------------------------------------


def problem_of(prior: Any) -> Any:
    """The prior's PDE family instance, or ``None`` for a prior without one."""
    try:
        return prior.problem
    except (ValueError, AttributeError):
        return None


def two_phase_fields(prior_or_problem: Any) -> dict[str, tuple[float, float]]:
    """``{field: (low, high)}`` of the fields the PDE family declares two-phase (``PDE.two_phase_fields``)."""
    problem = prior_or_problem if hasattr(prior_or_problem, "two_phase_fields") else problem_of(prior_or_problem)
    return dict(problem.two_phase_fields()) if problem is not None else {}


def task_fields(prior: Any, task: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(observed, target)`` generated fields of ``task``: ``forward`` observes the PDE's input fields
    and targets its outputs, ``inverse`` the other way round, ``reconstruct`` targets every field."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; tasks: {', '.join(TASKS)}")
    fields = tuple(prior.fields)
    if task == "reconstruct":
        return fields, fields
    problem = problem_of(prior)
    if problem is None:
        raise ValueError(f"task {task} needs a prior with a PDE family (input/output fields); use task reconstruct")
    role = {n: problem.field(n).role for n in fields}
    inputs = tuple(n for n in fields if role[n] == "input")
    outputs = tuple(n for n in fields if role[n] == "output")
    observed, target = (inputs, outputs) if task == "forward" else (outputs, inputs)
    if not observed or not target:
        raise ValueError(f"task {task}: the prior generates {list(fields)} ({', '.join(f'{n}: {r}' for n, r in role.items())}) "
                         f"and so has no {'input' if not inputs else 'output'} field to "
                         f"{'observe' if not observed else 'infer'}; use task reconstruct with an explicit observation spec")
    return observed, target


# -- dataset instances ------------------------------------------------------------------------------


def _json(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))


def check_dataset(path: str, prior: Any):
    """The dataset's :class:`~diffpde.data.DatasetInfo` after checking that it fits the prior.

    The problem name, resolution and every PDE parameter (family defaults filled in) must equal the
    prior's, and the file must hold every field the prior generates or is conditioned on.
    """
    from ..data import read_info

    info = read_info(path)
    config = _json(getattr(prior, "problem_config", None) or {})
    if config:
        made = _json(info.config)
        if (config.get("name"), config.get("resolution")) != (made.get("name"), made.get("resolution")):
            raise ValueError(f"{path} holds {made.get('name')} at resolution {made.get('resolution')}, but the prior "
                             f"was trained on {config.get('name')} at resolution {config.get('resolution')}")
        problem = problem_of(prior)
        defaults = _json(dict(getattr(type(problem), "defaults", {}) or {}))
        ours, theirs = {**defaults, **config.get("parameters", {})}, {**defaults, **made.get("parameters", {})}
        diff = [k for k in sorted(set(ours) | set(theirs)) if ours.get(k, "(not recorded)") != theirs.get(k, "(not recorded)")]
        if diff:
            pairs = ", ".join(f"{k} = {theirs.get(k, '(not recorded)')!r} (data) vs {ours.get(k, '(not recorded)')!r} (prior)"
                              for k in diff)
            raise ValueError(f"{path} was generated with other {made.get('name')} parameters than the prior's: {pairs}")
    names = tuple(prior.fields) + tuple(getattr(prior, "cond_fields", ()))
    missing = [n for n in names if n not in info.field_names]
    if missing:
        raise ValueError(f"{path} has no field(s) {missing} that the prior needs; fields in the file: "
                         f"{', '.join(info.field_names)}")
    return info


def select_instances(n_total: int, n_test: int | None = None, indices: Sequence[int] | None = None,
                     where: str = "the dataset") -> list[int]:
    """The instance indices to evaluate: ``indices``, or the first ``n_test`` (default all) of ``n_total``."""
    if indices is not None and n_test is not None:
        raise ValueError("give either n_test or indices, not both")
    if indices is None:
        n = n_total if n_test is None else n_test
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 0 < n <= n_total:
            raise ValueError(f"n_test must be in [1, {n_total}] ({where} has {n_total} instances), got {n}")
        return list(range(int(n)))
    out = [int(i) for i in indices]
    if not out:
        raise ValueError("no instance selected")
    bad = [i for i in out if not 0 <= i < n_total]
    if bad:
        raise ValueError(f"instance index {bad[0]} is out of range: {where} has {n_total} instances (0..{n_total - 1})")
    return out


def load_instances(path: str, prior: Any, indices: Sequence[int]) -> dict[str, torch.Tensor]:
    """Fields of the prior (generated and conditioning) of instances ``indices`` of a dataset file,
    float64 ``{name: [len(indices), *grid]}``, after :func:`check_dataset`."""
    from ..data import read_fields

    info = check_dataset(path, prior)
    indices = select_instances(info.n_samples, indices=indices, where=str(path))
    names = tuple(prior.fields) + tuple(getattr(prior, "cond_fields", ()))
    out = {}
    for name, value in read_fields(path, names, indices).items():
        if tuple(value.shape[1:]) != tuple(prior.grid_shape):
            raise ValueError(f"{path}: field {name!r} has shape {tuple(value.shape[1:])}, the prior's grid is "
                             f"{tuple(prior.grid_shape)}")
        out[name] = torch.as_tensor(value, dtype=torch.float64)
    return out


def dataset_provenance(path: str, indices: Sequence[int]) -> dict[str, Any]:
    """The provenance record of observations of instances ``indices`` of dataset ``path``."""
    from ..data import read_info

    return {"problem": _json(read_info(path).config), "data": str(path), "indices": [int(i) for i in indices]}


# -- observations -----------------------------------------------------------------------------------


def observe(prior: Any, truth: Mapping[str, torch.Tensor], spec: str | ObservationOperator, *, seed: int = 0,
            noise_std: float = 0.0, keys: Sequence[int] | None = None,
            provenance: Mapping[str, Any] | None = None) -> Observations:
    """Observations of ``truth`` ``{field: [B, *grid]}`` by the operator of ``spec`` (nodes drawn with
    ``seed``, see :mod:`.spec`), with the noise of row ``b`` seeded by instance key ``keys[b]``
    (default ``b``); ``provenance`` is stored with them."""
    op = spec if isinstance(spec, ObservationOperator) else parse_observe(spec, prior, seed=seed, noise_std=noise_std)
    b = next(iter(truth.values())).shape[0]
    keys = list(range(b)) if keys is None else list(keys)
    if len(keys) != b:
        raise ValueError(f"{len(keys)} instance keys for {b} instances")
    return Observations(op, measure(op, truth, seed=seed, keys=keys), provenance)


# -- evaluation over a dataset ----------------------------------------------------------------------


def _summary(values: Sequence[float]) -> dict[str, Any]:
    a = np.asarray(values, dtype=np.float64)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if a.size > 1 else 0.0, "values": a.tolist()}


def _fmt(x: float) -> str:
    return f"{x:.4g}" if math.isfinite(x) else str(x)


@dataclass
class EvaluationResult:
    """Per-instance metrics, diagnostics and cost of one task over dataset instances.

    metrics: ``{field: {metric: [n]}}`` (target fields first); diagnostics: ``{"misfit" | "pde_residual": [n]}``;
    cost: ``{"nfe", "vjp", "wall_time_per_instance": [n]}`` (a batch's wall time divided by its size).
    """

    task: str
    data: str
    indices: list[int]
    observe: str
    operator: ObservationOperator
    targets: tuple[str, ...]
    sampling: Sampling
    batch: int
    noise_std: float
    problem: dict[str, Any] | None
    metrics: dict[str, dict[str, np.ndarray]]
    diagnostics: dict[str, np.ndarray]
    cost: dict[str, np.ndarray]
    prior: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready results (the format of ``diffpde evaluate --json``): settings, and per
        field and metric the mean, the std over instances (ddof 1) and the values."""
        s = self.sampling
        return {
            "task": self.task, "prior": self.prior, "data": self.data, "problem": self.problem,
            "n_test": len(self.indices), "indices": list(self.indices), "method": s.method, "solver": s.solver_name,
            "steps": s.steps, "samples": s.samples, "schedule": s.schedule, "batch": self.batch, "seed": s.seed,
            "noise_std": self.noise_std, "method_options": _json(dict(s.method_options)),
            "solver_options": _json(dict(s.solver_options)), "observe": self.observe,
            "observed": describe_operator(self.operator), "targets": list(self.targets),
            "metrics": {name: {k: _summary(v) for k, v in m.items()} for name, m in self.metrics.items()},
            "diagnostics": {k: _summary(v) for k, v in self.diagnostics.items()},
            "cost": {k: _summary(v) for k, v in self.cost.items()},
        }

    def format_table(self) -> str:
        """A plain-text table of the means and stds over instances."""
        return format_table(self.to_dict())


def format_table(results: Mapping[str, Any]) -> str:
    """The table of :meth:`EvaluationResult.to_dict` results (also of a ``diffpde evaluate --json`` file)."""
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
    for key, label in (("nfe", "NFE per instance"), ("vjp", "VJP per instance"),
                       ("wall_time_per_instance", "wall time per instance (s)")):
        c = results["cost"][key]
        rows.append(("-", label, _fmt(c["mean"]), _fmt(c["std"])))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for k, r in enumerate(rows):
        lines.append(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]:>{widths[3]}}")
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def evaluate_dataset(prior: Any, data: str, task: str, *, observe: str = "0.03", n_test: int | None = None,
                     indices: Sequence[int] | None = None, batch: int = 4, sampling: Sampling | None = None,
                     noise_std: float = 0.0, progress: bool = False, state: Any = None) -> EvaluationResult:
    """Run ``task`` over instances of the dataset file ``data`` and score the posteriors against the truth.

    Arguments:
        prior:    a :class:`~diffpde.models.prior.Prior` of the dataset's problem.
        task:     ``forward``, ``inverse`` or ``reconstruct``.
        observe:  an observation spec (``"u:0.03"``) or, for forward / inverse, an amount
                  (``"0.03"``, ``"500@0.01"``) applied to the task's observed fields.
        n_test / indices: the first ``n_test`` instances (default all) or these instances.
        batch:    instances per sampling batch (seeding: :mod:`.sampling`).
        sampling: method, solver, steps, samples, schedule, seed and options.
        noise_std: measurement noise (physical units) of spec items without ``@NOISE``; the
                  likelihood uses the operator's noise.
        progress: progress bars (batches on a terminal, and solver steps).
        state:    an ``accelerate.PartialState`` (default: the process's).
    One observation operator (same nodes) serves every instance. Two-phase fields of the PDE
    family (``PDE.two_phase_fields``) also get the error rate.
    """
    sampling = sampling or Sampling()
    observed, target = task_fields(prior, task)
    spec = expand_amount(observe, observed)
    operator = parse_observe(spec, prior, seed=sampling.seed, noise_std=noise_std)
    info = check_dataset(data, prior)
    chosen = select_instances(info.n_samples, n_test, indices, where=str(data))
    two_phase = two_phase_fields(prior)
    order = target + tuple(f for f in prior.fields if f not in target)
    state = resolve_state(state)

    def run(lo: int, hi: int) -> dict[str, Any]:
        keys = chosen[lo:hi]
        truth = load_instances(data, prior, keys)
        observations = Observations(operator, measure(operator, truth, seed=sampling.seed, keys=keys))
        posterior = sample_posterior(prior, observations, sampling, truth=truth,
                                     generator=seeded_generator(sampling.seed, "sampling", keys[0]),
                                     progress=progress and state.is_main_process)
        results = evaluate(posterior.samples, {k: truth[k] for k in prior.fields}, binary=two_phase)
        d, b = posterior.diagnostics, len(keys)
        return {"metrics": {n: {k: v.tolist() for k, v in results[n].items()} for n in order if n in results},
                "diagnostics": {k: torch.as_tensor(d[k]).tolist() for k in DIAGNOSTIC_LABELS if k in d},
                "cost": {"nfe": [float(d.get("nfe", math.nan))] * b, "vjp": [float(d.get("vjp", math.nan))] * b,
                         "wall_time_per_instance": [d["wall_time"] / b] * b}}

    parts = map_batches(run, len(chosen), batch, state=state, progress=progress, desc=task)

    def join(key: str) -> dict:
        out: dict = {}
        for part in parts:
            for name, value in part[key].items():
                if isinstance(value, dict):
                    for k, v in value.items():
                        out.setdefault(name, {}).setdefault(k, []).extend(v)
                else:
                    out.setdefault(name, []).extend(value)
        return out

    as_array = (lambda v: np.asarray(v, dtype=np.float64))
    return EvaluationResult(
        task=task, data=str(data), indices=chosen, observe=spec, operator=operator, targets=target,
        sampling=sampling, batch=batch, noise_std=float(noise_std), problem=getattr(prior, "problem_config", None),
        metrics={n: {k: as_array(v) for k, v in m.items()} for n, m in join("metrics").items()},
        diagnostics={k: as_array(v) for k, v in join("diagnostics").items()},
        cost={k: as_array(v) for k, v in join("cost").items()})
