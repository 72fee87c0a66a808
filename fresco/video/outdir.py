"""The renderer's output folder, made safe for the user's files (the names it uses there: fresco.constants): the
rule that the output never lands on or around the input, an exclusive lock per folder (a lock file holding the
owner's pid and host), the state file with the manifest of files the renderer wrote, and the fingerprint of the
settings and input that decide the keyframes. The renderer deletes or replaces only files listed in that manifest;
anything else in the folder needs `overwrite`, and even then only the paths the renderer writes are replaced, never
the user's other files."""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Iterable, Optional, Sequence

from ..config import RenderConfig, fingerprint_keys
from ..constants import KEYS, LATENTS, LOCK, PREVIEW, RESERVED, SCORE_FILES, STATE, VIDEO_SUFFIXES
from .io import VideoInfo
from .keyframes import Batch


class OutputLocked(RuntimeError):
    """The output folder is locked by another render that is still running."""


def _within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_not_input(input_path: str | os.PathLike, root: Path, output: str) -> None:
    """Refuse when anything the renderer writes would be the input, or hold it: the output video/frames folder (or
    keys/, latents/, state, preview, lock) resolving to the input or to a folder around it; for a folder of images,
    an output folder that is that folder or inside it (the preview would become a frame)."""
    inp = Path(input_path).resolve()
    root_r = root.resolve()
    for name in (output,) + RESERVED:
        target = root_r / name
        if _within(inp, target):
            what = "is" if inp == target else "would hold"
            key = "output" if name == output else "save_path"
            raise ValueError(f"{key}: '{root / name}' {what} the input '{input_path}'; the render would replace "
                             f"it. Choose another -o/--output")
    if inp.is_dir() and _within(root_r, inp):
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


class FolderLock:
    """An exclusive `flock` on `<root>/.fresco.lock`, which holds the owner's pid, host and start time as JSON.

    The kernel drops the lock when its process dies, so a lock file left by a killed render is free to take: the
    taker says so (`stale`). release() removes the file while still holding the lock; acquire() re-checks that the
    file it locked is still the one at the path, so two renders can never both hold a lock."""

    def __init__(self, root: Path):
        self.root = root
        self.path = root / LOCK
        self._fd: Optional[int] = None
        self.stale: Optional[str] = None

    @staticmethod
    def _describe(text: str) -> str:
        try:
            d = json.loads(text)
            return f"pid {d['pid']} on host {d['host']}, started {d['started']}"
        except (ValueError, KeyError, TypeError):
            return "an unknown process"

    def acquire(self) -> "FolderLock":
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
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
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the previous holder removed the file between our open and flock: lock the new one
        previous = os.read(fd, 4096).decode(errors="replace").strip()
        if previous:
            try:
                pid, host = (lambda d: (int(d["pid"]), d["host"]))(json.loads(previous))
                dead = host == socket.gethostname() and not _pid_alive(pid)
            except (ValueError, KeyError, TypeError):
                dead = False
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
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def foreign(root: Path, rels: Iterable[str], owned: set) -> list[Path]:
    """The paths among `rels` (relative to root) that exist and are not in the manifest `owned`; for a folder,
    every file inside it that is not owned."""
    out = []
    for rel in rels:
        p = root / rel
        if p.is_dir():
            out += [f for f in sorted(p.iterdir()) if f"{rel}/{f.name}" not in owned]
        elif (p.exists() or p.is_symlink()) and rel not in owned:
            out.append(p)
    return out


def refuse_foreign(paths: list[Path]) -> None:
    """The error for files the renderer would replace but did not write (allowed only with --overwrite)."""
    if paths:
        shown = ", ".join(f"'{p}'" for p in paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
        raise ValueError(f"output: {shown} already exist(s) and were not written by fresco (not in its state "
                         f"file); use --overwrite to replace them, or choose another -o/--output")


def remove_owned(root: Path, owned: Iterable[str]) -> None:
    """Delete the files of the manifest `owned` (paths relative to root); folders are removed only when empty."""
    dirs = set()
    for rel in owned:
        p = root / rel
        if p.is_file() or p.is_symlink():
            p.unlink()
        if "/" in rel:
            dirs.add(root / rel.rsplit("/", 1)[0])
    for d in sorted(dirs, key=lambda d: -len(d.parts)):
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def fingerprint(cfg: RenderConfig, info: VideoInfo, size: tuple[int, int]) -> str:
    """What decides the keyframes: the settings that change pixels and the input (path, size on disk, mtime)."""
    keys = set(fingerprint_keys())
    settings = {k: v for k, v in cfg.to_dict().items() if k in keys}
    p = Path(info.path)
    st = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(p.iterdir())] if p.is_dir() else \
        [(p.name, p.stat().st_size, p.stat().st_mtime_ns)]
    blob = json.dumps({"settings": settings, "input": st, "size": size}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class State:
    """state.json in the output folder: the fingerprint, keys, batches, which batches are finished, and the
    manifest `files` (paths relative to the folder) of everything the renderer wrote there. Written atomically; a
    path enters the manifest before it is written, a batch counts only once its keyframes and latents are on disk.
    The file is first written once the model is loaded and the first batch starts."""

    def __init__(self, root: Path):
        self.root = root
        self.path = root / STATE
        self.data: dict = {}

    def load(self) -> Optional[dict]:
        if not self.path.exists():
            return None
        try:
            with open(self.path) as f:
                self.data = json.load(f)
            if not isinstance(self.data, dict) or "fingerprint" not in self.data:
                raise ValueError("no fingerprint")
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"save_path: '{self.path}' is not a fresco state file ({e}); move it away or choose "
                             f"another -o") from None
        if "files" not in self.data:  # written before the manifest existed: its finished batches' files are ours
            batches = [Batch(i, tuple(f), a) for i, (f, a) in enumerate(self.data.get("batches", []))]
            self.data["files"] = sorted(f for b in batches if b.index in self.data.get("done", [])
                                        for f in batch_files(b))
        return self.data

    def owned(self) -> set:
        return set(self.data.get("files", []))

    def save(self) -> None:
        atomic_write_bytes(self.path, json.dumps(self.data, indent=1).encode())

    def claim(self, rels: Sequence[str], overwrite: bool) -> None:
        """Enter `rels` in the manifest (and save) before writing them; refuse files the renderer did not write
        unless `overwrite`."""
        if not overwrite:
            refuse_foreign(foreign(self.root, rels, self.owned()))
        for rel in rels:
            if "/" in rel:
                (self.root / rel).parent.mkdir(parents=True, exist_ok=True)
        self.data["files"] = sorted(self.owned() | set(rels))
        self.save()


def output_files(cfg: RenderConfig, n: int) -> list[str]:
    scores = list(SCORE_FILES) if cfg.score else []
    if Path(cfg.output).suffix.lower() in VIDEO_SUFFIXES:
        return [cfg.output, PREVIEW] + scores
    return [f"{cfg.output}/{i:05d}.png" for i in range(n)] + [PREVIEW] + scores


def batch_files(b: Batch) -> list[str]:
    return [f"{KEYS}/{k:05d}.png" for k in b.frames[b.n_anchors:]] + [f"{LATENTS}/{b.index:04d}.pt"]
