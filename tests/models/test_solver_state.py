"""Fitted solver state saved with a prior: round trip, refused for other weights, cached fitting."""

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from diffpde.models import solver_state as ss
from diffpde.models.prior import Prior

DATA = Path(__file__).parent / "data" / "v1_unet2d_edm"


@dataclass
class Toy:
    """A stand-in fitted state with the protocol (state_dict / metadata / from_state)."""

    coefficients: torch.Tensor
    nfe: int

    def state_dict(self):
        return {"coefficients": self.coefficients}

    def metadata(self):
        return {"kind": "test.toy", "nfe": self.nfe}

    @classmethod
    def from_state(cls, tensors, metadata):
        return cls(tensors["coefficients"], metadata["nfe"])


ss.register_state_kind("test.toy", f"{__name__}:Toy")


@pytest.fixture
def prior_dir(tmp_path):
    return Path(shutil.copytree(DATA, tmp_path / "prior"))


def test_round_trip_and_refusal_for_other_weights(prior_dir):
    prior = Prior.from_pretrained(prior_dir)
    state = Toy(torch.linspace(0, 1, 7, dtype=torch.float64), nfe=6)
    meta = ss.save_solver_state(prior_dir, "toy-nfe6", state, prior=prior)
    assert json.loads(meta.read_text())["kind"] == "test.toy"
    back = ss.load_solver_state(prior_dir, "toy-nfe6", prior=prior)
    assert back.nfe == 6 and torch.equal(back.coefficients, state.coefficients)
    assert back.coefficients.dtype == torch.float64

    other = Prior.from_pretrained(prior_dir)
    with torch.no_grad():
        next(other.parameters()).add_(1e-3)
    assert ss.prior_fingerprint(other) != ss.prior_fingerprint(prior)
    with pytest.raises(ValueError, match="fitted to other weights.*fit it again"):
        ss.load_solver_state(prior_dir, "toy-nfe6", prior=other)
    with pytest.raises(FileNotFoundError, match="no fitted solver state 'missing'"):
        ss.load_solver_state(prior_dir, "missing", prior=prior)
    with pytest.raises(ValueError, match="use letters"):
        ss.load_solver_state(prior_dir, "../escape", prior=prior)


def test_cached_state_fits_once_and_refits_for_new_weights(prior_dir):
    prior = Prior.from_pretrained(prior_dir)
    calls = []

    def fit():
        calls.append(1)
        return Toy(torch.tensor([float(len(calls))]), nfe=4)

    first = ss.cached_solver_state(prior_dir, "toy", prior, fit)
    again = ss.cached_solver_state(prior_dir, "toy", prior, fit)
    assert len(calls) == 1 and torch.equal(first.coefficients, again.coefficients)
    with torch.no_grad():
        next(prior.parameters()).mul_(1.01)
    messages = []
    refit = ss.cached_solver_state(prior_dir, "toy", prior, fit, log=messages.append)
    assert len(calls) == 2 and refit.coefficients.item() == 2.0 and "fitting again" in messages[0]
    assert ss.cached_solver_state(None, "toy", prior, fit).coefficients.item() == 3.0   # no directory: nothing kept


def test_unknown_kind_is_named(prior_dir):
    prior = Prior.from_pretrained(prior_dir)

    class Odd(Toy):
        def metadata(self):
            return {"kind": "nobody.knows", "nfe": 1}

    ss.save_solver_state(prior_dir, "odd", Odd(torch.zeros(1), 1), prior=prior)
    with pytest.raises(ValueError, match="unknown solver state kind 'nobody.knows'"):
        ss.load_solver_state(prior_dir, "odd", prior=prior)
