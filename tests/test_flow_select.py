"""Flow and saliency selection (issue 12): `flow` names an estimator (dis, raft, gmflow), GMFlow's one-pass
bidirectional flow serves the batches and the propagation, RAFT is behind a clear error without torchvision, and a
tiny-model render with `--flow gmflow --saliency` (stand-in checkpoints) runs end to end with both background
smoothings and GMFlow in every stage that uses flow."""
import functools
from collections import Counter
from fractions import Fraction

import pytest
import torch

from fresco import cli
from fresco.models import egnet, gmflow
from fresco.models.flow import DISFlow, batch_flows, flow_pair, get_flow_estimator
from fresco.video import make_synthetic_clip, probe
from fresco.video.propagate import blend_from_keys


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    return gmflow.write_random_checkpoint(d / "gmflow_sintel-0c07dcb3.pth"), \
        egnet.write_random_checkpoint(d / "epoch_resnet.pth", width_div=16)  # the published names, narrow


class Spy:
    """A translation flow estimator (every pixel moves by (1, 0)) that records how it was called."""

    def __init__(self, bidirectional: bool):
        self.calls = Counter()
        if bidirectional:
            self.bidirectional = self._both

    def __call__(self, src, dst):
        self.calls["call"] += 1
        f = torch.zeros(src.shape[0], 2, *src.shape[2:])
        f[:, 0] = 1.0
        return f

    def _both(self, src, dst):
        self.calls["bidirectional"] += 1
        f = self(src, dst)
        return f, -f


def test_selection(stand_ins):
    assert isinstance(get_flow_estimator("dis"), DISFlow) and isinstance(get_flow_estimator(None), DISFlow)
    est = get_flow_estimator("gmflow", gmflow_path=stand_ins[0])
    assert isinstance(est, gmflow.GMFlowEstimator)
    with pytest.raises(ValueError, match="gmflow_path: flow='gmflow' needs"):
        get_flow_estimator("gmflow")
    with pytest.raises(ValueError, match=r"flow: one of \('dis', 'raft', 'gmflow'\)"):
        get_flow_estimator("pwc")


def test_raft_without_torchvision_is_a_clear_error():
    try:
        import torchvision  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match="flow='raft' needs torchvision"):
            get_flow_estimator("raft")
        return
    pytest.skip("torchvision imports here: the RAFT forward is tested in test_raft_forward")


def test_raft_forward(tmp_path):
    tv = pytest.importorskip("torchvision", reason="torchvision does not import beside this torch build")
    path = tmp_path / "raft.pth"
    torch.save(tv.models.optical_flow.raft_large(weights=None).state_dict(), path)
    with pytest.raises(FileNotFoundError, match="raft_path"):
        get_flow_estimator("raft", raft_path=str(tmp_path / "missing.pth"))
    est = get_flow_estimator("raft", raft_path=str(path))
    a = torch.rand(2, 3, 64, 64) * 255
    assert est(a, a.roll(2, 3)).shape == (2, 2, 64, 64)


def test_bidirectional_estimators_run_once_per_pair():
    frames = torch.rand(4, 3, 16, 16) * 255
    both, single = Spy(True), Spy(False)
    fwd, bwd, _, _ = batch_flows(frames, both)
    assert both.calls == Counter(bidirectional=1, call=1) and torch.equal(bwd, -fwd)
    batch_flows(frames, single)
    assert single.calls == Counter(call=2)
    assert flow_pair(both, frames, frames)[1][:, 0].eq(-1).all()
    # the flow blend between two keys needs one direction per key (frame -> key), so no bidirectional pass
    spy = Spy(True)
    key = torch.rand(3, 16, 16) * 255
    blend_from_keys(frames[:2], torch.tensor([0.3, 0.6]), key, key, key, key, spy)
    assert spy.calls == Counter(call=2)


@pytest.mark.slow
def test_render_gmflow_saliency_end_to_end(stand_ins, tmp_path, capsys, monkeypatch):
    """--flow gmflow --saliency with the stand-ins: both smoothings run in every batch; GMFlow serves the batches
    (one bidirectional pass of N pairs each) and the propagation."""
    pytest.importorskip("diffusers")
    from fresco.pipeline import FrescoPipeline
    counts = []
    call = FrescoPipeline.__call__

    @functools.wraps(call)  # the stylizer checks the signature
    def spy_call(self, *a, **kw):
        before = len(runs)
        out = call(self, *a, **kw)
        counts.append((kw["background"].shape, out.count("smooth_features"), out.count("smooth_x0"),
                       runs[before:]))
        return out

    runs = []
    run = gmflow.GMFlowEstimator._run

    def spy_run(self, src, dst, bidirectional):
        runs.append((src.shape[0], bidirectional))
        return run(self, src, dst, bidirectional)

    monkeypatch.setattr(FrescoPipeline, "__call__", spy_call)
    monkeypatch.setattr(gmflow.GMFlowEstimator, "_run", spy_run)
    clip = make_synthetic_clip(tmp_path / "c.mp4", 8, (64, 64), fps=Fraction(8))
    rc = cli.main(["render", str(clip), "--prompt", "a fox", "--model", "tiny-random", "--size", "64x64",
                   "--steps", "5", "--warmup-steps", "1", "--end-opt-step", "2", "--opt-iters", "1",
                   "--s-min", "2", "--s-max", "3", "--batch-size", "4", "--flow", "gmflow",
                   "--gmflow-path", stand_ins[0], "--saliency", "--sod-path", stand_ins[1],
                   "-o", str(tmp_path / "o"), "-q"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "has no effect" not in err
    info = probe(tmp_path / "o" / "video.mp4")
    assert (info.n_frames, info.width, info.height) == (8, 64, 64)
    assert counts
    for shape, feats, x0, batch_runs in counts:
        assert shape[1:] == (32, 32) and feats > 0 and x0 > 0  # EGNet's half-size map; both smoothings ran
        assert batch_runs == [(shape[0], True)]  # the batch's N cyclic pairs in one bidirectional GMFlow pass
    assert len(runs) > len(counts)  # GMFlow also propagated the frames between keys
