"""The `deflicker` setting (fresco.video.propagate.deflicker_gap): an in-between frame mixed with its neighbours'
outputs carried along the flow, each weighted by how well its carried source rebuilds the frame. Frame-to-frame
noise averages out where the flow holds, a neighbour that does not see the frame gives way, a gap after the last key
uses the earlier neighbour alone, a rebuilt source rides along, `auto` deflickers its patch candidate before the
mix, 0 changes nothing, and the setting reaches the render."""
import numpy as np
import pytest
import torch

from fresco.video import synthetic_frame
from fresco.video.patch_propagation import gap_flows
from fresco.video.propagate import deflicker_gap, propagate

H = W = 32


def zero_flow(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    return torch.zeros(src.shape[0], 2, *src.shape[2:])


def shift_flow(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """An estimator for a texture that moves sideways by whole pixels: per pair the shift k with src(p) = dst(p + k)."""
    out = torch.zeros(src.shape[0], 2, *src.shape[2:])
    for n, (s, d) in enumerate(zip(src, dst)):
        errs = {k: (s - torch.roll(d, -k, dims=2))[..., 4:-4].abs().mean().item() for k in range(-3, 4)}
        out[n, 0] = min(errs, key=errs.get)
    return out


def T(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).float()


def noisy_gap(m: int, seed: int = 0):
    """A static scene: m in-between outputs = one style + independent noise (std 20) per frame; keys exact."""
    rng = np.random.default_rng(seed)
    src = T(synthetic_frame(0, size=(W, H)))
    style = T(255 - synthetic_frame(0, size=(W, H)))
    outs = [style + torch.from_numpy(rng.normal(0, 20, style.shape)).float() for _ in range(m)]
    return src, style, outs


def test_noise_averages_out_where_the_flow_holds():
    src, style, outs = noisy_gap(6)
    frames = [src] * 6
    gf = gap_flows(frames, src, src, zero_flow)
    got = list(deflicker_gap(outs, frames, gf, src, style, src, style, 1.0))
    before = torch.stack([o - style for o in outs]).std().item()
    after = torch.stack([o - style for o in got]).std().item()
    # weights 1, 1, 1 (the sources match exactly): the mean of three, the first and last with an exact key
    assert after < 0.65 * before
    expect = (outs[2] + outs[1] + outs[3]) / 3
    assert torch.allclose(got[2], expect, atol=1e-4)
    assert torch.allclose(got[0], (outs[0] + style + outs[1]) / 3, atol=1e-4)


def test_strength_scales_the_neighbours():
    src, style, outs = noisy_gap(3)
    frames = [src] * 3
    gf = gap_flows(frames, src, src, zero_flow)
    got = list(deflicker_gap(outs, frames, gf, src, style, src, style, 0.5))
    assert torch.allclose(got[1], (outs[1] + 0.5 * outs[0] + 0.5 * outs[2]) / 2, atol=1e-4)


def test_a_neighbour_that_does_not_see_the_frame_gives_way():
    """Frame 1's source differs from its neighbours' by >= 128 per channel in a square: there each neighbour's weight
    is at most F / (3 x 128² + F), so the frame keeps its own output; elsewhere the three are averaged."""
    src, style, outs = noisy_gap(3)
    other = src.clone()
    sq = other[:, 8:24, 8:24]
    other[:, 8:24, 8:24] = torch.where(sq >= 128, 0.0, 255.0)
    frames = [src, other, src]
    gf = gap_flows(frames, src, src, zero_flow)
    got = list(deflicker_gap(outs, frames, gf, src, style, src, style, 1.0))
    inner = np.s_[:, 10:22, 10:22]   # away from the 3x3 error window's reach across the square's border
    assert (got[1][inner] - outs[1][inner]).abs().max() < 0.2
    outer = np.s_[:, :, :5]
    assert torch.allclose(got[1][outer], ((outs[0] + outs[1] + outs[2]) / 3)[outer], atol=1e-3)


def test_the_neighbours_are_carried_along_the_flow():
    """A texture moving 1 px per frame and noisy outputs that move with it: carried along the true flow, the
    neighbours line up and the noise averages out; a zero flow would mix misplaced texture."""
    rng = np.random.default_rng(1)
    base = rng.integers(0, 256, (H, W + 8, 3)).astype(np.uint8)
    frames = [T(np.roll(base, i, axis=1)[:, 4:W + 4]) for i in range(5)]
    styles = [255 - f for f in frames]
    outs = [s + torch.from_numpy(rng.normal(0, 20, s.shape)).float() for s in styles[1:4]]
    xs = frames[1:4]
    good = list(deflicker_gap(outs, xs, gap_flows(xs, frames[0], frames[4], shift_flow), frames[0], styles[0],
                              frames[4], styles[4], 1.0))
    inner = np.s_[:, :, 3:W - 3]
    err = lambda o, s: (o - s)[inner].abs().mean().item()
    assert err(good[1], styles[2]) < 0.7 * err(outs[1], styles[2])


def test_after_the_last_key_only_the_earlier_neighbour():
    src, style, outs = noisy_gap(3)
    frames = [src] * 3
    gf = gap_flows(frames, src, None, zero_flow)
    got = list(deflicker_gap(outs, frames, gf, src, style, None, None, 1.0))
    assert torch.allclose(got[0], (outs[0] + style) / 2, atol=1e-4)
    assert torch.allclose(got[2], (outs[2] + outs[1]) / 2, atol=1e-4)


def test_a_rebuilt_source_is_mixed_with_the_same_weights():
    """with_source: the outputs carry a rebuilt source in their last 3 channels; it is mixed like the style, and a
    key neighbour contributes its own source frame there."""
    src, style, outs = noisy_gap(2)
    rng = np.random.default_rng(5)
    rebuilt = [src + torch.from_numpy(rng.normal(0, 10, src.shape)).float() for _ in range(2)]
    six = [torch.cat([o, r]) for o, r in zip(outs, rebuilt)]
    gf = gap_flows([src] * 2, src, src, zero_flow)
    got = list(deflicker_gap(six, [src] * 2, gf, src, style, src, style, 1.0, with_source=True))
    assert got[0].shape == (6, H, W)
    # the sources match exactly where the error is measured on the carried *source frames*: weights 1, 1, 1
    assert torch.allclose(got[0][:3], (style + outs[0] + outs[1]) / 3, atol=1e-4)
    assert torch.allclose(got[0][3:], (src + rebuilt[0] + rebuilt[1]) / 3, atol=1e-4)
    assert torch.allclose(got[1][3:], (rebuilt[0] + rebuilt[1] + src) / 3, atol=1e-4)


def test_auto_deflickers_its_patch_candidate_and_the_others_their_output(monkeypatch):
    import fresco.video.propagate as prop
    calls = []
    real = prop.deflicker_gap

    def spy(outs, *a, **k):
        calls.append((len(outs), outs[0].shape[0], k.get("with_source", False)))
        return real(outs, *a, **k)

    monkeypatch.setattr(prop, "deflicker_gap", spy)
    frames = [synthetic_frame(2 * i, size=(W, H)) for i in range(7)]
    stylised = {0: 255 - frames[0], 4: 255 - frames[4], 6: 255 - frames[6]}
    for method, expect in (("auto", (6, True)), ("patch", (3, False)), ("flow", (3, False))):
        calls.clear()
        list(propagate(iter(frames), [0, 4, 6], stylised.__getitem__, zero_flow, method=method, deflicker=1.0))
        assert calls == [(3, *expect), (1, *expect)], method


@pytest.mark.parametrize("method", ["flow", "patch", "auto"])
def test_propagate_deflicker_keeps_keys_and_changes_only_in_betweens(method):
    frames = [synthetic_frame(2 * i, size=(W, H)) for i in range(7)]
    stylised = {0: 255 - frames[0], 6: 255 - frames[6]}
    kw = dict(method=method)
    plain = list(propagate(iter(frames), [0, 6], stylised.__getitem__, zero_flow, **kw))
    off = list(propagate(iter(frames), [0, 6], stylised.__getitem__, zero_flow, deflicker=0.0, **kw))
    on = list(propagate(iter(frames), [0, 6], stylised.__getitem__, zero_flow, deflicker=1.0, **kw))
    assert all(np.array_equal(a, b) for a, b in zip(plain, off))
    assert len(on) == 7 and np.array_equal(on[0], plain[0]) and np.array_equal(on[6], plain[6])
    assert any(not np.array_equal(a, b) for a, b in zip(on[1:6], plain[1:6]))
