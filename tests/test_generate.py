"""``companion.generate``: shards that do not depend on the world size, the batch size or a crash.

One small job (the shipped digits UNet, 40 samples in 4 shards of 10, 4 steps, guidance 2) is drawn once
in this process (the reference) and then again under each condition the issue names; the comparison is on
the shard files' bytes. Every subprocess runs with one thread (as torchrun gives each rank), and so does
the reference: the machine's cores are shared, and more threads than free cores only slow the tests down.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("safetensors")
G = pytest.importorskip("companion.generate")

SRC = str(Path(__file__).resolve().parents[1] / "src")
JOB = dict(model="digits-unet-eps", n=40, shard_size=10, steps=4, guidance=2.0, solver="dpmsolver++")
ARGS = [
    "--model",
    "digits-unet-eps",
    "--num-samples",
    "40",
    "--shard-size",
    "10",
    "--steps",
    "4",
    "--guidance",
    "2",
]


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", **extra}
    env["PYTHONPATH"] = os.pathsep.join([SRC, env.get("PYTHONPATH", "")])
    return env


def _shards(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("shard-*"))}


@pytest.fixture(scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, one_thread) -> Path:
    out = tmp_path_factory.mktemp("gen") / "ref"
    m = G.generate(**JOB, batch_size=7, out=str(out), progress=False)
    assert m["complete"] and len(m["shards"]) == 4
    return out


def _torchrun(out: Path, **env: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += ["-m", "companion.generate", *ARGS, "--batch-size", "64", "--out", str(out)]
    return subprocess.run(cmd, env=_env(**env), capture_output=True, text=True, timeout=120)


def test_torchrun_two_processes_write_the_same_bytes_as_one(reference, tmp_path):
    out = tmp_path / "ws2"
    r = _torchrun(out)
    assert r.returncode == 0, r.stderr[-3000:]
    assert _shards(out) == _shards(reference)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["environment"]["world_size"] == 2
    assert manifest["shards"] == json.loads((reference / "manifest.json").read_text())["shards"]


def test_torchrun_ranks_that_crash_leave_no_partial_shard_and_resume(reference, tmp_path):
    out = tmp_path / "ws2-crash"
    # Each rank dies abruptly as its second shard (shards 2 and 3) sits under a temporary name.
    r = _torchrun(out, COMPANION_GENERATE_CRASH="2")
    assert r.returncode != 0
    assert sorted(_shards(out)) == ["shard-000000.safetensors", "shard-000001.safetensors"]
    r = _torchrun(out)
    assert r.returncode == 0, r.stderr[-3000:]
    assert _shards(out) == _shards(reference)


def test_a_crashed_run_resumes_to_the_same_output(reference, tmp_path):
    out = tmp_path / "crash"
    cmd = [sys.executable, "-m", "companion.generate", *ARGS, "--batch-size", "7", "--out", str(out)]
    r = subprocess.run(
        cmd, env=_env(COMPANION_GENERATE_CRASH="3"), capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 70, r.stderr[-3000:]
    # Killed with its third shard written under a temporary name: two shards, no partial one.
    assert sorted(_shards(out)) == ["shard-000000.safetensors", "shard-000001.safetensors"]
    assert any(p.name.startswith(".tmp-") for p in out.iterdir())
    assert not json.loads((out / "manifest.json").read_text())["complete"]
    m = G.generate(**JOB, batch_size=7, out=str(out), progress=False)
    assert m["complete"]
    assert _shards(out) == _shards(reference)
    assert not any(p.name.startswith(".tmp-") for p in out.iterdir())


def test_a_corrupted_shard_is_detected_and_redone(reference, tmp_path):
    out = tmp_path / "corrupt"
    shutil.copytree(reference, out)
    p = out / "shard-000002.safetensors"
    data = bytearray(p.read_bytes())
    data[-5] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(G.GenerateError, match="corrupted"):
        G.load(out)
    G.generate(**JOB, batch_size=7, out=str(out), progress=False)
    assert _shards(out) == _shards(reference)
    x, y = G.load(out)
    assert x.shape == (40, 1, 8, 8) and torch.equal(y, torch.arange(40) % 10)


def test_batch_size_does_not_change_a_deterministic_solvers_samples(reference, tmp_path):
    G.generate(**JOB, batch_size=64, out=str(tmp_path / "b64"), progress=False)
    assert _shards(tmp_path / "b64") == _shards(reference)


def test_batch_size_does_not_change_a_stochastic_solvers_samples(tmp_path, one_thread):
    job = {**JOB, "solver": "sde-dpmsolver++", "n": 20}
    a = G.generate(**job, batch_size=7, out=str(tmp_path / "b7"), progress=False)
    b = G.generate(**job, batch_size=64, out=str(tmp_path / "b64"), progress=False)
    assert a["shards"] == b["shards"]
    assert _shards(tmp_path / "b7") == _shards(tmp_path / "b64")
    # The solver is stochastic: another seed gives other samples.
    G.generate(**job, seed=1, batch_size=7, out=str(tmp_path / "s1"), progress=False)
    assert not torch.equal(G.load(tmp_path / "s1")[0], G.load(tmp_path / "b7")[0])


def test_samples_match_a_direct_call_of_cp_sample(reference):
    """The command adds no arithmetic of its own: a sample equals cp.sample on its own seed (to float
    rounding, since cp.sample evaluates the network on a batch of another size)."""
    import companion as cp
    from companion.noise import PerSampleNoise

    m = cp.lab.models.load("digits-unet-eps")
    idx = torch.arange(10, 20)
    noise = PerSampleNoise(idx)  # seed 0: sample i's seed is i
    with torch.no_grad():
        x = cp.sample(m.cond(idx % 10, 2.0), noise.randn(1, 8, 8), schedule=m.schedule, steps=4, t_end=1e-3)
    got, _ = G.load(reference)
    torch.testing.assert_close(got[10:20], x, rtol=1e-4, atol=1e-4)


def test_explicit_timesteps_and_dynamic_thresholding_are_those_of_cp_sample(tmp_path, one_thread):
    """--timesteps and --threshold reach cp.sample as timesteps= and x0_fn=dynamic_threshold (chunk = batch,
    so the network sees the same rows as the direct call and the match is exact)."""
    import companion as cp
    from companion.noise import PerSampleNoise
    from companion.parameterization import dynamic_threshold

    ts = (1.0, 0.6, 0.3, 0.1, 0.001)
    out = tmp_path / "ts"
    argv = [*ARGS, "--num-samples", "10", "--timesteps", ",".join(map(str, ts)), "--threshold", "0.9"]
    assert G.main([*argv, "--chunk", "10", "--batch-size", "10", "--no-progress", "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["timesteps"] == list(ts) and manifest["config"]["steps"] == 4
    assert manifest["config"]["threshold"] == [0.9, 1.0] and manifest["config"]["grid"] is None
    m = cp.lab.models.load("digits-unet-eps")
    idx = torch.arange(10)
    noise = PerSampleNoise(idx)
    thr = functools.partial(dynamic_threshold, ratio=0.9, max_val=1.0)
    with torch.no_grad():
        x = cp.sample(
            m.cond(idx % 10, 2.0), noise.randn(1, 8, 8), schedule=m.schedule,
            timesteps=torch.tensor(ts, dtype=torch.float64), x0_fn=thr,
        )  # fmt: skip
        plain = cp.sample(
            m.cond(idx % 10, 2.0), noise.randn(1, 8, 8), schedule=m.schedule,
            timesteps=torch.tensor(ts, dtype=torch.float64),
        )  # fmt: skip
    got, _ = G.load(out)
    torch.testing.assert_close(got, x, rtol=1e-6, atol=1e-6)
    assert (got - plain).abs().max() > 1e-3  # the control: thresholding changed the samples


def test_evaluate_reports_statistics_and_the_digits_frechet_distance(reference):
    pytest.importorskip("sklearn")
    res = G.evaluate(reference)
    assert res["n"] == 40 and res["non_finite"] == 0
    assert res["digits_fd"] > 0 and 0 <= res["digits_accuracy"] <= 1
    assert json.loads((reference / "evaluation.json").read_text())["digits_fd"] == res["digits_fd"]
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # as the chapters set it
    try:
        assert G.evaluate(reference)["digits_fd"] == res["digits_fd"]
    finally:
        torch.set_default_dtype(previous)


@pytest.mark.parametrize(
    "args, words",
    [
        (["--model", "no-such-model", "--num-samples", "4"], "unknown model 'no-such-model'"),
        (["--model", "digits-unet-eps", "--num-samples", "4", "-O", "ordr=2"], "unknown option(s) ['ordr']"),
        (
            ["--model", "digits-unet-eps", "--num-samples", "-3"],
            "n must be an int in [1, 4294967296); got -3",
        ),
        (["--model", "digits-unet-eps", "--num-samples", "4", "--solver", "nope"], "unknown solver 'nope'"),
        (["--model", "digits-unet-eps", "--num-samples", "4", "--labels", "12"], "class index in [0, 10)"),
        (["--model", "moons-mlp-eps", "--num-samples", "4", "--guidance", "3"], "guidance needs labels"),
        (["--model", "digits-unet-eps", "--num-samples", "4", "--timesteps", "1,0.5,0.7"], "timesteps"),
        (["--model", "digits-unet-eps", "--num-samples", "4", "--threshold", "1.5"], "threshold"),
    ],
)
def test_bad_input_exits_with_one_line_and_writes_nothing(args, words, tmp_path, capsys):
    out = tmp_path / "out"
    assert G.main([*args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err, err
    assert not out.exists()


def test_a_folder_holding_another_configuration_is_refused(reference, tmp_path, capsys):
    out = tmp_path / "other"
    shutil.copytree(reference, out)
    before = _shards(out), (out / "manifest.json").read_bytes()
    # The solver's default spelled out is the same configuration: the rerun verifies and has nothing to do.
    assert G.main([*ARGS, "-O", "order=2", "--no-progress", "--out", str(out)]) == 0
    assert _shards(out) == before[0]
    capsys.readouterr()
    before = _shards(out), (out / "manifest.json").read_bytes()
    assert G.main([*ARGS, "--steps", "5", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds another configuration (differs in steps)" in err, err
    assert (_shards(out), (out / "manifest.json").read_bytes()) == before


def test_import_companion_loads_neither_the_command_nor_torch_distributed():
    code = (
        "import sys, torch\nbefore = {m for m in sys.modules if m.startswith('torch.distributed')}\n"
        "import companion\nnew = {m for m in sys.modules if m.startswith('torch.distributed')} - before\n"
        "print(sorted(new), 'companion.generate' in sys.modules)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[] False"


def test_the_console_scripts_work_after_a_non_editable_install(tmp_path):
    """The Colab/pip path: a regular (non-editable) install, run from an empty folder."""
    pytest.importorskip("setuptools")
    root = Path(SRC).parent
    src = tmp_path / "checkout"
    shutil.copytree(root / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, src / name)
    target = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target"]
    r = subprocess.run([*pip, str(target), str(src)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (target / "bin" / "companion.generate").is_file()
    env = {**_env(), "PYTHONPATH": str(target)}
    work = tmp_path / "empty"
    work.mkdir()
    cmd = [str(target / "bin" / "companion-generate"), "--model", "moons-mlp-eps", "--num-samples", "8"]
    r = subprocess.run(
        [*cmd, "--steps", "2", "--out", "out"], cwd=work, env=env, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr[-2000:]
    manifest = json.loads((work / "out" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["config"]["model_fingerprint"].startswith("sha256:")
    code = "import companion.generate as g; print(g.__file__)"
    r = subprocess.run([sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True)
    assert r.stdout.strip().startswith(str(target)), r.stdout


def gaussian_mixture():
    """A ``module:function`` model for the tests: an exact-score 2-D mixture under VP-linear."""
    import companion as cp

    sched = cp.schedules.VPLinear()
    gmm = cp.targets.GaussianMixture(torch.tensor([[-2.0, 0.0], [2.0, 1.0]]), covs=0.1)
    return {"model": gmm.model(sched, prediction="eps"), "schedule": sched, "shape": (2,)}


def test_a_module_function_model_in_float64_with_torch_files(tmp_path):
    """``module:function``, ``--format pt`` (read back with weights_only=True) and float64 give the samples
    of a direct cp.sample call on each sample's seed, for a stochastic solver too."""
    import companion as cp
    from companion.noise import PerSampleNoise

    job = dict(model="test_generate:gaussian_mixture", n=12, shard_size=5, steps=6, dtype="float64")
    for solver in ("unipc", "sde-dpmsolver++"):
        out = tmp_path / solver
        G.generate(**job, solver=solver, format="pt", batch_size=4, out=str(out), progress=False)
        assert sorted(p.suffix for p in out.glob("shard-*")) == [".pt"] * 3
        x, y = G.load(out)
        noise = PerSampleNoise(torch.arange(12))  # seed 0: sample i's seed is i
        spec = gaussian_mixture()
        kw = {"noise": noise} if solver != "unipc" else {}
        want = cp.sample(spec["model"], noise.randn(2, dtype=torch.float64), schedule=spec["schedule"],
                         solver=solver, steps=6, t_end=1e-3, **kw)  # fmt: skip
        torch.testing.assert_close(x, want, rtol=1e-12, atol=1e-12)
        assert x.dtype == torch.float64 and bool((y == -1).all())


def test_a_diffusers_model_folder(tmp_path, one_thread):
    """A folder saved by diffusers (UNet and scheduler) goes through the adapter; its weights' hash is part
    of the configuration."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=8, in_channels=2, out_channels=2, layers_per_block=1, block_out_channels=(8, 16),
        norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
    )  # fmt: skip
    folder = tmp_path / "pipe"
    unet.save_pretrained(folder / "unet")
    diffusers.DDPMScheduler(num_train_timesteps=1000).save_pretrained(folder / "scheduler")
    m = G.generate(model=str(folder), n=6, steps=3, shard_size=6, out=str(tmp_path / "out"), progress=False)
    assert m["config"]["shape"] == [2, 8, 8] and m["config"]["model_fingerprint"].startswith("sha256:")
    x, _ = G.load(tmp_path / "out")
    assert x.shape == (6, 2, 8, 8) and bool(torch.isfinite(x).all())
