"""Fitted solver state saved with a prior: empirical model statistics, learned steps and coefficients.

A solver that is fitted to one prior (DPM-Solver-v3's statistics, a learned few-step solver) keeps
its state in a samplers-level object with ``state_dict() -> {name: Tensor}``, ``metadata() -> dict``
(JSON-able, with a ``"kind"``) and ``from_state(tensors, metadata)``. Here that state is written
next to the prior it belongs to::

    <prior>/solvers/<name>.safetensors   the tensors
    <prior>/solvers/<name>.json          {"format", "kind", "metadata", "prior_fingerprint"}

and read back only for the same weights: the fingerprint is a SHA-256 of the prior's weights (names,
shapes, dtypes and bytes), so a state fitted to other weights (a retrained or fine-tuned prior) is
refused with an error that says to fit again, never used silently. Nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file

from .persistence import _temp_name

FORMAT = "diffpde.solver_state"
SOLVERS_DIR = "solvers"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

#: ``kind`` written by a state object's ``metadata()`` -> ``"module:Class"`` that reads it back.
STATE_KINDS: dict[str, str] = {}


def register_state_kind(kind: str, target: str) -> None:
    """Declare that states of ``kind`` are read by ``target`` (``"package.module:Class"``)."""
    STATE_KINDS[kind] = target


def prior_fingerprint(prior: torch.nn.Module) -> str:
    """SHA-256 over the prior's weights (sorted names, shapes, dtypes and bytes): which weights a state fits."""
    h = hashlib.sha256()
    for name, tensor in sorted(prior.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _paths(prior_dir: str | os.PathLike, name: str) -> tuple[Path, Path]:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"solver state name {name!r}: use letters, digits, '_', '-' and '.'")
    folder = Path(prior_dir) / SOLVERS_DIR
    return folder / f"{name}.safetensors", folder / f"{name}.json"


def save_solver_state(prior_dir: str | os.PathLike, name: str, state: Any, *, prior: torch.nn.Module) -> Path:
    """Write ``state`` (a fitted solver object) as ``<prior_dir>/solvers/<name>.*``; returns the JSON path."""
    metadata = state.metadata()
    if "kind" not in metadata:
        raise ValueError(f"solver state {name!r}: metadata() has no 'kind'")
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.state_dict().items()}
    weights, meta = _paths(prior_dir, name)
    weights.parent.mkdir(parents=True, exist_ok=True)
    record = {"format": FORMAT, "kind": metadata["kind"], "metadata": metadata,
              "prior_fingerprint": prior_fingerprint(prior)}
    text = json.dumps(record, indent=1, allow_nan=False) + "\n"
    tmp_w, tmp_m = _temp_name(weights.parent, weights.name), _temp_name(meta.parent, meta.name)
    try:
        save_file(tensors, str(tmp_w))
        tmp_m.write_text(text)
        os.replace(tmp_w, weights)
        os.replace(tmp_m, meta)
    finally:
        for tmp in (tmp_w, tmp_m):
            if tmp.exists():
                tmp.unlink()
    return meta


def _reader(kind: str) -> Callable[..., Any]:
    if kind not in STATE_KINDS:
        raise ValueError(f"unknown solver state kind {kind!r}; known: {', '.join(sorted(STATE_KINDS)) or 'none'}")
    module, _, attr = STATE_KINDS[kind].partition(":")
    return getattr(importlib.import_module(module), attr).from_state


def load_solver_state(prior_dir: str | os.PathLike, name: str, *, prior: torch.nn.Module) -> Any:
    """Read ``<prior_dir>/solvers/<name>.*`` back, after checking it was fitted to these weights.

    ``FileNotFoundError`` when there is none; ``ValueError`` when it belongs to other weights or is
    not a solver state.
    """
    weights, meta = _paths(prior_dir, name)
    if not meta.is_file() or not weights.is_file():
        raise FileNotFoundError(f"no fitted solver state {name!r} in {weights.parent}")
    try:
        record = json.loads(meta.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{meta}: not valid JSON ({e})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ValueError(f"{meta}: not a diffpde solver state (format {record.get('format') if isinstance(record, dict) else None!r})")
    if record.get("prior_fingerprint") != prior_fingerprint(prior):
        raise ValueError(f"{meta}: fitted to other weights than this prior's (fingerprint "
                         f"{str(record.get('prior_fingerprint'))[:12]}...); fit it again for this prior")
    return _reader(record["kind"])(load_file(str(weights)), record["metadata"])


def cached_solver_state(prior_dir: str | os.PathLike | None, name: str, prior: torch.nn.Module,
                        fit: Callable[[], Any], *, refit: bool = False, log: Callable[[str], None] | None = None) -> Any:
    """The state ``name`` saved with the prior, or ``fit()`` it and save it (no directory: fit, keep nothing).

    A stored state fitted to other weights is fitted again and replaced (said through ``log``).
    """
    if prior_dir is not None and not refit:
        try:
            return load_solver_state(prior_dir, name, prior=prior)
        except FileNotFoundError:
            pass
        except ValueError as e:
            if log:
                log(f"{e}; fitting again")
    state = fit()
    if prior_dir is not None:
        save_solver_state(prior_dir, name, state, prior=prior)
    return state
