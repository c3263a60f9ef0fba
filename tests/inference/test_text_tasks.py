"""Text and first-frame tasks with a DiT prior: generation, reconstruction with conditions bound (and
classifier-free guidance composed with covariance guidance), and ``diffpde sample`` with conditions.

The prior is a tiny untrained DiT on 16 x 16 Burgers trajectories with a hashing text encoder and a
first-frame encoder; its zero-initialised layers (adaLN-Zero gates, output, cross-attention
outputs) get small random weights so that the conditions change its output.
"""

import h5py
import pytest
import torch

from diffpde.cli import main
from diffpde.data import FieldDataset, generate_dataset, read_fields
from diffpde.data.hdf5 import read_captions
from diffpde.inference.consistency import generate, rollout_error
from diffpde.inference.observations import Observations, SparsePoints
from diffpde.inference.tasks import reconstruct
from diffpde.models.prior import Prior

MODEL = {
    "network": {"type": "dit", "patch_size": [4, 4], "hidden_size": 32, "depth": 2, "num_heads": 4},
    "precond": {"type": "edm"},
    "conditioning": {"dim": 16, "text": {"type": "hash_text", "width": 16, "vocab_size": 256},
                     "frames": {"field": "u", "axis": "t", "index": 0, "patch_size": [4], "width": 8, "depth": 1,
                                "periodic": True},
                     "cfg_dropout": {"text": 0.2, "frames": 0.2}},
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("text_tasks")
    data = generate_dataset("burgers", 3, root / "test.h5", resolution=16, seed=0, captions=2, progress=False)
    torch.manual_seed(0)
    prior = Prior.from_dataset(FieldDataset(data, ("u",)), MODEL)
    with torch.no_grad():
        for name, p in prior.named_parameters():
            if p.abs().max() == 0:          # the zero-initialised layers: give them a small random value
                p.normal_(0.0, 0.05)
    prior.eval()
    prior.save_pretrained(root / "prior")
    truth = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in read_fields(data, ("u",)).items()}
    captions = [read_captions(data, i)[0] for i in range(3)]
    return root, str(data), prior, truth, captions


def test_text_and_first_frame_to_trajectory(setup):
    _, _, prior, truth, captions = setup
    post = generate(prior, text=captions[:2], n_samples=2, solver="heun", steps=3, seed=1)
    assert post.samples["u"].shape == (2, 2, 16, 16) and torch.isfinite(post.samples["u"]).all()
    assert post.diagnostics["nfe"] == 5 and post.diagnostics["wall_time_per_sample"] > 0
    # guidance: w = 0 is the unconditional prior, bit for bit; w = 2 differs from w = 1
    uncond = prior.sample(4, solver="heun", steps=3, generator=torch.Generator().manual_seed(1))["u"]
    zero = generate(prior, text=captions[:2], n_samples=2, solver="heun", steps=3, seed=1, guidance_scale=0.0)
    torch.testing.assert_close(zero.samples["u"].reshape(4, 16, 16), uncond.to(torch.float64), rtol=0, atol=0)
    two = generate(prior, text=captions[:2], n_samples=2, solver="heun", steps=3, seed=1, guidance_scale=2.0)
    assert (two.samples["u"] - post.samples["u"]).abs().max() > 1e-4
    # first frame -> trajectory, measured against the solver from the given frame
    frames = prior.frames_of(truth)
    ff = generate(prior, frames=frames, n_samples=3, solver="euler_ancestral", steps=4, seed=2,
                  solver_options={"eta": 1.0})
    assert ff.samples["u"].shape == (3, 3, 16, 16)
    err = rollout_error(prior.problem, ff.samples, frames["u"])
    assert err.shape == (3, 3) and torch.isfinite(err).all() and (err > 0).all()
    with pytest.raises(ValueError, match="needs a caption"):
        generate(prior, n_samples=1)


def test_reconstruction_with_a_dit_prior_binds_conditions_and_composes_with_covariance_guidance(setup):
    _, _, prior, truth, captions = setup
    op = SparsePoints.random("u", prior.grid_shape, 0.2, seed=0, noise_std=0.01)
    obs = Observations(op, op({"u": truth["u"][:2]}))
    run = dict(method="covariance", solver="dpmpp_2m", steps=3, n_samples=2, seed=0)
    plain = reconstruct(prior, obs, **run)
    cond = reconstruct(prior, obs, text=captions[:2], frames=prior.frames_of({"u": truth["u"][:2]}), **run)
    guided = reconstruct(prior, obs, text=captions[:2], frames=prior.frames_of({"u": truth["u"][:2]}),
                         guidance_scale=2.0, **run)
    zero = reconstruct(prior, obs, text=captions[0], guidance_scale=0.0, **run)
    for post in (plain, cond, guided):
        assert post.samples["u"].shape == (2, 2, 16, 16) and torch.isfinite(post.samples["u"]).all()
        assert post.diagnostics["vjp"] > 0
    assert (cond.samples["u"] - plain.samples["u"]).abs().max() > 1e-4
    assert (guided.samples["u"] - cond.samples["u"]).abs().max() > 1e-4
    torch.testing.assert_close(zero.samples["u"], plain.samples["u"], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="3 captions for 2 observed instances"):
        reconstruct(prior, obs, text=captions, **run)


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_sample_command_generates_from_text_and_frames_and_conditions_observations(setup, capsys):
    root, data, _, _, captions = setup
    prior = root / "prior"
    out = root / "gen.h5"
    code, stdout, err = _run(capsys, "sample", "--prior", prior, "--data", data, "--index", "0,2", "--frames-from-data",
                             "--text-from-data", "1", "--guidance-scale", "1.5", "--steps", "3", "--samples", "2",
                             "--out", out, "--quiet")
    assert code == 0, err
    assert "generated from text and frames, guidance scale 1.5" in stdout
    assert "instance 2: u: rel L2 of mean" in stdout and "physical consistency" in stdout
    with h5py.File(out) as f:
        assert f["samples/u"].shape == (2, 2, 16, 16) and f["consistency/rel_l2"].shape == (2, 2)
        assert f.attrs["guidance_scale"] == 1.5 and read_captions(data, 2)[1] in f.attrs["text"]
    code, stdout, err = _run(capsys, "sample", "--prior", prior, "--text", captions[0], "--steps", "2",
                             "--samples", "3", "--quiet")
    assert code == 0, err
    assert "caption: physical consistency" in stdout
    code, stdout, err = _run(capsys, "sample", "--prior", prior, "--data", data, "--index", "1", "--observe", "u:0.2",
                             "--text-from-data", "--guidance-scale", "2", "--steps", "3", "--samples", "2", "--quiet")
    assert code == 0, err
    assert "instance 1: misfit" in stdout
    for argv, message in ((("--steps", "2"), "give observations"),
                          (("--text-from-data",), "read the instances of --data"),
                          (("--data", data, "--guidance-scale", "2"), "give observations"),
                          (("--data", data, "--observe", "u:0.2", "--guidance-scale", "2"), "needs a condition")):
        code, _, err = _run(capsys, "sample", "--prior", prior, *argv)
        assert code == 1 and message in err, err


@pytest.mark.parametrize("config, problem, fields", [
    ("burgers_text.yaml", ("burgers", 32, {}), "u"),
    ("navier_stokes_text.yaml", ("navier_stokes", 32, {"store": "trajectory", "nt": 16, "T": 10.0}), "w"),
])
def test_the_text_configs_tiny_variants_build_conditioned_dit_priors(config, problem, fields):
    from pathlib import Path

    from diffpde import pdes
    from diffpde.training.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / config, variant="tiny")
    assert cfg.data.generate["parameters"].get("store", "trajectory") == "trajectory"
    pde = pdes.get(problem[0], problem[1], **problem[2])
    grid = pde.field(fields).shape
    torch.manual_seed(0)
    prior = Prior.from_config(cfg.model, fields=[fields], grid_shape=grid, problem=pde, sigma_data=1.0)
    assert prior.conditioning.kinds == ("text", "frames") and prior.frame_shape == grid[1:]
    truth = {fields: torch.as_tensor(pde.solve(pde.sample_inputs(1, seed=0)[pde.field_names[0]]), dtype=torch.float32)}
    out = prior.sample(2, solver="euler", steps=1, text="viscosity 0.01", frames=prior.frames_of(truth),
                       guidance_scale=2.0)
    assert out[fields].shape == (2, *grid) and torch.isfinite(out[fields]).all()
