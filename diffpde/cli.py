"""The ``diffpde`` command.

Each subcommand lives in a module with two functions: ``add_parser(subparsers)`` (its argparse
parser) and ``run(args) -> int`` (the exit code). To add a command, add one line to ``COMMANDS``;
only the module of the command being run is imported, so ``diffpde --help`` stays fast.

Threads. Torch's intra-op threads wait for work by spinning (OpenMP's active wait policy): with one
other busy process on a 2-core machine, two spinning threads made the demo 5x slower than one
thread (915 s vs 177 s). The command therefore sets ``OMP_WAIT_POLICY=PASSIVE`` before torch is
loaded (idle threads sleep instead of spinning), unless the environment sets it, and uses
``--threads N`` threads (default: ``$DIFFPDE_THREADS``, else torch's default, one per core). The
measurements behind this default are in the README ("Threads").
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Sequence

# Must happen before anything loads torch's OpenMP runtime, which reads it once.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "generate": ("diffpde.data.generate", "generate a dataset with a PDE family's solver"),
    "caption": ("diffpde.data.caption_cli", "add captions from the physics to an existing dataset file"),
    "import-pdebench": ("diffpde.data.pdebench", "convert a PDEBench HDF5 file (darcy, burgers)"),
    "train": ("diffpde.training.cli", "train a diffusion prior from a YAML config (Accelerate)"),
    "sample": ("diffpde.inference.cli", "sample a posterior from observations"),
    "evaluate": ("diffpde.inference.cli", "evaluate a prior on forward / inverse / reconstruction tasks"),
    "control": ("diffpde.inference.control_cli",
                "steer a PDE's final state to a target by guided sampling (baselines: no control, adjoint optimum)"),
    "fit-solver": ("diffpde.inference.fit_cli", "fit a learned solver or DPM-Solver-v3's statistics to a prior"),
    "demo": ("diffpde.demo", "the main job on a small Darcy problem: generate, train (or reuse), reconstruct"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The top-level parser; only ``command``'s module is imported to build its full sub-parser."""
    from . import __version__

    parser = argparse.ArgumentParser(prog="diffpde", description="Solving PDEs with diffusion models.")
    parser.add_argument("--version", action="version", version=f"diffpde {__version__}")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="torch threads (default: $DIFFPDE_THREADS, else one per core); see the module docstring")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_) in COMMANDS.items():
        if name == command:
            importlib.import_module(module).add_parser(subparsers)
        else:
            subparsers.add_parser(name, help=help_)
    return parser


def _command_name(argv: Sequence[str]) -> str | None:
    """The subcommand in ``argv``: the first word that is neither an option nor an option's value."""
    skip = False
    for a in argv:
        if skip:
            skip = False
        elif a == "--threads":
            skip = True
        elif not a.startswith("-"):
            return a
    return None


def set_threads(threads: int | None) -> None:
    """Use ``threads`` torch threads (``None``: ``$DIFFPDE_THREADS`` if set, else leave torch's default)."""
    if threads is None:
        text = os.environ.get("DIFFPDE_THREADS", "").strip()
        if not text:
            return
        try:
            threads = int(text)
        except ValueError:
            raise ValueError(f"DIFFPDE_THREADS={text!r}: expected a positive integer") from None
    if threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    import torch

    torch.set_num_threads(threads)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = _command_name(argv)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    try:
        set_threads(args.threads)
        run = importlib.import_module(COMMANDS[args.command][0]).run
        return int(run(args) or 0)
    except KeyboardInterrupt:
        print(f"diffpde {args.command}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, KeyError, TypeError, OSError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"diffpde {args.command}: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
