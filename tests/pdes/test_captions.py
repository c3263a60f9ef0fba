"""Captions from the physics: features against hand-built fields, phrasings, and the parser back."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import diffpde.pdes as pdes
from diffpde.pdes import captions as cap

# small instances of every family that writes captions (fast to generate)
FAMILIES = {
    "burgers": dict(resolution=16, nt=9),
    "burgers_dirichlet": dict(resolution=17, nt=9, T=1.0),
    "navier_stokes": dict(resolution=16),
    "navier_stokes_trajectory": dict(resolution=16, store="trajectory", nt=5),
    "darcy": dict(resolution=16),
    "poisson": dict(resolution=16),
    "helmholtz": dict(resolution=16, k=2.0),
}


def family(key: str) -> pdes.PDE:
    kwargs = dict(FAMILIES[key])
    return pdes.get(key.removesuffix("_trajectory"), kwargs.pop("resolution"), **kwargs)


@pytest.fixture(scope="module")
def samples():
    return {key: [family(key).generate(seed) for seed in range(2)] for key in FAMILIES}


def gaussian_blob(n, x0, y0, width, periodic, amplitude=1.0):
    x = np.arange(n) / n if periodic else np.linspace(0, 1, n)
    dx, dy = x[None, :] - x0, x[:, None] - y0
    if periodic:
        dx, dy = (dx + 0.5) % 1 - 0.5, (dy + 0.5) % 1 - 0.5
    return x, amplitude * np.exp(-(dx**2 + dy**2) / (2 * width**2))


# -- features: the shared tools ------------------------------------------------------------------


def test_dominant_wavenumber_of_single_modes():
    n = 32
    x = np.arange(n) / n
    assert cap.dominant_wavenumber(np.sin(2 * np.pi * 3 * x)) == pytest.approx(3, abs=1e-12)
    X, Y = np.meshgrid(x, x)
    assert cap.dominant_wavenumber(np.cos(2 * np.pi * (3 * X + 4 * Y)), (-2, -1)) == pytest.approx(5, abs=1e-12)
    assert cap.dominant_wavenumber(np.cos(2 * np.pi * (X + Y)), (-2, -1)) == pytest.approx(math.sqrt(2), abs=1e-12)
    # along one axis of a trajectory [t, x], averaged over t
    traj = np.outer(np.linspace(1, 2, 5), np.sin(2 * np.pi * 6 * x))
    assert cap.dominant_wavenumber(traj, (-1,)) == pytest.approx(6, abs=1e-12)
    # vertex grid: cos(pi m x) has wavenumber m / 2
    v = np.linspace(0, 1, 17)
    V, W = np.meshgrid(v, v)
    assert cap.dominant_wavenumber(np.cos(np.pi * 4 * V) * np.cos(np.pi * 3 * W), (-2, -1), periodic=False) \
        == pytest.approx(2.5, abs=1e-12)
    assert cap.dominant_wavenumber(np.ones((8, 8)), (-2, -1)) is None
    assert cap.mean_energy(2 * np.sin(2 * np.pi * x)) == pytest.approx(1.0, abs=1e-12)  # A^2 / 4


@pytest.mark.parametrize("periodic", [True, False])
def test_main_structure_finds_a_gaussian_vortex(periodic):
    n, width = 64, 0.06
    # on a node; the periodic one sits next to the edge, so its region wraps around
    x0, y0 = (3 / n, 40 / n) if periodic else (21 / 63, 40 / 63)
    x, w = gaussian_blob(n, x0, y0, width, periodic, amplitude=-2.0)
    w = w + 0.3 * gaussian_blob(n, 0.7, 0.3, 0.05, periodic)[1]  # a weaker one elsewhere
    s = cap.main_structure(w, x, x, periodic)
    assert (s["x"], s["y"]) == (pytest.approx(x0, abs=1e-12), pytest.approx(y0, abs=1e-12))
    assert s["sign"] == -1.0 and s["peak"] == pytest.approx(2.0, rel=1e-12)
    half = width * math.sqrt(2 * math.log(2))  # radius where the Gaussian is at half its peak
    spacing = x[1] - x[0]
    assert s["radius"] == pytest.approx(half, abs=spacing)
    assert cap.count_structures(w, periodic) == 1
    assert cap.count_structures(w - 0.6 * w.min() * gaussian_blob(n, 0.7, 0.3, 0.05, periodic)[1], periodic) == 2
    # off the grid the centre is found to a fraction of a cell
    x, w = gaussian_blob(n, 0.4137, 0.6021, width, periodic)
    s = cap.main_structure(w, x, x, periodic)
    assert abs(s["x"] - 0.4137) < 0.1 * spacing and abs(s["y"] - 0.6021) < 0.1 * spacing


def test_regions_join_across_periodic_edges():
    mask = np.zeros((8, 8), bool)
    mask[2:4, 0] = mask[2:4, 7] = True  # one region split by the edge x = 0
    mask[6, 3] = True
    assert cap.label_regions(mask, periodic=False)[1] == 3
    labels, count = cap.label_regions(mask, periodic=True)
    assert count == 2 and labels[2, 0] == labels[2, 7]
    x = np.arange(8) / 8
    region = cap.largest_region(mask, x, x, periodic=True)
    assert region["count"] == 2 and region["area"] == pytest.approx(4 / 64)
    assert region["x"] == pytest.approx(15 / 16) and region["y"] == pytest.approx(2.5 / 8)  # centred on the edge
    assert cap.largest_region(np.zeros((4, 4), bool), x[:4], x[:4], True) is None


def test_fit_viscosity_of_a_decaying_mode():
    nu, k, t = 0.02, 3, np.linspace(0, 1, 201)
    # u = exp(-nu (2 pi k)^2 t) sin(2 pi k x): E = exp(-2 nu (2 pi k)^2 t) / 4, D = mean(u_x^2) = (2 pi k)^2 2 E
    energy = 0.25 * np.exp(-2 * nu * (2 * np.pi * k) ** 2 * t)
    assert cap.fit_viscosity(t, energy, 2 * (2 * np.pi * k) ** 2 * energy) == pytest.approx(nu, rel=1e-3)
    work = np.full_like(t, 0.1)  # a constant power input is accounted for
    dissipation = 2 * (2 * np.pi * k) ** 2 * energy
    assert cap.fit_viscosity(t, energy + 0.1 * t, dissipation, work) == pytest.approx(nu, rel=1e-3)
    assert cap.fit_viscosity(t, energy, 0 * t) is None


# -- features of each family on hand-built fields ----------------------------------------------------


def test_burgers_features_of_a_growing_mode():
    pde = pdes.get("burgers", 32, nu=0.05, T=2.0, nt=5)
    x, t = pde.grid.coords["x"], pde.grid.coords["t"]
    u = (1 + t)[:, None] * 0.5 * np.sin(2 * np.pi * 2 * x)[None, :]
    f = pde.features({"u": torch.from_numpy(u)})
    assert f["nu"] == 0.05 and f["T"] == 2.0 and f["k0"] == pytest.approx(2) and f["kT"] == pytest.approx(2)
    assert f["energy0"] == pytest.approx(0.5**2 / 4) and f["energyT"] == pytest.approx(1.5**2 / 4)
    assert f["u0_max"] == pytest.approx(0.5) and f["re"] == pytest.approx(0.5 / math.sqrt(2) / 0.05)
    # -u_x = -(1 + t) 0.5 (4 pi) cos(4 pi x): steepest at t = T, x = 1/4 (and 3/4)
    assert f["front_t"] == 2.0 and f["front_x"] in (0.25, 0.75)
    assert f["front_steepness"] == pytest.approx(3 * 0.5 * 4 * np.pi)
    assert f["slope0"] == pytest.approx(0.5 * 4 * np.pi)


def test_navier_stokes_features_of_a_mode_and_a_vortex():
    n = 32
    pde = pdes.get("navier_stokes", n, forcing=0.0)
    x = np.arange(n) / n
    X, Y = np.meshgrid(x, x)
    w0 = np.cos(2 * np.pi * (3 * X + 4 * Y))
    _, w = gaussian_blob(n, 8 / n, 20 / n, 0.07, periodic=True, amplitude=3.0)
    f = pde.features({"w0": w0, "w": w[None]})
    assert "forcing" not in f and f["nu"] == 1e-3
    assert f["k0"] == pytest.approx(5) and f["enstrophy0"] == pytest.approx(0.25)
    energy0 = 0.25 / (4 * np.pi**2 * 25)  # psi = w / (4 pi^2 |k|^2), E = mean(psi w) / 2
    assert f["energy0"] == pytest.approx(energy0) and f["re"] == pytest.approx(math.sqrt(2 * energy0) / 1e-3)
    assert (f["vortex_x"], f["vortex_y"], f["vortex_sign"]) == (pytest.approx(8 / n), pytest.approx(20 / n), 1.0)
    assert f["vortex_peak"] == pytest.approx(3.0) and f["n_vortices"] == 1
    forced = pdes.get("navier_stokes", n).features({"w0": w0, "w": w})
    assert forced["forcing"] == 0.1 and forced["forcing_k"] == pytest.approx(math.sqrt(2))


def test_burgers_dirichlet_features_of_hand_built_fields():
    pde = pdes.get("burgers_dirichlet", 41, nt=5, T=2.0)
    x, t = pde.grid.coords["x"], pde.grid.coords["t"]
    u0 = np.sin(np.pi * x) * np.cos(np.pi * x)  # max 1/2 at x = 1/4, min -1/2 at x = 3/4
    u = np.outer(np.ones(5), u0)
    f = np.zeros((5, 41))
    f[3, 12] = -0.7
    out = pde.features({"u0": u0, "f": f, "u": u})
    assert (out["u0_max"], out["u0_max_x"], out["u0_min"], out["u0_min_x"]) == \
        (pytest.approx(0.5), 0.25, pytest.approx(-0.5), 0.75)
    assert (out["forcing_amp"], out["forcing_x"], out["forcing_t"], out["forcing_sign"]) == (0.7, x[12], t[3], -1.0)
    # u_x = pi cos(2 pi x): steepest descent at x = 1/2
    assert out["front_x"] == 0.5 and out["front_steepness"] == pytest.approx(np.pi, rel=1e-2)
    assert "forcing_amp" not in pde.features({"u0": u0, "f": 0 * f, "u": u})


def test_elliptic_features_of_hand_built_fields():
    darcy = pdes.get("darcy", 33)
    a = np.full((33, 33), 3.0)
    a[4:10, 20:30] = 12.0   # the larger inclusion, centred at x = 24.5/32, y = 6.5/32
    a[20:24, 2:6] = 12.0
    f = darcy.features({"a": a, "u": darcy.solve(a)})
    assert f["high_fraction"] == pytest.approx(76 / 33**2) and f["n_inclusions"] == 2
    assert (f["a_high"], f["a_low"], f["contrast"]) == (12.0, 3.0, 4.0)
    assert (f["inclusion_x"], f["inclusion_y"]) == (pytest.approx(24.5 / 32), pytest.approx(6.5 / 32))
    assert f["inclusion_area"] == pytest.approx(60 / 33**2)
    assert 0.4 < f["u_max_x"] < 0.6 and 0.4 < f["u_max_y"] < 0.6 and f["u_max"] > f["u_mean"] > 0
    poisson = pdes.get("poisson", 33)
    x, source = gaussian_blob(33, 10 / 32, 20 / 32, 0.08, periodic=False, amplitude=-5.0)
    f = poisson.features({"a": source, "u": poisson.solve(source)})
    assert (f["source_x"], f["source_y"], f["source_sign"], f["source_peak"]) == \
        (pytest.approx(10 / 32), pytest.approx(20 / 32), -1.0, pytest.approx(5.0))
    assert f["u_ext"] > 0 and abs(f["u_ext_x"] - 10 / 32) < 0.15 and abs(f["u_ext_y"] - 20 / 32) < 0.15
    assert pdes.get("helmholtz", 33, k=3.0).features({"a": source, "u": 0 * source})["k"] == 3.0


def test_energy_balance_recovers_the_viscosity_of_solver_data():
    for name, kwargs in (("burgers", dict(nu=0.02, nt=33)), ("burgers_dirichlet", dict(nt=33, T=2.0, nu=0.02)),
                         ("navier_stokes", dict(nu=0.01, store="trajectory", nt=17))):
        pde = pdes.get(name, 32, **kwargs)
        sample = pde.generate(3)
        assert pde.features(sample)["nu_energy"] == pytest.approx(kwargs["nu"], rel=0.03), name
    with pytest.raises(KeyError, match="navier_stokes: field 'w0' is needed"):
        pdes.get("navier_stokes", 16).features({"w": np.zeros((16, 16))})
    with pytest.raises(ValueError, match="field 'u' must have shape"):
        pdes.get("burgers", 16).features({"u": np.zeros((3, 16))})


# -- numbers and phrasings ---------------------------------------------------------------------------


def test_numbers_read_back_to_their_rounding():
    rng = np.random.default_rng(0)
    for number in (cap.Number("sci", 2), cap.Number("sci", 3), cap.Number("float", 2), cap.Number("coord", 2),
                   cap.Number("percent"), cap.Number("int")):
        for _ in range(200):
            value = float(rng.integers(0, 13)) if number.kind == "int" else \
                float(rng.uniform(0, 1) if number.kind in ("coord", "percent") else
                      rng.choice([-1, 1]) * 10 ** rng.uniform(-6, 5))
            for style in number.styles():
                text = number.format(value, style)
                read, half = cap.read_number(text)
                assert abs(read - value) <= half * (1 + 1e-9) + 1e-15, (number, style, value, text)
    assert cap.read_number("1.0 x 10^-3") == (1e-3, pytest.approx(5e-5))
    assert cap.read_number("10^-3")[0] == 1e-3 and cap.read_number("42%") == (0.42, pytest.approx(0.005))
    assert cap.read_number("seven") == (7.0, 0.0) and cap.read_number("1200")[1] == 50


@pytest.mark.parametrize("key", list(FAMILIES))
def test_every_phrasing_reads_back(key, samples):
    pde = family(key)
    vocabulary = pde.caption_vocabulary
    for sample in samples[key]:
        features = pde.features(sample)
        rng = np.random.default_rng(1)
        for clause in vocabulary.clauses:
            if not clause.applies(features):
                continue
            for i, phrasing in enumerate(clause.phrasings):
                for style in ("plain", "e", "pow", "%", " percent", "digits", "words"):
                    opener = vocabulary.openers[0].render(features, rng)
                    text = f"{opener} with {clause.render(features, rng, phrasing=i, style=style)}."
                    stated = pde.parse_caption(text, precision=True)
                    keys = [k for k in clause.keys(phrasing) if k in features]
                    assert sorted(stated) == sorted(keys), (text, stated)
                    for k in keys:
                        value, half = stated[k]
                        assert abs(value - features[k]) <= half * (1 + 1e-9) + 1e-15, (text, k, features[k])


@pytest.mark.parametrize("key", list(FAMILIES))
def test_captions_state_their_features_and_read_back(key, samples):
    pde = family(key)
    sample = samples[key][0]
    features = pde.features(sample)
    first = pde.caption(sample, 5, n=4)
    assert first == pde.caption({k: torch.from_numpy(v) for k, v in sample.items()}, np.random.default_rng(5), n=4)
    assert first != pde.caption(sample, 6, n=4) and len(set(first)) == 4
    def always(clause):  # the keys every phrasing of a clause states
        return set.intersection(*({k for k in clause.keys(p) if k in features} for p in clause.phrasings))

    applicable = [c for c in pde.caption_vocabulary.clauses if c.applies(features)]
    required = set().union(*(always(c) for c in applicable if not c.optional))
    assert set(pde.parse_caption(first[0])) >= set().union(*(always(c) for c in applicable))  # the first says all
    lengths = []
    for seed in range(40):
        for text in pde.caption(sample, seed, n=3):
            assert text.isascii() and "\n" not in text
            stated = pde.parse_caption(text, precision=True)
            assert required <= set(stated), text
            for k, (value, half) in stated.items():
                assert abs(value - features[k]) <= half * (1 + 1e-9) + 1e-15, (text, k)
            # the family is found from the opener alone
            assert cap.parse_caption(text) == pde.parse_caption(text)
            lengths.append(len(text.split()))
    assert min(lengths) < max(lengths)
    assert pde.describe(sample).startswith(pde.describe())


def test_agreement_and_errors():
    pde = pdes.get("burgers", 16)
    sample = pde.generate(0)
    features = pde.features(sample)
    text = pde.caption(sample, 0, n=1)[0]
    report = cap.agreement(pde.parse_caption(text), features, pde.caption_vocabulary.recoverable)
    assert report["nu"]["measured"] == features["nu_energy"] and report["nu"]["stated"] == 0.01
    assert report["nu"]["relative_error"] < 0.05
    with pytest.raises(ValueError, match="no family's caption opener"):
        cap.parse_caption("a picture of a cat")
    with pytest.raises(ValueError, match="no caption vocabulary"):
        cap.parse_caption("anything", "nope")
