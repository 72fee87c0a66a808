// fresco::warp_consistency_loss(_fwd_bwd) on CPU. Features are read channels-last; bilinear coefficients are computed
// once per (pair, direction, pixel). One task per (CFG chunk, block of 64 channels) sweeps every pair: both warp terms,
// |·| into per-lane partial sums, and the gradient scattered into that channel block of the chunk's frames, which no
// other task touches (no races, deterministic). Every inner loop runs over contiguous channels, so it vectorises.
// A task holds three frames of its block at a time (staged just before their first pair, gradients written out right
// after their last), so features and gradient cross main memory once each. Warped copies are never stored.
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/Dispatch.h>

#include <algorithm>
#include <limits>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif
#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "bilinear.h"
#include "simd.h"

namespace fresco {
namespace {

// Channels per task (fastest of 16/32/64 measured at C = 640).
constexpr int64_t kCB = 64;
// Slabs hold HW pixel rows per frame plus kPad rows: a corner outside the image has weight 0 and points at its own
// pad row (HW + corner), so the four corners of a sample are always distinct rows and a term is one branch-free loop
// (pad rows of the features stay 0; what pad rows of the gradient receive is never read).
constexpr int64_t kPad = 4;

template <typename acc_t>
struct Coef {
  int64_t off[4];
  acc_t wt[4];
  // false for a NaN/inf sample point: the reference's warped value is NaN there, so the loss is NaN and the term
  // adds no gradient (sign(NaN) = 0; grid_sample scatters nothing)
  bool finite;
};

template <typename acc_t>
std::vector<Coef<acc_t>> pair_coeffs(const at::Tensor& flow, int64_t N, int64_t H, int64_t W) {
  // flow: [N, 2, H, W] contiguous acc_t -> N*H*W coefficient sets
  std::vector<Coef<acc_t>> co(N * H * W);
  const acc_t* fp = flow.data_ptr<acc_t>();
  at::parallel_for(0, N * H * W, 2048, [&](int64_t q0, int64_t q1) {
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t i = q / (H * W), p = q % (H * W);
      const acc_t* f = fp + i * 2 * H * W;
      const auto b = bilinear_coeffs<acc_t>(p / W, p % W, f[p], f[H * W + p], H, W);
      for (int j = 0; j < 4; ++j) {
        co[q].off[j] = b.valid[j] ? b.off[j] : H * W + j;
        co[q].wt[j] = b.wt[j];
      }
      co[q].finite = b.finite;
    }
  });
  return co;
}

// One warp term over a channel block: d = (tgt − Σ_j w_j src_j)·m; lane sums of |d| and, with GRAD, the gradient
// s = sign(d)·m·scale added to tgt's row and −w_j·s to the source corners' rows (distinct rows, see kPad). NC > 0:
// the block width known at compile time.
// Always inlined: left out of line, GCC may have the AVX2 clone of pair_block call the default-ISA copy (measured
// 10x slower).
template <int64_t NC, bool GRAD, typename acc_t>
__attribute__((always_inline)) inline void warp_term(const acc_t* __restrict__ tgt, const acc_t* __restrict__ src,
                                                     const Coef<acc_t>& k, acc_t m, int64_t ld, int64_t nc_rt,
                                                     acc_t scale, acc_t* __restrict__ lanes,
                                                     acc_t* __restrict__ g_tgt, acc_t* __restrict__ g_src) {
  const int64_t nc = NC > 0 ? NC : nc_rt;
  const acc_t* __restrict__ s0 = src + k.off[0] * ld;
  const acc_t* __restrict__ s1 = src + k.off[1] * ld;
  const acc_t* __restrict__ s2 = src + k.off[2] * ld;
  const acc_t* __restrict__ s3 = src + k.off[3] * ld;
  acc_t* __restrict__ g0 = GRAD ? g_src + k.off[0] * ld : nullptr;
  acc_t* __restrict__ g1 = GRAD ? g_src + k.off[1] * ld : nullptr;
  acc_t* __restrict__ g2 = GRAD ? g_src + k.off[2] * ld : nullptr;
  acc_t* __restrict__ g3 = GRAD ? g_src + k.off[3] * ld : nullptr;
  const acc_t w0 = k.wt[0], w1 = k.wt[1], w2 = k.wt[2], w3 = k.wt[3], ms = m * scale;
  for (int64_t c = 0; c < nc; ++c) {
    const acc_t d = (tgt[c] - (w0 * s0[c] + w1 * s1[c] + w2 * s2[c] + w3 * s3[c])) * m;
    lanes[c] += std::abs(d);
    if (GRAD) {
      const acc_t t = (acc_t(d > 0) - acc_t(d < 0)) * ms;
      g_tgt[c] += t;
      g0[c] -= w0 * t;
      g1[c] -= w1 * t;
      g2[c] -= w2 * t;
      g3[c] -= w3 * t;
    }
  }
}

// A fully occluded pixel (weight 1 − occ = 0): the reference still adds |(tgt − warped)·0|, NaN for a non-finite
// tgt. Adding tgt·0 keeps that (0 for finite values, no gradient); a non-finite source value shows up as some
// other term's tgt, so the loss is non-finite exactly when the reference's is.
template <int64_t NC, typename acc_t>
__attribute__((always_inline)) inline void masked_term(const acc_t* __restrict__ tgt, int64_t nc_rt,
                                                       acc_t* __restrict__ lanes) {
  const int64_t nc = NC > 0 ? NC : nc_rt;
  for (int64_t c = 0; c < nc; ++c) lanes[c] += tgt[c] * acc_t(0);
}

template <int64_t NC, bool GRAD, typename acc_t>
__attribute__((always_inline)) inline void pair_block_impl(const acc_t* xa, const acc_t* xb, acc_t* ga, acc_t* gb,
                                                           const Coef<acc_t>* cb, const Coef<acc_t>* cf,
                                                           const acc_t* bop, const acc_t* fop, int64_t nc, int64_t ld,
                                                           int64_t HW, acc_t scale, acc_t* lanes) {
  for (int64_t p = 0; p < HW; ++p) {
    // |(c2 − warp(c1, bwd))·(1 − bwd_occ)| on frame b's grid
    const acc_t mb = acc_t(1) - bop[p];
    if (!cb[p].finite)
      lanes[0] += std::numeric_limits<acc_t>::quiet_NaN();
    else if (mb != acc_t(0))
      warp_term<NC, GRAD>(xb + p * ld, xa, cb[p], mb, ld, nc, scale, lanes, GRAD ? gb + p * ld : nullptr, ga);
    else
      masked_term<NC>(xb + p * ld, nc, lanes);
    // |(c1 − warp(c2, fwd))·(1 − fwd_occ)| on frame a's grid
    const acc_t mf = acc_t(1) - fop[p];
    if (!cf[p].finite)
      lanes[0] += std::numeric_limits<acc_t>::quiet_NaN();
    else if (mf != acc_t(0))
      warp_term<NC, GRAD>(xa + p * ld, xb, cf[p], mf, ld, nc, scale, lanes, GRAD ? ga + p * ld : nullptr, gb);
    else
      masked_term<NC>(xa + p * ld, nc, lanes);
  }
}

// One frame pair (a = frame i, b = frame i+1 of the chunk) over a channel block: both warp terms, |·| into the
// per-channel lanes and, when ga/gb are given, the gradient scattered into the two frames' gradient slabs
// ([HW + kPad, ld] channels-last each).
template <typename acc_t>
FRESCO_SIMD_CLONES void pair_block(const acc_t* xa, const acc_t* xb, acc_t* ga, acc_t* gb, const Coef<acc_t>* cb,
                                   const Coef<acc_t>* cf, const acc_t* bop, const acc_t* fop, int64_t nc, int64_t ld,
                                   int64_t HW, acc_t scale, acc_t* lanes) {
  if (nc == kCB) {
    if (ga) pair_block_impl<kCB, true>(xa, xb, ga, gb, cb, cf, bop, fop, nc, ld, HW, scale, lanes);
    else pair_block_impl<kCB, false>(xa, xb, ga, gb, cb, cf, bop, fop, nc, ld, HW, scale, lanes);
  } else {
    if (ga) pair_block_impl<0, true>(xa, xb, ga, gb, cb, cf, bop, fop, nc, ld, HW, scale, lanes);
    else pair_block_impl<0, false>(xa, xb, ga, gb, cb, cf, bop, fop, nc, ld, HW, scale, lanes);
  }
}

// Transposes between a caller's plane-major block (channel c of pixel p at c*sc + p) and a channels-last slab
// (p*ld + c). fp32 on AVX2 CPUs: 8x8 register transposes (checked at run time); the rest in column tiles of kTP,
// so that both sides of a tile stay in L1 (a whole-plane sweep per channel streams the slab through L2 once per
// channel).
constexpr int64_t kTP = 16;

#if defined(__x86_64__) && defined(__GNUC__)
#define FRESCO_AVX2_TRANSPOSE 1
// dst[j*ds + i] = src[i*ss + j] for i, j < 8
__attribute__((target("avx2"))) inline void transpose8x8(const float* src, int64_t ss, float* dst, int64_t ds) {
  __m256 r[8], t[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * ss);
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    r[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  // rows 0..3 now hold (in 128-bit halves) columns 0, 1, 2, 3 | 4, 5, 6, 7 of source rows 0-3; rows 4..7 of rows 4-7
  for (int i = 0; i < 4; ++i) {
    _mm256_storeu_ps(dst + i * ds, _mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
    _mm256_storeu_ps(dst + (i + 4) * ds, _mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
  }
}

// The 8x8 tiles of a transpose whose rows and cols are multiples of 8.
__attribute__((target("avx2"))) void transpose_avx2(const float* src, int64_t ss, float* dst, int64_t ds, int64_t rows,
                                                    int64_t cols) {
  for (int64_t j0 = 0; j0 < cols; j0 += 8)
    for (int64_t i0 = 0; i0 < rows; i0 += 8) transpose8x8(src + i0 * ss + j0, ss, dst + j0 * ds + i0, ds);
}
#endif

// dst[j*ds + i] = src[i*ss + j] for i < rows, j < cols
template <typename in_t, typename out_t>
void transpose(const in_t* src, int64_t ss, out_t* dst, int64_t ds, int64_t rows, int64_t cols) {
  int64_t r8 = 0, c8 = 0;
#ifdef FRESCO_AVX2_TRANSPOSE
  if constexpr (std::is_same_v<in_t, float> && std::is_same_v<out_t, float>) {
    static const bool avx2 = __builtin_cpu_supports("avx2");
    if (avx2) {
      r8 = rows / 8 * 8;
      c8 = cols / 8 * 8;
      transpose_avx2(src, ss, dst, ds, r8, c8);
    }
  }
#endif
  // what the 8x8 tiles left: the last rows % 8 rows over every column, the last cols % 8 columns over the rest
  for (int64_t j0 = 0; j0 < cols; j0 += kTP) {
    const int64_t j1 = std::min(cols, j0 + kTP);
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t j = std::max(j0, i < r8 ? c8 : int64_t(0)); j < j1; ++j) dst[j * ds + i] = out_t(src[i * ss + j]);
  }
}

// Ask Linux to back a large fresh buffer with transparent huge pages (a hint; where THP is "madvise", as here, it
// is off otherwise): the gradient is a fresh feature-sized allocation written once, and faulting it in 4 KiB pages
// cost as much as the loss itself (measured ~55 of ~135 ms single-threaded at [16,640,64,64]). Only the page-aligned
// interior of the buffer is advised, so no memory outside it changes.
void advise_huge_pages(const at::Tensor& t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kPage = 4096, kMin = uintptr_t(8) << 20;
  if (t.nbytes() < kMin) return;
  const uintptr_t b0 = reinterpret_cast<uintptr_t>(t.data_ptr()), b1 = b0 + t.nbytes();
  const uintptr_t a0 = (b0 + kPage - 1) & ~(kPage - 1), a1 = b1 & ~(kPage - 1);
  madvise(reinterpret_cast<void*>(a0), a1 - a0, MADV_HUGEPAGE);
#endif
}

// A dense [B, C, H, W] tensor, NCHW or channels-last: element (b, c, p) sits at b*sb + c*sc + p*sp.
struct Dense {
  int64_t sb, sc, sp;
};

Dense dense_strides(const at::Tensor& t) {
  return {t.stride(0), t.stride(1), t.stride(3)};
}

bool is_dense(const at::Tensor& t) {
  return t.is_contiguous() || t.is_contiguous(at::MemoryFormat::ChannelsLast);
}

std::tuple<at::Tensor, at::Tensor> run(const at::Tensor& feat_in, const at::Tensor& fwd_flow, const at::Tensor& bwd_flow,
                                       const at::Tensor& fwd_occ, const at::Tensor& bwd_occ, int64_t chunks, bool need_grad) {
  TORCH_CHECK(feat_in.dim() == 4, "warp_consistency_loss: feat must be [B,C,h,w], got ", feat_in.sizes());
  TORCH_CHECK(chunks >= 1 && feat_in.size(0) % chunks == 0, "warp_consistency_loss: feat batch ", feat_in.size(0),
              " is not a multiple of cfg_chunks ", chunks);
  const int64_t B = feat_in.size(0), C = feat_in.size(1), H = feat_in.size(2), W = feat_in.size(3), N = B / chunks;
  TORCH_CHECK(N >= 2 && H >= 2 && W >= 2, "warp_consistency_loss: need N >= 2, h, w >= 2, got ", feat_in.sizes());
  for (const auto* t : {&fwd_flow, &bwd_flow})
    TORCH_CHECK(t->dim() == 4 && t->size(0) == N && t->size(1) == 2 && t->size(2) == H && t->size(3) == W,
                "warp_consistency_loss: flows must be [N,2,h,w] = [", N, ",2,", H, ",", W, "], got ", t->sizes());
  for (const auto* t : {&fwd_occ, &bwd_occ})
    TORCH_CHECK(t->dim() == 4 && t->size(0) == N && t->size(1) == 1 && t->size(2) == H && t->size(3) == W,
                "warp_consistency_loss: occlusions must be [N,1,h,w] = [", N, ",1,", H, ",", W, "], got ", t->sizes());
  const auto acc_type = feat_in.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  // read in the caller's layout when it is dense (NCHW or channels-last): no whole-tensor copy
  const auto feat = is_dense(feat_in) ? feat_in : feat_in.contiguous();
  auto ff = fwd_flow.to(acc_type).contiguous(), bf = bwd_flow.to(acc_type).contiguous();
  auto fo = fwd_occ.to(acc_type).contiguous(), bo = bwd_occ.to(acc_type).contiguous();
  auto out = need_grad ? at::empty_like(feat_in) : at::empty({0}, feat_in.options());
  auto g = need_grad && !is_dense(out) ? at::empty_like(feat) : out;
  if (need_grad) advise_huge_pages(g);
  const int64_t HW = H * W, nblk = (C + kCB - 1) / kCB, ld = std::min(kCB, C), FS = (HW + kPad) * ld;
  auto partial = at::zeros({chunks * nblk}, feat_in.options().dtype(at::kDouble));
  const double scale = 2.0 / double(B * C * HW);
  const Dense fs = dense_strides(feat), gst = need_grad ? dense_strides(g) : Dense{0, 0, 0};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, feat.scalar_type(), "warp_consistency_loss_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto cb = pair_coeffs<acc_t>(bf, N, H, W);
    const auto cf = pair_coeffs<acc_t>(ff, N, H, W);
    const acc_t* bop = bo.data_ptr<acc_t>();
    const acc_t* fop = fo.data_ptr<acc_t>();
    const scalar_t* xp = feat.data_ptr<scalar_t>();
    scalar_t* gp = need_grad ? g.data_ptr<scalar_t>() : nullptr;
    double* part = partial.data_ptr<double>();
    // Frame f's gradient is complete once pairs f-1 and f have run (frame 0's after the wrap pair N-1), so a task
    // keeps only three frames staged: frame 0 in slot 0, frames 1.. alternating in slots 1 and 2. Each frame is read
    // into its slot just before its first pair and its gradient written out right after its last, while both are
    // still in cache.
    auto slot = [](int64_t f) { return f == 0 ? int64_t(0) : 1 + (f & 1); };
    at::parallel_for(0, chunks * nblk, 1, [&](int64_t t0, int64_t t1) {
      std::vector<acc_t> xs(3 * FS), gs(need_grad ? 3 * FS : 0);
      acc_t lanes[kCB];
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t k = t / nblk, c0 = (t % nblk) * kCB, nc = std::min(kCB, C - c0);
        // channels-last slab of frame f of this task (unused lanes stay 0 and are never read back)
        auto stage = [&](int64_t f) {
          const scalar_t* src = xp + (k * N + f) * fs.sb + c0 * fs.sc;
          acc_t* dst = xs.data() + slot(f) * FS;
          // the unit-stride axis of the source innermost (pixels for NCHW, channels for channels-last)
          if (fs.sp == 1) {
            transpose(src, fs.sc, dst, ld, nc, HW);
          } else {
            for (int64_t p = 0; p < HW; ++p)
              for (int64_t c = 0; c < nc; ++c) dst[p * ld + c] = acc_t(src[c * fs.sc + p * fs.sp]);
          }
          if (need_grad) std::fill_n(gs.data() + slot(f) * FS, FS, acc_t(0));
        };
        auto write_out = [&](int64_t f) {
          const acc_t* src = gs.data() + slot(f) * FS;
          scalar_t* dst = gp + (k * N + f) * gst.sb + c0 * gst.sc;
          if (gst.sp == 1) {
            transpose(src, ld, dst, gst.sc, HW, nc);
          } else {
            for (int64_t p = 0; p < HW; ++p)
              for (int64_t c = 0; c < nc; ++c) dst[c * gst.sc + p * gst.sp] = scalar_t(src[p * ld + c]);
          }
        };
        std::fill_n(lanes, kCB, acc_t(0));
        stage(0);
        for (int64_t i = 0; i < N; ++i) {
          const int64_t a = i, b = (i + 1) % N;
          if (b != 0) stage(b);
          pair_block(xs.data() + slot(a) * FS, xs.data() + slot(b) * FS,
                     need_grad ? gs.data() + slot(a) * FS : nullptr,
                     need_grad ? gs.data() + slot(b) * FS : nullptr, cb.data() + i * HW, cf.data() + i * HW,
                     bop + i * HW, fop + i * HW, nc, ld, HW, acc_t(scale), lanes);
          if (need_grad && a != 0) write_out(a);
        }
        if (need_grad) write_out(0);
        double total = 0;
        for (int64_t c = 0; c < nc; ++c) total += double(lanes[c]);
        part[t] = total;
      }
    });
  });
  auto loss = (partial.sum() * scale).to(acc_type);
  if (need_grad && !g.is_same(out)) out.copy_(g);
  return {loss, out};
}

at::Tensor loss_cpu(const at::Tensor& feat, const at::Tensor& fwd_flow, const at::Tensor& bwd_flow,
                    const at::Tensor& fwd_occ, const at::Tensor& bwd_occ, int64_t chunks) {
  return std::get<0>(run(feat, fwd_flow, bwd_flow, fwd_occ, bwd_occ, chunks, false));
}

std::tuple<at::Tensor, at::Tensor> fwd_bwd_cpu(const at::Tensor& feat, const at::Tensor& fwd_flow,
                                               const at::Tensor& bwd_flow, const at::Tensor& fwd_occ,
                                               const at::Tensor& bwd_occ, int64_t chunks) {
  return run(feat, fwd_flow, bwd_flow, fwd_occ, bwd_occ, chunks, true);
}

}  // namespace

TORCH_LIBRARY_IMPL(fresco, CPU, m) {
  m.impl("warp_consistency_loss", &loss_cpu);
  m.impl("warp_consistency_loss_fwd_bwd", &fwd_bwd_cpu);
}

}  // namespace fresco
