"""Crash safety: a run SIGKILLed after (or during) a checkpoint and resumed ends bit-identical to an uninterrupted run.

Checkpoints hold nothing that must be unpickled, and the JSON records are never half-written.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from diffpde.training import checkpoint
from diffpde.training.checkpoint import MARKER, latest_checkpoint, list_checkpoints
from diffpde.training.config import load_config
from diffpde.training.records import append_jsonl, read_jsonl, trim_jsonl, write_json_atomic
from diffpde.training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[2]
STEPS = 6


def config_dict(data_path, output_dir):
    return {
        "data": {"path": str(data_path), "problem": "darcy", "fields": ["a", "u"]},
        "model": {"network": {"type": "unet2d", "block_out_channels": [16, 32], "layers_per_block": 1,
                              "attention_levels": [False, False], "norm_num_groups": 8}},
        "optim": {"lr": 1e-3, "warmup_steps": 3, "schedule": "cosine"},
        "train": {"batch_size": 4, "max_steps": STEPS, "checkpoint_every": 2, "keep_checkpoints": 5, "log_every": 2,
                  "eval_every": 2,
                  "output_dir": str(output_dir), "log_with": "none", "ema_half_life": 2, "progress": False},
        "eval": {"n_samples": 1, "steps": 1},
        "debug": {"dump_rank_weights": True},
    }


def run_in_process(data_path, output_dir, resume=None):
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    trainer = Trainer(load_config(base=config_dict(data_path, output_dir)))
    summary = trainer.fit(resume=resume)
    return trainer, summary


@pytest.fixture(scope="module")
def uninterrupted(darcy_file, tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    trainer, summary = run_in_process(darcy_file, tmp_path_factory.mktemp("full"))
    torch.set_num_threads(threads)
    return trainer, summary


def assert_same_final_state(trainer, reference):
    for name, module in (("model", trainer.unwrapped), ("ema", trainer.ema.shadow)):
        ref = (reference.unwrapped if name == "model" else reference.ema.shadow).state_dict()
        for k, v in module.state_dict().items():
            assert torch.equal(v, ref[k]), f"{name} {k} differs after resuming"
    opt, ref_opt = trainer.optimizer.state_dict()["state"], reference.optimizer.state_dict()["state"]
    assert all(torch.equal(opt[i]["exp_avg_sq"], ref_opt[i]["exp_avg_sq"]) for i in ref_opt)
    assert trainer.scheduler.get_last_lr() == reference.scheduler.get_last_lr()


def test_sigkill_after_checkpoint_then_resume_latest_is_bit_identical(darcy_file, tmp_path, uninterrupted):
    reference, ref_summary = uninterrupted
    out = tmp_path / "run"
    cfg = tmp_path / "train.yaml"
    cfg.write_text(yaml.safe_dump(config_dict(darcy_file, out)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "train.py"), "--config", str(cfg),
                           "debug.kill_after_checkpoint=4"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    ckpts = out / "checkpoints"
    assert [s for s, _ in list_checkpoints(ckpts)] == [2, 4]
    assert not (out / "prior").exists()
    # what a kill in the middle of the next save would leave behind: never picked up
    (ckpts / "step_0000006").mkdir()
    (ckpts / "step_0000006" / "model.safetensors").write_bytes(b"half")
    (ckpts / ".tmp_step_0000008").mkdir()
    assert latest_checkpoint(ckpts) == ckpts / "step_0000004"
    # records of steps after the checkpoint, the last one torn by a kill in the middle of its line
    for log in ("log.jsonl", "eval.jsonl"):
        with open(out / log, "a") as f:
            f.write(json.dumps({"step": 5, "loss": 9.0}) + "\n" + '{"step": 6, "lo')

    trainer, summary = run_in_process(darcy_file, out, resume="latest")
    assert summary["resumed_from"].endswith("step_0000004") and summary["step"] == STEPS
    assert_same_final_state(trainer, reference)
    # the log after the resume continues the uninterrupted one exactly
    assert summary["history"][-1]["loss"] == ref_summary["history"][-1]["loss"]
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    ref_log = [json.loads(line) for line in (reference.output_dir / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [2, 4, 6] and [r["loss"] for r in log] == [r["loss"] for r in ref_log]
    # eval.jsonl is trimmed the same way, and the evaluations of the EMA weights repeat exactly
    evals = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines()]
    ref_evals = [json.loads(line) for line in (reference.output_dir / "eval.jsonl").read_text().splitlines()]
    assert [r["step"] for r in ref_evals] == [2, 4, 6] and evals == ref_evals
    ref_weights = load_file(str(reference.output_dir / "rank_0.safetensors"))
    for k, v in load_file(str(out / "rank_0.safetensors")).items():
        assert torch.equal(v, ref_weights[k])


def test_kill_while_saving_leaves_no_checkpoint_and_resume_uses_the_previous(darcy_file, tmp_path, uninterrupted,
                                                                            monkeypatch):
    class Killed(BaseException):
        pass

    def fake_kill(pid, sig):
        raise Killed  # stands in for SIGKILL: nothing after this line of save_checkpoint runs

    out = tmp_path / "run"
    monkeypatch.setattr(checkpoint.os, "kill", fake_kill)
    config = config_dict(darcy_file, out)
    config["debug"]["kill_during_checkpoint"] = 4
    from accelerate.state import AcceleratorState, GradientState

    trainer = Trainer(load_config(base=config))
    with pytest.raises(Killed):
        trainer.fit()
    ckpts = out / "checkpoints"
    tmp = ckpts / ".tmp_step_0000004"
    assert tmp.is_dir() and (tmp / "model.safetensors").is_file() and not (tmp / MARKER).exists()
    assert [s for s, _ in list_checkpoints(ckpts)] == [2]
    monkeypatch.undo()
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    resumed, summary = run_in_process(darcy_file, out, resume="latest")
    assert summary["resumed_from"].endswith("step_0000002")
    assert_same_final_state(resumed, uninterrupted[0])
    assert not tmp.exists()                       # stale temporary checkpoints are cleaned up
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [2, 4, 6]  # the records of the redone steps are not doubled
    assert json.loads((ckpts / "step_0000004" / MARKER).read_text())["step"] == 4


def test_checkpoints_load_without_unpickling(uninterrupted, darcy_file, tmp_path):
    from accelerate.utils.other import TORCH_SAFE_GLOBALS

    trainer, _ = uninterrupted
    path = latest_checkpoint(trainer.output_dir / "checkpoints")
    names = sorted(p.name for p in path.iterdir())
    assert names == [MARKER, "ema.safetensors", "model.safetensors", "optimizer.bin", "random_states_0.pkl",
                     "scheduler.bin"]
    ema = load_file(str(path / "ema.safetensors"))
    assert int(ema["num_updates"]) == STEPS
    for k, v in trainer.ema.shadow.state_dict().items():
        assert torch.equal(ema[f"shadow.{k}"], v)
    optimizer = torch.load(path / "optimizer.bin", weights_only=True)
    assert set(optimizer) == {"state", "param_groups"}
    torch.load(path / "scheduler.bin", weights_only=True)
    # Accelerate reads its RNG states with weights_only=True, allowing numpy's array types only
    with torch.serialization.safe_globals(TORCH_SAFE_GLOBALS):
        assert torch.load(path / "random_states_0.pkl", weights_only=True)["step"] >= 0
    # an older checkpoint with a pickled object is refused, not unpickled
    old = tmp_path / "old"
    shutil.copytree(path, old)
    torch.save({"shadow.x": torch.zeros(1)}, old / "custom_checkpoint_0.pkl")
    fresh = Trainer(load_config(base=config_dict(darcy_file, tmp_path / "fresh")))
    with pytest.raises(checkpoint.CheckpointError, match="pickled state .*custom_checkpoint_0.pkl"):
        fresh.resume(old)
    (old / "custom_checkpoint_0.pkl").unlink()
    (old / "ema.safetensors").unlink()
    with pytest.raises(checkpoint.CheckpointError, match="ema.safetensors is missing"):
        fresh.resume(old)
    fresh.resume(path)
    assert fresh.step == STEPS and fresh.ema.num_updates == STEPS
    assert all(torch.equal(v, ema[f"shadow.{k}"]) for k, v in fresh.ema.shadow.state_dict().items())


def test_the_package_never_unpickles():
    offenders = [str(p) for p in (ROOT / "diffpde").rglob("*.py") if "weights_only=False" in p.read_text()]
    assert offenders == []


def test_jsonl_records_drop_a_torn_last_line_and_refuse_a_corrupt_one(tmp_path):
    path = tmp_path / "log.jsonl"
    for step in (1, 2, 3):
        append_jsonl(path, {"step": step, "loss": 1.0 / step})
    assert [r["step"] for r in read_jsonl(path)] == [1, 2, 3]
    with open(path, "a") as f:
        f.write('{"step": 4, "loss": 0.25')            # killed in the middle of a line
    assert [r["step"] for r in read_jsonl(path)] == [1, 2, 3]
    trim_jsonl(path, 2)
    assert path.read_text() == '{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.5}\n'
    append_jsonl(path, {"step": 3})
    assert [r["step"] for r in read_jsonl(path)] == [1, 2, 3]
    path.write_text('{"step": 1}\n{"step": 2, "lo\n{"step": 3}\n')
    with pytest.raises(ValueError, match="line 2 is not JSON"):
        read_jsonl(path)


def test_json_files_are_replaced_whole_or_not_at_all(tmp_path):
    path = tmp_path / "run.json"
    write_json_atomic(path, {"step": 1}, indent=1)
    with pytest.raises(TypeError):
        write_json_atomic(path, {"step": 2, "bad": object()})   # fails while serialising
    assert json.loads(path.read_text()) == {"step": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]   # no temporary file left behind
