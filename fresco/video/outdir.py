"""The renderer's output folder, made safe for the user's files: which output names are allowed, the rule that the
output never lands on or around the input nor on a filesystem root or the home directory, an exclusive lock per
folder (a lock file holding the owner's pid and host, created exclusively, never followed through a link), and the
refusal of files the renderer did not write. What may be written or deleted is decided by fresco.video.safe_fs and
the manifest of the state file: only files the renderer can prove it wrote; anything else in the folder needs
`overwrite`, and even then only the paths the renderer writes are replaced, never the user's other files."""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import stat
import time
from pathlib import Path
from typing import Optional

STATE = "state.json"
LOCK = ".fresco.lock"
PREVIEW = "preview.png"
KEYS = "keys"
LATENTS = "latents"
# names the renderer itself uses inside the output folder: `output` may be none of them
RESERVED = (KEYS, LATENTS, STATE, LOCK, PREVIEW)


class OutputLocked(RuntimeError):
    """The output folder is locked by another render that is still running."""


def check_output_name(output: str) -> None:
    """`output` must be one plain name inside the output folder: not '.', '..', empty, a path, hidden or reserved."""
    accepted = "a plain file name like 'video.mp4' or a folder name like 'frames'"
    if not isinstance(output, str) or output.strip() == "":
        raise ValueError(f"output: {accepted}, got {output!r}")
    if output in (".", "..") or "/" in output or "\\" in output or os.sep in output or Path(output).is_absolute():
        raise ValueError(f"output: {accepted}, not a path; the folder is set with -o/save_path; got {output!r}")
    if output.startswith("."):
        raise ValueError(f"output: {accepted}; names starting with '.' are the renderer's temporary files, "
                         f"got {output!r}")
    if output.lower() in (r.lower() for r in RESERVED):
        raise ValueError(f"output: {output!r} is a name the renderer uses itself in the output folder "
                         f"({', '.join(RESERVED)}); choose another")


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


def check_output_root(root: str | os.PathLike) -> None:
    """Refuse an output folder that is a filesystem root or the user's home directory itself."""
    r = Path(root).resolve()
    if r.parent == r:
        raise ValueError(f"save_path: '{root}' is a filesystem root; give a folder of its own, e.g. -o out/clip")
    home = Path.home().resolve()
    if r == home:
        raise ValueError(f"save_path: '{root}' is your home directory; give a folder of its own inside it, e.g. "
                         f"-o {home / 'fresco-out'}")


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
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise self._foreign("is not a regular file")
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
