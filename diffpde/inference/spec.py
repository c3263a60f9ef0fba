"""Observation specs: the short strings the command line uses to say what is observed.

Grammar (spaces are ignored)::

    SPEC   := ITEM ("," ITEM)*
    ITEM   := FIELD ":" AMOUNT ["@" NOISE]
    AMOUNT := a fraction of the nodes in (0, 1] written with a decimal point or exponent ("0.03", "1.0", "3e-2";
              rounded to a whole number of nodes, at least one),
              a percentage ("3%"), a whole number of nodes ("500"), or "all"
    NOISE  := Gaussian noise standard deviation in the physical units of FIELD ("0.01")

Examples: ``"u:0.03"`` (3 % of the nodes of ``u``, DiffusionPDE's sparse setting), ``"u:500"``,
``"a:1.0"`` (``a`` fully observed), ``"a:0.03,u:0.03@0.01"`` (both, ``u`` with noise 0.01).

Seeds. The nodes of a field are drawn with ``seed + i``, where ``i`` is the position of the field
among the fields of the prior (or PDE family): for Darcy ``(a, u)``, ``a`` uses ``seed`` and ``u``
``seed + 1``. So the points of a field depend only on the seed, the field and the amount, not on
which other fields are observed. (DiffusionPDE uses seed 1 for ``a`` and 0 for ``u``.)
"""

from __future__ import annotations

import math
import re
from typing import Any, Sequence

import numpy as np

from .observations import MaskObservation, ObservationOperator, SparsePoints, StackedObservation

_ITEM = re.compile(r"^(?P<field>[A-Za-z_][A-Za-z0-9_]*):(?P<amount>[^@]+)(?:@(?P<noise>.+))?$")


class ObservationSpecError(ValueError):
    """An observation spec string that cannot be used (the message names the problem)."""


def field_shapes(prior_or_problem: Any) -> dict[str, tuple[int, ...]]:
    """``{field: shape}`` of everything that can be observed: the generated and conditioning fields
    of a prior, or the fields of a PDE family instance."""
    if hasattr(prior_or_problem, "field_names") and hasattr(prior_or_problem, "field"):  # a PDE
        return {n: tuple(prior_or_problem.field(n).shape) for n in prior_or_problem.field_names}
    if hasattr(prior_or_problem, "fields") and hasattr(prior_or_problem, "grid_shape"):  # a prior
        names = tuple(prior_or_problem.fields) + tuple(getattr(prior_or_problem, "cond_fields", ()))
        return {n: tuple(prior_or_problem.grid_shape) for n in names}
    raise TypeError(f"parse_observe needs a prior or a PDE family instance, got {type(prior_or_problem).__name__}")


def _amount(text: str, size: int, where: str) -> int:
    """Number of observed nodes out of ``size`` for an AMOUNT string."""
    text = text.strip().lower()
    if text == "all":
        return size
    if re.fullmatch(r"[+-]?\d+", text):
        count = int(text)
        if not 0 < count <= size:
            raise ObservationSpecError(f"{where}: the number of points must be in [1, {size}] (the field has "
                                       f"{size} nodes), got {count}")
        return count
    try:
        fraction = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise ObservationSpecError(f"{where}: {text!r} is neither a fraction (0.03), a percentage (3%), a number of "
                                   "points (500) nor 'all'") from None
    if not (math.isfinite(fraction) and 0 < fraction <= 1):
        raise ObservationSpecError(f"{where}: the fraction of observed nodes must be in (0, 1], got {text}")
    return max(1, int(round(fraction * size)))


def _noise(text: str | None, default: float, where: str) -> float:
    if text is None:
        return float(default)
    try:
        value = float(text)
    except ValueError:
        raise ObservationSpecError(f"{where}: noise standard deviation {text!r} is not a number") from None
    if not (math.isfinite(value) and value >= 0):
        raise ObservationSpecError(f"{where}: noise standard deviation must be finite and >= 0, got {text}")
    return value


def parse_observe(spec: str, prior_or_problem: Any, seed: int = 0, noise_std: float = 0.0) -> ObservationOperator:
    """The observation operator described by ``spec`` (see the module docstring for the grammar).

    Arguments:
        spec:             e.g. ``"u:0.03"``, ``"u:500"``, ``"a:1.0,u:0.03@0.01"``.
        prior_or_problem: a prior (its generated and conditioning fields can be observed) or a PDE
                          family instance; gives the field names and grid shapes.
        seed:             the nodes of the field at position ``i`` are drawn with ``seed + i``.
        noise_std:        noise standard deviation (physical units) of items without ``@NOISE``.
    Returns a :class:`~.observations.SparsePoints` (a fully observed field: a
    :class:`~.observations.MaskObservation` of the whole grid), or a
    :class:`~.observations.StackedObservation` of them in the order of ``spec``.
    Raises :class:`ObservationSpecError` (a ``ValueError``) naming the problem.
    """
    shapes = field_shapes(prior_or_problem)
    order = list(shapes)
    if not isinstance(spec, str) or not spec.strip():
        raise ObservationSpecError(f"empty observation spec; expected e.g. '{order[-1]}:0.03' (fields: {', '.join(order)})")
    _noise(str(noise_std), 0.0, "noise_std")
    operators: list[ObservationOperator] = []
    seen: set[str] = set()
    for item in spec.replace(" ", "").split(","):
        where = f"observation spec {spec!r}, item {item!r}"
        m = _ITEM.match(item)
        if m is None:
            raise ObservationSpecError(f"{where}: expected FIELD:AMOUNT[@NOISE], e.g. '{order[-1]}:0.03', "
                                       f"'{order[-1]}:500' or '{order[0]}:1.0@0.01'")
        name = m["field"]
        if name not in shapes:
            raise ObservationSpecError(f"{where}: unknown field {name!r}; the fields are {', '.join(order)}")
        if name in seen:
            raise ObservationSpecError(f"{where}: field {name!r} appears twice")
        seen.add(name)
        shape = shapes[name]
        size = int(np.prod(shape))
        count = _amount(m["amount"], size, where)
        std = _noise(m["noise"], noise_std, where)
        if count == size:
            operators.append(MaskObservation(name, np.ones(shape, dtype=bool), std))
        else:
            operators.append(SparsePoints.random(name, shape, count=count, seed=seed + order.index(name), noise_std=std))
    return operators[0] if len(operators) == 1 else StackedObservation(operators)


def expand_amount(spec: str, fields: Sequence[str]) -> str:
    """A bare AMOUNT[@NOISE] (``"0.03"``, ``"500@0.01"``) applied to each of ``fields``; a full spec
    (one with ``:``) is returned as it is. ``expand_amount("0.03", ("a",)) == "a:0.03"``."""
    spec = spec.strip()
    if ":" in spec:
        return spec
    if not fields:
        raise ObservationSpecError(f"observation amount {spec!r} given but there is no field to observe")
    return ",".join(f"{name}:{spec}" for name in fields)


def describe_operator(op: ObservationOperator) -> str:
    """One line per observed field: ``u: 8 of 256 nodes (3.1 %), noise std 0.01``."""
    ops = op.operators if isinstance(op, StackedObservation) else (op,)
    parts = []
    for o in ops:
        if isinstance(o, MaskObservation):
            size = o.mask_.numel()
            parts.append(f"{o.field}: {o.num_measurements} of {size} nodes ({100 * o.num_measurements / size:.3g} %), "
                         f"noise std {o.noise_std:g}")
        else:
            parts.append(o.describe())
    return "; ".join(parts)
