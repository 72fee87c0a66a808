"""The renderer's hooks for interactive front ends (fresco.ui): keyframes only then propagation as a second call,
a per-batch callback with the batch's stylised keys, a cancel check that leaves the folder resumable, and the
pipeline's per-step callback."""
from fractions import Fraction

import numpy as np
import pytest

from fresco.video import make_synthetic_clip, read_frames
from _utils import load_png as _load_png
from fresco.video.render import Cancelled, render
from test_render import StandInStylizer, _cfg


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_synthetic_clip(tmp_path_factory.mktemp("clip") / "clip.mp4", 40, (64, 64), fps=Fraction(20))


@pytest.mark.slow
def test_keyframes_only_then_propagate_equals_one_call(clip, tmp_path):
    whole = render(_cfg(clip, tmp_path / "a"), stylizer=StandInStylizer(), progress=False)
    seen = []
    keys = render(_cfg(clip, tmp_path / "b"), stylizer=StandInStylizer(), progress=False, keyframes_only=True,
                  on_batch=lambda b, paths: seen.append((b, dict(paths))))
    assert keys.video is None and keys.preview is None and not (tmp_path / "b" / "video.mp4").exists()
    assert keys.keys == whole.keys and len(seen) == len(whole.batches) >= 2
    # each callback names exactly the batch's new keys (anchors excluded), already written
    for b, paths in seen:
        assert list(paths) == list(b.frames[b.n_anchors:]) and all(p.exists() for p in paths.values())
    assert sorted(k for _, p in seen for k in p) == whole.keys
    # the second call only propagates: the stylizer must not run again
    st, frames = StandInStylizer(), []
    rest = render(_cfg(clip, tmp_path / "b"), stylizer=st, progress=False, on_frame=lambda d, t: frames.append((d, t)))
    assert st.calls == [] and frames == [(i, 40) for i in range(1, 41)]
    a, b = list(read_frames(whole.video)), list(read_frames(rest.video))
    assert len(a) == len(b) == 40 and all(np.array_equal(x, y) for x, y in zip(a, b))


@pytest.mark.slow
def test_cancel_between_batches_then_resume(clip, tmp_path):
    whole = render(_cfg(clip, tmp_path / "a"), stylizer=StandInStylizer(), progress=False)
    done = []
    with pytest.raises(Cancelled, match="1/.* batches are finished.*resumes"):
        render(_cfg(clip, tmp_path / "b"), stylizer=StandInStylizer(), progress=False,
               on_batch=lambda b, p: done.append(b.index), should_stop=lambda: len(done) >= 1)
    assert done == [0] and not (tmp_path / "b" / "video.mp4").exists()
    res = render(_cfg(clip, tmp_path / "b"), stylizer=StandInStylizer(), progress=False)
    for k in whole.keys:
        assert np.array_equal(_load_png(whole.keys_dir / f"{k:05d}.png"), _load_png(res.keys_dir / f"{k:05d}.png"))


@pytest.mark.slow
def test_cancel_during_propagation_keeps_keys(clip, tmp_path):
    calls = {"n": 0}

    def stop():
        calls["n"] += 1
        return calls["n"] > 14  # the 4 batch checks pass, propagation stops at frame 10
    with pytest.raises(Cancelled, match="while propagating"):
        render(_cfg(clip, tmp_path / "o"), stylizer=StandInStylizer(), progress=False, should_stop=stop)
    st = StandInStylizer()
    res = render(_cfg(clip, tmp_path / "o"), stylizer=st, progress=False)
    assert st.calls == [] and sum(1 for _ in read_frames(res.video)) == 40


def test_pipeline_step_callback_counts_run_steps():
    pytest.importorskip("diffusers")
    from fresco.pipeline import FrescoPipeline
    pipe = FrescoPipeline.tiny()
    frames = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    seen = []
    pipe(frames, "a fox", num_inference_steps=3, num_warmup_steps=1, end_opt_step=0, backend="reference",
         step_callback=lambda d, t: seen.append((d, t)))
    assert seen == [(1, 2), (2, 2)]

    def boom(d, t):
        raise Cancelled("stop")
    with pytest.raises(Cancelled):
        pipe(frames, "a fox", num_inference_steps=3, num_warmup_steps=1, end_opt_step=0, backend="reference",
             step_callback=boom)
