"""The `fresco` command: `fresco render VIDEO --prompt ...` (flags override `--config file.yaml`), `fresco info`,
`fresco make-clip` (a synthetic test clip), `fresco make-test-models DIR` (offline stand-ins in the Hugging Face
cache layout), `fresco ui` (the web UI)."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import config as cfgmod
from . import settings as settings_mod

# render flags that set RenderConfig's own keys (the FRESCO knobs' flags are derived from FrescoSettings)
RENDER_KEYS = ("prompt", "negative_prompt", "save_path", "output", "sd_path", "controlnet_type", "use_controlnet",
               "batch_size", "mininterv", "maxinterv", "size", "short_side", "fps", "device", "dtype", "flow", "propagation", "crf",
               "resume", "overwrite", "strict", "force", "gmflow_path", "raft_path", "use_salinecy", "sod_path",
               "vae", "annotator_path", "added_prompt", "extra_prompts", "max_frames")


def _settings_flags(p: argparse.ArgumentParser) -> None:
    """One flag per FrescoSettings field (its metadata: flag, help, type, choices); booleans get --x/--no-x."""
    group = p.add_argument_group("FRESCO settings", "defaults: fresco.settings.FrescoSettings (YAML: the same keys)")
    for f in settings_mod.settings_fields():
        meta = f.metadata
        if not meta["cli"]:
            continue
        kind = meta["type"] or type(f.default)
        default = "" if f.default is None else f" (default {f.default!r})"
        kw = dict(dest=f.name, default=None, help=meta["help"] + default)
        if kind is bool:
            group.add_argument(settings_mod.cli_flag(f), action=argparse.BooleanOptionalAction, **kw)
            continue
        if isinstance(f.default, tuple) or f.name == "bg_smoothing_steps":
            kw["nargs"] = "+"
        group.add_argument(settings_mod.cli_flag(f), type=kind, choices=meta["choices"], **kw)


def _render_parser(sub) -> None:
    p = sub.add_parser("render", help="stylise a video (or a folder of images) with a prompt",
                       description="Render VIDEO in the style of --prompt with FRESCO. Flags override --config.")
    p.add_argument("video", nargs="?", help="input video file or folder of images (YAML: file_path)")
    p.add_argument("--config", help="YAML file with the published keys (file_path, save_path, prompt, sd_path, "
                                    "mininterv, ...) and ours; see fresco.config.RenderConfig")
    p.add_argument("--prompt")
    p.add_argument("--negative-prompt", dest="negative_prompt")
    p.add_argument("-o", "--out", dest="save_path", help="output folder (YAML: save_path; default out/<video name>)")
    p.add_argument("--output", help="output name inside the folder: a .mp4 (default video.mp4) or a folder name "
                                    "for PNG frames")
    p.add_argument("--model", dest="sd_path", help="diffusers SD1.5 id or local path, or 'tiny-random' (offline)")
    p.add_argument("--controlnet", dest="controlnet_type", choices=cfgmod.CONTROL_TYPES)
    p.add_argument("--no-controlnet", dest="use_controlnet", action="store_const", const=False)
    p.add_argument("--batch-size", dest="batch_size", type=int, help="keyframes per batch N (default 8)")
    p.add_argument("--s-min", "--mininterv", dest="mininterv", type=int, help="min keyframe gap (10)")
    p.add_argument("--s-max", "--maxinterv", dest="maxinterv", type=int, help="max keyframe gap (30)")
    p.add_argument("--interval", type=int, help="fixed keyframe interval (sets s_min = s_max)")
    p.add_argument("--size", help="processing size WxH (multiples of 64); default: short side --short-side")
    p.add_argument("--short-side", dest="short_side", type=int, help="short side before rounding to 64 (512)")
    p.add_argument("--fps", type=float, help="frame rate for a folder of images (default 30)")
    p.add_argument("--device", help="auto (default), cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", choices=cfgmod.DTYPES)
    p.add_argument("--flow", choices=cfgmod.FLOW_ESTIMATORS, help="optical flow of the batches and the propagation "
                                                                     "(default: gmflow when --gmflow-path is given, "
                                                                     "else dis: OpenCV DIS)")
    p.add_argument("--gmflow-path", dest="gmflow_path", help="GMFlow checkpoint (gmflow_sintel-0c07dcb3.pth)")
    p.add_argument("--raft-path", dest="raft_path", help="torchvision RAFT-large weights (default: torch hub cache)")
    p.add_argument("--saliency", dest="use_salinecy", action="store_const", const=True,
                   help="background smoothing from EGNet saliency (YAML: use_salinecy; needs --sod-path)")
    p.add_argument("--no-saliency", dest="use_salinecy", action="store_const", const=False)
    p.add_argument("--sod-path", dest="sod_path", help="EGNet checkpoint for --saliency")
    p.add_argument("--propagation", choices=cfgmod.PROPAGATION_METHODS,
                   help="non-keyframes: patch (default; guided patch synthesis from both keys, Ebsynth-style) or "
                        "flow (flow-warp blend of the two keys)")
    p.add_argument("--crf", type=int, help="H.264 quality (18)")
    p.add_argument("--no-resume", dest="resume", action="store_const", const=False,
                   help="start over even when the output folder holds finished batches")
    p.add_argument("--overwrite", action="store_const", const=True,
                   help="replace a render of other settings in the output folder, and files at the paths the "
                        "render writes that it did not write itself (the folder's other files are kept)")
    p.add_argument("--strict", action="store_const", const=True,
                   help="refuse a damaged input (fewer frames decode than its header promises) instead of warning")
    p.add_argument("--force", action="store_const", const=True,
                   help="render even when the memory estimate exceeds the free host/GPU memory")
    p.add_argument("--vae", help="VAE id or folder (default the published stabilityai/sd-vae-ft-mse when available "
                                 "locally, else the model's own); 'own': the model's own")
    p.add_argument("--annotator-path", dest="annotator_path",
                   help="folder with the lllyasviel/Annotators weights for HED/depth (default: Hugging Face cache)")
    p.add_argument("--added-prompt", dest="added_prompt",
                   help="appended to the prompt (default: the published one for the model)")
    p.add_argument("--extra-prompts", dest="extra_prompts",
                   help="per-keyframe additions 'FRAME:TEXT;FRAME:TEXT' (YAML: a mapping frame -> text)")
    p.add_argument("--max-frames", dest="max_frames", type=int, help="only the first N frames of the input")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    from .distributed.cli import add_ray_flags
    add_ray_flags(p)
    _settings_flags(p)


def _build_config(args: argparse.Namespace) -> cfgmod.RenderConfig:
    base = cfgmod.from_mapping(cfgmod.load_yaml(args.config), args.config) if args.config else cfgmod.RenderConfig()
    keys = RENDER_KEYS + tuple(f.name for f in settings_mod.settings_fields() if f.metadata["cli"])
    overrides = {k: getattr(args, k) for k in keys}
    overrides["file_path"] = args.video
    if args.interval is not None:
        if args.mininterv is not None or args.maxinterv is not None:
            raise ValueError("--interval: give either --interval or --s-min/--s-max, not both")
        overrides["mininterv"] = overrides["maxinterv"] = args.interval
    cfg = cfgmod.merge(base, overrides)
    if cfg.save_path is None and cfg.file_path:
        cfg.save_path = str(Path("out") / Path(cfg.file_path.rstrip("/")).stem)
    return cfg.validate()


def _info() -> int:
    import platform

    import torch

    import fresco_kernels as fk
    from . import __version__
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


def build_parser() -> argparse.ArgumentParser:
    """The `fresco` argument parser (render flags include one per FrescoSettings field)."""
    parser = argparse.ArgumentParser(prog="fresco", description="FRESCO zero-shot video-to-video translation")
    sub = parser.add_subparsers(dest="command", required=True)
    _render_parser(sub)
    from .distributed.cli import add_parser as add_render_many
    add_render_many(sub)
    sub.add_parser("info", help="print versions and which implementation serves each op")
    clip = sub.add_parser("make-clip", help="write a synthetic test clip (moving shapes on a texture)")
    clip.add_argument("path")
    clip.add_argument("--frames", type=int, default=96)
    clip.add_argument("--size", default="256x256", help="WxH")
    clip.add_argument("--fps", type=float, default=24)
    clip.add_argument("--audio", action="store_true")
    tm = sub.add_parser("make-test-models", help="write random-weight stand-ins for every model the published "
                                                 "configs name, in the Hugging Face cache layout",
                        description="Write tiny random-weight stand-ins (SD1.5 models, ControlNets, VAE, HED, MiDaS "
                                    "depth) under DIR/hub, and the configs' ./model/gmflow_sintel-0c07dcb3.pth and "
                                    "./model/epoch_resnet.pth under DIR/model; then, in DIR, HF_HOME=DIR "
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
    ui.add_argument("--auth", metavar="USER:PASS", help="require this login (needed with --listen/--share)")
    ui.add_argument("--auth-file", dest="auth_file", metavar="FILE", help="logins, one USER:PASS a line")
    ui.add_argument("--no-auth", dest="no_auth", action="store_true",
                    help="serve --listen/--share without a login (prints a warning)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "ui":
            if args.port is not None and not 1 <= args.port <= 65535:
                raise ValueError(f"--port: must be in 1..65535, got {args.port}")
            from .ui import launch
            from .ui.guard import auth_pairs
            auth = auth_pairs(args.auth, args.auth_file, args.no_auth, args.listen or args.share)
            try:
                launch(model=args.model, host="0.0.0.0" if args.listen else "127.0.0.1", port=args.port,
                       share=args.share, out_root=args.out, root=args.root, auth=auth)
            except OSError as e:  # port taken, no network for --share
                raise RuntimeError(f"ui: could not serve{' the share link' if args.share else ''}: "
                                   f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
            return 0
        if args.command == "info":
            return _info()
        if args.command == "make-clip":
            from .video import make_synthetic_clip
            print(make_synthetic_clip(args.path, args.frames, _clip_size(args.size), args.fps, audio=args.audio))
            return 0
        if args.command == "make-test-models":
            from .models.test_models import write_test_models
            for name in write_test_models(args.dir):
                print(name)
            print(f"HF_HOME={os.path.abspath(args.dir)}; run the render in {os.path.abspath(args.dir)}")
            return 0
        if args.command == "render-many":
            from .distributed.cli import run_many
            return run_many(args)
        from .video.render import Interrupted, render
        cfg = _build_config(args)
        try:
            if args.ray is not None:
                from .distributed.cli import render_on_ray
                result = render_on_ray(cfg, args)
            else:
                result = render(cfg, progress=not args.quiet)
        except Interrupted as e:
            print(f"fresco: {e}", file=sys.stderr)
            return 130
    except KeyboardInterrupt:
        print("fresco: interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as e:
        print(f"fresco: error: {e}", file=sys.stderr)
        return 2
    print(f"video:     {result.video}")
    print(f"keyframes: {result.keys_dir}  ({len(result.keys)} keys in {len(result.batches)} batch(es))")
    print(f"preview:   {result.preview}")
    for w in result.warnings:
        print(f"warning:   {w}")
    return 0


def _clip_size(text: str) -> tuple[int, int]:
    """make-clip's --size 'WxH' as (W, H)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--size: expected WxH like 256x256, got {text!r}") from None
    if w < 2 or h < 2 or w % 2 or h % 2:
        raise ValueError(f"--size: both sides must be even and >= 2 (H.264), got {text!r}")
    return w, h


if __name__ == "__main__":
    sys.exit(main())
