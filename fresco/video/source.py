"""The input of a render, streamed: its frames at the processing size, the keyframe selection from one decode, the
render's keyframe plan (resumed from the state file or selected anew), and the frames of each batch from another
decode (holding only one batch and its anchors)."""
from __future__ import annotations

import itertools
import sys
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..config import RenderConfig
from . import safe_fs
from .io import VideoInfo, read_timed_frames
from .keyframes import Batch, fixed_keyframes, frame_errors, plan_batches, select_keyframes
from .outdir import State, fingerprint


def read_input(cfg: RenderConfig, info: VideoInfo, size: tuple[int, int]):
    """The input's (time, frame) pairs at the processing size, with the published resize filter rule
    (fresco.video), only the first cfg.max_frames when set."""
    frames = read_timed_frames(info.path, size, None if cfg.frame_size() else cfg.short_side)
    return frames if cfg.max_frames is None else itertools.islice(frames, cfg.max_frames)


def select_keys(cfg: RenderConfig, info: VideoInfo, size: tuple[int, int]
                ) -> tuple[list[int], int, Optional[Fraction]]:
    """(keyframes, exact frame count, true average rate) from one streamed decode at the processing size. The
    rate is None unless the stream's timestamps stray from i / header fps by more than half a frame (a variable
    frame rate); then it is (n - 1) / (last time - first time)."""
    step = 1 / Fraction(info.fps)
    last = [Fraction(0), False]

    def frames():
        for i, (t, img) in enumerate(read_input(cfg, info, size)):
            if t is not None:
                last[0] = t
                last[1] = last[1] or abs(t - i * step) > step / 2
            yield img

    if cfg.mininterv == cfg.maxinterv:
        n = sum(1 for _ in frames())
        keys = fixed_keyframes(n, cfg.mininterv) if n else []
    else:
        errors = frame_errors(frames())
        n = len(errors)
        keys = select_keyframes(errors, cfg.mininterv, cfg.maxinterv) if errors else []
    rate = Fraction(n - 1) / last[0] if last[1] and last[0] > 0 else None
    return keys, n, rate


def batch_frames(cfg: RenderConfig, info: VideoInfo, size: tuple[int, int], batches: Sequence[Batch]):
    """Yield (batch, [N, H, W, 3] frames) for `batches` from one streamed decode, holding only the current batch's
    frames plus key 0 and the previous batch's last key (the anchors)."""
    todo = list(batches)
    if not todo:
        return
    keep: dict[int, np.ndarray] = {}
    need_anchor = {0} | {b.frames[1] for b in todo if b.n_anchors}
    cur = 0
    for i, (_, img) in enumerate(read_input(cfg, info, size)):
        b = todo[cur]
        if i in b.frames or i in need_anchor:
            keep[i] = img
        if i == b.frames[-1]:
            yield b, np.stack([keep[k] for k in b.frames])
            cur += 1
            if cur == len(todo):
                return
            keep = {k: v for k, v in keep.items() if k in {0} | set(todo[cur].frames)}
    raise ValueError(f"input: the video ended before keyframe {todo[cur].frames[-1]} (decoded fewer frames "
                     f"than on the first pass)")


def plan_keys(cfg: RenderConfig, info: VideoInfo, size: tuple[int, int]
              ) -> tuple[list[int], int, Optional[Fraction], list[str]]:
    """`select_keys` for a new render, with the input's problems: fewer than 2 frames is an error, a frame count
    short of the header's a warning (an error with cfg.strict), a variable frame rate a warning. Returns (keys,
    frame count, the true average rate or None, warnings)."""
    keys, n, vfr_rate = select_keys(cfg, info, size)
    if n < 2:
        raise ValueError(f"input: '{cfg.file_path}' has {n} decodable frame(s); a video needs at least 2")
    if len(keys) < 2:  # only a fixed interval (s_min == s_max) can leave frame 0 alone
        raise ValueError(f"interval: a fixed keyframe interval of {cfg.maxinterv} gives one keyframe in this {n}-frame "
                         f"video, and FRESCO renders keyframes together, at least 2: give an interval of at most "
                         f"{n - 1}")
    warnings = []
    expected = info.n_frames if cfg.max_frames is None else min(info.n_frames, cfg.max_frames)
    if not info.is_folder and n != expected:
        msg = f"input: the header of '{cfg.file_path}' promises {info.n_frames} frames but {n} decode"
        if cfg.strict:
            raise ValueError(f"{msg} (a truncated or damaged file); --strict refuses it")
        warnings.append(f"{msg} (a truncated or damaged file?); rendering the {n} that decode")
    if vfr_rate is not None:
        warnings.append(f"input: variable frame rate (header {float(info.fps):.3g} fps, average "
                        f"{float(vfr_rate):.3g} fps); the output keeps the source's timestamps")
    return keys, n, vfr_rate, warnings


@dataclass
class Plan:
    """The keyframe plan of a render: from the state file when resuming, else selected from the input."""
    keys: list[int]
    n: int
    batches: list[Batch]
    vfr_rate: Optional[Fraction]


def plan_render(cfg: RenderConfig, info: VideoInfo, size: tuple[int, int], root: Path, state: State) -> Plan:
    """The keyframe plan: the state file's when it holds a render of these settings to resume, else (after
    removing what an earlier render wrote, when it is to be replaced) keys selected from one decode of the input."""
    fp = fingerprint(cfg, info, size)
    old = state.load()
    if old is not None and old["fingerprint"] != fp and \
            old["fingerprint"] == fingerprint(cfg, info, size, as_typed=True):
        old["fingerprint"] = fp   # an earlier render's fingerprint of the same spelling: the same input
    if old is not None and (cfg.overwrite or not cfg.resume or (old["fingerprint"] != fp and not old["done"])):
        # only what the earlier render wrote goes; with no batch finished there is nothing to lose. Unasked (a
        # changed setting), only its keyframes and latents go: with no batch finished a render has written no
        # output, so a state file that names one is not to be believed
        files = old["files"] if cfg.overwrite or not cfg.resume else [f for f in old["files"] if safe_fs.internal(f)]
        safe_fs.remove_proven(root, files, old["hashes"])
        state.path.unlink()
        old = None
    elif old is not None and old["fingerprint"] != fp:
        raise ValueError(f"save_path: '{root}' holds a render of other settings or another input; use --overwrite "
                         f"to replace it or choose another folder")

    if old is None:
        keys, n, vfr_rate, warnings = plan_keys(cfg, info, size)
        for w in warnings:
            print(f"fresco: warning: {w}", file=sys.stderr, flush=True)
        batches = plan_batches(keys, cfg.batch_size)
        state.data = {"fingerprint": fp, "n_frames": n, "size": list(size), "fps": str(info.fps),
                      "vfr_fps": None if vfr_rate is None else str(vfr_rate), "keys": keys,
                      "batches": [[list(b.frames), b.n_anchors] for b in batches], "done": [], "complete": False,
                      "warnings": warnings, "files": []}
    else:
        keys, n = state.data["keys"], state.data["n_frames"]
        if n > keys[-1] + cfg.maxinterv:  # frames after the last key are fewer than one interval
            raise ValueError(f"save_path: '{state.path}' is not a fresco state file ({n} frames but the last key "
                             f"is {keys[-1]}); move it away or choose another -o")
        batches = [Batch(i, tuple(f), a) for i, (f, a) in enumerate(state.data["batches"])]
        # the batches are a function of the keys and batch_size (both in the fingerprint): a state file whose
        # batches repeat or leave out a key would resume into a video with keyframes never rendered
        if [(b.frames, b.n_anchors) for b in batches] != \
                [(b.frames, b.n_anchors) for b in plan_batches(keys, cfg.batch_size)]:
            raise ValueError(f"save_path: '{state.path}' is not a fresco state file (its batches are not the "
                             f"plan of its keys); move it away or choose another -o")
        print(f"fresco: resuming in {root}: {len(state.data['done'])}/{len(batches)} batches finished",
              file=sys.stderr, flush=True)
    vfr_rate = Fraction(state.data["vfr_fps"]) if state.data.get("vfr_fps") else None
    return Plan(keys, n, batches, vfr_rate)
