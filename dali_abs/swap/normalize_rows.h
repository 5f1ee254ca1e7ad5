// CPU normalisation of composited batches: uint8 HWC RGB -> float CHW, with the arithmetic of
// DALI's crop_mirror_normalize (so the loader's tensors are the same bytes whichever does it):
// out = (x - mean[c]) * inv[c] in float32 (inv = 1 / std, in float32), float16 rounded from
// that to nearest even, in the launcher as each chunk is composited (dali_abs.swap.cpu.composite with
// normalize=); its NumPy twin: twin.normalize.
//
// Needs: nothing before it; compiled in the CPU build's translation unit (cpu.py).
#pragma once
#include <stdint.h>
#include <string.h>
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

namespace abs_norm {

// Pixels [first, last) of one sample's plane: channel c of pixel i goes to o[c][i].
static inline void rows_f32(const uint8_t* in, float* const o[3], long long first, long long last, const float* mean,
                            const float* inv) {
  const float m0 = mean[0], m1 = mean[1], m2 = mean[2], i0 = inv[0], i1 = inv[1], i2 = inv[2];
  float* __restrict__ a = o[0];
  float* __restrict__ b = o[1];
  float* __restrict__ c = o[2];
  for (long long i = first; i < last; ++i) {
    a[i] = ((float)in[3 * i] - m0) * i0;
    b[i] = ((float)in[3 * i + 1] - m1) * i1;
    c[i] = ((float)in[3 * i + 2] - m2) * i2;
  }
}

#if defined(__x86_64__) && defined(__GNUC__)
// The same loop compiled for AVX2 (the compiler vectorises it; the operations per element are the same).
__attribute__((target("avx2"))) static void rows_f32_avx2(const uint8_t* in, float* const o[3], long long first,
                                                          long long last, const float* mean, const float* inv) {
  rows_f32(in, o, first, last, mean, inv);
}

// float16: each block of pixels in float32 as above, then rounded to nearest even (F16C).
__attribute__((target("avx2,f16c"))) static void rows_f16(const uint8_t* in, uint16_t* const o[3], long long first,
                                                          long long last, const float* mean, const float* inv) {
  alignas(32) float buf[3][256];
  float* const tmp[3] = {buf[0], buf[1], buf[2]};
  for (long long at = first; at < last; at += 256) {
    const long long k = last - at < 256 ? last - at : 256;
    rows_f32(in + 3 * at, tmp, 0, k, mean, inv);
    for (int c = 0; c < 3; ++c) {
      long long i = 0;
      for (; i + 8 <= k; i += 8)
        _mm_storeu_si128((__m128i*)(o[c] + at + i),
                         _mm256_cvtps_ph(_mm256_load_ps(buf[c] + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
      if (i < k) {
        alignas(32) float pad[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        alignas(16) uint16_t h[8];
        memcpy(pad, buf[c] + i, (size_t)(k - i) * sizeof(float));
        _mm_store_si128((__m128i*)h, _mm256_cvtps_ph(_mm256_load_ps(pad), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        memcpy(o[c] + at + i, h, (size_t)(k - i) * sizeof(uint16_t));
      }
    }
  }
}
#endif

// Whether this CPU can write float16 here (else the caller rounds the float32 result itself).
static inline bool have_f16() {
#if defined(__x86_64__) && defined(__GNUC__)
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
#else
  return false;
#endif
}

// Pixels [first, last) of sample s of an [n, hw, 3] uint8 batch into the [n, 3, hw] output
// (float32, or float16 bits).
static inline void pixels(const uint8_t* in, void* out, long long s, long long hw, long long first, long long last,
                          const float* mean, const float* inv, bool half) {
  const uint8_t* p = in + s * hw * 3;
  if (half) {
#if defined(__x86_64__) && defined(__GNUC__)
    uint16_t* base = (uint16_t*)out + s * hw * 3;
    uint16_t* const o[3] = {base, base + hw, base + 2 * hw};
    rows_f16(p, o, first, last, mean, inv);
#endif
    return;
  }
  float* base = (float*)out + s * hw * 3;
  float* const o[3] = {base, base + hw, base + 2 * hw};
#if defined(__x86_64__) && defined(__GNUC__)
  if (__builtin_cpu_supports("avx2")) {
    rows_f32_avx2(p, o, first, last, mean, inv);
    return;
  }
#endif
  rows_f32(p, o, first, last, mean, inv);
}

// What the launcher normalises into (cpu.py's NormArgs): output, float32 mean and 1 / std, float16 or not.
struct Args {
  void* out;
  const float* mean;
  const float* inv;
  int half;
};

// Output rows [first, last) of a composited [n, h, w, 3] batch (row = s * h + y), normalised.
static inline void rows(const Args* a, const uint8_t* img, long long first, long long last, int h, int w) {
  const long long hw = (long long)h * w;
  for (long long row = first; row < last;) {
    const long long s = row / h, end = (s + 1) * h < last ? (s + 1) * h : last;
    pixels(img, a->out, s, hw, (row - s * h) * w, (end - s * h) * w, a->mean, a->inv, a->half != 0);
    row = end;
  }
}

}  // namespace abs_norm
