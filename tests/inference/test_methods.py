"""The methods and ``reconstruct``: the DiffusionPDE preset on the samplers' Heun against its former
loop, the sigma grid through ``prior.sigmas``, checked options and inputs, progress."""

import math

import pytest
import torch

import samplers
from diffpde.inference import GaussianPrior, Observations, SparsePoints, StackedObservation, reconstruct
from diffpde.inference import methods

F64 = torch.float64


class LaplacePrior(GaussianPrior):
    """A Gaussian prior with a 'PDE': the 5-point Laplacian of u (to exercise the PDE terms)."""

    class _Problem:
        @staticmethod
        def residual(fields):
            u = fields["u"]
            return u[:, 2:, 1:-1] + u[:, :-2, 1:-1] + u[:, 1:-1, 2:] + u[:, 1:-1, :-2] - 4 * u[:, 1:-1, 1:-1]

    @property
    def problem(self):
        return self._Problem()


@pytest.fixture(scope="module")
def setup():
    prior = LaplacePrior.from_grf(8, alpha=2.0, tau=3.0, boundary="neumann")
    g = torch.Generator().manual_seed(3)
    truth = prior.sample(2, g)
    op = SparsePoints.random("u", (8, 8), count=6, seed=0, noise_std=0.1 * prior.scale)
    stacked = StackedObservation([SparsePoints.random("u", (8, 8), count=5, seed=1, noise_std=0.05),
                                  SparsePoints.random("u", (8, 8), count=4, seed=2, noise_std=0.05)])
    return prior, Observations(op, op.measure(truth, g)), Observations(stacked, stacked.measure(truth, g))


def former_diffusionpde(s, *, zeta_obs: float | dict | torch.Tensor = 1.0, zeta_pde: float | torch.Tensor = 0.0,
                        switch: float = 0.8, obs_factor_late: float = 0.1):
    """The preset's own guided Heun loop as it was before it ran on ``samplers``' heun (the reference)."""
    ops = getattr(s.operator, "operators", (s.operator,))
    weights = [zeta_obs.get(op.fields[0], 0.0) if isinstance(zeta_obs, dict) else zeta_obs for op in ops]
    weights = [w if torch.is_tensor(w) and w.numel() > 1 else float(w) for w in weights]
    y_parts = torch.split(s.y.to(s.x), [op.num_measurements for op in ops], dim=1)
    run = samplers.Run(s.denoiser, s.x, s.sigmas)
    x_next, vjp = s.x, 0
    for i, sigma, sigma_next in run.steps():
        with torch.enable_grad():
            x_cur = x_next.detach().requires_grad_(True)
            denoised = run.denoise(x_cur, sigma)
            d_cur = (x_cur - denoised) / sigma
            x_next = x_cur + (sigma_next - sigma) * d_cur
            if sigma_next > 0:
                denoised = run.denoise(x_next, sigma_next)
                x_next = x_cur + (sigma_next - sigma) * 0.5 * (d_cur + (x_next - denoised) / sigma_next)
            fields = s.decode(denoised)
            late = i > switch * run.num_steps
            loss = 0.0
            for op, w, y in zip(ops, weights, y_parts):
                if torch.is_tensor(w) or w:
                    loss = loss + (obs_factor_late if late else 1.0) * w * (y - op(fields)).norm(dim=1)
            if late and (torch.is_tensor(zeta_pde) or zeta_pde):
                r = s.pde_residual(fields)
                loss = loss + zeta_pde * r.reshape(r.shape[0], -1).norm(dim=1) / r[0].numel()
            if torch.is_tensor(loss):
                (grad,) = torch.autograd.grad(loss.sum(), x_cur)
                vjp += 1
                x_next = x_next - grad
        x_next = run.end_step(i, x_next.detach(), denoised.detach())
    s.diagnostics.update(nfe=run.nfe, vjp=vjp)
    return x_next


@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("case", ["scalar", "per_field_with_pde", "per_chain_tensors"])
def test_diffusionpde_on_samplers_heun_reproduces_its_former_loop(setup, monkeypatch, dtype, case):
    prior, obs, stacked = setup
    monkeypatch.setitem(methods.METHODS, "former", former_diffusionpde)
    if case == "scalar":
        data, steps, k, options = obs, 12, 3, {"zeta_obs": 0.7}
    elif case == "per_field_with_pde":
        data, steps, k, options = stacked, 10, 2, {"zeta_obs": {"u": 0.5}, "zeta_pde": 0.3, "switch": 0.5,
                                                   "obs_factor_late": 0.2}
    else:
        data, steps, k = stacked, 8, 3
        options = {"zeta_obs": {"u": torch.tensor([0.1, 0.5, 1.0] * 2, dtype=dtype)},
                   "zeta_pde": torch.tensor([0.0, 0.2, 0.4] * 2, dtype=dtype)}
    run = dict(steps=steps, n_samples=k, seed=5, dtype=dtype, method_options=options)
    new = reconstruct(prior, data, method="diffusionpde", **run)
    old = reconstruct(prior, data, method="former", solver="heun", **run)
    # measured: bit-for-bit equal in every case; the tolerance allows another summation order
    torch.testing.assert_close(new.samples["u"], old.samples["u"], rtol=0, atol=1e-12 if dtype == F64 else 1e-6)
    assert (new.diagnostics["nfe"], new.diagnostics["vjp"]) == (old.diagnostics["nfe"], old.diagnostics["vjp"])
    assert new.diagnostics["nfe"] == 2 * steps - 1 and new.diagnostics["vjp"] == steps
    # the guidance acts: without it (zero weights) the samples differ
    free = reconstruct(prior, data, method="diffusionpde", **{**run, "method_options": {"zeta_obs": 0.0}})
    assert not torch.allclose(free.samples["u"], new.samples["u"])


def test_diffusionpde_weights_naming_other_fields_are_errors(setup):
    prior, obs, stacked = setup
    with pytest.raises(ValueError, match=r"names field\(s\) \['a'\] that are not observed; the observed fields are \['u'\]"):
        reconstruct(prior, obs, method="diffusionpde", steps=3, n_samples=1, method_options={"zeta_obs": {"a": 1.0}})
    with pytest.raises(ValueError, match=r"no weight to the observations of \['u'\]"):
        reconstruct(prior, obs, method="diffusionpde", steps=3, n_samples=1, method_options={"zeta_obs": {}})
    with pytest.raises(ValueError, match="zeta_obs\\['u'\\] must be a finite number >= 0, got -1"):
        reconstruct(prior, obs, method="diffusionpde", steps=3, n_samples=1, method_options={"zeta_obs": {"u": -1}})
    with pytest.raises(ValueError, match="switch"):
        reconstruct(prior, obs, method="diffusionpde", steps=3, n_samples=1, method_options={"switch": 1.5})
    gauss = GaussianPrior.from_grf(8, alpha=2.0, tau=3.0, boundary="neumann")
    with pytest.raises(ValueError, match="zeta_pde given but the prior has no PDE residual"):
        reconstruct(gauss, obs, method="diffusionpde", steps=3, n_samples=1, method_options={"zeta_pde": 1.0})


@pytest.mark.parametrize("method, options, message", [
    ("dps", {"scale": -1.0}, "dps scale must be a finite number >= 0, got -1.0"),
    ("dps", {"scale": math.inf}, "dps scale must be a finite number >= 0, got inf"),
    ("covariance", {"pde_std": 0.0}, "covariance pde_std must be a finite number > 0, got 0.0"),
    ("covariance", {"pde_std": -2}, "covariance pde_std must be a finite number > 0, got -2"),
    ("covariance", {"cg_iters": "abc"}, "covariance method option cg_iters must be an integer, got 'abc'"),
    ("covariance", {"cg_iter": 4}, "unknown covariance method option 'cg_iter'; known: cg_iters, fallback"),
    ("dps", {"scale": "1"}, "dps method option scale must be a number, got '1'"),
    ("tds", {"twist_scale": -0.5}, "twist_scale must be a finite number >= 0"),
])
def test_bad_method_options_are_named(setup, method, options, message):
    prior, obs, _ = setup
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        reconstruct(prior, obs, method=method, steps=3, n_samples=2, method_options=options)


def test_method_options_of_the_right_kind_pass_converted(setup):
    prior, obs, _ = setup
    # an integer where a float is expected is converted; a bool where an int is expected is refused
    post = reconstruct(prior, obs, method="dps", steps=3, n_samples=1, method_options={"scale": 1})
    assert post.diagnostics["nfe"] == 3
    with pytest.raises(ValueError, match="cg_iters must be an integer, got True"):
        reconstruct(prior, obs, method="covariance", steps=3, n_samples=1, method_options={"cg_iters": True})


@pytest.mark.parametrize("solver, options, error, message", [
    ("dpmpp_2m_sde", {"eta": -1.0}, ValueError, "eta must be a finite number >= 0, got -1.0"),
    ("euler_ancestral", {"eta": -0.1}, ValueError, "eta must be a finite number >= 0"),
    ("dpmpp_2m_sde", {"etta": 1.0}, ValueError, "unknown dpmpp_2m_sde solver option 'etta'; known: eta, s_noise"),
    ("dpmpp_2m", {"lower_order_final": "yes"}, ValueError, "lower_order_final must be true or false, got 'yes'"),
    ("heun", {"generator": None}, ValueError, r"\['generator'\] are set by reconstruct"),
])
def test_bad_solver_options_are_named(setup, solver, options, error, message):
    prior, obs, _ = setup
    with pytest.raises(error, match=message):
        reconstruct(prior, obs, method="dps", solver=solver, steps=3, n_samples=1, solver_options=options)


def test_tds_refuses_solver_options_it_would_ignore(setup):
    prior, obs, _ = setup
    with pytest.raises(ValueError, match=r"tds method runs its own particle sampler: it takes no solver options, got \['eta'\]"):
        reconstruct(prior, obs, method="tds", solver="dpmpp_2m_sde", steps=3, n_samples=2, solver_options={"eta": 0.5})


@pytest.mark.parametrize("noise_std, error, message", [
    (-0.1, ValueError, "noise_std must be finite and >= 0 .* got -0.1"),
    (float("nan"), ValueError, "noise_std must be finite and >= 0 .* got nan"),
    (torch.tensor([0.1, 0.2]), ValueError, "one per measurement \\(6\\), got 2 values"),
    ("0.1", TypeError, "noise_std must be a number"),
])
def test_bad_noise_std_is_an_error_not_the_noise_floor(setup, noise_std, error, message):
    prior, obs, _ = setup
    with pytest.raises(error, match=message):
        reconstruct(prior, obs, method="covariance", steps=3, n_samples=1, noise_std=noise_std)


def test_noise_std_per_measurement_and_zero_use_the_floor(setup):
    prior, obs, _ = setup
    post = reconstruct(prior, obs, method="dps", steps=2, n_samples=1, noise_std=torch.full((6,), 0.3))
    assert torch.equal(post.diagnostics["noise_std"], torch.full((2, 6), 0.3, dtype=F64).to(torch.float32))
    post = reconstruct(prior, obs, method="dps", steps=2, n_samples=1, noise_std=0.0, noise_floor=0.5)
    rms = obs.values.pow(2).mean(1, keepdim=True).sqrt()                  # per instance
    assert torch.allclose(post.diagnostics["noise_std"].to(F64), 0.5 * rms.expand(2, 6), rtol=1e-6)


def test_the_noise_floor_of_an_instance_does_not_depend_on_its_batch(setup):
    """Instance 0 alone, with a neighbour ten times larger, or with two: the same likelihood noise
    (the floor binds: noise_std 0) and, with a deterministic solver, the same posterior samples."""
    prior, obs, _ = setup
    y = obs.values[:1]
    rows = {"alone": y, "pair": torch.cat([y, 10 * obs.values[1:]]), "three": torch.cat([y, 10 * obs.values[1:], -y])}
    runs = {name: reconstruct(prior, Observations(obs.operator, values), method="covariance", solver="dpmpp_2m",
                              steps=6, n_samples=2, noise_std=0.0, noise_floor=0.3, seed=5)
            for name, values in rows.items()}
    expected = 0.3 * y.pow(2).mean().sqrt()
    for name, post in runs.items():
        std = post.diagnostics["noise_std"]
        assert std.shape == (len(rows[name]), 6)
        assert torch.allclose(std[0].to(F64), expected.expand(6), rtol=1e-6), name
        torch.testing.assert_close(post.samples["u"][0], runs["alone"].samples["u"][0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(post.diagnostics["misfit"][0], runs["alone"].diagnostics["misfit"][0])
    # the neighbour has its own floor (ten times larger), which a batch-wide RMS would have shared
    assert torch.allclose(runs["pair"].diagnostics["noise_std"][1].to(F64),
                          0.3 * (10 * obs.values[1]).pow(2).mean().sqrt().expand(6), rtol=1e-6)


@pytest.mark.parametrize("schedule", ["vp", "explicit", "karras"])
def test_the_sigma_grid_comes_from_prior_sigmas(setup, monkeypatch, schedule):
    prior, obs, _ = setup
    used = []
    original = samplers.sample

    def spy(denoiser, x, sigmas, **options):
        used.append(sigmas)
        return original(denoiser, x, sigmas, **options)

    monkeypatch.setattr(samplers, "sample", spy)
    grid = [40.0, 5.0, 1.0, 0.2, 0.02, 0.0]
    arg = torch.tensor(grid, dtype=F64) if schedule == "explicit" else schedule
    post = reconstruct(prior, obs, method="covariance", solver="dpmpp_2m", steps=7, n_samples=2, schedule=arg,
                       dtype=F64)
    expected = prior.sigmas(7, arg)
    assert torch.equal(used[0], expected)
    assert post.diagnostics["steps"] == post.diagnostics["nfe"] == len(expected) - 1
    if schedule == "explicit":
        assert used[0].tolist() == grid
    if schedule == "vp":                                       # the VP grid (uniform in VP time), not Karras
        assert torch.equal(used[0], samplers.schedules.get_schedule("vp", 7))
        assert not torch.allclose(used[0], prior.sigmas(7, "karras"))


def test_vp_grid_samples_the_exact_posterior_mean(setup):
    """Covariance guidance is exact for a Gaussian prior: on the VP grid too the posterior mean is right."""
    prior, obs, _ = setup
    b, k = obs.batch_size, 200
    mean, cov = prior.exact_posterior(obs.operator, obs.values)
    post = reconstruct(prior, obs, method="covariance", solver="dpmpp_2m", schedule="vp", steps=30, n_samples=k,
                       dtype=F64, method_options={"cg_iters": 6})
    z = (post.samples["u"].reshape(b, k, -1).mean(1) - mean) / (cov.diagonal() / k).sqrt()
    assert z.pow(2).mean().sqrt() < 1.6


@pytest.mark.parametrize("method", ["covariance", "tds", "diffusionpde"])
def test_progress_ticks_once_per_solver_step(setup, capsys, monkeypatch, method):
    """One tick per step on a bar that shows while sampling and is cleared afterwards (leave=False)."""
    import tqdm.auto

    closed = []

    class Recording(tqdm.auto.tqdm):
        def close(self):
            if not self.disable:                # tqdm closes again on deletion, disabled by then
                closed.append((self.n, self.total, self.leave))
            super().close()

    monkeypatch.setattr(tqdm.auto, "tqdm", Recording)
    prior, obs, _ = setup
    reconstruct(prior, obs, method=method, steps=5, n_samples=2, progress=True)
    assert closed == [(5, 5, False)]
    err = capsys.readouterr().err
    assert "0/5 [" in err and method in err
    reconstruct(prior, obs, method=method, steps=5, n_samples=2)
    assert capsys.readouterr().err == ""
