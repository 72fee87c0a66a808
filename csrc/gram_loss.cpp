// fresco::gram_loss / gram_loss_fwd_bwd on CPU: the spatial Gram loss without any hw x hw buffer.
// The Gram of the normalised rows is visited in kTile x kTile tiles (i <= j, symmetry), each tile recomputed from
// the row tiles with BLAS (at::mm), reduced into the loss and, for the gradient, turned into sign(D) (L1) or D (L2)
// that is multiplied back into both row tiles. Tiles run in rounds of disjoint pairs (circle method), so the two
// gradient row blocks a task writes are owned by it for the round: no races, no per-thread buffers, deterministic.
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <string>
#include <utility>
#include <vector>

namespace fresco {
namespace {

constexpr int64_t kTile = 128;

enum class Reduction { L1, L2 };

Reduction parse_reduction(c10::string_view r) {
  if (r == "l1") return Reduction::L1;
  TORCH_CHECK(r == "l2", "gram_loss: reduction must be \"l1\" or \"l2\", got \"", std::string(r), "\"");
  return Reduction::L2;
}

void check_precision(c10::string_view p) {
  TORCH_CHECK(p == "ieee" || p == "tf32" || p == "bf16",
              "gram_loss: precision must be \"ieee\", \"tf32\" or \"bf16\", got \"", std::string(p), "\"");
}

void check_inputs(const at::Tensor& feat, const at::Tensor& ref) {
  TORCH_CHECK(feat.dim() == 3, "gram_loss: feat must be [B, hw, C], got ", feat.sizes());
  TORCH_CHECK(ref.sizes() == feat.sizes(), "gram_loss: ref must have feat's shape ", feat.sizes(), ", got ",
              ref.sizes());
  TORCH_CHECK(feat.size(1) > 0, "gram_loss: feat must have hw >= 1, got ", feat.sizes());
}

// Rounds of pairs (i, j), i < j, over nt tiles such that no tile appears twice in a round (circle method), then one
// round of the diagonal tiles (i, i).
std::vector<std::vector<std::pair<int64_t, int64_t>>> tile_rounds(int64_t nt) {
  std::vector<std::vector<std::pair<int64_t, int64_t>>> rounds;
  const int64_t m = nt + (nt % 2);
  for (int64_t r = 0; r + 1 < m; ++r) {
    std::vector<std::pair<int64_t, int64_t>> pairs;
    auto add = [&](int64_t a, int64_t b) {
      if (a < nt && b < nt) pairs.emplace_back(std::min(a, b), std::max(a, b));
    };
    add(m - 1, r);
    for (int64_t k = 1; k < m / 2; ++k) add((r + k) % (m - 1), (r - k + (m - 1)) % (m - 1));
    rounds.push_back(std::move(pairs));
  }
  std::vector<std::pair<int64_t, int64_t>> diag;
  for (int64_t i = 0; i < nt; ++i) diag.emplace_back(i, i);
  rounds.push_back(std::move(diag));
  return rounds;
}

// Sum over the Gram difference D = xn xnᵀ - rn rnᵀ of |D| (L1) or D² (L2), per image; with need_grad, also
// gxn = S xn with S = sign(D) (L1) or D (L2). xn, rn: [B, n, C] contiguous, acc dtype. Returns per-image sums.
template <typename acc_t>
std::vector<double> tiled(const at::Tensor& xn, const at::Tensor& rn, Reduction red, bool need_grad, at::Tensor& gxn) {
  const int64_t B = xn.size(0), n = xn.size(1);
  const int64_t nt = (n + kTile - 1) / kTile;
  const auto rounds = tile_rounds(nt);
  // partial sums per (image, round, pair): summed in a fixed order at the end, so the loss is deterministic
  std::vector<std::vector<std::vector<double>>> parts(B);
  for (int64_t b = 0; b < B; ++b) {
    parts[b].resize(rounds.size());
    for (size_t r = 0; r < rounds.size(); ++r) parts[b][r].assign(rounds[r].size(), 0.0);
  }
  for (size_t r = 0; r < rounds.size(); ++r) {
    const auto& pairs = rounds[r];
    const int64_t np = static_cast<int64_t>(pairs.size());
    at::parallel_for(0, B * np, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t b = t / np, p = t % np;
        const int64_t ti = pairs[p].first, tj = pairs[p].second;
        const int64_t i0 = ti * kTile, j0 = tj * kTile;
        const int64_t li = std::min(kTile, n - i0), lj = std::min(kTile, n - j0);
        const at::Tensor xi = xn[b].narrow(0, i0, li), xj = xn[b].narrow(0, j0, lj);
        const at::Tensor ri = rn[b].narrow(0, i0, li), rj = rn[b].narrow(0, j0, lj);
        // D = xi xjᵀ - ri rjᵀ  [li, lj]
        at::Tensor d = at::mm(xi, xj.t());
        d.addmm_(ri, rj.t(), 1, -1);
        acc_t* dp = d.data_ptr<acc_t>();
        double s = 0.0;
        for (int64_t e = 0; e < li * lj; ++e) {
          const acc_t v = dp[e];
          if (red == Reduction::L1) {
            s += std::abs(static_cast<double>(v));
            dp[e] = static_cast<acc_t>((v > 0) - (v < 0));
          } else {
            s += static_cast<double>(v) * static_cast<double>(v);
          }
        }
        parts[b][r][p] = ti == tj ? s : 2.0 * s;
        if (need_grad) {
          at::Tensor gi = gxn[b].narrow(0, i0, li);
          gi.addmm_(d, xj);
          if (ti != tj) {
            at::Tensor gj = gxn[b].narrow(0, j0, lj);
            gj.addmm_(d.t(), xi);
          }
        }
      }
    });
  }
  std::vector<double> sums(B, 0.0);
  for (int64_t b = 0; b < B; ++b)
    for (const auto& round : parts[b])
      for (double v : round) sums[b] += v;
  return sums;
}

// L2 through C x C products: ‖D‖² = ‖xnᵀxn‖² - 2‖xnᵀrn‖² + ‖rnᵀrn‖², D xn = xn (xnᵀxn) - rn (xnᵀrn)ᵀ.
std::vector<double> l2_closed_form(const at::Tensor& xn, const at::Tensor& rn, bool need_grad, at::Tensor& gxn) {
  const at::Tensor a = at::bmm(xn.transpose(1, 2), xn);
  const at::Tensor m = at::bmm(xn.transpose(1, 2), rn);
  const at::Tensor c = at::bmm(rn.transpose(1, 2), rn);
  auto sq = [](const at::Tensor& t) { return t.to(at::kDouble).square().sum({1, 2}); };
  const at::Tensor per_image = sq(a) - 2 * sq(m) + sq(c);
  if (need_grad) gxn.copy_(at::bmm(xn, a) - at::bmm(rn, m.transpose(1, 2)));
  const double* pp = per_image.data_ptr<double>();
  return std::vector<double>(pp, pp + xn.size(0));
}

std::tuple<at::Tensor, at::Tensor> run(const at::Tensor& feat, const at::Tensor& ref, c10::string_view reduction,
                                       double weight, bool need_grad) {
  check_inputs(feat, ref);
  const Reduction red = parse_reduction(reduction);
  const int64_t B = feat.size(0), n = feat.size(1), C = feat.size(2);
  const auto acc = feat.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor x = feat.to(acc).contiguous();
  const at::Tensor rn = ref.to(acc).contiguous();
  // inverse row norms (0 for an all-zero row, whose normalised row is defined as 0) and the normalised rows
  at::Tensor inv = at::empty({B, n}, x.options());
  at::Tensor xn = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(acc, "gram_loss_normalize", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* ip = inv.data_ptr<scalar_t>();
    scalar_t* np_ = xn.data_ptr<scalar_t>();
    at::parallel_for(0, B * n, 256, [&](int64_t r0, int64_t r1) {
      for (int64_t row = r0; row < r1; ++row) {
        const scalar_t* v = xp + row * C;
        scalar_t s = 0;
        for (int64_t c = 0; c < C; ++c) s += v[c] * v[c];
        // 0 for an all-zero row (defined as the zero row); a NaN row stays NaN, as in the reference
        const scalar_t k = s == 0 ? scalar_t(0) : scalar_t(1) / std::sqrt(s);
        ip[row] = k;
        for (int64_t c = 0; c < C; ++c) np_[row * C + c] = v[c] * k;
      }
    });
  });
  at::Tensor gxn = need_grad ? at::zeros_like(xn) : at::Tensor();
  std::vector<double> sums;
  if (red == Reduction::L2 && C < n) {
    sums = l2_closed_form(xn, rn, need_grad, gxn);
  } else {
    AT_DISPATCH_FLOATING_TYPES(acc, "gram_loss_tiled", [&] { sums = tiled<scalar_t>(xn, rn, red, need_grad, gxn); });
  }
  double total = 0.0;
  for (double s : sums) total += s;
  const double scale = weight / (static_cast<double>(B) * static_cast<double>(n) * static_cast<double>(n));
  at::Tensor loss = at::scalar_tensor(total * scale, x.options());
  if (!need_grad) return {loss, at::empty({0}, feat.options())};
  // dL/dxn = factor · S xn (S symmetric: the transposed term doubles it); then through the normalisation:
  // dL/dx = (g - xn (xn · g)) / ‖x‖, zero for zero rows
  const double factor = (red == Reduction::L1 ? 2.0 : 4.0) * scale;
  at::Tensor grad = at::empty_like(feat);
  at::Tensor gx = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(acc, "gram_loss_grad", [&] {
    const scalar_t* gp = gxn.data_ptr<scalar_t>();
    const scalar_t* np_ = xn.data_ptr<scalar_t>();
    const scalar_t* ip = inv.data_ptr<scalar_t>();
    scalar_t* op = gx.data_ptr<scalar_t>();
    const scalar_t f = static_cast<scalar_t>(factor);
    at::parallel_for(0, B * n, 256, [&](int64_t r0, int64_t r1) {
      for (int64_t row = r0; row < r1; ++row) {
        const scalar_t* g = gp + row * C;
        const scalar_t* u = np_ + row * C;
        scalar_t dot = 0;
        for (int64_t c = 0; c < C; ++c) dot += u[c] * g[c];
        const scalar_t k = f * ip[row];
        for (int64_t c = 0; c < C; ++c) op[row * C + c] = (g[c] - u[c] * dot) * k;
      }
    });
  });
  grad.copy_(gx);
  return {loss, grad};
}

at::Tensor gram_loss_cpu(const at::Tensor& feat, const at::Tensor& ref, c10::string_view reduction, double weight,
                         c10::string_view precision) {
  // the CPU computes in IEEE fp32 (fp64 for fp64 feat) whatever the tensor-core precision asked for on CUDA
  check_precision(precision);
  return std::get<0>(run(feat, ref, reduction, weight, false));
}

std::tuple<at::Tensor, at::Tensor> gram_loss_fwd_bwd_cpu(const at::Tensor& feat, const at::Tensor& ref,
                                                        c10::string_view reduction, double weight,
                                                        c10::string_view precision) {
  check_precision(precision);
  return run(feat, ref, reduction, weight, true);
}

}  // namespace

TORCH_LIBRARY_IMPL(fresco, CPU, m) {
  m.impl("gram_loss", &gram_loss_cpu);
  m.impl("gram_loss_fwd_bwd", &gram_loss_fwd_bwd_cpu);
}

}  // namespace fresco
