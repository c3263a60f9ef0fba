"""Super-resolution pairs: resampling operators exact on band-limited fields, pair construction, crops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffpde.data import generate_dataset
from diffpde.data.pairs import (
    SuperResolutionPairs,
    axis_kinds,
    box_mean,
    coarse_mask,
    conditions,
    detail,
    downsample,
    fourier_resample,
    second_difference,
    upsample,
)

K = ("interval", "periodic")


def trig(x: torch.Tensor, modes: int, seed: int = 0) -> torch.Tensor:
    """A random real trigonometric polynomial of degree ``modes`` on [0, 1), at ``x``."""
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(modes + 1, generator=g, dtype=torch.float64), torch.randn(modes + 1, generator=g, dtype=torch.float64)
    k = torch.arange(modes + 1, dtype=torch.float64)
    return (a * torch.cos(2 * math.pi * k * x[..., None]) + b * torch.sin(2 * math.pi * k * x[..., None])).sum(-1)


def grid(n: int) -> torch.Tensor:
    return torch.arange(n, dtype=torch.float64) / n


@pytest.mark.parametrize("m, n", [(16, 64), (15, 45), (16, 48), (17, 34)])
def test_fourier_upsampling_is_exact_on_band_limited_fields(m, n):
    modes = (m - 1) // 2     # strictly below the Nyquist mode of the coarse grid
    assert torch.allclose(fourier_resample(trig(grid(m), modes), n), trig(grid(n), modes), atol=1e-12)


def test_fourier_nyquist_cosine_is_split_and_truncation_keeps_it():
    x16, x32 = grid(16), grid(32)
    f = lambda x: 1 + torch.cos(2 * math.pi * 8 * x) + torch.sin(2 * math.pi * 3 * x)   # noqa: E731, Nyquist cosine of 16
    assert torch.allclose(fourier_resample(f(x16), 32), f(x32), atol=1e-12)
    assert torch.allclose(fourier_resample(f(x32), 16), f(x16), atol=1e-12)   # truncation = sampling here
    # a mode above the coarse Nyquist is removed by truncation (and aliased by subsampling)
    g = lambda x: torch.cos(2 * math.pi * 3 * x) + 0.5 * torch.cos(2 * math.pi * 12 * x)   # noqa: E731
    assert torch.allclose(fourier_resample(g(x32), 16), torch.cos(2 * math.pi * 3 * x16), atol=1e-12)


def test_downsample_then_upsample_is_exact_on_band_limited_trajectories():
    t9, t33 = torch.linspace(0, 1, 9, dtype=torch.float64), torch.linspace(0, 1, 33, dtype=torch.float64)
    cosine = lambda t: 1 + torch.cos(math.pi * t) - 0.4 * torch.cos(3 * math.pi * t)   # noqa: E731, even at both ends
    fine = cosine(t33)[:, None] * trig(grid(32), 3)[None]   # x modes below the Nyquist mode of 8 points
    for periodic in ("subsample", "spectral"):
        coarse = downsample(fine, (4, 4), K, periodic)
        assert torch.allclose(coarse, cosine(t9)[:, None] * trig(grid(8), 3)[None], atol=1e-12)
        assert torch.allclose(upsample(coarse, (4, 4), K, "spectral"), fine, atol=1e-12)
    # linear in t and the stored times subsampled: t = 0 and t = T survive
    lin = (2 * t33 - 0.5)[:, None] * torch.ones(1, 8, dtype=torch.float64)
    assert torch.equal(downsample(lin, (4, 1), K)[[0, -1]], lin[[0, -1]])
    assert torch.allclose(upsample(downsample(lin, (4, 1), K), (4, 1), K, "linear"), lin, atol=1e-14)


def test_interpolants_keep_the_coarse_points_and_constants():
    coarse = torch.randn(3, 9, 8, dtype=torch.float64)
    for method in ("nearest", "linear", "spectral", ("linear", "spectral")):
        for f in ((2, 2), (1, 2), (2, 1), (4, 2)):
            fine = upsample(coarse, f, K, method)
            assert fine.shape == (3, f[0] * 8 + 1, 8 * f[1])
            assert torch.allclose(downsample(fine, f, K), coarse, atol=1e-12)
            assert torch.allclose(upsample(torch.full((9, 8), 2.5, dtype=torch.float64), f, K, method),
                                  torch.full(fine.shape[1:], 2.5, dtype=torch.float64), atol=1e-12)


def test_nearest_and_linear_on_simple_cases():
    c = torch.tensor([0.0, 1.0, 4.0], dtype=torch.float64)
    assert upsample(c, 2, ("interval",), "linear").tolist() == [0.0, 0.5, 1.0, 2.5, 4.0]
    assert upsample(c, 2, ("interval",), "nearest").tolist() == [0.0, 0.0, 1.0, 1.0, 4.0]   # ties to the earlier point
    assert upsample(c, 2, ("periodic",), "linear").tolist() == [0.0, 0.5, 1.0, 2.5, 4.0, 2.0]   # wraps
    assert upsample(c, 2, ("interval",), "linear", shape=(6,)).tolist() == [0.0, 0.5, 1.0, 2.5, 4.0, 4.0]   # held past the end


def test_mask_second_difference_and_conditions():
    m = coarse_mask((5, 4), (2, 1))
    assert m.tolist() == [[1] * 4, [0] * 4, [1] * 4, [0] * 4, [1] * 4]
    t = torch.linspace(0, 1, 9, dtype=torch.float64)
    q = (t**2)[:, None].expand(9, 8)
    assert torch.allclose(second_difference(q, 0, "interval"), torch.full_like(q, 2 / 64))
    wave = torch.cos(2 * math.pi * grid(8)) + 0.3 * torch.sin(2 * math.pi * grid(8))
    assert torch.allclose(second_difference(wave[None], 1, "periodic"), wave[None] * (2 * math.cos(2 * math.pi / 8) - 2))
    up, cond, s = conditions(q[None], (2, 2), K, ("linear", "spectral"))
    assert up.shape == (1, 17, 16) and cond.shape == (1, 4, 17, 16)
    scale = 2 / 64 / 8 * (1 + 1e-3)   # the curvature term and its floor of 1e-3 of the global value
    for kind in ("local", "global"):
        _, cond, s = conditions(q[None], (2, 2), K, ("linear", "spectral"), scale=kind, radius=2)
        assert torch.allclose(s, torch.full_like(s, scale))
        assert torch.allclose(cond[0, 2], torch.full_like(cond[0, 2], 1 / 1.001)) and cond[0, 3].abs().max() == 0
    # the midpoint error of linear interpolation of t^2 is the curvature term: (fine - up) / s = -1 there
    fine_t = torch.linspace(0, 1, 17, dtype=torch.float64)
    r = ((fine_t**2)[:, None] - up[0]) / s[0]
    assert torch.allclose(r[1::2], torch.full_like(r[1::2], -1 / 1.001))
    # the local scale follows the curvature: large where the field bends, at the floor where it is straight
    kink = (t - 0.5).abs()[:, None].expand(9, 8)
    s_kink = conditions(kink[None], (2, 1), K, "linear", radius=1)[2][0, :, 0]
    assert s_kink[8] > 10 * s_kink[0] and s_kink[0] == s_kink.min()
    _, cond_none, s_none = conditions(q[None], (2, 2), K, "linear", scale="none")
    assert cond_none.shape == (1, 2, 17, 16) and torch.equal(s_none, torch.ones_like(s_none))


def test_detail_is_the_top_octave_for_fourier_and_the_curvature_otherwise():
    x = grid(16)
    low, high = trig(x, 3), 0.2 * torch.cos(2 * math.pi * 6 * x)   # modes <= 3 = n/4 - 1, and one in the top octave
    assert detail(low, 0, "periodic", "spectral").abs().max() < 1e-13
    assert torch.allclose(detail(low + high, 0, "periodic", "spectral"), high, atol=1e-13)
    assert torch.allclose(detail(low, 0, "periodic", "linear"), second_difference(low, 0, "periodic") / 8)


def test_box_mean():
    x = torch.arange(6, dtype=torch.float64)
    assert box_mean(x, 1, ("interval",)).tolist() == [0.5, 1.0, 2.0, 3.0, 4.0, 4.5]
    assert box_mean(x, 1, ("periodic",)).tolist() == [2.0, 1.0, 2.0, 3.0, 4.0, 3.0]
    assert torch.allclose(box_mean(torch.ones(2, 5, 4, dtype=torch.float64), 3, K), torch.ones(2, 5, 4, dtype=torch.float64))


@pytest.fixture(scope="module")
def burgers_file(tmp_path_factory):
    return generate_dataset("burgers", 4, tmp_path_factory.mktemp("sr") / "b16.h5", resolution=16,
                            parameters={"nt": 17}, seed=0, progress=False)


def test_pairs_shapes_levels_factors_and_reconstruction(burgers_file):
    ds = SuperResolutionPairs(burgers_file, levels=(0, 1), factors=((2, 2), (1, 2), (2, 1)), crop=(8, 8),
                              pairs_per_sample=16, stats_items=32)
    assert ds.kinds == K and ds.dims == ("t", "x") and len(ds) == 64
    assert ds.field_names == ("u_residual", "u_coarse", "coarse_mask", "u_detail_t", "u_detail_x")
    assert ds[0].shape == ds.shape == (5, 8, 8) and ds[0].dtype == torch.float32
    assert ds.pyramid[1].shape == (4, 9, 8)
    draws = [ds.draw(k) for k in range(len(ds))]
    assert {d[1] for d in draws} == {0, 1} and {d[2] for d in draws} == {(2, 2), (1, 2), (2, 1)}
    wrapped = 0
    for k, (i, level, f, (ot, ox)) in enumerate(draws):
        assert ot % f[0] == 0 and ox % f[1] == 0
        raw = ds.raw_item(k).double()
        fine = ds.pyramid[level][i]
        nt, nx = fine.shape
        ti, xi = torch.arange(ot, ot + 8), (ox + torch.arange(8)) % nx
        wrapped += int(ox + 8 > nx)
        window = fine[ti][:, xi]
        coarse = downsample(fine, f, K)
        up, cond, s = conditions(coarse[None], f, K, ("linear", "spectral"), fine.shape)
        assert torch.allclose(raw[1], up[0][ti][:, xi], atol=1e-6)       # the upsampled coarse field ...
        assert torch.allclose(raw[0] * s[0][ti][:, xi] + raw[1], window, atol=1e-5)   # ... plus s times the target: fine
        assert torch.equal(raw[2], coarse_mask(fine.shape, f)[ti][:, xi])
        assert torch.allclose(raw[1][raw[2] == 1], window[raw[2] == 1], atol=1e-6)   # coarse points are fine values
        if f[0] == 1:
            assert raw[3].abs().max() == 0
    assert wrapped > 0   # some crops wrap around the periodic axis


def test_pairs_normalised_items_and_errors(burgers_file):
    ds = SuperResolutionPairs(burgers_file, levels=(0,), factors=((2, 2),), crop=(8, 8), pairs_per_sample=8,
                              stats_items=32, target="field", scale="none")
    assert ds.field_names == ("u", "u_coarse", "coarse_mask")
    x = torch.stack([ds[k] for k in range(len(ds))])
    assert torch.allclose(ds.normalizer.denormalize(x), torch.stack([ds.raw_item(k) for k in range(len(ds))]), atol=1e-5)
    assert ds.spec()["kinds"] == ["interval", "periodic"]
    with pytest.raises(ValueError, match="smaller than the crop"):
        SuperResolutionPairs(burgers_file, levels=(0, 2), crop=(8, 8))
    with pytest.raises(ValueError, match="scale"):
        SuperResolutionPairs(burgers_file, levels=(0,), crop=(8, 8), target="field")
    with pytest.raises(ValueError, match="not divisible"):
        downsample(torch.zeros(5, 6), (1, 4), K)
    assert axis_kinds(("t", "y", "x"), "periodic") == ("interval", "periodic", "periodic")
    assert axis_kinds(("y", "x"), "vertex") == ("interval", "interval")
