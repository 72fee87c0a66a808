"""Whole-video rendering: keyframe selection, anchored batches through the one-batch pipeline, propagation to the
other frames, streamed output; resumable from the output folder after a crash or Ctrl-C (one finished batch at a
time). The output folder is locked while a render runs, and only files the render wrote (its manifest in the state
file) are ever deleted or replaced without --overwrite (fresco.video.outdir)."""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Protocol, Sequence

import cv2
import numpy as np
import torch

from fresco_kernels import get_backend

from .. import threads as threads_mod
from ..config import RenderConfig
from ..models.flow import FlowEstimator
from ..pipeline.core import AnchorCallback, AnchorSource
from . import preflight
from .io import VideoInfo, VideoWriter, probe, processing_size, read_frames, read_timed_frames
from .keyframes import Batch, fixed_keyframes, frame_errors, plan_batches, select_keyframes
from .outdir import (KEYS, LATENTS, PREVIEW, STATE, FolderLock, check_not_input, foreign, make_folder,
                     refuse_foreign, remove_owned)
from .propagate import propagate
from .stylize import flow_estimator

PREVIEW_KEYS = 6


class BatchStylizer(Protocol):
    """Renders one batch of keyframes (the one-batch FRESCO pipeline behind a narrow interface).

    frames: [N, H, W, 3] uint8 RGB at the processing size, in batch order. anchor_latents: None for the first
    batch, else the latents [2, C, h, w] that frames 0 and 1 of this batch (the anchors) must hold at the start of
    each run step j: a sequence (one per run step) or a callable j -> tensor that may block until step j's anchors
    exist (so a distributed renderer can hand them from batch k-1 to batch k step by step). on_anchor_record(j,
    latents): called at the start of each run step j (after the anchors were restored) with the [2, C, h, w]
    latents of frames 0 and N-1, which become the next batch's anchors. frame_indices: the video frame index of
    each batch frame (per-keyframe prompts). Returns the stylised frames [N, H, W, 3] uint8."""

    def __call__(self, frames: np.ndarray, anchor_latents: Optional[AnchorSource] = None,
                 on_anchor_record: Optional[AnchorCallback] = None,
                 frame_indices: Optional[Sequence[int]] = None) -> np.ndarray: ...


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


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _save_png(path: Path, img: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError(f"could not encode {path}")
    _atomic_write_bytes(path, buf.tobytes())


def _load_png(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise FileNotFoundError(f"keyframe '{path}' is missing or unreadable; re-run with --overwrite")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _fingerprint(cfg: RenderConfig, info: VideoInfo, size: tuple[int, int]) -> str:
    """What decides the keyframes: the settings that change pixels and the input (path, size on disk, mtime)."""
    skip = {"save_path", "output", "resume", "overwrite", "strict", "force", "crf", "device", "run_ebsynth",
            "max_process",
            "propagation", "threads"}  # threads: recorded in the state file, a resume keeps them
    settings = {k: v for k, v in cfg.to_dict().items() if k not in skip}
    p = Path(info.path)
    st = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(p.iterdir())] if p.is_dir() else \
        [(p.name, p.stat().st_size, p.stat().st_mtime_ns)]
    blob = json.dumps({"settings": settings, "input": st, "size": size}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class _State:
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
                                        for f in _batch_files(b))
        return self.data

    def owned(self) -> set:
        return set(self.data.get("files", []))

    def save(self) -> None:
        _atomic_write_bytes(self.path, json.dumps(self.data, indent=1).encode())

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


def _output_files(cfg: RenderConfig, n: int) -> list[str]:
    if Path(cfg.output).suffix.lower() in VideoWriter.VIDEO_SUFFIXES:
        return [cfg.output, PREVIEW]
    return [f"{cfg.output}/{i:05d}.png" for i in range(n)] + [PREVIEW]


def _batch_files(b: Batch) -> list[str]:
    return [f"{KEYS}/{k:05d}.png" for k in b.frames[b.n_anchors:]] + [f"{LATENTS}/{b.index:04d}.pt"]


def _read(cfg: RenderConfig, info: VideoInfo, size: tuple[int, int]):
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
        for i, (t, img) in enumerate(_read(cfg, info, size)):
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


def _batch_frames(cfg: RenderConfig, info: VideoInfo, size: tuple[int, int], batches: Sequence[Batch]):
    """Yield (batch, [N, H, W, 3] frames) for `batches` from one streamed decode, holding only the current batch's
    frames plus key 0 and the previous batch's last key (the anchors)."""
    todo = list(batches)
    if not todo:
        return
    keep: dict[int, np.ndarray] = {}
    need_anchor = {0} | {b.frames[1] for b in todo if b.n_anchors}
    cur = 0
    for i, (_, img) in enumerate(_read(cfg, info, size)):
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


def _preview(path: Path, sources: list[np.ndarray], outputs: list[np.ndarray], height: int = 160) -> None:
    """Input keyframes on the top row, their stylised versions below."""
    def row(imgs):
        scaled = [cv2.resize(im, (max(1, round(im.shape[1] * height / im.shape[0])), height),
                             interpolation=cv2.INTER_AREA) for im in imgs]
        return np.concatenate(scaled, axis=1)
    _save_png(path, np.concatenate([row(sources), row(outputs)], axis=0))


def _preflight(cfg: RenderConfig, info: VideoInfo, size: tuple[int, int], device: torch.device,
               default_model: bool) -> bool:
    """The checks before anything is written or loaded: the output is not the input, the model can be had
    (when the default stylizer will load one), the memory fits (unless cfg.force). Returns whether the model
    must be loaded from the local cache only."""
    root = Path(cfg.save_path)
    check_not_input(info.path, root, cfg.output)
    out = root / cfg.output
    if Path(cfg.output).suffix.lower() in VideoWriter.VIDEO_SUFFIXES and out.is_dir():
        raise ValueError(f"output: '{out}' is a folder; choose another --output")
    local_only = False
    if default_model:
        from ..models.sd import CONTROLNET_IDS, TINY_NAMES
        local_only = preflight.check_model_available(cfg.model, "unet/config.json", "sd_path")
        if cfg.use_controlnet and cfg.model not in TINY_NAMES:  # the tiny model brings its own ControlNet
            local_only |= preflight.check_model_available(CONTROLNET_IDS[cfg.controlnet_type], "config.json",
                                                          "controlnet_type")
    if not cfg.force:
        from ..models.sd import TINY_NAMES
        on_gpu = device.type == "cuda"
        dtype_bytes = 4 if cfg.dtype == "float32" or (cfg.dtype == "auto" and not on_gpu) else 2
        model = None if not default_model else "tiny" if cfg.model in TINY_NAMES else "sd15"
        est = preflight.estimate_memory(size, cfg.batch_size, model, dtype_bytes, on_gpu, cfg.use_controlnet)
        preflight.check_memory(est, device, size)
    return local_only


def make_propagation(cfg: RenderConfig, flow: Optional[FlowEstimator] = None
                     ) -> Callable[[Iterable[np.ndarray], Sequence[int], Callable[[int], np.ndarray]],
                                   Iterator[np.ndarray]]:
    """The non-keyframe stage of `cfg` for any process: (source frames stream, keys, load_key) -> the stylised
    stream of every frame, with cfg's flow estimator (`flow` replaces it), method, backend and device."""
    device = preflight.check_device(cfg.device)
    if flow is None:
        flow = flow_estimator(cfg)

    def run(frames: Iterable[np.ndarray], keys: Sequence[int], load_key: Callable[[int], np.ndarray]):
        return propagate(frames, keys, load_key, flow, device, backend=cfg.settings.backend, method=cfg.propagation)

    return run


class Runner(Protocol):
    """Where a render's work runs. `start()`: load what the batches need (before the state file is written).
    `use_threads(n)` (optional): the render's intra-op thread count (on resume the one its state file recorded)
    for the settings the runner hands to its stylizers and processes; called before `start()`.
    `run_batches(batches, load_anchors, finish, n)`: run the stream of (batch, frames) in order; batch k's anchors
    are batch k-1's per-step record (`load_anchors(k-1)` reads a finished one from disk); call `finish(batch,
    images, record)` for each finished batch (any order). `propagate(frames, keys, load_key)`: the stylised stream
    of every frame. `LocalRunner` runs both in this process; fresco.distributed.wavefront.WavefrontRunner on Ray
    actors."""

    def start(self) -> None: ...

    def run_batches(self, batches: Iterable[tuple[Batch, np.ndarray]], load_anchors: Callable[[int], list],
                    finish: Callable[[Batch, np.ndarray, list], None], n_batches: int) -> None: ...

    def propagate(self, frames: Iterable[np.ndarray], keys: Sequence[int],
                  load_key: Callable[[int], np.ndarray]) -> Iterator[np.ndarray]: ...


class LocalRunner:
    """Batches one after the other in this process through `stylizer` (built by `make_stylizer(cfg)`, default
    fresco.video.stylize.make_stylizer), then propagation in this process. One flow estimator (`flow`, default the
    one cfg names) serves the default stylizer's batches and the propagation."""

    def __init__(self, cfg: RenderConfig, stylizer: Optional[BatchStylizer] = None,
                 make_stylizer: Optional[Callable[[RenderConfig], BatchStylizer]] = None,
                 flow: Optional[FlowEstimator] = None, progress: bool = True, local_files_only: bool = False):
        self.cfg, self.stylizer, self.make_stylizer = cfg, stylizer, make_stylizer
        self.flow, self.progress, self.local_files_only = flow, progress, local_files_only

    def _flow(self) -> FlowEstimator:
        if self.flow is None:
            self.flow = flow_estimator(self.cfg)
        return self.flow

    def use_threads(self, n: int) -> None:
        self.cfg = self.cfg.replace(threads=n)

    def start(self) -> None:
        if self.stylizer is None and self.make_stylizer is not None:
            self.stylizer = self.make_stylizer(self.cfg)
        elif self.stylizer is None:
            from .stylize import make_stylizer
            self.stylizer = make_stylizer(self.cfg, progress=self.progress, local_files_only=self.local_files_only,
                                          flow=self._flow())

    def run_batches(self, batches, load_anchors, finish, n_batches: int) -> None:
        self.start()
        for b, frames in batches:
            record: list[torch.Tensor] = []
            images = self.stylizer(frames, load_anchors(b.index - 1) if b.n_anchors else None,
                                   lambda j, latents: record.append(latents.detach().cpu()), frame_indices=b.frames)
            finish(b, images, record)

    def propagate(self, frames, keys, load_key):
        return make_propagation(self.cfg, self._flow())(frames, keys, load_key)


def render(cfg: RenderConfig, stylizer: Optional[BatchStylizer] = None,
           make_stylizer: Optional[Callable[[RenderConfig], BatchStylizer]] = None,
           flow: Optional[FlowEstimator] = None, stop_after: Optional[int] = None,
           progress: bool = True, keyframes_only: bool = False,
           on_batch: Optional[Callable[[Batch, dict[int, Path]], None]] = None,
           on_frame: Optional[Callable[[int, int], None]] = None,
           should_stop: Optional[Callable[[], bool]] = None, runner: Optional["Runner"] = None
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
    local_only = _preflight(cfg, info, size, device, stylizer is None and make_stylizer is None)
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


def _render_locked(cfg: RenderConfig, info: VideoInfo, size: tuple[int, int], root: Path, runner: "Runner",
                   stop_after: Optional[int], progress: bool, progress_note: dict, keyframes_only: bool = False,
                   on_batch=None, on_frame=None, should_stop=None) -> Optional[RenderResult]:
    """render() once the output folder is locked; `progress_note` tracks finished/total batches for Ctrl-C."""
    from tqdm.auto import tqdm

    timings = {"keyframes_s": 0.0, "diffusion_s": 0.0, "propagation_s": 0.0}
    t0 = time.perf_counter()
    state = _State(root)
    fp = _fingerprint(cfg, info, size)
    old = state.load()
    if old is not None and (cfg.overwrite or not cfg.resume or (old["fingerprint"] != fp and not old.get("done"))):
        # only what the earlier render wrote goes; with no batch finished there is nothing to lose
        remove_owned(root, old.get("files", []))
        state.path.unlink()
        old = None
    elif old is not None and old["fingerprint"] != fp:
        raise ValueError(f"save_path: '{root}' holds a render of other settings or another input; use --overwrite "
                         f"to replace it or choose another folder")

    if old is None:
        keys, n, vfr_rate = select_keys(cfg, info, size)
        if n < 2:
            raise ValueError(f"input: '{cfg.file_path}' has {n} decodable frame(s); a video needs at least 2")
        warnings = []
        if not info.is_folder and n != info.n_frames:
            msg = f"input: the header of '{cfg.file_path}' promises {info.n_frames} frames but {n} decode"
            if cfg.strict:
                raise ValueError(f"{msg} (a truncated or damaged file); --strict refuses it")
            warnings.append(f"{msg} (a truncated or damaged file?); rendering the {n} that decode")
        if vfr_rate is not None:
            warnings.append(f"input: variable frame rate (header {float(info.fps):.3g} fps, average "
                            f"{float(vfr_rate):.3g} fps); the output keeps the source's timestamps")
        for w in warnings:
            _log(f"fresco: warning: {w}")
        batches = plan_batches(keys, cfg.batch_size)
        state.data = {"fingerprint": fp, "n_frames": n, "size": list(size), "fps": str(info.fps),
                      "vfr_fps": None if vfr_rate is None else str(vfr_rate), "keys": keys,
                      "batches": [[list(b.frames), b.n_anchors] for b in batches], "done": [], "complete": False,
                      "warnings": warnings, "files": [],
                      "threads": cfg.settings.threads or threads_mod.current()[0]}
    else:
        keys, n = state.data["keys"], state.data["n_frames"]
        batches = [Batch(i, tuple(f), a) for i, (f, a) in enumerate(state.data["batches"])]
        _log(f"fresco: resuming in {root}: {len(state.data['done'])}/{len(batches)} batches finished")
    # a resumed render keeps the thread count it started with (float reductions depend on it)
    threads = state.data.setdefault("threads", cfg.settings.threads or threads_mod.current()[0])
    if cfg.settings.threads not in (None, threads):
        _log(f"fresco: note: threads: resuming with the {threads} thread(s) this render started with, not "
             f"{cfg.settings.threads}")
    threads_mod.set_threads(threads)
    if hasattr(runner, "use_threads"):
        runner.use_threads(threads)
    vfr_rate = Fraction(state.data["vfr_fps"]) if state.data.get("vfr_fps") else None
    fps = vfr_rate or info.fps
    progress_note.update(done=len(state.data["done"]), total=len(batches))
    timings["keyframes_s"] = time.perf_counter() - t0
    for note in cfg.unused_notes():
        _log(f"fresco: note: {note}")
    _log(f"fresco: {n} frames at {size[0]}x{size[1]}, {float(fps):.4g} fps; {len(keys)} keyframes in "
         f"{len(batches)} batch(es) of up to {cfg.batch_size}")

    todo = [b for b in batches if b.index not in state.data["done"]]
    if not cfg.overwrite:
        # every path this render will write, checked before the model loads; PNG frames go only into a folder
        # that holds nothing but the renderer's own files
        planned = [f for b in todo for f in _batch_files(b)] + _output_files(cfg, n) + [cfg.output]
        refuse_foreign(foreign(root, planned, state.owned()))
    if todo:
        runner.start()
        state.save()  # the render has really started: from here on the folder is resumable
        bar = tqdm(total=len(batches), initial=len(batches) - len(todo), desc="batches", unit="batch",
                   disable=not progress)
        stopped = []

        def stream():
            for run_count, (b, frames) in enumerate(_batch_frames(cfg, info, size, todo)):
                if stop_after is not None and run_count >= stop_after:
                    stopped.append(b.index)
                    return
                if should_stop is not None and should_stop():
                    raise Cancelled(f"cancelled before batch {b.index}; {len(state.data['done'])}/{len(batches)} "
                                    f"batches are finished in '{root}' and a render of the same settings resumes")
                yield b, frames

        def finish(b: Batch, images: np.ndarray, record: list[torch.Tensor]) -> None:
            """A batch is done: its new keys and per-step anchor record go to disk, then the state says so."""
            expect = (len(b.frames), size[1], size[0], 3)
            if images.shape != expect or images.dtype != np.uint8:
                raise RuntimeError(f"stylizer returned {images.shape} {images.dtype}, expected {expect} uint8")
            state.claim(_batch_files(b), cfg.overwrite)
            new_keys = {k: root / KEYS / f"{k:05d}.png" for k in b.frames[b.n_anchors:]}
            for (k, path), img in zip(new_keys.items(), images[b.n_anchors:]):
                _save_png(path, img)
            buf = root / LATENTS / f"{b.index:04d}.pt"
            torch.save(record, buf.with_name(f".{buf.name}.tmp"))
            os.replace(buf.with_name(f".{buf.name}.tmp"), buf)
            state.data["done"] = sorted(set(state.data["done"]) | {b.index})
            state.save()
            progress_note["done"] = len(state.data["done"])
            bar.update(1)
            if on_batch is not None:
                on_batch(b, new_keys)

        t = time.perf_counter()
        try:
            runner.run_batches(stream(), lambda k: torch.load(root / LATENTS / f"{k:04d}.pt", map_location="cpu"),
                               finish, len(todo))
        finally:
            bar.close()
        timings["diffusion_s"] += time.perf_counter() - t
        if stopped:
            return None
    if keyframes_only:
        timings["total_s"] = time.perf_counter() - t0
        return RenderResult(None, root / "keys", None, keys, batches, n, float(info.fps), size, timings)

    t = time.perf_counter()
    preview_keys = set(keys[:: max(1, -(-len(keys) // PREVIEW_KEYS))][:PREVIEW_KEYS])
    sources, outputs, times = [], [], deque()

    def frames_with_preview():
        for i, (ts, img) in enumerate(_read(cfg, info, size)):
            if i in preview_keys:
                sources.append(img)
            if vfr_rate is not None:
                times.append(ts)  # popped as the frame is written: at most the frames propagation holds
            yield img

    state.claim(_output_files(cfg, n), cfg.overwrite)
    out_path = root / cfg.output
    with VideoWriter(out_path, fps, size, audio_from=None if info.is_folder else info.path, crf=cfg.crf,
                     time_base=info.time_base if vfr_rate is not None else None) as writer:
        count = 0
        bar = tqdm(total=n, desc="frames", unit="frame", disable=not progress)
        for out in runner.propagate(frames_with_preview(), keys, lambda k: _load_png(root / KEYS / f"{k:05d}.png")):
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
    timings["propagation_s"] = time.perf_counter() - t
    preview = root / PREVIEW
    _preview(preview, sources, outputs)
    state.data["complete"] = True
    state.save()
    timings["total_s"] = time.perf_counter() - t0
    return RenderResult(out_path, root / KEYS, preview, keys, batches, n, float(fps), size, timings,
                        list(state.data.get("warnings", [])))
