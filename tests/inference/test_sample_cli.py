"""``diffpde sample`` and ``diffpde evaluate`` end to end, in-process, on a tiny Darcy set and prior.

The prior is untrained, with the network's last convolution set to zero: the denoiser is then
``c_skip(sigma) * z``, the exact denoiser of a standard normal in the normalised frame, so every
guidance method (covariance included) runs stably and the checks are about the command line.
"""

import json
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

from diffpde.cli import main
from diffpde.data import read_fields
from diffpde.inference.observations import Observations, SparsePoints
from diffpde.inference.posterior_io import read_posterior

FAST = ["--steps", "4", "--samples", "3"]
METRIC_ROWS = ["rel L2 of mean", "rel L2 per sample", "error rate", "CRPS", "spread/skill", "coverage 50%",
               "coverage 90%", "misfit (chi2/m)", "PDE residual (RMS)", "NFE per instance", "VJP per instance",
               "wall time per instance (s)"]


@pytest.fixture(scope="module")
def setup(tiny_darcy):
    return tiny_darcy


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_sample_from_dataset_writes_posterior_and_plot(setup, capsys):
    root, data, prior = setup
    out, png = root / "post.h5", root / "post.png"
    code, stdout, err = _run(capsys, "sample", "--prior", prior, "--data", data, "--index", "1,3",
                             "--observe", "u:0.05,a:10", *FAST, "--out", out, "--plot", png)
    assert code == 0, err
    assert "observed: u: 13 of 256 nodes" in stdout and "a: 10 of 256 nodes" in stdout
    assert "instance 1: misfit" in stdout and "instance 3: misfit" in stdout and "error rate" in stdout
    assert "NFE 4" in stdout
    truth = read_fields(data, ("a", "u"), [1, 3])
    with h5py.File(out) as f:
        assert f.attrs["format"] == "diffpde.posterior" and f.attrs["method"] == "covariance"
        assert json.loads(f.attrs["indices"]) == [1, 3]
        for name in ("a", "u"):
            s = f["samples"][name][()]
            assert s.shape == (2, 3, 16, 16) and np.isfinite(s).all()
            assert f["mean"][name].shape == f["std"][name].shape == (2, 16, 16)
            assert np.allclose(f["mean"][name][()], s.astype(np.float64).mean(1), atol=1e-5 * np.abs(s).max())
            assert np.array_equal(f["truth"][name][()], truth[name].astype(np.float64))
            assert set(f["metrics"][name]) >= {"rel_l2", "crps", "coverage90"}
            assert f["metrics"][name]["rel_l2"].shape == (2,)
        assert "error_rate" in f["metrics"]["a"] and "error_rate" not in f["metrics"]["u"]
        assert f["diagnostics"]["misfit"].shape == (2,) and np.isfinite(f["diagnostics"]["pde_residual"][()]).all()
        assert json.loads(f.attrs["diagnostics"])["nfe"] == 4
    # the posterior file is also an observations file: noise-free values at the observed nodes
    obs = Observations.load(str(out))
    u_op, a_op = obs.operator.operators
    idx = u_op.coordinates()
    assert np.allclose(obs.values[:, :13].numpy(), truth["u"][:, idx[:, 0], idx[:, 1]])
    assert torch.equal(u_op.index, SparsePoints.random("u", (16, 16), count=13, seed=1).index)  # u: seed + 1
    for name in ("post_1.png", "post_3.png"):
        with open(root / name, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert not list(root.glob("*.tmp"))


def test_sample_from_observations_file_is_reproducible(setup, capsys):
    root, data, prior = setup
    truth = {k: torch.as_tensor(v) for k, v in read_fields(data, ("u",), [0]).items()}
    op = SparsePoints.random("u", (16, 16), count=20, seed=3, noise_std=1e-3)
    Observations(op, op(truth)).save(str(root / "obs.h5"))
    outs = []
    for k in range(2):
        out = root / f"from_obs{k}.h5"
        with pytest.warns(UserWarning, match="record no provenance"):   # a hand-made file: nothing to check
            code, stdout, err = _run(capsys, "sample", "--prior", prior, "--observations", root / "obs.h5", *FAST,
                                     "--method", "dps", "--seed", "7", "--out", out, "--plot", root / "obs.png")
        assert code == 0, err
        with h5py.File(out) as f:
            assert "truth" not in f and "metrics" not in f
            outs.append(f["samples"]["u"][()])
    assert "rel L2" not in stdout and "u: 20 of 256 nodes" in stdout
    assert np.array_equal(outs[0], outs[1])
    with open(root / "obs.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_evaluate_prints_table_and_json(setup, capsys):
    root, data, prior = setup
    js = root / "inverse.json"
    code, stdout, err = _run(capsys, "evaluate", "--prior", prior, "--data", data, "--task", "inverse",
                             "--n-test", 3, "--batch", 2, "--quiet", *FAST, "--json", js)
    assert code == 0, err
    assert "observed: u: 8 of 256 nodes (3.12 %)" in stdout and "target: a" in stdout
    table = stdout.splitlines()
    for row in METRIC_ROWS:
        assert any(row in line for line in table), row
    assert any(line.startswith("a (target)") and "rel L2 of mean" in line for line in table)
    results = json.loads(js.read_text())
    assert results["task"] == "inverse" and results["n_test"] == 3 and results["targets"] == ["a"]
    assert results["observe"] == "u:0.03"
    a = results["metrics"]["a"]
    assert set(a) == {"rel_l2", "sample_rel_l2", "crps", "spread_skill", "coverage50", "coverage90", "error_rate"}
    assert len(a["rel_l2"]["values"]) == 3 and a["rel_l2"]["mean"] == pytest.approx(np.mean(a["rel_l2"]["values"]))
    assert a["rel_l2"]["std"] == pytest.approx(np.std(a["rel_l2"]["values"], ddof=1))
    assert "error_rate" not in results["metrics"]["u"]
    assert results["cost"]["nfe"]["mean"] == 4 and results["cost"]["vjp"]["mean"] > 0
    assert len(results["diagnostics"]["misfit"]["values"]) == 3


def test_evaluate_forward_observes_the_inputs(setup, capsys):
    root, data, prior = setup
    code, stdout, err = _run(capsys, "evaluate", "--prior", prior, "--data", data, "--task", "forward",
                             "--observe", "1.0", "--n-test", 1, "--quiet", "--method", "projection", *FAST)
    assert code == 0, err
    assert "observed: a: 256 of 256 nodes (100 %)" in stdout and "target: u" in stdout
    a_rows = [line for line in stdout.splitlines() if line.startswith("a ") and "rel L2 of mean" in line]
    assert float(a_rows[0].split()[-2]) < 1e-5       # projection reproduces a fully observed field


@pytest.mark.parametrize("argv, message", [
    (["sample", "--prior", "{root}/nowhere", "--data", "{data}", "--observe", "u:0.03"], "no prior at"),
    (["sample", "--prior", "{prior}", "--data", "{data}", "--observe", "v:0.03"], "unknown field 'v'; the fields are a, u"),
    (["sample", "--prior", "{prior}", "--data", "{data}", "--observe", "u:0.03", "--index", "2,9"],
     "instance index 9 is out of range: {data} has 4 instances (0..3)"),
    (["sample", "--prior", "{prior}", "--observe", "u:0.03"], "--observe makes observations of dataset instances"),
    (["sample", "--prior", "{prior}", "--data", "{root}/missing.h5", "--observe", "u:0.03"], "does not exist"),
    (["sample", "--prior", "{prior}", "--observations", "{data}"], "is not a diffpde observations file"),
    (["sample", "--prior", "{prior}", "--data", "{data}", "--observe", "u:0.03", "--method", "magic"], "unknown method 'magic'"),
    (["sample", "--prior", "{prior}", "--data", "{data}", "--observe", "u:0.03", "--out", "{root}/no/dir/x.h5"],
     "does not exist"),
    (["evaluate", "--prior", "{prior}", "--data", "{data}", "--task", "inverse", "--n-test", "10"],
     "n_test must be in [1, 4]"),
    (["evaluate", "--prior", "{prior}", "--data", "{data}", "--task", "inverse", "--index", "1,7"],
     "instance index 7 is out of range"),
    (["evaluate", "--prior", "{prior}", "--data", "{data}", "--task", "inverse", "--batch", "0"], "--batch must be >= 1"),
    (["evaluate", "--prior", "{prior}", "--data", "{data}", "--task", "inverse", "--method-option", "cg_iters"],
     "--method-option 'cg_iters': expected KEY=VALUE"),
    (["sample", "--prior", "{prior}", "--data", "{data}", "--observe", "u:0.03", "--device", "warp-drive"],
     "--device 'warp-drive' is not a torch device"),
    (["sample", "--prior", "{prior}", "--data", "{data}", "--observe", "u:0.03", "--device", "cuda:99"],
     "--device cuda:99: this machine has"),
    (["sample", "--prior", "{root}/nowhere", "--data", "{data}", "--observe", "u:0.03", "--device", "cuda:99"],
     "--device cuda:99: this machine has"),             # the device is checked before anything is loaded
])
def test_bad_input_gets_a_clear_error(setup, capsys, argv, message):
    root, data, prior = setup
    fill = {"root": root, "data": data, "prior": prior}
    code, stdout, err = _run(capsys, *[a.format(**fill) for a in argv])
    assert code == 1
    assert message.format(**fill) in err
    assert "Traceback" not in err


def test_help_in_a_subprocess():
    proc = subprocess.run([sys.executable, "-m", "diffpde.cli", "evaluate", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--task {forward,inverse,reconstruct}" in proc.stdout and "--json" in proc.stdout


def test_sample_help_in_process(capsys):
    with pytest.raises(SystemExit) as e:
        main(["sample", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--observe SPEC" in out and "--observations FILE.h5" in out and "--plot FILE.png" in out


def test_diverging_sampler_is_reported_not_a_traceback(setup, capsys, monkeypatch):
    import diffpde.inference.tasks as tasks

    def diverge(*args, **kwargs):
        raise FloatingPointError("non-finite values in the denoiser output at step 0 (sigma=80)")

    monkeypatch.setattr(tasks, "reconstruct", diverge)
    root, data, prior = setup
    code, _, err = _run(capsys, "sample", "--prior", prior, "--data", data, "--observe", "u:0.03")
    assert code == 1 and "sampling diverged (non-finite values in the denoiser output" in err


@pytest.mark.parametrize("first", ["sample", "evaluate"])
def test_both_commands_get_their_parser_whatever_the_order(monkeypatch, capsys, first):
    import diffpde.cli

    second = "evaluate" if first == "sample" else "sample"
    commands = {k: v for k, v in diffpde.cli.COMMANDS.items() if k not in (first, second)}
    commands.update({first: diffpde.cli.COMMANDS[first], second: diffpde.cli.COMMANDS[second]})
    monkeypatch.setattr(diffpde.cli, "COMMANDS", commands)
    for command, option in (("sample", "--observations FILE.h5"), ("evaluate", "--n-test N")):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert option in capsys.readouterr().out


def test_device_without_cuda_is_one_line(setup, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    root, data, prior = setup
    code, _, err = _run(capsys, "evaluate", "--prior", prior, "--data", data, "--task", "inverse", "--device", "cuda")
    assert code == 1 and err.strip().splitlines() == [
        f"diffpde evaluate: error: --device cuda: this machine has no cuda device (torch {torch.__version__}); "
        "use --device cpu"]


def test_sample_agrees_with_evaluate_on_the_same_instances(setup, capsys):
    """Seeds belong to instances: ``sample --index 2,3`` reproduces the batch [2, 3] of ``evaluate``
    (observation noise included), whatever else either command processes."""
    root, data, prior = setup
    js, out = root / "agree.json", root / "agree.h5"
    common = [*FAST, "--seed", "5", "--noise-std", "0.002", "--batch", "2", "--quiet"]
    code, _, err = _run(capsys, "evaluate", "--prior", prior, "--data", data, "--task", "inverse", "--n-test", 4,
                        "--observe", "0.05", *common, "--json", js)
    assert code == 0, err
    code, _, err = _run(capsys, "sample", "--prior", prior, "--data", data, "--index", "2,3", "--observe", "u:0.05",
                        *common, "--out", out)
    assert code == 0, err
    results = json.loads(js.read_text())
    saved = read_posterior(out)
    for name in ("a", "u"):
        for metric in ("rel_l2", "crps", "coverage90"):
            assert saved.metrics[name][metric].tolist() == results["metrics"][name][metric]["values"][2:4]
    assert saved.posterior.diagnostics["misfit"].tolist() == results["diagnostics"]["misfit"]["values"][2:4]
    assert saved.attrs["indices"] == [2, 3] and saved.posterior.samples["a"].shape == (2, 3, 16, 16)
    # the measurement noise was drawn: the observations are not the truth's values
    idx = saved.observations.operator.coordinates()
    noise = saved.observations.values - saved.truth["u"][:, idx[:, 0], idx[:, 1]]
    assert 0.001 < float(noise.std()) < 0.004


def test_observation_files_carry_their_provenance(setup, capsys, tmp_path):
    """A file made by ``sample --observe`` knows its problem and instances: used without --index it
    is scored against those instances, with other instances or another problem it is refused."""
    root, data, prior = setup
    post = tmp_path / "made.h5"
    code, _, err = _run(capsys, "sample", "--prior", prior, "--data", data, "--index", "1,3", "--observe", "u:0.05",
                        *FAST, "--quiet", "--out", post)
    assert code == 0, err
    obs = Observations.load(str(post))
    assert obs.provenance["indices"] == [1, 3] and obs.provenance["problem"]["name"] == "darcy"
    assert obs.provenance["problem"]["parameters"]["f"] == 1.0 and obs.provenance["data"] == data
    again = tmp_path / "again.h5"
    code, stdout, err = _run(capsys, "sample", "--prior", prior, "--observations", post, "--data", data, *FAST,
                             "--quiet", "--out", again)
    assert code == 0, err
    assert "instance 1: misfit" in stdout and "instance 3: misfit" in stdout
    truth = read_fields(data, ("a",), [1, 3])["a"]
    assert np.array_equal(read_posterior(again).truth["a"].numpy(), truth)
    code, _, err = _run(capsys, "sample", "--prior", prior, "--observations", post, "--data", data, "--index", "0,1",
                        *FAST)
    assert code == 1 and "made of instance(s) [1, 3]" in err and "used with instance(s) [0, 1]" in err
    # the same observations said to come from another problem
    burgers = Observations(obs.operator, obs.values, {**obs.provenance, "problem": {
        "name": "burgers", "resolution": 16, "parameters": {"nu": 0.01}}})
    burgers.save(str(tmp_path / "burgers.h5"))
    code, _, err = _run(capsys, "sample", "--prior", prior, "--observations", tmp_path / "burgers.h5", *FAST)
    assert code == 1 and "made on burgers at resolution 16, but the prior's problem is darcy" in err
    # a file without recorded instances cannot guess its truth
    Observations(obs.operator, obs.values).save(str(tmp_path / "bare.h5"))
    with pytest.warns(UserWarning, match="record no provenance"):
        code, _, err = _run(capsys, "sample", "--prior", prior, "--observations", tmp_path / "bare.h5", "--data", data,
                            *FAST)
    assert code == 1 and "records no instances: give --index" in err


def test_dataset_with_other_pde_parameters_is_refused(setup, capsys, tmp_path):
    from diffpde.data import generate_dataset

    root, data, prior = setup
    other = generate_dataset("darcy", 2, tmp_path / "f5.h5", resolution=16, seed=0, progress=False,
                            parameters={"f": 5.0})
    code, _, err = _run(capsys, "evaluate", "--prior", prior, "--data", other, "--task", "inverse", *FAST)
    assert code == 1
    assert "was generated with other darcy parameters than the prior's: f = 5.0 (data) vs 1.0 (prior)" in err


def test_sampling_shows_progress_per_step_unless_quiet(setup, capsys):
    """A bar of the 4 steps shows while sampling and is cleared afterwards (not left on screen)."""
    root, data, prior = setup
    for quiet in ([], ["--quiet"]):
        code, _, err = _run(capsys, "evaluate", "--prior", prior, "--data", data, "--task", "inverse", "--n-test", 1,
                            *FAST, *quiet)
        assert code == 0, err
        assert ("/4 [" in err and "step" in err) == (not quiet), err
        if not quiet:                   # the last thing drawn on the bar's line blanks it
            assert [part for part in err.split("\r") if part][-1].strip() == "", err
