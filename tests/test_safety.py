"""Issue 10, renderer side: the output folder never costs the user a file (output on the input, user files in the
folder, reserved names, concurrent renders), damaged inputs are reported instead of silently rendered wrong
(truncated file, variable frame rate), and impossible requests fail at once with one line and exit 2 (memory,
YAML, output folder, device, model), Ctrl-C with one line and exit 130. CLI cases run the real `fresco` entry
point in a subprocess with the tiny model at 64x64; the rest call render()/cli.main() with the stand-in stylizer
of test_render."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from fresco import cli
from fresco.video import make_synthetic_clip, preflight, probe, read_frames, synthetic_frame
from fresco.video.outdir import LOCK
from fresco.video.render import render

from test_render import StandInStylizer, _cfg

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--model", "tiny-random", "--size", "64x64", "--steps", "2", "--warmup-steps", "1", "--end-opt-step", "1",
        "--opt-iters", "1", "--s-min", "4", "--s-max", "4", "--batch-size", "4", "-q"]


def fresco(*args, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m fresco.cli ARGS` in a fresh process with this checkout on the path."""
    e = dict(os.environ, PYTHONPATH=str(ROOT))
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "fresco.cli", *map(str, args)], capture_output=True, text=True,
                          env=e, timeout=timeout)


def one_line_error(err: str) -> str:
    """The error line of a CLI run that must have failed with one line and no traceback."""
    assert "Traceback" not in err, err[-3000:]
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("fresco: error:")]
    assert len(lines) == 1, err[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_synthetic_clip(tmp_path_factory.mktemp("safety") / "clip.mp4", 24, (64, 64), fps=Fraction(24))


def _tree(d: Path) -> dict:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------- 1: output = input
def test_output_resolving_to_the_input_is_refused(clip, tmp_path):
    d = tmp_path / "dir"
    d.mkdir()
    src = Path(shutil.copy(clip, d / "video.mp4"))
    before = src.read_bytes()
    out = fresco("render", src, "--prompt", "x", "-o", d, *TINY)
    assert out.returncode == 2
    assert "is the input" in one_line_error(out.stderr)
    assert src.read_bytes() == before and sorted(p.name for p in d.iterdir()) == ["video.mp4"]


@pytest.mark.parametrize("save,output", [("{d}", "frames"), ("{d}/frames", "video.mp4"), ("{d}/frames/o", "v.mp4"),
                                         ("{d}/..", "dir")], ids=["output-is-folder", "save-is-folder",
                                                                  "save-inside", "output-around"])
def test_output_in_or_around_an_image_folder_is_refused(tmp_path, capsys, save, output):
    d = tmp_path / "dir"
    frames = make_synthetic_clip(d / "frames", 4, (64, 64))
    before = _tree(tmp_path)
    rc = cli.main(["render", str(frames), "--prompt", "x", "-o", save.format(d=d), "--output", output, *TINY])
    assert rc == 2
    assert "input" in one_line_error(capsys.readouterr().err)
    assert _tree(tmp_path) == before


# --------------------------------------------------------------------------------------- 2: only our own files
@pytest.mark.slow
def test_user_files_in_the_output_are_never_deleted(clip, tmp_path):
    o = tmp_path / "o"
    (o / "frames").mkdir(parents=True)
    (o / "frames" / "holiday_1.jpg").write_bytes(b"\xff\xd8 my holiday")
    (o / "notes.txt").write_text("mine")
    user = _tree(o)
    out = fresco("render", clip, "--prompt", "x", "-o", o, "--output", "frames", *TINY)
    assert out.returncode == 2
    assert "not written by fresco" in one_line_error(out.stderr) and "--overwrite" in out.stderr
    assert _tree(o) == user  # refused before anything was written: no state, no keys

    # a user's video.mp4 in a folder without a state file
    (o / "video.mp4").write_bytes(b"my video")
    out = fresco("render", clip, "--prompt", "x", "-o", o, *TINY)
    assert out.returncode == 2 and "video.mp4" in one_line_error(out.stderr)
    assert (o / "video.mp4").read_bytes() == b"my video"

    # --overwrite replaces only the paths the render writes; the user's other files stay
    (o / "frames" / "00003.png").write_bytes(b"my own png")
    out = fresco("render", clip, "--prompt", "x", "-o", o, "--output", "frames", "--overwrite", *TINY)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (o / "notes.txt").read_text() == "mine" and (o / "video.mp4").read_bytes() == b"my video"
    assert (o / "frames" / "holiday_1.jpg").read_bytes() == b"\xff\xd8 my holiday"
    pngs = sorted(p.name for p in (o / "frames").glob("*.png"))
    assert pngs == [f"{i:05d}.png" for i in range(24)]
    files = json.loads((o / "state.json").read_text())["files"]
    assert "frames/00003.png" in files and "frames/holiday_1.jpg" not in files and "notes.txt" not in files


def test_overwrite_removes_only_the_manifest(clip, tmp_path):
    o = tmp_path / "o"
    render(_cfg(clip, o, output="frames"), stylizer=StandInStylizer(), progress=False)
    (o / "keys" / "mine.txt").write_text("mine")
    (o / "frames" / "mine.txt").write_text("mine")
    # a shorter render of other settings replaces the old one: its 24 frames go, the user's files stay
    short = make_synthetic_clip(tmp_path / "short.mp4", 10, (64, 64))
    res = render(_cfg(short, o, output="frames", overwrite=True), stylizer=StandInStylizer(), progress=False)
    assert sorted(p.name for p in res.video.glob("*.png")) == [f"{i:05d}.png" for i in range(10)]
    assert (o / "keys" / "mine.txt").exists() and (o / "frames" / "mine.txt").exists()
    assert sorted(int(p.stem) for p in res.keys_dir.glob("*.png")) == res.keys


# ---------------------------------------------------------------------------------- 3: reserved/path-like names
def test_output_dot_is_refused_up_front(clip, tmp_path):
    o = tmp_path / "o"
    out = fresco("render", clip, "--prompt", "x", "-o", o, "--output", ".", *TINY)
    assert out.returncode == 2 and "output:" in one_line_error(out.stderr)
    assert not o.exists() and sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["keys", "latents", "state.json", "preview.png", LOCK, "..", "a/b", "/tmp/x.mp4",
                                  ".hidden", ""])
def test_reserved_and_path_like_outputs_are_refused(clip, tmp_path, capsys, name):
    assert cli.main(["render", str(clip), "--prompt", "x", "-o", str(tmp_path / "o"), "--output", name, *TINY]) == 2
    assert one_line_error(capsys.readouterr().err).startswith("fresco: error: output:")
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------ 4 + 12: lock, Ctrl-C, resume
@pytest.mark.slow
def test_lock_ctrl_c_and_resume(clip, tmp_path):
    # 24 frames, keys every 4, batches of 3: 3 batches (keys 0-8, 12, 16-20); the render is stopped (SIGSTOP) as
    # soon as one is finished, so at least one is left to interrupt
    o = tmp_path / "o"
    args = ["render", clip, "--prompt", "x", "-o", o, "--output", "frames", *TINY, "--batch-size", "3"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    # Ctrl-C's default action in the render, as in a terminal: a test run started in the background (`cmd &` in a
    # script) inherits SIGINT ignored, and the render would then finish instead of stopping
    a = subprocess.Popen([sys.executable, "-m", "fresco.cli", *map(str, args)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and a.poll() is None:
            state = o / "state.json"
            if state.exists() and json.loads(state.read_text())["done"]:
                break
            time.sleep(0.05)
        assert a.poll() is None, a.communicate()[1][-3000:]
        a.send_signal(signal.SIGSTOP)  # holds the lock while the second render tries
        lock = json.loads((o / LOCK).read_text())
        assert lock["pid"] == a.pid
        b = fresco("render", clip, "--prompt", "another prompt", "-o", o, "--output", "frames", *TINY)
        assert b.returncode == 2
        assert f"in use by another render (pid {a.pid} on host" in one_line_error(b.stderr)
        a.send_signal(signal.SIGINT)
        a.send_signal(signal.SIGCONT)
        _, err = a.communicate(timeout=120)
    finally:
        if a.poll() is None:
            a.kill()
    assert a.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    m = re.search(r"^fresco: interrupted after batch (\d+)/(\d+); run the same command to resume$", err, re.M)
    assert m and 1 <= int(m.group(1)) < int(m.group(2)), err[-3000:]
    assert not (o / LOCK).exists()
    state = json.loads((o / "state.json").read_text())
    assert not state["complete"] and len(state["done"]) >= int(m.group(1))

    out = fresco(*args)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resuming in" in out.stderr
    assert len(list((o / "frames").glob("*.png"))) == 24 and json.loads((o / "state.json").read_text())["complete"]


def test_folder_lock_is_exclusive_and_removed_on_release(tmp_path):
    from fresco.video.outdir import FolderLock, OutputLocked
    a = FolderLock(tmp_path).acquire()
    with pytest.raises(OutputLocked, match=f"in use by another render \\(pid {os.getpid()} on host"):
        FolderLock(tmp_path).acquire()
    a.release()
    assert not (tmp_path / LOCK).exists()
    with FolderLock(tmp_path) as b:
        assert b.stale is None and json.loads((tmp_path / LOCK).read_text())["pid"] == os.getpid()


def test_stale_lock_of_a_dead_process_is_taken_over(clip, tmp_path, capsys):
    import socket
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    o = tmp_path / "o"
    o.mkdir()
    (o / LOCK).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": "earlier"}))
    res = render(_cfg(clip, o), stylizer=StandInStylizer(), progress=False)
    assert res.video.exists() and not (o / LOCK).exists()
    assert f"took over the stale lock of pid {dead.pid}" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- 5: truncated file
@pytest.fixture(scope="module")
def truncated(tmp_path_factory):
    """An mp4 whose header (moov first) lists 72 frames, cut to a third of its bytes."""
    import av
    d = tmp_path_factory.mktemp("trunc")
    with av.open(str(d / "full.mp4"), "w", options={"movflags": "faststart"}) as out:
        vs = out.add_stream("libx264", rate=24)
        vs.width = vs.height = 64
        vs.pix_fmt = "yuv420p"
        for i in range(72):
            f = av.VideoFrame.from_ndarray(synthetic_frame(i, (64, 64)), format="rgb24")
            f.pts, f.time_base = i, Fraction(1, 24)
            for p in vs.encode(f):
                out.mux(p)
        for p in vs.encode(None):
            out.mux(p)
    data = (d / "full.mp4").read_bytes()
    (d / "cut.mp4").write_bytes(data[:len(data) // 2])
    n = sum(1 for _ in read_frames(d / "cut.mp4"))
    assert probe(d / "cut.mp4").n_frames == 72 and 2 <= n < 72
    return d / "cut.mp4", n


@pytest.mark.slow
def test_truncated_video_warns_and_strict_refuses(truncated, tmp_path):
    cut, n = truncated
    out = fresco("render", cut, "--prompt", "x", "-o", tmp_path / "s", "--strict", *TINY)
    assert out.returncode == 2
    assert f"promises 72 frames but {n} decode" in one_line_error(out.stderr)
    assert not (tmp_path / "s" / "state.json").exists()

    res = render(_cfg(cut, tmp_path / "o"), stylizer=StandInStylizer(), progress=False)
    assert res.n_frames == n and probe(res.video).n_frames == n
    assert any(f"promises 72 frames but {n} decode" in w for w in res.warnings)
    assert res.warnings == json.loads((tmp_path / "o" / "state.json").read_text())["warnings"]


# ---------------------------------------------------------------------------------------- 6: variable frame rate
def test_variable_frame_rate_keeps_source_timestamps(tmp_path):
    import av
    src = tmp_path / "vfr.mkv"
    times_ms = np.cumsum([0] + [78 if i % 2 == 0 else 42 for i in range(39)])  # header says 24 fps, real ~16.5
    with av.open(str(src), "w") as out:
        vs = out.add_stream("libx264", rate=24)
        vs.width = vs.height = 64
        vs.pix_fmt = "yuv420p"
        vs.codec_context.time_base = Fraction(1, 1000)
        for i, t in enumerate(times_ms):
            f = av.VideoFrame.from_ndarray(synthetic_frame(i, (64, 64)), format="rgb24")
            f.pts, f.time_base = int(t), Fraction(1, 1000)
            for p in vs.encode(f):
                out.mux(p)
        for p in vs.encode(None):
            out.mux(p)
    assert probe(src).fps == 24
    res = render(_cfg(src, tmp_path / "o"), stylizer=StandInStylizer(), progress=False)
    with av.open(str(res.video)) as c:
        s = c.streams.video[0]
        got = [float(f.pts * s.time_base) for f in c.decode(s)]
    assert len(got) == 40
    np.testing.assert_allclose(np.array(got) - got[0], times_ms / 1000, atol=1e-3)
    assert res.fps == pytest.approx(39 / (times_ms[-1] / 1000), rel=1e-6)
    assert any("variable frame rate" in w and "24" in w for w in res.warnings)


# -------------------------------------------------------------------------------------------------- 9: memory
def test_memory_estimate_refuses_huge_sizes(clip, tmp_path):
    out = fresco("render", clip, "--prompt", "x", "-o", tmp_path / "o", *TINY, "--size", "8192x8192")
    err = one_line_error(out.stderr)
    assert out.returncode == 2 and re.search(r"needs about [\d.]+ GiB .* but [\d.]+ GiB is available", err), err
    assert "--force" in err and not (tmp_path / "o").exists()


def test_force_overrides_the_memory_check(clip, tmp_path, monkeypatch):
    monkeypatch.setattr(preflight, "host_available", lambda: 1024)
    with pytest.raises(ValueError, match=r"needs about .* but 0.0 GiB is available"):
        render(_cfg(clip, tmp_path / "o"), stylizer=StandInStylizer(), progress=False)
    assert render(_cfg(clip, tmp_path / "o", force=True), stylizer=StandInStylizer(), progress=False).video.exists()


def test_memory_estimate_grows_with_size_and_batch():
    est = preflight.estimate_memory
    small = est((512, 512), 8, "sd15", 2, True, True)
    assert est((1024, 512), 8, "sd15", 2, True, True).activations == 2 * small.activations
    assert est((512, 512), 16, "sd15", 2, True, True).latents == 2 * small.latents
    assert small.weights == (preflight.SD15_PARAMS + preflight.CONTROLNET_PARAMS) * 2 and small.host == small.frames
    assert est((512, 512), 8, None, 4, False, True).activations == 0


# ---------------------------------------------------------------------------------------------------- 10: YAML
@pytest.mark.parametrize("line,key", [('guidance_scale: "high"', "guidance_scale"), ("guidance_scale: null",
                                      "guidance_scale"), ('cond_scale: "strong"', "cond_scale"),
                                      ("negative_prompt: 5", "negative_prompt"), ('fps: "abc"', "fps"),
                                      ("seed: 1.5", "seed"), ("use_freeu: 3", "use_freeu")])
def test_yaml_types_checked_when_read(clip, tmp_path, capsys, line, key):
    yml = tmp_path / "c.yaml"
    yml.write_text(f"prompt: x\n{line}\n")
    assert cli.main(["render", str(clip), "--config", str(yml), "-o", str(tmp_path / "o"), *TINY]) == 2
    assert one_line_error(capsys.readouterr().err).startswith(f"fresco: error: {key}: expected ")
    assert not (tmp_path / "o").exists()


def test_yaml_syntax_error_names_line_and_column(clip, tmp_path):
    yml = tmp_path / "c.yaml"
    yml.write_text("prompt: x\nseed: [1, 2\nfps: 3\n")
    out = fresco("render", clip, "--config", yml, "-o", tmp_path / "o")
    assert out.returncode == 2
    assert re.search(r"config: '.*c\.yaml' line \d+, column \d+: not valid YAML", one_line_error(out.stderr))


@pytest.mark.parametrize("size", ["64", "64x", "axb", "63x64", "20000x2", "2x99999999999999999998"])
def test_make_clip_bad_size(tmp_path, capsys, size):
    assert cli.main(["make-clip", str(tmp_path / "c.mp4"), "--size", size]) == 2
    assert one_line_error(capsys.readouterr().err).startswith("fresco: error: --size: ")


# -------------------------------------------------------------------------------- 11: output folder, device
@pytest.mark.parametrize("where", ["under-file", "is-file", "no-permission"])
def test_uncreatable_output_folder(clip, tmp_path, capsys, where):
    (tmp_path / "f").write_text("a file")
    if where == "no-permission":
        if os.geteuid() == 0:
            pytest.skip("root may write anywhere")
        (tmp_path / "ro").mkdir(mode=0o500)
    save = {"under-file": tmp_path / "f" / "o", "is-file": tmp_path / "f", "no-permission": tmp_path / "ro" / "o"}
    assert cli.main(["render", str(clip), "--prompt", "x", "-o", str(save[where]), *TINY]) == 2
    assert one_line_error(capsys.readouterr().err).startswith("fresco: error: save_path: ")
    assert (tmp_path / "f").read_text() == "a file"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_cuda_fails_before_loading(clip, tmp_path):
    out = fresco("render", clip, "--prompt", "x", "-o", tmp_path / "o", *TINY, "--device", "cuda")
    assert out.returncode == 2 and "device: 'cuda' but this machine has no usable CUDA" in one_line_error(out.stderr)
    assert not (tmp_path / "o").exists()


def test_bad_device_names(clip, tmp_path, capsys):
    assert cli.main(["render", str(clip), "--prompt", "x", "-o", str(tmp_path / "o"), *TINY, "--device", "gpu"]) == 2
    assert "device: one of 'auto', 'cpu', 'cuda', 'cuda:N'" in one_line_error(capsys.readouterr().err)


# ------------------------------------------------------------------------------------------------- 13: model
@pytest.mark.slow
def test_unreachable_model_fails_at_once(clip, tmp_path):
    hf = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    out = fresco("render", clip, "--prompt", "x", "-o", tmp_path / "o", "--model", "nobody/nothing", env=hf)
    assert out.returncode == 2
    assert "'nobody/nothing' is not in the local Hugging Face cache" in one_line_error(out.stderr)
    assert "HF_HUB_OFFLINE" in out.stderr and not (tmp_path / "o").exists()
    # not offline, hub unreachable (a closed local port): refused without network retries
    hf = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"}
    out = fresco("render", clip, "--prompt", "x", "-o", tmp_path / "o", "--model", "nobody/nothing", env=hf)
    assert out.returncode == 2 and "cannot be reached" in one_line_error(out.stderr)


def test_unreachable_check_is_quick(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", "http://127.0.0.1:9")
    t = time.perf_counter()
    with pytest.raises(ValueError, match="cannot be reached"):
        preflight.check_model_available("nobody/nothing", "unet/config.json", "sd_path")
    assert time.perf_counter() - t < 5


def test_state_written_only_once_the_render_started(clip, tmp_path):
    def broken(cfg):
        raise RuntimeError("model: could not load")

    o = tmp_path / "o"
    with pytest.raises(RuntimeError, match="could not load"):
        render(_cfg(clip, o), make_stylizer=broken, progress=False)
    assert not o.exists()  # created by the render, left empty, removed
    o.mkdir()
    with pytest.raises(RuntimeError, match="could not load"):
        render(_cfg(clip, o), make_stylizer=broken, progress=False)
    assert list(o.iterdir()) == []
    # the corrected rerun (other settings) needs no --overwrite
    assert render(_cfg(clip, o, seed=5), stylizer=StandInStylizer(), progress=False).video.exists()


@pytest.mark.parametrize("text,says", [
    ("prompt: a\nseed: 3\nprompt: b\n", r"line 3, column 1: not valid YAML: the key 'prompt' is given twice"),
    ("a: " + "[" * 5000 + "]" * 5000 + "\n", "nests its values too deeply"),
])
def test_config_yaml_duplicate_keys_and_depth(tmp_path, capsys, text, says):
    """A key given twice would silently override the first (unknown keys are errors, so this must be too); YAML
    nested thousands deep exhausts the parser's recursion."""
    yml = tmp_path / "c.yaml"
    yml.write_text(text)
    assert cli.main(["render", str(tmp_path / "clip.mp4"), "--config", str(yml), "-o", str(tmp_path / "o")]) == 2
    assert re.search(says, one_line_error(capsys.readouterr().err))


def test_config_that_is_a_device(tmp_path, capsys):
    assert cli.main(["render", str(tmp_path / "clip.mp4"), "--config", "/dev/zero", "-o", str(tmp_path / "o")]) == 2
    assert "config: '/dev/zero' is not a regular file" in one_line_error(capsys.readouterr().err)


def test_config_yaml_exponent_floats(tmp_path):
    """PyYAML reads YAML 1.1, where `1e-2` (no dot) is a string, which the number keys then refused; YAML 1.2 and
    Python read it as a float. A quoted value stays a string."""
    from fresco import config as cfgmod
    yml = tmp_path / "c.yaml"
    yml.write_text("ip_scale: 1e0\ndeflicker: 5E-1\nprompt: '1e3'\nseed: 1_0e1\n")
    data = cfgmod.load_yaml(yml)
    assert data == {"ip_scale": 1.0, "deflicker": 0.5, "prompt": "1e3", "seed": 100.0}
    cfg = cfgmod.from_mapping({k: data[k] for k in ("ip_scale", "deflicker", "prompt")})
    assert (cfg.ip_scale, cfg.deflicker, cfg.prompt) == (1.0, 0.5, "1e3")
    yml.write_text("a: 1e\nb: e3\nc: 1e3x\n")
    assert cfgmod.load_yaml(yml) == {"a": "1e", "b": "e3", "c": "1e3x"}
