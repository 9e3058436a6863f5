// How many 256-bit fused multiply-adds one core runs a second: the floor that int4_mm's
// arithmetic sets (bench_int4_product.py prints it beside the kernel's times). Two figures:
// twelve independent sums (throughput: two FMA units on the CPUs this project runs on), and
// one dependent sum (latency: with its known 4 cycles, the clock the core ran at). Built by
// the benchmark with the project's own kernel helper; not part of the plugin.

#include <torch/library.h>

#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <vector>

namespace {

__attribute__((target("avx2,fma"))) double independent(int64_t iterations) {
  __m256 a[12];
  for (int i = 0; i < 12; ++i) a[i] = _mm256_set1_ps(1.0f + static_cast<float>(i) * 1e-7f);
  const __m256 m = _mm256_set1_ps(0.9999999f), c = _mm256_set1_ps(1e-7f);
  const auto start = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < iterations; ++i) {
#pragma GCC unroll 12
    for (int j = 0; j < 12; ++j) a[j] = _mm256_fmadd_ps(a[j], m, c);
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  float sink = 0.f;
  for (int j = 0; j < 12; ++j) sink += a[j][0];
  volatile float keep = sink;  // the sums are used: the loop stays
  (void)keep;
  return static_cast<double>(iterations) * 12 / seconds;
}

__attribute__((target("avx2,fma"))) double dependent(int64_t iterations) {
  __m256 a = _mm256_set1_ps(1.0f);
  const __m256 m = _mm256_set1_ps(0.9999999f), c = _mm256_set1_ps(1e-7f);
  const auto start = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < iterations; ++i) a = _mm256_fmadd_ps(a, m, c);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  volatile float keep = a[0];
  (void)keep;
  return static_cast<double>(iterations) / seconds;
}

// [independent FMAs a second, dependent FMAs a second], the best of ``tries``
std::vector<double> fma_peak(int64_t iterations, int64_t tries) {
  double best_independent = 0.0, best_dependent = 0.0;
  for (int64_t t = 0; t < tries; ++t) {
    best_independent = std::max(best_independent, independent(iterations));
    best_dependent = std::max(best_dependent, dependent(iterations));
  }
  return {best_independent, best_dependent};
}

}  // namespace

TORCH_LIBRARY(llmcheck_bench, m) { m.def("fma_peak(int iterations, int tries) -> float[]", &fma_peak); }
