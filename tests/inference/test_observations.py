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


def test_sensor_axis_outside_the_field_is_an_error():
    # axis=2 on a 2D field used to become axis 0 silently
    with pytest.raises(ValueError, match=r"axis 2 does not exist.*2 axes"):
        SensorColumns("u", (5, 16), positions=[2], axis=2)
    with pytest.raises(ValueError, match="axis -3"):
        SensorColumns("u", (5, 16), positions=[2], axis=-3)
    # negative axes inside the field are fine: -1 is the last one
    assert torch.equal(SensorColumns("u", (5, 16), [2], axis=-1).mask_, SensorColumns("u", (5, 16), [2], axis=1).mask_)


def test_coordinates_in_a_dim_the_field_does_not_have_are_named():
    x = np.linspace(0, 1, 9)
    coords = {"y": x, "x": x}
    with pytest.raises(ValueError, match=r"'z' is not a dim of field 'u', whose dims are \('y', 'x'\)"):
        SparsePoints.at_coordinates("u", coords, ("x", "z"), [[0.5, 0.5]])
    with pytest.raises(ValueError, match="each dim"):
        SparsePoints.at_coordinates("u", coords, ("x",), [[0.5]])
    with pytest.raises(ValueError, match=r"\[m, 2\]"):
        SparsePoints.at_coordinates("u", coords, ("y", "x"), [[0.5, 0.5, 0.5]])
    # dims give the field's axis order and the order of the point columns
    coords = {"y": x, "x": np.linspace(0, 2, 5)}
    op = SparsePoints.at_coordinates("u", coords, ("x", "y"), [[2.0, 0.25]])
    assert op.mask_.shape == (5, 9) and op.coordinates().tolist() == [[4, 2]]


DARCY = {"name": "darcy", "resolution": 16, "parameters": {"f": 1.0, "a_low": 3.0, "a_high": 12.0}}


def _observations(provenance, b=2):
    op = StackedObservation([SparsePoints.random("u", (8, 8), count=4, seed=0, noise_std=0.05),
                             SparsePoints.random("u", (8, 8), count=3, seed=1, noise_std=0.05)])
    return Observations(op, torch.randn(b, 7, dtype=torch.float64), provenance)


def test_provenance_round_trips_through_hdf5(tmp_path):
    record = {"problem": DARCY, "data": "test.h5", "indices": np.array([3, 7])}
    obs = _observations(record)
    assert obs.provenance["indices"] == [3, 7]          # numpy indices are stored as plain ints
    obs.save(tmp_path / "obs.h5")
    back = Observations.load(tmp_path / "obs.h5")
    assert back.provenance == {"problem": DARCY, "data": "test.h5", "indices": [3, 7]}
    assert torch.equal(back.values, obs.values)
    # a file written without provenance loads with None
    _observations(None).save(tmp_path / "bare.h5")
    assert Observations.load(tmp_path / "bare.h5").provenance is None


def test_provenance_must_match_the_number_of_instances_and_its_layout():
    with pytest.raises(ValueError, match="lists 3 instance indices"):
        _observations({"problem": DARCY, "indices": [0, 1, 2]}, b=2)
    with pytest.raises(ValueError, match="unknown provenance key"):
        _observations({"problem": DARCY, "seed": 0})
    with pytest.raises(ValueError, match="list of integers"):
        _observations({"indices": [0.5, 1]})


def test_check_provenance_names_the_difference():
    from diffpde.inference.observations import check_provenance
    from diffpde import pdes

    obs = _observations({"problem": DARCY, "data": "test.h5", "indices": [3, 7]})
    check_provenance(obs, DARCY, [3, 7])                                  # the same: passes
    check_provenance(obs, {**DARCY, "parameters": {"f": 1, "a_low": 3, "a_high": 12}})  # 1 == 1.0
    check_provenance(obs, None, None)                                     # nothing to compare
    with pytest.raises(ValueError, match="made on darcy at resolution 16, but the prior's problem is burgers"):
        check_provenance(obs, {"name": "burgers", "resolution": 16, "parameters": {}})
    with pytest.raises(ValueError, match="resolution 32"):
        check_provenance(obs, {**DARCY, "resolution": 32})
    with pytest.raises(ValueError, match=r"parameter f = 1.0, but the prior's problem has f = 5.0"):
        check_provenance(obs, {**DARCY, "parameters": {**DARCY["parameters"], "f": 5.0}})
    with pytest.raises(ValueError, match=r"parameter tau = \(not recorded\)"):
        check_provenance(obs, {**DARCY, "parameters": {**DARCY["parameters"], "tau": 3.0}})
    with pytest.raises(ValueError, match=r"instance\(s\) \[3, 7\] of test.h5, but are used with instance\(s\) \[0, 1\]"):
        check_provenance(obs, DARCY, [0, 1])
    # a PDE instance stands for its config
    darcy = pdes.get("darcy", 16)
    check_provenance(_observations({"problem": darcy.config(), "indices": [0, 1]}), darcy, [0, 1])
    with pytest.warns(UserWarning, match="record no provenance"):
        check_provenance(_observations(None), DARCY, [0, 1])


def test_save_leaves_nothing_behind_when_the_write_fails(tmp_path, monkeypatch):
    from diffpde.inference import observations as module

    obs = _observations({"problem": DARCY, "indices": [0, 1]})
    target = tmp_path / "obs.h5"
    obs.save(target)
    before = target.read_bytes()

    def fail(self):
        raise RuntimeError("disk full")

    # the write fails after the file was opened: no temporary file, the old file untouched
    monkeypatch.setattr(module.MaskObservation, "coordinates", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        _observations(None).save(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["obs.h5"]
    assert target.read_bytes() == before
    # an operator that cannot be saved fails before any file is made
    box = Observations(CallableObservation(lambda f: f["u"].flatten(1)[:, :2], ("u",), 2), torch.zeros(1, 2))
    with pytest.raises(TypeError, match="cannot be saved"):
        box.save(tmp_path / "box.h5")
    with pytest.raises(OSError, match="does not exist"):
        obs.save(tmp_path / "missing" / "obs.h5")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["obs.h5"]


def _layout(group) -> dict:
    """What an observations writer put into ``group``: its attributes and its datasets' values."""
    out = {f"@{k}": group.attrs[k] for k in ("diffpde_observations", "diffpde_provenance") if k in group.attrs}
    group.visititems(lambda name, item: out.__setitem__(name, item[()]) if hasattr(item, "dtype")
                     and (name == "values" or name.startswith("coordinates")) else None)
    return out


def test_one_writer_for_observation_files_groups_and_posterior_files(tmp_path):
    """Observations written into an open group, into their own file and into a posterior file have one
    layout (coordinates u and u.1 of two operators of u) and read back equal."""
    import h5py

    from diffpde.inference.posterior_io import write_posterior
    from diffpde.inference.tasks import Posterior

    obs = _observations({"problem": DARCY, "indices": [4, 5]})
    obs.save(tmp_path / "obs.h5")
    with h5py.File(tmp_path / "group.h5", "w") as f:
        obs.write(f.create_group("run/observations"))
    write_posterior(tmp_path / "post.h5", Posterior({"u": torch.zeros(2, 1, 8, 8)}), obs)
    with h5py.File(tmp_path / "obs.h5", "r") as a, h5py.File(tmp_path / "group.h5", "r") as b, \
            h5py.File(tmp_path / "post.h5", "r") as c:
        reference = _layout(a)
        assert sorted(reference) == ["@diffpde_observations", "@diffpde_provenance", "coordinates/u",
                                     "coordinates/u.1", "values"]
        for other in (_layout(b["run/observations"]), _layout(c)):
            assert sorted(other) == sorted(reference)
            for key, value in reference.items():
                assert np.array_equal(other[key], value), key
        back = Observations.read(b["run/observations"])
        with pytest.raises(ValueError, match="'run' is not a diffpde observations file"):
            Observations.read(b["run"], "'run'")
    for path in ("obs.h5", "post.h5"):
        again = Observations.load(tmp_path / path)
        assert again.provenance == back.provenance == obs.provenance
        assert torch.equal(again.values, obs.values) and torch.equal(back.values, obs.values)
        assert again.operator.to_dict() == back.operator.to_dict() == obs.operator.to_dict()
