"""Prior: frames and units, sampling, and save/load (bitwise, no unpickling, clear errors)."""

import json
import pickle

import numpy as np
import pytest
import torch

import diffpde
from diffpde import pdes
from diffpde.data.normalize import Normalizer
from diffpde.models.prior import CONFIG_NAME, WEIGHTS_NAME, Prior

GRID = (8, 8)
NORMALIZER = Normalizer(("a", "u", "f"), (2.0, -1.0, 0.5), (3.0, 0.25, 2.0), 2)
MODEL = {"network": {"type": "unet2d", "block_out_channels": [16, 32], "attention_levels": [False, True]},
         "precond": {"type": "edm"}}


@pdes.register
class _ToyPDE(pdes.PDE):
    """A stand-in PDE family for the problem round trip (``-u = a`` pointwise)."""

    name = "_prior_test_toy"
    defaults = {"k": 1.0}

    @property
    def fields(self):
        n = (self.resolution, self.resolution)
        return (pdes.Field("a", "input", n, ("y", "x")), pdes.Field("f", "input", n, ("y", "x")),
                pdes.Field("u", "output", n, ("y", "x")))

    @property
    def grid(self):
        c = np.linspace(0, 1, self.resolution)
        return pdes.Grid("vertex", {"y": c, "x": c})

    def sample_inputs(self, n, seed):
        rng = np.random.default_rng(seed)
        return {"a": rng.normal(size=(n, *GRID)), "f": rng.normal(size=(n, *GRID))}

    def generate(self, seed):
        inputs = {k: v[0] for k, v in self.sample_inputs(1, seed).items()}
        return {**inputs, "u": -inputs["a"]}

    def residual(self, fields):
        return fields["u"] + fields["a"]

    def describe(self, fields=None):
        return "toy"


def make_prior(seed=0, block_out_channels=(16, 32), **kwargs):
    torch.manual_seed(seed)
    model = {**MODEL, "network": {**MODEL["network"], "block_out_channels": list(block_out_channels)}}
    prior = Prior.from_config(model, fields=("a", "u"), grid_shape=GRID, cond_fields=("f",), param_names=("k",),
                              normalizer=NORMALIZER, problem=pdes.get("_prior_test_toy", 8, k=2.0),
                              sigma_data=0.5, **kwargs)
    with torch.no_grad():  # make every weight matter (the parameter MLP starts at zero)
        for p in prior.parameters():
            p.add_(0.05 * torch.randn(p.shape))
    return prior.eval()


def physical(b=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {n: m + s * torch.randn(b, *GRID, generator=g) for n, m, s in zip(NORMALIZER.fields, NORMALIZER.mean, NORMALIZER.std)}


def test_from_config_fills_in_the_network():
    prior = make_prior()
    cfg = prior.net.config()
    assert (cfg["in_channels"], cfg["out_channels"], cfg["cond_channels"], cfg["num_params"]) == (2, 2, 1, 1)
    assert prior.precond.sigma_data == 0.5 and prior.sigma_max == 80.0
    assert prior.latent_shape == (2, *GRID)
    assert isinstance(diffpde.Prior, type) and diffpde.Prior is Prior
    with pytest.raises(ValueError, match="in_channels"):
        Prior.from_config({**MODEL, "network": {**MODEL["network"], "in_channels": 5}}, fields=("a", "u"), grid_shape=GRID)
    # sigma_data measured on the (normalised) data when not given
    data = 0.3 * torch.randn(10, 2, *GRID)
    measured = Prior.from_config(MODEL, fields=("a", "u"), grid_shape=GRID, data=data)
    assert measured.precond.sigma_data == pytest.approx(data.double().std().item(), rel=1e-9)


def test_problem_and_frames():
    prior = make_prior()
    assert prior.problem.config() == {"name": "_prior_test_toy", "resolution": 8, "parameters": {"k": 2.0}}
    f = physical()
    z = prior.encode_fields(f)
    assert z.shape == (3, 2, *GRID)
    torch.testing.assert_close(z[:, 0], (f["a"] - 2.0) / 3.0)
    torch.testing.assert_close(z[:, 1], (f["u"] + 1.0) / 0.25)
    back = prior.decode_fields(z)
    assert set(back) == {"a", "u"}
    for n in back:
        torch.testing.assert_close(back[n], f[n], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(prior.encode_cond({"f": f["f"]})[:, 0], (f["f"] - 0.5) / 2.0)
    with pytest.raises(KeyError, match="'u'"):
        prior.encode_fields({"a": f["a"]})
    with pytest.raises(ValueError, match="shape"):
        prior.encode_fields({"a": f["a"], "u": torch.zeros(3, 4, 4)})


def test_denoiser_binds_and_broadcasts_conditioning():
    prior = make_prior()
    f = physical(b=1)
    z = torch.randn(4, 2, *GRID)
    sigma = torch.tensor([0.1, 1.0, 5.0, 20.0])
    out = prior.denoiser(cond={"f": f["f"]}, params={"k": 2.0})(z, sigma)
    cond = ((f["f"] - 0.5) / 2.0).unsqueeze(1).expand(4, 1, *GRID)
    ref = prior.precond(z, sigma, cond=cond, params=torch.full((4, 1), 2.0))
    assert torch.equal(out, ref)
    other = prior.denoiser(cond={"f": f["f"] + 1.0}, params={"k": 2.0})(z, sigma)
    assert not torch.allclose(out, other)
    with pytest.raises(ValueError, match="conditioning"):
        prior.denoiser(params={"k": 2.0})
    with pytest.raises(ValueError, match="batch"):
        prior.denoiser(cond={"f": physical(b=3)["f"]}, params={"k": 2.0})(z, sigma)


def test_sample_of_a_gaussian_prior_is_the_exact_ode_map_in_physical_units():
    """A zero network makes EDM's D = c_skip x the exact denoiser of N(0, sd^2 I) data, whose
    probability-flow ODE maps the initial z_T = sigma_max * noise to z_T * sd / sqrt(sigma_max^2 + sd^2);
    in physical units a sample is then mean + std * z_0 per field."""
    prior = make_prior()
    with torch.no_grad():
        prior.net.unet.conv_out.weight.zero_()
        prior.net.unet.conv_out.bias.zero_()
    cond, params = {"f": torch.zeros(*GRID)}, {"k": 1.0}
    out = prior.sample(16, solver="dpmpp_2m", steps=40, generator=torch.Generator().manual_seed(0), cond=cond, params=params)
    assert set(out) == {"a", "u"} and out["a"].shape == (16, *GRID)
    noise = torch.randn((16, 2, *GRID), generator=torch.Generator().manual_seed(0))
    z0 = noise * 80.0 * 0.5 / (80.0**2 + 0.5**2) ** 0.5
    for i, (name, mean, std) in enumerate(zip(("a", "u"), (2.0, -1.0), (3.0, 0.25))):
        truth = mean + std * z0[:, i]
        assert (out[name] - truth).abs().max() < 0.02 * std * z0.abs().max()   # solver error of 40 DPM-Solver++(2M) steps
        assert out[name].std().item() == pytest.approx(0.5 * std, rel=0.1)
    again = prior.sample(16, solver="dpmpp_2m", steps=40, generator=torch.Generator().manual_seed(0), cond=cond, params=params)
    assert torch.equal(again["a"], out["a"])


def test_save_load_round_trip_is_bitwise(tmp_path, monkeypatch):
    prior = make_prior()
    prior.save_pretrained(tmp_path / "p")
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]

    def forbidden(*args, **kwargs):
        raise AssertionError("unpickling during from_pretrained")

    with monkeypatch.context() as m:
        m.setattr(pickle, "load", forbidden)
        m.setattr(pickle, "loads", forbidden)
        m.setattr(pickle, "Unpickler", forbidden)
        m.setattr(torch, "load", forbidden)
        loaded = Prior.from_pretrained(tmp_path / "p")
    assert loaded.config() == prior.config()
    assert loaded.problem.config() == prior.problem.config()
    z, sigma = torch.randn(3, 2, *GRID), torch.tensor([0.01, 0.7, 40.0])
    cond, params = {"f": physical(b=1)["f"]}, {"k": 1.5}
    assert torch.equal(loaded.denoiser(cond, params)(z, sigma), prior.denoiser(cond, params)(z, sigma))
    a = prior.sample(2, steps=4, generator=torch.Generator().manual_seed(3), cond=cond, params=params)
    b = loaded.sample(2, steps=4, generator=torch.Generator().manual_seed(3), cond=cond, params=params)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # saving again over an existing prior replaces it and leaves no temporary files
    make_prior(seed=5).save_pretrained(tmp_path / "p")
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    assert not torch.equal(Prior.from_pretrained(tmp_path / "p").denoiser(cond, params)(z, sigma),
                           prior.denoiser(cond, params)(z, sigma))


def test_failed_save_leaves_the_old_prior_intact(tmp_path, monkeypatch):
    make_prior().save_pretrained(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("diffpde.models.persistence.save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        make_prior(seed=1).save_pretrained(tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_clear_errors_for_bad_checkpoints(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        Prior.from_pretrained(tmp_path / "nowhere")
    prior = make_prior()
    prior.save_pretrained(tmp_path / "ok")

    d = tmp_path / "no_weights"
    prior.save_pretrained(d)
    (d / WEIGHTS_NAME).unlink()
    with pytest.raises(FileNotFoundError, match=WEIGHTS_NAME):
        Prior.from_pretrained(d)

    d = tmp_path / "no_config"
    prior.save_pretrained(d)
    (d / CONFIG_NAME).unlink()
    with pytest.raises(FileNotFoundError, match=CONFIG_NAME):
        Prior.from_pretrained(d)

    d = tmp_path / "bad_weights"
    prior.save_pretrained(d)
    data = (d / WEIGHTS_NAME).read_bytes()
    (d / WEIGHTS_NAME).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt weights"):
        Prior.from_pretrained(d)
    (d / WEIGHTS_NAME).write_bytes(b"\x80\x04garbage, not safetensors")
    with pytest.raises(ValueError, match="corrupt weights"):
        Prior.from_pretrained(d)

    d = tmp_path / "bad_config"
    prior.save_pretrained(d)
    (d / CONFIG_NAME).write_text('{"format": "diffpde.prior", ')
    with pytest.raises(ValueError, match="corrupt config.json"):
        Prior.from_pretrained(d)
    (d / CONFIG_NAME).write_text(json.dumps({"format": "diffpde.prior", "format_version": 1, "fields": ["a"]}))
    with pytest.raises(ValueError, match="network"):
        Prior.from_pretrained(d)

    # weights of another architecture: the error names a parameter whose shape differs
    d = tmp_path / "other_shape"
    prior.save_pretrained(d)
    make_prior(block_out_channels=(16, 24)).save_pretrained(tmp_path / "wider")
    (d / WEIGHTS_NAME).write_bytes((tmp_path / "wider" / WEIGHTS_NAME).read_bytes())
    with pytest.raises(ValueError, match=r"parameter 'precond\.net\.unet\.[\w.]+' has shape \(24") as err:
        Prior.from_pretrained(d)
    name = str(err.value).split("'")[1]
    assert name in prior.state_dict()


def test_from_dataset_takes_normaliser_problem_and_sigma_data(tmp_path):
    from diffpde.data import FieldDataset, generate_dataset

    path = generate_dataset(pdes.get("_prior_test_toy", 8, k=3.0), 6, tmp_path / "toy.h5", progress=False)
    ds = FieldDataset(path, fields=["a", "u", "f"], in_memory=True)
    prior = Prior.from_dataset(ds, MODEL, cond_fields=("f",))
    assert prior.fields == ("a", "u") and prior.cond_fields == ("f",) and prior.grid_shape == GRID
    assert prior.problem.config() == {"name": "_prior_test_toy", "resolution": 8, "parameters": {"k": 3.0}}
    x = torch.stack([ds[i] for i in range(len(ds))])
    assert prior.precond.sigma_data == pytest.approx(x[:, :2].double().std().item(), rel=1e-6)
    # the prior's frames agree with the dataset's normalisation
    raw = ds.denormalize(x)
    z = prior.encode_fields({"a": raw[:, 0], "u": raw[:, 1]})
    torch.testing.assert_close(z, x[:, :2], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(prior.encode_cond({"f": raw[:, 2]}), x[:, 2:], rtol=1e-5, atol=1e-5)
