"""Score a video translation against its input (`fresco score`, `fresco render --score`, the web UI's result step):
FRESCO's own metrics (Pixel-MSE warp error, CLIP Tem-Con / Fram-Acc), CLIP-T, a flicker index, a plot, a strip.

Flow-based scores need no weights: the flow and occlusion of each consecutive pair come from the INPUT video (the
package's estimators, `occlusion_from_flows` and `flow_warp`), and the output frame i is warped onto frame i + 1:
- warp error (Pixel-MSE): mean over non-occluded pixels (visible in both frames, landing inside the frame) and RGB of
  (out[i+1] - warp(out[i]))^2, RGB in [0, 1]; the same on the input is its floor (what the flow cannot explain);
- flicker index: mean |out[i+1] - out[i]| (RGB in [0, 1]) over the pixels where the input is static (mean RGB
  change <= 3/255), against the same for the input.
CLIP scores (when a CLIP model is in the local cache): Tem-Con (mean cosine similarity of consecutive output frames'
image embeddings), CLIP-T (mean cosine similarity of each output frame to the prompt) and Fram-Acc (the share of
frames more similar to the prompt than to the source prompt)."""
from __future__ import annotations

import itertools
import json
import math
import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence, Union

import numpy as np
import torch

from fresco_kernels import flow_warp, occlusion_from_flows

from .constants import DEFAULT_CLIP, MAX_FRAMES, SCORE_FILES, within
from .models.flow import FlowEstimator, flow_pair, get_flow_estimator

__all__ = ["ScoreResult", "score_frames", "score_videos", "score_config", "score_render", "load_clip", "write_plot",
           "write_strip", "render_keys", "DEFAULT_CLIP", "STATIC_THRESHOLD", "SCORE_FILES"]

# input pixels whose mean RGB change between two frames is at most this (RGB in [0, 1]) count as static (codec noise)
STATIC_THRESHOLD = 3 / 255
# what `fresco render --score` writes into the output folder (JSON, plot)
# the state file a render leaves beside its output; larger files are not read
STATE_FILE, STATE_MAX_BYTES = "state.json", 16 << 20
CLIP_BATCH = 16


@dataclass
class ScoreResult:
    """Every figure of one scoring. Per-pair lists have n_frames - 1 entries (pair i: frames i, i + 1); None where a
    pair has no usable pixel. clip: {"model", "tem_con", "clip_t", "fram_acc"} or None with `clip_skipped` saying
    why; keyframes: the render's keyframes when its state was found (else None)."""
    input: str
    output: str
    n_frames: int
    size: tuple[int, int]
    flow: str
    warp_error: list[Optional[float]]
    warp_error_floor: list[Optional[float]]
    warp_error_mean: Optional[float]
    warp_error_floor_mean: Optional[float]
    flicker_index: Optional[float]
    flicker_index_floor: Optional[float]
    static_share: float
    clip: Optional[dict] = None
    clip_skipped: Optional[str] = None
    keyframes: Optional[list[int]] = None
    notes: list[str] = field(default_factory=list)
    versions: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["size"] = list(self.size)
        d["units"] = {"warp_error": "mean squared error, RGB in [0, 1], non-occluded pixels (flow of the input)",
                      "flicker_index": f"mean |frame[i+1] - frame[i]|, RGB in [0, 1], where the input's mean RGB "
                                       f"change <= {STATIC_THRESHOLD * 255:g}/255",
                      "clip": "cosine similarities of CLIP embeddings; fram_acc a share of frames in [0, 1]"}
        return d

    def summary(self) -> list[str]:
        """The figures as lines for a terminal or the web UI."""
        w, h = self.size
        lines = [f"frames: {self.n_frames} at {w}x{h} (flow of the input: {self.flow})"]
        ratio = _ratio(self.warp_error_mean, self.warp_error_floor_mean)
        lines.append(f"warp error (Pixel-MSE): output {_fmt(self.warp_error_mean)}, input floor "
                     f"{_fmt(self.warp_error_floor_mean)}{ratio}")
        lines.append(f"flicker index: output {_fmt(self.flicker_index)}, input {_fmt(self.flicker_index_floor)} "
                     f"(static share of pixels {self.static_share:.0%})")
        if self.clip is None:
            lines.append(f"CLIP scores skipped: {self.clip_skipped}")
        else:
            c = self.clip
            lines.append(f"CLIP ({c['model']}): Tem-Con {_fmt(c['tem_con'])}, CLIP-T {_fmt(c['clip_t'])}, "
                         f"Fram-Acc {_fmt(c['fram_acc'])}")
        return lines + [f"note: {n}" for n in self.notes]


def _fmt(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{v:.6g}"


def _ratio(a: Optional[float], b: Optional[float]) -> str:
    return f" (x{a / b:.3g})" if a is not None and b else ""


def _to_tensor(img: np.ndarray, device: torch.device) -> torch.Tensor:
    """HxWx3 uint8 -> [1, 3, H, W] float32 RGB in 0..255."""
    return torch.from_numpy(np.ascontiguousarray(img)).to(device).permute(2, 0, 1)[None].float()


def _warp(x: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """flow_warp, but pixels with exactly zero flow keep their value (grid_sample's coordinate round trip is
    otherwise off by ~1e-6 there, and a still frame must score exactly zero)."""
    still = (flow == 0).all(dim=1, keepdim=True)
    return torch.where(still, x, flow_warp(x, flow))


@torch.no_grad()
def carried_pixels(estimator: FlowEstimator, a_in: torch.Tensor, b_in: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The input's backward flow of a consecutive pair ([1, 2, H, W], frame b to frame a) and the pixels of b it
    carries from a ([1, H, W] bool: not occluded by the forward-backward check, source inside the frame): where the
    warp error of every figure here is taken. a_in, b_in: [1, 3, H, W] float RGB 0..255."""
    fwd, bwd = (f.to(a_in.device, torch.float32) for f in flow_pair(estimator, a_in, b_in))
    if tuple(bwd.shape) != (1, 2) + tuple(a_in.shape[2:]):
        raise RuntimeError(f"flow estimator returned {list(bwd.shape)}, expected [1, 2, H, W]")
    _, occ = occlusion_from_flows(fwd, bwd, a_in, targets=b_in)
    inside = _warp(torch.ones_like(a_in[:, :1]), bwd)[:, 0] > 0.999
    return bwd, (occ < 0.5) & inside


def change_along_flow(a: torch.Tensor, b: torch.Tensor, bwd: torch.Tensor) -> torch.Tensor:
    """b minus a warped along the input's backward flow, RGB in [0, 1] ([1, 3, H, W]; a, b: float RGB 0..255)."""
    return b / 255 - _warp(a / 255, bwd)


def pair_warp_error(a: torch.Tensor, b: torch.Tensor, bwd: torch.Tensor, valid: torch.Tensor) -> Optional[float]:
    """The warp error of one consecutive pair (a, b: float RGB 0..255): the mean squared `change_along_flow` over
    the carried pixels `valid`; None where the pair carries none."""
    n_valid = int(valid.sum())
    if n_valid == 0:
        return None
    err = (change_along_flow(a, b, bwd) ** 2).mean(dim=1)
    return float(err[valid].double().sum() / n_valid)


class _PairScorer:
    """Accumulates the flow-based figures one consecutive pair at a time."""

    def __init__(self, estimator: FlowEstimator):
        self.estimator = estimator
        self.warp, self.floor = [], []
        self.flick = [0.0, 0.0, 0]  # sum of output change, of input change, number of static pixels
        self.pixels = 0

    @torch.no_grad()
    def add(self, a_in: torch.Tensor, b_in: torch.Tensor, a_out: torch.Tensor, b_out: torch.Tensor) -> None:
        bwd, valid = carried_pixels(self.estimator, a_in, b_in)
        self.warp.append(pair_warp_error(a_out, b_out, bwd, valid))
        self.floor.append(pair_warp_error(a_in, b_in, bwd, valid))
        static = (b_in - a_in).abs().mean(dim=1) / 255 <= STATIC_THRESHOLD
        self.flick[0] += float(((b_out - a_out).abs().mean(dim=1) / 255)[static].double().sum())
        self.flick[1] += float(((b_in - a_in).abs().mean(dim=1) / 255)[static].double().sum())
        self.flick[2] += int(static.sum())
        self.pixels += static.numel()


def _mean(values: Sequence[Optional[float]]) -> Optional[float]:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


# --- CLIP ---

def load_clip(model: str = DEFAULT_CLIP, device: Union[str, torch.device] = "cpu"):
    """(CLIPModel, CLIPProcessor) from a local folder or the local Hugging Face cache (never downloaded).
    Raises RuntimeError saying why when it is not there."""
    path = Path(model)
    if not path.is_dir():
        try:
            from huggingface_hub import snapshot_download
            path = Path(snapshot_download(model, local_files_only=True))
        except Exception as e:  # not cached, bad id, offline: all mean "not available here"
            raise RuntimeError(f"CLIP model '{model}' is not a folder and not in the local Hugging Face cache "
                               f"({type(e).__name__}); pass --clip ID|PATH of a cached CLIP") from None
    try:
        from transformers import CLIPModel, CLIPProcessor
        clip = CLIPModel.from_pretrained(path).to(device).eval().requires_grad_(False)
        processor = CLIPProcessor.from_pretrained(path)
    except Exception as e:  # a folder that is not a CLIP model
        raise RuntimeError(f"CLIP model '{model}' could not be loaded from '{path}': "
                           f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return clip, processor


def _unit(x: Any) -> torch.Tensor:
    x = x if isinstance(x, torch.Tensor) else x.pooler_output  # transformers 5 may return an output object
    return torch.nn.functional.normalize(x.float(), dim=-1)


class _ClipScorer:
    """Embeds output frames in batches and keeps the per-frame similarities needed for the CLIP scores."""

    def __init__(self, model: str, clip, processor, prompt: Optional[str], source_prompt: Optional[str]):
        self.model, self.clip, self.processor = model, clip, processor
        self.device = next(clip.parameters()).device
        self.texts = {}
        with torch.no_grad():
            for key, text in (("prompt", prompt), ("source", source_prompt)):
                if text:
                    tok = processor(text=[text], return_tensors="pt", padding=True, truncation=True)
                    self.texts[key] = _unit(clip.get_text_features(**{k: v.to(self.device) for k, v in tok.items()}))
        self.pending: list[np.ndarray] = []
        self.prev: Optional[torch.Tensor] = None
        self.tem, self.sim_prompt, self.sim_source = [], [], []

    def add(self, img: np.ndarray) -> None:
        self.pending.append(img)
        if len(self.pending) >= CLIP_BATCH:
            self.flush()

    @torch.no_grad()
    def flush(self) -> None:
        if not self.pending:
            return
        px = self.processor(images=self.pending, return_tensors="pt")["pixel_values"].to(self.device)
        emb = _unit(self.clip.get_image_features(pixel_values=px))
        self.pending = []
        seq = emb if self.prev is None else torch.cat([self.prev, emb])
        self.tem += (seq[1:] * seq[:-1]).sum(-1).tolist()
        self.prev = emb[-1:]
        if "prompt" in self.texts:
            self.sim_prompt += (emb @ self.texts["prompt"].T)[:, 0].tolist()
        if "source" in self.texts:
            self.sim_source += (emb @ self.texts["source"].T)[:, 0].tolist()

    def result(self) -> dict:
        self.flush()
        fram_acc = None
        if self.sim_prompt and self.sim_source:
            fram_acc = float(np.mean([p > s for p, s in zip(self.sim_prompt, self.sim_source)]))
        return {"model": self.model, "tem_con": _mean(self.tem), "clip_t": _mean(self.sim_prompt),
                "fram_acc": fram_acc}


def _versions(clip: bool) -> dict:
    import cv2

    from . import __version__
    v = {"fresco": __version__, "python": platform.python_version(), "torch": torch.__version__,
         "numpy": np.__version__, "opencv": cv2.__version__}
    if clip:
        import transformers
        v["transformers"] = transformers.__version__
    return v


def _device(device: Union[str, torch.device, None]) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def score_frames(inputs: Iterable[np.ndarray], outputs: Iterable[np.ndarray], *,
                 flow: Union[str, FlowEstimator, None] = "dis", gmflow_path: Optional[str] = None,
                 raft_path: Optional[str] = None, device: Union[str, torch.device, None] = "cpu",
                 clip: Union[str, tuple, None] = None, prompt: Optional[str] = None,
                 source_prompt: Optional[str] = None, keep: Sequence[int] = (),
                 kept: Optional[dict] = None, names: tuple[str, str] = ("input", "output")) -> ScoreResult:
    """Score `outputs` against `inputs`: two equally long iterables of HxWx3 uint8 RGB frames of one size (streamed:
    two frames of each are held, plus the frames numbered in `keep`, stored in `kept` as {i: (input, output)}).

    flow: an estimator name (dis, raft, gmflow: needs gmflow_path) or a callable, run on the input's pairs.
    clip: a CLIP id or folder (loaded from the local cache) or an already loaded (model, processor); None: no CLIP
    scores. prompt: the target prompt (CLIP-T, Fram-Acc); source_prompt: the input's description (Fram-Acc).
    Raises ValueError naming `names` when the frame counts or sizes differ or fewer than 2 frames come."""
    dev = _device(device)
    estimator = get_flow_estimator(flow, dev, gmflow_path=gmflow_path, raft_path=raft_path)
    flow_name = flow if isinstance(flow, str) else ("dis" if flow is None else type(flow).__name__)
    clip_scorer, skipped = None, None
    if clip is not None:
        model, proc = clip if isinstance(clip, tuple) else load_clip(clip, dev)
        label = clip if isinstance(clip, str) else getattr(getattr(model, "config", None), "_name_or_path", "CLIP")
        clip_scorer = _ClipScorer(str(label), model, proc, prompt, source_prompt)
    pairs = _PairScorer(estimator)
    keep = set(keep)
    prev: Optional[tuple[torch.Tensor, torch.Tensor]] = None
    n, size = 0, None
    for i, (a, b) in enumerate(itertools.zip_longest(inputs, outputs)):
        if a is None or b is None:
            short, other = (names[0], names[1]) if a is None else (names[1], names[0])
            raise ValueError(f"{short}: has {i} frames but {other} has more; score a render against the input it "
                             f"was made from (same frames)")
        if size is None:
            size = (a.shape[1], a.shape[0])
        for name, img in zip(names, (a, b)):
            if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8 or (img.shape[1], img.shape[0]) != size:
                raise ValueError(f"{name}: frame {i} is {img.shape} {img.dtype}, expected {size[1]}x{size[0]}x3 "
                                 f"uint8 like the first input frame (pass --resize to score at the output's size)")
        if kept is not None and i in keep:
            kept[i] = (a, b)
        cur = (_to_tensor(a, dev), _to_tensor(b, dev))
        if prev is not None:
            pairs.add(prev[0], cur[0], prev[1], cur[1])
        if clip_scorer is not None:
            clip_scorer.add(b)
        prev, n = cur, i + 1
    if n < 2:
        raise ValueError(f"{names[0]}: {n} frame(s); scoring needs at least 2")
    clip_result = None
    if clip_scorer is not None:
        clip_result = clip_scorer.result()
    else:
        skipped = "no CLIP model given"
    s_out, s_in, n_static = pairs.flick
    return ScoreResult(
        input=names[0], output=names[1], n_frames=n, size=size, flow=str(flow_name),
        warp_error=pairs.warp, warp_error_floor=pairs.floor, warp_error_mean=_mean(pairs.warp),
        warp_error_floor_mean=_mean(pairs.floor),
        flicker_index=s_out / n_static if n_static else None, flicker_index_floor=s_in / n_static if n_static else None,
        static_share=n_static / pairs.pixels if pairs.pixels else 0.0, clip=clip_result, clip_skipped=skipped,
        versions=_versions(clip_result is not None))


# --- files ---

def _probe(name: str, path: Union[str, os.PathLike]):
    from .video.io import probe
    try:
        return probe(path)
    except (ValueError, FileNotFoundError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"{name}: {msg.removeprefix('input: ')}") from None


def _frames(path: Union[str, os.PathLike], size: Optional[tuple[int, int]], short_side: Optional[int],
            max_frames: Optional[int]) -> Iterator[np.ndarray]:
    from .video.io import read_frames
    frames = read_frames(path, size, short_side)
    return frames if max_frames is None else itertools.islice(frames, max_frames)


def render_keys(output: Union[str, os.PathLike], n_frames: int) -> tuple[Optional[list[int]], Optional[str]]:
    """The keyframes of the render that wrote `output`, from the state file beside it (untrusted: read only when
    small, valid JSON, with integer keys in 0..n_frames-1 and the same frame count). Returns (keys or None, a note
    saying why they were not used, or None)."""
    state = Path(output).parent / STATE_FILE
    if not state.is_file():
        return None, None
    try:
        if state.stat().st_size > STATE_MAX_BYTES:
            raise ValueError(f"larger than {STATE_MAX_BYTES >> 20} MiB")
        data = json.loads(state.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        keys, n = data.get("keys"), data.get("n_frames")
        if not isinstance(keys, list) or not all(type(k) is int and 0 <= k < n_frames for k in keys):
            raise ValueError(f"'keys' is not a list of frame numbers in 0..{n_frames - 1}")
        if n != n_frames:
            raise ValueError(f"it describes {n!r} frames, the output has {n_frames}")
        return sorted(set(keys)), None
    except (OSError, ValueError, UnicodeDecodeError, RecursionError) as e:
        return None, f"keyframes not marked: '{state}' is not usable ({str(e).splitlines()[0][:200]})"


def _check_target(name: str, path: Optional[Union[str, os.PathLike]], suffix: str, overwrite: bool,
                  taken: Sequence[Path]) -> Optional[Path]:
    if path is None:
        return None
    p = Path(path)
    if p.suffix.lower() != suffix:
        raise ValueError(f"{name}: expected a {suffix} file, got '{p}'")
    resolved = p.resolve()
    if any(resolved == t.resolve() for t in taken):
        raise ValueError(f"{name}: '{p}' is one of the videos being scored or another output")
    for t in taken:   # a new image in a frames folder being scored becomes one of its frames
        if t.is_dir() and within(resolved, t.resolve()):
            raise ValueError(f"{name}: '{p}' is inside '{t}', a frames folder being scored, where it would become "
                             f"a frame; write it elsewhere")
    if p.is_dir():
        raise ValueError(f"{name}: '{p}' is a folder")
    if p.exists() and not overwrite:
        raise ValueError(f"{name}: '{p}' already exists; pass --overwrite to replace it")
    if not p.parent.is_dir():
        raise ValueError(f"{name}: folder '{p.parent}' does not exist")
    return p


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def strip_frames(n_frames: int, count: int = 4) -> list[int]:
    """`count` frame numbers spread evenly from the first to the last frame."""
    return sorted({round(i * (n_frames - 1) / max(1, count - 1)) for i in range(min(count, n_frames))})


def score_videos(input: Union[str, os.PathLike], output: Union[str, os.PathLike], *,
                 prompt: Optional[str] = None, source_prompt: Optional[str] = None,
                 clip: Optional[str] = DEFAULT_CLIP, json_path: Optional[Union[str, os.PathLike]] = None,
                 plot: Optional[Union[str, os.PathLike]] = None, strip: Optional[Union[str, os.PathLike]] = None,
                 strip_at: Optional[Sequence[int]] = None, resize: bool = False, short_side: Optional[int] = None,
                 max_frames: Optional[int] = None, overwrite: bool = False,
                 flow: Union[str, FlowEstimator, None] = "dis",
                 gmflow_path: Optional[str] = None, raft_path: Optional[str] = None,
                 device: Union[str, torch.device, None] = "auto") -> ScoreResult:
    """Score the video (or image folder) `output` against `input` (see `score_frames`) and write what is asked for:
    `json_path` (every figure and the versions), `plot` (warp error per frame, keyframes marked when the output's
    folder holds a render state), `strip` (input over output at `strip_at`, default 4 frames spread evenly).

    Checked before any model loads: both readable, the same frame count (the first `max_frames` of each when set)
    and size (with `resize`, the input is resized to the output's size; `short_side`: the render's filter rule,
    fresco.video.io.resize_frame), the targets writable (an existing file only with `overwrite`). `clip`: a CLIP id
    or folder; when it is not available locally the CLIP scores are skipped and `clip_skipped` says why (None: no
    CLIP scores)."""
    in_info, out_info = _probe("input", input), _probe("output", output)
    if max_frames is not None and (isinstance(max_frames, bool) or not isinstance(max_frames, int)
                                   or not 2 <= max_frames <= MAX_FRAMES):
        raise ValueError(f"max_frames: an integer in [2, {MAX_FRAMES}] (or unset), got {max_frames!r}")
    cap = (lambda m: m if max_frames is None else min(m, max_frames))
    n_in, n_out = cap(in_info.n_frames), cap(out_info.n_frames)
    if n_in != n_out:
        raise ValueError(f"output: has {n_out} frames but input has {n_in}; score a render against the input it was "
                         f"made from (--max-frames N compares the first N of each)")
    size = None
    if (in_info.width, in_info.height) != (out_info.width, out_info.height):
        if not resize:
            raise ValueError(f"output: '{output}' is {out_info.width}x{out_info.height} but input '{input}' is "
                             f"{in_info.width}x{in_info.height}; pass --resize to resize the input to the output's "
                             f"size")
        size = (out_info.width, out_info.height)
    taken = [Path(input), Path(output)]
    targets = []
    for name, p, suffix in (("json", json_path, ".json"), ("plot", plot, ".png"), ("strip", strip, ".png")):
        t = _check_target(name, p, suffix, overwrite, taken)
        targets.append(t)
        if t is not None:
            taken.append(t)
    at = None
    if strip is not None:
        at = strip_frames(n_out) if strip_at is None else sorted(set(strip_at))
        bad = [i for i in at if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n_out]
        if bad or not at:
            raise ValueError(f"strip_at: frame numbers in 0..{n_out - 1}, got {list(strip_at or [])}")
    dev = _device(device)
    estimator = get_flow_estimator(flow, dev, gmflow_path=gmflow_path, raft_path=raft_path)
    skipped, loaded = None, None
    if clip is not None:
        try:
            loaded = load_clip(clip, dev)
        except RuntimeError as e:
            skipped = str(e)
    kept: dict = {}
    result = score_frames(_frames(input, size, short_side, max_frames), _frames(output, None, None, max_frames),
                          flow=estimator, device=dev,
                          clip=None if loaded is None else loaded, prompt=prompt, source_prompt=source_prompt,
                          keep=at or (), kept=kept)
    if result.clip is not None:
        result.clip["model"] = str(clip)
    result.input, result.output = str(input), str(output)
    result.flow = flow if isinstance(flow, str) else ("dis" if flow is None else type(flow).__name__)
    result.clip_skipped = skipped if clip is not None else "no CLIP model given"
    if result.clip is not None:
        if not prompt:
            result.notes.append("CLIP-T and Fram-Acc need --prompt")
        elif not source_prompt:
            result.notes.append("Fram-Acc needs --source-prompt (a description of the input)")
    result.keyframes, note = render_keys(output, result.n_frames)
    if note:
        result.notes.append(note)
    json_t, plot_t, strip_t = targets
    if plot_t is not None:
        _atomic_write(plot_t, lambda p: write_plot(result, p))
    if strip_t is not None:
        _atomic_write(strip_t, lambda p: write_strip(kept, p))
    if json_t is not None:
        _atomic_write(json_t, lambda p: p.write_text(json.dumps(result.to_dict(), indent=1, allow_nan=False)))
    return result


def score_config(cfg, video: Union[str, os.PathLike], *, n_frames: Optional[int] = None,
                 json_path: Optional[Path] = None, plot: Optional[Path] = None, overwrite: bool = False
                 ) -> ScoreResult:
    """`score_videos` of a render's `video` against its input with its settings (a fresco.config.RenderConfig):
    the input resized to the video's size by the render's rule, the first `n_frames` (default cfg.max_frames), its
    flow estimator and device, CLIP-T for its prompt when DEFAULT_CLIP is cached."""
    return score_videos(cfg.file_path, video, prompt=cfg.prompt, json_path=json_path, plot=plot, resize=True,
                        max_frames=n_frames or cfg.max_frames, overwrite=overwrite,
                        short_side=None if cfg.frame_size() else cfg.short_side, flow=cfg.flow_name,
                        gmflow_path=cfg.gmflow_path, raft_path=cfg.raft_path, device=cfg.device)


def score_render(cfg, video: Path, n_frames: int, timings: dict) -> ScoreResult:
    """`fresco render --score`: `score_config` of the finished render into SCORE_FILES beside the video (the render
    has claimed them in its manifest); logs the figures and adds timings["score_s"]."""
    import sys
    import time
    t = time.perf_counter()
    root = Path(video).parent
    result = score_config(cfg, video, n_frames=n_frames, json_path=root / SCORE_FILES[0],
                          plot=root / SCORE_FILES[1], overwrite=True)
    for line in result.summary():
        print(f"fresco: score: {line}", file=sys.stderr, flush=True)
    timings["score_s"] = time.perf_counter() - t
    return result


def write_plot(result: ScoreResult, path: Union[str, os.PathLike]) -> None:
    """A PNG of the warp error per frame (output and the input's floor), keyframes as vertical lines."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 2.8), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x = np.arange(1, result.n_frames)
    for values, label, style in ((result.warp_error, "output", "-"), (result.warp_error_floor, "input (floor)", "--")):
        ys = [math.nan if v is None else v for v in values]
        ax.plot(x, ys, style, label=label, linewidth=1.2)
    for j, k in enumerate(result.keyframes or []):
        ax.axvline(k, color="0.6", linewidth=0.7, zorder=0, label="keyframe" if j == 0 else None)
    ax.set_xlabel("frame (pair: frame - 1 -> frame)")
    ax.set_ylabel("warp error (MSE, RGB in [0, 1])")
    ax.set_xlim(0, max(1, result.n_frames - 1))
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(str(path), format="png")


def write_strip(kept: dict, path: Union[str, os.PathLike], height: int = 160) -> None:
    """A PNG of input frames (top row) and output frames (bottom row) at the kept frame numbers, labelled."""
    import cv2

    def label(img: np.ndarray, text: str, y: int) -> None:
        for colour, thick in (((255, 255, 255), 2), ((0, 0, 0), 1)):
            cv2.putText(img, text, (4, y), cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, thick, cv2.LINE_AA)

    cells = []
    for n, i in enumerate(sorted(kept)):
        col = []
        for img in kept[i]:
            w = max(1, round(img.shape[1] * height / img.shape[0]))
            col.append(cv2.resize(img, (w, height), interpolation=cv2.INTER_AREA))
        col = np.concatenate(col, axis=0)
        label(col, f"frame {i}", 16)
        if n == 0:
            label(col, "input", height - 6)
            label(col, "output", 2 * height - 6)
        cells.append(col)
    if not cells:
        raise ValueError("strip: no frames kept")
    strip = np.concatenate(cells, axis=1)
    if not cv2.imwrite(str(path), cv2.cvtColor(strip, cv2.COLOR_RGB2BGR)):
        raise RuntimeError(f"strip: could not write '{path}'")
