"""Atomic, rotated training checkpoints on top of ``accelerator.save_state``.

Layout: ``<output_dir>/checkpoints/step_0000100/`` holds what ``save_state`` writes (model
weights as safetensors; optimizer and scheduler states, which hold only tensors, numbers and
lists, so that Accelerate reads them back with ``torch.load(weights_only=True)``; the RNG states
of every rank, read the same way with numpy arrays allowed), the trainer's own tensor states as
``<name>.safetensors`` (the EMA weights) and ``COMPLETE.json``: the step, the world size and the
size and SHA-256 of every file. Nothing is unpickled on resume.

A checkpoint is written into ``.tmp_step_0000100`` by every rank; after all ranks are done the
main process writes ``COMPLETE.json`` into it and renames the directory to ``step_0000100``. The
rename is atomic, so a directory under a ``step_*`` name always carries its marker; a directory
without a marker (or under a temporary name) is never picked up, whatever killed the run.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
from pathlib import Path
from typing import Any, Mapping

import torch

from .records import write_json_atomic

__all__ = [
    "CheckpointError",
    "MARKER",
    "checkpoint_name",
    "list_checkpoints",
    "latest_checkpoint",
    "resolve_resume",
    "read_marker",
    "verify_checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "load_tensors",
    "rotate_checkpoints",
]

MARKER = "COMPLETE.json"
_NAME = re.compile(r"^step_(\d{7,})$")
_TMP_PREFIX = ".tmp_"


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete or corrupt; the message names it and what is wrong."""


def checkpoint_name(step: int) -> str:
    return f"step_{step:07d}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_marker(path: str | Path) -> dict[str, Any]:
    """The ``COMPLETE.json`` of a checkpoint directory, or :class:`CheckpointError`."""
    path = Path(path)
    marker = path / MARKER
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not marker.is_file():
        raise CheckpointError(f"checkpoint {path} is incomplete (no {MARKER}): it was interrupted while being written")
    try:
        info = json.loads(marker.read_text())
        int(info["step"]), dict(info["files"])
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"checkpoint {path}: {MARKER} is corrupt ({e})") from None
    return info


def verify_checkpoint(path: str | Path) -> dict[str, Any]:
    """Check that every file listed in the marker is present with its size and SHA-256; return the marker."""
    path = Path(path)
    info = read_marker(path)
    for name, meta in info["files"].items():
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"checkpoint {path} is corrupt: file {name} is missing")
        if f.stat().st_size != meta["size"]:
            raise CheckpointError(f"checkpoint {path} is corrupt: file {name} has {f.stat().st_size} bytes, "
                                  f"{meta['size']} were written")
        if _sha256(f) != meta["sha256"]:
            raise CheckpointError(f"checkpoint {path} is corrupt: file {name} does not match its SHA-256")
    return info


def list_checkpoints(directory: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints ``(step, path)`` in ``directory``, oldest first; others are ignored."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    out = []
    for p in directory.iterdir():
        m = _NAME.match(p.name)
        if m and p.is_dir() and (p / MARKER).is_file():
            out.append((int(m.group(1)), p))
    return sorted(out)


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The complete checkpoint with the highest step, or ``None``."""
    found = list_checkpoints(directory)
    return found[-1][1] if found else None


def resolve_resume(resume: str | Path, checkpoint_dir: str | Path) -> Path:
    """``"latest"`` -> newest complete checkpoint in ``checkpoint_dir``; a path -> that checkpoint (checked)."""
    if str(resume) == "latest":
        path = latest_checkpoint(checkpoint_dir)
        if path is None:
            raise CheckpointError(f"--resume latest: no complete checkpoint in {checkpoint_dir}")
    else:
        path = Path(resume)
    verify_checkpoint(path)
    return path


def rotate_checkpoints(directory: str | Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` complete checkpoints and any stale temporary ones; return what was deleted."""
    directory = Path(directory)
    removed = [p for _, p in list_checkpoints(directory)[:-keep]] if keep > 0 else []
    removed += [p for p in directory.iterdir() if p.name.startswith(_TMP_PREFIX)] if directory.is_dir() else []
    for p in removed:
        shutil.rmtree(p, ignore_errors=True)
    return removed


def save_checkpoint(accelerator: Any, directory: str | Path, step: int, extra: dict[str, Any] | None = None,
                    kill_before_marker: bool = False,
                    tensors: Mapping[str, Mapping[str, torch.Tensor]] | None = None) -> Path:
    """Save the accelerator state at ``step`` atomically into ``directory/step_XXXXXXX``.

    Must be called on every rank (``save_state`` writes each rank's RNG state). ``extra`` is stored
    in the marker. ``tensors``: ``{name: state_dict}`` of tensors only, written by the main process
    as ``name.safetensors`` (read back with :func:`load_tensors`). ``kill_before_marker`` SIGKILLs
    the main process after the state is written and before the marker (to test crash safety).
    """
    directory = Path(directory)
    final = directory / checkpoint_name(step)
    tmp = directory / (_TMP_PREFIX + checkpoint_name(step))
    if accelerator.is_main_process:
        directory.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        from safetensors.torch import save_file

        for name, state in (tensors or {}).items():
            save_file({k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()},
                      str(tmp / f"{name}.safetensors"))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if kill_before_marker:
            os.kill(os.getpid(), signal.SIGKILL)
        files = {p.name: {"size": p.stat().st_size, "sha256": _sha256(p)} for p in sorted(tmp.iterdir()) if p.is_file()}
        write_json_atomic(tmp / MARKER, {"step": int(step), "world_size": accelerator.num_processes,
                                         "files": files, **(extra or {})}, indent=1, sort_keys=True)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Any, path: str | Path) -> dict[str, Any]:
    """Verify and load a checkpoint into the accelerator's registered objects; return its marker."""
    path = Path(path)
    info = verify_checkpoint(path)
    if info.get("world_size", accelerator.num_processes) != accelerator.num_processes:
        # The data order depends only on the step, but each rank restores its own RNG state.
        raise CheckpointError(f"checkpoint {path} was written by {info['world_size']} process(es); "
                              f"resume it with the same number (now {accelerator.num_processes})")
    pickled = sorted(p.name for p in path.glob("custom_checkpoint_*.pkl"))
    if pickled:
        raise CheckpointError(f"checkpoint {path} holds pickled state ({', '.join(pickled)}), written by an older "
                              "diffpde; it is not loaded (unpickling can run code): resume from a newer checkpoint")
    try:
        accelerator.load_state(str(path))
    except Exception as e:  # noqa: BLE001 - re-raised with the checkpoint's name
        raise CheckpointError(f"checkpoint {path} could not be loaded: {type(e).__name__}: {e}") from e
    return info


def load_tensors(path: str | Path, name: str) -> dict[str, torch.Tensor]:
    """The ``name.safetensors`` state of a checkpoint written by :func:`save_checkpoint` (on CPU)."""
    from safetensors.torch import load_file

    f = Path(path) / f"{name}.safetensors"
    if not f.is_file():
        raise CheckpointError(f"checkpoint {path} has no {f.name}")
    return load_file(str(f))
