"""The Accelerate trainer of a diffusion prior: one code path for 1 CPU, ``accelerate launch`` and the CLI.

Determinism and distribution. The data seen at optimizer step ``s``, micro-step ``k`` is fixed by
``(seed, s, k)`` alone: the global stream of sample indices is a concatenation of per-epoch
permutations seeded by ``(seed, epoch)``, and the global micro-batch (``batch_size / grad_accum``
samples) is cut from it and split into equal contiguous parts, one per rank. The noise levels and
noise of the whole global micro-batch are drawn on every rank from a generator seeded by
``(seed, s, k)`` and each rank takes its part. So a run on ``P`` processes computes the same
gradient (up to float summation order) as a run on one, and a resumed run sees exactly the batches
and noise the uninterrupted run would have seen, without replaying the data loader.

Conditions (``model.conditioning``): the frames are cut out of the (augmented) batch, a caption is
one of the sample's phrasings, and condition dropout drops each kind per sample with its
``cfg_dropout`` probability; the phrasing and dropout draws come from a second generator seeded by
``(seed, s, k)`` (:func:`condition_generator`), over the global micro-batch like the noise.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from ..data.augment import augment
from .checkpoint import CheckpointError, load_checkpoint, load_tensors, resolve_resume, rotate_checkpoints, save_checkpoint
from .config import ConfigError, DataConfig, TrainConfig
from .ema import EMA
from .records import append_jsonl, trim_jsonl, write_json_atomic

__all__ = ["Trainer", "train", "StepBatchSampler", "LRSchedule", "load_dataset", "step_generator",
           "condition_generator", "choose_captions"]


# -- data ----------------------------------------------------------------------------------------


def load_dataset(cfg: DataConfig, accelerator: Any | None = None):
    """Open ``cfg.path`` as a normalised ``FieldDataset`` over ``fields + cond_fields``, checking it against the config.

    When the file is missing and ``cfg.generate`` is set, the main process generates it first
    with ``diffpde.data.generate_dataset(cfg.problem, **cfg.generate)``.
    """
    from ..data import FieldDataset, read_info

    if not cfg.path:
        raise ConfigError("data.path is empty: give the HDF5 dataset (made with `diffpde generate`)")
    path = Path(cfg.path)
    if not path.exists() and cfg.generate is not None:
        if not cfg.problem:
            raise ConfigError("data.generate needs data.problem (the PDE family to generate)")
        if accelerator is None or accelerator.is_main_process:
            from ..data import generate_dataset

            path.parent.mkdir(parents=True, exist_ok=True)
            generate_dataset(cfg.problem, out=path, **cfg.generate)
        if accelerator is not None:
            accelerator.wait_for_everyone()
    if not path.exists():
        raise FileNotFoundError(f"data.path: dataset file {path} does not exist; make it with `diffpde generate` "
                                "(or set data.generate)")
    info = read_info(path)
    if cfg.problem and info.problem != cfg.problem:
        raise ConfigError(f"data.problem is {cfg.problem!r} but {path} holds {info.problem!r} data")
    wanted = list(cfg.fields) + list(cfg.cond_fields)
    for name in wanted:
        if name not in info.field_names:
            which = "data.fields" if name in cfg.fields else "data.cond_fields"
            raise ConfigError(f"{which}: field {name!r} is not in the dataset {path} ({info.problem}); "
                              f"its fields are {', '.join(info.field_names)}")
    if cfg.resolution is not None and int(info.config.get("resolution", -1)) != cfg.resolution:
        raise ConfigError(f"data.resolution is {cfg.resolution} but {path} has resolution {info.config.get('resolution')}")
    if cfg.n is not None and not 1 <= cfg.n <= info.n_samples:
        raise ConfigError(f"data.n={cfg.n} but {path} holds {info.n_samples} samples")
    indices = None if cfg.n is None else range(cfg.n)
    return FieldDataset(path, wanted, normalize=True, indices=indices, in_memory=cfg.in_memory)


class StepBatchSampler(Sampler[list[int]]):
    """Rank-local index batches of micro-steps ``(step, k)`` for ``step >= start_step``, fixed by the seed.

    n:        dataset size.
    batch:    global micro-batch (all ranks); divisible by ``world``.
    """

    def __init__(self, n: int, batch: int, grad_accum: int, rank: int, world: int, seed: int,
                 start_step: int, max_steps: int) -> None:
        if batch % world:
            raise ConfigError(f"global micro-batch {batch} is not divisible by the number of processes {world}")
        self.n, self.batch, self.grad_accum, self.rank, self.world = n, batch, grad_accum, rank, world
        self.seed, self.start_step, self.max_steps = seed, start_step, max_steps
        self._perms: dict[int, np.ndarray] = {}

    def permutation(self, epoch: int) -> np.ndarray:
        """The order of the dataset in ``epoch``, seeded by ``(seed, epoch)``."""
        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.n),
                           **{e: p for e, p in self._perms.items() if e == epoch - 1}}
        return self._perms[epoch]

    def global_indices(self, step: int, micro: int) -> list[int]:
        """Indices of the global micro-batch of optimizer step ``step``, micro-step ``micro``."""
        start = (step * self.grad_accum + micro) * self.batch
        pos = np.arange(start, start + self.batch)
        return [int(self.permutation(int(e))[o]) for e, o in zip(pos // self.n, pos % self.n)]

    def __iter__(self) -> Iterator[list[int]]:
        part = self.batch // self.world
        for step in range(self.start_step, self.max_steps):
            for micro in range(self.grad_accum):
                yield self.global_indices(step, micro)[self.rank * part:(self.rank + 1) * part]

    def __len__(self) -> int:
        return max(0, self.max_steps - self.start_step) * self.grad_accum


def step_generator(seed: int, step: int, micro: int) -> torch.Generator:
    """CPU generator for the noise of micro-step ``(step, micro)``; the same on every rank."""
    state = np.random.SeedSequence([seed, step, micro, 0x6E6F697365]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def condition_generator(seed: int, step: int, micro: int) -> torch.Generator:
    """CPU generator for the condition draws (dropout, phrasings) of micro-step ``(step, micro)``.

    Separate from :func:`step_generator`, so that runs without conditions draw exactly as before.
    """
    state = np.random.SeedSequence([seed, step, micro, 0x636F6E64]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def choose_captions(captions: list[tuple[str, ...]], u: torch.Tensor) -> tuple[list[str], torch.Tensor]:
    """One phrasing per sample, ``floor(u_i * K_i)`` of its ``K_i`` phrasings; and whether it has any.

    ``u`` ``[B]`` uniform draws. A sample without a caption gets ``""`` and ``False``.
    """
    chosen = [c[min(int(float(ui) * len(c)), len(c) - 1)] if c else "" for c, ui in zip(captions, u)]
    return chosen, torch.tensor([bool(c) for c in captions], dtype=torch.bool)


# -- optimisation --------------------------------------------------------------------------------


class LRSchedule:
    """Multiplier of the base learning rate at optimizer step ``t``: linear warm-up, then constant or cosine."""

    def __init__(self, warmup_steps: int, max_steps: int, schedule: str, min_lr_ratio: float) -> None:
        self.warmup_steps, self.max_steps = int(warmup_steps), int(max_steps)
        self.schedule, self.min_lr_ratio = schedule, float(min_lr_ratio)

    def __call__(self, t: int) -> float:
        if t < self.warmup_steps:
            return (t + 1) / self.warmup_steps
        if self.schedule == "constant":
            return 1.0
        progress = min(1.0, (t - self.warmup_steps) / max(1, self.max_steps - self.warmup_steps))
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def denoising_loss(loss: Any, precond: torch.nn.Module, weight_precond: torch.nn.Module, x0: torch.Tensor,
                   sigma: torch.Tensor, noise: torch.Tensor, cond: torch.Tensor | None,
                   **conditions: Any) -> torch.Tensor:
    """Per-sample loss ``[B]`` of ``loss`` (a ``DenoisingLoss``) with given draws ``sigma`` ``[B]`` and ``noise``.

    The formula of ``DenoisingLoss.__call__`` (a test pins the two together), with the draws made
    by the caller so that they do not depend on how the batch is split over ranks. ``conditions``
    (``text``, ``frames``, ``keep``) go to ``precond`` (a :class:`~diffpde.models.conditioning.ConditionedPrecond`).
    """
    shape = (-1,) + (1,) * (x0.ndim - 1)
    denoised = precond(x0 + sigma.reshape(shape) * noise, sigma, cond=cond, **conditions)
    return (loss.weight(sigma, weight_precond).reshape(shape) * (denoised - x0) ** 2).flatten(1).mean(1)


# -- the trainer ---------------------------------------------------------------------------------


def _adamw(params, **kwargs) -> torch.optim.AdamW:
    """AdamW with the fused kernel where the device has one (5x faster steps on CPU), else the default."""
    params = list(params)
    try:
        return torch.optim.AdamW(params, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(params, **kwargs)


def _has_accelerator_device() -> bool:
    mps = getattr(torch.backends, "mps", None)
    xpu = getattr(torch, "xpu", None)
    return bool(torch.cuda.is_available() or (mps is not None and mps.is_available())
                or (xpu is not None and xpu.is_available()))


def _log_with(choice: str) -> list[str]:
    if choice == "none":
        return []
    if choice == "auto":
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            return []
    return ["tensorboard"]


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v if isinstance(v, (int, float, str, bool)) else json.dumps(v)
    return out


class Trainer:
    """Train a diffusion prior as described by a :class:`TrainConfig`.

    ``Trainer(config).fit(resume=None | "latest" | path)`` trains to ``train.max_steps`` optimizer
    steps, checkpoints, evaluates, and exports the EMA prior to ``output_dir/prior``. It must be
    constructed in every process of a launch (``accelerate launch`` or ``debug_launcher``).
    """

    def __init__(self, config: TrainConfig) -> None:
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration, set_seed

        self.config = config.validate()
        t = config.train
        # A fine-tuned text model has parameters no loss reaches (a BERT pooler): DDP must look for them.
        text = (config.model.conditioning or {}).get("text") or {}
        handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)] if text.get("trainable") else []
        self.output_dir = Path(t.output_dir)
        self.checkpoint_dir = self.output_dir / "checkpoints"
        self.accelerator = Accelerator(
            mixed_precision=t.mixed_precision,
            gradient_accumulation_steps=t.grad_accum,
            log_with=_log_with(t.log_with) or None,
            project_config=ProjectConfiguration(project_dir=str(self.output_dir), logging_dir=str(self.output_dir / "logs")),
            step_scheduler_with_optimizer=False,
            # Without cpu=True, `accelerate launch --multi_gpu` on a machine without accelerators
            # starts independent single-process runs instead of gloo ranks.
            cpu=not _has_accelerator_device(),
            kwargs_handlers=handlers,
        )
        acc = self.accelerator
        self.world = acc.num_processes
        launched = int(os.environ.get("WORLD_SIZE", "1"))
        if launched != self.world:
            raise RuntimeError(f"launched as {launched} processes but Accelerate set up {self.world}; "
                               "the ranks would train independently")
        micro = t.batch_size // t.grad_accum
        if micro % self.world:
            raise ConfigError(f"train.batch_size={t.batch_size} / train.grad_accum={t.grad_accum} = {micro} samples per "
                              f"micro-step cannot be split evenly over {self.world} processes")
        self.micro_batch = micro
        self.local_batch = micro // self.world

        set_seed(t.seed)
        self.dataset = load_dataset(config.data, acc)
        self.problem = self.dataset.problem
        bad = [a for a in t.augment if a not in getattr(self.problem, "symmetries", ())]
        if bad:
            raise ConfigError(f"train.augment: {bad} are not symmetries declared by {self.problem.name!r} "
                              f"(declared: {list(getattr(self.problem, 'symmetries', ())) or 'none'})")
        self.n_fields = len(config.data.fields)
        self.channel_fields = [*config.data.fields, *config.data.cond_fields]   # the channels of a batch
        from ..models import Prior
        from .losses import build_loss

        self.prior = Prior.from_dataset(self.dataset, config.model, fields=config.data.fields,
                                        cond_fields=config.data.cond_fields)
        self.conditioning = self.prior.conditioning
        self._check_conditions()
        self.loss = build_loss({"type": config.loss.type, **config.loss.options})
        # What is optimised: the preconditioned network, with the condition encoders when there are some.
        from ..models.conditioning import ConditionedPrecond

        precond = self.prior.precond if self.conditioning is None else ConditionedPrecond(self.prior.precond,
                                                                                           self.conditioning)
        o = config.optim
        optimizer = _adamw([p for p in precond.parameters() if p.requires_grad], lr=o.lr, betas=tuple(o.betas),
                           eps=o.eps, weight_decay=o.weight_decay)
        self.lr_schedule = LRSchedule(o.warmup_steps, t.max_steps, o.schedule, o.min_lr_ratio)
        # A plain function, so that the schedule is not stored in checkpoints: a resumed run follows
        # its own config (e.g. a longer max_steps), and the step count alone restores it.
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: self.lr_schedule(step))
        self.ema = EMA(precond, config.ema_decay_per_step, warmup=t.ema_warmup)
        self.model, self.optimizer, self.scheduler = acc.prepare(precond, optimizer, scheduler)
        self.ema.shadow.to(acc.device)   # checkpointed as ema.safetensors (save / resume), not pickled
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self.evaluations: list[dict[str, Any]] = []

    # -- pieces ----------------------------------------------------------------------------------

    def _check_conditions(self) -> None:
        """The data holds what the conditioning encoders read."""
        c = self.conditioning
        if c is None:
            return
        if "text" in c and self.dataset.captions is None:
            raise ConfigError(f"model.conditioning.text: the dataset {self.dataset.path} holds no captions "
                              "(/captions); write them with `diffpde generate`")
        if "params" in c:
            raise ConfigError("model.conditioning.params: diffpde datasets store no per-sample scalar parameters to "
                              "train on; condition on them through the text or given fields instead")
        if "frames" in c:
            missing = [f for f in c["frames"].fields if f not in self.channel_fields]
            if missing:
                raise ConfigError(f"model.conditioning.frames: field(s) {missing} are not among data.fields or "
                                  f"data.cond_fields ({self.channel_fields})")

    @property
    def unwrapped(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.model)

    def _loader(self, start_step: int) -> DataLoader:
        t = self.config.train
        sampler = StepBatchSampler(len(self.dataset), self.micro_batch, t.grad_accum, self.accelerator.process_index,
                                   self.world, t.seed, start_step, t.max_steps)
        if self.conditioning is not None and "text" in self.conditioning:
            from ..data.dataset import CaptionedDataset, collate_captioned

            return DataLoader(CaptionedDataset(self.dataset), batch_sampler=sampler, num_workers=t.num_workers,
                              persistent_workers=False, pin_memory=False, collate_fn=collate_captioned)
        return DataLoader(self.dataset, batch_sampler=sampler, num_workers=t.num_workers,
                          persistent_workers=False, pin_memory=False)

    def _conditions(self, batch: torch.Tensor, captions: list | None, step: int, micro: int) -> dict[str, Any]:
        """``{"text", "frames", "keep"}`` of a rank-local micro-batch (fields ``batch``, normalised)."""
        c, acc = self.conditioning, self.accelerator
        lo, hi = acc.process_index * self.local_batch, (acc.process_index + 1) * self.local_batch
        g = condition_generator(self.config.train.seed, step, micro)
        keep = {k: v[lo:hi].to(acc.device) for k, v in c.draw_keep(self.micro_batch, g).items()}
        out: dict[str, Any] = {"keep": keep}
        if "text" in c:
            u = torch.rand(self.micro_batch, generator=g)[lo:hi]
            out["text"], has = choose_captions(captions, u)
            keep["text"] = keep["text"] & has.to(acc.device)
        if "frames" in c:
            out["frames"] = c["frames"].select(batch, self.channel_fields)
        return out

    def _micro_step(self, batch: torch.Tensor | dict, step: int, micro: int) -> torch.Tensor:
        """Forward and backward of one rank-local micro-batch; returns its per-sample loss (detached)."""
        acc, t = self.accelerator, self.config.train
        lo, hi = acc.process_index * self.local_batch, (acc.process_index + 1) * self.local_batch
        g = step_generator(t.seed, step, micro)
        captions = batch["captions"] if isinstance(batch, dict) else None
        batch = (batch["x"] if isinstance(batch, dict) else batch).to(acc.device)
        if t.augment:   # exact symmetries of the problem, sign changes applied to the physical fields
            batch = augment(batch, t.augment, g, lo, self.micro_batch, problem=self.problem,
                            fields=self.channel_fields, normalizer=self.dataset.normalizer)
        x0 = self.prior.representation.encode(batch[:, :self.n_fields])
        cond = self.prior.cond_latent(batch[:, self.n_fields:]) if batch.shape[1] > self.n_fields else None
        # Draws for the whole global micro-batch, so that they do not depend on the number of ranks.
        sigma = self.loss.sample_sigma(self.micro_batch, x0, g)[lo:hi]
        noise = torch.randn((self.micro_batch, *x0.shape[1:]), generator=g)[lo:hi].to(acc.device)
        conditions = {} if self.conditioning is None else self._conditions(batch, captions, step, micro)
        per_sample = denoising_loss(self.loss, self.model, self.unwrapped, x0, sigma, noise, cond, **conditions)
        acc.backward(per_sample.mean())
        return per_sample.detach()

    def save(self) -> Path:
        """Checkpoint at the current step (every rank must call this)."""
        t, d = self.config.train, self.config.debug
        path = save_checkpoint(self.accelerator, self.checkpoint_dir, self.step,
                               extra={"samples_seen": self.step * t.batch_size, "config": self.config.to_dict()},
                               kill_before_marker=d.kill_during_checkpoint == self.step,
                               tensors={"ema": self.ema.state_dict()})
        if self.accelerator.is_main_process:
            rotate_checkpoints(self.checkpoint_dir, t.keep_checkpoints)
        self.accelerator.wait_for_everyone()
        return path

    def resume(self, resume: str | Path) -> Path:
        """Restore model, optimizer, scheduler, EMA and RNG states from ``"latest"`` or a checkpoint path."""
        path = resolve_resume(resume, self.checkpoint_dir)
        info = load_checkpoint(self.accelerator, path)
        try:
            self.ema.load_state_dict(load_tensors(path, "ema"))
        except ValueError as e:  # CheckpointError, or a state that does not fit the model
            raise CheckpointError(f"checkpoint {path}: EMA state could not be loaded: {e}") from e
        self.step = int(info["step"])
        if "config" in info and self.accelerator.is_main_process:
            old, new = _flat(info["config"]), _flat(self.config.to_dict())
            changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
            if changed:
                print(f"resuming {path} with a changed config: " + ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}"
                                                                           for k in changed), flush=True)
        return path

    def ema_prior(self):
        """The prior with the EMA weights (shares everything but the preconditioned network)."""
        from ..models import Prior

        p, shadow = self.prior, self.ema.shadow
        precond, conditioning = (shadow, None) if self.conditioning is None else (shadow.precond, shadow.conditioning)
        return Prior(precond, p.fields, p.grid_shape, cond_fields=p.cond_fields, param_names=p.param_names,
                     normalizer=p.normalizer, representation=p.representation, problem=p.problem_config,
                     sigma_min=p.sigma_min, sigma_max=p.sigma_max, conditioning=conditioning,
                     cond_representation=p.cond_representation).eval()

    def evaluate(self) -> dict[str, Any] | None:
        """Sample with the EMA prior and compare with the data (main process; others wait)."""
        from .evaluation import evaluate_prior

        result = None
        if self.accelerator.is_main_process:
            e = self.config.eval
            result = {"step": self.step, **evaluate_prior(self.ema_prior(), self.dataset, n_samples=e.n_samples,
                                                          solver=e.solver, steps=e.steps, seed=e.seed)}
            self.evaluations.append(result)
            self.accelerator.log({f"eval/{k}": v for k, v in _flat(result).items()
                                  if isinstance(v, (int, float)) and k != "step"}, step=self.step)
            append_jsonl(self.output_dir / "eval.jsonl", result)
        self.accelerator.wait_for_everyone()
        return result

    def export(self) -> Path:
        """Save the EMA prior to ``output_dir/prior`` atomically (main process)."""
        final = self.output_dir / "prior"
        if self.accelerator.is_main_process:
            tmp = self.output_dir / ".tmp_prior"
            shutil.rmtree(tmp, ignore_errors=True)
            self.ema_prior().save_pretrained(tmp)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
        self.accelerator.wait_for_everyone()
        return final

    # -- the loop --------------------------------------------------------------------------------

    def fit(self, resume: str | Path | None = None) -> dict[str, Any]:
        """Train from scratch or from ``resume``; returns a summary (also written to ``output_dir/result.json``)."""
        from tqdm.auto import tqdm

        acc, t, d = self.accelerator, self.config.train, self.config.debug
        resumed_from = None
        if resume is not None:
            resumed_from = str(self.resume(resume))
        main = acc.is_main_process
        if main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            for log in ("log.jsonl", "eval.jsonl"):   # the records of steps after the checkpoint are redone
                trim_jsonl(self.output_dir / log, self.step)
            write_json_atomic(self.output_dir / "run.json",
                              {"world_size": self.world, "local_batch": self.local_batch, "resumed_from": resumed_from,
                               "start_step": self.step, "num_parameters": sum(p.numel() for p in self.unwrapped.parameters()),
                               "config": self.config.to_dict()}, indent=1)
        acc.init_trackers("diffpde", config=_flat(self.config.to_dict()))
        bar = tqdm(total=t.max_steps, initial=self.step, disable=not (main and t.progress), desc="train",
                   dynamic_ncols=True)
        loader = iter(self._loader(self.step))
        window_loss, window_n, window_t0 = torch.zeros(()), 0, time.perf_counter()
        step_times = []
        self.model.train()
        while self.step < t.max_steps:
            t0 = time.perf_counter()
            for micro in range(t.grad_accum):
                batch = next(loader)
                with acc.accumulate(self.model):
                    per_sample = self._micro_step(batch, self.step, micro)
                    if acc.sync_gradients:
                        grad_norm = self._clip()
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                window_loss += per_sample.sum().cpu()
                window_n += per_sample.numel()
            self.scheduler.step()
            self.ema.update(self.unwrapped)
            self.step += 1
            step_times.append(time.perf_counter() - t0)
            bar.update(1)
            if self.step % t.log_every == 0 or self.step == t.max_steps:
                stats = acc.reduce(torch.stack([window_loss, torch.tensor(float(window_n))]).to(acc.device), "sum").cpu()
                elapsed = time.perf_counter() - window_t0
                record = {"step": self.step, "loss": float(stats[0] / stats[1]), "grad_norm": float(grad_norm),
                          "lr": self.scheduler.get_last_lr()[0], "samples_per_s": float(stats[1]) / elapsed,
                          "world_size": self.world}
                self.history.append(record)
                acc.log({f"train/{k}": v for k, v in record.items() if k not in ("step", "world_size")}, step=self.step)
                if main:
                    bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}")
                    append_jsonl(self.output_dir / "log.jsonl", record)
                window_loss, window_n, window_t0 = torch.zeros(()), 0, time.perf_counter()
            # Evaluate before checkpointing: a checkpoint at step s implies that eval.jsonl holds step s.
            if t.eval_every and self.step % t.eval_every == 0 and self.step < t.max_steps:
                self.evaluate()
            if t.checkpoint_every and self.step % t.checkpoint_every == 0:
                self.save()
                if d.kill_after_checkpoint == self.step and main:
                    os.kill(os.getpid(), signal.SIGKILL)
        bar.close()
        final_eval = self.evaluate()
        prior_dir = self.export()
        if d.dump_rank_weights:
            from safetensors.torch import save_file

            save_file({k: v.detach().cpu().contiguous() for k, v in self.unwrapped.state_dict().items()},
                      str(self.output_dir / f"rank_{acc.process_index}.safetensors"))
        summary = {"step": self.step, "world_size": self.world, "resumed_from": resumed_from,
                   "prior": str(prior_dir), "history": self.history, "evaluation": final_eval}
        if main:
            write_json_atomic(self.output_dir / "result.json", summary, indent=1)
        summary["step_times"] = step_times  # seconds per optimizer step (benchmarks)
        acc.end_training()
        return summary

    def _clip(self) -> torch.Tensor:
        clip = self.config.optim.grad_clip
        if clip is not None:
            return self.accelerator.clip_grad_norm_(self.model.parameters(), clip)
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])) if grads else torch.zeros(())


def train(config: TrainConfig, resume: str | Path | None = None) -> dict[str, Any]:
    """Build a :class:`Trainer` and run it; the entry point of ``scripts/train.py`` and ``diffpde train``."""
    return Trainer(config).fit(resume=resume)
