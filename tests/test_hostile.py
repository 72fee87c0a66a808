"""Issue 23: hostile input through the real entry points (`fresco.cli.main` for render and render-many, the web UI
over HTTP with gradio's client). In every test a decoy folder beside the output root holds files a hostile state
file, lock, link or typed path aims at; it is hashed before and after and must not change. The UI tests use the
render tests' stand-in stylizer (except the preflight test, which needs the UI's own tiny-model pipeline); the CLI
renders use the tiny random model at 64x64."""
import hashlib
import json
import os
import socket
import threading
from fractions import Fraction
from pathlib import Path

import cv2
import pytest

from fresco import cli
from fresco.video import make_synthetic_clip, preflight, synthetic_frame
from fresco.video.outdir import LOCK

TINY = ["--model", "tiny-random", "--size", "64x64", "--steps", "2", "--warmup-steps", "1", "--end-opt-step", "1",
        "--opt-iters", "1", "--s-min", "4", "--s-max", "4", "--batch-size", "4", "-q"]


def snapshot(d: Path) -> dict:
    """Every entry under `d` (links not followed): file -> sha256, link -> its target, folder -> 'dir'."""
    out = {}
    for p in sorted(d.rglob("*")):
        rel = str(p.relative_to(d))
        out[rel] = ("link", os.readlink(p)) if p.is_symlink() else "dir" if p.is_dir() else \
            hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_synthetic_clip(tmp_path_factory.mktemp("hostile") / "clip.mp4", 12, (64, 64), fps=Fraction(24))


@pytest.fixture
def decoy(tmp_path):
    """A folder of the user's that no render may touch; checked by hash after the test."""
    d = tmp_path / "decoy"
    (d / "keys").mkdir(parents=True)
    (d / "thesis.docx").write_bytes(b"four years of work")
    (d / "secret.txt").write_text("not for the web")
    cv2.imwrite(str(d / "photo.png"), synthetic_frame(0, (64, 64)))
    before = snapshot(d)
    yield d
    assert snapshot(d) == before, "the decoy folder outside the output root changed"


def run(capsys, *argv) -> tuple[int, str]:
    """`fresco ARGV` in this process: (exit code, stderr)."""
    rc = cli.main([str(a) for a in argv])
    return rc, capsys.readouterr().err


def one_line(err: str) -> str:
    assert "Traceback" not in err, err[-3000:]
    lines = [ln for ln in err.strip().splitlines() if ln.startswith("fresco: error:")]
    assert len(lines) == 1, err[-3000:]
    return lines[0]


# ------------------------------------------------------------------------------ the manifest is untrusted input
def _state(o: Path, files: list, done: list) -> None:
    o.mkdir(parents=True, exist_ok=True)
    (o / "state.json").write_text(json.dumps({"fingerprint": "0" * 16, "n_frames": 12, "size": [64, 64], "fps": "24",
                                              "keys": [0, 4, 8, 11], "batches": [[[0, 4, 8, 11], 0]], "done": done,
                                              "complete": False, "warnings": [], "files": files}))


@pytest.mark.parametrize("mode", ["plain", "overwrite", "no-resume"])
@pytest.mark.parametrize("entry", ["dotdot", "absolute", "link"])
def test_manifest_entries_outside_the_folder_refuse_it(clip, tmp_path, decoy, capsys, entry, mode):
    o = tmp_path / "o"
    o.mkdir()
    if entry == "link":
        (o / "shelf").symlink_to(decoy)
    rel = {"dotdot": "../decoy/thesis.docx", "absolute": str(decoy / "thesis.docx"), "link": "shelf/thesis.docx"}
    # a plain render replaces an unfinished render of other settings; a finished batch needs a flag
    _state(o, ["keys/00004.png", rel[entry]], done=[] if mode == "plain" else [0])
    flags = {"plain": [], "overwrite": ["--overwrite"], "no-resume": ["--no-resume"]}[mode]
    rc, err = run(capsys, "render", clip, "--prompt", "x", "-o", o, *flags, *TINY)
    assert rc == 2
    line = one_line(err)
    assert rel[entry] in line and "refuses this folder" in line
    assert (o / "state.json").exists()


def test_only_files_proven_by_hash_are_deleted(clip, tmp_path, decoy, capsys):
    """A manifest naming the user's video.mp4 (a generated name, but no recorded hash) and notes.txt: --no-resume
    deletes neither, and the render refuses to replace the video it cannot prove it wrote."""
    o = tmp_path / "o"
    _state(o, ["video.mp4", "notes.txt"], done=[0])
    (o / "video.mp4").write_bytes(b"my video")
    (o / "notes.txt").write_text("mine")
    rc, err = run(capsys, "render", clip, "--prompt", "x", "-o", o, "--no-resume", *TINY)
    assert rc == 2 and "not written by fresco" in one_line(err)
    assert (o / "video.mp4").read_bytes() == b"my video" and (o / "notes.txt").read_text() == "mine"


@pytest.mark.slow
def test_a_render_proves_and_replaces_its_own_files(clip, tmp_path, decoy, capsys):
    o = tmp_path / "o"
    rc, err = run(capsys, "render", clip, "--prompt", "x", "-o", o, *TINY)
    assert rc == 0, err[-3000:]
    state = json.loads((o / "state.json").read_text())
    assert set(state["hashes"]) == set(state["files"])
    (o / "notes.txt").write_text("mine")
    rc, err = run(capsys, "render", clip, "--prompt", "y", "-o", o, "--overwrite", *TINY)
    assert rc == 0, err[-3000:]
    assert (o / "notes.txt").read_text() == "mine" and (o / "video.mp4").is_file()


# --------------------------------------------------------------------------------------------------------- lock
@pytest.mark.parametrize("kind", ["link", "user-file", "folder"])
def test_a_foreign_lock_file_is_an_error_and_left_alone(clip, tmp_path, decoy, capsys, kind):
    o = tmp_path / "o"
    o.mkdir()
    if kind == "link":
        (o / LOCK).symlink_to(decoy / "thesis.docx")
    elif kind == "user-file":
        (o / LOCK).write_text("my own notes, named oddly")
    else:
        (o / LOCK).mkdir()
    before = snapshot(o)
    rc, err = run(capsys, "render", clip, "--prompt", "x", "-o", o, *TINY)
    assert rc == 2
    line = one_line(err)
    assert str(o / LOCK) in line and "not a lock fresco wrote" in line
    assert snapshot(o) == before


@pytest.mark.slow
def test_a_stale_lock_of_ours_is_still_taken_over(clip, tmp_path, capsys):
    o = tmp_path / "o"
    o.mkdir()
    (o / LOCK).write_text(json.dumps({"pid": 2 ** 22 + 7, "host": socket.gethostname(), "started": "earlier"}))
    rc, err = run(capsys, "render", clip, "--prompt", "x", "-o", o, *TINY)
    assert rc == 0 and "took over the stale lock" in err and not (o / LOCK).exists()


# --------------------------------------------------------------------------------------------------------- writes
@pytest.mark.parametrize("name", ["keys", "latents", "frames"])
def test_a_link_inside_the_output_folder_is_never_followed(clip, tmp_path, decoy, capsys, name):
    o = tmp_path / "o"
    o.mkdir()
    (o / name).symlink_to(decoy / "keys", target_is_directory=True)
    output = ["--output", "frames"] if name == "frames" else []
    rc, err = run(capsys, "render", clip, "--prompt", "x", "-o", o, *output, *TINY)
    assert rc == 2
    line = one_line(err)
    assert f"'{o / name}' is a symbolic link" in line
    assert not (o / "state.json").exists()


def test_output_at_a_filesystem_root_is_refused(tmp_path, capsys):
    # the input does not exist: the main branch fails on it without writing, this one refuses the folder first
    rc, err = run(capsys, "render", tmp_path / "missing.mp4", "--prompt", "x", "-o", "/", *TINY)
    assert rc == 2 and "save_path: '/' is a filesystem root" in one_line(err)


@pytest.mark.parametrize("out,says", [
    ("/proc", "is inside a system pseudo file system"), ("/sys/kernel/x", "is inside a system pseudo file system"),
    ("/dev/x", "is inside a system pseudo file system"), ("LOOP/out", "cannot be resolved (Symlink loop"),
])
def test_output_that_cannot_be_a_folder_of_yours_names_save_path(tmp_path, capsys, out, says):
    """-o /proc failed on '/proc/.fresco.lock' and a link loop as 'Symlink loop from ...', neither naming the flag."""
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    out = out.replace("LOOP", str(tmp_path / "a"))
    rc, err = run(capsys, "render", tmp_path / "missing.mp4", "--prompt", "x", "-o", out, *TINY)
    assert rc == 2 and f"save_path: '{out}' {says}" in one_line(err)


def test_output_at_the_home_directory_is_refused(clip, tmp_path, decoy, capsys, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.txt").write_text("mine")
    monkeypatch.setenv("HOME", str(home))
    before = snapshot(home)
    rc, err = run(capsys, "render", clip, "--prompt", "x", "-o", home, *TINY)
    assert rc == 2 and "is your home directory" in one_line(err)
    assert snapshot(home) == before


# ----------------------------------------------------------------------------------------- silently wrong
def test_max_frames_is_not_a_truncation(clip, tmp_path, capsys):
    o = tmp_path / "o"
    rc, err = run(capsys, "render", clip, "--prompt", "x", "-o", o, "--max-frames", "8", "--strict", *TINY)
    assert rc == 0, err[-3000:]
    assert "truncated" not in err
    assert json.loads((o / "state.json").read_text())["n_frames"] == 8


def test_over_wide_size_is_one_line_and_leaves_nothing(clip, tmp_path, capsys):
    o = tmp_path / "o"
    rc, err = run(capsys, "render", clip, "--prompt", "x", "-o", o, *TINY, "--size", "64x65536")
    assert rc == 2 and one_line(err).startswith("fresco: error: size: ")
    assert not o.exists()


def test_each_refused_path_is_listed_once(clip, tmp_path, capsys):
    o = tmp_path / "o"
    o.mkdir()
    (o / "video.mp4").write_bytes(b"my video")
    rc, err = run(capsys, "render", clip, "--prompt", "x", "-o", o, *TINY)
    assert rc == 2
    assert one_line(err).count(str(o / "video.mp4")) == 1


def test_render_many_runs_the_good_jobs_and_reports_the_bad(clip, tmp_path, decoy, capsys):
    jobs = tmp_path / "jobs.yaml"
    tiny = ("sd_path: tiny-random, size: 64x64, num_inference_steps: 2, num_warmup_steps: 1, end_opt_step: 1, "
            "opt_iters: 1, mininterv: 4, maxinterv: 4, batch_size: 4")
    jobs.write_text(f"jobs:\n"
                    f"  - {{name: bad, prompt: x, file_path: '{clip}', save_path: '{tmp_path / 'a'}', batch_size: 1}}\n"
                    f"  - {{name: good, prompt: x, file_path: '{clip}', save_path: '{tmp_path / 'b'}', {tiny}}}\n")
    rc = cli.main(["render-many", str(jobs), "-q"])
    out = capsys.readouterr().out
    assert rc == 1
    rows = {ln.split()[0]: ln for ln in out.splitlines()[1:]}
    assert "failed" in rows["bad"] and "batch_size" in rows["bad"]
    assert "done" in rows["good"] and (tmp_path / "b" / "video.mp4").is_file()
    assert not (tmp_path / "a").exists()


def test_render_many_with_only_bad_jobs_is_an_input_error(clip, tmp_path, capsys):
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text(f"jobs:\n"
                    f"  - {{name: one, prompt: x, file_path: '{clip}', save_path: '{tmp_path / 'a'}', batch_size: 1}}\n"
                    f"  - {{name: two, prompt: x, file_path: '{clip}', save_path: '{tmp_path / 'b'}', steps: 3}}\n")
    rc, err = run(capsys, "render-many", jobs, "-q")
    assert rc == 2 and one_line(err).startswith("fresco: error: job one: ") and "batch_size" in err
    assert "1 more job(s)" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# ------------------------------------------------------------------------------------------------ web UI: CLI
@pytest.fixture
def launched(monkeypatch):
    seen = {}
    monkeypatch.setattr("fresco.ui.launch", lambda **kw: seen.update(kw))
    return seen


def test_ui_listen_without_auth_refuses_to_start(launched, capsys):
    rc, err = run(capsys, "ui", "--listen")
    assert rc == 2 and "--auth USER:PASS" in one_line(err) and "--no-auth" in err
    assert launched == {}


def test_ui_auth_forms(launched, tmp_path, capsys):
    rc, err = run(capsys, "ui", "--listen", "--auth", "ann:pw1")
    assert rc == 0 and launched["auth"] == [("ann", "pw1")] and launched["host"] == "0.0.0.0"
    f = tmp_path / "logins"
    f.write_text("# logins\nann:pw1\n\nbob:pw:2\n")
    rc, err = run(capsys, "ui", "--listen", "--auth-file", f)
    assert rc == 0 and launched["auth"] == [("ann", "pw1"), ("bob", "pw:2")]
    rc, err = run(capsys, "ui", "--listen", "--no-auth")
    assert rc == 0 and launched["auth"] is None and "warning: --no-auth" in err
    rc, err = run(capsys, "ui", "--listen", "--auth", "nopassword")
    assert rc == 2 and "--auth: expected USER:PASS" in one_line(err)
    launched.clear()
    rc, err = run(capsys, "ui", "--listen", "--auth-file", "/etc/passwd")   # its lines would be public logins
    assert rc == 2 and "--auth-file: '/etc/passwd' is a system file" in one_line(err) and launched == {}
    f.chmod(0o644)
    rc, err = run(capsys, "ui", "--listen", "--auth-file", f)
    assert rc == 0 and "warning: --auth-file:" in err and "readable by every user" in err
    f.chmod(0o600)
    rc, err = run(capsys, "ui", "--listen", "--auth-file", f)
    assert rc == 0 and "warning" not in err
    fifo = tmp_path / "pipe"   # a pipe, as `--auth-file <(pass show ui)` gives: read, no warning
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_text("cat:pw3\n"))
    writer.start()
    rc, err = run(capsys, "ui", "--listen", "--auth-file", fifo)
    writer.join()
    assert rc == 0 and launched["auth"] == [("cat", "pw3")] and "warning" not in err
    launched.clear()
    rc, err = run(capsys, "ui", "--listen", "--auth-file", "/dev/zero")   # endless: refused, not read
    assert rc == 2 and "--auth-file: '/dev/zero' is a device" in one_line(err) and launched == {}
    f.write_text("cat:pw\n" * 200_000)
    rc, err = run(capsys, "ui", "--listen", "--auth-file", f)
    assert rc == 2 and "is longer than 1024 KiB" in one_line(err) and launched == {}


def test_inputs_that_are_not_files_or_frames(tmp_path):
    """A pipe as the input would hang the probe (a render reads its input twice); a frame of a folder that is a
    dangling link or a pipe would vanish from the video; a tiny file that decodes to gigabytes is refused from its
    header."""
    from PIL import Image
    from fresco.video.io import probe
    fifo = tmp_path / "in.mp4"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="is not a regular file or a folder"):
        probe(fifo)
    with pytest.raises(ValueError, match="is not a regular file or a folder"):
        probe("/dev/zero")
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in (0, 2):
        cv2.imwrite(str(frames / f"{i:03d}.png"), synthetic_frame(i, (32, 32))[:, :, ::-1])
    assert probe(frames).n_frames == 2
    (frames / "001.png").symlink_to(tmp_path / "gone.png")
    with pytest.raises(ValueError, match="001.png' in the frames folder is not a regular file"):
        probe(frames)
    (frames / "001.png").unlink()
    Image.new("1", (20000, 20000)).save(frames / "000.png")   # 48 KB on disk, 1.2 GB decoded
    with pytest.raises(ValueError, match="larger than 16384 pixels on a side"):
        probe(frames)


@pytest.mark.parametrize("flag,where,says", [
    ("--out", "/etc", "a system folder"), ("--root", "/", "the file system's root"),
    ("--root", "/var/log/fresco", "a system folder"), ("--root", "/tmp", "shared by other users"),
    ("--out", "/usr", "shared by other users"),
    ("--root", "HOME", "your home folder"), ("--out", "KEYS", "holds .aws, .ssh"),
    ("--root", "SSH", "a folder of credentials")])
def test_ui_refuses_a_root_that_would_serve_the_system(launched, tmp_path, capsys, monkeypatch, flag, where, says):
    """The page serves every file under its root: /etc (with /etc/shadow, to a UI run as root), a home folder or
    a folder holding keys must not be one, whatever the flag that named it."""
    home = tmp_path / "home"
    (home / "work").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    keys = home / "work" / "project"
    (keys / ".ssh").mkdir(parents=True)
    (keys / ".aws").mkdir()
    where = {"HOME": str(home), "KEYS": str(keys), "SSH": str(keys / ".ssh")}.get(where, where)
    rc, err = run(capsys, "ui", flag, where)
    assert rc == 2 and f"{flag}: " in one_line(err) and says in err and "serves every file" in err
    assert launched == {}
    rc, err = run(capsys, "ui", flag, str(home / "work" / "renders"))   # a folder of its own under the home: fine
    assert rc == 0 and launched


# ----------------------------------------------------------------------------------------------- web UI: HTTP
gr = pytest.importorskip("gradio", reason="the web UI needs the [ui] extra")


class Page:
    """A launched UI on 127.0.0.1 driven through gradio's client (one session: the page's state persists)."""

    def __init__(self, ui):
        from gradio_client import Client
        ui.build()
        self.ui = ui
        self.url = ui.serve(port=_free_port(), block=False).rstrip("/")
        self.client = Client(self.url, verbose=False)
        self.api = self.client.view_api(return_format="dict", print_info=False)["named_endpoints"]

    def call(self, api: str, **by_label):
        """Call endpoint `api` with the widgets whose label starts with a key of `by_label`; the others keep the
        page's defaults."""
        kw = {}
        for p in self.api[api]["parameters"]:
            hit = [v for k, v in by_label.items() if p["label"].startswith(k)]
            if hit:
                kw[p["parameter_name"]] = hit[0]
            elif not p["parameter_has_default"]:
                kw[p["parameter_name"]] = ""
        return self.client.predict(api_name=api, **kw)

    def open(self, path, out_dir=""):
        return self.call("/on_path", **{"…or a video file": str(path), "Output folder": out_dir})

    def keyframes(self, out_dir="", **settings):
        """Step 2 (render keyframes): the final status line."""
        return self.call("/go", **{"Output folder": out_dir, **SETTINGS, **settings})[0]

    def served(self, path) -> int:
        import httpx
        return httpx.get(f"{self.url}/gradio_api/file={path}", timeout=30).status_code

    def close(self):
        self.client.close()
        self.ui.demo.close()


SETTINGS = {"prompt": "a fox", "processing size": "64x64", "steps": 4, "SDEdit warm-up steps": 1,
            "keyframes per batch": 3, "s_min": 5, "s_max": 5, "model": "tiny-random"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def page(tmp_path):
    from fresco.ui.app import UI
    from test_ui import stand_in_factory
    pages = []

    def make(**kw):
        p = Page(UI(**{"out_root": tmp_path / "root" / "out", "make_stylizer": stand_in_factory(), **kw}))
        pages.append(p)
        return p
    yield make
    for p in pages:
        p.close()


@pytest.mark.slow
def test_ui_typed_output_folder_outside_the_root_is_refused_and_not_served(clip, tmp_path, decoy, page):
    p = page(inputs=[clip.parent])
    p.open(clip)
    status = p.keyframes(out_dir=str(decoy))
    assert "fresco-error" in status and "outside the UI's output root" in status
    assert p.served(decoy / "secret.txt") != 200
    # a link under the root that points out of it is outside too
    (tmp_path / "root" / "out").mkdir(parents=True, exist_ok=True)
    (tmp_path / "root" / "out" / "escape").symlink_to(decoy, target_is_directory=True)
    status = p.keyframes(out_dir=str(tmp_path / "root" / "out" / "escape"))
    assert "outside the UI's output root" in status


@pytest.mark.slow
def test_ui_typed_input_outside_the_readable_folders_is_refused(tmp_path, decoy, page):
    """The page shows an input's frames (the keyframe gallery, the preview under the root), so a typed path outside
    the root, the uploads and --inputs would show any image folder the server can read; it is refused, in the same
    words whether or not the path exists."""
    p = page()
    for path in (decoy, decoy / "nothing-here"):
        status = p.open(path)[0]   # (the input's description, the player); the state is not an output
        assert "outside the folders the page may read" in status and "photo" not in status
    for name in ("secret.txt", "thesis.docx", "photo.png"):
        assert p.served(decoy / name) != 200
    p = page(inputs=[decoy])    # named on purpose: read, still never served
    status = p.open(decoy)[0]
    assert "outside" not in status and "frame" in status, status
    for name in ("secret.txt", "thesis.docx", "photo.png"):
        assert p.served(decoy / name) != 200


@pytest.mark.slow
def test_ui_default_extra_prompts_are_accepted(clip, tmp_path, decoy, page):
    p = page(inputs=[clip.parent])
    p.open(clip)
    status = p.keyframes()  # every other widget at the page's own default, extra prompts included
    assert status.startswith("keyframes done"), status


@pytest.mark.slow
def test_ui_root_widens_on_purpose(clip, tmp_path, decoy, page):
    p = page(root=tmp_path / "root", inputs=[clip.parent])
    p.open(clip)
    status = p.keyframes(out_dir=str(tmp_path / "root" / "other"))  # under --root, not under --out
    assert status.startswith("keyframes done"), status
    assert (tmp_path / "root" / "other" / "keys").is_dir()
    assert p.served(tmp_path / "root" / "other" / "state.json") == 200
    assert "outside the UI's output root" in p.keyframes(out_dir=str(tmp_path / "elsewhere"))


@pytest.mark.slow
def test_ui_runs_the_cli_memory_preflight(clip, tmp_path, decoy, monkeypatch):
    """The UI's own pipeline (tiny model) is what the estimate must count: with free memory between the estimate
    without a model and the one with it, the CLI refuses, and so must the page, before writing anything."""
    from fresco.ui.app import UI
    low = preflight.estimate_memory((64, 64), 3, None, 4, False, True).host
    high = preflight.estimate_memory((64, 64), 3, "tiny", 4, False, True).host
    assert low < high
    monkeypatch.setattr(preflight, "host_available", lambda: (low + high) // 2)
    p = Page(UI(model="tiny-random", out_root=tmp_path / "root" / "out", inputs=[clip.parent]))
    try:
        p.open(clip)
        status = p.keyframes()
    finally:
        p.close()
    assert "fresco: error: size: 64x64 needs about" in status
    assert not (tmp_path / "root" / "out" / "clip").exists()


# ------------------------------------------------------------------- planted files, links and hard links (stop 37)
def _render(clip, o, **kw):
    from fresco.video.render import render
    from test_render import StandInStylizer, _cfg
    return render(_cfg(clip, o, **kw), stylizer=StandInStylizer(keep=False), progress=False)


@pytest.mark.parametrize("plant", ["link", "hardlink"])
def test_planted_frames_in_the_temporary_folder_are_never_written_through(clip, tmp_path, decoy, plant):
    """A link or a hard link at a frame's name in the PNG frames' temporary folder: the frame replaces the name
    (the decoy keeps its bytes), and only the writer's own frames move into the frames folder."""
    o = tmp_path / "o"
    (o / ".frames.partial").mkdir(parents=True)
    for name, target in (("00000.png", "secret.txt"), ("00003.png", "thesis.docx")):
        (os.link if plant == "hardlink" else os.symlink)(decoy / target, o / ".frames.partial" / name)
    (o / ".frames.partial" / "notes.txt").write_text("not a frame")
    res = _render(clip, o, output="frames")
    frames = sorted(p.name for p in res.video.iterdir())
    assert frames == [f"{i:05d}.png" for i in range(12)]
    assert all(not p.is_symlink() and cv2.imread(str(p)) is not None for p in res.video.iterdir())
    assert (o / ".frames.partial" / "notes.txt").read_text() == "not a frame"


def test_planted_hard_linked_temporaries_are_replaced_not_written_through(clip, tmp_path, decoy):
    o = tmp_path / "o"
    o.mkdir()
    os.link(decoy / "thesis.docx", o / ".state.json.tmp")
    os.link(decoy / "secret.txt", o / ".preview.png.tmp")
    _render(clip, o)
    assert json.loads((o / "state.json").read_text())["complete"]


def test_a_hard_linked_lock_file_is_refused(clip, tmp_path, capsys):
    o, elsewhere = tmp_path / "o", tmp_path / "elsewhere.lock"
    o.mkdir()
    elsewhere.write_text(json.dumps({"pid": 2 ** 22 + 7, "host": socket.gethostname(), "started": "earlier"}))
    before = elsewhere.read_bytes()
    os.link(elsewhere, o / LOCK)
    rc, err = run(capsys, "render", clip, "--prompt", "x", "-o", o, *TINY)
    assert rc == 2 and "hard link" in one_line(err)
    assert elsewhere.read_bytes() == before


@pytest.mark.parametrize("what", ["keys", "one-key"])
def test_a_resumed_render_never_reads_a_keyframe_through_a_link(clip, tmp_path, decoy, capsys, what):
    """A finished render whose keys (the folder, or one keyframe) are swapped for links to the user's images and
    dropped from the manifest: rendering again refuses the folder instead of reading them into the video."""
    import shutil
    o = tmp_path / "o"
    res = _render(clip, o)
    state = json.loads((o / "state.json").read_text())
    if what == "keys":
        shutil.rmtree(o / "keys")
        (o / "keys").symlink_to(decoy / "keys", target_is_directory=True)
        drop = [f for f in state["files"] if f.startswith("keys/")]
    else:
        drop = [f"keys/{res.keys[1]:05d}.png"]
        (o / drop[0]).unlink()
        (o / drop[0]).symlink_to(decoy / "photo.png")
    state["files"] = [f for f in state["files"] if f not in drop]
    state["hashes"] = {k: v for k, v in state["hashes"].items() if k not in drop}
    (o / "state.json").write_text(json.dumps(state))
    with pytest.raises(ValueError, match="symbolic link"):
        _render(clip, o)


def test_latents_are_never_read_through_a_link_nor_unpickled_raw(tmp_path, decoy):
    from fresco.video.render import _read_latents
    (tmp_path / "latents").mkdir()
    (tmp_path / "latents" / "0000.pt").symlink_to(decoy / "secret.txt")
    with pytest.raises(ValueError, match="symbolic link"):
        _read_latents(tmp_path, 0)
    (tmp_path / "latents" / "0001.pt").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="latents .* cannot be loaded"):
        _read_latents(tmp_path, 1)


def test_the_ui_keyframe_zip_reads_no_link_and_writes_nothing_into_the_output_folder(tmp_path, decoy):
    pytest.importorskip("gradio")
    from fresco.ui.jobs import zip_keys
    import zipfile
    o, downloads = tmp_path / "o", tmp_path / "dl"
    (o / "keys").mkdir(parents=True)
    downloads.mkdir()
    cv2.imwrite(str(o / "keys" / "00000.png"), synthetic_frame(0, (16, 16)))
    (o / "keyframes.zip").write_bytes(b"the user's own zip")
    (downloads / "keyframes.zip").symlink_to(decoy / "thesis.docx")  # planted where the zip goes: replaced
    z = zip_keys(o, [0], downloads)
    assert z.parent == downloads and not z.is_symlink() and zipfile.ZipFile(z).namelist() == ["00000.png"]
    assert (o / "keyframes.zip").read_bytes() == b"the user's own zip"
    (o / "keys" / "00005.png").symlink_to(decoy / "secret.txt")
    with pytest.raises(ValueError, match="symbolic link"):
        zip_keys(o, [0, 5], downloads)


@pytest.mark.slow
def test_a_crafted_state_of_other_settings_deletes_no_output(clip, tmp_path, decoy, capsys):
    """A state file of other settings with no batch done that claims the user's holiday.mp4 with its true hash:
    a plain render (nothing asked) replaces the state but leaves the video."""
    import hashlib
    o = tmp_path / "o"
    o.mkdir()
    data = b"the user's holiday"
    (o / "holiday.mp4").write_bytes(data)
    _state(o, ["holiday.mp4"], done=[])
    st = json.loads((o / "state.json").read_text())
    st["hashes"] = {"holiday.mp4": [[len(data), hashlib.sha256(data).hexdigest()]]}
    (o / "state.json").write_text(json.dumps(st))
    _render(clip, o)
    assert (o / "holiday.mp4").read_bytes() == data


@pytest.mark.parametrize("change,says", [
    ({"done": "0"}, "'done'"), ({"done": None}, "'done'"), ({"batches": 5}, "'batches'"),
    ({"batches": [[["../x"], 0]]}, "'batches'"),
    ({"n_frames": -3}, "'n_frames'"), ({"keys": [0, 4, 99]}, "'keys'"), ({"vfr_fps": "abc"}, "'vfr_fps'"),
    ({"fps": "0"}, "'fps'"), ({"fps": 30}, "'fps'"), ({"fps": "nan"}, "'fps'"), ({"size": [64, -1]}, "'size'"),
    ({"size": [64, 64, 3]}, "'size'"), ({"size": [10 ** 6, 64]}, "'size'"), ({"complete": "yes"}, "'complete'"),
    ({"threads": 10 ** 9}, "'threads'"), ({"fingerprint": 7}, "'fingerprint'"), ("drop:keys", "no 'keys'"),
    ("drop:done", "no 'done'"), ("drop:n_frames", "no 'n_frames'"), ("drop:batches", "no 'batches'")])
def test_a_malformed_state_file_is_one_line(clip, tmp_path, capsys, change, says):
    o = tmp_path / "o"
    _state(o, [], done=[0])
    st = json.loads((o / "state.json").read_text())
    if isinstance(change, str):
        del st[change.split(":")[1]]
    else:
        st.update(change)
    (o / "state.json").write_text(json.dumps(st))
    rc, err = run(capsys, "render", clip, "--prompt", "x", "-o", o, *TINY)
    assert rc == 2
    line = one_line(err)
    assert "is not a fresco state file" in line and says in line, line


def test_a_resumed_state_cannot_claim_more_frames_than_its_keys_allow(clip, tmp_path):
    """n_frames far past the last key (which would make a list of a trillion frame names): refused on resume."""
    from fresco.video.render import render
    from test_render import StandInStylizer, _cfg
    o = tmp_path / "o"
    cfg = _cfg(clip, o, output="frames", mininterv=2, maxinterv=2, batch_size=3)
    assert render(cfg, stylizer=StandInStylizer(keep=False), stop_after=1, progress=False) is None
    st = json.loads((o / "state.json").read_text())
    st["n_frames"] = 10 ** 12
    (o / "state.json").write_text(json.dumps(st))
    with pytest.raises(ValueError, match=f"is not a fresco state file .*last key is {st['keys'][-1]}"):
        render(cfg, stylizer=StandInStylizer(keep=False), progress=False)


@pytest.mark.parametrize("crafted", ["repeat", "drop"])
def test_a_resumed_state_whose_batches_are_not_its_plan_is_refused(clip, tmp_path, crafted):
    """Batches that repeat one batch, or leave a key out, resumed with exit 0 into a video whose missing keys were
    never rendered; they must be the plan of the state's keys at the render's batch size."""
    from fresco.video.render import render
    from test_render import StandInStylizer, _cfg
    o = tmp_path / "o"
    cfg = _cfg(clip, o, output="frames", mininterv=2, maxinterv=2, batch_size=3)
    assert render(cfg, stylizer=StandInStylizer(keep=False), stop_after=1, progress=False) is None
    st = json.loads((o / "state.json").read_text())
    assert len(st["batches"]) >= 2
    st["batches"] = [st["batches"][0]] * len(st["batches"]) if crafted == "repeat" else st["batches"][:-1]
    (o / "state.json").write_text(json.dumps(st))
    before = snapshot(o)
    with pytest.raises(ValueError, match="is not a fresco state file .its batches are not the plan of its keys"):
        render(cfg, stylizer=StandInStylizer(keep=False), progress=False)
    assert snapshot(o) == before


@pytest.mark.parametrize("kind", ["folder", "fifo"])
def test_a_state_file_that_is_not_a_file_is_one_line(clip, tmp_path, capsys, kind):
    o = tmp_path / "o"
    o.mkdir()
    (o / "state.json").mkdir() if kind == "folder" else os.mkfifo(o / "state.json")
    rc, err = run(capsys, "render", clip, "--prompt", "x", "-o", o, *TINY)
    assert rc == 2 and "state.json" in one_line(err)


@pytest.mark.slow
@pytest.mark.parametrize("where", [".video.mp4.partial.mp4", ".preview.png.tmp", ".frames.partial"])
def test_a_folder_or_file_at_a_temporary_name_is_one_line(clip, tmp_path, capsys, where):
    o = tmp_path / "o"
    o.mkdir()
    if where == ".frames.partial":
        (o / where).write_text("a file where a folder goes")
    else:
        (o / where).mkdir()
    output = ["--output", "frames"] if where == ".frames.partial" else []
    rc, err = run(capsys, "render", clip, "--prompt", "x", "-o", o, *output, *TINY)
    assert rc == 2 and where in one_line(err)


@pytest.mark.parametrize("flag,value", [("--threads", "1000000000"), ("--threads", "1025"),
                                        ("--steps", "1000000000000"), ("--steps", "1001")])
def test_counts_that_would_exhaust_the_machine_are_refused(clip, tmp_path, capsys, flag, value):
    rc, err = run(capsys, "render", clip, "--prompt", "x", "-o", tmp_path / "o", *TINY, flag, value)
    assert rc == 2 and flag.lstrip("-") in one_line(err)


# ------------------------------------------------------------------------- the other commands' input (stop 37)
@pytest.mark.parametrize("argv,names", [(["render", "c.mp4", "--steps", "abc"], "--steps"),
                                        (["render", "c.mp4", "--seed", "1.5"], "--seed"),
                                        (["no-such-command"], "command")])
def test_argument_type_errors_are_one_line_without_the_usage(capsys, argv, names):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "usage:" not in err and names in one_line(err)


@pytest.mark.parametrize("fps", ["0", "1e-300", "inf", "nan", "-1"])
def test_make_clip_fps_is_checked(tmp_path, capsys, fps):
    rc, err = run(capsys, "make-clip", tmp_path / "c.mp4", "--fps", fps, "--frames", "2", "--size", "32x32")
    assert rc == 2 and "--fps" in one_line(err) and not (tmp_path / "c.mp4").exists()


@pytest.mark.parametrize("frames", ["0", "90001", "99999999999999999999999999"])
def test_make_clip_frames_is_bounded(tmp_path, capsys, frames):
    rc, err = run(capsys, "make-clip", tmp_path / "c.mp4", "--frames", frames, "--size", "32x32")
    assert rc == 2 and "--frames: a number of frames in [1, 90000]" in one_line(err)
    assert not list(tmp_path.iterdir())


def test_make_clip_keeps_an_existing_file_unless_asked(tmp_path, capsys):
    (tmp_path / "mine.mp4").write_bytes(b"my film")
    rc, err = run(capsys, "make-clip", tmp_path / "mine.mp4", "--frames", "2", "--size", "32x32")
    assert rc == 2 and "--overwrite" in one_line(err) and (tmp_path / "mine.mp4").read_bytes() == b"my film"
    rc, err = run(capsys, "make-clip", tmp_path / "mine.mp4", "--frames", "2", "--size", "32x32", "--overwrite")
    assert rc == 0 and (tmp_path / "mine.mp4").read_bytes() != b"my film"


def test_file_system_errors_are_one_line(tmp_path, capsys):
    rc, err = run(capsys, "make-clip", tmp_path / ("x" * 300 + ".mp4"), "--frames", "2", "--size", "32x32")
    assert rc == 2 and "File name too long" in one_line(err)


@pytest.mark.parametrize("what", ["cache", "empty-name", "file"])
def test_make_test_models_never_writes_over_a_folder_it_did_not_make(tmp_path, capsys, what):
    """A real Hugging Face cache (or a FRESCO checkout with real weights): the stand-ins would replace them."""
    d = tmp_path / "hf"
    if what == "cache":
        (d / "model").mkdir(parents=True)
        (d / "model" / "gmflow_sintel-0c07dcb3.pth").write_bytes(b"real weights")
    elif what == "file":
        d.write_text("a file")
    before = snapshot(tmp_path)
    rc, err = run(capsys, "make-test-models", "" if what == "empty-name" else d)
    assert rc == 2 and "make-test-models: DIR" in one_line(err)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("loader,key", [("gmflow", "gmflow_path"), ("egnet", "sod_path")])
@pytest.mark.parametrize("content", ["text", "empty", "other-tensors"])
def test_a_file_that_is_not_the_checkpoint_is_one_line(tmp_path, loader, key, content):
    import importlib
    import torch
    p = tmp_path / "w.pth"
    if content == "other-tensors":
        torch.save({"model": {"some.weight": torch.zeros(2)}} if loader == "gmflow" else {"x": torch.zeros(2)}, p)
    else:
        p.write_bytes(b"root:x:0:0:root:/root:/bin/bash\n" if content == "text" else b"")
    load = getattr(importlib.import_module(f"fresco.models.{loader}"), f"load_{loader}")
    with pytest.raises(ValueError) as e:
        load(p)
    assert str(e.value).startswith(f"{key}: '{p}'") and "\n" not in str(e.value)


def test_a_bad_backend_variable_is_one_line(tmp_path):
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "fresco.cli", "info"], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "FRESCO_BACKEND": "bogus"})
    assert r.returncode == 2 and "FRESCO_BACKEND" in one_line(r.stderr)


def test_score_device_is_checked(clip, capsys):
    rc, err = run(capsys, "score", clip, clip, "--device", "bogus")
    assert rc == 2 and "--device" in one_line(err)


def test_a_yaml_alias_bomb_gives_a_short_line(tmp_path, capsys):
    levels = ["&a0 [1, 1, 1, 1, 1, 1, 1, 1, 1]"] + [f"&a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 8)]
    (tmp_path / "bomb.yaml").write_text(f"bg_smoothing_steps: [{', '.join(levels)}]\n")
    rc, err = run(capsys, "render", "c.mp4", "--config", tmp_path / "bomb.yaml")
    assert rc == 2 and "bg_smoothing_steps" in one_line(err) and len(err) < 2000


@pytest.mark.parametrize("kind,says", [("binary", "is not UTF-8 text"), ("folder", "is a folder")])
def test_a_config_that_is_not_yaml_text_is_one_line(tmp_path, capsys, kind, says):
    p = tmp_path / "c.yaml"
    p.mkdir() if kind == "folder" else p.write_bytes(bytes(range(128, 256)) * 3)
    rc, err = run(capsys, "render", "x.mp4", "--config", p)
    assert rc == 2 and f"config: '{p}' {says}" in one_line(err)


@pytest.mark.parametrize("argv,flag", [(["--size", "64x64", "--batch-size", "100000"], "--batch-size"),
                                       (["CLIP", "--short-side", "999999999"], "--short-side")])
def test_plan_bounds_what_it_would_trace(clip, capsys, argv, flag):
    rc, err = run(capsys, "plan", *[str(clip) if a == "CLIP" else a for a in argv])
    assert rc == 2 and flag in one_line(err)


@pytest.mark.parametrize("what", ["key", "latents", "state"])
def test_a_hard_link_in_the_output_folder_is_never_read(tmp_path, decoy, what):
    """A hard link is a second name of a file elsewhere (one the folder's writer could read): the renderer's reads
    refuse it, as they refuse a symbolic link."""
    from fresco.video import safe_fs
    rel = {"key": "keys/00004.png", "latents": "latents/0000.pt", "state": "state.json"}[what]
    (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
    os.link(decoy / "photo.png", tmp_path / rel)
    with pytest.raises(ValueError, match="has other names"):
        safe_fs.read_bytes(tmp_path, rel)


def test_opt_iters_is_bounded(clip, tmp_path, capsys):
    rc, err = run(capsys, "render", clip, "--prompt", "x", "-o", tmp_path / "o", *TINY, "--opt-iters",
                  "999999999999999")
    assert rc == 2 and "opt_iters" in one_line(err)


def test_an_interval_longer_than_the_clip_names_the_interval(clip, tmp_path, capsys):
    """A fixed interval of 100 on a 12-frame clip leaves frame 0 the only key: refused before any model loads, with
    the interval that works, and nothing written."""
    i = TINY.index("--s-min")
    argv = TINY[:i] + TINY[i + 4:]   # without --s-min 4 --s-max 4
    rc, err = run(capsys, "render", clip, *argv, "--prompt", "x", "--interval", "100", "-o", tmp_path / "o")
    assert rc == 2 and "interval: a fixed keyframe interval of 100 gives one keyframe" in one_line(err)
    assert "at most 11" in err and not (tmp_path / "o" / "keys").exists()


def test_error_lines_escape_control_characters_and_stay_short(tmp_path, capsys):
    """A file name can carry a newline (it split the error over two lines) or be thousands of characters long."""
    rc, err = run(capsys, "render", tmp_path / "a\nb.mp4", *TINY, "--prompt", "x", "-o", tmp_path / "o")
    assert rc == 2 and err.strip().count("\n") == 0 and "a\\nb.mp4' does not exist" in one_line(err)
    rc, err = run(capsys, "render", tmp_path / ("x" * 5000 + ".mp4"), *TINY, "--prompt", "x", "-o", tmp_path / "o")
    assert rc == 2 and len(one_line(err)) < 2100 and "..." in err


def test_max_frames_beyond_any_video(clip, tmp_path, capsys):
    """--max-frames above sys.maxsize reached itertools.islice, whose error named neither the flag nor the range."""
    rc, err = run(capsys, "render", clip, *TINY, "--prompt", "x", "--max-frames", 2 ** 63, "-o", tmp_path / "o")
    assert rc == 2 and "max_frames: must be in [2, 1000000000]" in one_line(err)
    rc, err = run(capsys, "score", clip, clip, "--max-frames", 2 ** 63)
    assert rc == 2 and "max_frames: an integer in [2, 1000000000]" in one_line(err)


@pytest.mark.parametrize("argv,says", [
    (["render-many", "--ray", "JOBS"], "ADDRESS: expected auto, local, ray://HOST[:PORT] or HOST:PORT, got 'JOBS'; "
                                       "'JOBS' is a file: put it before --ray, or write --ray local"),
    (["render-many", "JOBS", "--ray", "127.0.0.1:99999"], "ADDRESS: port 99999 of '127.0.0.1:99999' is not in"),
    (["render-many", "JOBS", "--ray", "garbage://x"], "ADDRESS: expected auto, local"),
])
def test_ray_flag_address_is_checked_as_it_is_parsed(tmp_path, capsys, argv, says):
    """--ray takes an optional ADDRESS, so `--ray jobs.yaml` read the jobs file as the address and then said that
    the jobs file was missing; the address is now checked when it is parsed, with a hint when it is a file."""
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text("jobs: []\n")
    with pytest.raises(SystemExit) as exit_:
        cli.main([str(jobs) if a == "JOBS" else a for a in argv])
    assert exit_.value.code == 2 and says.replace("JOBS", str(jobs)) in one_line(capsys.readouterr().err)


def test_unreachable_ray_address_is_one_line_without_ray(monkeypatch):
    """ray.init retries an address where nothing listens for a long time; a TCP connect with a timeout says so
    first (ray is never imported here)."""
    from fresco.distributed.cluster import check_reachable, host_port
    assert host_port("auto") is None and host_port("local") is None
    assert host_port("ray://head") == ("head", 10001) and host_port("[::1]:6379") == ("::1", 6379)
    assert host_port("ray://h.example:7") == ("h.example", 7)
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()   # a port nothing listens on
    with pytest.raises(RuntimeError, match=f"--ray: cannot reach the Ray cluster at '127.0.0.1:{port}'"):
        check_reachable(f"127.0.0.1:{port}", "--ray", timeout=5)
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        check_reachable(f"127.0.0.1:{srv.getsockname()[1]}", "--ray", timeout=5)


def test_the_same_input_spelled_another_way_resumes(clip, tmp_path, capsys, monkeypatch):
    """The fingerprint held the input's path as typed, so `clip.mp4` and `./clip.mp4` (or its absolute path) were
    two inputs and the finished folder was refused as 'a render of other settings or another input'."""
    monkeypatch.chdir(clip.parent)
    o = tmp_path / "o"
    rc, err = run(capsys, "render", "clip.mp4", "--prompt", "x", "-o", o, *TINY)
    assert rc == 0, err
    video = (o / "clip.mp4").read_bytes() if (o / "clip.mp4").exists() else None
    for spelling in ("./clip.mp4", str(clip), f"../{clip.parent.name}/clip.mp4"):
        rc, err = run(capsys, "render", spelling, "--prompt", "x", "-o", o, *TINY)
        assert rc == 0 and "other settings or another input" not in err, err
    if video is not None:
        assert (o / "clip.mp4").read_bytes() == video
    other = make_synthetic_clip(tmp_path / "clip.mp4", 12, (64, 64), fps=Fraction(24), seed=3)
    rc, err = run(capsys, "render", other, "--prompt", "x", "-o", o, *TINY)
    assert rc == 2 and "another input" in one_line(err)


@pytest.mark.parametrize("flag,value,says", [
    ("-o", "LONGNAME", "save_path: .* is longer than a file system allows \\(255 bytes a name, 4095 a path\\)"),
    ("-o", "DEEP", "save_path: .* is longer than a file system allows"),
    ("--output", "a" * 300 + ".mp4", "output: a plain file name .* printable and at most 255 bytes"),
    ("--output", "a\x01.mp4", "output: a plain file name .* printable"),
])
def test_output_names_too_long_or_unprintable(clip, tmp_path, capsys, flag, value, says):
    """A folder name over 255 bytes or a path over 4095 failed at the first stat as an 'internal OSError' in the
    page and Python's message on the CLI; an output name with a control character passed validation."""
    import re
    value = {"LONGNAME": str(tmp_path / ("a" * 300)), "DEEP": str(tmp_path / "/".join(["d"] * 3000))}.get(value, value)
    argv = ["render", clip, *TINY, "--prompt", "x", flag, value] + ([] if flag == "-o" else ["-o", tmp_path / "o"])
    rc, err = run(capsys, *argv)
    assert rc == 2 and re.search(says, one_line(err)), err
