"""Captions of PDE instances written from the physics: features, phrasings, and the parser back.

A family that writes captions implements ``features(fields) -> dict[str, float]`` (the numbers a
caption may state, computed from one sample's fields and the family's parameters; documented in
each family's ``features``) and declares a :class:`Vocabulary`: openers (what the instance is)
and clauses (noun phrases that state one or a few numbers). :func:`compose` turns a features dict
into ``n`` phrasings with an rng (templates, word order, number formats, synonyms, some clauses
left out); :func:`parse_caption` reads the stated numbers back. Every phrasing of every clause is
a format string, and the parser is built from the same strings, so what a caption states is what
the parser finds, to the precision it was written with (tests check every phrasing).

Conventions of the numbers:

- wavenumbers are in cycles per unit length (a field ``cos(2 pi k x)`` has wavenumber ``k``);
  on a periodic grid they come from the FFT, on a vertex grid ``[0, 1]`` from the type-I DCT
  (``cos(pi m x)`` has wavenumber ``m / 2``); a 2D field's is the power-weighted mean ``|k|`` in the
  shell of ``|k|`` with the most power (an isotropic spectrum's peak; exact for a single mode);
- positions ``(x, y)`` are the grid's coordinates (``x`` the last axis, ``y`` the one before);
- areas are fractions of the domain (counted in grid nodes), a radius is ``sqrt(area / pi)``;
- energies are means over the grid (``mean(u^2) / 2``), "Reynolds number" is ``U L / nu`` with the
  velocity scale ``U`` and length ``L`` the family states.

Numbers are rounded to a few significant digits (coordinates to two decimals, fractions to whole
percent), and printed in plain, ``1.2e-3`` or ``1.2 x 10^-3`` notation; counts in digits or words.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from scipy import fft as sfft
from scipy import ndimage

# -- features: spectra -----------------------------------------------------------------------------


def wavenumber_grid(shape: Sequence[int], periodic: bool) -> tuple[list[np.ndarray], float]:
    """Wavenumbers (cycles per unit length) of each axis of a field of ``shape`` and the shell width."""
    if periodic:
        return [np.fft.fftfreq(n, 1.0 / n) for n in shape], 1.0
    return [np.arange(n) / 2.0 for n in shape], 0.5


def power_spectrum(field: np.ndarray, axes: Sequence[int], periodic: bool) -> np.ndarray:
    """Power of ``field`` (mean removed over ``axes``) over ``axes``, averaged over the other axes."""
    f = np.asarray(field, dtype=np.float64)
    f = f - f.mean(axis=tuple(axes), keepdims=True)
    coef = np.fft.fftn(f, axes=axes) if periodic else sfft.dctn(f, type=1, axes=axes)
    power = np.abs(coef) ** 2
    other = tuple(a for a in range(f.ndim) if a not in [ax % f.ndim for ax in axes])
    return power.mean(axis=other) if other else power


def dominant_wavenumber(field: np.ndarray, axes: Sequence[int] = (-1,), periodic: bool = True) -> float | None:
    """Dominant wavenumber of ``field`` along ``axes`` (cycles per unit length; module docstring).

    The power spectrum over ``axes`` (averaged over the other axes) is binned in shells of ``|k|``
    (width 1 on a periodic grid, 1/2 on a vertex grid); in the shell with the most power the
    power-weighted mean ``|k|`` is returned. ``None`` for a constant field.
    """
    f = np.asarray(field, dtype=np.float64)
    axes = [a % f.ndim for a in axes]
    power = power_spectrum(f, axes, periodic)
    ks, width = wavenumber_grid([f.shape[a] for a in axes], periodic)
    radius = np.sqrt(sum(k**2 for k in np.meshgrid(*ks, indexing="ij")))
    if power.sum() <= 1e-30 * max(1.0, float(np.abs(f).max()) ** 2):
        return None
    shell = np.rint(radius / width).astype(np.int64)
    totals = np.bincount(shell.ravel(), weights=power.ravel())
    totals[0] = 0.0
    peak = int(np.argmax(totals))
    inside = shell == peak
    return float((radius[inside] * power[inside]).sum() / power[inside].sum())


def mean_energy(u: np.ndarray) -> float:
    """``mean(u^2) / 2`` over every grid point."""
    return 0.5 * float(np.mean(np.asarray(u, dtype=np.float64) ** 2))


# -- features: structures of a 2D field ------------------------------------------------------------


def label_regions(mask: np.ndarray, periodic: bool) -> tuple[np.ndarray, int]:
    """Connected regions (4-neighbours) of a 2D boolean ``mask``, joined across the edges if ``periodic``.

    Returns ``(labels, count)``: labels ``1..count`` (0 outside the mask), numbered by first node.
    """
    labels, count = ndimage.label(mask)
    if periodic and count > 1:
        parent = np.arange(count + 1)

        def root(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        pairs = np.concatenate([np.stack([labels[:, 0], labels[:, -1]], 1), np.stack([labels[0], labels[-1]], 1)])
        for a, b in pairs[(pairs > 0).all(1)]:
            ra, rb = root(int(a)), root(int(b))
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
        roots = np.array([root(i) for i in range(count + 1)])
        _, dense = np.unique(roots, return_inverse=True)
        labels, count = dense[labels], int(dense.max())
    return labels, count


def centre(weights: np.ndarray, x: np.ndarray, y: np.ndarray, period: float | None) -> tuple[float, float]:
    """Weighted centre ``(x, y)`` of a 2D weight array on the grid ``x`` (last axis), ``y``; on a
    periodic grid of length ``period`` the circular mean (so a region across an edge is centred right)."""
    w = np.asarray(weights, dtype=np.float64)
    total = w.sum()
    out = []
    for coords, axis in ((x, 1), (y, 0)):
        m = w.sum(axis=1 - axis)
        if period is None:
            out.append(float((m * coords).sum() / total))
        else:
            angle = 2 * np.pi * coords / period
            mean = math.atan2(float((m * np.sin(angle)).sum()), float((m * np.cos(angle)).sum()))
            out.append(float((mean / (2 * np.pi)) % 1.0 * period))
    return out[0], out[1]


def main_structure(field: np.ndarray, x: np.ndarray, y: np.ndarray, periodic: bool,
                   level: float = 0.5) -> dict[str, float] | None:
    """The strongest structure of a 2D field ``[y, x]``: the connected region around ``argmax |field|``
    where ``field`` keeps the sign of that extremum and exceeds ``level`` times its magnitude.

    Returns ``{"x", "y"}`` (its ``|field|``-weighted centre), ``"area"`` (fraction of the nodes),
    ``"radius"`` (``sqrt(area / pi)``), ``"peak"`` (``|field|`` at the extremum) and ``"sign"`` (+1/-1);
    ``None`` for a zero field.
    """
    f = np.asarray(field, dtype=np.float64)
    i, j = np.unravel_index(int(np.argmax(np.abs(f))), f.shape)
    peak = float(f[i, j])
    if peak == 0.0:
        return None
    sign = 1.0 if peak > 0 else -1.0
    labels, _ = label_regions(sign * f >= level * abs(peak), periodic)
    region = labels == labels[i, j]
    cx, cy = centre(np.where(region, np.abs(f), 0.0), x, y, 1.0 if periodic else None)
    area = float(region.mean())
    return {"x": cx, "y": cy, "area": area, "radius": math.sqrt(area / math.pi), "peak": abs(peak), "sign": sign}


def count_structures(field: np.ndarray, periodic: bool, level: float = 0.5) -> int:
    """Number of connected regions where ``|field|`` exceeds ``level`` times its maximum (positive and
    negative regions counted separately)."""
    f = np.asarray(field, dtype=np.float64)
    top = float(np.abs(f).max())
    if top == 0.0:
        return 0
    return sum(label_regions(s * f >= level * top, periodic)[1] for s in (1.0, -1.0))


def largest_region(mask: np.ndarray, x: np.ndarray, y: np.ndarray, periodic: bool) -> dict[str, float] | None:
    """The largest connected region of a 2D ``mask``: ``{"x", "y"}`` (centre), ``"area"`` (fraction of the
    nodes), ``"count"`` (number of regions); ``None`` if the mask is empty."""
    labels, count = label_regions(np.asarray(mask, dtype=bool), periodic)
    if count == 0:
        return None
    sizes = np.bincount(labels.ravel())[1:]
    region = labels == 1 + int(np.argmax(sizes))
    cx, cy = centre(region.astype(np.float64), x, y, 1.0 if periodic else None)
    return {"x": cx, "y": cy, "area": float(region.mean()), "count": count}


# -- features: trajectories -------------------------------------------------------------------------


def steepest_front(dudx: np.ndarray, x: np.ndarray, t: np.ndarray) -> dict[str, float]:
    """The steepest descending front of a 1D trajectory with slope ``dudx [nt, nx]``: where and when
    ``-u_x`` is largest, and that value (``"x"``, ``"t"``, ``"steepness"``)."""
    s = -np.asarray(dudx, dtype=np.float64)
    j, i = np.unravel_index(int(np.argmax(s)), s.shape)
    return {"x": float(x[i]), "t": float(t[j]), "steepness": float(s[j, i])}


def cumulative_trapezoid(values: np.ndarray, t: np.ndarray) -> np.ndarray:
    """``int_{t_0}^{t_j} values dt`` for every ``j`` (trapezoid rule)."""
    steps = 0.5 * (values[1:] + values[:-1]) * np.diff(t)
    return np.concatenate([[0.0], np.cumsum(steps)])


def fit_viscosity(t: np.ndarray, energy: np.ndarray, dissipation: np.ndarray,
                  work: np.ndarray | None = None) -> float | None:
    """The viscosity that best explains an energy history: least squares on the integrated balance
    ``E(t) - E(0) - int W dt = -nu int D dt`` (``D`` the dissipation per unit viscosity, ``W`` the
    forcing's work). ``None`` if nothing dissipates."""
    t = np.asarray(t, dtype=np.float64)
    y = np.asarray(energy, dtype=np.float64) - energy[0]
    if work is not None:
        y = y - cumulative_trapezoid(np.asarray(work, dtype=np.float64), t)
    xs = -cumulative_trapezoid(np.asarray(dissipation, dtype=np.float64), t)
    denominator = float((xs * xs).sum())
    return float((xs * y).sum() / denominator) if denominator > 0 else None


# -- language: numbers -----------------------------------------------------------------------------

_NUM = r"10\^[-+]?\d+|[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?(?:\s*x\s*10\^[-+]?\d+)?"
_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve")
_INT = r"\d+|" + "|".join(sorted(_WORDS, key=len, reverse=True))


@dataclass(frozen=True)
class Number:
    """How a stated number is written.

    kind: ``"sci"`` (plain, ``1.2e-3`` or ``1.2 x 10^-3``, at random; plain from 0.1 to 999),
          ``"float"`` (plain), ``"coord"`` (``digits`` decimals), ``"percent"`` (a fraction written as
          whole percent, one decimal below 10 %), ``"int"`` (digits or words).
    digits: significant digits (sci, float) or decimals (coord).
    """

    kind: str = "float"
    digits: int = 2

    def styles(self) -> tuple[str, ...]:
        return {"sci": ("plain", "e", "pow"), "percent": ("%", " percent"), "int": ("digits", "words")}.get(
            self.kind, ("plain",))

    def format(self, value: float, style: str) -> str:
        if self.kind == "coord":
            return f"{value:.{self.digits}f}"
        if self.kind == "int":
            v = int(round(value))
            return _WORDS[v] if style == "words" and 0 <= v < len(_WORDS) else str(v)
        if self.kind == "percent":
            p = 100.0 * value
            return (f"{p:.0f}" if abs(p) >= 10 else f"{p:.1f}") + style
        return _format_significant(value, self.digits, "plain" if self.kind == "float" else style)

    def pattern(self) -> str:
        if self.kind == "int":
            return _INT
        if self.kind == "percent":
            return rf"(?:{_NUM})\s*(?:%|percent)"
        return _NUM


def _format_significant(value: float, digits: int, style: str) -> str:
    if value == 0:
        return "0"
    exponent = math.floor(math.log10(abs(float(f"{value:.{digits - 1}e}"))))
    if style == "plain" and -3 <= exponent < 6 or -1 <= exponent <= 2:
        return f"{value:.{max(0, digits - 1 - exponent)}f}"
    mantissa = f"{value / 10.0**exponent:.{digits - 1}f}"
    if style == "pow":
        return f"10^{exponent}" if float(mantissa) == 1.0 else f"{mantissa} x 10^{exponent}"
    return f"{mantissa}e{exponent}"


def read_number(text: str) -> tuple[float, float]:
    """A number as this module writes it -> ``(value, half a unit of its last stated digit)``."""
    s = text.strip().lower()
    exponent = 0
    if s.endswith("%") or s.endswith("percent"):
        s, exponent = s.rstrip("%").removesuffix("percent").strip(), -2
    if s in _WORDS:
        return float(_WORDS.index(s)), 0.0
    if "10^" in s:
        head, _, power = s.partition("10^")
        exponent += int(power)
        s = head.strip().rstrip("x").strip() or "1"
    mantissa, _, e = s.partition("e")
    exponent += int(e) if e else 0
    if "." in mantissa:
        last = -len(mantissa.partition(".")[2])
    else:
        digits = mantissa.lstrip("+-")
        last = len(digits) - len(digits.rstrip("0")) if digits.strip("0") else 0
    return float(f"{mantissa}e{exponent}"), float(f"5e{last + exponent - 1}")


# -- language: clauses ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Word:
    """A placeholder filled with a word: ``choices`` maps each word to the value it states (``None``:
    qualitative, not read back); ``pick(features)`` chooses the word."""

    choices: Mapping[str, float | None]
    pick: Callable[[Mapping[str, float]], str]


@dataclass(frozen=True)
class Clause:
    """A noun phrase stating some features. ``phrasings`` are format strings whose ``{key}``
    placeholders name features (a :class:`Number` in ``numbers``, default ``Number()``) or words
    (``words``); the clause is stated only when every feature it names is known (and ``when``
    holds). ``optional`` clauses may be left out of a caption."""

    phrasings: tuple[str, ...]
    numbers: Mapping[str, Number] = field(default_factory=dict)
    words: Mapping[str, Word] = field(default_factory=dict)
    optional: bool = True
    when: Callable[[Mapping[str, float]], bool] | None = None

    def keys(self, phrasing: str) -> list[str]:
        return re.findall(r"\{(\w+)\}", phrasing)

    def needs(self) -> set[str]:
        out = {k for p in self.phrasings for k in self.keys(p) if k not in self.words}
        return out | {k for k, w in self.words.items() if any(v is not None for v in w.choices.values())}

    def applies(self, features: Mapping[str, float]) -> bool:
        return all(k in features for k in self.needs()) and (self.when is None or bool(self.when(features)))

    def number(self, key: str) -> Number:
        return self.numbers.get(key, Number())

    def render(self, features: Mapping[str, float], rng: np.random.Generator, phrasing: int | None = None,
               style: str | None = None) -> str:
        """One phrasing (index ``phrasing`` or drawn) with numbers in ``style`` (or drawn per number)."""
        text = self.phrasings[int(rng.integers(len(self.phrasings))) if phrasing is None else phrasing]
        values = {}
        for key in self.keys(text):
            if key in self.words:
                values[key] = self.words[key].pick(features)
            else:
                number = self.number(key)
                styles = number.styles()
                chosen = style if style in styles else styles[int(rng.integers(len(styles)))]
                values[key] = number.format(float(features[key]), chosen)
        return text.format(**values)

    def patterns(self) -> list[tuple[re.Pattern, dict[str, Word], int]]:
        """Per phrasing: its regular expression (lower case, named groups for the stated keys), the
        words, and the length of its literal text (longer phrasings are matched first)."""
        out = []
        for text in self.phrasings:
            parts = re.split(r"\{(\w+)\}", text)
            regex = r"(?<![\w.])"
            for i, part in enumerate(parts):
                if i % 2 == 0:
                    regex += re.escape(part.lower()).replace(r"\ ", r"\s+")
                elif part in self.words:
                    choices = sorted(self.words[part].choices, key=len, reverse=True)
                    alternatives = "|".join(re.escape(w) for w in choices)
                    stated = any(v is not None for v in self.words[part].choices.values())
                    regex += f"(?P<{part}>{alternatives})" if stated else f"(?:{alternatives})"
                else:
                    regex += f"(?P<{part}>{self.number(part).pattern()})"
            literal = len(re.sub(r"\{\w+\}", "", text))
            out.append((re.compile(regex + r"(?![\w])"), dict(self.words), literal))
        return out


@dataclass(frozen=True)
class Vocabulary:
    """What a family says: ``openers`` (noun phrases naming the instance, one per caption) and
    ``clauses``; ``recoverable`` maps a stated key (a parameter such as ``"nu"``) to the feature
    that estimates it from the fields alone (such as ``"nu_energy"``)."""

    openers: tuple[Clause, ...]
    clauses: tuple[Clause, ...]
    recoverable: Mapping[str, str] = field(default_factory=dict)

    @functools.cached_property
    def patterns(self) -> list[tuple[re.Pattern, dict[str, Word], int]]:
        """Every phrasing's pattern (:meth:`Clause.patterns`), longest literal text first."""
        out = [p for c in (*self.openers, *self.clauses) for p in c.patterns()]
        return sorted(out, key=lambda p: -p[2])


_JOINS = ("with", "colon", "sentences", "semicolons", "reversed")


def _join(opener: str, parts: list[str], style: str) -> str:
    def cap(s: str) -> str:
        return s[:1].upper() + s[1:]

    def listed(items: list[str]) -> str:
        return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]

    if not parts:
        return cap(opener) + "."
    if style == "with":
        return f"{cap(opener)} with {listed(parts)}."
    if style == "colon":
        return f"{cap(opener)}: {', '.join(parts)}."
    if style == "sentences":
        return f"{cap(opener)}. " + " ".join(cap(p) + "." for p in parts)
    if style == "semicolons":
        return f"{cap(opener)}; " + "; ".join(parts) + "."
    return f"{cap(listed(parts))}: {opener}."


def compose(vocabulary: Vocabulary, features: Mapping[str, float], rng: np.random.Generator | int,
            n: int = 4, keep: float = 0.65) -> list[str]:
    """``n`` captions of one instance from its ``features``, deterministic given ``rng`` (a Generator
    or a seed). The first states every applicable clause; the others keep each optional clause with
    probability ``keep``. Templates, clause order, phrasings and number formats are drawn; up to 8
    draws are made for a caption that differs from the ones before."""
    rng = np.random.default_rng(rng)
    features = {k: float(v) for k, v in features.items() if v is not None and np.isfinite(v)}
    openers = [c for c in vocabulary.openers if c.applies(features)]
    clauses = [c for c in vocabulary.clauses if c.applies(features)]
    if not openers:
        raise ValueError("no opener of the vocabulary applies to these features")
    out: list[str] = []
    for i in range(n):
        for _ in range(8):
            chosen = [c for c in clauses if i == 0 or not c.optional or rng.random() < keep]
            order = rng.permutation(len(chosen))
            opener = openers[int(rng.integers(len(openers)))].render(features, rng)
            parts = [chosen[j].render(features, rng) for j in order]
            text = _join(opener, parts, _JOINS[int(rng.integers(len(_JOINS)))])
            if text not in out:
                break
        out.append(text)
    return out


def parse(vocabulary: Vocabulary, text: str, *, precision: bool = False) -> dict[str, Any]:
    """The numbers a caption of ``vocabulary`` states: ``{key: value}`` (``{key: (value, half_ulp)}``
    with ``precision``: half a unit of the last digit written). Longest phrasings are matched first
    and each match is blanked out, so a shorter phrasing never reads a number twice."""
    rest = text.lower()
    out: dict[str, Any] = {}
    for regex, words, _ in vocabulary.patterns:
        for m in regex.finditer(rest):
            for key, value in m.groupdict().items():
                if value is None or key in out:
                    continue
                if key in words:
                    stated = words[key].choices[value]
                    out[key] = (float(stated), 0.0) if stated is not None else None
                else:
                    out[key] = read_number(value)
            rest = rest[: m.start()] + "\0" * (m.end() - m.start()) + rest[m.end():]
    out = {k: v for k, v in out.items() if v is not None}
    return out if precision else {k: v[0] for k, v in out.items()}


def parse_caption(text: str, problem: str | None = None, *, precision: bool = False) -> dict[str, Any]:
    """The numbers a caption states, ``{feature: value}``, for the registered family ``problem``
    (``None``: the family whose opener the caption uses). Raises ``ValueError`` if no family's opener
    is found."""
    from .base import _REGISTRY

    if problem is not None:
        vocabulary = getattr(_REGISTRY.get(problem), "caption_vocabulary", None)
        if vocabulary is None:
            raise ValueError(f"{problem}: no caption vocabulary (unknown family, or one without captions)")
        return parse(vocabulary, text, precision=precision)
    lower = text.lower()
    for name, cls in sorted(_REGISTRY.items()):
        vocabulary = getattr(cls, "caption_vocabulary", None)
        if vocabulary is not None and any(r.search(lower) for c in vocabulary.openers for r, _, _ in c.patterns()):
            return parse(vocabulary, text, precision=precision)
    raise ValueError(f"no family's caption opener found in {text[:80]!r}")


def agreement(stated: Mapping[str, float], features: Mapping[str, float],
              recoverable: Mapping[str, str] | None = None) -> dict[str, dict[str, float]]:
    """How the numbers a caption states compare with the features of a sample: for each stated key
    (measured as ``recoverable[key]`` where given, e.g. ``nu`` by ``nu_energy``, else as the feature
    of that name) ``{"stated", "measured", "relative_error"}``; keys the features lack are skipped."""
    out = {}
    for key, value in stated.items():
        measured = features.get((recoverable or {}).get(key, key))
        if measured is None or not np.isfinite(measured):
            continue
        scale = max(abs(float(value)), 1e-12)
        out[key] = {"stated": float(value), "measured": float(measured),
                    "relative_error": abs(float(measured) - float(value)) / scale}
    return out


# -- clauses several families share -----------------------------------------------------------------


def qualitative(words: Sequence[str], pick: Callable[[Mapping[str, float]], str]) -> Word:
    """A qualitative word (not read back)."""
    return Word({w: None for w in words}, pick)


def signed(key: str, positive: str, negative: str) -> Word:
    """A word stating the sign of feature ``key`` (+1 / -1)."""
    return Word({positive: 1.0, negative: -1.0}, lambda f: positive if f[key] > 0 else negative)


def viscosity() -> Clause:
    return Clause(("viscosity {nu}", "a viscosity of {nu}", "kinematic viscosity nu = {nu}", "nu = {nu}"),
                  {"nu": Number("sci", 2)}, optional=False)


def reynolds() -> Clause:
    return Clause(("Reynolds number {re}", "a Reynolds number of about {re}", "Re ~ {re}"), {"re": Number("float", 2)})


def final_time() -> Clause:
    return Clause(("final time {T}", "up to t = {T}", "a time horizon of {T}"), {"T": Number("float", 3)})
