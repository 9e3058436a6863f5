// INT4 weights x INT8 activations on AVX512-VNNI: the ``int4-a8`` recipe's matrix product
// (and its RMSNorm, at the end).
//
// torch's CPU INT4 kernel dequantizes every weight to fp32 before multiplying by bf16
// activations (about 15 instructions per 64 products); llama.cpp instead quantizes the
// activations to int8 in blocks and multiplies integers with VNNI. This kernel does the
// latter on torchao's INT4 weights, repacked once at load:
//
//   weight  w[n][k] = (q - 8) * scale[g][n] + zero[g][n],   q in 0..15, g = k / group
//   input   x[k]   ~= qa[k] * sa[g],   qa in -127..127,  sa = max|x| over the group / 127
//   output  y[n]    = sum_g sa[g] * (scale[g][n] * (sum_k q*qa - 8*sum_k qa) + zero[g][n] * sum_k qa)
//
// Layout (see repack in w4a8.py): ``packed`` is uint8 [N/16][K/8][64]; byte 4*n+j of a
// 64-byte tile holds q[n][8t+j] in its low nibble and q[n][8t+4+j] in its high nibble, so
// one AND (and one shift) yields, per 32-bit lane n, the 4 consecutive weights that
// _mm512_dpbusd_epi32 multiplies by 4 activation bytes. ``sz`` is bf16 [N/16][K/group][2][16]
// (16 scales, then 16 zeros; bf16 as torchao keeps them: at one token per step the kernel
// is bound by the bytes it reads). Each output is computed by one thread in a fixed order, so
// the result does not depend on the thread count: answers repeat across sessions.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <immintrin.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace {

constexpr int64_t kTileN = 16;

// per group: int8 activations, their scale and their sum. A group holding a NaN or an
// infinity gets a NaN scale (its outputs are NaN, not plausible numbers); a group too small
// to scale (max |x| / 127 below the smallest normal float) counts as zeros.
void quantize_row(const c10::BFloat16* x, int64_t K, int64_t group, int8_t* qa, float* sa, int32_t* sq) {
  for (int64_t g = 0; g < K / group; ++g) {
    float amax = 0.f;
    bool bad = false;
    for (int64_t k = g * group; k < (g + 1) * group; ++k) {
      const float v = static_cast<float>(x[k]);
      bad |= !std::isfinite(v);
      amax = std::fmax(amax, std::fabs(v));
    }
    const float scale = amax / 127.f;
    const bool usable = !bad && scale >= std::numeric_limits<float>::min();
    const float inverse = usable ? 1.f / scale : 0.f;
    int32_t sum = 0;
    for (int64_t k = g * group; k < (g + 1) * group; ++k) {
      const float r = std::nearbyint(static_cast<float>(x[k]) * inverse);
      const int32_t q = static_cast<int32_t>(std::fmin(127.f, std::fmax(-127.f, r)));
      qa[k] = static_cast<int8_t>(q);
      sum += q;
    }
    sa[g] = bad ? std::numeric_limits<float>::quiet_NaN() : (usable ? scale : 0.f);
    sq[g] = sum;
  }
}

// 16 bf16 values as fp32 (exact: bf16 is fp32's upper half)
inline __m512 load_bf16(const c10::BFloat16* p) {
  const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}

// 16 outputs of one row: one tile of the weights against one quantized row
inline __m512 dot_tile(const uint8_t* packed, const c10::BFloat16* sz, const int8_t* qa, const float* sa,
                       const int32_t* sq, int64_t K, int64_t group) {
  const __m512i low = _mm512_set1_epi8(0x0F);
  const int64_t groups = K / group;
  const int64_t tiles_per_group = group / 8;
  __m512 acc = _mm512_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    __m512i isum = _mm512_setzero_si512();
    for (int64_t t = 0; t < tiles_per_group; ++t) {
      const int64_t k8 = g * tiles_per_group + t;
      const __m512i v = _mm512_loadu_si512(packed + k8 * 64);
      int32_t a_lo, a_hi;
      std::memcpy(&a_lo, qa + k8 * 8, 4);
      std::memcpy(&a_hi, qa + k8 * 8 + 4, 4);
      isum = _mm512_dpbusd_epi32(isum, _mm512_and_si512(v, low), _mm512_set1_epi32(a_lo));
      isum = _mm512_dpbusd_epi32(isum, _mm512_and_si512(_mm512_srli_epi16(v, 4), low), _mm512_set1_epi32(a_hi));
    }
    // sum (q - 8) * qa = sum q*qa - 8 * sum qa, still exact in int32
    isum = _mm512_sub_epi32(isum, _mm512_set1_epi32(8 * sq[g]));
    const __m512 scale = load_bf16(sz + g * 32);
    const __m512 zero = load_bf16(sz + g * 32 + 16);
    const __m512 s = _mm512_set1_ps(sa[g]);
    acc = _mm512_fmadd_ps(_mm512_mul_ps(scale, s), _mm512_cvtepi32_ps(isum), acc);
    acc = _mm512_fmadd_ps(zero, _mm512_set1_ps(sa[g] * static_cast<float>(sq[g])), acc);
  }
  return acc;
}

at::Tensor w4a8_mm(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& sz,
                   const std::optional<at::Tensor>& bias, int64_t group) {
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 && x.is_contiguous(), "w4a8_mm: x must be contiguous bf16");
  TORCH_CHECK(packed.scalar_type() == at::kByte && packed.dim() == 3 && packed.size(2) == 64 &&
                  packed.is_contiguous(),
              "w4a8_mm: packed must be contiguous uint8 [N/16, K/8, 64]");
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) > 0 && group > 0, "w4a8_mm: empty input or group");
  const int64_t K = x.size(-1);
  const int64_t M = x.numel() / K;
  const int64_t NB = packed.size(0);
  const int64_t N = NB * kTileN;
  TORCH_CHECK(packed.size(1) * 8 == K && group % 8 == 0 && K % group == 0, "w4a8_mm: shapes do not match");
  TORCH_CHECK(sz.scalar_type() == at::kBFloat16 && sz.is_contiguous() && sz.numel() == NB * (K / group) * 32,
              "w4a8_mm: bad scales");
  const c10::BFloat16* bias_data = nullptr;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->scalar_type() == at::kBFloat16 && bias->is_contiguous() && bias->numel() == N,
                "w4a8_mm: bias must be contiguous bf16 of the output size");
    bias_data = bias->data_ptr<c10::BFloat16>();
  }
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = N;
  at::Tensor out = at::empty(out_shape, x.options());

  const int64_t groups = K / group;
  std::vector<int8_t> qa(M * K);
  std::vector<float> sa(M * groups);
  std::vector<int32_t> sq(M * groups);
  const auto* xd = x.data_ptr<c10::BFloat16>();
  for (int64_t m = 0; m < M; ++m) {
    quantize_row(xd + m * K, K, group, qa.data() + m * K, sa.data() + m * groups, sq.data() + m * groups);
  }
  const auto* pd = packed.data_ptr<uint8_t>();
  const auto* sd = sz.data_ptr<c10::BFloat16>();
  auto* od = out.data_ptr<c10::BFloat16>();
  // work items: (tile, row) pairs, a tile's rows together so that its weights stay in cache
  // over a prompt; one thread computes each output, whatever the thread count
  at::parallel_for(0, M * NB, 4, [&](int64_t begin, int64_t end) {
    alignas(64) float y[kTileN];
    for (int64_t i = begin; i < end; ++i) {
      const int64_t nb = i / M;
      const int64_t m = i % M;
      const __m512 acc = dot_tile(pd + nb * (K / 8) * 64, sd + nb * groups * 32, qa.data() + m * K,
                                  sa.data() + m * groups, sq.data() + m * groups, K, group);
      _mm512_store_ps(y, acc);
      for (int64_t n = 0; n < kTileN; ++n) {
        const float b = bias_data ? static_cast<float>(bias_data[nb * kTileN + n]) : 0.f;
        od[m * N + nb * kTileN + n] = c10::BFloat16(y[n] + b);
      }
    }
  });
  return out;
}

// RMSNorm as transformers' Llama/Qwen2/GLM modules compute it (fp32 mean of squares, the
// normalized value rounded to bf16, times the bf16 weight), in one call instead of eight:
// at one token per step the norms' small ops cost more than their arithmetic. The sum of
// squares runs in its own fixed order, so the int4-a8 recipe uses this in every forward.
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 && x.is_contiguous(), "rms_norm: x must be contiguous bf16");
  const int64_t K = x.size(-1);
  TORCH_CHECK(weight.scalar_type() == at::kBFloat16 && weight.is_contiguous() && weight.numel() == K,
              "rms_norm: weight must be contiguous bf16 of the last dimension's size");
  const int64_t M = x.numel() / K;
  at::Tensor out = at::empty(x.sizes(), x.options());
  const auto* xd = x.data_ptr<c10::BFloat16>();
  const auto* wd = weight.data_ptr<c10::BFloat16>();
  auto* od = out.data_ptr<c10::BFloat16>();
  for (int64_t m = 0; m < M; ++m) {
    const c10::BFloat16* row = xd + m * K;
    __m512 acc = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 16 <= K; k += 16) {
      const __m512 v = load_bf16(row + k);
      acc = _mm512_fmadd_ps(v, v, acc);
    }
    float sum = _mm512_reduce_add_ps(acc);
    for (; k < K; ++k) {
      const float v = static_cast<float>(row[k]);
      sum += v * v;
    }
    const float inverse = 1.f / std::sqrt(sum / static_cast<float>(K) + static_cast<float>(eps));
    for (k = 0; k < K; ++k) {
      const c10::BFloat16 h(static_cast<float>(row[k]) * inverse);
      od[m * K + k] = c10::BFloat16(static_cast<float>(wd[k]) * static_cast<float>(h));
    }
  }
  return out;
}

}  // namespace

TORCH_LIBRARY(llmcheck, m) {
  m.def("w4a8_mm(Tensor x, Tensor packed, Tensor sz, Tensor? bias, int group) -> Tensor");
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
}

TORCH_LIBRARY_IMPL(llmcheck, CPU, m) {
  m.impl("w4a8_mm", &w4a8_mm);
  m.impl("rms_norm", &rms_norm);
}
