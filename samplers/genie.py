"""Higher-order steps from Jacobian-vector products: GENIE's truncated Taylor step (Dockhorn, Vahdat, Kreis 2022).

Frame: variance exploding, ``x = x0 + sigma * eps``, denoiser ``D(x, sigma) -> x0_hat``; the probability-flow ODE is
``dx/dsigma = eps_hat(x, sigma) = (x - D(x, sigma)) / sigma``. GENIE's "DDIM ODE" is this equation (its
``x / sqrt(alpha)`` and ``t = sqrt(1 - alpha) / sqrt(alpha)`` are our ``x`` and ``sigma``), and its step is the
second-order Taylor expansion of the solution in ``sigma``:

    x_next = x + h eps_hat + h^2 / 2 d eps_hat / dsigma,        h = sigma_next - sigma,

where the first two terms are the DDIM (Euler) step and ``d/dsigma`` is the *total* derivative along the trajectory,
``partial_sigma + (partial_x) dx/dsigma``. Since ``d eps_hat / dsigma = -D' / sigma`` with ``D' = dD/dsigma`` along
the flow, every step needs one quantity beyond the denoiser value: ``D'``, the Jacobian-vector product of ``D`` in
``(x, sigma)`` along ``(eps_hat, 1)``. It is computed by one ``torch.func.jvp`` (forward mode), which also returns
the value ``D``; the tangent needs ``eps_hat``, so a step first evaluates ``D`` (1 NFE) and then the JVP.

With the same ``D'`` the package's data-prediction exponential form is also available (``form="exp"``): the exact
solution ``x_next = r x + sigma_next int D(s) / s^2 ds`` (``r = sigma_next / sigma``) with ``D`` expanded to first
order in ``lambda = -log(sigma)`` gives ``x_next = r x + (1 - r) D - sigma (h_lambda - 1 + r) D'``,
``h_lambda = log(sigma / sigma_next)`` (DPM-Solver-2's update with the exact derivative). Its step to 0, where
``h_lambda`` is infinite, is GENIE's: ``x(0) = D - sigma D' / 2`` (local error ``O(sigma^3)``; expanding ``D`` in
sigma instead, ``D - sigma D'``, would leave ``O(sigma^2)``).

JVP modes (``jvp=``):
    ``"func"``      ``torch.func.jvp`` (forward-mode AD), run under :func:`forward_ad_compat` (the math backend of
                    scaled-dot-product attention and contiguous group-norm inputs: PyTorch's fused CPU attention has
                    no forward derivative, and its group-norm forward derivative fails on non-contiguous inputs).
    ``"autograd"``  ``torch.autograd.functional.jvp`` (the double-backward trick: two reverse passes).
    ``"fd"``        a one-sided finite difference ``(D - D(x - delta v, sigma - delta)) / delta`` with
                    ``delta = sigma * sqrt(machine epsilon)`` taken toward smaller sigma: one more plain network
                    evaluation, works for every callable (guidance wrappers that detach ``x`` included).
The exact modes differentiate the callable as written: a wrapper that detaches its input (DPS-type guidance does,
it returns ``x0_hat - w grad`` with the gradient computed on a detached copy) has a *different* Jacobian than the
function it represents. ``verify=True`` (default) therefore compares the first JVP of a run with a finite difference
(one extra NFE per run) and raises when they disagree by more than 10 %; with guidance wrappers use ``jvp="fd"``.
When the chosen exact mode raises, the other exact mode is tried; if both fail, a RuntimeError names both errors.

Cost, measured on the demo Darcy prior (diffusers UNet, 1.1 M parameters, batch 16, one CPU thread): a ``func`` JVP
costs about 4 plain forwards, ``autograd`` 4.5, ``fd`` 1, and ``fd`` gives the same final error to 3 digits.
GENIE's own answer to the cost is a small head distilled to predict the JVP term; none is provided here.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from ._core import Denoiser, Run, Tensor, check_finite, register
from .ode import phi

JVP_MODES = ("func", "autograd", "fd")
FORMS = ("ddim", "exp")


# ---------------------------------------------------------------------------------------------
# the total derivative of the denoiser along the flow


class _ContiguousGroupNorm(TorchFunctionMode):
    """Give ``group_norm`` a contiguous input (primal and tangent): its forward-mode formula views the tangent."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is F.group_norm or func is torch.group_norm:
            args = (args[0].clone(memory_format=torch.contiguous_format),) + tuple(args[1:])
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def forward_ad_compat():
    """Context in which common networks (diffusers UNets, transformers) support forward-mode AD on CPU and GPU.

    Selects the math backend of ``scaled_dot_product_attention`` (fused kernels lack forward and double-backward
    derivatives) and makes ``group_norm`` inputs contiguous. Values are unchanged up to rounding.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.MATH]), _ContiguousGroupNorm():
        yield


def _fd_delta(x: Tensor, sigma: float) -> float:
    return sigma * math.sqrt(torch.finfo(x.dtype).eps)


def denoiser_jvp(denoiser: Denoiser, x: Tensor, sigma: float | Tensor, dx: Tensor, mode: str = "func",
                 denoised: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``(D(x, sigma), dD)`` with ``dD = J_x D dx + partial_sigma D``: the JVP of ``D`` along ``(dx, 1)``.

    ``sigma`` is a scalar or ``[B]``; ``mode`` one of :data:`JVP_MODES`. For ``"fd"`` the value ``D`` is taken from
    ``denoised`` when given (else one more call) and the difference costs one call; the exact modes return the
    value they compute with the derivative (``denoised`` is ignored). Runs without building a graph.
    """
    if mode not in JVP_MODES:
        raise ValueError(f"jvp must be one of {JVP_MODES}, got {mode!r}")
    sigma_b = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if sigma_b.ndim == 0:
        sigma_b = sigma_b.expand(x.shape[0]).clone()  # forward AD cannot make an expanded tensor dual
    ones = torch.ones_like(sigma_b)
    if mode == "fd":
        if denoised is None:
            denoised = denoiser(x, sigma_b)
        delta = _fd_delta(x, float(sigma_b.max()))
        shifted = denoiser(x - delta * dx, sigma_b - delta)
        return denoised, (denoised - shifted) / delta
    x, dx = x.detach(), dx.detach()
    with forward_ad_compat():
        if mode == "func":
            value, tangent = torch.func.jvp(denoiser, (x, sigma_b), (dx, ones))
        else:
            with torch.enable_grad():
                value, tangent = torch.autograd.functional.jvp(denoiser, (x, sigma_b), (dx, ones), strict=True)
    return value.detach(), tangent.detach()


class _Derivative:
    """Evaluates ``D'`` for one run: counts JVPs, falls back between exact modes, verifies the first one."""

    def __init__(self, run: Run, mode: str, verify: bool) -> None:
        if mode not in JVP_MODES:
            raise ValueError(f"jvp must be one of {JVP_MODES}, got {mode!r}")
        self.run, self.mode, self.verify = run, mode, verify and mode != "fd"
        self.count = 0

    def __call__(self, x: Tensor, sigma: float, denoised: Tensor) -> Tensor:
        run = self.run
        dx = (x - denoised) / sigma
        if self.mode == "fd":
            delta = _fd_delta(x, sigma)
            shifted = run.denoise(x - delta * dx, sigma - delta)
            return (denoised - shifted) / delta
        try:
            _, tangent = denoiser_jvp(run.denoiser, x, sigma, dx, self.mode)
        except Exception as first:  # noqa: BLE001 - any failure of the transform: try the other exact mode
            other = "autograd" if self.mode == "func" else "func"
            try:
                _, tangent = denoiser_jvp(run.denoiser, x, sigma, dx, other)
            except Exception as second:  # noqa: BLE001
                raise RuntimeError(
                    f"the denoiser cannot be differentiated in forward mode ({self.mode}: {first!r}) nor by "
                    f"double backward ({other}: {second!r}); use jvp='fd' (one more network call per step)"
                ) from second
            self.mode = other
        self.count += 1
        if tangent.shape != x.shape:
            raise ValueError(f"the denoiser's JVP has shape {tuple(tangent.shape)}, expected {tuple(x.shape)}")
        check_finite(tangent, f"the denoiser's JVP at step {run.step} (sigma={sigma:g})")
        if self.verify:
            self.verify = False
            delta = _fd_delta(x, sigma)
            estimate = (denoised - run.denoise(x - delta * dx, sigma - delta)) / delta
            err = float((estimate - tangent).norm() / estimate.norm().clamp_min(torch.finfo(x.dtype).tiny))
            if err > 0.1:
                raise ValueError(
                    f"the {self.mode} JVP of the denoiser differs from a finite difference by {err:.0%} at sigma="
                    f"{sigma:g}: it does not differentiate the function it returns (a wrapper that detaches its "
                    f"input, a no-grad or in-place region?); use jvp='fd', or verify=False if this is intended")
        return tangent


def _finish(run: Run, derivative: _Derivative, x: Tensor) -> Tensor:
    x = run.finish(x)
    if run.stats is not None:
        run.stats["jvp"] = derivative.count
        run.stats["jvp_mode"] = derivative.mode
    return x


# ---------------------------------------------------------------------------------------------
# solver


def hermite_derivatives(f: Tensor, df: Tensor, f_prev: Tensor, df_prev: Tensor, dt: float,
                        order: int) -> list[Tensor]:
    """Higher derivatives at ``t`` of a function known with its first derivative at ``t`` and ``t - dt``.

    Returns ``[f2]`` (``order == 3``: the backward difference of ``f1``) or ``[f2, f3]`` (``order == 4``: the
    cubic Hermite interpolant), ``fk`` the k-th derivative; accurate enough for a local error ``O(dt^(order + 1))``.
    """
    b = df_prev - df
    if order == 3:
        return [-b / dt]
    a = f_prev - f + dt * df
    second = (6 * a + 2 * dt * b) / dt**2
    return [second, 2 * (b + dt * second) / dt**2]


def taylor_step(x: Tensor, denoised: Tensor, derivatives: list[Tensor], sigma: float, sigma_next: float,
                form: str = "ddim") -> Tensor:
    """One truncated Taylor step from ``sigma`` to ``sigma_next >= 0``.

    ``form="ddim"``: ``x + h eps_hat + sum_k h^k / k! eps_k``, ``h = sigma_next - sigma``, with ``derivatives`` the
    sigma derivatives ``[eps_1, eps_2, ...]`` of ``eps_hat`` (GENIE: ``[eps_1]``). ``form="exp"``: ``r x + (1 - r) D
    + sum_k h^(k + 1) phi_(k + 1)(-h) D_k`` with ``derivatives`` the ``lambda = -log(sigma)`` derivatives
    ``[D_1, ...]`` of ``D`` and ``h = log(sigma / sigma_next)``; its step to 0 (``h`` infinite) is the ddim step
    ``D - sigma dD/dsigma / 2 = D + D_1 / 2``. Coefficients in float64.
    """
    if form == "ddim":
        h = sigma_next - sigma
        x = x + (h / sigma) * (x - denoised)
        for k, d in enumerate(derivatives, start=2):
            x = x + (h**k / math.factorial(k)) * d
        return x
    if form == "exp":
        if sigma_next == 0:  # the Taylor step of x in sigma, D - sigma D' / 2: D - sigma D' is only O(sigma^2)
            return denoised + 0.5 * derivatives[0]
        h = math.log(sigma / sigma_next)
        x = (sigma_next / sigma) * x + (-math.expm1(-h)) * denoised
        for k, d in enumerate(derivatives, start=1):
            x = x + h ** (k + 1) * phi(k + 1, -h) * d
        return x
    raise ValueError(f"form must be one of {FORMS}, got {form!r}")


@register("genie", order=2, nfe_per_step=1, stochastic=False,
          description="GENIE: second-order Taylor steps with the exact JVP of the denoiser (1 NFE + 1 JVP per step)")
@torch.no_grad()
def genie(denoiser, x, sigmas, *, hooks=(), generator=None, callback=None, stats=None, form: str = "ddim",
          order: int = 2, jvp: str = "func", verify: bool = True, denoise_to_zero: bool = False) -> Tensor:
    """GENIE (Dockhorn et al. 2022): truncated Taylor steps, ``dD/dsigma`` by one JVP of the denoiser per step.

    Options:
        form:            "ddim" (GENIE's Taylor expansion of the DDIM ODE in sigma) or "exp" (exponential
                         integrator in log sigma with the same derivative); see the module docstring.
        order:           2 (GENIE), or 3 / 4: multistep, the higher derivatives from the previous step's value and
                         derivative (backward difference / cubic Hermite); the first step is second order.
                         The Hermite extrapolation in log sigma (``form="exp", order=4``) is unstable on coarse
                         grids (fewer than ~30 steps over 80 -> 0.002); ``order=3`` is not.
        jvp:             "func" (torch.func.jvp), "autograd" (double backward) or "fd" (finite difference).
        verify:          check the first exact JVP against a finite difference (one extra NFE per run).
        denoise_to_zero: the step to sigma = 0 returns ``D`` (1 NFE, no JVP) instead of the Taylor step.
    Cost per step: 1 NFE (``D``, whose value gives the JVP's tangent) plus 1 JVP (a forward-mode pass that
    re-evaluates ``D`` with its tangent); ``stats`` receives ``nfe`` (plain calls), ``jvp`` and ``jvp_mode``.
    With ``jvp="fd"`` the derivative is a second plain call: ``nfe`` is 2 per step and ``jvp`` 0.
    The next step starts from the state the hooks return; the history (orders 3, 4) holds values and
    derivatives of the denoiser at the hooked states, never states.
    """
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    if order not in (2, 3, 4):
        raise ValueError(f"order must be 2, 3 or 4, got {order!r}")
    run = Run(denoiser, x, sigmas, hooks=hooks, callback=callback, stats=stats)
    derivative = _Derivative(run, jvp, verify)
    previous = None  # (t, f, f_1) at the previous grid point: t = sigma (ddim) or lambda (exp)
    for i, sigma, sigma_next in run.steps():
        denoised = run.denoise(x, sigma)
        if sigma_next == 0 and denoise_to_zero:
            x = run.end_step(i, denoised, denoised)
            continue
        d_sigma = derivative(x, sigma, denoised)  # dD/dsigma along the flow
        if form == "ddim":  # eps_hat and its sigma derivative -D'/sigma
            t, f, df = sigma, (x - denoised) / sigma, -d_sigma / sigma
        else:               # D and its lambda derivative -sigma D'
            t, f, df = -math.log(sigma), denoised, -sigma * d_sigma
        derivatives = [df]
        if order > 2 and previous is not None and sigma_next > 0:
            derivatives += hermite_derivatives(f, df, previous[1], previous[2], t - previous[0], order)
        x_next = taylor_step(x, denoised, derivatives, sigma, sigma_next, form)
        previous = (t, f, df)
        x = run.end_step(i, x_next, denoised)
    return _finish(run, derivative, x)


# ---------------------------------------------------------------------------------------------
# tuned grids


def local_errors(denoiser: Denoiser, calibration, *, form: str = "ddim", jvp: str = "fd",
                 denoise_to_zero: bool = True) -> Tensor:
    """Per-sample errors ``[N + 1, N + 1, B]`` of one GENIE step ``c_i -> c_j`` from the reference states.

    From each reference state ``x_ref(c_i)`` of ``calibration`` (:func:`samplers.tuning.calibrate`) one denoiser
    call and one JVP give the Taylor step to every later candidate; entry ``[i, j, b]`` is its distance to
    ``x_ref(c_j)`` (the step to 0 is ``D`` with ``denoise_to_zero``); entries that are not forward steps are inf.
    """
    candidates, traj = calibration.candidates, calibration.trajectory
    dtype, c = calibration.x.dtype, candidates.tolist()
    n1, batch = traj.shape[0], traj.shape[1]
    errors = torch.full((n1, n1, batch), math.inf, dtype=torch.float64)
    with torch.no_grad():
        for i in range(n1 - 1):
            state = traj[i].to(dtype)
            denoised = denoiser(state, torch.full((batch,), c[i], dtype=dtype, device=state.device))
            _, d_sigma = denoiser_jvp(denoiser, state, c[i], (state - denoised) / c[i], jvp, denoised=denoised)
            df = -d_sigma / c[i] if form == "ddim" else -c[i] * d_sigma
            for j in range(i + 1, n1):
                pred = denoised if c[j] == 0 and denoise_to_zero else taylor_step(state, denoised, [df], c[i], c[j], form)
                errors[i, j] = (pred.to(torch.float64) - traj[j]).reshape(batch, -1).norm(dim=1)
    return errors


def tuned_sigmas(denoiser: Denoiser, x: Tensor, steps: int, *, calibration=None, errors: Tensor | None = None,
                 form: str = "ddim", jvp: str = "fd", denoise_to_zero: bool = True, sigma_max: float | None = None,
                 sigma_min: float | None = None, fine_steps: int = 48, propagate: bool = True) -> Tensor:
    """A grid of ``steps`` steps for :func:`genie` (order 2), tuned on the calibration batch ``x`` at ``sigma_max``.

    The cost model of :func:`samplers.tuning.optimized_sigmas` with GENIE's step (:func:`local_errors`; pass
    ``errors`` to reuse them across budgets, and a ``calibration`` from :func:`samplers.tuning.calibrate`).
    Dynamic programming finds the path with ``steps`` steps that minimises the summed local errors, weighted by
    the growth of an error made at the landing node to the power 0, 1/2 or 1 (``propagate``); the grid whose
    ``genie`` run ends closest to the calibration reference is returned. Cost: the calibration, ``N`` calls and
    ``N`` JVPs of the batch for the errors, three solver runs.
    """
    from .tuning import _shortest_path, calibrate

    if calibration is None:
        if sigma_max is None or sigma_min is None:
            raise ValueError("give sigma_max and sigma_min, or a calibration")
        calibration = calibrate(denoiser, x, sigma_max=sigma_max, sigma_min=sigma_min, fine_steps=fine_steps)
    elif calibration.x.shape != x.shape or not torch.equal(calibration.x, x):
        raise ValueError("the calibration was computed for a different batch x")
    if errors is None:
        errors = local_errors(denoiser, calibration, form=form, jvp=jvp, denoise_to_zero=denoise_to_zero)
    candidates = calibration.candidates
    grids = []
    for gamma in (0.0, 0.5, 1.0) if propagate else (0.0,):
        weighted = errors if gamma == 0 else errors * calibration.growth[None] ** gamma
        grids.append(candidates[_shortest_path(weighted.nan_to_num(nan=math.inf).mean(-1), steps)].clone())
    if len(grids) == 1:
        return grids[0]
    target = calibration.trajectory[-1].to(x.dtype)
    with torch.no_grad():
        final = [float((genie(denoiser, x, grid, form=form, jvp=jvp, verify=False, denoise_to_zero=denoise_to_zero)
                        - target).flatten(1).norm(dim=1).mean()) for grid in grids]
    return grids[min(range(len(grids)), key=final.__getitem__)]
