"""How close does a trained prior's unconditional sampling come to its data?

    python scripts/eval_prior.py --prior runs/darcy_tiny/prior --data data/darcy_32_n512.h5
        [--n 64] [--steps 32] [--threads N]

Prints per-field mean/std against the data, the Darcy high-permeability fraction, the RMS PDE
residual of the generated (a, u) pairs next to the data's, and the power-spectrum distance
(mean |log10| ratio of radially averaged spectra) -- see diffpde.training.evaluation.
Threads follow the ``diffpde`` command's policy (``--threads``, else $DIFFPDE_THREADS, else torch's
default; idle OpenMP threads sleep): see diffpde/cli.py.
"""

import argparse
import os

# as in diffpde.cli, before torch loads its OpenMP runtime (which reads it once)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from diffpde.cli import set_threads  # noqa: E402
from diffpde.data import FieldDataset  # noqa: E402
from diffpde.models.prior import Prior  # noqa: E402
from diffpde.training.evaluation import evaluate_prior  # noqa: E402
from diffpde.training.records import write_json_atomic  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prior", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--n", type=int, default=64, help="samples to draw")
    parser.add_argument("--solver", default="heun")
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--json", default=None)
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="torch threads (default: $DIFFPDE_THREADS, else torch's default)")
    args = parser.parse_args()
    try:
        set_threads(args.threads)
    except ValueError as err:
        parser.error(str(err))
    prior = Prior.from_pretrained(args.prior)
    dataset = FieldDataset(args.data, fields=prior.fields, in_memory=True)
    result = evaluate_prior(prior, dataset, n_samples=args.n, solver=args.solver, steps=args.steps)
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:{width}s}  {value:.4g}" if isinstance(value, float) else f"{key:{width}s}  {value}")
    if args.json:
        write_json_atomic(args.json, result, indent=2)


if __name__ == "__main__":
    main()
