// fresco::patch_synthesis on CPU: the multi-scale guided PatchMatch of fresco_kernels/patch_synthesis/README.md.
// Integer distances and Jacobi passes (every pixel reads the field as it was when the pass began), so the field is
// the reference's bit for bit; rows of the target are the parallel work items. Channels are interleaved per pixel
// (source [Hs][Ws][K], target padded by the patch radius with edge replication so no patch access is clamped), and a
// candidate's distance stops as soon as it reaches the best cost so far (all terms are >= 0, so the decision, a strict
// "less than", is the same as the full sum's).
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "simd.h"

namespace fresco {
namespace {

constexpr uint32_t kInitPass = 0xFFF;

inline uint32_t lowbias32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7FEB352Du;
  x ^= x >> 15;
  x *= 0x846CA68Bu;
  x ^= x >> 16;
  return x;
}

inline uint32_t level_key(uint32_t seed, int64_t level, int64_t pass, int64_t k) {
  return lowbias32(lowbias32(seed) ^ static_cast<uint32_t>((level << 20) | (pass << 8) | k));
}

// One pyramid level: interleaved int16 planes.
struct Level {
  int64_t hs, ws, ht, wt;
  std::vector<int16_t> src;     // [hs][ws][K]: guides then style
  std::vector<int16_t> tgt;     // [ht + 2r][wt + 2r][K]: guides then the style estimate, edge-replicated border
  std::vector<int16_t> style;   // [C][hs][ws]
};

std::vector<int32_t> downsample(const std::vector<int32_t>& x, int64_t k, int64_t h, int64_t w) {
  const int64_t h2 = h / 2, w2 = w / 2;
  std::vector<int32_t> out(k * h2 * w2);
  for (int64_t c = 0; c < k; ++c)
    for (int64_t y = 0; y < h2; ++y)
      for (int64_t x2 = 0; x2 < w2; ++x2) {
        const int32_t* p = x.data() + (c * h + 2 * y) * w + 2 * x2;
        out[(c * h2 + y) * w2 + x2] = (p[0] + p[w] + p[1] + p[w + 1] + 2) >> 2;
      }
  return out;
}

std::vector<int32_t> planes(const at::Tensor& t) {
  auto c = t.to(at::kInt).contiguous();
  return std::vector<int32_t>(c.data_ptr<int32_t>(), c.data_ptr<int32_t>() + c.numel());
}

struct Params {
  int64_t r, p, g, c, k, uniformity;
  uint32_t seed;
  std::vector<int32_t> weights;  // [K]
  std::vector<int64_t> radii;
};

// sum over the patch of w_k (src - tgt)^2, stopping once it reaches `limit`
FRESCO_SIMD_CLONES
int64_t distance(const Params& P, const Level& L, int64_t ty, int64_t tx, int64_t sy, int64_t sx, int64_t limit) {
  const int64_t K = P.k, p = P.p, tw = L.wt + 2 * P.r;
  const int32_t* w = P.weights.data();
  int64_t d = 0;
  for (int64_t oy = 0; oy < p; ++oy) {
    const int16_t* s = L.src.data() + (((sy - P.r + oy) * L.ws) + (sx - P.r)) * K;
    const int16_t* t = L.tgt.data() + (((ty + oy) * tw) + tx) * K;
    int32_t row = 0;
    for (int64_t i = 0; i < p * K; ++i) {
      const int32_t diff = static_cast<int32_t>(s[i]) - static_cast<int32_t>(t[i]);
      row += w[i] * diff * diff;
    }
    d += row;
    if (d >= limit) return d;
  }
  return d;
}

void fill_target_style(const Params& P, Level& L, const std::vector<int64_t>& total,
                       const std::vector<int32_t>& count) {
  const int64_t r = P.r, tw = L.wt + 2 * r, K = P.k;
  for (int64_t y = 0; y < L.ht + 2 * r; ++y) {
    const int64_t cy = std::clamp<int64_t>(y - r, 0, L.ht - 1);
    for (int64_t x = 0; x < tw; ++x) {
      const int64_t cx = std::clamp<int64_t>(x - r, 0, L.wt - 1);
      const int64_t q = cy * L.wt + cx;
      for (int64_t c = 0; c < P.c; ++c)
        L.tgt[(y * tw + x) * K + P.g + c] =
            static_cast<int16_t>((total[c * L.ht * L.wt + q] + count[q] / 2) / count[q]);
    }
  }
}

// patch voting: per target pixel the sum of what every covering patch proposes, and how many patches cover it
void vote(const Params& P, const Level& L, const std::vector<int32_t>& ny, const std::vector<int32_t>& nx,
          std::vector<int64_t>& total, std::vector<int32_t>& count) {
  const int64_t r = P.r, ht = L.ht, wt = L.wt, hw = ht * wt, shw = L.hs * L.ws;
  total.assign(P.c * hw, 0);
  count.assign(hw, 0);
  at::parallel_for(0, ht, 8, [&](int64_t y0, int64_t y1) {
    for (int64_t y = y0; y < y1; ++y)
      for (int64_t x = 0; x < wt; ++x) {
        const int64_t pix = y * wt + x;
        int32_t n = 0;
        int64_t acc[16] = {0};
        for (int64_t oy = -r; oy <= r; ++oy) {
          const int64_t qy = y - oy;
          if (qy < 0 || qy >= ht) continue;
          for (int64_t ox = -r; ox <= r; ++ox) {
            const int64_t qx = x - ox;
            if (qx < 0 || qx >= wt) continue;
            const int64_t q = qy * wt + qx;
            const int64_t s = (ny[q] + oy) * L.ws + (nx[q] + ox);
            for (int64_t c = 0; c < P.c; ++c) acc[c] += L.style[c * shw + s];
            ++n;
          }
        }
        for (int64_t c = 0; c < P.c; ++c) total[c * hw + pix] = acc[c];
        count[pix] = n;
      }
  });
}

void pm_pass(const Params& P, const Level& L, int64_t level, int64_t pass, std::vector<int32_t>& ny,
             std::vector<int32_t>& nx, std::vector<int64_t>& cost) {
  const int64_t r = P.r, ht = L.ht, wt = L.wt, hs = L.hs, ws = L.ws;
  const std::vector<int32_t> oy_(ny), ox_(nx);  // the field at the start of the pass
  std::vector<int32_t> occ(hs * ws, 0);
  for (int64_t q = 0; q < ht * wt; ++q) ++occ[oy_[q] * ws + ox_[q]];
  std::vector<uint32_t> keys(P.radii.size());
  for (size_t k = 0; k < keys.size(); ++k) keys[k] = level_key(P.seed, level, pass, static_cast<int64_t>(k));
  const int64_t u = P.uniformity;
  at::parallel_for(0, ht, 4, [&](int64_t y0, int64_t y1) {
    for (int64_t y = y0; y < y1; ++y)
      for (int64_t x = 0; x < wt; ++x) {
        const int64_t pix = y * wt + x;
        const int64_t cur = static_cast<int64_t>(oy_[pix]) * ws + ox_[pix];
        auto pen = [&](int64_t sy, int64_t sx) {
          const int64_t q = sy * ws + sx;
          return u * (occ[q] - (q == cur ? 1 : 0));
        };
        int64_t by = oy_[pix], bx = ox_[pix];
        int64_t best = pen(by, bx);
        best += distance(P, L, y, x, by, bx, INT64_MAX);
        auto consider = [&](int64_t sy, int64_t sx) {
          sy = std::clamp<int64_t>(sy, r, hs - 1 - r);
          sx = std::clamp<int64_t>(sx, r, ws - 1 - r);
          const int64_t pe = pen(sy, sx);
          if (pe >= best) return;
          const int64_t c = pe + distance(P, L, y, x, sy, sx, best - pe);
          if (c < best) { best = c; by = sy; bx = sx; }
        };
        if (x > 0) consider(oy_[pix - 1], ox_[pix - 1] + 1);
        if (x + 1 < wt) consider(oy_[pix + 1], ox_[pix + 1] - 1);
        if (y > 0) consider(oy_[pix - wt] + 1, ox_[pix - wt]);
        if (y + 1 < ht) consider(oy_[pix + wt] - 1, ox_[pix + wt]);
        for (size_t k = 0; k < keys.size(); ++k) {
          const uint32_t h = lowbias32(keys[k] ^ static_cast<uint32_t>(pix));
          const int64_t span = 2 * P.radii[k] + 1;
          consider(by + static_cast<int64_t>(h & 0xFFFFu) % span - P.radii[k],
                   bx + static_cast<int64_t>(h >> 16) % span - P.radii[k]);
        }
        ny[pix] = static_cast<int32_t>(by);
        nx[pix] = static_cast<int32_t>(bx);
        cost[pix] = best;
      }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> patch_synthesis_cpu(
    const at::Tensor& style, const at::Tensor& source_guide, const at::Tensor& target_guide, const at::Tensor& weights,
    int64_t style_weight, const std::optional<at::Tensor>& init_nnf, int64_t patch_size, int64_t levels,
    int64_t em_iters, int64_t pm_iters, int64_t search_radius, int64_t uniformity, int64_t seed) {
  TORCH_CHECK(style.dim() == 3 && source_guide.dim() == 3 && target_guide.dim() == 3,
              "patch_synthesis: style, source_guide, target_guide must be 3-D");
  TORCH_CHECK(style.size(0) <= 16, "patch_synthesis: style has at most 16 channels, got ", style.size(0));
  Params P;
  P.p = patch_size;
  P.r = patch_size / 2;
  P.g = source_guide.size(0);
  P.c = style.size(0);
  P.k = P.g + P.c;
  P.uniformity = uniformity;
  P.seed = static_cast<uint32_t>(seed & 0xFFFFFFFF);
  {
    auto w = weights.to(at::kInt).contiguous();
    P.weights.assign(w.data_ptr<int32_t>(), w.data_ptr<int32_t>() + P.g);
    P.weights.insert(P.weights.end(), P.c, static_cast<int32_t>(style_weight));
    // the distance loop indexes weights by i % K over a patch row: precompute the whole row's weights
    std::vector<int32_t> row(P.p * P.k);
    for (int64_t i = 0; i < P.p * P.k; ++i) row[i] = P.weights[i % P.k];
    P.weights = row;
  }
  for (int64_t rad = search_radius; rad >= 1; rad /= 2) P.radii.push_back(rad);

  const int64_t hs0 = style.size(1), ws0 = style.size(2), ht0 = target_guide.size(1), wt0 = target_guide.size(2);
  int64_t n_lv = 1;
  while (n_lv < levels && std::min({hs0, ws0, ht0, wt0}) >> n_lv >= 2 * patch_size) ++n_lv;

  // pyramids as int32 planes, then interleaved int16 per level
  std::vector<std::vector<int32_t>> sty{planes(style)}, sg{planes(source_guide)}, tg{planes(target_guide)};
  std::vector<int64_t> hs{hs0}, ws{ws0}, ht{ht0}, wt{wt0};
  for (int64_t l = 1; l < n_lv; ++l) {
    sty.push_back(downsample(sty.back(), P.c, hs.back(), ws.back()));
    sg.push_back(downsample(sg.back(), P.g, hs.back(), ws.back()));
    tg.push_back(downsample(tg.back(), P.g, ht.back(), wt.back()));
    hs.push_back(hs.back() / 2); ws.push_back(ws.back() / 2); ht.push_back(ht.back() / 2); wt.push_back(wt.back() / 2);
  }
  const int64_t r = P.r, K = P.k;
  std::vector<int32_t> ny, nx;
  std::vector<int64_t> cost, total;
  std::vector<int32_t> count;
  Level L;
  for (int64_t lv = n_lv - 1; lv >= 0; --lv) {
    L.hs = hs[lv]; L.ws = ws[lv]; L.ht = ht[lv]; L.wt = wt[lv];
    const int64_t shw = L.hs * L.ws, thw = L.ht * L.wt, tw = L.wt + 2 * r;
    L.src.assign(shw * K, 0);
    L.style.assign(P.c * shw, 0);
    for (int64_t q = 0; q < shw; ++q) {
      for (int64_t g = 0; g < P.g; ++g) L.src[q * K + g] = static_cast<int16_t>(sg[lv][g * shw + q]);
      for (int64_t c = 0; c < P.c; ++c) {
        L.src[q * K + P.g + c] = static_cast<int16_t>(sty[lv][c * shw + q]);
        L.style[c * shw + q] = static_cast<int16_t>(sty[lv][c * shw + q]);
      }
    }
    L.tgt.assign((L.ht + 2 * r) * tw * K, 0);
    for (int64_t y = 0; y < L.ht + 2 * r; ++y)
      for (int64_t x = 0; x < tw; ++x) {
        const int64_t q = std::clamp<int64_t>(y - r, 0, L.ht - 1) * L.wt + std::clamp<int64_t>(x - r, 0, L.wt - 1);
        for (int64_t g = 0; g < P.g; ++g) L.tgt[(y * tw + x) * K + g] = static_cast<int16_t>(tg[lv][g * thw + q]);
      }
    // the field: initial at the coarsest level, else the coarser level's upsampled
    std::vector<int32_t> fy(thw), fx(thw);
    if (lv == n_lv - 1) {
      if (init_nnf.has_value()) {
        auto init = init_nnf->to(at::kInt).contiguous();
        const int32_t* in = init.data_ptr<int32_t>();
        const int64_t s = int64_t(1) << lv, w0 = wt0, plane = ht0 * wt0;
        for (int64_t y = 0; y < L.ht; ++y)
          for (int64_t x = 0; x < L.wt; ++x) {
            const int64_t q = (y * s) * w0 + x * s;
            // floor division by 2^lv (an arithmetic shift floors negative values too)
            fy[y * L.wt + x] = std::clamp<int32_t>(in[q] >> lv, r, L.hs - 1 - r);
            fx[y * L.wt + x] = std::clamp<int32_t>(in[plane + q] >> lv, r, L.ws - 1 - r);
          }
      } else {
        const uint32_t key = level_key(P.seed, lv, kInitPass, 0);
        for (int64_t q = 0; q < thw; ++q) {
          const uint32_t h = lowbias32(key ^ static_cast<uint32_t>(q));
          fy[q] = static_cast<int32_t>(r + (h & 0xFFFFu) % (L.hs - 2 * r));
          fx[q] = static_cast<int32_t>(r + (h >> 16) % (L.ws - 2 * r));
        }
      }
    } else {
      const int64_t hc = ht[lv + 1], wc = wt[lv + 1];
      for (int64_t y = 0; y < L.ht; ++y) {
        const int64_t yc = std::min(y / 2, hc - 1);
        for (int64_t x = 0; x < L.wt; ++x) {
          const int64_t xc = std::min(x / 2, wc - 1);
          fy[y * L.wt + x] = static_cast<int32_t>(std::clamp<int64_t>(2 * ny[yc * wc + xc] + (y - 2 * yc), r, L.hs - 1 - r));
          fx[y * L.wt + x] = static_cast<int32_t>(std::clamp<int64_t>(2 * nx[yc * wc + xc] + (x - 2 * xc), r, L.ws - 1 - r));
        }
      }
    }
    ny.swap(fy);
    nx.swap(fx);
    cost.assign(thw, 0);
    for (int64_t em = 0; em < em_iters; ++em) {
      vote(P, L, ny, nx, total, count);
      fill_target_style(P, L, total, count);
      for (int64_t it = 0; it < pm_iters; ++it) pm_pass(P, L, lv, em * pm_iters + it, ny, nx, cost);
    }
  }
  // outputs at the finest level (L is level 0 now)
  const int64_t thw = ht0 * wt0;
  auto out = at::empty({P.c, ht0, wt0}, style.options().dtype(at::kFloat));
  auto nnf = at::empty({2, ht0, wt0}, style.options().dtype(at::kInt));
  auto err = at::empty({ht0, wt0}, style.options().dtype(at::kFloat));
  float* o = out.data_ptr<float>();
  int32_t* f = nnf.data_ptr<int32_t>();
  float* e = err.data_ptr<float>();
  const float area = static_cast<float>(patch_size * patch_size);
  at::parallel_for(0, thw, 1024, [&](int64_t b, int64_t en) {
    for (int64_t q = b; q < en; ++q) {
      e[q] = static_cast<float>(distance(P, L, q / wt0, q % wt0, ny[q], nx[q], INT64_MAX)) / area;
      f[q] = ny[q];
      f[thw + q] = nx[q];
    }
  });
  vote(P, L, ny, nx, total, count);
  for (int64_t c = 0; c < P.c; ++c)
    for (int64_t q = 0; q < thw; ++q)
      o[c * thw + q] = static_cast<float>(total[c * thw + q]) / static_cast<float>(count[q]);
  return {out, nnf, err};
}

}  // namespace

TORCH_LIBRARY_IMPL(fresco, CPU, m) {
  m.impl("patch_synthesis", &patch_synthesis_cpu);
}

}  // namespace fresco
