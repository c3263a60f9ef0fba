"""Two real processes (gloo on CPU) train like one process with the same global batch."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from diffpde.training.checkpoint import MARKER, list_checkpoints
from diffpde.training.config import load_config
from diffpde.training.trainer import train

ROOT = Path(__file__).resolve().parents[2]


def _reset_accelerate():
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def config_dict(data_path, output_dir, grad_accum=1):
    return {
        "data": {"path": str(data_path), "problem": "darcy", "fields": ["a", "u"]},
        "model": {"network": {"type": "unet2d", "block_out_channels": [16, 32], "layers_per_block": 1,
                              "attention_levels": [False, False], "norm_num_groups": 8}},
        "optim": {"lr": 1e-3, "warmup_steps": 1},
        "train": {"batch_size": 8, "grad_accum": grad_accum, "max_steps": 3, "checkpoint_every": 2, "log_every": 1,
                  "output_dir": str(output_dir), "log_with": "none", "ema_half_life": 2, "progress": False},
        "eval": {"n_samples": 1, "steps": 1},
        "debug": {"dump_rank_weights": True},
    }


def assert_close_to_single(weights, reference):
    """Equal up to float summation order: lr = 1e-3, so a different batch or noise moves weights by ~1e-3.

    Adam turns the rounding of near-zero gradients into steps of up to lr, so a few entries may
    differ by more than rounding; the mean difference stays at the rounding level.
    """
    diff = torch.cat([(weights[k] - v).abs().flatten() for k, v in reference.items()])
    assert float(diff.max()) < 1e-4 and float(diff.mean()) < 1e-7, (float(diff.max()), float(diff.mean()))


def check_two_ranks(out, single):
    """Both ranks hold the same weights, close to the one-process run; the run saw two processes."""
    w0, w1 = (load_file(str(out / f"rank_{r}.safetensors")) for r in (0, 1))
    assert w0.keys() == w1.keys() == single[0].keys()
    for k in w0:
        assert torch.equal(w0[k], w1[k]), f"ranks disagree on {k}"
    assert_close_to_single(w0, single[0])
    run = json.loads((out / "run.json").read_text())
    assert run["world_size"] == 2 and run["local_batch"] == 4 // run["config"]["train"]["grad_accum"]
    losses = [h["loss"] for h in json.loads((out / "result.json").read_text())["history"]]
    assert losses == pytest.approx(single[1], rel=1e-5)
    (step, ckpt), = list_checkpoints(out / "checkpoints")
    assert step == 2 and json.loads((ckpt / MARKER).read_text())["world_size"] == 2
    assert (ckpt / "random_states_0.pkl").is_file() and (ckpt / "random_states_1.pkl").is_file()


def _two_rank_worker(config):
    _reset_accelerate()               # forked from a process whose Accelerate state is single-process
    train(load_config(base=config))


def run_launches(data_path, out):
    """Reference runs in this process and two-rank runs with ``debug_launcher`` (fork).

    Called in a fresh interpreter with ``OMP_NUM_THREADS=1``: forking a process whose BLAS/OpenMP
    thread pool has run with more than one thread hangs the children at their first matrix product.
    """
    from accelerate import debug_launcher

    out = Path(out)
    for accum in (1, 2):
        _reset_accelerate()
        train(load_config(base=config_dict(data_path, out / f"single_accum{accum}", grad_accum=accum)))
        _reset_accelerate()
        debug_launcher(_two_rank_worker, args=(config_dict(data_path, out / f"two_accum{accum}", grad_accum=accum),),
                       num_processes=2)


@pytest.fixture(scope="module")
def launched(darcy_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("launches")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, __file__, str(darcy_file), str(out)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def single_run(out):
    """Weights and per-step losses of a one-process run."""
    return load_file(str(out / "rank_0.safetensors")), [h["loss"] for h in json.loads((out / "result.json").read_text())["history"]]


def test_debug_launcher_two_ranks_match_one_process(launched):
    check_two_ranks(launched / "two_accum1", single_run(launched / "single_accum1"))


def test_debug_launcher_with_grad_accum_matches_too(launched):
    """grad_accum=2 on 2 ranks (micro-batches of 2 per rank) equals grad_accum=2 on one process."""
    check_two_ranks(launched / "two_accum2", single_run(launched / "single_accum2"))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_accelerate_launch_two_processes_match_one_process(darcy_file, tmp_path, launched):
    """The real launcher (8-26 s here, depending on the machine's load): scripts/train.py on two gloo ranks."""
    out = tmp_path / "launched"
    cfg = tmp_path / "train.yaml"
    cfg.write_text(yaml.safe_dump(config_dict(darcy_file, out)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
         str(ROOT / "scripts" / "train.py"), "--config", str(cfg)],
        env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_two_ranks(out, single_run(launched / "single_accum1"))


if __name__ == "__main__":
    run_launches(sys.argv[1], sys.argv[2])
