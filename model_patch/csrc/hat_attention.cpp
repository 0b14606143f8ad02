// Paged attention for HatLLM's IN and CR layers on CPU: each query attends to at most two contiguous
// key ranges plus itself, read straight from the layer's slot-major cache rows. No mask tensor, no
// gather. The ranges are hatllm.masks.layer_mask written as intervals (tests check they agree).
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <limits>
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

// One query head over its key ranges, online softmax. `kv(k)` gives key k's row: its key, then its value.
template <typename scalar_t, typename elem_t, typename KeyRow>
void attend(const scalar_t* q, KeyRow kv, int64_t head_dim, float scale, const std::pair<int64_t, int64_t>* ranges,
            int num_ranges, scalar_t* out, float* qf, float* acc) {
  for (int64_t d = 0; d < head_dim; ++d) qf[d] = static_cast<float>(q[d]) * scale;
  std::fill(acc, acc + head_dim, 0.f);
  float running_max = -std::numeric_limits<float>::infinity(), denom = 0.f;
  for (int r = 0; r < num_ranges; ++r) {
    for (int64_t k = ranges[r].first; k < ranges[r].second; ++k) {
      const elem_t* key = kv(k);
      const elem_t* value = key + head_dim;
      float score = 0.f;
      for (int64_t d = 0; d < head_dim; ++d) score += qf[d] * static_cast<float>(key[d]);
      if (score > running_max) {
        const float correction = std::exp(running_max - score);
        denom *= correction;
        for (int64_t d = 0; d < head_dim; ++d) acc[d] *= correction;
        running_max = score;
      }
      const float p = std::exp(score - running_max);
      denom += p;
      for (int64_t d = 0; d < head_dim; ++d) acc[d] += p * static_cast<float>(value[d]);
    }
  }
  for (int64_t d = 0; d < head_dim; ++d) out[d] = static_cast<scalar_t>(acc[d] / denom);
}

}  // namespace

// query [N, H, D]; rows [slots, Hkv, 2D] (K then V per head); output [N, H, D]; query_start_loc [R + 1],
// seq_lens [R], block_table [R, B] (int32); query_pos, starts, first_item [N] (int64).
// Work is split by (request, kv head). A request with several queries (prefill, chunk) first copies its
// keys and values out of the paged cache once, as floats, since every query reads most of them; a
// decode query reads its keys in place through the block table.
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
      std::vector<float> buffer, qf(head_dim), acc(head_dim);
      for (int64_t job = begin; job < end; ++job) {
        const int64_t r = job / kv_heads, kvh = job % kv_heads;
        const int64_t len = lengths[r], first_token = bounds[r], last_token = bounds[r + 1];
        if (first_token == last_token) continue;
        const int32_t* blocks = table + r * table_stride;
        auto paged_row = [&](int64_t k) {
          return kv + (static_cast<int64_t>(blocks[k / block_size]) * block_size + k % block_size) * row_stride +
                 kvh * 2 * head_dim;
        };
        const bool copy = last_token - first_token > 1;
        if (copy) {
          buffer.resize(len * 2 * head_dim);
          for (int64_t k = 0; k < len; ++k) {
            const scalar_t* row = paged_row(k);
            for (int64_t d = 0; d < 2 * head_dim; ++d) buffer[k * 2 * head_dim + d] = static_cast<float>(row[d]);
          }
        }
        auto copied_row = [&](int64_t k) { return buffer.data() + k * 2 * head_dim; };
        for (int64_t t = first_token; t < last_token; ++t) {
          std::pair<int64_t, int64_t> ranges[2];
          const int n = key_ranges(layer_type, position[t], start[t], first[t], ranges);
          for (int64_t h = kvh * group; h < (kvh + 1) * group; ++h) {
            const scalar_t* qh = q + t * q_stride + h * head_dim;
            scalar_t* oh = out + t * o_stride + h * head_dim;
            if (copy) {
              attend<scalar_t, float>(qh, copied_row, head_dim, static_cast<float>(scale), ranges, n, oh, qf.data(), acc.data());
            } else {
              attend<scalar_t, scalar_t>(qh, paged_row, head_dim, static_cast<float>(scale), ranges, n, oh, qf.data(), acc.data());
            }
          }
        }
      }
    });
  });
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("hat_attention", &hat_attention, "HatLLM IN/CR paged attention"); }
