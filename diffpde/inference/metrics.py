"""Accuracy and calibration metrics of posterior ensembles against the truth.

All functions take an ensemble ``samples [B, K, *grid]`` and/or the truth ``[B, *grid]`` and return
one value per instance ``[B]``; :func:`evaluate` collects them per field.
"""

from __future__ import annotations

from typing import Mapping

import torch

Tensor = torch.Tensor


def _flat(t: Tensor, lead: int) -> Tensor:
    return t.reshape(*t.shape[:lead], -1).to(torch.float64)


def relative_l2(estimate: Tensor, truth: Tensor) -> Tensor:
    """``||estimate - truth|| / ||truth||`` per instance."""
    e, t = _flat(estimate, 1), _flat(truth, 1)
    return (e - t).norm(dim=1) / t.norm(dim=1).clamp_min(1e-30)


def sample_relative_l2(samples: Tensor, truth: Tensor) -> Tensor:
    """Mean over the ensemble of the single-sample relative L2 error, per instance."""
    s, t = _flat(samples, 2), _flat(truth, 1).unsqueeze(1)
    return ((s - t).norm(dim=2) / t.norm(dim=2).clamp_min(1e-30)).mean(1)


def threshold_error_rate(estimate: Tensor, truth: Tensor, low: float, high: float) -> Tensor:
    """Fraction of cells whose binary class (``low`` / ``high``, split at the midpoint) is wrong.

    This is DiffusionPDE's error rate for the two-phase Darcy permeability.
    """
    mid = 0.5 * (low + high)
    return ((_flat(estimate, 1) > mid) != (_flat(truth, 1) > mid)).to(torch.float64).mean(1)


def crps(samples: Tensor, truth: Tensor) -> Tensor:
    """Fair (unbiased) ensemble CRPS averaged over cells, per instance.

    ``CRPS = mean_i |X_i - y| - 1 / (2 K (K - 1)) sum_{i,j} |X_i - X_j|``, exact in expectation for
    any ensemble size ``K >= 2`` (Ferro 2014). Computed in ``O(K log K)`` per cell from sorted members.
    """
    s, t = _flat(samples, 2), _flat(truth, 1).unsqueeze(1)
    k = s.shape[1]
    if k < 2:
        raise ValueError("the fair CRPS needs at least 2 ensemble members")
    skill = (s - t).abs().mean(1)
    srt = s.sort(dim=1).values
    weights = (2 * torch.arange(1, k + 1, dtype=torch.float64, device=s.device) - k - 1).reshape(1, k, 1)
    spread = (weights * srt).sum(1) * 2 / (k * (k - 1))   # mean over i != j of |X_i - X_j|
    return (skill - 0.5 * spread).mean(1)


def spread_skill(samples: Tensor, truth: Tensor) -> Tensor:
    """Spread-skill ratio ``sqrt((K+1)/K) * RMS(ensemble std) / RMSE(ensemble mean)``; 1 when calibrated."""
    s, t = _flat(samples, 2), _flat(truth, 1)
    k = s.shape[1]
    spread = s.var(1, unbiased=True).mean(1).sqrt()
    skill = (s.mean(1) - t).pow(2).mean(1).sqrt()
    return ((k + 1) / k) ** 0.5 * spread / skill.clamp_min(1e-30)


def coverage(samples: Tensor, truth: Tensor, level: float) -> Tensor:
    """Fraction of cells whose truth lies in the ensemble's central ``level`` interval, per instance.

    Computed from the rank of the truth among the ``K`` members (its PIT value): for a calibrated
    ensemble the rank is uniform on ``0..K``, so the truth falls in ``[r, r + 1] / (K + 1)`` and
    the expected overlap of that cell with ``[(1 - level) / 2, (1 + level) / 2]`` is exactly
    ``level`` at any ``K``. (Quantiles of a small ensemble cover less: the interval between order
    statistics ``i < j`` covers ``(j - i) / (K + 1)``, e.g. 0.72 for a nominal 90 % at ``K = 8``.)
    Ties (e.g. two-phase fields) spread the rank uniformly over the tied members.
    """
    s, t = _flat(samples, 2), _flat(truth, 1).unsqueeze(1)
    k = s.shape[1]
    below = (s < t).sum(1).to(torch.float64)
    tied = (s == t).sum(1).to(torch.float64)
    lo_pit, hi_pit = below / (k + 1), (below + tied + 1) / (k + 1)
    lo, hi = (1 - level) / 2, (1 + level) / 2
    overlap = (torch.minimum(hi_pit, torch.tensor(hi)) - torch.maximum(lo_pit, torch.tensor(lo))).clamp_min(0)
    return (overlap / (hi_pit - lo_pit)).mean(1)


def evaluate(samples: Mapping[str, Tensor], truth: Mapping[str, Tensor], *,
             binary: Mapping[str, tuple[float, float]] | None = None, mask: Mapping[str, Tensor] | None = None) -> dict[str, dict[str, Tensor]]:
    """All metrics per field: ``{field: {metric: [B]}}``.

    binary: fields with two phases ``(low, high)`` also get ``error_rate`` (a PDE family declares
            them: ``PDE.two_phase_fields()``).
    mask:   optional boolean ``[*grid]`` per field of cells to leave out (e.g. the observed ones).
    """
    out: dict[str, dict[str, Tensor]] = {}
    for name, s in samples.items():
        if name not in truth:
            continue
        t = truth[name].to(s)
        if mask is not None and name in mask:
            keep = ~mask[name].to(torch.bool).flatten()
            s, t = _flat(s, 2)[..., keep], _flat(t, 1)[..., keep]
        m = {"rel_l2": relative_l2(s.mean(1), t), "sample_rel_l2": sample_relative_l2(s, t)}
        if s.shape[1] >= 2:
            m.update(crps=crps(s, t), spread_skill=spread_skill(s, t),
                     coverage50=coverage(s, t, 0.5), coverage90=coverage(s, t, 0.9))
        if binary and name in binary:
            m["error_rate"] = threshold_error_rate(s.mean(1), t, *binary[name])
        out[name] = m
    return out
