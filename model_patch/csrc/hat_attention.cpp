// Paged attention for HatLLM's IN and CR layers on CPU: each query attends to at most two contiguous
// key ranges plus itself, read straight from the layer's slot-major cache rows. No mask tensor, no
// gather. The ranges are hatllm.core.masks.layer_mask written as intervals (tests check they agree).
//
// The inner loops work on one SIMD register of floats at a time (16 on AVX-512, 8 on AVX2, 4 on SSE/NEON)
// through GCC/Clang vector extensions; head sizes are multiples of 16 (all vLLM's CPU head sizes).
// Left to auto-vectorisation, the same loops compiled mostly to scalar FMAs.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <algorithm>
#include <cstring>
#include <vector>

namespace {

// Layer type codes: defined once in hatllm/core/layers.py, passed in by model_patch/kernels.py.
#if !defined(HAT_LAYER_IN) || !defined(HAT_LAYER_CR)
#error "build through model_patch.kernels, which defines HAT_LAYER_IN and HAT_LAYER_CR"
#endif
constexpr int64_t kIN = HAT_LAYER_IN;
constexpr int64_t kCR = HAT_LAYER_CR;
// One vector register's width: GCC lowers a vector type wider than the target's registers through memory
// (64-byte vectors on AVX2 ran the kernel 5-12x slower than 32-byte ones).
#if defined(__AVX512F__)
constexpr int64_t kVectorBytes = 64;
#elif defined(__AVX__)
constexpr int64_t kVectorBytes = 32;
#else
constexpr int64_t kVectorBytes = 16;
#endif
constexpr int64_t kLanes = kVectorBytes / 4;

typedef float floatv __attribute__((vector_size(kVectorBytes)));
typedef uint16_t u16v __attribute__((vector_size(kVectorBytes / 2)));
typedef uint32_t u32v __attribute__((vector_size(kVectorBytes)));
typedef int32_t i32v __attribute__((vector_size(kVectorBytes)));

inline floatv load_lanes(const float* p) {
  floatv v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

inline floatv load_lanes(const c10::BFloat16* p) {  // bf16 is the top half of a float
  u16v half;
  std::memcpy(&half, p, sizeof(half));
  const u32v bits = __builtin_convertvector(half, u32v) << 16;
  floatv v;
  std::memcpy(&v, &bits, sizeof(v));
  return v;
}

template <typename T>  // half, double: element by element
inline floatv load_lanes(const T* p) {
  floatv v;
  for (int i = 0; i < kLanes; ++i) v[i] = static_cast<float>(p[i]);
  return v;
}

inline void store_lanes(float* p, floatv v) { std::memcpy(p, &v, sizeof(v)); }

inline float sum_lanes(floatv v) {
  float s = 0.f;
  for (int i = 0; i < kLanes; ++i) s += v[i];
  return s;
}

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

// e^x for x <= 0 (softmax weights), a register at a time: x = n ln2 + r, |r| <= ln2/2, e^r by a degree-6 polynomial
// (relative error ~2e-7, well inside the tests' tolerance), 2^n by exponent bits.
inline floatv exp_nonpositive(floatv x) {
  x = x < -87.0f ? floatv{} - 87.0f : x;
  const i32v whole = __builtin_convertvector(x * 1.44269504088896341f - 0.5f, i32v);  // round(x log2 e), x <= 0
  const floatv n = __builtin_convertvector(whole, floatv);
  const floatv r = x - n * 0.693145751953125f - n * 1.428606765330187045e-06f;
  floatv p = r * (1.0f / 720) + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const i32v bits = (whole + 127) << 23;
  floatv scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// Scores of keys [a, b) against one (scaled) query, one dot product per key row read in place. Cheap for the
// short ranges (an item's own tokens, the prefix) and for single queries, where transposing would not pay off.
template <typename KeyRow>
void key_scores(KeyRow key_row, const float* qf, int64_t head_dim, int64_t a, int64_t b, float* scores) {
  for (int64_t k = a; k < b; ++k) {
    const auto* key = key_row(k);
    floatv acc0 = {}, acc1 = {};
    int64_t d = 0;
    for (; d + 2 * kLanes <= head_dim; d += 2 * kLanes) {
      acc0 += load_lanes(qf + d) * load_lanes(key + d);
      acc1 += load_lanes(qf + d + kLanes) * load_lanes(key + d + kLanes);
    }
    if (d < head_dim) acc0 += load_lanes(qf + d) * load_lanes(key + d);
    scores[k - a] = sum_lanes(acc0 + acc1);
  }
}

// Keys per tile of the transposed path: a tile's scores stay in vector registers while the head dimension
// is walked, so there is no horizontal sum per key and the tile's FMAs are independent.
constexpr int64_t kTile = 4 * kLanes;
// Ranges at least this long are scored from the transposed keys, when enough query heads share the transposition.
constexpr int64_t kLongRange = 32;
constexpr int64_t kMinTransposedQueries = 32;

// Scores of keys [a, b) from keys transposed into `kt` ([head_dim][stride] floats, zero-padded past the keys).
void key_scores_transposed(const float* kt, int64_t stride, const float* qf, int64_t head_dim, int64_t a, int64_t b,
                           float* scores) {
  for (int64_t k0 = a; k0 < b; k0 += kTile) {
    floatv t0 = {}, t1 = {}, t2 = {}, t3 = {};
    for (int64_t d = 0; d < head_dim; ++d) {
      const float* row = kt + d * stride + k0;
      const float qd = qf[d];
      t0 += qd * load_lanes(row);
      t1 += qd * load_lanes(row + kLanes);
      t2 += qd * load_lanes(row + 2 * kLanes);
      t3 += qd * load_lanes(row + 3 * kLanes);
    }
    float tile[kTile];
    store_lanes(tile, t0), store_lanes(tile + kLanes, t1), store_lanes(tile + 2 * kLanes, t2), store_lanes(tile + 3 * kLanes, t3);
    std::memcpy(scores + (k0 - a), tile, sizeof(float) * std::min(kTile, b - k0));
  }
}

// Scores -> unnormalised softmax weights in place; returns their sum. `scores` has room for m rounded up to kLanes.
inline float softmax_weights(float* scores, int64_t m) {
  float running_max = scores[0];
  for (int64_t i = 1; i < m; ++i) running_max = std::max(running_max, scores[i]);
  floatv sum = {};
  int64_t i = 0;
  for (; i + kLanes <= m; i += kLanes) {
    const floatv w = exp_nonpositive(load_lanes(scores + i) - running_max);
    store_lanes(scores + i, w);
    sum += w;
  }
  if (i < m) {  // the tail, in the spare room after the scores; lanes past m do not count
    floatv w = exp_nonpositive(load_lanes(scores + i) - running_max);
    for (int64_t lane = m - i; lane < kLanes; ++lane) w[lane] = 0.f;
    store_lanes(scores + i, w);
    sum += w;
  }
  return sum_lanes(sum);
}

// out[d0 : d0 + kLanes * kChunks] = sum of weights[m] * value(k)[same dims] over the ranges, divided by `sum`;
// two keys at a time into separate accumulators, so consecutive keys' FMAs do not wait on each other.
template <int kChunks, typename scalar_t, typename ValueRow>
void weighted_values_chunk(ValueRow value, int64_t d0, const std::pair<int64_t, int64_t>* ranges, int num_ranges,
                           const float* weights, float sum, scalar_t* out) {
  floatv even[kChunks] = {}, odd[kChunks] = {};
  int64_t m = 0;
  for (int r = 0; r < num_ranges; ++r) {
    int64_t k = ranges[r].first;
    for (; k + 1 < ranges[r].second; k += 2, m += 2) {
      const auto* v0 = value(k) + d0;
      const auto* v1 = value(k + 1) + d0;
      for (int c = 0; c < kChunks; ++c) {
        even[c] += weights[m] * load_lanes(v0 + c * kLanes);
        odd[c] += weights[m + 1] * load_lanes(v1 + c * kLanes);
      }
    }
    if (k < ranges[r].second) {
      const auto* v0 = value(k) + d0;
      for (int c = 0; c < kChunks; ++c) even[c] += weights[m] * load_lanes(v0 + c * kLanes);
      ++m;
    }
  }
  for (int c = 0; c < kChunks; ++c) {
    const floatv result = (even[c] + odd[c]) / sum;
    for (int i = 0; i < kLanes; ++i) out[d0 + c * kLanes + i] = static_cast<scalar_t>(result[i]);
  }
}

template <typename scalar_t, typename ValueRow>
void weighted_values(ValueRow value, int64_t head_dim, const std::pair<int64_t, int64_t>* ranges, int num_ranges,
                     const float* weights, float sum, scalar_t* out) {
  int64_t d0 = 0;
  for (; d0 + 4 * kLanes <= head_dim; d0 += 4 * kLanes)
    weighted_values_chunk<4>(value, d0, ranges, num_ranges, weights, sum, out);
  for (; d0 < head_dim; d0 += kLanes) weighted_values_chunk<1>(value, d0, ranges, num_ranges, weights, sum, out);
}

}  // namespace

// query [N, H, D]; rows [slots, Hkv, 2D] (K then V per head); output [N, H, D]; query_start_loc [R + 1],
// seq_lens [R], block_table [R, B] (int32); query_pos, starts, first_item [N] (int64).
// Work is split by (request, kv head).
void hat_attention(torch::Tensor query, torch::Tensor rows, torch::Tensor output, torch::Tensor query_start_loc,
                   torch::Tensor seq_lens, torch::Tensor query_pos, torch::Tensor starts, torch::Tensor first_item,
                   torch::Tensor block_table, int64_t block_size, double scale, int64_t layer_type) {
  TORCH_CHECK(layer_type == kIN || layer_type == kCR, "layer_type must be the code of IN (", kIN, ") or CR (", kCR, ")");
  const int64_t heads = query.size(1), head_dim = query.size(2);
  const int64_t kv_heads = rows.size(1), group = heads / kv_heads;
  const int64_t num_requests = seq_lens.size(0);
  TORCH_CHECK(head_dim % 16 == 0, "head size must be a multiple of 16, got ", head_dim);
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
      std::vector<float> qf(head_dim), scores, kt;
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
        auto value = [&](int64_t k) { return key_rows[k] + head_dim; };
        scores.resize(len + kLanes);
        // Keys of the job transposed into kt on first need, when enough query heads share the cost.
        const bool may_transpose = (last_token - first_token) * group >= kMinTransposedQueries;
        bool transposed = false;
        const int64_t stride = (len + kTile - 1) / kTile * kTile + kTile;  // a tile may start anywhere below len
        for (int64_t t = first_token; t < last_token; ++t) {
          std::pair<int64_t, int64_t> ranges[2];
          const int n = key_ranges(layer_type, position[t], start[t], first[t], ranges);
          const bool long_range = std::any_of(ranges, ranges + n, [](auto range) { return range.second - range.first >= kLongRange; });
          if (long_range && may_transpose && !transposed) {
            kt.assign(head_dim * stride, 0.f);
            for (int64_t k = 0; k < len; ++k)
              for (int64_t d = 0; d < head_dim; ++d) kt[d * stride + k] = static_cast<float>(key_rows[k][d]);
            transposed = true;
          }
          for (int64_t h = kvh * group; h < (kvh + 1) * group; ++h) {
            const scalar_t* qh = q + t * q_stride + h * head_dim;
            for (int64_t d = 0; d < head_dim; ++d) qf[d] = static_cast<float>(qh[d]) * static_cast<float>(scale);
            int64_t m = 0;
            for (int i = 0; i < n; ++i) {
              const auto [a, b] = ranges[i];
              if (transposed && b - a >= kLongRange) key_scores_transposed(kt.data(), stride, qf.data(), head_dim, a, b, scores.data() + m);
              else key_scores(paged_row, qf.data(), head_dim, a, b, scores.data() + m);
              m += b - a;
            }
            const float sum = softmax_weights(scores.data(), m);
            weighted_values(value, head_dim, ranges, n, scores.data(), sum, out + t * o_stride + h * head_dim);
          }
        }
      }
    });
  });
}

// Writes each token's key and value into its slot's row: rows[slot, h] = K | V. key, value [N', Hkv, D]
// (N' >= N), slot_mapping [N] (int64; -1 = padding, skipped).
void hat_cache_update(torch::Tensor key, torch::Tensor value, torch::Tensor rows, torch::Tensor slot_mapping) {
  const int64_t kv_heads = rows.size(1), head_dim = key.size(2);
  const int64_t n = std::min<int64_t>(slot_mapping.size(0), key.size(0));
  TORCH_CHECK(rows.stride(1) == 2 * head_dim && rows.stride(2) == 1, "cache rows must be contiguous per slot");
  TORCH_CHECK(key.stride(2) == 1 && value.stride(2) == 1, "key and value heads must be contiguous");
  TORCH_CHECK(key.scalar_type() == rows.scalar_type() && value.scalar_type() == rows.scalar_type(),
              "key, value and cache must share a dtype");
  auto slots = slot_mapping.accessor<int64_t, 1>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, rows.scalar_type(), "hat_cache_update", [&] {
    const scalar_t* k = key.data_ptr<scalar_t>();
    const scalar_t* v = value.data_ptr<scalar_t>();
    scalar_t* out = rows.data_ptr<scalar_t>();
    for (int64_t t = 0; t < n; ++t) {
      if (slots[t] < 0) continue;
      for (int64_t h = 0; h < kv_heads; ++h) {
        scalar_t* row = out + slots[t] * rows.stride(0) + h * 2 * head_dim;
        std::memcpy(row, k + t * key.stride(0) + h * key.stride(1), sizeof(scalar_t) * head_dim);
        std::memcpy(row + head_dim, v + t * value.stride(0) + h * value.stride(1), sizeof(scalar_t) * head_dim);
      }
    }
  });
}

// Item segments of one engine step, the rules of hatllm.core.masks.item_starts applied token by token from
// the carried state (tests/test_hat_kernel.py checks they agree over chunked multi-step requests): per
// request, the state of its previous token is read at that token's slot (carry: start of the item still open,
// first: P), each new token gets its item start (an item-open token starts an item, a close token still
// belongs to it, tokens outside items get pos + 1) and P (the request's first item position, the same for all
// its tokens of the step), and the state after each token is written at its slot. ids, positions, slots [N]
// int64; query_start_loc [R + 1] int32; block_table [R, B] int32; carry, first [num_slots] int32. Returns
// item starts and P, [N] int64 each.
std::vector<torch::Tensor> hat_segments(torch::Tensor ids, torch::Tensor positions, torch::Tensor slots,
                                        torch::Tensor query_start_loc, torch::Tensor block_table, int64_t block_size,
                                        int64_t open_id, int64_t close_id, torch::Tensor carry, torch::Tensor first,
                                        int64_t no_open, int64_t no_first) {
  const int64_t n = ids.size(0), num_reqs = query_start_loc.size(0) - 1;
  auto starts = torch::empty({n}, ids.options());
  auto first_item = torch::empty({n}, ids.options());
  auto id = ids.accessor<int64_t, 1>();
  auto pos = positions.accessor<int64_t, 1>();
  auto slot = slots.accessor<int64_t, 1>();
  auto qsl = query_start_loc.accessor<int32_t, 1>();
  auto table = block_table.accessor<int32_t, 2>();
  auto start_out = starts.accessor<int64_t, 1>();
  auto first_out = first_item.accessor<int64_t, 1>();
  int32_t* carry_at = carry.data_ptr<int32_t>();
  int32_t* first_at = first.data_ptr<int32_t>();
  for (int64_t r = 0; r < num_reqs; ++r) {
    const int64_t b0 = qsl[r], b1 = std::min<int64_t>(qsl[r + 1], n);
    if (b1 <= b0) continue;
    int64_t open = no_open, p = no_first;
    if (pos[b0] > 0) {
      const int64_t prev = pos[b0] - 1;
      const int64_t prev_slot = int64_t(table[r][prev / block_size]) * block_size + prev % block_size;
      open = carry_at[prev_slot];
      p = first_at[prev_slot];
    }
    for (int64_t t = b0; t < b1; ++t)
      if (id[t] == open_id) p = std::min(p, pos[t]);
    for (int64_t t = b0; t < b1; ++t) {
      if (id[t] == open_id) open = pos[t];
      start_out[t] = open != no_open ? open : pos[t] + 1;
      first_out[t] = p;
      if (id[t] == close_id) open = no_open;
      if (slot[t] < 0) continue;
      carry_at[slot[t]] = int32_t(open);
      first_at[slot[t]] = int32_t(pos[t] >= p ? p : no_first);
    }
  }
  return {starts, first_item};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("hat_segments", &hat_segments, "item starts and P of a step's tokens; records each token's state at its slot");
  m.def("hat_attention", &hat_attention, "HatLLM IN/CR paged attention");
  m.def("hat_cache_update", &hat_cache_update, "write keys and values into slot-major cache rows");
}
