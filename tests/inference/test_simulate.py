"""Conditional simulation of trajectories: p(u | u0, f) with a joint prior (observations or WDNO's overwrite,
pixel or wavelet space) or a conditional prior (given fields as network inputs)."""

import pytest
import torch

from diffpde import pdes
from diffpde.data.normalize import Normalizer
from diffpde.inference import simulate
from diffpde.models.prior import Prior

NT, NX = 16, 16


def _model(representation):
    return {"network": {"type": "unet2d", "block_out_channels": [16, 16], "attention_levels": [False, False],
                        "layers_per_block": 1, "norm_num_groups": 8},
            "precond": {"type": "edm"}, "representation": representation}


WAVELET = {"type": "wavelet", "wavelet": "bior2.4", "mode": "periodization", "levels": 1, "axes": ["t", "x"]}


def _joint(representation, cond_fields=()):
    torch.manual_seed(0)
    problem = pdes.get("burgers_dirichlet", NX, nt=NT)
    fields = tuple(n for n in ("f", "u") if n not in cond_fields)
    data = torch.randn(8, len(fields), NT, NX).cumsum(-1) * 0.3
    names = ("f", "u")
    norm = Normalizer(names, (0.1, -0.2), (0.7, 1.3), 2)
    return Prior.from_config(_model(representation), fields=fields, grid_shape=(NT, NX), problem=problem,
                             data=data, normalizer=norm, cond_fields=cond_fields)


def _given(b=2):
    g = torch.Generator().manual_seed(1)
    return torch.randn(b, NX, generator=g, dtype=torch.float64), torch.randn(b, NT, NX, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("representation", [{"type": "identity"}, WAVELET])
def test_projection_writes_the_given_forcing_and_initial_state_exactly(representation):
    """WDNO's way in both spaces: the decoded sample holds f and u(t=0) as given (float32 round-off)."""
    prior = _joint(representation)
    u0, f = _given()
    post = simulate(prior, initial={"u": u0}, given={"f": f}, method="projection", solver="euler", steps=4,
                    n_samples=2)
    assert post.samples["u"].shape == (2, 2, NT, NX) and post.samples["f"].shape == (2, 2, NT, NX)
    assert torch.allclose(post.samples["f"], f[:, None].expand_as(post.samples["f"]), atol=2e-5)
    assert torch.allclose(post.samples["u"][:, :, 0], u0[:, None].expand(2, 2, NX), atol=2e-5)
    assert not torch.allclose(post.samples["u"][:, 0, 1:], post.samples["u"][:, 1, 1:])   # two different draws


def test_covariance_guidance_conditions_a_wavelet_joint_prior():
    prior = _joint(WAVELET)
    u0, f = _given(1)
    post = simulate(prior, initial={"u": u0}, given={"f": f}, solver="euler", steps=3, noise_std=1e-2)
    assert post.diagnostics["method"] == "covariance" and torch.isfinite(post.samples["u"]).all()


def test_a_conditional_prior_takes_the_given_fields_as_network_inputs():
    prior = _joint({"type": "identity"}, cond_fields=("f",))
    u0, f = _given()
    post = simulate(prior, given={"f": f}, solver="dpmpp_2m", steps=3, n_samples=3)
    assert post.diagnostics["method"] == "conditional" and post.diagnostics["nfe"] == 3
    assert post.samples["u"].shape == (2, 3, NT, NX) and "f" not in post.samples
    # the same instance twice gives the same conditional draws for the same seed: the binding is per instance
    again = simulate(prior, given={"f": f[:1]}, solver="dpmpp_2m", steps=3, n_samples=3)
    assert torch.allclose(again.samples["u"][0], post.samples["u"][0], atol=1e-5)
    # u0 observed on top of the conditional prior goes through reconstruct
    both = simulate(prior, given={"f": f}, initial={"u": u0}, method="projection", solver="euler", steps=3)
    assert torch.allclose(both.samples["u"][:, 0, 0], u0.to(both.samples["u"]), atol=2e-5)


def test_clear_errors():
    prior = _joint({"type": "identity"})
    u0, f = _given()
    with pytest.raises(ValueError, match="initial state or given"):
        simulate(prior)
    with pytest.raises(KeyError, match="neither generated nor a conditioning"):
        simulate(prior, given={"g": f})
    conditional = _joint({"type": "identity"}, cond_fields=("f",))
    with pytest.raises(ValueError, match="conditioning field"):
        simulate(conditional, initial={"u": u0}, method="projection")


def test_a_wavelet_conditional_prior_encodes_its_conditions_on_the_latent_grid(tmp_path):
    """Given fields of a wavelet prior go through their own wavelet (own statistics) to the latent grid;
    an initial state given as a conditioning field is repeated along time."""
    torch.manual_seed(0)
    problem = pdes.get("burgers_dirichlet", NX, nt=NT)
    data = torch.randn(8, 1, NT, NX).cumsum(-1) * 0.3
    cond_data = torch.randn(8, 2, NT, NX).cumsum(-2) * 3.0 + 1.0
    norm = Normalizer(("f", "u", "u0"), (0.1, -0.2, 0.0), (0.7, 1.3, 1.0), 2)
    prior = Prior.from_config(_model(WAVELET), fields=("u",), grid_shape=(NT, NX), problem=problem, data=data,
                              normalizer=norm, cond_fields=("f", "u0"), cond_data=cond_data)
    assert prior.latent_shape == (4, NT // 2, NX // 2) and prior.cond_latent_channels == 8
    assert prior.net.config()["cond_channels"] == 8
    latent = prior.cond_latent(cond_data)
    assert latent.shape == (8, 8, NT // 2, NX // 2)
    assert torch.allclose(latent.mean((0, 2, 3)), torch.zeros(8), atol=1e-4)      # its own statistics
    prior.save_pretrained(tmp_path)
    loaded = Prior.from_pretrained(tmp_path)
    assert loaded.cond_representation.config() == prior.cond_representation.config()
    u0, f = _given()
    a = simulate(prior, initial={"u0": u0}, given={"f": f}, solver="euler", steps=2, seed=3)
    b = simulate(loaded, initial={"u0": u0}, given={"f": f}, solver="euler", steps=2, seed=3)
    assert a.diagnostics["method"] == "conditional" and torch.equal(a.samples["u"], b.samples["u"])
    # the repeated initial state is what the network sees: the same as passing it already repeated
    c = simulate(prior, given={"f": f, "u0": u0[:, None].expand(-1, NT, -1)}, solver="euler", steps=2, seed=3)
    assert torch.equal(a.samples["u"], c.samples["u"])
