// fresco::warp_consistency_loss(_fwd_bwd) on CPU. Features are read channels-last; bilinear coefficients are computed
// once per (pair, direction, pixel). One task per (CFG chunk, block of 64 channels) sweeps every pair: both warp terms,
// |·| into per-lane partial sums, and the gradient scattered into that channel block of the chunk's frames, which no
// other task touches (no races, deterministic). Every inner loop runs over contiguous channels, so it vectorises.
// Warped copies are never stored.
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/Dispatch.h>

#include <vector>

#include "bilinear.h"
#include "simd.h"

namespace fresco {
namespace {

constexpr int64_t kCB = 64;

// A corner that falls outside the image has weight 0 and points at pixel 0 (always readable).
template <typename acc_t>
struct Coef {
  int64_t off[4];
  acc_t wt[4];
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
        co[q].off[j] = b.off[j];
        co[q].wt[j] = b.wt[j];
      }
    }
  });
  return co;
}

// One warp term over a channel block: d = (tgt − Σ_j w_j src_j)·m; lane sums of |d| and, if wanted, the gradient
// s = sign(d)·m·scale added to tgt's row and −w_j·s to the source corners' rows.
template <typename acc_t>
inline void warp_term(const acc_t* tgt, const acc_t* src, const Coef<acc_t>& k, acc_t m, int64_t C, int64_t nc,
                      acc_t scale, acc_t* lanes, acc_t* g_tgt, acc_t* g_src, acc_t* tmp) {
  const acc_t* s0 = src + k.off[0] * C;
  const acc_t* s1 = src + k.off[1] * C;
  const acc_t* s2 = src + k.off[2] * C;
  const acc_t* s3 = src + k.off[3] * C;
  const acc_t w0 = k.wt[0], w1 = k.wt[1], w2 = k.wt[2], w3 = k.wt[3];
  for (int64_t c = 0; c < nc; ++c) {
    const acc_t d = (tgt[c] - (w0 * s0[c] + w1 * s1[c] + w2 * s2[c] + w3 * s3[c])) * m;
    lanes[c] += std::abs(d);
    tmp[c] = (acc_t(d > 0) - acc_t(d < 0)) * m * scale;
  }
  if (g_tgt == nullptr) return;
  for (int64_t c = 0; c < nc; ++c) g_tgt[c] += tmp[c];
  for (int j = 0; j < 4; ++j) {
    if (k.wt[j] == acc_t(0)) continue;
    acc_t* g = g_src + k.off[j] * C;
    const acc_t w = k.wt[j];
    for (int64_t c = 0; c < nc; ++c) g[c] -= w * tmp[c];
  }
}

// One task: CFG chunk k, channels [c0, c0 + nc), every frame pair. xs/gs: the task's channels-last slabs
// [N, HW, ld] (ld = min(kCB, C)) of features and gradient (gs zeroed, or null for loss only); returns the task's
// sum of |·|.
template <typename acc_t>
FRESCO_SIMD_CLONES double chunk_block(const acc_t* xs, acc_t* gs, const Coef<acc_t>* cb, const Coef<acc_t>* cf,
                                      const acc_t* bop, const acc_t* fop, int64_t nc, int64_t ld, int64_t N,
                                      int64_t HW, acc_t scale) {
  acc_t lanes[kCB] = {}, tmp[kCB];
  for (int64_t i = 0; i < N; ++i) {
    // frame a = c1 (frame i) and frame b = c2 (frame i+1, wrapping)
    const int64_t a = i, b = (i + 1) % N;
    const acc_t* xa = xs + a * HW * ld;
    const acc_t* xb = xs + b * HW * ld;
    acc_t* ga = gs ? gs + a * HW * ld : nullptr;
    acc_t* gb = gs ? gs + b * HW * ld : nullptr;
    for (int64_t p = 0; p < HW; ++p) {
      const int64_t q = i * HW + p;
      // |(c2 − warp(c1, bwd))·(1 − bwd_occ)| on frame b's grid
      const acc_t mb = acc_t(1) - bop[q];
      if (mb != acc_t(0)) warp_term(xb + p * ld, xa, cb[q], mb, ld, nc, scale, lanes, gb ? gb + p * ld : nullptr, ga, tmp);
      // |(c1 − warp(c2, fwd))·(1 − fwd_occ)| on frame a's grid
      const acc_t mf = acc_t(1) - fop[q];
      if (mf != acc_t(0)) warp_term(xa + p * ld, xb, cf[q], mf, ld, nc, scale, lanes, ga ? ga + p * ld : nullptr, gb, tmp);
    }
  }
  double total = 0;
  for (int64_t c = 0; c < nc; ++c) total += double(lanes[c]);
  return total;
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
  const int64_t HW = H * W, nblk = (C + kCB - 1) / kCB, ld = std::min(kCB, C);
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
    at::parallel_for(0, chunks * nblk, 1, [&](int64_t t0, int64_t t1) {
      std::vector<acc_t> xs(N * HW * ld), gs(need_grad ? N * HW * ld : 0);
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t k = t / nblk, c0 = (t % nblk) * kCB, nc = std::min(kCB, C - c0);
        // stage the task's channels-last slab (unused lanes stay 0 and are never read back)
        for (int64_t f = 0; f < N; ++f) {
          const scalar_t* src = xp + (k * N + f) * fs.sb + c0 * fs.sc;
          acc_t* dst = xs.data() + f * HW * ld;
          // the unit-stride axis of the source innermost (pixels for NCHW, channels for channels-last)
          if (fs.sp == 1) {
            for (int64_t c = 0; c < nc; ++c)
              for (int64_t p = 0; p < HW; ++p) dst[p * ld + c] = acc_t(src[c * fs.sc + p]);
          } else {
            for (int64_t p = 0; p < HW; ++p)
              for (int64_t c = 0; c < nc; ++c) dst[p * ld + c] = acc_t(src[c * fs.sc + p * fs.sp]);
          }
        }
        if (need_grad) std::fill(gs.begin(), gs.end(), acc_t(0));
        part[t] = chunk_block(xs.data(), need_grad ? gs.data() : nullptr, cb.data(), cf.data(), bop, fop, nc, ld, N, HW,
                              acc_t(scale));
        if (!need_grad) continue;
        for (int64_t f = 0; f < N; ++f) {
          const acc_t* src = gs.data() + f * HW * ld;
          scalar_t* dst = gp + (k * N + f) * gst.sb + c0 * gst.sc;
          if (gst.sp == 1) {
            for (int64_t c = 0; c < nc; ++c)
              for (int64_t p = 0; p < HW; ++p) dst[c * gst.sc + p] = scalar_t(src[p * ld + c]);
          } else {
            for (int64_t p = 0; p < HW; ++p)
              for (int64_t c = 0; c < nc; ++c) dst[c * gst.sc + p * gst.sp] = scalar_t(src[p * ld + c]);
          }
        }
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
