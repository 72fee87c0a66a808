"""propagation "auto" (fresco.video.propagate): per pixel it mixes the patch synthesis's and the non-local means'
output (fresco.video.nlmeans),
with more weight on the one whose rebuilt source has the lower box-averaged error there (`patch_weight`; as the
weight hardens, exactly one method's pixel; the share where patch weighs more logged per gap), and the rebuilt-source
channels the patch method fuses alongside its style are the key's source re-assembled (zero error
on a still clip)."""
import numpy as np
import torch

from fresco.constants import DEFAULT_PROPAGATION
from fresco.video import synthetic_frame
from fresco.video.patch_propagation import PatchParams, patch_gap, rebuild_error
import fresco.video.propagate as propagate_mod
from fresco.video.propagate import (AUTO_POWER, AUTO_WINDOW, PROPAGATION_METHODS, choose_per_pixel, into_frame,
                                    patch_weight, propagate)

H = W = 32
SMALL = PatchParams(levels=2, em_iters=1)


def zero_flow(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    return torch.zeros(src.shape[0], 2, *src.shape[2:])


def run(frames, keys, stylised, method, log=None):
    return list(propagate(iter(frames), keys, lambda k: stylised[k], zero_flow, method=method, patch_params=SMALL,
                          auto_log=log))


def test_auto_is_the_default_and_chooses_by_the_lower_error():
    assert "auto" in PROPAGATION_METHODS and DEFAULT_PROPAGATION == "auto"
    ep, ef = torch.tensor([[1.0, 3.0, 2.0]]), torch.tensor([[2.0, 2.0, 2.0]])
    assert choose_per_pixel(ep, ef).tolist() == [[True, False, True]]  # a tie keeps patch synthesis
    w = patch_weight(ep, ef)
    assert w[0, 0] > 0.7 and w[0, 1] < 0.4 and abs(w[0, 2] - 0.5) < 1e-6  # 1/(1+(1/2)^1.5), 1/(1+(3/2)^1.5), a tie
    assert torch.allclose(w, 1 / (1 + (ep / ef) ** AUTO_POWER))
    assert torch.allclose(patch_weight(ep, ef, power=4.0), 1 / (1 + (ep / ef) ** 4))
    assert torch.equal(patch_weight(ep, ef, power=1e6) > 0.5, choose_per_pixel(ep, ef) & (ep != ef))
    big = torch.tensor([[0.0, 1e30, 0.0, 5.0]]), torch.tensor([[1e30, 0.0, 0.0, 0.0]])
    assert torch.allclose(patch_weight(*big), torch.tensor([[1.0, 0.0, 0.5, 0.0]]))  # no overflow, no NaN
    x = torch.zeros(3, 4, 4)
    assert rebuild_error(x, x, AUTO_WINDOW).max() == 0
    assert torch.all(rebuild_error(x + 2, x, AUTO_WINDOW) == 12.0)  # summed over RGB
    y = x.clone()
    y[:, 0, 0] = 3.0  # one pixel off by 3 in each channel: 27 there, spread over the clipped 3x3 box
    m = rebuild_error(y, x, 3)
    assert m[0, 0] == 27 / 4 and m[1, 1] == 27 / 9 and m[3, 3] == 0
    assert torch.equal(rebuild_error(y, x, 1)[0], torch.tensor([27.0, 0, 0, 0]))
    assert torch.equal(rebuild_error(torch.stack([y, x]), torch.stack([x, x]), 3), torch.stack([m, 0 * m]))  # a batch


def test_auto_mixes_the_methods_by_patch_weight(monkeypatch):
    frames = [synthetic_frame(i * 3, size=(W, H)) for i in range(9)]  # a moving texture: the zero flow is wrong
    rng = np.random.default_rng(0)
    stylised = {k: rng.integers(0, 256, (H, W, 3), dtype=np.uint8) for k in (0, 4, 8)}
    real = patch_weight
    weights: list = []
    monkeypatch.setattr(propagate_mod, "patch_weight", lambda ep, ef: weights.append(real(ep, ef)) or weights[-1])
    log: list = []
    auto = run(frames, [0, 4, 8], stylised, "auto", log)
    patch = run(frames, [0, 4, 8], stylised, "patch")
    flow = run(frames, [0, 4, 8], stylised, "nlmeans")   # auto's other candidate
    assert [g[0] for g in log] == [0, 4] and len(auto) == 9 and len(weights) == 6
    for a, share, err_p, err_f in log:
        assert 0.0 <= share <= 1.0 and err_p >= 0 and err_f > 0
    diff = lambda x, y: np.abs(x.astype(int) - y.astype(int)).max(-1)
    between = [1, 2, 3, 5, 6, 7]
    for w, i in zip(weights, between):
        w = w.numpy()
        assert (diff(auto[i], patch[i])[w > 0.999] <= 1).all() and (diff(auto[i], flow[i])[w < 0.001] <= 1).all()
    soft = sum(int(((w > 0.1) & (w < 0.9)).sum()) for w in weights)
    assert soft > 0  # and this clip has pixels where both methods count
    for k in stylised:
        assert np.array_equal(auto[k], stylised[k])
    # a hard weight (power -> infinity): every pixel is one method's (but an exact tie of the two errors, weight
    # 0.5), and some frames take pixels from both
    hard_w: list = []
    monkeypatch.setattr(propagate_mod, "patch_weight",
                        lambda ep, ef: hard_w.append(real(ep, ef, power=1e6)) or hard_w[-1])
    hard = run(frames, [0, 4, 8], stylised, "auto")
    mixed = 0
    for w, i in zip(hard_w, between):
        w = w.numpy()
        decided = (w == 0) | (w == 1)
        assert decided.mean() > 0.5
        from_patch, from_flow = diff(hard[i], patch[i]) <= 1, diff(hard[i], flow[i]) <= 1
        assert (from_patch | from_flow)[decided].all()
        mixed += bool(from_patch[decided].any() and (~from_patch[decided]).any())
    assert mixed > 0


def test_auto_weighs_both_methods_equally_where_both_rebuild_exactly(monkeypatch):
    # a still, flat clip and a zero flow: both candidates rebuild the source exactly (errors 0 up to float rounding,
    # weight 0.5 up to that); on flat stylised keys the contrast-preserving blend is then the plain mix of the two
    src = np.full((H, W, 3), 90, np.uint8)
    stylised = {k: np.full((H, W, 3), 40 * (k + 1), np.uint8) for k in (0, 4)}
    real, weights = patch_weight, []
    monkeypatch.setattr(propagate_mod, "patch_weight", lambda ep, ef: weights.append(real(ep, ef)) or weights[-1])
    auto = run([src] * 5, [0, 4], stylised, "auto")
    patch = run([src] * 5, [0, 4], stylised, "patch")
    other = run([src] * 5, [0, 4], stylised, "nlmeans")
    for i, w in zip((1, 2, 3), weights):
        assert (w - 0.5).abs().max() < 0.05
        mix = w.numpy()[..., None] * patch[i] + (1 - w.numpy()[..., None]) * other[i]
        assert np.abs(auto[i] - mix).max() <= 1
    assert not np.array_equal(patch[2], other[2])  # the two differ, so the mix is a real test


def test_flow_beyond_the_frame_reads_the_border_not_black():
    flow = torch.zeros(1, 2, 4, 5)
    flow[0, 0] = 10.0   # every sample point 10 px right of the frame
    flow[0, 1, 0, 0] = -3.0
    f = into_frame(flow)
    xs = torch.arange(5.0)
    assert torch.equal(f[0, 0, 2], 4 - xs)             # lands on the last column
    assert f[0, 1, 0, 0] == 0 and f[0, 1, 2, 2] == 0   # row 0 clamped to row 0; in-frame y unchanged
    frames = [synthetic_frame(0, size=(W, H))] * 3
    white = {0: np.full((H, W, 3), 255, np.uint8), 2: np.full((H, W, 3), 255, np.uint8)}
    shift = lambda s, d: torch.full((s.shape[0], 2, H, W), 12.0)  # noqa: E731
    out = list(propagate(iter(frames), [0, 2], lambda k: white[k], shift, method="flow"))
    assert out[1].min() == 255  # the old zero padding made the right part black


def test_patch_rebuilt_source_of_a_still_clip_is_exact():
    src = torch.from_numpy(synthetic_frame(0, size=(W, H))).permute(2, 0, 1).float()
    style = torch.rand(3, H, W) * 255
    outs = list(patch_gap([src, src], src, style, src, style, zero_flow, SMALL, with_source=True))
    assert len(outs) == 2 and outs[0].shape == (6, H, W)
    for o in outs:
        assert rebuild_error(o[3:], src, 1).mean() < 1.0


def test_auto_uses_the_last_key_alone_after_it(monkeypatch):
    """Frames after the last key have no later key: `auto` runs both methods from key a alone there, as `patch` and
    `flow` do (before, its gap read the last key as a second, later key as well)."""
    seen = []
    real = propagate_mod.patch_gap

    def spy(frames, src_a, out_a, src_b, out_b, *a, **kw):
        seen.append(src_b is None)
        return real(frames, src_a, out_a, src_b, out_b, *a, **kw)
    monkeypatch.setattr(propagate_mod, "patch_gap", spy)
    frames = [synthetic_frame(i, size=(W, H)) for i in range(6)]
    out = list(propagate(iter(frames), [0, 3], lambda k: frames[k], zero_flow, method="auto",
                         patch_params=SMALL))
    assert len(out) == 6 and seen == [False, True]
