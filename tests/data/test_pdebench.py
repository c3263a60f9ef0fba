"""PDEBench import on small synthetic files with PDEBench's exact layout."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from diffpde.data import DatasetFileError, FieldDataset, import_pdebench, read_fields, read_info


def make_darcy(path, n=5, m=8, seed=0):
    rng = np.random.default_rng(seed)
    x = (np.arange(m) + 0.5) / m
    nu = rng.uniform(1, 3, (n, m, m)).astype(np.float32)
    tensor = rng.standard_normal((n, 1, m, m)).astype(np.float32)
    with h5py.File(path, "w") as f:
        f["tensor"], f["nu"] = tensor, nu
        f["x-coordinate"], f["y-coordinate"] = x.astype(np.float32), x.astype(np.float32)
        f["t-coordinate"] = np.linspace(0, 1, 10, dtype=np.float32)
    return nu, tensor


def make_burgers(path, n=3, nt=6, nx=16, seed=1):
    rng = np.random.default_rng(seed)
    tensor = rng.standard_normal((n, nt, nx)).astype(np.float32)
    with h5py.File(path, "w") as f:
        f["tensor"] = tensor
        f["x-coordinate"] = ((np.arange(nx) + 0.5) / nx).astype(np.float32)
        f["t-coordinate"] = np.linspace(0, 2, nt + 1, dtype=np.float32)  # PDEBench stores nt + 1 times
    return tensor


def test_darcy_import_keeps_the_data_and_coordinates(tmp_path):
    src = tmp_path / "2D_DarcyFlow_beta1.0_Train.hdf5"
    nu, tensor = make_darcy(src)
    out = import_pdebench(src, "darcy", tmp_path / "darcy.h5", parameters={"f": 1.0}, progress=False)
    data = read_fields(out)
    np.testing.assert_array_equal(data["a"], nu)
    np.testing.assert_array_equal(data["u"], tensor[:, 0])
    info = read_info(out)
    assert info.grid.kind == "cell-centred"
    np.testing.assert_allclose(info.grid.coords["x"], (np.arange(8) + 0.5) / 8, rtol=1e-6)
    assert info.config == {"name": "darcy", "resolution": 8, "parameters": {"f": 1.0}}
    assert [(f.name, f.role, f.dims) for f in info.fields] == [("a", "input", ("y", "x")), ("u", "output", ("y", "x"))]
    assert info.stats["a"]["mean"] == pytest.approx(nu.astype(np.float64).mean())
    assert info.attrs["source"] == f"PDEBench {src.name}"
    ds = FieldDataset(out)
    assert ds.shape == (2, 8, 8)
    np.testing.assert_allclose(ds.denormalize(ds[2])[1].numpy(), tensor[2, 0], rtol=1e-5, atol=1e-6)


def test_burgers_import_splits_initial_condition_and_trajectory(tmp_path):
    src = tmp_path / "1D_Burgers_Sols_Nu0.001.hdf5"
    tensor = make_burgers(src)
    out = import_pdebench(src, "burgers", tmp_path / "b.h5", parameters={"nu": 0.001}, progress=False, block=2)
    data = read_fields(out)
    np.testing.assert_array_equal(data["u0"], tensor[:, 0])
    np.testing.assert_array_equal(data["u"], tensor)
    info = read_info(out)
    assert info.field("u").dims == ("t", "x") and info.field("u0").dims == ("x",)
    np.testing.assert_allclose(info.grid.coords["t"], np.linspace(0, 2, 7)[:6], rtol=1e-6)
    assert len(info.grid.coords["x"]) == 16
    assert torch.equal(FieldDataset(out, ["u"], normalize=False)[1][0], torch.from_numpy(tensor[1]))


def test_bad_pdebench_files_are_named(tmp_path):
    burgers = tmp_path / "burgers.hdf5"
    make_burgers(burgers)
    with pytest.raises(DatasetFileError, match=r"not a PDEBench darcy file: dataset\(s\) \['nu', 'y-coordinate'\] missing"):
        import_pdebench(burgers, "darcy", tmp_path / "x.h5", progress=False)
    with pytest.raises(ValueError, match="unknown PDEBench problem 'heat'"):
        import_pdebench(burgers, "heat", tmp_path / "x.h5", progress=False)
    darcy = tmp_path / "darcy.hdf5"
    make_darcy(darcy)
    with h5py.File(darcy, "r+") as f:
        del f["x-coordinate"]
        f["x-coordinate"] = np.zeros(7)
    with pytest.raises(DatasetFileError, match="darcy shapes do not fit"):
        import_pdebench(darcy, "darcy", tmp_path / "x.h5", progress=False)
    nan = tmp_path / "nan.hdf5"
    make_burgers(nan)
    with h5py.File(nan, "r+") as f:
        f["tensor"][2, 3, 4] = np.nan
    with pytest.raises(DatasetFileError, match="field 'u' of sample 2 contains NaN"):
        import_pdebench(nan, "burgers", tmp_path / "x.h5", progress=False)
    assert not (tmp_path / "x.h5").exists()
    junk = tmp_path / "junk.hdf5"
    junk.write_bytes(b"not hdf5" * 100)
    with pytest.raises(DatasetFileError, match="not a readable HDF5 file"):
        import_pdebench(junk, "burgers", tmp_path / "x.h5", progress=False)
    with pytest.raises(FileNotFoundError):
        import_pdebench(tmp_path / "absent.hdf5", "burgers", tmp_path / "x.h5", progress=False)
