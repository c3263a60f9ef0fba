"""Guidance: denoiser wrappers that add likelihood gradients, and step-end hooks that project the state.

Three ways to act on a sampler, all solver-agnostic:

* **Denoiser wrappers** (:class:`DPSGuidance`) correct ``x0_hat``. A solver runs under
  ``torch.no_grad()``; the wrapper turns gradients on locally, differentiates a loss of ``x0_hat``
  through the denoiser with one vector-Jacobian product and returns a corrected ``x0_hat``. Every
  solver (ODE, SDE, multistep) sees only a different denoiser.
* **Step-end hooks** ``hook(x, sigma, step, denoised) -> x`` (:func:`inpaint`, :func:`project`) replace the
  state after a step; what a hook returns is the state the next step starts from. ``sigma`` is the
  noise level of that state. Inside multi-stage solvers hooks run once per step, on the finished
  step: Heun and EDM after the corrector (the trapezoidal update); DPM-Solver++(2M/3M), iPNDM and
  DPM-Solver++(2M) SDE after each step (their history holds denoiser outputs, never states);
  UniPC after the predictor, its corrector is then added to the hooked state; ``pc`` after the
  Langevin corrector. The TDS particle sampler takes no hooks (a hook would change the particles
  without changing their weights).
* **A wrapper and a hook together** (:class:`HeunStepGuidance`, DiffusionPDE's sampler): the wrapper
  keeps the graphs of a Heun step's denoiser calls, the hook corrects the finished state with a
  gradient taken through the whole step.
* **Callbacks** (``callback=`` of every solver) observe and return nothing: after each step they get a
  dict with ``step, sigma, sigma_next, x`` (the hooked state) ``, denoised, nfe``.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence, Union

import torch

from ._core import Denoiser, Hook, Tensor, append_dims, randn_like

Loss = Callable[[Tensor], Tensor]
LossTerms = Union[Loss, Sequence[Union[Loss, "tuple[Loss, float]"]], Mapping[str, Union[Loss, "tuple[Loss, float]"]]]


def _loss_terms(loss: LossTerms) -> list[tuple[str, Loss, float]]:
    """Normalise a loss, a list of losses or ``(loss, weight)`` pairs, or a dict of them to named terms."""
    if callable(loss):
        items = [("loss", loss)]
    elif isinstance(loss, Mapping):
        items = list(loss.items())
    else:
        items = [(f"term{i}", term) for i, term in enumerate(loss)]
    if not items:
        raise ValueError("guidance needs at least one loss term")
    terms = []
    for name, term in items:
        fn, weight = term if isinstance(term, tuple) else (term, 1.0)
        if not callable(fn):
            raise TypeError(f"loss term {name!r} is not callable: {fn!r}")
        terms.append((str(name), fn, float(weight)))
    return terms


class DPSGuidance:
    """Wrap a denoiser so that it returns ``x0_hat - w(sigma) * grad_x L(x0_hat(x))`` (DPS-type guidance).

    Arguments:
        denoiser:   ``D(x, sigma) -> x0_hat`` in the VE frame; must be differentiable in ``x``.
        loss:       per-sample loss of ``x0_hat``, a callable returning ``[B]``; or a list of such
                    callables or ``(callable, weight)`` pairs, or a dict ``name -> callable | (callable, weight)``.
                    The terms are summed with their weights before ONE backward pass per call.
        weight:     guidance scale ``w``: a float, or a callable of ``sigma`` (``[B]`` tensor) returning a
                    float or ``[B]`` tensor.
        normalize:  if True the per-sample total loss ``L`` is replaced by ``sqrt(L)`` before
                    differentiation: for ``L = ||y - A(x0_hat)||^2`` this is the unsquared residual norm of
                    DPS (Chung et al. 2023), whose gradient is ``grad L / (2 ||y - A(x0_hat)||)``.

    Relation to the posterior score. In the VE frame Tweedie's formula reads
    ``x0_hat = x + sigma^2 * grad log p(x)``. Bayes adds ``grad log p(y | x)`` to the score, and DPS
    approximates ``p(y | x) ~ p(y | x0_hat(x))``. With ``L = -log p(y | x0_hat)`` (for Gaussian noise of
    std ``s``: ``||y - A x0_hat||^2 / (2 s^2)``, see :func:`gaussian_nll`) the posterior denoiser is
    ``x0_hat + sigma^2 * grad_x log p(y | x) = x0_hat - sigma^2 * grad_x L``: the weight
    ``w(sigma) = sigma^2`` is the "posterior score" scaling. A constant ``w`` gives a correction of
    the same size at every noise level, like DiffusionPDE's fixed-weight corrections (an Euler step
    from ``sigma`` to ``sigma_next`` then moves the state by ``-w (1 - sigma_next / sigma) * grad``).

    The gradient is taken through the denoiser with ``torch.autograd.grad`` under
    ``torch.enable_grad()``, on a detached copy of ``x``: the result carries no graph. Counters:
    ``calls`` (wrapper calls) and ``vjp_count`` (backward passes, one per call); ``last_losses``
    holds the per-term losses ``[B]`` of the latest call (detached).
    """

    def __init__(self, denoiser: Denoiser, loss: LossTerms, weight: float | Callable[[Tensor], Tensor | float] = 1.0,
                 normalize: bool = False) -> None:
        self.denoiser = denoiser
        self.terms = _loss_terms(loss)
        self.weight = weight
        self.normalize = normalize
        self.calls = 0
        self.vjp_count = 0
        self.last_losses: dict[str, Tensor] = {}

    def loss(self, denoised: Tensor) -> Tensor:
        """The weighted per-sample total loss ``[B]`` of ``x0_hat`` (square-rooted if ``normalize``)."""
        total = 0.0
        losses = {}
        for name, fn, w in self.terms:
            value = fn(denoised)
            if value.shape != denoised.shape[:1]:
                raise ValueError(f"loss term {name!r} must return one value per sample, shape "
                                 f"{tuple(denoised.shape[:1])}; got {tuple(value.shape)}")
            losses[name] = value.detach()
            total = total + w * value
        self.last_losses = losses
        if self.normalize:
            total = total.clamp_min(torch.finfo(total.dtype).tiny).sqrt()
        return total

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        self.calls += 1
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            denoised = self.denoiser(x_in, sigma)
            (grad,) = torch.autograd.grad(self.loss(denoised).sum(), x_in)
        self.vjp_count += 1
        w = self.weight(sigma) if callable(self.weight) else self.weight
        w = torch.as_tensor(w, dtype=x.dtype, device=x.device)
        if w.ndim:
            w = append_dims(w.reshape(-1), x.ndim)
        return denoised.detach() - w * grad


def dps(denoiser: Denoiser, loss: LossTerms, weight: float | Callable = 1.0, normalize: bool = False) -> DPSGuidance:
    """Shorthand for :class:`DPSGuidance`."""
    return DPSGuidance(denoiser, loss, weight=weight, normalize=normalize)


def posterior_weight(scale: float = 1.0) -> Callable[[Tensor], Tensor]:
    """The weight ``w(sigma) = scale * sigma^2`` that turns a negative log-likelihood into a posterior score."""
    return lambda sigma: scale * sigma**2


def _residual(forward: Callable[[Tensor], Tensor], observations: Tensor) -> Callable[[Tensor], Tensor]:
    def residual(x0: Tensor) -> Tensor:
        r = observations - forward(x0)
        return r.reshape(r.shape[0], -1)
    return residual


def gaussian_nll(forward: Callable[[Tensor], Tensor], observations: Tensor, noise_std: float = 1.0) -> Loss:
    """Per-sample ``||y - A(x0)||^2 / (2 s^2)``: the negative log-likelihood of ``y = A(x0) + s * noise``.

    ``forward`` maps ``x0_hat [B, ...]`` to predictions shaped like ``observations`` (``[B, ...]``, or
    without the batch dimension to share one observation across the batch).
    """
    residual = _residual(forward, observations)
    return lambda x0: residual(x0).pow(2).sum(1) / (2 * noise_std**2)


def residual_norm(forward: Callable[[Tensor], Tensor], observations: Tensor) -> Loss:
    """Per-sample unsquared residual norm ``||y - A(x0)||``: the DPS loss (Chung et al. 2023).

    Equivalent to ``DPSGuidance(..., loss=gaussian_nll(...), normalize=True)`` up to the factor
    ``sqrt(2) s``; the norm has an infinite gradient at a zero residual, this helper clamps it.
    """
    residual = _residual(forward, observations)
    return lambda x0: residual(x0).pow(2).sum(1).clamp_min(torch.finfo(x0.dtype).tiny).sqrt()


class HeunStepGuidance:
    """Gradient corrections of the state after each step of the ``heun`` solver, differentiated through the step.

    After step ``i`` from ``x`` (at ``sigmas[i]``) to ``x_next`` (at ``sigmas[i + 1]``)::

        x_next <- x_next - grad_x L_i(D_last)

    where ``D_last`` is the last denoiser output of the step (at the Euler predictor ``x_euler``
    and ``sigmas[i + 1]``; at ``x`` for the final Euler step to 0) and the gradient flows through
    the whole step, the Euler predictor included. This is DiffusionPDE's sampler (Huang et al.
    2024): fixed-weight corrections applied to the state, not to ``x0_hat``.

    Arguments:
        denoiser: ``D(x, sigma) -> x0_hat`` in the VE frame, differentiable in ``x``.
        loss:     ``loss(denoised, step, sigma_next) -> [B]`` per-sample loss of the step's last
                  denoiser output (weights included), or ``None`` for no correction at that step.
        sigmas:   the grid the solver walks (the step's start ``sigmas[i]`` enters the chain rule).

    Run it as ``samplers.sample(g.denoiser, x, sigmas, solver="heun", hooks=[g.hook])``: ``denoiser``
    runs the wrapped denoiser with gradients on and keeps the graphs of the step's calls, ``hook``
    differentiates through them and clears them. The hook checks that it sees Heun's calls (two per
    step, one on the last) and refuses any other solver. ``vjp_count`` counts the steps corrected
    (each a backward pass through the step's denoiser calls).
    """

    def __init__(self, denoiser: Denoiser, loss: Callable[[Tensor, int, float], Tensor | None],
                 sigmas: Sequence[float] | Tensor) -> None:
        self.inner = denoiser
        self.loss = loss
        self.sigmas = torch.as_tensor(sigmas, dtype=torch.float64).flatten().tolist()
        self.calls: list[tuple[Tensor, Tensor, Tensor]] = []   # (input leaf, output with graph, output returned)
        self.vjp_count = 0

    def denoiser(self, x: Tensor, sigma: Tensor) -> Tensor:
        """The wrapped denoiser, recording its graph for the step-end gradient."""
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            out = self.inner(x_in, sigma)
        returned = out.detach()
        self.calls.append((x_in, out, returned))
        return returned

    def hook(self, x: Tensor, sigma_next: float, step: int, denoised: Tensor) -> Tensor:
        """Step-end hook: ``x - grad_{x_step_start} loss(denoised, step, sigma_next)``."""
        calls, self.calls = self.calls, []
        expected = 1 if sigma_next == 0 else 2
        if len(calls) != expected or calls[-1][2] is not denoised:
            raise RuntimeError(f"HeunStepGuidance works with the heun solver only: step {step} made {len(calls)} "
                               f"denoiser call(s) through the wrapper, Heun makes {expected}")
        sigma = self.sigmas[step]
        with torch.enable_grad():
            loss = self.loss(calls[-1][1], step, sigma_next)
            if loss is None:
                return x
            x_cur, denoised_cur = calls[0][0], calls[0][1]
            if expected == 1:
                (grad,) = torch.autograd.grad(loss.sum(), x_cur)
            else:
                (grad_euler,) = torch.autograd.grad(loss.sum(), calls[1][0])
                # the Euler predictor as the heun solver computes it, now on the graph of the first call
                x_euler = x_cur + (sigma_next - sigma) * ((x_cur - denoised_cur) / sigma)
                (grad,) = torch.autograd.grad(x_euler, x_cur, grad_outputs=grad_euler)
        self.vjp_count += 1
        return x - grad.detach()


# ---------------------------------------------------------------------------------------------
# step-end hooks


def inpaint(mask: Tensor, observed: Tensor, generator: torch.Generator | None = None) -> Hook:
    """Hook that sets the observed entries of the state to the observation at the state's noise level.

    After a step ending at ``sigma``: ``x[mask] = observed[mask] + sigma * eps`` with fresh standard
    normal ``eps`` from ``generator`` (exactly ``observed`` at ``sigma = 0``); the other entries are left.
    ``mask`` (bool) and ``observed`` broadcast against the state ``[B, ...]``; ``observed`` is read only
    where ``mask`` is True. (:func:`inpaint_decoded` with the identity code.)
    """
    return inpaint_decoded(mask, observed, _identity, _identity, generator)


def _identity(x: Tensor) -> Tensor:
    return x


def inpaint_decoded(mask: Tensor, observed: Tensor, encode: Callable[[Tensor], Tensor],
                    decode: Callable[[Tensor], Tensor], generator: torch.Generator | None = None) -> Hook:
    """:func:`inpaint` for a state that is an affine code ``z`` of the constrained values ``v = decode(z)``.

    ``encode``/``decode`` must be affine with ``decode(encode(v)) = v`` (a wavelet transform with
    per-subband scaling, say; the identity gives :func:`inpaint` exactly, with the same draws).
    After a step ending at ``sigma``, the decoded state gets ``v[mask] = observed[mask] + n[mask]``
    with ``n = decode(z + sigma * eps) - decode(z)``, the state's own noise law carried to the
    decoded values (fresh ``eps``), and the change is written back as ``z + encode(v') - encode(v)``,
    so ``decode`` of the new state equals ``v'`` exactly and parts of ``z`` that ``decode`` ignores
    (padding) keep their noise. A whole field under ``mask`` is exact replacement of its
    coefficients; a partial mask (one time row, say) is the usual inpainting approximation.
    """
    mask = mask.to(torch.bool)

    def hook(z: Tensor, sigma: float, step: int, denoised: Tensor) -> Tensor:
        v = decode(z)
        try:
            torch.broadcast_shapes(mask.shape, observed.shape, v.shape)
        except RuntimeError:
            raise ValueError(f"inpaint: mask {tuple(mask.shape)} and observed {tuple(observed.shape)} do "
                             f"not broadcast to the (decoded) state {tuple(v.shape)}") from None
        target = observed.to(device=v.device, dtype=v.dtype).expand_as(v)
        plain = encode is _identity and decode is _identity      # pixel space: no round-off from the code
        if sigma > 0:
            eps = randn_like(z, generator)
            target = target + (sigma * eps if plain else decode(z + sigma * eps) - v)
        new = torch.where(mask.to(v.device), target, v)
        return new if plain else z + (encode(new) - encode(v))

    return hook


def project(fn: Callable[[Tensor, float], Tensor]) -> Hook:
    """Turn a projection ``fn(x, sigma) -> x`` (e.g. onto a constraint set) into a step-end hook."""

    def hook(x: Tensor, sigma: float, step: int, denoised: Tensor) -> Tensor:
        return fn(x, sigma)

    hook.__name__ = f"project({getattr(fn, '__name__', repr(fn))})"
    return hook
