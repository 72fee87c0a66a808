"""Offline (no GPU, no driver) compile of every Triton kernel x every autotune config for sm_80 and sm_90 with the
installed Triton: registers and spill bytes from ptxas, shared memory from the kernel metadata (issue 14).

How: the real launchers (fresco_kernels.*.triton) are called with meta tensors at the pipeline's shapes (512²,
N = 8 frames, 2 CFG chunks: see LAUNCHES); each kernel's launch is recorded instead of run. Every recorded launch
is then compiled through Triton's own JIT path (`JITFunction.run(..., warmup=True)`: the same binder, argument
specialisation and constexprs a GPU launch would use) under a stand-in driver that reports the target (an arch,
its shared-memory limit) and never launches. Autotuned kernels are compiled for every config; configs that the
kernel's `prune_configs_by` drops for the target are listed as pruned.

Fails (exit 1) on: a compile error; a spill in any config of a hot kernel (every kernel the pipeline runs per step
or per optimisation iteration; see COLD); a config the autotuner keeps for a target whose shared memory exceeds
that target's limit; a kernel defined in the op folders that no launch reached.

Usage: python -m benchmarks.aot_check [--out DIR] [--targets 80,90] [--quick] [--only TEXT ...]
  --quick: each kernel's first launch and first kept config, sm_90 only unless --targets says otherwise (CI).
  --only: the launches whose kernel name or use contains TEXT (e.g. --only "optimisation up3").
Writes DIR/aot-triton-<version>.json and .md (the Markdown table RESULTS.md shows)."""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import io
import json
import os
import re
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.runtime.autotuner import Autotuner
from triton.runtime.driver import driver
from triton.runtime.jit import JITFunction

from benchmarks.kernel_spec import spec_key

# target name -> (capability, opt-in shared memory per block in bytes: A100 163 KiB, H100/H200 227 KiB)
TARGETS = {"sm_80": (80, 166912), "sm_90": (90, 232448)}
OP_MODULES = ("flow_warp", "warp_loss", "gram_loss", "trajectory_attention", "correspondence", "patch_synthesis")
# kernels run once per keyframe batch (trajectories) or only by autograd outside the pipeline: spills are reported,
# not failed. Everything else runs per denoising step, per optimisation iteration or (patch_synthesis) per
# propagated frame.
COLD = {"_correspondence_keys_kernel", "_correspondence_unused_kernel", "_correspondence_map_kernel",
        "_correspondence_chain_kernel"}

# the pipeline's shapes: 512² frames, latent 64², N = 8 frames per batch, 2 CFG chunks
N, CHUNKS, SIZE, LATENT = 8, 2, 512, 64
B = N * CHUNKS
# decoder block inputs (SD1.5 UNet up_blocks): channels, spatial size (benchmarks.harness.DECODER_LAYERS)
DECODER = {"up0": (1280, 8), "up1": (1280, 16), "up2": (1280, 32), "up3": (640, 64)}
# FRESCO attention layers with trajectories (up_blocks.1..3 attn1): head dim D (8 heads), token grid side
ATTENTION = {"up1": (160, 16), "up2": (80, 32), "up3": (40, 64)}


def meta(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device="meta")


# ---- the launches: (use, hot-path launch) -> a call of the real launcher on meta tensors ----
def _flow_warp_launches() -> List[Tuple[str, Callable[[], Any]]]:
    from fresco_kernels.flow_warp.triton import flow_warp_bwd, flow_warp_fwd
    m = N - 1
    flows = meta(m, 2, SIZE, SIZE)
    # video frames decoded as [H, W, 3] arrive channels-last; a key frame is expanded over the in-between frames
    key_cl = meta(SIZE, SIZE, 3).permute(2, 0, 1)[None].expand(m, -1, -1, -1)
    key = meta(3, SIZE, SIZE)[None].expand(m, -1, -1, -1)
    lat = meta(CHUNKS, N, 4, LATENT, LATENT)
    lflow = meta(N, 2, LATENT, LATENT)
    x_bwd, f_bwd = meta(B, 4, LATENT, LATENT), meta(B, 2, LATENT, LATENT)
    return [
        ("propagation: key frame channels-last C=3 512²", lambda: flow_warp_fwd(key_cl, flows)),
        ("propagation: stylised key C=3 512²", lambda: flow_warp_fwd(key, flows)),
        ("occlusion: flow by flow C=2 512²", lambda: flow_warp_fwd(meta(N, 2, SIZE, SIZE), meta(N, 2, SIZE, SIZE))),
        ("occlusion: frames C=3 512²", lambda: flow_warp_fwd(meta(N, 3, SIZE, SIZE), meta(N, 2, SIZE, SIZE))),
        ("background smoothing: mask C=1 64²", lambda: flow_warp_fwd(meta(N, 1, LATENT, LATENT), lflow)),
        ("background smoothing: latents C=4 64²",
         lambda: flow_warp_fwd(lat[:, 1], lflow[1:2].expand(CHUNKS, -1, -1, -1))),
        ("backward x+flow C=4 64²", lambda: flow_warp_bwd(meta(B, 4, LATENT, LATENT), x_bwd, f_bwd, True, True)),
        ("backward x C=4 64²", lambda: flow_warp_bwd(meta(B, 4, LATENT, LATENT), x_bwd, f_bwd, True, False)),
        ("backward flow C=4 64²", lambda: flow_warp_bwd(meta(B, 4, LATENT, LATENT), x_bwd, f_bwd, False, True)),
    ]


def _warp_loss_launches() -> List[Tuple[str, Callable[[], Any]]]:
    from fresco_kernels.warp_loss.triton import warp_loss_fwd_bwd
    out = []
    for layer, (c, s) in reversed(DECODER.items()):
        args = (meta(B, c, s, s), meta(N, 2, s, s), meta(N, 2, s, s), meta(N, 1, s, s), meta(N, 1, s, s), CHUNKS)
        out.append((f"optimisation {layer} C={c} {s}²", lambda a=args: warp_loss_fwd_bwd(*a, need_grad=True)))
        out.append((f"loss only {layer} C={c} {s}²", lambda a=args: warp_loss_fwd_bwd(*a, need_grad=False)))
    return out


def _gram_launches() -> List[Tuple[str, Callable[[], Any]]]:
    from fresco_kernels.gram_loss.triton import gram_loss_fwd, gram_loss_fwd_bwd
    out = []

    def rows(c, s):
        # the optimisation's feature [B, C, h, w] seen as [B, hw, C] rows (a transposed view), ref contiguous
        return meta(B, c, s, s).flatten(2).transpose(1, 2), meta(B, s * s, c)

    for layer, (c, s) in reversed(DECODER.items()):
        out.append((f"optimisation {layer} L1 tf32", lambda a=rows(c, s): gram_loss_fwd_bwd(*a, "l1", 100.0, "tf32")))
        out.append((f"loss only {layer} L1 tf32", lambda a=rows(c, s): gram_loss_fwd(*a, "l1", 100.0, "tf32")))
    c, s = DECODER["up3"]
    for precision in ("bf16", "ieee", "tf32x3"):
        out.append((f"optimisation up3 L1 {precision}",
                    lambda a=rows(c, s), p=precision: gram_loss_fwd_bwd(*a, "l1", 100.0, p)))
    # L2 runs the tiles only where C >= hw (up0); elsewhere the closed form (no Triton tile kernel)
    c, s = DECODER["up0"]
    out.append(("optimisation up0 L2 tf32", lambda a=rows(c, s): gram_loss_fwd_bwd(*a, "l2", 100.0, "tf32")))
    return out


def _attention_launches() -> List[Tuple[str, Callable[[], Any]]]:
    from fresco_kernels.trajectory_attention.triton import trajectory_attention_fwd
    out = []
    for layer, (d, s) in reversed(ATTENTION.items()):
        hw, c = s * s, 8 * d
        args = (meta(B, hw, c, dtype=torch.float16), meta(B, hw, c, dtype=torch.float16),
                meta(B, hw, c, dtype=torch.float16), meta(N, hw, dtype=torch.int64), meta(N, hw, dtype=torch.int32))
        out.append((f"{layer} fp16 D={d} hw={hw}", lambda a=args: trajectory_attention_fwd(*a, 1.0, 8)))
    return out


def _correspondence_launches() -> List[Tuple[str, Callable[[], Any]]]:
    from fresco_kernels.correspondence.triton import flow_correspondence_fwd
    out = []
    for layer, (_, s) in reversed(ATTENTION.items()):
        args = (meta(N - 1, 2, s, s), meta(N - 1, s, s, dtype=torch.bool), meta(N, 3, s, s))
        out.append((f"trajectories {s}²", lambda a=args: flow_correspondence_fwd(*a)))
    return out


def _patch_synthesis_launches() -> List[Tuple[str, Callable[[], Any]]]:
    # the patch propagation (fresco.video.patch_propagation.synthesize, PatchParams defaults): the key's style image
    # [3, 512², uint8], 9 guide channels (colour 3, edge 1, position 2, temporal 3: `_key_guides`), an initial field
    # from the chained flow, patch 5, levels 4 (512², 256², 128², 64²), em 3 x pm 1 passes, search radius 4, no
    # uniformity. The launcher runs its level loop, pyramids and field up-sampling on the meta tensors (shapes only;
    # its occupancy counts, a bincount, are an empty tensor of their shape there) and reaches every launch: the
    # votes and PatchMatch passes of each level, the final error pass (EVAL_ONLY) and the final vote.
    from fresco_kernels.patch_synthesis.triton import patch_synthesis_fwd
    g = 3 + 1 + 2 + 3
    args = (meta(3, SIZE, SIZE, dtype=torch.uint8), meta(g, SIZE, SIZE, dtype=torch.uint8),
            meta(g, SIZE, SIZE, dtype=torch.uint8), meta(g, dtype=torch.int32), 1,
            meta(2, SIZE, SIZE, dtype=torch.int32))
    # style_weight, init_nnf; then patch_size, levels, em_iters, pm_iters, search_radius, uniformity, seed
    return [(f"propagation C=3 G={g} {SIZE}² P=5 levels 4 radius 4",
             lambda: patch_synthesis_fwd(*args, 5, 4, 3, 1, 4, 0, 0))]


LAUNCHES = {"flow_warp": _flow_warp_launches, "warp_loss": _warp_loss_launches, "gram_loss": _gram_launches,
            "trajectory_attention": _attention_launches, "correspondence": _correspondence_launches,
            "patch_synthesis": _patch_synthesis_launches}


# ---- capture ----
@dataclasses.dataclass
class Launch:
    op: str
    use: str
    kernel: Any  # the JITFunction or Autotuner object
    name: str
    args: tuple
    kwargs: dict


def prepare_environment() -> None:
    """Before the kernels are created: real autotune lists (the interpreter collapses them to one config), a fresh
    compile of every kernel (so ptxas runs and its log exists), the ptxas log printed."""
    loaded = [m for m in (f"fresco_kernels.{op}.triton" for op in OP_MODULES) if m in sys.modules]
    if loaded and os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError(f"aot_check: {loaded} were imported under TRITON_INTERPRET=1; run in a fresh process")
    os.environ["TRITON_INTERPRET"] = "0"
    os.environ["TRITON_ALWAYS_COMPILE"] = "1"
    os.environ["TRITON_DUMP_PTXAS_LOG"] = "1"
    os.environ.setdefault("TRITON_CACHE_DIR", tempfile.mkdtemp(prefix="fresco-aot-"))


def kernels() -> Dict[str, Any]:
    """{name: kernel object} of every launchable kernel (a JITFunction named *_kernel, or an Autotuner)."""
    found = {}
    for op in OP_MODULES:
        mod = importlib.import_module(f"fresco_kernels.{op}.triton")
        for name, obj in vars(mod).items():
            if isinstance(obj, Autotuner) or (isinstance(obj, JITFunction) and name.endswith("_kernel")):
                found[name] = obj
    return found


def capture() -> List[Launch]:
    """Run every launcher of LAUNCHES on meta tensors with each kernel's launch replaced by a recorder."""
    from fresco_kernels.common.triton_utils import accept_meta_tensors
    table = kernels()
    records: List[Launch] = []
    current = {}

    def recorder(name, obj):
        def run(*args, **kwargs):
            # the launch options of fn[grid](...) are not kernel arguments
            kwargs.pop("grid", None)
            kwargs.pop("warmup", None)
            records.append(Launch(current["op"], current["use"], obj, name, args, kwargs))
        return run

    for name, obj in table.items():
        obj.run = recorder(name, obj)
    try:
        with accept_meta_tensors():
            for op, make in LAUNCHES.items():
                for use, call in make():
                    current.update(op=op, use=use)
                    call()
    finally:
        for obj in table.values():
            del obj.run
    missed = sorted(set(table) - {r.name for r in records})
    if missed:
        raise SystemExit(f"aot_check: kernels no launch reached (add them to LAUNCHES): {missed}")
    return records


# ---- compile ----
class _Properties:
    def __init__(self, smem: int):
        self.smem = smem

    def get_device_properties(self, device: int) -> Dict[str, int]:
        return {"max_shared_mem": self.smem, "max_num_regs": 65536, "warpSize": 32}


class OfflineDriver:
    """Stands in for the CUDA driver: reports one target (its arch doubles as the device id, so each target gets
    its own JIT caches) and its shared-memory limit. Compiling needs nothing else; launching is never asked."""

    def __init__(self, capability: int, smem: int):
        self.target = GPUTarget("cuda", capability, 32)
        self.utils = _Properties(smem)

    def get_current_device(self) -> int:
        return self.target.arch

    def get_current_stream(self, device: Optional[int] = None) -> int:
        return 0

    def get_current_target(self) -> GPUTarget:
        return self.target


_PTXAS = {"regs": re.compile(r"Used (\d+) registers"), "stack": re.compile(r"(\d+) bytes stack frame"),
          "spill_stores": re.compile(r"(\d+) bytes spill stores"), "spill_loads": re.compile(r"(\d+) bytes spill loads")}


def parse_ptxas(log: str) -> Dict[str, int]:
    """regs, stack, spill_stores, spill_loads of the (single, fully inlined) entry in a `ptxas -v` log."""
    out = {}
    for key, rx in _PTXAS.items():
        found = rx.findall(log)
        if not found:
            raise ValueError(f"ptxas log without '{rx.pattern}': {log[-500:]!r}")
        out[key] = max(int(v) for v in found)
    return out


@dataclasses.dataclass
class Row:
    kernel: str
    variant: str
    config: str
    target: str
    uses: List[str]
    hot: bool
    status: str = "ok"  # ok | spill | smem | error | pruned
    regs: Optional[int] = None
    spill_stores: Optional[int] = None
    spill_loads: Optional[int] = None
    stack: Optional[int] = None
    smem: Optional[int] = None
    smem_limit: int = 0
    message: str = ""
    spec: str = ""  # benchmarks.kernel_spec.spec_key: matches the kernel a GPU run launches


def _config_str(cfg) -> str:
    if cfg is None:
        return "-"
    keys = " ".join(f"{k}={v}" for k, v in cfg.kwargs.items())
    return f"{keys} w{cfg.num_warps} s{cfg.num_stages}".strip()


def _variant(launch: Launch) -> str:
    """The launch's own constexprs and flags (not pointers/ints), e.g. NEED_GRAD=True BLOCK_P=16."""
    return " ".join(f"{k}={v}" for k, v in launch.kwargs.items() if not isinstance(v, torch.Tensor))


def compile_all(records: List[Launch], targets: List[str], quick: bool) -> List[Row]:
    rows: Dict[Tuple[str, str], Row] = {}
    logs: Dict[str, str] = {}
    seen_kernels = set()
    previous = driver._active  # None unless a real driver was already in use
    for tname in targets:
        cap, smem = TARGETS[tname]
        driver.set_active(OfflineDriver(cap, smem))
        try:
            for rec in records:
                if quick and (tname, rec.name) in seen_kernels:
                    continue
                seen_kernels.add((tname, rec.name))
                auto = isinstance(rec.kernel, Autotuner)
                fn = rec.kernel.fn if auto else rec.kernel
                candidates = list(rec.kernel.configs) if auto else [None]
                kept = candidates
                if auto and rec.kernel.early_config_prune:
                    kept = rec.kernel.early_config_prune(candidates, dict(zip(rec.kernel.arg_names, rec.args)),
                                                         **rec.kwargs)
                if quick:
                    candidates = kept = kept[:1]
                for cfg in candidates:
                    extra = cfg.all_kwargs() if cfg is not None else {}
                    row = Row(rec.name, _variant(rec), _config_str(cfg), tname, [f"{rec.op}: {rec.use}"],
                              rec.name not in COLD, smem_limit=smem)
                    buf = io.StringIO()
                    try:
                        with contextlib.redirect_stdout(buf):
                            k = fn.run(*rec.args, grid=(1,), warmup=True, **rec.kwargs, **extra)
                    except Exception as e:  # noqa: BLE001 - every compile failure is reported, then fails the check
                        row.status, row.message = "error", f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300]}"
                        rows[(tname, f"error:{rec.name}:{row.config}:{rec.use}")] = row
                        continue
                    key = (tname, k.hash)
                    if key in rows:  # the same compiled kernel as an earlier launch (same specialisation)
                        if row.uses[0] not in rows[key].uses:  # (a launcher may launch it many times)
                            rows[key].uses.append(row.uses[0])
                        continue
                    if buf.getvalue().strip():
                        logs[k.hash] = buf.getvalue()
                    stats = parse_ptxas(logs[k.hash])
                    row.regs, row.stack = stats["regs"], stats["stack"]
                    row.spill_stores, row.spill_loads = stats["spill_stores"], stats["spill_loads"]
                    row.smem = int(k.metadata.shared)
                    row.spec = spec_key(k)
                    if cfg is not None and cfg not in kept:
                        row.status = "pruned"
                    elif row.smem > smem:
                        row.status = "smem"
                    elif row.spill_stores or row.spill_loads:
                        row.status = "spill"
                    rows[key] = row
        finally:
            driver._active = previous
    return list(rows.values())


def failures(rows: List[Row]) -> List[str]:
    out = []
    for r in rows:
        what = f"{r.target} {r.kernel} [{r.variant}] {r.config}"
        if r.status == "error":
            out.append(f"compile error: {what}: {r.message}")
        elif r.status == "smem":
            out.append(f"shared memory {r.smem} B over the {r.target} limit {r.smem_limit} B, not pruned: {what}")
        elif r.status == "spill" and r.hot:
            out.append(f"spill ({r.spill_stores} B stores, {r.spill_loads} B loads, {r.regs} regs): {what}")
    return out


def markdown(rows: List[Row], targets: List[str], header: str) -> str:
    """One line per (kernel, variant, config): registers / spill bytes (stores) / shared KiB per target."""
    groups: Dict[Tuple[str, str, str], Dict[str, Row]] = {}
    for r in rows:
        groups.setdefault((r.kernel, r.variant, r.config), {})[r.target] = r
    cols = " | ".join(f"{t} regs | {t} spill B | {t} smem KiB" for t in targets)
    lines = [header, "", f"| kernel | launch constexprs | config | {cols} | status | uses |",
             "|" + "---|" * (5 + 3 * len(targets))]
    for (kernel, variant, config), per in sorted(groups.items()):
        cells = []
        for t in targets:
            r = per.get(t)
            if r is None or r.status == "error":
                cells += ["error" if r else "", "", ""]
            else:
                cells += [str(r.regs), str(r.spill_stores), f"{r.smem / 1024:.1f}"]
        statuses = sorted({f"{t}: {r.status}" for t, r in per.items() if r.status != "ok"})
        uses = sorted({u for r in per.values() for u in r.uses})
        lines.append(f"| `{kernel}` | {variant or '-'} | {config} | " + " | ".join(cells)
                     + f" | {', '.join(statuses) or 'ok'} | {'; '.join(uses)} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="benchmarks/out", help="folder for aot-triton-<version>.json/.md")
    ap.add_argument("--targets", default=None, help="comma-separated capabilities, e.g. 80,90 (default: 80,90; "
                                                  "--quick: 90)")
    ap.add_argument("--quick", action="store_true", help="first launch and first kept config of each kernel")
    ap.add_argument("--only", action="append", default=None, metavar="TEXT",
                    help="only launches whose kernel name or use contains TEXT (repeatable: any of them)")
    a = ap.parse_args(argv)
    try:
        caps = [f"sm_{int(t)}" for t in (a.targets or ("90" if a.quick else "80,90")).split(",")]
    except ValueError:
        ap.error(f"--targets: comma-separated capabilities among {sorted(TARGETS)}, got {a.targets!r}")
    unknown = [t for t in caps if t not in TARGETS]
    if unknown:
        ap.error(f"--targets: capabilities among {[t[3:] for t in TARGETS]}, got {a.targets!r}")
    t0 = time.perf_counter()
    prepare_environment()
    records = capture()
    if a.only:
        records = [r for r in records if any(t in f"{r.name} {r.op}: {r.use}" for t in a.only)]
        if not records:
            ap.error(f"--only: no launch matches {a.only}")
    rows = compile_all(records, caps, a.quick)
    bad = failures(rows)
    elapsed = time.perf_counter() - t0
    version = triton.__version__
    os.makedirs(a.out, exist_ok=True)
    suffix = ("-quick" if a.quick else "") + ("" if a.targets is None else "-" + "-".join(caps)) + \
        ("-subset" if a.only else "")
    stem = os.path.join(a.out, f"aot-triton-{version}{suffix}")
    with open(stem + ".json", "w") as f:
        json.dump({"triton": version, "torch": torch.__version__, "targets": caps, "quick": a.quick,
                   "seconds": round(elapsed, 1), "launches": len(records), "failures": bad,
                   "rows": [dataclasses.asdict(r) for r in rows]}, f, indent=1)
    header = (f"AOT compile, Triton {version}, {', '.join(caps)}: {len(rows)} compiled kernels from {len(records)} "
              f"launches in {elapsed:.0f} s (spill B: ptxas spill stores; smem: metadata.shared)")
    md = markdown(rows, caps, header)
    with open(stem + ".md", "w") as f:
        f.write(md)
    print(md)
    for line in bad:
        print("FAIL", line, file=sys.stderr)
    print(f"aot_check: {len(bad)} failure(s); wrote {stem}.json and .md", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
