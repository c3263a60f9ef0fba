"""A prior on disk: ``model.safetensors`` (all weights) and ``config.json`` (everything else).

:func:`save_prior` writes both files atomically (temporary name, then rename). :func:`load_prior`
reads a local directory or a Hugging Face Hub repo id (``"org/name"``, through
``huggingface_hub.snapshot_download`` with only those two files allowed), checks the config and
the weights against each other, and never unpickles.

Checks on load, each a ``ValueError`` naming the file and the values that disagree:

- the config is a diffpde prior config of a format version this code reads;
- every key :meth:`Prior.config` writes is present (a prior trained without a normaliser says
  so with ``"normalizer": null``; a missing key is an error, never a silent default); a prior
  with a problem but no normaliser loads with a warning, since its samples are then taken to be
  in the problem's physical units;
- the parts fit together: the network's channels, scalar parameters and grid dimension against
  the fields, the grid and the representation; the normaliser against the fields and the grid;
  the sampling range (:class:`Prior` checks these when it is built); a problem of a known PDE
  family has valid parameters and fields of the prior's names on the prior's grid;
- every weight is present with the shape the config builds, and nothing else is in the file;
- a pretrained text encoder saved by reference (its name or path, not its weights) has the weights
  it was saved with: the SHA-256 recorded in the config is compared with the installed model's.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .registry import build

if TYPE_CHECKING:
    from .prior import Prior

Tensor = torch.Tensor

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
FORMAT = "diffpde.prior"
#: the newest format this code reads. Version 2 adds the optional key ``conditioning`` (the encoders of
#: text, frames and parameters); a prior without conditioning is still written as version 1.
FORMAT_VERSION = 2
#: keys of ``config.json`` besides ``format``/``format_version``/``diffpde_version``, all required.
REQUIRED_KEYS = ("network", "precond", "representation", "normalizer", "problem", "fields", "cond_fields",
                 "param_names", "grid_shape", "sigma_min", "sigma_max")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

__all__ = ["WEIGHTS_NAME", "CONFIG_NAME", "FORMAT", "FORMAT_VERSION", "REQUIRED_KEYS", "save_prior",
           "load_prior", "resolve_prior", "read_config"]


def save_prior(prior: "Prior", directory: str | os.PathLike) -> Path:
    """Write ``model.safetensors`` and ``config.json`` of ``prior`` into ``directory`` (created if needed).

    Each file is written to a temporary name in the directory and renamed over the old one.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = prior.config()
    tensors = {k: v.detach().cpu().contiguous() for k, v in prior.state_dict().items()}
    tmp_weights = _temp_name(directory, WEIGHTS_NAME)
    tmp_config = _temp_name(directory, CONFIG_NAME)
    try:
        save_file(tensors, str(tmp_weights), metadata={"format": "pt", "diffpde": FORMAT})
        with open(tmp_weights, "rb") as f:
            os.fsync(f.fileno())
        with open(tmp_config, "w") as f:
            json.dump(config, f, indent=2, allow_nan=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_weights, directory / WEIGHTS_NAME)
        os.replace(tmp_config, directory / CONFIG_NAME)
    finally:
        for tmp in (tmp_weights, tmp_config):
            if tmp.exists():
                tmp.unlink()
    return directory


def resolve_prior(name_or_path: str | os.PathLike, *, revision: str | None = None,
                  cache_dir: str | os.PathLike | None = None, local_files_only: bool = False) -> Path:
    """The local directory of a prior: ``name_or_path`` itself if it exists, else a Hub snapshot.

    A Hub repo id has the form ``"org/name"``; only ``config.json`` and ``model.safetensors`` are
    downloaded (into ``cache_dir``, default the Hugging Face cache). Offline
    (``HF_HUB_OFFLINE=1`` or ``local_files_only=True``) the cached snapshot is used.
    Raises ``FileNotFoundError`` (or ``OSError`` for a failed download) naming what was tried.
    """
    path = Path(name_or_path)
    if path.exists():
        if not path.is_dir():
            raise FileNotFoundError(f"no prior at {path}: not a directory")
        return path
    name = str(name_or_path)
    if not _REPO_ID.match(name) or os.path.isabs(name):
        raise FileNotFoundError(f"no prior at {name}: not a directory (nor a Hub repo id 'org/name')")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    try:
        folder = snapshot_download(name, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only,
                                   allow_patterns=[CONFIG_NAME, WEIGHTS_NAME])
    except Exception as e:  # the Hub's errors are many; each becomes one line naming the repo
        kind = FileNotFoundError if isinstance(e, (FileNotFoundError, RepositoryNotFoundError,
                                                   RevisionNotFoundError)) else OSError
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise kind(f"no prior at {name}: not a local directory, and the Hugging Face Hub repo {name!r} "
                   f"could not be loaded ({type(e).__name__}: {first})") from None
    return Path(folder)


def load_prior(name_or_path: str | os.PathLike, device: str | torch.device = "cpu", *, revision: str | None = None,
               cache_dir: str | os.PathLike | None = None, local_files_only: bool = False) -> "Prior":
    """Load a prior written by :func:`save_prior` from a directory or a Hub repo id (see :func:`resolve_prior`).

    Safetensors + JSON only; nothing is unpickled. See the module docstring for the checks.
    """
    from .. import pdes
    from .prior import Prior

    directory = resolve_prior(name_or_path, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only)
    where = f"prior {name_or_path}"
    config = read_config(directory, where)
    weights_path = directory / WEIGHTS_NAME
    if not weights_path.is_file():
        raise FileNotFoundError(f"{where}: missing weights file {WEIGHTS_NAME}")
    try:
        precond = build("preconditioner", config["precond"], net=build("network", config["network"]))
        prior = Prior(precond, config["fields"], config["grid_shape"], cond_fields=config["cond_fields"],
                      param_names=config["param_names"], normalizer=config["normalizer"],
                      representation=build("representation", config["representation"]), problem=config["problem"],
                      sigma_min=config["sigma_min"], sigma_max=config["sigma_max"],
                      conditioning=config.get("conditioning"),
                      cond_representation=(build("representation", config["cond_representation"])
                                           if config.get("cond_representation") else None))
        if config["problem"] is not None and config["problem"]["name"] in pdes.names():
            prior.problem  # builds the PDE: its parameters are valid and its fields have the prior's grid
    except (ValueError, TypeError, KeyError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        raise ValueError(f"{where}: {CONFIG_NAME}: {msg}") from None
    if config["normalizer"] is None and config["problem"] is not None:
        warnings.warn(f"{where} has no normaliser (\"normalizer\": null): its samples are used as physical fields of "
                      f"{config['problem']['name']!r} as they are; if it was trained on normalised data, its "
                      f"{CONFIG_NAME} is incomplete", UserWarning, stacklevel=3)
    try:
        state = load_file(str(weights_path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{where}: corrupt weights file {WEIGHTS_NAME}: {e}") from None
    _check_state(prior.state_dict(), state, where)
    prior.load_state_dict(state, strict=True)
    prior.source_dir = directory   # where solver states fitted to it are kept (diffpde.models.solver_state)
    return prior.to(device)


def read_config(directory: str | os.PathLike, where: str | None = None) -> dict[str, Any]:
    """Read ``config.json`` of a saved prior and check its format, version, keys and their kinds."""
    where = where or f"prior {directory}"
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{where}: missing {CONFIG_NAME}")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{where}: corrupt {CONFIG_NAME}: {e}") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ValueError(f"{where}: {CONFIG_NAME} is not a diffpde prior config (format != {FORMAT!r})")
    version = config.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"{where}: {CONFIG_NAME} has no valid format_version (got {version!r})")
    if version > FORMAT_VERSION:
        raise ValueError(f"{where}: format version {version} is newer than this diffpde understands ({FORMAT_VERSION})")
    missing = [k for k in REQUIRED_KEYS if k not in config]
    if missing:
        hint = " (a prior without a normaliser says so with \"normalizer\": null)" if "normalizer" in missing else ""
        raise ValueError(f"{where}: {CONFIG_NAME} lacks the required key(s) {missing}{hint}")
    _check_kinds(config, f"{where}: {CONFIG_NAME}")
    return config


def _check_kinds(config: Mapping[str, Any], where: str) -> None:
    """Each required key holds the kind of value :meth:`Prior.config` writes."""
    for key in ("network", "precond", "representation"):
        if not isinstance(config[key], dict) or "type" not in config[key]:
            raise ValueError(f"{where}: {key!r} must be a mapping with a 'type', got {config[key]!r}")
    if "conditioning" in config and not isinstance(config["conditioning"], dict):
        raise ValueError(f"{where}: 'conditioning' must be a mapping of condition encoders, "
                         f"got {config['conditioning']!r}")
    for key in ("normalizer", "problem"):
        if config[key] is not None and not isinstance(config[key], dict):
            raise ValueError(f"{where}: {key!r} must be a mapping or null, got {config[key]!r}")
    for key in ("fields", "cond_fields", "param_names"):
        value = config[key]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{where}: {key!r} must be a list of names, got {value!r}")
    grid = config["grid_shape"]
    if not isinstance(grid, list) or not grid or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0
                                                          for n in grid):
        raise ValueError(f"{where}: 'grid_shape' must be a non-empty list of positive integers, got {grid!r}")
    for key in ("sigma_min", "sigma_max"):
        if not isinstance(config[key], (int, float)) or isinstance(config[key], bool):
            raise ValueError(f"{where}: {key!r} must be a number, got {config[key]!r}")


def _check_state(expected: Mapping[str, Tensor], state: Mapping[str, Tensor], where: str) -> None:
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{where}: weights do not match the config: missing {missing[:5]}"
                         f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
    for k, v in expected.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise ValueError(f"{where}: parameter {k!r} has shape {tuple(state[k].shape)} in "
                             f"{WEIGHTS_NAME} but the config builds {tuple(v.shape)}")


def _temp_name(directory: Path, name: str) -> Path:
    fd, path = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    os.close(fd)
    return Path(path)
