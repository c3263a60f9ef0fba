"""Configs that round-trip by registration: :func:`register` and :func:`register_to_config`.

The pattern is diffusers' ``ConfigMixin``: a class whose ``__init__`` is decorated with
:func:`register_to_config` records the arguments it was built with (defaults filled in), its
``config()`` returns them as JSON-ready ``{"type": name, **arguments}``, and
``Class.from_config(config)`` or :func:`build` rebuilds it. :func:`register` files the class
under its ``"type"`` name in one table per family (``"network"``, ``"preconditioner"``,
``"representation"``), so that ``build("network", {"type": "unet2d", ...})`` builds a UNet.
Arguments that are objects rather than settings (a preconditioner's ``net``) are listed in the
class's ``config_ignore`` and passed to :func:`build` / ``from_config`` as keywords.

Why not ``diffusers.ConfigMixin`` itself (diffusers 0.42): importing it costs about 3 s (the
whole of diffusers) on every ``import diffpde.models``; ``from_config`` drops unknown keys with a
log line (a misspelt ``widht`` would build a default network, a silent wrong answer); with an
ignored positional argument (``net``) its decorator files the module under the next argument's
name; ``config`` becomes a frozen-dict property, which breaks ``config()``; and it adds
``_class_name``/``_use_default_values`` keys and Hub loading we do not want in our configs.
"""

from __future__ import annotations

import copy
import difflib
import functools
import inspect
import math
from typing import Any, Callable, ClassVar, Mapping, Sequence, TypeVar

from ..options import check_types

__all__ = ["REGISTRY", "Configurable", "register", "register_to_config", "build"]

#: ``{family: {type name: class}}``: every registered network, preconditioner and representation.
REGISTRY: dict[str, dict[str, type]] = {}

C = TypeVar("C", bound=type)


class Configurable:
    """Mixin for classes rebuilt from a JSON config (see the module docstring).

    Class attributes: ``config_family`` and ``config_type`` (set by :func:`register`),
    ``config_ignore`` (constructor arguments that are objects passed to :meth:`from_config`).
    """

    config_family: ClassVar[str] = ""
    config_type: ClassVar[str] = ""
    config_ignore: ClassVar[tuple[str, ...]] = ()

    @property
    def kind(self) -> str:
        """The registered ``"type"`` name (``"edm"``, ``"unet2d"``, ``"identity"``, ...)."""
        return self.config_type

    def config(self) -> dict[str, Any]:
        """``{"type": name, **constructor arguments}``, JSON-serialisable; :meth:`from_config` rebuilds."""
        recorded = self.__dict__.get("_init_config")
        if recorded is None:
            raise TypeError(f"{type(self).__name__} does not record its config (its __init__ lacks @register_to_config)")
        return {"type": self.config_type, **copy.deepcopy(recorded)}

    def update_config(self, **values: Any) -> None:
        """Replace recorded arguments by the values the constructor resolved (e.g. a default range)."""
        recorded = self.__dict__.get("_init_config", {})
        unknown = sorted(set(values) - set(recorded))
        if unknown:
            raise KeyError(f"{type(self).__name__}: {unknown} are not constructor arguments")
        recorded.update({k: _jsonable(v, f"{type(self).__name__}.{k}") for k, v in values.items()})

    @classmethod
    def from_config(cls, config: Mapping[str, Any], **objects: Any) -> Any:
        """Build from ``config`` (as :meth:`config` returns; ``"type"`` optional) and the ``objects``.

        Unknown keys, missing required arguments and values of the wrong kind raise ``ValueError``
        naming the key (with the nearest known name for a misspelling).
        """
        if not isinstance(config, Mapping):
            raise TypeError(f"a {cls.config_family or cls.__name__} config must be a mapping, got {config!r}")
        config = dict(config)
        kind = config.pop("type", cls.config_type)
        what = f"{cls.config_family} {kind!r}"
        if kind != cls.config_type:
            raise ValueError(f"a config of type {kind!r} cannot build {cls.__name__} (type {cls.config_type!r})")
        params = _arguments(cls)
        settings = {n for n in params if n not in cls.config_ignore}
        for key in config:
            if key not in settings:
                near = difflib.get_close_matches(key, sorted(settings), n=1)
                hint = f" (did you mean {near[0]!r}?)" if near else ""
                passed = " (it is passed as an object, not in the config)" if key in cls.config_ignore else ""
                raise ValueError(f"{what}: unknown config key {key!r}{hint}{passed}; known: {', '.join(sorted(settings))}")
        missing = [n for n, p in params.items() if p.default is p.empty and n not in config and n not in objects]
        if missing:
            raise ValueError(f"{what}: config lacks the required key(s) {missing}")
        config = check_types(config, {n: _expected(params[n]) for n in config}, f"{what} config key")
        try:
            return cls(**objects, **config)
        except TypeError as e:
            raise ValueError(f"bad config for {what}: {e}") from None


def _arguments(cls: type) -> dict[str, inspect.Parameter]:
    """The named constructor arguments of ``cls`` (without ``self``)."""
    sig = inspect.signature(cls.__init__)
    return {n: p for n, p in list(sig.parameters.items())[1:]
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


_SIMPLE = {"int": 0, "float": 0.0, "bool": False, "str": ""}


def _expected(param: inspect.Parameter) -> Any:
    """A value of the kind ``param`` takes: its default, or one of its simple annotation (``int``, ...)."""
    if param.default is not param.empty:
        return param.default
    annotation = param.annotation if isinstance(param.annotation, str) else getattr(param.annotation, "__name__", "")
    return _SIMPLE.get(annotation)


def _jsonable(value: Any, where: str) -> Any:
    """``value`` as JSON data (tuples become lists, numpy scalars Python numbers), or a clear error."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):   # also OmegaConf's ListConfig
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            raise TypeError(f"{where}: a config mapping needs string keys, got {list(value)}")
        return {k: _jsonable(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where}={value} cannot be stored in a JSON config (not finite)")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"{where}={value!r} of type {type(value).__name__} cannot be stored in a JSON config")


def register_to_config(init: Callable[..., None]) -> Callable[..., None]:
    """Decorate ``__init__`` so that the instance records its arguments (defaults filled in) for ``config()``.

    Only the outermost decorated constructor records (a subclass calling ``super().__init__``
    keeps its own record). Arguments named in ``config_ignore`` are not recorded.
    """
    sig = inspect.signature(init)
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in sig.parameters.values()):
        raise TypeError(f"{init.__qualname__}: *args/**kwargs cannot be recorded in a config")

    @functools.wraps(init)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> None:
        if "_init_config" not in self.__dict__:
            bound = sig.bind(self, *args, **kwargs)
            bound.apply_defaults()
            ignore = set(getattr(type(self), "config_ignore", ()))
            name = type(self).__name__
            recorded = {k: _jsonable(v, f"{name}({k}=...)")
                        for k, v in list(bound.arguments.items())[1:] if k not in ignore}
            object.__setattr__(self, "_init_config", recorded)
        init(self, *args, **kwargs)

    return wrapper


def register(family: str, name: str) -> Callable[[C], C]:
    """Class decorator: file a :class:`Configurable` under ``REGISTRY[family][name]``."""

    def decorate(cls: C) -> C:
        if not issubclass(cls, Configurable):
            raise TypeError(f"{cls.__name__} must derive from Configurable to be registered")
        table = REGISTRY.setdefault(family, {})
        old = table.get(name)
        if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
            raise ValueError(f"{family} type {name!r} is already registered to {old.__module__}.{old.__qualname__}")
        cls.config_family, cls.config_type = family, name
        table[name] = cls
        return cls

    return decorate


def build(family: str, config: Mapping[str, Any], **objects: Any) -> Any:
    """Build the registered ``family`` member named by ``config["type"]`` (see ``from_config``)."""
    table = REGISTRY.get(family)
    if table is None:
        raise ValueError(f"unknown family {family!r}; known: {', '.join(sorted(REGISTRY))}")
    if not isinstance(config, Mapping):
        raise TypeError(f"a {family} config must be a mapping with a 'type' key, got {config!r}")
    kind = config.get("type")
    if kind not in table:
        near = difflib.get_close_matches(str(kind), sorted(table), n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise ValueError(f"unknown {family} type {kind!r}{hint}; known: {', '.join(sorted(table))}")
    return table[kind].from_config(config, **objects)
