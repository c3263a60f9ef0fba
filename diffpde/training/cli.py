"""``diffpde train`` and ``scripts/train.py``: train a prior from a YAML config.

    diffpde train --config configs/darcy.yaml --variant tiny train.max_steps=200
    accelerate launch --multi_gpu --num_processes 2 scripts/train.py --config configs/darcy.yaml key=value ...
    diffpde train --config configs/darcy.yaml --resume latest
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options shared by ``diffpde train`` and ``scripts/train.py``."""
    parser.add_argument("--config", required=True, help="YAML training config (configs/<problem>.yaml)")
    parser.add_argument("--variant", default=None, help="a variant of the config (e.g. tiny, or tiny+flow to merge several); same as variant=NAME")
    parser.add_argument("--resume", default=None, metavar="latest|PATH",
                        help="resume from the newest complete checkpoint in output_dir, or from a checkpoint directory")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="dotted overrides with typed values (train.max_steps=100 optim.lr=1e-4 "
                             "model.network.block_out_channels=[32,64])")
    return parser


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("train", help="train a diffusion prior (Accelerate)",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    return add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Load the config, train, and print where the prior went (main process)."""
    from .config import load_config
    from .trainer import Trainer

    config = load_config(args.config, args.overrides, variant=args.variant)
    trainer = Trainer(config)
    summary = trainer.fit(resume=args.resume)
    if trainer.accelerator.is_main_process:
        last = summary["history"][-1] if summary["history"] else {}
        print(f"trained {summary['step']} steps on {summary['world_size']} process(es); "
              f"last loss {last.get('loss', float('nan')):.4g}; prior saved to {summary['prior']}")
    return 0
