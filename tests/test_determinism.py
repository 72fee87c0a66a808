"""Run-to-run determinism (README, "Reproducibility"): the same inputs, seed and thread count give the same bytes.

The patch op (C++, and its Triton launcher under the interpreter), the mp4 writer, and whole renders (mp4 and PNG
frames, patch and flow propagation) run several times, in one process and in separate processes, at 1 and 2 threads.
Between runs in one process the heap is stirred (blocks filled with run-dependent bytes, then freed), so code that
reads memory it never wrote shows as different bytes instead of passing by luck. Also the `threads` setting: the
render uses it, a resume keeps the count the state file recorded, and a Ray render equals a local one at the same
count."""
import hashlib
import json
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

import fresco_kernels as fk
from fresco.video import make_synthetic_clip, read_frames, synthetic_frame
from fresco.video.io import VideoWriter, _cpu_has_avx512, x264_options
from fresco.video.render import render
from test_render import StandInStylizer, _cfg

ROOT = Path(__file__).resolve().parents[1]
RUNS = 3


def _stir_heap(run: int) -> None:
    """Allocate and free blocks of assorted sizes filled with run-dependent bytes."""
    sizes = np.random.default_rng(run).integers(64, 1 << 18, 40)
    blocks = [np.full(int(n), (37 * run + 11) % 256, np.uint8) for n in sizes]
    del blocks


def _digest(path: Path) -> str:
    """SHA-256 of a file's bytes, or of a folder's files (names and bytes, sorted)."""
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    h = hashlib.sha256()
    for f in sorted(path.iterdir()):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def _patch_case(h=24, w=28):
    g = torch.Generator().manual_seed(4)
    guides = (torch.rand(4, h, w, generator=g) * 255).round().to(torch.uint8)
    style = (255 - guides[:3]).contiguous()
    target = (torch.rand(4, h - 2, w + 1, generator=g) * 255).round().to(torch.uint8)
    return style, guides, target


def test_patch_op_same_bytes_every_run_and_thread_count():
    # integer distances and Jacobi passes: the same bytes at any thread count, not only at the same one
    style, guides, target = _patch_case()
    outs = []
    before = torch.get_num_threads()
    try:
        for run in range(2 * RUNS):
            torch.set_num_threads(1 + run % 2)
            _stir_heap(run)
            out = fk.patch_synthesis(style, guides, target, [3, 3, 3, 1], patch_size=3, levels=2, em_iters=2,
                                     pm_iters=1, uniformity=100, seed=5, backend="fused")
            outs.append([t.clone() for t in out])
    finally:
        torch.set_num_threads(before)
    assert fk.cpu_impls()["patch_synthesis"] == "cpp"
    for o in outs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(o, outs[0]))


def test_patch_triton_launcher_same_bytes_every_run():
    if os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
        pytest.skip("the Triton launcher on CPU needs TRITON_INTERPRET=1 (tests/conftest.py sets it)")
    from fresco_kernels.patch_synthesis.triton import patch_synthesis_fwd
    style, guides, target = _patch_case(9, 10)
    g = torch.Generator().manual_seed(5)
    init = torch.stack([torch.randint(0, 9, (7, 11), generator=g), torch.randint(0, 10, (7, 11), generator=g)]).int()
    args = (style[:1].contiguous(), guides[:2].contiguous(), target[:2].contiguous(),
            torch.tensor([2, 1], dtype=torch.int32), 2, init, 3, 1, 1, 1, 2, 50, 7)
    outs = []
    for run in range(RUNS):
        _stir_heap(run)
        outs.append([t.clone() for t in patch_synthesis_fwd(*args)])
    for o in outs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(o, outs[0]))


def test_x264_assembly_capped_on_avx512():
    opts = x264_options(18)
    assert opts["crf"] == "18"
    assert ("x264-params" in opts) == _cpu_has_avx512()


def test_mp4_writer_same_bytes_every_run(tmp_path):
    # 64 px wide: 4 macroblocks a row, which x264's AVX-512 macroblock-tree pass got wrong (fresco.video.io); this
    # content made 3 different files out of 4 runs there before the assembly was capped
    frames = [synthetic_frame(4 * i, (64, 64)) for i in range(24)]
    digests = set()
    for run in range(4):
        out = tmp_path / f"v{run}.mp4"
        with VideoWriter(out, 20, (64, 64)) as w:
            for f in frames:
                _stir_heap(run * 100 + len(digests))
                w.write(f)
        digests.add(_digest(out))
    assert len(digests) == 1


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_synthetic_clip(tmp_path_factory.mktemp("clip") / "clip.mp4", 9, (64, 64), fps=Fraction(12))


def _renders(clip, tmp_path, method, output, runs=RUNS, **kw):
    digests = set()
    for run in range(runs):
        _stir_heap(run)
        cfg = _cfg(clip, tmp_path / f"{output}{run}", propagation=method, output=output, mininterv=4, maxinterv=4,
                   **kw)
        res = render(cfg, stylizer=StandInStylizer(keep=False), progress=False)
        digests.add(_digest(res.video))
    return digests


def test_flow_render_same_bytes_in_one_process(clip, tmp_path, threads):
    assert len(_renders(clip, tmp_path, "flow", "video.mp4")) == 1
    assert len(_renders(clip, tmp_path, "flow", "frames", runs=2)) == 1


@pytest.mark.slow
def test_patch_render_same_bytes_in_one_process(clip, tmp_path, threads):
    assert len(_renders(clip, tmp_path, "patch", "video.mp4")) == 1
    assert len(_renders(clip, tmp_path, "patch", "frames", runs=2)) == 1


def _cli_render(clip: Path, out: Path, *args: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "fresco.cli", "render", str(clip), "-o", str(out), "--model", "tiny-random",
           "--prompt", "a test", "--size", "64x64", "--steps", "2", "--warmup-steps", "0", "--interval", "4",
           "--opt-iters", "1", *args]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return _digest(out / ("frames" if "frames" in args else "video.mp4"))


@pytest.mark.slow
@pytest.mark.parametrize("method,threads_arg,output", [("patch", "2", "video.mp4"), ("flow", "1", "video.mp4"),
                                                       ("patch", "1", "frames")])
def test_cli_render_same_bytes_in_separate_processes(clip, tmp_path, method, threads_arg, output):
    args = ["--propagation", method, "--threads", threads_arg, "--output", output]
    a = _cli_render(clip, tmp_path / "a", *args)
    b = _cli_render(clip, tmp_path / "b", *args)
    assert a == b
    state = json.loads((tmp_path / "a" / "state.json").read_text())
    assert state["threads"] == int(threads_arg)


KILL_CHILD = """
import sys, time
sys.path.insert(0, {tests!r})
from test_render import StandInStylizer, _cfg
from fresco.video.render import render
cfg = _cfg({clip!r}, {out!r}, propagation="flow", mininterv=4, maxinterv=4, threads=1)
render(cfg, stylizer=StandInStylizer(keep=False), progress=False,
       on_frame=lambda done, total: print(f"frame {{done}}", flush=True) or time.sleep(0.3))
"""


@pytest.mark.slow
def test_sigkill_during_propagation_resumes_to_the_same_bytes(clip, tmp_path):
    import signal
    kw = dict(propagation="flow", mininterv=4, maxinterv=4, threads=1)
    whole = render(_cfg(clip, tmp_path / "whole", **kw), stylizer=StandInStylizer(keep=False), progress=False)
    code = KILL_CHILD.format(tests=str(ROOT / "tests"), clip=str(clip), out=str(tmp_path / "killed"))
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                             env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        for line in child.stdout:
            if line.startswith("frame 3"):  # propagating, the mp4 half written
                child.send_signal(signal.SIGKILL)
                break
    finally:
        child.wait(timeout=120)
    assert child.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed" / "video.mp4").exists()
    res = render(_cfg(clip, tmp_path / "killed", **kw), stylizer=StandInStylizer(keep=False), progress=False)
    assert _digest(res.video) == _digest(whole.video)


class ThreadSpy(StandInStylizer):
    """Records the intra-op thread count each batch ran with."""

    def __init__(self):
        super().__init__(keep=False)
        self.seen = []

    def __call__(self, frames, anchor_latents=None, on_anchor_record=None, frame_indices=None):
        self.seen.append(torch.get_num_threads())
        return super().__call__(frames, anchor_latents, on_anchor_record, frame_indices)


def test_threads_setting_used_recorded_and_kept_on_resume(clip, tmp_path, capfd):
    before = torch.get_num_threads()
    kw = dict(propagation="flow", mininterv=2, maxinterv=2, batch_size=3)
    spy = ThreadSpy()
    whole = render(_cfg(clip, tmp_path / "whole", threads=1, **kw), stylizer=spy, progress=False)
    assert set(spy.seen) == {1} and torch.get_num_threads() == before
    assert json.loads((tmp_path / "whole" / "state.json").read_text())["threads"] == 1
    # killed after the first batch, resumed with another count: the recorded one wins
    spy = ThreadSpy()
    assert render(_cfg(clip, tmp_path / "part", threads=1, **kw), stylizer=spy, stop_after=1, progress=False) is None
    capfd.readouterr()
    spy, handed = ThreadSpy(), []
    res = render(_cfg(clip, tmp_path / "part", threads=2, **kw), make_stylizer=lambda c: handed.append(c) or spy,
                 progress=False)
    assert spy.seen and set(spy.seen) == {1}
    assert [c.settings.threads for c in handed] == [1]  # what the stylizer (the pipeline's settings) is given
    assert "resuming with the 1 thread(s) this render started with, not 2" in capfd.readouterr().err
    assert _digest(res.video) == _digest(whole.video)
    assert torch.get_num_threads() == before


def test_threads_bad_value_names_the_setting(clip, tmp_path):
    with pytest.raises(ValueError, match=r"threads: must be in \[1, 1024\]"):
        render(_cfg(clip, tmp_path / "o", threads=0), stylizer=StandInStylizer(), progress=False)


@pytest.mark.slow
def test_ray_render_equals_local_render_at_same_threads(tmp_path):
    ray = pytest.importorskip("ray", reason="the [ray] extra is not installed")
    pytest.importorskip("diffusers")
    from fresco.config import RenderConfig
    from fresco.distributed import render_wavefront
    from fresco.distributed.cluster import connect
    clip = make_synthetic_clip(tmp_path / "clip", 9, (64, 64), fps=24, seed=3)
    settings = dict(file_path=str(clip), prompt="a test", sd_path="tiny-random", size="64x64", num_inference_steps=2,
                    num_warmup_steps=0, end_opt_step=1, opt_iters=1, device="cpu", output="frames", batch_size=3,
                    mininterv=2, maxinterv=2, threads=2)
    local = render(RenderConfig(save_path=str(tmp_path / "local"), **settings), progress=False)
    connect(num_cpus=2)
    try:
        wf = render_wavefront(RenderConfig(save_path=str(tmp_path / "ray"), **settings), num_actors=2,
                              progress=False)
    finally:
        ray.shutdown()
    assert _digest(wf.keys_dir) == _digest(local.keys_dir)
    assert _digest(wf.video) == _digest(local.video)
