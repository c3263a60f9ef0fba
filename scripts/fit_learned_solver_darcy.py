"""Learned few-step solvers on the demo's trained Darcy prior: held-out error per NFE, fitting time, time per sample.

Reference end points (``--ref``, a torch file of plain tensors): ``eval_noise``/``eval_ref`` (16 noises, seed 0) and
``fit_noise``/``fit_ref`` (32 noises, seed 1), ``x_T = 80 * noise``, each end point a 400-step Heun solve on a
Karras grid (rho 7, 80 -> 0.002 -> 0). ``--extra-fit N`` adds N more fit noises (seed 2) with end points computed
the same way (cached in ``--extra-cache``). The solvers are fitted on the fit noises only (a quarter held out for
validation inside the fit); every number in the table is on the eval noises. Error: RMS of ``x - ref`` over
everything (normalised frame).

Rows per NFE: DPM-Solver++(2M)/(3M)/UniPC on the grid of ``samplers.tuning.optimized_sigmas`` (calibrated on
the fit noises ``[-16:-8]``), the best of them ("tuned"), and the learned solver started from DPM-Solver++(2M)
or (3M) on its tuned or the Karras grid (the better on the fit noises ``[-8:]``). The issue's best peer
(k-diffusion/diffusers on Karras) and its target (1/2 of it at NFE <= 10, 0.7 at 16, 20) are printed beside them.

    OMP_NUM_THREADS=1 python scripts/fit_learned_solver_darcy.py --nfe 5 6 --steps 200 --lr 0.04 --batch 6 \
        --extra-fit 16 --per-channel --history 5 --fit-each-base [--grids CACHE] [--json out.json] [--save DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from samplers import get_solver, schedules
from samplers.learned import LearnedSolver, fit_learned_solver
from samplers.tuning import calibrate, optimized_sigmas

PEER = {4: None, 5: 0.254, 6: 0.222, 8: 0.180, 10: 0.145, 16: 0.059, 20: 0.030}
S_MAX, S_MIN = 80.0, 0.002


def rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).pow(2).mean().sqrt())


def heun_reference(denoiser, noise: torch.Tensor, batch: int = 16) -> torch.Tensor:
    grid = schedules.karras(400, S_MIN, S_MAX, rho=7.0)
    with torch.no_grad():
        return torch.cat([get_solver("heun")(denoiser, S_MAX * noise[k:k + batch], grid) for k in range(0, len(noise), batch)])


def run(denoiser, name: str, noise: torch.Tensor, grid, batch: int = 16, **options) -> tuple[torch.Tensor, float]:
    """Samples from ``S_MAX * noise`` and the wall time per sample."""
    t = time.perf_counter()
    with torch.no_grad():
        out = torch.cat([get_solver(name)(denoiser, S_MAX * noise[k:k + batch], grid, **options)
                         for k in range(0, len(noise), batch)])
    return out, (time.perf_counter() - t) / len(noise)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prior", required=True, help="the demo Darcy prior directory (e.g. ~/.cache/diffpde/demo/darcy32-*/prior)")
    parser.add_argument("--ref", required=True, help="reference end points (torch file, see the docstring)")
    parser.add_argument("--nfe", type=int, nargs="+", default=[5, 6, 8, 10, 16, 20])
    parser.add_argument("--steps", type=int, default=80, help="Adam iterations per NFE")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--batch", type=int, default=8, help="fit noises per iteration")
    parser.add_argument("--history", type=int, default=3)
    parser.add_argument("--base", nargs="+", default=["dpmpp_2m", "dpmpp_3m"],
                        help="bases to start from (the best on 8 fit noises is fitted)")
    parser.add_argument("--per-channel", action="store_true", help="one weight per channel")
    parser.add_argument("--fit-each-base", action="store_true",
                        help="fit from every --base and keep the lowest validation error (fit time adds up)")
    parser.add_argument("--learn", nargs="+", default=["sigmas", "weights", "shifts"])
    parser.add_argument("--slack", type=float, default=0.0)
    parser.add_argument("--val-fraction", type=float, default=0.25)
    parser.add_argument("--extra-fit", type=int, default=0, help="more fit noises (seed 2), 400-step Heun end points")
    parser.add_argument("--extra-cache", default=str(Path.home() / ".cache" / "diffpde" / "darcy_demo_ref_extra.pt"))
    parser.add_argument("--grids", default=None, help="cache of the tuned grids (torch file, keys 'solver:nfe')")
    parser.add_argument("--no-baselines", action="store_true", help="only the tuned DPM-Solver++(2M) start")
    parser.add_argument("--continue-from", default=None, help="directory of saved solvers to continue fitting from")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None)
    parser.add_argument("--save", default=None, help="directory for the fitted solvers (safetensors + JSON metadata)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from diffpde.models.prior import Prior  # the script measures on a diffpde prior; samplers/ does not import it

    prior = Prior.from_pretrained(args.prior)
    denoiser = prior.denoiser()
    ref = torch.load(args.ref, weights_only=True)
    fit_noise, fit_ref, eval_noise, eval_ref = ref["fit_noise"], ref["fit_ref"], ref["eval_noise"], ref["eval_ref"]
    if args.extra_fit:
        cache = Path(args.extra_cache)
        extra = torch.load(cache, weights_only=True) if cache.exists() else {}
        if extra.get("noise", torch.empty(0)).shape[:1] != (args.extra_fit,):
            t = time.perf_counter()
            noise = torch.randn(args.extra_fit, *prior.latent_shape, generator=torch.Generator().manual_seed(2))
            extra = {"noise": noise, "ref": heun_reference(denoiser, noise)}
            torch.save(extra, cache)
            print(f"extra fit references: {args.extra_fit} in {time.perf_counter() - t:.0f} s", flush=True)
        fit_noise, fit_ref = torch.cat([fit_noise, extra["noise"]]), torch.cat([fit_ref, extra["ref"]])
    assert not any(torch.equal(a, b) for a in fit_noise for b in eval_noise), "fit and eval noises overlap"
    print(f"fit noises {len(fit_noise)}, eval noises {len(eval_noise)}", flush=True)

    grids = torch.load(args.grids, weights_only=True) if args.grids and Path(args.grids).exists() else {}
    calibration = None

    def tuned_grid(name: str, nfe: int) -> torch.Tensor:
        """optimized_sigmas calibrated on the fit noises [-16:-8] (or read from --grids)."""
        nonlocal calibration
        key = f"{name}:{nfe}"
        if key not in grids:
            if calibration is None:
                t = time.perf_counter()
                calibration = calibrate(denoiser, S_MAX * fit_noise[-16:-8], sigma_max=S_MAX, sigma_min=S_MIN)
                print(f"calibration (optimized_sigmas) {time.perf_counter() - t:.0f} s", flush=True)
            grids[key] = optimized_sigmas(denoiser, calibration.x, nfe, solver=name, calibration=calibration)
            if args.grids:
                torch.save(grids, args.grids)
        return grids[key]

    rows = []
    for nfe in args.nfe:
        row = {"nfe": nfe, "peer": PEER.get(nfe)}
        grid_2m = tuned_grid("dpmpp_2m", nfe)
        if not args.no_baselines:
            for name in ("dpmpp_2m", "dpmpp_3m", "unipc"):
                out, per_sample = run(denoiser, name, eval_noise, tuned_grid(name, nfe))
                row[f"{name}_tuned"] = rms(out, eval_ref)
                row[f"{name}_seconds_per_sample"] = per_sample
            row["tuned"] = min(row[f"{n}_tuned"] for n in ("dpmpp_2m", "dpmpp_3m", "unipc"))
        # starts: each --base on its tuned or Karras grid, whichever is better on 8 fit noises; the best start is
        # fitted, or with --fit-each-base every base's, keeping the lowest validation error (fit noises only)
        candidates = {}
        for base in args.base:
            for kind, grid in (("tuned", tuned_grid(base, nfe)), ("karras", schedules.karras(nfe, S_MIN, S_MAX, rho=7.0))):
                out, _ = run(denoiser, base, fit_noise[-8:], grid)
                error = rms(out, fit_ref[-8:])
                if base not in candidates or error < candidates[base][0]:
                    candidates[base] = (error, kind, grid)
        order = sorted(candidates, key=lambda b: candidates[b][0])
        fits, total_seconds = [], 0.0
        for base in order if args.fit_each_base else order[:1]:
            _, kind, init = candidates[base]
            start = LearnedSolver.initial(init, base, args.history)
            previous = Path(args.continue_from or "") / f"learned_nfe{nfe}.safetensors"
            if args.continue_from and previous.exists():  # a second round from a saved fit (its fit time is added)
                from safetensors import safe_open
                from safetensors.torch import load_file

                with safe_open(str(previous), "pt") as handle:
                    meta = json.loads(handle.metadata()["learned_solver"])
                start = init = LearnedSolver.from_state(load_file(str(previous)), meta)
                base, kind = start.base, f"continued from {previous}"
                total_seconds += meta["info"]["fit_seconds"]
            print(f"  start: {base} on the {kind} grid", flush=True)
            solver = fit_learned_solver(denoiser, fit_noise, fit_ref, nfe=nfe, sigma_min=S_MIN, sigma_max=S_MAX,
                                        init_sigmas=init, base=base, history=args.history, learn=args.learn,
                                        per_channel=args.per_channel, steps=args.steps, lr=args.lr,
                                        batch_size=args.batch, val_fraction=args.val_fraction, val_every=10,
                                        slack=args.slack, log=lambda line: print("  " + line, flush=True))
            total_seconds += solver.info["fit_seconds"]
            fits.append((solver.info["val_rms"], base, kind, start, solver))
            if len(fits) > 1:
                print(f"  validation rms per start: {[(b, round(v, 4)) for v, b, *_ in fits]}", flush=True)
        _, base, kind, start, solver = min(fits, key=lambda f: f[0])
        out, _ = run(denoiser, "learned", eval_noise, start.sigmas, params=start)
        row.update(start_grid=kind, base=base, start=rms(out, eval_ref),
                   val_per_start={b: v for v, b, *_ in fits})
        out, per_sample = run(denoiser, "learned", eval_noise, solver.sigmas, params=solver)
        solver.info["fit_seconds"] = total_seconds
        row.update(learned=rms(out, eval_ref), fit_seconds=total_seconds, seconds_per_sample=per_sample,
                   val_start=solver.info["init_val_rms"], val_best=solver.info["val_rms"], best_step=solver.info["best_step"],
                   sigmas=solver.sigmas.tolist(), log_shifts=solver.log_shifts.tolist(), weights=solver.weights.tolist())
        if row["peer"]:
            row["target"] = (0.5 if nfe <= 10 else 0.7) * row["peer"]
        rows.append(row)
        print(f"NFE {nfe}: start ({row['base']}, {row['start_grid']}) {row['start']:.4f} learned {row['learned']:.4f} tuned {row.get('tuned', math.nan):.4f} "
              f"target {row.get('target', math.nan):.4f}  fit {row['fit_seconds']:.0f} s, {per_sample * 1e3:.1f} ms/sample",
              flush=True)
        if args.save:
            from safetensors.torch import save_file

            Path(args.save).mkdir(parents=True, exist_ok=True)
            save_file(solver.state_dict(), str(Path(args.save) / f"learned_nfe{nfe}.safetensors"),
                      metadata={"learned_solver": json.dumps(solver.metadata())})

    print("\n| NFE | best peer | target | ours tuned | learned (start) | learned | fit s | ms/sample | 2M ms/sample |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        f = lambda v: "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"  # noqa: E731
        print(f"| {r['nfe']} | {f(r['peer'])} | {f(r.get('target'))} | {f(r.get('tuned'))} | {f(r['start'])} | "
              f"{f(r['learned'])} | {r['fit_seconds']:.0f} | {r['seconds_per_sample'] * 1e3:.1f} | "
              f"{f(r.get('dpmpp_2m_seconds_per_sample', math.nan) * 1e3)} |")
    if args.json:
        path = Path(args.json)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
        tmp.replace(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
