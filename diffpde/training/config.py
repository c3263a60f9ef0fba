"""Typed training configuration: YAML file (+ its bases) + variant + dotted overrides -> :class:`TrainConfig`.

A config file has one mapping per section (``data``, ``model``, ``loss``, ``optim``, ``train``,
``eval``, ``debug``) and optionally

- ``base: other.yaml``, a config (path relative to this file) that this one is merged over; bases
  may have bases. The family configs share ``configs/_base.yaml``.
- ``variants: {name: {section: {key: value}}}``, partial configs merged over the whole when
  selected (``--variant tiny`` or the override ``variant=tiny``); ``--variant tiny+flow`` merges
  several, left to right.
- ``data.generate.from: data/<problem>.yaml``: a data config (relative to the file that names it)
  whose ``resolution``, ``parameters``, ``n_train`` and ``seed`` become the generation settings;
  keys given beside ``from`` win.

Merging is recursive over mappings; lists and scalars are replaced. Command-line overrides
``section.key=value`` come last; values are read by :func:`diffpde.options.parse_value`, the
parser of every ``diffpde`` command (``1e-3`` is a float), and may reach into free-form mappings
(``model.network.block_out_channels=[16,32]``). YAML files are read with ``safe_load`` rules plus
one: ``1e-4`` is a float, as in YAML 1.2.

The sections are pydantic models. Pydantic (v2) rather than OmegaConf structured configs, because
most of what a config must refuse is not a type: choices (``mixed_precision``), ranges
(``ema_decay`` in [0, 1)), lengths (``betas``) and relations between keys (``batch_size``
divisible by ``grad_accum``). Pydantic declares all of them beside the field and reports each
failure with its location, kind and input, from which :class:`ConfigError` names the key and the
expected type; OmegaConf checks only primitive types, converts silently (``"yes"`` to ``True``) and
reads ``${...}`` in any string value, paths and free-form network options included. What OmegaConf
would add, deep merging and dotted overrides, is a few lines here, and keeping it here lets
overrides share the one ``KEY=VALUE`` parser of every other command.
"""

from __future__ import annotations

import copy
import difflib
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, Sequence

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..options import parse_value

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
    "augmentations",
    "load_config",
    "load_yaml",
    "config_from_dict",
    "parse_overrides",
]


class ConfigError(ValueError):
    """A configuration key or value that cannot be used; the message says which and why."""


def augmentations() -> tuple[str, ...]:
    """The names ``train.augment`` may hold: the symmetry maps of :mod:`diffpde.data.augment`."""
    from ..data.augment import SYMMETRIES

    return tuple(SYMMETRIES)


class _Section(BaseModel):
    # Unknown keys are errors; numbers given for a string (a path ``2024``) are read as strings.
    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)


AtLeast1 = Annotated[int, Field(ge=1)]
AtLeast0 = Annotated[int, Field(ge=0)]


class DataConfig(_Section):
    path: str = ""                                   # HDF5 dataset written by `diffpde generate`
    problem: str = ""                                # PDE family; must match the file when given
    fields: list[str] = Field(default_factory=lambda: ["a", "u"], min_length=1)  # diffused fields, channel order
    cond_fields: list[str] = Field(default_factory=list)   # fields given to the net as conditioning
    resolution: int | None = None                    # expected grid resolution (checked against the file)
    n: AtLeast1 | None = None                        # use the first n samples (None: all)
    in_memory: bool = True                           # load the whole file into memory
    generate: dict[str, Any] | None = None           # if the file is missing: kwargs of generate_dataset

    @model_validator(mode="after")
    def _disjoint(self) -> "DataConfig":
        both = set(self.fields) & set(self.cond_fields)
        if both:
            raise ValueError(f"field(s) {sorted(both)} are in both data.fields and data.cond_fields")
        return self


class ModelConfig(_Section):
    network: dict[str, Any] = Field(default_factory=lambda: {"type": "unet2d"})  # build("network", config)
    precond: dict[str, Any] = Field(default_factory=lambda: {"type": "edm"})    # build("preconditioner", config, net=net)
    representation: dict[str, Any] = Field(default_factory=lambda: {"type": "identity"})
    # text / frames / params encoders and cfg_dropout (diffpde.models.construct; a DiT network)
    conditioning: dict[str, Any] | None = None


class LossConfig(_Section):
    type: str = "edm"                                # edm | vp | ve | flow (build_loss)
    options: dict[str, Any] = Field(default_factory=dict)  # extra keyword arguments of the loss


class OptimConfig(_Section):
    lr: float = Field(2e-4, gt=0)
    betas: list[float] = Field(default_factory=lambda: [0.9, 0.999], min_length=2, max_length=2)
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_steps: AtLeast0 = 0                       # linear warm-up from 0 to lr
    schedule: Literal["constant", "cosine"] = "constant"  # after warm-up: constant, or cosine to min_lr_ratio * lr
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    grad_clip: float | None = Field(1.0, gt=0)       # max global grad norm (None: no clipping)


class TrainLoopConfig(_Section):
    batch_size: AtLeast1 = 16                        # global batch per optimizer step (all ranks, all micro-steps)
    grad_accum: AtLeast1 = 1                         # micro-steps per optimizer step
    max_steps: AtLeast1 = 1000                       # optimizer steps
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    seed: int = 0
    checkpoint_every: AtLeast0 = 500                 # optimizer steps between checkpoints (0: never)
    keep_checkpoints: AtLeast1 = 3                   # rotation: keep the last K checkpoints
    eval_every: AtLeast0 = 0                         # optimizer steps between evaluations (0: only at the end)
    log_every: AtLeast1 = 10
    output_dir: str = "runs/default"
    ema_decay: float | None = Field(None, ge=0, lt=1)         # EMA decay per step, or ...
    ema_half_life: float | None = Field(500.0, gt=0)          # ... EMA half-life in optimizer steps (exactly one)
    ema_warmup: bool = True                          # decay <- min(decay, (1 + step) / (10 + step))
    num_workers: AtLeast0 = 0                        # DataLoader workers per rank
    augment: list[str] = Field(default_factory=list)  # symmetries the problem declares (PDE.symmetries)
    log_with: Literal["auto", "tensorboard", "none"] = "auto"  # auto: tensorboard if installed
    progress: bool = True                            # tqdm bar on the main process

    @field_validator("augment")
    @classmethod
    def _known_augmentations(cls, names: list[str]) -> list[str]:
        known = augmentations()
        unknown = [a for a in names if a not in known]
        if unknown:
            raise ValueError(f"unknown augmentation(s) {unknown}; known: {', '.join(known)}")
        return names

    @model_validator(mode="after")
    def _consistent(self) -> "TrainLoopConfig":
        if self.batch_size % self.grad_accum:
            raise ValueError(f"train.batch_size={self.batch_size} is not divisible by train.grad_accum={self.grad_accum}")
        if (self.ema_decay is None) == (self.ema_half_life is None):
            raise ValueError("set exactly one of train.ema_decay and train.ema_half_life (the other to null)")
        return self


class EvalConfig(_Section):
    n_samples: AtLeast1 = 4                          # fields sampled with the EMA model per evaluation
    solver: str = "heun"
    steps: AtLeast1 = 18
    seed: int = 1234


class DebugConfig(_Section):
    kill_after_checkpoint: int | None = None         # SIGKILL the main process right after checkpoint at this step
    kill_during_checkpoint: int | None = None        # SIGKILL between writing and completing this step's checkpoint
    dump_rank_weights: bool = False                  # every rank writes its final weights (rank_<i>.safetensors)


class TrainConfig(_Section):
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainLoopConfig = Field(default_factory=TrainLoopConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    debug: DebugConfig = Field(default_factory=DebugConfig)
    variant: str | None = None                       # name of the selected variant (informational)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (JSON/YAML-serialisable)."""
        return self.model_dump()

    def validate(self) -> "TrainConfig":  # type: ignore[override]  # pydantic's deprecated classmethod
        """Validate again (after attributes were assigned); returns the validated config."""
        return config_from_dict(self.model_dump())

    @property
    def ema_decay_per_step(self) -> float:
        """EMA decay per optimizer step, from ``train.ema_decay`` or ``0.5 ** (1 / train.ema_half_life)``."""
        t = self.train
        return float(t.ema_decay) if t.ema_decay is not None else 0.5 ** (1.0 / t.ema_half_life)


TOP_LEVEL = [*TrainConfig.model_fields, "variants"]

# -- errors ----------------------------------------------------------------------------------------

_EXPECTED = {
    "int_parsing": "an integer", "int_type": "an integer", "int_from_float": "an integer",
    "float_parsing": "a number", "float_type": "a number", "finite_number": "a finite number",
    "bool_parsing": "true or false", "bool_type": "true or false", "string_type": "a string",
    "list_type": "a list", "dict_type": "a mapping", "model_type": "a mapping", "model_attributes_type": "a mapping",
    "literal_error": "one of {expected}", "greater_than": "> {gt}", "greater_than_equal": ">= {ge}",
    "less_than": "< {lt}", "less_than_equal": "<= {le}",
    "too_short": "a list of at least {min_length} item(s)", "too_long": "a list of at most {max_length} item(s)",
}


def _section_class(path: Sequence[str]) -> type[BaseModel] | None:
    """The model at ``path`` (``[]``: :class:`TrainConfig`), or ``None`` where ``path`` leaves the models."""
    cls: Any = TrainConfig
    for key in path:
        field = cls.model_fields.get(key) if isinstance(cls, type) and issubclass(cls, BaseModel) else None
        if field is None:
            return None
        cls = field.annotation
    return cls if isinstance(cls, type) and issubclass(cls, BaseModel) else None


def _unknown(key: str, path: Sequence[str]) -> ConfigError:
    """'unknown key' naming the section, the closest known key and all known keys."""
    known = TOP_LEVEL if not path else list(_section_class(path).model_fields)
    where = f"section {'.'.join(path)!r}" if path else "the config (top-level sections)"
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"unknown key {key!r} in {where}{hint}; known keys: {', '.join(known)}")


def _message(error: Mapping[str, Any]) -> str:
    """One pydantic error as a sentence naming the key and what it must be."""
    loc = [str(p) for p in error["loc"]]
    key, kind, ctx = ".".join(loc), error["type"], error.get("ctx") or {}
    if kind == "extra_forbidden":
        return str(_unknown(loc[-1], loc[:-1]))
    if kind == "value_error":
        text = str(ctx.get("error", error["msg"]))
        return f"{key}: {text}" if len(loc) > 1 else text   # a section's own check names its keys
    if kind in _EXPECTED:
        return f"{key} must be {_EXPECTED[kind].format(**ctx)}, got {error['input']!r}"
    return f"{key}: {error['msg']}, got {error['input']!r}"


def config_from_dict(raw: Mapping[str, Any]) -> TrainConfig:
    """Build and validate a :class:`TrainConfig` from a nested mapping (no bases, no variants)."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"a config must be a mapping of sections, got {type(raw).__name__}")
    try:
        return TrainConfig.model_validate(dict(raw))
    except ValidationError as e:
        raise ConfigError("; ".join(_message(err) for err in e.errors(include_url=False))) from None


# -- files, bases, variants, overrides -------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads ``1e-4`` (no dot) as a float, as YAML 1.2 does."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(\.[0-9_]*)?[eE][-+]?[0-9]+$"),
                              list("-+0123456789"))


def load_yaml(path: str | Path) -> Any:
    """A YAML file by safe-load rules (plus floats without a dot), or :class:`ConfigError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        return yaml.load(path.read_text(), Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive merge of mappings; ``over`` wins, lists and scalars are replaced.

    A mapping that names another ``type`` than the one it overrides (a DiT network over a UNet
    one) replaces it whole: the settings of one type mean nothing to another.
    """
    out = dict(base)
    for k, v in over.items():
        old = out.get(k)
        same_type = not (isinstance(v, Mapping) and isinstance(old, Mapping)
                         and "type" in v and "type" in old and v["type"] != old["type"])
        out[k] = _merge(old, v) if isinstance(v, Mapping) and isinstance(old, Mapping) and same_type else v
    return out


def _anchor_generate_from(raw: dict[str, Any], directory: Path) -> None:
    """Make ``data.generate.from`` (in the file and its variants) a path relative to ``directory``."""
    parts = [raw, *((raw.get("variants") or {}).values())]
    for part in parts:
        gen = ((part or {}).get("data") or {}).get("generate") if isinstance(part, Mapping) else None
        if isinstance(gen, dict) and isinstance(gen.get("from"), str):
            gen["from"] = str(directory / gen["from"])


def _read(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file merged over its ``base`` chain."""
    path = path.resolve()
    if path in chain:
        raise ConfigError(f"{chain[0]}: the base chain loops: {' -> '.join(map(str, (*chain, path)))}")
    raw = load_yaml(path)
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a config must be a mapping of sections, got {type(raw).__name__}")
    _anchor_generate_from(raw, path.parent)
    base = raw.pop("base", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base must be the path of another config, got {base!r}")
    return _merge(_read(path.parent / base, (*chain, path)), raw)


def generation_settings(data_config: str | Path) -> dict[str, Any]:
    """``generate_dataset`` keyword arguments from a data config (``configs/data/<problem>.yaml``)."""
    raw = load_yaml(data_config)
    try:
        return {"problem": raw["problem"], "n": raw["n_train"], "resolution": raw["resolution"], "seed": raw["seed"],
                "parameters": dict(raw.get("parameters") or {})}
    except (KeyError, TypeError) as e:
        raise ConfigError(f"data config {data_config}: needs problem, n_train, resolution and seed ({e!r} is missing)") from None


def _resolve_generate(raw: dict[str, Any]) -> None:
    """Replace ``data.generate.from`` by the settings of the data config it names (explicit keys win)."""
    data = raw.get("data")
    gen = data.get("generate") if isinstance(data, Mapping) else None
    if not isinstance(gen, Mapping) or "from" not in gen:
        return
    explicit = {k: v for k, v in gen.items() if k != "from"}
    settings = generation_settings(gen["from"])
    problem = settings.pop("problem")
    if data.get("problem") and data["problem"] != problem:
        raise ConfigError(f"data.problem is {data['problem']!r} but data.generate.from names {gen['from']} "
                          f"(a {problem!r} data config)")
    raw["data"] = {**data, "generate": _merge(settings, explicit)}


def parse_overrides(overrides: Sequence[str]) -> list[tuple[list[str], Any]]:
    """``["a.b=1", "c=[1, 2]"]`` -> ``[(["a", "b"], 1), (["c"], [1, 2])]`` (values by ``options.parse_value``)."""
    out = []
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"bad override {item!r}: expected key.sub=value")
        try:
            value = parse_value(text)
        except ValueError as e:
            raise ConfigError(f"override {item!r}: {e}") from None
        out.append((key.split("."), value))
    return out


def _check_path(path: list[str], item: str) -> None:
    """Fail early, naming the override, when ``path`` does not name a config key."""
    if path == ["variant"]:
        return
    for depth, key in enumerate(path):
        cls = _section_class(path[:depth])
        if cls is None:   # inside a free-form mapping: anything goes
            return
        if key not in cls.model_fields:
            raise ConfigError(f"override {item!r}: {_unknown(key, path[:depth])}")
        if depth == len(path) - 1 and _section_class(path) is not None:
            raise ConfigError(f"override {item!r}: give a key inside section {key!r} (e.g. {key}.<key>=...)")
        annotation = cls.model_fields[key].annotation
        if depth < len(path) - 1 and _section_class(path[:depth + 1]) is None and \
                not any(a is dict or typing.get_origin(a) is dict for a in (annotation, *typing.get_args(annotation))):
            raise ConfigError(f"override {item!r}: {'.'.join(path[:depth + 1])} is not a mapping")


def _set(raw: dict[str, Any], path: list[str], value: Any) -> None:
    node = raw
    for k in path[:-1]:
        node[k] = dict(node[k]) if isinstance(node.get(k), Mapping) else {}
        node = node[k]
    node[path[-1]] = value


def _variant_names(variant: Any) -> list[str]:
    """``"tiny+flow"`` -> ``["tiny", "flow"]``: variants named together merge left to right."""
    if not isinstance(variant, str) or not variant.strip():
        raise ConfigError(f"variant must be a name (or names joined by '+'), got {variant!r}")
    names = [part.strip() for part in variant.split("+")]
    if any(not name for name in names):
        raise ConfigError(f"bad variant {variant!r}: an empty name between '+'")
    return names


def load_config(path: str | Path | None = None, overrides: Sequence[str] = (), variant: str | None = None,
                base: Mapping[str, Any] | None = None) -> TrainConfig:
    """Read a YAML config (merged over its bases), merge a variant and dotted overrides; return it validated.

    path:      YAML file (``None``: start from ``base`` or the defaults).
    overrides: ``["train.max_steps=10", "variant=tiny", ...]``; values by :func:`diffpde.options.parse_value`.
    variant:   name of an entry of the file's ``variants`` (the override ``variant=...`` also selects one);
               several joined by ``+`` (``tiny+flow``) merge left to right.
    base:      a mapping used instead of a file.
    """
    if path is not None:
        raw, where = _read(Path(path)), str(path)
    else:
        if not isinstance(base or {}, Mapping):
            raise ConfigError("<config>: a config must be a mapping of sections")
        raw, where = copy.deepcopy(dict(base or {})), "<config>"
    variants = raw.pop("variants", None) or {}
    parsed = parse_overrides(overrides)
    variant = next((value for keys, value in parsed if keys == ["variant"]), variant)
    try:
        if variant is not None:
            for name in _variant_names(variant):
                if name not in variants:
                    raise ConfigError(f"unknown variant {name!r}; variants: {', '.join(variants) or 'none'}")
                raw = _merge(raw, variants[name] or {})
            raw["variant"] = variant
        for (keys, value), item in zip(parsed, overrides):
            if keys != ["variant"]:
                _check_path(keys, item)
                _set(raw, keys, value)
        _resolve_generate(raw)
        return config_from_dict(raw)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
