"""The diffpde dataset file: a self-describing HDF5 layout, its writer and its reader.

Layout (``format = "diffpde.fields"``, ``format_version = 1``)::

    /                      attrs: format, format_version, problem, resolution, parameters (JSON),
                                  config (JSON of PDE.config()), field_names (JSON), n_samples,
                                  seed, seed_rule, dtype, complete (0/1), creator,
                                  diffpde_version, software (JSON), source
    /grid                  attrs: kind ("vertex", "periodic", or "cell-centred" for imports)
    /grid/<axis>           float64 [len]  coordinates of each axis ("x", "y", "t", ...)
    /fields/<name>         [n_samples, *shape] in ``dtype``, one chunk per sample;
                           attrs: name, role, dims (JSON), description, mean, std, min, max
    /seeds                 int64 [n_samples]  the seed ``PDE.generate`` got for each sample (-1: imported)
    /done                  uint8 [n_samples]  1 once the sample is completely written
    /captions              (optional) variable-length UTF-8 strings [n_samples, K]: K phrasings of a
                           caption of each sample (:mod:`diffpde.pdes.captions`);
                           attrs: phrasings (K), seed_rule (how each sample's phrasings were drawn)

Captions. They are a function of a sample's stored fields, the family's parameters and the
sample's seed (``seed_rule``), so they are written after the rest of the file is complete, in
index order (variable-length strings live in the file's heap, whose layout would otherwise follow
the order workers deliver samples in), by :func:`write_captions`; ``diffpde caption`` adds them to
an existing file the same way. Read them with :func:`read_captions`, or with h5py:
``h5py.File(path)["captions"][i].astype(str)`` (``.asstr()[i]`` on the dataset also works).

Statistics (``mean``, ``std`` (population, ddof = 0), ``min``, ``max``) are per field, over all
samples and all grid points, computed in float64 from the stored values, and written only when
every sample is done; until then they are NaN.

Completion. A file is complete when its root attribute ``complete`` is 1; that is set after the
statistics, as the last write. Generation writes to ``<out>.partial`` and renames it to ``<out>``
only then, so a file under its final name is always complete, and :func:`read_info` refuses an
incomplete file unless ``allow_incomplete=True`` is passed.

Crash safety. All datasets are created with early allocation (every chunk has its place in the
file from the start), so writing a sample only writes raw data in place: a ``kill -9`` between
samples leaves the HDF5 metadata intact. Each sample is written, flushed, then flagged in
``/done`` and flushed again; a kill between the two only means that sample is recomputed. Flushes
reach the operating system, not the disk (no fsync): a power cut may still lose a partial file.

Byte reproducibility. No wall-clock time is stored (the file system has it), datasets do not
track times, chunk positions do not depend on the order samples are written in, and the library
version bounds are pinned: the same generation (with the same software versions, which are stored)
gives byte-identical files, whatever the number of workers or interruptions.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import h5py
import numpy as np

from .. import __version__
from ..pdes import Field, Grid

FORMAT = "diffpde.fields"
FORMAT_VERSION = 1
DTYPES = ("float32", "float64")
LIBVER = ("earliest", "v110")


class DatasetFileError(ValueError):
    """A dataset file is missing, foreign, corrupt, incomplete or inconsistent."""


class FileInUseError(DatasetFileError):
    """A dataset file is locked by another process writing it."""


def _open_error(path: str | Path, e: OSError, doing: str) -> DatasetFileError:
    if "unable to lock file" in str(e):
        return FileInUseError(f"{path} is being written by another process (a `diffpde generate` still running?)")
    return DatasetFileError(f"{path} {doing}: {e}")


@dataclass(frozen=True)
class DatasetInfo:
    """Everything the header of a dataset file says (no field data)."""

    path: Path
    config: dict[str, Any]  # PDE.config(): name, resolution, parameters
    fields: tuple[Field, ...]
    grid: Grid
    n_samples: int
    seed: int
    dtype: str
    complete: bool
    n_done: int
    stats: dict[str, dict[str, float]] | None  # field -> mean/std/min/max; None unless complete
    attrs: dict[str, Any] = field(default_factory=dict)  # the remaining root attributes
    phrasings: int = 0  # caption phrasings per sample in /captions (0: no captions)

    @property
    def problem(self) -> str:
        return self.config["name"]

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise DatasetFileError(f"{self.path}: no field {name!r}; fields in the file: {', '.join(self.field_names)}")


def software_versions() -> dict[str, str]:
    return {"python": sys.version.split()[0], "numpy": np.__version__, "h5py": h5py.version.version,
            "hdf5": h5py.version.hdf5_version}


# -- writing -------------------------------------------------------------------------------------


def _early_dcpl() -> h5py.h5p.PropDCID:
    plist = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    plist.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    return plist


def create_file(
    path: str | Path,
    *,
    config: Mapping[str, Any],
    fields: Sequence[Field],
    grid: Grid,
    n_samples: int,
    seeds: np.ndarray,
    dtype: str = "float32",
    seed: int = -1,
    seed_rule: str = "",
    creator: str = "diffpde",
    source: str = "",
) -> None:
    """Create an empty (incomplete) dataset file at ``path``, overwriting what is there."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    with h5py.File(path, "w", libver=LIBVER) as f:
        a = f.attrs
        a["format"] = FORMAT
        a["format_version"] = FORMAT_VERSION
        a["problem"] = config["name"]
        a["resolution"] = int(config["resolution"])
        a["parameters"] = json.dumps(config.get("parameters", {}), sort_keys=True)
        a["config"] = json.dumps(dict(config), sort_keys=True)
        a["field_names"] = json.dumps([fl.name for fl in fields])
        a["n_samples"] = int(n_samples)
        a["seed"] = int(seed)
        a["seed_rule"] = seed_rule
        a["dtype"] = dtype
        a["complete"] = np.uint8(0)
        a["creator"] = creator
        a["diffpde_version"] = __version__
        a["software"] = json.dumps(software_versions(), sort_keys=True)
        a["source"] = source
        g = f.create_group("grid")
        g.attrs["kind"] = grid.kind
        for axis, coords in grid.coords.items():
            g.create_dataset(axis, data=np.asarray(coords, dtype=np.float64), track_times=False)
        fg = f.create_group("fields")
        for fl in fields:
            d = fg.create_dataset(fl.name, shape=(n_samples, *fl.shape), dtype=dtype, chunks=(1, *fl.shape),
                                  fillvalue=np.nan, track_times=False, dcpl=_early_dcpl())
            d.attrs["name"] = fl.name
            d.attrs["role"] = fl.role
            d.attrs["dims"] = json.dumps(list(fl.dims))
            d.attrs["description"] = fl.description
            for stat in ("mean", "std", "min", "max"):
                d.attrs[stat] = np.float64(np.nan)
        f.create_dataset("seeds", data=np.asarray(seeds, dtype=np.int64), track_times=False)
        f.create_dataset("done", shape=(n_samples,), dtype=np.uint8, chunks=(n_samples,), fillvalue=0,
                         track_times=False, dcpl=_early_dcpl())


def open_for_writing(path: str | Path) -> h5py.File:
    """Open an existing partial file to add samples, with a clear error if that is impossible."""
    try:
        return h5py.File(path, "r+", libver=LIBVER)
    except OSError as e:
        raise _open_error(path, e, "cannot be opened for writing (corrupted while being finalised? "
                                   "delete it to start again)") from None


def write_sample(f: h5py.File, index: int, values: Mapping[str, np.ndarray]) -> None:
    """Write one sample's fields, flush, then flag it done and flush again."""
    for name, value in values.items():
        f["fields"][name][index] = value
    f.flush()
    f["done"][index] = 1
    f.flush()


def _stats(dset: h5py.Dataset, block_bytes: int = 1 << 26) -> dict[str, float]:
    """Mean, population std, min and max of a dataset in float64, streaming over blocks of samples."""
    per_sample = max(1, math.prod(dset.shape[1:]))
    block = max(1, block_bytes // (8 * per_sample))
    count, mean, m2 = 0, 0.0, 0.0
    lo, hi = math.inf, -math.inf
    for start in range(0, dset.shape[0], block):
        x = np.asarray(dset[start:start + block], dtype=np.float64)
        k, mk = x.size, float(x.mean())
        m2k = float(((x - mk) ** 2).sum())
        delta = mk - mean
        total = count + k
        mean += delta * k / total  # Chan et al. pairwise update
        m2 += m2k + delta * delta * count * k / total
        count = total
        lo, hi = min(lo, float(x.min())), max(hi, float(x.max()))
    return {"mean": mean, "std": math.sqrt(m2 / count), "min": lo, "max": hi}


def write_captions(f: h5py.File, captions: Sequence[Sequence[str]], seed_rule: str = "") -> None:
    """Store ``captions`` (``n_samples`` lists of ``K`` strings) as ``/captions``, replacing any there."""
    n = int(_attr(f, "n_samples"))
    rows = [list(map(str, row)) for row in captions]
    k = len(rows[0]) if rows else 0
    if len(rows) != n or k == 0 or any(len(row) != k for row in rows):
        raise ValueError(f"{f.filename}: captions must be {n} rows of the same number (>= 1) of strings")
    if "captions" in f:
        del f["captions"]
    d = f.create_dataset("captions", shape=(n, k), dtype=h5py.string_dtype("utf-8"), track_times=False)
    d[...] = np.array(rows, dtype=object)
    d.attrs["phrasings"] = np.int64(k)
    d.attrs["seed_rule"] = seed_rule
    f.flush()


def finalize(f: h5py.File) -> None:
    """Compute and store the statistics of a file whose samples are all done, then mark it complete."""
    done = f["done"][()]
    if not done.all():
        raise DatasetFileError(f"{f.filename}: {int((done == 0).sum())} sample(s) missing; cannot finalise")
    for name in json.loads(f.attrs["field_names"]):
        d = f["fields"][name]
        stats = _stats(d)
        if not all(math.isfinite(v) for v in stats.values()):
            raise DatasetFileError(f"{f.filename}: field {name!r} contains NaN or inf")
        for key, value in stats.items():
            d.attrs.modify(key, np.float64(value))
    f.flush()
    f.attrs.modify("complete", np.uint8(1))
    f.flush()


# -- reading -------------------------------------------------------------------------------------


def open_file(path: str | Path) -> h5py.File:
    """Open a file for reading, turning "missing" and "not HDF5" into clear errors."""
    path = Path(path)
    if not path.exists():
        partial = path.with_name(path.name + ".partial")
        hint = f" (an unfinished {partial.name} exists: resume the generation)" if partial.exists() else ""
        raise FileNotFoundError(f"dataset file {path} does not exist{hint}")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise _open_error(path, e, "is not a readable HDF5 file (truncated or foreign?)") from None


def _attr(f: h5py.File, key: str) -> Any:
    try:
        value = f.attrs[key]
    except KeyError:
        raise DatasetFileError(f"{f.filename}: header attribute {key!r} is missing") from None
    return value.decode() if isinstance(value, bytes) else value


def read_info(path: str | Path, *, allow_incomplete: bool = False) -> DatasetInfo:
    """Read and check the header of a dataset file.

    Raises :class:`DatasetFileError` for a foreign, corrupt or (unless ``allow_incomplete``)
    incomplete file, and :class:`FileNotFoundError` for a missing one.
    """
    with open_file(path) as f:
        return info_of(f, allow_incomplete=allow_incomplete)


def info_of(f: h5py.File, *, allow_incomplete: bool = False) -> DatasetInfo:
    """:func:`read_info` on an open file."""
    path = Path(f.filename)
    if f.attrs.get("format") != FORMAT:
        raise DatasetFileError(f"{path} is not a diffpde dataset (root attribute format != {FORMAT!r})")
    try:
        return _parse_header(f, path, allow_incomplete)
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, DatasetFileError):
            raise
        raise DatasetFileError(f"{path}: malformed diffpde header ({type(e).__name__}: {e})") from None


def _parse_header(f: h5py.File, path: Path, allow_incomplete: bool) -> DatasetInfo:
    version = int(_attr(f, "format_version"))
    if version > FORMAT_VERSION:
        raise DatasetFileError(f"{path}: format version {version} is newer than this diffpde reads ({FORMAT_VERSION})")
    try:
        config = json.loads(_attr(f, "config"))
        names = json.loads(_attr(f, "field_names"))
    except json.JSONDecodeError as e:
        raise DatasetFileError(f"{path}: malformed JSON in the header: {e}") from None
    n = int(_attr(f, "n_samples"))
    fields = []
    for name in names:
        if name not in f.get("fields", {}):
            raise DatasetFileError(f"{path}: field {name!r} is listed in the header but its dataset /fields/{name} is missing")
        d = f["fields"][name]
        fl = Field(name, str(d.attrs["role"]), tuple(d.shape[1:]), tuple(json.loads(d.attrs["dims"])),
                   str(d.attrs.get("description", "")))
        if d.shape[0] != n:
            raise DatasetFileError(f"{path}: field {name!r} has {d.shape[0]} samples, the header says {n}")
        fields.append(fl)
    for key in ("grid", "seeds", "done"):
        if key not in f:
            raise DatasetFileError(f"{path}: /{key} is missing")
    grid = Grid(str(f["grid"].attrs["kind"]), {axis: f["grid"][axis][()] for axis in f["grid"]})
    done = f["done"][()]
    n_done = int(done.sum())
    complete = bool(_attr(f, "complete")) and n_done == n
    if not complete and not allow_incomplete:
        raise DatasetFileError(
            f"{path} is incomplete ({n_done} of {n} samples done): finish it by re-running the same "
            "`diffpde generate` command, or pass allow_incomplete=True"
        )
    stats = None
    if complete:
        stats = {fl.name: {k: float(f["fields"][fl.name].attrs[k]) for k in ("mean", "std", "min", "max")} for fl in fields}
    known = {"config", "field_names", "n_samples", "seed", "dtype", "complete"}
    attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items() if k not in known}
    phrasings = 0
    if "captions" in f:
        phrasings = int(f["captions"].attrs.get("phrasings", f["captions"].shape[-1]))
        if f["captions"].shape != (n, phrasings):
            raise DatasetFileError(f"{path}: /captions has shape {f['captions'].shape}, expected ({n}, {phrasings})")
    return DatasetInfo(path, config, tuple(fields), grid, n, int(_attr(f, "seed")), str(_attr(f, "dtype")),
                       complete, n_done, stats, attrs, phrasings)


def done_indices(f: h5py.File) -> np.ndarray:
    """Indices of the samples that are completely written."""
    return np.flatnonzero(f["done"][()])


def read_fields(path: str | Path, names: Iterable[str] | None = None, indices: Sequence[int] | None = None,
                *, allow_incomplete: bool = False) -> dict[str, np.ndarray]:
    """Load fields (all by default) of the samples ``indices`` (all by default) as arrays ``[k, *shape]``."""
    with open_file(path) as f:
        info = info_of(f, allow_incomplete=allow_incomplete)
        names = info.field_names if names is None else tuple(names)
        for name in names:
            info.field(name)
        if indices is None:
            indices = done_indices(f) if allow_incomplete else np.arange(info.n_samples)
        indices = np.asarray(indices, dtype=np.int64)
        out = {}
        for name in names:
            d = f["fields"][name]
            if np.array_equal(indices, np.arange(d.shape[0])):
                out[name] = d[()]
            else:
                out[name] = np.stack([d[int(i)] for i in indices]) if len(indices) else np.empty((0, *d.shape[1:]), d.dtype)
        return out


def read_captions(source: str | Path | h5py.File, index: int | None = None) -> list[str] | list[list[str]]:
    """The caption phrasings of sample ``index`` (``K`` strings), or of every sample (``None``) from a
    dataset file (a path or an open ``h5py.File``); a clear error if the file has none."""
    if not isinstance(source, h5py.File):
        with open_file(source) as f:
            return read_captions(f, index)
    if "captions" not in source:
        raise DatasetFileError(f"{source.filename} has no captions; add them with `diffpde caption {source.filename}`")
    d = source["captions"].asstr()
    if index is None:
        return [list(row) for row in d[()]]
    n = source["captions"].shape[0]
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not -n <= index < n:
        raise IndexError(f"{source.filename}: sample index {index!r} out of range for {n} samples")
    return list(d[int(index) % n])
