"""The config registry: constructor arguments recorded by decoration, rebuilt by "type" name."""

import json

import numpy as np
import pytest
from torch import nn

from diffpde.models import REGISTRY, Configurable, build, register, register_to_config


@register("_test_family", "block")
class Block(Configurable, nn.Module):
    config_ignore = ("inner",)

    @register_to_config
    def __init__(self, inner: nn.Module, width: int, widths=(1, 2), scale: float = 1.0, name: str = "b") -> None:
        super().__init__()
        self.inner, self.width, self.widths, self.scale = inner, width, tuple(widths), scale


@register("_test_family", "wide_block")
class WideBlock(Block):
    @register_to_config
    def __init__(self, inner: nn.Module, width: int = 64, extra: bool = True) -> None:
        super().__init__(inner, width, widths=(width, width))   # records nothing: the subclass did
        self.extra = extra


def test_constructor_arguments_are_recorded_with_defaults_as_json():
    block = Block(nn.Identity(), np.int64(8), widths=(3, np.float32(4.5)))
    assert block.config() == {"type": "block", "width": 8, "widths": [3, 4.5], "scale": 1.0, "name": "b"}
    assert isinstance(block.config()["width"], int)
    again = build("_test_family", json.loads(json.dumps(block.config())), inner=nn.Identity())
    assert type(again) is Block and again.config() == block.config() and again.widths == (3, 4.5)
    assert REGISTRY["_test_family"] == {"block": Block, "wide_block": WideBlock}
    block.config()["widths"].append(9)                      # config() hands out a copy
    assert block.config()["widths"] == [3, 4.5]


def test_a_subclass_records_its_own_arguments_only():
    wide = WideBlock(nn.Identity(), width=16)
    assert wide.config() == {"type": "wide_block", "width": 16, "extra": True}
    assert wide.widths == (16, 16)
    assert type(build("_test_family", wide.config(), inner=nn.Identity())) is WideBlock


def test_update_config_records_resolved_values():
    block = Block(nn.Identity(), 2)
    block.update_config(scale=0.5)
    assert block.config()["scale"] == 0.5
    with pytest.raises(KeyError, match="not constructor arguments"):
        block.update_config(depth=3)


def test_errors_name_the_problem():
    with pytest.raises(TypeError, match=r"Block\(name=...\)=<object .*cannot be stored in a JSON config"):
        Block(nn.Identity(), 2, name=object())
    with pytest.raises(ValueError, match="not finite"):
        Block(nn.Identity(), 2, scale=float("nan"))
    with pytest.raises(ValueError, match=r"lacks the required key\(s\) \['width'\]"):
        build("_test_family", {"type": "block"}, inner=nn.Identity())
    with pytest.raises(ValueError, match="width must be an integer"):
        Block.from_config({"width": 2.5}, inner=nn.Identity())
    with pytest.raises(ValueError, match="unknown _test_family type 'blok' \\(did you mean 'block'\\?\\)"):
        build("_test_family", {"type": "blok"})
    with pytest.raises(ValueError, match="unknown family 'nope'"):
        build("nope", {"type": "block"})
    with pytest.raises(TypeError, match="must be a mapping"):
        build("_test_family", ["block"])
    with pytest.raises(ValueError, match="already registered"):
        register("_test_family", "block")(type("Other", (Configurable,), {}))
    with pytest.raises(TypeError, match="Configurable"):
        register("_test_family", "plain")(type("Plain", (), {}))
    with pytest.raises(TypeError, match=r"\*\*kwargs"):
        register_to_config(lambda self, **kwargs: None)
