"""Whole-video rendering: keyframe selection, anchored batches through the one-batch pipeline, propagation to the
other frames, streamed output; resumable from the output folder after a crash or Ctrl-C (one finished batch at a
time). The output folder is locked while a render runs, and only files the render wrote (its manifest in the state
file) are ever deleted or replaced without --overwrite. `render` runs the stages in order; the parts live by job in
preflight.py, source.py (input, key plan, resume), outdir.py (lock, state, manifest, fingerprint), runner.py and pngs.py."""
from __future__ import annotations

import io
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from fresco_kernels import get_backend

from .. import threads as threads_mod
from ..config import RenderConfig
from ..constants import KEYS, LATENTS, PREVIEW, SCORE_FILES
from ..models.flow import FlowEstimator
from ..score import score_render
from . import preflight
from .io import VideoInfo, VideoWriter, probe, processing_size
from .keyframes import Batch
from . import safe_fs
from .outdir import FolderLock, State, batch_files, make_folder, output_files, refuse_foreign
from .pngs import decode_png, png_bytes, preview_png
from .preflight import check_render
from .runner import BatchStylizer, LocalRunner, Runner
from .source import Plan, batch_frames, plan_render, read_input

PREVIEW_KEYS = 6


class Interrupted(Exception):
    """Ctrl-C during a render; the output folder is left resumable and the message says how far the render got."""


class Cancelled(Exception):
    """Raised by `render` when its `should_stop` check says stop: finished batches stay on disk and the output
    folder resumes from them."""


@dataclass
class RenderResult:
    """What a render wrote. warnings: problems with the input it rendered anyway (a truncated file, a variable
    frame rate), also logged when found and kept in the state file. video and preview are None after a
    `keyframes_only` render."""
    video: Optional[Path]
    keys_dir: Path
    preview: Optional[Path]
    keys: list[int]
    batches: list[Batch]
    n_frames: int
    fps: float
    size: tuple[int, int]
    timings: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def render(cfg: RenderConfig, stylizer: Optional[BatchStylizer] = None,
           make_stylizer: Optional[Callable[[RenderConfig], BatchStylizer]] = None,
           flow: Optional[FlowEstimator] = None, stop_after: Optional[int] = None,
           progress: bool = True, keyframes_only: bool = False,
           on_batch: Optional[Callable[[Batch, dict[int, Path]], None]] = None,
           on_frame: Optional[Callable[[int, int], None]] = None,
           should_stop: Optional[Callable[[], bool]] = None, runner: Optional[Runner] = None
           ) -> Optional[RenderResult]:
    """Render `cfg.file_path` into `cfg.save_path`; returns what was written (None when `stop_after` batches were
    run and the render is left to resume). The stylizer is built lazily (after the input and output folder are
    checked) by `make_stylizer(cfg)` when not given. `cfg.flow` names the flow estimator of the batches and of the
    propagation (`flow` replaces the latter); every op runs on cfg.settings.backend (None: the global switch, read
    once). Raises Interrupted on Ctrl-C (the folder stays resumable), ValueError with the key named for bad
    settings, inputs and output folders, OutputLocked when another render holds the folder. `flow` (default: the
    estimator cfg names: flow / gmflow_path / raft_path) serves every stage that uses flow: the default stylizer's
    pipeline (each batch's flows) and the propagation.

    Hooks for interactive front ends (fresco.ui): `keyframes_only` stops once every batch is stylised (a later
    render of the same settings resumes straight into propagation); `on_batch(batch, {key: png path})` is called
    after each batch is finished and recorded, with the keys it stylised; `on_frame(done, total)` after each
    propagated frame is written; `should_stop()` is checked before each batch and each propagated frame, and
    raises `Cancelled` when true (the folder stays resumable).

    `runner` decides where batches and propagation run (default: a LocalRunner, in this process;
    fresco.distributed's WavefrontRunner spreads them over Ray actors); the state file, keys, latents, video and
    preview are written here either way."""
    cfg.validate()
    # the backend is read once: the batches, the propagation and the fingerprint all see the same one
    cfg = cfg.replace(backend=cfg.settings.backend or get_backend())
    device = preflight.check_device(cfg.device)
    info = probe(cfg.file_path, cfg.fps)
    size = cfg.frame_size() or processing_size(info.width, info.height, cfg.short_side)
    local_only, cfg = check_render(cfg, info, size, device, stylizer is None and make_stylizer is None)
    root = Path(cfg.save_path)
    created = make_folder(root)
    lock = FolderLock(root)
    progress_note = {"done": 0, "total": None}
    threads_before = threads_mod.current()  # _render_locked sets the render's thread count
    try:
        lock.acquire()
        if lock.stale:
            _log(f"fresco: note: {lock.stale}")
        if runner is None:
            runner = LocalRunner(cfg, stylizer, make_stylizer, flow, progress, local_only)
        hooks = dict(keyframes_only=keyframes_only, on_batch=on_batch, on_frame=on_frame, should_stop=should_stop)
        return _render_locked(cfg, info, size, root, runner, stop_after, progress, progress_note, **hooks)
    except KeyboardInterrupt:
        if progress_note["total"] is None:
            raise Interrupted("interrupted before the first batch started; run the same command to start again") \
                from None
        raise Interrupted(f"interrupted after batch {progress_note['done']}/{progress_note['total']}; run the same "
                          f"command to resume") from None
    finally:
        threads_mod.restore(threads_before)
        lock.release()
        if created and root.is_dir() and not any(root.iterdir()):
            root.rmdir()


def _render_locked(cfg: RenderConfig, info: VideoInfo, size: tuple[int, int], root: Path, runner: Runner,
                   stop_after: Optional[int], progress: bool, progress_note: dict, keyframes_only: bool = False,
                   on_batch=None, on_frame=None, should_stop=None) -> Optional[RenderResult]:
    """render() once the output folder is locked, as its stages in order: the keyframe plan (resumed or new), the
    check of every path it will write, the keyframe batches, the propagation into the video, the preview.
    `progress_note` tracks finished/total batches for Ctrl-C."""
    t0 = time.perf_counter()
    state = State(root)
    plan = plan_render(cfg, info, size, root, state)
    threads = threads_mod.render_threads(state.data, cfg.settings.threads)
    threads_mod.set_threads(threads)
    if hasattr(runner, "use_threads"):
        runner.use_threads(threads)
    fps = plan.vfr_rate or info.fps
    progress_note.update(done=len(state.data["done"]), total=len(plan.batches))
    timings = {"keyframes_s": time.perf_counter() - t0, "diffusion_s": 0.0, "propagation_s": 0.0}
    for note in cfg.unused_notes():
        _log(f"fresco: note: {note}")
    _log(f"fresco: {plan.n} frames at {size[0]}x{size[1]}, {float(fps):.4g} fps; {len(plan.keys)} keyframes in "
         f"{len(plan.batches)} batch(es) of up to {cfg.batch_size}")

    todo = [b for b in plan.batches if b.index not in state.data["done"]]
    if not cfg.overwrite:
        # every path this render will write, checked before the model loads; PNG frames go only into a folder
        # that holds nothing but the renderer's own files
        planned = [f for b in todo for f in batch_files(b)] + output_files(cfg, plan.n) + [cfg.output]
        refuse_foreign(state.foreign(planned))
    if todo:
        t = time.perf_counter()
        finished = _stylize_batches(cfg, info, size, root, state, plan, todo, runner, stop_after, progress,
                                    progress_note, on_batch, should_stop)
        timings["diffusion_s"] += time.perf_counter() - t
        if not finished:
            return None
    if keyframes_only:
        timings["total_s"] = time.perf_counter() - t0
        return RenderResult(None, root / "keys", None, plan.keys, plan.batches, plan.n, float(info.fps), size,
                            timings)

    t = time.perf_counter()
    out_path, sources, outputs = _propagate(cfg, info, size, root, state, plan, fps, runner, progress, on_frame,
                                            should_stop)
    timings["propagation_s"] = time.perf_counter() - t
    state.write(PREVIEW, preview_png(sources, outputs))
    state.data["complete"] = True
    state.save()
    if cfg.score:
        score_render(cfg, out_path, plan.n, timings)
        state.record_files(SCORE_FILES)
    timings["total_s"] = time.perf_counter() - t0
    return RenderResult(out_path, root / KEYS, root / PREVIEW, plan.keys, plan.batches, plan.n, float(fps), size,
                        timings, list(state.data.get("warnings", [])))


def _stylize_batches(cfg: RenderConfig, info: VideoInfo, size: tuple[int, int], root: Path, state: State,
                     plan: Plan, todo: list[Batch], runner: Runner, stop_after: Optional[int], progress: bool,
                     progress_note: dict, on_batch, should_stop) -> bool:
    """Run the unfinished batches `todo` through the runner; each finished batch's keys and per-step anchor record
    go to disk before the state says it is done. False when `stop_after` batches ran and the render stops there."""
    runner.start()
    state.save()  # the render has really started: from here on the folder is resumable
    bar = tqdm(total=len(plan.batches), initial=len(plan.batches) - len(todo), desc="batches", unit="batch",
               disable=not progress)
    stopped = []

    def stream():
        for run_count, (b, frames) in enumerate(batch_frames(cfg, info, size, todo)):
            if stop_after is not None and run_count >= stop_after:
                stopped.append(b.index)
                return
            if should_stop is not None and should_stop():
                raise Cancelled(f"cancelled before batch {b.index}; {len(state.data['done'])}/{len(plan.batches)} "
                                f"batches are finished in '{root}' and a render of the same settings resumes")
            yield b, frames

    def finish(b: Batch, images: np.ndarray, record: list[torch.Tensor]) -> None:
        """A batch is done: its new keys and per-step anchor record go to disk, then the state says so."""
        expect = (len(b.frames), size[1], size[0], 3)
        if images.shape != expect or images.dtype != np.uint8:
            raise RuntimeError(f"stylizer returned {images.shape} {images.dtype}, expected {expect} uint8")
        state.claim(batch_files(b), cfg.overwrite)
        new_keys = {k: root / KEYS / f"{k:05d}.png" for k in b.frames[b.n_anchors:]}
        for k, img in zip(new_keys, images[b.n_anchors:]):
            state.write(f"{KEYS}/{k:05d}.png", png_bytes(img))
        buf = io.BytesIO()
        torch.save(record, buf)
        state.write(f"{LATENTS}/{b.index:04d}.pt", buf.getvalue())
        state.data["done"] = sorted(set(state.data["done"]) | {b.index})
        state.save()
        progress_note["done"] = len(state.data["done"])
        bar.update(1)
        if on_batch is not None:
            on_batch(b, new_keys)

    try:
        runner.run_batches(stream(), lambda k: _read_latents(root, k), finish, len(todo))
    finally:
        bar.close()
    return not stopped


def _read_key(root: Path, k: int) -> np.ndarray:
    """Keyframe k read back from the output folder (through safe_fs: never through a link)."""
    rel = f"{KEYS}/{k:05d}.png"
    try:
        data = safe_fs.read_bytes(root, rel)
    except FileNotFoundError:
        data = b""
    return decode_png(data, root / rel)


def _read_latents(root: Path, k: int) -> list:
    """Batch k's per-step anchor record read back from the output folder (through safe_fs: never through a link)."""
    rel = f"{LATENTS}/{k:04d}.pt"
    try:
        data = safe_fs.read_bytes(root, rel)
    except FileNotFoundError:
        raise FileNotFoundError(f"latents '{root / rel}' of a finished batch are missing; re-run with --overwrite"
                                ) from None
    try:
        return torch.load(io.BytesIO(data), map_location="cpu")
    except Exception as e:  # a damaged or foreign file: the unpickler's errors have no common type
        raise ValueError(f"save_path: latents '{root / rel}' cannot be loaded ({type(e).__name__}); re-run with "
                         f"--overwrite or choose another -o") from None


def _propagate(cfg: RenderConfig, info: VideoInfo, size: tuple[int, int], root: Path, state: State, plan: Plan,
               fps, runner: Runner, progress: bool, on_frame, should_stop) -> tuple[Path, list, list]:
    """Every frame from the stylised keys through the runner's propagation into the output video (or frames);
    returns the output's path and the preview keys' source and stylised frames."""
    preview_keys = set(plan.keys[:: max(1, -(-len(plan.keys) // PREVIEW_KEYS))][:PREVIEW_KEYS])
    sources, outputs, times = [], [], deque()
    n, vfr_rate = plan.n, plan.vfr_rate

    def frames_with_preview():
        for i, (ts, img) in enumerate(read_input(cfg, info, size)):
            if i in preview_keys:
                sources.append(img)
            if vfr_rate is not None:
                times.append(ts)  # popped as the frame is written: at most the frames propagation holds
            yield img

    state.claim(output_files(cfg, n), cfg.overwrite)
    out_path = safe_fs.writable(root, cfg.output)
    with VideoWriter(out_path, fps, size, audio_from=None if info.is_folder else info.path, crf=cfg.crf,
                     time_base=info.time_base if vfr_rate is not None else None) as writer:
        count = 0
        bar = tqdm(total=n, desc="frames", unit="frame", disable=not progress)
        for out in runner.propagate(frames_with_preview(), plan.keys,
                                    lambda k: _read_key(root, k)):
            if should_stop is not None and should_stop():
                bar.close()
                raise Cancelled(f"cancelled while propagating (frame {count}/{n}); the keyframes in '{root}' are "
                                "kept and a render of the same settings propagates again")
            if count in preview_keys:
                outputs.append(out)
            writer.write(out, times.popleft() if vfr_rate is not None else None)
            count += 1
            bar.update(1)
            if on_frame is not None:
                on_frame(count, n)
        bar.close()
        if count != n:
            raise RuntimeError(f"input: decoded {count} frames now but {n} on the first pass")
    state.record_files([f for f in output_files(cfg, n) if f not in (PREVIEW,) + SCORE_FILES])
    return out_path, sources, outputs
