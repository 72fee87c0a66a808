// Bilinear sampling coefficients with ATen grid_sampler semantics (bilinear, zeros, align_corners=True),
// shared by the CPU kernels of flow_warp and warp_consistency_loss.
#pragma once
#include <cmath>
#include <cstdint>

namespace fresco {

// The four corners (nw, ne, sw, se) of the sample point of pixel (h, w) displaced by (fx, fy), as flat offsets
// into an H*W plane, with their weights; a corner outside the image has weight 0 and offset 0 (so weight · value
// at offset 0 is 0 only while that value is finite: callers select on `valid` when it may not be). A NaN/inf
// coordinate has no valid corner, `finite` false and NaN weights, as grid_sample's: its output is NaN.
template <typename acc_t>
struct Bilinear {
  int64_t off[4];
  acc_t wt[4];
  // weights along x and y (ax0 + ax1 = 1) and per-corner validity, for the gradient w.r.t. the flow
  acc_t ax0, ax1, ay0, ay1;
  bool valid[4];
  bool finite;
};

template <typename acc_t>
inline Bilinear<acc_t> bilinear_coeffs(int64_t h, int64_t w, acc_t fx, acc_t fy, int64_t H, int64_t W) {
  // Keep the round trip through the normalised grid, as the reference (and grid_sample) compute it.
  const acc_t gx = acc_t(2) * (acc_t(w) + fx) / acc_t(W - 1) - acc_t(1);
  const acc_t gy = acc_t(2) * (acc_t(h) + fy) / acc_t(H - 1) - acc_t(1);
  const acc_t ix = ((gx + acc_t(1)) / acc_t(2)) * acc_t(W - 1);
  const acc_t iy = ((gy + acc_t(1)) / acc_t(2)) * acc_t(H - 1);
  Bilinear<acc_t> b;
  const acc_t ix0f = std::floor(ix), iy0f = std::floor(iy);
  b.ax1 = ix - ix0f;
  b.ax0 = ix0f + acc_t(1) - ix;
  b.ay1 = iy - iy0f;
  b.ay0 = iy0f + acc_t(1) - iy;
  // NaN/inf or huge coordinates: no corner is valid (a huge finite one samples zeros, as grid_sample)
  b.finite = std::isfinite(ix) && std::isfinite(iy);
  const bool in_range = b.finite && std::fabs(ix) < acc_t(1e9) && std::fabs(iy) < acc_t(1e9);
  const int64_t x0 = in_range ? static_cast<int64_t>(ix0f) : -2, y0 = in_range ? static_cast<int64_t>(iy0f) : -2;
  const int64_t xs[4] = {x0, x0 + 1, x0, x0 + 1};
  const int64_t ys[4] = {y0, y0, y0 + 1, y0 + 1};
  const acc_t ws[4] = {b.ax0 * b.ay0, b.ax1 * b.ay0, b.ax0 * b.ay1, b.ax1 * b.ay1};
  for (int k = 0; k < 4; ++k) {
    b.valid[k] = xs[k] >= 0 && xs[k] < W && ys[k] >= 0 && ys[k] < H;
    b.off[k] = b.valid[k] ? ys[k] * W + xs[k] : 0;
    b.wt[k] = b.valid[k] || !b.finite ? ws[k] : acc_t(0);
  }
  return b;
}

}  // namespace fresco
