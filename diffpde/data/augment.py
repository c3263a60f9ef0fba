"""Data augmentation by the exact symmetries of a PDE family.

A symmetry maps every instance of a family (inputs, solution) to another instance of the *same*
problem, with the same fixed parameters and forcing, and leaves the distribution of the random
inputs unchanged; training on mapped samples therefore teaches the prior nothing false. Each family
declares which of the maps below are its symmetries (``PDE.symmetries``) and which of its fields
change sign under them (``PDE.odd_fields``: a velocity under a reflection, a vorticity under a
reflection, every field of a linear problem under ``negate``).

The maps act on batches ``x [B, C, *shape]`` of stacked fields (channel ``c`` is field
``fields[c]``), by the axis names of the fields' ``dims`` (``"x"``, ``"y"``; a time axis is left
alone), and exactly on the grid: reflections of a vertex grid ``x_j = j/(n-1)`` reverse the index
(``x -> 1 - x``), reflections of a periodic grid ``x_j = j/n`` map ``j -> -j mod n`` (``x -> -x``).
"""

from __future__ import annotations

from typing import Any, Collection, Sequence

import torch

from ..pdes.base import PDE

#: name -> what it does; ``train.augment`` takes these names.
SYMMETRIES: dict[str, str] = {
    "roll_x": "translate along x by a random whole number of cells (periodic grids)",
    "roll_y": "translate along y by a random whole number of cells (periodic grids)",
    "roll_antidiagonal": "translate by (s, -s) cells along (x, y), s random: keeps any function of x + y (periodic grids)",
    "flip_x": "reflect x (x -> 1 - x on a vertex grid, x -> -x on a periodic one); the family's odd fields change sign",
    "flip_y": "reflect y, as flip_x",
    "transpose": "swap x and y (square grids); the family's odd fields change sign",
    "transpose_half": "swap x and y, then translate x by half the period (periodic square grids of even size): "
                      "the reflection that keeps a forcing g(x + y) with g(s + 1/2) = -g(s) when odd fields change sign",
    "negate": "change the sign of the family's odd fields (all fields of a linear problem with symmetric inputs)",
}

ROLLS = ("roll_x", "roll_y", "roll_antidiagonal")


def _axes(problem: PDE | None, fields: Sequence[str] | None, x: torch.Tensor) -> tuple[str, ...]:
    """The dims of the stacked fields (all channels must share them); ``("y", "x")`` without a problem."""
    if problem is None:
        return ("y", "x")[-min(2, x.ndim - 2):] if x.ndim > 2 else ()
    dims = {problem.field(name).dims for name in fields}
    shapes = {problem.field(name).shape for name in fields}
    if len(dims) != 1 or len(shapes) != 1:
        raise ValueError(f"augment: fields {list(fields)} of {problem.name} do not share one shape and dims")
    shape = shapes.pop()
    if tuple(x.shape[2:]) != shape or x.shape[1] != len(fields):
        raise ValueError(f"augment: x must have shape [B, {len(fields)}, {', '.join(map(str, shape))}] "
                         f"for fields {list(fields)}, got {list(x.shape)}")
    return dims.pop()


def resolve_fields(x: torch.Tensor, problem: PDE | None, fields: Sequence[str] | None) -> tuple[str, ...] | None:
    """The channel names of ``x``: ``fields``, or the problem's fields of the batch's shape."""
    if problem is None:
        return None if fields is None else tuple(fields)
    if fields is None:
        fields = tuple(f.name for f in problem.fields if f.shape == tuple(x.shape[2:]))
        if len(fields) != x.shape[1]:
            raise ValueError(f"augment: cannot tell which {problem.name} fields the {x.shape[1]} channels of "
                             f"{list(x.shape)} are; pass fields=")
    unknown = [f for f in fields if f not in problem.field_names]
    if unknown:
        raise KeyError(f"augment: {problem.name} has no field(s) {unknown}; fields: {', '.join(problem.field_names)}")
    return tuple(fields)


def _roll(x: torch.Tensor, shifts: torch.Tensor, axis: int) -> torch.Tensor:
    """Per-sample circular shift along ``axis``: ``out[b, ..., i, ...] = x[b, ..., i - shifts[b], ...]``."""
    n = x.shape[axis]
    index = (torch.arange(n, device=x.device)[None, :] - shifts.to(x.device)[:, None]) % n  # [B, n]
    view = [x.shape[0]] + [1] * (x.ndim - 1)
    view[axis % x.ndim] = n
    return torch.take_along_dim(x, index.reshape(view).expand(x.shape), dim=axis)


def _signs(x: torch.Tensor, name: str, problem: PDE | None, fields: tuple[str, ...] | None,
           odd: Collection[str] | None, normalizer: Any) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(sign, offset)`` per channel, broadcastable to ``x``, with ``x -> sign x + offset``; None if all even.

    In a normalised frame ``(x - mean) / std`` a sign change of the physical field is
    ``x -> -x - 2 mean / std``.
    """
    if odd is None:
        odd = () if problem is None else problem.odd_fields.get(name, ())
    if not odd:
        return None
    if fields is None:
        raise ValueError(f"augment: {name!r} changes the sign of some fields; pass problem= and fields=")
    sign = torch.tensor([-1.0 if f in odd else 1.0 for f in fields], dtype=x.dtype, device=x.device)
    offset = torch.zeros_like(sign)
    if normalizer is not None:
        stats = dict(zip(normalizer.fields, zip(normalizer.mean, normalizer.std)))
        missing = [f for f in fields if f not in stats]
        if missing:
            raise KeyError(f"augment: the normaliser has no statistics for field(s) {missing}")
        offset = torch.tensor([(s - 1) * stats[f][0] / stats[f][1] for f, s in zip(fields, sign.tolist())],
                              dtype=x.dtype, device=x.device)
    view = (1, -1) + (1,) * (x.ndim - 2)
    return sign.reshape(view), offset.reshape(view)


def apply_symmetry(x: torch.Tensor, name: str, *, problem: PDE | None = None, fields: Sequence[str] | None = None,
                   shift: torch.Tensor | int | None = None, odd: Collection[str] | None = None,
                   normalizer: Any = None) -> torch.Tensor:
    """Apply the map ``name`` (:data:`SYMMETRIES`) to every sample of ``x [B, C, *shape]``.

    problem:    the family (grid kind, field dims, odd fields); without it only rolls of the last
                two axes (taken as ``y, x``) work.
    fields:     channel names (default: the problem's fields of the batch's shape).
    shift:      for rolls, the shift in cells, one int or ``[B]``.
    odd:        override the fields that change sign (default ``problem.odd_fields[name]``), to
                build a deliberately wrong map in tests.
    normalizer: if ``x`` is normalised per channel (``.fields``, ``.mean``, ``.std``), the sign
                changes are applied to the physical fields.

    It does not check that ``name`` is a symmetry of ``problem``: :func:`augment` does.
    """
    if name not in SYMMETRIES:
        raise KeyError(f"augment: unknown symmetry {name!r}; known: {', '.join(SYMMETRIES)}")
    if problem is None and name not in ROLLS:
        raise ValueError(f"augment: {name!r} depends on the grid and on which fields change sign; pass problem= and fields=")
    fields = resolve_fields(x, problem, fields)
    dims = _axes(problem, fields, x)
    periodic = problem is None or problem.grid.kind == "periodic"
    axis = {d: i - len(dims) for i, d in enumerate(dims)}
    needs = {"roll_x": "x", "roll_y": "y", "flip_x": "x", "flip_y": "y"}.get(name, "xy" if name != "negate" else "")
    missing = [d for d in needs if d not in axis]
    if missing:
        where = f"{problem.name} fields with dims {dims}" if problem is not None else f"a batch of shape {list(x.shape)}"
        raise ValueError(f"augment: {name!r} needs axis {' and '.join(missing)}, which {where} lack")
    if (name in ROLLS or name == "transpose_half") and not periodic:
        raise ValueError(f"augment: {name!r} needs a periodic grid; {problem.name}'s is {problem.grid.kind!r}")
    if name.startswith("transpose") and x.shape[axis["x"]] != x.shape[axis["y"]]:
        raise ValueError(f"augment: {name!r} needs a square grid, got {list(x.shape)}")

    if name in ROLLS:
        if shift is None:
            raise ValueError(f"augment: {name!r} needs shift=")
        s = torch.as_tensor(shift, dtype=torch.long).expand(x.shape[0])
        if name == "roll_antidiagonal":
            out = _roll(_roll(x, s, axis["x"]), -s, axis["y"])
        else:
            out = _roll(x, s, axis[name[-1]])
    elif name in ("flip_x", "flip_y"):
        a = axis[name[-1]]
        out = x.flip(a)
        if periodic:  # j -> n - 1 - j, then +1: j -> -j mod n
            out = out.roll(1, a)
    elif name.startswith("transpose"):
        out = x.transpose(axis["x"], axis["y"])
        if name == "transpose_half":
            n = x.shape[axis["x"]]
            if n % 2:
                raise ValueError(f"augment: 'transpose_half' needs an even number of cells, got {n}")
            out = out.roll(n // 2, axis["x"])
    else:  # negate
        out = x
    signs = _signs(x, name, problem, fields, odd, normalizer)
    if signs is not None:
        out = out * signs[0] + signs[1]
    elif name == "negate":
        raise ValueError(f"augment: 'negate' changes no field of {problem.name} (odd_fields has no entry)")
    return out


def augment(x: torch.Tensor, names: Sequence[str], generator: torch.Generator, offset: int, total: int, *,
            problem: PDE | None = None, fields: Sequence[str] | None = None, normalizer: Any = None) -> torch.Tensor:
    """Random symmetries of a batch ``x [b, C, *shape]``, reproducible from ``generator``.

    For each name in order, the draws are made for a global micro-batch of ``total`` samples, of
    which ``x`` holds ``offset : offset + b`` (so they do not depend on the number of ranks): a
    roll draws a shift uniform over the axis length per sample, any other map is applied to each
    sample with probability 1/2. ``problem``, ``fields`` and ``normalizer`` as in
    :func:`apply_symmetry`; with ``problem``, every name must be one of ``problem.symmetries``.
    Without it only rolls work (the last axis is x, the one before y).
    """
    b = x.shape[0]
    if offset < 0 or offset + b > total:
        raise ValueError(f"augment: samples {offset}:{offset + b} are not inside a global batch of {total}")
    if problem is not None:
        bad = [n for n in names if n not in problem.symmetries]
        if bad:
            raise ValueError(f"augment: {bad} are not symmetries of {problem!r}; declared: {list(problem.symmetries) or 'none'}")
        fields = resolve_fields(x, problem, fields)
    for name in names:
        if name not in SYMMETRIES:
            raise KeyError(f"augment: unknown symmetry {name!r}; known: {', '.join(SYMMETRIES)}")
        if name in ROLLS:
            n = x.shape[-1] if name != "roll_y" else x.shape[-2]
            if problem is not None:
                dims = _axes(problem, fields, x)
                n = x.shape[dims.index("y" if name == "roll_y" else "x") - len(dims)]
            shifts = torch.randint(0, n, (total,), generator=generator)[offset:offset + b]
            x = apply_symmetry(x, name, problem=problem, fields=fields, shift=shifts, normalizer=normalizer)
        else:
            chosen = (torch.rand(total, generator=generator) < 0.5)[offset:offset + b].to(x.device)
            mapped = apply_symmetry(x, name, problem=problem, fields=fields, normalizer=normalizer)
            x = torch.where(chosen.reshape(-1, *[1] * (x.ndim - 1)), mapped, x)
    return x
