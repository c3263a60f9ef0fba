"""The tasks: reconstruct fields from observations, and the forward / inverse helpers over it.

``reconstruct(prior, observations, method=..., solver=..., steps=..., n_samples=K)`` draws ``K``
posterior samples for each of the ``B`` observed instances and returns a :class:`Posterior`:
samples in physical units, their mean and standard deviation, and diagnostics.
"""

from __future__ import annotations

import inspect
import math
import time
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch

from samplers import get_solver

from ..options import check_types
from .fitted import FITTED_SOLVERS, fitted_solver
from .methods import Setting, get_method
from .observations import MaskObservation, Observations, StackedObservation

Tensor = torch.Tensor


@dataclass
class Posterior:
    """Posterior samples ``{field: [B, K, *grid]}`` (physical units) with summaries and diagnostics.

    diagnostics: ``nfe`` (network evaluations per sample chain), ``vjp`` (vector-Jacobian products),
    ``wall_time`` (s), ``misfit`` (``[B]`` observation chi-squared per measurement of the posterior
    mean, in units of ``noise_std``, the ``[B, m]`` likelihood noise actually used), ``pde_residual``
    (``[B]`` mean RMS residual of the samples, when the prior has a PDE),
    and method-specific entries (``ess`` for ``tds``).
    """

    samples: dict[str, Tensor]
    diagnostics: dict[str, Any] = field(default_factory=dict)

    @property
    def mean(self) -> dict[str, Tensor]:
        return {k: v.mean(1) for k, v in self.samples.items()}

    @property
    def std(self) -> dict[str, Tensor]:
        return {k: (v.std(1) if v.shape[1] > 1 else torch.zeros_like(v[:, 0])) for k, v in self.samples.items()}

    @property
    def num_samples(self) -> int:
        return next(iter(self.samples.values())).shape[1]


def _pde_residual(prior):
    try:
        problem = prior.problem
    except ValueError:
        return None
    return problem.residual


def _is_identity(prior) -> bool:
    return getattr(getattr(prior, "representation", None), "kind", None) == "identity"


def _is_affine(prior) -> bool:
    """Identity, or a representation whose encode/decode are affine with an exact inverse (wavelet)."""
    return _is_identity(prior) or bool(getattr(getattr(prior, "representation", None), "affine", False))


def _repeat(t: Tensor, k: int) -> Tensor:
    return t.repeat_interleave(k, dim=0)


#: solver used when none is given: DiffusionPDE's sampler is Heun; covariance guidance with a learned
#: (imperfect) Jacobian is markedly more accurate with a stochastic solver, whose noise corrects
#: the guidance's approximation errors (scripts/bench_inverse.py: Darcy inverse rel. L2 of a at 50
#: NFE, dpmpp_2m_sde vs dpmpp_2m); for exact Gaussian priors both are calibrated.
DEFAULT_SOLVERS = {"diffusionpde": "heun", "covariance": "dpmpp_2m_sde"}


def default_solver(method: str) -> str:
    """The solver ``reconstruct`` uses for ``method`` when none is given (``dpmpp_2m`` otherwise)."""
    return DEFAULT_SOLVERS.get(method, "dpmpp_2m")


def _noise_std(observations: Observations, noise_std: float | Tensor | None, floor: float) -> Tensor:
    """Standard deviation ``[B, m]`` of each measurement of each instance for the likelihood: the
    operator's, or ``noise_std``, floored at ``floor`` times the RMS of the instance's observations
    (of each operator of a stack; a noise-free likelihood is degenerate). Row ``b`` depends on row
    ``b`` of the observations only, so an instance's posterior does not depend on its batch."""
    op = observations.operator
    if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not 0 <= floor < math.inf:
        raise ValueError(f"noise_floor must be a finite number >= 0, got {floor!r}")
    if noise_std is None:
        noise_std = getattr(op, "noise_stds", op.noise_std)
    else:
        try:
            if isinstance(noise_std, (bool, str)):
                raise TypeError
            given = torch.as_tensor(noise_std, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"noise_std must be a number or {op.num_measurements} numbers (one per measurement), "
                            f"got {noise_std!r}") from None
        if given.numel() not in (1, op.num_measurements):
            raise ValueError(f"noise_std must be one number or one per measurement ({op.num_measurements}), "
                             f"got {given.numel()} values")
        bad = given.flatten()[~(torch.isfinite(given.flatten()) & (given.flatten() >= 0))]
        if bad.numel():
            raise ValueError(f"noise_std must be finite and >= 0 (0: the noise floor), got {bad[0].item()!r}")
        noise_std = given.flatten()
    std = torch.as_tensor(noise_std, dtype=torch.float64) * torch.ones(op.num_measurements, dtype=torch.float64)
    values = observations.values.to(torch.float64)
    sizes = [o.num_measurements for o in op.operators] if isinstance(op, StackedObservation) else [op.num_measurements]
    scale = torch.cat([p.pow(2).mean(1, keepdim=True).sqrt().expand(-1, p.shape[1])
                       for p in torch.split(values, sizes, 1)], 1)          # [B, m]: RMS per instance (and operator)
    return torch.maximum(std, floor * scale.clamp_min(1e-12))


def reconstruct(
    prior,
    observations: Observations,
    *,
    method: str = "covariance",
    solver: str | None = None,
    steps: int = 20,
    n_samples: int = 8,
    schedule: str | Sequence[float] | Tensor = "karras",
    cond: Mapping[str, Tensor] | None = None,
    params: Mapping[str, Any] | Tensor | None = None,
    noise_std: float | Tensor | None = None,
    noise_floor: float = 1e-3,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    method_options: Mapping[str, Any] | None = None,
    solver_options: Mapping[str, Any] | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
    text: str | Sequence[str] | None = None,
    frames: Mapping[str, Tensor] | Tensor | None = None,
    guidance_scale: float | None = None,
) -> Posterior:
    """Sample ``p(fields | observations)`` for every observed instance.

    Arguments:
        prior:        a :class:`diffpde.Prior` (or anything with its interface, e.g.
                      :class:`~diffpde.inference.gaussian.GaussianPrior`).
        observations: operator and values ``y [B, m]`` in physical units.
        method:       ``covariance`` (default), ``dps``, ``projection``, ``tds``, ``ensemble`` or ``diffusionpde``.
        solver, steps, schedule: the ``samplers`` solver (default :func:`default_solver`: ``dpmpp_2m_sde``
                      for ``covariance``, ``heun`` for ``diffusionpde``, else ``dpmpp_2m``) and the sigma
                      grid ``prior.sigmas(steps, schedule)``: a schedule name (``karras``, ``vp``, ...)
                      between the prior's range, or an explicit grid ending in 0 (then ``steps`` is
                      its length minus one). ``learned`` and ``dpm_solver_v3`` read the state
                      fitted to the prior from its directory (``diffpde fit-solver``); a learned
                      solver brings its own grid (the schedule is not used).
        n_samples:    ``K`` posterior samples (particles for ``tds`` and ``ensemble``) per instance.
        cond, params: conditioning fields / scalar parameters of a conditional prior (physical
                      units, batch ``B`` or 1).
        noise_std:    likelihood noise (default: the operator's; one number or one per measurement),
                      floored at ``noise_floor`` times the RMS of each instance's observations (of
                      each operator of a stack), so an instance's posterior does not depend on the
                      other instances of its batch.
        generator / seed: initial noise, solver noise and resampling are drawn from it.
        method_options, solver_options: passed to the method / the solver, checked first against
                      their keyword arguments (an unknown key or a value of the wrong type is a
                      ``ValueError`` naming it).
        progress:     show a progress bar with one tick per solver step.
        text, frames, guidance_scale: conditions of a prior with conditioning encoders, bound into
                      its denoiser (``prior.denoiser(text=..., frames=..., guidance_scale=...)``): a
                      caption (for all) or one per instance, physical frames ``{field: [B or 1,
                      *frame]}`` (e.g. ``prior.frames_of(truth)``), and the classifier-free guidance
                      scale; they compose with every method (the guidance wraps the guided denoiser).
    """
    op = observations.operator
    b, k = observations.batch_size, int(n_samples)
    if k < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    known = tuple(prior.fields) + tuple(getattr(prior, "cond_fields", ()))
    unknown = [f for f in op.fields if f not in known]
    if unknown:
        raise KeyError(f"the observations name field(s) {unknown} that the prior does not have; it has {list(known)}")
    if generator is None:
        generator = torch.Generator().manual_seed(0 if seed is None else int(seed))
    device = prior.device
    method_fn = get_method(method)
    if solver is None:
        solver = default_solver(method)
    method_options = check_types(dict(method_options or {}), _typed_defaults(method_fn), f"{method} method option")
    solver_options = _solver_options(solver, solver_options)
    noise_std = _noise_std(observations, noise_std, noise_floor)
    sigmas = prior.sigmas(steps, schedule)
    steps = sigmas.numel() - 1
    if solver in FITTED_SOLVERS and FITTED_SOLVERS[solver] not in solver_options:
        grid, fitted_options = fitted_solver(prior, solver, steps)   # saved with the prior (diffpde fit-solver)
        solver_options.update(fitted_options)
        if grid is not None:
            sigmas = grid

    conditions = _conditions(text, frames, guidance_scale, b, k)
    denoise = prior.denoiser(cond, params, **conditions)
    cond_fields = {}
    if getattr(prior, "cond_fields", ()):
        cond_fields = {name: _repeat(torch.as_tensor(cond[name]).to(device, dtype).expand(b, *prior.grid_shape), k)
                       for name in prior.cond_fields}

    def denoiser(z: Tensor, sigma: Tensor) -> Tensor:
        return denoise(z.to(dtype), sigma.to(dtype)).to(z.dtype)

    def decode(z: Tensor) -> dict[str, Tensor]:
        fields = prior.decode_fields(z)
        fields.update({n: v.to(z) for n, v in cond_fields.items()})
        return fields

    noise = torch.randn((b * k, *prior.latent_shape), generator=generator, dtype=torch.float64).to(device, dtype)
    setting = Setting(
        denoiser=denoiser, decode=decode, operator=op,
        y=_repeat(observations.values.to(device, dtype), k),
        noise_std=_repeat(noise_std, k).to(device, dtype),
        pde_residual=_pde_residual(prior), sigmas=sigmas, x=noise * float(sigmas[0]),
        solver=solver, solver_options=solver_options, generator=generator,
        num_instances=b, num_samples=k,
        encode=prior.encode_fields if _is_affine(prior) else None,
        pixel_fields=tuple(prior.fields) if _is_affine(prior) else None,
        representation=None if _is_identity(prior) or not _is_affine(prior) else prior.representation,
    )
    bar = None
    if progress:
        from tqdm.auto import tqdm

        # leave=False: the bar is shown while the batch samples and cleared after it, so an evaluation
        # over many batches does not fill the terminal
        bar = tqdm(total=steps, desc=f"{method} ({solver}, {b} x {k} samples)", unit="step", leave=False)
        setting.callback = lambda info: bar.update(1)
    was_training = prior.training
    prior.eval()
    start = time.perf_counter()
    try:
        z = method_fn(setting, **method_options)
    finally:
        prior.train(was_training)
        if bar is not None:
            bar.close()
    wall = time.perf_counter() - start
    with torch.no_grad():
        fields = decode(z)
        samples = {n: v.reshape(b, k, *v.shape[1:]).to(torch.float64) for n, v in fields.items() if n in prior.fields}
        posterior = Posterior(samples, dict(setting.diagnostics))
        mean_fields = {n: v.mean(1) for n, v in samples.items()}
        mean_fields.update({n: v.reshape(b, k, *v.shape[1:])[:, 0].to(torch.float64) for n, v in cond_fields.items()})
        used = setting.noise_std.reshape(b, k, -1)[:, 0].detach().cpu()          # [B, m]
        chi = (observations.values.to(torch.float64) - op(mean_fields)) / used.to(torch.float64)
        posterior.diagnostics.update(method=method, solver=solver, steps=steps, wall_time=wall,
                                     misfit=chi.pow(2).mean(1), noise_std=used)
        if setting.pde_residual is not None:
            r = setting.pde_residual({n: v.to(torch.float64) for n, v in fields.items()})
            posterior.diagnostics["pde_residual"] = r.reshape(b, k, -1).pow(2).mean(-1).sqrt().mean(1)
    return posterior


_SET_BY_RECONSTRUCT = ("hooks", "generator", "callback", "stats")


def _conditions(text: str | Sequence[str] | None, frames: Mapping[str, Tensor] | Tensor | None,
                guidance_scale: float | None, b: int, k: int) -> dict[str, Any]:
    """The keyword conditions of ``prior.denoiser`` for ``b`` instances x ``k`` samples (each instance's
    caption and frames repeated ``k`` times); empty when none is given (priors without encoders)."""
    out: dict[str, Any] = {}
    if text is not None:
        texts = [text] if isinstance(text, str) else list(text)
        if len(texts) not in (1, b):
            raise ValueError(f"text: {len(texts)} captions for {b} observed instances (1 applies to all)")
        out["text"] = texts if len(texts) == 1 else [t for t in texts for _ in range(k)]
    if frames is not None:
        def rows(v: Tensor) -> Tensor:
            v = torch.as_tensor(v)
            if v.ndim == 0 or v.shape[0] not in (1, b):
                raise ValueError(f"frames: batch {tuple(v.shape)[:1]} for {b} observed instances "
                                 "(give [B or 1, *frame])")
            return v if v.shape[0] == 1 else _repeat(v, k)

        if isinstance(frames, Mapping):
            out["frames"] = {n: rows(v) for n, v in frames.items()}
        else:
            out["frames"] = rows(frames)
    if guidance_scale is not None:
        out["guidance_scale"] = guidance_scale
    return out


def _typed_defaults(fn: Callable) -> dict[str, Any]:
    """The keyword defaults of ``fn`` for :func:`~diffpde.options.check_types`.

    An option whose annotation also admits something other than a number, bool, string or None
    (a mapping, a tensor) keeps no default type there: ``fn`` checks it itself.
    """
    fn = inspect.unwrap(fn)
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # noqa: BLE001  (an annotation that does not evaluate: no hints, defaults decide)
        hints = {}
    simple = {bool, int, float, str, type(None)}
    out = {}
    for name, p in inspect.signature(fn).parameters.items():
        if p.kind not in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) or p.default is p.empty:
            continue
        args = set(typing.get_args(hints.get(name)))
        out[name] = None if args and not args <= simple else p.default
    return out


def _solver_options(solver: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """``options`` checked against the solver's own keyword arguments."""
    options = dict(options or {})
    reserved = sorted(set(options) & set(_SET_BY_RECONSTRUCT))
    if reserved:
        raise ValueError(f"solver option(s) {reserved} are set by reconstruct, not by solver options")
    defaults = {k: v for k, v in _typed_defaults(get_solver(solver).fn).items() if k not in _SET_BY_RECONSTRUCT}
    return check_types(options, defaults, f"{solver} solver option")


def _full_mask_operator(name: str, shape, noise_std: float) -> MaskObservation:
    return MaskObservation(name, torch.ones(tuple(shape), dtype=torch.bool), noise_std)


def forward(prior, coefficients: Mapping[str, Tensor], *, observations: Observations | None = None,
            noise_std: float = 1e-3, **options) -> Posterior:
    """Forward problem: the coefficient fields are known (``{name: [B, *grid]}``, fully observed);
    the solution is sampled. A conditional prior takes them as ``cond``; a joint prior observes them
    (plus any extra sparse ``observations``)."""
    if set(coefficients) <= set(getattr(prior, "cond_fields", ())) and getattr(prior, "cond_fields", ()):
        if observations is None:
            raise ValueError("a conditional forward problem still needs observations (or use prior.sample(cond=...))")
        return reconstruct(prior, observations, cond=coefficients, **options)
    ops, values = [], []
    for name, value in coefficients.items():
        value = torch.as_tensor(value)
        ops.append(_full_mask_operator(name, value.shape[1:], noise_std))
        values.append(value.reshape(value.shape[0], -1))
    if observations is not None:
        ops.extend(getattr(observations.operator, "operators", (observations.operator,)))
        values.append(observations.values)
    return reconstruct(prior, Observations(StackedObservation(ops), torch.cat(values, 1)), **options)


def inverse(prior, observations: Observations, **options) -> Posterior:
    """Inverse problem: the solution is observed (sparsely); coefficients and solution are sampled."""
    return reconstruct(prior, observations, **options)


def _time_axis(prior, name: str, axis: str) -> int:
    """Index (among the grid axes) of the axis named ``axis`` of field ``name`` of the prior's problem."""
    try:
        dims = tuple(prior.problem.field(name).dims)
    except (ValueError, KeyError, AttributeError):
        dims = None
    if dims is None or axis not in dims:
        raise ValueError(f"simulate: the prior's problem does not name a {axis!r} axis for field {name!r} "
                         f"(dims {list(dims) if dims else None}); pass a trajectory prior")
    return dims.index(axis)


def simulate(prior, *, initial: Mapping[str, Tensor] | None = None, given: Mapping[str, Tensor] | None = None,
             axis: str = "t", noise_std: float = 1e-3, method: str = "covariance", n_samples: int = 1,
             **options) -> Posterior:
    """Conditional simulation of whole trajectories, ``p(trajectory | initial state, given fields)``.

    Arguments:
        initial: ``{field: [B, *grid without the time axis]}``, the first time slice of a generated
                 trajectory field (``u(t=0) = u0``), or the value of a conditioning field of a
                 conditional prior (broadcast along time when it lacks the time axis).
        given:   ``{field: [B, *grid]}`` whole fields known in advance (the forcing ``f``): the
                 conditioning fields of a conditional prior (network inputs), or fields of a joint
                 prior that are then observed everywhere.
        axis:    the name of the time axis in the problem's field dims.
        noise_std: observation noise of what is observed (joint priors; physical units).
        method:  how observed parts condition a joint prior: ``covariance`` (default), ``dps``,
                 ``projection`` (WDNO's way: the given values are written into every step's state, in
                 pixel or wavelet space), ...; all of :func:`reconstruct`. With a conditional prior
                 whose conditioning fields cover everything given, the prior is sampled directly.
        options: ``solver``, ``steps``, ``schedule``, ``generator``, ``seed``, ... of :func:`reconstruct`.

    Returns the :class:`Posterior` of the generated fields (``n_samples`` per instance).
    """
    initial, given = dict(initial or {}), dict(given or {})
    if not initial and not given:
        raise ValueError("simulate needs an initial state or given fields (else sample the prior)")
    cond_names = tuple(getattr(prior, "cond_fields", ()))
    cond: dict[str, Tensor] = {}
    ops, values = [], []
    for name, value in given.items():
        value = torch.as_tensor(value, dtype=torch.float64)
        if name in cond_names:
            cond[name] = value
        elif name in prior.fields:
            value = value.reshape(-1, *prior.grid_shape)
            ops.append(_full_mask_operator(name, prior.grid_shape, noise_std))
            values.append(value.reshape(value.shape[0], -1))
        else:
            raise KeyError(f"simulate: given field {name!r} is neither generated nor a conditioning field of "
                           f"the prior (generated {list(prior.fields)}, conditioning {list(cond_names)})")
    for name, value in initial.items():
        value = torch.as_tensor(value, dtype=torch.float64)
        if name in cond_names:
            if value.ndim == len(prior.grid_shape):       # [B, *grid without t]: broadcast along time
                k = _time_axis(prior, prior.fields[0], axis)
                value = value.unsqueeze(1 + k).expand(-1, *prior.grid_shape)
            cond[name] = value
            continue
        if name not in prior.fields:
            raise KeyError(f"simulate: initial field {name!r} is not a field of the prior ({list(prior.fields)})")
        k = _time_axis(prior, name, axis)
        want = prior.grid_shape[:k] + prior.grid_shape[k + 1:]
        value = value.reshape(-1, *want)
        mask = torch.zeros(prior.grid_shape, dtype=torch.bool)
        mask.select(k, 0).fill_(True)
        ops.append(MaskObservation(name, mask, noise_std))
        values.append(value.reshape(value.shape[0], -1))
    missing = [n for n in cond_names if n not in cond]
    if missing:
        raise ValueError(f"simulate: the prior needs its conditioning field(s) {missing}")
    if ops:
        observations = Observations(StackedObservation(ops) if len(ops) > 1 else ops[0], torch.cat(values, 1))
        return reconstruct(prior, observations, method=method, n_samples=n_samples, cond=cond or None, **options)
    return _sample_conditional(prior, cond, n_samples=n_samples, **options)


def _sample_conditional(prior, cond: Mapping[str, Tensor], *, n_samples: int = 1, solver: str | None = None,
                        steps: int = 20, schedule: str | Sequence[float] | Tensor = "karras",
                        generator: torch.Generator | None = None, seed: int | None = None,
                        solver_options: Mapping[str, Any] | None = None, **unused) -> Posterior:
    """Samples of a conditional prior for each instance of ``cond``, as a :class:`Posterior`."""
    unknown = sorted(k for k, v in unused.items() if v is not None)
    if unknown:
        raise ValueError(f"simulate: option(s) {unknown} only apply to observed (joint) priors")
    b = max(torch.as_tensor(v).shape[0] for v in cond.values())
    k = int(n_samples)
    if generator is None:
        generator = torch.Generator().manual_seed(0 if seed is None else int(seed))
    solver = solver or "dpmpp_2m"
    solver_options = _solver_options(solver, solver_options)
    sigmas = prior.sigmas(steps, schedule)
    if solver in FITTED_SOLVERS and FITTED_SOLVERS[solver] not in solver_options:
        grid, fitted_options = fitted_solver(prior, solver, sigmas.numel() - 1)
        solver_options.update(fitted_options)
        if grid is not None:
            sigmas = grid
    repeated = {n: _repeat(torch.as_tensor(v).expand(b, *prior.grid_shape), k) for n, v in cond.items()}
    stats: dict[str, Any] = {}
    start = time.perf_counter()
    with torch.no_grad():
        out = prior.sample(b * k, solver=solver, schedule=sigmas, generator=generator, cond=repeated,
                           stats=stats, **solver_options)
    wall = time.perf_counter() - start
    samples = {n: v.reshape(b, k, *v.shape[1:]).to(torch.float64) for n, v in out.items() if n in prior.fields}
    return Posterior(samples, {"method": "conditional", "solver": solver, "steps": sigmas.numel() - 1,
                               "nfe": stats.get("nfe"), "wall_time": wall, "vjp": 0})
