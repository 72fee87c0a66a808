"""One long video across K Ray actors by a step wavefront, and propagation fanned out over key gaps.

Batch k's anchors at run step j are batch k-1's latents of its frames 0 and N-1 at step j, so batch k may run step j
as soon as batch k-1 has published step j (on the `AnchorBoard`). Actor j runs batches j, j+K, ...: with S run steps
and B batches the keyframe pass takes about S+B-1 step-times on min(K, B) actors instead of S*B on one. Every batch
computes exactly what the single-process renderer computes (same inputs, same anchors, same seed), so the output is
bit-identical to `fresco render` with the same torch thread count per process and the same kind of device.
The driver keeps the renderer's bookkeeping (state file, keys, latents, resume); actors only compute."""
from __future__ import annotations

import os
from typing import Callable, Iterable, Iterator, Optional, Sequence

import numpy as np

from ..config import RenderConfig
from ..video.keyframes import Batch
from ..video.render import render
from ..video.runner import make_propagation
from ..video.stylize import make_stylizer
from .anchors import AnchorBoard
from .cluster import actor_resources, connect
from .pool import ActorPool

# in-between frames of how many key gaps one propagation task takes
GAPS_PER_TASK = 2


class WavefrontWorker:
    """An actor's body (ray.remote applied by the runner): loads the model once, runs batches against the anchor
    board, and propagates segments of the video."""

    def __init__(self, cfg: RenderConfig):
        if cfg.settings.threads is not None:  # the render's count (Ray's default is OMP_NUM_THREADS=1)
            from ..threads import set_threads
            set_threads(cfg.settings.threads)
        self.cfg = cfg
        self._stylizer = None
        self._propagate = None

    def pid(self) -> int:
        return os.getpid()

    def run_batch(self, index: int, frames: np.ndarray, frame_indices: Sequence[int], anchors, board) -> tuple:
        """Run batch `index`; anchors: None (first batch), the previous batch's per-step list (from disk), or the
        previous batch's index on the board (wait for each step's entry). Publishes this batch's per-step record on
        the board and returns (images, record, this actor's pid)."""
        import ray

        if self._stylizer is None:
            self._stylizer = make_stylizer(self.cfg)
        source = anchors
        if isinstance(anchors, int):
            source = lambda j: ray.get(board.get.remote(anchors, j))  # noqa: E731
        record = []

        def publish(j: int, latents) -> None:
            latents = latents.detach().cpu()
            record.append(latents)
            board.put.remote(index, j, latents)

        images = self._stylizer(frames, source, publish, frame_indices=frame_indices)
        return images, record, os.getpid()

    def propagate_segment(self, frames: list, keys: Sequence[int], key_images: dict) -> list:
        """The stylised frames of one segment: `frames` from a key to the next segment's first key (exclusive) or
        the video's end; keys relative to the segment's first frame; key_images: key -> stylised key image."""
        if self._propagate is None:
            self._propagate = make_propagation(self.cfg)
        return list(self._propagate(iter(frames), keys, key_images.__getitem__))


class WavefrontRunner:
    """Runs a render's keyframe batches and propagation on `num_actors` Ray actors (see the module docstring); give
    it to `fresco.video.render.render(cfg, runner=...)`. on_event sees {"kind": "batch", "index", "pid"} for every
    finished batch, and retries."""

    def __init__(self, cfg: RenderConfig, num_actors: int = 2, address: Optional[str] = None, max_retries: int = 2,
                 gaps_per_task: int = GAPS_PER_TASK, on_event: Optional[Callable[[dict], None]] = None):
        if isinstance(num_actors, bool) or not isinstance(num_actors, int) or num_actors < 1:
            raise ValueError(f"actors: a positive number of Ray actors, got {num_actors!r}")
        self.cfg, self.num_actors, self.address = cfg, num_actors, address
        self.max_retries, self.gaps_per_task, self.on_event = max_retries, gaps_per_task, on_event
        self._ray = self._pool = self._board = None

    def start(self) -> None:
        """Actors and their models start with the first batch (each loads its model once)."""

    def use_threads(self, n: int) -> None:
        """The render's intra-op thread count (a resume's recorded one), for every actor started after this."""
        self.cfg = self.cfg.replace(threads=n)

    def _start(self, n: int):
        if self._pool is None:
            self._ray = connect(self.address)
            worker = self._ray.remote(**actor_resources(self._ray))(WavefrontWorker)
            self._pool = ActorPool(self._ray, worker, max(1, min(self.num_actors, n)), (self.cfg,),
                                   self.max_retries, self.on_event)
            self._board = self._ray.remote(num_cpus=0)(AnchorBoard).remote()
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._ray.kill(self._board)
            self._pool = self._board = None

    def run_batches(self, batches: Iterable[tuple[Batch, np.ndarray]], load_anchors: Callable[[int], list],
                    finish: Callable[[Batch, np.ndarray, list], None], n_batches: int) -> None:
        """Run `batches` (a stream of (batch, frames) in order) with at most one batch per actor at a time; batch k
        takes its anchors from disk when batch k-1 finished before (`load_anchors(k-1)`), else from the board while
        k-1 runs. `finish(batch, images, record)` is called on the driver as batches complete (any order)."""
        pool = self._start(n_batches)
        by_index: dict[int, Batch] = {}
        finished: set[int] = set()

        def collect(timeout=None) -> None:
            for index, err, out in pool.wait(timeout):
                if err is not None:
                    raise err if not isinstance(err, RuntimeError) else RuntimeError(f"batch {index}: {err}")
                images, record, pid = out
                finish(by_index[index], images, record)
                finished.add(index)
                if self.on_event:
                    self.on_event({"kind": "batch", "index": index, "pid": pid})
                # the follower of index-1 is done: nobody needs index-1's entries any more
                self._board.drop.remote(index - 1)

        for b, frames in batches:
            while not pool.has_idle():
                collect()
            by_index[b.index] = b
            prev = b.index - 1
            if not b.n_anchors:
                anchors = None
            elif prev in finished or prev not in by_index:
                anchors = load_anchors(prev)
            else:
                anchors = prev
            pool.submit(b.index, "run_batch", b.index, frames, b.frames, anchors, self._board)
        while pool.busy:
            collect()

    def propagate(self, frames: Iterable[np.ndarray], keys: Sequence[int],
                  load_key: Callable[[int], np.ndarray]) -> Iterator[np.ndarray]:
        """The renderer's propagation, fanned out: the video is cut at every `gaps_per_task`-th keyframe into
        segments (each also holding the next segment's first key, which closes its last gap), each propagated by an
        actor; outputs come back in order, with at most two segments per actor in flight (memory flat in the video's
        length)."""
        pool = self._start(len(keys))
        keys = list(keys)
        cuts = set(keys[::self.gaps_per_task])
        window = 2 * pool.size
        results: dict[int, list] = {}
        drop_last: dict[int, bool] = {}
        next_out = 0

        def segments():
            seg, start, idx = [], 0, 0
            for i, img in enumerate(frames):
                if i in cuts and i != start:
                    seg.append(img)
                    yield idx, start, seg, True
                    idx, seg, start = idx + 1, [], i
                seg.append(img)
            if seg:
                yield idx, start, seg, False

        def emit(idx: int) -> list:
            out = results.pop(idx)
            return out[:-1] if drop_last.pop(idx) else out

        for idx, start, seg, closed in segments():
            inside = [k for k in keys if start <= k < start + len(seg)]
            drop_last[idx] = closed
            pool.submit(idx, "propagate_segment", seg, [k - start for k in inside],
                        {k - start: load_key(k) for k in inside})
            while idx + 1 - next_out >= window or next_out in results:
                if next_out in results:
                    yield from emit(next_out)
                    next_out += 1
                else:
                    self._gather(pool, results)
        while drop_last or results:
            if next_out not in results:
                self._gather(pool, results)
                continue
            yield from emit(next_out)
            next_out += 1

    @staticmethod
    def _gather(pool, results: dict) -> None:
        for idx, err, out in pool.wait():
            if err is not None:
                raise err if not isinstance(err, RuntimeError) else RuntimeError(f"propagation segment {idx}: {err}")
            results[idx] = out


def render_wavefront(cfg: RenderConfig, num_actors: int = 2, address: Optional[str] = None, progress: bool = True,
                     max_retries: int = 2, on_event: Optional[Callable[[dict], None]] = None):
    """`fresco render` of one video with its keyframe batches and propagation spread over `num_actors` Ray actors;
    the same folder, files and resume as `fresco.video.render.render`. Returns its RenderResult."""
    runner = WavefrontRunner(cfg, num_actors, address, max_retries, on_event=on_event)
    try:
        return render(cfg, runner=runner, progress=progress)
    finally:
        runner.close()
