"""fresco.distributed on a local Ray cluster with CPU actors and the tiny model: a fleet gives the same files as
sequential renders, a wavefront render is bit-identical to the single-process one, killed actors are replaced and the
result is unchanged, a bad job fails alone. One Ray instance serves the whole module (its start-up is slow)."""
import os
import re
import signal
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="the [ray] extra is not installed")
pytest.importorskip("diffusers")

pytestmark = pytest.mark.slow  # `pytest -m "not slow"`: the quick loop (README)

from fresco.config import RenderConfig  # noqa: E402
from fresco.distributed import load_jobs, render_many, render_wavefront  # noqa: E402
from fresco.video import fixed_keyframes, make_synthetic_clip, plan_batches, read_frames  # noqa: E402
from fresco.video.render import render  # noqa: E402

SETTINGS = dict(sd_path="tiny-random", size="64x64", num_inference_steps=3, num_warmup_steps=1, end_opt_step=2,
                opt_iters=1, device="cpu", output="frames")


@pytest.fixture(scope="module", autouse=True)
def cluster():
    from fresco.distributed.cluster import connect
    connect(num_cpus=4)
    yield
    ray.shutdown()


# one_thread (conftest): Ray's actors run one intra-op thread; the single-process reference must too


def _cfg(clip, out, **kw) -> RenderConfig:
    return RenderConfig(file_path=str(clip), save_path=str(out), prompt="a test", **{**SETTINGS, **kw})


def _outputs(folder: Path) -> dict:
    """Every file a render leaves that carries pixels: keyframes (PNG bytes) and output frames (decoded arrays)."""
    keys = {p.name: p.read_bytes() for p in sorted((folder / "keys").glob("*.png"))}
    frames = [f for f in read_frames(folder / "frames")]
    return {"keys": keys, "frames": np.stack(frames)}


def _same(a: dict, b: dict) -> None:
    assert a["keys"].keys() == b["keys"].keys()
    assert all(a["keys"][k] == b["keys"][k] for k in a["keys"]), "keyframes differ"
    assert a["frames"].shape == b["frames"].shape and np.array_equal(a["frames"], b["frames"]), "frames differ"


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("clips")
    return [make_synthetic_clip(d / f"c{i}", 10 + 2 * i, (64, 64), fps=24, seed=i) for i in range(3)]


def test_load_jobs_forms(tmp_path, clips):
    base = tmp_path / "base.yaml"
    base.write_text("prompt: a test\nsd_path: tiny-random\nnum_inference_steps: 3\n")
    listed = tmp_path / "list.yaml"
    listed.write_text(f"defaults: {{seed: 3}}\njobs:\n  - {{config: base.yaml, file_path: '{clips[0]}', save_path: "
                      f"'{tmp_path / 'a'}', name: first}}\n  - {{prompt: other, file_path: '{clips[1]}', save_path: "
                      f"'{tmp_path / 'b'}'}}\n")
    jobs = load_jobs(listed)
    assert [j.name for j in jobs] == ["first", "job1"]
    assert (jobs[0].config.prompt, jobs[0].config.seed, jobs[1].config.prompt) == ("a test", 3, "other")
    globbed = tmp_path / "glob.yaml"
    globbed.write_text(f"config: base.yaml\ninputs: '{clips[0].parent}/c*'\nsave_root: '{tmp_path / 'outs'}'\n")
    jobs = load_jobs(globbed)
    assert [j.name for j in jobs] == ["c0", "c1", "c2"]
    assert jobs[2].config.save_path == str(tmp_path / "outs" / "c2")


@pytest.mark.parametrize("text,match", [
    ("jobs: []\n", "non-empty list"),
    ("config: {prompt: x}\ninputs: '/nonexistent/*.mp4'\n", "matches no file"),
    ("jobs:\n  - {prompt: x, file_path: a.mp4, save_path: o}\n  - {prompt: y, file_path: b.mp4, save_path: o}\n",
     "same folder"),
    ("job: []\n", "unknown top-level keys"),
    ("config: {prompt: x}\ninputs: '*.yaml'\nsave_root: [a]\n", r"save_root: a folder path \(string\), got \['a'\]"),
    ("jobs:\n  - {name: \"a\\nb\", prompt: x, file_path: a.mp4, save_path: o}\n",
     r"jobs\[0\]\.name: a one-line printable name"),
], ids=["empty", "no-match", "same-output", "top-level", "save-root-list", "name-newline"])
def test_load_jobs_errors(tmp_path, text, match):
    p = tmp_path / "jobs.yaml"
    p.write_text(text)
    with pytest.raises(ValueError, match=match):
        load_jobs(p)


def test_load_jobs_keeps_a_bad_job_as_an_error(tmp_path):
    p = tmp_path / "jobs.yaml"
    p.write_text("jobs:\n  - {prompt: x, file_path: a.mp4, save_path: o, sd_pth: y}\n"
                 "  - {prompt: x, file_path: b.mp4, save_path: p}\n")
    bad, good = load_jobs(p)
    assert bad.config is None and bad.error.startswith("job job0: ") and "sd_pth" in bad.error
    assert good.error is None and good.config.save_path == "p"


def test_fleet_equals_sequential_and_bad_job_fails_alone(tmp_path, clips, one_thread):
    from fresco.distributed import Job
    jobs = [Job(f"c{i}", _cfg(c, tmp_path / "fleet" / f"c{i}", seed=i)) for i, c in enumerate(clips)]
    jobs.append(Job("missing", _cfg(tmp_path / "missing.mp4", tmp_path / "fleet" / "missing")))
    events = []
    results = render_many(jobs, num_actors=2, progress=False, on_event=events.append)
    assert [r.status for r in results] == ["done", "done", "done", "failed"]
    assert "does not exist" in results[3].error and "Traceback" not in results[3].error
    assert len({e["pid"] for e in events if e["kind"] == "start"}) == 2, "the 2 actors served the jobs"
    for i, c in enumerate(clips):
        render(_cfg(c, tmp_path / "seq" / f"c{i}", seed=i), progress=False)
        _same(_outputs(tmp_path / "fleet" / f"c{i}"), _outputs(tmp_path / "seq" / f"c{i}"))


def test_fleet_job_survives_a_killed_actor(tmp_path, clips, one_thread):
    from fresco.distributed import Job
    cfg = _cfg(clips[2], tmp_path / "f", batch_size=3, mininterv=2, maxinterv=2)
    killed = []

    def kill_after_first_batch(ev):
        if ev["kind"] == "batch" and not killed:
            killed.append(ev["pid"])
            os.kill(ev["pid"], signal.SIGKILL)

    res, = render_many([Job("c2", cfg)], num_actors=1, progress=False, on_event=kill_after_first_batch)
    assert killed and res.status == "done" and res.attempts == 2
    render(_cfg(clips[2], tmp_path / "s", batch_size=3, mininterv=2, maxinterv=2), progress=False)
    _same(_outputs(tmp_path / "f"), _outputs(tmp_path / "s"))


LONG = 17  # keys 0, 2, ..., 16 in batches of 3: the published plan gives 6 batches


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory):
    return make_synthetic_clip(tmp_path_factory.mktemp("long") / "long", LONG, (64, 64), fps=24, seed=7)


def test_wavefront_is_bit_identical_to_sequential(tmp_path, long_clip, one_thread, capsys):
    kw = dict(batch_size=3, mininterv=2, maxinterv=2)
    n_batches = len(plan_batches(fixed_keyframes(LONG, 2), 3))
    assert n_batches >= 6
    t = time.perf_counter()
    seq = render(_cfg(long_clip, tmp_path / "seq", **kw), progress=False)
    t_seq = time.perf_counter() - t
    t = time.perf_counter()
    wf = render_wavefront(_cfg(long_clip, tmp_path / "wf", **kw), num_actors=3, progress=False)
    t_wf = time.perf_counter() - t
    assert len(wf.batches) == len(seq.batches) == n_batches
    _same(_outputs(tmp_path / "wf"), _outputs(tmp_path / "seq"))
    with capsys.disabled():
        print(f"\nwavefront: {n_batches} batches, 3 actors: {t_wf:.1f} s vs sequential {t_seq:.1f} s "
              f"(ratio {t_seq / t_wf:.2f}, incl. actor start-up and model loads)")


def test_wavefront_survives_a_killed_actor(tmp_path, long_clip, one_thread):
    kw = dict(batch_size=3, mininterv=2, maxinterv=2)
    pids, killed, retries = {}, [], []

    def kill_one(ev):
        if ev["kind"] == "retry":
            retries.append(ev["key"])
        # when batch 1 is done, the actor that ran batch 0 is running batch 2: kill it mid-batch
        if ev["kind"] == "batch":
            pids[ev["index"]] = ev["pid"]
            if ev["index"] == 1 and not killed:
                killed.append(pids[0])
                os.kill(pids[0], signal.SIGKILL)

    from fresco.distributed.wavefront import WavefrontRunner
    cfg = _cfg(long_clip, tmp_path / "wf", **kw)
    runner = WavefrontRunner(cfg, num_actors=2, on_event=kill_one)
    try:
        render(cfg, runner=runner, progress=False)
    finally:
        runner.close()
    assert killed and len(retries) == 1 and retries[0] >= 2, "the killed actor's batch was re-run on a fresh actor"
    render(_cfg(long_clip, tmp_path / "seq", **kw), progress=False)
    _same(_outputs(tmp_path / "wf"), _outputs(tmp_path / "seq"))


@pytest.mark.parametrize("address,env,says", [
    ("garbage://x", None, "--ray: expected auto, local, ray://HOST[:PORT] or HOST:PORT, got 'garbage://x'"),
    (None, "not an address", "RAY_ADDRESS: expected auto"),
])
def test_connect_checks_the_address_before_ray_sees_it(monkeypatch, address, env, says):
    """Ray looks an unknown scheme up as a Python module and fails in two lines; the address is checked first."""
    import ray
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: pytest.fail("ray.init was called"))
    if env is None:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
    else:
        monkeypatch.setenv("RAY_ADDRESS", env)
    from fresco.distributed.cluster import connect
    with pytest.raises(ValueError, match=re.escape(says)):
        connect(address)
