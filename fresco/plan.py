"""`fresco plan VIDEO|--size WxH [--batch-size N] [--device-memory 24GB]`: the predicted peak GPU memory of one
keyframe batch per stage (fresco.memory, traced on meta tensors, no GPU needed) and whether it fits the card; and
`check_plan`, the same numbers as the render's preflight on CUDA (a batch size that cannot fit is refused before
any model loads, naming the one that would; the VAE chunk is lowered to the largest that fits)."""
from __future__ import annotations

import argparse
import re
from typing import Callable, Optional, Tuple

from .constants import MAX_SIDE

GiB = 2 ** 30
MiB = 2 ** 20
MAX_DEVICE_BYTES = 2 ** 50  # 1 PiB, far above any card
_UNITS = {"": GiB, "g": GiB, "gb": GiB, "gib": GiB, "m": MiB, "mb": MiB, "mib": MiB}


def parse_memory(text: str) -> int:
    """'24GB', '24G', '24GiB', '11500MiB', '12' (GiB) -> bytes. Cards are sold in binary units (a 24 GB card holds
    24 GiB), so GB means GiB here."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
    unit = m.group(2).lower() if m else None
    size = float(m.group(1)) * _UNITS[unit] if m is not None and unit in _UNITS else 0.0
    if not MiB <= size <= MAX_DEVICE_BYTES:   # (400 nines made float('inf'), which int() refused in a traceback)
        raise ValueError(f"--device-memory: a size like 24GB, 12GiB or 11500MiB, from 1 MiB to "
                         f"{MAX_DEVICE_BYTES // GiB} GiB, got {text!r}")
    return int(size)


def parse_size(text: str) -> Tuple[int, int]:
    """'WxH' with both sides positive multiples of 64 (SD1.5's processing sizes)."""
    try:
        w, h = (int(v) for v in str(text).lower().split("x"))
    except ValueError:
        raise ValueError(f"--size: WxH like 512x512, got {text!r}") from None
    if w < 64 or h < 64 or w % 64 or h % 64 or max(w, h) > MAX_SIDE:
        raise ValueError(f"--size: both sides positive multiples of 64 up to {MAX_SIDE} (e.g. 512x512, 896x512), "
                         f"got {text!r}")
    return w, h


def largest_fitting_batch(size: Tuple[int, int], device_bytes: int, upper: int, plan_fn: Callable) -> Optional[int]:
    """The largest batch size in 2..upper-1 whose plan fits at VAE chunk 1 (None: not even 2). Each stage grows
    affinely with the batch, so two plans give a first guess that is then checked (and stepped) by tracing."""
    def fits(n: int) -> bool:
        return plan_fn(n, 1).fits(device_bytes, 1)

    if upper <= 2 or not fits(2):
        return None
    a, b = plan_fn(2, 1), plan_fn(min(4, upper - 1), 1) if upper > 4 else None
    guess = upper - 1
    if b is not None and b.total_at(1) > a.total_at(1):
        slope = (b.total_at(1) - a.total_at(1)) / (b.batch_size - 2)
        from .memory import usable
        guess = min(upper - 1, 2 + int((usable(device_bytes) - a.total_at(1)) / slope))
    n = max(2, guess)
    while n > 2 and not fits(n):
        n -= 1
    while n + 1 < upper and fits(n + 1):
        n += 1
    return n


def make_planner(backend: str, tiny: bool, controlnet: bool, settings=None, dtype=None) -> Callable:
    """plan(batch_size, vae_chunk) -> fresco.memory.BatchPlan at a fixed size (bound by the caller)."""
    import torch
    from .memory import plan_batch

    def planner(size: Tuple[int, int]):
        return lambda n, chunk: plan_batch(size, n, settings=settings, backend=backend, tiny=tiny,
                                           controlnet=controlnet, vae_chunk=chunk, dtype=dtype or torch.float16)
    return planner


def check_plan(size: Tuple[int, int], batch_size: int, device_bytes: int, *, settings, backend: str, tiny: bool,
               controlnet: bool, dtype=None) -> int:
    """The render's preflight on CUDA: raises (naming the batch size that would fit) when the batch cannot fit in
    `device_bytes` at any VAE chunk; else returns the largest VAE chunk <= settings.vae_chunk that fits."""
    plan_at = make_planner(backend, tiny, controlnet, settings, dtype)(size)
    plan = plan_at(batch_size, settings.vae_chunk)
    chunk = plan.largest_vae_chunk(device_bytes)
    if chunk is not None:
        return chunk
    better = largest_fitting_batch(size, device_bytes, batch_size, plan_at)
    stages = plan.all_stages(1)
    need = plan.total_at(1) / GiB
    fix = f"--batch-size {better} fits" if better else "no batch size fits; use a smaller --size/--short-side"
    raise ValueError(f"batch_size: {batch_size} keyframes at {size[0]}x{size[1]} need about {need:.1f} GiB of GPU "
                     f"memory at their peak ({max(stages, key=stages.get)}, backend {backend}) but "
                     f"{device_bytes / GiB:.1f} GiB is free; {fix} (or --force to try anyway)")


def add_parser(sub) -> None:
    p = sub.add_parser("plan", help="predict the peak GPU memory of a render per stage (no GPU needed)",
                       description="Trace one keyframe batch of SD1.5 + ControlNet on meta tensors and print the "
                                   "peak GPU memory per stage and whether it fits the card.")
    p.add_argument("video", nargs="?", help="the input video or image folder (its processing size is used)")
    p.add_argument("--size", help="processing size WxH instead of a video (e.g. 896x512)")
    p.add_argument("--short-side", dest="short_side", type=int, default=512, help="with VIDEO: its short side is "
                   "scaled to this (512)")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=8, help="keyframes per batch (8)")
    p.add_argument("--device-memory", dest="device_memory", default=None,
                   help="the card's memory, e.g. 24GB (default: this machine's CUDA device, else 24GB)")
    p.add_argument("--backend", default="fused", choices=("fused", "reference"), help="fresco_kernels backend")
    p.add_argument("--vae-chunk", dest="vae_chunk", type=int, default=None,
                   help="largest VAE chunk to consider (default: the batch size)")
    p.add_argument("--tiny", action="store_true", help="the tiny random-weight stand-in instead of SD1.5")
    p.add_argument("--no-controlnet", dest="controlnet", action="store_false", help="without a ControlNet")


def run_plan(args: argparse.Namespace) -> int:
    """Print the table; exit 0 when it fits, 1 when it does not. Bad arguments raise ValueError (exit 2)."""
    if (args.video is None) == (args.size is None):
        raise ValueError("plan: give a VIDEO or --size WxH (one of them)")
    from .config import own_fields
    from .knobs import check_value
    knob = {f.name: f for f in own_fields()}
    check_value("--batch-size", knob["batch_size"], args.batch_size)  # the render's own range
    if args.vae_chunk is not None and args.vae_chunk < 1:
        raise ValueError(f"--vae-chunk: a positive number of frames, got {args.vae_chunk}")
    device_bytes = parse_memory(args.device_memory) if args.device_memory is not None else None
    if args.size is not None:
        size = parse_size(args.size)
    else:
        from .video.io import probe, processing_size
        check_value("--short-side", knob["short_side"], args.short_side)  # the render's own range
        info = probe(args.video)
        size = processing_size(info.width, info.height, args.short_side)
    if device_bytes is None:
        import torch
        device_bytes = torch.cuda.get_device_properties(0).total_memory if torch.cuda.is_available() else 24 * GiB
    plan_at = make_planner(args.backend, args.tiny, args.controlnet)(size)
    plan = plan_at(args.batch_size, args.vae_chunk or args.batch_size)
    chunk = plan.largest_vae_chunk(device_bytes)
    if chunk is not None:
        plan.vae_chunk = chunk
    print(plan.table())
    from .memory import usable
    print(f"\ndevice memory {device_bytes / GiB:.1f} GiB, usable {usable(device_bytes) / GiB:.1f} GiB "
          f"(headroom for the CUDA context, workspaces, fragmentation)")
    if chunk is not None:
        print(f"fits: yes, {plan.total / GiB:.2f} GiB at vae_chunk {chunk}")
        return 0
    better = largest_fitting_batch(size, device_bytes, args.batch_size, plan_at)
    print(f"fits: no, {plan.total_at(1) / GiB:.2f} GiB even at vae_chunk 1; "
          + (f"--batch-size {better} fits" if better else "no batch size fits at this size"))
    return 1
