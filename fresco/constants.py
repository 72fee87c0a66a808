"""Names and enumerations the config, the CLI, the web UI and the stages share: the accepted values of the choice
keys, the model ids they select, and the rules for names inside the output folder. Pure Python with no third-party
import, so that `fresco.config` validates a render's keys without importing a stage (torch, OpenCV, diffusers)."""
from __future__ import annotations

import os
from pathlib import Path

# non-keyframes: guided patch synthesis from both keys (Ebsynth-style), a flow-warp blend of the two keys, non-local
# means over the keys (fresco.video.nlmeans), or auto (patch synthesis and non-local means mixed per pixel, more weight
# on the one whose rebuilt source frame matches the frame better there: fresco.video.propagate)
PROPAGATION_METHODS = ("patch", "flow", "auto", "nlmeans")
DEFAULT_PROPAGATION = "auto"  # patch and nlmeans mixed per pixel; best on real clips (RESULTS.md, "Stop 38")
# optical flow estimators (fresco.models.flow)
FLOW_ESTIMATORS = ("dis", "raft", "gmflow")

# the most CPU threads a render may ask for (`threads`; a state file's recorded count too): far above any machine's
# cores, far below what makes OpenMP's pool exhaust memory (a billion threads is a 216 GB allocation, then an abort)
MAX_THREADS = 1024
# the most denoising steps: SD1.5's schedulers have 1000 training timesteps and refuse more inference steps
MAX_STEPS = 1000
# the most keyframes in one batch (cross-frame attention over all of them: far past any card's memory above)
MAX_BATCH = 256
# the largest side of a frame (the H.264 encoder's limit)
MAX_SIDE = 16384
# the most frames `fresco make-clip` writes (an hour at 25 fps)
MAX_CLIP_FRAMES = 90000
# the most frames --max-frames may name (more than any video has; Python's islice takes at most sys.maxsize)
MAX_FRAMES = 10 ** 9

# ControlNet v1.0 for SD1.5 per control type (the published choice)
CONTROLNET_IDS = {
    "canny": "lllyasviel/sd-controlnet-canny",
    "hed": "lllyasviel/sd-controlnet-hed",
    "depth": "lllyasviel/sd-controlnet-depth",
}
CONTROL_TYPES = tuple(CONTROLNET_IDS)
# the names that select the tiny random-weight model in from_pretrained / the CLI
TINY = "tiny"
TINY_NAMES = (TINY, "tiny-random")
# the tiny model's text encoder width (fresco.models.sd.text_config): what a textual-inversion embedding must match
TINY_TEXT_WIDTH = 32
# the VAE the published code always loads in place of the model's own
PUBLISHED_VAE = "stabilityai/sd-vae-ft-mse"
# `vae` values that select the model's own VAE
OWN_VAE = ("own", "model", "none")

# the CLIP model of `fresco score` (Tem-Con, Fram-Acc, CLIP-T), from the local Hugging Face cache
DEFAULT_CLIP = "openai/clip-vit-large-patch14"

# torch dtypes by name (fresco.models.sd maps them); the `dtype` key also accepts "auto"
TORCH_DTYPE_NAMES = ("float32", "float16", "bfloat16")
DTYPES = ("auto",) + TORCH_DTYPE_NAMES

# --- the output folder ---
STATE = "state.json"
LOCK = ".fresco.lock"
PREVIEW = "preview.png"
KEYS = "keys"
LATENTS = "latents"
# what `fresco render --score` writes into the output folder (fresco.score)
SCORE_FILES = ("score.json", "score.png")
# names the renderer itself uses inside the output folder: `output` may be none of them
RESERVED = (KEYS, LATENTS, STATE, LOCK, PREVIEW)
# an `output` with one of these suffixes is a video file; a name without a suffix is a folder of PNG frames
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv")


NAME_MAX, PATH_MAX = 255, 4096  # Linux's longest file name and path, in bytes


def check_output_name(output: str) -> None:
    """`output` must be one plain name inside the output folder: not '.', '..', empty, a path, hidden or reserved."""
    accepted = "a plain file name like 'video.mp4' or a folder name like 'frames'"
    if not isinstance(output, str) or output.strip() == "":
        raise ValueError(f"output: {accepted}, got {output!r}")
    if output in (".", "..") or "/" in output or "\\" in output or os.sep in output or Path(output).is_absolute():
        raise ValueError(f"output: {accepted}, not a path; the folder is set with -o/save_path; got {output!r}")
    if not output.isprintable() or len(output.encode("utf-8", "surrogateescape")) > NAME_MAX:
        raise ValueError(f"output: {accepted}, printable and at most {NAME_MAX} bytes (a file system's longest name), "
                         f"got {output!r}")
    if output.startswith("."):
        raise ValueError(f"output: {accepted}; names starting with '.' are the renderer's temporary files, "
                         f"got {output!r}")
    if output.lower() in (r.lower() for r in RESERVED):
        raise ValueError(f"output: {output!r} is a name the renderer uses itself in the output folder "
                         f"({', '.join(RESERVED)}); choose another")


ERROR_CHARS = 2000  # the longest error line (a 5000-character path is cut in its middle)


def one_line(text: str) -> str:
    """A message as one line, as the CLI and the web UI show errors: control characters a hostile name carries (a
    newline in a file name) are shown escaped, and an overlong message is cut in the middle."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    if len(text) > ERROR_CHARS:
        text = f"{text[:ERROR_CHARS // 2]}...{text[-ERROR_CHARS // 2:]}"
    return text


def within(path: Path, folder: Path) -> bool:
    """Whether `path` is `folder` or lies under it (both resolved: no `..`, no link left to follow)."""
    return path == folder or folder in path.parents


def check_output_root(root: str | os.PathLike) -> None:
    """Refuse an output folder that is a filesystem root, the user's home directory itself, or inside a kernel's
    pseudo file system (/proc, /sys, /dev but its RAM disk /dev/shm); one that cannot be resolved (a link loop, a
    NUL byte) is named."""
    try:
        r = Path(root).resolve()
    except (OSError, RuntimeError, ValueError) as e:  # RuntimeError: a symlink loop (Python 3.11)
        raise ValueError(f"save_path: '{root}' cannot be resolved ({e}); give a plain folder path") from None
    if any(len(part.encode("utf-8", "surrogateescape")) > NAME_MAX for part in r.parts) or \
            len(str(r).encode("utf-8", "surrogateescape")) >= PATH_MAX:   # every open below would say "too long"
        raise ValueError(f"save_path: '{root}' is longer than a file system allows ({NAME_MAX} bytes a name, "
                         f"{PATH_MAX - 1} a path); give a shorter folder path")
    if any(within(r, Path(d)) for d in ("/proc", "/sys", "/dev")) and not within(r, Path("/dev/shm")):  # a RAM disk
        raise ValueError(f"save_path: '{root}' is inside a system pseudo file system; give a folder of your own")
    if r.parent == r:
        raise ValueError(f"save_path: '{root}' is a filesystem root; give a folder of its own, e.g. -o out/clip")
    home = Path.home().resolve()
    if r == home:
        raise ValueError(f"save_path: '{root}' is your home directory; give a folder of its own inside it, e.g. "
                         f"-o {home / 'fresco-out'}")
