"""propagation "nlmeans" (fresco.video.nlmeans): each in-between pixel is the weighted mean of key pixels around
where the flow carries it, weighted by how well the key's source patch there matches the frame's; it finds content
the flow misplaced by up to NLM_RADIUS pixels, mixes the keys by distance where both match, and rebuilds the
frame's own source through the same weights."""
import numpy as np
import torch

from fresco.video import synthetic_frame
from fresco.video.nlmeans import NLM_RADIUS, carry_nearest, nlm_frame, nlm_from_keys
from fresco.video.propagate import propagate

H, W = 40, 48


def zero_flow(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    return torch.zeros(src.shape[0], 2, *src.shape[2:])


def tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img).permute(2, 0, 1).float()


def test_flat_sources_mix_the_keys_by_distance():
    # every candidate's source matches the flat frame exactly: the output is the distance-weighted mix of the keys
    src = torch.full((3, H, W), 90.0)
    a, b = torch.full((3, H, W), 40.0), torch.full((3, H, W), 200.0)
    x = src.expand(3, -1, -1, -1)
    t = torch.tensor([0.25, 0.5, 0.75])
    z = torch.zeros(3, 2, H, W)
    out = nlm_from_keys(x, t, src, a, src, b, (z, z), (z, z), with_source=True)
    assert out.shape == (3, 6, H, W)
    for j, tj in enumerate(t.tolist()):
        assert torch.allclose(out[j, :3], torch.tensor((1 - tj) * 40 + tj * 200), atol=1e-3)
        assert torch.allclose(out[j, 3:], src, atol=1e-3)   # the rebuilt source
    alone = nlm_from_keys(x[:1], t[:1], src, a, None, None, (z[:1], None), (z[:1], None))
    assert alone.shape == (1, 3, H, W) and torch.allclose(alone, a[None], atol=1e-3)


def test_finds_content_the_flow_misplaced_within_the_radius():
    # the frame is the key's source shifted by (2, -3) px, the flow says it did not move: the search around the
    # carried position finds the matching patch, so the key's style comes back shifted the same way (exactly: the
    # winning candidate is a real key pixel, nearest-sampled, and a noise texture leaves the others ~0 weight)
    rng = np.random.default_rng(0)
    key_src = torch.from_numpy(rng.integers(0, 256, (3, H + 8, W + 8))).float()   # a texture: one match only
    key_out = torch.from_numpy(rng.integers(0, 256, (3, H + 8, W + 8))).float()
    dy, dx = 2, -3
    assert max(abs(dy), abs(dx)) <= NLM_RADIUS
    crop = lambda x, oy, ox: x[:, 4 + oy:4 + oy + H, 4 + ox:4 + ox + W]  # noqa: E731
    frame, src, out = crop(key_src, dy, dx), crop(key_src, 0, 0), crop(key_out, 0, 0)
    want = crop(key_out, dy, dx)
    z = torch.zeros(1, 2, H, W)
    got = nlm_from_keys(frame[None], torch.tensor([0.5]), src, out, None, None, (z, None), (z, None))[0]
    inner = (slice(None), slice(NLM_RADIUS + 2, -NLM_RADIUS - 2), slice(NLM_RADIUS + 2, -NLM_RADIUS - 2))
    close = (got[inner] - want[inner]).abs().amax(0) <= 1
    assert close.all()
    assert ((out[inner] - want[inner]).abs().amax(0) <= 1).float().mean() < 0.2  # the flow's own guess was wrong


def test_carry_takes_the_flow_that_rebuilds_the_source_better():
    key_src = tensor(synthetic_frame(3, size=(W, H)))
    stack = torch.cat([torch.rand(3, H, W) * 255, key_src])
    right = torch.zeros(1, 2, H, W)
    wrong = torch.full((1, 2, H, W), 5.0)
    for flows in ((right, wrong), (wrong, right), (None, right)):
        assert torch.equal(carry_nearest(stack, key_src, flows), stack)   # nearest: the key's pixels, unmixed


def test_candidate_weights_prefer_the_better_source_match():
    frame = torch.zeros(3, 8, 8)
    good = torch.cat([torch.full((3, 8, 8), 10.0), torch.zeros(3, 8, 8)])       # style 10, source = frame
    bad = torch.cat([torch.full((3, 8, 8), 250.0), torch.full((3, 8, 8), 30.0)])  # style 250, source off by 30
    out = nlm_frame(frame, [(good, 0.5), (bad, 0.5)])
    assert torch.allclose(out[:3], torch.tensor(10.0), atol=1e-3)
    # with equal sources the distance weights decide
    out = nlm_frame(frame, [(good, 0.2), (torch.cat([bad[:3], good[3:]]), 0.8)])
    assert torch.allclose(out[:3], torch.tensor(0.2 * 10 + 0.8 * 250), atol=1e-2)


def test_the_method_runs_through_propagate_and_repeats_exactly():
    frames = [synthetic_frame(i * 2, size=(W, H)) for i in range(7)]
    rng = np.random.default_rng(1)
    styled = {k: rng.integers(0, 256, (H, W, 3), dtype=np.uint8) for k in (0, 3, 6)}
    runs = [list(propagate(iter(frames), [0, 3, 6], lambda k: styled[k], zero_flow, method="nlmeans"))
            for _ in range(2)]
    assert len(runs[0]) == 7 and all(np.array_equal(a, b) for a, b in zip(*runs))
    for k in styled:
        assert np.array_equal(runs[0][k], styled[k])
    after = list(propagate(iter(frames), [0, 3], lambda k: styled[k], zero_flow, method="nlmeans"))
    assert len(after) == 7 and after[6].shape == (H, W, 3)   # frames after the last key: key a alone


def test_bands_of_rows_give_the_whole_frame_answer():
    # a large frame goes through in bands of rows, each with the rows its search and patches read: every pixel,
    # the bands' edges included, gets what one pass over the whole frame gives (up to float rounding)
    g = torch.Generator().manual_seed(3)
    frame = torch.rand(3, 37, 50, generator=g) * 255
    keys = [(torch.rand(6, 37, 50, generator=g) * 255, 0.3), (torch.rand(6, 37, 50, generator=g) * 255, 0.7)]
    whole = nlm_frame(frame, keys, band_pixels=10 ** 9)
    for rows in (1, 5, 9, 36):
        banded = nlm_frame(frame, keys, band_pixels=rows * 50)
        assert torch.allclose(banded, whole, atol=1e-3), rows
    # without the halo the band edges would differ: the test sees them
    cut = torch.cat([nlm_frame(frame[:, :18], [(c[:, :18], w) for c, w in keys]),
                     nlm_frame(frame[:, 18:], [(c[:, 18:], w) for c, w in keys])], 1)
    assert not torch.allclose(cut, whole, atol=1e-3)
