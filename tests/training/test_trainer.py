"""The trainer on a tiny Darcy dataset: the loss falls, the EMA prior is exported, bad input is refused."""

import json
import shutil

import pytest
import torch
from torch import nn

from diffpde.training.checkpoint import MARKER, CheckpointError, list_checkpoints
from diffpde.training.config import ConfigError, load_config
from diffpde.training.ema import EMA
from diffpde.training.losses import LOSSES, build_loss
from diffpde.training.trainer import Trainer, denoising_loss


def tiny_config(data_path, output_dir, *overrides):
    base = {
        "data": {"path": str(data_path), "problem": "darcy", "fields": ["a", "u"]},
        "model": {"network": {"type": "unet2d", "block_out_channels": [16, 32], "layers_per_block": 1,
                              "attention_levels": [False, False], "norm_num_groups": 8}},
        "optim": {"lr": 2e-3, "warmup_steps": 2},
        "train": {"batch_size": 8, "max_steps": 30, "checkpoint_every": 10, "keep_checkpoints": 2, "log_every": 5,
                  "output_dir": str(output_dir), "log_with": "none", "ema_half_life": 3, "progress": False},
        "eval": {"n_samples": 2, "steps": 2},
    }
    return load_config(base=base, overrides=list(overrides))


class ToyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, x, c_noise, cond=None, params=None):
        return self.conv(x) * (1 + c_noise.reshape(-1, 1, 1, 1))


@pytest.mark.parametrize("kind", sorted(LOSSES))
def test_trainer_loss_with_rank_independent_draws_is_the_training_loss(kind):
    """The trainer draws sigma and noise itself; with the same draws it must compute exactly the loss of losses.py."""
    from diffpde.models import EDMPrecond

    torch.manual_seed(0)
    precond = EDMPrecond(ToyNet(), sigma_data=0.7)
    loss = build_loss(kind)
    x0 = torch.randn(5, 2, 8, 8)
    expected = loss(precond, x0, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    sigma = loss.sample_sigma(5, x0, g)
    noise = torch.randn(x0.shape, generator=g)
    got = denoising_loss(loss, precond, precond, x0, sigma, noise, None)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)


def test_ema_follows_the_closed_form_and_round_trips():
    model = nn.Linear(1, 1, bias=False)
    ema = EMA(model, decay=0.9, warmup=False)
    with torch.no_grad():
        w0 = model.weight.item()
        values = [1.0, 2.0, -3.0]
        for v in values:
            model.weight.fill_(v)
            ema.update(model)
    expected = w0
    for v in values:
        expected = 0.9 * expected + 0.1 * v
    assert ema.shadow.weight.item() == pytest.approx(expected, rel=1e-6)
    warm = EMA(model, decay=0.999, warmup=True)
    assert warm.current_decay() == pytest.approx(0.1)   # (1 + 0) / (10 + 0)
    other = EMA(nn.Linear(1, 1, bias=False), decay=0.5)
    other.load_state_dict(ema.state_dict())
    assert other.num_updates == 3 and other.decay == pytest.approx(0.9)
    assert torch.equal(other.shadow.weight, ema.shadow.weight)


@pytest.fixture(scope="module")
def trained(darcy_file, tmp_path_factory):
    """One 30-step run; yields (trainer, summary, initial weights)."""
    from accelerate.state import AcceleratorState, GradientState

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("run")
    trainer = Trainer(tiny_config(darcy_file, out))
    initial = {k: v.clone() for k, v in trainer.unwrapped.state_dict().items()}
    summary = trainer.fit()
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    torch.set_num_threads(threads)
    return trainer, summary, initial


@torch.no_grad()
def _fixed_loss(trainer, state):
    """EDM loss of the weights ``state`` on the whole dataset at fixed noise levels and noise."""
    from diffpde.models import EDMPrecond

    ref = trainer.unwrapped
    model = EDMPrecond(type(ref.net)(**{k: v for k, v in ref.net.config().items() if k != "type"}),
                       sigma_data=ref.sigma_data)
    model.load_state_dict(state)
    x0 = torch.stack([trainer.dataset[i] for i in range(len(trainer.dataset))])
    g = torch.Generator().manual_seed(0)
    total = 0.0
    for sigma in (0.05, 0.2, 0.5, 1.0, 2.0):
        s = torch.full((len(x0),), sigma)
        total += float(denoising_loss(trainer.loss, model, model, x0, s, torch.randn(x0.shape, generator=g), None).mean())
    return total / 5


def test_loss_falls_on_tiny_darcy(trained):
    trainer, summary, initial = trained
    before = _fixed_loss(trainer, initial)
    after = _fixed_loss(trainer, trainer.unwrapped.state_dict())
    assert after < 0.75 * before, (before, after)
    losses = [h["loss"] for h in summary["history"]]
    assert len(losses) == 6 and min(losses[-2:]) < losses[0]
    assert all(h["grad_norm"] > 0 and h["samples_per_s"] > 0 and h["lr"] > 0 for h in summary["history"])


def test_run_outputs_checkpoints_rotation_and_exported_ema_prior(trained):
    from diffpde.models import Prior

    trainer, summary, _ = trained
    out = trainer.output_dir
    assert summary["step"] == 30 and summary["world_size"] == 1
    assert [s for s, _ in list_checkpoints(out / "checkpoints")] == [20, 30]   # keep_checkpoints=2
    assert json.loads((out / "run.json").read_text())["world_size"] == 1
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [5, 10, 15, 20, 25, 30]
    ev = summary["evaluation"]
    for key in ("residual_rms", "residual_rms_data", "a/mean", "a/std", "u/mean", "a/data_mean",
                "a/high_fraction", "a/high_fraction_data"):
        assert key in ev and ev[key] is not None and ev[key] == ev[key], key
    assert ev["residual_rms_data"] < 1e-4 < ev["residual_rms"]     # solver data solves the PDE; 30 steps do not
    prior = Prior.from_pretrained(out / "prior")
    assert prior.fields == ("a", "u") and prior.problem.name == "darcy"
    ema = trainer.ema.shadow.state_dict()
    for k, v in prior.precond.state_dict().items():
        torch.testing.assert_close(v, ema[k], rtol=0, atol=0)
    assert not torch.equal(ema["net.unet.conv_in.weight"], trainer.unwrapped.state_dict()["net.unet.conv_in.weight"])


def test_dataset_not_matching_the_config_is_a_clear_error(darcy_file, tmp_path):
    with pytest.raises(ConfigError, match=r"field 'p' is not in the dataset .*a, u"):
        Trainer(tiny_config(darcy_file, tmp_path, "data.fields=[a, p]"))
    with pytest.raises(ConfigError, match=r"data.cond_fields: field 'f'"):
        Trainer(tiny_config(darcy_file, tmp_path, "data.fields=[u]", "data.cond_fields=[f]"))
    with pytest.raises(ConfigError, match="'poisson'.*'darcy'"):
        Trainer(tiny_config(darcy_file, tmp_path, "data.problem=poisson"))
    with pytest.raises(ConfigError, match="resolution 16"):
        Trainer(tiny_config(darcy_file, tmp_path, "data.resolution=32"))
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        Trainer(tiny_config(tmp_path / "missing.h5", tmp_path))
    with pytest.raises(ConfigError, match="not symmetries declared by 'darcy'"):
        Trainer(tiny_config(darcy_file, tmp_path, "train.augment=[roll_x]"))


def test_missing_and_corrupt_checkpoints_are_clear_errors(trained, darcy_file, tmp_path):
    src = trained[0].output_dir / "checkpoints" / "step_0000030"
    trainer = Trainer(tiny_config(darcy_file, tmp_path / "empty"))
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        trainer.resume("latest")
    with pytest.raises(CheckpointError, match="does not exist"):
        trainer.resume(tmp_path / "nowhere")

    def broken(name, damage):
        dst = tmp_path / name
        shutil.copytree(src, dst)
        damage(dst)
        return dst

    cases = {
        "truncated": (lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:100]),
                      "corrupt: file model.safetensors has 100 bytes"),
        "flipped": (lambda d: _flip_byte(d / "optimizer.bin"), "optimizer.bin does not match its SHA-256"),
        "deleted": (lambda d: (d / "model.safetensors").unlink(), "model.safetensors is missing"),
        "no_marker": (lambda d: (d / MARKER).unlink(), "incomplete"),
        "bad_marker": (lambda d: (d / MARKER).write_text("{not json"), "COMPLETE.json is corrupt"),
    }
    for name, (damage, message) in cases.items():
        with pytest.raises(CheckpointError, match=message):
            trainer.resume(broken(name, damage))
    # intact files that do not fit the model
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    other = Trainer(tiny_config(darcy_file, tmp_path / "other", "model.network.block_out_channels=[8, 16]"))
    with pytest.raises(CheckpointError, match="could not be loaded"):
        other.resume(src)


def _flip_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_cli_reports_unknown_config_keys(tmp_path, capsys):
    from diffpde.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text("train: {max_steps: 3}\n")
    assert main(["train", "--config", str(cfg), "train.max_stp=4"]) == 1
    err = capsys.readouterr().err
    assert "max_stp" in err and "max_steps" in err and "'train'" in err


def test_augmentation_draws_do_not_depend_on_the_rank_split(darcy_file):
    from diffpde.data import FieldDataset
    from diffpde.data.augment import augment

    ds = FieldDataset(darcy_file, ["a", "u"], normalize=True)
    x = torch.stack([ds[i] for i in range(6)])
    options = {"problem": ds.problem, "fields": ["a", "u"], "normalizer": ds.normalizer}
    names = ["flip_x", "flip_y"]
    full = augment(x, names, torch.Generator().manual_seed(0), 0, 6, **options)
    halves = [augment(x[i:i + 3], names, torch.Generator().manual_seed(0), i, 6, **options) for i in (0, 3)]
    assert torch.equal(torch.cat(halves), full)
    kinds = []
    for xi, yi in zip(x, full):
        # each output is the input reflected in neither, one or both axes (Darcy has no odd fields)
        candidates = [xi, xi.flip(-1), xi.flip(-2), xi.flip(-1, -2)]
        kinds.append(next(k for k, c in enumerate(candidates) if torch.equal(yi, c)))
    assert len(set(kinds)) > 1


def test_training_with_flip_x_augmentation_on_darcy(darcy_file, tmp_path):
    """train.augment: [flip_x] is a declared Darcy symmetry: the run goes through and sees other batches."""
    histories = []
    for augment in ("[]", "[flip_x]"):
        trainer = Trainer(tiny_config(darcy_file, tmp_path / augment, f"train.augment={augment}", "train.max_steps=2",
                                      "train.log_every=1", "train.checkpoint_every=0", "eval.n_samples=1"))
        histories.append([h["loss"] for h in trainer.fit()["history"]])
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state(True)
        GradientState._reset_state()
    plain, flipped = histories
    assert len(flipped) == 2 and all(torch.isfinite(torch.tensor(flipped)))
    assert flipped != plain


def test_bf16_mixed_precision_trains(darcy_file, tmp_path):
    trainer = Trainer(tiny_config(darcy_file, tmp_path, "train.mixed_precision=bf16", "train.max_steps=2",
                                  "train.log_every=1", "train.checkpoint_every=0"))
    summary = trainer.fit()
    assert trainer.accelerator.mixed_precision == "bf16"
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in summary["history"])
    assert all(p.dtype == torch.float32 for p in trainer.unwrapped.parameters())   # master weights stay fp32
