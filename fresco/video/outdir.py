"""The renderer's output folder, made safe for the user's files (the names it uses there: fresco.constants): the
rule that the output never lands on or around the input, an exclusive lock per folder (a lock file holding the
owner's pid and host, created exclusively, never followed through a link), the state file with the manifest of
files the renderer wrote and their recorded size and SHA-256, and the fingerprint of the settings and input that
decide the keyframes. Every write goes through fresco.video.safe_fs; the renderer deletes or replaces only files it
can prove it wrote; anything else in the folder needs `overwrite`, and even then only the paths the renderer writes
are replaced, never the user's other files."""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import socket
import stat
import time
from fractions import Fraction
from pathlib import Path
from typing import Optional, Sequence

from ..config import RenderConfig, fingerprint_keys
from .. import threads as threads_mod
from ..constants import (KEYS, LATENTS, LOCK, MAX_SIDE, MAX_THREADS, PREVIEW, RESERVED, SCORE_FILES, STATE,
                         VIDEO_SUFFIXES, within)
from . import safe_fs
from .io import VideoInfo
from .keyframes import Batch


class OutputLocked(RuntimeError):
    """The output folder is locked by another render that is still running."""


def check_not_input(input_path: str | os.PathLike, root: Path, output: str) -> None:
    """Refuse when anything the renderer writes would be the input, or hold it: the output video/frames folder (or
    keys/, latents/, state, preview, lock) resolving to the input or to a folder around it; for a folder of images,
    an output folder that is that folder or inside it (the preview would become a frame)."""
    inp = Path(input_path).resolve()
    root_r = root.resolve()
    for name in (output,) + RESERVED:
        target = root_r / name
        if within(inp, target):
            what = "is" if inp == target else "would hold"
            key = "output" if name == output else "save_path"
            raise ValueError(f"{key}: '{root / name}' {what} the input '{input_path}'; the render would replace "
                             f"it. Choose another -o/--output")
    if inp.is_dir() and within(root_r, inp):
        raise ValueError(f"save_path: '{root}' is inside the input folder of images '{input_path}'; choose an output "
                         f"folder outside it")


def make_folder(root: Path) -> bool:
    """Create the output folder (and its parents); True when it did not exist. A clear error when it cannot be."""
    if root.is_dir():
        return False
    if root.exists():
        raise ValueError(f"save_path: '{root}' exists and is not a folder; choose another -o")
    try:
        root.mkdir(parents=True)
    except FileExistsError:
        raise ValueError(f"save_path: cannot create '{root}': a part of the path is a file") from None
    except NotADirectoryError:
        raise ValueError(f"save_path: cannot create '{root}': a part of the path is a file, not a folder") from None
    except OSError as e:
        raise ValueError(f"save_path: cannot create '{root}': {e.strerror or e}") from None
    return True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _lock_record(text: str) -> Optional[dict]:
    """The lock record in `text` ({"pid": int, "host": str, "started": str}), None when it is not one."""
    try:
        d = json.loads(text)
    except ValueError:
        return None
    ok = isinstance(d, dict) and set(d) == {"pid", "host", "started"} and isinstance(d["pid"], int) \
        and isinstance(d["host"], str) and isinstance(d["started"], str)
    return d if ok else None


class FolderLock:
    """An exclusive `flock` on `<root>/.fresco.lock`, which holds the owner's pid, host and start time as JSON.

    The file is created with O_CREAT|O_EXCL|O_NOFOLLOW. An existing one is opened without following a link and is
    used only when it is a regular file holding a lock record this program writes; anything else (a link, a folder,
    the user's own file of that name) is an error naming it, and is never truncated or deleted. The kernel drops the
    lock when its process dies, so a lock file left by a killed render is free to take: the taker says so
    (`stale`). release() removes the file (only the one it locked) while still holding the lock; acquire()
    re-checks that the file it locked is still the one at the path, so two renders can never both hold a lock."""

    def __init__(self, root: Path):
        self.root = root
        self.path = root / LOCK
        self._fd: Optional[int] = None
        self.stale: Optional[str] = None

    @staticmethod
    def _describe(text: str) -> str:
        d = _lock_record(text)
        return f"pid {d['pid']} on host {d['host']}, started {d['started']}" if d else "an unknown process"

    def _foreign(self, why: str) -> ValueError:
        return ValueError(f"save_path: '{self.path}' {why}, not a lock fresco wrote; the render leaves it alone: "
                          f"move it away or choose another -o")

    def _open(self) -> tuple[int, bool]:
        """(fd, created) of the lock file: created exclusively, or an existing regular file (no link followed)."""
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644), True
        except FileExistsError:
            pass
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            return -1, False
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise self._foreign("is a symbolic link") from None
            if e.errno == errno.EISDIR:
                raise self._foreign("is a folder") from None
            raise
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise self._foreign("is not a regular file")
        if st.st_nlink != 1:  # a hard link: rewriting the record would rewrite a file elsewhere
            os.close(fd)
            raise self._foreign("has other names (a hard link)")
        return fd, False

    def acquire(self) -> "FolderLock":
        return self._acquire(20)

    def _acquire(self, empty_tries: int) -> "FolderLock":
        """acquire(), looking again up to `empty_tries` times at an existing lock file that is still empty."""
        while True:
            fd, created = self._open()
            if fd < 0:
                continue  # removed between our two opens: create it
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                holder = self._describe(os.read(fd, 4096).decode(errors="replace"))
                os.close(fd)
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise OutputLocked(f"save_path: '{self.root}' is in use by another render ({holder}); wait for "
                                       f"it to finish or choose another -o") from None
                raise
            try:
                same = os.fstat(fd).st_ino == os.lstat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the previous holder removed the file between our open and flock: lock the new one
        if not created:
            previous = os.read(fd, 4096).decode(errors="replace").strip()
            d = _lock_record(previous)
            if d is None and not previous and empty_tries > 0:
                os.close(fd)  # a render that has just created the file writes its record next: look again
                empty_tries -= 1
                time.sleep(0.05)
                return self._acquire(empty_tries)
            if d is None:
                os.close(fd)
                raise self._foreign("holds no lock record (pid, host, started)" if previous else "is empty")
            dead = d["host"] == socket.gethostname() and not _pid_alive(d["pid"])
            self.stale = (f"took over the stale lock of {self._describe(previous)}"
                          f"{', which is no longer running' if dead else ''}")
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())})
        os.lseek(fd, 0, os.SEEK_SET)
        os.ftruncate(fd, 0)
        os.write(fd, record.encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            if os.fstat(self._fd).st_ino == os.lstat(self.path).st_ino:
                self.path.unlink()
        except FileNotFoundError:
            pass
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def refuse_foreign(paths: list[Path]) -> None:
    """The error for files the renderer would replace but did not write (allowed only with --overwrite)."""
    if paths:
        shown = ", ".join(f"'{p}'" for p in paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
        raise ValueError(f"output: {shown} already exist(s) and were not written by fresco (not in its state "
                         f"file); use --overwrite to replace them, or choose another -o/--output")


def fingerprint(cfg: RenderConfig, info: VideoInfo, size: tuple[int, int], as_typed: bool = False) -> str:
    """What decides the keyframes: the settings that change pixels and the input (its resolved path, size on disk,
    mtime). as_typed: the input's path as it was given (how renders before stop 41 fingerprinted, so that
    `clip.mp4` and `./clip.mp4` were two inputs); `plan_render` still accepts a state file of that kind."""
    keys = set(fingerprint_keys())
    settings = {k: v for k, v in cfg.to_dict().items() if k in keys}
    if not as_typed and settings.get("file_path"):
        settings["file_path"] = str(Path(settings["file_path"]).expanduser().resolve())
    p = Path(info.path)
    st = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(p.iterdir())] if p.is_dir() else \
        [(p.name, p.stat().st_size, p.stat().st_mtime_ns)]
    blob = json.dumps({"settings": settings, "input": st, "size": size}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _ints(x: object, low: int = 0) -> bool:
    return isinstance(x, list) and all(type(v) is int and v >= low for v in x)


def _rate(x: object, top: float = float("inf")) -> bool:
    """A frame rate as the state writes it: a string of a fraction or a decimal in (0, top)."""
    try:
        return isinstance(x, str) and 0 < Fraction(x) < top
    except (ValueError, ZeroDivisionError):
        return False


def check_state(d: object) -> None:
    """Refuse (ValueError saying what is wrong) state data whose fields are not the types and ranges the renderer
    writes: a state file is untrusted input, and every field read back must be checked before it is used."""
    if not isinstance(d, dict):
        raise ValueError("not a JSON object")
    for k in ("fingerprint", "n_frames", "keys", "batches", "done"):
        if k not in d:
            raise ValueError(f"no '{k}'")
    n, keys, batches = d["n_frames"], d["keys"], d["batches"]
    if not isinstance(d["fingerprint"], str):
        raise ValueError("'fingerprint' is not a string")
    if type(n) is not int or n < 1:
        raise ValueError("'n_frames' is not a positive integer")
    if not _ints(keys) or not keys or any(b <= a for a, b in zip(keys, keys[1:])) or keys[-1] >= n:
        raise ValueError("'keys' is not an increasing list of frame numbers below 'n_frames'")
    known = set(keys)
    ok = isinstance(batches, list) and all(
        isinstance(b, list) and len(b) == 2 and _ints(b[0]) and b[0] and set(b[0]) <= known and b[1] in (0, 2)
        and type(b[1]) is int and b[1] < len(b[0]) for b in batches)
    if not ok:
        raise ValueError("'batches' is not a list of [keyframes, anchors]")
    if not _ints(d["done"]) or any(i >= len(batches) for i in d["done"]):
        raise ValueError("'done' is not a list of batch numbers")
    threads = d.get("threads")
    if threads is not None and not threads_mod.valid(threads):
        raise ValueError(f"'threads' is not a thread count (1 to {MAX_THREADS})")
    for k, top in (("vfr_fps", 10 ** 6), ("fps", float("inf"))):   # (fps: the input's, as its header says)
        if d.get(k) is not None and not _rate(d[k], top):
            raise ValueError(f"'{k}' is not a frame rate")
    size = d.get("size")
    if size is not None and not (_ints(size, 1) and len(size) == 2 and max(size) <= MAX_SIDE):
        raise ValueError(f"'size' is not [width, height] in 1..{MAX_SIDE}")
    if type(d.get("complete", False)) is not bool:
        raise ValueError("'complete' is not true or false")
    if not isinstance(d.get("warnings", []), list) or not all(isinstance(w, str) for w in d.get("warnings", [])):
        raise ValueError("'warnings' is not a list of strings")


class State:
    """state.json in the output folder: the fingerprint, keys, batches, which batches are finished, and the
    manifest `files` (paths relative to the folder) of everything the renderer wrote there, with `hashes` (each
    file's [size, sha256], recorded before it is moved into place) that prove which files are the renderer's.
    Written atomically through fresco.video.safe_fs; a path enters the manifest before it is written, a batch
    counts only once its keyframes and latents are on disk. The file is first written once the model is loaded and
    the first batch starts. A loaded manifest is untrusted: an entry outside the folder refuses the folder."""

    def __init__(self, root: Path):
        self.root = root
        self.path = root / STATE
        self.data: dict = {}

    def load(self) -> Optional[dict]:
        if not (self.path.exists() or self.path.is_symlink()):
            return None
        raw = safe_fs.read_bytes(self.root, STATE)  # a link, a folder, a FIFO: its own one-line error
        try:
            self.data = json.loads(raw)
            check_state(self.data)
        except (ValueError, UnicodeDecodeError, RecursionError) as e:
            raise ValueError(f"save_path: '{self.path}' is not a fresco state file ({e}); move it away or choose "
                             f"another -o") from None
        if "files" not in self.data:  # written before the manifest existed: its finished batches' files are ours
            batches = [Batch(i, tuple(f), a) for i, (f, a) in enumerate(self.data.get("batches", []))]
            self.data["files"] = sorted(f for b in batches if b.index in self.data.get("done", [])
                                        for f in batch_files(b))
        safe_fs.check_manifest(self.root, self.path, self.data["files"], self.data.setdefault("hashes", {}))
        return self.data

    def owned(self) -> set:
        return set(self.data.get("files", []))

    def save(self) -> None:
        safe_fs.write_atomic(self.root, STATE, json.dumps(self.data, indent=1).encode())

    def foreign(self, rels: Sequence[str]) -> list[Path]:
        """The files at `rels` that the renderer cannot prove it wrote."""
        return safe_fs.foreign(self.root, rels, self.data.get("files", []), self.data.get("hashes", {}))

    def record(self, rel: str, digest: list) -> None:
        """Remember `digest` ([size, sha256]) as content the renderer wrote at `rel` (the last two are kept)."""
        hashes = self.data.setdefault("hashes", {})
        hashes[rel] = [d for d in hashes.get(rel, []) if d != digest][-1:] + [digest]

    def write(self, rel: str, data: bytes) -> None:
        """Write `data` as the manifest entry `rel`: its hash is saved in the state before the file is moved into
        place, so a file at `rel` is always one the state can prove."""
        tmp = safe_fs.write_temp(self.root, rel, data)
        self.record(rel, safe_fs.digest(data))
        self.save()
        safe_fs.commit(self.root, rel, tmp)

    def record_files(self, rels: Sequence[str]) -> None:
        """Record the hashes of files written outside `write` (the video or PNG frames) and save."""
        for rel in rels:
            d = safe_fs.file_digest(safe_fs.inside(self.root, rel))
            if d is not None:
                self.record(rel, d)
        self.save()

    def claim(self, rels: Sequence[str], overwrite: bool) -> None:
        """Enter `rels` in the manifest (and save) before writing them; refuse files the renderer did not write
        unless `overwrite`."""
        if not overwrite:
            refuse_foreign(self.foreign(rels))
        for rel in rels:
            safe_fs.writable(self.root, rel)
        self.data["files"] = sorted(self.owned() | set(rels))
        self.save()


def output_files(cfg: RenderConfig, n: int) -> list[str]:
    scores = list(SCORE_FILES) if cfg.score else []
    if Path(cfg.output).suffix.lower() in VIDEO_SUFFIXES:
        return [cfg.output, PREVIEW] + scores
    return [f"{cfg.output}/{i:05d}.png" for i in range(n)] + [PREVIEW] + scores


def batch_files(b: Batch) -> list[str]:
    return [f"{KEYS}/{k:05d}.png" for k in b.frames[b.n_anchors:]] + [f"{LATENTS}/{b.index:04d}.pt"]
