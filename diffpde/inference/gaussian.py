"""A Gaussian-random-field prior with an exact denoiser, and the closed-form posterior of linear observations.

:class:`GaussianPrior` has the interface the inference tasks use from a trained
:class:`diffpde.Prior` (``fields``, ``grid_shape``, ``latent_shape``, ``denoiser()``,
``encode_fields``, ``decode_fields``, ``sigma_min``/``sigma_max``, ``sigmas()``), so every method can be tested
against truth: for ``x ~ N(mean, C)`` and ``y = A x + noise`` the posterior is Gaussian with

    cov_post = (C^-1 + A^T R^-1 A)^-1,   mean_post = mean + C A^T (A C A^T + R)^-1 (y - A mean),

computed here without inverting ``C`` (which may be singular, e.g. zero on a Dirichlet boundary).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch

from samplers.analytic import GaussianDenoiser

from ..pdes.grf import grf_eigenvalues, synthesize
from .observations import ObservationOperator

Tensor = torch.Tensor


class _IdentityRepresentation:
    kind = "identity"


class GaussianPrior:
    """Gaussian prior ``N(mean, cov)`` over one or more stacked fields ``[C, *grid]`` (physical units).

    The diffused variable is the normalised ``z = (x - mean) / scale`` (``scale`` a float), so the
    tasks exercise the same normalise/denormalise path as with a trained prior.
    """

    cond_fields: tuple[str, ...] = ()
    representation = _IdentityRepresentation()

    def __init__(self, fields: Sequence[str], grid_shape: Sequence[int], mean: Tensor, cov: Tensor,
                 scale: float = 1.0, sigma_min: float = 0.002, sigma_max: float = 80.0) -> None:
        self.fields = tuple(fields)
        self.grid_shape = tuple(int(n) for n in grid_shape)
        d = len(self.fields) * int(np.prod(self.grid_shape))
        self.mean = torch.as_tensor(mean, dtype=torch.float64).reshape(d)
        self.cov = torch.as_tensor(cov, dtype=torch.float64)
        if self.cov.shape != (d, d):
            raise ValueError(f"cov must be [{d}, {d}], got {tuple(self.cov.shape)}")
        self.scale = float(scale)
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self._denoiser = GaussianDenoiser(torch.zeros(d, dtype=torch.float64), self.cov / self.scale**2,
                                          shape=self.latent_shape)

    @classmethod
    def from_grf(cls, resolution: int, alpha: float = 2.0, tau: float = 3.0, *, boundary: str = "dirichlet",
                 field: str = "u", sigma: float | None = None, **kwargs) -> "GaussianPrior":
        """Zero-mean GRF prior ``(-Laplacian + tau^2)^(-alpha)`` on a ``resolution^2`` grid (see :mod:`diffpde.pdes.grf`)."""
        lam = grf_eigenvalues(resolution, alpha, tau, dim=2, boundary=boundary, sigma=sigma)
        if boundary == "periodic":
            raise ValueError("from_grf supports the real 'dirichlet' and 'neumann' bases")
        basis = synthesize(np.eye(lam.size).reshape(lam.size, *lam.shape), boundary, 2).reshape(lam.size, -1)
        cov = basis.T @ (lam.reshape(-1, 1) * basis)
        n2 = resolution * resolution
        scale = float(np.sqrt(np.trace(cov) / n2))
        return cls((field,), (resolution, resolution), torch.zeros(n2), torch.as_tensor(cov), scale=scale, **kwargs)

    # -- the Prior interface used by the tasks ---------------------------------------------------

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return (len(self.fields), *self.grid_shape)

    def sigmas(self, steps: int, schedule: str | Sequence[float] | Tensor = "karras", sigma_min: float | None = None,
               sigma_max: float | None = None, **schedule_options) -> Tensor:
        """The sigma grid of ``schedule`` between the prior's sigma range: :meth:`diffpde.Prior.sigmas` itself."""
        from ..models.prior import Prior

        return Prior.sigmas(self, steps, schedule, sigma_min, sigma_max, **schedule_options)

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def problem(self):
        raise ValueError("a GaussianPrior has no PDE family")

    def denoiser(self, cond=None, params=None):
        if cond:
            raise ValueError("a GaussianPrior takes no conditioning fields")
        return self._denoiser

    def encode_fields(self, fields: Mapping[str, Tensor] | Tensor) -> Tensor:
        x = torch.stack([fields[f] for f in self.fields], 1) if isinstance(fields, Mapping) else fields
        return (x.reshape(x.shape[0], -1) - self.mean.to(x)).reshape(x.shape[0], *self.latent_shape) / self.scale

    def decode_fields(self, z: Tensor) -> dict[str, Tensor]:
        x = self.mean.to(z) + self.scale * z.reshape(z.shape[0], -1)
        x = x.reshape(z.shape[0], *self.latent_shape)
        return {name: x[:, i] for i, name in enumerate(self.fields)}

    def eval(self) -> "GaussianPrior":
        return self

    def train(self, mode: bool = True) -> "GaussianPrior":
        return self

    @property
    def training(self) -> bool:
        return False

    def sample(self, n: int, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Exact samples in physical units."""
        return self.decode_fields(self._denoiser.sample(n, generator))

    # -- truth -----------------------------------------------------------------------------------

    def operator_matrix(self, operator: ObservationOperator) -> Tensor:
        """The matrix ``[m, d]`` of a linear operator acting on the stacked physical fields."""
        if not operator.linear:
            raise TypeError("the closed-form posterior needs a linear observation operator")
        d = self.mean.numel()
        eye = torch.eye(d, dtype=torch.float64).reshape(d, *self.latent_shape)
        columns = operator({name: eye[:, i] for i, name in enumerate(self.fields)})  # [d, m]
        return columns.T.contiguous()

    def exact_posterior(self, operator: ObservationOperator, y: Tensor,
                        noise_std: float | Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Posterior mean ``[B, d]`` and covariance ``[d, d]`` of the stacked fields given ``y [B, m]``."""
        a = self.operator_matrix(operator)
        if noise_std is None:
            noise_std = getattr(operator, "noise_stds", operator.noise_std)
        r = torch.as_tensor(noise_std, dtype=torch.float64) ** 2 * torch.ones(a.shape[0], dtype=torch.float64)
        ca = self.cov @ a.T
        gain = torch.linalg.solve(a @ ca + torch.diag(r), ca.T).T  # C A^T (A C A^T + R)^-1
        y = torch.as_tensor(y, dtype=torch.float64).reshape(-1, a.shape[0])
        mean = self.mean + (y - a @ self.mean) @ gain.T
        cov = self.cov - gain @ ca.T
        return mean, 0.5 * (cov + cov.T)
