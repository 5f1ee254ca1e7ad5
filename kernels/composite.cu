// AutoBackSwap compositing: every output pixel of a batch in one launch.
// CPU twin: dali_abs.loader.composite.composite_cpu (same float32 arithmetic, same order;
// compile with --fmad=false so no multiply-add is contracted, as the twin does not).
//
// Layouts (all C-contiguous): images uint8 [N,H,W,3] RGB 0..255; soft float32 [N,R,R]
// foreground probability (1 = foreground) per patch; fills uint8 [N,F,F,3]; boxes float32
// [N,4] (y0,x0,y1,x1) in 0..1; partner int32 [N]; swap uint8 [N]; affine float32 [N,6]
// (inverse map, output pixel centre -> source); noise_seed uint32 [N]; perm int32 [N,R*R];
// mean_colour float32 [N,3]; out uint8 [N,H,W,3].
// Pixel (i,j) has its centre at (x,y) = (j+0.5, i+0.5). The R x R grid values sit at the
// patch centres; bilinear interpolation between them, edge-replicated at the borders.
// One thread per output pixel (all 3 channels); the grid-stride loop covers any batch.

#define ABS_FILL_CACHED 0
#define ABS_FILL_GRAY 1
#define ABS_FILL_MEAN 2
#define ABS_FILL_NOISE 3
#define ABS_FILL_PIXELS 4
#define ABS_FILL_PATCHES 5

// 32-bit integer mix (lowbias32, C. Wellons): only unsigned 32-bit ops, so NumPy uint32 and
// CUDA agree bit for bit.
static __device__ inline unsigned int abs_mix32(unsigned int x) {
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  x *= 0x846ca68bu;
  x ^= x >> 16;
  return x;
}

static __device__ inline int abs_clampi(int v, int lo, int hi) { return v < lo ? lo : (v > hi ? hi : v); }

// Bilinear sample of an r x r float grid at grid coordinates (gx, gy) (grid value (row, col)
// sits at (col, row)); also returns the partial derivatives in grid units.
static __device__ inline float abs_grid_bilerp(const float* __restrict__ g, int r, float gx, float gy,
                                               float* dgx, float* dgy) {
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

// First row of patch `r` of a side of `size` px split into `grid` patches: ceil(r*size/grid).
static __device__ inline int abs_patch_start(int r, int size, int grid) { return (r * size + grid - 1) / grid; }

extern "C" __global__ void abs_composite(
    const unsigned char* __restrict__ images, const float* __restrict__ soft,
    const unsigned char* __restrict__ fills, const float* __restrict__ boxes,
    const int* __restrict__ partner, const unsigned char* __restrict__ swap,
    const float* __restrict__ affine, const unsigned int* __restrict__ noise_seed,
    const int* __restrict__ perm, const float* __restrict__ mean_colour,
    const float* __restrict__ fg_box, unsigned char* __restrict__ out, int n, int h, int w, int r, int f,
    float tight, float loose, float feather, int fill_mode) {
  const long long plane = (long long)h * w;
  const long long total = (long long)n * plane;
  const float sx = (float)r / (float)w, sy = (float)r / (float)h;
  const float fw = (float)w, fh = (float)h;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
       i += (long long)blockDim.x * gridDim.x) {
    const int s = (int)(i / plane);
    const int pix = (int)(i - (long long)s * plane);
    const int y = pix / w, x = pix - (pix / w) * w;
    unsigned char* o = out + i * 3;
    const unsigned char* src = images + i * 3;
    if (!swap[s]) {
      o[0] = src[0]; o[1] = src[1]; o[2] = src[2];
      continue;
    }
    const float px = (float)x + 0.5f, py = (float)y + 0.5f;

    // background: the partner's image, its fill inside its loose region
    const int j = partner[s];
    float bg[3];
    const unsigned char* bsrc = images + ((long long)j * plane + pix) * 3;
    bg[0] = (float)bsrc[0]; bg[1] = (float)bsrc[1]; bg[2] = (float)bsrc[2];
    float dgx, dgy;
    const float u = px / fw, v = py / fh;
    const float by0 = boxes[j * 4 + 0], bx0 = boxes[j * 4 + 1], by1 = boxes[j * 4 + 2], bx1 = boxes[j * 4 + 3];
    // The box test comes first: most pixels lie outside the fill box and skip the mask lookup.
    const bool in_box = v >= by0 && v < by1 && u >= bx0 && u < bx1;
    if (in_box && abs_grid_bilerp(soft + (long long)j * r * r, r, px * sx - 0.5f, py * sy - 0.5f, &dgx, &dgy) > loose) {
      if (fill_mode == ABS_FILL_CACHED) {
        const float ty = (v - by0) / (by1 - by0) * (float)f - 0.5f;
        const float tx = (u - bx0) / (bx1 - bx0) * (float)f - 0.5f;
        const float fx0 = floorf(tx), fy0 = floorf(ty);
        const float ax = tx - fx0, ay = ty - fy0;
        const int ix0 = abs_clampi((int)fx0, 0, f - 1), ix1 = abs_clampi((int)fx0 + 1, 0, f - 1);
        const int iy0 = abs_clampi((int)fy0, 0, f - 1), iy1 = abs_clampi((int)fy0 + 1, 0, f - 1);
        const unsigned char* tile = fills + (long long)j * f * f * 3;
        for (int c = 0; c < 3; ++c) {
          const float v00 = tile[(iy0 * f + ix0) * 3 + c], v01 = tile[(iy0 * f + ix1) * 3 + c];
          const float v10 = tile[(iy1 * f + ix0) * 3 + c], v11 = tile[(iy1 * f + ix1) * 3 + c];
          const float top = v00 + (v01 - v00) * ax, bot = v10 + (v11 - v10) * ax;
          bg[c] = top + (bot - top) * ay;
        }
      } else if (fill_mode == ABS_FILL_GRAY) {
        bg[0] = bg[1] = bg[2] = 128.0f;
      } else if (fill_mode == ABS_FILL_MEAN) {
        for (int c = 0; c < 3; ++c) bg[c] = mean_colour[j * 3 + c];
      } else if (fill_mode == ABS_FILL_NOISE) {
        const unsigned int key = noise_seed[j];
        for (int c = 0; c < 3; ++c)
          bg[c] = (float)(abs_mix32(key + abs_mix32((unsigned int)pix * 3u + (unsigned int)c)) >> 24);
      } else if (fill_mode == ABS_FILL_PIXELS) {
        const unsigned int at = abs_mix32(noise_seed[j] ^ abs_mix32((unsigned int)pix + 0x9e3779b9u)) % (unsigned int)plane;
        const unsigned char* q = images + ((long long)j * plane + at) * 3;
        bg[0] = (float)q[0]; bg[1] = (float)q[1]; bg[2] = (float)q[2];
      } else {  // ABS_FILL_PATCHES: same offset inside patch perm[j][patch of (y, x)]
        const int pr = (y * r) / h, pc = (x * r) / w;
        const int q = perm[j * r * r + pr * r + pc];
        const int qr = q / r, qc = q - (q / r) * r;
        const int ys = abs_clampi(abs_patch_start(qr, h, r) + y - abs_patch_start(pr, h, r), 0,
                                  abs_patch_start(qr + 1, h, r) - 1);
        const int xs = abs_clampi(abs_patch_start(qc, w, r) + x - abs_patch_start(pc, w, r), 0,
                                  abs_patch_start(qc + 1, w, r) - 1);
        const unsigned char* qq = images + ((long long)j * plane + (long long)ys * w + xs) * 3;
        bg[0] = (float)qq[0]; bg[1] = (float)qq[1]; bg[2] = (float)qq[2];
      }
    }

    // foreground: sample s itself, moved by the inverse affine map
    // fg_box: output pixel centres outside it have alpha 0 (a conservative box from
    // sample_params), so most pixels skip the foreground mask lookup.
    const float* a = affine + s * 6;
    const float* fb = fg_box + s * 4;
    float xs = 0.0f, ys = 0.0f, alpha = 0.0f;
    if (px >= fb[0] && px < fb[2] && py >= fb[1] && py < fb[3]) {
      xs = a[0] * px + a[1] * py + a[2];
      ys = a[3] * px + a[4] * py + a[5];
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
      }
    }
    if (alpha > 0.0f) {
      const int iy = abs_clampi((int)floorf(ys), 0, h - 1), ix = abs_clampi((int)floorf(xs), 0, w - 1);
      const unsigned char* fsrc = images + ((long long)s * plane + (long long)iy * w + ix) * 3;
      for (int c = 0; c < 3; ++c) {
        float val = floorf(alpha * (float)fsrc[c] + (1.0f - alpha) * bg[c] + 0.5f);
        val = val < 0.0f ? 0.0f : (val > 255.0f ? 255.0f : val);
        o[c] = (unsigned char)val;
      }
    } else {
      for (int c = 0; c < 3; ++c) {
        float val = floorf(bg[c] + 0.5f);
        val = val < 0.0f ? 0.0f : (val > 255.0f ? 255.0f : val);
        o[c] = (unsigned char)val;
      }
    }
  }
}
