"""The one way the renderer touches its output folder: a path is used only when it stays inside the folder with no
symbolic link on the way (a `keys` link cannot send keyframes elsewhere, a manifest entry cannot name a file outside),
writes are atomic and report what they wrote (size, SHA-256), and a file is deleted or replaced without
`overwrite` only when its name is one the renderer generates and its content is what the state file recorded."""
from __future__ import annotations

import hashlib
import os
import re
import stat
from pathlib import Path
from typing import Iterable, Mapping, Optional

from ..constants import KEYS, LATENTS, PREVIEW, RESERVED, SCORE_FILES, VIDEO_SUFFIXES

# names inside the output folder that the renderer generates (besides the output video/frames folder's name)
_GENERATED = (re.compile(rf"{KEYS}/\d{{5}}\.png"), re.compile(rf"{LATENTS}/\d{{4}}\.pt"))
_FRAME = re.compile(r"\d{5}\.png")


def inside(root: Path, rel: str, what: str = "save_path") -> Path:
    """`root/rel` when `rel` is a relative path of plain names ('/'-separated, no '.', '..' or empty parts) and no
    existing component of it below `root` (the last one included) is a symbolic link; else a ValueError naming
    `what` and the entry."""
    parts = rel.split("/") if isinstance(rel, str) else []
    if not parts or any(p in ("", ".", "..") or "\\" in p or "\0" in p for p in parts) or rel.startswith("/"):
        raise ValueError(f"{what}: '{rel}' is not a path inside the output folder '{root}'")
    cur = root
    for p in parts:
        cur = cur / p
        if cur.is_symlink():
            raise ValueError(f"{what}: '{cur}' is a symbolic link; the renderer never follows a link out of the "
                             f"output folder '{root}' (entry '{rel}'); remove it or choose another -o")
        if not cur.exists():
            break
    return root / rel


def writable(root: Path, rel: str) -> Path:
    """The gate of every write into the output folder: `root/rel` checked by `inside`, its parent folders created
    one by one (each checked again once it exists)."""
    path = inside(root, rel)
    cur = root
    for p in rel.split("/")[:-1]:
        cur = cur / p
        if cur.exists() and not cur.is_dir():
            raise ValueError(f"save_path: '{cur}' is a file where the renderer keeps a folder; move it away or "
                             f"choose another -o")
        if not cur.is_dir():
            cur.mkdir()
        inside(root, str(cur.relative_to(root)))
    return path


def digest(data: bytes) -> list:
    """[size, sha256 hex] of `data`: how the state file records a written file."""
    return [len(data), hashlib.sha256(data).hexdigest()]


def file_digest(path: Path) -> Optional[list]:
    """[size, sha256 hex] of the regular file at `path` (not followed if a link), None when it is not one."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    h, size = hashlib.sha256(), 0
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
            size += len(chunk)
    return [size, h.hexdigest()]


def clear(path: Path, what: str = "save_path") -> None:
    """Remove whatever file or link is at `path` (a link or a hard link goes, its target is never touched), so
    that the next open can create the name afresh (O_EXCL); a folder there is a ValueError naming `what`."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        raise ValueError(f"{what}: '{path}' is a folder where the renderer writes a file; move it away or choose "
                         f"another -o")
    os.unlink(path)


def create(path: Path, what: str = "save_path") -> int:
    """A new file at `path` opened for writing: what was there is removed first (`clear`), then the name is
    created with O_EXCL|O_NOFOLLOW, so nothing is ever written through a link, a hard link or a planted file."""
    clear(path, what)
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)


def read_bytes(root: Path, rel: str, what: str = "save_path") -> bytes:
    """The content of the regular file `root/rel`, checked by `inside` and opened without following a link
    (and without waiting on a FIFO); FileNotFoundError when it is missing, a ValueError naming `what` when it is
    not a regular file of one name (a hard link could be any file the folder's writer could read)."""
    path = inside(root, rel, what)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise ValueError(f"{what}: '{path}' cannot be read ({e.strerror}); the renderer reads only regular files "
                         f"in its output folder, never through a link") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        why = "has other names (a hard link, which may be a file elsewhere)" if stat.S_ISREG(st.st_mode) else \
            "is not a regular file"
        raise ValueError(f"{what}: '{path}' {why}; the renderer reads only its own files there: move it away or "
                         f"choose another -o")
    with os.fdopen(fd, "rb") as f:
        return f.read()


def write_temp(root: Path, rel: str, data: bytes) -> Path:
    """Write `data` to the hidden temporary beside `root/rel` (never through a link or into a planted file: a
    stale temporary is removed and the name created afresh) and return it; `commit` moves it into place."""
    path = writable(root, rel)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = create(tmp)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return tmp


def commit(root: Path, rel: str, tmp: Path) -> None:
    """Move a `write_temp` result into place (the rename replaces a link at the name, never its target)."""
    os.replace(tmp, writable(root, rel))


def write_atomic(root: Path, rel: str, data: bytes) -> list:
    """Write `data` as `root/rel` atomically through the gate; returns its [size, sha256]."""
    commit(root, rel, write_temp(root, rel, data))
    return digest(data)


def internal(rel: str) -> bool:
    """Whether `rel` is one of the renderer's working files: keys/NNNNN.png or latents/NNNN.pt."""
    return any(g.fullmatch(rel) for g in _GENERATED)


def generated(rel: str) -> bool:
    """Whether `rel` is a name the renderer generates: keys/NNNNN.png, latents/NNNN.pt, preview.png, the score files
    of --score, a video output (a plain name ending .mp4/.mov/.mkv) or a frame NAME/NNNNN.png of an output frames
    folder."""
    if internal(rel) or rel == PREVIEW or rel in SCORE_FILES:
        return True
    parts = rel.split("/")
    plain = (not parts[0].startswith(".") and parts[0].lower() not in (r.lower() for r in RESERVED)
             and parts[0] not in ("", ".."))
    if len(parts) == 1:
        return plain and Path(rel).suffix.lower() in VIDEO_SUFFIXES
    return len(parts) == 2 and plain and bool(_FRAME.fullmatch(parts[1]))


def check_manifest(root: Path, state_path: Path, files: object, hashes: object) -> None:
    """Refuse a state file whose manifest is not a list of paths inside the output folder (no link on the way
    out, no '..', nothing absolute) with [size, sha256] records; names the entry."""
    if not isinstance(files, list) or not isinstance(hashes, dict):
        raise ValueError(f"save_path: '{state_path}' has a malformed file manifest; the render refuses this folder "
                         f"(move the state file away or choose another -o)")
    for rel in [*files, *hashes]:
        if not isinstance(rel, str):
            raise ValueError(f"save_path: '{state_path}' names {rel!r} in its manifest, not a path; the render "
                             f"refuses this folder")
        try:
            inside(root, rel)
        except ValueError as e:
            raise ValueError(f"save_path: '{state_path}' names '{rel}', which is outside the output folder or "
                             f"behind a symbolic link ({str(e).split(': ', 1)[1]}); the render refuses this folder"
                             ) from None
    for rel, recs in hashes.items():
        ok = isinstance(recs, list) and all(isinstance(r, list) and len(r) == 2 and isinstance(r[0], int)
                                            and isinstance(r[1], str) for r in recs)
        if not ok:
            raise ValueError(f"save_path: '{state_path}' records a malformed size/hash for '{rel}'; the render "
                             f"refuses this folder")


def proven(root: Path, rel: str, hashes: Mapping[str, list]) -> bool:
    """Whether `root/rel` is a file the renderer can prove it wrote: a generated name, a regular file reached with
    no link, with a size and SHA-256 the state recorded."""
    if not generated(rel):
        return False
    try:
        path = inside(root, rel)
    except ValueError:
        return False
    d = file_digest(path)
    return d is not None and d in hashes.get(rel, [])


def foreign(root: Path, rels: Iterable[str], files: Iterable[str], hashes: Mapping[str, list]) -> list[Path]:
    """The paths among `rels` (relative to root; each checked by `inside`) that exist and that the renderer cannot
    prove it wrote (`proven`, for a manifest entry); for a folder, every such file inside it. Each path once."""
    owned, out, seen = set(files), [], set()

    def check(rel: str, p: Path) -> None:
        if p not in seen and (p.exists() or p.is_symlink()) and not (rel in owned and proven(root, rel, hashes)):
            out.append(p)
        seen.add(p)

    for rel in rels:
        p = inside(root, rel)
        if p.is_dir():
            for f in sorted(p.iterdir()):
                check(f"{rel}/{f.name}", f)
        else:
            check(rel, p)
    return out


def remove_proven(root: Path, files: Iterable[str], hashes: Mapping[str, list]) -> list[str]:
    """Delete the manifest's files that `proven` accepts; folders only when they are then empty. Returns the
    entries kept (not proven: a name it does not generate, a changed file, a link)."""
    kept, dirs = [], set()
    for rel in files:
        p = root / rel
        if not (p.exists() or p.is_symlink()):
            continue
        if proven(root, rel, hashes):
            p.unlink()
            if "/" in rel:
                dirs.add(root / rel.rsplit("/", 1)[0])
        else:
            kept.append(rel)
    for d in sorted(dirs, key=lambda d: -len(d.parts)):
        if not d.is_symlink() and d.is_dir() and not any(d.iterdir()):
            d.rmdir()
    return kept
