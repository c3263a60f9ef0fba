"""Typed training configuration: YAML file + variant + dotted overrides -> :class:`TrainConfig`.

A config file has one mapping per section (``data``, ``model``, ``loss``, ``optim``, ``train``,
``eval``) and optionally ``variants: {name: {section: {key: value}}}``, partial configs merged over
the base when selected (``--variant tiny`` or the override ``variant=tiny``). Command-line
overrides ``section.key=value`` come last; ``value`` is parsed with ``yaml.safe_load`` and may
reach into free-form mappings (``model.network.block_out_channels=[16,32]``).

Every key of a typed section is checked: an unknown key is an error that names the section and
suggests the closest known key. Free-form mappings (``model.network``, ``model.precond``,
``model.representation``, ``loss``'s options) are checked by the builders that consume them.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import yaml

__all__ = [
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "LossConfig",
    "OptimConfig",
    "TrainLoopConfig",
    "EvalConfig",
    "DebugConfig",
    "TrainConfig",
    "load_config",
    "config_from_dict",
    "parse_overrides",
]


AUGMENTATIONS = ("roll_x", "roll_y", "flip_x", "flip_y")


class ConfigError(ValueError):
    """A configuration key or value that cannot be used; the message says which and why."""


@dataclass
class DataConfig:
    path: str = ""                                   # HDF5 dataset written by `diffpde generate`
    problem: str = ""                                # PDE family; must match the file when given
    fields: list[str] = field(default_factory=lambda: ["a", "u"])  # diffused fields, channel order
    cond_fields: list[str] = field(default_factory=list)           # fields given to the net as conditioning
    resolution: int | None = None                    # expected grid resolution (checked against the file)
    n: int | None = None                             # use the first n samples (None: all)
    in_memory: bool = True                           # load the whole file into memory
    generate: dict[str, Any] | None = None           # if the file is missing: kwargs of generate_dataset


@dataclass
class ModelConfig:
    network: dict[str, Any] = field(default_factory=lambda: {"type": "unet2d"})  # build_network(config)
    precond: dict[str, Any] = field(default_factory=lambda: {"type": "edm"})    # build_precond(config, net)
    representation: dict[str, Any] = field(default_factory=lambda: {"type": "identity"})


@dataclass
class LossConfig:
    type: str = "edm"                                # edm | vp | ve | flow (build_loss)
    options: dict[str, Any] = field(default_factory=dict)  # extra keyword arguments of the loss


@dataclass
class OptimConfig:
    lr: float = 2e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_steps: int = 0                            # linear warm-up from 0 to lr
    schedule: str = "constant"                       # constant | cosine (after warm-up, to min_lr_ratio * lr)
    min_lr_ratio: float = 0.0
    grad_clip: float | None = 1.0                    # max global grad norm (None: no clipping)


@dataclass
class TrainLoopConfig:
    batch_size: int = 16                             # global batch per optimizer step (all ranks, all micro-steps)
    grad_accum: int = 1                              # micro-steps per optimizer step
    max_steps: int = 1000                            # optimizer steps
    mixed_precision: str = "no"                      # no | bf16 | fp16
    seed: int = 0
    checkpoint_every: int = 500                      # optimizer steps between checkpoints (0: never)
    keep_checkpoints: int = 3                        # rotation: keep the last K checkpoints
    eval_every: int = 0                              # optimizer steps between evaluations (0: only at the end)
    log_every: int = 10
    output_dir: str = "runs/default"
    ema_decay: float | None = None                   # EMA decay per step, or ...
    ema_half_life: float | None = 500.0              # ... EMA half-life in optimizer steps (exactly one of the two)
    ema_warmup: bool = True                          # decay <- min(decay, (1 + step) / (10 + step))
    num_workers: int = 0                             # DataLoader workers per rank
    augment: list[str] = field(default_factory=list) # symmetries declared by the problem: "roll_x", "roll_y", "flip_x", "flip_y"
    log_with: str = "auto"                           # auto (tensorboard if installed) | tensorboard | none
    progress: bool = True                            # tqdm bar on the main process


@dataclass
class EvalConfig:
    n_samples: int = 4                               # fields sampled with the EMA model per evaluation
    solver: str = "heun"
    steps: int = 18
    seed: int = 1234


@dataclass
class DebugConfig:
    kill_after_checkpoint: int | None = None         # SIGKILL the main process right after checkpoint at this step
    kill_during_checkpoint: int | None = None        # SIGKILL between writing and completing this step's checkpoint
    dump_rank_weights: bool = False                  # every rank writes its final weights (rank_<i>.safetensors)


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    debug: DebugConfig = field(default_factory=DebugConfig)
    variant: str | None = None                       # name of the selected variant (informational)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (JSON/YAML-serialisable)."""
        return dataclasses.asdict(self)

    def validate(self) -> "TrainConfig":
        """Check values that must hold whatever the file says; returns ``self``."""
        t, o = self.train, self.optim
        _choice("train.mixed_precision", t.mixed_precision, ("no", "bf16", "fp16"))
        _choice("optim.schedule", o.schedule, ("constant", "cosine"))
        _choice("train.log_with", t.log_with, ("auto", "tensorboard", "none"))
        for name in ("batch_size", "grad_accum", "max_steps", "log_every", "keep_checkpoints"):
            if getattr(t, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(t, name)}")
        for name in ("checkpoint_every", "eval_every", "num_workers"):
            if getattr(t, name) < 0:
                raise ConfigError(f"train.{name} must be >= 0, got {getattr(t, name)}")
        if t.batch_size % t.grad_accum:
            raise ConfigError(f"train.batch_size={t.batch_size} is not divisible by train.grad_accum={t.grad_accum}")
        if (t.ema_decay is None) == (t.ema_half_life is None):
            raise ConfigError("set exactly one of train.ema_decay and train.ema_half_life (the other to null)")
        if t.ema_decay is not None and not 0.0 <= t.ema_decay < 1.0:
            raise ConfigError(f"train.ema_decay must be in [0, 1), got {t.ema_decay}")
        if t.ema_half_life is not None and not t.ema_half_life > 0:
            raise ConfigError(f"train.ema_half_life must be > 0 steps, got {t.ema_half_life}")
        if not o.lr > 0 or len(o.betas) != 2 or o.warmup_steps < 0 or not 0 <= o.min_lr_ratio <= 1:
            raise ConfigError(f"bad optim section: lr={o.lr}, betas={o.betas}, warmup_steps={o.warmup_steps}, "
                              f"min_lr_ratio={o.min_lr_ratio}")
        if o.grad_clip is not None and not o.grad_clip > 0:
            raise ConfigError(f"optim.grad_clip must be > 0 or null, got {o.grad_clip}")
        unknown = [a for a in t.augment if a not in AUGMENTATIONS]
        if unknown:
            raise ConfigError(f"train.augment: unknown augmentation(s) {unknown}; known: {', '.join(AUGMENTATIONS)}")
        if not self.data.fields:
            raise ConfigError("data.fields is empty: name the fields the prior diffuses over")
        both = set(self.data.fields) & set(self.data.cond_fields)
        if both:
            raise ConfigError(f"field(s) {sorted(both)} are in both data.fields and data.cond_fields")
        if self.eval.n_samples < 1 or self.eval.steps < 1:
            raise ConfigError(f"eval.n_samples and eval.steps must be >= 1, got {self.eval.n_samples}, {self.eval.steps}")
        return self

    @property
    def ema_decay_per_step(self) -> float:
        """EMA decay per optimizer step, from ``train.ema_decay`` or ``0.5 ** (1 / train.ema_half_life)``."""
        t = self.train
        return float(t.ema_decay) if t.ema_decay is not None else 0.5 ** (1.0 / t.ema_half_life)


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    """Resolved field annotations (``from __future__ import annotations`` makes them strings)."""
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


SECTIONS: dict[str, type] = {f.name: _hints(TrainConfig)[f.name] for f in dataclasses.fields(TrainConfig)
                             if f.name != "variant"}


def _choice(name: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def _unknown(key: str, known: Sequence[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.5)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"unknown key {key!r} in {where}{hint}; known keys: {', '.join(known)}")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert where YAML is lax (``1e-4`` is a str)."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if tp is Any:
        return value
    if origin in (list, tuple):
        if isinstance(value, (list, tuple)):
            (item,) = typing.get_args(tp)[:1] or (Any,)
            return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        raise ConfigError(f"{where} must be a list, got {value!r}")
    if origin is dict or tp is dict:
        if isinstance(value, Mapping):
            return copy.deepcopy(dict(value))
        raise ConfigError(f"{where} must be a mapping, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where} must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML 1.1 reads "1e-4" as a string
            except ValueError:
                pass
        raise ConfigError(f"{where} must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where} must be a string, got {value!r}")
    raise ConfigError(f"{where}: unsupported annotation {tp!r}")  # pragma: no cover


def _section(cls: type, raw: Any, name: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"section {name!r} must be a mapping, got {raw!r}")
    hints = _hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        if key not in known:
            raise _unknown(str(key), known, f"section {name!r}")
        kwargs[key] = _coerce(value, hints[key], f"{name}.{key}")
    return cls(**kwargs)


def config_from_dict(raw: Mapping[str, Any]) -> TrainConfig:
    """Build and validate a :class:`TrainConfig` from a nested mapping (no variants)."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"a config must be a mapping of sections, got {type(raw).__name__}")
    sections = {}
    for key, value in raw.items():
        if key == "variant":
            continue
        if key not in SECTIONS:
            raise _unknown(str(key), list(SECTIONS) + ["variants", "variant"], "the config (top-level sections)")
        sections[key] = _section(SECTIONS[key], value, key)
    return TrainConfig(**sections, variant=raw.get("variant")).validate()


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive merge of mappings; ``over`` wins, lists are replaced."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _merge(dict(out[k]), v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def parse_overrides(overrides: Sequence[str]) -> list[tuple[list[str], Any]]:
    """``["a.b=1", "c=[1, 2]"]`` -> ``[(["a", "b"], 1), (["c"], [1, 2])]`` (values via ``yaml.safe_load``)."""
    out = []
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"bad override {item!r}: expected key.sub=value")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({e})") from None
        out.append((key.split("."), value))
    return out


def _check_path(path: list[str], item: str) -> None:
    """Fail early, naming the override, when ``path`` does not name a config key."""
    section = path[0]
    if section == "variant":
        return
    if section not in SECTIONS:
        raise ConfigError(f"override {item!r}: " + str(_unknown(section, list(SECTIONS) + ["variant"], "the config (top-level sections)")))
    cls = SECTIONS[section]
    if len(path) == 1:
        raise ConfigError(f"override {item!r}: give a key inside section {section!r} (e.g. {section}.<key>=...)")
    known = [f.name for f in dataclasses.fields(cls)]
    if path[1] not in known:
        raise ConfigError(f"override {item!r}: " + str(_unknown(path[1], known, f"section {section!r}")))
    tp = _hints(cls)[path[1]]
    if len(path) > 2 and not any(t is dict or typing.get_origin(t) is dict for t in (tp, *typing.get_args(tp))):
        raise ConfigError(f"override {item!r}: {section}.{path[1]} is not a mapping")


def load_config(path: str | Path | None = None, overrides: Sequence[str] = (), variant: str | None = None,
                base: Mapping[str, Any] | None = None) -> TrainConfig:
    """Read a YAML config, merge a variant and dotted overrides, and return a validated config.

    path:      YAML file (``None``: start from ``base`` or the defaults).
    overrides: ``["train.max_steps=10", "variant=tiny", ...]``; values parsed with ``yaml.safe_load``.
    variant:   name of an entry of the file's ``variants`` (the override ``variant=...`` also selects one).
    base:      a mapping used instead of a file.
    """
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        raw = {} if raw is None else raw
        where = str(path)
    else:
        raw, where = copy.deepcopy(dict(base or {})), "<config>"
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: a config must be a mapping of sections")
    raw = dict(raw)
    variants = raw.pop("variants", None) or {}
    parsed = parse_overrides(overrides)
    for keys, value in parsed:
        if keys == ["variant"]:
            variant = value
    if variant is not None:
        if variant not in variants:
            raise ConfigError(f"{where}: unknown variant {variant!r}; variants: {', '.join(variants) or 'none'}")
        raw = _merge(raw, variants[variant] or {})
        raw["variant"] = variant
    for (keys, value), item in zip(parsed, overrides):
        if keys == ["variant"]:
            continue
        _check_path(keys, item)
        node = raw
        for k in keys[:-1]:
            if not isinstance(node.get(k), Mapping):
                node[k] = {}
            node[k] = dict(node[k])
            node = node[k]
        node[keys[-1]] = value
    try:
        return config_from_dict(raw)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
