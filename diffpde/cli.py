"""The ``diffpde`` command.

Each subcommand lives in a module with two functions: ``add_parser(subparsers)`` (its argparse
parser) and ``run(args) -> int`` (the exit code). To add a command, add one line to ``COMMANDS``;
only the module of the command being run is imported, so ``diffpde --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "generate": ("diffpde.data.generate", "generate a dataset with a PDE family's solver"),
    "import-pdebench": ("diffpde.data.pdebench", "convert a PDEBench HDF5 file (darcy, burgers)"),
    "train": ("diffpde.training.cli", "train a diffusion prior from a YAML config (Accelerate)"),
    "sample": ("diffpde.inference.cli", "sample a posterior from observations"),
    "evaluate": ("diffpde.inference.cli", "evaluate a prior on forward / inverse / reconstruction tasks"),
    "demo": ("diffpde.demo", "the main job on a small Darcy problem: generate, train (or reuse), reconstruct"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The top-level parser; only ``command``'s module is imported to build its full sub-parser."""
    from . import __version__

    parser = argparse.ArgumentParser(prog="diffpde", description="Solving PDEs with diffusion models.")
    parser.add_argument("--version", action="version", version=f"diffpde {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_) in COMMANDS.items():
        if name == command:
            importlib.import_module(module).add_parser(subparsers)
        else:
            subparsers.add_parser(name, help=help_)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    run = importlib.import_module(COMMANDS[args.command][0]).run
    try:
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
