"""Whole-video rendering: keyframe selection, anchored batches through the one-batch pipeline, propagation to the
other frames, streamed output; resumable from the output folder after a crash (one finished batch at a time)."""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Protocol, Sequence

import cv2
import numpy as np
import torch

from ..config import RenderConfig
from .keyframes import Batch, fixed_keyframes, frame_errors, plan_batches, select_keyframes
from .propagate import propagate
from ..models.flow import FlowEstimator
from ..pipeline.core import AnchorCallback, AnchorSource
from .io import VideoInfo, VideoWriter, probe, processing_size, read_frames

STATE = "state.json"
PREVIEW_KEYS = 6


class BatchStylizer(Protocol):
    """Renders one batch of keyframes (the one-batch FRESCO pipeline behind a narrow interface).

    frames: [N, H, W, 3] uint8 RGB at the processing size, in batch order. anchor_latents: None for the first
    batch, else the latents [2, C, h, w] that frames 0 and 1 of this batch (the anchors) must hold at the start of
    each run step j: a sequence (one per run step) or a callable j -> tensor that may block until step j's anchors
    exist (so a distributed renderer can hand them from batch k-1 to batch k step by step). on_anchor_record(j,
    latents): called at the start of each run step j (after the anchors were restored) with the [2, C, h, w]
    latents of frames 0 and N-1, which become the next batch's anchors. Returns the stylised frames
    [N, H, W, 3] uint8."""

    def __call__(self, frames: np.ndarray, anchor_latents: Optional[AnchorSource] = None,
                 on_anchor_record: Optional[AnchorCallback] = None) -> np.ndarray: ...


@dataclass
class RenderResult:
    video: Path
    keys_dir: Path
    preview: Path
    keys: list[int]
    batches: list[Batch]
    n_frames: int
    fps: float
    size: tuple[int, int]
    timings: dict = field(default_factory=dict)


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
    skip = {"save_path", "output", "resume", "overwrite", "crf", "device", "run_ebsynth", "max_process"}
    settings = {k: v for k, v in cfg.to_dict().items() if k not in skip}
    p = Path(info.path)
    st = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(p.iterdir())] if p.is_dir() else \
        [(p.name, p.stat().st_size, p.stat().st_mtime_ns)]
    blob = json.dumps({"settings": settings, "input": st, "size": size}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class _State:
    """state.json in the output folder: the fingerprint, keys, batches and which batches are finished. Written
    atomically after each finished batch; a batch counts only once its keyframes and latents are on disk."""

    def __init__(self, root: Path):
        self.path = root / STATE
        self.data: dict = {}

    def load(self) -> Optional[dict]:
        if not self.path.exists():
            return None
        with open(self.path) as f:
            self.data = json.load(f)
        return self.data

    def save(self) -> None:
        _atomic_write_bytes(self.path, json.dumps(self.data, indent=1).encode())


def _clear(root: Path, cfg: RenderConfig) -> None:
    for name in (STATE, cfg.output, "preview.png"):
        p = root / name
        if p.is_dir():
            for f in p.iterdir():
                f.unlink()
            p.rmdir()
        elif p.exists():
            p.unlink()
    for sub in ("keys", "latents"):
        d = root / sub
        if d.is_dir():
            for f in d.iterdir():
                f.unlink()


def select_keys(cfg: RenderConfig, info: VideoInfo, size: tuple[int, int]) -> tuple[list[int], int]:
    """(keyframes, exact frame count) from one streamed decode at the processing size."""
    if cfg.mininterv == cfg.maxinterv:
        n = sum(1 for _ in read_frames(info.path, size))
        return (fixed_keyframes(n, cfg.mininterv) if n else []), n
    errors = frame_errors(read_frames(info.path, size))
    return (select_keyframes(errors, cfg.mininterv, cfg.maxinterv) if errors else []), len(errors)


def _batch_frames(info: VideoInfo, size: tuple[int, int], batches: Sequence[Batch]):
    """Yield (batch, [N, H, W, 3] frames) for `batches` from one streamed decode, holding only the current batch's
    frames plus key 0 and the previous batch's last key (the anchors)."""
    todo = list(batches)
    if not todo:
        return
    keep: dict[int, np.ndarray] = {}
    need_anchor = {0} | {b.frames[1] for b in todo if b.n_anchors}
    cur = 0
    for i, img in enumerate(read_frames(info.path, size)):
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


def make_propagation(cfg: RenderConfig, flow: Optional[FlowEstimator] = None
                     ) -> Callable[[Iterable[np.ndarray], Sequence[int], Callable[[int], np.ndarray]],
                                   Iterator[np.ndarray]]:
    """The non-keyframe stage for `cfg`: (source frames stream, keys, load_key) -> stylised frames stream, with the
    configured flow estimator (`flow` overrides it) on the render device."""
    if flow is None:
        from ..models.flow import DISFlow
        flow = DISFlow()
    device = _device(cfg)

    def run(frames: Iterable[np.ndarray], keys: Sequence[int], load_key: Callable[[int], np.ndarray]):
        return propagate(frames, keys, load_key, flow, device)

    return run


class Runner(Protocol):
    """Where a render's work runs. `run_batches(batches, load_anchors, finish, n)`: run the stream of (batch,
    frames) in order; batch k's anchors are batch k-1's per-step record (`load_anchors(k-1)` reads a finished one from
    disk); call `finish(batch, images, record)` for each finished batch (any order). `propagate(frames, keys,
    load_key)`: the stylised stream of every frame. `LocalRunner` runs both in this process;
    fresco.distributed.wavefront.WavefrontRunner on Ray actors."""

    def run_batches(self, batches: Iterable[tuple[Batch, np.ndarray]], load_anchors: Callable[[int], list],
                    finish: Callable[[Batch, np.ndarray, list], None], n_batches: int) -> None: ...

    def propagate(self, frames: Iterable[np.ndarray], keys: Sequence[int],
                  load_key: Callable[[int], np.ndarray]) -> Iterator[np.ndarray]: ...


class LocalRunner:
    """Batches one after the other in this process through `stylizer` (built on first use by `make_stylizer(cfg)`,
    default fresco.video.stylize.make_stylizer), then propagation in this process."""

    def __init__(self, cfg: RenderConfig, stylizer: Optional[BatchStylizer] = None,
                 make_stylizer: Optional[Callable[[RenderConfig], BatchStylizer]] = None,
                 flow: Optional[FlowEstimator] = None, progress: bool = True):
        self.cfg, self.stylizer, self.make_stylizer = cfg, stylizer, make_stylizer
        self.flow, self.progress = flow, progress

    def run_batches(self, batches, load_anchors, finish, n_batches: int) -> None:
        if self.stylizer is None and self.make_stylizer is not None:
            self.stylizer = self.make_stylizer(self.cfg)
        elif self.stylizer is None:
            from .stylize import make_stylizer
            self.stylizer = make_stylizer(self.cfg, progress=self.progress)
        for b, frames in batches:
            record: list[torch.Tensor] = []
            images = self.stylizer(frames, load_anchors(b.index - 1) if b.n_anchors else None,
                                   lambda j, latents: record.append(latents.detach().cpu()))
            finish(b, images, record)

    def propagate(self, frames, keys, load_key):
        return make_propagation(self.cfg, self.flow)(frames, keys, load_key)


def render(cfg: RenderConfig, stylizer: Optional[BatchStylizer] = None,
           make_stylizer: Optional[Callable[[RenderConfig], BatchStylizer]] = None,
           flow: Optional[FlowEstimator] = None, stop_after: Optional[int] = None,
           progress: bool = True, runner: Optional["Runner"] = None) -> Optional[RenderResult]:
    """Render `cfg.file_path` into `cfg.save_path`; returns what was written (None when `stop_after` batches were
    run and the render is left to resume). The stylizer is built lazily (after the input is checked) by
    `make_stylizer(cfg)` when not given. `runner` decides where batches and propagation run (default: a
    LocalRunner, in this process; fresco.distributed's WavefrontRunner spreads them over Ray actors); the state
    file, keys, latents, video and preview are written here either way."""
    from tqdm.auto import tqdm

    cfg.validate()
    timings = {"keyframes_s": 0.0, "diffusion_s": 0.0, "propagation_s": 0.0}
    t0 = time.perf_counter()
    info = probe(cfg.file_path, cfg.fps)
    size = cfg.frame_size() or processing_size(info.width, info.height, cfg.short_side)
    root = Path(cfg.save_path)
    root.mkdir(parents=True, exist_ok=True)
    (root / "keys").mkdir(exist_ok=True)
    (root / "latents").mkdir(exist_ok=True)
    state = _State(root)
    fp = _fingerprint(cfg, info, size)
    old = state.load()
    if old is not None and (cfg.overwrite or not cfg.resume):
        _clear(root, cfg)
        old = None
    elif old is not None and old.get("fingerprint") != fp:
        raise ValueError(f"save_path: '{root}' holds a render of other settings or another input; use --overwrite "
                         f"to replace it or choose another folder")

    if old is None:
        keys, n = select_keys(cfg, info, size)
        if n < 2:
            raise ValueError(f"input: '{cfg.file_path}' has {n} decodable frame(s); a video needs at least 2")
        batches = plan_batches(keys, cfg.batch_size)
        state.data = {"fingerprint": fp, "n_frames": n, "size": list(size), "fps": str(info.fps), "keys": keys,
                      "batches": [[list(b.frames), b.n_anchors] for b in batches], "done": [], "complete": False}
        state.save()
    else:
        keys, n = state.data["keys"], state.data["n_frames"]
        batches = [Batch(i, tuple(f), a) for i, (f, a) in enumerate(state.data["batches"])]
        _log(f"fresco: resuming in {root}: {len(state.data['done'])}/{len(batches)} batches finished")
    timings["keyframes_s"] = time.perf_counter() - t0
    for note in cfg.unused_notes():
        _log(f"fresco: note: {note}")
    _log(f"fresco: {n} frames at {size[0]}x{size[1]}, {info.fps} fps; {len(keys)} keyframes in {len(batches)} "
         f"batch(es) of up to {cfg.batch_size}")

    todo = [b for b in batches if b.index not in state.data["done"]]
    if runner is None:
        runner = LocalRunner(cfg, stylizer, make_stylizer, flow, progress)
    if todo:
        bar = tqdm(total=len(batches), initial=len(batches) - len(todo), desc="batches", unit="batch",
                   disable=not progress)

        def finish(b: Batch, images: np.ndarray, record: list[torch.Tensor]) -> None:
            """A batch is done: its new keys and per-step anchor record go to disk, then the state says so."""
            if images.shape[0] != len(b.frames) or images.dtype != np.uint8 or images.shape[1:] != (size[1], size[0], 3):
                raise RuntimeError(f"stylizer returned {images.shape} {images.dtype}, expected "
                                   f"{(len(b.frames), size[1], size[0], 3)} uint8")
            for k, img in zip(b.frames[b.n_anchors:], images[b.n_anchors:]):
                _save_png(root / "keys" / f"{k:05d}.png", img)
            buf = root / "latents" / f"{b.index:04d}.pt"
            torch.save(record, buf.with_name(f".{buf.name}.tmp"))
            os.replace(buf.with_name(f".{buf.name}.tmp"), buf)
            state.data["done"] = sorted(set(state.data["done"]) | {b.index})
            state.save()
            bar.update(1)

        stream = _batch_frames(info, size, todo if stop_after is None else todo[:stop_after])
        t = time.perf_counter()
        try:
            runner.run_batches(stream, lambda k: torch.load(root / "latents" / f"{k:04d}.pt", map_location="cpu"),
                               finish, len(todo))
        finally:
            bar.close()
        timings["diffusion_s"] += time.perf_counter() - t
        if stop_after is not None and stop_after < len(todo):
            return None

    t = time.perf_counter()
    preview_keys = set(keys[:: max(1, -(-len(keys) // PREVIEW_KEYS))][:PREVIEW_KEYS])
    sources, outputs = [], []

    def frames_with_preview():
        for i, img in enumerate(read_frames(info.path, size)):
            if i in preview_keys:
                sources.append(img)
            yield img

    out_path = root / cfg.output
    with VideoWriter(out_path, info.fps, size, audio_from=None if info.is_folder else info.path,
                     crf=cfg.crf) as writer:
        count = 0
        bar = tqdm(total=n, desc="frames", unit="frame", disable=not progress)
        for out in runner.propagate(frames_with_preview(), keys, lambda k: _load_png(root / "keys" / f"{k:05d}.png")):
            if count in preview_keys:
                outputs.append(out)
            writer.write(out)
            count += 1
            bar.update(1)
        bar.close()
        if count != n:
            raise RuntimeError(f"input: decoded {count} frames now but {n} on the first pass")
    timings["propagation_s"] = time.perf_counter() - t
    preview = root / "preview.png"
    _preview(preview, sources, outputs)
    state.data["complete"] = True
    state.save()
    timings["total_s"] = time.perf_counter() - t0
    return RenderResult(out_path, root / "keys", preview, keys, batches, n, float(info.fps), size, timings)


def _device(cfg: RenderConfig) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)
