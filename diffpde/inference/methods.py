"""Posterior sampling methods, all on top of :mod:`samplers`.

Each method receives a :class:`Setting` (the prior's denoiser in its diffused frame, the decoder to
physical fields, the observations repeated for ``K`` samples per instance, the sigma grid and the
solver) and returns the final diffused states ``[N, *latent]`` plus diagnostics. Observation and
PDE losses are always computed on decoded physical fields, so every method works with every
representation.

| method         | needs from the operator       | solver                | how                                   |
| -------------- | ----------------------------- | --------------------- | ------------------------------------- |
| ``dps``        | differentiable                | any                   | gradient guidance through the denoiser |
| ``covariance`` | differentiable (linearised)   | any                   | Tweedie covariance + CG, noise-aware   |
| ``projection`` | mask, affine representation   | any                   | step-end inpainting of observed entries |
| ``tds``        | differentiable                | its own (SMC)         | twisted sequential Monte Carlo          |
| ``ensemble``   | differentiable                | its own (particles)   | approximation-free ensemble (AFDPS)     |
| ``diffusionpde`` | differentiable              | Heun (DiffusionPDE's) | fixed-weight gradients, PDE term late   |
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

import samplers
from samplers.covariance import CovarianceGuidance
from samplers.ensemble import ensemble as ensemble_sampler
from samplers.guidance import DPSGuidance, HeunStepGuidance, inpaint, inpaint_decoded
from samplers.smc import tds as tds_sampler

from .observations import ObservationOperator, require

Tensor = torch.Tensor


@dataclass
class Setting:
    """Everything a method needs, in the diffused frame of the prior.

    denoiser:   ``D(z, sigma)`` of the prior with conditioning bound, for batches of ``N = B * K``.
    decode:     ``z [N, *latent] -> {field: [N, *grid]}`` physical fields (differentiable), including
                the conditioning fields of a conditional prior.
    operator:   the observation operator (physical fields -> ``[N, m]``).
    y:          observations ``[N, m]`` (each instance repeated ``K`` times).
    noise_std:  ``[N, m]`` observation noise standard deviation used by the likelihood, one row per sample chain (physical units).
    pde_residual: ``fields -> [N, ...]`` residual in physical units, or ``None``.
    sigmas:     float64 grid ending in 0;  x: initial state ``[N, *latent]`` at ``sigmas[0]``.
    encode, pixel_fields: for affine representations (identity, wavelet), physical generated fields
                -> ``z`` and the names of the generated fields in channel order (``None`` otherwise).
    representation: the prior's representation when it is affine but not the identity (``None``
                for the identity): ``projection`` then overwrites decoded values (normalised frame).
    callback:   passed to the solver: ``callback(info)`` after each step (progress).
    """

    denoiser: Callable[[Tensor, Tensor], Tensor]
    decode: Callable[[Tensor], dict[str, Tensor]]
    operator: ObservationOperator
    y: Tensor
    noise_std: Tensor
    pde_residual: Callable[[Mapping[str, Tensor]], Tensor] | None
    sigmas: Tensor
    x: Tensor
    solver: str
    solver_options: dict[str, Any]
    generator: torch.Generator | None
    num_instances: int
    num_samples: int
    encode: Callable[[Mapping[str, Tensor]], Tensor] | None = None
    pixel_fields: tuple[str, ...] | None = None
    representation: Any = None
    callback: Callable[[dict], object] | None = None
    diagnostics: dict[str, Any] = field(default_factory=dict)

    # -- losses on physical fields ---------------------------------------------------------------

    def whitened_residual(self, z0: Tensor) -> Tensor:
        """``(y - A(decode(z0))) / noise_std`` ``[N, m]``."""
        pred = self.operator(self.decode(z0))
        return (self.y.to(pred) - pred) / self.noise_std.to(pred)

    def nll(self, z0: Tensor) -> Tensor:
        """Gaussian negative log-likelihood ``[N]`` of the observations given ``z0``."""
        return 0.5 * self.whitened_residual(z0).pow(2).sum(1)

    def pde_loss(self, z0: Tensor) -> Tensor:
        """Mean squared PDE residual ``[N]`` in physical units."""
        if self.pde_residual is None:
            raise ValueError("this prior has no PDE residual (no problem family)")
        r = self.pde_residual(self.decode(z0))
        return r.reshape(r.shape[0], -1).pow(2).mean(1)

    def solve(self, denoiser, hooks=()) -> Tensor:
        stats: dict[str, Any] = {}
        z = samplers.sample(denoiser, self.x, self.sigmas, solver=self.solver, generator=self.generator,
                            hooks=hooks, stats=stats, callback=self.callback, **self.solver_options)
        self.diagnostics["nfe"] = stats["nfe"]
        return z


def _number(name: str, value: Any, *, low: float = 0.0, inclusive: bool = True) -> float:
    """``value`` as a finite float ``>= low`` (``> low`` unless ``inclusive``), or a ValueError naming it."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < low or (value == low and not inclusive):
        bound = f"{'>=' if inclusive else '>'} {low:g}"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return float(value)


def _weight(name: str, value: Any, n: int) -> float | Tensor:
    """A guidance weight: a number ``>= 0``, or a tensor of ``1`` or ``n`` (one per chain) such numbers."""
    if torch.is_tensor(value):
        if value.numel() not in (1, n) or not torch.isfinite(value).all() or (value < 0).any():
            raise ValueError(f"{name} must be a number >= 0 or a tensor of 1 or {n} (one per chain) such numbers, "
                             f"got a tensor of shape {list(value.shape)}")
        return value
    return _number(name, value)


def _pde_term(s: Setting, pde_weight: float) -> list:
    return [(s.pde_loss, float(pde_weight))] if pde_weight else []


def dps(s: Setting, *, scale: float = 1.0, pde_weight: float = 0.0, normalize: bool = True) -> Tensor:
    """DPS (Chung et al. 2023): gradient guidance through the denoiser.

    Default (``normalize=True``, DPS's form): ``z0_hat - scale * grad_z sqrt(NLL + pde_weight * PDE)``,
    the gradient of the unsquared whitened residual norm with a fixed weight. With
    ``normalize=False`` the weight is the posterior-score one, ``scale * sigma^2`` on the gradient of
    the NLL; with small observation noise it overshoots at large sigma unless ``scale`` is small.
    Either way DPS is not calibrated; use ``covariance`` for honest uncertainty.
    """
    require(s.operator, "dps", differentiable=True)
    scale, pde_weight = _number("dps scale", scale), _number("dps pde_weight", pde_weight)
    if pde_weight and s.pde_residual is None:
        raise ValueError("dps pde_weight given but the prior has no PDE residual")
    weight = (lambda sigma: scale) if normalize else (lambda sigma: scale * sigma**2)
    guided = DPSGuidance(s.denoiser, [(s.nll, 1.0)] + _pde_term(s, pde_weight), weight=weight, normalize=normalize)
    z = s.solve(guided)
    s.diagnostics["vjp"] = guided.vjp_count
    return z


def covariance(s: Setting, *, cg_iters: int = 4, pde_std: float | None = None, max_rms: float | None = 3.0,
               prior_var: float = 1.0, fallback: str = "network") -> Tensor:
    """Covariance-aware guidance (MMPS type): exact for Gaussian priors with linear observations.

    ``pde_std``: if given, the PDE residual is added as virtual observations ``0 = residual + noise``
    with that standard deviation (physical units of the residual).
    ``max_rms`` / ``prior_var`` / ``fallback``: the trust region and the fallback where CG breaks
    down (solve with the isotropic Gaussian-prior covariance, correct with the network's covariance
    or, ``fallback="isotropic"``, the isotropic one) of
    :class:`~samplers.covariance.CovarianceGuidance` for an imperfect (learned) Jacobian, in the
    prior's normalised frame (``prior_var`` 1); ``max_rms=None`` turns the trust region off. With
    an exact denoiser neither acts (diagnostics ``cg_fallbacks`` and ``clipped`` count them).
    """
    require(s.operator, "covariance", differentiable=True)
    if pde_std is not None:
        pde_std = _number("covariance pde_std", pde_std, inclusive=False)
    std = s.noise_std.to(s.x)

    def forward(z0: Tensor) -> Tensor:
        fields = s.decode(z0)
        parts = [s.operator(fields) / std]
        if pde_std is not None:
            parts.append(s.pde_residual(fields).reshape(z0.shape[0], -1) / pde_std)
        return torch.cat(parts, 1)

    y = s.y.to(s.x) / std
    if pde_std is not None:
        if s.pde_residual is None:
            raise ValueError("pde_std given but the prior has no PDE residual")
        with torch.no_grad():
            m = s.pde_residual(s.decode(s.x[:1])).numel()
        y = torch.cat([y, torch.zeros(y.shape[0], m, dtype=y.dtype, device=y.device)], 1)
    guided = CovarianceGuidance(s.denoiser, forward, y, 1.0, cg_iters=cg_iters, max_rms=max_rms, prior_var=prior_var,
                                fallback=fallback)
    z = s.solve(guided)
    s.diagnostics.update(vjp=guided.vjp_count, cg_fallbacks=guided.fallbacks, clipped=guided.clipped)
    return z


def projection(s: Setting) -> Tensor:
    """Hard data consistency: observed entries replaced by the observation noised to each step's sigma.

    In pixel space the observed entries of the state are set (:func:`samplers.guidance.inpaint`); with
    an affine representation such as the wavelet one, the decoded (normalised) values are set and the
    change is written back to the coefficients (:func:`samplers.guidance.inpaint_decoded`): a fully
    given field is exact replacement of its coefficients (WDNO's conditioning), a partly given one
    (an initial time row) the usual inpainting approximation.
    """
    require(s.operator, "projection", mask=True, linear=True)
    if s.encode is None or s.pixel_fields is None:
        raise TypeError("projection needs a prior whose representation is affine with an exact inverse "
                        "(identity or wavelet)")
    masks = s.operator.masks()
    outside = sorted(set(masks) - set(s.pixel_fields))
    if outside:
        raise ValueError(f"projection can only constrain generated fields {list(s.pixel_fields)}; "
                         f"the operator observes {outside}")
    scattered = s.operator.adjoint(s.y.to(s.x))       # observed values at their grid entries
    template = next(iter(scattered.values()))
    full = {name: scattered.get(name, torch.zeros_like(template)) for name in s.pixel_fields}
    observed = s.encode(full)                         # normalised observations (exact where observed)
    mask = torch.stack([masks[name].to(s.x.device) if name in masks else torch.zeros_like(template[0], dtype=torch.bool)
                        for name in s.pixel_fields])
    if s.representation is None:
        hook = inpaint(mask.expand_as(s.x), observed, s.generator)
    else:
        rep = s.representation
        hook = inpaint_decoded(mask, rep.decode(observed), rep.encode, rep.decode, s.generator)
    z = s.solve(s.denoiser, hooks=[hook])
    s.diagnostics["vjp"] = 0
    return z


def _measurement_sensitivity(s: Setting, probes: int = 8) -> Tensor:
    """``kappa_j ~ ||d(A o decode)_j / dz||^2`` per measurement ``[m]`` from random probes (no network)."""
    with torch.no_grad():
        z0 = torch.zeros_like(s.x[:1])
        base = s.operator(s.decode(z0))
        g = torch.Generator().manual_seed(12345)
        deltas = [s.operator(s.decode(torch.randn(z0.shape, generator=g, dtype=torch.float64).to(z0))) - base
                  for _ in range(probes)]
    return torch.cat(deltas).pow(2).mean(0)


def tds(s: Setting, *, twist_scale: float = 1.0, ess_threshold: float = 0.5, inflate: bool = True) -> Tensor:
    """Twisted SMC with ``K`` particles per instance; returns resampled (equally weighted) particles.

    The twist at noise level ``sigma`` is the Gaussian likelihood of ``y`` given ``z0_hat`` with the
    variance inflated by the denoiser's uncertainty, ``noise_std^2 + kappa sigma^2 / (1 + sigma^2)``
    (``kappa``: the measurement's sensitivity to a unit change of the normalised field); without
    the inflation (``inflate=False``) the plain DPS twist is used, which degenerates for precise
    observations. Any twist gives consistent weights as ``K`` grows; a good one needs fewer particles.
    """
    require(s.operator, "tds", differentiable=True)
    twist_scale = _number("tds twist_scale", twist_scale)
    if s.solver_options:
        raise ValueError(f"the tds method runs its own particle sampler: it takes no solver options, "
                         f"got {sorted(s.solver_options)}")
    b, k = s.num_instances, s.num_samples

    def log_likelihood(z0: Tensor) -> Tensor:
        return -s.nll(z0.reshape(b * k, *z0.shape[2:])).reshape(b, k)

    twist = None
    if inflate:
        ratio = (_measurement_sensitivity(s) / s.noise_std.to(s.x) ** 2)

        def twist(z0: Tensor, sigma: float) -> Tensor:
            r = s.whitened_residual(z0.reshape(b * k, *z0.shape[2:]))
            scale = 1.0 + ratio.to(r) * (sigma**2 / (1.0 + sigma**2))
            return -0.5 * twist_scale * (r.pow(2) / scale).sum(1).reshape(b, k)

    x = s.x.reshape(b, k, *s.x.shape[1:])
    result = tds_sampler(s.denoiser, log_likelihood, x, s.sigmas, ess_threshold=ess_threshold,
                         twist_scale=twist_scale, twist=twist, generator=s.generator, callback=s.callback)
    particles = result.resample(s.generator)
    s.diagnostics.update(nfe=result.nfe, vjp=result.vjp_count, ess=result.ess, log_evidence=result.log_normalizer)
    return particles.reshape(b * k, *particles.shape[2:])


def _measurement_gain(s: Setting, draws: int = 4) -> Tensor:
    """``kappa_j = ||d(A o decode)_j / dz||^2`` per measurement ``[m]``, exact at ``z = 0`` and at ``draws``
    standard-normal ``z`` (typical normalised states; a nonlinear map may be flat at 0), averaged."""
    g = torch.Generator().manual_seed(12345)
    points = [torch.zeros_like(s.x[:1])] + [torch.randn(s.x[:1].shape, generator=g, dtype=torch.float64).to(s.x)
                                            for _ in range(draws)]
    gains = []
    for z in points:
        with torch.enable_grad():
            z = z.requires_grad_(True)
            out = s.operator(s.decode(z))[0]
            try:
                eye = torch.eye(out.numel(), dtype=out.dtype, device=out.device)
                jac = torch.autograd.grad(out, z, eye, is_grads_batched=True)[0]
            except RuntimeError:    # an operator that vmap cannot batch: one backward pass per measurement
                jac = torch.stack([torch.autograd.grad(out[j], z, retain_graph=True)[0] for j in range(out.numel())])
        gains.append(jac.detach().flatten(1).pow(2).sum(1))
    return torch.stack(gains).mean(0)


def ensemble(s: Setting, *, variant: str = "sde", weights: str = "pde", order: int = 2, path: str = "gaussian",
             gamma: float = 1.0, ess_threshold: float = 0.5,
             corrector_steps: int | None = None, corrector_step: float = 0.1,
             laplacian_probes: int | None = None) -> Tensor:
    """The approximation-free ensemble sampler (AFDPS, Chen et al. 2025) with ``K`` particles per instance;
    returns resampled (equally weighted) particles (:func:`samplers.ensemble.ensemble`).

    The particles follow ``p_sigma(z) l_sigma(z)``, the Gaussian likelihood of the observations given
    the *noisy* state decoded, with the variance ``noise_std^2 + kappa (gamma sigma)^2`` (``kappa``: the
    measurement's sensitivity to a unit change of the normalised field, so the noise the state carries
    counts as measurement noise); at ``sigma = 0`` it is the true likelihood, so the path ends at the
    posterior whatever ``gamma``; ``gamma=0`` is the paper's path, whose guided steps are stiff for
    precise observations unless the grid is very fine at large sigma. No network backward pass: the
    likelihood's gradient goes through the decoder and the operator only (``vjp`` 0,
    ``likelihood_grads`` counted). ``variant``, ``weights``, ``order``, ``corrector_steps`` (default 1 for
    ``ode``, 0 for ``sde``), ``corrector_step``: as in the sampler; NFE ``steps + corrector_steps * (steps - 1)``.
    ``laplacian_probes`` (``sde`` with ``pde`` weights): default 0 where the log-likelihood is quadratic
    (linear operator, identity representation), else 1.
    """
    require(s.operator, "ensemble", differentiable=True)
    gamma = _number("ensemble gamma", gamma)
    if s.solver_options:
        raise ValueError(f"the ensemble method runs its own particle sampler: it takes no solver options, "
                         f"got {sorted(s.solver_options)}")
    b, k = s.num_instances, s.num_samples
    if laplacian_probes is None:
        laplacian_probes = 0 if (s.operator.linear and s.encode is not None) else 1
    ratio = _measurement_gain(s) / s.noise_std.to(s.x) ** 2 if gamma else None

    if path not in ("gaussian", "noisy"):
        raise ValueError(f"ensemble path must be 'gaussian' or 'noisy', got {path!r}")

    def log_likelihood(z: Tensor, sigma: float) -> Tensor:
        z = z.reshape(b * k, *z.shape[2:])
        if not gamma or sigma == 0:
            return -0.5 * s.whitened_residual(z).pow(2).sum(1).reshape(b, k)
        var = (gamma * sigma) ** 2
        if path == "gaussian":      # exact p(y | z_sigma) for a standard normal prior (the normalised frame)
            z, var = z / (1 + var), var / (1 + var)
        r = s.whitened_residual(z)
        scale = 1.0 + ratio.to(r) * var
        return -0.5 * (r.pow(2) / scale).sum(1).reshape(b, k)

    x = s.x.reshape(b, k, *s.x.shape[1:])
    result = ensemble_sampler(s.denoiser, log_likelihood, x, s.sigmas, variant=variant, weights=weights,
                              order=order, ess_threshold=ess_threshold, laplacian_probes=laplacian_probes,
                              corrector_steps=corrector_steps, corrector_step=corrector_step, generator=s.generator,
                              callback=s.callback)
    particles = result.resample(s.generator)
    s.diagnostics.update(nfe=result.nfe, vjp=0, likelihood_grads=result.vjp_count, ess=result.ess,
                         log_evidence=result.log_normalizer)
    return particles.reshape(b * k, *particles.shape[2:])


def _observation_weights(zeta_obs: Any, ops: tuple[ObservationOperator, ...], n: int) -> list:
    """DiffusionPDE's observation weight of each operator (keyed by its first field in a mapping)."""
    if not isinstance(zeta_obs, Mapping):
        return [_weight("diffusionpde zeta_obs", zeta_obs, n)] * len(ops)
    keys = list(dict.fromkeys(op.fields[0] for op in ops))
    unknown = [name for name in zeta_obs if name not in keys]
    if unknown:
        raise ValueError(f"diffusionpde zeta_obs names field(s) {unknown} that are not observed; "
                         f"the observed fields are {keys}")
    missing = [name for name in keys if name not in zeta_obs]
    if missing:
        raise ValueError(f"diffusionpde zeta_obs gives no weight to the observations of {missing}; "
                         f"name every observed field {keys} (0 to ignore one)")
    return [_weight(f"diffusionpde zeta_obs[{op.fields[0]!r}]", zeta_obs[op.fields[0]], n) for op in ops]


def diffusionpde(s: Setting, *, zeta_obs: float | Mapping[str, float] | Tensor = 1.0, zeta_pde: float | Tensor = 0.0,
                 switch: float = 0.8, obs_factor_late: float = 0.1) -> Tensor:
    """DiffusionPDE's guided Heun sampler (Huang et al. 2024), a faithful baseline.

    After each Heun step, ``x_next -= zeta_obs * grad_{x_cur} ||y - A(x0_hat)||`` (unsquared norm
    per observed field) for the first ``switch`` fraction of steps; afterwards the observation term
    is scaled by ``obs_factor_late`` and ``zeta_pde * grad ||residual|| / n_points`` is added. The
    gradient flows through the step (its Euler predictor and the denoiser evaluation that finished
    it): the samplers' ``heun`` solver with :class:`~samplers.guidance.HeunStepGuidance`. The
    residual is ours, scaled by the true grid spacing (DiffusionPDE's lacks the ``1/h^2``). Only
    the ``heun`` solver.

    ``zeta_obs``: one weight, or ``{field: weight}`` naming every observed field (an operator is
    keyed by its first field). A weight may also be a ``[N]`` tensor, one per chain (to tune the
    weights in one batch). Weights are ``>= 0``.
    """
    require(s.operator, "diffusionpde", differentiable=True)
    if s.solver != "heun":
        raise ValueError(f"the diffusionpde method runs DiffusionPDE's Heun sampler; got solver={s.solver!r}")
    n = s.x.shape[0]
    ops = getattr(s.operator, "operators", (s.operator,))
    weights = _observation_weights(zeta_obs, ops, n)
    weights = [w if torch.is_tensor(w) and w.numel() > 1 else float(w) for w in weights]
    zeta_pde = _weight("diffusionpde zeta_pde", zeta_pde, n)
    switch = _number("diffusionpde switch", switch)
    if switch > 1:
        raise ValueError(f"diffusionpde switch is the fraction of the steps before the PDE term, in [0, 1]; got {switch}")
    obs_factor_late = _number("diffusionpde obs_factor_late", obs_factor_late)
    if (torch.is_tensor(zeta_pde) or zeta_pde) and s.pde_residual is None:
        raise ValueError("diffusionpde zeta_pde given but the prior has no PDE residual")
    y_parts = torch.split(s.y.to(s.x), [op.num_measurements for op in ops], dim=1)
    num_steps = s.sigmas.numel() - 1

    def loss(denoised: Tensor, step: int, sigma_next: float) -> Tensor | None:
        fields = s.decode(denoised)
        late = step > switch * num_steps
        total = 0.0
        for op, w, y in zip(ops, weights, y_parts):
            if torch.is_tensor(w) or w:
                total = total + (obs_factor_late if late else 1.0) * w * (y - op(fields)).norm(dim=1)
        if late and (torch.is_tensor(zeta_pde) or zeta_pde):
            r = s.pde_residual(fields)
            total = total + zeta_pde * r.reshape(r.shape[0], -1).norm(dim=1) / r[0].numel()
        return total if torch.is_tensor(total) else None

    guided = HeunStepGuidance(s.denoiser, loss, s.sigmas)
    z = s.solve(guided.denoiser, hooks=[guided.hook])
    s.diagnostics["vjp"] = guided.vjp_count
    return z


#: name -> (function, short description)
METHODS: dict[str, Callable[..., Tensor]] = {
    "dps": dps,
    "covariance": covariance,
    "projection": projection,
    "tds": tds,
    "ensemble": ensemble,
    "diffusionpde": diffusionpde,
}


def get_method(name: str) -> Callable[..., Tensor]:
    try:
        return METHODS[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r}; known methods: {', '.join(sorted(METHODS))}") from None
