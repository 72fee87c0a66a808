"""One backend switch for a whole render: with `fresco_kernels.use_backend("reference")` (settings' backend None) or
`fresco render --backend reference`, no fused op runs anywhere (batch flows and occlusion, attention masks and
trajectories, cross-frame and temporal attention, feature optimisation, background smoothing, propagation); with
the fused backend they all do. Counted by wrapping every `torch.ops.fresco.*` op and the fused cross-frame entry
points."""
from collections import Counter
from fractions import Fraction

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

import fresco_kernels  # noqa: E402
from fresco import cli  # noqa: E402
from fresco.config import RenderConfig  # noqa: E402
from fresco.video import make_synthetic_clip, synthetic_frame  # noqa: E402
from fresco.video.render import render  # noqa: E402

FUSED_OPS = sorted(n.split("::")[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("fresco::"))


@pytest.fixture
def calls(monkeypatch):
    """Counter of calls into the fused ops (torch.ops.fresco.*) and the fused cross-frame attention path."""
    import fresco.pipeline.attention as attention
    counts = Counter()

    def wrap(owner, name, key):
        real = getattr(owner, name)

        def counted(*args, **kwargs):
            counts[key] += 1
            return real(*args, **kwargs)
        monkeypatch.setattr(owner, name, counted)

    for op in FUSED_OPS:
        wrap(torch.ops.fresco, op, op)
    wrap(attention, "cross_frame_attention", "cross_frame_attention")
    wrap(attention, "cross_frame_kv", "cross_frame_kv")
    wrap(attention, "cross_frame_attention_reference", "reference:cross_frame_attention")
    return counts


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_synthetic_clip(tmp_path_factory.mktemp("routing") / "clip", 7, (64, 64), fps=Fraction(24))


# 4 steps: timesteps 751, 501, 251, 1; the run steps 501 (temporal attention: t >= 350, optimisation: step 1 < 2),
# 251 and 1
def _cfg(clip, out, **kw):
    return RenderConfig(file_path=str(clip), save_path=str(out), prompt="a painting", sd_path="tiny-random",
                        size="64x64", num_inference_steps=4, num_warmup_steps=1, end_opt_step=2, opt_iters=1,
                        mininterv=3, maxinterv=3, batch_size=4, output="frames", device="cpu", **kw)


def _fused(counts: Counter) -> dict:
    return {k: v for k, v in counts.items() if not k.startswith("reference:")}


@pytest.mark.slow
def test_global_switch_routes_a_whole_render(clip, tmp_path, calls):
    with fresco_kernels.use_backend("reference"):
        render(_cfg(clip, tmp_path / "ref"), progress=False)
    assert _fused(calls) == {}
    assert calls["reference:cross_frame_attention"] > 0
    calls.clear()
    render(_cfg(clip, tmp_path / "fused"), progress=False)
    # every kind of fused op a render uses ran (gram_loss: the spatial loss in the optimisation)
    used = set(_fused(calls))
    assert used >= {"flow_warp", "flow_correspondence", "trajectory_attention", "warp_consistency_loss_fwd_bwd",
                    "gram_loss_fwd_bwd", "cross_frame_attention", "cross_frame_kv"}, used
    assert calls["reference:cross_frame_attention"] == 0


@pytest.mark.slow
def test_cli_backend_flag_routes_a_whole_render(clip, tmp_path, calls):
    rc = cli.main(["render", str(clip), "--prompt", "x", "--model", "tiny-random", "--size", "64x64", "--steps", "4",
                   "--warmup-steps", "1", "--end-opt-step", "2", "--opt-iters", "1", "--interval", "3",
                   "--batch-size", "4", "--output", "frames", "--device", "cpu", "--backend", "reference",
                   "-o", str(tmp_path / "o"), "-q"])
    assert rc == 0
    assert _fused(calls) == {} and calls["reference:cross_frame_attention"] > 0


def test_background_smoothing_follows_the_switch(calls):
    """The one stage a render does not reach (it needs a background map): smoothing of features and of x0."""
    from fresco.pipeline import FrescoPipeline
    pipe = FrescoPipeline.tiny(seed=0)
    frames = np.stack([synthetic_frame(3 * i, size=(64, 64)) for i in range(3)])
    bg = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))
    with fresco_kernels.use_backend("reference"):
        out = pipe(frames, "x", num_inference_steps=3, num_warmup_steps=1, opt_iters=1, background=bg,
                   bg_smoothing_steps=[2])
    assert out.count("smooth_x0") > 0 and out.count("smooth_features") > 0
    assert _fused(calls) == {}
