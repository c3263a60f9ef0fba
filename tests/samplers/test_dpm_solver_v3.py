"""DPM-Solver-v3: statistics against their closed form for Gaussian data, convergence order, state, errors, contracts."""

import json
import math

import pytest
import torch

import samplers
from samplers import schedules
from samplers.analytic import GaussianDenoiser, GaussianMixtureDenoiser
from samplers.dpm_solver_v3 import EMS, compute_ems
from samplers.reference import reference

F64 = torch.float64


def _gaussian(d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=F64))
    lam = torch.logspace(-2, 1, d, dtype=F64)  # eigenvalues 0.01 .. 10
    return GaussianDenoiser(torch.randn(d, generator=g, dtype=F64), q @ torch.diag(lam) @ q.T)


def _mixture(seed=0):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(3, 8, generator=g, dtype=F64) * 1.5
    return GaussianMixtureDenoiser(torch.tensor([0.2, 0.3, 0.5], dtype=F64), means, torch.tensor([0.4, 0.7, 1.0], dtype=F64))


def gaussian_ems(den: GaussianDenoiser, lambdas: torch.Tensor, l=None, dl=None) -> EMS:
    """Closed-form statistics of N(mu, C) data; ``s, b`` for a given ``l`` and ``dl/dlambda`` when passed.

    ``D(x) = mu + A z`` with ``z = x - mu ~ N(0, Sigma)``, ``Sigma = C + sigma^2 I``, ``A = C Sigma^-1`` and
    ``dA/dlambda = 2 A (I - A)`` (``sigma^2 = exp(-2 lambda)``). Then ``l = 1 - diag A``, and with
    ``f = (1 - l) x - D = M z - l mu``, ``M = diag(1 - l) - A``, and
    ``f' = (-l' - (1 - l)) x + (1 - l) D - dD/dlambda = K z - l' mu``, ``K = -diag(l') - A' - M (I - A)``:
    ``s = diag(K Sigma M^T) / diag(M Sigma M^T)`` and ``b = E f' - s E f = -l' mu + s l mu``.
    """
    c, v = den.eigvals, den.eigvecs
    s2 = torch.exp(-2 * lambdas).reshape(-1, 1)
    a = c / (c + s2)                                                   # [n, d] eigenvalues of A
    eye = torch.eye(den.dim, dtype=F64)
    A = torch.einsum("ij,nj,kj->nik", v, a, v)
    dA = torch.einsum("ij,nj,kj->nik", v, 2 * a * (1 - a), v)
    Sigma = torch.einsum("ij,nj,kj->nik", v, c + s2, v)
    l = 1 - torch.diagonal(A, dim1=1, dim2=2) if l is None else l.reshape(len(lambdas), -1)
    dl = -torch.diagonal(dA, dim1=1, dim2=2) if dl is None else dl.reshape(len(lambdas), -1)
    M = torch.diag_embed(1 - l) - A
    K = -torch.diag_embed(dl) - dA - M @ (eye - A)
    s = torch.diagonal(K @ Sigma @ M.mT, dim1=1, dim2=2) / torch.diagonal(M @ Sigma @ M.mT, dim1=1, dim2=2)
    b = -dl * den.mean + s * l * den.mean
    shape = (len(lambdas), *den.shape)
    return EMS(lambdas, l.reshape(shape), s.reshape(shape), b.reshape(shape), derivative="exact")


def _grid(sigma_min, sigma_max, n):
    return torch.linspace(-math.log(sigma_max), -math.log(sigma_min), n + 1, dtype=F64)


# ---------------------------------------------------------------------------------------------
# the statistics


@pytest.fixture(scope="module")
def gaussian_statistics():
    den = _gaussian(d=6, seed=3)
    x0 = den.sample(8000, generator=torch.Generator().manual_seed(1))
    kwargs = dict(sigma_min=0.05, sigma_max=20.0, n_grid=12, batch=4000)
    return den, {d: compute_ems(den, x0, generator=torch.Generator().manual_seed(2), derivative=d, **kwargs)
                 for d in ("jvp", "fd")}


def test_ems_of_gaussian_match_the_closed_form(gaussian_statistics):
    den, estimated = gaussian_statistics
    ems = estimated["jvp"]
    assert ems.shape == den.shape and ems.l.shape == (13, 6) and ems.num_samples == 8000
    truth = gaussian_ems(den, ems.lambdas)
    # l = 1 - diag(J), J = dD/dx = C (C + sigma^2)^-1, by Hutchinson's estimator with K = 8000 probes: its error is
    # the mean of sum_{j != i} J_ij v_i v_j, standard error sqrt(sum_{j != i} J_ij^2 / K)
    v, c = den.eigvecs, den.eigvals
    for lam, l_est, l_true in zip(ems.lambdas.tolist(), ems.l, truth.l):
        jac = v @ torch.diag(c / (c + math.exp(-2 * lam))) @ v.T
        stderr = ((jac**2).sum(1) - torch.diagonal(jac) ** 2).sqrt() / math.sqrt(8000)
        assert ((l_est - l_true).abs() < 5 * stderr).all(), (lam, l_est, l_true, stderr)
    # l' by differences on the grid (the same noise at every level keeps l smooth in lambda); exact: -diag(2 J (I - J))
    dl = torch.gradient(ems.l, spacing=(ems.lambdas,), dim=0, edge_order=2)[0]
    a = c / (c + torch.exp(-2 * ems.lambdas).reshape(-1, 1))
    exact_dl = -torch.einsum("ij,nj,ij->ni", v, 2 * a * (1 - a), v)
    assert (dl - exact_dl).abs().max() < 0.05, (dl - exact_dl).abs().max()
    # s, b: the least-squares line of f' on f per dimension, given the estimated l and l'
    given = gaussian_ems(den, ems.lambdas, ems.l, dl)
    assert (ems.s - given.s).abs().max() < 0.02 * given.s.abs().max(), (ems.s - given.s).abs().max()
    assert (ems.b - given.b).abs().max() < 0.02 * given.b.abs().max(), (ems.b - given.b).abs().max()
    # and the statistics of a different line would be far off (the test can fail)
    assert (ems.s - gaussian_ems(den, ems.lambdas, ems.l, -dl).s).abs().max() > 0.2


def test_finite_differences_agree_with_jvp(gaussian_statistics):
    _, estimated = gaussian_statistics
    fd, jvp = estimated["fd"], estimated["jvp"]
    for name in ("l", "s", "b"):
        a, b = getattr(fd, name), getattr(jvp, name)
        assert (a - b).abs().max() < 1e-3 * (1 + b.abs().max()), name


# ---------------------------------------------------------------------------------------------
# convergence order on the exact Gaussian flow (as in test_ode: Karras grids 1000 -> 0.01, the state at
# sigma_min compared with the closed form). The statistics are the closed form on 2000 lambda intervals:
# they are linear between nodes, so l' jumps there and, on coarse statistics grids, the Taylor fits of g
# meet kinks; the error then levels off near 1e-6 relative (measured: 4e-6 with 100 intervals).

SIGMA_MAX, SIGMA_MIN = 1000.0, 0.01


@pytest.fixture(scope="module")
def exact_statistics():
    den = _gaussian()
    return den, gaussian_ems(den, _grid(SIGMA_MIN, SIGMA_MAX, 2000))


ORDER_CASES = [
    ({"order": 1, "corrector": False}, 1),
    ({"order": 2, "corrector": False}, 2),
    ({"order": 3, "corrector": False}, 3),
    ({"order": 3}, 3),                                   # the corrector keeps the predictor's order (the paper's)
    ({"order": 3, "pseudo": True, "corrector": False}, 2),  # divided differences: the paper's pseudo order
]


@pytest.mark.parametrize("options, expected", ORDER_CASES, ids=[str(o) for o, _ in ORDER_CASES])
def test_convergence_order_on_gaussian(exact_statistics, options, expected):
    den, ems = exact_statistics
    x = torch.randn(4, den.dim, generator=torch.Generator().manual_seed(1), dtype=F64) * SIGMA_MAX
    exact = den.ode_solution(x, SIGMA_MAX, SIGMA_MIN)
    steps, errors = (48, 96, 192), []
    for n in steps:
        seen = {}
        samplers.sample(den, x, schedules.karras(n, SIGMA_MIN, SIGMA_MAX), solver="dpm_solver_v3", ems=ems,
                        callback=lambda info: seen.update(x=info["x"]) if info["step"] == n - 2 else None, **options)
        errors.append(((seen["x"] - exact).norm() / exact.norm()).item())
    logn, loge = torch.tensor(steps, dtype=F64).log(), torch.tensor(errors).log()
    slope = -(((logn - logn.mean()) * (loge - loge.mean())).sum() / ((logn - logn.mean()) ** 2).sum()).item()
    assert abs(slope - expected) < 0.3, f"{options}: measured order {slope:.2f}, errors {errors}"


def test_exact_statistics_beat_plain_multistep_at_few_steps(exact_statistics):
    """With the model's own statistics the first-order error term is gone: fewer steps for the same error."""
    den, ems = exact_statistics
    x = torch.randn(4, den.dim, generator=torch.Generator().manual_seed(5), dtype=F64) * 80.0
    sigmas = schedules.loglinear(10, 0.01, 80.0)
    truth = den.ode_solution(x, 80.0, 0.0)

    def error(**options):
        return ((samplers.sample(den, x, sigmas, **options) - truth).norm() / truth.norm()).item()

    v3 = error(solver="dpm_solver_v3", ems=ems)
    assert v3 < 0.5 * min(error(solver="dpmpp_3m"), error(solver="unipc"))


def test_mixture_with_estimated_statistics_converges_to_the_reference():
    den = _mixture()
    x0 = den.sample(2000, generator=torch.Generator().manual_seed(0))
    ems = compute_ems(den, x0, sigma_min=0.02, sigma_max=20.0, n_grid=40, batch=2000,
                      generator=torch.Generator().manual_seed(1), derivative="jvp")
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(2), dtype=F64) * 20.0
    errors = []
    for steps in (6, 12, 24, 48):
        sigmas = schedules.karras(steps, 0.02, 20.0)
        truth = reference(den, x, sigmas)
        out = samplers.sample(den, x, sigmas, solver="dpm_solver_v3", ems=ems)
        errors.append(((out - truth).norm() / truth.norm()).item())
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 5e-4, errors


# ---------------------------------------------------------------------------------------------
# state, errors


def test_state_round_trip(gaussian_statistics):
    den, estimated = gaussian_statistics
    ems = estimated["fd"]
    tensors, metadata = ems.state_dict(), json.loads(json.dumps(ems.metadata()))
    assert metadata["kind"] == "dpm_solver_v3.ems" and metadata["shape"] == [6] and metadata["n_grid"] == 12
    assert metadata["sigma_min"] == pytest.approx(0.05) and metadata["sigma_max"] == pytest.approx(20.0)
    assert metadata["num_samples"] == 8000 and metadata["derivative"] == "fd"
    back = EMS.from_state({k: v.clone() for k, v in tensors.items()}, metadata)
    for key, value in back.state_dict().items():
        assert torch.equal(value, tensors[key])
    assert back.metadata() == ems.metadata()
    x = torch.randn(3, 6, generator=torch.Generator().manual_seed(0), dtype=F64) * 20.0
    sigmas = schedules.karras(8, 0.05, 20.0)
    assert torch.equal(samplers.sample(den, x, sigmas, solver="dpm_solver_v3", ems=back),
                       samplers.sample(den, x, sigmas, solver="dpm_solver_v3", ems=ems))
    with pytest.raises(ValueError, match="kind"):
        EMS.from_state(tensors, {**metadata, "kind": "learned"})
    with pytest.raises(ValueError, match="shape"):
        EMS.from_state(tensors, {**metadata, "shape": [2, 3]})
    with pytest.raises(ValueError, match="sigma_max"):
        EMS.from_state(tensors, {**metadata, "sigma_max": 80.0})
    with pytest.raises(ValueError, match="lacks"):
        EMS.from_state({"l": tensors["l"]}, metadata)


def test_errors_name_the_problem(exact_statistics):
    den, ems = exact_statistics
    x = torch.randn(2, 8, dtype=F64)
    sigmas = schedules.karras(5, 0.1, 10.0)
    with pytest.raises(TypeError, match="needs ems="):
        samplers.sample(den, x, sigmas, solver="dpm_solver_v3")
    with pytest.raises(TypeError, match="must be an EMS"):
        samplers.sample(den, x, sigmas, solver="dpm_solver_v3", ems={"l": ems.l})
    with pytest.raises(ValueError, match=r"shape \(8,\).*\(2, 4\)"):
        samplers.sample(lambda x, s: x, x.reshape(2, 2, 4), sigmas, solver="dpm_solver_v3", ems=ems)
    with pytest.raises(ValueError, match="outside the range"):
        samplers.sample(den, x, schedules.karras(5, 0.001, 10.0), solver="dpm_solver_v3", ems=ems)
    with pytest.raises(ValueError, match="outside the range"):
        samplers.sample(den, x, schedules.karras(5, 0.1, 2000.0), solver="dpm_solver_v3", ems=ems)
    with pytest.raises(ValueError, match="order must be"):
        samplers.sample(den, x, sigmas, solver="dpm_solver_v3", ems=ems, order=4)
    with pytest.raises(ValueError, match="quadrature"):
        samplers.sample(den, x, sigmas, solver="dpm_solver_v3", ems=ems, quadrature="simpson")
    with pytest.raises(ValueError, match="derivative"):
        compute_ems(den, den.sample(4), sigma_min=0.1, sigma_max=1.0, derivative="exact")
    with pytest.raises(ValueError, match="strictly increasing"):
        EMS(torch.tensor([1.0, 0.0], dtype=F64), ems.l[:2], ems.s[:2], ems.b[:2])


# ---------------------------------------------------------------------------------------------
# contracts shared with the other solvers (see test_ode.py)


def test_hooked_state_is_what_the_next_step_sees(exact_statistics):
    den, ems = exact_statistics
    events = []

    def recording_denoiser(x, sigma):
        events.append(("denoise", x.clone(), float(sigma[0])))
        return den(x, sigma)

    def hook(x, sigma, step, denoised):
        out = x + 0.01 * (step + 1)
        events.append(("hook", out.clone(), sigma))
        return out

    sigmas = schedules.karras(7, 0.05, 10.0)
    x = torch.randn(3, den.dim, generator=torch.Generator().manual_seed(0), dtype=F64) * 10.0
    final = samplers.sample(recording_denoiser, x, sigmas, solver="dpm_solver_v3", ems=ems, hooks=[hook])
    hooks = [i for i, e in enumerate(events) if e[0] == "hook"]
    assert len(hooks) == 7
    for i in hooks[:-1]:
        nxt = events[i + 1]
        assert nxt[0] == "denoise" and nxt[2] == pytest.approx(events[i][2])
        assert torch.equal(nxt[1], events[i][1]), "the next denoiser call does not see the hooked state"
    assert torch.equal(final, events[hooks[-1]][1])


def test_identity_hook_changes_nothing_and_the_corrector_acts_on_the_hooked_state(exact_statistics):
    den, ems = exact_statistics
    sigmas = schedules.karras(7, 0.05, 10.0)
    x = torch.randn(3, den.dim, generator=torch.Generator().manual_seed(0), dtype=F64) * 10.0
    plain = samplers.sample(den, x, sigmas, solver="dpm_solver_v3", ems=ems)
    assert torch.equal(plain, samplers.sample(den, x, sigmas, solver="dpm_solver_v3", ems=ems,
                                              hooks=[lambda x, s, i, d: x]))
    no_corrector = samplers.sample(den, x, sigmas, solver="dpm_solver_v3", ems=ems, corrector=False)
    assert (plain - no_corrector).abs().max() > 1e-6


@pytest.mark.parametrize("steps", [1, 2, 9])
@pytest.mark.parametrize("options", [{}, {"corrector": False}, {"order": 2, "corrector_pseudo": True}])
def test_nfe_is_counted(exact_statistics, steps, options):
    den, ems = exact_statistics
    calls = []

    def counting(x, sigma):
        calls.append(1)
        return den(x, sigma)

    stats = {}
    x = torch.randn(2, den.dim, dtype=F64) * 5.0
    samplers.sample(counting, x, schedules.karras(steps, 0.1, 5.0), solver="dpm_solver_v3", ems=ems, stats=stats,
                    **options)
    assert stats["nfe"] == len(calls) == steps


def test_any_rank_float32_and_safe_last_step():
    den = _mixture()
    ems = compute_ems(den, den.sample(500, generator=torch.Generator().manual_seed(0)), sigma_min=0.01,
                      sigma_max=15.0, n_grid=20, batch=500, generator=torch.Generator().manual_seed(1))
    x = torch.randn(3, 8, generator=torch.Generator().manual_seed(4), dtype=F64) * 15.0
    sigmas = schedules.karras(10, 0.01, 15.0)
    flat = samplers.sample(den, x, sigmas, solver="dpm_solver_v3", ems=ems)
    shaped_den = GaussianMixtureDenoiser(den.log_weights.exp(), den.means.reshape(3, 2, 2, 2),
                                         den.vars.sqrt().reshape(3, 2, 2, 2))
    shaped_ems = EMS(ems.lambdas, *(t.reshape(-1, 2, 2, 2) for t in (ems.l, ems.s, ems.b)))
    shaped = samplers.sample(shaped_den, x.reshape(3, 2, 2, 2), sigmas, solver="dpm_solver_v3", ems=shaped_ems)
    assert torch.allclose(shaped.reshape(3, 8), flat, rtol=1e-12, atol=1e-12)
    single = samplers.sample(den, x.float(), sigmas, solver="dpm_solver_v3", ems=ems)
    assert single.dtype == torch.float32 and torch.isfinite(single).all()
    assert torch.allclose(single.double(), flat, rtol=1e-3, atol=1e-3)
    info = samplers.SOLVERS["dpm_solver_v3"]
    assert info.order == 3 and info.nfe_per_step == 1 and not info.stochastic


def test_nan_names_the_step(exact_statistics):
    den, ems = exact_statistics
    calls = []

    def breaks_on_third_call(x, sigma):
        calls.append(1)
        out = den(x, sigma)
        return out * float("nan") if len(calls) == 3 else out

    x = torch.randn(2, 8, dtype=F64)
    with pytest.raises(FloatingPointError, match=r"denoiser output at step \d"):
        samplers.sample(breaks_on_third_call, x, schedules.karras(6, 0.1, 5.0), solver="dpm_solver_v3", ems=ems)
    with pytest.raises(FloatingPointError, match="after step 1"):
        samplers.sample(den, x, schedules.karras(6, 0.1, 5.0), solver="dpm_solver_v3", ems=ems,
                        hooks=lambda x, s, i, d: x * float("nan") if i == 1 else x)
