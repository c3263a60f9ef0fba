"""Dataset generation: seeding, reproducibility, parallel equality, resumption after kill -9, errors.

``Toy`` is a cheap test-only family (also imported by the other tests in this folder): ``a`` is
white noise from ``numpy.random.default_rng(seed)``, ``u`` solves ``(1 - Laplacian) u = a``
periodically by FFT. ``TOY_DELAY`` (seconds per sample) and ``TOY_LOG`` (a file that gets one
line per ``generate`` call) are read from the environment, so slow runs keep the same config.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from diffpde.data import DatasetFileError, generate_dataset, read_fields, read_info, sample_seed
from diffpde.data.generate import SEED_RULE, GenerationError, partial_path
from diffpde.data.hdf5 import FileInUseError
from diffpde.pdes import PDE, Field, Grid, register

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


@register
class Toy(PDE):
    name = "_toy"
    defaults = {"scale": 1.0, "broken": ""}
    min_resolution = 4

    @property
    def fields(self):
        n = self.resolution
        shape = (n, n) if self.parameters["broken"] != "shape" else (n, n + 1)
        return (Field("a", "input", (n, n), ("y", "x")), Field("u", "output", shape, ("y", "x")))

    @property
    def grid(self):
        c = np.arange(self.resolution) / self.resolution
        return Grid("periodic", {"y": c, "x": c})

    def sample_inputs(self, n, seed):
        return {"a": self.parameters["scale"] * np.random.default_rng(seed).standard_normal((n, self.resolution, self.resolution))}

    def solve(self, a):
        k = 2 * np.pi * np.fft.fftfreq(self.resolution, 1.0 / self.resolution)
        return np.fft.ifft2(np.fft.fft2(a) / (1 + k[:, None] ** 2 + k[None, :] ** 2)).real

    def generate(self, seed):
        if os.environ.get("TOY_LOG"):
            with open(os.environ["TOY_LOG"], "a") as log:
                log.write(f"{seed} {os.getpid()}\n")
        if float(os.environ.get("TOY_DELAY", 0)) > 0:
            time.sleep(float(os.environ["TOY_DELAY"]))
        a = self.sample_inputs(1, seed)["a"][0]
        out = {"a": a, "u": self.solve(a)}
        if self.parameters["broken"] == "missing":
            del out["u"]
        if self.parameters["broken"] == "exit":  # a worker dying (killed, out of memory)
            os._exit(1)
        if self.parameters["broken"] == "raise":
            raise ZeroDivisionError("toy failure")
        if self.parameters["broken"] == "nan":
            out["u"][0, 0] = np.nan
        return out

    def residual(self, fields):
        raise NotImplementedError

    def describe(self, fields=None):
        return "toy periodic screened Poisson"


def toy_truth(n: int, resolution: int, seed: int) -> dict[str, np.ndarray]:
    pde = Toy(resolution)
    samples = [pde.generate(sample_seed(seed, i)) for i in range(n)]
    return {k: np.stack([s[k] for s in samples]) for k in ("a", "u")}


def test_sample_seeds_are_distinct_and_fixed():
    seeds = [sample_seed(0, i) for i in range(1000)]
    assert len(set(seeds)) == 1000 and all(0 <= s < 2**63 for s in seeds)
    assert sample_seed(0, 5) == sample_seed(0, 5) != sample_seed(1, 5)
    # the documented rule, written out independently
    child = np.random.SeedSequence(7).spawn(4)[3]
    assert sample_seed(7, 3) == int(child.generate_state(1, np.uint64)[0]) >> 1


def test_generated_content_header_and_stats(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        out = generate_dataset("_toy", 5, tmp_path / "d.h5", resolution=8, seed=3, dtype="float64", progress=False)
        assert torch.get_num_threads() == 2  # the single-thread generation restores the caller's setting
    finally:
        torch.set_num_threads(threads)
    assert out.exists() and not partial_path(out).exists()
    truth = toy_truth(5, 8, 3)
    data = read_fields(out)
    for k in ("a", "u"):
        np.testing.assert_array_equal(data[k], truth[k])
    info = read_info(out)
    assert info.config == {"name": "_toy", "resolution": 8, "parameters": {"scale": 1.0, "broken": ""}}
    assert info.complete and info.n_done == 5 and info.dtype == "float64" and info.seed == 3
    assert [(f.name, f.role, f.dims) for f in info.fields] == [("a", "input", ("y", "x")), ("u", "output", ("y", "x"))]
    np.testing.assert_array_equal(info.grid.coords["x"], np.arange(8) / 8)
    assert info.grid.kind == "periodic"
    for k in ("a", "u"):
        s = info.stats[k]
        assert s["mean"] == pytest.approx(truth[k].mean(), abs=1e-12)
        assert s["std"] == pytest.approx(truth[k].std(), rel=1e-10)
        assert (s["min"], s["max"]) == (truth[k].min(), truth[k].max())
    with h5py.File(out) as f:
        assert f["seeds"][()].tolist() == [sample_seed(3, i) for i in range(5)]
        assert f["fields/u"].chunks == (1, 8, 8)
        assert f.attrs["problem"] == "_toy" and f.attrs["creator"] == "diffpde generate"


def test_float32_default_and_same_seed_gives_byte_identical_files(tmp_path):
    a = generate_dataset("_toy", 4, tmp_path / "a.h5", resolution=8, seed=1, progress=False)
    time.sleep(1.1)  # any stored time stamp would now differ
    b = generate_dataset("_toy", 4, tmp_path / "b.h5", resolution=8, seed=1, progress=False)
    c = generate_dataset("_toy", 4, tmp_path / "c.h5", resolution=8, seed=2, progress=False)
    assert read_fields(a)["u"].dtype == np.float32
    np.testing.assert_array_equal(read_fields(a)["u"], toy_truth(4, 8, 1)["u"].astype(np.float32))
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()
    assert digest(a) == digest(b) != digest(c)


def test_two_workers_give_the_same_file_as_one(tmp_path):
    one = generate_dataset("_toy", 6, tmp_path / "w1.h5", resolution=8, workers=1, progress=False)
    two = generate_dataset("_toy", 6, tmp_path / "w2.h5", resolution=8, workers=2, progress=False)
    assert one.read_bytes() == two.read_bytes()
    with pytest.raises(GenerationError, match=r"_toy: generate\(seed=\d+\) for sample \d failed: ZeroDivisionError: toy"):
        generate_dataset("_toy", 4, tmp_path / "w3.h5", resolution=8, workers=2, parameters={"broken": "raise"},
                         progress=False)
    with pytest.raises(GenerationError, match="_toy: a worker process died"):
        generate_dataset("_toy", 4, tmp_path / "w4.h5", resolution=8, workers=2, parameters={"broken": "exit"},
                         progress=False)


def test_file_bytes_do_not_depend_on_the_order_samples_are_written_in(tmp_path):
    from diffpde.data import hdf5

    fresh = generate_dataset("_toy", 5, tmp_path / "fresh.h5", resolution=8, seed=6, progress=False)
    pde, other = Toy(8), tmp_path / "other.h5"
    hdf5.create_file(other, config=pde.config(), fields=pde.fields, grid=pde.grid, n_samples=5,
                     seeds=[sample_seed(6, i) for i in range(5)], seed=6, seed_rule=SEED_RULE, creator="diffpde generate")
    with hdf5.open_for_writing(other) as f:
        for i in (3, 0, 4, 2, 1):  # as workers might deliver them
            hdf5.write_sample(f, i, pde.generate(sample_seed(6, i)))
        hdf5.finalize(f)
    assert other.read_bytes() == fresh.read_bytes()


def _alive(pid: int) -> bool:
    try:
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


def test_resume_after_kill_9_completes_the_same_dataset(tmp_path):
    out, log = tmp_path / "k.h5", tmp_path / "log"
    script = (f"import sys; sys.path.insert(0, {str(HERE)!r}); import test_generate; from diffpde.cli import main; "
              f"sys.exit(main(['generate', '_toy', '--n', '30', '--resolution', '8', '--seed', '4', '--workers', '2', "
              f"'--out', {str(out)!r}, '--quiet']))")
    env = {**os.environ, "TOY_DELAY": "0.2", "TOY_LOG": str(log)}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, cwd=ROOT)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        lines = log.read_text().splitlines() if log.exists() else []
        if len(lines) >= 8 and len({line.split()[1] for line in lines}) == 2:  # both workers busy
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the generator finished or failed before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    workers = {int(line.split()[1]) for line in log.read_text().splitlines()}
    assert len(workers) == 2 and proc.pid not in workers
    deadline = time.time() + 10  # the workers notice and exit
    while time.time() < deadline and any(_alive(pid) for pid in workers):
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in workers), "worker processes outlived the killed generator"
    partial = partial_path(out)
    assert not out.exists() and partial.exists()
    info = read_info(partial, allow_incomplete=True)
    assert 1 <= info.n_done < 30
    with pytest.raises(DatasetFileError, match="incomplete"):
        read_info(partial)
    # resume in-process: only the missing samples are computed
    log.unlink()
    os.environ["TOY_LOG"] = str(log)
    try:
        generate_dataset("_toy", 30, out, resolution=8, seed=4, progress=False)
    finally:
        del os.environ["TOY_LOG"]
    assert len(log.read_text().splitlines()) == 30 - info.n_done
    fresh = generate_dataset("_toy", 30, tmp_path / "fresh.h5", resolution=8, seed=4, progress=False)
    a, b = read_fields(out), read_fields(fresh)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert read_info(out).stats == read_info(fresh).stats
    assert out.read_bytes() == fresh.read_bytes()


def test_refuses_to_resume_or_overwrite_with_other_settings(tmp_path):
    out = tmp_path / "d.h5"
    generate_dataset("_toy", 3, out, resolution=8, seed=0, progress=False)
    before = out.read_bytes()
    assert generate_dataset("_toy", 3, out, resolution=8, seed=0, progress=False) == out  # complete: nothing to do
    for kwargs, what in [({"seed": 1}, "seed 0 vs 1"), ({"resolution": 16}, "resolution 8 vs 16"),
                         ({"parameters": {"scale": 2.0}}, "parameters"), ({"dtype": "float64"}, "dtype")]:
        kw = {"resolution": 8, "seed": 0, **kwargs}
        with pytest.raises(FileExistsError, match=what):
            generate_dataset("_toy", 3, out, progress=False, **kw)
    with pytest.raises(FileExistsError, match="n 3 vs 4"):
        generate_dataset("_toy", 4, out, resolution=8, progress=False)
    with pytest.raises(FileExistsError, match="problem '_toy' vs 'darcy'"):
        generate_dataset("darcy", 3, out, resolution=8, progress=False)
    assert out.read_bytes() == before
    generate_dataset("_toy", 3, out, resolution=8, seed=1, progress=False, overwrite=True)
    assert read_info(out).seed == 1
    # an unfinished file with other settings is not resumed
    partial = partial_path(tmp_path / "p.h5")
    generate_dataset("_toy", 2, tmp_path / "q.h5", resolution=8, progress=False).rename(partial)
    with pytest.raises(FileExistsError, match="cannot resume .*resolution 8 vs 16"):
        generate_dataset("_toy", 2, tmp_path / "p.h5", resolution=16, progress=False)


def test_a_file_being_written_by_another_process_is_left_alone(tmp_path):
    out = generate_dataset("_toy", 2, tmp_path / "d.h5", resolution=8, progress=False)
    partial = out.rename(partial_path(out))
    holder = subprocess.Popen([sys.executable, "-c", f"import h5py, time; f = h5py.File({str(partial)!r}, 'r+'); "
                               "print('open', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        for overwrite in (False, True):
            with pytest.raises(FileInUseError, match="being written by another process"):
                generate_dataset("_toy", 2, out, resolution=8, progress=False, overwrite=overwrite)
        assert partial.exists()
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("kwargs, error, message", [
    ({"problem": "nope"}, KeyError, "unknown PDE problem 'nope'"),
    ({"parameters": {"viscosity": 1.0}}, ValueError, "_toy: unknown parameter.*viscosity"),
    ({"resolution": 2}, ValueError, "_toy: resolution 2 is too small"),
    ({"n": 0}, ValueError, "_toy: the number of samples"),
    ({"workers": 0}, ValueError, "_toy: workers"),
    ({"dtype": "float16"}, ValueError, "_toy: dtype"),
    ({"parameters": {"broken": "missing"}}, ValueError, r"_toy: generate\(seed=\d+\) for sample 0 .*missing \['u'\]"),
    ({"parameters": {"broken": "shape"}}, ValueError, "field 'u' has shape"),
    ({"parameters": {"broken": "nan"}}, ValueError, "_toy: .*field 'u' contains NaN"),
    ({"parameters": {"broken": "raise"}}, GenerationError, r"_toy: generate\(seed=\d+\) for sample 0 failed: ZeroDivisionError"),
])
def test_bad_input_is_named(tmp_path, kwargs, error, message):
    args = {"problem": "_toy", "n": 2, "resolution": 8, **kwargs}
    with pytest.raises(error, match=message):
        generate_dataset(args.pop("problem"), args.pop("n"), tmp_path / "x.h5", progress=False, **args)
    assert not (tmp_path / "x.h5").exists()


def test_foreign_and_truncated_files_are_refused(tmp_path):
    junk = tmp_path / "junk.h5"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(DatasetFileError, match="not a readable HDF5 file"):
        read_info(junk)
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["u"] = np.zeros(3)
    with pytest.raises(DatasetFileError, match="not a diffpde dataset"):
        read_info(foreign)
    with h5py.File(tmp_path / "header.h5", "w") as f:
        f.attrs["format"] = "diffpde.fields"
    with pytest.raises(DatasetFileError, match="header attribute 'format_version' is missing"):
        read_info(tmp_path / "header.h5")
    good = generate_dataset("_toy", 3, tmp_path / "good.h5", resolution=8, progress=False)
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(DatasetFileError, match="not a readable HDF5 file"):
        read_fields(truncated)
    with h5py.File(good, "r+") as f:
        del f["fields/u"]
    with pytest.raises(DatasetFileError, match="field 'u' is listed in the header but"):
        read_info(good)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_info(tmp_path / "absent.h5")
    # refusing to generate over a foreign file
    with pytest.raises(FileExistsError, match="not a diffpde dataset"):
        generate_dataset("_toy", 3, foreign, resolution=8, progress=False)


def test_darcy_generation_is_reproducible_and_parallel_safe(tmp_path):
    pytest.importorskip("diffpde.pdes.darcy")
    a = generate_dataset("darcy", 3, tmp_path / "a.h5", resolution=16, seed=5, workers=1, progress=False)
    b = generate_dataset("darcy", 3, tmp_path / "b.h5", resolution=16, seed=5, workers=2, progress=False)
    assert a.read_bytes() == b.read_bytes()
    info = read_info(a)
    assert info.field_names[:2] == ("a", "u") and info.problem == "darcy"
    from diffpde.pdes import get

    pde = get("darcy", 16)
    truth = pde.generate(sample_seed(5, 2))
    data = read_fields(a, indices=[2])
    for name in info.field_names:
        np.testing.assert_array_equal(data[name][0], truth[name].astype(np.float32))
    # the stored (float32) data satisfies the family's own residual (forcing f = 1) at its resolution,
    # and a 1% error in u would not
    batch = {k: torch.from_numpy(v.astype(np.float64)) for k, v in read_fields(a).items()}
    assert pde.residual_norm(batch).max() < 1e-4
    assert pde.residual_norm({**batch, "u": 1.01 * batch["u"]}).min() > 1e-3


def test_shards_combine_into_the_file_of_one_run(tmp_path):
    from diffpde.data.generate import combine_shards, shard_indices, shard_path

    one = generate_dataset("_toy", 7, tmp_path / "one.h5", resolution=8, seed=4, progress=False)
    out = tmp_path / "sharded.h5"
    blocks = [list(shard_indices(7, k, 3)) for k in range(3)]
    assert blocks == [[0, 1], [2, 3], [4, 5, 6]]
    for k in (2, 0, 1):  # in any order, as separate machines would finish
        path = generate_dataset("_toy", 7, out, resolution=8, seed=4, shard=(k, 3), progress=False)
        assert path == shard_path(out, k, 3) and path.exists() and not out.exists()
        assert read_info(path, allow_incomplete=True).n_done == len(blocks[k])
    # running a finished shard again does nothing
    assert generate_dataset("_toy", 7, out, resolution=8, seed=4, shard=(1, 3), progress=False) == shard_path(out, 1, 3)
    combine_shards(out, 3, progress=False)
    assert out.read_bytes() == one.read_bytes()
    assert not any(shard_path(out, k, 3).exists() for k in range(3))


def test_combining_refuses_missing_or_foreign_shards(tmp_path):
    from diffpde.data.generate import combine_shards, shard_path

    out = tmp_path / "d.h5"
    generate_dataset("_toy", 4, out, resolution=8, seed=1, shard=(0, 2), progress=False)
    with pytest.raises(FileNotFoundError, match=r"missing shard file\(s\) .*d\.h5\.shard-1-of-2"):
        combine_shards(out, 2, progress=False)
    # shard 1 made with another seed belongs to another dataset
    generate_dataset("_toy", 4, tmp_path / "x.h5", resolution=8, seed=2, shard=(1, 2), progress=False)
    shard_path(tmp_path / "x.h5", 1, 2).rename(shard_path(out, 1, 2))
    with pytest.raises(ValueError, match="belongs to another generation.*seed 2 vs 1"):
        combine_shards(out, 2, progress=False)
    with pytest.raises(ValueError, match=r"shard index must be in \[0, 1\]"):
        generate_dataset("_toy", 4, out, resolution=8, shard=(2, 2), progress=False)
    with pytest.raises(ValueError, match="leave some shards empty"):
        generate_dataset("_toy", 4, out, resolution=8, shard=(0, 5), progress=False)
    assert not out.exists()


def test_generate_under_accelerate_launch_with_two_processes(tmp_path):
    """Two gloo ranks each write a shard and the main process combines them: the same bytes as one run."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "diffpde.cli",
           "generate", "darcy", "--n", "5", "--resolution", "16", "--seed", "3", "--quiet", "--out",
           str(tmp_path / "two.h5")]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    one = generate_dataset("darcy", 5, tmp_path / "one.h5", resolution=16, seed=3, progress=False)
    assert (tmp_path / "two.h5").read_bytes() == one.read_bytes()
    assert not list(tmp_path.glob("two.h5.shard-*"))


# -- captions ----------------------------------------------------------------------------------------


def test_captions_are_seeded_per_sample_and_survive_shards_and_resumption(tmp_path):
    from diffpde.data.generate import caption_rng, combine_shards, shard_path
    from diffpde.data.hdf5 import read_captions
    from diffpde.pdes import get

    one = generate_dataset("darcy", 5, tmp_path / "one.h5", resolution=16, seed=2, progress=False)
    assert read_info(one).phrasings == 4  # the default for a family that writes captions
    with h5py.File(one) as f:
        assert f["captions"].shape == (5, 4) and f["captions"].attrs["phrasings"] == 4
        assert h5py.check_string_dtype(f["captions"].dtype).encoding == "utf-8"
        stored = f["captions"][3].astype(str).tolist()
    # written from the stored (float32) fields with the sample's own generator
    pde, fields = get("darcy", 16), read_fields(one, indices=[3])
    assert stored == pde.caption({k: v[0] for k, v in fields.items()}, caption_rng(sample_seed(2, 3), 3), 4)
    assert read_captions(one, 3) == stored and len(read_captions(one)) == 5 and len(set(stored)) == 4
    # shards in any order, combined: the same bytes, captions included
    out = tmp_path / "sharded.h5"
    for k in (1, 0, 2):
        generate_dataset("darcy", 5, out, resolution=16, seed=2, shard=(k, 3), progress=False)
    with h5py.File(shard_path(out, 1, 3)) as f:
        assert "captions" not in f  # shards hold none; combining writes them
    combine_shards(out, 3, progress=False)
    assert out.read_bytes() == one.read_bytes()
    # an interrupted generation (some samples done) resumes to the same bytes
    resumed = tmp_path / "resumed.h5"
    generate_dataset("darcy", 5, resumed, resolution=16, seed=2, shard=(0, 2), progress=False).rename(
        partial_path(resumed))
    generate_dataset("darcy", 5, resumed, resolution=16, seed=2, progress=False)
    assert resumed.read_bytes() == one.read_bytes()


def test_captions_added_later_give_the_file_generate_writes(tmp_path):
    from diffpde.data.generate import add_caption_parser, add_captions, run_caption
    from diffpde.data.hdf5 import read_captions

    with_captions = generate_dataset("burgers", 3, tmp_path / "a.h5", resolution=16, seed=1, progress=False,
                                     parameters={"nt": 9})
    bare = generate_dataset("burgers", 3, tmp_path / "b.h5", resolution=16, seed=1, progress=False,
                            parameters={"nt": 9}, captions=0)
    assert read_info(bare).phrasings == 0
    with pytest.raises(DatasetFileError, match="has no captions; add them with `diffpde caption"):
        read_captions(bare, 0)
    # asking a complete file for other captions names the way to add them, and changes nothing
    with pytest.raises(FileExistsError, match="captions: 0 phrasings per sample vs 4 .*diffpde caption"):
        generate_dataset("burgers", 3, bare, resolution=16, seed=1, progress=False, parameters={"nt": 9})
    parser = argparse.ArgumentParser()
    add_caption_parser(parser.add_subparsers())
    assert run_caption(parser.parse_args(["caption", str(bare), "--quiet"])) == 0
    assert bare.read_bytes() == with_captions.read_bytes()
    assert not list(tmp_path.glob("*.captioning"))
    with pytest.raises(FileExistsError, match="already has captions .*overwrite"):
        add_captions(bare, 2, progress=False)
    add_captions(bare, 2, overwrite=True, progress=False)
    assert read_info(bare).phrasings == 2 and read_captions(bare, 2) == read_captions(with_captions, 2)[:2]
    with pytest.raises(IndexError, match="sample index 3 out of range"):
        read_captions(bare, 3)
    # the command line takes --captions K
    from diffpde.cli import main

    assert main(["generate", "burgers", "--n", "2", "--resolution", "16", "--param", "nt=9", "--captions", "1",
                 "--quiet", "--out", str(tmp_path / "c.h5")]) == 0
    assert read_info(tmp_path / "c.h5").phrasings == 1 and len(read_captions(tmp_path / "c.h5", 1)) == 1


def test_caption_requests_a_family_cannot_meet_are_named(tmp_path):
    from diffpde.data.generate import add_captions

    with pytest.raises(ValueError, match="_toy: this family writes no captions"):
        generate_dataset("_toy", 2, tmp_path / "t.h5", resolution=8, captions=2, progress=False)
    with pytest.raises(ValueError, match="captions .* must be an integer >= 0"):
        generate_dataset("darcy", 2, tmp_path / "d.h5", resolution=16, captions=-1, progress=False)
    toy = generate_dataset("_toy", 2, tmp_path / "t.h5", resolution=8, progress=False)
    assert read_info(toy).phrasings == 0  # no captions by default for a family without them
    with pytest.raises(ValueError, match="_toy: this family writes no captions"):
        add_captions(toy, 2, progress=False)
    assert not (tmp_path / "d.h5").exists() and not list(tmp_path.glob("*.captioning"))
