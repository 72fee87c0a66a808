"""Keyframe selection (paper Alg. 1 as published, fixed interval) and the anchored batch plan, against hand-worked
examples."""
import numpy as np
import pytest

from fresco.video.keyframes import Batch, fixed_keyframes, frame_errors, plan_batches, select_keyframes


def test_frame_errors_constant_frames():
    black = np.zeros((16, 24, 3), np.uint8)
    white = np.full((16, 24, 3), 255, np.uint8)
    # [-1] vs [1] everywhere: (1 - -1)^2 = 4; identical frames: 0; err[0] = 0
    assert frame_errors([black, white, white, black]) == [0.0, 4.0, 0.0, 4.0]


def test_frame_errors_matches_published_formula():
    import cv2
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (32, 40, 3), dtype=np.uint8) for _ in range(3)]
    blur = [cv2.GaussianBlur(f, (9, 9), 0.0).astype(np.float64) / 127.5 - 1 for f in frames]
    want = [0.0] + [float(np.mean((blur[i - 1] - blur[i]) ** 2)) for i in (1, 2)]
    assert frame_errors(iter(frames)) == pytest.approx(want, rel=1e-12)


def test_select_keyframes_hand_worked():
    # masked: [-1,-1,5,2,0,0,9,1,0,3,-1,-1]; picks 6 (gap 11), then 2 (gap 6), then 9 (gap 5); gaps 2,4,3,2 <= 4
    errors = [0, 1, 5, 2, 0, 0, 9, 1, 0, 3, 0, 0]
    assert select_keyframes(errors, 2, 4) == [0, 2, 6, 9, 11]


def test_select_keyframes_ties_take_first():
    # masked: [-1,-1,-1,1,1,1,1,-1,-1,-1]; argmax ties -> 3, then 6
    assert select_keyframes([0] + [1] * 9, 3, 4) == [0, 3, 6, 9]


def test_select_keyframes_stops_when_gaps_fit():
    # masked: live errors only at 4, 5; pick 4 -> gaps 4, 5 <= 5
    assert select_keyframes([0.0] + [1.0] * 9, 4, 5) == [0, 4, 9]


def test_select_keyframes_early_stop_leaves_wide_gap():
    # 12 frames, s_min=4: live errors only at 4..7; pick 4 -> masks 0..7; gap 4..11 (7) > 5 but nothing is left
    assert select_keyframes([0.0] + [1.0] * 11, 4, 5) == [0, 4, 11]


def test_fixed_interval():
    assert fixed_keyframes(10, 3) == [0, 3, 6, 9]
    assert fixed_keyframes(11, 5) == [0, 5, 10]
    assert select_keyframes([0.0] * 7, 2, 2) == [0, 2, 4, 6]


def test_select_keyframes_short_videos():
    assert select_keyframes([0.0], 2, 30) == [0]
    assert select_keyframes([0.0, 3.0], 2, 30) == [0, 1]
    assert select_keyframes([0.0, 3.0, 1.0], 10, 30) == [0, 2]


@pytest.mark.parametrize("s_min,s_max,match", [
    (5, 3, "s_min \\(5\\) must be <= s_max \\(3\\)"),
    (0, 3, "mininterv"),
    (2, 0, "maxinterv"),
    (2.5, 4, "mininterv"),
])
def test_select_keyframes_bad_intervals(s_min, s_max, match):
    with pytest.raises(ValueError, match=match):
        select_keyframes([0.0] * 10, s_min, s_max)


def _frames(batches):
    return [(b.frames, b.n_anchors) for b in batches]


def test_plan_one_batch():
    assert _frames(plan_batches([0], 8)) == [((0,), 0)]
    assert _frames(plan_batches([0, 7], 8)) == [((0, 7), 0)]
    assert _frames(plan_batches([0, 3, 9, 12], 8)) == [((0, 3, 9, 12), 0)]


def test_plan_exactly_n_keys():
    keys = list(range(0, 80, 10))
    assert _frames(plan_batches(keys, 8)) == [(tuple(keys), 0)]


def test_plan_n_plus_one_keys():
    # published: [[0..7], [8]] -> the tail takes 2 keys: [0..5], anchors (0, 5) + [6, 7, 8]
    keys = [10 * i for i in range(9)]
    assert _frames(plan_batches(keys, 8)) == [
        ((0, 10, 20, 30, 40, 50), 0),
        ((0, 50, 60, 70, 80), 2),
    ]


def test_plan_two_full_batches():
    keys = list(range(14))
    assert _frames(plan_batches(keys, 8)) == [
        (tuple(range(8)), 0),
        ((0, 7, 8, 9, 10, 11, 12, 13), 2),
    ]


@pytest.mark.parametrize("n_keys,want", [
    # 8 + 6 + 1: the tail of 1 takes 2 -> [8..11], [12, 13, 14]
    (15, [(tuple(range(8)), 0), ((0, 7, 8, 9, 10, 11), 2), ((0, 11, 12, 13, 14), 2)]),
    # 8 + 6 + 2: the tail of 2 takes 1 -> [8..12], [13, 14, 15]
    (16, [(tuple(range(8)), 0), ((0, 7, 8, 9, 10, 11, 12), 2), ((0, 12, 13, 14, 15), 2)]),
    # 8 + 6 + 3: a tail of 3 keeps its keys
    (17, [(tuple(range(8)), 0), ((0, 7, *range(8, 14)), 2), ((0, 13, 14, 15, 16), 2)]),
], ids=["tail1", "tail2", "tail3"])
def test_plan_tails(n_keys, want):
    assert _frames(plan_batches(list(range(n_keys)), 8)) == want


def test_plan_covers_every_key_once():
    for n_keys in range(1, 60):
        for n in (3, 4, 5, 8, 16):
            batches = plan_batches(list(range(n_keys)), n)
            new = [k for b in batches for k in b.new]
            assert new == list(range(n_keys)), (n_keys, n)
            assert all(len(b.frames) <= n for b in batches)
            for prev, b in zip(batches, batches[1:]):
                assert b.frames[:2] == (0, prev.frames[-1]) and b.n_anchors == 2
            assert [b.index for b in batches] == list(range(len(batches)))


def test_plan_bad_inputs():
    with pytest.raises(ValueError, match="batch_size"):
        plan_batches([0, 1, 2], 2)
    with pytest.raises(ValueError, match="strictly increasing"):
        plan_batches([0, 2, 2], 8)
    with pytest.raises(ValueError, match="at least one"):
        plan_batches([], 8)


def test_batch_new():
    assert Batch(1, (0, 7, 8, 9), 2).new == (8, 9)
