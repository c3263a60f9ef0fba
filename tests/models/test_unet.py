"""UNet2D (diffusers) and UNet1D: shapes on any grid, conditioning, periodic equivariance, configs."""

import json

import pytest
import torch
from torch import nn

from diffpde.models import UNet1D, UNet2D, build
from diffpde.models.unet import pad_to_multiple

TINY2D = dict(block_out_channels=(16, 32), attention_levels=(False, True))
TINY1D = dict(block_out_channels=(16, 32, 32))


def randomize(net: nn.Module, seed: int = 0) -> nn.Module:
    """Give every parameter (including zero-initialised ones) random values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return net.eval()


def test_unet2d_shapes_on_any_grid():
    net = UNet2D(2, 3, cond_channels=1, num_params=2, **TINY2D)
    for hw in [(16, 16), (15, 13), (9, 20), (7, 7)]:
        x, cond, params = torch.randn(2, 2, *hw), torch.randn(2, 1, *hw), torch.randn(2, 2)
        out = net(x, torch.tensor([0.1, -0.5]), cond=cond, params=params)
        assert out.shape == (2, 3, *hw)
        assert torch.isfinite(out).all()


def test_pad_to_multiple_crops_back_exactly():
    x = torch.randn(1, 2, 7, 10)
    for mode in ("circular", "reflect", "zeros"):
        padded, crop = pad_to_multiple(x, 4, mode)
        assert padded.shape[2:] == (8, 12)
        assert torch.equal(padded[crop], x)
    padded, _ = pad_to_multiple(x, 4, "circular")   # rows: 0 before, 1 after; columns: 1 and 1
    assert torch.equal(padded[..., 7, 1:11], x[..., 0, :])  # wraps around
    assert torch.equal(padded[..., :7, 0], x[..., :, -1])


def test_unet2d_periodic_is_equivariant_under_circular_shifts():
    """Shifts by multiples of the deepest stride (2 here) commute with the periodic network."""
    torch.manual_seed(0)
    x, cond = torch.randn(2, 2, 16, 12), torch.randn(2, 1, 16, 12)
    c_noise, params = torch.tensor([0.3, -1.0]), torch.randn(2, 1)

    def shifted_gaps(periodic):
        net = randomize(UNet2D(2, 2, cond_channels=1, num_params=1, periodic=periodic, **TINY2D))
        gaps = []
        with torch.no_grad():
            out = net(x, c_noise, cond=cond, params=params)
            assert out.abs().max() > 1e-2
            for shift in [(2, 0), (0, 4), (6, -10)]:
                rolled = net(x.roll(shift, (2, 3)), c_noise, cond=cond.roll(shift, (2, 3)), params=params)
                gaps.append(((rolled - out.roll(shift, (2, 3))).abs().max() / out.abs().max()).item())
        return gaps

    assert max(shifted_gaps(True)) < 1e-5
    assert min(shifted_gaps(False)) > 1e-3  # zero padding breaks the symmetry: the test can fail


def test_unet2d_periodic_convs_are_circular():
    net = UNet2D(1, 1, periodic=True, **TINY2D)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d) and max(m.padding) > 0]
    assert convs and all(m.padding_mode == "circular" for m in convs)


def test_unet2d_conditioning_inputs_matter():
    net = randomize(UNet2D(1, 1, cond_channels=1, num_params=2, **TINY2D))
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
    with pytest.raises(ValueError, match="norm_num_groups"):
        UNet2D(1, 1, block_out_channels=(12, 32), attention_levels=(False, False))


def test_fresh_param_embedding_starts_neutral():
    net = UNet2D(1, 1, num_params=2, **TINY2D).eval()
    x, c = torch.randn(1, 1, 8, 8), torch.tensor([0.2])
    with torch.no_grad():
        assert torch.equal(net(x, c, params=torch.zeros(1, 2)), net(x, c, params=torch.ones(1, 2)))


def test_unet1d_shapes():
    net = UNet1D(2, 1, cond_channels=2, num_params=1, **TINY1D)
    for n in [32, 33, 17, 10]:
        out = net(torch.randn(3, 2, n), torch.tensor([0.0, 1.0, 2.0]), cond=torch.randn(3, 2, n),
                  params=torch.randn(3, 1))
        assert out.shape == (3, 1, n) and torch.isfinite(out).all()


def test_unet1d_periodic_equivariance():
    """Three levels: shifts by multiples of 4 commute with the periodic network."""
    torch.manual_seed(1)
    x, c_noise = torch.randn(2, 2, 32), torch.tensor([0.5, -0.2])

    def shifted_gaps(periodic):
        net = randomize(UNet1D(2, 2, periodic=periodic, **TINY1D))
        gaps = []
        with torch.no_grad():
            out = net(x, c_noise)
            for shift in [4, 12, -8]:
                rolled = net(x.roll(shift, -1), c_noise)
                gaps.append(((rolled - out.roll(shift, -1)).abs().max() / out.abs().max()).item())
        return gaps

    assert max(shifted_gaps(True)) < 1e-5
    assert min(shifted_gaps(False)) > 1e-3


@pytest.mark.parametrize("kind", ["unet2d", "unet1d"])
def test_network_config_round_trip(kind):
    if kind == "unet2d":
        net = UNet2D(2, 2, cond_channels=1, num_params=3, periodic=True, dropout=0.1, **TINY2D)
    else:
        net = UNet1D(1, 1, num_params=1, periodic=True, **TINY1D)
    config = net.config()
    assert config["type"] == kind and config["block_out_channels"] == list(net.config()["block_out_channels"])
    again = build("network", json.loads(json.dumps(config)))
    assert type(again) is type(net) and again.config() == config
    assert type(net).from_config(config).config() == config
    again.load_state_dict(randomize(net).state_dict())
    b = 2
    grid = (8, 8) if config["type"] == "unet2d" else (16,)
    x = torch.randn(b, config["in_channels"], *grid)
    cond = torch.randn(b, config["cond_channels"], *grid) if config["cond_channels"] else None
    params = torch.randn(b, config["num_params"])
    with torch.no_grad():
        assert torch.equal(net(x, torch.zeros(b), cond=cond, params=params),
                           again.eval()(x, torch.zeros(b), cond=cond, params=params))
    with pytest.raises(ValueError, match="unknown network type 'transformer'"):
        build("network", {"type": "transformer"})
    with pytest.raises(ValueError, match="unknown config key 'widht'"):
        build("network", {**config, "widht": 3})
    with pytest.raises(ValueError, match="did you mean 'dropout'"):
        build("network", {**config, "dropuot": 0.1})
    with pytest.raises(ValueError, match="periodic must be true or false, got 'yes'"):
        build("network", {**config, "periodic": "yes"})
    with pytest.raises(ValueError, match=r"lacks the required key\(s\) \['in_channels'\]"):
        build("network", {k: v for k, v in config.items() if k != "in_channels"})
    with pytest.raises(ValueError, match="cannot build"):
        type(net).from_config({**config, "type": "unet1d" if kind == "unet2d" else "unet2d"})
