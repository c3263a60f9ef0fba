"""Periodic evaluation of a prior during training: sample a few fields, compare with the data.

Reported (all floats, physical units):

- ``residual_rms``: mean over samples of the RMS PDE residual (``problem.residual_norm``) of the
  generated fields, next to ``residual_rms_data``, the same on as many data samples;
- ``<field>/mean``, ``<field>/std`` of the samples next to ``<field>/data_mean``,
  ``<field>/data_std`` of the whole dataset (the statistics stored in the file);
- for each field the PDE family declares two-phase (``PDE.two_phase_fields``, e.g. Darcy's ``a``),
  ``<field>/high_fraction`` (cells closer to the high value than to the low one) next to
  ``<field>/high_fraction_data``;
- for 2D fields, ``<field>/spectrum_error``: the mean absolute log10 ratio of the radially averaged
  power spectra of samples and data over the resolved wavenumbers (0 when they match; 0.3 is a
  factor 2 per wavenumber on average).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

__all__ = ["evaluate_prior", "field_statistics", "power_spectrum", "spectrum_error"]


def field_statistics(fields: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """``{"<name>/mean": ., "<name>/std": .}`` over all samples and grid points."""
    out = {}
    for name, v in fields.items():
        v = v.detach().double()
        out[f"{name}/mean"] = float(v.mean())
        out[f"{name}/std"] = float(v.std(unbiased=False))
    return out


def power_spectrum(fields: torch.Tensor) -> torch.Tensor:
    """Radially averaged power spectrum ``[n // 2]`` of 2D fields ``[B, n, n]`` (mean over the batch).

    Bin ``k`` holds the mean of ``|F(u)|^2`` over integer wavenumbers with ``k <= |kappa| < k + 1``.
    """
    if fields.ndim != 3:
        raise ValueError(f"power_spectrum expects [B, n, n] fields, got {tuple(fields.shape)}")
    b, ny, nx = fields.shape
    f = torch.fft.fft2(fields.double() - fields.double().mean((1, 2), keepdim=True))
    power = (f.abs() ** 2).mean(0) / (ny * nx)
    ky = torch.fft.fftfreq(ny, 1.0 / ny).abs().reshape(-1, 1)
    kx = torch.fft.fftfreq(nx, 1.0 / nx).abs().reshape(1, -1)
    k = torch.sqrt(ky**2 + kx**2).floor().long()
    n_bins = min(ny, nx) // 2
    keep = k < n_bins
    total = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, k[keep], power[keep])
    count = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, k[keep], torch.ones_like(power[keep]))
    return total / count.clamp_min(1)


def spectrum_error(samples: torch.Tensor, data: torch.Tensor) -> float:
    """Mean ``|log10(S_samples / S_data)|`` over wavenumbers 1 .. n/2 - 1 (see :func:`power_spectrum`)."""
    s, d = power_spectrum(samples)[1:], power_spectrum(data)[1:]
    ok = (s > 0) & (d > 0)
    return float((s[ok] / d[ok]).log10().abs().mean())


def _problem_metrics(problem: Any, fields: Mapping[str, torch.Tensor], suffix: str) -> dict[str, float]:
    """``<field>/high_fraction<suffix>``: the fraction of cells nearer the high value than the low one,
    for the two-phase fields among ``fields``."""
    return {f"{name}/high_fraction{suffix}": float(((v - high).abs() < (v - low).abs()).double().mean())
            for name, (low, high) in problem.two_phase_fields().items() if name in fields
            for v in (fields[name].double(),)}


def _residual(problem: Any, fields: Mapping[str, torch.Tensor]) -> float | None:
    try:
        r = problem.residual_norm({k: v.double() for k, v in fields.items()})
    except (KeyError, NotImplementedError):
        return None  # the prior does not generate every field the residual needs
    return float(r.mean())


@torch.no_grad()
def evaluate_prior(prior: Any, dataset: Any, n_samples: int = 4, solver: str = "heun", steps: int = 18,
                   seed: int = 0) -> dict[str, Any]:
    """Sample ``n_samples`` fields from ``prior`` and compare them with ``dataset`` (a normalised FieldDataset).

    Conditioning fields, if the prior has any, are taken from the first ``n_samples`` data samples.
    Returns a flat dict of floats (see the module docstring) plus ``n_samples``, ``solver``, ``steps``.
    """
    n_data = min(n_samples, len(dataset))
    data = dataset.denormalize(torch.stack([dataset[i] for i in range(n_data)]))
    data = {name: data[:, i] for i, name in enumerate(dataset.field_names)}
    cond = None
    if prior.cond_fields:
        if n_data < n_samples:
            raise ValueError(f"evaluation needs {n_samples} data samples for the conditioning fields, the dataset has {n_data}")
        cond = {name: data[name] for name in prior.cond_fields}
    generator = torch.Generator(device=prior.device).manual_seed(seed)
    samples = prior.sample(n_samples, solver=solver, steps=steps, generator=generator, cond=cond)
    samples = {k: v.float().cpu() for k, v in samples.items()}
    full = {**(cond or {}), **samples}
    problem = prior.problem
    out: dict[str, Any] = {"n_samples": n_samples, "solver": solver, "steps": steps,
                           "residual_rms": _residual(problem, full),
                           "residual_rms_data": _residual(problem, data) if n_data else None}
    out.update(field_statistics(samples))
    stats = getattr(dataset.info, "stats", None) or {}
    for name in samples:
        if name in stats:
            out[f"{name}/data_mean"] = stats[name]["mean"]
            out[f"{name}/data_std"] = stats[name]["std"]
    out.update(_problem_metrics(problem, samples, ""))
    names, cache = list(dataset.field_names), []

    def reference(name: str) -> torch.Tensor:
        """Field ``name`` of (up to) the first 256 data samples, physical units."""
        if not cache:
            cache.append(dataset.denormalize(torch.stack([dataset[i] for i in range(min(len(dataset), 256))])))
        return cache[0][:, names.index(name)]

    for name, v in samples.items():
        if v.ndim == 3 and min(v.shape[1:]) >= 8:
            out[f"{name}/spectrum_error"] = spectrum_error(v, reference(name))
    two_phase = [name for name in problem.two_phase_fields() if name in samples]
    out.update(_problem_metrics(problem, {n: reference(n) for n in two_phase}, "_data"))
    if not all(torch.isfinite(v).all() for v in samples.values()):
        out["nonfinite"] = True
    return out
