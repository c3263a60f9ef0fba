"""Control by guidance (diffpde.inference.control): the cost, the adjoint baseline, re-simulation, the three
guidance gradients on exact Gaussian priors and a wavelet prior, and the ``diffpde control`` command."""

import argparse
import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from diffpde import pdes
from diffpde.data import generate_dataset
from diffpde.inference import control as C
from diffpde.inference import control_cli
from diffpde.models.prior import Prior


def burgers_cp(nx=8, nt=5, T=2.0, lam=0.01):
    return C.control_problem(pdes.get("burgers_dirichlet", nx, nt=nt, T=T), lam=lam)


def ns_cp(n=8, nt=3, T=0.25, bound=2.0):
    problem = pdes.get("navier_stokes", n, store="trajectory", nt=nt, T=T, forcing=0.0)
    return C.control_problem(problem, lam=0.01, bound=bound)


@pytest.fixture(scope="module")
def burgers_surrogate():
    cp = burgers_cp(nx=10, nt=6, T=8.0)
    return cp, C.gaussian_surrogate(cp, 300, seed=0), C.sample_instances(cp, 4, seed=5000)


def test_cost_is_grid_means_over_active_nodes_and_residual_squares_to_it():
    cp = burgers_cp(nx=8, nt=5, lam=0.3)
    g = torch.Generator().manual_seed(0)
    final, target = torch.randn(3, 8, generator=g), torch.randn(3, 8, generator=g)
    f = torch.randn(3, 5, 8, generator=g)
    by_hand = (final - target)[:, 1:-1].pow(2).mean(1) + 0.3 * f[..., 1:-1].pow(2).mean((1, 2))
    assert torch.allclose(cp.cost(final, f, target), by_hand)
    assert torch.allclose(cp.residual(final, f, target).pow(2).sum(1), by_hand)
    ns = ns_cp()
    w, tw, fw = torch.randn(2, 8, 8), torch.randn(2, 8, 8), 5 * torch.randn(2, 3, 8, 8)
    assert torch.allclose(ns.cost(w, fw, tw), (w - tw).pow(2).mean((1, 2)) + 0.01 * fw.pow(2).mean((1, 2, 3)))
    assert ns.applied(fw).abs().max() <= 2.0


@pytest.mark.parametrize("make", [burgers_cp, ns_cp], ids=["burgers", "navier_stokes"])
def test_gradient_of_the_cost_through_the_solver_matches_finite_differences(make):
    cp = make()
    inst = C.sample_instances(cp, 2, seed=3)
    f = (0.3 * torch.randn(2, *cp.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64))

    def J(f):
        return cp.cost(cp.simulate(inst["initial"], f)[:, -1], f, inst["target"]).sum()

    x = f.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(J(x), x)
    g = torch.Generator().manual_seed(2)
    for _ in range(2):
        d = torch.randn(f.shape, generator=g, dtype=torch.float64)
        eps = 1e-4
        with torch.no_grad():
            fd = (J(f + eps * d) - J(f - eps * d)) / (2 * eps)
        assert abs(float((grad * d).sum()) - float(fd)) <= 1e-5 * abs(float(fd)) + 1e-9


def test_adjoint_reduces_the_cost_and_its_cost_is_the_solvers():
    cp = burgers_cp(nx=8, nt=5, T=2.0)
    inst = C.sample_instances(cp, 2, seed=11)
    none = C.no_control(cp, inst["initial"], inst["target"])
    out = C.adjoint_control(cp, inst["initial"], inst["target"], max_iter=6, tol=1e-6)
    assert (out.cost < 0.1 * none.cost).all()
    assert out.info["iterations"] >= 2 and out.info["evaluations"] >= out.info["iterations"]
    assert out.info["history"][-1] <= out.info["history"][0]
    # J_actual of the optimum's forcing, re-simulated from scratch, and computed by hand from the family's solver
    again = C.resimulate(cp, inst["initial"], inst["target"], out.control)
    assert torch.allclose(again.cost, out.cost, rtol=1e-12, atol=0)
    u = cp.problem.solve(inst["initial"].numpy(), forcing=out.control.numpy())
    by_hand = ((u[:, -1] - inst["target"].numpy())[:, 1:-1] ** 2).mean(1) \
        + cp.lam * (out.control.numpy()[..., 1:-1] ** 2).mean((1, 2))
    assert torch.allclose(out.cost, torch.as_tensor(by_hand), rtol=1e-10)
    # the reachable reference (the forcing that made the target) costs its effort only
    ref = C.resimulate(cp, inst["initial"], inst["target"], inst["control"])
    assert torch.allclose(ref.tracking, torch.zeros(2, dtype=torch.float64), atol=1e-20)


def test_bounded_adjoint_stays_within_the_bound():
    cp = ns_cp(bound=0.5)
    inst = C.sample_instances(cp, 1, seed=4, amplitude=3.0)
    out = C.adjoint_control(cp, inst["initial"], inst["target"], max_iter=5, tol=0.0)
    assert out.control.abs().max() <= 0.5
    assert out.cost[0] < C.no_control(cp, inst["initial"], inst["target"]).cost[0]


def test_a_diverged_forcing_is_not_simulated_and_costs_inf():
    cp = burgers_cp()
    inst = C.sample_instances(cp, 2, seed=0)
    f = torch.zeros(2, *cp.shape, dtype=torch.float64)
    f[1, 2, 3] = 1e6
    out = C.resimulate(cp, inst["initial"], inst["target"], f)
    assert math.isfinite(out.cost[0]) and out.cost[1] == math.inf and out.info["diverged"] == 1


def _wavelet_prior(cp):
    """A tiny untrained prior over (f, u) with a wavelet representation, in float64."""
    model = {"network": {"type": "unet2d", "block_out_channels": [8, 8], "attention_levels": [False, False],
                         "layers_per_block": 1, "norm_num_groups": 4},
             "precond": {"type": "edm"},
             "representation": {"type": "wavelet", "wavelet": "bior2.4", "mode": "periodization", "axes": ["t", "x"]}}
    data = C.sample_instances(cp, 8, seed=0)
    stacked = torch.stack([data["control"], data["trajectory"]], 1).float()
    torch.manual_seed(0)
    prior = Prior.from_config(model, fields=("f", "u"), grid_shape=cp.shape, problem=cp.problem, data=stacked)
    prior.representation.double()           # the decode in float64; the network stays in float32

    def denoiser(z, sigma):
        return prior.denoiser()(z.float(), sigma.float()).double()

    return prior, denoiser


def test_decoder_only_gradient_matches_differentiation_through_the_decode():
    cp = burgers_cp(nx=8, nt=8)
    prior, denoiser = _wavelet_prior(cp)
    inst = C.sample_instances(cp, 2, seed=9)
    g = C.Guidance(mode="decoder", scale=2.0, schedule="constant", max_rms=None)
    wrapped, guide = C._guided_denoiser(prior, cp, g, inst["initial"], inst["target"], denoiser)
    z = 3 * torch.randn(2, *prior.latent_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    z0 = denoiser(z, torch.full((2,), 3.0, dtype=torch.float64))

    def J(z0):
        fields = prior.decode_fields(z0)
        return cp.cost(fields["u"][:, -1], fields["f"], inst["target"]).sum()

    grad = guide.gradient(z0)
    d = torch.randn(z0.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        fd = (J(z0 + 1e-4 * d) - J(z0 - 1e-4 * d)) / 2e-4
    assert torch.allclose((grad * d).sum(), fd, rtol=1e-7)
    # the wrapper returns z0_hat - w grad, the network not differentiated (no projection: initial none)
    g_none = C.Guidance(mode="decoder", scale=2.0, schedule="constant", max_rms=None, initial="none")
    wrapped, guide = C._guided_denoiser(prior, cp, g_none, inst["initial"], inst["target"], denoiser)
    out = wrapped(z, torch.full((2,), 3.0, dtype=torch.float64))
    assert torch.allclose(out, z0 - 2.0 * grad, atol=1e-12)
    # projection: the output's decoded initial state is the given one
    wrapped, _ = C._guided_denoiser(prior, cp, g, inst["initial"], inst["target"], denoiser)
    u = prior.decode_fields(wrapped(z, torch.full((2,), 3.0, dtype=torch.float64)))["u"]
    assert torch.allclose(u[:, 0], inst["initial"], atol=1e-6)     # encode_fields stacks in float32


@pytest.mark.parametrize("guidance", [
    C.Guidance(mode="decoder", scale=10.0),
    C.Guidance(mode="network", scale=10.0),
    C.Guidance(mode="covariance", scale=1000.0),
], ids=["decoder", "network", "covariance"])
def test_guided_samples_reduce_the_cost_on_an_exact_gaussian_prior(burgers_surrogate, guidance):
    cp, prior, inst = burgers_surrogate
    kwargs = dict(steps=12, n_samples=4, seed=1)
    free = C.guided_control(prior, cp, inst["initial"], inst["target"], C.Guidance(mode="none"), **kwargs)
    guided = C.guided_control(prior, cp, inst["initial"], inst["target"], guidance, **kwargs)
    assert guided.control.shape == (4, 4, *cp.shape) and guided.cost_generated.shape == (4, 4)
    assert guided.cost_generated.mean() < 0.2 * free.cost_generated.mean()
    assert guided.actual.cost.mean() < 0.5 * free.actual.cost.mean()
    assert torch.allclose(guided.state[:, :, 0], inst["initial"][:, None].expand(-1, 4, -1), atol=1e-5)
    assert guided.info["nfe"] == 12 and guided.info["vjp"] >= 12
    assert torch.isfinite(guided.rel_l2).all()


def test_covariance_guidance_samples_the_tilted_gaussian_exactly():
    """Gaussian prior N(m, C) tilted by exp(-scale J), J = |A x + c|^2: Gaussian with a closed-form mean."""
    cp = burgers_cp(nx=8, nt=4, T=1.0)
    prior = C.gaussian_surrogate(cp, 200, seed=0)
    inst = C.sample_instances(cp, 1, seed=77)
    scale = 30.0
    d = prior.mean.numel()
    eye = torch.eye(d, dtype=torch.float64).reshape(d, 2, *cp.shape)
    target = inst["target"].expand(d, -1)
    r0 = cp.residual(torch.zeros(1, cp.shape[1], dtype=torch.float64), torch.zeros(1, *cp.shape, dtype=torch.float64),
                     inst["target"])
    a = (cp.residual(eye[:, 1, -1], eye[:, 0], target) - r0).T           # [m, d]
    noise = torch.eye(a.shape[0], dtype=torch.float64) / (2 * scale)
    gain = prior.cov @ a.T @ torch.linalg.inv(a @ prior.cov @ a.T + noise)
    exact = prior.mean - gain @ (a @ prior.mean + r0[0])
    post_std = (prior.cov - gain @ a @ prior.cov).diagonal().clamp_min(0).sqrt()
    k = 400
    g = C.Guidance(mode="covariance", scale=scale, cg_iters=a.shape[0] + 4, initial="none", max_rms=None)
    s = C.guided_control(prior, cp, inst["initial"], inst["target"], g, solver="heun", steps=25, n_samples=k, seed=0,
                         dtype=torch.float64)
    mean = torch.stack([s.control[0], s.state[0]], 1).reshape(k, -1).mean(0)
    z = (mean - exact) / (post_std / math.sqrt(k)).clamp_min(1e-6)
    assert z.abs().max() < 5, float(z.abs().max())


def test_navier_stokes_control_by_guidance_on_a_gaussian_prior():
    cp = ns_cp(n=8, nt=3, T=0.25, bound=2.0)
    prior = C.gaussian_surrogate(cp, 600, seed=0, amplitude=2.0)
    inst = C.sample_instances(cp, 2, seed=900, amplitude=2.0)
    kwargs = dict(steps=10, n_samples=3, seed=0)
    free = C.guided_control(prior, cp, inst["initial"], inst["target"], C.Guidance(mode="none"), **kwargs)
    guided = C.guided_control(prior, cp, inst["initial"], inst["target"], C.Guidance(mode="covariance", scale=1e3),
                              **kwargs)
    assert guided.actual.cost.mean() < 0.5 * free.actual.cost.mean()
    assert guided.actual.control.abs().max() <= 2.0       # the applied forcing respects the bound


def test_guidance_options_are_checked():
    with pytest.raises(ValueError, match="mode must be one of"):
        C.Guidance(mode="dps")
    with pytest.raises(ValueError, match="objective 'generated'"):
        C.Guidance(mode="covariance", objective="simulated")
    with pytest.raises(ValueError, match="no control task for the family 'darcy'"):
        C.control_problem(pdes.get("darcy", 16))
    with pytest.raises(ValueError, match="store='trajectory'"):
        C.control_problem(pdes.get("navier_stokes", 8))


# -- the command ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_burgers_prior(tmp_path_factory, make_standard_normal_prior):
    """A Burgers test set (8 x 8) and an untrained prior over (f, u) whose denoiser is exact for a standard normal."""
    root = tmp_path_factory.mktemp("tiny_burgers")
    data = generate_dataset("burgers_dirichlet", 3, root / "test.h5", resolution=8, parameters={"nt": 8}, seed=0,
                            progress=False)
    make_standard_normal_prior(data, ("f", "u"), root / "prior")
    return str(data), str(root / "prior")


def _run(*argv):
    parser = argparse.ArgumentParser()
    control_cli.add_parser(parser.add_subparsers(dest="command"))
    return control_cli.run(parser.parse_args(["control", *argv]))


def test_control_command_end_to_end(tiny_burgers_prior, tmp_path, capsys):
    data, prior = tiny_burgers_prior
    out = tmp_path / "control.json"
    assert _run(prior, "--data", data, "--instances", "0,2", "--nfe", "3", "--samples", "2", "--guidance", "decoder",
                "covariance:100", "--adjoint-iters", "3", "--json", str(out), "--quiet") == 0
    result = json.loads(out.read_text())
    assert result["instances"] == 2 and result["indices"] == [0, 2] and result["problem"]["name"] == "burgers_dirichlet"
    assert set(result["baselines"]) == {"no control", "reference", "adjoint"}
    assert result["baselines"]["adjoint"]["J"]["mean"] < result["baselines"]["no control"]["J"]["mean"]
    assert [r["name"] for r in result["guided"]] == ["decoder", "covariance:100"]
    for r in result["guided"]:
        assert r["nfe"] == 3 and math.isfinite(r["J_actual"]["mean"]) and math.isfinite(r["J_generated"]["mean"])
        assert r["J_actual_best_of_k"]["mean"] >= 0 and r["time_per_instance"] > 0
    printed = capsys.readouterr().out
    assert "J_actual" in printed and "adjoint" in printed and f"wrote {out}" in printed


def test_control_command_gaussian_prior_on_fresh_instances(capsys):
    assert _run("gaussian", "--problem", "navier_stokes", "--resolution", "8", "--param", "store=trajectory",
                "--param", "nt=3", "--param", "T=0.25", "--param", "forcing=0.0", "--bound", "2",
                "--fit-samples", "100", "--instances", "2", "--nfe", "2", "--samples", "1", "--no-adjoint",
                "--guidance", "none", "--quiet") == 0
    printed = capsys.readouterr().out
    assert "no control" in printed and "\nnone " in printed


@pytest.mark.parametrize("argv, message", [
    (["--instances", "two"], "without --data, give a number"),
    (["--guidance", "decoder:big"], "expected MODE, MODE:SCALE or MODE:SCALE:OBJECTIVE"),
    (["--guidance", "covariance:10:simulated"], "use objective 'generated'"),
    (["--problem", "darcy"], "was trained on burgers_dirichlet"),
    (["--nfe", "0"], "--nfe must be >= 1"),
])
def test_control_command_bad_input(tiny_burgers_prior, argv, message):
    _, prior = tiny_burgers_prior
    with pytest.raises((ValueError, KeyError), match=message):
        _run(prior, "--quiet", "--no-adjoint", *argv)


def test_bench_control_writes_table_json_and_figure(tiny_burgers_prior, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location(
        "bench_control", Path(__file__).resolve().parents[2] / "scripts" / "bench_control.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    data, prior = tiny_burgers_prior
    out, md, fig = tmp_path / "b.json", tmp_path / "b.md", tmp_path / "b.png"
    assert bench.main(["--prior", prior, "--data", data, "--n", "2", "--nfe", "2", "3", "--samples", "2",
                       "--guidance", "decoder", "none", "--adjoint-iters", "2", "--json", str(out),
                       "--markdown", str(md), "--figure", str(fig)]) == 0
    table = md.read_text()
    assert "| adjoint optimum (L-BFGS" in table and "| no control (f = 0) |" in table
    assert table.count("\n| ") == 8            # the separator, 3 baselines, 4 runs
    result = json.loads(out.read_text())
    assert len(result["guided"]) == 4 and fig.stat().st_size > 0 and "_samples" not in result
