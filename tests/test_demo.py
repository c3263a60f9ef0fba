"""The README's main job end to end, at a toy size: generate, train, reuse the cache, reconstruct, plot."""

import json
import math

from diffpde import cli


def test_demo_runs_end_to_end_and_reuses_its_cached_prior(tmp_path, capsys):
    args = ["demo", "--resolution", "16", "--n-train", "32", "--train-steps", "3", "--n-test", "2",
            "--samples", "2", "--steps", "3", "--workers", "1", "--cache", str(tmp_path / "cache"),
            "--out", str(tmp_path / "demo.png"), "--json", str(tmp_path / "metrics.json")]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "training a tiny prior" in out
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics) == {"forward", "inverse"}
    for task, wanted in (("forward", "u"), ("inverse", "a")):
        m = metrics[task][wanted]
        assert all(math.isfinite(m[k]) for k in ("rel_l2", "crps", "coverage90"))
        assert metrics[task]["nfe"] == 3
        assert (tmp_path / f"demo_{task}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "error_rate" in metrics["inverse"]["a"]
    # the second run finds the trained prior in the cache
    assert cli.main(args) == 0
    assert "reusing the cached prior" in capsys.readouterr().out
