"""Posterior sampling of many instances: per-instance seeds, batches, and processes.

Seeding. Every random draw is tied to the instance it belongs to, never to a generator that runs
across instances, so a result depends on the seed and the batch size but not on which other
instances are processed, nor on the number of processes:

- the measurement noise of instance ``i`` (its index in the dataset, or its row in an
  observations file) is drawn from a generator seeded with ``derived_seed(seed, "noise", i)``
  (:func:`measure`);
- the instances are sampled in batches of ``batch`` consecutive instances of the global order;
  the batch that starts with instance ``i`` draws its initial and solver noise from a generator
  seeded with ``derived_seed(seed, "sampling", i)``. A batch is sampled as one ensemble (its
  random draws are shared; the likelihood's noise floor is per instance), so its numbers depend on the batch
  size, not on the other batches.

Processes. Under ``accelerate launch`` the batches are dealt to the processes in turn (batch
``j`` to rank ``j mod P``, :func:`map_batches`); each process samples its share and the
per-batch results are gathered in the global order (``accelerate.utils.gather_object``), so
every process returns exactly what one process computes alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence, TypeVar

import numpy as np
import torch

from . import tasks
from .observations import ObservationOperator, Observations

__all__ = ["Sampling", "concat_posteriors", "derived_seed", "map_batches", "measure", "resolve_state",
           "sample_batches", "sample_posterior", "seeded_generator"]

_STREAMS = {"noise": 1, "sampling": 2}
T = TypeVar("T")


def derived_seed(seed: int, stream: str, key: int) -> int:
    """A 64-bit seed for the random draws of ``stream`` (``"noise"``, ``"sampling"``) of instance ``key``."""
    if int(seed) < 0 or int(key) < 0:
        raise ValueError(f"seeds and instance keys must be >= 0, got seed {seed}, key {key}")
    state = np.random.SeedSequence([int(seed), _STREAMS[stream], int(key)]).generate_state(1, dtype=np.uint64)
    return int(state[0])


def seeded_generator(seed: int, stream: str, key: int) -> torch.Generator:
    """A CPU generator seeded with :func:`derived_seed`."""
    return torch.Generator().manual_seed(derived_seed(seed, stream, key))


def measure(operator: ObservationOperator, truth: Mapping[str, torch.Tensor], *, seed: int,
            keys: Sequence[int]) -> torch.Tensor:
    """Noisy measurements ``[B, m]`` of a batch of fields; the noise of row ``b`` is drawn with
    ``derived_seed(seed, "noise", keys[b])``, whatever the other rows are."""
    rows = [operator.measure({k: v[b:b + 1] for k, v in truth.items()}, generator=seeded_generator(seed, "noise", key))
            for b, key in enumerate(keys)]
    return torch.cat(rows)


@dataclass(frozen=True)
class Sampling:
    """How posteriors are sampled (the arguments of :func:`~.tasks.reconstruct` shared by every batch).

    method, solver, steps, schedule: the method and ``samplers`` solver (``None``: the method's
    default, :func:`~.tasks.default_solver`); samples: ``K`` per instance; seed: the root of every
    derived seed (nodes, measurement noise, sampling); method_options, solver_options: passed on.
    """

    method: str = "covariance"
    solver: str | None = None
    steps: int = 20
    samples: int = 8
    schedule: str = "karras"
    seed: int = 0
    method_options: Mapping[str, Any] = field(default_factory=dict)
    solver_options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("steps", "samples", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"{name} must be an integer, got {value!r}")
        for name, low in (("steps", 1), ("samples", 1), ("seed", 0)):
            if getattr(self, name) < low:
                raise ValueError(f"{name} must be >= {low}, got {getattr(self, name)}")

    @property
    def solver_name(self) -> str:
        """The solver actually used."""
        return self.solver or tasks.default_solver(self.method)


def _conditioning(prior: Any, truth: Mapping[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
    if not getattr(prior, "cond_fields", ()):
        return None
    if truth is None:
        raise ValueError(f"the prior is conditioned on {list(prior.cond_fields)}: the instances' data must supply them")
    return {n: truth[n] for n in prior.cond_fields}


def sample_posterior(prior: Any, observations: Observations, sampling: Sampling, *,
                     truth: Mapping[str, torch.Tensor] | None = None, generator: torch.Generator | None = None,
                     noise_std: float | None = None, progress: bool = False) -> tasks.Posterior:
    """One call of :func:`~.tasks.reconstruct` (conditioning fields taken from ``truth``); a diverging
    sampler becomes a ``ValueError`` that says what to try."""
    try:
        return tasks.reconstruct(prior, observations, method=sampling.method, solver=sampling.solver_name,
                                 steps=sampling.steps, n_samples=sampling.samples, schedule=sampling.schedule,
                                 cond=_conditioning(prior, truth), noise_std=noise_std, generator=generator,
                                 seed=sampling.seed, method_options=dict(sampling.method_options),
                                 solver_options=dict(sampling.solver_options), progress=progress)
    except FloatingPointError as e:
        raise ValueError(f"sampling diverged ({e}); try more steps, another method or a larger noise std") from None


def resolve_state(state: Any = None) -> Any:
    """``state``, or the process's ``accelerate.PartialState()`` (one process when not launched)."""
    if state is None:
        from accelerate import PartialState

        state = PartialState()
    return state


def map_batches(fn: Callable[[int, int], T], n: int, batch: int, *, state: Any = None, progress: bool = False,
                desc: str | None = None) -> list[T]:
    """``[fn(start, stop) for each batch [start, stop) of range(n)]`` with the batches dealt to the
    processes of ``state`` (``accelerate.PartialState()`` by default) in turn and gathered in order:
    every process returns the whole list. An error on any process is raised on every process."""
    from tqdm.auto import tqdm

    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
        raise ValueError(f"batch must be an integer >= 1, got {batch!r}")
    state = resolve_state(state)
    starts = list(range(0, n, batch))
    mine = starts[state.process_index::state.num_processes]
    bar = tqdm(mine, desc=desc, unit="batch", disable=None if progress and state.is_main_process else True)
    if state.num_processes == 1:
        return [fn(s, min(n, s + batch)) for s in bar]
    from accelerate.utils import gather_object

    done = []
    for s in bar:
        try:
            done.append((s, fn(s, min(n, s + batch)), None))
        except Exception as e:  # raised below on every process, not left to hang the others in the gather
            done.append((s, None, (type(e), e.args[0] if isinstance(e, KeyError) and e.args else str(e))))
            break
    done = sorted(gather_object(done), key=lambda item: item[0])
    for _, _, error in done:
        if error is not None:
            kind, message = error
            raise (kind if issubclass(kind, (ValueError, KeyError, TypeError, OSError)) else RuntimeError)(message)
    return [result for _, result, _ in done]


def _cpu(posterior: tasks.Posterior) -> tasks.Posterior:
    move = (lambda v: v.detach().cpu() if isinstance(v, torch.Tensor) else v)
    return tasks.Posterior({k: move(v) for k, v in posterior.samples.items()},
                           {k: move(v) for k, v in posterior.diagnostics.items()})


def concat_posteriors(parts: Sequence[tasks.Posterior]) -> tasks.Posterior:
    """One posterior of the instances of ``parts`` (batches, in order).

    Diagnostics per instance (first axis the batch) are concatenated, ``noise_std`` ``[m]`` becomes
    ``[B, m]``, ``wall_time`` is summed and the other numbers (per chain) averaged over instances.
    """
    sizes = [p.samples[next(iter(p.samples))].shape[0] for p in parts]
    samples = {k: torch.cat([p.samples[k] for p in parts]) for k in parts[0].samples}
    diagnostics: dict[str, Any] = {}
    for key, first in parts[0].diagnostics.items():
        values = [p.diagnostics.get(key) for p in parts]
        if key == "noise_std" and isinstance(first, torch.Tensor):
            diagnostics[key] = torch.cat([torch.as_tensor(v).expand(b, *torch.as_tensor(v).shape[-1:])
                                          for v, b in zip(values, sizes)])
        elif isinstance(first, torch.Tensor) and first.ndim >= 1 and first.shape[0] == sizes[0]:
            diagnostics[key] = torch.cat(values)
        elif key == "wall_time":
            diagnostics[key] = float(sum(values))
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values) and len(set(values)) > 1:
            diagnostics[key] = float(np.average(values, weights=sizes))
        else:
            diagnostics[key] = first
    return tasks.Posterior(samples, diagnostics)


def sample_batches(prior: Any, observations: Observations, sampling: Sampling, *, keys: Sequence[int] | None = None,
                   batch: int | None = None, truth: Mapping[str, torch.Tensor] | None = None,
                   noise_std: float | None = None, progress: bool = False, state: Any = None) -> tasks.Posterior:
    """Posterior of every observed instance, sampled in batches of ``batch`` (default all at once)
    seeded as the module docstring says (``keys``: the instances' dataset indices, default
    ``0..B-1``) and spread over the processes; every process returns the whole posterior (on the CPU).

    ``truth`` supplies the conditioning fields of a conditional prior; ``noise_std`` overrides the
    likelihood's noise (default: the operator's)."""
    n = observations.batch_size
    keys = list(range(n)) if keys is None else [int(k) for k in keys]
    if len(keys) != n:
        raise ValueError(f"{len(keys)} instance keys for {n} observed instances")
    state = resolve_state(state)

    def run(lo: int, hi: int) -> tasks.Posterior:
        part = Observations(observations.operator, observations.values[lo:hi])
        rows = {k: v[lo:hi] for k, v in truth.items()} if truth is not None else None
        return _cpu(sample_posterior(prior, part, sampling, truth=rows, noise_std=noise_std,
                                     generator=seeded_generator(sampling.seed, "sampling", keys[lo]),
                                     progress=progress and state.is_main_process))

    return concat_posteriors(map_batches(run, n, n if batch is None else batch, state=state,
                                         progress=progress and n > (batch or n), desc="batches"))
