"""The evaluation layer: instances, per-instance seeds, batches over processes, the result's formats.

Truth for the distributed run is the single-process run: two gloo ranks (``accelerate.debug_launcher``,
forked children on the CPU) must produce the same numbers, bit for bit.
"""

import json

import numpy as np
import pytest
import torch

from diffpde.cli import main
from diffpde.inference.evaluation import evaluate_dataset, load_instances, observe, select_instances, task_fields
from diffpde.inference.sampling import Sampling, concat_posteriors, derived_seed, map_batches
from diffpde.inference.posterior_io import read_posterior
from diffpde.inference.tasks import Posterior
from diffpde.models.prior import Prior

FAST = Sampling(steps=3, samples=2, seed=4)


@pytest.fixture(scope="module")
def prior(tiny_darcy):
    return Prior.from_pretrained(tiny_darcy[2])


def test_task_fields_follow_the_roles_of_the_family(prior):
    assert task_fields(prior, "forward") == (("a",), ("u",))
    assert task_fields(prior, "inverse") == (("u",), ("a",))
    assert task_fields(prior, "reconstruct") == (("a", "u"), ("a", "u"))
    with pytest.raises(ValueError, match="unknown task 'sideways'"):
        task_fields(prior, "sideways")


def test_select_instances():
    assert select_instances(5) == [0, 1, 2, 3, 4] and select_instances(5, n_test=2) == [0, 1]
    assert select_instances(5, indices=[4, 1]) == [4, 1]
    with pytest.raises(ValueError, match="either n_test or indices"):
        select_instances(5, 2, [1])
    with pytest.raises(ValueError, match="n_test must be in"):
        select_instances(5, n_test=0)


def test_measurement_noise_belongs_to_the_instance(prior, tiny_darcy):
    """Row b of the observations depends on instance keys[b] only, not on its neighbours."""
    data = tiny_darcy[1]
    truth = load_instances(data, prior, [0, 1, 2, 3])
    both = observe(prior, truth, "u:0.1@0.01", seed=3, keys=[0, 1, 2, 3])
    alone = observe(prior, {k: v[2:3] for k, v in truth.items()}, "u:0.1@0.01", seed=3, keys=[2])
    assert torch.equal(both.values[2:3], alone.values)
    clean = both.operator(truth)
    assert 0.005 < float((both.values - clean).std()) < 0.02           # noise of std 0.01 was drawn
    assert not torch.equal(both.values[0] - clean[0], both.values[1] - clean[1])
    assert derived_seed(3, "noise", 2) != derived_seed(3, "sampling", 2) != derived_seed(4, "sampling", 2)


def test_a_batch_does_not_depend_on_the_others(prior, tiny_darcy):
    """Instances 2, 3 evaluated among four or alone (same batch of the global order): same numbers."""
    data = tiny_darcy[1]
    four = evaluate_dataset(prior, data, "inverse", observe="0.05@0.001", n_test=4, batch=2, sampling=FAST)
    two = evaluate_dataset(prior, data, "inverse", observe="0.05@0.001", indices=[2, 3], batch=2, sampling=FAST)
    assert two.indices == [2, 3]
    for name in ("a", "u"):
        for metric, values in four.metrics[name].items():
            np.testing.assert_array_equal(two.metrics[name][metric], values[2:])
    np.testing.assert_array_equal(two.diagnostics["misfit"], four.diagnostics["misfit"][2:])
    assert "error_rate" in four.metrics["a"] and "error_rate" not in four.metrics["u"]   # a is two-phase


def test_result_formats(prior, tiny_darcy):
    result = evaluate_dataset(prior, tiny_darcy[1], "forward", observe="1.0", n_test=2, batch=1,
                              sampling=Sampling(method="dps", steps=2, samples=2, method_options={"scale": 0.5}))
    d = result.to_dict()
    assert d["n_test"] == 2 and d["indices"] == [0, 1] and d["targets"] == ["u"] and d["observe"] == "a:1.0"
    assert d["solver"] == "dpmpp_2m" and d["method_options"] == {"scale": 0.5}
    assert list(d["metrics"]) == ["u", "a"]                                   # the target first
    rel = d["metrics"]["u"]["rel_l2"]
    assert rel["mean"] == pytest.approx(np.mean(rel["values"])) and rel["std"] == pytest.approx(np.std(rel["values"], ddof=1))
    assert json.loads(json.dumps(d)) == d
    table = result.format_table()
    assert table.splitlines()[0].startswith("forward on 2 instance(s)") and "u (target)" in table


def test_map_batches_keeps_the_global_order():
    class Rank:  # a stand-in state: one process of one
        process_index, num_processes, is_main_process = 0, 1, True

    assert map_batches(lambda lo, hi: (lo, hi), 5, 2, state=Rank()) == [(0, 2), (2, 4), (4, 5)]
    with pytest.raises(ValueError, match="batch must be an integer >= 1"):
        map_batches(lambda lo, hi: None, 5, 0, state=Rank())


def test_concat_posteriors_joins_batches():
    parts = [Posterior({"u": torch.full((b, 2, 3), float(b))},
                       {"misfit": torch.arange(b, dtype=torch.float64), "nfe": 4, "vjp": v, "wall_time": 1.0,
                        "noise_std": torch.tensor([0.1 * b, 0.2]), "method": "dps"})
             for b, v in ((2, 3), (1, 6))]
    joined = concat_posteriors(parts)
    assert joined.samples["u"].shape == (3, 2, 3) and joined.diagnostics["misfit"].tolist() == [0, 1, 0]
    assert joined.diagnostics["nfe"] == 4 and joined.diagnostics["vjp"] == pytest.approx(4.0)   # per chain
    assert joined.diagnostics["wall_time"] == 2.0 and joined.diagnostics["method"] == "dps"
    assert torch.allclose(joined.diagnostics["noise_std"], torch.tensor([[0.2, 0.2], [0.2, 0.2], [0.1, 0.2]]))


def _two_ranks(commands, marker):
    """In each forked rank: a fresh Accelerate state, the commands, and a note of the rank's view."""
    from accelerate import PartialState
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    for argv in commands:
        assert main(argv) == 0
    state = PartialState()
    with open(f"{marker}_{state.process_index}.json", "w") as f:
        json.dump({"num_processes": state.num_processes}, f)


def test_two_processes_give_the_single_process_result(tiny_darcy, tmp_path, capsys):
    from accelerate import debug_launcher

    root, data, prior = tiny_darcy
    common = ["--prior", prior, "--data", data, "--steps", "3", "--samples", "2", "--batch", "1", "--seed", "2",
              "--noise-std", "0.001", "--quiet"]

    def commands(tag):
        return [["evaluate", "--task", "inverse", *common, "--json", str(tmp_path / f"{tag}.json")],
                ["sample", "--observe", "u:0.05", "--index", "0-2", *common, "--out", str(tmp_path / f"{tag}.h5")]]

    for argv in commands("one"):
        assert main(argv) == 0
    debug_launcher(_two_ranks, args=(commands("two"), str(tmp_path / "rank")), num_processes=2)
    views = [json.loads((tmp_path / f"rank_{r}.json").read_text()) for r in (0, 1)]
    assert views == [{"num_processes": 2}] * 2                           # two real ranks ran
    one, two = (json.loads((tmp_path / f"{t}.json").read_text()) for t in ("one", "two"))
    for result in (one, two):
        del result["cost"]["wall_time_per_instance"]
    assert two == one and one["n_test"] == 4
    one, two = read_posterior(tmp_path / "one.h5"), read_posterior(tmp_path / "two.h5")
    for name in ("a", "u"):
        assert torch.equal(two.posterior.samples[name], one.posterior.samples[name])
        assert torch.equal(two.metrics[name]["rel_l2"], one.metrics[name]["rel_l2"])
    assert torch.equal(two.observations.values, one.observations.values)
    assert one.attrs["indices"] == [0, 1, 2] and two.posterior.samples["a"].shape[0] == 3


def test_one_batch_gets_per_instance_noise_std_too():
    part = Posterior({"u": torch.zeros(3, 2, 4)}, {"misfit": torch.zeros(3), "noise_std": torch.tensor([0.1, 0.2]),
                                                   "nfe": 4})
    joined = concat_posteriors([part])
    assert joined.diagnostics["noise_std"].shape == (3, 2) and joined.diagnostics["nfe"] == 4
