"""The one KEY=VALUE parser of the command line (diffpde.options)."""

import math

import pytest

from diffpde.options import check_types, parse_key_values, parse_value


@pytest.mark.parametrize("text, value", [
    ("8", 8), ("-3", -3), ("1e2", 100.0), ("0.5", 0.5), ("-1.5e-3", -1.5e-3), ("inf", math.inf),
    ("true", True), ("False", False), ("null", None), ("None", None), ("~", None), ("none", "none"), ("[1, 2.5, 1e2]", [1, 2.5, 100.0]),
    ("{a: 1e-3, b: x}", {"a": 1e-3, "b": "x"}), ("dirichlet", "dirichlet"), ("u:0.03", "u:0.03"), ("", ""),
])
def test_values_are_typed(text, value):
    assert parse_value(text) == value
    assert type(parse_value(text)) is type(value)


def test_key_values_and_errors():
    assert parse_key_values(["cg_iters=8", "zeta_obs=1e2", "name=a=b"], "--method-option") == \
        {"cg_iters": 8, "zeta_obs": 100.0, "name": "a=b"}
    with pytest.raises(ValueError, match="--method-option 'cg_iters': expected KEY=VALUE"):
        parse_key_values(["cg_iters"], "--method-option")
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        parse_key_values(["=3"])
    with pytest.raises(ValueError, match="not a valid list"):
        parse_key_values(["x=[1, 2"])


def method(x, *, cg_iters: int = 4, scale: float = 1.0, fallback: str = "network", inflate: bool = True, extra=None):
    return x


def test_check_types_names_the_option_and_the_expected_kind():
    assert check_types({"cg_iters": 8, "scale": 2}, method) == {"cg_iters": 8, "scale": 2.0}
    assert type(check_types({"scale": 2}, method)["scale"]) is float
    with pytest.raises(ValueError, match="method option cg_iters must be an integer, got 'abc'"):
        check_types({"cg_iters": "abc"}, method, "method option")
    with pytest.raises(ValueError, match="cg_iters must be an integer, got 2.5"):
        check_types({"cg_iters": 2.5}, method)
    with pytest.raises(ValueError, match="inflate must be true or false, got 1"):
        check_types({"inflate": 1}, method)
    with pytest.raises(ValueError, match="scale must be a number, got nan"):
        check_types({"scale": math.nan}, method)
    with pytest.raises(ValueError, match=r"unknown option 'cg_iter'; known: cg_iters, extra, fallback, inflate, scale, x"):
        check_types({"cg_iter": 3}, method)
    assert check_types({"anything": 1, "extra": [1]}, lambda **kw: None) == {"anything": 1, "extra": [1]}
    assert check_types({"a": 1}, {"a": 0.5}) == {"a": 1.0}
