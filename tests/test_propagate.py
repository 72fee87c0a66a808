"""fresco.video.propagate on its own, with stand-in flow estimators: one output per input frame, keys passed through,
the distance blend weights, a key whose warp does not match the frame giving way (and the distance weights when
neither matches), the chained flow taken where it rebuilds the frame better, frames after the
last key, chunking that does not change results, a key-only video, backends agreeing, bad inputs."""
import numpy as np
import pytest
import torch

from fresco.video import synthetic_frame
from fresco.video.propagate import blend_from_keys, propagate

H = W = 32


def zero_flow(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    return torch.zeros(src.shape[0], 2, *src.shape[2:])


def texture(i: int = 0) -> np.ndarray:
    return synthetic_frame(i, size=(W, H))


def const(v: int) -> np.ndarray:
    return np.full((H, W, 3), v, np.uint8)


def run(frames, keys, stylised, **kw):
    kw.setdefault("method", "flow")  # these tests pin the flow blend's weights; the patch method: test_patch_synthesis
    return list(propagate(iter(frames), keys, lambda k: stylised[k], zero_flow, **kw))


def test_one_output_per_frame_and_keys_pass_through():
    frames = [texture()] * 11
    stylised = {0: const(10), 5: const(60), 9: const(100)}
    out = run(frames, [0, 5, 9], stylised)
    assert len(out) == 11 and all(o.shape == (H, W, 3) and o.dtype == np.uint8 for o in out)
    for k, v in stylised.items():
        assert np.array_equal(out[k], v)


def test_distance_weights_between_two_keys():
    """Same source everywhere and zero flow: nothing is occluded, frame a+j gets (1 - j/span) a + (j/span) b."""
    out = run([texture()] * 5, [0, 4], {0: const(0), 4: const(200)})
    assert [int(o[0, 0, 0]) for o in out] == [0, 50, 100, 150, 200]


def test_a_key_that_does_not_see_the_frame_gives_way():
    """Key 4's source differs from the in-between frames everywhere (rebuild error >= 3 x 27² there): key 0, whose
    source matches, decides, even at frame 3, where the distance weights alone would give key 4 three quarters."""
    frames = [texture()] * 4 + [const(0)]
    out = run(frames, [0, 4], {0: const(30), 4: const(200)})
    assert all(np.array_equal(o, const(30)) for o in out[:3])
    assert np.abs(out[3].astype(int) - 30).max() <= 1


def test_both_keys_occluded_falls_back_to_distance():
    frames = [const(0), const(255), const(255), const(255), const(0)]
    out = run(frames, [0, 4], {0: const(0), 4: const(200)})
    assert [int(o[0, 0, 0]) for o in out[1:4]] == [50, 100, 150]


def test_frames_after_the_last_key_use_it_alone():
    out = run([texture()] * 6, [0, 3], {0: const(0), 3: const(90)})
    assert all(np.array_equal(o, const(90)) for o in out[3:])


def test_chunking_and_key_only_video():
    frames = [texture(i) for i in range(9)]
    stylised = {0: texture(20), 8: texture(40)}
    a = run(frames, [0, 8], stylised, chunk=2)
    b = run(frames, [0, 8], stylised, chunk=7)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    keys = {i: texture(30 + i) for i in range(4)}
    assert all(np.array_equal(o, keys[i]) for i, o in enumerate(run(frames[:4], list(range(4)), keys)))


@pytest.mark.parametrize("method", ["flow", "auto"])
def test_the_estimator_sees_at_most_chunk_pairs_per_call(method):
    """A batched estimator (GMFlow, RAFT on a GPU) gets the gap's pairs `chunk` at a time, so a long gap needs no
    more estimator memory than a short one; the flows, and so the outputs, are the same for any chunk."""
    batches = []

    def shift_flow(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
        batches.append(src.shape[0])
        out = torch.zeros(src.shape[0], 2, *src.shape[2:])
        out[:, 0] = (src.mean((1, 2, 3)) - dst.mean((1, 2, 3)))[:, None, None] / 50   # differs per pair
        return out

    frames = [texture(i) for i in range(12)]
    stylised = {0: texture(20), 11: texture(40)}
    outs = {}
    for chunk in (3, 16):
        batches.clear()
        outs[chunk] = list(propagate(iter(frames), [0, 11], lambda k: stylised[k], shift_flow, method=method,
                                     chunk=chunk))
        assert max(batches) <= chunk and sum(batches) >= 2 * 10
    assert max(batches) == 10                        # unchunked: the whole gap in one call
    assert all(np.array_equal(x, y) for x, y in zip(outs[3], outs[16]))


def test_streams_the_input():
    """Only the frames up to the next key are read before that gap's outputs come out."""
    pulled = []

    def frames():
        for i in range(9):
            pulled.append(i)
            yield texture()
    it = propagate(frames(), [0, 4, 8], lambda k: const(k), zero_flow)
    next(it)
    assert max(pulled) == 0
    for _ in range(4):
        next(it)
    assert max(pulled) == 4


def test_backends_agree():
    frames = torch.from_numpy(np.stack([texture(i) for i in range(3)])).permute(0, 3, 1, 2).float()
    key_a, key_b = frames[0], frames[2]
    out_a, out_b = torch.full_like(key_a, 40.0), torch.full_like(key_b, 120.0)
    t = torch.tensor([0.25, 0.5, 0.75])

    def shift_flow(src, dst):
        f = torch.zeros(src.shape[0], 2, *src.shape[2:])
        f[:, 0] = 1.5
        return f
    r = blend_from_keys(frames, t, key_a, out_a, key_b, out_b, shift_flow, backend="reference")
    f = blend_from_keys(frames, t, key_a, out_a, key_b, out_b, shift_flow, backend="fused")
    assert r.shape == (3, 3, H, W) and (r - f).abs().max().item() < 1e-3


@pytest.mark.parametrize("keys,frames,match", [
    ([1, 3], 4, "must start with frame 0"),
    ([], 4, "must start with frame 0"),
    ([0, 7], 4, "past the last frame"),
    ([0], 0, "the stream is empty"),
])
def test_bad_inputs(keys, frames, match):
    with pytest.raises(ValueError, match=match):
        run([texture()] * frames, keys, {k: const(0) for k in keys})


def test_stylised_key_of_the_wrong_size():
    with pytest.raises(ValueError, match=r"load_key\(0\)"):
        list(propagate(iter([texture()] * 2), [0], lambda k: np.zeros((8, 8, 3), np.uint8), zero_flow))


def test_the_chained_flow_is_taken_where_the_direct_one_fails():
    """A texture moving 1 px per frame, and a stand-in estimator that, like a real one on large motion, finds the
    1-px steps between neighbouring frames but returns zero for the longer jumps to a key: the flow blend follows
    the chained flow there (the interior comes out as the style of the frame itself), where the direct flow alone
    would blur the two keys' misplaced texture."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (H, W, 3)).astype(np.uint8)
    frames = [np.roll(base, i, axis=1) for i in range(5)]
    style = {i: 255 - f for i, f in enumerate(frames)}

    def short_sighted(src, dst):
        out = torch.zeros(src.shape[0], 2, *src.shape[2:])
        for n, (s, d) in enumerate(zip(src, dst)):
            errs = {k: (s - torch.roll(d, -k, dims=2)).abs().mean().item() for k in range(-4, 5)}
            k = min(errs, key=errs.get)
            out[n, 0] = k if abs(k) <= 1 else 0   # src(p) = dst(p + k): a shift it finds only for 1-px steps
        return out
    out = list(propagate(iter(frames), [0, 4], lambda k: style[k], short_sighted, method="flow"))
    inner = np.s_[:, 6:W - 6]
    for j in (1, 2, 3):
        assert np.abs(out[j][inner].astype(int) - style[j][inner].astype(int)).max() <= 1
    x = torch.from_numpy(np.stack(frames[1:4])).permute(0, 3, 1, 2).float()
    T = lambda a: torch.from_numpy(a).permute(2, 0, 1).float()
    direct = blend_from_keys(x, torch.tensor([0.25, 0.5, 0.75]), T(frames[0]), T(style[0]), T(frames[4]),
                             T(style[4]), short_sighted)
    assert (direct[1].permute(1, 2, 0)[inner] - torch.from_numpy(style[2][inner]).float()).abs().mean() > 20
