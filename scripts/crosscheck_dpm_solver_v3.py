"""Cross-check ``samplers.dpm_solver_v3`` against the reference implementation (thu-ml/DPM-Solver-v3).

The reference sampler module is imported from a local checkout (never copied here): ``--reference`` is the
checkout (its top-level ``dpm_solver_v3.py``) or the file itself. Both solvers run on the same model, a
Gaussian mixture of 2 x 4 x 4 "images" with an exact denoiser (``samplers.analytic``), wrapped for the
reference into its noise-prediction format on the EDM schedule (``alpha = 1``, ``sigma_t = t``,
``eps = (x - D) / t``), with the same statistics (computed here by ``compute_ems`` and written as the
reference's ``l.npz`` / ``sb.npz``) on the reference's own lambda grid, and on the reference's time steps
(which it rounds to the statistics grid) followed by 0. Compared: the reference's output at ``sigma_min``
with our state there (the callback after the step to ``sigma_min``), as the max over samples and entries of
``|ours - ref| / max |ref|``, for orders 1-3, with and without the corrector and the pseudo-order options,
on log-SNR and Karras (``edm``) grids. Our ``quadrature="trapezoid"`` is the reference's rule.

Stubs (only what CPU execution needs): ``Tensor.cuda`` returns the tensor. The reference builds its time
steps and the lambdas of its multistep fits in float32 (``torch.Tensor(...)``, ``torch.FloatTensor(...)``); it
runs as written, and again with those two constructors made float64 (``--float64``, the default runs both),
which shows whether a difference is that rounding or the algorithm. ``lower_order_final`` is off in the
comparison: ours counts the final step to 0 (so its last step to ``sigma_min`` may have order 2), the
reference stops at ``sigma_min`` (order 1 there).

    python scripts/crosscheck_dpm_solver_v3.py --reference /path/to/DPM-Solver-v3
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import itertools
import math
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import samplers  # noqa: E402
from samplers.analytic import GaussianMixtureDenoiser  # noqa: E402
from samplers.dpm_solver_v3 import EMS, compute_ems  # noqa: E402

F64 = torch.float64
SIGMA_MIN, SIGMA_MAX = 0.005, 40.0


def load_reference(path: str):
    """Import the reference's ``dpm_solver_v3.py`` from a checkout or a file path."""
    file = Path(path)
    if file.is_dir():
        file = file / "dpm_solver_v3.py"
    if not file.is_file():
        raise SystemExit(f"no reference module at {file}")
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # stub: the reference moves tensors with .cuda()
    spec = importlib.util.spec_from_file_location("reference_dpm_solver_v3", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def float64_constructors(enabled: bool):
    """Make ``torch.Tensor(list)`` and ``torch.FloatTensor(list)`` float64 inside the block (when enabled)."""
    if not enabled:
        yield
        return
    old_default, old_float = torch.get_default_dtype(), torch.FloatTensor
    torch.set_default_dtype(F64)
    torch.FloatTensor = lambda data: torch.tensor([float(t) for t in data], dtype=F64)
    try:
        yield
    finally:
        torch.set_default_dtype(old_default)
        torch.FloatTensor = old_float


def make_model() -> GaussianMixtureDenoiser:
    g = torch.Generator().manual_seed(0)
    means = torch.randn(4, 2, 4, 4, generator=g, dtype=F64)
    stds = 0.15 + 0.5 * torch.rand(4, 2, 4, 4, generator=g, dtype=F64)
    return GaussianMixtureDenoiser(torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=F64), means, stds)


def run(ref, den, stats_dir: str, ems: EMS, x: torch.Tensor, steps: int, skip: str, opts: dict, f64: bool):
    """Return (ours, reference) at sigma_min for one configuration."""
    def noise_model(x_, t):
        return (x_ - den(x_, t)) / t.reshape(-1, *[1] * (x_.ndim - 1))

    with float64_constructors(f64), contextlib.redirect_stdout(io.StringIO()):
        solver = ref.DPM_Solver_v3(stats_dir, ref.NoiseScheduleEDM(), steps=steps, t_start=SIGMA_MAX, t_end=SIGMA_MIN,
                                   skip_type=skip, device="cpu")
        expected = solver.sample(x.clone(), noise_model, order=opts["order"], p_pseudo=opts["pseudo"],
                                 use_corrector=opts["corrector"], c_pseudo=opts["corrector_pseudo"],
                                 lower_order_final=False)
    nodes = solver.ts.flatten().to(F64)
    ours_ems = EMS(nodes, ems.l, ems.s, ems.b, num_samples=ems.num_samples, derivative=ems.derivative)
    grid = torch.cat([torch.exp(-nodes[solver.indexes]), torch.zeros(1, dtype=F64)])  # the reference's times, then 0
    seen = {}

    def grab(info):
        if info["step"] == steps - 1:
            seen["x"] = info["x"]

    samplers.sample(den, x, grid, solver="dpm_solver_v3", ems=ours_ems, callback=grab, quadrature="trapezoid",
                    lower_order_final=False, **opts)
    return seen["x"], expected


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reference", required=True, help="checkout of thu-ml/DPM-Solver-v3 (or its dpm_solver_v3.py)")
    parser.add_argument("--float64", choices=["both", "yes", "no"], default="both",
                        help="run the reference with float64 constructors (yes), as written (no), or both")
    parser.add_argument("--samples", type=int, default=1024, help="samples for the statistics")
    parser.add_argument("--n-grid", type=int, default=60, help="intervals of the statistics grid")
    args = parser.parse_args(argv)

    ref = load_reference(args.reference)
    den = make_model()
    x0 = den.sample(args.samples, generator=torch.Generator().manual_seed(1))
    ems = compute_ems(den, x0, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, n_grid=args.n_grid, batch=1024,
                      generator=torch.Generator().manual_seed(2), derivative="jvp")
    x = torch.randn(8, *den.shape, generator=torch.Generator().manual_seed(3), dtype=F64) * SIGMA_MAX
    modes = {"both": [False, True], "yes": [True], "no": [False]}[args.float64]
    worst = {}
    with tempfile.TemporaryDirectory() as stats_dir:
        np.savez(Path(stats_dir) / "l.npz", l=ems.l.numpy())
        np.savez(Path(stats_dir) / "sb.npz", s=ems.s.numpy(), b=ems.b.numpy())
        print(f"{'reference':>14} {'grid':>6} {'NFE':>4} {'order':>5} {'corr':>5} {'pseudo':>6} {'c_pseudo':>8} "
              f"{'max rel diff':>13}")
        for f64, skip, steps, order, corrector, pseudo, c_pseudo in itertools.product(
                modes, ["logSNR", "edm"], [5, 8, 12], [1, 2, 3], [False, True], [False, True], [False, True]):
            if (pseudo and order == 1) or (c_pseudo and not corrector):
                continue
            opts = {"order": order, "corrector": corrector, "pseudo": pseudo, "corrector_pseudo": c_pseudo}
            ours, expected = run(ref, den, stats_dir, ems, x, steps, skip, opts, f64)
            diff = ((ours - expected).abs().max() / expected.abs().max()).item()
            key = "float64" if f64 else "as written"
            worst[key] = max(worst.get(key, 0.0), diff)
            print(f"{key:>14} {skip:>6} {steps:>4} {order:>5} {str(corrector):>5} {str(pseudo):>6} {str(c_pseudo):>8} "
                  f"{diff:13.3e}")
    for key, value in worst.items():
        print(f"max relative difference, reference {key}: {value:.3e}")
    return max(worst.values())


if __name__ == "__main__":
    main()
