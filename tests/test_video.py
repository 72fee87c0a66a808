"""Streamed video I/O: processing size, round trips (count, fps, size, audio), image folders, bad inputs."""
from fractions import Fraction

import cv2
import numpy as np
import pytest

from fresco.video import VideoWriter, make_synthetic_clip, probe, processing_size, read_frames, resize_frame


@pytest.mark.parametrize("wh,want", [((1280, 720), (896, 512)), ((512, 512), (512, 512)), ((97, 61), (832, 512)),
                                     ((720, 1280), (512, 896))])
def test_processing_size(wh, want):
    assert processing_size(*wh) == want


def test_resize_uses_lanczos_up_area_down():
    img = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    assert np.array_equal(resize_frame(img, (80, 60)), cv2.resize(img, (80, 60), interpolation=cv2.INTER_LANCZOS4))
    assert np.array_equal(resize_frame(img, (20, 15)), cv2.resize(img, (20, 15), interpolation=cv2.INTER_AREA))


def _published_resize_image(input_image, resolution):
    """src/utils.py resize_image, transcribed."""
    H, W, C = input_image.shape
    H, W = float(H), float(W)
    k = float(resolution) / min(H, W)
    H *= k
    W *= k
    H = int(np.round(H / 64.0)) * 64
    W = int(np.round(W / 64.0)) * 64
    return cv2.resize(input_image, (W, H), interpolation=cv2.INTER_LANCZOS4 if k > 1 else cv2.INTER_AREA)


@pytest.mark.parametrize("hw", [(513, 1000), (500, 1000), (720, 1280), (480, 640), (511, 300), (512, 512),
                                (1080, 1920)])
def test_resize_matches_published_resize_image(hw):
    """Size and filter as published: the scale factor k decides the filter, not the area ratio (513x1000 grows to
    512x1024 in area but k < 1: area averaging)."""
    img = np.random.default_rng(1).integers(0, 256, (*hw, 3), dtype=np.uint8)
    want = _published_resize_image(img, 512)
    size = processing_size(hw[1], hw[0], 512)
    assert size == (want.shape[1], want.shape[0])
    assert np.array_equal(resize_frame(img, size, short_side=512), want)


def test_video_round_trip_with_audio(tmp_path):
    src = make_synthetic_clip(tmp_path / "a.mp4", 40, (96, 64), fps=Fraction(30000, 1001), audio=True)
    info = probe(src)
    assert (info.n_frames, info.fps, info.width, info.height, info.has_audio) == (40, Fraction(30000, 1001), 96, 64,
                                                                                   True)
    with VideoWriter(tmp_path / "b.mp4", info.fps, (128, 64), audio_from=str(src)) as w:
        for f in read_frames(src, (128, 64)):
            w.write(f)
    out = probe(tmp_path / "b.mp4")
    assert (out.n_frames, out.fps, out.width, out.height, out.has_audio) == (40, info.fps, 128, 64, True)
    assert not list(tmp_path.glob(".*partial*"))


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with VideoWriter(tmp_path / "v.mp4", 24, (64, 64)) as w:
            w.write(np.zeros((64, 64, 3), np.uint8))
            raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []


def test_image_folder_in_and_out(tmp_path):
    folder = make_synthetic_clip(tmp_path / "f", 12, (64, 48))
    names = sorted(p.name for p in folder.iterdir())
    assert names[0] == "00000.png" and len(names) == 12
    info = probe(folder, folder_fps=12)
    assert (info.n_frames, info.fps, info.is_folder) == (12, Fraction(12), True)
    assert [f.shape for f in read_frames(folder)][:1] == [(48, 64, 3)]


def test_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        probe(tmp_path / "x.mp4")
    (tmp_path / "j.mp4").write_bytes(b"junk" * 100)
    with pytest.raises(ValueError, match="cannot read video"):
        probe(tmp_path / "j.mp4")
    (tmp_path / "e").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        probe(tmp_path / "e")
    with pytest.raises(ValueError, match="even sides"):
        VideoWriter(tmp_path / "o.mp4", 24, (65, 64))
    (tmp_path / "m").mkdir()
    cv2.imwrite(str(tmp_path / "m" / "1.png"), np.zeros((8, 8, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "m" / "2.png"), np.zeros((8, 9, 3), np.uint8))
    with pytest.raises(ValueError, match="all frames must have one size"):
        list(read_frames(tmp_path / "m"))
