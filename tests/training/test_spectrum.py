import math

import torch

from diffpde.training.evaluation import power_spectrum, spectrum_error


def test_power_spectrum_puts_a_plane_wave_in_its_wavenumber_bin():
    n = 32
    x = torch.arange(n, dtype=torch.float64) / n
    wave = torch.cos(2 * math.pi * 5 * x).reshape(1, 1, n).expand(3, n, n)   # wavenumber (0, 5)
    s = power_spectrum(wave)
    assert int(s.argmax()) == 5
    assert s[5] > 1e6 * s[torch.arange(len(s)) != 5].max()


def test_spectrum_error_is_zero_for_the_same_statistics_and_grows_with_smoothing():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(64, 32, 32, generator=g, dtype=torch.float64)
    b = torch.randn(64, 32, 32, generator=g, dtype=torch.float64)
    assert spectrum_error(a, b) < 0.05          # white noise against white noise
    smooth = (b + b.roll(1, 1) + b.roll(1, 2) + b.roll((1, 1), (1, 2))) / 4
    assert spectrum_error(smooth, b) > 0.3      # the high wavenumbers are damped


def test_two_phase_statistics_come_from_the_family_declaration():
    """No family name in the evaluation: any field a PDE declares two-phase gets its high fraction."""
    from types import SimpleNamespace

    from diffpde import pdes
    from diffpde.training.evaluation import _problem_metrics

    k = torch.tensor([[[0.0, 2.0], [2.0, 2.0]]])
    family = SimpleNamespace(two_phase_fields=lambda: {"k": (0.0, 2.0), "missing": (0.0, 1.0)})
    assert _problem_metrics(family, {"k": k, "v": k}, "_data") == {"k/high_fraction_data": 0.75}
    darcy = pdes.get("darcy", 16)
    low, high = darcy.two_phase_fields()["a"]
    a = torch.tensor([[[low, high], [low, low]]])
    assert _problem_metrics(darcy, {"a": a}, "") == {"a/high_fraction": 0.25}
    assert _problem_metrics(pdes.get("poisson", 16), {"a": a}, "") == {}
