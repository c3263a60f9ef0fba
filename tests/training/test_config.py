"""Typed training config: files, bases, variants, overrides, unknown keys; the LR schedule; the step sampler."""

import json
from pathlib import Path

import numpy as np
import pytest

from diffpde.training.config import ConfigError, load_config
from diffpde.training.trainer import LRSchedule, StepBatchSampler

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
PROBLEMS = ["darcy", "poisson", "helmholtz", "burgers", "navier_stokes"]


def _differences(got, want, path=""):
    """Where two JSON-like values differ, in value or in type (1 and 1.0 differ)."""
    if type(got) is not type(want):
        return [f"{path}: {got!r} ({type(got).__name__}) != {want!r} ({type(want).__name__})"]
    if isinstance(got, dict):
        out = [f"{path}: keys {sorted(set(got) ^ set(want))}"] if set(got) != set(want) else []
        return out + [d for k in sorted(set(got) & set(want)) for d in _differences(got[k], want[k], f"{path}.{k}")]
    if isinstance(got, list):
        if len(got) != len(want):
            return [f"{path}: {got!r} != {want!r}"]
        return [d for i, (g, w) in enumerate(zip(got, want)) for d in _differences(g, w, f"{path}[{i}]")]
    return [] if got == want else [f"{path}: {got!r} != {want!r}"]


@pytest.mark.parametrize("problem", PROBLEMS)
@pytest.mark.parametrize("variant", [None, "tiny"])
def test_shipped_configs_load_to_the_values_they_had_before_sharing_a_base(problem, variant):
    """frozen_configs.json: every family and variant as the hand-written loader read the 93-line files."""
    want = json.loads((Path(__file__).with_name("frozen_configs.json")).read_text())[f"{problem}:{variant or 'base'}"]
    got = json.loads(json.dumps(load_config(CONFIGS / f"{problem}.yaml", variant=variant).to_dict()))
    assert _differences(got, want) == []


def test_differences_sees_types():
    assert _differences({"a": [1, 2.0]}, {"a": [1, 2.0]}) == []
    assert _differences({"a": [1, 2]}, {"a": [1, 2.0]}) and _differences({"a": 1}, {"a": 1, "b": 2})


@pytest.mark.parametrize("problem", PROBLEMS)
def test_shipped_configs_and_tiny_variants_load(problem):
    path = CONFIGS / f"{problem}.yaml"
    base = load_config(path)
    tiny = load_config(path, variant="tiny")
    assert base.data.problem == tiny.data.problem == problem
    assert tiny.variant == "tiny" and base.variant is None
    assert tiny.train.max_steps <= base.train.max_steps
    assert tiny.data.generate is not None, "a tiny variant must be runnable without a prepared dataset"


def test_variant_and_overrides_merge_in_order(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "data: {path: x.h5, fields: [a, u]}\n"
        "model: {network: {type: unet2d, block_out_channels: [32, 64]}}\n"
        "optim: {lr: 1e-4}\n"                           # YAML 1.1 reads this as a string
        "train: {batch_size: 8, max_steps: 100}\n"
        "variants:\n  small: {train: {max_steps: 5}, model: {network: {layers_per_block: 1}}}\n"
    )
    c = load_config(path, ["variant=small", "train.batch_size=4", "model.network.block_out_channels=[16, 32]",
                           "eval.solver=euler", "train.ema_half_life=null", "train.ema_decay=0.99"])
    assert c.variant == "small"
    assert c.train.max_steps == 5 and c.train.batch_size == 4
    assert c.model.network == {"type": "unet2d", "block_out_channels": [16, 32], "layers_per_block": 1}
    assert c.optim.lr == pytest.approx(1e-4) and isinstance(c.optim.lr, float)
    assert c.eval.solver == "euler"
    assert c.ema_decay_per_step == pytest.approx(0.99)
    # the --variant argument selects the same thing
    assert load_config(path, variant="small").train.max_steps == 5


def test_base_files_chain_relative_to_the_file_and_loops_are_refused(tmp_path):
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "root.yaml").write_text(
        "optim: {lr: 1e-4, betas: [0.5, 0.6]}\ntrain: {max_steps: 7, batch_size: 4}\n"
        "model: {network: {type: unet2d, layers_per_block: 2}}\nvariants: {small: {train: {max_steps: 2}}}\n")
    (tmp_path / "shared" / "mid.yaml").write_text("base: root.yaml\nmodel: {network: {periodic: true}}\n")
    (tmp_path / "family.yaml").write_text("base: shared/mid.yaml\noptim: {betas: [0.1, 0.2]}\n"
                                          "variants: {small: {train: {batch_size: 2}}}\n")
    c = load_config(tmp_path / "family.yaml")
    assert c.optim.lr == 1e-4 and c.optim.betas == [0.1, 0.2] and c.train.max_steps == 7
    assert c.model.network == {"type": "unet2d", "layers_per_block": 2, "periodic": True}
    small = load_config(tmp_path / "family.yaml", variant="small")   # variants merge across the chain too
    assert (small.train.max_steps, small.train.batch_size) == (2, 2)
    # a network of another type replaces the base's whole (a UNet's settings mean nothing to a DiT)
    (tmp_path / "dit.yaml").write_text("base: shared/mid.yaml\nmodel: {network: {type: dit, depth: 2}}\n")
    assert load_config(tmp_path / "dit.yaml").model.network == {"type": "dit", "depth": 2}
    (tmp_path / "shared" / "root.yaml").write_text("base: ../family.yaml\n")
    with pytest.raises(ConfigError, match="loops"):
        load_config(tmp_path / "family.yaml")
    (tmp_path / "lost.yaml").write_text("base: nowhere.yaml\n")
    with pytest.raises(FileNotFoundError, match="nowhere.yaml"):
        load_config(tmp_path / "lost.yaml")


def test_generation_settings_come_from_the_named_data_config(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "d.yaml").write_text(
        "problem: darcy\nresolution: 64\nparameters: {f: 1.0, tau: 3.0}\nn_train: 100\nn_test: 10\nseed: 5\n")
    (tmp_path / "c.yaml").write_text("data: {problem: darcy, generate: {from: data/d.yaml, workers: 3, seed: 9}}\n")
    gen = load_config(tmp_path / "c.yaml", ["data.generate.parameters.f=2.5"]).data.generate
    assert gen == {"n": 100, "resolution": 64, "seed": 9, "workers": 3, "parameters": {"f": 2.5, "tau": 3.0}}
    with pytest.raises(ConfigError, match="'poisson'.*'darcy' data config"):
        load_config(tmp_path / "c.yaml", ["data.problem=poisson"])


def test_floats_without_a_dot_are_floats_everywhere(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("loss: {options: {P_mean: -1e0, eps: 1E-3}}\nmodel: {network: {scale: 2e5}}\n")
    c = load_config(path, ["loss.options.sigma_data=5e-1", "model.network.name=1e5x"])
    assert c.loss.options == {"P_mean": -1.0, "eps": 1e-3, "sigma_data": 0.5}
    assert c.model.network["scale"] == 2e5 and c.model.network["name"] == "1e5x"


def test_half_life_is_converted_to_a_decay():
    c = load_config(base={"train": {"ema_half_life": 100}})
    assert c.ema_decay_per_step ** 100 == pytest.approx(0.5)


@pytest.mark.parametrize("text, words", [
    ("train: {max_step: 3}\n", ["'max_step'", "'train'", "max_steps"]),
    ("optim: {learning_rate: 0.1}\n", ["'learning_rate'", "'optim'"]),
    ("trian: {max_steps: 3}\n", ["'trian'", "train"]),
])
def test_unknown_key_in_file_names_key_section_and_suggestion(tmp_path, text, words):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    for w in words:
        assert w in str(e.value)


@pytest.mark.parametrize("override, words", [
    ("train.batchsize=3", ["train.batchsize=3", "'batchsize'", "'train'", "batch_size"]),
    ("eval.n_sample=3", ["'n_sample'", "'eval'", "n_samples"]),
    ("optimizer.lr=3", ["'optimizer'", "optim"]),
    ("train.max_steps=ten", ["train.max_steps", "integer"]),
    ("train.mixed_precision=fp8", ["mixed_precision", "bf16"]),
    ("no_equals_sign", ["key.sub=value"]),
    ("variant=huge", ["'huge'", "variant"]),
    ("train.augment=[rotate]", ["rotate", "roll_x"]),
    ("optim.betas=[0.9]", ["optim.betas", "at least 2"]),
    ("train.ema_half_life=-3", ["train.ema_half_life", "> 0", "-3"]),
    ("data.in_memory=maybe", ["data.in_memory", "true or false"]),
    ("model=3", ["give a key inside", "'model'"]),
    ("model.network=3", ["model.network must be a mapping, got 3"]),
    ("train.max_steps.x=3", ["train.max_steps is not a mapping"]),
    ("optim.lr=[1, 2]", ["optim.lr must be a number"]),
])
def test_bad_overrides_are_clear_errors(override, words):
    with pytest.raises(ConfigError) as e:
        load_config(base={"variants": {}}, overrides=[override])
    for w in words:
        assert w in str(e.value)


def test_inconsistent_values_are_refused():
    with pytest.raises(ConfigError, match="grad_accum"):
        load_config(base={"train": {"batch_size": 10, "grad_accum": 4}})
    with pytest.raises(ConfigError, match="exactly one"):
        load_config(base={"train": {"ema_decay": 0.9, "ema_half_life": 10}})
    with pytest.raises(ConfigError, match="both"):
        load_config(base={"data": {"fields": ["a", "u"], "cond_fields": ["a"]}})
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config("nope.yaml")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(base={"train": 3})


def test_lr_schedule_warmup_then_cosine_to_floor():
    s = LRSchedule(warmup_steps=10, max_steps=110, schedule="cosine", min_lr_ratio=0.1)
    assert [s(t) for t in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert s(10) == pytest.approx(1.0)
    assert s(60) == pytest.approx(0.55)        # half way: floor + (1 - floor) / 2
    assert s(110) == pytest.approx(0.1) and s(500) == pytest.approx(0.1)
    c = LRSchedule(warmup_steps=0, max_steps=10, schedule="constant", min_lr_ratio=0.0)
    assert all(c(t) == 1.0 for t in range(20))


def test_step_sampler_splits_the_global_batch_and_resumes_exactly():
    n, batch, accum, seed, steps = 10, 4, 2, 3, 7
    single = list(StepBatchSampler(n, batch, accum, 0, 1, seed, 0, steps))
    ranks = [list(StepBatchSampler(n, batch, accum, r, 2, seed, 0, steps)) for r in range(2)]
    assert len(single) == steps * accum and all(len(b) == batch for b in single)
    # the ranks' halves, put together, are the single-process batches
    assert [r0 + r1 for r0, r1 in zip(*ranks)] == single
    # each epoch (n consecutive samples of the stream) is a permutation; epochs differ
    stream = np.concatenate(single)
    assert sorted(stream[:n]) == list(range(n)) and sorted(stream[n:2 * n]) == list(range(n))
    assert not np.array_equal(stream[:n], stream[n:2 * n])
    # starting at step 3 gives exactly the tail of the uninterrupted order
    assert list(StepBatchSampler(n, batch, accum, 0, 1, seed, 3, steps)) == single[3 * accum:]
    assert list(StepBatchSampler(n, batch, accum, 0, 1, seed + 1, 0, steps)) != single
    with pytest.raises(ConfigError, match="not divisible"):
        StepBatchSampler(n, 5, 1, 0, 2, seed, 0, steps)


@pytest.mark.parametrize("problem", PROBLEMS)
def test_generation_settings_match_the_data_config(problem):
    """data.generate of the base config repeats configs/data/<problem>.yaml; the tiny variant only shrinks it."""
    import yaml

    from diffpde import pdes

    data_cfg = CONFIGS / "data" / f"{problem}.yaml"
    if not data_cfg.is_file():
        pytest.skip(f"{data_cfg} is not written yet")
    want = yaml.safe_load(data_cfg.read_text())
    base = load_config(CONFIGS / f"{problem}.yaml")
    gen = base.data.generate
    assert gen["resolution"] == want["resolution"] == base.data.resolution
    assert gen["seed"] == want["seed"] and gen["n"] == want["n_train"]
    assert gen["parameters"] == want["parameters"]
    tiny = load_config(CONFIGS / f"{problem}.yaml", variant="tiny")
    assert tiny.data.generate["parameters"] == want["parameters"]
    assert tiny.data.generate["resolution"] == tiny.data.resolution
    pdes.get(problem, tiny.data.resolution, **tiny.data.generate["parameters"])  # valid parameters


@pytest.mark.parametrize("problem", ["darcy", "burgers", "navier_stokes", "poisson", "helmholtz", "burgers_wdno", "darcy_dit"])
def test_flow_variant_changes_only_the_noise_process_and_merges_with_a_size(problem):
    """``tiny+flow``: the tiny config with flow-matching preconditioning and loss, nothing else but the run dir."""
    tiny = load_config(CONFIGS / f"{problem}.yaml", variant="tiny").to_dict()
    flow = load_config(CONFIGS / f"{problem}.yaml", variant="tiny+flow").to_dict()
    assert flow["model"]["precond"]["type"] == "flow" and flow["loss"] == {"type": "flow", "options": {}}
    assert flow["model"]["network"] == tiny["model"]["network"] and flow["data"] == tiny["data"]
    assert flow["optim"] == tiny["optim"]
    assert {k: v for k, v in flow["train"].items() if k != "output_dir"} == \
        {k: v for k, v in tiny["train"].items() if k != "output_dir"}
    assert flow["train"]["output_dir"].endswith("_flow") and flow["variant"] == "tiny+flow"


def test_variant_names_are_checked_one_by_one():
    with pytest.raises(ConfigError, match="unknown variant 'flwo'"):
        load_config(CONFIGS / "darcy.yaml", variant="tiny+flwo")
    with pytest.raises(ConfigError, match="empty name"):
        load_config(CONFIGS / "darcy.yaml", variant="tiny+")
