"""FieldDataset and Normalizer: channels, normalisation with the stored statistics, DataLoader workers."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from diffpde.data import DatasetFileError, FieldDataset, Normalizer, generate_dataset, read_fields
from diffpde.data.generate import partial_path
from diffpde.pdes import PDE, Field, Grid, register

from test_generate import Toy, toy_truth  # noqa: F401  (registers "_toy")


@register
class Toy1D(PDE):
    """Test-only family whose fields differ in shape: u0 [n], u [4, n]."""

    name = "_toy1d"
    min_resolution = 4

    @property
    def fields(self):
        n = self.resolution
        return (Field("u0", "input", (n,), ("x",)), Field("u", "output", (4, n), ("t", "x")))

    @property
    def grid(self):
        return Grid("periodic", {"t": np.arange(4.0), "x": np.arange(self.resolution) / self.resolution})

    def sample_inputs(self, n, seed):
        return {"u0": np.random.default_rng(seed).standard_normal((n, self.resolution))}

    def generate(self, seed):
        u0 = self.sample_inputs(1, seed)["u0"][0]
        return {"u0": u0, "u": np.stack([u0 * 0.5**k for k in range(4)])}

    def residual(self, fields):
        raise NotImplementedError

    def describe(self, fields=None):
        return "toy decay"


@pytest.fixture(scope="module")
def toy_file(tmp_path_factory):
    return generate_dataset("_toy", 6, tmp_path_factory.mktemp("d") / "toy.h5", resolution=8, seed=2, progress=False)


def test_items_are_normalised_channels_with_the_stored_statistics(toy_file):
    truth = toy_truth(6, 8, 2)
    ds = FieldDataset(toy_file, ("u", "a"))
    assert len(ds) == 6 and ds.shape == (2, 8, 8) and ds.field_names == ("u", "a")
    x = ds[4]
    assert x.dtype == torch.float32 and x.shape == (2, 8, 8)
    stored = {k: v.astype(np.float32).astype(np.float64) for k, v in truth.items()}
    for c, name in enumerate(("u", "a")):
        want = (stored[name][4] - stored[name].mean()) / stored[name].std()
        np.testing.assert_allclose(x[c].numpy(), want, rtol=1e-5, atol=1e-5)
    # over the whole dataset each channel has zero mean and unit std
    allx = torch.stack([ds[i] for i in range(len(ds))]).double()
    np.testing.assert_allclose(allx.mean(dim=(0, 2, 3)).numpy(), 0.0, atol=1e-6)
    np.testing.assert_allclose(allx.std(dim=(0, 2, 3), unbiased=False).numpy(), 1.0, rtol=1e-5)
    # denormalize inverts, on single items and on batches
    np.testing.assert_allclose(ds.denormalize(x)[0].numpy(), stored["u"][4], rtol=1e-5, atol=1e-6)
    batch = torch.stack([ds[0], ds[1]])
    torch.testing.assert_close(ds.normalize(ds.denormalize(batch)), batch)
    raw = FieldDataset(toy_file, ("a",), normalize=False)
    np.testing.assert_array_equal(raw[3][0].numpy(), truth["a"][3].astype(np.float32))
    assert torch.equal(raw.denormalize(raw[3]), raw[3])


def test_indices_memory_problem_and_grid(toy_file):
    lazy = FieldDataset(toy_file, indices=[5, 1])
    mem = FieldDataset(toy_file, indices=[5, 1], in_memory=True)
    full = FieldDataset(toy_file)
    assert len(mem) == 2 and torch.equal(mem[0], full[5]) and torch.equal(lazy[1], full[1])
    assert isinstance(lazy.problem, Toy) and lazy.problem.resolution == 8
    np.testing.assert_array_equal(lazy.grid.coords["y"], np.arange(8) / 8)
    with pytest.raises(IndexError, match=r"indices \[6\]"):
        FieldDataset(toy_file, indices=[0, 6])
    with pytest.raises(IndexError):
        lazy[2]


def test_dataloader_with_worker_processes(toy_file):
    ds = FieldDataset(toy_file)
    first = ds[0]  # opens a handle in this process before the workers fork
    loader = DataLoader(ds, batch_size=4, num_workers=2, shuffle=False)
    batches = list(loader)
    assert [b.shape[0] for b in batches] == [4, 2]
    assert torch.equal(torch.cat(batches), torch.stack([ds[i] for i in range(6)]))
    assert torch.equal(batches[0][0], first)
    # spawn-started workers get a pickled copy: without the open handle, and it reopens the file
    copy = pickle.loads(pickle.dumps(ds))
    assert torch.equal(copy[5], ds[5])


def test_normalizer_round_trips_as_json():
    norm = Normalizer(("a", "u"), (1.0, -2.0), (2.0, 0.5), field_ndim=1)
    again = Normalizer.from_dict(json.loads(json.dumps(norm.to_dict())))
    assert again == norm
    x = torch.tensor([[3.0, 5.0], [-2.0, -1.5]], dtype=torch.float64)  # [C=2, n=2]
    torch.testing.assert_close(norm.normalize(x), torch.tensor([[1.0, 2.0], [0.0, 1.0]], dtype=torch.float64))
    np.testing.assert_allclose(norm.denormalize(norm.normalize(x.numpy())), x.numpy())
    with pytest.raises(ValueError, match="expected .*2 channels"):
        norm.normalize(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="non-positive std"):
        Normalizer(("a",), (0.0,), (0.0,), 2)
    assert Normalizer.from_stats({"a": {"mean": 1.0, "std": 0.0}}, ["a"], 2).std == (1.0,)  # constant field
    assert norm.select(["u"]) == Normalizer(("u",), (-2.0,), (0.5,), 1)
    with pytest.raises(KeyError, match=r"no statistics for field\(s\) \['f'\]"):
        norm.select(["f"])


@register
class ToyMismatch(Toy1D):
    """Test-only family whose u0 has one node more than u's x axis: not stackable."""

    name = "_toy_mismatch"

    @property
    def fields(self):
        n = self.resolution
        return (Field("u0", "input", (n + 1,), ("x",)), Field("u", "output", (4, n), ("t", "x")))

    def sample_inputs(self, n, seed):
        return {"u0": np.random.default_rng(seed).standard_normal((n, self.resolution + 1))}

    def generate(self, seed):
        u0 = self.sample_inputs(1, seed)["u0"][0]
        return {"u0": u0, "u": np.stack([u0[:-1] * 0.5**k for k in range(4)])}


def test_a_field_on_fewer_axes_must_match_the_others(tmp_path):
    bad = generate_dataset("_toy_mismatch", 2, tmp_path / "m.h5", resolution=8, progress=False)
    with pytest.raises(ValueError, match=r"different shapes .*u0 \(9,\) \['x'\], u \(4, 8\) \['t', 'x'\]"):
        FieldDataset(bad)


def test_clear_errors_for_fields_and_incomplete_files(toy_file, tmp_path):
    with pytest.raises(KeyError, match=r"no field\(s\) \['v'\]; fields in the file: a, u"):
        FieldDataset(toy_file, ("a", "v"))
    one_d = generate_dataset("_toy1d", 2, tmp_path / "b.h5", resolution=8, progress=False)
    # a field on fewer axes is repeated along the ones it lacks (u0 over x beside u over (t, x))
    both = FieldDataset(one_d, ["u", "u0"], normalize=False)
    assert both.shape == (2, 4, 8) and both.field_dims == ("t", "x")
    item = both[1]
    assert torch.equal(item[1], item[1, :1].expand(4, 8)) and torch.allclose(item[1, 0], item[0, 0])
    assert FieldDataset(one_d, ["u"]).shape == (1, 4, 8)
    # an unfinished file: refused, or its finished samples on request
    partial = partial_path(tmp_path / "c.h5")
    generate_dataset("_toy", 3, tmp_path / "c.h5", resolution=8, progress=False).rename(partial)
    import h5py

    with h5py.File(partial, "r+") as f:
        f["done"][1] = 0
        f.attrs.modify("complete", np.uint8(0))
    with pytest.raises(DatasetFileError, match=r"incomplete \(2 of 3 samples done\)"):
        FieldDataset(partial)
    with pytest.raises(ValueError, match="no statistics"):
        FieldDataset(partial, allow_incomplete=True)
    ds = FieldDataset(partial, allow_incomplete=True, normalize=False)
    assert ds.indices.tolist() == [0, 2]
    with pytest.raises(DatasetFileError, match="incomplete"):
        read_fields(partial)
