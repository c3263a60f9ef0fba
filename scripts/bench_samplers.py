"""Benchmark: error against the adaptive reference per NFE for our ODE solvers, k-diffusion and diffusers.

Problem: a Gaussian mixture of 8x8 "images" (d = 64) with an exact denoiser, components with different
weights, smooth means and per-pixel standard deviations from 0.1 to 0.8, so trajectories bend when
the noise level passes the component separations. All samplers start from the same noise times
sigma_max = 80 and are compared with ``samplers.reference.reference`` (adaptive DOP853) integrated to
sigma = 2e-6 and denoised: the exact end point of the probability-flow ODE to ~1e-8.

Rows: each deterministic solver with the number of steps its NFE budget allows, on the better of the
Karras (rho = 7) and log-linear grids (sigma_min = 0.002), and ours also on the grid of
``samplers.tuning.optimized_sigmas`` (calibrated on a separate noise batch). Peers: k-diffusion's
sampling module (loaded alone) and diffusers schedulers driven through ``samplers.scheduler_bridge`` with a
``trained_betas`` table whose noise levels span [0.002, 80], so their Karras/exponential grids are the
same grids. Error: RMS over all pixels and samples of ``x - x_ref``.

Overhead: the time per step of each solver with a near-free denoiser on a ``[16, 2, 32, 32]`` state,
relative to one forward pass of a small diffusers ``UNet2DModel`` (32x32, widths (32, 64, 64)) at batch 16.

    python scripts/bench_samplers.py [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys
import tempfile
import time
import types
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from samplers import SOLVERS, get_solver, schedules  # noqa: E402
from samplers.analytic import GaussianMixtureDenoiser  # noqa: E402
from samplers.scheduler_bridge import fresh_scheduler, sample_with_scheduler, sigmas_of  # noqa: E402
from samplers.reference import reference  # noqa: E402
from samplers.tuning import COST_MODELS, calibrate, optimized_sigmas  # noqa: E402

F64 = torch.float64
SIGMA_MAX, SIGMA_MIN = 80.0, 0.002
#: deterministic solvers that run on any grid with no fitted state and no JVPs (those have rows of their own)
OURS = [name for name, info in SOLVERS.items() if not info.stochastic and name not in ("learned", "dpm_solver_v3", "genie")]


# ---------------------------------------------------------------------------------------------
# problem


def make_mixture(seed: int = 0) -> GaussianMixtureDenoiser:
    """Six components of 1x8x8 images: smooth random means of unit size, per-pixel stds in [0.1, 0.8]."""
    g = torch.Generator().manual_seed(seed)
    k = 6
    coarse = torch.randn(k, 1, 3, 3, generator=g, dtype=F64)
    means = torch.nn.functional.interpolate(coarse, size=(8, 8), mode="bilinear", align_corners=True) * 1.2
    stds = 0.1 + 0.7 * torch.rand(k, 1, 8, 8, generator=g, dtype=F64) ** 2
    weights = torch.tensor([0.3, 0.2, 0.15, 0.15, 0.1, 0.1], dtype=F64)
    return GaussianMixtureDenoiser(weights, means, stds)


class Counting:
    """Wrap a denoiser and count its calls (k-diffusion samplers do not report NFE)."""

    def __init__(self, denoiser):
        self.denoiser, self.calls = denoiser, 0

    def __call__(self, x, sigma):
        self.calls += 1
        return self.denoiser(x, sigma)


def rms(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """RMS error over everything, and the median over samples of the per-sample RMS error."""
    per_sample = ((a - b) ** 2).flatten(1).mean(1)
    return float(per_sample.mean().sqrt()), float(per_sample.sqrt().median())


# ---------------------------------------------------------------------------------------------
# peers


def load_kdiffusion_sampling():
    """k-diffusion's ``sampling.py`` alone, with a stub ``utils`` (its package __init__ needs torchvision)."""
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        return None
    name = "_bench_kdiffusion"
    package = types.ModuleType(name)
    package.__path__ = []
    utils = types.ModuleType(f"{name}.utils")
    utils.append_dims = lambda x, n: x[(...,) + (None,) * (n - x.ndim)]
    sys.modules[name], sys.modules[f"{name}.utils"] = package, utils
    path = Path(list(spec.submodule_search_locations)[0]) / "sampling.py"
    module_spec = importlib.util.spec_from_file_location(f"{name}.sampling", path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_spec.name] = module
    module_spec.loader.exec_module(module)
    return module


def kdiffusion_peers(kd):
    """name -> (sampler(model, x, sigmas), evaluations per step)."""
    if kd is None:
        return {}
    quiet = {"disable": True}
    return {
        "k.euler": (lambda m, x, s: kd.sample_euler(m, x, s, **quiet), 1),
        "k.heun": (lambda m, x, s: kd.sample_heun(m, x, s, **quiet), 2),
        "k.dpm_2": (lambda m, x, s: kd.sample_dpm_2(m, x, s, **quiet), 2),
        "k.lms": (lambda m, x, s: kd.sample_lms(m, x, s, **quiet), 1),
        "k.dpmpp_2m": (lambda m, x, s: kd.sample_dpmpp_2m(m, x, s, **quiet), 1),
        "k.dpmpp_2s(eta=0)": (lambda m, x, s: kd.sample_dpmpp_2s_ancestral(m, x, s, eta=0.0, **quiet), 2),
        "k.dpmpp_2m_sde(eta=0,heun)": (lambda m, x, s: kd.sample_dpmpp_2m_sde(m, x, s, eta=0.0, solver_type="heun", **quiet), 1),
        "k.dpmpp_3m_sde(eta=0)": (lambda m, x, s: kd.sample_dpmpp_3m_sde(m, x, s, eta=0.0, **quiet), 1),
    }


def diffusers_peers(sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX):
    """name -> factory(grid kind) of a diffusers scheduler whose noise levels span [sigma_min, sigma_max]."""
    try:
        import diffusers
    except ImportError:
        return {}
    # alphas_cumprod with sigmas log-spaced over the benchmark range: betas = 1 - a_t / a_{t-1}
    sig = torch.exp(torch.linspace(math.log(sigma_min), math.log(sigma_max), 1000, dtype=F64))
    ac = 1 / (1 + sig**2)
    betas = (1 - ac / torch.cat([torch.ones(1, dtype=F64), ac[:-1]])).tolist()
    common = {"trained_betas": betas, "num_train_timesteps": 1000}

    def grid_kw(kind):
        return {"use_karras_sigmas": True} if kind == "karras" else {"use_exponential_sigmas": True}

    vp = {"final_sigmas_type": "zero"}
    return {
        "d.DPMSolverMultistep(2M)": lambda k: diffusers.DPMSolverMultistepScheduler(**common, **grid_kw(k), **vp, solver_order=2),
        "d.DPMSolverMultistep(3M)": lambda k: diffusers.DPMSolverMultistepScheduler(**common, **grid_kw(k), **vp, solver_order=3),
        "d.UniPCMultistep": lambda k: diffusers.UniPCMultistepScheduler(**common, **grid_kw(k), **vp),
        "d.DEISMultistep": lambda k: diffusers.DEISMultistepScheduler(**common, **grid_kw(k)),
        "d.EulerDiscrete": lambda k: diffusers.EulerDiscreteScheduler(**common, **grid_kw(k)),
        "d.HeunDiscrete": lambda k: diffusers.HeunDiscreteScheduler(**common, **grid_kw(k)),
        "d.LMSDiscrete": lambda k: diffusers.LMSDiscreteScheduler(**common, **grid_kw(k)),
    }


# ---------------------------------------------------------------------------------------------
# accuracy


def fit_steps(budget: int, per_step: int) -> int:
    """Steps whose evaluations (``per_step`` each, one for the last step to 0) fit in ``budget``."""
    return max(1, (budget - 1) // per_step + 1) if per_step > 1 else budget


def fixed_grid(kind: str, steps: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX) -> torch.Tensor:
    if kind == "karras":
        return schedules.karras(steps, sigma_min, sigma_max, rho=7.0)
    return schedules.loglinear(steps, sigma_min, sigma_max)


@dataclass
class Problem:
    """What the accuracy table runs on: a denoiser, the start states, their reference end points."""

    name: str
    denoiser: object
    noise: torch.Tensor          # unit normal; x_T = noise * sigma_max
    truth: torch.Tensor          # reference end points
    calib_x: torch.Tensor        # start states for grid calibration (never the evaluated ones)
    sigma_min: float
    sigma_max: float
    fine_steps: int              # calibration grid of optimized_sigmas
    calib_rtol: float = 1e-7
    prior: object = None         # a trained prior (fitted solvers are fitted to it and kept in prior_dir)
    prior_dir: str | None = None
    calibration: object = None   # samplers.tuning.calibrate on calib_x (set by accuracy)

    @property
    def x(self) -> torch.Tensor:
        return self.noise * self.sigma_max


def mixture_problem(batch: int, calib_batch: int, fine_steps: int, log=print) -> Problem:
    den = make_mixture()
    noise = torch.randn(batch, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=F64)
    t0 = time.perf_counter()
    truth = reference(den, noise * SIGMA_MAX, (SIGMA_MAX, 2e-6), rtol=1e-9, atol=1e-9)
    log(f"reference: {time.perf_counter() - t0:.1f} s")
    calib_x = torch.randn(calib_batch, 1, 8, 8, generator=torch.Generator().manual_seed(2), dtype=F64) * SIGMA_MAX
    return Problem("Gaussian mixture, d=64", den, noise, truth, calib_x, SIGMA_MIN, SIGMA_MAX, fine_steps)


def prior_problem(prior_dir: str, batch: int, calib_batch: int, fine_steps: int, ref_steps: int,
                  cache: Path | None, log=print) -> Problem:
    """A trained prior's probability-flow ODE: noises of seed 0 (``batch``), calibration noises of seed 2.

    The reference is ``ref_steps`` Heun steps on a Karras grid (rho 7) over the prior's sigma range, kept
    in ``cache`` (safetensors, keyed by the weights' fingerprint, the noises and the steps).
    """
    from safetensors.torch import load_file, save_file

    from diffpde.models.prior import Prior
    from diffpde.models.solver_state import prior_fingerprint

    prior = Prior.from_pretrained(prior_dir).eval()
    for p in prior.parameters():
        p.requires_grad_(False)
    den = prior.denoiser()
    shape = tuple(prior.latent_shape)
    lo, hi = float(prior.sigma_min), float(prior.sigma_max)
    noise = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(0))
    calib_x = torch.randn(calib_batch, *shape, generator=torch.Generator().manual_seed(2)) * hi
    key = f"{prior_fingerprint(prior)[:16]}-b{batch}-s0-heun{ref_steps}"
    path = cache / f"reference-{key}.safetensors" if cache else None
    if path is not None and path.is_file():
        truth = load_file(str(path))["truth"]
        log(f"reference: {path}")
    else:
        t0 = time.perf_counter()
        grid = schedules.karras(ref_steps, lo, hi, rho=7.0)
        with torch.no_grad():
            truth = torch.cat([get_solver("heun")(den, noise[i:i + 16] * hi, grid) for i in range(0, batch, 16)])
        log(f"reference ({ref_steps} Heun steps): {time.perf_counter() - t0:.1f} s")
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_file({"truth": truth.contiguous(), "noise": noise.contiguous()}, str(path))
    name = f"trained prior {Path(prior_dir).name} {list(shape)}, {prior.config()['precond']['type']}"
    return Problem(name, den, noise, truth, calib_x, lo, hi, fine_steps, calib_rtol=1e-5, prior=prior, prior_dir=prior_dir)


# ---------------------------------------------------------------------------------------------
# fitted and JVP solvers (rows of their own)


def learned_rows(problem: Problem, nfes, record, log):
    """A learned solver per NFE, fitted to the prior on noises of its own seed (kept with the prior)."""
    from diffpde.inference.fitted import fitted_solver

    for n in nfes:
        t0 = time.perf_counter()
        grid, options = fitted_solver(problem.prior, "learned", n, prior_dir=problem.prior_dir, fit=True, log=log)
        log(f"learned nfe {n}: ready in {time.perf_counter() - t0:.0f} s")
        stats = {}
        out, sec = timed(lambda: get_solver("learned")(problem.denoiser, problem.x, grid, stats=stats, **options))
        record("learned [fitted]", n, rms(out, problem.truth), stats["nfe"], "fitted", sec)


def dpm_solver_v3_rows(problem: Problem, nfes, record, log):
    """DPM-Solver-v3 with the prior's statistics (measured once on its own samples), best of two grids."""
    from diffpde.inference.fitted import fitted_solver

    _, options = fitted_solver(problem.prior, "dpm_solver_v3", 1, prior_dir=problem.prior_dir, fit=True, log=log)
    lo, hi = problem.sigma_min, problem.sigma_max
    for n in nfes:
        best = None
        for kind in ("karras", "loglinear"):
            stats = {}
            out, sec = timed(lambda: get_solver("dpm_solver_v3")(problem.denoiser, problem.x, fixed_grid(kind, n, lo, hi),
                                                                 stats=stats, **options))
            err = rms(out, problem.truth)
            if best is None or err[0] < best[0][0]:
                best = (err, stats["nfe"], kind, sec)
        record("dpm_solver_v3", n, *best)


def genie_rows(problem: Problem, nfes, record, log):
    """GENIE (exponential form, order 3 reusing the previous derivative, finite-difference JVP, last step D) on
    its own tuned grid: ``k`` steps cost ``2k - 1`` evaluations (a JVP by a finite difference is one forward)."""
    from samplers.genie import local_errors, tuned_sigmas

    options = {"form": "exp", "jvp": "fd", "denoise_to_zero": True}
    calibration = problem.calibration
    if calibration is None:
        with torch.no_grad():
            calibration = calibrate(problem.denoiser, problem.calib_x, sigma_max=problem.sigma_max,
                                    sigma_min=problem.sigma_min, fine_steps=problem.fine_steps, rtol=problem.calib_rtol)
        problem.calibration = calibration
    errors = local_errors(problem.denoiser, calibration, **options)
    for n in nfes:
        steps = max(1, (n + 1) // 2)
        grid = tuned_sigmas(problem.denoiser, problem.calib_x, steps, calibration=calibration, errors=errors, **options)
        stats = {}
        out, sec = timed(lambda: get_solver("genie")(problem.denoiser, problem.x, grid, stats=stats, order=3,
                                                     verify=False, **options))
        record("genie [opt] (NFE + JVP)", n, rms(out, problem.truth), stats["nfe"] + stats.get("jvp", 0), "opt", sec)


def timed(fn):
    """``(fn(), seconds)``, gradients off."""
    t0 = time.perf_counter()
    with torch.no_grad():
        out = fn()
    return out, time.perf_counter() - t0


def accuracy(problem: Problem, nfes, log=print, extra_rows=(), only_extra: bool = False, tuned: bool = True,
             grids=("karras", "loglinear")):
    """``{method: {nfe: {"error", "median", "nfe", "grid", "seconds_per_sample"}}}`` on ``problem``.

    ``extra_rows``: callables ``(problem, nfes, record, log)`` that add rows (fitted solvers).
    """
    den, x, truth, noise = problem.denoiser, problem.x, problem.truth, problem.noise
    lo, hi, batch = problem.sigma_min, problem.sigma_max, problem.noise.shape[0]
    results = {}  # method -> {nfe: {"error", "nfe", "grid", "seconds_per_sample"}}

    def record(method, budget, error, used, grid, seconds):
        results.setdefault(method, {})[budget] = {"error": error[0], "median": error[1], "nfe": used, "grid": grid,
                                                  "seconds_per_sample": seconds / batch}

    if only_extra:
        for extra in extra_rows:
            extra(problem, nfes, record, log)
        return results

    # ours on fixed grids (best of two) and on optimised grids
    t0 = time.perf_counter()
    if tuned:
        with torch.no_grad():
            calibration = calibrate(den, problem.calib_x, sigma_max=hi, sigma_min=lo, fine_steps=problem.fine_steps,
                                    rtol=problem.calib_rtol)
        problem.calibration = calibration
        log(f"calibration: {time.perf_counter() - t0:.1f} s")
    for name in OURS:
        solver = get_solver(name)
        for budget in nfes:
            steps = fit_steps(budget, solver.nfe_per_step)
            best = None
            for kind in grids:
                stats = {}
                out, sec = timed(lambda: solver(den, x, fixed_grid(kind, steps, lo, hi), stats=stats))
                err = rms(out, truth)
                if best is None or err[0] < best[0][0]:
                    best = (err, stats["nfe"], kind, sec)
            record(name, budget, *best)
            if tuned and name in COST_MODELS:
                with torch.no_grad():
                    grid = optimized_sigmas(den, problem.calib_x, budget, solver=name, calibration=calibration)
                stats = {}
                out, sec = timed(lambda: solver(den, x, grid, stats=stats))
                record(f"{name} [opt]", budget, rms(out, truth), stats["nfe"], "opt", sec)
    log(f"ours: {time.perf_counter() - t0:.1f} s")

    for extra in extra_rows:
        t0 = time.perf_counter()
        extra(problem, nfes, record, log)
        log(f"{getattr(extra, '__name__', 'extra')}: {time.perf_counter() - t0:.1f} s")

    t0 = time.perf_counter()
    for name, (sampler, per_step) in kdiffusion_peers(load_kdiffusion_sampling()).items():
        for budget in nfes:
            steps = fit_steps(budget, per_step)
            best = None
            for kind in grids:
                model = Counting(den)
                out, sec = timed(lambda: sampler(model, x.clone(), fixed_grid(kind, steps, lo, hi)))
                err = rms(out, truth)
                if best is None or err[0] < best[0][0]:
                    best = (err, model.calls, kind, sec)
            record(name, budget, *best)
    log(f"k-diffusion: {time.perf_counter() - t0:.1f} s")

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, factory in diffusers_peers(lo, hi).items():
            for budget in nfes:
                best = None
                for kind in grids:
                    scheduler = factory(kind)
                    steps = budget
                    while True:  # the largest step count whose evaluations fit the budget
                        stats = {}
                        start = float(fresh_scheduler(scheduler, steps).sigmas[0])
                        out, sec = timed(lambda: sample_with_scheduler(den, noise.to(x.dtype) * start, scheduler, steps,
                                                                      stats=stats))
                        if stats["nfe"] <= budget or steps == 1:
                            break
                        steps -= 1
                    err = rms(out, truth)
                    if best is None or err[0] < best[0][0]:
                        best = (err, stats["nfe"], kind, sec)
                record(name, budget, *best)
    log(f"diffusers: {time.perf_counter() - t0:.1f} s")
    return results


# ---------------------------------------------------------------------------------------------
# overhead


def overhead(repeats: int, steps: int, log=print):
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=32, in_channels=2, out_channels=2, block_out_channels=(32, 64, 64), layers_per_block=1,
                       down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"), norm_num_groups=8).eval()
    params = sum(p.numel() for p in unet.parameters())
    x = torch.randn(16, 2, 32, 32)
    t = torch.full((16,), 500.0)
    with torch.no_grad():
        unet(x, t)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            unet(x, t)
            times.append(time.perf_counter() - t0)
    forward = sorted(times)[len(times) // 2]
    log(f"UNet2DModel {params / 1e6:.2f} M parameters, batch 16: {forward * 1e3:.1f} ms per forward (median of {repeats})")

    def free(y, sigma):  # near-free denoiser: one multiply
        return y * 0.5

    grid = schedules.karras(steps, SIGMA_MIN, SIGMA_MAX)
    rows = {}
    for name in OURS:
        solver = get_solver(name)
        solver(free, x * SIGMA_MAX, grid)
        per = []
        for _ in range(repeats):
            stats = {}
            t0 = time.perf_counter()
            solver(free, x * SIGMA_MAX, grid, stats=stats)
            per.append((time.perf_counter() - t0) / stats["nfe"])
        rows[name] = sorted(per)[len(per) // 2]
    import diffusers

    for name, make in [("d.DPMSolverMultistep(2M)", diffusers.DPMSolverMultistepScheduler),
                       ("d.UniPCMultistep", diffusers.UniPCMultistepScheduler),
                       ("d.EulerDiscrete", diffusers.EulerDiscreteScheduler)]:
        scheduler = make()
        start = float(sigmas_of(scheduler, steps)[0])
        per = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for _ in range(repeats):
                stats = {}
                t0 = time.perf_counter()
                sample_with_scheduler(free, x * start, scheduler, steps, stats=stats)
                per.append((time.perf_counter() - t0) / stats["nfe"])
        rows[name] = sorted(per)[len(per) // 2]
    return forward, params, rows


# ---------------------------------------------------------------------------------------------
# report


def report(problem: Problem, results, nfes, log=print) -> bool:
    """Print the tables of one problem; True when ours <= the best peer at every NFE <= 20."""
    width = max(len(m) for m in results) + 2
    samples = problem.noise.shape[0]
    for key, title in [("error", "RMS error vs the reference"),
                       ("median", "median over samples of the per-sample RMS error")]:
        log(f"\n{title} ({problem.name}, {samples} samples); grid: k=Karras rho 7, l=log-linear, o=optimised, "
            "f=fitted; * = NFE used differs from the budget")
        log("method".ljust(width) + "".join(f"{'NFE ' + str(n):>14}" for n in nfes))
        for method, row in results.items():
            cells = [f"{row[n][key]:>11.2e} {row[n]['grid'][0]}{'*' if row[n]['nfe'] != n else ' '}" if n in row
                     else "-" for n in nfes]
            log(method.ljust(width) + "".join(f"{c:>14}" for c in cells))
    log(f"\nwall time per sample in ms ({problem.name}, batch {samples}, one thread)")
    log("method".ljust(width) + "".join(f"{'NFE ' + str(n):>10}" for n in nfes))
    for method, row in results.items():
        log(method.ljust(width) + "".join(f"{1e3 * row[n]['seconds_per_sample']:>10.1f}" if n in row else f"{'-':>10}"
                                          for n in nfes))

    ours_fixed = [m for m in results if m in OURS]
    ours_all = [m for m in results if not m.startswith(("k.", "d."))]
    peers = [m for m in results if m.startswith(("k.", "d."))]
    log(f"\nbest per NFE ({problem.name}):")
    if not peers:   # --only-fitted: nothing to compare with in this run
        log("  no peer ran in this run (--only-fitted): no ratio and no verdict")
    verdict = True if peers else None
    for n in nfes:
        def best(methods):
            return min(((results[m][n]["error"], m) for m in methods if n in results[m]), default=(math.inf, "-"))
        of, oa, pe = best(ours_fixed), best(ours_all), best(peers)
        if not peers:
            log(f"  NFE {n:>3}: ours {oa[0]:.2e} ({oa[1]})")
            continue
        ok = oa[0] <= pe[0] * (1 + 1e-6)
        if n <= 20:
            verdict &= ok
        log(f"  NFE {n:>3}: ours {oa[0]:.2e} ({oa[1]}), ours on fixed grids {of[0]:.2e} ({of[1]}), "
            f"best peer {pe[0]:.2e} ({pe[1]})  ratio {oa[0] / pe[0]:.2f}")
    return verdict


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer NFEs, smaller batches")
    parser.add_argument("--json", type=str, default=None, help="write the results to this JSON file")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for everything (1: robust timings on shared cores)")
    parser.add_argument("--prior", action="append", default=[], metavar="DIR",
                        help="also (or with --no-mixture, only) the table of a trained prior; repeatable")
    parser.add_argument("--no-mixture", action="store_true", help="skip the Gaussian-mixture table and the overhead")
    parser.add_argument("--no-tuned", action="store_true", help="trained priors: skip the optimised grids (minutes each)")
    parser.add_argument("--grids", default="karras,loglinear", help="trained priors: fixed grids tried (best kept)")
    parser.add_argument("--only-fitted", action="store_true",
                        help="trained priors: only the learned, DPM-Solver-v3 and GENIE rows (and the best peer's, from --peers-json)")
    parser.add_argument("--no-fitted", action="store_true",
                        help="trained priors: skip the learned, DPM-Solver-v3 and GENIE rows (fitting takes minutes)")
    parser.add_argument("--nfes", type=str, default=None, help="comma-separated NFE budgets")
    parser.add_argument("--batch", type=int, default=16, help="noises per trained prior (seed 0)")
    parser.add_argument("--ref-steps", type=int, default=400, help="Heun steps of a trained prior's reference")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "diffpde" / "bench_samplers",
                        help="where trained-prior references are kept")
    args = parser.parse_args(argv)

    log = lambda s: print(s, file=sys.stderr)  # noqa: E731
    nfes = [4, 8, 16] if args.quick else [4, 6, 8, 10, 16, 20, 50]
    if args.nfes:
        nfes = [int(n) for n in args.nfes.split(",")]
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    payload = {"nfes": nfes, "problems": {}}
    verdicts = {}
    if not args.no_mixture:
        problem = mixture_problem(batch=32 if args.quick else 128, calib_batch=16 if args.quick else 32,
                                  fine_steps=32 if args.quick else 64, log=log)
        results = accuracy(problem, nfes, log=log)
        verdicts[problem.name] = report(problem, results, nfes, log=print)
        payload["problems"][problem.name] = results
    for prior_dir in args.prior:
        problem = prior_problem(prior_dir, args.batch, calib_batch=8, fine_steps=32 if args.quick else 48,
                                ref_steps=args.ref_steps, cache=args.cache, log=log)
        results = accuracy(problem, [n for n in nfes if n <= 20] or nfes, log=log,
                           extra_rows=[] if args.no_fitted else [learned_rows, dpm_solver_v3_rows, genie_rows],
                           only_extra=args.only_fitted, tuned=not args.no_tuned, grids=tuple(args.grids.split(",")))
        verdicts[problem.name] = report(problem, results, [n for n in nfes if n <= 20] or nfes, log=print)
        payload["problems"][problem.name] = results

    worst = 0.0
    if not args.no_mixture:
        forward, params, per_step = overhead(repeats=5 if args.quick else 15, steps=10 if args.quick else 20, log=log)
        print(f"\nper-step solver overhead relative to one UNet forward ({forward * 1e3:.1f} ms, {params / 1e6:.2f} M params, batch 16):")
        for name, t in per_step.items():
            share = t / forward
            if name in OURS:
                worst = max(worst, share)
            print(f"  {name:<26} {t * 1e3:7.3f} ms per evaluation  {100 * share:6.2f} %")
        payload.update({"unet_forward_s": forward, "unet_params": params, "per_evaluation_overhead_s": per_step})
    print("\ntarget: ours <= best peer at every NFE <= 20: " +
          ", ".join(f"{name}: {'yes' if ok else ('no peers run' if ok is None else 'NO')}"
                    for name, ok in verdicts.items()) +
          (f"; our worst overhead {100 * worst:.2f} % (< 5 %: {'yes' if worst < 0.05 else 'NO'})" if not args.no_mixture else "") +
          f"; total {time.perf_counter() - t_start:.0f} s")

    if args.json:
        payload["target_met"] = (None if any(ok is None for ok in verdicts.values())
                                 else bool(all(verdicts.values()) and worst < 0.05))
        path = Path(args.json)
        with tempfile.NamedTemporaryFile("w", dir=path.parent or ".", delete=False, suffix=".tmp") as f:
            json.dump(payload, f, indent=1, default=str)
        os.replace(f.name, path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
