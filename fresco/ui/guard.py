"""What the web UI may touch and who may use it: output folders typed in the page must resolve (links followed)
under the UI's root, typed inputs under the root, Gradio's uploads or a folder of `--inputs`; a server reachable
from the network needs a login (`--auth USER:PASS`, `--auth-file`) or an explicit `--no-auth`; a render passes the
CLI's preflight (device, size, memory, model) before it starts."""
from __future__ import annotations

import stat
import sys
from pathlib import Path
from typing import Optional, Sequence

from ..config import RenderConfig
from ..constants import within
from ..video import preflight as pf
from ..video.io import probe, processing_size


def check_under_root(save_path: str, root: Path) -> None:
    """Refuse an output folder that does not resolve, symbolic links included, to `root` or a folder under it."""
    try:
        resolved = Path(save_path).expanduser().resolve()
    except (OSError, RuntimeError, ValueError) as e:   # a name too long, a link loop, a NUL byte
        raise ValueError(f"save_path: '{save_path}' is no folder path this system can resolve "
                         f"({getattr(e, 'strerror', None) or e})") from None
    if not within(resolved, root):
        raise ValueError(f"save_path: '{save_path}' is outside the UI's output root '{root}'; give a folder under "
                         f"it (fresco ui --root DIR serves another root)")


def input_root(folder: str | Path) -> Path:
    """A folder of `fresco ui --inputs`, resolved: an existing folder that `check_root` allows (the page shows the
    frames of what is typed under it)."""
    try:
        resolved = Path(folder).expanduser().resolve()
        is_dir = resolved.is_dir()
    except (OSError, RuntimeError, ValueError) as e:   # a name too long, a link loop
        raise ValueError(f"--inputs: '{folder}' is not a folder ({getattr(e, 'strerror', None) or e})") from None
    if not is_dir:
        raise ValueError(f"--inputs: '{folder}' is not a folder")
    check_root(resolved, "--inputs", SHOWN)
    return resolved


def check_input(source: str, roots: Sequence[Path]) -> None:
    """Refuse a typed input that does not resolve, links followed, under one of `roots` (the UI's root, Gradio's
    upload folder, the folders of `fresco ui --inputs`): the page shows an input's frames and writes its keyframes
    under the root, so a typed path elsewhere would show the page's users any video or image folder the server can
    read. Whether such a path exists is not said either."""
    try:
        resolved = Path(source).expanduser().resolve()
    except (OSError, RuntimeError, ValueError):
        resolved = None
    if resolved is None or not any(within(resolved, r) for r in roots):
        raise ValueError(f"file_path: '{source}' is outside the folders the page may read "
                         f"({', '.join(str(r) for r in roots)}); upload the video, or start fresco ui with "
                         f"--inputs DIR to let the page read a folder")


# folders of the system: a root at or under one of them would serve its files (/etc/shadow to a UI run as root,
# /proc/<pid>/environ, /run/secrets)
SYSTEM_DIRS = ("/etc", "/proc", "/sys", "/dev", "/boot", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
               "/run", "/var/lib", "/var/log", "/var/run", "/var/spool", "/var/mail", "/var/cache", "/root")
# folders that hold other users' or other programs' folders: refused themselves, a folder under them is fine
# (/usr/src/app, a container's usual working folder, or /srv/renders)
SHARED_DIRS = ("/home", "/Users", "/usr", "/usr/local", "/var", "/opt", "/srv", "/mnt", "/media", "/tmp",
               "/var/tmp")
# names whose presence in a root says it is somebody's home or project, with credentials the page would serve
SECRET_NAMES = (".ssh", ".gnupg", ".aws", ".kube", ".docker", ".netrc", ".git-credentials", ".pgpass", ".env")


def ui_root(out_root: str | Path, root: Optional[str | Path] = None) -> Path:
    """The folder the page serves and writes under: `root`, by default `out_root`, resolved, after `check_root`."""
    resolved = Path(out_root if root is None else root).expanduser().resolve()
    check_root(resolved, "--out" if root is None else "--root")
    return resolved


SERVED = ("the page serves every file under its root", "--out out")
SHOWN = ("the page shows the frames of any video or image folder typed under it", "~/videos")


def check_root(root: Path, flag: str = "--root", exposure: tuple[str, str] = SERVED) -> None:
    """Refuse a root (resolved) the page must not serve everything under: the file system's root, a system
    folder or one under it, the user's home or a folder above it, or a folder holding credentials (.ssh, .aws,
    ...). The page serves every file under its root to whoever may use it; `exposure` (what the page does with the
    folder, an example of a good one) words the refusal: SERVED for a root, SHOWN for a folder of `--inputs`."""
    try:
        home = Path.home().resolve()
    except (RuntimeError, KeyError, OSError):  # no home directory for this user
        home = None
    under_home = home is not None and home != Path("/") and within(root, home)   # (a home may be /root, /var/lib/x)
    why = None
    if root == Path(root.anchor):
        why = "the file system's root"
    elif any(root == Path(d) for d in SHARED_DIRS):
        why = "a folder shared by other users and programs"
    elif any(within(root, Path(d)) for d in SYSTEM_DIRS) and not under_home:
        why = "a system folder"
    elif home is not None and within(home, root):
        why = "your home folder" if root == home else "a folder above your home"
    elif any(part in SECRET_NAMES for part in root.parts):
        why = "a folder of credentials"
    else:
        try:
            found = sorted(n for n in SECRET_NAMES if (root / n).exists())
        except OSError:
            found = []
        if found:
            why = f"a folder that holds {', '.join(found)}"
    if why:
        what, example = exposure
        raise ValueError(f"{flag}: '{root}' is {why}, and {what}; give a folder of its own (for example {example})")


def _pair(text: str, where: str) -> tuple[str, str]:
    user, sep, password = text.partition(":")
    if not sep or not user.strip() or not password:
        raise ValueError(f"{where}: expected USER:PASS with a non-empty user and password")
    return user.strip(), password


AUTH_FILE_LIMIT = 1 << 20  # characters read from --auth-file at most (a pipe or a huge file cannot exhaust memory)


def auth_pairs(auth: Optional[str], auth_file: Optional[str], no_auth: bool, exposed: bool
               ) -> Optional[list[tuple[str, str]]]:
    """The (user, password) logins of `fresco ui`, None for none. A server on every interface or behind a share
    link (`exposed`) needs --auth, --auth-file or an explicit --no-auth (which prints a warning)."""
    if no_auth and (auth or auth_file):
        raise ValueError("--no-auth: give either --no-auth or --auth/--auth-file, not both")
    pairs = []
    if auth:
        pairs.append(_pair(auth, "--auth"))
    if auth_file:
        where = Path(auth_file).expanduser().resolve()
        if where.is_file() and any(within(where, Path(d)) for d in SYSTEM_DIRS):   # (a pipe, <(...), may pass)
            raise ValueError(f"--auth-file: '{auth_file}' is a system file, not a list of logins (its lines would "
                             f"become logins anyone can read); give a file of your own, one USER:PASS a line")
        try:
            mode = Path(auth_file).expanduser().stat().st_mode
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISSOCK(mode):
                raise ValueError(f"--auth-file: '{auth_file}' is a device or socket, not a list of logins; give a "
                                 f"file or a pipe, one USER:PASS a line")
            if stat.S_ISREG(mode) and mode & 0o004:
                print(f"fresco: warning: --auth-file: '{auth_file}' is readable by every user of this machine "
                      f"(chmod o-r)", file=sys.stderr)
            with open(Path(auth_file).expanduser(), encoding="utf-8", errors="replace") as f:
                text = f.read(AUTH_FILE_LIMIT + 1)
        except OSError as e:
            raise ValueError(f"--auth-file: cannot read '{auth_file}': {e.strerror or e}") from None
        if len(text) > AUTH_FILE_LIMIT:
            raise ValueError(f"--auth-file: '{auth_file}' is longer than {AUTH_FILE_LIMIT // 1024} KiB; a list of "
                             f"logins is one USER:PASS a line")
        lines = text.splitlines()
        for i, line in enumerate(lines, 1):
            if line.strip() and not line.lstrip().startswith("#"):
                pairs.append(_pair(line.strip(), f"--auth-file: '{auth_file}' line {i}"))
        if not pairs:
            raise ValueError(f"--auth-file: '{auth_file}' holds no USER:PASS line")
    if exposed and not pairs and not no_auth:
        raise ValueError("--listen: a server reachable from the network needs a login: give --auth USER:PASS, "
                         "--auth-file FILE (one USER:PASS a line), or --no-auth to serve without one")
    if exposed and no_auth:
        print("fresco: warning: --no-auth: anyone who can reach this server can run renders and read their "
              "outputs", file=sys.stderr)
    return pairs or None


def preflight(cfg: RenderConfig, default_model: bool) -> None:
    """The CLI's checks before a render loads or writes anything: settings, device, input, output folder, model
    availability (when the UI loads its own pipeline: `default_model`) and the memory estimate (unless force)."""
    cfg = cfg.validate()
    device = pf.check_device(cfg.device)
    info = probe(cfg.file_path, cfg.fps)
    size = cfg.frame_size() or processing_size(info.width, info.height, cfg.short_side)
    pf.check_render(cfg, info, size, device, default_model)
