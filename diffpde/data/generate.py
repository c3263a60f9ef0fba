"""Generate a dataset of a PDE family with its classical solver: parallel, resumable, seeded per sample.

Seeds. Sample ``i`` of a dataset with seed ``s`` is ``PDE.generate(sample_seed(s, i))``, where
``sample_seed`` takes 63 bits of ``numpy.random.SeedSequence(s, spawn_key=(i,))`` (the ``i``-th
child of ``SeedSequence(s).spawn``). It depends on nothing else: not on the number of workers, nor
on which worker computed the sample, nor on interruptions. The seeds are stored in ``/seeds``.

Files. The work goes to ``OUT.partial`` (the HDF5 layout of :mod:`diffpde.data.hdf5`), which is
renamed to ``OUT`` once every sample is written and the statistics are stored. Running the same
generation again resumes an existing ``OUT.partial`` (only the missing samples are computed) and
does nothing if ``OUT`` is already complete; a partial or complete file made with a different
problem, resolution, parameters, seed, sample count or dtype is refused.

Storage is float32 by default (``dtype="float64"`` keeps the solvers' precision).

Captions. A family that writes captions (``PDE.has_captions``) gets ``captions`` phrasings per
sample (default 4; 0: none) in ``/captions`` (:mod:`diffpde.data.hdf5`), written from the stored
fields (in the storage dtype) once the file is otherwise complete and before it gets its final
name, each sample's phrasings drawn with :func:`caption_rng` of its seed, so they do not depend on
workers, shards or interruptions either (a kill while the captions themselves are written leaves a
file that completes correctly, though not byte-identical). :func:`add_captions` (``diffpde caption
FILE``) writes them into an existing file by the same rule: a file generated with ``captions=0``
and captioned so is byte-identical to one generated with captions.

Shards (several processes or machines). ``shard=(k, count)`` computes only the ``k``-th of
``count`` contiguous blocks of sample indices into ``OUT.shard-k-of-count`` (same header, the other
samples left undone; resumable through its own ``.partial`` like a whole run); :func:`combine_shards`
checks that the shard files belong to one generation and cover it, then writes ``OUT`` exactly as
one run would: the file is byte-identical to ``generate_dataset`` without shards. Under
``accelerate launch`` the ``diffpde generate`` command does both: rank ``k`` writes shard ``k`` and
the main process combines them once every rank is done.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import itertools
import json
import multiprocessing as mp
import os
import shutil
import threading
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import pdes
from ..pdes import PDE
from . import hdf5


class GenerationError(ValueError):
    """The family's ``generate`` failed for one sample (the message names the sample and its seed)."""


SEED_RULE = "numpy.random.SeedSequence(seed, spawn_key=(index,)).generate_state(1, uint64)[0] >> 1"
CAPTION_SEED_RULE = ("numpy.random.default_rng(numpy.random.SeedSequence(sample_seed, spawn_key=(1,))); "
                     "an imported sample (seed -1): SeedSequence(index, spawn_key=(2,))")
DEFAULT_PHRASINGS = 4


def sample_seed(seed: int, index: int) -> int:
    """The seed ``PDE.generate`` gets for sample ``index`` of a dataset with seed ``seed`` (< 2**63)."""
    state = np.random.SeedSequence(seed, spawn_key=(index,)).generate_state(1, np.uint64)[0]
    return int(state >> np.uint64(1))


def caption_rng(sample_seed: int, index: int) -> np.random.Generator:
    """The generator the captions of sample ``index`` (seed ``sample_seed``) are drawn with (``CAPTION_SEED_RULE``)."""
    if sample_seed >= 0:
        return np.random.default_rng(np.random.SeedSequence(int(sample_seed), spawn_key=(1,)))
    return np.random.default_rng(np.random.SeedSequence(int(index), spawn_key=(2,)))


def resolve_phrasings(pde: PDE, captions: int | None) -> int:
    """Caption phrasings per sample: ``captions``, or ``DEFAULT_PHRASINGS`` for a family that writes
    captions and 0 for one that does not when ``None``."""
    if captions is None:
        return DEFAULT_PHRASINGS if pde.has_captions else 0
    if isinstance(captions, bool) or not isinstance(captions, (int, np.integer)) or captions < 0:
        raise ValueError(f"{pde.name}: captions (phrasings per sample) must be an integer >= 0, got {captions!r}")
    if captions and not pde.has_captions:
        raise ValueError(f"{pde.name}: this family writes no captions; use captions=0 (--captions 0)")
    return int(captions)


def file_captions(f, pde: PDE, phrasings: int, *, progress: bool = False) -> list[list[str]]:
    """``phrasings`` captions of every sample of an open dataset file, from its stored fields (in the
    storage dtype, read as float64) and its seeds, in index order."""
    seeds = f["seeds"][()]
    out = []
    names = [fl.name for fl in pde.fields]
    for i in tqdm(range(len(seeds)), desc="captions", unit="sample", disable=not progress, dynamic_ncols=True):
        values = {name: np.asarray(f["fields"][name][i], dtype=np.float64) for name in names}
        try:
            out.append(pde.caption(values, caption_rng(int(seeds[i]), i), phrasings))
        except Exception as e:
            raise GenerationError(f"{pde.name}: captions of sample {i} failed: {type(e).__name__}: {e}") from e
    return out


def resolve_problem(problem: str | PDE, resolution: int | None = None, parameters: Mapping[str, Any] | None = None) -> PDE:
    """The PDE instance for a registered family name (or a PDE instance, returned as it is)."""
    if isinstance(problem, PDE):
        if resolution is not None and resolution != problem.resolution or parameters:
            raise ValueError(f"{problem.name}: pass resolution and parameters either to the PDE or here, not both")
        return problem
    if resolution is None:
        raise ValueError(f"{problem}: a resolution is needed")
    if problem not in pdes.names():
        try:  # a family not imported by diffpde.pdes yet lives in diffpde/pdes/<name>.py
            importlib.import_module(f"{pdes.__name__}.{problem}")
        except ImportError:
            pass
    return pdes.get(problem, resolution, **dict(parameters or {}))


def check_sample(pde: PDE, values: Mapping[str, Any], index: int, seed: int) -> dict[str, np.ndarray]:
    """Check that ``generate`` returned every field, of the right shape, finite; return float64 arrays."""
    where = f"{pde.name}: generate(seed={seed}) for sample {index}"
    if not isinstance(values, Mapping):
        raise TypeError(f"{where} returned {type(values).__name__}, not a dict of fields")
    missing = [n for n in pde.field_names if n not in values]
    extra = [n for n in values if n not in pde.field_names]
    if missing or extra:
        raise ValueError(f"{where} returned fields {sorted(values)}; missing {missing}, unexpected {extra}")
    out = {}
    for fl in pde.fields:
        arr = np.asarray(values[fl.name], dtype=np.float64)
        if arr.shape != fl.shape:
            raise ValueError(f"{where}: field {fl.name!r} has shape {arr.shape}, the family declares {fl.shape}")
        if not np.isfinite(arr).all():
            raise ValueError(f"{where}: field {fl.name!r} contains NaN or inf")
        out[fl.name] = arr
    return out


# -- workers -------------------------------------------------------------------------------------

_WORKER_PDE: PDE | None = None


def _worker_init(cls: type[PDE], resolution: int, parameters: dict[str, Any], lifeline: Connection) -> None:
    global _WORKER_PDE

    def exit_with_parent() -> None:  # the generator was killed (kill -9): do not linger
        try:
            lifeline.recv()
        except (EOFError, OSError):
            pass
        os._exit(1)

    threading.Thread(target=exit_with_parent, daemon=True).start()
    torch.set_num_threads(1)  # one core per worker
    _WORKER_PDE = cls(resolution, **parameters)


def _generate(pde: PDE, index: int, seed: int) -> dict[str, np.ndarray]:
    try:
        return pde.generate(seed)
    except Exception as e:
        raise GenerationError(f"{pde.name}: generate(seed={seed}) for sample {index} failed: "
                              f"{type(e).__name__}: {e}") from e


def _worker_generate(task: tuple[int, int]) -> tuple[int, dict[str, np.ndarray]]:
    index, seed = task
    return index, _generate(_WORKER_PDE, index, seed)


def _context(module: str) -> mp.context.BaseContext:
    """A forkserver context whose server has imported torch and ``module`` once (workers start
    in milliseconds instead of re-importing torch each); spawn where forkserver does not exist."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "diffpde.pdes", module])  # "__main__" makes it import the main script
    return ctx


def _compute(pde: PDE, tasks: list[tuple[int, int]], workers: int) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """Yield ``(index, fields)`` for every task, in any order, in-process or in ``workers`` processes."""
    if workers == 1:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # like a worker: parallel across samples, not inside one
        try:
            for index, seed in tasks:
                yield index, _generate(pde, index, seed)
        finally:
            torch.set_num_threads(threads)
        return
    # at most 2 tasks per worker in flight: results never pile up in memory, a dead worker raises
    ctx = _context(type(pde).__module__)
    lifeline, keep_alive = ctx.Pipe(duplex=False)  # the workers see EOF on it when this process dies
    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init,
                               initargs=(type(pde), pde.resolution, dict(pde.parameters), lifeline))
    queue = iter(tasks)
    try:
        pending = {pool.submit(_worker_generate, task) for task in itertools.islice(queue, 2 * workers)}
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                try:
                    result = future.result()
                except BrokenProcessPool as e:
                    raise GenerationError(f"{pde.name}: a worker process died ({e}); run with one worker to see why") from e
                task = next(queue, None)
                if task is not None:
                    pending.add(pool.submit(_worker_generate, task))
                yield result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        lifeline.close()
        keep_alive.close()


# -- the generator -------------------------------------------------------------------------------


def partial_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".partial")


def _same_settings(info: hdf5.DatasetInfo, pde: PDE, n: int, seed: int, dtype: str) -> list[str]:
    """Differences between a file's settings and the requested ones, as readable strings."""
    want = json.loads(json.dumps(pde.config()))
    diffs = []
    if info.config.get("name") != want["name"]:
        diffs.append(f"problem {info.config.get('name')!r} vs {want['name']!r}")
    if info.config.get("resolution") != want["resolution"]:
        diffs.append(f"resolution {info.config.get('resolution')} vs {want['resolution']}")
    if info.config.get("parameters") != want["parameters"]:
        diffs.append(f"parameters {info.config.get('parameters')} vs {want['parameters']}")
    for what, have, new in (("n", info.n_samples, n), ("seed", info.seed, seed), ("dtype", info.dtype, dtype)):
        if have != new:
            diffs.append(f"{what} {have} vs {new}")
    if not diffs and [(f.name, f.shape) for f in info.fields] != [(f.name, f.shape) for f in pde.fields]:
        diffs.append("fields " + str([(f.name, f.shape) for f in info.fields]))
    return diffs


def generate_dataset(
    problem: str | PDE,
    n: int,
    out: str | Path,
    *,
    resolution: int | None = None,
    parameters: Mapping[str, Any] | None = None,
    seed: int = 0,
    workers: int = 1,
    dtype: str = "float32",
    progress: bool = True,
    overwrite: bool = False,
    shard: tuple[int, int] | None = None,
    captions: int | None = None,
) -> Path:
    """Generate ``n`` samples of ``problem`` into the HDF5 file ``out`` and return its path.

    problem:     a registered family name (with ``resolution`` and ``parameters``) or a PDE instance.
    seed:        dataset seed; sample ``i`` uses ``sample_seed(seed, i)`` (module docstring).
    workers:     processes computing samples (1: in this process; else forkserver or spawn
                 processes), each with one torch thread; the content does not depend on it.
    dtype:       storage dtype, ``"float32"`` (default) or ``"float64"``.
    overwrite:   replace a complete ``out`` (or a partial file) made with other settings.
    shard:       ``(k, count)``: compute only block ``k`` of ``count`` of the sample indices into
                 :func:`shard_path` ``(out, k, count)`` (returned); :func:`combine_shards` joins them.
    captions:    caption phrasings per sample (module docstring); ``None``: 4 for a family that
                 writes captions, else 0. Shard files hold none: :func:`combine_shards` writes them.

    The work goes to ``<file>.partial`` and is resumed from there after an interruption.
    """
    pde = resolve_problem(problem, resolution, parameters)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"{pde.name}: the number of samples must be a positive integer, got {n!r}")
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise ValueError(f"{pde.name}: workers must be a positive integer, got {workers!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"{pde.name}: seed must be a non-negative integer, got {seed!r}")
    if dtype not in hdf5.DTYPES:
        raise ValueError(f"{pde.name}: dtype must be one of {', '.join(hdf5.DTYPES)}, got {dtype!r}")
    n, seed, workers = int(n), int(seed), int(workers)
    phrasings = resolve_phrasings(pde, captions)
    wanted = range(n)
    if shard is not None:
        k, count = _check_shard(shard, n, pde.name)
        wanted = shard_indices(n, k, count)
        out = shard_path(out, k, count)
    out, partial = Path(out), partial_path(out)

    if out.exists():
        try:
            info = hdf5.read_info(out, allow_incomplete=True)
            diffs = _same_settings(info, pde, n, seed, dtype) or ([] if _covers(out, wanted, info) else ["incomplete"])
            if not diffs and shard is None and info.phrasings != phrasings:
                diffs = [f"captions: {info.phrasings} phrasings per sample vs {phrasings} "
                         f"(`diffpde caption {out} --phrasings {phrasings}` rewrites only the captions)"]
        except hdf5.FileInUseError:
            raise
        except hdf5.DatasetFileError as e:
            diffs = [str(e)]
        if not diffs:
            if progress:
                print(f"{out} is complete ({n} samples of {pde.name}); nothing to do")
            return out
        if not overwrite:
            raise FileExistsError(f"{pde.name}: {out} exists and differs ({'; '.join(diffs)}); "
                                  "choose another output or overwrite it (--overwrite)")
    if partial.exists():
        try:
            diffs = _same_settings(hdf5.read_info(partial, allow_incomplete=True), pde, n, seed, dtype)
        except hdf5.FileInUseError:
            raise
        except hdf5.DatasetFileError as e:
            diffs = [str(e)]
        if diffs and not overwrite:
            raise FileExistsError(f"{pde.name}: cannot resume {partial}: it differs ({'; '.join(diffs)}); "
                                  "delete it, choose another output, or overwrite it (--overwrite)")
        if diffs:
            partial.unlink()
    if not partial.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        new = partial.with_name(partial.name + ".new")  # so that a partial file always has a whole header
        hdf5.create_file(new, config=pde.config(), fields=pde.fields, grid=pde.grid, n_samples=n,
                         seeds=np.array([sample_seed(seed, i) for i in range(n)], dtype=np.int64),
                         dtype=dtype, seed=seed, seed_rule=SEED_RULE, creator="diffpde generate")
        os.replace(new, partial)

    with hdf5.open_for_writing(partial) as f:
        seeds = f["seeds"][()]
        done = f["done"][()]
        todo = [(i, int(seeds[i])) for i in wanted if not done[i]]
        label = f"{pde.name} {pde.resolution}" + (f" shard {shard[0]}/{shard[1]}" if shard is not None else "")
        bar = tqdm(total=len(wanted), initial=len(wanted) - len(todo), desc=label, unit="sample",
                   disable=not progress, dynamic_ncols=True)
        with bar, contextlib.closing(_compute(pde, todo, min(workers, max(1, len(todo))))) as results:
            for index, values in results:
                hdf5.write_sample(f, index, check_sample(pde, values, index, int(seeds[index])))
                bar.update(1)
        if shard is None:
            hdf5.finalize(f)
    if shard is None and phrasings:
        _write_captions(partial, pde, phrasings, progress)
    os.replace(partial, out)
    return out


def _write_captions(path: Path, pde: PDE, phrasings: int, progress: bool) -> None:
    """Captions into a finished file, in a session of their own (so that a file captioned later by
    :func:`add_captions` gets the same bytes)."""
    with hdf5.open_for_writing(path) as f:
        hdf5.write_captions(f, file_captions(f, pde, phrasings, progress=progress), CAPTION_SEED_RULE)


# -- shards --------------------------------------------------------------------------------------


def _check_shard(shard: Any, n: int, name: str) -> tuple[int, int]:
    try:
        k, count = (int(v) for v in shard)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: shard must be (index, count), got {shard!r}") from None
    if count < 1 or not 0 <= k < count:
        raise ValueError(f"{name}: shard index must be in [0, {count - 1}] for {count} shard(s), got {k}")
    if count > n:
        raise ValueError(f"{name}: {count} shards for {n} samples leave some shards empty; use at most {n}")
    return k, count


def shard_indices(n: int, k: int, count: int) -> range:
    """Sample indices of shard ``k`` of ``count``: the ``k``-th of ``count`` contiguous, near-equal blocks."""
    return range(k * n // count, (k + 1) * n // count)


def shard_path(out: str | Path, k: int, count: int) -> Path:
    """File of shard ``k`` of ``count`` of the dataset ``out``: ``OUT.shard-k-of-count``."""
    out = Path(out)
    return out.with_name(f"{out.name}.shard-{k}-of-{count}")


def _covers(path: Path, indices: range, info: hdf5.DatasetInfo) -> bool:
    if len(indices) == info.n_samples:
        return info.complete
    with hdf5.open_file(path) as f:
        return bool(f["done"][indices.start:indices.stop].all())


def combine_shards(out: str | Path, count: int, *, progress: bool = True, keep: bool = False,
                   captions: int | None = None) -> Path:
    """Join the ``count`` shard files of ``out`` (written with ``shard=(k, count)``) into ``out``.

    Every shard must exist, be finished and come from the same generation (problem, resolution,
    parameters, seed, sample count, dtype); the result, with ``captions`` phrasings per sample (as
    :func:`generate_dataset`), is byte-identical to one unsharded run. The shard files are deleted
    afterwards unless ``keep``.
    """
    out = Path(out)
    paths = [shard_path(out, k, count) for k in range(count)]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        unfinished = [m for m in missing if partial_path(m).exists()]
        hint = f" ({len(unfinished)} still being written or interrupted: finish them first)" if unfinished else ""
        raise FileNotFoundError(f"cannot combine {out}: missing shard file(s) {', '.join(missing)}{hint}")
    infos = [hdf5.read_info(p, allow_incomplete=True) for p in paths]
    first = infos[0]
    pde = resolve_problem(first.config["name"], first.config["resolution"], first.config.get("parameters"))
    phrasings = resolve_phrasings(pde, captions)
    for p, info in zip(paths, infos):
        diffs = _same_settings(info, pde, first.n_samples, first.seed, first.dtype)
        if diffs:
            raise ValueError(f"cannot combine {out}: {p} belongs to another generation ({'; '.join(diffs)})")
    n = first.n_samples
    for k, (p, info) in enumerate(zip(paths, infos)):
        if not _covers(p, shard_indices(n, k, count), info):
            raise ValueError(f"cannot combine {out}: {p} does not hold all of its samples "
                             f"{shard_indices(n, k, count).start}..{shard_indices(n, k, count).stop - 1}")
    partial = partial_path(out)
    new = partial.with_name(partial.name + ".new")
    with hdf5.open_file(paths[0]) as f:
        seeds = f["seeds"][()]
    hdf5.create_file(new, config=pde.config(), fields=pde.fields, grid=pde.grid, n_samples=n, seeds=seeds,
                     dtype=first.dtype, seed=first.seed, seed_rule=SEED_RULE, creator="diffpde generate")
    os.replace(new, partial)
    with hdf5.open_for_writing(partial) as f, tqdm(total=n, desc=f"combine {out.name}", unit="sample",
                                                   disable=not progress, dynamic_ncols=True) as bar:
        for k, p in enumerate(paths):
            with hdf5.open_file(p) as src:
                for i in shard_indices(n, k, count):
                    hdf5.write_sample(f, i, {name: src["fields"][name][i] for name in pde.field_names})
                    bar.update(1)
        hdf5.finalize(f)
    if phrasings:
        _write_captions(partial, pde, phrasings, progress)
    os.replace(partial, out)
    if not keep:
        for p in paths:
            p.unlink()
    return out


# -- captions of an existing file ------------------------------------------------------------------


def add_captions(path: str | Path, phrasings: int = DEFAULT_PHRASINGS, *, overwrite: bool = False,
                 progress: bool = True) -> Path:
    """Write ``phrasings`` captions per sample into the complete dataset file ``path`` (computed from its
    stored fields, its family and parameters, and its seeds, as :func:`generate_dataset` writes them).

    A file that has captions is refused unless ``overwrite``. The work is done on a copy
    (``path.captioning``) that replaces ``path`` at the end, so an interruption leaves ``path`` as it
    was. (Replacing captions does not reclaim the old ones' space; ``h5repack`` does.)
    """
    path = Path(path)
    info = hdf5.read_info(path)
    try:
        pde = resolve_problem(info.problem, info.config["resolution"], info.config.get("parameters"))
    except (KeyError, ValueError, TypeError) as e:
        raise ValueError(f"{path}: cannot rebuild its PDE family from the header ({e})") from None
    if isinstance(phrasings, bool) or not isinstance(phrasings, (int, np.integer)) or phrasings < 1:
        raise ValueError(f"{pde.name}: phrasings must be a positive integer, got {phrasings!r}")
    phrasings = resolve_phrasings(pde, int(phrasings))
    if [(f.name, f.shape) for f in info.fields] != [(f.name, f.shape) for f in pde.fields]:
        raise ValueError(f"{path}: its fields {[(f.name, f.shape) for f in info.fields]} are not those of "
                         f"{pde.name} at resolution {pde.resolution}; cannot compute its captions")
    if info.phrasings and not overwrite:
        raise FileExistsError(f"{path} already has captions ({info.phrasings} phrasings per sample); "
                              "pass overwrite=True (--overwrite) to replace them")
    work = path.with_name(path.name + ".captioning")
    shutil.copyfile(path, work)
    try:
        _write_captions(work, pde, phrasings, progress)
        os.replace(work, path)
    finally:
        work.unlink(missing_ok=True)
    return path


def add_caption_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``diffpde caption`` command (:func:`add_captions`)."""
    p = subparsers.add_parser("caption", help="add captions to an existing dataset file",
                              description=add_captions.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", help="a complete dataset file written by `diffpde generate`")
    p.add_argument("--phrasings", type=int, default=DEFAULT_PHRASINGS,
                   help=f"phrasings per sample (default {DEFAULT_PHRASINGS})")
    p.add_argument("--overwrite", action="store_true", help="replace captions the file already has")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def run_caption(args: argparse.Namespace) -> int:
    out = add_captions(args.file, args.phrasings, overwrite=args.overwrite, progress=not args.quiet)
    if not args.quiet:
        print(f"wrote {args.phrasings} captions per sample into {out}")
    return 0


# -- command line --------------------------------------------------------------------------------


def parse_parameters(items: list[str], defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``["key=value", ...]`` -> dict with typed values (:func:`diffpde.options.parse_key_values`:
    ``2``, ``0.5``, ``1e2``, ``[1, 2]``, ``true``, else strings); an integer is made a float where the
    family's default is a float."""
    from ..options import parse_key_values

    out = parse_key_values(items, "--param")
    for key, value in out.items():
        if defaults and isinstance(defaults.get(key), float) and isinstance(value, int) and not isinstance(value, bool):
            out[key] = float(value)
    return out


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` -> ``(K, N)``: shard ``K`` (from 0) of ``N``."""
    k, sep, count = text.partition("/")
    try:
        if not sep:
            raise ValueError
        return int(k), int(count)
    except ValueError:
        raise ValueError(f"--shard {text!r}: expected K/N, e.g. 0/4 for the first of four shards") from None


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("generate", help="generate a dataset with a PDE family's solver",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("problem", help="PDE family (e.g. darcy, poisson, helmholtz, burgers, navier_stokes)")
    p.add_argument("--n", type=int, required=True, help="number of samples")
    p.add_argument("--resolution", type=int, required=True, help="grid resolution of the family")
    p.add_argument("--out", required=True, help="output HDF5 file (work goes to OUT.partial until complete)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1: in-process)")
    p.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="family parameter (repeatable)")
    p.add_argument("--dtype", choices=hdf5.DTYPES, default="float32", help="storage dtype (default float32)")
    p.add_argument("--overwrite", action="store_true", help="replace an output made with other settings")
    p.add_argument("--shard", metavar="K/N", help="compute only shard K (from 0) of N into OUT.shard-K-of-N "
                   "(automatic under accelerate launch: one shard per process, combined by the main process)")
    p.add_argument("--combine", type=int, metavar="N", help="join the N finished shard files of OUT into OUT")
    p.add_argument("--keep-shards", action="store_true", help="keep the shard files after combining")
    p.add_argument("--captions", type=int, default=None, metavar="K",
                   help=f"caption phrasings per sample (default {DEFAULT_PHRASINGS} for families that write "
                        "captions, else 0; 0: none)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _launched_state():
    """Accelerate's process state when this process was started by ``accelerate launch`` with
    several processes, else ``None`` (the command then runs alone, with no distributed set-up)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import PartialState

    return PartialState(cpu=True)


def run(args: argparse.Namespace) -> int:
    if args.combine is not None:
        if args.combine < 1:
            raise ValueError(f"--combine must be >= 1, got {args.combine}")
        out = combine_shards(args.out, args.combine, progress=not args.quiet, keep=args.keep_shards,
                             captions=args.captions)
        if not args.quiet:
            print(f"wrote {out}")
        return 0
    defaults = resolve_problem(args.problem, args.resolution).defaults
    parameters = parse_parameters(args.param, defaults)
    state = _launched_state()
    shard = parse_shard(args.shard) if args.shard else None
    if state is not None and shard is None:
        shard = (state.process_index, state.num_processes)
    kwargs = dict(resolution=args.resolution, parameters=parameters, seed=args.seed, workers=args.workers,
                  dtype=args.dtype, overwrite=args.overwrite, captions=args.captions)
    out = generate_dataset(args.problem, args.n, args.out, progress=not args.quiet, shard=shard, **kwargs)
    if state is not None and not args.shard:
        state.wait_for_everyone()
        if state.is_main_process:
            out = combine_shards(args.out, state.num_processes, progress=not args.quiet, keep=args.keep_shards,
                                 captions=args.captions)
        state.wait_for_everyone()
    if not args.quiet and (state is None or state.is_main_process):
        print(f"wrote {out}")
    return 0
