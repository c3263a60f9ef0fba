"""Saved priors: old files still load and denoise as before, every inconsistent config.json is an
error naming the values that disagree, and a Hugging Face Hub repo id loads from a local snapshot."""

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffpde.models.persistence import CONFIG_NAME, REQUIRED_KEYS, WEIGHTS_NAME
from diffpde.models.prior import Prior

DATA = Path(__file__).parent / "data"
V1 = ("v1_unet2d_edm", "v1_unet1d_vp")   # written by diffpde 0.1.0 before the config registry


def copy(name, tmp_path):
    return Path(shutil.copytree(DATA / name, tmp_path / name))


def edit(directory, change):
    config = json.loads((directory / CONFIG_NAME).read_text())
    change(config)
    (directory / CONFIG_NAME).write_text(json.dumps(config))
    return directory


def denoise(prior, ref):
    cond = {prior.cond_fields[0]: ref["cond"]}
    params = {prior.param_names[0]: ref["params"]}
    with torch.no_grad():
        return prior.denoiser(cond, params)(ref["z"], ref["sigma"])


@pytest.mark.parametrize("name", V1)
def test_version_1_priors_load_and_denoise_as_when_saved(name):
    prior = Prior.from_pretrained(DATA / name)
    ref = load_file(str(DATA / name / "reference.safetensors"))
    torch.testing.assert_close(denoise(prior, ref), ref["denoised"], rtol=1e-5, atol=1e-6)
    saved = json.loads((DATA / name / CONFIG_NAME).read_text())
    assert {k: v for k, v in prior.config().items() if k != "diffpde_version"} == \
        {k: v for k, v in saved.items() if k != "diffpde_version"}


def test_save_load_round_trip_writes_the_same_config(tmp_path):
    prior = Prior.from_pretrained(DATA / V1[0])
    prior.save_pretrained(tmp_path / "again")
    assert json.loads((tmp_path / "again" / CONFIG_NAME).read_text()) == prior.config()
    assert Prior.from_pretrained(tmp_path / "again").config() == prior.config()


@pytest.mark.parametrize("key", REQUIRED_KEYS)
def test_a_missing_key_is_an_error_naming_it(key, tmp_path):
    d = edit(copy(V1[0], tmp_path), lambda c: c.pop(key))
    with pytest.raises(ValueError, match=rf"{CONFIG_NAME} lacks the required key\(s\) \['{key}'\]"):
        Prior.from_pretrained(d)


def test_a_null_normaliser_loads_with_a_warning_when_the_prior_has_a_problem(tmp_path):
    d = edit(copy(V1[0], tmp_path), lambda c: c.update(normalizer=None))
    with pytest.warns(UserWarning, match="no normaliser"):
        prior = Prior.from_pretrained(d)
    z = torch.randn(2, 1, 16, 16)
    assert torch.equal(prior.decode_fields(z)["u"], z[:, 0])    # data units: nothing is undone
    d = edit(d, lambda c: c.update(problem=None))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Prior.from_pretrained(d)


def _set(key, value):
    return lambda c: c.update({key: value})


def _net(key, value):
    return lambda c: c["network"].update({key: value})


INCONSISTENT = {
    "1-D grid, 2-D normaliser": (_set("grid_shape", [16]), r"field_ndim=2 but grid_shape \[16\] has 1 axes"),
    "1-D grid, 2-D network": (lambda c: c.update(grid_shape=[16], normalizer=None),
                              r"spatial_dims=2 but grid_shape \[16\] gives 1-D latents"),
    "grid of another resolution": (_set("grid_shape", [32, 32]),
                                   r"grid_shape \[32, 32\] differs from the shape \[16, 16\] of field 'u' of 'darcy'"),
    "problem of another resolution": (lambda c: c["problem"].update(resolution=32),
                                      r"grid_shape \[16, 16\] differs from the shape \[32, 32\]"),
    "problem parameter unknown": (lambda c: c["problem"]["parameters"].update(bogus=1.0), "unknown parameter.*bogus"),
    "field not of the problem": (lambda c: c.update(fields=["w"], normalizer={**c["normalizer"], "fields": ["w", "a"]}),
                                 r"prior field 'w' is not a field of the problem 'darcy'"),
    "more fields than channels": (lambda c: c.update(fields=["u", "a"], cond_fields=[]),
                                  r"in_channels=1 but 2 field\(s\) \['u', 'a'\] on the identity representation give 2"),
    "network channels": (_net("in_channels", 3), r"in_channels=3 but 1 field\(s\) \['u'\]"),
    "conditioning channels": (_set("cond_fields", []), r"cond_channels=1 but the conditioning fields are \[\]"),
    "scalar parameters": (_set("param_names", ["k", "m"]), r"num_params=1 but the scalar parameters are \['k', 'm'\]"),
    "normaliser lacks a field": (lambda c: c["normalizer"].update(fields=["u", "b"]),
                                 r"no statistics for field\(s\) \['a'\]"),
    "sampling range": (_set("sigma_min", 100.0), r"sigma_min=100.0, sigma_max=80.0"),
    "unknown network": (lambda c: c.update(network={**c["network"], "type": "unet3d"}),
                        r"unknown network type 'unet3d' \(did you mean 'unet2d'\?\)"),
    "misspelt network key": (_net("widht", 3), r"unknown config key 'widht'"),
    "network value of the wrong kind": (_net("periodic", "no"), r"periodic must be true or false, got 'no'"),
    "precond value of the wrong kind": (lambda c: c["precond"].update(sigma_data="x"), r"sigma_data must be a number"),
    "newer format": (_set("format_version", 99), r"format version 99 is newer"),
    "no format version": (lambda c: c.pop("format_version"), r"no valid format_version"),
    "grid not a list": (_set("grid_shape", "16x16"), r"'grid_shape' must be a non-empty list of positive integers"),
    "fields not a list": (_set("fields", "u"), r"'fields' must be a list of names, got 'u'"),
}


@pytest.mark.parametrize("case", INCONSISTENT)
def test_inconsistent_configs_are_errors_naming_both_values(case, tmp_path):
    change, message = INCONSISTENT[case]
    d = edit(copy(V1[0], tmp_path), change)
    with pytest.raises(ValueError, match=message) as err:
        Prior.from_pretrained(d)
    assert str(err.value).startswith(f"prior {d}")


def _hub_snapshot(cache, repo_id, source, revision="0123456789abcdef0123456789abcdef01234567"):
    """Lay out a Hugging Face Hub cache entry ``models--org--name`` holding ``source``'s two files."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        shutil.copy(source / name, snapshot / name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty Hub cache under tmp_path with the Hub switched off (no test touches the network)."""
    import huggingface_hub.constants as hf

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)    # huggingface_hub reads the variables on import
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(cache))
    return cache


def test_from_pretrained_takes_a_hub_repo_id(offline_hub, tmp_path, monkeypatch):
    _hub_snapshot(offline_hub, "diffpde-test/tiny-darcy", DATA / V1[0])
    monkeypatch.chdir(tmp_path)
    prior = Prior.from_pretrained("diffpde-test/tiny-darcy")
    ref = load_file(str(DATA / V1[0] / "reference.safetensors"))
    torch.testing.assert_close(denoise(prior, ref), ref["denoised"], rtol=1e-5, atol=1e-6)
    # a local directory of the same name wins over the Hub
    other = Path(shutil.copytree(DATA / V1[1], tmp_path / "diffpde-test" / "tiny-darcy"))
    assert Prior.from_pretrained("diffpde-test/tiny-darcy").grid_shape == (16,)
    shutil.rmtree(other)
    with pytest.raises(FileNotFoundError, match="Hugging Face Hub repo 'diffpde-test/missing'"):
        Prior.from_pretrained("diffpde-test/missing")
    with pytest.raises(FileNotFoundError, match="not a directory"):
        Prior.from_pretrained("./diffpde-test/missing")


def test_hub_download_asks_for_the_config_and_the_weights_only(tmp_path, monkeypatch):
    import huggingface_hub

    calls = []

    def fake_snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(DATA / V1[1])

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.chdir(tmp_path)
    prior = Prior.from_pretrained("org/prior", revision="v2", cache_dir=tmp_path)
    assert prior.fields == ("u",)
    (repo_id, kwargs), = calls
    assert repo_id == "org/prior" and kwargs["revision"] == "v2" and kwargs["cache_dir"] == tmp_path
    assert sorted(kwargs["allow_patterns"]) == sorted([CONFIG_NAME, WEIGHTS_NAME])
