"""Super-resolution prior: chained sampling on any grid, persistence, baselines, truth and the config."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from diffpde import pdes
from diffpde.data import generate_dataset
from diffpde.data.pairs import SuperResolutionPairs, downsample, fourier_resample
from diffpde.inference.superres import (
    BASELINES,
    burgers_truth,
    evaluate_superres,
    interpolate,
    relative_l2,
    steps_for_nfe,
    superres_figure,
)
from diffpde.models.superres import (
    SuperResolver,
    load_superres_config,
    plan_factors,
    train_superres,
)

K = ("interval", "periodic")
MODEL = {"network": {"type": "unet2d", "block_out_channels": [8, 16], "layers_per_block": 1,
                     "attention_levels": [False, False], "norm_num_groups": 4},
         "precond": {"type": "edm"}}
CONFIG = Path(__file__).resolve().parents[2] / "configs" / "burgers_sr.yaml"


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    path = generate_dataset("burgers", 4, tmp_path_factory.mktemp("sr") / "b16.h5", resolution=16,
                            parameters={"nt": 17}, seed=0, progress=False)
    return SuperResolutionPairs(path, levels=(0, 1), crop=(8, 8), pairs_per_sample=8, stats_items=16)


@pytest.fixture(scope="module")
def resolver(pairs):
    torch.manual_seed(0)
    return SuperResolver.from_pairs(pairs, MODEL)


def test_plan_factors():
    assert plan_factors((2, 2)) == [(2, 2)]
    assert plan_factors((4, 2)) == [(2, 2), (2, 1)]
    assert plan_factors((1, 8)) == [(1, 2)] * 3
    assert plan_factors((1, 1)) == []
    with pytest.raises(ValueError, match="power of 2"):
        plan_factors((3, 2))


def test_chained_sampling_shapes_at_2x_and_4x_on_any_grid(resolver):
    coarse = torch.randn(2, 17, 16, dtype=torch.float64)
    stats = {}
    out = resolver.superresolve(coarse, (4, 4), steps=3, generator=torch.Generator().manual_seed(0), stats=stats)
    assert [tuple(o.shape) for o in out] == [(2, 33, 32), (2, 65, 64)]   # grids larger than the 8 x 8 crops
    assert stats["nfe"] == 3 and all(torch.isfinite(o).all() for o in out)
    # the coarse values are kept at the coarse points (the pairs were subsampled)
    assert torch.allclose(downsample(out[0], (2, 2), K), coarse)
    assert torch.allclose(downsample(out[1], (4, 4), K), coarse)
    # independent factors per axis, any solver
    out = resolver.superresolve(coarse[:1], [(2, 2), (2, 1), (1, 2)], solver="heun", steps=2)
    assert [tuple(o.shape) for o in out] == [(1, 33, 32), (1, 65, 32), (1, 65, 64)]
    with pytest.raises(ValueError, match="not trained"):
        resolver.refine(coarse, (4, 4))


def test_windowed_denoiser_blends_windows_and_matches_the_whole_grid(resolver):
    cond = torch.randn(2, 4, 17, 16, dtype=torch.float64)
    z, sigma = torch.randn(2, 1, 17, 16), torch.tensor([0.7, 0.3])
    whole = resolver.denoiser(cond, None, halo=0)(z, sigma)
    assert torch.allclose(resolver.denoiser(cond, tile=(17, 16))(z, sigma), whole, atol=1e-6)   # one window
    tiled = resolver.denoiser(cond, tile=(8, 8), stride=(3, 5))(z, sigma)   # wraps in x, ends on the last t
    assert tiled.shape == z.shape and torch.isfinite(tiled).all()
    # a window of the training size sees only its own points: far-away changes leave it alone
    z2 = z.clone()
    z2[..., 16:, :] += 5.0
    assert torch.equal(resolver.denoiser(cond, tile=(8, 8), stride=(8, 8))(z2, sigma)[..., :8, :],
                       resolver.denoiser(cond, tile=(8, 8), stride=(8, 8))(z, sigma)[..., :8, :])


def test_halo_is_checked_and_optional(resolver):
    coarse = torch.randn(1, 9, 8, dtype=torch.float64)
    assert resolver.refine(coarse, (2, 2), steps=2, tile=None, halo=0).shape == (1, 17, 16)
    with pytest.raises(ValueError, match="halo"):
        resolver.refine(coarse, (2, 2), steps=2, tile=None, halo=40)
    with pytest.raises(ValueError, match="finite"):
        resolver.refine(coarse * float("nan"), (2, 2), steps=2)


def test_save_load_round_trip(resolver, tmp_path):
    resolver.save_pretrained(tmp_path / "p")
    again = SuperResolver.from_pretrained(tmp_path / "p")
    assert again.spec == resolver.spec
    coarse = torch.randn(1, 9, 8, dtype=torch.float64)
    kw = dict(steps=2, generator=None)
    x = resolver.refine(coarse, (1, 2), **{**kw, "generator": torch.Generator().manual_seed(3)})
    y = again.refine(coarse, (1, 2), **{**kw, "generator": torch.Generator().manual_seed(3)})
    assert torch.equal(x, y)
    with pytest.raises(FileNotFoundError, match="superres.json"):
        SuperResolver.from_pretrained(tmp_path)


def test_training_steps_export_a_loadable_prior(pairs, tmp_path):
    torch.manual_seed(0)
    fresh = SuperResolver.from_pairs(pairs, MODEL)
    trained, history = train_superres(fresh, pairs, steps=3, batch_size=4, log_every=1, output_dir=tmp_path,
                                      progress=False, device="cpu")
    assert [h["step"] for h in history] == [1, 2, 3] and all(math.isfinite(h["loss"]) for h in history)
    assert (tmp_path / "prior" / "superres.json").is_file() and (tmp_path / "log.jsonl").is_file()
    SuperResolver.from_pretrained(tmp_path / "prior").refine(torch.zeros(1, 9, 8), (2, 2), steps=1)


def test_baselines_exact_on_simple_cases():
    t = torch.linspace(0, 1, 9, dtype=torch.float64)
    x = torch.arange(8, dtype=torch.float64) / 8
    T = torch.linspace(0, 1, 33, dtype=torch.float64)
    X = torch.arange(32, dtype=torch.float64) / 8 / 4
    band = lambda t, x: (1 + torch.cos(math.pi * t))[:, None] * torch.sin(2 * math.pi * x)[None]   # noqa: E731
    fine = band(T, X)
    assert torch.allclose(interpolate(band(t, x)[None], (4, 4), K, "spectral")[0], fine, atol=1e-12)
    affine = lambda t, x: (2 * t - 1)[:, None] + 0 * x[None]   # noqa: E731
    for name in ("linear", "linear_t_spectral_x"):
        assert torch.allclose(interpolate(affine(t, x)[None], (4, 4), K, name)[0], affine(T, X), atol=1e-12)
    const = torch.full((1, 9, 8), 0.7, dtype=torch.float64)
    for name in BASELINES:
        assert torch.allclose(interpolate(const, (2, 4), K, name), torch.full((1, 17, 32), 0.7, dtype=torch.float64))
    assert relative_l2(fine[None] * 1.1, fine[None]).item() == pytest.approx(0.1)


def test_burgers_truth_is_the_same_problem_at_the_fine_resolution():
    coarse_pde = pdes.get("burgers", 32, nt=33)
    u0 = coarse_pde.sample_inputs(2, 5)["u0"]
    coarse = torch.as_tensor(coarse_pde.solve(u0))
    fine = burgers_truth(coarse_pde, u0, (2, 2))
    assert fine.shape == (2, 65, 64)
    assert torch.allclose(fine[:, 0], fourier_resample(torch.as_tensor(u0), 64), atol=1e-12)   # the same u0
    assert relative_l2(downsample(fine, (2, 2), K), coarse).max() < 2e-2   # agrees at the shared points
    with pytest.raises(NotImplementedError):
        burgers_truth(pdes.get("poisson", 16), u0, (2, 2))


def test_evaluate_rows_and_figure(resolver, tmp_path):
    coarse = torch.randn(2, 9, 8, dtype=torch.float64)
    truth = interpolate(coarse, (2, 2), K, "spectral")
    samples = {}
    rows = evaluate_superres(resolver, coarse, {"2x": ((2, 2), truth)}, nfes=(2,), samples=samples)
    by = {r["method"]: r for r in rows}
    assert by["spectral"]["rel_l2"] < 1e-12 and by["nearest"]["rel_l2"] > 0
    assert by["superres (dpmpp_2m)"]["nfe"] == 2 and steps_for_nfe("heun", 10) == 5
    fig = superres_figure(truth[0], coarse[0], samples[("2x", "superres nfe 2")][0], samples[("2x", "linear")][0],
                          path=str(tmp_path / "f.png"))
    assert len(fig.axes) >= 5 and (tmp_path / "f.png").stat().st_size > 0


def test_config_loads_with_variant_and_overrides():
    cfg, sr = load_superres_config(CONFIG, "tiny", ["superres.levels=[0, 1]", "train.max_steps=7"])
    assert sr["crop"] == [32, 32] and sr["levels"] == [0, 1] and cfg.train.max_steps == 7
    assert cfg.model.network["attention_levels"] == [False, False, False]
    full, sr_full = load_superres_config(CONFIG)
    assert sr_full["crop"] == [64, 64] and full.train.batch_size == 64
    import inspect

    from diffpde.data import generate_dataset

    for c in (cfg, full):   # what train_from_config passes to generate_dataset when the data is missing
        inspect.signature(generate_dataset).bind(c.data.problem, out="x.h5", **c.data.generate)
    with pytest.raises(ValueError, match="unknown key"):
        load_superres_config(CONFIG, "tiny", ["superres.level=[0]"])
