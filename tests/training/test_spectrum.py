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
