"""gram_loss Triton kernels: the Gram difference D = x̂x̂ᵀ − r̂r̂ᵀ is recomputed tile by tile (flash-attention style)
from the normalised rows, never stored: only tiles i <= j run (D is symmetric). The loss is reduced per tile; the
fused forward+backward multiplies sign(D) (L1) or D (L2) back into both row tiles with atomics into an fp32
gradient buffer [B, hw, C]. Row normalisation and the gradient's projection through it are two small row kernels.
Launchers are plain functions."""
from __future__ import annotations

from typing import Tuple

import torch
import triton
import triton.language as tl

from ..common.triton_utils import configs, interpreting, prune_by_shared_memory, require_triton

# tl.dot input precision per public `precision`: "bf16" casts the normalised rows to bf16 (fp32 accumulation)
_DOT_PRECISION = {"ieee": "ieee", "tf32": "tf32", "tf32x3": "tf32x3", "bf16": "ieee"}


@triton.jit
def _gram_normalize_kernel(
    x_ptr, xn_ptr, inv_ptr,
    n_rows, n, C,
    sxb, sxn, sxc,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # rows r = b·n + p of feat (any strides) -> xn [B·n, C] contiguous (its dtype: the Gram dot's), inv [B·n] fp32
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    mask_r = rows < n_rows
    b = (rows // n).to(tl.int64)
    p = (rows % n).to(tl.int64)
    base = b * sxb + p * sxn
    sq = tl.zeros([BLOCK_R], dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        m = mask_r[:, None] & (offs_c < C)[None, :]
        # [BLOCK_R, BLOCK_C]
        v = tl.load(x_ptr + base[:, None] + offs_c.to(tl.int64)[None, :] * sxc, mask=m, other=0.0).to(tl.float32)
        sq += tl.sum(v * v, axis=1)
    # 0 for an all-zero row: its normalised row is defined as the zero row; a NaN row stays NaN (not hidden)
    inv = tl.where(sq == 0, 0.0, 1.0 / tl.sqrt(tl.where(sq == 0, 1.0, sq)))
    tl.store(inv_ptr + rows, inv, mask=mask_r)
    out = rows.to(tl.int64) * C
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        m = mask_r[:, None] & (offs_c < C)[None, :]
        v = tl.load(x_ptr + base[:, None] + offs_c.to(tl.int64)[None, :] * sxc, mask=m, other=0.0).to(tl.float32)
        tl.store(xn_ptr + out[:, None] + offs_c[None, :], (v * inv[:, None]).to(xn_ptr.dtype.element_ty), mask=m)


@triton.jit
def _gram_grad_epilogue_kernel(
    x_ptr, inv_ptr, gxn_ptr, grad_ptr,
    n_rows, n, C, factor,
    sxb, sxn, sxc,
    sgb, sgn, sgc,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # grad[r] = factor · (g − x̂ (x̂ · g)) / ‖x‖ with g = gxn[r] (fp32, contiguous), x̂ = x · inv recomputed in fp32
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    mask_r = rows < n_rows
    b = (rows // n).to(tl.int64)
    p = (rows % n).to(tl.int64)
    xbase = b * sxb + p * sxn
    gbase = b * sgb + p * sgn
    # [BLOCK_R]
    inv = tl.load(inv_ptr + rows, mask=mask_r, other=0.0)
    dot = tl.zeros([BLOCK_R], dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        m = mask_r[:, None] & (offs_c < C)[None, :]
        # [BLOCK_R, BLOCK_C]
        xh = tl.load(x_ptr + xbase[:, None] + offs_c.to(tl.int64)[None, :] * sxc, mask=m, other=0.0).to(tl.float32) * inv[:, None]
        g = tl.load(gxn_ptr + rows.to(tl.int64)[:, None] * C + offs_c[None, :], mask=m, other=0.0)
        dot += tl.sum(xh * g, axis=1)
    k = factor * inv
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        m = mask_r[:, None] & (offs_c < C)[None, :]
        xh = tl.load(x_ptr + xbase[:, None] + offs_c.to(tl.int64)[None, :] * sxc, mask=m, other=0.0).to(tl.float32) * inv[:, None]
        g = tl.load(gxn_ptr + rows.to(tl.int64)[:, None] * C + offs_c[None, :], mask=m, other=0.0)
        res = (g - xh * dot[:, None]) * k[:, None]
        tl.store(grad_ptr + gbase[:, None] + offs_c.to(tl.int64)[None, :] * sgc, res.to(grad_ptr.dtype.element_ty), mask=m)


@triton.jit
def _load_rows(ptrs, mask, UPCAST: tl.constexpr):
    """A tile of normalised rows in the dot's dtype; UPCAST (interpreter only, which does bf16 arithmetic on the raw
    16-bit integers) widens bf16 to fp32 at once, so the same bf16-rounded values are multiplied in fp32."""
    v = tl.load(ptrs, mask=mask, other=0.0)
    if UPCAST:
        v = v.to(tl.float32)
    return v


@triton.jit
def _gram_diff_tile(xn_ptr, rn_ptr, offs_i, offs_j, mask_i, mask_j, C,
                    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, DOT_PRECISION: tl.constexpr,
                    UPCAST: tl.constexpr):
    """D[i, j] = x̂_i·x̂_j − r̂_i·r̂_j for one [BLOCK_M, BLOCK_M] tile (fp32 accumulator; pointers at the image)."""
    d = tl.zeros([BLOCK_M, BLOCK_M], dtype=tl.float32)
    oi = offs_i.to(tl.int64) * C
    oj = offs_j.to(tl.int64) * C
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mc = offs_c < C
        mi = mask_i[:, None] & mc[None, :]
        mj = mask_j[:, None] & mc[None, :]
        # [BLOCK_M, BLOCK_C]
        xi = _load_rows(xn_ptr + oi[:, None] + offs_c[None, :], mi, UPCAST)
        xj = _load_rows(xn_ptr + oj[:, None] + offs_c[None, :], mj, UPCAST)
        ri = _load_rows(rn_ptr + oi[:, None] + offs_c[None, :], mi, UPCAST)
        rj = _load_rows(rn_ptr + oj[:, None] + offs_c[None, :], mj, UPCAST)
        d = tl.dot(xi, tl.trans(xj), d, input_precision=DOT_PRECISION)
        d = tl.dot(-ri, tl.trans(rj), d, input_precision=DOT_PRECISION)
    return d


# Tile configs: the union of the spill-free ones of each tile-product precision (make aot-check, sm_90, Triton 3.6
# and 3.8); _prune_tiles keeps a precision's own and those whose shared memory fits the device. The first one suits
# every precision: it is the one the interpreter runs.
_TILE_CONFIGS = [
    triton.Config({"BLOCK_M": 64, "BLOCK_C": 16}, num_warps=8, num_stages=4),
    triton.Config({"BLOCK_M": 64, "BLOCK_C": 32}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 64, "BLOCK_C": 32}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 64, "BLOCK_C": 64}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_C": 32}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 32, "BLOCK_C": 32}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 32, "BLOCK_C": 16}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 32, "BLOCK_C": 16}, num_warps=2, num_stages=3),
]
# (BLOCK_M, BLOCK_C, num_warps, num_stages) per public precision ("bf16" runs the "ieee" dot on bf16 rows)
_PRECISION_TILES = {
    "tf32": {(64, 16, 8, 4), (64, 32, 4, 3), (64, 32, 8, 3), (64, 64, 8, 3)},
    "bf16": {(64, 16, 8, 4), (64, 32, 4, 3), (64, 64, 8, 3), (128, 32, 8, 3)},
    "ieee": {(64, 16, 8, 4), (32, 32, 4, 3)},
    "tf32x3": {(64, 16, 8, 4), (64, 32, 8, 3)},
}
# sm_8x (A100): the sets above less the tiles that spill there (make aot-check, sm_80, Triton 3.6 and 3.8)
_PRECISION_TILES_SM80 = {
    "tf32": {(64, 16, 8, 4), (64, 64, 8, 3)},
    "bf16": {(64, 32, 4, 3), (128, 32, 8, 3)},
    "ieee": {(32, 16, 4, 3)},
    "tf32x3": {(32, 16, 4, 3), (32, 16, 2, 3)},
}


def _tile_sets() -> dict:
    target = triton.runtime.driver.active.get_current_target()
    return _PRECISION_TILES_SM80 if getattr(target, "arch", 90) < 90 else _PRECISION_TILES


def _tile_key(cfg) -> tuple:
    return cfg.kwargs["BLOCK_M"], cfg.kwargs["BLOCK_C"], cfg.num_warps, cfg.num_stages


def _tile_shared_memory(cfg, named_args, **kwargs) -> int:
    """Upper bound of a tile config's shared memory in bytes: num_stages buffers of the four [BLOCK_M, BLOCK_C] row
    tiles, an fp32 [BLOCK_M, BLOCK_M] tile, a quarter more for tf32x3's split operands (checked against the compiled
    kernels by make aot-check)."""
    bm, bc, _, stages = _tile_key(cfg)
    esize = named_args["xn_ptr"].element_size()
    est = stages * 4 * bm * bc * esize + bm * bm * 4
    return est * 5 // 4 if kwargs.get("DOT_PRECISION") == "tf32x3" else est


def _precision_of(named_args, kwargs) -> str:
    return "bf16" if named_args["xn_ptr"].dtype == torch.bfloat16 else kwargs["DOT_PRECISION"]


_prune_by_smem = prune_by_shared_memory(_tile_shared_memory)["early_config_prune"]


def _prune_tiles(candidates, named_args, **kwargs):
    """The precision's spill-free tiles that fit the device's shared memory."""
    allowed = _tile_sets()[_precision_of(named_args, kwargs)]
    own = [c for c in candidates if _tile_key(c) in allowed] or candidates[:1]
    return _prune_by_smem(own, named_args, **kwargs)



@triton.autotune(configs=configs(_TILE_CONFIGS), key=["n", "C", "L1", "DOT_PRECISION", "UPCAST"],
                 reset_to_zero=["part_ptr"], prune_configs_by={"early_config_prune": _prune_tiles})
@triton.jit
def _gram_loss_fwd_kernel(
    xn_ptr, rn_ptr, part_ptr,
    n, C,
    L1: tl.constexpr, DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # part[b, ti, tj] = Σ over tile (ti, tj), ti <= tj, of |D| (L1) or D² (L2), doubled off the diagonal
    ti = tl.program_id(0)
    tj = tl.program_id(1)
    if tj < ti:
        return
    b = tl.program_id(2).to(tl.int64)
    offs_i = ti * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_j = tj * BLOCK_M + tl.arange(0, BLOCK_M)
    img = b * n * C
    d = _gram_diff_tile(xn_ptr + img, rn_ptr + img, offs_i, offs_j, offs_i < n, offs_j < n, C,
                        BLOCK_M, BLOCK_C, DOT_PRECISION, UPCAST)
    if L1:
        s = tl.sum(tl.sum(tl.abs(d), axis=1), axis=0)
    else:
        s = tl.sum(tl.sum(d * d, axis=1), axis=0)
    s = tl.where(ti == tj, s, 2.0 * s)
    nt = tl.num_programs(0)
    tl.store(part_ptr + (b * nt + ti) * nt + tj, s)


@triton.autotune(configs=configs(_TILE_CONFIGS), key=["n", "C", "L1", "DOT_PRECISION", "UPCAST"],
                 reset_to_zero=["part_ptr", "gxn_ptr"], prune_configs_by={"early_config_prune": _prune_tiles})
@triton.jit
def _gram_loss_bwd_kernel(
    xn_ptr, rn_ptr, part_ptr, gxn_ptr,
    n, C,
    L1: tl.constexpr, DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # the forward's tile loss, plus gxn[i] += S_ij x̂_j and gxn[j] += S_ijᵀ x̂_i (i < j) with S = sign(D) or D;
    # gxn: fp32 [B, n, C], zero-filled, receives atomics
    ti = tl.program_id(0)
    tj = tl.program_id(1)
    if tj < ti:
        return
    b = tl.program_id(2).to(tl.int64)
    offs_i = ti * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_j = tj * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_i = offs_i < n
    mask_j = offs_j < n
    img = b * n * C
    d = _gram_diff_tile(xn_ptr + img, rn_ptr + img, offs_i, offs_j, mask_i, mask_j, C,
                        BLOCK_M, BLOCK_C, DOT_PRECISION, UPCAST)
    if L1:
        s = tl.sum(tl.sum(tl.abs(d), axis=1), axis=0)
        # sign(D) in {-1, 0, 1}: exact in any dot dtype
        sd = tl.where(d > 0, 1.0, tl.where(d < 0, -1.0, 0.0))
    else:
        s = tl.sum(tl.sum(d * d, axis=1), axis=0)
        sd = d
    s = tl.where(ti == tj, s, 2.0 * s)
    nt = tl.num_programs(0)
    tl.store(part_ptr + (b * nt + ti) * nt + tj, s)
    # [BLOCK_M, BLOCK_M] in the dot's input dtype
    if not UPCAST:
        sd = sd.to(xn_ptr.dtype.element_ty)
    oi = offs_i.to(tl.int64) * C
    oj = offs_j.to(tl.int64) * C
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        mc = offs_c < C
        mi = mask_i[:, None] & mc[None, :]
        mj = mask_j[:, None] & mc[None, :]
        # [BLOCK_M, BLOCK_C]
        xj = _load_rows(xn_ptr + img + oj[:, None] + offs_c[None, :], mj, UPCAST)
        gi = tl.dot(sd, xj, input_precision=DOT_PRECISION)
        tl.atomic_add(gxn_ptr + img + oi[:, None] + offs_c[None, :], gi, mask=mi)
        if ti != tj:
            xi = _load_rows(xn_ptr + img + oi[:, None] + offs_c[None, :], mi, UPCAST)
            gj = tl.dot(tl.trans(sd), xi, input_precision=DOT_PRECISION)
            tl.atomic_add(gxn_ptr + img + oj[:, None] + offs_c[None, :], gj, mask=mj)


_ROW_BLOCK_R = 32
_ROW_BLOCK_C = 64


def _normalize(feat: torch.Tensor, dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
    """feat [B, n, C] (any strides) -> (x̂ [B, n, C] contiguous in `dtype`, 1/‖x‖ [B, n] fp32, 0 on zero rows)."""
    B, n, C = feat.shape
    xn = torch.empty((B, n, C), device=feat.device, dtype=dtype)
    inv = torch.empty((B, n), device=feat.device, dtype=torch.float32)
    grid = (triton.cdiv(B * n, _ROW_BLOCK_R),)
    _gram_normalize_kernel[grid](feat, xn, inv, B * n, n, C, *feat.stride(), BLOCK_R=_ROW_BLOCK_R, BLOCK_C=_ROW_BLOCK_C)
    return xn, inv


def _check(feat: torch.Tensor, ref: torch.Tensor, reduction: str, precision: str) -> None:
    require_triton(feat, "gram_loss")
    if reduction not in ("l1", "l2"):
        raise ValueError(f"gram_loss: reduction must be 'l1' or 'l2', got {reduction!r}")
    if precision not in _DOT_PRECISION:
        raise ValueError(f"gram_loss: precision must be one of {tuple(_DOT_PRECISION)}, got {precision!r}")
    if feat.dim() != 3 or ref.shape != feat.shape:
        raise ValueError(f"gram_loss: feat and ref must both be [B, hw, C], got {list(feat.shape)} and {list(ref.shape)}")


def _use_closed_form(reduction: str, n: int, C: int, closed_form) -> bool:
    """L2 through C x C products costs n·C² instead of n²·C: the default where C < n."""
    return reduction == "l2" and (C < n if closed_form is None else closed_form)


def _l2_closed_form(xn: torch.Tensor, rn: torch.Tensor, need_grad: bool):
    """(per-image Σ D² in fp64, D x̂ or None) via ‖x̂ᵀx̂‖² − 2‖x̂ᵀr̂‖² + ‖r̂ᵀr̂‖² and x̂(x̂ᵀx̂) − r̂(x̂ᵀr̂)ᵀ."""
    a = torch.bmm(xn.transpose(1, 2), xn)
    m = torch.bmm(xn.transpose(1, 2), rn)
    c = torch.bmm(rn.transpose(1, 2), rn)
    sums = (a.double() ** 2).sum((1, 2)) - 2 * (m.double() ** 2).sum((1, 2)) + (c.double() ** 2).sum((1, 2))
    g = torch.bmm(xn, a) - torch.bmm(rn, m.transpose(1, 2)) if need_grad else None
    return sums, g


def _run(feat, ref, reduction, weight, precision, need_grad, closed_form=None):
    _check(feat, ref, reduction, precision)
    B, n, C = feat.shape
    loss_dtype = torch.float64 if feat.dtype == torch.float64 else torch.float32
    scale = weight / (B * n * n)
    closed = _use_closed_form(reduction, n, C, closed_form)
    dot_dtype = torch.bfloat16 if precision == "bf16" and not closed else torch.float32
    xn, inv = _normalize(feat, dot_dtype)
    rn = ref.to(dot_dtype).contiguous()
    if closed:
        sums, gxn = _l2_closed_form(xn, rn, need_grad)
        total = sums.sum()
    else:
        nt = triton.cdiv(n, 64)
        grid = lambda meta: (triton.cdiv(n, meta["BLOCK_M"]), triton.cdiv(n, meta["BLOCK_M"]), B)
        # partial sums per tile (upper triangle written; the rest stays 0); sized for the smallest tile
        part = torch.zeros((B, nt, nt), device=feat.device, dtype=torch.float32)
        common = dict(L1=reduction == "l1", DOT_PRECISION=_DOT_PRECISION[precision],
                      UPCAST=interpreting() and dot_dtype == torch.bfloat16)
        if need_grad:
            gxn = torch.zeros((B, n, C), device=feat.device, dtype=torch.float32)
            _gram_loss_bwd_kernel[grid](xn, rn, part, gxn, n, C, **common)
        else:
            _gram_loss_fwd_kernel[grid](xn, rn, part, n, C, **common)
        total = part.sum(dtype=torch.float64)
    loss = (total * scale).to(loss_dtype)
    if not need_grad:
        return loss, None
    factor = (2.0 if reduction == "l1" else 4.0) * scale
    grad = torch.empty_like(feat)
    gxn = gxn.float().contiguous()
    _gram_grad_epilogue_kernel[(triton.cdiv(B * n, _ROW_BLOCK_R),)](
        feat, inv, gxn, grad, B * n, n, C, factor, *feat.stride(), *grad.stride(), BLOCK_R=_ROW_BLOCK_R, BLOCK_C=_ROW_BLOCK_C)
    return loss, grad


def gram_loss_fwd(feat: torch.Tensor, ref: torch.Tensor, reduction: str = "l1", weight: float = 100.0,
                  precision: str = "tf32", *, closed_form=None) -> torch.Tensor:
    """Triton forward: feat [B, n, C] (any strides/float dtype), ref [B, n, C] normalised -> 0-d loss (fp32; fp64
    for fp64 feat, computed in fp32). closed_form: L2 via C x C products (None: where C < n)."""
    return _run(feat, ref, reduction, weight, precision, False, closed_form)[0]


def gram_loss_fwd_bwd(feat: torch.Tensor, ref: torch.Tensor, reduction: str = "l1", weight: float = 100.0,
                      precision: str = "tf32", *, closed_form=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Triton forward + backward in one pass over the tiles -> (0-d loss, dL/dfeat like feat)."""
    return _run(feat, ref, reduction, weight, precision, True, closed_form)
