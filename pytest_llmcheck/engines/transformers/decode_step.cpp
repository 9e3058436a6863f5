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
#include <ATen/ops/index_select.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/min.h>
#include <ATen/ops/mv.h>
#include <ATen/ops/roll.h>
#include <ATen/ops/rsqrt.h>
#include <ATen/ops/scaled_dot_product_attention.h>
#include <ATen/ops/silu.h>
#include <ATen/ops/split_with_sizes.h>
#include <torch/custom_class.h>
#include <torch/library.h>

#include <immintrin.h>
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
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
// per block of outputs; a group's scales once per group, two integer ops per 8, the next
// group's prefetched (they lie N * 4 bytes on); each weight byte is read once (one token: eight
// at a time by a widening load); a prompt's inputs are regrouped so that a group's rows are one
// run. bench_int4_product.py prints the floor this arithmetic sets at the core's measured FMA
// rate: one token reaches about 58% of it, a prompt 82-89%. An AVX-512 body (16 lanes, 4 blocks a
// pass) gave the same bits but was slower on this project's AMD EPYC (double-pumped 512-bit
// units; 17.6 against 13.7 ms a Qwen2-7B layer), and so were two blocks a pass in 512 or in
// 256 bits with AVX-512's 32 registers (a throwaway test, 2026-12-07), so there is one body.
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
  const int64_t groups = K / group;
  for (int64_t g = 0; g < groups; ++g) {
    const c10::BFloat16* sz = SZ + g * N * 2;
    if (g + 1 < groups) {  // the next group's scales, N * 4 bytes on: a row the prefetcher misses
      _mm_prefetch(reinterpret_cast<const char*>(sz + N * 2), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(sz + N * 2 + 32), _MM_HINT_T0);
    }
    __m256 s0, s1, s2, s3, z0, z1, z2, z3;
    scales8(sz, s0, z0);
    scales8(sz + 16, s1, z1);
    scales8(sz + 32, s2, z2);
    scales8(sz + 48, s3, z3);
    for (int64_t k = g * group; k < (g + 1) * group; ++k) {
      const __m256 a = _mm256_broadcast_ss(x + k);
      // bytes 0..7 and 8..15, each widened straight from memory (one shuffle fewer than a 16-byte load)
      const __m256i lo = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(B + k * 16)));
      const __m256i hi = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(B + k * 16 + 8)));
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
// blocks, so the rows stay in cache; x holds them group by group, [K/group][M][group]. The
// unpacking repeats int4_block_avx2's on purpose: a shared helper returning the four vectors
// through memory made one token 3x slower here (8.73 against 2.62 ms a Qwen2-1.5B layer,
// bench_int4_product.py).
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
    const float* xg = x + g * M * group;  // the rows' inputs of this group, one run of M * group
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
      const float* x0 = xg + m * group;
      const float* x1 = x0 + group;
      const float* x2 = x1 + group;
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
      const float* x0 = xg + m * group;
      const float* x1 = x0 + group;
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
      const float* x0 = xg + m * group;
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
  // x in fp32 (exact: bf16 is fp32's upper half); a prompt's rows group by group: each chunk of
  // kInt4Rows rows as [K/group][rows][group], so that int4_rows_avx2 reads a group's inputs for
  // all its rows as one run (row by row they lie K * 4 bytes apart, a far jump per row the
  // prefetcher does not follow). One pass: copy_ converts as it regroups.
  at::Tensor xf;
  if (M == 1) {
    xf = x.to(at::kFloat).contiguous();
  } else {
    const at::Tensor xc = x.contiguous();
    const int64_t groups = K / group;
    xf = at::empty({M * K}, x.options().dtype(at::kFloat));
    for (int64_t m0 = 0; m0 < M; m0 += kInt4Rows) {
      const int64_t rows = std::min(kInt4Rows, M - m0);
      xf.narrow(0, m0 * K, rows * K)
          .view({groups, rows, group})
          .copy_(xc.narrow(0, m0, rows).view({rows, groups, group}).transpose(0, 1));
    }
  }
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

// ---------------------------------------------------------------------------------------
// Greedy decoding's next token from a bf16 lm_head without reading all of it: a screen.
//
// Why: greedy decoding needs only the argmax of the logits, but the bf16 lm_head of a
// Qwen-size vocabulary (151936 x 1536 at 1.5B: 467 MB) is read in full every token, a third
// of a 1.5B model's time per token on one core (memory-bound). The screen reads an int8 copy
// (half the bytes), bounds every logit, and computes exactly, with torch's own kernel
// (at::linear on the gathered rows), only the rows that could be the maximum. The answer is
// the very token the full lm_head gives (same bits, first index on ties), on every CPU:
//
//   x = h (bf16, K), w_n = row n (bf16), l_n = torch's bf16 logit, L_n = sum x_k w_nk exactly
//   q_n = round(w_n / s_n) in [-127, 127], qx = round(x / sx), both int8; d_n = sum qx_k q_nk
//   A_n = s_n sx d_n                   (int32 dot: exact; two roundings in double)
//   |L_n - A_n| <= |x - sx qx| |w_n| + |sx qx| |w_n - s_n q_n|           (Cauchy-Schwarz)
//   |l_n - L_n| <= 2^-7 |L_n| + K 2^-20 |x| |w_n|   (bf16's rounding is 2^-8 |L_n| at most, fp32
//                                                   sums of K products K 2^-24 |x| |w_n|: 2x, 16x slack)
//   hi_n, lo_n  = A_n +- (both bounds)          T = max_n lo_n <= the largest l
//   candidates  = { n : hi_n >= T }  hold every n with l_n = max l
//
// so the argmax of the candidates' exact logits, in ascending index order, is torch's argmax
// of all of them. With gradual underflow: under flush-to-zero (torch.set_flush_denormal) tiny
// products vanish beyond the absolute allowance, so the screen stands aside. The row norms |w_n| and |w_n - s_n q_n| are computed once, in double, and
// rounded up. Which instructions compute d_n does not matter (integers are exact), so the
// screen uses what this CPU has. The decode check at load compares its token and its
// candidates' logits with the full lm_head's on every probe step; more candidates than
// ``limit`` (a flat distribution) takes the full lm_head for that token.
// ---------------------------------------------------------------------------------------

// |qx| times 32 weights signed by qx, as 8 int32 sums (pairs stay within int16: 2 * 127 * 127)
__attribute__((target("avx2"))) inline __m256i dot32(const int8_t* ax, const int8_t* x, const int8_t* row) {
  const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row));
  const __m256i sx = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x));
  const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ax));
  return _mm256_madd_epi16(_mm256_maddubs_epi16(a, _mm256_sign_epi8(w, sx)), _mm256_set1_epi16(1));
}

// d[n] = sum_k qx[k] * q[n][k] for rows [begin, end); K a multiple of 32. One row at a time,
// four sums in flight, the row read 256 bytes ahead: a throwaway test here found interleaving
// four rows several times slower (the hardware prefetcher follows one stream better).
__attribute__((target("avx2"))) void screen_dots_avx2(const int8_t* qx, const int8_t* ax, const int8_t* q,
                                                     int64_t K, int64_t begin, int64_t end, int32_t* d) {
  for (int64_t n = begin; n < end; ++n) {
    const int8_t* row = q + n * K;
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    int64_t k = 0;
    for (; k + 128 <= K; k += 128) {
      _mm_prefetch(reinterpret_cast<const char*>(row + k + 256), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(row + k + 320), _MM_HINT_T0);
      a0 = _mm256_add_epi32(a0, dot32(ax + k, qx + k, row + k));
      a1 = _mm256_add_epi32(a1, dot32(ax + k + 32, qx + k + 32, row + k + 32));
      a2 = _mm256_add_epi32(a2, dot32(ax + k + 64, qx + k + 64, row + k + 64));
      a3 = _mm256_add_epi32(a3, dot32(ax + k + 96, qx + k + 96, row + k + 96));
    }
    for (; k < K; k += 32) a0 = _mm256_add_epi32(a0, dot32(ax + k, qx + k, row + k));
    alignas(32) int32_t lanes[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(lanes),
                       _mm256_add_epi32(_mm256_add_epi32(a0, a1), _mm256_add_epi32(a2, a3)));
    int32_t sum = 0;
    for (int32_t lane : lanes) sum += lane;
    d[n] = sum;
  }
}

void screen_dots(const int8_t* qx, const int8_t* ax, const int8_t* q, int64_t K, int64_t begin, int64_t end,
                 int32_t* d) {
  if (K % 32 == 0 && int4_cpu()) return screen_dots_avx2(qx, ax, q, K, begin, end, d);
  for (int64_t n = begin; n < end; ++n) {
    int32_t sum = 0;
    for (int64_t k = 0; k < K; ++k) sum += static_cast<int32_t>(qx[k]) * q[n * K + k];
    d[n] = sum;
  }
}

// The candidate whose logit is the largest (0-dim index into the vocabulary): ``logits`` are
// the candidates' exact logits, ``idx`` their ascending indices, so argmax's first of a tie is
// the full lm_head's.
at::Tensor best_of(const at::Tensor& idx, const at::Tensor& logits) {
  return idx.index_select(0, logits.reshape({-1}).to(at::kFloat).argmax().view({1})).squeeze(0);
}

// The candidates (ascending) that could hold the largest logit of ``weight`` for ``h``
// (bf16, K), or nothing when the screen cannot bound this h (all zero, not finite) or more
// than ``limit`` remain: then the caller computes all logits.
std::optional<at::Tensor> screen_candidates(const at::Tensor& h, const at::Tensor& q, const at::Tensor& scale,
                                            const at::Tensor& wnorm, const at::Tensor& dnorm, int64_t limit) {
  const int64_t N = q.size(0), K = q.size(1);
  at::Tensor xf = h.reshape({-1}).to(at::kFloat).contiguous();
  TORCH_CHECK(xf.numel() == K, "head screen: hidden size ", xf.numel(), " against ", K);
  const float* x = xf.data_ptr<float>();
  double amax = 0.0;
  for (int64_t k = 0; k < K; ++k) {
    if (!std::isfinite(x[k])) return std::nullopt;
    amax = std::max(amax, static_cast<double>(std::fabs(x[k])));
  }
  if (amax == 0.0) return std::nullopt;
  const double sx = amax / 127.0;
  std::vector<int8_t> qx(static_cast<size_t>(K)), ax(static_cast<size_t>(K));  // qx and |qx|
  double x2 = 0.0, dx2 = 0.0, xq2 = 0.0;
  for (int64_t k = 0; k < K; ++k) {
    const double v = x[k];
    const double r = std::min(127.0, std::max(-127.0, std::nearbyint(v / sx)));
    qx[k] = static_cast<int8_t>(r);
    ax[k] = static_cast<int8_t>(std::fabs(r));
    x2 += v * v;
    dx2 += (v - r * sx) * (v - r * sx);
    xq2 += (r * sx) * (r * sx);
  }
  if (_mm_getcsr() & 0x8040) return std::nullopt;  // FTZ or DAZ set: see above
  const double up = 1.0 + 1e-9;  // double's own roundings in the bounds (sums of K <= 65536 terms), rounded up
  const double xn = std::sqrt(x2) * up, dxn = std::sqrt(dx2) * up, xqn = std::sqrt(xq2) * up;
  const double sum_slack = static_cast<double>(K) * std::ldexp(1.0, -20) * xn;
  // per-token scratch kept per thread: fresh megabytes each token cost page faults
  thread_local std::vector<int32_t> d;
  thread_local std::vector<double> a, r;
  d.resize(static_cast<size_t>(N));
  a.resize(static_cast<size_t>(N));
  r.resize(static_cast<size_t>(N));
  const int8_t* qd = q.data_ptr<int8_t>();
  int32_t* dd = d.data();  // (a thread_local named in the lambda would be each worker's own)
  at::parallel_for(0, N, 1024, [&](int64_t begin, int64_t end) {
    screen_dots(qx.data(), ax.data(), qd, K, begin, end, dd);
  });
  const double* s = scale.data_ptr<double>();
  const double* wn = wnorm.data_ptr<double>();
  const double* dn = dnorm.data_ptr<double>();
  double top = -INFINITY;
  for (int64_t n = 0; n < N; ++n) {
    // fp32 sums near overflow could make torch's logit inf or NaN (argmax's maximum): no screen
    if (xn * wn[n] > 1e37) return std::nullopt;
    const double an = s[n] * sx * static_cast<double>(d[n]);
    const double screen = (dxn * wn[n] + xqn * dn[n]) * up + std::fabs(an) * 1e-15;
    // + 1e-37: bf16's rounding is relative only above its smallest normal numbers
    const double radius = (screen + (std::fabs(an) + screen) * 0.0078125 /* 2^-7 */ + sum_slack * wn[n]) * up + 1e-37;
    a[n] = an;
    r[n] = radius;
    top = std::max(top, an - radius);
  }
  if (!std::isfinite(top)) return std::nullopt;
  std::vector<int64_t> keep;
  for (int64_t n = 0; n < N; ++n) {
    if (a[n] + r[n] >= top) {
      if (static_cast<int64_t>(keep.size()) >= limit) return std::nullopt;
      keep.push_back(n);
    }
  }
  at::Tensor idx = at::empty({static_cast<int64_t>(keep.size())}, at::kLong);
  std::memcpy(idx.data_ptr<int64_t>(), keep.data(), keep.size() * sizeof(int64_t));
  return idx;
}

// ``bytes`` uint8 in 2 MB pages where the kernel gives them (a 2 MB aligned block, advised):
// the screen reads its copy faster in them (a throwaway test here), the hardware prefetcher
// then not stopping at every 4 KB page; bench_head_screen.py times the screen as a whole.
at::Tensor huge_page_bytes(int64_t bytes) {
  constexpr size_t kHuge = size_t{2} << 20;
  const size_t size = (static_cast<size_t>(bytes) + kHuge - 1) / kHuge * kHuge;
  void* data = std::aligned_alloc(kHuge, size);
  TORCH_CHECK(data != nullptr, "head_screen: out of memory for ", bytes, " bytes");
#ifdef MADV_HUGEPAGE
  madvise(data, size, MADV_HUGEPAGE);  // advice only: ordinary pages where refused
#endif
  return at::from_blob(data, {bytes}, [](void* p) { std::free(p); }, at::TensorOptions().dtype(at::kByte));
}

// The screen of a bf16 lm_head (N, K): [q int8 (N, K), s, |w_n|, |w_n - s q_n|], the row
// values double. One pass over each row, in double: a bf16 value's square and s * q (24 and
// 8 bits) are exact there, and the sums' relative error (below K 2^-53, K <= 65536) is covered
// by rounding the norms up by 1e-9. An all-zero row gets s = 1 (q = 0, exact). Nothing where a value is
// not finite.
std::vector<at::Tensor> head_screen(const at::Tensor& weight) {
  TORCH_CHECK(weight.scalar_type() == at::kBFloat16 && weight.dim() == 2 && weight.is_contiguous(),
              "head_screen: a contiguous bf16 (vocab, hidden) weight");
  const int64_t N = weight.size(0), K = weight.size(1);
  at::Tensor q = huge_page_bytes(N * K).view({N, K}).view(at::kChar);
  at::Tensor scale = at::empty({N}, at::kDouble), wnorm = at::empty({N}, at::kDouble);
  at::Tensor dnorm = at::empty({N}, at::kDouble);
  const auto* w = weight.data_ptr<c10::BFloat16>();
  int8_t* qd = q.data_ptr<int8_t>();
  double *sd = scale.data_ptr<double>(), *wd = wnorm.data_ptr<double>(), *dd = dnorm.data_ptr<double>();
  std::atomic<bool> finite{true};
  at::parallel_for(0, N, 256, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const c10::BFloat16* row = w + n * K;
      float amax = 0.0f;
      for (int64_t k = 0; k < K; ++k) amax = std::max(amax, std::fabs(static_cast<float>(row[k])));
      const float s = amax > 0.0f ? amax / 127.0f : 1.0f;
      const float inv = 1.0f / s;  // q is whatever this rounds to: the norms are of its own error
      double w2 = 0.0, d2 = 0.0;
      for (int64_t k = 0; k < K; ++k) {
        const float v = static_cast<float>(row[k]);
        if (!std::isfinite(v)) finite = false;  // (std::max above passes a NaN over)
        const float r = std::min(127.0f, std::max(-127.0f, std::rint(v * inv)));
        qd[n * K + k] = static_cast<int8_t>(r);
        const double delta = static_cast<double>(v) - static_cast<double>(s) * static_cast<double>(r);
        w2 += static_cast<double>(v) * v;
        d2 += delta * delta;
      }
      sd[n] = s;
      wd[n] = std::sqrt(w2) * (1.0 + 1e-9);
      dd[n] = std::sqrt(d2) * (1.0 + 1e-9);
    }
  });
  if (!finite) return {};  // a value not finite: no bound holds
  return {q, scale, wnorm, dnorm};
}

// [the greedy token of linear(h, weight) (0-dim), the candidates the screen kept], as the
// decode step picks it (for tests and benchmarks); no candidates: it took all the logits.
std::vector<at::Tensor> screen_argmax(const at::Tensor& h, const at::Tensor& weight, const at::Tensor& q,
                                      const at::Tensor& scale, const at::Tensor& wnorm, const at::Tensor& dnorm,
                                      int64_t limit) {
  const at::Tensor x = h.reshape({1, 1, -1});
  if (std::optional<at::Tensor> idx = screen_candidates(x, q, scale, wnorm, dnorm, limit)) {
    return {best_of(*idx, at::linear(x, weight.index_select(0, *idx))), *idx};
  }
  return {at::linear(x, weight).reshape({-1}).to(at::kFloat).argmax(), at::empty({0}, at::kLong)};
}

// The screen's tensors for one bf16 lm_head (head_screen builds them).
struct HeadScreen {
  at::Tensor q, scale, wnorm, dnorm;  // int8 (N, K); double (N) each
  int64_t limit = 0;

  bool on() const { return q.defined(); }
};

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
    last_ = hidden(token, position);
    return logits(last_);
  }

  // The next greedy token (0-dim int64), as logits(...).float().argmax() picks it: through the
  // lm_head screen when one is set and it bounds this step, else from all the logits.
  at::Tensor step_token(const at::Tensor& token, int64_t position) {
    last_ = hidden(token, position);
    if (std::optional<at::Tensor> idx = candidates(last_)) {
      screened_ += 1;
      kept_ += idx->numel();
      return best_of(*idx, logits_of(last_, head_.a.index_select(0, *idx)));
    }
    return logits(last_).to(at::kFloat).argmax();
  }

  // For the check: [candidates, their logits] for the last step's hidden state, or nothing
  // where the screen took no decision (none set, or it fell back to all the logits).
  std::vector<at::Tensor> screen_last() {
    TORCH_CHECK(last_.defined(), "decode_step: no step yet");
    std::optional<at::Tensor> idx = candidates(last_);
    if (!idx) return {};
    return {*idx, logits_of(last_, head_.a.index_select(0, *idx))};
  }

  // An int8 screen for the bf16 lm_head (see HeadScreen); an undefined q switches it off.
  void set_head_screen(at::Tensor q, at::Tensor scale, at::Tensor wnorm, at::Tensor dnorm, int64_t limit) {
    if (!q.defined() || q.numel() == 0) {
      screen_ = HeadScreen{};
      return;
    }
    TORCH_CHECK(head_.kind == kPlain && head_.a.defined() && !head_.bias && q.dim() == 2 &&
                    q.scalar_type() == at::kChar && q.is_contiguous() && q.sizes() == head_.a.sizes() &&
                    q.size(1) <= 65536,
                "decode_step: the screen needs a plain lm_head (hidden <= 65536) and an int8 copy of its shape");
    for (const at::Tensor* t : {&scale, &wnorm, &dnorm})
      TORCH_CHECK(t->scalar_type() == at::kDouble && t->is_contiguous() && t->dim() == 1 && t->size(0) == q.size(0),
                  "decode_step: the screen's row values are double (vocab,)");
    TORCH_CHECK(!head_mv_, "decode_step: the screen computes its candidates as linear, not mv");
    TORCH_CHECK(q.min().item<int8_t>() >= -127, "decode_step: the screen's int8 copy is in [-127, 127]");
    screen_ = HeadScreen{std::move(q), std::move(scale), std::move(wnorm), std::move(dnorm), limit};
  }

  // (tokens the screen decided, candidates it kept for them in all), for tests and benchmarks.
  std::vector<int64_t> screened() const { return {screened_, kept_}; }

  at::Tensor hidden(const at::Tensor& token, int64_t position) {
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
    return final_norm_(h);
  }

  at::Tensor logits(const at::Tensor& h) const {
    if (head_.kind == kW4A8) return head_.raw(h).select(0, 0).select(0, -1);
    return logits_of(h, head_.a);
  }

  // a bf16 lm_head's (or some of its rows') logits, with the kernel the step uses
  at::Tensor logits_of(const at::Tensor& h, const at::Tensor& weight) const {
    if (head_mv_) return at::mv(weight, h.select(0, 0).select(0, -1));
    return at::linear(h, weight).select(0, 0).select(0, -1);
  }

  std::optional<at::Tensor> candidates(const at::Tensor& h) const {
    if (!screen_.on()) return std::nullopt;
    return screen_candidates(h, screen_.q, screen_.scale, screen_.wnorm, screen_.dnorm, screen_.limit);
  }

  // A bf16 lm_head as mv (FastDecoder.head_mv) or, by default, as linear.
  void set_head_mv(bool mv) {
    head_mv_ = mv;
    if (mv) screen_ = HeadScreen{};  // the screen's candidates are computed as linear
  }

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
    last_ = at::Tensor();
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
  HeadScreen screen_;
  int64_t screened_ = 0, kept_ = 0;
  at::Tensor last_;
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
      .def("step_token", &Decoder::step_token)
      .def("screen_last", &Decoder::screen_last)
      .def("set_head_screen", &Decoder::set_head_screen)
      .def("screened", &Decoder::screened)
      .def("set_head_mv", &Decoder::set_head_mv)
      .def("set_own_int4", &Decoder::set_own_int4)
      .def("int4_calls", &Decoder::int4_calls)
      .def("key_cache", &Decoder::key_cache)
      .def("clear", &Decoder::clear);
  m.def("int4_mm(Tensor x, Tensor packed, int group, Tensor scale_zero) -> Tensor");
  m.def("int4_mm_fits(Tensor packed, Tensor scale_zero, int group) -> bool", &int4_mm_fits);
  m.def("head_screen(Tensor weight) -> Tensor[]", &head_screen);
  m.def("screen_argmax(Tensor h, Tensor weight, Tensor q, Tensor scale, Tensor wnorm, Tensor dnorm, int limit) "
        "-> Tensor[]", &screen_argmax);
}

TORCH_LIBRARY_IMPL(llmcheck_decode, CPU, m) { m.impl("int4_mm", &int4_mm); }
