"""Where a render's work runs: the `BatchStylizer` interface of one keyframe batch, the `Runner` protocol (batches,
then propagation), `LocalRunner` (both in this process) and `make_propagation` (the non-keyframe stage of a config,
for any process). fresco.distributed.wavefront.WavefrontRunner is the other Runner."""
from __future__ import annotations

from typing import Callable, Iterable, Iterator, Optional, Protocol, Sequence

import numpy as np
import torch

from ..config import RenderConfig
from ..models.flow import FlowEstimator, for_propagation
from ..pipeline.core import AnchorCallback, AnchorSource
from . import preflight
from .keyframes import Batch
from .propagate import propagate
from . import stylize
from .stylize import flow_estimator


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


def make_propagation(cfg: RenderConfig, flow: Optional[FlowEstimator] = None
                     ) -> Callable[[Iterable[np.ndarray], Sequence[int], Callable[[int], np.ndarray]],
                                   Iterator[np.ndarray]]:
    """The non-keyframe stage of `cfg` for any process: (source frames stream, keys, load_key) -> the stylised
    stream of every frame, with cfg's flow estimator (`flow` replaces it; the default DIS runs at its finer
    propagation preset, fresco.models.flow.for_propagation), method (and its `patch` knobs), backend and device."""
    device = preflight.check_device(cfg.device)
    flow = for_propagation(flow if flow is not None else flow_estimator(cfg))

    def run(frames: Iterable[np.ndarray], keys: Sequence[int], load_key: Callable[[int], np.ndarray]):
        return propagate(frames, keys, load_key, flow, device, backend=cfg.settings.backend, method=cfg.propagation,
                         patch_params=cfg.patch, deflicker=cfg.deflicker)

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
            # looked up at call time: a test or an embedding program may replace the default
            self.stylizer = stylize.make_stylizer(self.cfg, progress=self.progress,
                                                  local_files_only=self.local_files_only, flow=self._flow())

    def run_batches(self, batches, load_anchors, finish, n_batches: int) -> None:
        self.start()
        for b, frames in batches:
            record: list[torch.Tensor] = []
            images = self.stylizer(frames, load_anchors(b.index - 1) if b.n_anchors else None,
                                   lambda j, latents: record.append(latents.detach().cpu()), frame_indices=b.frames)
            finish(b, images, record)

    def propagate(self, frames, keys, load_key):
        return make_propagation(self.cfg, self._flow())(frames, keys, load_key)
