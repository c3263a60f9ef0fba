"""How close does a trained prior's unconditional sampling come to its data?

    python scripts/eval_prior.py --prior runs/darcy_tiny/prior --data data/darcy_32_n512.h5 [--n 64] [--steps 32]

Prints per-field mean/std against the data, the Darcy high-permeability fraction, the RMS PDE
residual of the generated (a, u) pairs next to the data's, and the power-spectrum distance
(mean |log10| ratio of radially averaged spectra) -- see diffpde.training.evaluation.
"""

import argparse
import json

import torch

from diffpde.data import FieldDataset
from diffpde.models.prior import Prior
from diffpde.training.evaluation import evaluate_prior


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prior", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--n", type=int, default=64, help="samples to draw")
    parser.add_argument("--solver", default="heun")
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    prior = Prior.from_pretrained(args.prior)
    dataset = FieldDataset(args.data, fields=prior.fields, in_memory=True)
    result = evaluate_prior(prior, dataset, n_samples=args.n, solver=args.solver, steps=args.steps)
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:{width}s}  {value:.4g}" if isinstance(value, float) else f"{key:{width}s}  {value}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
