"""Conditional generation of trajectories and its checks against the physics.

Tasks (a prior with conditioning encoders, :mod:`diffpde.models.conditioning`):

- :func:`generate`: whole trajectories from a caption (text to trajectory) and/or from given frames
  (first frame to trajectory), any solver, optionally classifier-free guided, ``K`` samples per
  instance, as a :class:`~.tasks.Posterior`.

Checks (any family whose trajectory field has a ``"t"`` axis and whose ``solve(initial)`` rolls out
from the first frame: ``burgers``, ``burgers_dirichlet``, ``navier_stokes`` with ``store:
trajectory``):

- :func:`rollout`: the classical solver's trajectory from given first frames, batched, with the
  family's parameters or per-sample overrides (e.g. the viscosity a caption states).
- :func:`physical_consistency` (Text2PDE's re-simulation check, made general): re-simulate each
  generated sample from *its own* first frame with the parameters its condition states (a caption's
  viscosity or final time if stated, else the dataset's) and report the relative L2 between the
  sample and the re-simulation. A solver trajectory scores the solver's tolerance (and its storage
  precision); a sample that does not follow the equation scores its departure from it.
- :func:`rollout_error`: the first-frame task measured against the solver: relative L2 between
  the samples and the solver's trajectory from the *given* first frame.
- :func:`parameter_recovery`: for text conditioning, the family's ``features`` of each generated
  sample against the numbers its caption states (:func:`diffpde.pdes.captions.parse_caption` and
  :func:`~diffpde.pdes.captions.agreement`; a parameter such as ``nu`` is measured from the fields
  alone through the family's ``recoverable`` feature, e.g. ``nu_energy`` from the energy decay);
  per feature: the correlation between stated and measured over the captions, and relative errors.

Text2PDE (Zhou et al. 2025, ``validate_ldm.py``) re-simulates a generated smoke trajectory's first
frame with PhiFlow and the buoyancy of its condition and reports the L1 distance between the
sample and the re-simulation; here the distance is the relative L2 of the whole trajectory, the
solver is the family's own, and the parameters come from what the condition states.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .metrics import relative_l2
from .tasks import Posterior, _repeat, _solver_options

Tensor = torch.Tensor

__all__ = ["generate", "trajectory_field", "first_frame", "stated_parameters", "rollout", "resimulate",
           "physical_consistency", "rollout_error", "parameter_recovery", "Recovery"]


# -- the tasks -------------------------------------------------------------------------------------


def _batch_of(text: str | Sequence[str] | None, frames: Any) -> int:
    sizes = set()
    if text is not None:
        sizes.add(1 if isinstance(text, str) else len(text))
    if frames is not None:
        values = frames.values() if isinstance(frames, Mapping) else [frames]
        sizes.update(int(torch.as_tensor(v).shape[0]) for v in values)
    b = max(sizes or {1})
    if sizes - {1, b}:
        raise ValueError(f"the conditions have different batch sizes {sorted(sizes)} (1 broadcasts)")
    return b


def _repeat_frames(frames: Any, k: int) -> Any:
    if frames is None or k == 1:
        return frames
    if isinstance(frames, Mapping):
        return {n: _repeat(torch.as_tensor(v), k) for n, v in frames.items()}
    return _repeat(torch.as_tensor(frames), k)


def generate(prior, *, text: str | Sequence[str] | None = None, frames: Mapping[str, Tensor] | Tensor | None = None,
             n_samples: int = 1, solver: str = "dpmpp_2m", steps: int = 20,
             schedule: str | Sequence[float] | Tensor = "karras", guidance_scale: float | None = None,
             generator: torch.Generator | None = None, seed: int | None = None,
             solver_options: Mapping[str, Any] | None = None, cond: Mapping[str, Tensor] | None = None,
             params: Mapping[str, Any] | Tensor | None = None) -> Posterior:
    """``n_samples`` trajectories per instance from captions and/or given frames.

    Arguments:
        text:      a caption (for every instance) or one per instance.
        frames:    physical frames of the prior's frame encoder (``{field: [B, *frame]}``, e.g.
                   ``prior.frames_of(truth)`` for the first frame), or ``None``.
        n_samples: ``K`` samples per instance (``B`` instances: the larger batch of ``text`` and ``frames``).
        solver, steps, schedule: the ``samplers`` solver and sigma grid (``prior.sigmas``; an explicit
                   grid ending in 0 sets ``steps``), e.g. ``euler_ancestral`` with ``eta=1`` on a
                   1000-step DDPM grid for ancestral DDPM sampling.
        guidance_scale: classifier-free guidance ``D_u + w (D_c - D_u)``; ``None``: the conditional denoiser.
        generator / seed: initial and solver noise.
        cond, params: conditioning fields / scalar parameters of the prior, as for ``prior.sample``.

    Returns a :class:`~.tasks.Posterior` with samples ``{field: [B, K, *grid]}`` (float64) and
    diagnostics ``nfe`` (network evaluations per sample, both branches of guidance counting one),
    ``wall_time`` (s) and ``wall_time_per_sample`` (s).
    """
    if text is None and frames is None:
        raise ValueError("generate needs a caption (text) or frames; for unconditional samples use prior.sample")
    k = int(n_samples)
    if k < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    b = _batch_of(text, frames)
    if generator is None:
        generator = torch.Generator().manual_seed(0 if seed is None else int(seed))
    options = _solver_options(solver, solver_options)
    sigmas = prior.sigmas(steps, schedule)
    texts = None if text is None else ([text] * b if isinstance(text, str) else [str(t) for t in text])
    texts = None if texts is None else [t for t in texts for _ in range(k)]
    stats: dict[str, Any] = {}
    start = time.perf_counter()
    out = prior.sample(b * k, solver=solver, schedule=sigmas, generator=generator, cond=cond, params=params,
                       text=texts, frames=_repeat_frames(frames, k), guidance_scale=guidance_scale, stats=stats,
                       **options)
    wall = time.perf_counter() - start
    samples = {n: v.reshape(b, k, *v.shape[1:]).to(torch.float64) for n, v in out.items() if n in prior.fields}
    return Posterior(samples, {"method": "conditional", "solver": solver, "steps": sigmas.numel() - 1,
                               "nfe": stats.get("nfe"), "guidance_scale": guidance_scale, "wall_time": wall,
                               "wall_time_per_sample": wall / (b * k), "vjp": 0})


# -- re-simulation ---------------------------------------------------------------------------------


def trajectory_field(problem, name: str | None = None) -> tuple[str, int]:
    """``(field name, index of its time axis among the grid axes)`` of the trajectory of ``problem``:
    ``name``, or the first output field with a ``"t"`` axis."""
    candidates = [f for f in problem.fields if "t" in f.dims and (name is None or f.name == name)]
    if name is None:
        candidates = [f for f in candidates if f.role == "output"] or candidates
    if not candidates:
        which = f"field {name!r}" if name is not None else "no field"
        raise ValueError(f"{problem.name}: {which} with a time axis 't' (fields "
                         f"{[(f.name, tuple(f.dims)) for f in problem.fields]}); re-simulation needs trajectories")
    f = candidates[0]
    return f.name, tuple(f.dims).index("t")


def _stack(fields: Mapping[str, Any] | Tensor, name: str, shape: tuple[int, ...], what: str) -> Tensor:
    """Field ``name`` of ``fields`` as float64 ``[N, *shape]`` (``[B, K, *shape]`` is flattened)."""
    value = fields[name] if isinstance(fields, Mapping) else fields
    if isinstance(fields, Mapping) and name not in fields:
        raise KeyError(f"{what}: field {name!r} is needed; got {list(fields)}")
    t = torch.as_tensor(np.asarray(value) if not isinstance(value, Tensor) else value).detach().cpu()
    t = t.to(torch.float64)
    if tuple(t.shape) == shape:
        t = t.unsqueeze(0)
    if tuple(t.shape[-len(shape):]) != shape or t.ndim < len(shape) + 1:
        raise ValueError(f"{what}: field {name!r} must have shape [N, {', '.join(map(str, shape))}], "
                         f"got {tuple(t.shape)}")
    return t.reshape(-1, *shape)


def first_frame(problem, fields: Mapping[str, Any], name: str | None = None) -> Tensor:
    """The first time slice ``[N, *frame]`` of the trajectory field of ``fields``."""
    name, axis = trajectory_field(problem, name)
    traj = _stack(fields, name, tuple(problem.field(name).shape), "first_frame")
    return traj.select(1 + axis, 0)


def stated_parameters(problem, texts: Sequence[str]) -> list[dict[str, float]]:
    """Per caption, the family parameters it states (``{"nu": 0.01, "T": 1.0}``; empty if none)."""
    from ..pdes.captions import parse_caption

    known = set(problem.parameters)
    return [{k: float(v) for k, v in parse_caption(t, problem.name).items() if k in known} for t in texts]


def _problem_with(problem, overrides: Mapping[str, float]):
    if not overrides:
        return problem
    from .. import pdes

    return pdes.get(problem.name, problem.resolution, **{**problem.parameters, **overrides})


def rollout(problem, initial: Tensor | np.ndarray, *,
            parameters: Mapping[str, float] | Sequence[Mapping[str, float]] | None = None,
            forcing: Tensor | np.ndarray | None = None, name: str | None = None) -> Tensor:
    """The classical solver's trajectories ``[N, *trajectory shape]`` (float64) from ``initial`` ``[N, *frame]``.

    ``parameters``: overrides of the family's parameters, one mapping for all or one per sample;
    the samples that share a set are solved in one batched call. ``forcing`` ``[N, ...]``: passed to
    the family's ``solve`` (e.g. ``burgers_dirichlet``'s ``f``).
    """
    name, axis = trajectory_field(problem, name)
    shape = tuple(problem.field(name).shape)
    frame = shape[:axis] + shape[axis + 1:]
    u0 = _stack(initial, "initial", frame, "rollout") if not isinstance(initial, Mapping) else \
        _stack(initial, name, frame, "rollout")
    n = u0.shape[0]
    if parameters is None or isinstance(parameters, Mapping):
        per_sample = [dict(parameters or {})] * n
    else:
        per_sample = [dict(p) for p in parameters]
        if len(per_sample) != n:
            raise ValueError(f"rollout: {len(per_sample)} parameter sets for {n} initial states")
    if not torch.isfinite(u0).all():
        raise ValueError("rollout: the initial states hold NaN or inf")
    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(per_sample):
        groups.setdefault(tuple(sorted(p.items())), []).append(i)
    out = torch.empty((n, *shape), dtype=torch.float64)
    for key, idx in groups.items():
        pde = _problem_with(problem, dict(key))
        kwargs = {}
        if forcing is not None:
            kwargs["forcing"] = torch.as_tensor(forcing, dtype=torch.float64)[idx]
        with torch.no_grad():
            traj = pde.solve(u0[idx], **kwargs)
        traj = torch.as_tensor(traj, dtype=torch.float64)
        if tuple(traj.shape[1:]) != shape:
            raise ValueError(f"rollout: {problem.name}.solve returned {tuple(traj.shape[1:])}, not the stored "
                             f"trajectory shape {shape} (is the family storing trajectories?)")
        out[idx] = traj
    return out


def _parameters_of(problem, n: int, texts: Sequence[str] | None,
                   parameters: Mapping[str, float] | Sequence[Mapping[str, float]] | None) -> list[dict[str, float]]:
    """Per-sample overrides: explicit ``parameters`` first, then what the captions state."""
    per = [{} for _ in range(n)]
    if texts is not None:
        texts = list(texts)
        if len(texts) not in (1, n):
            raise ValueError(f"{len(texts)} captions for {n} samples (1 applies to all)")
        stated = stated_parameters(problem, texts)
        per = [dict(stated[0 if len(stated) == 1 else i]) for i in range(n)]
    if parameters is not None:
        given = [parameters] * n if isinstance(parameters, Mapping) else list(parameters)
        if len(given) != n:
            raise ValueError(f"{len(given)} parameter sets for {n} samples")
        per = [{**p, **dict(g)} for p, g in zip(per, given)]
    return per


def resimulate(problem, fields: Mapping[str, Any], *, texts: Sequence[str] | None = None,
               parameters: Mapping[str, float] | Sequence[Mapping[str, float]] | None = None,
               name: str | None = None) -> tuple[Tensor, list[dict[str, float]]]:
    """Re-simulation of each sample of ``fields`` (``{name: [N, *shape]}`` or ``[B, K, *shape]``) from its
    own first frame: ``(trajectories [N, *shape], the parameter overrides used per sample)``.

    The parameters are the family's, overridden by what each caption of ``texts`` states (one per
    sample, or one for all), overridden by ``parameters``. A forcing field ``f`` of the family in
    ``fields`` is passed to its solver.
    """
    name, _ = trajectory_field(problem, name)
    initial = first_frame(problem, fields, name)
    used = _parameters_of(problem, initial.shape[0], texts, parameters)
    forcing = None
    if "f" in fields and "f" in problem.field_names:
        forcing = _stack(fields, "f", tuple(problem.field("f").shape), "resimulate")
    return rollout(problem, initial, parameters=used, forcing=forcing, name=name), used


def physical_consistency(problem, fields: Mapping[str, Any], *, texts: Sequence[str] | None = None,
                         parameters: Mapping[str, float] | Sequence[Mapping[str, float]] | None = None,
                         name: str | None = None) -> dict[str, Any]:
    """Text2PDE's re-simulation check: relative L2 between each sample and the solver's trajectory
    from the sample's own first frame (:func:`resimulate`).

    Returns ``{"rel_l2": [N], "resimulated": [N, *shape], "parameters": [per-sample overrides],
    "wall_time": s}``; ``fields`` of shape ``[B, K, *shape]`` are flattened to ``N = B K`` samples
    (``texts`` then one per sample, or one per instance repeated ``K`` times by the caller).
    """
    name, _ = trajectory_field(problem, name)
    start = time.perf_counter()
    traj, used = resimulate(problem, fields, texts=texts, parameters=parameters, name=name)
    sample = _stack(fields, name, tuple(problem.field(name).shape), "physical_consistency")
    return {"rel_l2": relative_l2(sample, traj), "resimulated": traj, "parameters": used,
            "wall_time": time.perf_counter() - start}


def rollout_error(problem, samples: Mapping[str, Any], initial: Tensor | np.ndarray, *,
                  parameters: Mapping[str, float] | Sequence[Mapping[str, float]] | None = None,
                  name: str | None = None, reference: Tensor | None = None) -> Tensor:
    """The first-frame task against the solver: relative L2 ``[B, K]`` (or ``[N]`` for ``[N, *shape]``
    samples) between each sample and the solver's trajectory from the *given* first frame ``initial``
    ``[B, *frame]`` (``reference`` ``[B, *shape]``: that trajectory, if already computed)."""
    name, _ = trajectory_field(problem, name)
    shape = tuple(problem.field(name).shape)
    value = samples[name] if isinstance(samples, Mapping) else samples
    s = torch.as_tensor(value).detach().cpu().to(torch.float64)
    lead = s.shape[:s.ndim - len(shape)]
    if len(lead) not in (1, 2) or tuple(s.shape[len(lead):]) != shape:
        raise ValueError(f"rollout_error: samples of {name!r} must be [B, K, {', '.join(map(str, shape))}] or "
                         f"[B, ...], got {tuple(s.shape)}")
    truth = rollout(problem, initial, parameters=parameters, name=name) if reference is None else \
        torch.as_tensor(reference).to(torch.float64)
    b = truth.shape[0]
    if lead[0] != b:
        raise ValueError(f"rollout_error: {lead[0]} instances of samples but {b} first frames")
    if len(lead) == 1:
        return relative_l2(s, truth)
    k = lead[1]
    return relative_l2(s.reshape(b * k, *shape), _repeat(truth, k)).reshape(b, k)


# -- text: parameter recovery ----------------------------------------------------------------------


@dataclass
class Recovery:
    """Per feature of the captions: what they state and what the samples show.

    ``stated[key]`` / ``measured[key]``: ``[n]`` arrays over the (sample, caption) pairs that state
    ``key`` and whose sample has it; ``measured_as[key]``: the feature it was measured by
    (``nu_energy`` for ``nu``). :meth:`summary` gives the correlation and relative errors.
    """

    stated: dict[str, np.ndarray] = field(default_factory=dict)
    measured: dict[str, np.ndarray] = field(default_factory=dict)
    measured_as: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict[str, dict[str, float]]:
        """``{key: {"n", "corr" (Pearson; nan when a side is constant), "median_rel_error", "mean_rel_error"}}``."""
        out = {}
        for key, s in self.stated.items():
            m = self.measured[key]
            rel = np.abs(m - s) / np.maximum(np.abs(s), 1e-12)
            corr = float("nan")
            if len(s) > 2 and np.std(s) > 0 and np.std(m) > 0:
                corr = float(np.corrcoef(s, m)[0, 1])
            out[key] = {"n": int(len(s)), "corr": corr, "median_rel_error": float(np.median(rel)),
                        "mean_rel_error": float(np.mean(rel)), "measured_as": self.measured_as[key]}
        return out


def parameter_recovery(problem, fields: Mapping[str, Any], texts: Sequence[str], *,
                       keys: Sequence[str] | None = None) -> Recovery:
    """The family's ``features`` of each sample against the numbers its caption states.

    ``fields`` ``{name: [N, *shape]}`` (or ``[B, K, *shape]``, flattened) and ``texts`` one caption per
    sample (``N``). A caption's parameters (``nu``, ``T``) set the problem whose features are computed
    (so derived numbers such as a Reynolds number use the stated viscosity); a parameter the family
    can measure from the fields alone is compared with that measurement (``vocabulary.recoverable``).
    ``keys``: restrict to these stated keys.
    """
    from ..pdes.captions import agreement, parse_caption

    vocabulary = getattr(problem, "caption_vocabulary", None)
    if vocabulary is None:
        raise ValueError(f"{problem.name} writes no captions; parameter recovery needs its caption vocabulary")
    names = [f.name for f in problem.fields if isinstance(fields, Mapping) and f.name in fields]
    if not names:
        raise KeyError(f"parameter_recovery: none of the fields of {problem.name} "
                       f"({list(problem.field_names)}) in {list(fields)}")
    flat = {n: _stack(fields, n, tuple(problem.field(n).shape), "parameter_recovery") for n in names}
    count = flat[names[0]].shape[0]
    texts = list(texts)
    if len(texts) != count:
        raise ValueError(f"parameter_recovery: {len(texts)} captions for {count} samples")
    stated_params = stated_parameters(problem, texts)
    pairs: dict[str, list[tuple[float, float]]] = {}
    recovery = Recovery()
    for i, text in enumerate(texts):
        stated = parse_caption(text, problem.name)
        if keys is not None:
            stated = {k: v for k, v in stated.items() if k in keys}
        if not stated:
            continue
        pde = _problem_with(problem, stated_params[i])
        features = pde.features({n: flat[n][i].numpy() for n in names})
        for key, row in agreement(stated, features, vocabulary.recoverable).items():
            if math.isfinite(row["measured"]):
                pairs.setdefault(key, []).append((row["stated"], row["measured"]))
                recovery.measured_as[key] = vocabulary.recoverable.get(key, key)
    for key, values in pairs.items():
        arr = np.asarray(values, dtype=np.float64)
        recovery.stated[key], recovery.measured[key] = arr[:, 0], arr[:, 1]
    return recovery
