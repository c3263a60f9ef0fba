"""The registry ``diffpde.pdes.get`` and the contract every registered family keeps."""

import json
from pathlib import Path

import numpy as np
import pytest

import diffpde.pdes as pdes
from diffpde.pdes.darcy import Darcy


def test_get_builds_the_family():
    darcy = pdes.get("darcy", resolution=64)
    assert isinstance(darcy, Darcy) and darcy.resolution == 64
    assert darcy.parameters == {"f": 1.0, "a_high": 12.0, "a_low": 3.0, "alpha": 2.0, "tau": 3.0}
    assert pdes.get("helmholtz", 32, k=2.5).parameters["k"] == 2.5
    assert {"darcy", "poisson", "helmholtz"} <= set(pdes.names())
    assert json.loads(json.dumps(darcy.config())) == {"name": "darcy", "resolution": 64, "parameters": darcy.parameters}


def test_get_rejects_bad_requests():
    with pytest.raises(KeyError, match="unknown PDE problem 'darcyy'; known: .*darcy"):
        pdes.get("darcyy", 64)
    with pytest.raises(ValueError, match="unknown parameter.*kappa.*known: a_high, a_low, alpha, f, tau"):
        pdes.get("darcy", 64, kappa=1.0)
    with pytest.raises(ValueError, match="resolution 4 is too small"):
        pdes.get("poisson", 4)
    with pytest.raises(TypeError, match="resolution must be an integer"):
        pdes.get("helmholtz", 64.0)


@pytest.mark.parametrize("name", ["darcy", "poisson", "helmholtz"])
def test_family_contract(name):
    problem = pdes.get(name, 16)
    assert problem.field_names == ("a", "u")
    assert [f.role for f in problem.fields] == ["input", "output"]
    assert all(f.shape == (16, 16) and f.dims == ("y", "x") for f in problem.fields)
    assert problem.grid.kind == "vertex" and problem.grid.spacing("x") == pytest.approx(1 / 15)
    np.testing.assert_array_equal(problem.grid.coords["y"], np.linspace(0, 1, 16))
    sample = problem.generate(seed=0)
    assert set(sample) == {"a", "u"} and all(v.dtype == np.float64 and v.shape == (16, 16) for v in sample.values())
    inputs = problem.sample_inputs(2, seed=0)
    assert set(inputs) == {"a"} and inputs["a"].shape == (2, 16, 16)
    text = problem.describe(sample)
    assert "\n" not in text and "16x16 vertex grid" in text and text.startswith(problem.describe())


@pytest.mark.parametrize("name", ["darcy", "poisson", "helmholtz"])
def test_data_config_holds_the_defaults(name):
    yaml = pytest.importorskip("yaml")
    root = Path(__file__).resolve().parents[2]
    config = yaml.safe_load((root / "configs" / "data" / f"{name}.yaml").read_text())
    assert config["problem"] == name
    problem = pdes.get(config["problem"], config["resolution"], **config["parameters"])
    assert problem.parameters == type(problem).defaults
    assert config["n_train"] > config["n_test"] > 0 and config["seed"] != config["test_seed"]


def test_register_refuses_a_taken_name():
    class Impostor(Darcy):
        pass

    with pytest.raises(ValueError, match="'darcy' is taken by diffpde.pdes.darcy.Darcy"):
        pdes.register(Impostor)
    assert pdes.get("darcy", 16).__class__ is Darcy


@pytest.mark.parametrize("name", ["darcy", "poisson", "helmholtz", "burgers", "navier_stokes"])
@pytest.mark.parametrize("seed", [-1, 1.5, "3", True, None, np.int64(-2)])
def test_bad_seed_is_one_line_error_naming_it(name, seed):
    problem = pdes.get(name, 16)
    shown = "-2" if isinstance(seed, np.integer) else repr(seed)
    message = f"{name}: seed must be a non-negative integer, got {shown}"
    with pytest.raises(ValueError, match=f"^{message.replace('(', '.').replace(')', '.')}$"):
        problem.generate(seed)
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        problem.sample_inputs(1, seed)


def test_bad_sample_count_and_good_numpy_seed():
    problem = pdes.get("darcy", 16)
    with pytest.raises(ValueError, match="darcy: number of samples must be a non-negative integer, got -1"):
        problem.sample_inputs(-1, 0)
    np.testing.assert_array_equal(problem.generate(np.int64(3))["a"], problem.generate(3)["a"])
    assert problem.sample_inputs(0, 5)["a"].shape == (0, 16, 16)
