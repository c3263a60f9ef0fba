"""Import PDEBench HDF5 files into the diffpde dataset layout.

Supported (the files' own dataset names):

- 2D Darcy flow (``2D_DarcyFlow_beta*.hdf5``): ``nu`` [N, n, n] (coefficient), ``tensor``
  [N, 1, n, n] (solution), ``x-coordinate`` [n], ``y-coordinate`` [n]. Stored as fields ``a``
  (input) and ``u`` (output), dims ``("y", "x")``: the last array axis is x.
- 1D Burgers (``1D_Burgers_Sols_Nu*.hdf5``): ``tensor`` [N, nt, nx] (trajectories, the first frame
  the initial condition), ``x-coordinate`` [nx], ``t-coordinate`` [nt] or [nt + 1]. Stored as
  fields ``u0`` = ``tensor[:, 0]`` (input, dims ``("x",)``) and ``u`` = the whole trajectory
  including t = 0 (output, dims ``("t", "x")``). When ``t-coordinate`` has nt + 1 entries, the
  first nt are kept.

Grids. PDEBench coordinates are cell centres (``x_i = (i + 1/2) / n`` on the unit interval); they
are recorded as given, with grid kind ``"cell-centred"``. diffpde's own families use vertex grids
(``i / (n - 1)``, boundary nodes included) or periodic grids (``i / n``), so an imported Darcy
solution does not vanish on the first and last grid rows as a diffpde Darcy solution does, and
residuals of a diffpde family evaluated on imported data are only approximately zero.

The physical parameters (Darcy's forcing ``beta``, Burgers' viscosity ``nu``) are in the file
names, not in the files; pass them with ``parameters`` (``--param``) to record them. Imported
files have no seeds (``/seeds`` is -1).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Mapping

import h5py
import numpy as np
from tqdm.auto import tqdm

from ..pdes import Field, Grid
from . import hdf5
from .generate import parse_parameters, partial_path

PROBLEMS = ("darcy", "burgers")


def _require(src: h5py.File, path: Path, problem: str, names: tuple[str, ...]) -> None:
    missing = [n for n in names if n not in src]
    if missing:
        raise hdf5.DatasetFileError(f"{path} is not a PDEBench {problem} file: dataset(s) {missing} missing "
                                    f"(it has {sorted(src)})")


def _layout(src: h5py.File, path: Path, problem: str):
    """Fields, grid, sample count and a reader ``block(start, stop) -> {name: array}`` of a PDEBench file."""
    if problem == "darcy":
        _require(src, path, problem, ("tensor", "nu", "x-coordinate", "y-coordinate"))
        u, a = src["tensor"], src["nu"]
        x, y = src["x-coordinate"][()].reshape(-1), src["y-coordinate"][()].reshape(-1)
        if u.ndim != 4 or u.shape[1] != 1 or a.shape != (u.shape[0], *u.shape[2:]) or u.shape[2:] != (len(y), len(x)):
            raise hdf5.DatasetFileError(f"{path}: PDEBench darcy shapes do not fit: tensor {u.shape}, nu {a.shape}, "
                                        f"y {len(y)}, x {len(x)} (want [N,1,ny,nx], [N,ny,nx])")
        shape = u.shape[2:]
        fields = (Field("a", "input", shape, ("y", "x"), "permeability (PDEBench nu)"),
                  Field("u", "output", shape, ("y", "x"), "pressure (PDEBench tensor)"))
        return fields, {"y": y, "x": x}, u.shape[0], lambda i, j: {"a": a[i:j], "u": u[i:j, 0]}
    if problem == "burgers":
        _require(src, path, problem, ("tensor", "x-coordinate", "t-coordinate"))
        u = src["tensor"]
        x, t = src["x-coordinate"][()].reshape(-1), src["t-coordinate"][()].reshape(-1)
        if u.ndim != 3 or u.shape[2] != len(x) or len(t) not in (u.shape[1], u.shape[1] + 1):
            raise hdf5.DatasetFileError(f"{path}: PDEBench burgers shapes do not fit: tensor {u.shape}, t {len(t)}, "
                                        f"x {len(x)} (want [N,nt,nx], nt or nt+1 times, nx points)")
        nt, nx = u.shape[1:]
        fields = (Field("u0", "input", (nx,), ("x",), "initial condition"),
                  Field("u", "output", (nt, nx), ("t", "x"), "trajectory, t = 0 included"))
        return fields, {"t": t[:nt], "x": x}, u.shape[0], lambda i, j: {"u0": u[i:j, 0], "u": u[i:j]}
    raise ValueError(f"unknown PDEBench problem {problem!r}; supported: {', '.join(PROBLEMS)}")


def import_pdebench(
    src: str | Path,
    problem: str,
    out: str | Path,
    *,
    parameters: Mapping[str, Any] | None = None,
    dtype: str = "float32",
    progress: bool = True,
    overwrite: bool = False,
    block: int = 64,
) -> Path:
    """Convert the PDEBench file ``src`` of ``problem`` ("darcy" or "burgers") into ``out``; return ``out``."""
    src, out = Path(src), Path(out)
    if problem not in PROBLEMS:
        raise ValueError(f"unknown PDEBench problem {problem!r}; supported: {', '.join(PROBLEMS)}")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; choose another output or overwrite it (--overwrite)")
    partial = partial_path(out)
    with hdf5.open_file(src) as f:
        fields, coords, n, read = _layout(f, src, problem)
        if n < 1:
            raise hdf5.DatasetFileError(f"{src}: no samples")
        resolution = fields[0].shape[-1]
        config = {"name": problem, "resolution": int(resolution), "parameters": dict(parameters or {})}
        hdf5.create_file(partial, config=config, fields=fields, grid=Grid("cell-centred", coords), n_samples=n,
                         seeds=np.full(n, -1, dtype=np.int64), dtype=dtype, seed=-1, seed_rule="imported",
                         creator="diffpde import-pdebench", source=f"PDEBench {src.name}")
        with hdf5.open_for_writing(partial) as g, tqdm(total=n, desc=f"import {src.name}", unit="sample",
                                                       disable=not progress, dynamic_ncols=True) as bar:
            for start in range(0, n, block):
                stop = min(n, start + block)
                for name, values in read(start, stop).items():
                    values = np.asarray(values, dtype=np.float64)
                    if not np.isfinite(values).all():
                        bad = start + int(np.flatnonzero(~np.isfinite(values.reshape(len(values), -1)).all(-1))[0])
                        raise hdf5.DatasetFileError(f"{src}: field {name!r} of sample {bad} contains NaN or inf")
                    g["fields"][name][start:stop] = values
                g.flush()
                g["done"][start:stop] = 1
                g.flush()
                bar.update(stop - start)
            hdf5.finalize(g)
    os.replace(partial, out)
    return out


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("import-pdebench", help="convert a PDEBench HDF5 file (darcy, burgers)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="PDEBench .hdf5 file")
    p.add_argument("--problem", choices=PROBLEMS, required=True, help="which PDEBench family the file holds")
    p.add_argument("--out", required=True, help="output HDF5 file")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="physical parameter to record (e.g. beta=1.0, nu=0.001)")
    p.add_argument("--dtype", choices=hdf5.DTYPES, default="float32", help="storage dtype (default float32)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def run(args: argparse.Namespace) -> int:
    out = import_pdebench(args.src, args.problem, args.out, parameters=parse_parameters(args.param),
                          dtype=args.dtype, progress=not args.quiet, overwrite=args.overwrite)
    if not args.quiet:
        print(f"wrote {out}")
    return 0
