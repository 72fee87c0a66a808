"""Streamed video I/O for the renderer: frames are decoded, resized and encoded one at a time (PyAV, H.264 out at the
source's frame rate, audio packets copied), so memory does not depend on the video's length. Folders of images work
the same way in and out. Also a synthetic clip generator (moving shapes on a texture) for tests and the demo."""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from ..constants import MAX_SIDE, VIDEO_SUFFIXES
from . import safe_fs

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
DEFAULT_FOLDER_FPS = Fraction(30)


def _cpu_has_avx512() -> bool:
    """Whether this CPU (and OS) runs AVX-512 code, as numpy's runtime dispatch detected it."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as features
    except ImportError:  # numpy < 2
        from numpy.core._multiarray_umath import __cpu_features__ as features
    return bool(features.get("AVX512F"))


def x264_options(crf: int) -> dict[str, str]:
    """libx264 options of every H.264 file fresco writes: `crf`, preset medium, and on a CPU with AVX-512 the
    encoder's assembly capped at AVX2. x264's AVX-512 macroblock-tree pass (mbtree_propagate_list) handles 8
    macroblocks per step without masking the ones past the end of a row, so when the width is not a multiple of
    128 pixels it adds costs read from uninitialised memory: the same frames then encode to different bytes from
    run to run (up to dozens of levels apart once decoded). The AVX2 code handles the row's end; its output is the
    same on every run, and the same as on an AVX2-only machine."""
    opts = {"crf": str(crf), "preset": "medium"}
    if _cpu_has_avx512():  # any AVX-512 CPU also has what x264's "AVX2" level names (AVX2, FMA3, BMI1/2, LZCNT)
        opts["x264-params"] = "asm=AVX2"
    return opts


def _av():
    try:
        import av
    except ImportError as e:
        raise ImportError("video files need PyAV: pip install 'fresco[pipeline]' (or pip install av)") from e
    return av


@dataclass(frozen=True)
class VideoInfo:
    """What the renderer needs to know about an input before decoding it.

    n_frames is the container's count (exact for images; for videos the decoded count is what the renderer trusts:
    a truncated file's header promises more). width/height are the source size; fps a Fraction (the header's
    rate); time_base the video stream's (None for a folder)."""
    path: str
    n_frames: int
    width: int
    height: int
    fps: Fraction
    has_audio: bool
    is_folder: bool
    time_base: Fraction | None = None


def _natural_key(name: str):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def list_images(folder: str | os.PathLike) -> list[Path]:
    """The images of a folder in natural order (frame2 before frame10)."""
    folder = Path(folder)
    files = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS]
    for p in files:  # a frame that cannot be read must not vanish from the video without a word
        if not p.is_file():
            raise ValueError(f"input: '{p}' in the frames folder is not a regular file (a folder, a device, a pipe or "
                             f"a dangling link); remove it or give the frames as files")
    return sorted(files, key=lambda p: _natural_key(p.name))


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image
    try:  # the header's size first: a small file can decode to gigabytes
        with Image.open(path) as im:
            w, h = im.size
    except Image.DecompressionBombError:
        w = h = MAX_SIDE + 1
    except Exception:  # noqa: BLE001 - not a format PIL knows: OpenCV decides below
        w = h = 0
    if max(w, h) > MAX_SIDE:
        raise ValueError(f"input: image '{path}' is larger than {MAX_SIDE} pixels on a side")
    try:
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    except cv2.error as e:
        raise ValueError(f"input: cannot decode image '{path}' ({str(e).strip().splitlines()[-1]})") from None
    if img is None:
        raise ValueError(f"input: cannot read image '{path}' (accepted: {', '.join(IMAGE_EXTS)})")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def probe(path: str | os.PathLike, folder_fps: Fraction | float | None = None) -> VideoInfo:
    """Open `path` (a video file or a folder of images) and describe it; errors name the input and the reason."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"input: '{path}' does not exist (expected a video file or a folder of images)")
    if path.is_dir():
        files = list_images(path)
        if not files:
            raise ValueError(f"input: folder '{path}' holds no images (accepted: {', '.join(IMAGE_EXTS)})")
        first = _read_image(files[0])
        fps = Fraction(folder_fps).limit_denominator(100000) if folder_fps else DEFAULT_FOLDER_FPS
        return VideoInfo(str(path), len(files), first.shape[1], first.shape[0], fps, False, True)
    if not path.is_file():
        raise ValueError(f"input: '{path}' is not a regular file or a folder (a device, a pipe or a socket cannot be "
                         f"read twice, as a render does)")
    if folder_fps is not None:
        raise ValueError("fps: only a folder of images takes an explicit fps; a video keeps its own")
    av = _av()
    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                raise ValueError(f"input: '{path}' has no video stream")
            vs = c.streams.video[0]
            fps = vs.average_rate or vs.guessed_rate or vs.base_rate
            if not fps:
                raise ValueError(f"input: '{path}' does not state a frame rate")
            n = vs.frames
            if n <= 0:
                n = sum(1 for p in c.demux(vs) if p.size)
            return VideoInfo(str(path), int(n), vs.codec_context.width, vs.codec_context.height, Fraction(fps),
                             bool(c.streams.audio), False, Fraction(vs.time_base) if vs.time_base else None)
    except av.error.FFmpegError as e:
        raise ValueError(f"input: cannot read video '{path}': {e}") from e


def processing_size(width: int, height: int, short_side: int = 512, multiple: int = 64) -> tuple[int, int]:
    """(W, H) the frames are processed at: short side scaled to `short_side`, then each side rounded to a multiple
    of `multiple` (docs/algorithm.md, "Frames"; 1280x720 -> 896x512)."""
    if width < 1 or height < 1:
        raise ValueError(f"size: frame is {width}x{height}; both sides must be >= 1")
    if short_side < multiple:
        raise ValueError(f"short_side: {short_side} must be >= {multiple}")
    k = short_side / min(width, height)
    w = int(round(width * k / multiple)) * multiple
    h = int(round(height * k / multiple)) * multiple
    return max(w, multiple), max(h, multiple)


def resize_frame(img: np.ndarray, size: tuple[int, int], short_side: int | None = None) -> np.ndarray:
    """Resize an HxWx3 uint8 frame to size=(W, H) with the published filter rule (resize_image): Lanczos when the
    scale factor k = short_side / min(h, w) is > 1, area averaging otherwise. The sides are rounded to multiples of
    64 after scaling, so k, not the area ratio, decides (1000x513 -> 1024x512 is k < 1: area). Without
    `short_side` (an explicit size), k is the target's short side over the source's."""
    w, h = size
    if img.shape[1] == w and img.shape[0] == h:
        return img
    k = (short_side if short_side is not None else min(w, h)) / min(img.shape[:2])
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_LANCZOS4 if k > 1 else cv2.INTER_AREA)


def read_frames(path: str | os.PathLike, size: tuple[int, int] | None = None,
                short_side: int | None = None) -> Iterator[np.ndarray]:
    """Yield the frames of a video file or image folder one at a time as HxWx3 uint8 RGB, resized to size=(W, H)
    when given (filter rule: `resize_frame`, with `short_side` when the size came from processing_size). Only the
    current frame is held."""
    for _, img in read_timed_frames(path, size, short_side):
        yield img


def read_timed_frames(path: str | os.PathLike, size: tuple[int, int] | None = None, short_side: int | None = None
                      ) -> Iterator[tuple[Fraction | None, np.ndarray]]:
    """Like `read_frames`, with each frame's presentation time in seconds after the first frame's (the stream's
    own timestamps, so a variable frame rate shows); None for images and for frames without a timestamp."""
    path = Path(path)
    if path.is_dir():
        files = list_images(path)
        first_shape = None
        for f in files:
            img = _read_image(f)
            if first_shape is None:
                first_shape = img.shape
            elif img.shape != first_shape:
                raise ValueError(f"input: image '{f}' is {img.shape[1]}x{img.shape[0]} but the first image is "
                                 f"{first_shape[1]}x{first_shape[0]}; all frames must have one size")
            yield None, img if size is None else resize_frame(img, size, short_side)
        return
    av = _av()
    try:
        with av.open(str(path)) as c:
            vs = c.streams.video[0]
            vs.thread_type = "AUTO"
            tb = Fraction(vs.time_base) if vs.time_base else None
            first = None
            for frame in c.decode(vs):
                t = None
                if frame.pts is not None and tb is not None:
                    first = frame.pts if first is None else first
                    t = (frame.pts - first) * tb
                img = frame.to_ndarray(format="rgb24")
                yield t, img if size is None else resize_frame(img, size, short_side)
    except av.error.FFmpegError as e:
        raise ValueError(f"input: cannot decode video '{path}': {e}") from e


class _AudioCopy:
    """Copies the audio packets of `src` into `out`, interleaved: `until(t)` muxes every packet that starts before
    t seconds, so the muxer never queues the whole track."""

    def __init__(self, src: str, out):
        av = _av()
        self._in = av.open(src)
        ain = self._in.streams.audio[0]
        self._stream = out.add_stream_from_template(ain)
        self._out = out
        self._packets = self._in.demux(ain)
        self._pending = None
        self._done = False

    def until(self, t: float | None) -> None:
        while not self._done:
            if self._pending is None:
                try:
                    self._pending = next(self._packets)
                except StopIteration:
                    self._done = True
                    break
                # the demuxer's final flush packet carries no data
                if self._pending.dts is None:
                    self._pending = None
                    continue
            p = self._pending
            if t is not None and p.pts is not None and float(p.pts * p.time_base) > t:
                break
            p.stream = self._stream
            self._out.mux(p)
            self._pending = None

    def close(self) -> None:
        self._in.close()


class VideoWriter:
    """Write frames (HxWx3 uint8 RGB) one at a time to an H.264 .mp4 (yuv420p, `crf`) at `fps`, copying the audio of
    `audio_from` when it has any; or, when `path` has no video suffix, to a folder of PNGs 00000.png, 00001.png, ...

    Use as a context manager. The file appears under its final name only when the writer closes without an error
    (it is written to a temporary name first), so a crash never leaves a partial video that looks finished. PNG
    frames go into an existing folder beside the files already there (same-named ones are replaced, others kept).

    time_base: the video's time base when frames are written with their own times (`write(img, t)`, e.g. a
    variable-frame-rate source's timestamps); default 1/fps, frame i at i/fps."""

    VIDEO_SUFFIXES = VIDEO_SUFFIXES

    def __init__(self, path: str | os.PathLike, fps: Fraction | float, size: tuple[int, int],
                 audio_from: str | None = None, crf: int = 18, time_base: Fraction | None = None):
        self.path = Path(path)
        self.size = size
        self.fps = Fraction(fps).limit_denominator(100000)
        self.n_written = 0
        self.time_base = Fraction(time_base) if time_base else 1 / self.fps
        self._last_pts = -1
        self._is_video = self.path.suffix.lower() in self.VIDEO_SUFFIXES
        w, h = size
        if self._is_video and (w % 2 or h % 2):
            raise ValueError(f"size: H.264 (yuv420p) needs even sides, got {w}x{h}")
        self._tmp = self.path.with_name(f".{self.path.name}.partial{self.path.suffix}")
        self._audio = None
        self._names: list[str] = []  # the PNG frames this writer wrote into the temporary folder
        if self._is_video:
            av = _av()
            safe_fs.clear(self._tmp, "output")
            self._out = av.open(str(self._tmp), "w")
            self._vs = self._out.add_stream("libx264", rate=self.fps)
            self._vs.width, self._vs.height = w, h
            self._vs.pix_fmt = "yuv420p"
            self._vs.options = x264_options(crf)
            self._vs.codec_context.time_base = self.time_base
            if audio_from is not None and not Path(audio_from).is_dir():
                with av.open(str(audio_from)) as c:
                    has_audio = bool(c.streams.audio)
                if has_audio:
                    self._audio = _AudioCopy(str(audio_from), self._out)
        else:
            if self._tmp.is_symlink():
                raise ValueError(f"output: '{self._tmp}' is a symbolic link; the frames are never written through "
                                 f"a link")
            if self._tmp.exists() and not self._tmp.is_dir():
                raise ValueError(f"output: '{self._tmp}' is a file where the frames' temporary folder goes; move it "
                                 f"away")
            self._tmp.mkdir(parents=True, exist_ok=True)

    def write(self, img: np.ndarray, t: Fraction | None = None) -> None:
        """Append one frame; `t`: its time in seconds after the first frame (default n_written / fps)."""
        w, h = self.size
        if img.shape != (h, w, 3) or img.dtype != np.uint8:
            raise ValueError(f"frame: expected {h}x{w}x3 uint8, got {tuple(img.shape)} {img.dtype}")
        if self._is_video:
            av = _av()
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            t = Fraction(self.n_written) / self.fps if t is None else Fraction(t)
            # strictly increasing even when two source times round to one tick
            pts = max(round(t / self.time_base), self._last_pts + 1)
            self._last_pts = pts
            frame.pts = pts
            frame.time_base = self.time_base
            if self._audio is not None:
                self._audio.until(float(pts * self.time_base))
            for packet in self._vs.encode(frame):
                self._out.mux(packet)
        else:
            ok, buf = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
            if not ok:
                raise RuntimeError(f"could not encode frame {self.n_written} as PNG")
            name = f"{self.n_written:05d}.png"
            # a fresh file: a link or a planted file already at the name is removed, never written through
            with os.fdopen(safe_fs.create(self._tmp / name, "output"), "wb") as f:
                f.write(buf.tobytes())
            self._names.append(name)
        self.n_written += 1

    def close(self, ok: bool = True) -> None:
        if self._is_video:
            if ok:
                for packet in self._vs.encode(None):
                    self._out.mux(packet)
                if self._audio is not None:
                    self._audio.until(None)
            if self._audio is not None:
                self._audio.close()
            self._out.close()
        if self._is_video:
            if ok:
                os.replace(self._tmp, self.path)
            else:
                self._tmp.unlink(missing_ok=True)
            return
        # PNG frames: only the files this writer wrote move (or go); anything else in the temporary folder stays
        if ok:
            if self.path.is_symlink() or (self.path.exists() and not self.path.is_dir()):
                self.path.unlink()  # a file or a link at the name (the link, never its target)
            self.path.mkdir(exist_ok=True)
        for name in self._names:
            if ok:
                os.replace(self._tmp / name, self.path / name)
            else:
                (self._tmp / name).unlink(missing_ok=True)
        try:
            self._tmp.rmdir()
        except OSError:
            pass  # not empty: what is left there is not this writer's

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(ok=exc_type is None)


def synthetic_frame(i: int, size: tuple[int, int] = (256, 256), seed: int = 0, cut_at: int | None = None) -> np.ndarray:
    """Frame i of a synthetic clip: a smooth random texture (panning slowly) with a moving disc and a rotating
    rectangle; after `cut_at` the palette changes (a scene cut, for keyframe selection)."""
    w, h = size
    scene = 1 if cut_at is not None and i >= cut_at else 0
    rng = np.random.default_rng(seed + 7919 * scene)
    tex = rng.random((h // 8 + 4, w // 8 + 4, 3)).astype(np.float32)
    tex = cv2.resize(tex, ((w // 8 + 4) * 8, (h // 8 + 4) * 8), interpolation=cv2.INTER_CUBIC)
    dx, dy = int(i * 0.5) % 16, int(i * 0.25) % 16
    tex = tex[dy:dy + h, dx:dx + w]
    base = np.array([0.35, 0.5, 0.65] if scene == 0 else [0.7, 0.45, 0.3], np.float32)
    img = np.clip((0.55 * tex + 0.45 * base) * 255, 0, 255).astype(np.uint8)
    t = i / 24.0
    cx = int(w * (0.5 + 0.3 * math.sin(2 * math.pi * 0.25 * t)))
    cy = int(h * (0.5 + 0.2 * math.cos(2 * math.pi * 0.25 * t)))
    cv2.circle(img, (cx, cy), max(2, min(w, h) // 8), (235, 60, 40), -1, lineType=cv2.LINE_AA)
    rect = ((w * 0.3 + w * 0.1 * t) % w, h * 0.7), (w * 0.25, h * 0.12), 40.0 * t
    cv2.fillPoly(img, [cv2.boxPoints(rect).astype(np.int32)], (40, 200, 90), lineType=cv2.LINE_AA)
    return np.ascontiguousarray(img)


def make_synthetic_clip(path: str | os.PathLike, n_frames: int = 96, size: tuple[int, int] = (256, 256),
                        fps: Fraction | float = 24, seed: int = 0, cut_at: int | None = None,
                        audio: bool = False) -> Path:
    """Write a synthetic clip (see `synthetic_frame`) to `path` (.mp4, or a folder of PNGs) and return the path;
    `audio=True` adds a mono AAC sine tone as long as the video."""
    if n_frames < 1:
        raise ValueError(f"n_frames: {n_frames} must be >= 1")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    is_video = path.suffix.lower() in VideoWriter.VIDEO_SUFFIXES
    if not is_video or not audio:
        with VideoWriter(path, fps, size) as wr:
            for i in range(n_frames):
                wr.write(synthetic_frame(i, size, seed, cut_at))
        return path
    av = _av()
    fps = Fraction(fps).limit_denominator(100000)
    rate, chunk = 44100, 1024
    tmp = path.with_name(f".{path.name}.partial{path.suffix}")
    with av.open(str(tmp), "w") as out:
        vs = out.add_stream("libx264", rate=fps)
        vs.width, vs.height = size
        vs.pix_fmt = "yuv420p"
        vs.options = x264_options(23)  # libx264's default crf
        aus = out.add_stream("aac", rate=rate, layout="mono")
        n_samples = int(rate * n_frames / fps)
        sample = 0
        for i in range(n_frames):
            frame = av.VideoFrame.from_ndarray(synthetic_frame(i, size, seed, cut_at), format="rgb24")
            frame.pts = i
            frame.time_base = 1 / fps
            for p in vs.encode(frame):
                out.mux(p)
            while sample < min(n_samples, int(rate * (i + 1) / fps)):
                tt = (sample + np.arange(chunk)) / rate
                af = av.AudioFrame.from_ndarray((0.2 * np.sin(2 * np.pi * 440 * tt)).astype(np.float32)[None],
                                                format="fltp", layout="mono")
                af.sample_rate, af.pts = rate, sample
                for p in aus.encode(af):
                    out.mux(p)
                sample += chunk
        for s in (vs, aus):
            for p in s.encode(None):
                out.mux(p)
    os.replace(tmp, path)
    return path
