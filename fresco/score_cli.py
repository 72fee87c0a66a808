"""`fresco score INPUT OUTPUT`: the command-line face of fresco.score (parser and runner; torch is imported only when
the command runs, so building the `fresco` parser stays light)."""
from __future__ import annotations

import argparse

from .constants import DEFAULT_CLIP, FLOW_ESTIMATORS


def add_parser(sub) -> None:
    p = sub.add_parser("score", help="score a render against its input: warp error, flicker, CLIP scores",
                       description="Score OUTPUT (a render) against INPUT (the video it was made from): warp error "
                                   "(Pixel-MSE) along the input's optical flow and its floor on the input, a flicker "
                                   "index, and CLIP Tem-Con / CLIP-T / Fram-Acc when a CLIP model is cached locally.")
    p.add_argument("input", help="the input video (file or folder of images)")
    p.add_argument("output", help="the rendered video (file or folder of images), same frame count")
    p.add_argument("--prompt", help="the target prompt (CLIP-T, Fram-Acc)")
    p.add_argument("--source-prompt", dest="source_prompt", help="a description of the input (Fram-Acc)")
    p.add_argument("--clip", default=DEFAULT_CLIP, help=f"CLIP id (local Hugging Face cache) or folder "
                                                        f"(default {DEFAULT_CLIP})")
    p.add_argument("--no-clip", dest="clip", action="store_const", const=None, help="skip the CLIP scores")
    p.add_argument("--json", dest="json_path", help="write every figure and the versions to this .json")
    p.add_argument("--plot", help="write the warp error per frame to this .png (keyframes marked when OUTPUT's "
                                  "folder holds a render state)")
    p.add_argument("--strip", help="write input (top) and output (bottom) frames side by side to this .png")
    p.add_argument("--strip-frames", dest="strip_at", help="frame numbers for --strip, e.g. 0,12,24 (default: 4 "
                                                            "spread evenly)")
    p.add_argument("--resize", action="store_true", help="resize the input to the output's size when they differ")
    p.add_argument("--max-frames", dest="max_frames", type=int, help="only the first N frames of each")
    p.add_argument("--flow", choices=FLOW_ESTIMATORS, default="dis", help="optical flow of the input (dis)")
    p.add_argument("--gmflow-path", dest="gmflow_path", help="GMFlow checkpoint for --flow gmflow")
    p.add_argument("--raft-path", dest="raft_path", help="RAFT-large weights for --flow raft (default: torch hub "
                                                         "cache)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, ...")
    p.add_argument("--overwrite", action="store_true", help="replace existing --json/--plot/--strip files")


def _frame_list(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--strip-frames: comma-separated frame numbers like 0,12,24, got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    """Score as the parsed `args` say; print the figures and where the files went. Errors raise ValueError."""
    at = _frame_list(args.strip_at)
    if at is not None and args.strip is None:
        raise ValueError("--strip-frames: needs --strip F.png")
    from .score import score_videos
    from .video.preflight import check_device
    try:
        check_device(args.device)
    except ValueError as e:
        raise ValueError(f"--{e}") from None  # "--device: ..."
    result = score_videos(args.input, args.output, prompt=args.prompt, source_prompt=args.source_prompt,
                          clip=args.clip, json_path=args.json_path, plot=args.plot, strip=args.strip, strip_at=at,
                          resize=args.resize, max_frames=args.max_frames, overwrite=args.overwrite, flow=args.flow,
                          gmflow_path=args.gmflow_path, raft_path=args.raft_path, device=args.device)
    for line in result.summary():
        print(line)
    for label, path in (("json", args.json_path), ("plot", args.plot), ("strip", args.strip)):
        if path:
            print(f"{label}: {path}")
    return 0
