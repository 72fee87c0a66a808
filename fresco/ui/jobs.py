"""What the web UI's buttons do, without Gradio: describe an input, plan and preview the keyframes, run the renderer
(keyframes only, then propagation) in a worker thread that reports progress events and stops on cancel, package
the outputs. Errors are the CLI's one-line messages. The Gradio layer (fresco.ui.app) only wires these up."""
from __future__ import annotations

import io
import json
import os
import queue
import sys
import threading
import traceback
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import cv2
import numpy as np

from ..config import RenderConfig
from ..pipeline import FrescoPipeline
from ..constants import KEYS, STATE, one_line
from ..video import Batch, plan_batches, probe, processing_size, read_frames
from ..video.render import Cancelled, RenderResult, render
from ..video.runner import BatchStylizer
from ..video.source import select_keys
from ..video.stylize import make_stylizer
from ..video import safe_fs

USER_ERRORS = (ValueError, FileNotFoundError, RuntimeError, TypeError)


def error_line(e: BaseException) -> str:
    """The one-line message the CLI prints for `e` (`fresco: error: ...`); unexpected errors say what they are and
    that the traceback is in the server's log, never the traceback itself."""
    if isinstance(e, USER_ERRORS + (Cancelled,)):
        return f"fresco: error: {one_line(str(e).strip()) or type(e).__name__}"
    return f"fresco: error: internal {type(e).__name__}: {one_line(str(e).strip())} (traceback in the server log)"


def log_traceback(e: BaseException) -> None:
    """Unexpected errors: the traceback goes to the server's stderr (the page gets `error_line`)."""
    if not isinstance(e, USER_ERRORS):
        traceback.print_exception(e, file=sys.stderr)


@dataclass
class InputSummary:
    """An input as the UI describes it: container frame count, fps, source and processing sizes (W, H)."""
    path: str
    n_frames: int
    fps: float
    size: tuple[int, int]
    processing: tuple[int, int]

    def text(self) -> str:
        return (f"**{Path(self.path).name}**: {self.n_frames} frames, {self.fps:g} fps, {self.size[0]}x{self.size[1]}"
                f" · processed at {self.processing[0]}x{self.processing[1]}")


def describe_input(cfg: RenderConfig) -> InputSummary:
    """Probe `cfg.file_path` and work out the processing size from cfg.size / cfg.short_side."""
    if not cfg.file_path:
        raise ValueError("file_path: upload a video or give the path of a video file or folder of images")
    info = probe(cfg.file_path, cfg.fps)
    size = cfg.frame_size() or processing_size(info.width, info.height, cfg.short_side)
    return InputSummary(info.path, info.n_frames, float(info.fps), (info.width, info.height), size)


@dataclass
class KeyframePlan:
    """Step 1's result: the keyframes, their anchored batches, the decoded frame count and one thumbnail per key
    ([h, w, 3] uint8) with a caption naming its batch."""
    keys: list[int]
    batches: list[Batch]
    n_frames: int
    gallery: list[tuple[np.ndarray, str]]

    def text(self) -> str:
        rows = [f"batch {b.index + 1}: {', '.join(map(str, b.new))}" + (
            f" (anchors {b.frames[0]}, {b.frames[1]})" if b.n_anchors else "") for b in self.batches]
        return f"{len(self.keys)} keyframes of {self.n_frames} frames in {len(self.batches)} batch(es)\n\n" + \
            "\n".join(f"- {r}" for r in rows)


def plan_keyframes(cfg: RenderConfig, thumb_height: int = 128) -> KeyframePlan:
    """The keyframes and batches a render of `cfg` will use (the renderer's own selection), with thumbnails."""
    info = probe(cfg.file_path, cfg.fps)
    size = cfg.frame_size() or processing_size(info.width, info.height, cfg.short_side)
    keys, n, _ = select_keys(cfg, info, size)
    if n < 2:
        raise ValueError(f"input: '{cfg.file_path}' has {n} decodable frame(s); a video needs at least 2")
    batches = plan_batches(keys, cfg.batch_size)
    batch_of = {}
    for b in batches:
        for k in b.new:
            batch_of[k] = b.index
    want, thumbs = set(keys), {}
    for i, img in enumerate(read_frames(cfg.file_path, size)):
        if i in want:
            h, w = img.shape[:2]
            thumbs[i] = cv2.resize(img, (max(1, round(w * thumb_height / h)), thumb_height),
                                   interpolation=cv2.INTER_AREA) if h > thumb_height else img
        if i >= keys[-1]:
            break
    gallery = [(thumbs[k], f"key {k} · batch {batch_of[k] + 1}") for k in keys]
    return KeyframePlan(keys, batches, n, gallery)


def finished_keys(save_path: str | Path) -> list[tuple[str, str]]:
    """(png path, caption) of every stylised keyframe in an output folder, in frame order."""
    d = Path(save_path) / "keys"
    if d.is_symlink() or not d.is_dir():  # the renderer never writes through a link: nothing of its own to show
        return []
    return [(str(p), f"key {int(p.stem)}") for p in sorted(d.glob("*.png")) if not p.is_symlink()]


def zip_keys(save_path: Path, keys: Sequence[int], folder: Path) -> Path:
    """The render's stylised keyframes `keys` as one zip for download, `folder`/keyframes.zip: nothing is written
    into the user's output folder, and each keyframe is read through its gate (a regular file, never through a
    link)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for k in keys:
            name = f"{k:05d}.png"
            z.writestr(name, safe_fs.read_bytes(Path(save_path), f"{KEYS}/{name}"))
    dest = Path(folder) / "keyframes.zip"
    with os.fdopen(safe_fs.create(dest, "keys_zip"), "wb") as f:  # never through a link planted there
        f.write(buf.getvalue())
    return dest


@dataclass
class Event:
    """One progress report from a job: kind is 'step' (batch, n_batches, step, n_steps), 'batch' (a batch is
    finished: batch, n_batches), 'frame' (done, total), 'done' (result), 'cancelled' or 'error' (message)."""
    kind: str
    data: dict


class PipelineCache:
    """The last loaded FrescoPipeline, kept while the model / ControlNet / device / dtype stay the same (loading
    SD1.5 takes longer than rendering a short clip)."""

    def __init__(self):
        self.key: Optional[tuple] = None
        self.pipe = None
        self.lock = threading.Lock()

    def get(self, cfg: RenderConfig):
        from ..video.stylize import model_kwargs, models_key
        key = (cfg.model, cfg.controlnet_type if cfg.use_controlnet else None, cfg.device, cfg.dtype, cfg.flow) \
            + models_key(cfg)
        with self.lock:
            if key != self.key:
                self.pipe = None
                self.pipe = FrescoPipeline.from_pretrained(cfg.model, controlnet_type=key[1], device=cfg.device,
                                                           dtype=cfg.dtype, flow=cfg.flow, **model_kwargs(cfg))
                self.key = key
            return self.pipe


StylizerFactory = Callable[[RenderConfig, Callable[[int, int], None]], BatchStylizer]


def pipeline_stylizer(cache: PipelineCache) -> StylizerFactory:
    """The default stylizer factory: the cached pipeline behind fresco.stylize.make_stylizer, reporting steps."""
    def factory(cfg: RenderConfig, on_step: Callable[[int, int], None]) -> BatchStylizer:
        return make_stylizer(cfg, pipe=cache.get(cfg), on_step=on_step)
    return factory


class Job:
    """One render run in a worker thread: `stage` 'keyframes' (every batch, then stop) or 'propagate' (resume the
    folder: any missing batch, then propagation). `events()` yields progress until the run ends; `cancel()` asks
    it to stop at the next denoising step, batch or frame, leaving the output folder resumable."""

    def __init__(self, cfg: RenderConfig, stage: str, make_stylizer: StylizerFactory):
        if stage not in ("keyframes", "propagate"):
            raise ValueError(f"stage: one of ('keyframes', 'propagate'), got {stage!r}")
        self.cfg, self.stage, self.make_stylizer = cfg, stage, make_stylizer
        self.stop = threading.Event()
        self.q: queue.Queue[Event] = queue.Queue()
        self.batch_i = 0
        self.n_batches = 0
        self.thread = threading.Thread(target=self._run, name="fresco-ui-job", daemon=True)

    def cancel(self) -> None:
        self.stop.set()

    def _read_state(self) -> None:
        with open(Path(self.cfg.save_path) / STATE) as f:
            data = json.load(f)
        self.n_batches = len(data["batches"])
        self.batch_i = len(data["done"])

    def _on_step(self, done: int, total: int) -> None:
        if self.stop.is_set():
            raise Cancelled(f"cancelled during batch {self.batch_i + 1}; finished batches are kept in "
                            f"'{self.cfg.save_path}' and step 2 resumes from them")
        self.q.put(Event("step", dict(batch=self.batch_i + 1, n_batches=self.n_batches, step=done, n_steps=total)))

    def _on_batch(self, b: Batch, paths: dict[int, Path]) -> None:
        self.batch_i += 1
        self.q.put(Event("batch", dict(batch=self.batch_i, n_batches=self.n_batches, keys=list(paths))))

    def _run(self) -> None:
        try:
            stylizer = None

            def lazy(frames, *args, **kwargs):
                """The real stylizer, built (model loaded) when the renderer reaches its first batch."""
                nonlocal stylizer
                if stylizer is None:
                    self._read_state()  # the renderer wrote state.json before its first batch
                    stylizer = self.make_stylizer(self.cfg, self._on_step)
                return stylizer(frames, *args, **kwargs)
            res = render(self.cfg, stylizer=lazy, progress=False, keyframes_only=self.stage == "keyframes",
                         on_batch=self._on_batch, should_stop=self.stop.is_set,
                         on_frame=lambda d, t: self.q.put(Event("frame", dict(done=d, total=t))))
            self.q.put(Event("done", dict(result=res)))
        except Cancelled as e:
            self.q.put(Event("cancelled", dict(message=str(e))))
        except BaseException as e:  # noqa: BLE001 -- every failure must reach the page as one line
            log_traceback(e)
            self.q.put(Event("error", dict(message=error_line(e))))

    def events(self, poll_s: float = 0.1) -> Iterator[Event]:
        """Start the run and yield its events; the last one is 'done', 'cancelled' or 'error'."""
        self.thread.start()
        while True:
            try:
                ev = self.q.get(timeout=poll_s)
            except queue.Empty:
                if not self.thread.is_alive() and self.q.empty():
                    return
                continue
            yield ev
            if ev.kind in ("done", "cancelled", "error"):
                self.thread.join()
                return


def outputs(result: RenderResult, save_path: str | Path, folder: Path) -> dict[str, Any]:
    """The downloads after propagation: video, keyframes zip (written into `folder`), preview image."""
    return dict(video=str(result.video), preview=str(result.preview),
                keys_zip=str(zip_keys(Path(save_path), result.keys, folder)))
