"""``KEY=VALUE`` options from the command line, with typed values: the one parser every command uses.

Values are read as, in order: an integer (``8``, ``-3``), a float (``1e2``, ``0.5``, ``inf``),
a boolean (``true``/``false``, any case), ``null``/``~``/``None`` (``None``; lowercase ``none`` stays
the string, a value some settings take, e.g. ``train.log_with=none``), a YAML flow list or mapping
(``[1, 2]``, ``{a: 1}``), and otherwise the string itself. YAML alone is not enough: its 1.1
resolver reads ``1e2`` as the string ``'1e2'``.

:func:`check_types` then compares the parsed values with what a function or a mapping of defaults
expects, so ``cg_iters=abc`` fails with "cg_iters must be an integer, got 'abc'" instead of an error
deep inside the method.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable, Iterable, Mapping

__all__ = ["parse_value", "parse_key_values", "check_types"]


def parse_value(text: str) -> Any:
    """One option value from its text (see the module docstring for the order of the readings)."""
    s = text.strip()
    try:
        return int(s)
    except ValueError:
        pass
    try:
        return float(s)
    except ValueError:
        pass
    low = s.lower()
    if low in ("true", "false"):
        return low == "true"
    if s in ("null", "Null", "NULL", "~", "None"):
        return None
    if s and s[0] in "[{":
        import yaml

        try:
            value = yaml.safe_load(s)
        except yaml.YAMLError as e:
            raise ValueError(f"{text!r} is not a valid list or mapping ({e})") from None
        return _numbers(value)
    return text


def _numbers(value: Any) -> Any:
    """Re-read the strings inside a YAML list/mapping as numbers where they are numbers."""
    if isinstance(value, str):
        return parse_value(value) if not (value and value[0] in "[{") else value
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    if isinstance(value, dict):
        return {k: _numbers(v) for k, v in value.items()}
    return value


def parse_key_values(items: Iterable[str] | None, what: str = "option") -> dict[str, Any]:
    """``["cg_iters=8", "zeta_obs=1e2"]`` -> ``{"cg_iters": 8, "zeta_obs": 100.0}``.

    ``what`` names the option in error messages (``--method-option``). Repeated keys: the last wins.
    """
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, value = str(item).partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"{what} {item!r}: expected KEY=VALUE")
        try:
            out[key] = parse_value(value)
        except ValueError as e:
            raise ValueError(f"{what} {item!r}: {e}") from None
    return out


def _kind(default: Any) -> type | None:
    if isinstance(default, bool):
        return bool
    if isinstance(default, int):
        return int
    if isinstance(default, float):
        return float
    if isinstance(default, str):
        return str
    return None


def check_types(options: Mapping[str, Any], expected: Callable[..., Any] | Mapping[str, Any],
                what: str = "option") -> dict[str, Any]:
    """Check ``options`` against the keyword defaults of ``expected`` (a function or ``{name: default}``).

    Unknown keys raise (with the known ones listed) when ``expected`` takes no ``**kwargs``; a value
    whose default is a bool, int, float or string must be of that kind (an int is accepted for a
    float and converted). Returns the (converted) options.
    """
    if callable(expected) and not isinstance(expected, Mapping):
        sig = inspect.signature(expected)
        open_ended = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
        defaults = {n: p.default for n, p in sig.parameters.items()
                    if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    else:
        open_ended, defaults = False, dict(expected)
    out = dict(options)
    for key, value in options.items():
        if key not in defaults:
            if open_ended:
                continue
            known = ", ".join(sorted(k for k in defaults if not k.startswith("_"))) or "none"
            raise ValueError(f"unknown {what} {key!r}; known: {known}")
        kind = _kind(defaults[key])
        if kind is None or value is None:
            continue
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            out[key] = float(value)
        elif kind is float and isinstance(value, float):
            if math.isnan(value):
                raise ValueError(f"{what} {key} must be a number, got nan")
        elif not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            name = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[kind]
            raise ValueError(f"{what} {key} must be {name}, got {value!r}")
    return out
