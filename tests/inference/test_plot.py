"""plot_reconstruction: a valid PNG with the right panels, for 1D, 2D and 3D fields, with and without truth."""

import os
from types import SimpleNamespace

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from diffpde import pdes
from diffpde.inference.observations import Observations, SparsePoints, StackedObservation
from diffpde.inference.plot import _observed_points, plot_reconstruction
from diffpde.inference.tasks import Posterior

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _case(shape, k=4, b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    truth = {"a": torch.randn(b, *shape, generator=g, dtype=torch.float64),
             "u": torch.randn(b, *shape, generator=g, dtype=torch.float64)}
    samples = {n: v.unsqueeze(1) + 0.3 * torch.randn(b, k, *shape, generator=g, dtype=torch.float64)
               for n, v in truth.items()}
    op = SparsePoints.random("u", shape, 0.1, seed=1)
    return truth, Posterior(samples, {}), Observations(op, op(truth))


def _png(path):
    with open(path, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        return im.size


def test_panels_with_and_without_truth(tmp_path):
    truth, posterior, observations = _case((16, 16))
    backend = matplotlib.get_backend()
    with_truth = _png(plot_reconstruction(truth, posterior, observations, tmp_path / "t.png", instance=1,
                                          problem=pdes.get("darcy", 16), title="darcy"))
    without = _png(plot_reconstruction(None, posterior, observations, str(tmp_path / "n.png")))
    # 5 columns (truth, observations, mean, std, |error|) against 3, two field rows each
    assert with_truth[0] / without[0] == pytest.approx(5 / 3, rel=0.02)
    assert with_truth[1] == without[1] and 500 < with_truth[1] < 800
    assert sorted(os.listdir(tmp_path)) == ["n.png", "t.png"]         # no temporary file left
    assert matplotlib.get_backend() == backend                        # the user's backend is untouched


def test_observed_points_are_the_values_of_that_field():
    truth, _, _ = _case((8, 8), b=3)
    op = StackedObservation([SparsePoints.random("a", (8, 8), count=5, seed=0),
                             SparsePoints.random("u", (8, 8), count=7, seed=1)])
    obs = Observations(op, op(truth))
    idx, vals = _observed_points(obs, "u", instance=2)
    assert idx.shape == (7, 2)
    assert np.allclose(vals, truth["u"][2].numpy()[idx[:, 0], idx[:, 1]])
    idx, vals = _observed_points(obs, "a", instance=0)
    assert np.allclose(vals, truth["a"][0].numpy()[idx[:, 0], idx[:, 1]])
    assert _observed_points(Observations(op.operators[0], op.operators[0](truth)), "u", 0) is None


@pytest.mark.parametrize("shape", [(32,), (3, 8, 8)])
def test_1d_and_3d_fields(tmp_path, shape):
    truth, posterior, observations = _case(shape)
    _png(plot_reconstruction(truth, posterior, observations, tmp_path / "f.png"))


def _images(ax):
    return ax.get_images()[0]


def test_std_and_error_have_their_own_colour_scales_and_axes_follow_the_dims(tmp_path):
    """An error of RMS ~1e-3 under a std of ~1e-1 still fills its own colour range."""
    from diffpde.inference.plot import reconstruction_figure

    problem = pdes.get("darcy", 16)
    g = torch.Generator().manual_seed(0)
    truth = {"u": torch.randn(1, 16, 16, generator=g, dtype=torch.float64)}
    samples = truth["u"].unsqueeze(1) + 1e-3 + 0.1 * torch.randn(1, 6, 16, 16, generator=g, dtype=torch.float64)
    samples = samples - samples.mean(1, keepdim=True) + truth["u"].unsqueeze(1) + 1e-3   # mean error exactly 1e-3
    fig = reconstruction_figure(truth, Posterior({"u": samples}, {}), None, problem=problem)
    truth_ax, _, _, std_ax, err_ax = [ax for ax in fig.axes if ax.get_images()]   # colour bars have none
    std_lim, err_lim = _images(std_ax).get_clim(), _images(err_ax).get_clim()
    assert std_lim[1] > 0.1 and err_lim[1] == pytest.approx(1e-3, rel=1e-6)
    assert (std_ax.get_xlabel(), std_ax.get_ylabel()) == ("x", "y")
    assert _images(truth_ax).get_extent() == pytest.approx([-1 / 30, 31 / 30, -1 / 30, 31 / 30])   # h = 1/15
    # the prior works as well as its problem (as Python callers hold it); no problem: array indices
    fig = reconstruction_figure(truth, Posterior({"u": samples}, {}), None, problem=SimpleNamespace(problem=problem))
    assert [ax.get_xlabel() for ax in fig.axes if ax.get_images()][0] == "x"
    fig = reconstruction_figure(truth, Posterior({"u": samples}, {}), None)
    assert [ax.get_xlabel() for ax in fig.axes if ax.get_images()][0] == "index 1"


def test_two_phase_fields_get_error_rate_and_boundary():
    from diffpde.inference.plot import reconstruction_figure

    problem = pdes.get("darcy", 16)
    low, high = problem.two_phase_fields()["a"]
    a = torch.full((1, 16, 16), low, dtype=torch.float64)
    a[:, :, 8:] = high
    guess = a.clone()
    guess[:, :4, 6:8] = high                                       # 8 of 256 cells in the wrong phase
    fig = reconstruction_figure({"a": a}, Posterior({"a": guess.unsqueeze(1).expand(1, 3, 16, 16)}, {}), None,
                                problem=problem)
    titles = [ax.get_title() for ax in fig.axes]
    assert any("error rate 3.12 %" in t for t in titles)
    with_boundary = [ax for ax in fig.axes if ax.collections and ax.get_images()]
    assert len(with_boundary) == 2                                 # the truth and the mean
