// AutoBackSwap compositing, fused with the crop, flip and resize that follow it: every output
// pixel of a batch in one launch.
// CPU twin: dali_abs.swap.twin.composite_cpu (same float32 arithmetic, same order;
// compile with --fmad=false so no multiply-add is contracted, as the twin does not).
//
// Inputs are per-sample buffers of any size (DALI hands over batches of differently sized
// decoded images): image_ptrs[k] points at a C-contiguous uint8 HWC RGB 0..255 image of
// image_hw[k] = (rows, cols); fill_ptrs / fill_hw likewise for the cached fill tiles.
// The rest is C-contiguous: soft float32 [N,R,R] foreground probability (1 = foreground) per
// patch; partner int32 [N]; swap uint8 [N]; affine
// float32 [N,6] (inverse map, canvas point -> foreground canvas point); noise_seed uint32 [N];
// perm int32 [N,R*R]; mean_colour float32 [N,3]; fg_box float32 [N,4] (x0,y0,x1,y1) canvas px;
// flip uint8 [N]; geo float32 [N,12] per-sample geometry derived on the host from the crop,
// the image, tile and canvas sizes and the box (dali_abs.swap.batch.geometry: the
// divisions done once per sample, in float32 as the twin does them); out uint8 [N,H,W,3].
//
// The canvas is H x W canvas px (the output size); every image is stretched over it. Output
// pixel (y, x) looks at the canvas point (px, py) of the crop window (mirrored when flip):
//   px = crop.x0 + (x' + 0.5) * geo.crop_sx, x' = flip ? W-1-x : x; py likewise.
// Image k is sampled at (px * geo[k].img_sx - 0.5, py * geo[k].img_sy - 0.5) in its pixels.
// Images and tiles are sampled bilinearly with pixel centres at +0.5, edge-clamped (as DALI's
// linear resize without antialiasing). The R x R grid values sit at the patch centres.

#define ABS_FILL_CACHED 0
#define ABS_FILL_GRAY 1
#define ABS_FILL_MEAN 2
#define ABS_FILL_NOISE 3
#define ABS_FILL_PIXELS 4
#define ABS_FILL_PATCHES 5

// The per-pixel body is inlined into the CUDA kernel and into the CPU launcher's row loop.
#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define ABS_INLINE static __device__ __forceinline__
#else
#define ABS_INLINE static inline __attribute__((always_inline))
#endif

// 32-bit integer mix (lowbias32, C. Wellons): only unsigned 32-bit ops, so NumPy uint32 and
// CUDA agree bit for bit.
ABS_INLINE unsigned int abs_mix32(unsigned int x) {
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  x *= 0x846ca68bu;
  x ^= x >> 16;
  return x;
}

ABS_INLINE int abs_clampi(int v, int lo, int hi) { return v < lo ? lo : (v > hi ? hi : v); }

// Bilinear sample of an r x r float grid at grid coordinates (gx, gy) (grid value (row, col)
// sits at (col, row)); also returns the partial derivatives in grid units.
ABS_INLINE float abs_grid_bilerp(const float* __restrict__ g, int r, float gx, float gy, float* dgx, float* dgy) {
  const float fx0 = floorf(gx), fy0 = floorf(gy);
  const float fx = gx - fx0, fy = gy - fy0;
  const int ix0 = abs_clampi((int)fx0, 0, r - 1), ix1 = abs_clampi((int)fx0 + 1, 0, r - 1);
  const int iy0 = abs_clampi((int)fy0, 0, r - 1), iy1 = abs_clampi((int)fy0 + 1, 0, r - 1);
  const float v00 = g[iy0 * r + ix0], v01 = g[iy0 * r + ix1];
  const float v10 = g[iy1 * r + ix0], v11 = g[iy1 * r + ix1];
  const float d0 = v01 - v00, d1 = v11 - v10;
  const float top = v00 + d0 * fx, bot = v10 + d1 * fx;
  *dgy = bot - top;
  *dgx = d0 + (d1 - d0) * fy;
  return top + (bot - top) * fy;
}

// Bilinear sample of a uint8 HWC RGB image of ih x iw px at pixel coordinates (gx, gy)
// (pixel (row, col) sits at (col, row)), edge-clamped.
ABS_INLINE void abs_bilerp_setup(int ih, int iw, float gx, float gy, int* ix0, int* ix1, int* iy0, int* iy1,
                                 float* ax, float* ay) {
  const float fx0 = floorf(gx), fy0 = floorf(gy);
  *ax = gx - fx0;
  *ay = gy - fy0;
  *ix0 = abs_clampi((int)fx0, 0, iw - 1);
  *ix1 = abs_clampi((int)fx0 + 1, 0, iw - 1);
  *iy0 = abs_clampi((int)fy0, 0, ih - 1);
  *iy1 = abs_clampi((int)fy0 + 1, 0, ih - 1);
}

ABS_INLINE void abs_rgb_bilerp(const unsigned char* __restrict__ img, int ih, int iw, float gx, float gy,
                               float* rgb) {
  int ix0, ix1, iy0, iy1;
  float ax, ay;
  abs_bilerp_setup(ih, iw, gx, gy, &ix0, &ix1, &iy0, &iy1, &ax, &ay);
  const unsigned char* r0 = img + (long long)iy0 * iw * 3;
  const unsigned char* r1 = img + (long long)iy1 * iw * 3;
  for (int c = 0; c < 3; ++c) {
    const float v00 = r0[ix0 * 3 + c], v01 = r0[ix1 * 3 + c];
    const float v10 = r1[ix0 * 3 + c], v11 = r1[ix1 * 3 + c];
    const float top = v00 + (v01 - v00) * ax, bot = v10 + (v11 - v10) * ax;
    rgb[c] = top + (bot - top) * ay;
  }
}

// geo columns (see dali_abs.swap.batch.geometry)
#define ABS_GEO 12
#define ABS_GEO_CROP_X0 0
#define ABS_GEO_CROP_Y0 1
#define ABS_GEO_CROP_SX 2
#define ABS_GEO_CROP_SY 3
#define ABS_GEO_IMG_SX 4
#define ABS_GEO_IMG_SY 5
#define ABS_GEO_BOX_Y0 6
#define ABS_GEO_BOX_X0 7
#define ABS_GEO_BOX_Y1 8
#define ABS_GEO_BOX_X1 9
#define ABS_GEO_TILE_SY 10
#define ABS_GEO_TILE_SX 11

// Image k (ih x iw px, geometry row g) at canvas point (px, py).
ABS_INLINE void abs_canvas_sample(const unsigned char* img, int ih, int iw, const float* g, float px, float py,
                                  float* rgb) {
  abs_rgb_bilerp(img, ih, iw, px * g[ABS_GEO_IMG_SX] - 0.5f, py * g[ABS_GEO_IMG_SY] - 0.5f, rgb);
}

ABS_INLINE unsigned char abs_round_u8(float v) {
  v = floorf(v + 0.5f);
  return (unsigned char)(v < 0.0f ? 0.0f : (v > 255.0f ? 255.0f : v));
}

// First row of patch `r` of a side of `size` px split into `grid` patches: ceil(r*size/grid).
ABS_INLINE int abs_patch_start(int r, int size, int grid) { return (r * size + grid - 1) / grid; }

#define ABS_COMPOSITE_PARAMS                                                                                \
  const unsigned long long* __restrict__ image_ptrs, const int* __restrict__ image_hw,                    \
      const float* __restrict__ soft, const unsigned long long* __restrict__ fill_ptrs,                     \
      const int* __restrict__ fill_hw, const int* __restrict__ partner,    \
      const unsigned char* __restrict__ swap, const float* __restrict__ affine,                             \
      const unsigned int* __restrict__ noise_seed, const int* __restrict__ perm,                            \
      const float* __restrict__ mean_colour, const float* __restrict__ fg_box,                              \
      const unsigned char* __restrict__ flip, const float* __restrict__ geo, unsigned char* __restrict__ out, \
      int n, int h, int w, int r, float tight, float loose, float feather, int fill_mode
#define ABS_COMPOSITE_ARGS                                                                                   \
  image_ptrs, image_hw, soft, fill_ptrs, fill_hw, partner, swap, affine, noise_seed, perm, mean_colour, \
      fg_box, flip, geo, out, n, h, w, r, tight, loose, feather, fill_mode

// Output pixel (y, x) of sample s.
ABS_INLINE void abs_composite_pixel(ABS_COMPOSITE_PARAMS, int s, int y, int x) {
  const float fw = (float)w, fh = (float)h;
  const float sx = (float)r / fw, sy = (float)r / fh;
  unsigned char* o = out + (((long long)s * h + y) * w + x) * 3;
  const float* gs = geo + s * ABS_GEO;
  const int xm = flip[s] ? w - 1 - x : x;
  const float px = gs[ABS_GEO_CROP_X0] + ((float)xm + 0.5f) * gs[ABS_GEO_CROP_SX];
  const float py = gs[ABS_GEO_CROP_Y0] + ((float)y + 0.5f) * gs[ABS_GEO_CROP_SY];
  const unsigned char* img_s = (const unsigned char*)image_ptrs[s];
  const int hs = image_hw[s * 2], ws = image_hw[s * 2 + 1];
  float fg[3], bg[3];
  if (!swap[s]) {
    abs_canvas_sample(img_s, hs, ws, gs, px, py, fg);
    o[0] = abs_round_u8(fg[0]); o[1] = abs_round_u8(fg[1]); o[2] = abs_round_u8(fg[2]);
    return;
  }

  // foreground first: sample s itself, moved by the inverse affine map. Where alpha is 1 the
  // background is not needed at all (alpha*fg + (1-alpha)*bg is exactly fg there).
  // fg_box: canvas points outside it have alpha 0 (a conservative box from sample_params), so
  // most pixels skip the foreground mask lookup.
  float dgx, dgy;
  const float* a = affine + s * 6;
  const float* fb = fg_box + s * 4;
  float alpha = 0.0f;
  if (px >= fb[0] && px < fb[2] && py >= fb[1] && py < fb[3]) {
    const float xs = a[0] * px + a[1] * py + a[2];
    const float ys = a[3] * px + a[4] * py + a[5];
    if (xs >= 0.0f && xs < fw && ys >= 0.0f && ys < fh) {
      const float pt = abs_grid_bilerp(soft + (long long)s * r * r, r, xs * sx - 0.5f, ys * sy - 0.5f, &dgx, &dgy);
      alpha = pt > tight ? 1.0f : 0.0f;
      if (feather > 0.0f) {
        const float gx = dgx * sx, gy = dgy * sy;
        const float gm = sqrtf(gx * gx + gy * gy);
        if (gm > 0.0f) {
          alpha = 0.5f + (pt - tight) / (2.0f * feather * gm);
          alpha = alpha < 0.0f ? 0.0f : (alpha > 1.0f ? 1.0f : alpha);
        }
      }
      if (alpha > 0.0f) abs_canvas_sample(img_s, hs, ws, gs, xs, ys, fg);
    }
  }
  if (alpha == 1.0f) {
    o[0] = abs_round_u8(fg[0]); o[1] = abs_round_u8(fg[1]); o[2] = abs_round_u8(fg[2]);
    return;
  }

  // background: the partner's fill inside its loose region, else its image
  const int j = partner[s];
  const unsigned char* img_j = (const unsigned char*)image_ptrs[j];
  const int hj = image_hw[j * 2], wj = image_hw[j * 2 + 1];
  const float* gj = geo + j * ABS_GEO;
  // The box test (canvas px) comes first: most pixels lie outside the fill box and skip the mask lookup.
  const bool in_box = py >= gj[ABS_GEO_BOX_Y0] && py < gj[ABS_GEO_BOX_Y1] && px >= gj[ABS_GEO_BOX_X0] &&
                      px < gj[ABS_GEO_BOX_X1];
  if (!(in_box && abs_grid_bilerp(soft + (long long)j * r * r, r, px * sx - 0.5f, py * sy - 0.5f, &dgx, &dgy) > loose)) {
    abs_canvas_sample(img_j, hj, wj, gj, px, py, bg);
  } else {
    // the canvas pixel under the point, for the fills defined per pixel
    const int cy = abs_clampi((int)floorf(py), 0, h - 1), cx = abs_clampi((int)floorf(px), 0, w - 1);
    const unsigned int pix = (unsigned int)(cy * w + cx);
    if (fill_mode == ABS_FILL_CACHED) {
      const int th = fill_hw[j * 2], tw = fill_hw[j * 2 + 1];
      const float ty = (py - gj[ABS_GEO_BOX_Y0]) * gj[ABS_GEO_TILE_SY] - 0.5f;
      const float tx = (px - gj[ABS_GEO_BOX_X0]) * gj[ABS_GEO_TILE_SX] - 0.5f;
      abs_rgb_bilerp((const unsigned char*)fill_ptrs[j], th, tw, tx, ty, bg);
    } else if (fill_mode == ABS_FILL_GRAY) {
      bg[0] = bg[1] = bg[2] = 128.0f;
    } else if (fill_mode == ABS_FILL_MEAN) {
      for (int c = 0; c < 3; ++c) bg[c] = mean_colour[j * 3 + c];
    } else if (fill_mode == ABS_FILL_NOISE) {
      const unsigned int key = noise_seed[j];
      for (int c = 0; c < 3; ++c) bg[c] = (float)(abs_mix32(key + abs_mix32(pix * 3u + (unsigned int)c)) >> 24);
    } else if (fill_mode == ABS_FILL_PIXELS) {  // a random pixel of image j, anywhere
      const unsigned int at = abs_mix32(noise_seed[j] ^ abs_mix32(pix + 0x9e3779b9u)) % (unsigned int)(hj * wj);
      const unsigned char* q = img_j + (long long)at * 3;
      bg[0] = (float)q[0]; bg[1] = (float)q[1]; bg[2] = (float)q[2];
    } else {  // ABS_FILL_PATCHES: same offset inside canvas patch perm[j][patch of (cy, cx)], nearest in image j
      const int pr = (cy * r) / h, pc = (cx * r) / w;
      const int q = perm[j * r * r + pr * r + pc];
      const int qr = q / r, qc = q - (q / r) * r;
      const int ys = abs_clampi(abs_patch_start(qr, h, r) + cy - abs_patch_start(pr, h, r), 0,
                                abs_patch_start(qr + 1, h, r) - 1);
      const int xs = abs_clampi(abs_patch_start(qc, w, r) + cx - abs_patch_start(pc, w, r), 0,
                                abs_patch_start(qc + 1, w, r) - 1);
      const int iy = (int)(((long long)(2 * ys + 1) * hj) / (2LL * h));
      const int ix = (int)(((long long)(2 * xs + 1) * wj) / (2LL * w));
      const unsigned char* qq = img_j + ((long long)iy * wj + ix) * 3;
      bg[0] = (float)qq[0]; bg[1] = (float)qq[1]; bg[2] = (float)qq[2];
    }
  }
  if (alpha > 0.0f) {
    for (int c = 0; c < 3; ++c) o[c] = abs_round_u8(alpha * fg[c] + (1.0f - alpha) * bg[c]);
  } else {
    o[0] = abs_round_u8(bg[0]); o[1] = abs_round_u8(bg[1]); o[2] = abs_round_u8(bg[2]);
  }
}

// One CUDA thread per output pixel (all 3 channels); the grid-stride loop covers any batch.
extern "C" __global__ void abs_composite(ABS_COMPOSITE_PARAMS) {
  const long long plane = (long long)h * w;
  const long long total = (long long)n * plane;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
       i += (long long)blockDim.x * gridDim.x) {
    const int s = (int)(i / plane);
    const int pix = (int)(i - (long long)s * plane);
    const int y = pix / w;
    abs_composite_pixel(ABS_COMPOSITE_ARGS, s, y, pix - y * w);
  }
}
