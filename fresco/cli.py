"""The `fresco` command: `fresco render VIDEO --prompt ...` (flags override `--config file.yaml`), `fresco info`,
`fresco make-clip` (a synthetic test clip), `fresco make-test-models DIR` (offline stand-ins in the Hugging Face
cache layout), `fresco score INPUT OUTPUT` (fresco.score), `fresco ui` (the web UI)."""
from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

import torch

import fresco_kernels as fk

from . import __version__
from . import config as cfgmod
from . import ui as web_ui
from .constants import MAX_CLIP_FRAMES, MAX_SIDE, one_line
from .distributed.cli import add_parser as add_render_many
from .distributed.cli import add_ray_flags, render_on_ray, run_many
from .knobs import cli_flag, default_of, is_sequence, no_flag, value_type, yaml_key
from .models.test_models import write_test_models
from .plan import add_parser as add_plan
from .plan import run_plan
from .score_cli import add_parser as add_score
from .score_cli import run as run_score
from .ui.guard import auth_pairs, input_root, ui_root


def _knob_flags(p: argparse.ArgumentParser) -> None:
    """One flag per render knob (fresco.config.all_knobs: RenderConfig's own, FrescoSettings, PatchParams), from its
    metadata: flag and aliases, help, type, choices; booleans get --x/--no-x (or their own no_flag)."""
    sections: dict[str, argparse._ArgumentGroup] = {}
    for kw, title, f, hint in cfgmod.all_knobs():
        meta = f.metadata
        if not meta["cli"]:
            continue
        if title not in sections:
            sections[title] = p.add_argument_group(title, "YAML: the same keys; fresco.config / fresco.settings / "
                                                          "fresco.patch_params declare them (docs/options.md)")
        group = sections[title]
        default = default_of(f)
        note = "" if default in (None, {}) else f" (default {default!r})"
        if yaml_key(f) != cli_flag(f)[2:].replace("-", "_"):
            note += f" [YAML: {yaml_key(f)}]"
        flags = (cli_flag(f),) + meta["flag_aliases"]
        if value_type(f, hint) is bool:
            if no_flag(f) == "--no-" + cli_flag(f)[2:]:
                group.add_argument(*flags, dest=kw, default=None, action=argparse.BooleanOptionalAction,
                                   help=meta["help"] + note)
            else:
                group.add_argument(*flags, dest=kw, action="store_const", const=True, help=meta["help"] + note)
                group.add_argument(no_flag(f), dest=kw, action="store_const", const=False)
            continue
        if meta["repeat"]:
            group.add_argument(*flags, dest=kw, default=None, action="append", help=meta["help"] + note)
            continue
        group.add_argument(*flags, dest=kw, default=None, type=value_type(f, hint),
                           choices=None if meta["cli_any"] else meta["choices"],
                           nargs="+" if is_sequence(hint) else None, help=meta["help"] + note)


def _render_parser(sub) -> None:
    p = sub.add_parser("render", help="stylise a video (or a folder of images) with a prompt",
                       description="Render VIDEO in the style of --prompt with FRESCO. Flags override --config.")
    p.add_argument("video", nargs="?", help="input video file or folder of images (YAML: file_path)")
    p.add_argument("--config", help="YAML file with the published keys (file_path, save_path, prompt, sd_path, "
                                    "mininterv, ...) and ours; see docs/options.md")
    p.add_argument("--interval", type=int, help="fixed keyframe interval (sets s_min = s_max)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    add_ray_flags(p)
    _knob_flags(p)


def _build_config(args: argparse.Namespace) -> cfgmod.RenderConfig:
    base = cfgmod.from_mapping(cfgmod.load_yaml(args.config), args.config) if args.config else cfgmod.RenderConfig()
    overrides = {kw: getattr(args, kw) for kw, _, f, _ in cfgmod.all_knobs() if f.metadata["cli"]}
    overrides["file_path"] = args.video
    if overrides["controlnet_type"] is not None and overrides["controlnet_type"] not in cfgmod.CONTROL_TYPES:
        # --controlnet with a list ('hed:0.7,depth:0.5') or a ControlNet id/folder: several ControlNets
        overrides["controlnets"], overrides["controlnet_type"] = overrides["controlnet_type"], None
    if args.interval is not None:
        if args.mininterv is not None or args.maxinterv is not None:
            raise ValueError("--interval: give either --interval or --s-min/--s-max, not both")
        overrides["mininterv"] = overrides["maxinterv"] = args.interval
    cfg = cfgmod.merge(base, overrides)
    if cfg.save_path is None and cfg.file_path:
        cfg.save_path = str(Path("out") / Path(cfg.file_path.rstrip("/")).stem)
    return cfg.validate()


def _info() -> int:
    try:
        import triton
        triton_v = triton.__version__
    except ImportError:
        triton_v = "not installed"
    cuda = torch.cuda.is_available()
    print(f"fresco {__version__}  python {platform.python_version()}  torch {torch.__version__}  triton {triton_v}")
    print(f"CUDA: {torch.cuda.get_device_name(0) + ' (CUDA ' + str(torch.version.cuda) + ')' if cuda else 'no'}")
    print(f"ops backend (global switch): {fk.get_backend()}")
    print(f"C++ CPU kernels: {fk.cpp_status()}")
    print("op: CPU / CUDA")
    for name, impl in sorted(fk.cpu_impls().items()):
        print(f"  fresco::{name}: {impl} / {'triton' if cuda else '-'}")
    for mod in ("av", "diffusers", "transformers", "cv2"):
        try:
            m = __import__(mod)
            print(f"{mod}: {getattr(m, '__version__', 'installed')}")
        except ImportError:
            print(f"{mod}: not installed")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with its errors as one line (which argument, what it got, where the help is) instead of the whole
    usage first; exit 2 as before. Subcommands' parsers are of this class too."""

    def error(self, message: str):
        self.exit(2, f"fresco: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    """The `fresco` argument parser (render flags include one per FrescoSettings field)."""
    parser = _Parser(prog="fresco", description="FRESCO zero-shot video-to-video translation")
    sub = parser.add_subparsers(dest="command", required=True)
    _render_parser(sub)
    add_render_many(sub)
    add_plan(sub)
    sub.add_parser("info", help="print versions and which implementation serves each op")
    clip = sub.add_parser("make-clip", help="write a synthetic test clip (moving shapes on a texture)")
    clip.add_argument("path")
    clip.add_argument("--frames", type=int, default=96)
    clip.add_argument("--size", default="256x256", help="WxH")
    clip.add_argument("--fps", type=float, default=24)
    clip.add_argument("--audio", action="store_true")
    clip.add_argument("--overwrite", action="store_true", help="replace an existing clip at PATH")
    tm = sub.add_parser("make-test-models", help="write random-weight stand-ins for every model the published "
                                                 "configs name, in the Hugging Face cache layout",
                        description="Write tiny random-weight stand-ins (SD1.5 models, ControlNets, VAE, HED, MiDaS "
                                    "depth, CLIP) under DIR/hub, and the configs' ./model/gmflow_sintel-0c07dcb3.pth "
                                    "and ./model/epoch_resnet.pth under DIR/model; then, in DIR, HF_HOME=DIR "
                                    "HF_HUB_OFFLINE=1 fresco render --config ... runs a published config offline "
                                    "(file_path/save_path absolute or relative to DIR). The outputs are noise.")
    tm.add_argument("dir", help="the HF_HOME folder to write into (and the working directory for the render)")
    ui = sub.add_parser("ui", help="serve the web UI (Gradio; needs the [ui] extra)",
                        description="Serve the FRESCO web UI on 127.0.0.1 unless --listen or --share is given.")
    ui.add_argument("--model", help="default model in the page: diffusers SD1.5 id or path, or 'tiny-random' "
                                    "(offline)")
    ui.add_argument("--port", type=int, help="port (default: Gradio's, 7860 or the next free one)")
    ui.add_argument("--listen", action="store_true", help="serve on every network interface (0.0.0.0), not only "
                                                          "this machine")
    ui.add_argument("--share", action="store_true", help="also open a public gradio.live link (needs internet)")
    ui.add_argument("--out", default="out", help="folder under which each input's output folder is made (out)")
    ui.add_argument("--root", help="the folder the page may write and serve under (default: --out); typed output "
                                   "folders must resolve inside it")
    ui.add_argument("--inputs", action="append", default=[], metavar="DIR",
                    help="a folder whose videos and image folders may be typed as the input (repeatable); without "
                         "it, typed inputs must lie under the root (uploads always work)")
    ui.add_argument("--auth", metavar="USER:PASS", help="require this login (needed with --listen/--share)")
    ui.add_argument("--auth-file", dest="auth_file", metavar="FILE", help="logins, one USER:PASS a line")
    ui.add_argument("--no-auth", dest="no_auth", action="store_true",
                    help="serve --listen/--share without a login (prints a warning)")
    add_score(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "ui":
            if args.port is not None and not 1 <= args.port <= 65535:
                raise ValueError(f"--port: must be in 1..65535, got {args.port}")
            ui_root(args.out, args.root)   # (refused here, before Gradio loads; the UI checks it again)
            for folder in args.inputs:
                input_root(folder)
            auth = auth_pairs(args.auth, args.auth_file, args.no_auth, args.listen or args.share)
            try:
                web_ui.launch(model=args.model, host="0.0.0.0" if args.listen else "127.0.0.1", port=args.port,
                              share=args.share, out_root=args.out, root=args.root, auth=auth,
                              inputs=args.inputs)
            except OSError as e:  # port taken, no network for --share
                raise RuntimeError(f"ui: could not serve{' the share link' if args.share else ''}: "
                                   f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
            return 0
        if args.command == "info":
            return _info()
        if args.command == "make-clip":
            from .video import make_synthetic_clip  # OpenCV loads only for the commands that need it
            size, fps = _clip_size(args.size), _clip_fps(args.fps)
            _new_path(args.path, args.overwrite)
            if not 1 <= args.frames <= MAX_CLIP_FRAMES:
                raise ValueError(f"--frames: a number of frames in [1, {MAX_CLIP_FRAMES}], got {args.frames}")
            print(make_synthetic_clip(args.path, args.frames, size, fps, audio=args.audio))
            return 0
        if args.command == "make-test-models":
            _test_models_folder(args.dir)
            for name in write_test_models(args.dir):
                print(name)
            print(f"HF_HOME={os.path.abspath(args.dir)}; run the render in {os.path.abspath(args.dir)}")
            return 0
        if args.command == "score":
            return run_score(args)
        if args.command == "plan":
            return run_plan(args)
        if args.command == "render-many":
            return run_many(args)
        from .video.render import Interrupted, render  # (OpenCV, the renderer: a light start for the others)
        cfg = _build_config(args)
        try:
            if args.ray is not None:
                result = render_on_ray(cfg, args)
            else:
                result = render(cfg, progress=not args.quiet)
        except Interrupted as e:
            print(f"fresco: {e}", file=sys.stderr)
            return 130
    except KeyboardInterrupt:
        print("fresco: interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, OSError, RuntimeError) as e:  # OSError: permissions, full disk, long names
        print(f"fresco: error: {error_text(e)}", file=sys.stderr)
        return 2
    print(f"video:     {result.video}")
    print(f"keyframes: {result.keys_dir}  ({len(result.keys)} keys in {len(result.batches)} batch(es))")
    print(f"preview:   {result.preview}")
    if cfg.score:
        print(f"score:     {result.video.parent / 'score.json'}")
    for w in result.warnings:
        print(f"warning:   {w}")
    return 0


def error_text(e: BaseException) -> str:
    """An error as one line (`fresco.constants.one_line`), its type's name when it has no message."""
    return one_line(str(e)) or type(e).__name__


TEST_MODELS_MARK = ".fresco-test-models"


def _test_models_folder(folder: str) -> None:
    """make-test-models' DIR: new, empty, or one it wrote before (its mark file); never a folder of other files,
    such as a real Hugging Face cache or a FRESCO checkout, whose weights the stand-ins would replace."""
    if not folder.strip():
        raise ValueError("make-test-models: DIR: give a folder to write the stand-ins into, got ''")
    p = Path(folder)
    if p.exists() and not p.is_dir():
        raise ValueError(f"make-test-models: DIR: '{folder}' is a file, not a folder")
    if p.is_dir() and any(p.iterdir()) and not (p / TEST_MODELS_MARK).is_file():
        raise ValueError(f"make-test-models: DIR: '{folder}' already holds files make-test-models did not write "
                         f"(a real model cache?), whose weights the random stand-ins would replace; choose a new or "
                         f"empty folder")
    p.mkdir(parents=True, exist_ok=True)
    (p / TEST_MODELS_MARK).write_text("random-weight stand-ins written by `fresco make-test-models`\n")


def _new_path(path: str, overwrite: bool) -> None:
    """make-clip's PATH: not empty, and not an existing file or frame folder unless --overwrite."""
    if not path.strip():
        raise ValueError("make-clip: PATH: give a file (.mp4) or a folder for PNG frames, got ''")
    if os.path.lexists(path) and not overwrite and (not os.path.isdir(path) or any(Path(path).iterdir())):
        raise ValueError(f"make-clip: PATH: '{path}' exists; use --overwrite to replace it")


def _clip_fps(fps: float) -> float:
    """make-clip's --fps: a finite rate in [0.01, 1000]."""
    if not 0.01 <= fps <= 1000:  # also NaN
        raise ValueError(f"--fps: a frame rate from 0.01 to 1000, got {fps}")
    return fps


def _clip_size(text: str) -> tuple[int, int]:
    """make-clip's --size 'WxH' as (W, H)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--size: expected WxH like 256x256, got {text!r}") from None
    if w < 2 or h < 2 or w % 2 or h % 2 or max(w, h) > MAX_SIDE:
        raise ValueError(f"--size: both sides must be even and in [2, {MAX_SIDE}] (H.264), got {text!r}")
    return w, h


if __name__ == "__main__":
    sys.exit(main())
