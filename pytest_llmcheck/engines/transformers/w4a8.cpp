// INT4 weights x INT8 activations: the ``int4-a8`` recipe's matrix product (and its RMSNorm,
// at the end), with an AVX512-VNNI body and an AVX2 body that compute the same bits.
//
// torch's CPU INT4 kernel dequantizes every weight to fp32 before multiplying by bf16
// activations (about 15 instructions per 64 products); llama.cpp instead quantizes the
// activations to int8 in blocks and multiplies integers. This kernel does the latter on
// torchao's INT4 weights, repacked once at load:
//
//   weight  w[n][k] = (q - 8) * scale[g][n] + zero[g][n],   q in 0..15, g = k / group
//   input   x[k]   ~= qa[k] * sa[g],   qa in -127..127,  sa = max|x| over the group / 127
//   output  y[n]    = sum_g sa[g] * (scale[g][n] * (sum_k q*qa - 8*sum_k qa) + zero[g][n] * sum_k qa)
//
// Why two bodies give one answer: the sums over k are integers (exact in int32 whatever the
// instructions: VNNI's dpbusd, or AVX2's maddubs + madd, whose 16-bit sums of at most 8
// products stay within 8 * 15 * 127 and never saturate), and everything after them is the
// same IEEE fp32 operations per output, in the same order, in both (fp contraction is off: no
// fused multiply-add the source does not write). So an answer recorded on an AVX512-VNNI
// machine holds on an AVX2-only CI runner. The body is VNNI where the CPU has it (the answers
// are the same either way); ``w4a8_body`` or LLMCHECK_W4A8_BODY=avx2 picks AVX2 anyway, the
// stand-in for such a runner. Each output is computed by one thread in a fixed order, so the
// result does not depend on the thread count either.
//
// Layout (see repack in w4a8.py): ``packed`` is uint8 [N/16][K/8][64]; byte 4*n+j of a
// 64-byte tile holds q[n][8t+j] in its low nibble and q[n][8t+4+j] in its high nibble, so
// one AND (and one shift) yields, per 32-bit lane n, the 4 consecutive weights that a dot
// product instruction multiplies by 4 activation bytes. ``sz`` is bf16 [N/16][K/group][2][16]
// (16 scales, then 16 zeros; bf16 as torchao keeps them: at one token per step the kernel
// is bound by the bytes it reads).

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <immintrin.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

namespace {

constexpr int64_t kTileN = 16;

// the bodies of the product; kNone: this CPU has not even AVX2 + FMA
enum Body : int { kNone = 0, kAvx2 = 1, kVnni = 2 };

bool cpu_has(Body body) {
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (body == kAvx2) return avx2;
  return avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
}

const char* body_name(int body) { return body == kVnni ? "avx512-vnni" : body == kAvx2 ? "avx2" : "none"; }

// the fastest body here, unless LLMCHECK_W4A8_BODY names one (avx2: an AVX2-only CPU's)
int first_body() {
  const char* asked = std::getenv("LLMCHECK_W4A8_BODY");
  if (asked && std::string(asked) == "avx2" && cpu_has(kAvx2)) return kAvx2;
  if (cpu_has(kVnni)) return kVnni;
  return cpu_has(kAvx2) ? kAvx2 : kNone;
}

std::atomic<int> g_body{first_body()};

#define VNNI_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")))
#define AVX2_TARGET __attribute__((target("avx2,fma")))

// per group: int8 activations, their scale and their sum. A group holding a NaN or an
// infinity gets a NaN scale (its outputs are NaN, not plausible numbers); a group too small
// to scale (max |x| / 127 below the smallest normal float) counts as zeros. AVX2's target
// (called only where a body runs): rounding and min/max inline, not libm calls per value;
// the same exact operations either way.
AVX2_TARGET void quantize_row(const c10::BFloat16* x, int64_t K, int64_t group, int8_t* qa, float* sa, int32_t* sq) {
  for (int64_t g = 0; g < K / group; ++g) {
    float amax = 0.f;
    bool bad = false;
    for (int64_t k = g * group; k < (g + 1) * group; ++k) {
      const float v = static_cast<float>(x[k]);
      bad |= !std::isfinite(v);
      const float size = std::fabs(v);
      amax = size > amax ? size : amax;  // fmax's result (a NaN is passed over), without a libm call
    }
    const float scale = amax / 127.f;
    const bool usable = !bad && scale >= std::numeric_limits<float>::min();
    const float inverse = usable ? 1.f / scale : 0.f;
    int32_t sum = 0;
    for (int64_t k = g * group; k < (g + 1) * group; ++k) {
      const float r = std::nearbyint(static_cast<float>(x[k]) * inverse);
      const float above = r > -127.f ? r : -127.f;  // fmin(127, fmax(-127, r)): a NaN becomes -127
      const int32_t q = static_cast<int32_t>(above < 127.f ? above : 127.f);
      qa[k] = static_cast<int8_t>(q);
      sum += q;
    }
    sa[g] = bad ? std::numeric_limits<float>::quiet_NaN() : (usable ? scale : 0.f);
    sq[g] = sum;
  }
}

// 16 bf16 values as fp32 (exact: bf16 is fp32's upper half)
VNNI_TARGET inline __m512 load_bf16x16(const c10::BFloat16* p) {
  const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}

AVX2_TARGET inline __m256 load_bf16x8(const c10::BFloat16* p) {
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
}

// 16 outputs of one row: one tile of the weights against one quantized row, into y[16]
VNNI_TARGET void dot_tile_vnni(const uint8_t* packed, const c10::BFloat16* sz, const int8_t* qa, const float* sa,
                               const int32_t* sq, int64_t K, int64_t group, float* y) {
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
    const __m512 scale = load_bf16x16(sz + g * 32);
    const __m512 zero = load_bf16x16(sz + g * 32 + 16);
    const __m512 s = _mm512_set1_ps(sa[g]);
    acc = _mm512_fmadd_ps(_mm512_mul_ps(scale, s), _mm512_cvtepi32_ps(isum), acc);
    acc = _mm512_fmadd_ps(zero, _mm512_set1_ps(sa[g] * static_cast<float>(sq[g])), acc);
  }
  _mm512_storeu_ps(y, acc);
}

// the same 16 outputs with AVX2, for R rows at once (a prompt's rows share each weight's
// unpacking; one token is R = 1): two halves of 8 outputs (bytes 0..31 of a tile are outputs
// 0..7), each 4-byte dot product as maddubs (pairs, in int16) then madd (the pairs' sum, in
// int32), then per row the same fp32 operations per output as dot_tile_vnni. Rows are R
// apart in qa/sa/sq (``row`` elements, ``groups`` scales) and in y (16 floats).
template <int R>
AVX2_TARGET void dot_tile_avx2(const uint8_t* packed, const c10::BFloat16* sz, const int8_t* qa, const float* sa,
                               const int32_t* sq, int64_t K, int64_t group, float* y) {
  const __m256i low = _mm256_set1_epi8(0x0F);
  const __m256i ones = _mm256_set1_epi16(1);
  const int64_t groups = K / group;
  const int64_t tiles_per_group = group / 8;
  __m256 acc[R][2];
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    __m256i isum[R][2];
    for (int r = 0; r < R; ++r) isum[r][0] = isum[r][1] = _mm256_setzero_si256();
    // two tiles (8 weights each) per step: their pairs summed in int16 (|sum| <= 4 * 2 * 15 * 127
    // = 15240, no saturation), then one madd into int32; a group of one tile takes one step alone
    for (int64_t t = 0; t < tiles_per_group; t += 2) {
      const int64_t k8 = g * tiles_per_group + t;
      const int steps = t + 1 < tiles_per_group ? 2 : 1;
      __m256i p[R][2];
      for (int j = 0; j < steps; ++j) {
        const uint8_t* at = packed + (k8 + j) * 64;
        const __m256i v0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(at));
        const __m256i v1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(at + 32));
        const __m256i w0 = _mm256_and_si256(v0, low), w0h = _mm256_and_si256(_mm256_srli_epi16(v0, 4), low);
        const __m256i w1 = _mm256_and_si256(v1, low), w1h = _mm256_and_si256(_mm256_srli_epi16(v1, 4), low);
        for (int r = 0; r < R; ++r) {
          int32_t a_lo, a_hi;
          std::memcpy(&a_lo, qa + r * K + (k8 + j) * 8, 4);
          std::memcpy(&a_hi, qa + r * K + (k8 + j) * 8 + 4, 4);
          const __m256i lo = _mm256_set1_epi32(a_lo), hi = _mm256_set1_epi32(a_hi);
          const __m256i p0 = _mm256_add_epi16(_mm256_maddubs_epi16(w0, lo), _mm256_maddubs_epi16(w0h, hi));
          const __m256i p1 = _mm256_add_epi16(_mm256_maddubs_epi16(w1, lo), _mm256_maddubs_epi16(w1h, hi));
          p[r][0] = j == 0 ? p0 : _mm256_add_epi16(p[r][0], p0);
          p[r][1] = j == 0 ? p1 : _mm256_add_epi16(p[r][1], p1);
        }
      }
      for (int r = 0; r < R; ++r) {
        isum[r][0] = _mm256_add_epi32(isum[r][0], _mm256_madd_epi16(p[r][0], ones));
        isum[r][1] = _mm256_add_epi32(isum[r][1], _mm256_madd_epi16(p[r][1], ones));
      }
    }
    const __m256 scale0 = load_bf16x8(sz + g * 32), scale1 = load_bf16x8(sz + g * 32 + 8);
    const __m256 zero0 = load_bf16x8(sz + g * 32 + 16), zero1 = load_bf16x8(sz + g * 32 + 24);
    for (int r = 0; r < R; ++r) {
      const float sar = sa[r * groups + g];
      const int32_t sqr = sq[r * groups + g];
      const __m256i eight = _mm256_set1_epi32(8 * sqr);
      const __m256 s = _mm256_set1_ps(sar);
      const __m256 zs = _mm256_set1_ps(sar * static_cast<float>(sqr));
      acc[r][0] = _mm256_fmadd_ps(_mm256_mul_ps(scale0, s), _mm256_cvtepi32_ps(_mm256_sub_epi32(isum[r][0], eight)),
                                  acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(_mm256_mul_ps(scale1, s), _mm256_cvtepi32_ps(_mm256_sub_epi32(isum[r][1], eight)),
                                  acc[r][1]);
      acc[r][0] = _mm256_fmadd_ps(zero0, zs, acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(zero1, zs, acc[r][1]);
    }
  }
  for (int r = 0; r < R; ++r) {
    _mm256_storeu_ps(y + r * kTileN, acc[r][0]);
    _mm256_storeu_ps(y + r * kTileN + 8, acc[r][1]);
  }
}

// a prompt's rows per pass of the AVX2 body (each weight unpacked once for all of them); the
// count is a tuning choice (``benchmarks/bench_w4a8_bodies.py`` times the body)
constexpr int64_t kAvx2Rows = 6;
using DotAvx2 = void (*)(const uint8_t*, const c10::BFloat16*, const int8_t*, const float*, const int32_t*,
                         int64_t, int64_t, float*);

at::Tensor w4a8_mm(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& sz,
                   const std::optional<at::Tensor>& bias, int64_t group) {
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 && x.is_contiguous(), "w4a8_mm: x must be contiguous bf16");
  TORCH_CHECK(packed.scalar_type() == at::kByte && packed.dim() == 3 && packed.size(2) == 64 &&
                  packed.is_contiguous(),
              "w4a8_mm: packed must be contiguous uint8 [N/16, K/8, 64]");
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) > 0 && group > 0, "w4a8_mm: empty input or group");
  const int body = g_body.load();
  TORCH_CHECK(body != kNone, "w4a8_mm: this CPU lacks AVX2 and FMA");
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
  // work items: (tile, chunk of rows), a tile's chunks together so that its weights stay in
  // cache over a prompt; one thread computes each output, whatever the thread count
  const int64_t per = body == kVnni ? 1 : kAvx2Rows;
  const int64_t chunks = (M + per - 1) / per;
  at::parallel_for(0, chunks * NB, 4, [&](int64_t begin, int64_t end) {
    alignas(64) float y[kTileN * kAvx2Rows];
    for (int64_t i = begin; i < end; ++i) {
      const int64_t nb = i / chunks;
      const int64_t m0 = (i % chunks) * per;
      const int64_t rows = std::min(per, M - m0);
      const uint8_t* tile = pd + nb * (K / 8) * 64;
      const c10::BFloat16* tsz = sd + nb * groups * 32;
      const int8_t* q = qa.data() + m0 * K;
      const float* s = sa.data() + m0 * groups;
      const int32_t* c = sq.data() + m0 * groups;
      if (body == kVnni) {
        dot_tile_vnni(tile, tsz, q, s, c, K, group, y);
      } else {
        static constexpr DotAvx2 kByRows[] = {dot_tile_avx2<1>, dot_tile_avx2<2>, dot_tile_avx2<3>,
                                             dot_tile_avx2<4>, dot_tile_avx2<5>, dot_tile_avx2<6>};
        static_assert(sizeof(kByRows) / sizeof(kByRows[0]) == kAvx2Rows);
        kByRows[rows - 1](tile, tsz, q, s, c, K, group, y);
      }
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t n = 0; n < kTileN; ++n) {
          const float b = bias_data ? static_cast<float>(bias_data[nb * kTileN + n]) : 0.f;
          od[(m0 + r) * N + nb * kTileN + n] = c10::BFloat16(y[r * kTileN + n] + b);
        }
      }
    }
  });
  return out;
}

// The sum of squares of a row as 16 fp32 lanes (lane i takes k = i, i + 16, ... in order,
// as fma), then those lanes added as GCC's _mm512_reduce_add_ps adds them (halves, quarters,
// pairs), written out in AVX2 so that every CPU with AVX2 sums in this one order; the last
// K % 16 values after that, one by one.
AVX2_TARGET float sum_of_squares(const c10::BFloat16* row, int64_t K) {
  __m256 lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    const __m256 a = load_bf16x8(row + k), b = load_bf16x8(row + k + 8);
    lo = _mm256_fmadd_ps(a, a, lo);
    hi = _mm256_fmadd_ps(b, b, hi);
  }
  const __m256 half = _mm256_add_ps(hi, lo);
  const __m128 quarter = _mm_add_ps(_mm256_extractf128_ps(half, 1), _mm256_castps256_ps128(half));
  const __m128 pair = _mm_add_ps(quarter, _mm_shuffle_ps(quarter, quarter, _MM_SHUFFLE(1, 0, 3, 2)));
  float sum = _mm_cvtss_f32(pair) + _mm_cvtss_f32(_mm_shuffle_ps(pair, pair, _MM_SHUFFLE(1, 1, 1, 1)));
  for (; k < K; ++k) {
    const float v = static_cast<float>(row[k]);
    sum = std::fma(v, v, sum);
  }
  return sum;
}

// RMSNorm as transformers' Llama/Qwen2/GLM modules compute it (fp32 mean of squares, the
// normalized value rounded to bf16, times the bf16 weight), in one call instead of eight:
// at one token per step the norms' small ops cost more than their arithmetic. The sum of
// squares runs in its own fixed order, so the int4-a8 recipe uses this in every forward.
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 && x.is_contiguous(), "rms_norm: x must be contiguous bf16");
  TORCH_CHECK(g_body.load() != kNone, "rms_norm: this CPU lacks AVX2 and FMA");
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
    const float sum = sum_of_squares(row, K);
    const float inverse = 1.f / std::sqrt(sum / static_cast<float>(K) + static_cast<float>(eps));
    for (int64_t k = 0; k < K; ++k) {
      const c10::BFloat16 h(static_cast<float>(row[k]) * inverse);
      od[m * K + k] = c10::BFloat16(static_cast<float>(wd[k]) * static_cast<float>(h));
    }
  }
  return out;
}

// which body w4a8_mm runs: "" asks; "avx2" or "avx512-vnni" sets it where this CPU runs it
// (tests run both bodies on one machine; benchmarks time the AVX2 one an AVX2 runner gets)
std::string w4a8_body(const std::string& body) {
  if (!body.empty()) {
    const Body want = body == "avx2" ? kAvx2 : body == "avx512-vnni" ? kVnni : kNone;
    TORCH_CHECK(want != kNone, "w4a8_body: unknown body '", body, "'; allowed: avx2, avx512-vnni");
    TORCH_CHECK(cpu_has(want), "w4a8_body: this CPU cannot run the ", body, " body");
    g_body.store(want);
  }
  return body_name(g_body.load());
}

}  // namespace

TORCH_LIBRARY(llmcheck, m) {
  m.def("w4a8_mm(Tensor x, Tensor packed, Tensor sz, Tensor? bias, int group) -> Tensor");
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
  m.def("w4a8_body(str body) -> str", &w4a8_body);
}

TORCH_LIBRARY_IMPL(llmcheck, CPU, m) {
  m.impl("w4a8_mm", &w4a8_mm);
  m.impl("rms_norm", &rms_norm);
}
