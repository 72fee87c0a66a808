// fresco::flow_warp / flow_warp_backward on CPU. Per image: bilinear coefficients computed once per pixel, then
// channel planes processed in parallel (the backward's scatter into grad_x stays inside one plane: no races).
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/Dispatch.h>

#include <vector>

#include "bilinear.h"

namespace fresco {
namespace {

template <typename scalar_t, typename acc_t>
std::vector<Bilinear<acc_t>> coeffs_for_image(const at::Tensor& flow, int64_t b, int64_t H, int64_t W) {
  // flow: [B,2,H,W] contiguous, any float type
  std::vector<Bilinear<acc_t>> co(H * W);
  const scalar_t* fp = flow.data_ptr<scalar_t>() + b * 2 * H * W;
  at::parallel_for(0, H * W, 1024, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      co[p] = bilinear_coeffs<acc_t>(p / W, p % W, acc_t(fp[p]), acc_t(fp[H * W + p]), H, W);
    }
  });
  return co;
}

void check_inputs(const at::Tensor& x, const at::Tensor& flow) {
  TORCH_CHECK(x.dim() == 4, "flow_warp: x must be [B,C,H,W], got ", x.sizes());
  TORCH_CHECK(flow.dim() == 4 && flow.size(0) == x.size(0) && flow.size(1) == 2 && flow.size(2) == x.size(2) &&
                  flow.size(3) == x.size(3),
              "flow_warp: flow must be [B,2,H,W] matching x ", x.sizes(), ", got ", flow.sizes());
  TORCH_CHECK(x.size(2) >= 2 && x.size(3) >= 2, "flow_warp: H and W must be >= 2, got ", x.sizes());
}

at::Tensor flow_warp_cpu(const at::Tensor& x_in, const at::Tensor& flow_in) {
  check_inputs(x_in, flow_in);
  const int64_t B = x_in.size(0), C = x_in.size(1), H = x_in.size(2), W = x_in.size(3);
  auto out = at::empty_like(x_in);
  auto x = x_in.contiguous();
  auto flow = flow_in.to(x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat).contiguous();
  auto res = out.is_contiguous() ? out : at::empty_like(x);
  // work items: (image, chunk of pixels); coefficients once per pixel, then every channel of the chunk
  constexpr int64_t kChunk = 512;
  const int64_t chunks = (H * W + kChunk - 1) / kChunk;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "flow_warp_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t* fbase = flow.data_ptr<acc_t>();
    at::parallel_for(0, B * chunks, 1, [&](int64_t i0, int64_t i1) {
      std::vector<Bilinear<acc_t>> co(kChunk);
      for (int64_t item = i0; item < i1; ++item) {
        const int64_t b = item / chunks, p0 = (item % chunks) * kChunk, p1 = std::min(p0 + kChunk, H * W);
        const acc_t* fp = fbase + b * 2 * H * W;
        for (int64_t p = p0; p < p1; ++p) co[p - p0] = bilinear_coeffs<acc_t>(p / W, p % W, fp[p], fp[H * W + p], H, W);
        for (int64_t c = 0; c < C; ++c) {
          const scalar_t* plane = x.data_ptr<scalar_t>() + (b * C + c) * H * W;
          scalar_t* dst = res.data_ptr<scalar_t>() + (b * C + c) * H * W;
          if (std::isfinite(acc_t(plane[0]))) {
            // outside corners read offset 0 with weight 0 (NaN weights for a NaN/inf sample point): exact
            for (int64_t p = p0; p < p1; ++p) {
              const auto& k = co[p - p0];
              acc_t v = acc_t(0);
              for (int j = 0; j < 4; ++j) v += k.wt[j] * acc_t(plane[k.off[j]]);
              dst[p] = scalar_t(v);
            }
          } else {
            // pixel (0, 0) is NaN/inf: select, do not multiply, so it cannot leak into outside corners
            for (int64_t p = p0; p < p1; ++p) {
              const auto& k = co[p - p0];
              acc_t v = acc_t(0);
              for (int j = 0; j < 4; ++j) v += k.wt[j] * (k.valid[j] ? acc_t(plane[k.off[j]]) : acc_t(0));
              dst[p] = scalar_t(v);
            }
          }
        }
      }
    });
  });
  if (!res.is_same(out)) out.copy_(res);
  return out;
}

std::tuple<at::Tensor, at::Tensor> flow_warp_backward_cpu(const at::Tensor& grad_out_in, const at::Tensor& x_in,
                                                         const at::Tensor& flow_in, bool need_x, bool need_flow) {
  check_inputs(x_in, flow_in);
  const int64_t B = x_in.size(0), C = x_in.size(1), H = x_in.size(2), W = x_in.size(3);
  const bool dbl = x_in.scalar_type() == at::kDouble;
  const auto acc_type = dbl ? at::kDouble : at::kFloat;
  auto x = x_in.contiguous();
  auto g = grad_out_in.contiguous();
  auto flow = flow_in.to(acc_type).contiguous();
  auto gx = need_x ? at::zeros({B, C, H, W}, x.options().dtype(acc_type)) : at::Tensor();
  auto gf = need_flow ? at::empty({B, 2, H, W}, x.options().dtype(acc_type)) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "flow_warp_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    std::vector<std::vector<Bilinear<acc_t>>> coeffs(B);
    for (int64_t b = 0; b < B; ++b) coeffs[b] = coeffs_for_image<acc_t, acc_t>(flow, b, H, W);
    if (need_x) {
      // one (image, channel) plane per task: the scatter stays inside the plane, so no races
      acc_t* gxp = gx.data_ptr<acc_t>();
      const scalar_t* gall = g.data_ptr<scalar_t>();
      at::parallel_for(0, B * C, 1, [&](int64_t q0, int64_t q1) {
        for (int64_t q = q0; q < q1; ++q) {
          const auto& co = coeffs[q / C];
          const scalar_t* gplane = gall + q * H * W;
          acc_t* dst = gxp + q * H * W;
          for (int64_t p = 0; p < H * W; ++p) {
            const acc_t gv = acc_t(gplane[p]);
            const auto& k = co[p];
            for (int j = 0; j < 4; ++j)
              if (k.valid[j]) dst[k.off[j]] += k.wt[j] * gv;
          }
        }
      });
    }
    for (int64_t b = 0; b < B && need_flow; ++b) {
      const auto& co = coeffs[b];
      const scalar_t* xp = x.data_ptr<scalar_t>() + b * C * H * W;
      const scalar_t* gp = g.data_ptr<scalar_t>() + b * C * H * W;
      {
        acc_t* gfp = gf.data_ptr<acc_t>() + b * 2 * H * W;
        at::parallel_for(0, H * W, 256, [&](int64_t p0, int64_t p1) {
          for (int64_t p = p0; p < p1; ++p) {
            const auto& k = co[p];
            acc_t gix = 0, giy = 0;
            for (int64_t c = 0; c < C; ++c) {
              const scalar_t* plane = xp + c * H * W;
              const acc_t v0 = k.valid[0] ? acc_t(plane[k.off[0]]) : acc_t(0);
              const acc_t v1 = k.valid[1] ? acc_t(plane[k.off[1]]) : acc_t(0);
              const acc_t v2 = k.valid[2] ? acc_t(plane[k.off[2]]) : acc_t(0);
              const acc_t v3 = k.valid[3] ? acc_t(plane[k.off[3]]) : acc_t(0);
              const acc_t gv = acc_t(gp[c * H * W + p]);
              gix += gv * ((v1 - v0) * k.ay0 + (v3 - v2) * k.ay1);
              giy += gv * ((v2 - v0) * k.ax0 + (v3 - v1) * k.ax1);
            }
            gfp[p] = gix;
            gfp[H * W + p] = giy;
          }
        });
      }
    }
  });
  at::Tensor grad_x = need_x ? at::empty_like(x_in).copy_(gx) : at::empty({0}, x_in.options());
  at::Tensor grad_flow = need_flow ? at::empty_like(flow_in).copy_(gf) : at::empty({0}, flow_in.options());
  return {grad_x, grad_flow};
}

}  // namespace

TORCH_LIBRARY_IMPL(fresco, CPU, m) {
  m.impl("flow_warp", &flow_warp_cpu);
  m.impl("flow_warp_backward", &flow_warp_backward_cpu);
}

}  // namespace fresco
