"""Control by guidance (WDNO's control task): generate the forcing that steers a PDE to a target.

Given an initial state ``s0`` and a target final state ``s*``, find the forcing ``f(t, x)`` that
minimises

    J(f) = mean_x (s(T, x) - s*(x))^2 + lam * mean_{t, x} f(t, x)^2,

where ``s`` solves the PDE from ``s0`` under ``f``. The means run over the grid nodes where the
state is free and the forcing acts (Burgers: the interior nodes, its boundary values are fixed at
0; Navier-Stokes: every node) and over the stored times, so ``J`` approximates
``int (s(T) - s*)^2 dx + lam / T int int f^2 dt dx`` and does not grow with the resolution.

Three ways to get ``f``, run on the same instances by :func:`evaluate_control`:

- **no control** (``f = 0``) and the **adjoint optimum** (:func:`adjoint_control`): L-BFGS on ``f``
  with the gradient of ``J`` through the differentiable solver; the reference optimum and its cost.
- **guided sampling** (:func:`guided_control`): a joint prior over ``(f, s)`` trajectories is
  sampled with the gradient of ``J`` of the *generated* fields steering every denoiser output, with
  any ``samplers`` solver. The gradient is taken (``Guidance.mode``)
  ``"decoder"``: through the decoder only, at ``z0_hat`` detached from the network (WDNO's way:
  ``z0_hat - w(sigma) dJ(decode(z0_hat)) / dz0_hat``);
  ``"network"``: through the network too (DPS, as :class:`samplers.guidance.DPSGuidance`);
  ``"covariance"``: with Tweedie's covariance and conjugate gradients
  (:class:`samplers.covariance.CovarianceGuidance`; ``J`` is a sum of squares of affine maps of
  the generated fields, virtual observations of variance ``1 / (2 scale)``).
  A trust region bounds each correction (``max_rms``, in the prior's normalised frame), as WDNO
  clamps ``x0_hat``. The initial state is imposed on every denoiser output (``initial="project"``: ``s[0] := s0``
  in physical space, re-encoded; any linear representation) or by a penalty in the loss
  (``"guide"``). With ``objective="simulated"`` the loss is ``J`` of re-simulating the generated
  forcing instead (one solve and its adjoint per denoiser call).

Every generated forcing is then **re-simulated** with the classical solver from ``s0``:
``J_actual`` (what the forcing achieves) is reported beside ``J_generated`` (what the sample's
own trajectory claims), with the relative L2 distance of the two trajectories.

A forcing bound ``|f| <= bound`` (Navier-Stokes case) is applied by clipping a generated forcing
before it is re-simulated (the actuator saturates), and in the adjoint by the parameterisation
``f = bound tanh(theta / bound)``.

What is WDNO's (Hu et al., ICLR 2025; ``burgers/eval_ddpm_burgers.py``) and what is not: WDNO
adds the gradient of ``J`` with respect to the detached ``x0_hat``, taken through the inverse
wavelet transform, to the predicted noise, ``eps + grad`` (``x0_hat - sigma grad`` in the VE
frame: ``schedule="sigma"`` here), times a further hand-tuned factor per DDPM step (its "cosine"
``J_scheduler``), with ``u0`` and the target overwritten as conditions of a model trained
conditionally on them; its ``J`` sums ``f^2`` over the grid (here grid means); its evaluation
script scores its DDPM/DDIM samples against the solver, with no optimisation baseline. Here any
solver, any representation, three gradients, a joint prior over ``(f, u)`` only (``u0`` imposed
at sampling, the target through ``J`` alone), and the adjoint optimum as the reference.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

import samplers
from samplers.covariance import CovarianceGuidance

Tensor = torch.Tensor

__all__ = ["ControlProblem", "ControlOutcome", "ControlSamples", "Guidance", "control_problem", "sample_instances",
           "no_control", "resimulate", "adjoint_control", "guided_control", "evaluate_control", "gaussian_surrogate",
           "GradientGuidance", "WEIGHT_SCHEDULES", "GUIDANCE_MODES"]

#: families with a control task: (control field, state trajectory field, initial-state field)
CONTROLLED = {"burgers_dirichlet": ("f", "u", "u0"), "navier_stokes": ("f", "w", "w0")}
#: default control cost lam per family (module docstring)
DEFAULT_LAM = {"burgers_dirichlet": 0.01, "navier_stokes": 0.01}


# -- the control problem ---------------------------------------------------------------------------


@dataclass
class ControlProblem:
    """A PDE family with a forcing to choose: ``(s0, f) -> s`` and the cost ``J`` (module docstring).

    problem: the PDE instance (``burgers_dirichlet``, or ``navier_stokes`` with ``store="trajectory"``).
    control, state, initial: its field names (``f``; ``u`` / ``w``; ``u0`` / ``w0``).
    lam:     weight of the control cost. bound: ``|f| <= bound`` of the applied forcing, or ``None``.
    max_forcing: a forcing with ``max|f|`` above it (or not finite) is a diverged sample: it is not
             simulated (the solver's step shrinks with ``max|f|``) and its ``J_actual`` is ``inf``.
    """

    problem: Any
    control: str
    state: str
    initial: str
    lam: float
    bound: float | None = None
    max_forcing: float = 100.0

    @property
    def space_dims(self) -> int:
        return len(self.problem.field(self.initial).shape)

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape ``(nt, *space)`` of one forcing (and one state trajectory)."""
        return tuple(self.problem.field(self.state).shape)

    def active(self, x: Tensor) -> Tensor:
        """The nodes of ``x [..., *space]`` where the state is free and the forcing acts."""
        return x[..., 1:-1] if self.problem.name == "burgers_dirichlet" else x

    def applied(self, control: Tensor) -> Tensor:
        """The forcing the actuator delivers: ``control`` clipped to ``[-bound, bound]``."""
        return control if self.bound is None else control.clamp(-self.bound, self.bound)

    def simulate(self, initial: Tensor, control: Tensor) -> Tensor:
        """State trajectory ``[B, nt, *space]`` (float64) from ``initial [B, *space]`` under the forcing
        ``control [B, nt, *space]`` on the stored times; differentiable in ``control`` when grad is enabled."""
        s0 = initial.to(torch.float64)
        f = control.to(torch.float64)
        if self.problem.name == "navier_stokes":
            if self.problem.parameters["forcing"] != 0:   # the family's steady forcing stays on
                f = f + torch.as_tensor(self.problem.forcing_field(), dtype=f.dtype, device=f.device)
            return self.problem.solve(s0, forcing=f)
        return self.problem.solve(s0, forcing=f)

    def terms(self, final: Tensor, control: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """``(tracking, effort)`` ``[B]``: ``mean (s(T) - s*)^2`` and ``mean f^2`` over the active nodes."""
        d = self.space_dims
        tracking = self.active(final - target.to(final)).pow(2).flatten(-d).mean(-1)
        effort = self.active(control).pow(2).flatten(-d - 1).mean(-1)
        return tracking, effort

    def cost(self, final: Tensor, control: Tensor, target: Tensor) -> Tensor:
        """``J = tracking + lam * effort`` ``[B]`` of a final state ``[B, *space]`` and a forcing
        ``[B, nt, *space]``."""
        tracking, effort = self.terms(final, control, target)
        return tracking + self.lam * effort.to(tracking)

    def residual(self, final: Tensor, control: Tensor, target: Tensor) -> Tensor:
        """``r [B, m]`` with ``sum r^2 = J``, affine in ``(final, control)``."""
        d = self.space_dims
        a = self.active(final - target.to(final)).flatten(-d)
        b = self.active(control).flatten(-d - 1)
        return torch.cat([a / math.sqrt(a.shape[-1]), math.sqrt(self.lam / b.shape[-1]) * b.to(a)], -1)


def control_problem(problem: Any, lam: float | None = None, bound: float | None = None) -> ControlProblem:
    """The :class:`ControlProblem` of a PDE instance (``burgers_dirichlet``; ``navier_stokes`` with
    ``store="trajectory"``); ``lam`` defaults to :data:`DEFAULT_LAM`."""
    name = problem.name
    if name not in CONTROLLED:
        raise ValueError(f"no control task for the family {name!r}; families with one: {sorted(CONTROLLED)}")
    if name == "navier_stokes" and not problem.trajectory:
        raise ValueError("navier_stokes control needs whole trajectories: parameter store='trajectory'")
    lam = DEFAULT_LAM[name] if lam is None else lam
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not (math.isfinite(lam) and lam >= 0):
        raise ValueError(f"lam must be a finite number >= 0, got {lam!r}")
    if bound is not None and not (isinstance(bound, (int, float)) and math.isfinite(bound) and bound > 0):
        raise ValueError(f"bound must be a finite number > 0 or None, got {bound!r}")
    return ControlProblem(problem, *CONTROLLED[name], lam=float(lam), bound=None if bound is None else float(bound))


def _forcing_law(cp: ControlProblem, n: int, seed: int, amplitude: float) -> Tensor:
    """Random Navier-Stokes forcings ``[n, nt, res, res]``: ``amplitude ((1 - t/T) g1 + (t/T) g2)`` with
    ``g1, g2`` periodic Gaussian random fields (alpha 2.5, tau 7) of unit RMS, bounded by
    ``bound tanh(f / bound)`` when the problem has a bound."""
    from ..pdes.grf import grf

    res = cp.problem.resolution
    g = grf(2 * n, res, 2.5, 7.0, dim=2, boundary="periodic", seed=seed)
    g = g / np.sqrt((g**2).mean(axis=(-2, -1), keepdims=True))
    s = np.linspace(0.0, 1.0, cp.shape[0])[None, :, None, None]
    f = amplitude * ((1 - s) * g[:n, None] + s * g[n:, None])
    if cp.bound is not None:
        f = cp.bound * np.tanh(f / cp.bound)
    return torch.as_tensor(f, dtype=torch.float64)


def sample_instances(cp: ControlProblem, n: int, seed: int, *, amplitude: float = 1.0) -> dict[str, Tensor]:
    """``n`` reachable control instances: ``{initial, control, trajectory, target}`` (float64).

    The initial state and a reference forcing are drawn from the family's laws (Burgers: WDNO's
    bumps; Navier-Stokes: the family's GRF of ``w0`` and :func:`_forcing_law` with ``amplitude``),
    the trajectory is solved from them and the target is its final state, so the reference forcing
    reaches it (``J = lam * effort``)."""
    if cp.problem.name == "burgers_dirichlet":
        inputs = cp.problem.sample_inputs(n, seed)
        initial, control = (torch.as_tensor(inputs[k], dtype=torch.float64) for k in ("u0", "f"))
    else:
        initial = torch.as_tensor(cp.problem.sample_inputs(n, seed)["w0"], dtype=torch.float64)
        control = _forcing_law(cp, n, seed + 7919, amplitude)
    with torch.no_grad():
        trajectory = cp.simulate(initial, control)
    return {"initial": initial, "control": control, "trajectory": trajectory, "target": trajectory[:, -1]}


# -- classical baselines ---------------------------------------------------------------------------


@dataclass
class ControlOutcome:
    """A forcing and what the solver makes of it: ``control`` (applied) and ``trajectory`` ``[B, nt, *space]``,
    ``cost`` (``J``), ``tracking``, ``effort`` ``[B]``; ``wall_time`` (s) and method details in ``info``."""

    control: Tensor
    trajectory: Tensor
    cost: Tensor
    tracking: Tensor
    effort: Tensor
    wall_time: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)


def resimulate(cp: ControlProblem, initial: Tensor, target: Tensor, control: Tensor) -> ControlOutcome:
    """Solve from ``initial`` under ``cp.applied(control)`` and score it: ``J_actual``."""
    start = time.perf_counter()
    f = cp.applied(control.detach().to(torch.float64))
    ok = torch.isfinite(f).flatten(1).all(1) & (f.abs().flatten(1).amax(1) <= cp.max_forcing)
    traj = torch.full_like(f, math.nan)
    if ok.any():
        with torch.no_grad():
            traj[ok] = cp.simulate(initial[ok], f[ok])
    tracking, effort = cp.terms(traj[:, -1], f, target.to(torch.float64))
    tracking = torch.where(ok, tracking, torch.full_like(tracking, math.inf))
    out = ControlOutcome(f, traj, tracking + cp.lam * effort, tracking, effort, time.perf_counter() - start)
    out.info["diverged"] = int((~ok).sum())
    return out


def no_control(cp: ControlProblem, initial: Tensor, target: Tensor) -> ControlOutcome:
    """The uncontrolled baseline ``f = 0``."""
    return resimulate(cp, initial, target, torch.zeros(initial.shape[0], *cp.shape, dtype=torch.float64))


def adjoint_control(cp: ControlProblem, initial: Tensor, target: Tensor, *, max_iter: int = 100, tol: float = 1e-4,
                    history: int = 20, init: Tensor | None = None,
                    log: Callable[[str], None] | None = None) -> ControlOutcome:
    """Optimal control by L-BFGS (strong Wolfe line search) through the differentiable solver.

    All instances are optimised together (their costs summed; they do not interact). The variable
    is ``theta`` with ``f = theta`` (``f = bound tanh(theta / bound)`` with a bound), from ``init``
    (default ``f = 0``). Stops after the first iteration that lowers the summed cost by less than
    ``tol`` times its no-control value, or after ``max_iter`` iterations. ``info``: ``iterations``,
    ``evaluations`` (solves with their backward pass), ``history`` (mean ``J`` after each iteration).
    """
    if max_iter < 0 or not tol >= 0:
        raise ValueError(f"need max_iter >= 0 and tol >= 0, got {max_iter}, {tol}")
    initial, target = initial.to(torch.float64), target.to(torch.float64)
    start = time.perf_counter()
    if init is None:
        theta0 = torch.zeros(initial.shape[0], *cp.shape, dtype=torch.float64)
    else:
        f0 = init.detach().to(torch.float64)
        theta0 = f0 if cp.bound is None else cp.bound * torch.atanh((f0 / cp.bound).clamp(-1 + 1e-9, 1 - 1e-9))
    theta = theta0.clone().requires_grad_(True)

    def forcing(th: Tensor) -> Tensor:
        return th if cp.bound is None else cp.bound * torch.tanh(th / cp.bound)

    with torch.no_grad():
        scale = float(no_control(cp, initial, target).cost.sum().clamp_min(1e-30))
    evaluations = [0]

    def closure() -> Tensor:
        opt.zero_grad()
        f = forcing(theta)
        loss = cp.cost(cp.simulate(initial, f)[:, -1], f, target).sum() / scale
        loss.backward()
        evaluations[0] += 1
        return loss

    opt = torch.optim.LBFGS([theta], lr=1.0, max_iter=1, max_eval=26, history_size=history,
                            line_search_fn="strong_wolfe", tolerance_grad=1e-12, tolerance_change=0.0)
    history_j, previous, iterations = [], None, 0
    for iterations in range(1, max_iter + 1):
        opt.step(closure)
        with torch.no_grad():
            f = forcing(theta)
            value = float(cp.cost(cp.simulate(initial, f)[:, -1], f, target).sum()) / scale
        history_j.append(value * scale / initial.shape[0])
        if log is not None:
            log(f"adjoint iteration {iterations}: mean J {history_j[-1]:.5g} ({evaluations[0]} solves)")
        if previous is not None and previous - value < tol:
            break
        previous = value
    out = resimulate(cp, initial, target, forcing(theta.detach()))
    out.wall_time = time.perf_counter() - start
    out.info.update(iterations=iterations if max_iter else 0, evaluations=evaluations[0], history=history_j,
                    tol=tol, max_iter=max_iter)
    return out


# -- guidance --------------------------------------------------------------------------------------

#: ``w(sigma)`` per unit scale of the decoder and network gradients: WDNO's ``eps + grad`` is
#: ``x0_hat - sigma grad`` (``"sigma"``); ``"sigma2"`` is the posterior-score weight of a tilt
#: ``exp(-scale J)``; ``"constant"`` a fixed step.
WEIGHT_SCHEDULES: dict[str, Callable[[Tensor], Tensor]] = {
    "sigma": lambda sigma: sigma,
    "sigma2": lambda sigma: sigma**2,
    "constant": lambda sigma: torch.ones_like(sigma),
}
GUIDANCE_MODES = ("decoder", "network", "covariance", "none")
#: default ``Guidance.scale`` per mode, in the units of ``J`` (grid means of squares, physical units)
DEFAULT_SCALES = {"decoder": 10.0, "network": 10.0, "covariance": 1e3, "none": 0.0}


@dataclass
class Guidance:
    """How ``J`` steers the sampler (module docstring).

    mode:      ``decoder`` (WDNO), ``network`` (DPS), ``covariance`` or ``none`` (unguided prior samples).
    scale:     strength (default :data:`DEFAULT_SCALES` of the mode); the denoiser output moves by
               ``scale * w(sigma) * grad J`` (decoder, network); covariance guidance conditions on
               ``J`` as virtual observations of variance ``1/(2 scale)`` (the prior tilted by
               ``exp(-scale J)``).
    schedule:  ``w(sigma)`` of :data:`WEIGHT_SCHEDULES` (decoder and network).
    objective: ``generated`` (``J`` of the sample's own state) or ``simulated`` (``J`` of solving the
               sample's forcing from the initial state; decoder and network only).
    initial:   ``project`` (``s[0] := s0`` in every denoiser output), ``guide`` (penalty
               ``initial_weight * mean (s[0] - s0)^2`` added to the loss) or ``none``.
    max_rms:   trust region: the root-mean-square entry of a correction of the denoiser output (in
               the prior's normalised frame) is at most this (``None``: unbounded).
    cg_iters:  conjugate-gradient iterations of covariance guidance.
    """

    mode: str = "decoder"
    scale: float | None = None
    schedule: str = "sigma"
    objective: str = "generated"
    initial: str = "project"
    initial_weight: float = 100.0
    cg_iters: int = 4
    max_rms: float | None = 3.0

    def __post_init__(self) -> None:
        choices = {"mode": GUIDANCE_MODES, "schedule": tuple(WEIGHT_SCHEDULES), "objective": ("generated", "simulated"),
                   "initial": ("project", "guide", "none")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"guidance {name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.scale is None:
            self.scale = DEFAULT_SCALES[self.mode]
        for name in ("scale", "initial_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0:
                raise ValueError(f"guidance {name} must be a finite number >= 0, got {value!r}")
        if self.mode == "covariance" and self.objective == "simulated":
            raise ValueError("covariance guidance linearises J of the generated fields: use objective 'generated'")
        if self.mode == "covariance" and not self.scale > 0:
            raise ValueError("covariance guidance needs scale > 0 (the virtual observations' variance is 1/(2 scale))")

    def describe(self) -> str:
        if self.mode == "none":
            return "unguided"
        text = f"{self.mode}, scale {self.scale:g}"
        if self.mode in ("decoder", "network"):
            text += f", w(sigma) {self.schedule}"
        if self.objective == "simulated":
            text += ", J simulated"
        return text + f", s0 {self.initial}"


class GradientGuidance:
    """``D'(z, sigma) = z0 - w(sigma) grad L`` with ``z0 = D(z, sigma)``, the gradient taken at ``z0``
    detached from the network (``through_network=False``: WDNO's guidance, one backward pass through
    the decoder and the loss, none through the network) or at ``z`` through the denoiser
    (``True``: DPS, as :class:`samplers.guidance.DPSGuidance`).

    ``loss(z0) -> [B]`` decodes ``z0`` to physical fields; ``weight(sigma) -> [B]`` or a float.
    ``max_rms``: trust region; a correction whose root-mean-square entry exceeds it (in the
    normalised latent frame) is scaled down to it (``clipped`` counts them), as WDNO clamps ``x0_hat``.
    Counters: ``calls``, ``vjp_count`` (backward passes).
    """

    def __init__(self, denoiser: Callable[[Tensor, Tensor], Tensor], loss: Callable[[Tensor], Tensor],
                 weight: float | Callable[[Tensor], Tensor], *, through_network: bool = False,
                 max_rms: float | None = None) -> None:
        self.denoiser, self.loss, self.weight = denoiser, loss, weight
        self.through_network, self.max_rms = through_network, max_rms
        self.calls = self.vjp_count = self.clipped = 0

    def gradient(self, z0: Tensor) -> Tensor:
        """``dL/dz0`` ``[B, *latent]`` at a fixed ``z0`` (each sample's loss is its own)."""
        with torch.enable_grad():
            z = z0.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.loss(z).sum(), z)
        self.vjp_count += 1
        return grad

    def __call__(self, z: Tensor, sigma: Tensor) -> Tensor:
        self.calls += 1
        if self.through_network:
            with torch.enable_grad():
                x = z.detach().requires_grad_(True)
                out = self.denoiser(x, sigma)
                (grad,) = torch.autograd.grad(self.loss(out).sum(), x)
            self.vjp_count += 1
            z0 = out.detach()
        else:
            with torch.no_grad():
                z0 = self.denoiser(z, sigma)
            grad = self.gradient(z0)
        w = self.weight(sigma) if callable(self.weight) else self.weight
        w = torch.as_tensor(w, dtype=z0.dtype, device=z0.device)
        step = (w.reshape(-1, *(1,) * (z0.ndim - 1)) if w.ndim else w) * grad
        if self.max_rms is not None:
            rms = step.flatten(1).pow(2).mean(1).sqrt().reshape(-1, *(1,) * (z0.ndim - 1))
            self.clipped += int((rms > self.max_rms).sum())
            step = step * (self.max_rms / rms.clamp_min(self.max_rms))
        return (z0 - step).detach()


class _Projected:
    """A denoiser whose outputs get ``project`` applied (the initial state imposed)."""

    def __init__(self, denoiser, project):
        self.inner, self.project = denoiser, project

    def __call__(self, z: Tensor, sigma: Tensor) -> Tensor:
        return self.project(self.inner(z, sigma))


def _repeat(t: Tensor, k: int) -> Tensor:
    return t.repeat_interleave(k, dim=0)


def _check_prior(prior: Any, cp: ControlProblem) -> None:
    missing = [n for n in (cp.control, cp.state) if n not in prior.fields]
    if missing:
        raise ValueError(f"the prior generates {list(prior.fields)}; control needs the forcing {cp.control!r} and "
                         f"the state trajectory {cp.state!r} (missing {missing})")
    if getattr(prior, "cond_fields", ()):
        raise ValueError(f"control needs a joint (unconditional) prior; this one is conditioned on "
                         f"{list(prior.cond_fields)}")
    if tuple(prior.grid_shape) != cp.shape:
        raise ValueError(f"the prior's grid {list(prior.grid_shape)} differs from the problem's trajectories "
                         f"{list(cp.shape)}")


def _guided_denoiser(prior: Any, cp: ControlProblem, guidance: Guidance, initial: Tensor, target: Tensor,
                     denoise: Callable[[Tensor, Tensor], Tensor]):
    """The denoiser of :func:`guided_control` for a batch of ``N`` chains (``initial``, ``target``: ``[N, *space]``),
    and the guidance object whose counters it fills (or ``None``)."""
    decode = prior.decode_fields

    def loss(z0: Tensor) -> Tensor:
        fields = decode(z0)
        f = fields[cp.control]
        if guidance.objective == "simulated":
            f = cp.applied(f.to(torch.float64))
            value = cp.cost(cp.simulate(initial, f)[:, -1], f, target)
        else:
            value = cp.cost(fields[cp.state][:, -1], f, target)
        if guidance.initial == "guide":
            miss = cp.active(fields[cp.state][:, 0] - initial.to(f))
            value = value + guidance.initial_weight * miss.pow(2).flatten(1).mean(1)
        return value.to(z0.dtype)

    def residual(z0: Tensor) -> Tensor:
        fields = decode(z0)
        r = cp.residual(fields[cp.state][:, -1], fields[cp.control], target)
        if guidance.initial == "guide":
            d = cp.active(fields[cp.state][:, 0] - initial.to(r)).flatten(1)
            r = torch.cat([r, math.sqrt(guidance.initial_weight / d.shape[1]) * d], 1)
        return r

    inner, guide = denoise, None
    mode = guidance.mode
    if mode in ("decoder", "network"):
        fn = WEIGHT_SCHEDULES[guidance.schedule]
        scale = guidance.scale

        def weight(sigma: Tensor) -> Tensor:
            return scale * fn(sigma)

        guide = GradientGuidance(denoise, loss, weight, through_network=mode == "network", max_rms=guidance.max_rms)
        inner = guide
    elif mode == "covariance":
        with torch.no_grad():
            m = residual(torch.zeros((initial.shape[0], *prior.latent_shape), device=initial.device)).shape[1]
        zeros = torch.zeros(initial.shape[0], m, device=initial.device)
        guide = CovarianceGuidance(denoise, residual, zeros, 1.0 / (2.0 * guidance.scale), cg_iters=guidance.cg_iters,
                                   max_rms=guidance.max_rms)
        inner = guide
    if guidance.initial != "project":
        return inner, guide

    def project(z0: Tensor) -> Tensor:
        with torch.no_grad():
            fields = decode(z0)
            state = fields[cp.state].clone()
            state[:, 0] = initial.to(state)
            fields[cp.state] = state
            return prior.encode_fields(fields).to(z0)

    return _Projected(inner, project), guide


@dataclass
class ControlSamples:
    """Guided samples for ``B`` instances, ``K`` each.

    control, state: generated ``[B, K, nt, *space]`` (physical units); cost_generated ``[B, K]``
    (``J`` of the sample's own state and forcing); actual: the re-simulated :class:`ControlOutcome`
    (fields ``[B, K, ...]``); rel_l2 / rel_l2_final ``[B, K]``: relative L2 distance of the generated
    trajectory (its final state) from the re-simulated one; info: ``nfe``, ``vjp``, ``wall_time``
    (sampling, s), ``resim_time``, ``solver``, ``steps``, ``guidance``.
    """

    control: Tensor
    state: Tensor
    cost_generated: Tensor
    actual: ControlOutcome
    rel_l2: Tensor
    rel_l2_final: Tensor
    info: dict[str, Any] = field(default_factory=dict)

    def best(self) -> Tensor:
        """Index ``[B]`` of the sample with the lowest ``J_generated`` per instance (chosen without the solver)."""
        return self.cost_generated.argmin(1)


def _relative(a: Tensor, b: Tensor, dims: int) -> Tensor:
    diff = (a - b).flatten(-dims).norm(dim=-1)
    return diff / b.flatten(-dims).norm(dim=-1).clamp_min(1e-30)


def guided_control(prior: Any, cp: ControlProblem, initial: Tensor, target: Tensor, guidance: Guidance | None = None,
                   *, solver: str = "dpmpp_2m", steps: int = 20, schedule: str = "karras", n_samples: int = 1,
                   generator: torch.Generator | None = None, seed: int = 0,
                   solver_options: Mapping[str, Any] | None = None, dtype: torch.dtype = torch.float32,
                   progress: bool = False) -> ControlSamples:
    """Sample forcings (and trajectories) that steer ``initial [B, *space]`` to ``target [B, *space]``.

    prior: a joint prior over the forcing and the state trajectory (:class:`diffpde.Prior`, or
    anything with its interface such as :class:`~diffpde.inference.gaussian.GaussianPrior`);
    ``guidance``: :class:`Guidance` (default: decoder, WDNO's); ``solver``, ``steps``, ``schedule``:
    the ``samplers`` solver on ``prior.sigmas(steps, schedule)``; ``n_samples``: ``K`` per instance.
    Each generated forcing is re-simulated (:func:`resimulate`).
    """
    guidance = guidance or Guidance()
    _check_prior(prior, cp)
    b, k = initial.shape[0], int(n_samples)
    if k < 1 or steps < 1:
        raise ValueError(f"n_samples and steps must be >= 1, got {n_samples}, {steps}")
    if tuple(initial.shape[1:]) != cp.shape[1:] or tuple(target.shape) != tuple(initial.shape):
        raise ValueError(f"initial and target must be [B, {', '.join(map(str, cp.shape[1:]))}], got "
                         f"{list(initial.shape)} and {list(target.shape)}")
    if generator is None:
        generator = torch.Generator().manual_seed(int(seed))
    device = prior.device
    s0 = _repeat(initial.to(device, torch.float64), k)
    tgt = _repeat(target.to(device, torch.float64), k)
    denoise = prior.denoiser()

    def denoiser(z: Tensor, sigma: Tensor) -> Tensor:
        return denoise(z.to(dtype), sigma.to(dtype)).to(z.dtype)

    wrapped, guide = _guided_denoiser(prior, cp, guidance, s0, tgt, denoiser)
    sigmas = prior.sigmas(steps, schedule)
    noise = torch.randn((b * k, *prior.latent_shape), generator=generator, dtype=torch.float64).to(device, dtype)
    stats: dict[str, Any] = {}
    bar = None
    callback = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=sigmas.numel() - 1, desc=f"control ({guidance.describe()}, {solver})", unit="step",
                   leave=False)
        callback = lambda info: bar.update(1)  # noqa: E731
    was_training = prior.training
    prior.eval()
    start = time.perf_counter()
    try:
        z = samplers.sample(wrapped, noise * float(sigmas[0]), sigmas, solver=solver, generator=generator, stats=stats,
                            callback=callback, **dict(solver_options or {}))
    finally:
        prior.train(was_training)
        if bar is not None:
            bar.close()
    wall = time.perf_counter() - start
    with torch.no_grad():
        fields = prior.decode_fields(z)
        control = fields[cp.control].to(torch.float64).cpu()
        state = fields[cp.state].to(torch.float64).cpu()
    s0, tgt = s0.cpu(), tgt.cpu()
    cost_generated = cp.cost(state[:, -1], control, tgt)
    actual = resimulate(cp, s0, tgt, control)
    rel = _relative(state, actual.trajectory, cp.space_dims + 1)
    rel_final = _relative(state[:, -1], actual.trajectory[:, -1], cp.space_dims)

    def split(t: Tensor) -> Tensor:
        return t.reshape(b, k, *t.shape[1:])

    actual = ControlOutcome(split(actual.control), split(actual.trajectory), split(actual.cost), split(actual.tracking),
                            split(actual.effort), actual.wall_time)
    info = {"nfe": stats.get("nfe"), "vjp": getattr(guide, "vjp_count", 0), "wall_time": wall,
            "resim_time": actual.wall_time, "solver": solver, "steps": int(sigmas.numel() - 1),
            "guidance": guidance.describe()}
    if guide is not None:
        info["clipped"] = guide.clipped
    if isinstance(guide, CovarianceGuidance):
        info["cg_fallbacks"] = guide.fallbacks
    return ControlSamples(split(control), split(state), split(cost_generated), actual, split(rel), split(rel_final),
                          info)


# -- evaluation on a set of instances ---------------------------------------------------------------


def steps_for_nfe(solver: str, nfe: int) -> int:
    """Solver steps that spend about ``nfe`` network evaluations (Heun-type solvers: two per step, one on the last)."""
    per = samplers.get_solver(solver).nfe_per_step
    return max(1, (nfe + per - 1) // per if per == 1 else (nfe + 1) // per)


def _summary(values: Tensor) -> dict[str, float]:
    v = values.detach().to(torch.float64).flatten()
    return {"mean": float(v.mean()), "median": float(v.median()), "std": float(v.std()) if v.numel() > 1 else 0.0}


def _outcome_json(out: ControlOutcome, n: int) -> dict[str, Any]:
    info = {k: v for k, v in out.info.items()}
    return {"J": _summary(out.cost), "tracking": _summary(out.tracking), "effort": _summary(out.effort),
            "J_per_instance": out.cost.tolist(), "wall_time": out.wall_time, "time_per_instance": out.wall_time / n,
            **info}


def evaluate_control(prior: Any, cp: ControlProblem, initial: Tensor, target: Tensor, *,
                     guidances: Mapping[str, Guidance], nfes: Sequence[int] = (20,), solver: str = "dpmpp_2m",
                     n_samples: int = 4, seed: int = 0, reference: Tensor | None = None,
                     adjoint: Mapping[str, Any] | None = None, keep: bool = False,
                     log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Guided sampling against no control and the adjoint optimum on the same instances; a JSON-able dict.

    guidances: name -> :class:`Guidance`, each run at every NFE in ``nfes`` with ``n_samples`` per
    instance; reference: a forcing known to reach the target (the dataset's), scored too;
    adjoint: options of :func:`adjoint_control` (``None``: not run). With ``keep`` the entries
    ``"_outcomes"`` (baselines) and ``"_samples"`` (guided runs) hold the tensors (for figures).
    """
    say = log or (lambda s: None)
    n = initial.shape[0]
    result: dict[str, Any] = {"problem": cp.problem.config(), "lam": cp.lam, "bound": cp.bound, "instances": n,
                              "samples_per_instance": n_samples, "solver": solver, "seed": seed,
                              "cost": "J = mean_x (s(T) - target)^2 + lam mean_{t,x} f^2 over the active nodes"}
    outcomes: dict[str, ControlOutcome] = {"no control": no_control(cp, initial, target)}
    if reference is not None:
        outcomes["reference"] = resimulate(cp, initial, target, reference)
    if adjoint is not None:
        say("adjoint optimum (L-BFGS through the solver)")
        outcomes["adjoint"] = adjoint_control(cp, initial, target, log=log, **dict(adjoint))
    result["baselines"] = {name: _outcome_json(out, n) for name, out in outcomes.items()}
    runs, kept = [], {}
    for name, guidance in guidances.items():
        for nfe in nfes:
            steps = steps_for_nfe(solver, nfe)
            say(f"guided: {name} ({guidance.describe()}), {solver}, {steps} steps")
            s = guided_control(prior, cp, initial, target, guidance, solver=solver, steps=steps, n_samples=n_samples,
                               seed=seed)
            best = s.best()
            rows = torch.arange(n)
            runs.append({
                "name": name, "guidance": guidance.describe(), "mode": guidance.mode, "nfe": s.info["nfe"],
                "steps": s.info["steps"], "vjp": s.info["vjp"],
                "J_generated": _summary(s.cost_generated), "J_actual": _summary(s.actual.cost),
                "J_actual_best_of_k": _summary(s.actual.cost[rows, best]),
                "tracking_actual": _summary(s.actual.tracking), "effort_actual": _summary(s.actual.effort),
                "rel_l2": _summary(s.rel_l2), "rel_l2_final": _summary(s.rel_l2_final),
                "J_actual_per_instance": s.actual.cost.mean(1).tolist(),
                "J_generated_per_instance": s.cost_generated.mean(1).tolist(),
                "wall_time": s.info["wall_time"], "time_per_instance": s.info["wall_time"] / n,
                "time_per_sample": s.info["wall_time"] / (n * n_samples),
                **{k: s.info[k] for k in ("cg_fallbacks", "clipped") if k in s.info},
            })
            if keep:
                kept[(name, nfe)] = s
    result["guided"] = runs
    if keep:
        result["_outcomes"], result["_samples"] = outcomes, kept
    return result


# -- an exact prior for tests and the 2D case ---------------------------------------------------------


def gaussian_surrogate(cp: ControlProblem, n: int, seed: int, *, shrinkage: float = 1e-3, amplitude: float = 1.0,
                       scale: float | None = None):
    """A Gaussian prior over ``(control, state)`` trajectories fitted to ``n`` solver samples
    (:func:`sample_instances`): their mean and covariance, shrunk toward ``shrinkage`` times the mean
    variance on the diagonal. Its denoiser is exact (:class:`~diffpde.inference.gaussian.GaussianPrior`),
    so guidance can be checked without a trained network; it knows the dynamics only to second order."""
    from .gaussian import GaussianPrior

    data = sample_instances(cp, n, seed, amplitude=amplitude)
    x = torch.stack([data["control"], data["trajectory"]], 1).reshape(n, -1)
    mean = x.mean(0)
    centred = x - mean
    cov = centred.T @ centred / max(n - 1, 1)
    var = float(cov.diagonal().mean())
    cov = cov + shrinkage * var * torch.eye(cov.shape[0], dtype=cov.dtype)
    return GaussianPrior((cp.control, cp.state), cp.shape, mean, cov, scale=scale or math.sqrt(var))
