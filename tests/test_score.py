"""fresco.score and `fresco score`: warp error equals its input floor on a clip scored against itself and rises on
flicker and jitter, a still video scores zero, CLIP scores with the random-weight stand-in (and a real cached CLIP
when present), the plot/strip/JSON files, and one-line errors with exit 2 for bad input."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fresco.cli import main
from fresco.score import DEFAULT_CLIP, render_keys, score_frames, score_videos
from fresco.video.io import make_synthetic_clip, synthetic_frame

SIZE = (96, 64)  # (W, H)
# measured on this clip (16 frames, 96x64, DIS, seed 0): per-frame brightness x[0.9, 1.1] -> warp error 7.8x its
# floor (flicker index 66x); per-frame jitter of up to 2 px -> 22x (flicker 110x). The tests require MARGIN x.
MARGIN = 4.0


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    return [synthetic_frame(i, SIZE) for i in range(16)]


@pytest.fixture(scope="module")
def clip_model(tmp_path_factory) -> str:
    from fresco.models.test_models import write_clip
    return str(write_clip(tmp_path_factory.mktemp("hf")))


def test_self_score_is_its_floor(frames):
    r = score_frames(frames, frames)
    assert r.n_frames == 16 and len(r.warp_error) == 15
    assert r.warp_error == r.warp_error_floor  # exactly: the same flow, mask and arithmetic
    assert r.warp_error_mean == r.warp_error_floor_mean > 0
    assert r.flicker_index == r.flicker_index_floor
    assert 0 < r.static_share < 1


@pytest.mark.parametrize("damage", ["brightness", "jitter"])
def test_flicker_and_jitter_score_worse(frames, damage):
    rng = np.random.default_rng(0)
    if damage == "brightness":
        out = [np.clip(f * g, 0, 255).astype(np.uint8) for f, g in zip(frames, rng.uniform(0.9, 1.1, len(frames)))]
    else:
        out = [np.roll(f, tuple(s), axis=(0, 1)) for f, s in zip(frames, rng.integers(-2, 3, (len(frames), 2)))]
    r = score_frames(frames, out)
    assert r.warp_error_mean > MARGIN * r.warp_error_floor_mean, (damage, r.warp_error_mean, r.warp_error_floor_mean)
    assert r.flicker_index > MARGIN * r.flicker_index_floor


def test_still_video_scores_zero(frames):
    still = [frames[3]] * 5
    for out in (still, [255 - f for f in still]):  # the video itself and a constant "stylisation" of it
        r = score_frames(still, out)
        assert r.warp_error == [0.0] * 4 and r.warp_error_mean == 0.0
        assert r.flicker_index == 0.0 and r.flicker_index_floor == 0.0 and r.static_share == 1.0


def test_clip_scores_with_stand_in(frames, clip_model):
    r = score_frames(frames, frames, clip=clip_model, prompt="a red disc", source_prompt="a green box")
    c = r.clip
    assert -1 <= c["tem_con"] <= 1 and -1 <= c["clip_t"] <= 1 and 0 <= c["fram_acc"] <= 1
    assert c["fram_acc"] in {k / 16 for k in range(17)}
    # Fram-Acc counts frames strictly more similar to the prompt than to the source prompt: a tie counts as a miss
    assert score_frames(frames, frames, clip=clip_model, prompt="x", source_prompt="x").clip["fram_acc"] == 0.0
    still = score_frames([frames[0]] * 3, [frames[0]] * 3, clip=clip_model)
    assert still.clip["tem_con"] == pytest.approx(1.0, abs=1e-5) and still.clip["clip_t"] is None


def test_clip_by_id_from_cache(tmp_path, monkeypatch, frames):
    """The default id resolves in the (offline) Hugging Face cache that make-test-models writes."""
    from fresco.models.test_models import write_clip
    import huggingface_hub.constants as c
    write_clip(tmp_path)
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    clip = tmp_path / "c.mp4"
    make_synthetic_clip(clip, 4, SIZE)
    r = score_videos(clip, clip, clip=DEFAULT_CLIP, prompt="a cat", device="cpu")
    assert r.clip is not None and r.clip["model"] == DEFAULT_CLIP and r.clip_skipped is None
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "empty"))
    r = score_videos(clip, clip, device="cpu")
    assert r.clip is None and "not in the local Hugging Face cache" in r.clip_skipped


def test_real_clip_when_cached(frames):
    try:
        from huggingface_hub import snapshot_download
        snapshot_download(DEFAULT_CLIP, local_files_only=True)
    except Exception:
        pytest.skip(f"{DEFAULT_CLIP} is not in the local Hugging Face cache (this test never downloads)")
    r = score_frames(frames[:4], frames[:4], clip=DEFAULT_CLIP, prompt="a red disc on a colourful texture",
                     source_prompt="a photo of a dog")
    assert r.clip["tem_con"] > 0.8 and r.clip["fram_acc"] == 1.0


def test_cli_files_and_keyframes(tmp_path, capsys):
    video = make_synthetic_clip(tmp_path / "in.mp4", 12, SIZE)
    out_dir = tmp_path / "render"
    out_dir.mkdir()
    out = make_synthetic_clip(out_dir / "video.mp4", 12, SIZE, seed=1)
    (out_dir / "state.json").write_text(json.dumps({"fingerprint": "x", "n_frames": 12, "keys": [0, 5, 11]}))
    paths = [tmp_path / n for n in ("s.json", "p.png", "st.png")]
    argv = ["score", str(video), str(out), "--no-clip", "--json", str(paths[0]), "--plot", str(paths[1]),
            "--strip", str(paths[2]), "--strip-frames", "0,11"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "warp error (Pixel-MSE)" in text and "CLIP scores skipped: no CLIP model given" in text
    d = json.loads(paths[0].read_text())
    assert d["keyframes"] == [0, 5, 11] and len(d["warp_error"]) == 11 and d["versions"]["torch"]
    # another texture moving the same way is about as stable: the score is temporal consistency, not likeness
    assert d["warp_error_mean"] == pytest.approx(d["warp_error_floor_mean"], rel=0.5)
    import cv2
    assert cv2.imread(str(paths[1])) is not None
    assert cv2.imread(str(paths[2])).shape[:2] == (320, 2 * 240)  # 2 frames, rows of 160 px (96x64 -> 240x160)
    assert main(argv) == 2  # the files exist now
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert main(argv + ["--overwrite"]) == 0


@pytest.mark.parametrize("state", ["{not json", json.dumps({"keys": "0,5", "n_frames": 12}),
                                   json.dumps({"keys": [0, 99], "n_frames": 12}),
                                   json.dumps({"keys": [0, 5], "n_frames": 30}), json.dumps([1, 2])])
def test_render_state_is_untrusted(tmp_path, state):
    (tmp_path / "state.json").write_text(state)
    keys, note = render_keys(tmp_path / "video.mp4", 12)
    assert keys is None and "keyframes not marked" in note


def _png(i: int) -> bytes:
    import cv2
    return cv2.imencode(".png", synthetic_frame(i, SIZE))[1].tobytes()


def test_bad_input_exit_2(tmp_path, capsys):
    a = make_synthetic_clip(tmp_path / "a.mp4", 6, SIZE)
    shorter = make_synthetic_clip(tmp_path / "b.mp4", 5, SIZE)
    bigger = make_synthetic_clip(tmp_path / "c.mp4", 6, (128, 64))
    junk = tmp_path / "junk.mp4"
    junk.write_text("not a video")
    cases = [([a, shorter], "output: has 5 frames but input has 6"),
             ([a, bigger], "output: '.*c.mp4' is 128x64 but input '.*a.mp4' is 96x64; pass --resize"),
             ([a, junk], "output: cannot read video"),
             ([tmp_path / "missing.mp4", a], "input: .* does not exist"),
             ([a, a, "--plot", str(tmp_path / "p.jpg")], "plot: expected a .png file")]
    import re
    for args, msg in cases:
        assert main(["score"] + [str(x) for x in args] + ["--no-clip"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and re.search(msg, err), err
    # a plot or strip inside a frames folder being scored would become one of its frames
    frames_in, frames_out = tmp_path / "fin", tmp_path / "fout"
    for d in (frames_in, frames_out):
        d.mkdir()
        for i in range(4):
            (d / f"{i:05d}.png").write_bytes(_png(i))
    for flag, where in (("--plot", frames_in / "99999.png"), ("--strip", frames_out / "00001.png"),
                        ("--json", frames_in / "s.json")):
        assert main(["score", str(frames_in), str(frames_out), "--no-clip", "--overwrite", flag, str(where)]) == 2
        assert "a frames folder being scored, where it would become a frame" in capsys.readouterr().err
    assert len(list(frames_in.iterdir())) == 4 and (frames_out / "00001.png").read_bytes() == _png(1)
    assert main(["score", str(a), str(bigger), "--no-clip", "--resize"]) == 0
    assert "frames: 6 at 128x64" in capsys.readouterr().out


def test_render_score_lands_in_the_output_folder(tmp_path):
    """render --score: score.json / score.png beside the video, at the processing size, keyframes from the state,
    both files in the render's manifest; a foreign score.json is refused before the render starts."""
    from test_render import StandInStylizer, _cfg
    from fresco.video.render import render
    clip = make_synthetic_clip(tmp_path / "c.mp4", 12, SIZE)
    res = render(_cfg(clip, tmp_path / "o", score=True), stylizer=StandInStylizer(), progress=False)
    d = json.loads((tmp_path / "o" / "score.json").read_text())
    assert (d["n_frames"], d["size"], d["keyframes"], d["flow"]) == (12, [64, 64], res.keys, "dis")
    assert d["clip"] is None and d["clip_skipped"] and "score_s" in res.timings
    assert {"score.json", "score.png"} <= set(json.loads((tmp_path / "o" / "state.json").read_text())["files"])
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "score.json").write_text("mine")
    with pytest.raises(ValueError, match="score.json"):
        render(_cfg(clip, tmp_path / "p", score=True), stylizer=StandInStylizer(), progress=False)
    assert (tmp_path / "p" / "score.json").read_text() == "mine"
