"""Super-resolution prior ``p(fine | coarse)`` on any grid, chained to reach ``2**k`` times a resolution.

A :class:`SuperResolver` is a :class:`~diffpde.models.prior.Prior` trained on
:class:`~diffpde.data.pairs.SuperResolutionPairs` plus the :class:`SuperResolutionSpec` that says
how its pairs were made. Its generated field is the residual ``(fine - up(coarse)) / s`` (or the
fine field itself), its conditioning fields are what :func:`~diffpde.data.pairs.conditions`
computes from the coarse field alone (the upsampled coarse field, the coarse-point mask, the
scaled details the interpolation misses), all on the fine grid. The network (a UNet without
attention) is convolutional, so the prior runs on grids of any size although it was trained on
small crops: :meth:`SuperResolver.refine` binds the conditions of a coarse field into a denoiser of
the fine grid that evaluates the network on overlapping windows of the training crop and blends
them (its GroupNorm then sees the statistics it was trained with; periodic axes wrap around), and
runs any solver of :mod:`samplers` with any number of steps; :meth:`SuperResolver.superresolve`
chains refinements with independent factors per axis.

On disk: the prior's ``config.json`` and ``model.safetensors`` and the spec in ``superres.json``
(:meth:`SuperResolver.save_pretrained`, :meth:`SuperResolver.from_pretrained`).

Training: :func:`train_superres` is a plain loop (AdamW, warm-up and cosine decay, EDM-type loss,
EMA) on one device. It stands in for :class:`~diffpde.training.trainer.Trainer` until that takes a
pair dataset from the config (``data.pairs``); :func:`train_from_config` reads a config
(``configs/burgers_sr.yaml``: the usual sections plus ``superres``).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from ..data.pairs import cond_names, conditions, coarse_mask
from .prior import Prior
from .representation import Identity

Tensor = torch.Tensor

SPEC_NAME = "superres.json"

__all__ = ["SPEC_NAME", "SuperResolutionSpec", "SuperResolver", "plan_factors", "train_superres",
           "load_superres_config", "train_from_config"]


@dataclass
class SuperResolutionSpec:
    """How the pairs of a super-resolution prior were made (see :class:`~diffpde.data.pairs.SuperResolutionPairs`)."""

    field: str
    target: str                      # "residual" or "field"
    scale: str                       # "local", "global" or "none"
    dims: tuple[str, ...]
    kinds: tuple[str, ...]           # "periodic" / "interval" per axis
    factors: tuple[tuple[int, ...], ...]   # the per-axis refinement factors trained on
    upsample: tuple[str, ...]        # interpolation of the coarse field, per axis
    downsample: str = "subsample"    # periodic axes: "subsample" or "spectral"
    levels: tuple[int, ...] = ()
    crop: tuple[int, ...] = ()
    source: dict[str, Any] = field(default_factory=dict)   # path, problem config and grid of the training data
    radius: int = 8                  # box of the local scale (coarse points)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SuperResolutionSpec":
        tup = lambda v: tuple(tuple(x) if isinstance(x, list) else x for x in v)   # noqa: E731
        return cls(d["field"], d["target"], d["scale"], tuple(d["dims"]), tuple(d["kinds"]), tup(d["factors"]),
                   tuple(d["upsample"]), d.get("downsample", "subsample"), tuple(d.get("levels", ())),
                   tuple(d.get("crop", ())), dict(d.get("source") or {}), int(d.get("radius", 8)))

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))

    @property
    def target_name(self) -> str:
        return f"{self.field}_residual" if self.target == "residual" else self.field

    @property
    def cond_names(self) -> tuple[str, ...]:
        return cond_names(self.field, self.dims, self.scale)


def plan_factors(total: Sequence[int], step: int = 2) -> list[tuple[int, ...]]:
    """Per-step factors that refine by ``total`` per axis (powers of ``step``), ``step`` on every axis still to refine.

    ``plan_factors((4, 2))`` is ``[(2, 2), (2, 1)]``: two refinements in time, one in space.
    """
    counts = []
    for f in total:
        k = round(math.log(f, step)) if f >= 1 else -1
        if k < 0 or step**k != f:
            raise ValueError(f"each total factor must be a power of {step}, got {list(total)}")
        counts.append(k)
    return [tuple(step if i < k else 1 for k in counts) for i in range(max(counts, default=0))]


class SuperResolver:
    """A conditional prior ``p(fine | coarse)`` that runs on any grid (module docstring).

    prior: a :class:`Prior` whose field is ``spec.target_name``, whose conditioning fields are
           ``spec.cond_names`` and whose representation is the identity (the only one that is
           defined on every grid).
    spec:  how the pairs were made.
    """

    def __init__(self, prior: Prior, spec: SuperResolutionSpec) -> None:
        if tuple(prior.fields) != (spec.target_name,) or tuple(prior.cond_fields) != spec.cond_names:
            raise ValueError(f"the prior generates {list(prior.fields)} given {list(prior.cond_fields)}, but the "
                             f"super-resolution spec needs {[spec.target_name]} given {list(spec.cond_names)}")
        reps = (prior.representation, getattr(prior, "cond_representation", Identity()))
        if not all(isinstance(r, Identity) for r in reps):
            raise ValueError("a super-resolution prior must diffuse in the identity representation and take its "
                             f"conditions in it (it runs on any grid), got {[type(r).__name__ for r in reps]}")
        if prior.normalizer is None:
            raise ValueError("a super-resolution prior needs a normaliser (of its target and its conditions)")
        self.prior, self.spec = prior, spec

    # -- building and persistence ------------------------------------------------------------------

    @classmethod
    def from_pairs(cls, pairs: Any, model: Mapping[str, Any] | Any, **kwargs: Any) -> "SuperResolver":
        """A fresh (untrained) resolver for a :class:`~diffpde.data.pairs.SuperResolutionPairs` dataset."""
        prior = Prior.from_dataset(pairs, model, fields=(pairs.target_name,), cond_fields=pairs.cond_names, **kwargs)
        return cls(prior, SuperResolutionSpec.from_dict(pairs.spec()))

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """The prior's files and ``superres.json`` (written to a temporary name, then renamed)."""
        directory = self.prior.save_pretrained(directory)
        tmp = directory / f".{SPEC_NAME}.tmp"
        tmp.write_text(json.dumps(self.spec.to_dict(), indent=2) + "\n")
        os.replace(tmp, directory / SPEC_NAME)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device: str | torch.device = "cpu") -> "SuperResolver":
        """Load a resolver saved by :meth:`save_pretrained` (checked like any prior)."""
        path = Path(directory) / SPEC_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{directory}: no {SPEC_NAME}; not a super-resolution prior")
        spec = SuperResolutionSpec.from_dict(json.loads(path.read_text()))
        return cls(Prior.from_pretrained(directory, device), spec)

    # -- sampling ------------------------------------------------------------------------------

    def denoiser(self, cond: Tensor, tile: Sequence[int] | None = None, stride: Sequence[int] | None = None,
                 halo: int = 8) -> Callable[[Tensor, Tensor], Tensor]:
        """``D(z, sigma)`` on the fine grid of ``cond`` ``[B, C, *fine]`` (physical units, from
        :func:`~diffpde.data.pairs.conditions`).

        tile:   evaluate the network on windows of this size (the training crop) every ``stride``
                points (default 3/4 of the window; periodic axes wrap around, interval axes end on
                a window at the last point) and blend them with weights that fall to the window's
                edges. The network normalises its activations over the window it sees (GroupNorm),
                so windows of the training size give it the statistics it was trained with; on a
                much larger grid a shock is diluted among smooth regions and the network overshoots.
        halo:   without ``tile``: the whole grid at once, periodic axes padded circularly by ``halo``.
        """
        prior = self.prior
        c = prior.normalizer.select(prior.cond_fields).normalize(cond).to(prior.device, torch.float32)
        c = prior.cond_latent(c)
        kinds = self.spec.kinds
        lead = c.ndim - len(kinds)
        grid = tuple(c.shape[lead:])
        if tile is None:
            return self._whole_grid_denoiser(c, halo)
        tile = tuple(min(int(w), n) for w, n in zip(tile, grid))
        stride = tuple(max(1, 3 * w // 4) for w in tile) if stride is None else tuple(int(v) for v in stride)
        axes = []   # per axis: the index windows and the blending weights
        for n, w, st, k in zip(grid, tile, stride, kinds):
            if k == "periodic":
                starts = list(range(0, n, st)) if w < n else [0]
            else:
                starts = list(range(0, n - w + 1, st))
                starts += [n - w] if starts[-1] != n - w else []
            idx = torch.stack([(s0 + torch.arange(w)) % n for s0 in starts])
            weight = torch.sin(math.pi * (torch.arange(w) + 0.5) / w) ** 2 + 1e-3
            axes.append((idx, weight))
        # flat indices [n_win, *tile] of every window into the flattened grid, and the weights [*tile]
        flat, weight = torch.zeros(1, dtype=torch.long), torch.ones(())
        for d, (idx, wgt) in enumerate(axes):
            step = math.prod(grid[d + 1:])
            flat = flat[:, None, ..., None] + step * idx.reshape(1, idx.shape[0], *([1] * d), idx.shape[1])
            flat = flat.reshape(-1, *tile[:d + 1])
            weight = weight[..., None] * wgt
        flat, weight = flat.reshape(flat.shape[0], -1).to(c.device), weight.reshape(-1).to(c.device)
        norm = torch.zeros(math.prod(grid), device=c.device)
        norm.index_add_(0, flat.reshape(-1), weight.repeat(flat.shape[0]))
        n_win = flat.shape[0]

        def windows(x: Tensor) -> Tensor:   # [B, C, *grid] -> [B * n_win, C, *tile]
            b, ch = x.shape[:2]
            g = x.reshape(b, ch, -1)[:, :, flat.reshape(-1)].reshape(b, ch, n_win, *tile)
            return g.movedim(2, 1).reshape(b * n_win, ch, *tile)

        cw = windows(c)

        def denoise(z: Tensor, sigma: Tensor) -> Tensor:
            b, ch = z.shape[:2]
            cb = cw if cw.shape[0] == b * n_win else windows(c.expand(b, *c.shape[1:]))
            sig = torch.as_tensor(sigma, device=z.device).reshape(-1).expand(b).repeat_interleave(n_win)
            out = prior.precond(windows(z.float()), sig, cond=cb)
            out = out.reshape(b, n_win, ch, -1).movedim(1, 2) * weight
            acc = torch.zeros(b, ch, math.prod(grid), device=z.device)
            acc.index_add_(2, flat.reshape(-1), out.reshape(b, ch, -1))
            return (acc / norm).reshape(z.shape).to(z.dtype)

        return denoise

    def _whole_grid_denoiser(self, c: Tensor, halo: int) -> Callable[[Tensor, Tensor], Tensor]:
        prior = self.prior
        lead = c.ndim - len(self.spec.kinds)
        periodic = [lead + i for i, k in enumerate(self.spec.kinds) if k == "periodic" and halo > 0]
        if any(halo > c.shape[d] for d in periodic):
            raise ValueError(f"halo {halo} is larger than a periodic axis of the grid {tuple(c.shape[lead:])}")

        def pad(x: Tensor) -> Tensor:
            for d in periodic:
                x = torch.cat([x.narrow(d, x.shape[d] - halo, halo), x, x.narrow(d, 0, halo)], d)
            return x

        def crop(x: Tensor) -> Tensor:
            for d in periodic:
                x = x.narrow(d, halo, x.shape[d] - 2 * halo)
            return x

        cp = pad(c)

        def denoise(z: Tensor, sigma: Tensor) -> Tensor:
            cb = cp if cp.shape[0] == z.shape[0] else cp.expand(z.shape[0], *cp.shape[1:])
            return crop(prior.precond(pad(z.float()), sigma, cond=cb)).to(z.dtype)

        return denoise

    @torch.no_grad()
    def refine(self, coarse: Tensor, factors: Sequence[int], *, solver: str = "dpmpp_2m", steps: int = 20,
               schedule: str = "karras", generator: torch.Generator | None = None, shape: Sequence[int] | None = None,
               keep_coarse: bool | None = None, tile: Sequence[int] | str | None = "crop", halo: int = 8,
               **options: Any) -> Tensor:
        """One refinement: ``coarse`` ``[B, *grid]`` (physical units) -> a sample of the fine field ``[B, *fine]``.

        factors:     per axis, one of the factors the prior was trained on.
        solver, steps, schedule: any solver of :mod:`samplers` on the prior's sigma grid; ``options``
                     go to ``samplers.sample`` (``stats=`` receives the NFE).
        shape:       the fine grid (default ``n f`` on periodic, ``f (n - 1) + 1`` points on interval axes).
        keep_coarse: put the coarse values back at the coarse points (default: when the pairs were
                     subsampled, so that the coarse values are point values of the fine field).
        tile, halo:  how the network covers the grid (:meth:`denoiser`); ``"crop"``: windows of the
                     training crop, ``None``: the whole grid at once.
        """
        import samplers

        spec = self.spec
        factors = tuple(int(f) for f in factors)
        if factors not in spec.factors:
            raise ValueError(f"factors {list(factors)} were not trained; the prior knows "
                             f"{[list(f) for f in spec.factors]}")
        coarse = torch.as_tensor(coarse)
        if coarse.ndim == len(spec.kinds):
            coarse = coarse[None]
        if coarse.ndim != len(spec.kinds) + 1 or not torch.isfinite(coarse).all():
            raise ValueError(f"coarse must be a finite [B, {', '.join(spec.dims)}] field, "
                             f"got shape {tuple(coarse.shape)}")
        up, cond, s = conditions(coarse.to(torch.float64), factors, spec.kinds, spec.upsample, shape, spec.scale,
                                 spec.radius)
        prior = self.prior
        sigmas = prior.sigmas(steps, schedule)
        size = (up.shape[0], 1, *up.shape[1:])
        noise = torch.randn(size, generator=generator, device=generator.device if generator is not None else "cpu")
        was_training = prior.training
        prior.eval()
        try:
            denoiser = self.denoiser(cond, spec.crop if tile == "crop" else tile, halo=halo)
            z = samplers.sample(denoiser, noise.to(prior.device) * float(sigmas[0]), sigmas,
                                solver=solver, generator=generator, **options)
        finally:
            prior.train(was_training)
        out = prior.normalizer.select(prior.fields).denormalize(z.to(torch.float64).cpu())[:, 0]
        if spec.target == "residual":
            out = up + s * out
        if keep_coarse if keep_coarse is not None else spec.downsample == "subsample":
            mask = coarse_mask(out.shape[1:], factors, dtype=torch.bool)
            out = torch.where(mask, up, out)
        return out

    def superresolve(self, coarse: Tensor, factors: Sequence[Sequence[int]] | Sequence[int],
                     **kwargs: Any) -> list[Tensor]:
        """Chained refinements: ``factors`` is a list of per-step factors, or the total per axis
        (split by :func:`plan_factors`). Returns the field after each step; ``kwargs`` go to :meth:`refine`."""
        factors = list(factors)
        if factors and not isinstance(factors[0], (list, tuple)):
            factors = plan_factors(factors)
        out, x = [], coarse
        for f in factors:
            x = self.refine(x, f, **kwargs)
            out.append(x)
        return out


# -- training (until the trainer takes pair datasets) ---------------------------------------------


def train_superres(resolver: SuperResolver, pairs: Any, *, steps: int, batch_size: int = 16, lr: float = 5e-4,
                   betas: Sequence[float] = (0.9, 0.999), weight_decay: float = 0.0, warmup_steps: int = 50,
                   schedule: str = "cosine", min_lr_ratio: float = 0.1, grad_clip: float | None = 1.0,
                   ema_decay: float = 0.993,
                   loss: Mapping[str, Any] | None = None, seed: int = 0, log_every: int = 50,
                   output_dir: str | os.PathLike | None = None, save_every: int = 0, num_workers: int = 0,
                   device: str | torch.device | None = None, progress: bool = True) -> tuple[SuperResolver, list[dict]]:
    """Train ``resolver``'s network on ``pairs`` for ``steps`` AdamW steps; returns the EMA resolver and the log.

    Learning rate: linear warm-up, then constant or (``schedule="cosine"``) cosine decay to
    ``min_lr_ratio * lr``. The loss is ``build_loss(loss)`` (default EDM) on the target channel, the
    other channels given as ``cond``.
    With ``output_dir`` the EMA resolver is exported to ``output_dir/prior`` every ``save_every``
    steps and at the end, and the log to ``output_dir/log.jsonl``.
    """
    from torch.utils.data import DataLoader, RandomSampler
    from tqdm.auto import tqdm

    from ..training.ema import EMA
    from ..training.losses import build_loss

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    prior = resolver.prior.to(device).train()
    precond = prior.precond
    criterion = build_loss(dict(loss or {"type": "edm"}))
    try:   # the fused kernel where the device has one (several times faster steps on CPU)
        opt = torch.optim.AdamW(precond.parameters(), lr=lr, betas=tuple(betas), weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):
        opt = torch.optim.AdamW(precond.parameters(), lr=lr, betas=tuple(betas), weight_decay=weight_decay)

    def lr_at(t: int) -> float:
        if t < warmup_steps:
            return (t + 1) / warmup_steps
        if schedule == "constant":
            return 1.0
        p = min(1.0, (t - warmup_steps) / max(1, steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    ema = EMA(precond, ema_decay)
    g = torch.Generator().manual_seed(seed)
    sampler = RandomSampler(pairs, replacement=True, num_samples=steps * batch_size, generator=g)
    loader = DataLoader(pairs, batch_size=batch_size, sampler=sampler, num_workers=num_workers, drop_last=True)
    out = Path(output_dir) if output_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    history, window, t0 = [], [], time.perf_counter()

    def export() -> SuperResolver:
        p = prior
        ema_prior = Prior(ema.shadow, p.fields, p.grid_shape, cond_fields=p.cond_fields, param_names=p.param_names,
                          normalizer=p.normalizer, representation=p.representation, problem=p.problem_config,
                          sigma_min=p.sigma_min, sigma_max=p.sigma_max,
                          cond_representation=p.cond_representation).eval()
        trained = SuperResolver(ema_prior, resolver.spec)
        if out is not None:
            trained.save_pretrained(out / "prior")
        return trained

    bar = tqdm(total=steps, disable=not progress, desc="train superres", dynamic_ncols=True)
    for step, batch in enumerate(loader, start=1):
        batch = batch.to(device)
        x0, cond = prior.representation.encode(batch[:, :1]), prior.cond_latent(batch[:, 1:])
        per_sample = criterion(precond, x0, cond=cond, generator=g)
        opt.zero_grad(set_to_none=True)
        per_sample.mean().backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(precond.parameters(), grad_clip if grad_clip else float("inf"))
        opt.step()
        sched.step()
        ema.update(precond)
        window.append(float(per_sample.detach().mean()))
        bar.update(1)
        if step % log_every == 0 or step == steps:
            record = {"step": step, "loss": sum(window) / len(window), "grad_norm": float(grad_norm),
                      "lr": sched.get_last_lr()[0], "seconds": time.perf_counter() - t0}
            history.append(record)
            window = []
            bar.set_postfix(loss=f"{record['loss']:.4f}")
            if out is not None:
                with open(out / "log.jsonl", "a") as f:
                    f.write(json.dumps(record) + "\n")
        if save_every and step % save_every == 0 and step < steps:
            export()
    bar.close()
    return export(), history


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


SUPERRES_KEYS = ("levels", "factors", "crop", "upsample", "downsample", "target", "scale", "radius",
                 "pairs_per_sample", "stats_items")


def load_superres_config(path: str | os.PathLike, variant: str | None = None,
                         overrides: Sequence[str] = ()) -> tuple[Any, dict[str, Any]]:
    """A super-resolution config: the training sections (a :class:`~diffpde.training.config.TrainConfig`,
    validated) and the ``superres`` section (keys :data:`SUPERRES_KEYS`), with a variant (``a+b``)
    and overrides ``section.key=value`` (``superres.levels=[0,1]`` included) applied."""
    from ..training.config import ConfigError, load_config, load_yaml, parse_overrides

    raw = load_yaml(path) or {}
    if "base" in raw:
        raise ConfigError(f"{path}: a super-resolution config is self-contained (no base)")
    sr = dict(raw.pop("superres", None) or {})
    variants = {k: dict(v or {}) for k, v in (raw.pop("variants", None) or {}).items()}
    for name in (variant.split("+") if variant else []):
        if name not in variants:
            raise ConfigError(f"{path}: unknown variant {name!r}; variants: {', '.join(variants) or 'none'}")
        sr = _merge(sr, variants[name].pop("superres", None) or {})
    rest = []
    for (keys, value), item in zip(parse_overrides(overrides), overrides):
        if keys[0] == "superres":
            if len(keys) != 2:
                raise ConfigError(f"override {item!r}: expected superres.<key>=value")
            sr[keys[1]] = value
        else:
            rest.append(item)
    unknown = sorted(set(sr) - set(SUPERRES_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown} in section 'superres'; "
                          f"known keys: {', '.join(SUPERRES_KEYS)}")
    cfg = load_config(None, rest, variant=variant, base={**raw, "variants": variants})
    return cfg, sr


def train_from_config(path: str | os.PathLike, variant: str | None = None, overrides: Sequence[str] = (),
                      progress: bool = True) -> tuple[SuperResolver, list[dict]]:
    """Generate the data if missing (``data.generate``), build the pairs and the prior, train, and
    export to ``train.output_dir/prior``."""
    from ..data.pairs import SuperResolutionPairs

    cfg, sr = load_superres_config(path, variant, overrides)
    data, t, o = cfg.data, cfg.train, cfg.optim
    if not Path(data.path).exists() and data.generate is not None:
        from ..data import generate_dataset

        Path(data.path).parent.mkdir(parents=True, exist_ok=True)
        generate_dataset(data.problem, out=data.path, **data.generate)
    pairs = SuperResolutionPairs(data.path, data.fields[0], seed=t.seed,
                                 indices=None if data.n is None else range(data.n), **sr)
    resolver = SuperResolver.from_pairs(pairs, cfg.model)
    return train_superres(resolver, pairs, steps=t.max_steps, batch_size=t.batch_size, lr=o.lr, betas=o.betas,
                          weight_decay=o.weight_decay, warmup_steps=o.warmup_steps, schedule=o.schedule,
                          min_lr_ratio=o.min_lr_ratio,
                          grad_clip=o.grad_clip, ema_decay=cfg.ema_decay_per_step,
                          loss={"type": cfg.loss.type, **cfg.loss.options}, seed=t.seed, log_every=t.log_every,
                          output_dir=t.output_dir, save_every=t.checkpoint_every, num_workers=t.num_workers,
                          progress=progress and t.progress)
