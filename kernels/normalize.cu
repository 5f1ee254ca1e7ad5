// Batch normalisation for the loader's output: uint8 HWC RGB (0..255), N images of H x W,
// to float32 NCHW, (x / 255 - mean[c]) / std[c]. One thread per output element; the
// grid-stride loop lets one launch cover the whole batch whatever its size.
// CPU twin: dali_abs.training.normalize (same arithmetic, same layout).

extern "C" __global__ void normalize_hwc_u8_to_nchw_f32(
    const unsigned char* __restrict__ src, float* __restrict__ dst,
    int n, int h, int w, float m0, float m1, float m2, float s0, float s1, float s2) {
  const long long plane = (long long)h * w;
  const long long total = (long long)n * 3 * plane;
  const float mean[3] = {m0, m1, m2};
  const float inv_std[3] = {1.0f / s0, 1.0f / s1, 1.0f / s2};
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
       i += (long long)blockDim.x * gridDim.x) {
    const long long img = i / (3 * plane);
    const int c = (int)((i / plane) % 3);
    const long long pix = i % plane;
    const float v = src[(img * plane + pix) * 3 + c] * (1.0f / 255.0f);
    dst[i] = (v - mean[c]) * inv_std[c];
  }
}
