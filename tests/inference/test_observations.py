import numpy as np
import pytest
import torch

from diffpde.inference.observations import (
    CallableObservation, LinearObservation, Observations, SensorColumns, SparsePoints,
    StackedObservation, require,
)


def _fields(b=2, n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"a": torch.randn(b, n, n, generator=g, dtype=torch.float64),
            "u": torch.randn(b, n, n, generator=g, dtype=torch.float64)}


def test_sparse_points_pick_the_named_nodes_and_adjoint_is_transpose():
    op = SparsePoints("u", (8, 8), [[0, 1], [3, 4], [7, 7]])
    f = _fields()
    y = op(f)
    assert torch.equal(y, torch.stack([f["u"][:, 0, 1], f["u"][:, 3, 4], f["u"][:, 7, 7]], -1))
    # <A x, y> == <x, A^T y>
    z = torch.randn(2, 3, dtype=torch.float64)
    lhs = (op(f) * z).sum()
    rhs = (f["u"] * op.adjoint(z)["u"]).sum()
    assert torch.allclose(lhs, rhs)
    assert op.linear and op.mask and op.differentiable


def test_random_fraction_is_reproducible_and_distinct():
    a = SparsePoints.random("u", (128, 128), 0.03, seed=1)
    b = SparsePoints.random("u", (128, 128), 0.03, seed=1)
    c = SparsePoints.random("u", (128, 128), 0.03, seed=2)
    assert a.num_measurements == round(0.03 * 128 * 128) == 492
    assert torch.equal(a.index, b.index) and not torch.equal(a.index, c.index)


def test_physical_coordinates_snap_and_outside_domain_is_an_error():
    x = np.linspace(0, 1, 9)
    op = SparsePoints.at_coordinates("u", {"y": x, "x": x}, ("y", "x"), [[0.0, 0.5], [1.0, 0.126]])
    assert op.coordinates().tolist() == [[0, 4], [8, 1]]
    with pytest.raises(ValueError, match="outside the domain"):
        SparsePoints.at_coordinates("u", {"y": x, "x": x}, ("y", "x"), [[1.2, 0.5]])
    with pytest.raises(ValueError, match="NaN"):
        SparsePoints.at_coordinates("u", {"y": x, "x": x}, ("y", "x"), [[np.nan, 0.5]])


def test_sensor_columns_observe_whole_time_series():
    op = SensorColumns("u", (5, 16), positions=[2, 9], axis=1)
    t = torch.arange(80.0).reshape(1, 5, 16)
    y = op({"u": t})
    assert y.shape == (1, 10)
    assert set(y.flatten().tolist()) == set(t[0, :, [2, 9]].flatten().tolist())


def test_linear_matrix_operator_and_adjoint():
    m = torch.randn(5, 16, dtype=torch.float64)
    op = LinearObservation("a", (4, 4), m)
    f = {"a": torch.randn(3, 4, 4, dtype=torch.float64)}
    assert torch.allclose(op(f), f["a"].reshape(3, 16) @ m.T)
    z = torch.randn(3, 5, dtype=torch.float64)
    assert torch.allclose((op(f) * z).sum(), (f["a"] * op.adjoint(z)["a"]).sum())


def test_capabilities_are_enforced_with_clear_errors():
    box = CallableObservation(lambda f: f["u"].flatten(1)[:, :3] ** 2, ("u",), 3)
    with pytest.raises(TypeError, match="differentiable"):
        require(box, "dps", differentiable=True)
    nonlinear = CallableObservation(lambda f: f["u"].flatten(1)[:, :3] ** 2, ("u",), 3, differentiable=True)
    with pytest.raises(TypeError, match="mask"):
        require(nonlinear, "projection", mask=True)
    with pytest.raises(TypeError, match="adjoint"):
        nonlinear.adjoint(torch.zeros(1, 3))
    # the black box runs without building a graph
    u = torch.randn(1, 4, 4, requires_grad=True)
    assert not box({"u": u}).requires_grad


def test_unknown_field_and_wrong_shape_are_named():
    op = SparsePoints("p", (8, 8), [[1, 1]])
    with pytest.raises(KeyError, match="'p'"):
        op(_fields())
    with pytest.raises(ValueError, match="shape"):
        SparsePoints("u", (4, 4), [[1, 1]])(_fields())


def test_stack_measures_several_fields_and_noise_is_reproducible():
    ops = [SparsePoints.random("a", (8, 8), count=5, seed=0, noise_std=0.1),
           SparsePoints.random("u", (8, 8), count=7, seed=1, noise_std=0.1)]
    st = StackedObservation(ops)
    assert st.num_measurements == 12 and st.mask and st.linear
    f = _fields()
    y1 = st.measure(f, torch.Generator().manual_seed(3))
    y2 = st.measure(f, torch.Generator().manual_seed(3))
    assert torch.equal(y1, y2)
    assert 0.0 < (y1 - st(f)).std() < 0.3
    assert set(st.adjoint(torch.ones(2, 12))) == {"a", "u"}


def test_observations_reject_nan_and_round_trip_through_hdf5(tmp_path):
    op = StackedObservation([SparsePoints.random("u", (8, 8), count=6, seed=0, noise_std=0.05)])
    with pytest.raises(ValueError, match="NaN"):
        Observations(op, torch.full((1, 6), float("nan")))
    obs = Observations(op, torch.randn(2, 6, dtype=torch.float64))
    obs.save(str(tmp_path / "obs.h5"))
    back = Observations.load(str(tmp_path / "obs.h5"))
    assert torch.equal(back.values, obs.values)
    f = _fields()
    assert torch.equal(back.operator(f), op(f))
    assert back.operator.noise_std == 0.05
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(OSError, match="cannot read"):
        Observations.load(str(tmp_path / "junk.h5"))
