"""Periodic evaluation of a prior during training: sample a few fields, compare with the data.

Reported (all floats, physical units):

- ``residual_rms``: mean over samples of the RMS PDE residual (``problem.residual_norm``) of the
  generated fields, next to ``residual_rms_data``, the same on as many data samples;
- ``<field>/mean``, ``<field>/std`` of the samples next to ``<field>/data_mean``,
  ``<field>/data_std`` of the whole dataset (the statistics stored in the file);
- for Darcy, ``a/high_fraction`` (cells closer to ``a_high`` than to ``a_low``) against the data;
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
    if getattr(problem, "name", None) == "darcy" and "a" in fields:
        p = problem.parameters
        a = fields["a"].double()
        return {f"a/high_fraction{suffix}": float(((a - p["a_high"]).abs() < (a - p["a_low"]).abs()).double().mean())}
    return {}


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
    reference = None
    for name, v in samples.items():
        if v.ndim == 3 and min(v.shape[1:]) >= 8:
            if reference is None:
                whole = torch.stack([dataset[i] for i in range(min(len(dataset), 256))])
                reference = dataset.denormalize(whole)
            out[f"{name}/spectrum_error"] = spectrum_error(v, reference[:, list(dataset.field_names).index(name)])
    if "a" in samples and getattr(problem, "name", None) == "darcy":
        whole = torch.stack([dataset[i] for i in range(min(len(dataset), 256))])
        a = dataset.denormalize(whole)[:, list(dataset.field_names).index("a")]
        out.update(_problem_metrics(problem, {"a": a}, "_data"))
    if not all(torch.isfinite(v).all() for v in samples.values()):
        out["nonfinite"] = True
    return out
