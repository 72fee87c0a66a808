// fresco::flow_correspondence on CPU. Frame pairs are independent (one work item each): every source's target and
// packed (colour error bits << 32 | source) key, min per target, then one ascending scan pairs the k-th unlinked
// target with the k-th unused source. Chaining and segment ids run over blocks of trajectories.
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <tuple>
#include <vector>

// The colour error must round like PyTorch's ((s0 + s1) + s2) / 3: no fused multiply-add in this file.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace fresco {
namespace {

constexpr uint64_t kNoKey = static_cast<uint64_t>(std::numeric_limits<int64_t>::max());

void check_inputs(const at::Tensor& flow, const at::Tensor& occ, const at::Tensor& frames) {
  TORCH_CHECK(frames.dim() == 4 && frames.size(0) >= 2 && frames.size(1) == 3 &&
                  frames.scalar_type() == at::kFloat,
              "flow_correspondence: frames must be [N, 3, h, w] float32 with N >= 2, got ", frames.sizes(), " ",
              frames.scalar_type());
  const int64_t n = frames.size(0), h = frames.size(2), w = frames.size(3);
  TORCH_CHECK(flow.dim() == 4 && flow.size(0) == n - 1 && flow.size(1) == 2 && flow.size(2) == h &&
                  flow.size(3) == w && flow.scalar_type() == at::kFloat,
              "flow_correspondence: bwd_flow must be [N-1, 2, h, w] float32 = [", n - 1, ", 2, ", h, ", ", w,
              "], got ", flow.sizes(), " ", flow.scalar_type());
  TORCH_CHECK(occ.dim() == 3 && occ.size(0) == n - 1 && occ.size(1) == h && occ.size(2) == w &&
                  occ.scalar_type() == at::kBool,
              "flow_correspondence: occ must be [N-1, h, w] bool = [", n - 1, ", ", h, ", ", w, "], got ",
              occ.sizes(), " ", occ.scalar_type());
  TORCH_CHECK(h * w < (int64_t(1) << 31), "flow_correspondence: h*w must be < 2^31, got ", h * w);
}

// torch.round of float(i) + f in fp32: nearest integer, ties to even. Adding and removing 2^23 rounds a float of
// magnitude < 2^23 to an integer in the default rounding mode (exact, no libm call); larger values, inf and NaN are
// returned as they are (already integers, or out of bounds).
inline float round_target(int64_t i, float f) {
  const float x = static_cast<float>(i) + f;
  constexpr float kTwo23 = 8388608.0f;
  if (!(std::fabs(x) < kTwo23)) return x;
  return x >= 0.f ? (x + kTwo23) - kTwo23 : (x - kTwo23) + kTwo23;
}

// map_i of one pair. flow: [2, hw], occ: [hw], tgt_rgb = frame i, src_rgb = frame i+1: [3, hw] (contiguous).
// Writes map [hw] and unlinked [hw]; best [hw] and spare [hw] are scratch. Branch-free inner loops: whether a source
// is valid, wins or fills a target follows the data, which no branch predictor guesses well.
void pair_map(const float* flow, const bool* occ, const float* tgt_rgb, const float* src_rgb, int64_t h, int64_t w,
              int64_t* map, bool* unlinked, uint64_t* best, int64_t* spare) {
  const int64_t hw = h * w;
  const float hf = static_cast<float>(h), wf = static_cast<float>(w);
  std::fill(best, best + hw, kNoKey);
  for (int64_t r = 0, s = 0; r < h; ++r) {
    for (int64_t c = 0; c < w; ++c, ++s) {
      const float ty = round_target(r, flow[hw + s]);
      const float tx = round_target(c, flow[s]);
      const bool valid = !occ[s] & (ty >= 0.f) & (ty < hf) & (tx >= 0.f) & (tx < wf);
      // an invalid source reads target 0 and offers kNoKey there: a no-op
      const int64_t t = valid ? static_cast<int64_t>(ty) * w + static_cast<int64_t>(tx) : 0;
      const float d0 = src_rgb[s] - tgt_rgb[t];
      const float d1 = src_rgb[hw + s] - tgt_rgb[hw + t];
      const float d2 = src_rgb[2 * hw + s] - tgt_rgb[2 * hw + t];
      const float sq0 = d0 * d0, sq1 = d1 * d1, sq2 = d2 * d2;
      const float err = ((sq0 + sq1) + sq2) / 3.0f;
      uint32_t bits;
      std::memcpy(&bits, &err, sizeof(bits));
      // non-negative floats order like their bit patterns: min key = smallest error, then smallest source
      const uint64_t key = valid ? (static_cast<uint64_t>(bits) << 32) | static_cast<uint64_t>(s) : kNoKey;
      best[t] = std::min(best[t], key);
    }
  }
  // used sources (winners) marked in map (as scratch), then the unused ones listed in ascending order
  std::fill(map, map + hw, int64_t(0));
  for (int64_t t = 0; t < hw; ++t) {
    const bool linked = best[t] != kNoKey;
    map[linked ? static_cast<int64_t>(best[t] & 0xFFFFFFFFu) : 0] |= linked ? 1 : 0;
  }
  int64_t n_spare = 0;
  for (int64_t s = 0; s < hw; ++s) {
    spare[n_spare] = s;
    n_spare += map[s] ? 0 : 1;
  }
  // the k-th unlinked target takes the k-th unused source (the published prefix-order fill)
  int64_t k = 0;
  for (int64_t t = 0; t < hw; ++t) {
    const bool linked = best[t] != kNoKey;
    map[t] = linked ? static_cast<int64_t>(best[t] & 0xFFFFFFFFu) : spare[k];
    unlinked[t] = !linked;
    k += linked ? 0 : 1;
  }
}

std::tuple<at::Tensor, at::Tensor> flow_correspondence_cpu(const at::Tensor& bwd_flow, const at::Tensor& occ,
                                                           const at::Tensor& frames) {
  check_inputs(bwd_flow, occ, frames);
  const at::Tensor flow_c = bwd_flow.contiguous();
  const at::Tensor occ_c = occ.contiguous();
  const at::Tensor frames_c = frames.contiguous();
  const int64_t n = frames.size(0), h = frames.size(2), w = frames.size(3), hw = h * w, pairs = n - 1;
  at::Tensor maps = at::empty({pairs, hw}, frames.options().dtype(at::kLong));
  at::Tensor unlinked = at::empty({pairs, hw}, frames.options().dtype(at::kBool));
  const float* fl = flow_c.data_ptr<float>();
  const bool* oc = occ_c.data_ptr<bool>();
  const float* fr = frames_c.data_ptr<float>();
  int64_t* mp = maps.data_ptr<int64_t>();
  bool* ul = unlinked.data_ptr<bool>();
  at::parallel_for(0, pairs, 1, [&](int64_t begin, int64_t end) {
    std::vector<uint64_t> best(hw);
    std::vector<int64_t> spare(hw);
    for (int64_t i = begin; i < end; ++i) {
      pair_map(fl + i * 2 * hw, oc + i * hw, fr + i * 3 * hw, fr + (i + 1) * 3 * hw, h, w, mp + i * hw, ul + i * hw,
               best.data(), spare.data());
    }
  });

  at::Tensor fwd = at::empty({n, hw}, frames.options().dtype(at::kLong));
  at::Tensor seg = at::empty({n, hw}, frames.options().dtype(at::kInt));
  int64_t* fp = fwd.data_ptr<int64_t>();
  int32_t* sp = seg.data_ptr<int32_t>();
  // fwd[i+1][p] = map_i[fwd[i][p]], seg[i+1][p] = seg[i][p] + unlinked_i[fwd[i][p]]: frame by frame within a block
  // of trajectories, so the gathers of one frame are independent loads (no chain of dependent loads per trajectory)
  // a gather is a few ns: split only when a chunk has ~64k of them (threads cost more than small chains)
  const int64_t chain_grain = std::max<int64_t>(2048, 65536 / std::max<int64_t>(pairs, 1));
  at::parallel_for(0, hw, chain_grain, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      fp[p] = p;
      sp[p] = 0;
    }
    for (int64_t i = 0; i < pairs; ++i) {
      const int64_t* prev = fp + i * hw;
      const int32_t* sprev = sp + i * hw;
      const int64_t* m = mp + i * hw;
      const bool* u = ul + i * hw;
      int64_t* next = fp + (i + 1) * hw;
      int32_t* snext = sp + (i + 1) * hw;
      for (int64_t p = begin; p < end; ++p) {
        const int64_t cur = prev[p];
        next[p] = m[cur];
        snext[p] = sprev[p] + (u[cur] ? 1 : 0);
      }
    }
  });
  return {fwd, seg};
}

}  // namespace

TORCH_LIBRARY_IMPL(fresco, CPU, m) {
  m.impl("flow_correspondence", &flow_correspondence_cpu);
}

}  // namespace fresco
