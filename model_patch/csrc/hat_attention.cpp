// Paged attention for HatLLM's IN and CR layers on CPU: each query attends to at most two contiguous
// key ranges plus itself, read straight from the layer's slot-major cache rows. No mask tensor, no
// gather. The ranges are hatllm.masks.layer_mask written as intervals (tests check they agree).
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

namespace {

constexpr int64_t kIN = 0;
constexpr int64_t kCR = 2;

// Keys a query may see, as at most two half-open ranges (the second may be just the query itself).
int key_ranges(int64_t layer_type, int64_t q, int64_t start, int64_t first_item, std::pair<int64_t, int64_t>* out) {
  int n = 0;
  if (layer_type == kIN) {  // k < P, or start <= k <= q, or k == q
    const int64_t prefix_end = std::min(first_item, q + 1);
    out[n++] = {0, prefix_end};
    const int64_t own = std::max(start, prefix_end);
    if (own <= q) out[n++] = {own, q + 1};
    else if (prefix_end <= q) out[n++] = {q, q + 1};
  } else {  // CR: k < start, or k == q
    const int64_t before = std::min(start, q + 1);
    out[n++] = {0, before};
    if (before <= q) out[n++] = {q, q + 1};
  }
  return n;
}

// e^x for x <= 0 (softmax weights), written so that loops over it vectorize: x = n ln2 + r, |r| <= ln2/2,
// e^r by a degree-6 polynomial (relative error ~2e-7, well inside the tests' tolerance), 2^n by exponent bits.
inline float exp_nonpositive(float x) {
  x = std::max(x, -87.0f);
  const float n = std::nearbyint(x * 1.44269504088896341f);
  const float r = x - n * 0.693145751953125f - n * 1.428606765330187045e-06f;
  float p = 1.0f / 720;
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// Scores of keys [a, b) against one (scaled) query, read in place.
template <typename KeyRow>
void key_scores(KeyRow key_row, const float* qf, int64_t head_dim, int64_t a, int64_t b, float* scores) {
  for (int64_t k = a; k < b; ++k) {
    const auto* key = key_row(k);
    float score = 0.f;
    for (int64_t d = 0; d < head_dim; ++d) score += qf[d] * static_cast<float>(key[d]);
    scores[k - a] = score;
  }
}

// Scores -> unnormalised softmax weights in place; returns their sum.
inline float softmax_weights(float* scores, int64_t m) {
  float running_max = scores[0];
  for (int64_t i = 1; i < m; ++i) running_max = std::max(running_max, scores[i]);
  float sum = 0.f;
  for (int64_t i = 0; i < m; ++i) {
    scores[i] = exp_nonpositive(scores[i] - running_max);
    sum += scores[i];
  }
  return sum;
}

// out = sum of weights[m] * value(k) over the ranges, divided by `sum`. `value(k)` is key k's value row.
template <typename scalar_t, typename ValueRow>
void weighted_values(ValueRow value, int64_t head_dim, const std::pair<int64_t, int64_t>* ranges, int num_ranges,
                     const float* weights, float sum, float* acc, scalar_t* out) {
  std::fill(acc, acc + head_dim, 0.f);
  int64_t m = 0;
  for (int r = 0; r < num_ranges; ++r) {
    for (int64_t k = ranges[r].first; k < ranges[r].second; ++k) {
      const auto* v = value(k);
      const float p = weights[m++];
      for (int64_t d = 0; d < head_dim; ++d) acc[d] += p * static_cast<float>(v[d]);
    }
  }
  for (int64_t d = 0; d < head_dim; ++d) out[d] = static_cast<scalar_t>(acc[d] / sum);
}

}  // namespace

// query [N, H, D]; rows [slots, Hkv, 2D] (K then V per head); output [N, H, D]; query_start_loc [R + 1],
// seq_lens [R], block_table [R, B] (int32); query_pos, starts, first_item [N] (int64).
// Work is split by (request, kv head).
void hat_attention(torch::Tensor query, torch::Tensor rows, torch::Tensor output, torch::Tensor query_start_loc,
                   torch::Tensor seq_lens, torch::Tensor query_pos, torch::Tensor starts, torch::Tensor first_item,
                   torch::Tensor block_table, int64_t block_size, double scale, int64_t layer_type) {
  TORCH_CHECK(layer_type == kIN || layer_type == kCR, "layer_type must be IN (0) or CR (2)");
  const int64_t heads = query.size(1), head_dim = query.size(2);
  const int64_t kv_heads = rows.size(1), group = heads / kv_heads;
  const int64_t num_requests = seq_lens.size(0);
  TORCH_CHECK(rows.stride(1) == 2 * head_dim && rows.stride(2) == 1, "cache rows must be contiguous per slot");
  TORCH_CHECK(query.stride(1) == head_dim && query.stride(2) == 1, "query heads must be contiguous per token");
  TORCH_CHECK(output.stride(1) == head_dim && output.stride(2) == 1, "output heads must be contiguous per token");
  TORCH_CHECK(rows.scalar_type() == query.scalar_type() && output.scalar_type() == query.scalar_type(),
              "query, cache and output must share a dtype");
  auto bounds = query_start_loc.accessor<int32_t, 1>();
  auto lengths = seq_lens.accessor<int32_t, 1>();
  auto position = query_pos.accessor<int64_t, 1>();
  auto start = starts.accessor<int64_t, 1>();
  auto first = first_item.accessor<int64_t, 1>();
  const int32_t* table = block_table.data_ptr<int32_t>();
  const int64_t table_stride = block_table.stride(0), row_stride = rows.stride(0);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, query.scalar_type(), "hat_attention", [&] {
    const scalar_t* q = query.data_ptr<scalar_t>();
    const scalar_t* kv = rows.data_ptr<scalar_t>();
    scalar_t* out = output.data_ptr<scalar_t>();
    const int64_t q_stride = query.stride(0), o_stride = output.stride(0);
    at::parallel_for(0, num_requests * kv_heads, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> qf(head_dim), acc(head_dim), scores;
      std::vector<const scalar_t*> key_rows;
      for (int64_t job = begin; job < end; ++job) {
        const int64_t r = job / kv_heads, kvh = job % kv_heads;
        const int64_t len = lengths[r], first_token = bounds[r], last_token = bounds[r + 1];
        if (first_token == last_token) continue;
        // Where each key's row lives, resolved once per job (a division per key read costs more than the read).
        const int32_t* blocks = table + r * table_stride;
        key_rows.resize(len);
        for (int64_t k = 0; k < len; k += block_size) {
          const scalar_t* block = kv + static_cast<int64_t>(blocks[k / block_size]) * block_size * row_stride + kvh * 2 * head_dim;
          for (int64_t i = 0; i < std::min(block_size, len - k); ++i) key_rows[k + i] = block + i * row_stride;
        }
        auto paged_row = [&](int64_t k) { return key_rows[k]; };
        scores.resize(len);
        for (int64_t t = first_token; t < last_token; ++t) {
          std::pair<int64_t, int64_t> ranges[2];
          const int n = key_ranges(layer_type, position[t], start[t], first[t], ranges);
          for (int64_t h = kvh * group; h < (kvh + 1) * group; ++h) {
            const scalar_t* qh = q + t * q_stride + h * head_dim;
            for (int64_t d = 0; d < head_dim; ++d) qf[d] = static_cast<float>(qh[d]) * static_cast<float>(scale);
            int64_t m = 0;
            for (int r = 0; r < n; ++r) {
              key_scores(paged_row, qf.data(), head_dim, ranges[r].first, ranges[r].second, scores.data() + m);
              m += ranges[r].second - ranges[r].first;
            }
            const float sum = softmax_weights(scores.data(), m);
            auto value = [&](int64_t k) { return paged_row(k) + head_dim; };
            weighted_values(value, head_dim, ranges, n, scores.data(), sum, acc.data(), out + t * o_stride + h * head_dim);
          }
        }
      }
    });
  });
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("hat_attention", &hat_attention, "HatLLM IN/CR paged attention"); }
