"""Observation specs: counts, fractions, noise, seeds per field, and errors that name the problem."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from diffpde import pdes
from diffpde.inference.observations import MaskObservation, SparsePoints, StackedObservation
from diffpde.inference.spec import ObservationSpecError, describe_operator, expand_amount, parse_observe

DARCY = pdes.get("darcy", 16)                      # fields a (input), u (output) on 16 x 16
PRIOR = SimpleNamespace(fields=("u",), cond_fields=("f",), grid_shape=(32, 32))  # the prior interface


def test_fraction_count_percentage_and_all():
    assert parse_observe("u:0.03", DARCY).num_measurements == round(0.03 * 256) == 8
    assert parse_observe("u:3%", DARCY).num_measurements == 8
    assert parse_observe("u:3e-2", DARCY).num_measurements == 8
    assert parse_observe("u:500", PRIOR).num_measurements == 500
    assert parse_observe("u:1", PRIOR).num_measurements == 1          # an integer is a count
    full = parse_observe("a:1.0", DARCY)
    assert isinstance(full, MaskObservation) and full.num_measurements == 256 and bool(full.mask_.all())
    assert parse_observe("a:all", DARCY).num_measurements == 256
    assert parse_observe("f:10", PRIOR).fields == ("f",)               # conditioning fields can be observed


def test_several_fields_stack_in_spec_order():
    op = parse_observe(" u:0.03, a:20 ", DARCY)
    assert isinstance(op, StackedObservation)
    assert op.fields == ("u", "a") and [o.num_measurements for o in op.operators] == [8, 20]
    assert op.mask and op.linear
    fields = {"a": torch.randn(2, 16, 16), "u": torch.randn(2, 16, 16)}
    assert op(fields).shape == (2, 28)
    assert describe_operator(op) == "u: 8 of 256 nodes (3.12 %), noise std 0; a: 20 of 256 nodes (7.81 %), noise std 0"


def test_seeds_are_per_field_and_reproducible():
    alone = parse_observe("u:0.1", DARCY, seed=5)
    both = parse_observe("a:0.1,u:0.1", DARCY, seed=5)
    # u is the second field of darcy: seed + 1, whatever else is observed
    assert torch.equal(alone.index, both.operators[1].index)
    assert torch.equal(alone.index, SparsePoints.random("u", (16, 16), 0.1, seed=6).index)
    assert torch.equal(both.operators[0].index, SparsePoints.random("a", (16, 16), 0.1, seed=5).index)
    assert not torch.equal(both.operators[0].index, both.operators[1].index)
    assert torch.equal(parse_observe("u:0.1", DARCY, seed=5).index, alone.index)
    assert not torch.equal(parse_observe("u:0.1", DARCY, seed=7).index, alone.index)


def test_noise_default_and_per_item():
    op = parse_observe("a:0.1,u:0.1@0.01", DARCY, noise_std=0.5)
    assert [o.noise_std for o in op.operators] == [0.5, 0.01]
    assert parse_observe("u:0.1", DARCY).noise_std == 0.0
    y = parse_observe("u:1.0@0.1", DARCY).measure({"u": torch.zeros(1, 16, 16)}, torch.Generator().manual_seed(0))
    assert 0.07 < float(y.std()) < 0.13


@pytest.mark.parametrize("spec, message", [
    ("v:0.03", "unknown field 'v'; the fields are a, u"),
    ("u:0", "must be in [1, 256]"),
    ("u:300", "must be in [1, 256]"),
    ("u:0.0", "fraction of observed nodes must be in (0, 1]"),
    ("u:1.5", "fraction of observed nodes must be in (0, 1]"),
    ("u:-0.1", "fraction of observed nodes must be in (0, 1]"),
    ("u:nan", "fraction of observed nodes must be in (0, 1]"),
    ("u:150%", "fraction of observed nodes must be in (0, 1]"),
    ("u:many", "is neither a fraction"),
    ("u", "expected FIELD:AMOUNT[@NOISE]"),
    ("u=0.03", "expected FIELD:AMOUNT[@NOISE]"),
    ("u:0.03,", "expected FIELD:AMOUNT[@NOISE]"),
    ("u:0.03@x", "noise standard deviation 'x' is not a number"),
    ("u:0.03@-1", "must be finite and >= 0"),
    ("u:0.03,u:10", "field 'u' appears twice"),
    ("", "empty observation spec"),
])
def test_errors_name_the_problem(spec, message):
    with pytest.raises(ObservationSpecError) as err:
        parse_observe(spec, DARCY)
    assert message in str(err.value)
    assert isinstance(err.value, ValueError)


def test_unknown_field_lists_the_priors_fields():
    with pytest.raises(ValueError, match="unknown field 'a'; the fields are u, f"):
        parse_observe("a:0.1", PRIOR)
    with pytest.raises(ValueError, match="noise_std"):
        parse_observe("u:0.1", PRIOR, noise_std=float("nan"))
    with pytest.raises(TypeError, match="prior or a PDE"):
        parse_observe("u:0.1", object())


def test_expand_amount():
    assert expand_amount("0.03", ("a",)) == "a:0.03"
    assert expand_amount("500@0.01", ("a", "u")) == "a:500@0.01,u:500@0.01"
    assert expand_amount("u:0.1", ("a",)) == "u:0.1"
    with pytest.raises(ValueError, match="no field to observe"):
        expand_amount("0.03", ())
    ops = parse_observe(expand_amount("0.5", DARCY.field_names), DARCY)
    assert [o.num_measurements for o in ops.operators] == [128, 128]
    assert np.array_equal(ops.operators[0].mask_.numpy().shape, (16, 16))
