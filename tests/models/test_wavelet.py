"""Wavelet representation: exact inverse, PyWavelets' coefficients, gradients, statistics, save/load."""

import json

import numpy as np
import pytest
import pywt
import torch

from diffpde import pdes
from diffpde.data.normalize import Normalizer
from diffpde.models import Prior, Wavelet, build

# (grid, dims, axes): 1D, 2D over (t, x), 3D over (t, x, y), and a transform over some axes only.
LAYOUTS = {
    "1d": ((17,), ("x",), None),
    "2d": ((12, 9), ("t", "x"), ["t", "x"]),
    "3d": ((9, 8, 7), ("t", "x", "y"), ["t", "x", "y"]),
    "x_of_tx": ((5, 11), ("t", "x"), ["x"]),
}
EVEN = {"1d": (16,), "2d": (16, 8), "3d": (8, 8, 4), "x_of_tx": (5, 12)}


def unnormalised(rep):
    """The same transform as ``rep`` without its statistics."""
    kept = {k: v for k, v in rep.config().items() if k not in ("type", "mean", "std", "normalize")}
    return Wavelet(**kept, normalize=False)


def make(layout, *, even=False, **options):
    grid, dims, axes = LAYOUTS[layout]
    grid = EVEN[layout] if even else grid
    options.setdefault("normalize", False)
    return Wavelet(axes=axes, dims=list(dims), grid=list(grid), **options), grid


@pytest.mark.parametrize("mode", ["periodization", "symmetric", "zero"])
@pytest.mark.parametrize("levels", [1, 2])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("even", [False, True])
def test_decode_inverts_encode(layout, levels, mode, even):
    rep, grid = make(layout, even=even, wavelet="bior2.4", mode=mode, levels=levels, multiple=4)
    for dtype, tol in ((torch.float32, 1e-6), (torch.float64, 1e-12)):
        x = torch.randn(2, 3, *grid, dtype=dtype, generator=torch.Generator().manual_seed(levels))
        z = rep.encode(x)
        assert z.dtype == dtype and tuple(z.shape[1:]) == rep.latent_shape((3, *grid))
        assert all(n % 4 == 0 for n in z.shape[2:])
        y = rep.decode(z)
        assert y.shape == x.shape
        assert ((y - x).abs().max() / x.abs().max()).item() < tol


# PyWavelets tabulates the sym* and bior4.4+ filters to about 12 digits: their own reconstruction
# defect is 1e-12 to 3e-11, so those are held to 1e-10.
@pytest.mark.parametrize("wavelet, tol", [("haar", 1e-12), ("db4", 1e-12), ("coif2", 1e-12), ("bior1.3", 1e-12),
                                          ("rbio3.1", 1e-12), ("sym4", 1e-10), ("bior4.4", 1e-10)])
def test_other_wavelets_invert(wavelet, tol):
    rep, grid = make("2d", wavelet=wavelet, mode="periodization", levels=2)
    x = torch.randn(1, 2, *grid, dtype=torch.float64)
    assert ((rep.decode(rep.encode(x)) - x).abs().max() / x.abs().max()).item() < tol


def test_a_wavelet_without_perfect_reconstruction_warns():
    with pytest.warns(UserWarning, match="'dmey' is not a perfect-reconstruction filter bank"):
        Wavelet("dmey")


@pytest.mark.filterwarnings("ignore:Level value of 2 is too high")
@pytest.mark.parametrize("mode", ["periodization", "symmetric", "zero", "constant", "periodic", "reflect"])
@pytest.mark.parametrize("layout", ["1d", "2d", "3d"])
def test_subbands_are_pywavelets_coefficients(layout, mode):
    """The stacked subbands are PyWavelets' ``wavedecn`` coefficients, periodization included."""
    wavelet = "db2" if mode in ("periodic", "reflect") else "bior2.4"   # those modes need a short filter here
    rep, grid = make(layout, wavelet=wavelet, mode=mode, levels=2)
    x = torch.randn(2, 2, *grid, dtype=torch.float64)
    bands = rep.subbands(rep.encode(x))
    reference = pywt.wavedecn(x.numpy(), wavelet, mode=mode, level=2, axes=list(range(2, 2 + len(grid))))
    np.testing.assert_allclose(bands["A2"].numpy(), reference[0], rtol=0, atol=1e-12)
    for level, details in zip((2, 1), reference[1:]):
        for key, coefficients in details.items():
            np.testing.assert_allclose(bands[f"D{level}-{key}"].numpy(), coefficients, rtol=0, atol=1e-12)
    assert set(bands) == {"A2", *(f"D{j}-{k}" for j in (1, 2) for k in reference[1])}


def test_periodization_stacking_is_a_bijection():
    """Sizes divisible by 2^J: as many coefficients as samples, and encode(decode(z)) == z."""
    rep, grid = make("2d", even=True, wavelet="bior2.4", mode="periodization", levels=2)
    shape = rep.latent_shape((2, *grid))
    assert shape == (2 * 16, 4, 2)
    z = torch.randn(3, *shape, dtype=torch.float64)
    assert torch.allclose(rep.encode(rep.decode(z)), z, rtol=0, atol=1e-12)


@pytest.mark.parametrize("options, shape", [
    ({"levels": 1}, (2 * 4, 8, 6)),
    ({"levels": 1, "multiple": 4}, (2 * 4, 8, 8)),
    ({"levels": 2}, (2 * 16, 4, 3)),
    ({"levels": 1, "size": [10, 6]}, (2 * 4, 10, 6)),
    ({"levels": 1, "mode": "symmetric"}, (2 * 4, 12, 10)),            # (n + 10 - 1) // 2 with bior2.4
    ({"levels": 2, "mode": "symmetric"}, (2 * 16, 10, 9)),            # level 1 bands (12, 10) split to (6, 5)
    ({"levels": 1, "axes": ["x"]}, (2 * 2, 16, 6)),
    ({"levels": 2, "axes": [1]}, (2 * 4, 16, 3)),
])
def test_latent_shape(options, shape):
    rep = Wavelet(wavelet="bior2.4", dims=["t", "x"], normalize=False, **{"mode": "periodization", **options})
    assert rep.latent_shape((2, 16, 12)) == shape
    rep.fit((2, 16, 12))
    assert tuple(rep.encode(torch.randn(1, 2, 16, 12)).shape[1:]) == shape


def test_latent_shape_3d_and_1d():
    assert Wavelet("haar", levels=1, normalize=False).latent_shape((2, 8, 8, 8)) == (16, 4, 4, 4)
    assert Wavelet("haar", levels=2, normalize=False).latent_shape((1, 16)) == (4, 4)


@pytest.mark.parametrize("mode, levels", [("periodization", 2), ("symmetric", 1)])
def test_gradients_through_decode_match_finite_differences(mode, levels):
    grid = (7, 6)
    rep = Wavelet("bior2.4", mode, levels, dims=["t", "x"], multiple=2)
    x = torch.randn(4, 1, *grid, dtype=torch.float64)
    rep.fit((1, *grid), x)
    z = rep.encode(x[:1]).detach().requires_grad_(True)
    assert torch.autograd.gradcheck(rep.decode, (z,), eps=1e-6, atol=1e-7)
    field = x[:1].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(rep.encode, (field,), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("layout, levels", [("2d", 1), ("2d", 2), ("3d", 1), ("1d", 2)])
def test_normalised_subbands_have_zero_mean_unit_std(layout, levels):
    rep, grid = make(layout, even=True, wavelet="bior2.4", mode="periodization", levels=levels, normalize=True)
    g = torch.Generator().manual_seed(1)
    n = 32
    smooth = torch.randn(n, 2, *grid, dtype=torch.float64, generator=g).cumsum(-1)   # unequal subband scales
    data = smooth * torch.tensor([3.0, 0.2], dtype=torch.float64).reshape(1, 2, *[1] * len(grid)) + 5.0
    rep.fit((2, *grid), data)
    assert rep.fitted and len(rep.config()["mean"]) == 2 * len(rep.subband_names)
    z = rep.encode(data)
    for name, band in rep.subbands(z).items():
        flat = band.transpose(0, 1).reshape(2, -1)
        np.testing.assert_allclose(flat.mean(1).numpy(), 0.0, atol=1e-10, err_msg=name)
        np.testing.assert_allclose(flat.std(1, unbiased=False).numpy(), 1.0, atol=1e-10, err_msg=name)
    raw = unnormalised(rep)
    stds = [b.std().item() for b in raw.subbands(raw.encode(data)).values()]
    assert max(stds) / min(stds) > 3  # the statistics matter: the raw subbands differ in scale
    if levels == 1:  # one channel per subband: every latent channel is standardised
        np.testing.assert_allclose(z.mean((0, *range(2, z.ndim))).numpy(), 0.0, atol=1e-10)
        np.testing.assert_allclose(z.std((0, *range(2, z.ndim)), unbiased=False).numpy(), 1.0, atol=1e-10)
    assert torch.allclose(rep.decode(z), data, rtol=0, atol=1e-11)


def test_statistics_ignore_padding_and_keep_it_zero():
    rep, grid = make("2d", wavelet="bior2.4", mode="symmetric", levels=2, normalize=True, multiple=8)
    data = 2.0 + torch.randn(16, 1, *grid, dtype=torch.float64)
    rep.fit((1, *grid), data)
    z = rep.encode(data)
    real = unnormalised(rep).encode(torch.randn(1, 1, *grid, dtype=torch.float64))[0] != 0  # where coefficients sit
    assert (~real).any() and (z[:, ~real] == 0).all()
    for name, band in rep.subbands(z).items():
        assert abs(band.mean().item()) < 1e-10 and abs(band.std(unbiased=False).item() - 1) < 1e-10, name


def _tiny_model(representation):
    return {"network": {"type": "unet2d", "block_out_channels": [16, 16], "attention_levels": [False, False],
                        "layers_per_block": 1, "norm_num_groups": 8},
            "precond": {"type": "edm"}, "representation": representation}


def test_prior_with_wavelet_saves_loads_and_samples(tmp_path):
    torch.manual_seed(0)
    problem = pdes.get("burgers", 16)          # u: (t, x) = (16, 16)
    data = torch.randn(8, 1, 16, 16).cumsum(-1)
    representation = {"type": "wavelet", "wavelet": "bior2.4", "mode": "periodization", "levels": 1,
                      "axes": ["t", "x"]}
    prior = Prior.from_config(_tiny_model(representation), fields=("u",), grid_shape=(16, 16), problem=problem,
                              data=data, normalizer=Normalizer(("u",), (0.5,), (2.0,), 2))
    rep = prior.representation
    assert rep.kind == "wavelet" and rep.dims == ("t", "x") and prior.latent_shape == (4, 8, 8)
    assert 0.5 < prior.sigma_data < 1.5        # measured on the normalised subbands
    prior.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())["representation"]
    assert saved["mean"] == rep.config()["mean"] and saved["std"] == rep.config()["std"]
    loaded = Prior.from_pretrained(tmp_path)
    assert loaded.representation.config() == rep.config()
    z = torch.randn(2, *prior.latent_shape)
    assert torch.equal(loaded.representation.decode(z), rep.decode(z))
    assert torch.equal(loaded.decode_fields(z)["u"], prior.decode_fields(z)["u"])
    out = loaded.sample(2, solver="euler", steps=2, generator=torch.Generator().manual_seed(0))
    assert out["u"].shape == (2, 16, 16) and torch.isfinite(out["u"]).all()


class _FakeInfo:
    config = None

    @staticmethod
    def field(name):
        return pdes.Field(name, "output", (12, 8), ("t", "x"))


class _FakeDataset:
    """What Prior.from_dataset reads of a FieldDataset."""

    field_names = ("u", "f")
    field_shape = (12, 8)
    info = _FakeInfo()

    def __init__(self):
        self.normalizer = Normalizer(("u", "f"), (0.0, 0.0), (1.0, 1.0), 2)
        self.items = torch.randn(10, 2, 12, 8).cumsum(-2)

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_from_dataset_names_the_axes_and_fits_the_statistics():
    dataset = _FakeDataset()
    rep_config = {"type": "wavelet", "wavelet": "haar", "levels": 2, "axes": ["x", "t"]}
    prior = Prior.from_dataset(dataset, _tiny_model(rep_config))
    rep = prior.representation
    assert rep.dims == ("t", "x") and rep.grid == (12, 8) and prior.latent_shape == (2 * 16, 3, 2)
    z = prior.encode_fields(dataset.items)
    for band in rep.subbands(z).values():
        assert torch.allclose(band.mean((0, *range(2, band.ndim))), torch.zeros(2), atol=1e-5)
    assert torch.allclose(rep.decode(z), dataset.items, atol=1e-5)


@pytest.mark.parametrize("config, message", [
    ({"wavelet": "bior9.9"}, "unknown wavelet 'bior9.9'"),
    ({"wavelet": "morl"}, "unknown wavelet 'morl'"),
    ({"mode": "periodisation"}, "did you mean 'periodization'"),
    ({"levels": 0}, "levels must be an integer >= 1"),
    ({"axes": ["t", "y"], "dims": ["t", "x"], "grid": [8, 8]}, "wavelet axis 'y' is not an axis of the fields"),
    ({"axes": ["t", "t"], "dims": ["t", "x"], "grid": [8, 8]}, "name an axis twice"),
    ({"axes": [2], "grid": [8, 8]}, "out of range"),
    ({"axes": ["t"], "grid": [8, 8]}, "names of the fields' axes are unknown"),
    ({"mode": "reflect", "levels": 2, "grid": [10]}, "use fewer levels"),
    ({"size": [2, 2], "grid": [8, 8]}, "smaller than the latent grid"),
    ({"mean": [0.0] * 4}, "given together"),
])
def test_clear_errors(config, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        build("representation", {"type": "wavelet", "normalize": False, **config})


def test_fit_and_use_errors():
    rep = Wavelet(axes=["x"])
    with pytest.raises(ValueError, match="names of the fields' axes are unknown"):
        rep.latent_shape((1, 8, 8))
    with pytest.raises(ValueError, match="is not an axis of the fields"):
        rep.fit((1, 8, 8), dims=("t", "y"))
    with pytest.raises(ValueError, match="statistics of the training data: pass data"):
        rep.fit((1, 8, 8), dims=("t", "x"))
    rep.fit((1, 8, 8), torch.randn(4, 1, 8, 8), dims=("t", "x"))
    with pytest.raises(ValueError, match="built for grid"):
        rep.encode(torch.randn(1, 1, 8, 6))
    with pytest.raises(ValueError, match="statistics cover 1 field"):
        rep.latent_shape((2, 8, 8))
    with pytest.raises(ValueError, match="wavelet decode needs z of shape"):
        rep.decode(torch.randn(1, 2, 8, 8))
    with pytest.raises(ValueError, match="pass data"):
        Prior.from_config(_tiny_model({"type": "wavelet", "axes": [0, 1]}), fields=("u",), grid_shape=(8, 8))


def test_subband_without_variance_keeps_unit_scale():
    rep = Wavelet("haar", levels=1, normalize=True)
    data = torch.zeros(3, 1, 8) + torch.randn(3, 1, 1)   # constant signals: no haar detail
    with pytest.warns(UserWarning, match=r"without variance on the data keep scale 1: \['field 0 D1-d'\]"):
        rep.fit((1, 8), data)
    assert rep.config()["std"][1] == 1.0 and rep.config()["std"][0] != 1.0
    assert torch.allclose(rep.decode(rep.encode(data)), data, atol=1e-6)
