// fresco::trajectory_attention on CPU. One work item = (CFG chunk, trajectory): its N tokens' q/k/v rows (all heads)
// are read once (in place for fp32/fp64, converted to fp32 scratch for fp16/bf16), every head runs an N x N softmax
// over same-segment frames, and each output row is written at the token's own pixel (no gathered copies, no mask).
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>
#include "simd.h"

namespace fresco {
namespace {

template <typename acc_t>
constexpr acc_t kNegInf = -std::numeric_limits<acc_t>::infinity();

void check_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& fwd,
                  const at::Tensor& seg, int64_t heads) {
  TORCH_CHECK(q.dim() == 3, "trajectory_attention: q must be [B, hw, heads*D], got ", q.sizes());
  TORCH_CHECK(k.sizes() == q.sizes() && v.sizes() == q.sizes(), "trajectory_attention: k and v must match q ",
              q.sizes(), ", got ", k.sizes(), " and ", v.sizes());
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(),
              "trajectory_attention: q, k, v must share one dtype");
  TORCH_CHECK(heads >= 1 && q.size(2) % heads == 0, "trajectory_attention: heads (", heads,
              ") must divide q's last dim ", q.size(2));
  TORCH_CHECK(fwd.dim() == 2 && fwd.size(0) >= 1 && fwd.size(1) == q.size(1) && fwd.scalar_type() == at::kLong,
              "trajectory_attention: fwd_mapping must be [N, hw] int64 with hw = ", q.size(1), ", got ", fwd.sizes(),
              " ", fwd.scalar_type());
  TORCH_CHECK(q.size(0) % fwd.size(0) == 0, "trajectory_attention: B (", q.size(0),
              ") must be a multiple of N = fwd_mapping.size(0) = ", fwd.size(0));
  TORCH_CHECK(seg.sizes() == fwd.sizes() && seg.scalar_type() == at::kInt,
              "trajectory_attention: segment must be [N, hw] int32 like fwd_mapping, got ", seg.sizes(), " ",
              seg.scalar_type());
}


// q . k over n channels with 8 independent partial sums (vectorised without reassociating a single sum)
template <typename acc_t>
inline acc_t dot8(const acc_t* __restrict a, const acc_t* __restrict b, int64_t n) {
  acc_t part[8] = {};
  int64_t d = 0;
  for (; d + 8 <= n; d += 8) {
    for (int t = 0; t < 8; ++t) part[t] += a[d + t] * b[d + t];
  }
  acc_t r = acc_t(0);
  for (; d < n; ++d) r += a[d] * b[d];
  for (int t = 0; t < 8; ++t) r += part[t];
  return r;
}

// Whether n values are all finite: x·0 is 0 for a finite x and NaN for NaN/inf; 8 independent partial sums so
// the pass vectorises (one running sum would be a chain of dependent adds).
template <typename acc_t>
inline bool all_finite(const acc_t* __restrict p, int64_t n) {
  acc_t part[8] = {};
  int64_t c = 0;
  for (; c + 8 <= n; c += 8) {
    for (int t = 0; t < 8; ++t) part[t] += p[c + t] * acc_t(0);
  }
  acc_t s = acc_t(0);
  for (; c < n; ++c) s += p[c] * acc_t(0);
  for (int t = 0; t < 8; ++t) s += part[t];
  return s == acc_t(0);
}

// All heads of one trajectory. qr/kr/vr/orow: the N frames' token rows ([heads*D] each, the head's D channels
// contiguous); sg: the N segment ids; s: [N*N] and o: [D] scratch.
// orow[i] = softmax_j(scale * q_i . k_j over sg[j] == sg[i]) V.
// Frames of other segments get the reference's masked-SDPA treatment: a -inf bias added to their score (NaN stays
// NaN) and their value weighted by 0 (0·NaN is NaN). With `full` false they are skipped instead (no dot product, no
// value row), which is the same for finite rows. With `check` set, returns false when a self score q_i·k_i is
// non-finite, which happens exactly when q_i or k_i holds a NaN/inf (the caller checks the output rows for v).
template <typename acc_t>
FRESCO_SIMD_CLONES bool attend_trajectory(const acc_t* const* qr, const acc_t* const* kr, const acc_t* const* vr,
                                          acc_t* const* orow, const int32_t* sg, int64_t N, int64_t heads,
                                          int64_t D, acc_t scale, bool full, bool check, acc_t* __restrict s,
                                          acc_t* __restrict o) {
  bool finite = true;
  for (int64_t h = 0; h < heads; ++h) {
    const int64_t c0 = h * D;
    for (int64_t i = 0; i < N; ++i) {
      acc_t* si = s + i * N;
      // softmax over the frames of i's segment (i itself is always one of them)
      for (int64_t j = 0; j < N; ++j) {
        const bool same = sg[j] == sg[i];
        si[j] = same || full ? scale * dot8(qr[i] + c0, kr[j] + c0, D) + (same ? acc_t(0) : kNegInf<acc_t>)
                             : kNegInf<acc_t>;
      }
      if (check) finite &= std::isfinite(si[i]);
      // a row whose scores are all -inf (an inf key) gets weight 0 everywhere, as in SDPA; a NaN score stays NaN
      acc_t m = kNegInf<acc_t>;
      for (int64_t j = 0; j < N; ++j) {
        if (si[j] > m) m = si[j];
      }
      if (m == kNegInf<acc_t>) m = acc_t(0);
      acc_t l = acc_t(0);
      for (int64_t j = 0; j < N; ++j) {
        si[j] = std::exp(si[j] - m);
        l += si[j];
      }
      const acc_t inv = l == acc_t(0) ? acc_t(0) : acc_t(1) / l;
      for (int64_t d = 0; d < D; ++d) o[d] = acc_t(0);
      for (int64_t j = 0; j < N; ++j) {
        if (!full && sg[j] != sg[i]) continue;
        const acc_t pj = si[j] * inv;
        const acc_t* __restrict vj = vr[j] + c0;
        for (int64_t d = 0; d < D; ++d) o[d] += pj * vj[d];
      }
      acc_t* __restrict oi = orow[i] + c0;
      for (int64_t d = 0; d < D; ++d) oi[d] = o[d];
    }
  }
  return finite;
}

at::Tensor trajectory_attention_cpu(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
                                    const at::Tensor& fwd_in, const at::Tensor& seg_in, double scale_k,
                                    int64_t heads) {
  check_inputs(q_in, k_in, v_in, fwd_in, seg_in, heads);
  const int64_t B = q_in.size(0), HW = q_in.size(1), C = q_in.size(2);
  const int64_t N = fwd_in.size(0), chunks = B / N, D = C / heads;
  auto q = q_in.contiguous();
  auto k = k_in.contiguous();
  auto v = v_in.contiguous();
  auto fwd = fwd_in.contiguous();
  auto seg = seg_in.contiguous();
  auto out = at::empty({B, HW, C}, q.options());
  const int64_t* fp = fwd.data_ptr<int64_t>();
  const int32_t* sp = seg.data_ptr<int32_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "trajectory_attention_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t scale = acc_t(scale_k / std::sqrt(double(D)));
    const scalar_t* qp = q.data_ptr<scalar_t>();
    const scalar_t* kp = k.data_ptr<scalar_t>();
    const scalar_t* vp = v.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    // fp32/fp64 rows are used in place; fp16/bf16 rows are converted into scratch (and outputs converted back)
    constexpr bool kInPlace = std::is_same<scalar_t, acc_t>::value;
    constexpr int64_t kLine = 64 / sizeof(scalar_t);
    // one work item = (CFG chunk, trajectory), all heads: the gathered rows are read once
    at::parallel_for(0, chunks * HW, 16, [&](int64_t i0, int64_t i1) {
      const int64_t scratch = kInPlace ? 0 : N * C;
      std::vector<acc_t> qs(scratch), ks(scratch), vs(scratch), os(scratch), s(N * N), o(D);
      std::vector<const acc_t*> qr(N), kr(N), vr(N);
      std::vector<acc_t*> orow(N);
      std::vector<int32_t> sg(N);
      for (int64_t item = i0; item < i1; ++item) {
        const int64_t chunk = item / HW, p = item % HW;
        for (int64_t f = 0; f < N; ++f) {
          const int64_t px = fp[f * HW + p];
          TORCH_CHECK(px >= 0 && px < HW, "trajectory_attention: fwd_mapping[", f, ", ", p, "] = ", px,
                      " is outside [0, ", HW, ")");
          sg[f] = sp[f * HW + p];
          const int64_t tok = ((chunk * N + f) * HW + px) * C;
          if constexpr (kInPlace) {
            qr[f] = reinterpret_cast<const acc_t*>(qp + tok);
            kr[f] = reinterpret_cast<const acc_t*>(kp + tok);
            vr[f] = reinterpret_cast<const acc_t*>(vp + tok);
            orow[f] = reinterpret_cast<acc_t*>(op + tok);
          } else {
            acc_t* qf = qs.data() + f * C;
            acc_t* kf = ks.data() + f * C;
            acc_t* vf = vs.data() + f * C;
            for (int64_t c = 0; c < C; ++c) qf[c] = acc_t(qp[tok + c]);
            for (int64_t c = 0; c < C; ++c) kf[c] = acc_t(kp[tok + c]);
            for (int64_t c = 0; c < C; ++c) vf[c] = acc_t(vp[tok + c]);
            qr[f] = qf;
            kr[f] = kf;
            vr[f] = vf;
            orow[f] = os.data() + f * C;
          }
        }
        // the rows sit at scattered pixels, beyond the hardware prefetcher's reach: request the next item's rows now
        if (item + 1 < i1) {
          const int64_t chunk1 = (item + 1) / HW, p1 = (item + 1) % HW;
          for (int64_t f = 0; f < N; ++f) {
            const int64_t px = fp[f * HW + p1];
            if (px < 0 || px >= HW) continue;
            const int64_t tok = ((chunk1 * N + f) * HW + px) * C;
            for (int64_t c = 0; c < C; c += kLine) {
              __builtin_prefetch(qp + tok + c);
              __builtin_prefetch(kp + tok + c);
              __builtin_prefetch(vp + tok + c);
            }
          }
        }
        // one segment: no frame is masked. Several: the masked frames are skipped, unless a row turns out to be
        // non-finite (then the trajectory is redone the reference's way)
        bool several = false;
        for (int64_t f = 1; f < N; ++f) several |= sg[f] != sg[0];
        // (an output row is non-finite when, besides, its own v holds a NaN/inf: v_i is weighted by p_ii >= 0)
        bool finite = attend_trajectory<acc_t>(qr.data(), kr.data(), vr.data(), orow.data(), sg.data(), N, heads, D,
                                               scale, false, several, s.data(), o.data());
        for (int64_t f = 0; f < N && several && finite; ++f) finite = all_finite(orow[f], C);
        if (!finite)
          attend_trajectory<acc_t>(qr.data(), kr.data(), vr.data(), orow.data(), sg.data(), N, heads, D, scale, true,
                                   false, s.data(), o.data());
        if constexpr (!kInPlace) {
          for (int64_t f = 0; f < N; ++f) {
            const int64_t px = fp[f * HW + p];
            scalar_t* dst = op + ((chunk * N + f) * HW + px) * C;
            const acc_t* src = os.data() + f * C;
            for (int64_t c = 0; c < C; ++c) dst[c] = scalar_t(src[c]);
          }
        }
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fresco, CPU, m) {
  m.impl("trajectory_attention", &trajectory_attention_cpu);
}

}  // namespace fresco
