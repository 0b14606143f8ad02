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

template <typename scalar_t>
void attend(const scalar_t* q, const scalar_t* rows, const int32_t* blocks, int64_t block_size,
            int64_t row_stride, int64_t head_offset, int64_t head_dim, float scale,
            const std::pair<int64_t, int64_t>* ranges, int num_ranges, scalar_t* out, float* qf, float* acc) {
  for (int64_t d = 0; d < head_dim; ++d) qf[d] = static_cast<float>(q[d]) * scale;
  std::fill(acc, acc + head_dim, 0.f);
  float running_max = -std::numeric_limits<float>::infinity(), denom = 0.f;
  for (int r = 0; r < num_ranges; ++r) {
    for (int64_t k = ranges[r].first; k < ranges[r].second; ++k) {
      const int64_t slot = static_cast<int64_t>(blocks[k / block_size]) * block_size + k % block_size;
      const scalar_t* key = rows + slot * row_stride + head_offset;
      const scalar_t* value = key + head_dim;
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

// query [N, H, D]; rows [slots, Hkv, 2D] (K then V per head); output [N, H, D];
// token_request [N], query_pos [N], starts [N], first_item [N] (int64); block_table [R, B] (int32).
void hat_attention(torch::Tensor query, torch::Tensor rows, torch::Tensor output, torch::Tensor token_request,
                   torch::Tensor query_pos, torch::Tensor starts, torch::Tensor first_item,
                   torch::Tensor block_table, int64_t block_size, double scale, int64_t layer_type) {
  TORCH_CHECK(layer_type == kIN || layer_type == kCR, "layer_type must be IN (0) or CR (2)");
  const int64_t num_tokens = query.size(0), heads = query.size(1), head_dim = query.size(2);
  const int64_t kv_heads = rows.size(1), group = heads / kv_heads;
  const int64_t row_stride = rows.stride(0);
  TORCH_CHECK(rows.stride(1) == 2 * head_dim && rows.stride(2) == 1, "cache rows must be contiguous per slot");
  TORCH_CHECK(query.stride(1) == head_dim && query.stride(2) == 1, "query heads must be contiguous per token");
  TORCH_CHECK(output.stride(1) == head_dim && output.stride(2) == 1, "output heads must be contiguous per token");
  TORCH_CHECK(rows.scalar_type() == query.scalar_type() && output.scalar_type() == query.scalar_type(),
              "query, cache and output must share a dtype");
  auto request = token_request.accessor<int64_t, 1>();
  auto position = query_pos.accessor<int64_t, 1>();
  auto start = starts.accessor<int64_t, 1>();
  auto first = first_item.accessor<int64_t, 1>();
  const int32_t* table = block_table.data_ptr<int32_t>();
  const int64_t table_stride = block_table.stride(0);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, query.scalar_type(), "hat_attention", [&] {
    const scalar_t* q = query.data_ptr<scalar_t>();
    const scalar_t* kv = rows.data_ptr<scalar_t>();
    scalar_t* out = output.data_ptr<scalar_t>();
    const int64_t q_stride = query.stride(0), o_stride = output.stride(0);
    at::parallel_for(0, num_tokens * heads, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> qf(head_dim), acc(head_dim);
      for (int64_t job = begin; job < end; ++job) {
        const int64_t t = job / heads, h = job % heads;
        const int64_t qp = position[t], s = start[t], p = first[t];
        std::pair<int64_t, int64_t> ranges[3];
        int n = 0;
        if (layer_type == kIN) {  // k < P, or s <= k <= q, or k == q
          const int64_t prefix_end = std::min(p, qp + 1);
          ranges[n++] = {0, prefix_end};
          const int64_t own = std::max(s, prefix_end);
          if (own <= qp) ranges[n++] = {own, qp + 1};
          else if (prefix_end <= qp) ranges[n++] = {qp, qp + 1};
        } else {  // CR: k < s, or k == q
          const int64_t before = std::min(s, qp + 1);
          ranges[n++] = {0, before};
          if (before <= qp) ranges[n++] = {qp, qp + 1};
        }
        attend<scalar_t>(q + t * q_stride + h * head_dim, kv, table + request[t] * table_stride, block_size,
                         row_stride, (h / group) * 2 * head_dim, head_dim, static_cast<float>(scale), ranges, n,
                         out + t * o_stride + h * head_dim, qf.data(), acc.data());
      }
    });
  });
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("hat_attention", &hat_attention, "HatLLM IN/CR paged attention"); }
