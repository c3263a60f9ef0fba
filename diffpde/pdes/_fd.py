"""Second-order finite differences on the 2D vertex grid, shared by the elliptic families.

Grid: ``n x n`` nodes ``x_j = j/(n-1)`` on [0, 1]^2, spacing ``h = 1/(n-1)``, boundary nodes
included; arrays are indexed ``[i, j] = (y_i, x_j)``. Unknowns are the ``(n-2)^2`` interior nodes;
boundary values are zero (homogeneous Dirichlet).

The one operator is the conservative five-point stencil

    (L u)_ij = -(1/h^2) sum_{faces} c_face (u_nb - u_ij) + shift * u_ij     at interior nodes,

with face coefficients the harmonic mean of the two adjacent nodal coefficients ``a`` (``a = 1``
gives ``-Laplacian``). It exists twice, built from the same face coefficients: as a scipy sparse
matrix for the direct solve (:func:`operator_matrix`, :func:`solve_dirichlet`) and as a batched,
differentiable torch stencil for residuals (:func:`apply_operator`).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

from .base import PDE, Field, Grid

Array = np.ndarray | torch.Tensor


def spacing(n: int) -> float:
    """Grid spacing ``h = 1/(n-1)`` of the ``n``-point vertex grid on [0, 1]."""
    return 1.0 / (n - 1)


def coordinates(n: int) -> np.ndarray:
    """Node coordinates ``x_j = j/(n-1)``, ``j = 0..n-1``."""
    return np.linspace(0.0, 1.0, n)


def face_coefficients(a: Array) -> tuple[Array, Array]:
    """Harmonic-mean coefficients on the faces of nodal ``a`` (``[..., n, n]``, numpy or torch).

    Returns ``(c_y, c_x)``: ``c_y[..., i, j]`` on the face between nodes ``(i, j)`` and ``(i+1, j)``
    (shape ``[..., n-1, n]``), ``c_x[..., i, j]`` between ``(i, j)`` and ``(i, j+1)`` (``[..., n, n-1]``).
    """
    def harmonic(p, q):
        return 2 * p * q / (p + q)

    return harmonic(a[..., 1:, :], a[..., :-1, :]), harmonic(a[..., :, 1:], a[..., :, :-1])


def operator_matrix(n: int, a: np.ndarray | None = None, shift: float = 0.0) -> sp.csc_matrix:
    """Sparse ``(n-2)^2 x (n-2)^2`` matrix of ``L = -div(a grad .) + shift`` on the interior nodes.

    ``a`` is the nodal coefficient ``[n, n]`` (``None`` means 1, i.e. ``-Laplacian``); its boundary
    values enter through the faces next to the boundary. Interior node ``(i, j)`` (``1 <= i, j <= n-2``)
    has row ``(i-1)(n-2) + (j-1)``; couplings to boundary nodes drop out because ``u = 0`` there.
    """
    m = n - 2
    inv_h2 = 1.0 / spacing(n) ** 2
    if a is None:
        c_y, c_x = np.ones((n - 1, n)), np.ones((n, n - 1))
    else:
        c_y, c_x = face_coefficients(np.asarray(a, dtype=np.float64))
    west, east = c_x[1:-1, :-1], c_x[1:-1, 1:]  # faces of interior nodes, each [m, m]
    south, north = c_y[:-1, 1:-1], c_y[1:, 1:-1]
    index = np.arange(m * m).reshape(m, m)
    diagonal = (west + east + south + north) * inv_h2 + shift
    rows = [index.ravel(), index[:, :-1].ravel(), index[:, 1:].ravel(), index[:-1, :].ravel(), index[1:, :].ravel()]
    cols = [index.ravel(), index[:, 1:].ravel(), index[:, :-1].ravel(), index[1:, :].ravel(), index[:-1, :].ravel()]
    x_links = -east[:, :-1].ravel() * inv_h2
    y_links = -north[:-1, :].ravel() * inv_h2
    values = [diagonal.ravel(), x_links, x_links, y_links, y_links]
    return sp.csc_matrix((np.concatenate(values), (np.concatenate(rows), np.concatenate(cols))), shape=(m * m, m * m))


def solve_dirichlet(rhs: np.ndarray, a: np.ndarray | None = None, shift: float = 0.0) -> np.ndarray:
    """Solve ``L u = rhs`` at the interior nodes with ``u = 0`` on the boundary; ``[n, n]`` float64.

    ``rhs`` is nodal ``[n, n]`` (its boundary values are ignored); ``a`` and ``shift`` as in
    :func:`operator_matrix`. Sparse direct solve (SuperLU).
    """
    n = rhs.shape[-1]
    matrix = operator_matrix(n, a, shift)
    # The matrix is symmetric: a minimum-degree ordering of A^T + A fills in less than COLAMD.
    interior = spla.spsolve(matrix, np.ascontiguousarray(rhs[1:-1, 1:-1], dtype=np.float64).ravel(), permc_spec="MMD_AT_PLUS_A")
    u = np.zeros((n, n))
    u[1:-1, 1:-1] = interior.reshape(n - 2, n - 2)
    return u


def apply_operator(u: torch.Tensor, a: torch.Tensor | None = None, shift: float = 0.0) -> torch.Tensor:
    """``L u = -div(a grad u) + shift * u`` at the interior nodes of a batch ``[B, n, n] -> [B, n-2, n-2]``.

    The same discrete operator as :func:`operator_matrix`, but applied to all nodes' values of ``u``
    (boundary values of ``u`` enter the stencil as they are, not as zero). Differentiable in ``u``
    and ``a``; works on any device and dtype.
    """
    n = u.shape[-1]
    h = spacing(n)
    grad_y = (u[..., 1:, :] - u[..., :-1, :]) / h  # on y-faces [B, n-1, n]
    grad_x = (u[..., :, 1:] - u[..., :, :-1]) / h  # on x-faces [B, n, n-1]
    if a is not None:
        c_y, c_x = face_coefficients(a)
        grad_y, grad_x = c_y * grad_y, c_x * grad_x
    divergence = (grad_y[..., 1:, 1:-1] - grad_y[..., :-1, 1:-1]) / h + (grad_x[..., 1:-1, 1:] - grad_x[..., 1:-1, :-1]) / h
    out = -divergence
    if shift:
        out = out + shift * u[..., 1:-1, 1:-1]
    return out


def dirichlet_residual(interior: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Full ``[B, n, n]`` residual: ``interior`` (``[B, n-2, n-2]``) inside, ``u / h^2`` on the boundary.

    The boundary condition ``u = 0`` is written as a row of the same ``1/h^2``-scaled operator with
    unit coefficient, so the whole tensor is in units of the equation's right-hand side and a
    squared-residual loss enforces the boundary on the same ``1/h^2`` scale as the interior.
    """
    h = spacing(u.shape[-1])
    residual = u / h**2
    return torch.cat(
        [residual[..., :1, :], torch.cat([residual[..., 1:-1, :1], interior, residual[..., 1:-1, -1:]], dim=-1), residual[..., -1:, :]],
        dim=-2,
    )


def nodal_source(source: Any, n: int, what: str, problem: str) -> np.ndarray:
    """A right-hand side as a float64 ``[n, n]`` array from a number, an array or a callable ``f(x, y)``.

    A callable is evaluated on the node coordinates ``X[i, j] = x_j``, ``Y[i, j] = y_i``.
    """
    if callable(source):
        x = coordinates(n)
        X, Y = np.meshgrid(x, x, indexing="xy")
        source = np.broadcast_to(np.asarray(source(X, Y), dtype=np.float64), (n, n))
    arr = np.asarray(source.detach().cpu() if isinstance(source, torch.Tensor) else source, dtype=np.float64)
    if arr.ndim == 0:
        arr = np.full((n, n), float(arr))
    if arr.shape != (n, n):
        raise ValueError(f"{problem}: {what} must be a number, a callable f(x, y) or an array of shape ({n}, {n}), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{problem}: {what} contains NaN or inf")
    return arr



class DirichletProblem2D(PDE):
    """A family on the 2D vertex grid with an input field ``a`` and a solution ``u = 0`` on the boundary.

    Subclasses set ``input_description`` / ``output_description``, implement ``sample_inputs``,
    ``solve(a) -> u``, ``describe`` and :meth:`interior_residual`; :meth:`residual` returns the
    full ``[B, n, n]`` tensor of :func:`dirichlet_residual`.
    """

    input_description = ""
    output_description = ""

    @property
    def fields(self) -> tuple[Field, ...]:
        shape, dims = (self.resolution,) * 2, ("y", "x")
        return (
            Field("a", "input", shape, dims, self.input_description),
            Field("u", "output", shape, dims, self.output_description),
        )

    @property
    def grid(self) -> Grid:
        x = coordinates(self.resolution)
        return Grid("vertex", {"y": x, "x": x.copy()})

    @property
    def h(self) -> float:
        """Grid spacing ``h = 1/(n-1)``."""
        return spacing(self.resolution)

    def generate(self, seed: int) -> dict[str, np.ndarray]:
        """``{"a": [n, n], "u": [n, n]}`` float64: the input drawn from ``seed`` and its solution."""
        a = self.sample_inputs(1, seed)["a"][0]
        return {"a": a, "u": self.solve(a)}

    def interior_residual(self, a: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """The equation's residual at the interior nodes, ``[B, n-2, n-2]``, in physical units."""
        raise NotImplementedError

    def residual(self, fields: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Residual ``[B, n, n]``: the equation at interior nodes, ``u / h^2`` at boundary nodes.

        Both parts are in units of the right-hand side (see :func:`dirichlet_residual`); it is
        about zero on solver output at the same resolution. Differentiable in ``a`` and ``u``.
        """
        a, u = (torch.as_tensor(t) for t in self.check_batch(fields, ("a", "u")))
        return dirichlet_residual(self.interior_residual(a, u), u)

    def instance(self, fields: Mapping[str, Any], name: str) -> np.ndarray:
        """One instance's field ``name`` as ``[n, n]`` float64 (accepts ``[n, n]`` or ``[1, n, n]``)."""
        value = fields[name]
        arr = np.asarray(value.detach().cpu() if isinstance(value, torch.Tensor) else value, dtype=np.float64)
        return self.check_array(name, arr[0] if arr.ndim == 3 and arr.shape[0] == 1 else arr)
