// The lean decode loop's per-token step (fastpath.FastDecoder.step) in C++.
//
// At one token per step a small model's step is some 35 small ATen calls per layer; from
// Python each costs a few microseconds of argument parsing and dispatch before its kernel
// runs, about a fifth of SmolLM2's time per token. This file makes the very same ATen calls,
// in the same order, on the same tensors, from C++: the kernels and their inputs are the
// ones the Python step uses, so the logits are bit for bit the same (checked at load against
// the model's own forward, as the Python step is). Nothing here computes on its own: every
// number comes out of an ATen operator or, for the int4-a8 recipe, out of that recipe's ops
// (llmcheck::w4a8_mm, llmcheck::rms_norm), called through the dispatcher, with one
// exception: torch's INT4 product in its AVX2 layout (the one portable numerics use), below.
//
// Built without architecture flags (-O2): it runs wherever torch runs; the INT4 product is
// compiled for AVX2 + FMA on its own and used only on a CPU that has them.

#include <ATen/Parallel.h>
#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/_weight_int4pack_mm_for_cpu.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/embedding.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/mv.h>
#include <ATen/ops/roll.h>
#include <ATen/ops/rsqrt.h>
#include <ATen/ops/scaled_dot_product_attention.h>
#include <ATen/ops/silu.h>
#include <ATen/ops/split_with_sizes.h>
#include <torch/custom_class.h>
#include <torch/library.h>

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

namespace {


// ---------------------------------------------------------------------------------------
// torch's CPU INT4 product (aten::_weight_int4pack_mm_for_cpu) in its AVX2 layout, with the
// same arithmetic, faster.
//
// Why our own: with ATen held to AVX2 (portable numerics) torch's kernel multiplies about 8
// billion weights a second on one core of this project's AMD EPYC, against 18 billion for its
// AVX-512 kernel, which computes other numbers (it dequantizes (q - 8) * scale + zero instead
// of q * scale + (zero - 8 * scale)). The decode loop reads every weight once per token, so
// at 1.5B parameters that product was most of a token's time. This one computes, for every
// output n, exactly the sequence of roundings torch's AVX2 kernel does:
//
//   s, z   = fp32 of the group's bf16 scale and zero;  z' = fma(s, -8, z)
//   w[k]   = fma(float(q[k]), s, z')                    (q in 0..15)
//   acc    = 0;  acc = fma(x[k], w[k], acc)  for k = 0 .. K-1 in order
//   y[n]   = bf16 of acc, rounded to nearest even (a NaN becomes 0xFFFF, as torch's does)
//
// Each output is one SIMD lane's sequence, so neither the instructions' width nor the thread
// count matters: the result is torch's, bit for bit (tests compare them; the decode loop's
// check at load compares the logits). What is faster: x is converted to fp32 once, not once
// per block of outputs; a group's scales once per group, two integer ops per 8; each weight
// byte is read once and unpacked with one widening load. An AVX-512 body (16 lanes, 4 blocks
// a pass) gave the same bits but was slower on this project's AMD EPYC (double-pumped 512-bit
// units; 17.6 against 13.7 ms a Qwen2-7B layer), so there is one body.
// Layout (torch's weight_to_int4pack_kernel with AVX2): packed uint8 [N/32][K][16], byte d of
// a row holds output d in its low nibble and output d + 16 in its high one; scale_zero bf16
// [K/group][N][2]. Only N a multiple of 32 (no partial block) is taken here.
// ---------------------------------------------------------------------------------------

constexpr int64_t kInt4Block = 32;
constexpr int64_t kInt4Rows = 96;  // a prompt's rows per pass over the weights

inline uint16_t bf16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if (std::isnan(f)) return 0xFFFF;
  return static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

// A group's scales and z' = fma(s, -8, z) for 8 (16) outputs, as torch's load_scale_and_zeros
// computes them: each (scale, zero) bf16 pair is one 32-bit lane, scale in its low half.
__attribute__((target("avx2,fma"))) inline void scales8(const c10::BFloat16* sz, __m256& s, __m256& z) {
  const __m256i pair = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(sz));
  s = _mm256_castsi256_ps(_mm256_slli_epi32(pair, 16));
  z = _mm256_fmadd_ps(s, _mm256_set1_ps(-8.0f),
                      _mm256_castsi256_ps(_mm256_and_si256(pair, _mm256_set1_epi32(static_cast<int>(0xFFFF0000u)))));
}

__attribute__((target("avx2,fma"))) void int4_block_avx2(const float* x, const uint8_t* B,
                                                          const c10::BFloat16* SZ, int64_t N, int64_t K,
                                                          int64_t group, float* out) {
  const __m256i low = _mm256_set1_epi32(0xF);
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  __m256 acc2 = _mm256_setzero_ps(), acc3 = _mm256_setzero_ps();
  for (int64_t g = 0; g < K / group; ++g) {
    const c10::BFloat16* sz = SZ + g * N * 2;
    __m256 s0, s1, s2, s3, z0, z1, z2, z3;
    scales8(sz, s0, z0);
    scales8(sz + 16, s1, z1);
    scales8(sz + 32, s2, z2);
    scales8(sz + 48, s3, z3);
    for (int64_t k = g * group; k < (g + 1) * group; ++k) {
      const __m256 a = _mm256_broadcast_ss(x + k);
      const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(B + k * 16));
      const __m256i lo = _mm256_cvtepu8_epi32(b);                        // bytes 0..7
      const __m256i hi = _mm256_cvtepu8_epi32(_mm_unpackhi_epi64(b, b));  // bytes 8..15
      acc0 = _mm256_fmadd_ps(a, _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(lo, low)), s0, z0), acc0);
      acc1 = _mm256_fmadd_ps(a, _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(hi, low)), s1, z1), acc1);
      acc2 = _mm256_fmadd_ps(a, _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(lo, 4)), s2, z2), acc2);
      acc3 = _mm256_fmadd_ps(a, _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(hi, 4)), s3, z3), acc3);
    }
  }
  _mm256_storeu_ps(out, acc0);
  _mm256_storeu_ps(out + 8, acc1);
  _mm256_storeu_ps(out + 16, acc2);
  _mm256_storeu_ps(out + 24, acc3);
}

// Up to kInt4Rows rows of a prompt (M > 1) against one block: each group's 32 x 32 weights
// dequantized once into a tile (the same w = fma(q, s, z') values), then every row's outputs
// go on from where the previous group left them, three rows at a time (12 independent sums
// hide the FMA latency; then pairs, then one). Per output the sequence is the one above:
// acc = fma(x[k], w[k], acc), k in order. The caller keeps a chunk of rows for all its
// blocks, so the rows stay in cache. The unpacking repeats int4_block_avx2's on purpose: a
// shared helper returning the four vectors through memory made one token 3x slower here
// (8.73 against 2.62 ms a Qwen2-1.5B layer, bench_int4_product.py).
__attribute__((target("avx2,fma"))) void int4_rows_avx2(const float* x, const uint8_t* B,
                                                         const c10::BFloat16* SZ, int64_t N, int64_t K,
                                                         int64_t group, int64_t M, float* acc) {
  const __m256i low = _mm256_set1_epi32(0xF);
  alignas(32) float tile[256 * kInt4Block];  // the largest group torch packs: 256
  for (int64_t i = 0; i < M * kInt4Block; ++i) acc[i] = 0.f;
  for (int64_t g = 0; g < K / group; ++g) {
    const c10::BFloat16* sz = SZ + g * N * 2;
    __m256 s0, s1, s2, s3, z0, z1, z2, z3;
    scales8(sz, s0, z0);
    scales8(sz + 16, s1, z1);
    scales8(sz + 32, s2, z2);
    scales8(sz + 48, s3, z3);
    for (int64_t k = 0; k < group; ++k) {
      const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(B + (g * group + k) * 16));
      const __m256i lo = _mm256_cvtepu8_epi32(b);
      const __m256i hi = _mm256_cvtepu8_epi32(_mm_unpackhi_epi64(b, b));
      float* t = tile + k * kInt4Block;
      _mm256_storeu_ps(t, _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(lo, low)), s0, z0));
      _mm256_storeu_ps(t + 8, _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(hi, low)), s1, z1));
      _mm256_storeu_ps(t + 16, _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(lo, 4)), s2, z2));
      _mm256_storeu_ps(t + 24, _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(hi, 4)), s3, z3));
    }
    const float* xg = x + g * group;
    int64_t m = 0;
    for (; m + 3 <= M; m += 3) {
      float* c0 = acc + m * kInt4Block;
      float* c1 = c0 + kInt4Block;
      float* c2 = c1 + kInt4Block;
      __m256 a00 = _mm256_loadu_ps(c0), a01 = _mm256_loadu_ps(c0 + 8);
      __m256 a02 = _mm256_loadu_ps(c0 + 16), a03 = _mm256_loadu_ps(c0 + 24);
      __m256 a10 = _mm256_loadu_ps(c1), a11 = _mm256_loadu_ps(c1 + 8);
      __m256 a12 = _mm256_loadu_ps(c1 + 16), a13 = _mm256_loadu_ps(c1 + 24);
      __m256 a20 = _mm256_loadu_ps(c2), a21 = _mm256_loadu_ps(c2 + 8);
      __m256 a22 = _mm256_loadu_ps(c2 + 16), a23 = _mm256_loadu_ps(c2 + 24);
      const float* x0 = xg + m * K;
      const float* x1 = x0 + K;
      const float* x2 = x1 + K;
      for (int64_t k = 0; k < group; ++k) {
        const float* t = tile + k * kInt4Block;
        const __m256 v0 = _mm256_broadcast_ss(x0 + k), v1 = _mm256_broadcast_ss(x1 + k);
        const __m256 v2 = _mm256_broadcast_ss(x2 + k);
        a00 = _mm256_fmadd_ps(v0, _mm256_load_ps(t), a00);
        a10 = _mm256_fmadd_ps(v1, _mm256_load_ps(t), a10);
        a20 = _mm256_fmadd_ps(v2, _mm256_load_ps(t), a20);
        a01 = _mm256_fmadd_ps(v0, _mm256_load_ps(t + 8), a01);
        a11 = _mm256_fmadd_ps(v1, _mm256_load_ps(t + 8), a11);
        a21 = _mm256_fmadd_ps(v2, _mm256_load_ps(t + 8), a21);
        a02 = _mm256_fmadd_ps(v0, _mm256_load_ps(t + 16), a02);
        a12 = _mm256_fmadd_ps(v1, _mm256_load_ps(t + 16), a12);
        a22 = _mm256_fmadd_ps(v2, _mm256_load_ps(t + 16), a22);
        a03 = _mm256_fmadd_ps(v0, _mm256_load_ps(t + 24), a03);
        a13 = _mm256_fmadd_ps(v1, _mm256_load_ps(t + 24), a13);
        a23 = _mm256_fmadd_ps(v2, _mm256_load_ps(t + 24), a23);
      }
      _mm256_storeu_ps(c0, a00), _mm256_storeu_ps(c0 + 8, a01);
      _mm256_storeu_ps(c0 + 16, a02), _mm256_storeu_ps(c0 + 24, a03);
      _mm256_storeu_ps(c1, a10), _mm256_storeu_ps(c1 + 8, a11);
      _mm256_storeu_ps(c1 + 16, a12), _mm256_storeu_ps(c1 + 24, a13);
      _mm256_storeu_ps(c2, a20), _mm256_storeu_ps(c2 + 8, a21);
      _mm256_storeu_ps(c2 + 16, a22), _mm256_storeu_ps(c2 + 24, a23);
    }
    for (; m + 2 <= M; m += 2) {
      float* c0 = acc + m * kInt4Block;
      float* c1 = c0 + kInt4Block;
      __m256 a00 = _mm256_loadu_ps(c0), a01 = _mm256_loadu_ps(c0 + 8);
      __m256 a02 = _mm256_loadu_ps(c0 + 16), a03 = _mm256_loadu_ps(c0 + 24);
      __m256 a10 = _mm256_loadu_ps(c1), a11 = _mm256_loadu_ps(c1 + 8);
      __m256 a12 = _mm256_loadu_ps(c1 + 16), a13 = _mm256_loadu_ps(c1 + 24);
      const float* x0 = xg + m * K;
      const float* x1 = x0 + K;
      for (int64_t k = 0; k < group; ++k) {
        const float* t = tile + k * kInt4Block;
        const __m256 w0 = _mm256_loadu_ps(t), w1 = _mm256_loadu_ps(t + 8);
        const __m256 w2 = _mm256_loadu_ps(t + 16), w3 = _mm256_loadu_ps(t + 24);
        const __m256 v0 = _mm256_broadcast_ss(x0 + k), v1 = _mm256_broadcast_ss(x1 + k);
        a00 = _mm256_fmadd_ps(v0, w0, a00);
        a01 = _mm256_fmadd_ps(v0, w1, a01);
        a02 = _mm256_fmadd_ps(v0, w2, a02);
        a03 = _mm256_fmadd_ps(v0, w3, a03);
        a10 = _mm256_fmadd_ps(v1, w0, a10);
        a11 = _mm256_fmadd_ps(v1, w1, a11);
        a12 = _mm256_fmadd_ps(v1, w2, a12);
        a13 = _mm256_fmadd_ps(v1, w3, a13);
      }
      _mm256_storeu_ps(c0, a00), _mm256_storeu_ps(c0 + 8, a01);
      _mm256_storeu_ps(c0 + 16, a02), _mm256_storeu_ps(c0 + 24, a03);
      _mm256_storeu_ps(c1, a10), _mm256_storeu_ps(c1 + 8, a11);
      _mm256_storeu_ps(c1 + 16, a12), _mm256_storeu_ps(c1 + 24, a13);
    }
    for (; m < M; ++m) {
      float* c0 = acc + m * kInt4Block;
      __m256 a00 = _mm256_loadu_ps(c0), a01 = _mm256_loadu_ps(c0 + 8);
      __m256 a02 = _mm256_loadu_ps(c0 + 16), a03 = _mm256_loadu_ps(c0 + 24);
      const float* x0 = xg + m * K;
      for (int64_t k = 0; k < group; ++k) {
        const float* t = tile + k * kInt4Block;
        const __m256 v0 = _mm256_broadcast_ss(x0 + k);
        a00 = _mm256_fmadd_ps(v0, _mm256_loadu_ps(t), a00);
        a01 = _mm256_fmadd_ps(v0, _mm256_loadu_ps(t + 8), a01);
        a02 = _mm256_fmadd_ps(v0, _mm256_loadu_ps(t + 16), a02);
        a03 = _mm256_fmadd_ps(v0, _mm256_loadu_ps(t + 24), a03);
      }
      _mm256_storeu_ps(c0, a00), _mm256_storeu_ps(c0 + 8, a01);
      _mm256_storeu_ps(c0 + 16, a02), _mm256_storeu_ps(c0 + 24, a03);
    }
  }
}

// whether this CPU runs int4_mm's body (AVX2 and FMA)
bool int4_cpu() {
  static const bool ok = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return ok;
}

// whether int4_mm takes these tensors (else the caller uses torch's kernel)
bool int4_mm_fits(const at::Tensor& packed, const at::Tensor& scale_zero, int64_t group) {
  if (!int4_cpu() || packed.scalar_type() != at::kByte || !packed.is_contiguous()) return false;
  if (scale_zero.scalar_type() != at::kBFloat16 || !scale_zero.is_contiguous() || scale_zero.dim() != 3) return false;
  const int64_t N = scale_zero.size(1);
  const int64_t K = scale_zero.size(0) * group;
  return group > 0 && group <= 256 && scale_zero.size(2) == 2 && N % kInt4Block == 0 && packed.numel() * 2 == N * K;
}

// x (M, K) bf16 -> (M, N) bf16, as aten::_weight_int4pack_mm_for_cpu under AVX2 computes it
at::Tensor int4_mm(const at::Tensor& x, const at::Tensor& packed, int64_t group, const at::Tensor& scale_zero) {
  TORCH_CHECK(int4_mm_fits(packed, scale_zero, group),
              "int4_mm: needs an AVX2 CPU, torch's AVX2 INT4 layout with whole blocks of 32 outputs, "
              "and contiguous bf16 scales [K/group, N, 2]");
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 && x.dim() == 2 && x.size(1) == scale_zero.size(0) * group,
              "int4_mm: x must be bf16 (M, K)");
  const int64_t M = x.size(0), K = x.size(1), N = scale_zero.size(1);
  at::Tensor xf = x.to(at::kFloat).contiguous();  // exact: bf16 is fp32's upper half
  at::Tensor out = at::empty({M, N}, x.options());
  const float* xd = xf.data_ptr<float>();
  const auto* bd = packed.data_ptr<uint8_t>();
  const auto* sd = scale_zero.data_ptr<c10::BFloat16>();
  auto* od = reinterpret_cast<uint16_t*>(out.data_ptr<c10::BFloat16>());
  // one block of 32 outputs a work item: each output is computed by one thread, whatever the count
  at::parallel_for(0, N / kInt4Block, 1, [&](int64_t begin, int64_t end) {
    alignas(32) float y[kInt4Rows * kInt4Block];
    for (int64_t m0 = 0; m0 < M; m0 += kInt4Rows) {  // a chunk of rows, then all this thread's blocks
      const int64_t rows = std::min(kInt4Rows, M - m0);
      for (int64_t nb = begin; nb < end; ++nb) {
        const uint8_t* B = bd + nb * K * 16;
        const c10::BFloat16* SZ = sd + nb * kInt4Block * 2;
        if (rows == 1) {
          int4_block_avx2(xd + m0 * K, B, SZ, N, K, group, y);
        } else {
          int4_rows_avx2(xd + m0 * K, B, SZ, N, K, group, rows, y);
        }
        for (int64_t m = 0; m < rows; ++m)
          for (int64_t i = 0; i < kInt4Block; ++i)
            od[(m0 + m) * N + nb * kInt4Block + i] = bf16_bits(y[m * kInt4Block + i]);
      }
    }
  });
  return out;
}

enum Kind : int64_t { kPlain = 0, kInt4 = 1, kW4A8 = 2 };

using W4A8Mm = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                          const std::optional<at::Tensor>&, int64_t);
using RmsNorm = at::Tensor(const at::Tensor&, const at::Tensor&, double);

const c10::TypedOperatorHandle<W4A8Mm>& w4a8_mm() {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("llmcheck::w4a8_mm", "").typed<W4A8Mm>();
  return op;
}

const c10::TypedOperatorHandle<RmsNorm>& fused_rms_norm() {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("llmcheck::rms_norm", "").typed<RmsNorm>();
  return op;
}

// One product of the Python step: _Int4, _W4A8, or one plain F.linear.
struct Call {
  int64_t kind = kPlain;
  at::Tensor a;  // plain: weight; int4: packed; w4a8: packed
  at::Tensor b;  // int4: scale_and_zero; w4a8: sz
  std::optional<at::Tensor> bias;
  int64_t group = 0;
  std::vector<int64_t> sizes;
  bool own = false;  // int4: this file's int4_mm instead of torch's kernel (same numbers)

  // _Int4.raw / _W4A8.raw: (1, 1, sum of sizes); plain: F.linear(x, w, b)
  at::Tensor raw(const at::Tensor& x) const {
    if (kind == kPlain) return at::linear(x, a, bias);
    if (kind == kW4A8) return w4a8_mm().call(x.view({1, -1}), a, b, bias, group).view({1, 1, -1});
    at::Tensor y = (own ? int4_mm(x.view({1, -1}), a, group, b)
                        : at::_weight_int4pack_mm_for_cpu(x.view({1, -1}), a, group, b))
                       .view({1, 1, -1});
    if (bias) y.add_(*bias);
    return y.scalar_type() == x.scalar_type() ? y : y.to(x.scalar_type());
  }

  std::vector<at::Tensor> operator()(const at::Tensor& x) const {
    at::Tensor y = raw(x);
    if (sizes.size() > 1) return at::split_with_sizes(y, sizes, -1);
    return {y};
  }
};

// _Proj: the products of one input, one call or several.
struct Proj {
  std::vector<Call> calls;

  const Call* single() const { return calls.size() == 1 ? &calls[0] : nullptr; }

  std::vector<at::Tensor> operator()(const at::Tensor& x) const {
    std::vector<at::Tensor> out;
    for (const Call& call : calls)
      for (at::Tensor& y : call(x)) out.push_back(std::move(y));
    return out;
  }
};

// _rms: transformers' RMSNorm op for op, or int4-a8's one call.
struct Norm {
  bool fused = false;
  at::Tensor weight;
  double eps = 0.0;

  at::Tensor operator()(const at::Tensor& x) const {
    if (fused) return fused_rms_norm().call(x, weight, eps);
    const auto dtype = x.scalar_type();
    at::Tensor h = x.to(at::kFloat);
    at::Tensor variance = h.pow(2).mean({-1}, /*keepdim=*/true);
    h = h * at::rsqrt(variance + eps);
    return weight * h.to(dtype);
  }
};

struct Layer {
  Proj proj[4];  // q/k/v, o, gate/up, down
  Norm norm[2];  // input, post-attention
};

at::Tensor rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& signed_sin) {
  return (x * cos) + (at::roll(x, {x.size(-1) / 2}, {-1}) * signed_sin);
}

class Decoder : public torch::CustomClassHolder {
 public:
  Decoder(at::Tensor embed, at::Tensor inv_freq, double rope_scale, int64_t heads, int64_t kv_heads,
          int64_t head_dim, double scaling, bool gqa, int64_t layers)
      : embed_(std::move(embed)),
        inv_freq_(inv_freq.to(at::kFloat)),
        rope_scale_(rope_scale),
        heads_(heads),
        kv_heads_(kv_heads),
        dim_(head_dim),
        scaling_(scaling),
        gqa_(gqa),
        layers_(static_cast<size_t>(layers)) {}

  // One call of a projection; ``layer`` -1 is the lm_head (slot ignored).
  void add_call(int64_t layer, int64_t slot, int64_t kind, at::Tensor a, at::Tensor b,
                std::vector<at::Tensor> bias, int64_t group, std::vector<int64_t> sizes) {
    TORCH_CHECK(kind == kPlain || kind == kInt4 || kind == kW4A8, "decode_step: unknown kind ", kind);
    Call call{kind, std::move(a), std::move(b), std::nullopt, group, std::move(sizes)};
    if (!bias.empty()) call.bias = bias[0];
    call.own = kind == kInt4 && own_int4_ && int4_mm_fits(call.a, call.b, group);
    if (layer < 0) {
      head_ = std::move(call);
    } else {
      TORCH_CHECK(layer < static_cast<int64_t>(layers_.size()) && slot >= 0 && slot < 4,
                  "decode_step: no projection ", layer, "/", slot);
      layers_[layer].proj[slot].calls.push_back(std::move(call));
    }
  }

  // A norm; ``layer`` -1 is the final norm (slot ignored).
  void set_norm(int64_t layer, int64_t slot, bool fused, at::Tensor weight, double eps) {
    Norm norm{fused, std::move(weight), eps};
    if (layer < 0) {
      final_norm_ = std::move(norm);
    } else {
      TORCH_CHECK(layer < static_cast<int64_t>(layers_.size()) && slot >= 0 && slot < 2,
                  "decode_step: no norm ", layer, "/", slot);
      layers_[layer].norm[slot] = std::move(norm);
    }
  }

  // The prompt's per-layer keys and values (from the model's own forward), extended by step.
  void start(std::vector<at::Tensor> keys, std::vector<at::Tensor> values) {
    TORCH_CHECK(keys.size() == layers_.size() && values.size() == layers_.size(),
                "decode_step: one key and value tensor per layer");
    keys_ = std::move(keys);
    values_ = std::move(values);
  }

  // FastDecoder.step, call for call: logits (vocab,) of the token after ``token``.
  at::Tensor step(const at::Tensor& token, int64_t position) {
    TORCH_CHECK(keys_.size() == layers_.size(), "decode_step: start() first");
    at::Tensor h = at::embedding(embed_, token.view({1, 1}));
    at::Tensor freqs = at::full({1, 1, 1}, static_cast<double>(position), at::kFloat) * inv_freq_;
    at::Tensor emb = at::cat({freqs, freqs}, -1);
    at::Tensor cos = (emb.cos() * rope_scale_).to(h.scalar_type()).unsqueeze(1);
    at::Tensor sin = (emb.sin() * rope_scale_).to(h.scalar_type()).unsqueeze(1);
    const int64_t half = dim_ / 2;
    sin = at::cat({-sin.slice(-1, 0, half), sin.slice(-1, half)}, -1);
    const int64_t qk_width = (heads_ + kv_heads_) * dim_;
    for (size_t i = 0; i < layers_.size(); ++i) {
      const Layer& layer = layers_[i];
      at::Tensor residual = h;
      at::Tensor x = layer.norm[0](h);
      at::Tensor q, k, v;
      if (const Call* fused = layer.proj[0].single()) {  // one call: q and k rotated in one go
        at::Tensor y = fused->raw(x);
        at::Tensor qk = rope(y.slice(-1, 0, qk_width).view({1, 1, heads_ + kv_heads_, dim_}), cos, sin);
        qk = qk.transpose(1, 2);
        q = qk.slice(1, 0, heads_);
        k = qk.slice(1, heads_);
        v = y.slice(-1, qk_width).view({1, 1, kv_heads_, dim_}).transpose(1, 2);
      } else {
        std::vector<at::Tensor> qkv = layer.proj[0](x);
        q = rope(qkv[0].view({1, 1, heads_, dim_}), cos, sin).transpose(1, 2);
        k = rope(qkv[1].view({1, 1, kv_heads_, dim_}), cos, sin).transpose(1, 2);
        v = qkv[2].view({1, 1, kv_heads_, dim_}).transpose(1, 2);
      }
      keys_[i] = at::cat({keys_[i], k}, -2);
      values_[i] = at::cat({values_[i], v}, -2);
      at::Tensor out = at::scaled_dot_product_attention(q, keys_[i], values_[i], std::nullopt, 0.0,
                                                        /*is_causal=*/false, scaling_, gqa_);
      out = out.reshape({1, -1, 1, dim_}).transpose(1, 2).contiguous();
      out = out.reshape({1, 1, -1}).contiguous();
      h = residual + layer.proj[1](out)[0];
      residual = h;
      std::vector<at::Tensor> gate_up = layer.proj[2](layer.norm[1](h));
      h = residual + layer.proj[3](at::silu(gate_up[0]) * gate_up[1])[0];
    }
    h = final_norm_(h);
    if (head_.kind == kW4A8) return head_.raw(h).select(0, 0).select(0, -1);
    if (head_mv_) return at::mv(head_.a, h.select(0, 0).select(0, -1));
    return at::linear(h, head_.a).select(0, 0).select(0, -1);
  }

  // A bf16 lm_head as mv (FastDecoder.head_mv) or, by default, as linear.
  void set_head_mv(bool mv) { head_mv_ = mv; }

  // INT4 calls added after this run int4_mm where it takes them: only when torch's INT4
  // kernel is its AVX2 one in this process (its layout and arithmetic), which the caller knows.
  void set_own_int4(bool own) { own_int4_ = own; }

  // (INT4 calls that run int4_mm, all INT4 calls), for the load facts and tests.
  std::vector<int64_t> int4_calls() const {
    std::vector<int64_t> count{0, 0};
    for (const Layer& layer : layers_)
      for (const Proj& proj : layer.proj)
        for (const Call& call : proj.calls) {
          count[0] += call.own ? 1 : 0;
          count[1] += call.kind == kInt4 ? 1 : 0;
        }
    return count;
  }

  // The keys so far (for checks).
  std::vector<at::Tensor> key_cache() const { return keys_; }

  // Drop the cache once an answer is done: it would hold memory until the next start().
  void clear() {
    keys_.clear();
    values_.clear();
  }

 private:
  at::Tensor embed_, inv_freq_;
  double rope_scale_;
  int64_t heads_, kv_heads_, dim_;
  double scaling_;
  bool gqa_;
  std::vector<Layer> layers_;
  Norm final_norm_;
  Call head_;
  bool head_mv_ = false;
  bool own_int4_ = false;
  std::vector<at::Tensor> keys_, values_;
};

}  // namespace

TORCH_LIBRARY(llmcheck_decode, m) {
  m.class_<Decoder>("Decoder")
      .def(torch::init<at::Tensor, at::Tensor, double, int64_t, int64_t, int64_t, double, bool, int64_t>())
      .def("add_call", &Decoder::add_call)
      .def("set_norm", &Decoder::set_norm)
      .def("start", &Decoder::start)
      .def("step", &Decoder::step)
      .def("set_head_mv", &Decoder::set_head_mv)
      .def("set_own_int4", &Decoder::set_own_int4)
      .def("int4_calls", &Decoder::int4_calls)
      .def("key_cache", &Decoder::key_cache)
      .def("clear", &Decoder::clear);
  m.def("int4_mm(Tensor x, Tensor packed, int group, Tensor scale_zero) -> Tensor");
  m.def("int4_mm_fits(Tensor packed, Tensor scale_zero, int group) -> bool", &int4_mm_fits);
}

TORCH_LIBRARY_IMPL(llmcheck_decode, CPU, m) { m.impl("int4_mm", &int4_mm); }
