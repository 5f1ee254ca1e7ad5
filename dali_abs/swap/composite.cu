// AutoBackSwap compositing, fused with the crop, flip and resize that follow it: every output
// pixel of a batch in one launch.
// CPU twin: dali_abs.swap.twin.composite (same float32 arithmetic, same order; compile with
// --fmad=false so no multiply-add is contracted, as the twin does not).
//
// What the kernel reads is tabled once in dali_abs/swap/signature.py (ARGS, SAMPLE, REFS; a
// test holds that table against the declarations below). Per sample s:
//   refs[s]    where its buffers are (DALI hands over batches of differently sized images):
//              a C-contiguous uint8 HWC RGB 0..255 image of ih x iw px, its fill tile of th x tw
//              px, its parameter record, and the image's px per canvas px (img_sx = iw / W);
//   *refs[s].sample  its parameters (AbsSample, drawn on the CPU side of the pipeline), then
//              soft float32 [R*R] (foreground probability per patch, 1 = foreground) and
//              perm int32 [R*R].
// mean_colour float32 [N,3] (read only by the mean fill); out uint8 [N,H,W,3].
//
// The canvas is H x W canvas px (the output size); every image is stretched over it. Output
// pixel (y, x) looks at the canvas point (px, py) of the crop window (mirrored when flip):
//   px = crop_x0 + (x' + 0.5) * crop_sx, x' = flip ? W-1-x : x; py likewise.
// Image k is sampled at (px * img_sx - 0.5, py * img_sy - 0.5) in its pixels.
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

// One sample's parameters (dali_abs.swap.signature.SAMPLE): 4-byte fields only, so the layout
// is the same on every ABI; the record continues with soft[R*R] (float) and perm[R*R] (int).
struct AbsSample {
  int partner;              // batch index of the sample whose background this one gets
  unsigned int swap;        // 1 = composite, 0 = the image itself (crop, flip, resize only)
  unsigned int flip;        // 1 = mirror the output horizontally
  unsigned int noise_seed;  // key of the noise / pixels fills
  float affine[6];          // inverse map canvas point -> foreground canvas point
  float fg_box[4];          // x0, y0, x1, y1 canvas px; alpha is 0 outside
  float crop_x0, crop_y0;   // the crop window's origin, canvas px
  float crop_sx, crop_sy;   // canvas px per output px
  float box_y0, box_x0, box_y1, box_x1;  // the fill tile's region, canvas px (half-open)
};

// One sample's buffers (dali_abs.swap.signature.REFS).
struct AbsRefs {
  const unsigned char* image;  // uint8 HWC RGB, ih x iw
  const unsigned char* tile;   // uint8 HWC RGB fill tile, th x tw
  const AbsSample* sample;     // the parameter record
  int ih, iw, th, tw;
  float img_sx, img_sy;        // image px per canvas px
};

ABS_INLINE const float* abs_soft(const AbsSample* p) { return (const float*)(p + 1); }
ABS_INLINE const int* abs_perm(const AbsSample* p, int r) { return (const int*)(abs_soft(p) + r * r); }

// Image k (refs record rf) at canvas point (px, py).
ABS_INLINE void abs_canvas_sample(const AbsRefs& rf, float px, float py, float* rgb) {
  abs_rgb_bilerp(rf.image, rf.ih, rf.iw, px * rf.img_sx - 0.5f, py * rf.img_sy - 0.5f, rgb);
}

ABS_INLINE unsigned char abs_round_u8(float v) {
  v = floorf(v + 0.5f);
  return (unsigned char)(v < 0.0f ? 0.0f : (v > 255.0f ? 255.0f : v));
}

// The grid cell (0..r-1) of grid coordinate g (canvas px times r / side): patch c covers [c, c + 1).
ABS_INLINE int abs_cell(float g, int r) { return abs_clampi((int)floorf(g), 0, r - 1); }

// First row of patch `r` of a side of `size` px split into `grid` patches: ceil(r*size/grid).
ABS_INLINE int abs_patch_start(int r, int size, int grid) { return (r * size + grid - 1) / grid; }

// The kernel's arguments (dali_abs.swap.signature.ARGS).
#define ABS_COMPOSITE_PARAMS                                                                        \
  const AbsRefs* __restrict__ refs, const float* __restrict__ mean_colour, unsigned char* __restrict__ out, \
      int n, int h, int w, int r, float tight, float loose, float feather, int fill_mode
#define ABS_COMPOSITE_ARGS refs, mean_colour, out, n, h, w, r, tight, loose, feather, fill_mode

// The partner's index, kept inside the batch (records on the device are not checked by the host).
ABS_INLINE int abs_partner(const AbsSample* p, int s, int n) {
  const int j = p->partner;
  return j >= 0 && j < n ? j : s;
}

// Output pixel (y, x) of sample s.
ABS_INLINE void abs_composite_pixel(ABS_COMPOSITE_PARAMS, int s, int y, int x) {
  const float fw = (float)w, fh = (float)h;
  const float sx = (float)r / fw, sy = (float)r / fh;
  unsigned char* o = out + (((long long)s * h + y) * w + x) * 3;
  const AbsRefs& rs = refs[s];
  const AbsSample* ps = rs.sample;
  const int xm = ps->flip ? w - 1 - x : x;
  const float px = ps->crop_x0 + ((float)xm + 0.5f) * ps->crop_sx;
  const float py = ps->crop_y0 + ((float)y + 0.5f) * ps->crop_sy;
  float fg[3], bg[3];
  if (!ps->swap) {
    abs_canvas_sample(rs, px, py, fg);
    o[0] = abs_round_u8(fg[0]); o[1] = abs_round_u8(fg[1]); o[2] = abs_round_u8(fg[2]);
    return;
  }

  // foreground first: sample s itself, moved by the inverse affine map. Where alpha is 1 the
  // background is not needed at all (alpha*fg + (1-alpha)*bg is exactly fg there).
  // fg_box: canvas points outside it have alpha 0 (a conservative box from sample_params), so
  // most pixels skip the foreground mask lookup.
  float dgx, dgy;
  const float* a = ps->affine;
  const float* fb = ps->fg_box;
  float alpha = 0.0f;
  if (px >= fb[0] && px < fb[2] && py >= fb[1] && py < fb[3]) {
    const float xs = a[0] * px + a[1] * py + a[2];
    const float ys = a[3] * px + a[4] * py + a[5];
    if (xs >= 0.0f && xs < fw && ys >= 0.0f && ys < fh) {
      const float pt = abs_grid_bilerp(abs_soft(ps), r, xs * sx - 0.5f, ys * sy - 0.5f, &dgx, &dgy);
      alpha = pt > tight ? 1.0f : 0.0f;
      if (feather > 0.0f) {
        const float gx = dgx * sx, gy = dgy * sy;
        const float gm = sqrtf(gx * gx + gy * gy);
        if (gm > 0.0f) {
          alpha = 0.5f + (pt - tight) / (2.0f * feather * gm);
          alpha = alpha < 0.0f ? 0.0f : (alpha > 1.0f ? 1.0f : alpha);
        }
      }
      if (alpha > 0.0f) abs_canvas_sample(rs, xs, ys, fg);
    }
  }
  if (alpha == 1.0f) {
    o[0] = abs_round_u8(fg[0]); o[1] = abs_round_u8(fg[1]); o[2] = abs_round_u8(fg[2]);
    return;
  }

  // background: the partner's fill in its loose cells, else its image. The fill region goes by
  // cells (soft > loose in the cell under the point), exactly the cells the fill was computed
  // for: a bilinear loose mask would reach into the box's other cells, where the stored tile
  // holds only a smooth placeholder. The box test (canvas px) comes first: most pixels lie
  // outside the fill box and skip the mask lookup.
  const int j = abs_partner(ps, s, n);
  const AbsRefs& rj = refs[j];
  const AbsSample* pj = rj.sample;
  const bool in_box = py >= pj->box_y0 && py < pj->box_y1 && px >= pj->box_x0 && px < pj->box_x1;
  if (!(in_box && abs_soft(pj)[abs_cell(py * sy, r) * r + abs_cell(px * sx, r)] > loose)) {
    abs_canvas_sample(rj, px, py, bg);
  } else {
    // the canvas pixel under the point, for the fills defined per pixel
    const int cy = abs_clampi((int)floorf(py), 0, h - 1), cx = abs_clampi((int)floorf(px), 0, w - 1);
    const unsigned int pix = (unsigned int)(cy * w + cx);
    const int hj = rj.ih, wj = rj.iw;
    if (fill_mode == ABS_FILL_CACHED) {
      const float tile_sy = (float)rj.th / (pj->box_y1 - pj->box_y0);  // tile px per canvas px
      const float tile_sx = (float)rj.tw / (pj->box_x1 - pj->box_x0);
      const float ty = (py - pj->box_y0) * tile_sy - 0.5f;
      const float tx = (px - pj->box_x0) * tile_sx - 0.5f;
      abs_rgb_bilerp(rj.tile, rj.th, rj.tw, tx, ty, bg);
    } else if (fill_mode == ABS_FILL_GRAY) {
      bg[0] = bg[1] = bg[2] = 128.0f;
    } else if (fill_mode == ABS_FILL_MEAN) {
      for (int c = 0; c < 3; ++c) bg[c] = mean_colour[j * 3 + c];
    } else if (fill_mode == ABS_FILL_NOISE) {
      const unsigned int key = pj->noise_seed;
      for (int c = 0; c < 3; ++c) bg[c] = (float)(abs_mix32(key + abs_mix32(pix * 3u + (unsigned int)c)) >> 24);
    } else if (fill_mode == ABS_FILL_PIXELS) {  // a random pixel of image j, anywhere
      const unsigned int at = abs_mix32(pj->noise_seed ^ abs_mix32(pix + 0x9e3779b9u)) % (unsigned int)(hj * wj);
      const unsigned char* q = rj.image + (long long)at * 3;
      bg[0] = (float)q[0]; bg[1] = (float)q[1]; bg[2] = (float)q[2];
    } else {  // ABS_FILL_PATCHES: same offset inside canvas patch perm[j][patch of (cy, cx)], nearest in image j
      const int pr = (cy * r) / h, pc = (cx * r) / w;
      const int q = abs_clampi(abs_perm(pj, r)[pr * r + pc], 0, r * r - 1);
      const int qr = q / r, qc = q - (q / r) * r;
      const int ys = abs_clampi(abs_patch_start(qr, h, r) + cy - abs_patch_start(pr, h, r), 0,
                                abs_patch_start(qr + 1, h, r) - 1);
      const int xs = abs_clampi(abs_patch_start(qc, w, r) + cx - abs_patch_start(pc, w, r), 0,
                                abs_patch_start(qc + 1, w, r) - 1);
      const int iy = (int)(((long long)(2 * ys + 1) * hj) / (2LL * h));
      const int ix = (int)(((long long)(2 * xs + 1) * wj) / (2LL * w));
      const unsigned char* qq = rj.image + ((long long)iy * wj + ix) * 3;
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

// The mean colour of each sample's fill tile (the mean fill): one thread per sample, exact
// integer sums, one double division (the twin's int64 sums and float64 division).
extern "C" __global__ void abs_tile_mean(const AbsRefs* __restrict__ refs, float* __restrict__ mean_colour, int n) {
  for (int s = blockIdx.x * blockDim.x + threadIdx.x; s < n; s += blockDim.x * gridDim.x) {
    const AbsRefs& rf = refs[s];
    const long long px = (long long)rf.th * rf.tw;
    unsigned long long sum[3] = {0ull, 0ull, 0ull};
    for (long long i = 0; i < px; ++i)
      for (int c = 0; c < 3; ++c) sum[c] += rf.tile[i * 3 + c];
    for (int c = 0; c < 3; ++c) mean_colour[s * 3 + c] = (float)((double)sum[c] / (double)px);
  }
}
