"""DiT: N-D patches, positions on any grid, adaLN-Zero at initialisation, masked context, configs, priors, training."""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from diffpde.models import DiT, build
from diffpde.models.dit import pad_to_patches, patchify, sincos_position_embedding, unpatchify

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SMALL = dict(hidden_size=32, depth=2, num_heads=4)


def randomize(net: nn.Module, seed: int = 0, scale: float = 0.1) -> nn.Module:
    """Give every parameter (the zero-initialised ones too) random values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=g))
    return net.eval()


def count(**config) -> int:
    """Parameters of a DiT built on the meta device (no memory is allocated)."""
    with torch.device("meta"):
        net = build("network", {"type": "dit", **config})
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("grid, patch", [((33,), (4,)), ((16,), (1,)), ((15, 13), (2, 3)), ((16, 16), (4, 4)),
                                         ((5, 9, 7), (1, 2, 2)), ((4, 8, 8), (2, 4, 2))])
def test_shapes_on_1d_2d_3d_grids_with_a_patch_per_axis(grid, patch):
    net = randomize(DiT(2, 3, cond_channels=1, num_params=2, patch_size=patch, context_dim=6, **SMALL))
    assert net.spatial_dims == len(grid)
    x, cond, params = torch.randn(2, 2, *grid), torch.randn(2, 1, *grid), torch.randn(2, 2)
    with torch.no_grad():
        out = net(x, torch.tensor([0.1, -0.5]), cond=cond, params=params, context=torch.randn(2, 4, 6))
        assert out.shape == (2, 3, *grid) and torch.isfinite(out).all()
        assert not torch.allclose(out[0], out[1])
        assert net(x, torch.tensor([0.1, -0.5]), cond=cond, params=params).shape == (2, 3, *grid)   # no context
    with pytest.raises(ValueError, match="x must have shape"):
        net(torch.randn(2, 2, *grid, 4), torch.zeros(2), cond=cond, params=params)


def test_patchify_is_a_strided_convolution_and_unpatchify_inverts_it():
    """The patch embedding equals Conv{1,2,3}d(kernel = stride = patch) with the weight reshaped."""
    torch.manual_seed(0)
    for grid, patch in [((12,), (3,)), ((6, 8), (2, 4)), ((4, 6, 8), (1, 3, 2))]:
        x = torch.randn(2, 3, *grid)
        tokens = patchify(x, patch)
        counts = [n // p for n, p in zip(grid, patch)]
        assert tokens.shape == (2, math.prod(counts), 3 * math.prod(patch))
        assert torch.equal(unpatchify(tokens, counts, patch, 3), x)
        weight = torch.randn(5, 3, *patch)
        conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[len(grid)](x, weight, stride=patch)   # [2, 5, *counts]
        torch.testing.assert_close(tokens @ weight.reshape(5, -1).T, conv.flatten(2).transpose(1, 2))


def test_pad_to_patches_pads_each_axis_and_crops_back():
    x = torch.randn(1, 2, 7, 10, 3)
    for mode in ("circular", "reflect", "zeros"):
        padded, crop = pad_to_patches(x, (4, 5, 2), mode)
        assert padded.shape[2:] == (8, 10, 4)
        assert torch.equal(padded[crop], x)
    padded, _ = pad_to_patches(x, (4, 1, 1), "circular")   # 1 row after the end: the first row again
    assert torch.equal(padded[:, :, 7], x[:, :, 0])
    with pytest.raises(ValueError, match="too small to pad circularly"):
        pad_to_patches(torch.randn(1, 1, 2), (8,), "circular")


def test_sincos_positions_are_per_axis_embeddings_of_the_patch_index():
    emb = sincos_position_embedding((3, 5), 12)            # 6 channels per axis
    assert emb.shape == (15, 12)
    row = sincos_position_embedding((3,), 6)
    col = sincos_position_embedding((5,), 6)
    torch.testing.assert_close(emb.reshape(3, 5, 12), torch.cat([row[:, None].expand(3, 5, 6),
                                                                 col[None].expand(3, 5, 6)], -1))
    torch.testing.assert_close(row[2], torch.tensor([math.sin(2), math.sin(2 * 10000 ** (-1 / 3)),
                                                     math.sin(2 * 10000 ** (-2 / 3)), math.cos(2),
                                                     math.cos(2 * 10000 ** (-1 / 3)), math.cos(2 * 10000 ** (-2 / 3))]))
    three = sincos_position_embedding((2, 3, 4), 20)        # 20 = 8 + 6 + 6
    assert three.shape == (24, 20) and torch.unique(three, dim=0).shape[0] == 24
    torch.testing.assert_close(sincos_position_embedding((6, 6), 16).reshape(6, 6, 16)[:3, :4],
                               sincos_position_embedding((3, 4), 16).reshape(3, 4, 16))   # the same on any grid
    with pytest.raises(ValueError, match="even width"):
        sincos_position_embedding((4, 4, 4), 4)


def test_fresh_network_is_adaln_zero():
    """Every block is the identity and the output is zero at initialisation, whatever the inputs."""
    torch.manual_seed(0)
    net = DiT(2, 2, cond_channels=1, num_params=1, patch_size=(2, 2), context_dim=8, **SMALL)
    x, cond = torch.randn(3, 2, 8, 6), torch.randn(3, 1, 8, 6)
    out = net(x, torch.randn(3), cond=cond, params=torch.randn(3, 1), context=torch.randn(3, 5, 8))
    assert torch.equal(out, torch.zeros_like(out))
    tokens, c, context = torch.randn(3, 12, 32), torch.randn(3, 32), torch.randn(3, 5, 8)
    for block in net.blocks:
        assert block.cross is not None
        assert torch.equal(block(tokens, c, context), tokens)
    (out - 1).square().sum().backward()
    assert net.linear_out.weight.grad.abs().sum() > 0   # the zero output layer learns first
    with torch.no_grad():
        randomize(net)
        assert not torch.equal(net.blocks[0](tokens, c, context), tokens)
        assert net(x, torch.randn(3), cond=cond, params=torch.randn(3, 1)).abs().max() > 1e-3


def test_masked_context_tokens_change_nothing():
    torch.manual_seed(0)
    net = randomize(DiT(1, 1, patch_size=(2, 2), context_dim=6, **SMALL), scale=0.2)
    x, c_noise = torch.randn(3, 1, 8, 8), torch.tensor([0.3, -0.2, 1.0])
    context = torch.randn(3, 5, 6)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 1, 1, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
    with torch.no_grad():
        out = net(x, c_noise, context=context, context_mask=mask)
        changed = torch.where(mask[..., None], context, 1e4 * torch.randn(3, 5, 6))   # only padding changes
        torch.testing.assert_close(net(x, c_noise, context=changed, context_mask=mask.int()), out, rtol=0, atol=1e-5)
        # the valid tokens alone (no padding at all) give the same output
        first = net(x[:1], c_noise[:1], context=context[:1, :3])
        torch.testing.assert_close(first, out[:1], rtol=0, atol=1e-5)
        # a sample without a valid token is the unconditional network
        torch.testing.assert_close(net(x[2:], c_noise[2:]), out[2:], rtol=0, atol=1e-5)
        assert torch.equal(net(x, c_noise, context=context[:, :0], context_mask=mask[:, :0]), net(x, c_noise))
        # a valid token does matter, through the pooled vector and the cross-attention
        moved = context.clone()
        moved[0, 1] += 1.0
        assert (net(x, c_noise, context=moved, context_mask=mask) - out)[0].abs().max() > 1e-3
        assert not torch.allclose(net(x, c_noise, context=context), out)   # padding made valid
    with pytest.raises(ValueError, match="context must have shape"):
        net(x, c_noise, context=torch.randn(3, 5, 4))
    with pytest.raises(ValueError, match="context_mask must have shape"):
        net(x, c_noise, context=context, context_mask=mask[:, :4])
    with pytest.raises(ValueError, match="context_mask without context"):
        net(x, c_noise, context_mask=mask)
    with pytest.raises(ValueError, match="context_dim=0"):
        DiT(1, 1, **SMALL)(x, c_noise, context=context)


def test_a_network_built_on_16x16_runs_on_other_grids():
    torch.manual_seed(1)
    net = randomize(DiT(2, 2, patch_size=(4, 4), **SMALL))
    with torch.no_grad():
        for grid in [(16, 16), (32, 32), (24, 20), (13, 17)]:
            out = net(torch.randn(2, 2, *grid), torch.zeros(2))
            assert out.shape == (2, 2, *grid) and torch.isfinite(out).all()


def test_conditioning_inputs_matter_and_are_checked():
    net = randomize(DiT(1, 1, cond_channels=1, num_params=2, patch_size=(2, 2), **SMALL))
    x, cond, params, c = torch.randn(1, 1, 8, 8), torch.randn(1, 1, 8, 8), torch.randn(1, 2), torch.tensor([0.2])
    with torch.no_grad():
        base = net(x, c, cond=cond, params=params)
        assert not torch.allclose(base, net(x, c, cond=cond + 1, params=params))
        assert not torch.allclose(base, net(x, c, cond=cond, params=params + 1))
        assert not torch.allclose(base, net(x, c + 0.5, cond=cond, params=params))
    with pytest.raises(ValueError, match="cond"):
        net(x, c, params=params)
    with pytest.raises(ValueError, match="params"):
        net(x, c, cond=cond, params=torch.randn(1, 3))
    for bad, message in [({"patch_size": [2, 2, 2, 2]}, "patch_size"), ({"patch_size": [0, 2]}, "patch_size"),
                         ({"patch_size": 2}, "patch_size"), ({"hidden_size": 30, "num_heads": 4}, "num_heads"),
                         ({"depth": 0}, "depth")]:
        with pytest.raises(ValueError, match=message):
            DiT(1, 1, **{**SMALL, **bad})


def test_config_round_trip_through_the_registry():
    net = randomize(DiT(2, 2, cond_channels=1, num_params=3, patch_size=(1, 2, 2), context_dim=4, periodic=True,
                        mlp_ratio=2.0, **SMALL))
    config = net.config()
    assert config["type"] == "dit" and config["patch_size"] == [1, 2, 2]
    again = build("network", json.loads(json.dumps(config)))
    assert type(again) is DiT and again.config() == config
    again.load_state_dict(net.state_dict())
    x, cond, params = torch.randn(2, 2, 3, 6, 4), torch.randn(2, 1, 3, 6, 4), torch.randn(2, 3)
    context, mask = torch.randn(2, 3, 4), torch.tensor([[1, 1, 0], [1, 0, 0]])
    with torch.no_grad():
        assert torch.equal(net(x, torch.zeros(2), cond=cond, params=params, context=context, context_mask=mask),
                           again.eval()(x, torch.zeros(2), cond=cond, params=params, context=context, context_mask=mask))
    with pytest.raises(ValueError, match="did you mean 'depth'"):
        build("network", {**config, "dpeth": 3})
    with pytest.raises(ValueError, match="periodic must be true or false"):
        build("network", {**config, "periodic": "yes"})


def test_prior_with_a_dit_saves_loads_and_samples_the_exact_gaussian_map(tmp_path):
    """A fresh DiT outputs zero, so EDM's D = c_skip x is the exact denoiser of N(0, sd^2) data and the
    probability-flow ODE maps z_T = sigma_max * noise to z_T * sd / sqrt(sigma_max^2 + sd^2)."""
    from diffpde.models import Prior

    model = {"network": {"type": "dit", "patch_size": [2, 2], **SMALL}, "precond": {"type": "edm"}}
    prior = Prior.from_config(model, fields=("a", "u"), grid_shape=(6, 6), cond_fields=("f",), param_names=("k",),
                              sigma_data=0.5)
    cfg = prior.net.config()
    assert (cfg["in_channels"], cfg["cond_channels"], cfg["num_params"]) == (2, 1, 1)
    cond, params = {"f": torch.zeros(6, 6)}, {"k": 1.0}
    out = prior.sample(8, solver="dpmpp_2m", steps=40, generator=torch.Generator().manual_seed(0), cond=cond,
                       params=params)
    z0 = torch.randn((8, 2, 6, 6), generator=torch.Generator().manual_seed(0)) * 80.0 * 0.5 / (80.0**2 + 0.5**2) ** 0.5
    assert (out["a"] - z0[:, 0]).abs().max() < 0.02 * z0.abs().max()
    randomize(prior.net, scale=0.05)
    prior.save_pretrained(tmp_path / "dit_prior")
    assert {p.name for p in (tmp_path / "dit_prior").iterdir()} >= {"config.json", "model.safetensors"}
    loaded = Prior.from_pretrained(tmp_path / "dit_prior")
    assert type(loaded.net) is DiT and loaded.net.config() == prior.net.config()
    z, sigma = torch.randn(3, 2, 6, 6), torch.tensor([0.1, 1.0, 10.0])
    with torch.no_grad():
        assert torch.equal(loaded.denoiser(cond=cond, params=params)(z, sigma),
                           prior.denoiser(cond=cond, params=params)(z, sigma))
    again = loaded.sample(2, solver="euler", steps=4, generator=torch.Generator().manual_seed(1), cond=cond, params=params)
    assert again["u"].shape == (2, 6, 6) and torch.isfinite(again["u"]).all()
    with pytest.raises(ValueError, match="spatial_dims=2 but grid_shape"):
        Prior.from_config(model, fields=("a",), grid_shape=(16,), sigma_data=0.5)


def test_shipped_dit_configs_and_sizes():
    """configs/darcy_dit.yaml: the tiny CPU size and Text2PDE's DiT-S and DiT-B, counted on the meta device."""
    from diffpde.training.config import load_config

    sizes = {}
    for variant in (None, "dit_b", "tiny"):
        cfg = load_config(CONFIGS / "darcy_dit.yaml", variant=variant)
        assert cfg.data.problem == "darcy" and cfg.model.network["type"] == "dit"
        sizes[variant] = count(**{k: v for k, v in cfg.model.network.items() if k != "type"}, in_channels=2,
                               out_channels=2)
    assert 1e6 < sizes["tiny"] < 3e6
    assert sizes[None] == pytest.approx(114.36e6, rel=1e-3) and sizes["dit_b"] == pytest.approx(532.34e6, rel=1e-3)
    # Text2PDE's setting (16 latent channels on 6 x 16 x 16, patch 1 x 2 x 2, 768-wide RoBERTa tokens)
    text2pde = dict(in_channels=16, out_channels=16, patch_size=[1, 2, 2], context_dim=768)
    assert count(**text2pde, hidden_size=512, depth=24, num_heads=16) == pytest.approx(146.3e6, rel=0.01)
    assert count(**text2pde, hidden_size=1024, depth=28, num_heads=16) == pytest.approx(636.0e6, rel=0.01)


def test_a_few_training_steps_reduce_the_edm_loss(tmp_path):
    """The trainer (Prior.from_dataset, EDM loss, EMA, export) with a small DiT on 16 Darcy samples of 16 x 16."""
    from accelerate.state import AcceleratorState, GradientState

    from diffpde.data import generate_dataset
    from diffpde.models import EDMPrecond, Prior
    from diffpde.training.config import load_config
    from diffpde.training.trainer import Trainer, denoising_loss

    data = generate_dataset("darcy", 16, tmp_path / "darcy16.h5", resolution=16, seed=0, progress=False)
    config = load_config(base={
        "data": {"path": str(data), "problem": "darcy", "fields": ["a", "u"]},
        "model": {"network": {"type": "dit", "patch_size": [2, 2], "hidden_size": 48, "depth": 2, "num_heads": 4}},
        "optim": {"lr": 3e-3, "warmup_steps": 2},
        "train": {"batch_size": 8, "max_steps": 60, "checkpoint_every": 0, "log_every": 10,
                  "output_dir": str(tmp_path / "run"), "log_with": "none", "ema_half_life": 3, "progress": False},
        "eval": {"n_samples": 2, "steps": 2},
    })
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trainer = Trainer(config)
        initial = {k: v.clone() for k, v in trainer.unwrapped.state_dict().items()}
        trainer.fit()
    finally:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
        torch.set_num_threads(threads)

    ref = trainer.unwrapped
    x0 = torch.stack([trainer.dataset[i] for i in range(len(trainer.dataset))])

    @torch.no_grad()
    def fixed_loss(state):
        model = EDMPrecond(DiT.from_config(ref.net.config()), sigma_data=ref.sigma_data)
        model.load_state_dict(state)
        g = torch.Generator().manual_seed(0)
        losses = [denoising_loss(trainer.loss, model, model, x0, torch.full((len(x0),), s),
                                 torch.randn(x0.shape, generator=g), None).mean() for s in (0.05, 0.2, 0.5, 1.0, 2.0)]
        return float(sum(losses)) / len(losses)

    before, after = fixed_loss(initial), fixed_loss(ref.state_dict())
    assert after < 0.75 * before, (before, after)   # 1.01 -> 0.62 when written
    prior = Prior.from_pretrained(trainer.output_dir / "prior")
    assert type(prior.net) is DiT and prior.net.config()["patch_size"] == [2, 2]
