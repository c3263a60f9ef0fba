"""The ``diffpde`` command: generate and import-pdebench, exit codes and error messages."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from diffpde.cli import COMMANDS, main
from diffpde.data import read_fields, read_info
from diffpde.data.generate import parse_parameters

from test_generate import toy_truth  # noqa: F401  (registers "_toy")
from test_pdebench import make_darcy


def test_generate_command_writes_the_dataset(tmp_path):
    out = tmp_path / "d.h5"
    code = main(["generate", "_toy", "--n", "3", "--resolution", "8", "--seed", "9", "--param", "scale=2",
                 "--dtype", "float64", "--out", str(out), "--quiet"])
    assert code == 0
    info = read_info(out)
    assert info.config["parameters"]["scale"] == 2.0 and isinstance(info.config["parameters"]["scale"], float)
    assert info.dtype == "float64" and info.seed == 9
    np.testing.assert_array_equal(read_fields(out)["a"], 2.0 * toy_truth(3, 8, 9)["a"])


@pytest.mark.parametrize("argv, message", [
    (["generate", "nope", "--n", "2", "--resolution", "8"], "unknown PDE problem 'nope'"),
    (["generate", "_toy", "--n", "2", "--resolution", "8", "--param", "viscosity=1"], "_toy: unknown parameter"),
    (["generate", "_toy", "--n", "2", "--resolution", "2"], "_toy: resolution 2 is too small"),
    (["generate", "_toy", "--n", "2", "--resolution", "8", "--param", "scale"], "--param 'scale': expected KEY=VALUE"),
])
def test_generate_errors_are_one_line_and_named(tmp_path, capsys, argv, message):
    assert main(argv + ["--out", str(tmp_path / "x.h5"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("diffpde generate: error:") and message in err and "Traceback" not in err


def test_import_pdebench_command(tmp_path, capsys):
    src = tmp_path / "darcy.hdf5"
    nu, _ = make_darcy(src, n=2)
    assert main(["import-pdebench", str(src), "--problem", "darcy", "--out", str(tmp_path / "o.h5"), "--quiet"]) == 0
    np.testing.assert_array_equal(read_fields(tmp_path / "o.h5")["a"], nu)
    assert main(["import-pdebench", str(src), "--problem", "darcy", "--out", str(tmp_path / "o.h5"), "--quiet"]) == 1
    assert "exists" in capsys.readouterr().err


def test_parameters_parse_typed_with_float_defaults():
    assert parse_parameters(["a=1", "b=0.5", "c=[1, 2]", "d=dirichlet", "e=true", "f=1e2"], {"a": 0.1}) == \
        {"a": 1.0, "b": 0.5, "c": [1, 2], "d": "dirichlet", "e": True, "f": 100.0}


def test_help_lists_every_command_without_importing_them(capsys):
    script = ("import sys; from diffpde.cli import main\ntry: main(['--help'])\nexcept SystemExit: pass\n"
              "print('torch imported' if 'torch' in sys.modules else 'light')")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip().endswith("light")
    for name in COMMANDS:
        assert name in result.stdout
    with pytest.raises(SystemExit) as exit_:
        main(["generate", "--help"])
    assert exit_.value.code == 0 and "--workers" in capsys.readouterr().out


def test_threads_option_and_wait_policy(capsys, monkeypatch):
    from diffpde.cli import _command_name, set_threads

    assert _command_name(["--threads", "1", "generate", "darcy"]) == "generate"
    assert _command_name(["--threads=1", "demo"]) == "demo"
    threads = torch.get_num_threads()
    try:
        set_threads(2)
        assert torch.get_num_threads() == 2
        monkeypatch.setenv("DIFFPDE_THREADS", "1")
        set_threads(None)
        assert torch.get_num_threads() == 1
        monkeypatch.setenv("DIFFPDE_THREADS", "two")
        with pytest.raises(ValueError, match="DIFFPDE_THREADS='two': expected a positive integer"):
            set_threads(None)
    finally:
        torch.set_num_threads(threads)
    assert main(["--threads", "0", "generate", "darcy", "--n", "1", "--resolution", "8", "--out", "x.h5"]) == 1
    assert "--threads must be >= 1, got 0" in capsys.readouterr().err
    # the command sets the passive OpenMP wait policy before torch is loaded, unless the environment chose one
    script = "import os, diffpde.cli; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env)
    assert out.stdout.strip() == "PASSIVE"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                         env={**env, "OMP_WAIT_POLICY": "ACTIVE"})
    assert out.stdout.strip() == "ACTIVE"
