"""scripts/bench_inverse.py end to end on the tiny Darcy set (the real run is hours of CPU)."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_inverse", ROOT / "scripts" / "bench_inverse.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_inverse_tunes_the_preset_and_tabulates_both_tasks(bench, tiny_darcy, tmp_path, capsys):
    _, data, prior = tiny_darcy
    zeta_file, out = tmp_path / "zeta.json", tmp_path / "bench.json"
    argv = ["--prior", prior, "--data", data, "--n-test", "2", "--baseline-n-test", "1", "--nfe", "3,5",
            "--samples", "2", "--baseline-steps", "6", "--baseline-samples", "2", "--tune-steps", "3",
            "--tune-indices", "2-3", "--zeta-file", str(zeta_file), "--json", str(out)]
    assert bench.main(argv) == 0
    printed = capsys.readouterr().out
    assert "forward, all instances" in printed and "inverse, the first 1 instances (the preset's)" in printed
    zetas = json.loads(zeta_file.read_text())
    results = json.loads(out.read_text())
    for task, observed, target in (("forward", "a", "u"), ("inverse", "u", "a")):
        z = zetas[task]
        # the chosen weights are the grid minimisers
        obs_grid = {float(k): v for k, v in z["obs_grid"].items()}
        assert z["zeta_obs"][observed] == pytest.approx(min(obs_grid, key=obs_grid.get), rel=1e-5)
        assert z["zeta_pde"] == float(min(z["pde_grid"], key=lambda k: z["pde_grid"][k])) and z["target"] == target
        rows = results["tables"][task]["all"]
        assert [r["method"] for r in rows] == ["diffusionpde heun 6", "covariance dpmpp_2m_sde 3", "covariance dpmpp_2m_sde 5"]
        assert [r["nfe"] for r in rows] == [11, 3, 5] and [r["n"] for r in rows] == [1, 2, 2]
        assert [r["n"] for r in results["tables"][task]["preset_instances"]] == [1, 1, 1]
        for r in rows:
            assert 0 < r["rel_l2"] < 10 and 0 <= r["cov90"] <= 1 and r["time"] > 0
        assert (target == "a") == (rows[0]["error_rate"] == rows[0]["error_rate"])  # NaN unless binary target
    # a second run reuses the tuned weights instead of tuning again; --combine merges the tables
    second = tmp_path / "second.json"
    assert bench.main(argv[:-2] + ["--tasks", "inverse", "--nfe", "3", "--no-baseline", "--methods",
                                   "covariance:cg_iters=2;solver=euler", "--json", str(second)]) == 0
    assert "tuning" not in capsys.readouterr().out
    rows = json.loads(second.read_text())["tables"]["inverse"]["all"]
    assert [r["method"] for r in rows] == ["covariance cg_iters=2 euler 3"]
    assert bench.main(["--combine", str(out), str(second)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("| covariance cg_iters=2 euler 3 |") == 2  # all and the preset's instances
    assert printed.index("diffusionpde heun 6") < printed.index("covariance dpmpp_2m_sde 3")
    # one sample per instance (DiffusionPDE's protocol): the ensemble metrics are undefined, shown as "-"
    single = tmp_path / "single.json"
    assert bench.main(argv[:-2] + ["--tasks", "inverse", "--n-test", "1", "--baseline-samples", "1", "--methods", "",
                                   "--json", str(single)]) == 0
    (row,) = json.loads(single.read_text())["tables"]["inverse"]["all"]
    assert row["K"] == 1 and row["rel_l2"] == pytest.approx(row["sample_rel_l2"])
    assert all(row[k] != row[k] for k in ("crps", "cov90", "cov50", "spread_skill"))  # NaN
    assert "| - | - | - | - |" in capsys.readouterr().out


def test_natural_zeta_is_the_push_that_removes_the_misfit_over_the_steps():
    from diffpde.inference.diffusionpde import natural_zeta

    assert natural_zeta(0.5, 16, 100) == pytest.approx(4 / (100 * 0.5))   # sqrt(m) / (steps * std)
    with pytest.raises(ValueError, match="truth_std > 0"):
        natural_zeta(0.0, 16, 100)
