"""Physical consistency and parameter recovery, tested on solver data: a solver trajectory is
consistent to the solver's tolerance, a perturbed one or one with another viscosity is not; the
numbers a caption states are recovered from the trajectory it describes, not from another's."""

import pytest
import torch

from diffpde import pdes
from diffpde.inference.consistency import (
    first_frame,
    parameter_recovery,
    physical_consistency,
    rollout,
    rollout_error,
    stated_parameters,
    trajectory_field,
)
from diffpde.pdes import captions as cap


@pytest.fixture(scope="module")
def burgers():
    """6 Burgers trajectories at 32 x 32 (float64) and one caption of each."""
    problem = pdes.get("burgers", 32)
    u0 = torch.as_tensor(problem.sample_inputs(6, seed=3)["u0"])
    u = rollout(problem, u0)
    texts = [cap.compose(problem.caption_vocabulary, problem.features({"u": u[i].numpy()}), rng=i, n=1)[0]
             for i in range(6)]
    return problem, u, texts


def test_solver_trajectories_are_consistent_and_perturbed_ones_are_not(burgers):
    problem, u, texts = burgers
    assert trajectory_field(problem) == ("u", 0)
    torch.testing.assert_close(first_frame(problem, {"u": u}), u[:, 0])
    exact = physical_consistency(problem, {"u": u}, texts=texts)
    assert exact["rel_l2"].shape == (6,) and exact["rel_l2"].max() < 1e-10
    assert exact["parameters"][0]["nu"] == pytest.approx(0.01)           # the caption's viscosity was used
    stored = physical_consistency(problem, {"u": u.float()})            # float32 storage, as in datasets
    assert stored["rel_l2"].max() < 1e-4
    g = torch.Generator().manual_seed(0)
    noisy = u.clone()
    noisy[:, 1:] += 0.01 * u.std() * torch.randn(u[:, 1:].shape, generator=g, dtype=torch.float64)
    assert physical_consistency(problem, {"u": noisy})["rel_l2"].min() > 3e-3
    # [B, K, ...] samples are flattened; a caption per sample
    two = physical_consistency(problem, {"u": torch.stack([u, noisy], 1)}, texts=[t for t in texts for _ in range(2)])
    assert two["rel_l2"].shape == (12,) and (two["rel_l2"][0::2] < 1e-10).all() and (two["rel_l2"][1::2] > 3e-3).all()


def test_the_viscosity_a_caption_states_is_the_one_resimulated_with():
    problem = pdes.get("burgers", 16)
    viscous = pdes.get("burgers", 16, nu=0.05)
    u0 = torch.as_tensor(problem.sample_inputs(3, seed=0)["u0"])
    u = rollout(viscous, u0)
    torch.testing.assert_close(u, rollout(problem, u0, parameters={"nu": 0.05}))
    text = "A periodic Burgers trajectory with viscosity 5.0e-2 and final time 1.00."
    assert stated_parameters(problem, [text]) == [{"nu": 0.05, "T": 1.0}]
    assert physical_consistency(problem, {"u": u}, texts=[text])["rel_l2"].max() < 1e-10
    assert physical_consistency(problem, {"u": u})["rel_l2"].min() > 1e-2            # the family's nu = 0.01
    # per-sample parameter sets are grouped and solved batched, in order
    mixed = rollout(problem, u0, parameters=[{"nu": 0.05}, {}, {"nu": 0.05}])
    torch.testing.assert_close(mixed[[0, 2]], u[[0, 2]])
    torch.testing.assert_close(mixed[1], rollout(problem, u0[1:2])[0])


def test_rollout_error_of_the_first_frame_task():
    problem = pdes.get("burgers", 16)
    u0 = torch.as_tensor(problem.sample_inputs(2, seed=1)["u0"])
    u = rollout(problem, u0)
    samples = torch.stack([u, 1.1 * u, u], 1)                                           # [B, K = 3, nt, nx]
    err = rollout_error(problem, {"u": samples}, u0)
    assert err.shape == (2, 3) and err[:, [0, 2]].max() < 1e-12
    torch.testing.assert_close(err[:, 1], torch.full((2,), 0.1, dtype=torch.float64))
    torch.testing.assert_close(rollout_error(problem, u, u0, reference=u), torch.zeros(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="3 instances of samples but 2 first frames"):
        rollout_error(problem, samples[[0, 1, 1]], u0)


def test_navier_stokes_trajectories_are_consistent():
    problem = pdes.get("navier_stokes", 16, store="trajectory", nt=4, T=0.2)
    w0 = torch.as_tensor(problem.sample_inputs(2, seed=0)["w0"])
    w = rollout(problem, w0)
    assert trajectory_field(problem) == ("w", 0) and w.shape == (2, 4, 16, 16)
    assert physical_consistency(problem, {"w0": w0, "w": w})["rel_l2"].max() < 1e-10
    shifted = torch.roll(w, 1, dims=-1)
    shifted[:, 0] = w[:, 0]
    assert physical_consistency(problem, {"w": shifted})["rel_l2"].min() > 1e-2


def test_families_without_trajectories_are_refused():
    with pytest.raises(ValueError, match="time axis 't'"):
        trajectory_field(pdes.get("darcy", 16))
    with pytest.raises(ValueError, match="time axis 't'"):
        trajectory_field(pdes.get("navier_stokes", 16))                                   # pairs (w0, w(T))


def test_parameter_recovery_matches_captions_to_their_own_trajectories(burgers):
    problem, u, texts = burgers
    rec = parameter_recovery(problem, {"u": u}, texts)
    summary = rec.summary()
    assert summary["nu"]["measured_as"] == "nu_energy" and summary["nu"]["n"] == 6
    assert summary["nu"]["median_rel_error"] < 0.05                                      # the energy balance
    for key in ("u0_max", "energy0", "energyT", "front_steepness"):
        assert summary[key]["corr"] > 0.99 and summary[key]["median_rel_error"] < 0.05, (key, summary[key])
    # the captions of other trajectories are not recovered
    shuffled = parameter_recovery(problem, {"u": u}, texts[1:] + texts[:1]).summary()
    assert all(shuffled[k]["median_rel_error"] > 0.1 for k in ("u0_max", "energy0", "front_steepness"))
    with pytest.raises(ValueError, match="5 captions for 6 samples"):
        parameter_recovery(problem, {"u": u}, texts[:5])
