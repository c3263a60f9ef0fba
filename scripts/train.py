#!/usr/bin/env python
"""Train a diffusion prior: ``accelerate launch scripts/train.py --config configs/darcy.yaml [--variant tiny] [key=value ...]``.

The same as ``diffpde train``; see :mod:`diffpde.training.cli`.
"""

import argparse
import sys

from diffpde.training.checkpoint import CheckpointError
from diffpde.training.cli import add_arguments, run
from diffpde.training.config import ConfigError


def main(argv=None) -> int:
    parser = add_arguments(argparse.ArgumentParser(description=__doc__))
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (ConfigError, CheckpointError, FileNotFoundError) as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
