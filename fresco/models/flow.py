"""Optical flow of a keyframe batch behind a pluggable estimator interface, and the batch's occlusion masks
(docs/algorithm.md, "Flow and occlusion"): cyclic pairs (i, i+1) for i = 0..N-2 plus the wrap pair (N-1, 0).

Estimators (docs/flow_and_saliency.md): OpenCV DIS (default, offline, CPU), torchvision RAFT (weights from a local
file or the torch hub cache, never downloaded) and the published GMFlow (fresco.models.gmflow, `gmflow_path`). Any
callable `(src, dst) -> flow` fits (see `FlowEstimator`); one that also has `bidirectional(src, dst) -> (fwd, bwd)`
gives both directions from one pass (`flow_pair`)."""
from __future__ import annotations

import os
from typing import Optional, Protocol, Tuple, Union

import numpy as np
import torch

from fresco_kernels import occlusion_from_flows

from ..constants import FLOW_ESTIMATORS
from .checkpoint import load_into, load_tensors
from .gmflow import GMFlowEstimator

__all__ = ["FlowEstimator", "DISFlow", "DIS_PRESETS", "RAFTFlow", "get_flow_estimator", "FLOW_ESTIMATORS",
           "batch_flows", "flow_pair", "for_propagation", "PROPAGATION_DIS_PRESET"]



class FlowEstimator(Protocol):
    """Dense optical flow: src, dst [B, 3, H, W] float RGB in 0..255 -> [B, 2, H, W] float32 flow src -> dst in
    pixels on src's device (src(p) matches dst(p + flow(p)); channel 0 = x)."""

    def __call__(self, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor: ...


# preset -> the OpenCV preset it starts from ("fine" refines "medium" further, `DISFlow`)
_DIS_BASE = {"ultrafast": "ULTRAFAST", "fast": "FAST", "medium": "MEDIUM", "fine": "MEDIUM"}
DIS_PRESETS = tuple(_DIS_BASE)


class DISFlow:
    """OpenCV DIS optical flow (offline, CPU) behind the `FlowEstimator` interface. preset: one of DIS_PRESETS;
    OpenCV's three, and "fine": "medium" down to the full resolution (finest scale 0, where "medium" stops at half)
    with 5 variational refinement passes, about 3x medium's time. The propagation uses "fine" (`for_propagation`)."""

    def __init__(self, preset: str = "medium"):
        import cv2
        if not isinstance(preset, str) or preset not in _DIS_BASE:
            raise ValueError(f"preset: one of {list(DIS_PRESETS)}, got {preset!r}")
        self.preset = preset
        self._dis = cv2.DISOpticalFlow_create(getattr(cv2, "DISOPTICAL_FLOW_PRESET_" + _DIS_BASE[preset]))
        if preset == "fine":
            self._dis.setFinestScale(0)
            self._dis.setVariationalRefinementIterations(5)
        self._cv2 = cv2

    def _gray(self, x: torch.Tensor) -> np.ndarray:
        rgb = x.permute(1, 2, 0).clamp(0, 255).round().to(torch.uint8).cpu().numpy()
        return self._cv2.cvtColor(rgb, self._cv2.COLOR_RGB2GRAY)

    def __call__(self, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
        flows = [torch.from_numpy(self._dis.calc(self._gray(s), self._gray(d), None)).permute(2, 0, 1)
                 for s, d in zip(src, dst)]
        return torch.stack(flows).to(device=src.device, dtype=torch.float32)


class RAFTFlow:
    """torchvision's RAFT (large) behind the `FlowEstimator` interface, all pairs in one batched call on `device`.
    Weights from `path` (a state_dict file such as torchvision's raft_large_C_T_SKHT_V2-ff5fadd5.pth) or, without
    it, the torch hub cache (`torch.hub.get_dir()/checkpoints`); otherwise a clear error says where to put them
    (nothing is downloaded). H and W must be multiples of 8."""

    def __init__(self, device: Union[str, torch.device] = "cpu", num_flow_updates: int = 12,
                 path: Optional[str] = None):
        try:
            from torchvision.models.optical_flow import Raft_Large_Weights, raft_large
        except ImportError as e:
            raise RuntimeError("flow='raft' needs torchvision importable beside this torch (pip install "
                               f"torchvision; {e}); use flow='dis' or 'gmflow' otherwise") from e
        if path is not None:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"raft_path: no such file '{path}' (a torchvision RAFT-large state_dict)")
        else:
            weights = Raft_Large_Weights.DEFAULT
            path = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))
            if not os.path.isfile(path):
                raise RuntimeError(f"flow='raft': RAFT weights are not cached at '{path}'; download {weights.url} "
                                   "there yourself or give raft_path (this package never downloads weights), or "
                                   "use flow='dis'")
        model = raft_large(weights=None, progress=False)
        load_into(model, load_tensors(path, "raft_path"), path, "raft_path")
        self.model = model.to(device).eval().requires_grad_(False)
        self.num_flow_updates = num_flow_updates

    @torch.no_grad()
    def __call__(self, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
        dev = next(self.model.parameters()).device
        a = (src.to(dev, torch.float32) / 127.5 - 1.0)
        b = (dst.to(dev, torch.float32) / 127.5 - 1.0)
        flow = self.model(a, b, num_flow_updates=self.num_flow_updates)[-1]
        return flow.to(src.device)


def get_flow_estimator(flow: Union[str, FlowEstimator, None], device: Union[str, torch.device] = "cpu", *,
                       gmflow_path: Optional[str] = None, raft_path: Optional[str] = None) -> FlowEstimator:
    """An estimator from a name ("dis" default, "raft", "gmflow": needs `gmflow_path`) or the callable itself."""
    if flow is None or flow == "dis":
        return DISFlow()
    if flow == "raft":
        return RAFTFlow(device, path=raft_path)
    if flow == "gmflow":
        if not gmflow_path:
            raise ValueError("gmflow_path: flow='gmflow' needs the GMFlow checkpoint (gmflow_sintel-0c07dcb3.pth), "
                             "got none")
        return GMFlowEstimator(gmflow_path, device)
    if callable(flow) and not isinstance(flow, str):
        return flow
    raise ValueError(f"flow: one of {FLOW_ESTIMATORS} or a callable (src, dst) -> flow, got {flow!r}")


# the DIS preset of the non-keyframes: on real clips (benchmarks/RESULTS.md, "Real footage", "flow estimator")
# "fine" raised the flow blend by +0.58 dB and `auto` by +0.15 dB at 256 px over "medium", for ~28 ms more per
# flow at 512 px; the keyframe batches keep "medium" (their flows are at the latent's scale and in the fingerprint's
# outputs)
PROPAGATION_DIS_PRESET = "fine"


def for_propagation(estimator: FlowEstimator) -> FlowEstimator:
    """The estimator the non-keyframes use given a render's: the default DIS (preset "medium") becomes DIS at
    PROPAGATION_DIS_PRESET; any other estimator (RAFT, GMFlow, another DIS preset, a callable) is kept."""
    if type(estimator) is DISFlow and estimator.preset == "medium":
        return DISFlow(PROPAGATION_DIS_PRESET)
    return estimator


def flow_pair(estimator: FlowEstimator, src: torch.Tensor, dst: torch.Tensor
              ) -> Tuple[torch.Tensor, torch.Tensor]:
    """(flow src -> dst, flow dst -> src): one pass through `estimator.bidirectional` when it has one (GMFlow, as
    published), else two calls."""
    both = getattr(estimator, "bidirectional", None)
    if both is not None:
        return both(src, dst)
    return estimator(src, dst), estimator(dst, src)


@torch.no_grad()
def batch_flows(frames: torch.Tensor, estimator: FlowEstimator, *, backend: Optional[str] = None
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flows and occlusions of a batch's cyclic pairs.

    Args:
        frames: [N, 3, H, W] float RGB in 0..255, on the device the masks are wanted on.
        estimator: (src, dst) -> [B, 2, H, W] flow src -> dst in pixels (both directions from one pass when it
            has `bidirectional`).
    Returns:
        fwd_flow [N, 2, H, W] (frame i -> i+1, the last i = N-1 -> 0), bwd_flow [N, 2, H, W] (frame i+1 -> i),
        fwd_occ [N, H, W] on frame i's grid, bwd_occ [N, H, W] on frame i+1's grid (float 0/1, forward-backward and
        photometric tests), all fp32 on frames' device."""
    n = frames.shape[0]
    nxt = frames[list(range(1, n)) + [0]]
    fwd, bwd = (f.to(frames.device, torch.float32) for f in flow_pair(estimator, frames, nxt))
    expect = (n, 2) + tuple(frames.shape[2:])
    if tuple(fwd.shape) != expect or tuple(bwd.shape) != expect:
        raise RuntimeError(f"flow estimator returned {list(fwd.shape)} / {list(bwd.shape)}, expected {list(expect)}")
    fwd_occ, bwd_occ = occlusion_from_flows(fwd, bwd, frames.float(), backend=backend)
    return fwd, bwd, fwd_occ, bwd_occ
