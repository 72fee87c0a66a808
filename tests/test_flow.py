"""fresco.models.flow on its own: the FlowEstimator interface of DISFlow (shape, dtype, device, a known motion),
get_flow_estimator's choices and errors, and batch_flows' cyclic pairs (the wrap pair N-1 -> 0 last), its occlusion
masks (those of fresco_kernels.occlusion_from_flows) and its check of the estimator's output."""
import numpy as np
import pytest
import torch

import fresco_kernels
from fresco.models.flow import (DIS_PRESETS, FLOW_ESTIMATORS, PROPAGATION_DIS_PRESET, DISFlow, batch_flows,
                                for_propagation, get_flow_estimator)
from fresco.video import synthetic_frame


def frames_tensor(n=4, size=64, step=2):
    return torch.from_numpy(np.stack([synthetic_frame(step * i, size=(size, size)) for i in range(n)])) \
        .permute(0, 3, 1, 2).float()


def test_dis_interface_and_known_motion():
    x = frames_tensor(1)
    moved = torch.roll(x, shifts=3, dims=3)  # content moves 3 px to the right
    flow = DISFlow()(x, moved)
    assert flow.shape == (1, 2, 64, 64) and flow.dtype == torch.float32 and flow.device == x.device
    inner = flow[0, :, 16:48, 16:48]
    assert abs(inner[0].median().item() - 3.0) < 0.5 and abs(inner[1].median().item()) < 0.5


def test_dis_presets_and_the_propagation_one():
    """"fine" recovers a known motion at least as well as "medium" (full resolution instead of half); a bad preset
    is one error listing the presets; the propagation upgrades only the default DIS."""
    x = frames_tensor(1)
    moved = torch.roll(x, shifts=(2, 3), dims=(2, 3))
    truth = torch.tensor([3.0, 2.0]).view(2, 1, 1)
    err = {p: (DISFlow(p)(x, moved)[0, :, 16:48, 16:48] - truth).abs().mean().item() for p in ("medium", "fine")}
    assert err["fine"] <= err["medium"] + 0.05 and err["fine"] < 0.5, err
    assert DIS_PRESETS == ("ultrafast", "fast", "medium", "fine") and PROPAGATION_DIS_PRESET in DIS_PRESETS
    with pytest.raises(ValueError, match=r"preset: one of \['ultrafast', 'fast', 'medium', 'fine'\], got 'finest'"):
        DISFlow("finest")
    up = for_propagation(DISFlow())
    assert isinstance(up, DISFlow) and up.preset == PROPAGATION_DIS_PRESET
    fast = DISFlow("fast")
    assert for_propagation(fast) is fast

    def mine(src, dst):
        return torch.zeros(src.shape[0], 2, *src.shape[2:])
    assert for_propagation(mine) is mine


def test_get_flow_estimator():
    assert FLOW_ESTIMATORS == ("dis", "raft", "gmflow")
    assert isinstance(get_flow_estimator("dis"), DISFlow) and isinstance(get_flow_estimator(None), DISFlow)

    def mine(src, dst):
        return torch.zeros(src.shape[0], 2, *src.shape[2:])
    assert get_flow_estimator(mine) is mine
    with pytest.raises(ValueError, match="flow: one of \\('dis', 'raft', 'gmflow'\\) or a callable"):
        get_flow_estimator("farneback")


class Recorder:
    """Records (src, dst) frame indices (read from a marker pixel) and returns flow = dst index - src index."""

    def __init__(self):
        self.pairs = []

    def __call__(self, src, dst):
        s, d = src[:, 0, 0, 0].long().tolist(), dst[:, 0, 0, 0].long().tolist()
        self.pairs.append(list(zip(s, d)))
        return torch.zeros(src.shape[0], 2, *src.shape[2:])


def test_batch_flows_pairs_include_the_wrap_pair():
    x = frames_tensor(5)
    x[:, 0, 0, 0] = torch.arange(5).float()
    rec = Recorder()
    fwd, bwd, focc, bocc = batch_flows(x, rec)
    assert rec.pairs == [[(0, 1), (1, 2), (2, 3), (3, 4), (4, 0)], [(1, 0), (2, 1), (3, 2), (4, 3), (0, 4)]]
    assert fwd.shape == bwd.shape == (5, 2, 64, 64) and focc.shape == bocc.shape == (5, 64, 64)


def test_batch_flows_occlusion_is_the_ops_package_test():
    x = frames_tensor(3, step=6)
    fwd, bwd, focc, bocc = batch_flows(x, DISFlow(), backend="reference")
    want = fresco_kernels.occlusion_from_flows(fwd, bwd, x, backend="reference")
    assert torch.equal(focc, want[0]) and torch.equal(bocc, want[1])
    assert set(focc.unique().tolist()) <= {0.0, 1.0}


def test_batch_flows_checks_the_estimator_output():
    def bad(src, dst):
        return torch.zeros(src.shape[0], 2, 8, 8)
    with pytest.raises(RuntimeError, match=r"flow estimator returned \[3, 2, 8, 8\]"):
        batch_flows(frames_tensor(3), bad)


def test_occlusion_of_explicit_pairs_matches_the_cyclic_pairs():
    """occlusion_from_flows(targets=) (the propagation's pairs: in-between frame -> key) is the cyclic test when the
    targets are the cyclic next frames; the photometric part of it marks a mismatching target."""
    x = frames_tensor(3, step=6)
    fwd, bwd, _, _ = batch_flows(x, DISFlow())
    nxt = x[[1, 2, 0]]
    for backend in ("fused", "reference"):
        cyclic = fresco_kernels.occlusion_from_flows(fwd, bwd, x, backend=backend)
        pairs = fresco_kernels.occlusion_from_flows(fwd, bwd, x, targets=nxt, backend=backend)
        assert torch.equal(cyclic[0], pairs[0]) and torch.equal(cyclic[1], pairs[1])
    black = fresco_kernels.occlusion_from_flows(fwd, bwd, x, targets=torch.zeros_like(x))
    assert black[0].mean() > cyclic[0].mean()
    with pytest.raises(ValueError, match="targets needs frames"):
        fresco_kernels.occlusion_from_flows(fwd, bwd, targets=nxt)
