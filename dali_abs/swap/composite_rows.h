// CPU row renderer for composite.cu: whole output rows, eight pixels per step (AVX2),
// with the same float32 arithmetic in the same order as abs_composite_pixel, so the output is
// the same byte for byte (the tests compare it with the per-pixel body and the NumPy twin).
//
// Why it is fast: with the default swap (no rotation, hard masks, cached fills)
// every coordinate the body computes per pixel is a function of the output column alone or of
// the output row alone. So each sample's column quantities (canvas x, source columns and
// weights of the three sources, the patch-grid columns) go into tables once per sample, each
// row's into a few scalars, and a pixel is a table lookup, two mask tests, a blend of
// offsets and one bilinear gather. A rotated or sheared foreground is not separable: there
// each lane maps its point through the affine map itself (the same float operations as the
// body) and gathers from the mask grid and the image. Feathered alpha, fills other than
// "cached", a constant backdrop and CPUs without AVX2 take the per-pixel body.
//
// Needs: composite.cu (its helpers, AbsSample, AbsRefs, ABS_COMPOSITE_PARAMS) included before this file.
#pragma once
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include <vector>

namespace abs_rows {

// Sampling of a uint8 RGB source of n px along one axis at coordinate g (pixel centres at
// +0.5, edge-clamped): byte offsets of the two neighbours and the weight of the second,
// exactly as abs_bilerp_setup computes them.
static inline void axis_setup(float g, int n, int32_t* off0, int32_t* off1, float* a, int stride) {
  const float f0 = floorf(g);
  *a = g - f0;
  *off0 = abs_clampi((int)f0, 0, n - 1) * stride;
  *off1 = abs_clampi((int)f0 + 1, 0, n - 1) * stride;
}

// Column tables of one sample, each padded to a multiple of 8 entries with copies of the last.
struct Tables {
  int s = -1;
  bool fast = false, swapped = false;
  bool fg_tables = false;  // the foreground from the column tables (axis-aligned map)
  bool fg_affine = false;  // else per lane through the affine map
  // fg_affine: source boxes (x0, y0, x1, y1, canvas px, 4 per box), one per band of grid rows,
  // outside which the mask stays below tight (source_boxes)
  std::vector<double> src_boxes;
  // fg_affine: s's grid with its edge cells repeated around it ((r + 2) x (r + 2)), so that a
  // point's two grid columns are always neighbours in memory (one 8-byte load for both)
  std::vector<float> gpad;
  bool pairs = false;  // image s has 3 px or more: an 8-byte load at byte 0 stays inside it
  std::vector<float> px;  // canvas x of each output column
  std::vector<int32_t> f_box;  // -1 where the column lies inside the foreground box
  int w8 = 0;
  // plain source (sample s's image unswapped, its partner's image swapped) at canvas x
  std::vector<int32_t> p_off0, p_off1;
  std::vector<float> p_ax;
  // foreground (swapped): -1 where the column can hold foreground, source columns, grid columns
  std::vector<int32_t> f_ok, f_off0, f_off1, fg_ix0, fg_ix1;
  std::vector<float> f_ax, fg_fx;
  // the partner's fill: -1 inside its box, grid columns of its mask, tile columns
  std::vector<int32_t> j_in, jg_cell, t_off0, t_off1;  // jg_cell: grid column of j's mask (by cells)
  std::vector<float> t_ax;
  // s's mask: horizontal lerps of its r grid rows; j's: its cells along each grid row (r x w8,
  // computed when a row first needs them)
  std::vector<float> hs, hj;
  std::vector<char> hs_done, hj_done;
};

// The sample's canvas x of output column x (as the body: flip, crop origin and scale).
static inline float canvas_x(const AbsSample* ps, int w, bool flip, int x) {
  const int xm = flip ? w - 1 - x : x;
  return ps->crop_x0 + ((float)xm + 0.5f) * ps->crop_sx;
}

// Source canvas boxes (x0, y0, x1, y1), one per band between two grid rows, outside which the
// bilinear mask of an r x r grid stays at or below `tight`: a bilinear value lies between the
// values of its four cells (those around it, clamped at the edges), so a point can exceed tight
// only where one of them is at or above it (less 1e-6, as foreground_box in sampling.py). A point
// with grid coordinate gy in [i, i + 1) reads grid rows i and i + 1, i.e. source y in
// [(i + 0.5), (i + 1.5)) patch heights; its band's box spans the grid columns j whose 2 x 2 block
// (rows i, i + 1, columns j, j + 1) holds such a cell. Each box widened by one px for rounding.
// Empty when no cell is.
static void source_boxes(std::vector<double>& boxes, const float* g, int r, float tight, int w, int h) {
  boxes.clear();
  const double pw = (double)w / r, ph = (double)h / r;
  auto hot = [&](int i, int j) { return g[abs_clampi(i, 0, r - 1) * r + abs_clampi(j, 0, r - 1)] >= tight - 1e-6f; };
  for (int i = -1; i < r; ++i) {  // floor(gy), for points inside the canvas
    int lo = r, hi = -2;
    for (int j = -1; j < r; ++j)
      if (hot(i, j) || hot(i, j + 1) || hot(i + 1, j) || hot(i + 1, j + 1)) {
        lo = j < lo ? j : lo;
        hi = j;
      }
    if (hi < lo) continue;
    boxes.insert(boxes.end(), {(lo + 0.5) * pw - 1.0, (i + 0.5) * ph - 1.0, (hi + 1.5) * pw + 1.0, (i + 1.5) * ph + 1.0});
  }
}

// The output columns [*lo, *hi] of row py whose points the affine map a takes into one of the
// source boxes (a rotated foreground's outline along the row, often much narrower than its
// axis-aligned fg_box), widened by one column each side; outside them no lane can be foreground.
static void affine_columns(const std::vector<double>& boxes, const float* a, const AbsSample* ps, int w, float py,
                           int* lo, int* hi) {
  double ulo = 1e30, uhi = -1e30;  // canvas x: the union of the boxes' intervals
  const double k[2] = {a[0], a[3]}, c[2] = {(double)a[1] * py + a[2], (double)a[4] * py + a[5]};
  for (size_t b = 0; b < boxes.size(); b += 4) {
    double plo = -1e30, phi = 1e30;
    bool none = false;
    for (int d = 0; d < 2 && !none; ++d) {
      const double blo = boxes[b + d], bhi = boxes[b + d + 2];
      if (k[d] > 1e-12 || k[d] < -1e-12) {
        double u = (blo - c[d]) / k[d], v = (bhi - c[d]) / k[d];
        if (u > v) { const double tmp = u; u = v; v = tmp; }
        plo = u > plo ? u : plo; phi = v < phi ? v : phi;
      } else {
        none = c[d] < blo || c[d] > bhi;
      }
    }
    if (none || plo > phi) continue;
    ulo = plo < ulo ? plo : ulo;
    uhi = phi > uhi ? phi : uhi;
  }
  if (ulo > uhi) { *lo = 0; *hi = -1; return; }
  // canvas x = crop_x0 + (xm + 0.5) * crop_sx, increasing in xm (crop_sx > 0); x = xm or w - 1 - xm
  const double sx = ps->crop_sx;
  double m0 = (ulo - ps->crop_x0) / sx - 0.5, m1 = (uhi - ps->crop_x0) / sx - 0.5;
  m0 = m0 < -2.0 ? -2.0 : (m0 > w + 2.0 ? w + 2.0 : m0);
  m1 = m1 < -2.0 ? -2.0 : (m1 > w + 2.0 ? w + 2.0 : m1);
  int x0 = (int)floor(m0) - 1, x1 = (int)ceil(m1) + 1;
  if (ps->flip) { const int tmp = w - 1 - x1; x1 = w - 1 - x0; x0 = tmp; }
  *lo = x0; *hi = x1;
}

static void build_tables(Tables& t, ABS_COMPOSITE_PARAMS, int s) {
  t.s = s;
  t.w8 = (w + 7) / 8 * 8;
  const AbsRefs& rs = refs[s];
  const AbsSample* ps = rs.sample;
  t.swapped = ps->swap != 0;
  const float* a = ps->affine;
  t.fg_tables = t.swapped && a[1] == 0.0f && a[3] == 0.0f;
  t.fg_affine = t.swapped && !t.fg_tables;
  if (t.fg_affine) source_boxes(t.src_boxes, abs_soft(ps), r, tight, w, h);
  if (t.fg_affine && t.src_boxes.empty()) t.fg_affine = false;  // no foreground
  if (t.fg_affine) {
    const int rp = r + 2;
    const float* g = abs_soft(ps);
    t.gpad.resize((size_t)rp * rp);
    for (int i = 0; i < rp; ++i)
      for (int j = 0; j < rp; ++j) t.gpad[(size_t)i * rp + j] = g[abs_clampi(i - 1, 0, r - 1) * r + abs_clampi(j - 1, 0, r - 1)];
    t.pairs = (long long)rs.ih * rs.iw >= 3;
    // A rotated foreground reads its image along tilted lines, a few pixels from each of many
    // rows, which the hardware does not see coming: ask for the rows its source boxes cover now
    // (a just-decoded image is often not in this core's cache; the sample's rows reuse them).
    double y0 = 1e30, y1 = -1e30;
    for (size_t b = 0; b < t.src_boxes.size(); b += 4) {
      y0 = t.src_boxes[b + 1] < y0 ? t.src_boxes[b + 1] : y0;
      y1 = t.src_boxes[b + 3] > y1 ? t.src_boxes[b + 3] : y1;
    }
    const int r0 = abs_clampi((int)floor(y0 * rs.img_sy) - 1, 0, rs.ih - 1);
    const int r1 = abs_clampi((int)ceil(y1 * rs.img_sy) + 1, 0, rs.ih - 1);
    const unsigned char* from = rs.image + (long long)r0 * rs.iw * 3;
    const long long bytes = (long long)(r1 - r0 + 1) * rs.iw * 3;
    if (bytes <= (1LL << 19))
      for (long long b = 0; b < bytes; b += 64) __builtin_prefetch(from + b);
  }
  // feathered alpha, the per-pixel fills and a constant backdrop (the audit's object alone): the
  // body; per-lane gathers index image s by int32 offsets (and a 1 x 1 image is 3 bytes, less than
  // one 4-byte load: sample8<true> needs 2 px or more)
  const long long px_s = (long long)rs.ih * rs.iw;
  t.fast = !t.swapped || (!ps->backdrop && fill_mode == ABS_FILL_CACHED && !(feather > 0.0f) &&
                          (t.fg_tables || (px_s >= 2 && px_s * 3 < (1LL << 31) - 64)));
  if (!t.fast) return;
  const int W = t.w8;
  const float fw = (float)w, sx = (float)r / fw;
  const bool fl = ps->flip != 0;
  const int j = t.swapped ? abs_partner(ps, s, n) : s;
  const AbsRefs& rj = refs[j];
  const AbsSample* pj = rj.sample;
  t.p_off0.resize(W); t.p_off1.resize(W); t.p_ax.resize(W);
  for (int x = 0; x < W; ++x) {
    const float px = canvas_x(ps, w, fl, x < w ? x : w - 1);
    axis_setup(px * rj.img_sx - 0.5f, rj.iw, &t.p_off0[x], &t.p_off1[x], &t.p_ax[x], 3);
  }
  if (!t.swapped) return;
  const int ws = rs.iw, tw = rj.tw;
  const float tile_sx = (float)tw / (pj->box_x1 - pj->box_x0);  // as the body computes it
  const float* fb = ps->fg_box;
  for (auto* v : {&t.f_ok, &t.f_off0, &t.f_off1, &t.fg_ix0, &t.fg_ix1, &t.j_in, &t.jg_cell, &t.t_off0,
                  &t.t_off1, &t.f_box})
    v->resize(W);
  for (auto* v : {&t.f_ax, &t.fg_fx, &t.t_ax, &t.px}) v->resize(W);
  for (int x = 0; x < W; ++x) {
    const float px = canvas_x(ps, w, fl, x < w ? x : w - 1);
    t.px[x] = px;
    t.f_box[x] = (px >= fb[0] && px < fb[2]) ? -1 : 0;
    if (t.fg_tables) {
      // a[1] and a[3] are zero: a[1] * py adds a (signed) zero, which changes no later result
      const float xs = a[0] * px + a[2];
      t.f_ok[x] = (px >= fb[0] && px < fb[2] && xs >= 0.0f && xs < fw) ? -1 : 0;
      axis_setup(xs * rs.img_sx - 0.5f, ws, &t.f_off0[x], &t.f_off1[x], &t.f_ax[x], 3);
      axis_setup(xs * sx - 0.5f, r, &t.fg_ix0[x], &t.fg_ix1[x], &t.fg_fx[x], 1);
    }
    t.j_in[x] = (px >= pj->box_x0 && px < pj->box_x1) ? -1 : 0;
    t.jg_cell[x] = abs_cell(px * sx, r);
    axis_setup((px - pj->box_x0) * tile_sx - 0.5f, tw, &t.t_off0[x], &t.t_off1[x], &t.t_ax[x], 3);
  }
  t.hs.resize((size_t)r * W); t.hj.resize((size_t)r * W);
  t.hs_done.assign(r, 0); t.hj_done.assign(r, 0);
}

// The two rows of an r x r grid around grid row coordinate gy, each interpolated along x (the
// `top` and `bot` of abs_grid_bilerp, computed the first time a sample needs them), and the
// weight between them.
struct GridRows {
  const float* top;
  const float* bot;
  float fy;
};

static GridRows grid_rows(std::vector<float>& h, std::vector<char>& done, const float* g, int r, float gy,
                          const int32_t* ix0, const int32_t* ix1, const float* fx, int W) {
  int32_t iy[2];
  GridRows out;
  axis_setup(gy, r, &iy[0], &iy[1], &out.fy, 1);
  for (int k = 0; k < 2; ++k) {
    float* o = h.data() + (size_t)iy[k] * W;
    if (!done[iy[k]]) {
      const float* gr = g + iy[k] * r;
      for (int x = 0; x < W; ++x) {
        const float v0 = gr[ix0[x]], v1 = gr[ix1[x]];
        o[x] = v0 + (v1 - v0) * fx[x];
      }
      done[iy[k]] = 1;
    }
    (k == 0 ? out.top : out.bot) = o;
  }
  return out;
}

// Grid row `cy` of an r x r grid, cell by cell under each output column (`cell[x]`), computed
// the first time a sample needs it.
static const float* cell_row(std::vector<float>& h, std::vector<char>& done, const float* g, int r, int cy,
                             const int32_t* cell, int W) {
  float* o = h.data() + (size_t)cy * W;
  if (!done[cy]) {
    for (int x = 0; x < W; ++x) o[x] = g[cy * r + cell[x]];
    done[cy] = 1;
  }
  return o;
}

// One source's two rows for the current output row: pointers, bytes per row, weight.
struct RowPair {
  const unsigned char* r0;
  const unsigned char* r1;
  int bytes;
  bool last;  // one of the rows is the image's last: a 4-byte load at its end reads past the buffer
  float a;
};

static inline RowPair row_pair(const unsigned char* img, int ih, int iw, float gy) {
  int32_t o0, o1;
  RowPair p;
  axis_setup(gy, ih, &o0, &o1, &p.a, 1);
  p.r0 = img + (long long)o0 * iw * 3;
  p.r1 = img + (long long)o1 * iw * 3;
  p.bytes = iw * 3;
  p.last = o1 == ih - 1;  // o0 <= o1
  return p;
}

// The row's sources as int32 byte offsets from one base: the rows in place when all lie within
// reach of a 32-bit gather index, none is an image's last row and every row has 32 bytes or more
// (so that a 32-byte load anywhere in a row stays inside the image: sample8_near), else copied,
// each followed by 32 bytes of padding, into `scratch`.
static const unsigned char* gather_base(RowPair* src, int k, std::vector<unsigned char>& scratch, int32_t* b0,
                                        int32_t* b1) {
  const unsigned char* base = src[0].r0;
  bool copy = false;
  for (int i = 0; i < k && !copy; ++i) {
    const long long d0 = src[i].r0 - base, d1 = src[i].r1 - base;
    copy = src[i].last || src[i].bytes < 32 || d0 < -(1LL << 30) || d0 > (1LL << 30) || d1 < -(1LL << 30) || d1 > (1LL << 30);
    b0[i] = (int32_t)d0;
    b1[i] = (int32_t)d1;
  }
  if (!copy) return base;
  size_t need = 0;
  for (int i = 0; i < k; ++i) need += 2 * ((size_t)src[i].bytes + 32);
  if (scratch.size() < need) scratch.resize(need);
  size_t at = 0;
  for (int i = 0; i < k; ++i) {
    memcpy(scratch.data() + at, src[i].r0, src[i].bytes);
    b0[i] = (int32_t)at;
    at += src[i].bytes + 32;
    memcpy(scratch.data() + at, src[i].r1, src[i].bytes);
    b1[i] = (int32_t)at;
    at += src[i].bytes + 32;
  }
  return scratch.data();
}

__attribute__((target("avx2"))) static inline __m256i load_i(const int32_t* p) {
  return _mm256_loadu_si256((const __m256i*)p);
}

// abs_rgb_bilerp and abs_round_u8 lane by lane on the four neighbours' RGBx (v[0..3] = v00,
// v01, v10, v11) and the weights: eight pixels, RGBx in the lanes.
__attribute__((target("avx2"))) static inline __m256i blend8(const __m256i* v, __m256 ax, __m256 ay) {
  const __m256i m = _mm256_set1_epi32(0xff);
  const __m256 half = _mm256_set1_ps(0.5f), zero = _mm256_setzero_ps(), top255 = _mm256_set1_ps(255.0f);
  __m256i packed = _mm256_setzero_si256();
  for (int c = 0; c < 3; ++c) {
    const __m256 a00 = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(v[0], 8 * c), m));
    const __m256 a01 = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(v[1], 8 * c), m));
    const __m256 a10 = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(v[2], 8 * c), m));
    const __m256 a11 = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(v[3], 8 * c), m));
    const __m256 top = _mm256_add_ps(a00, _mm256_mul_ps(_mm256_sub_ps(a01, a00), ax));
    const __m256 bot = _mm256_add_ps(a10, _mm256_mul_ps(_mm256_sub_ps(a11, a10), ax));
    const __m256 val = _mm256_add_ps(top, _mm256_mul_ps(_mm256_sub_ps(bot, top), ay));
    const __m256 rv = _mm256_min_ps(_mm256_max_ps(_mm256_floor_ps(_mm256_add_ps(val, half)), zero), top255);
    packed = _mm256_or_si256(packed, _mm256_slli_epi32(_mm256_cvttps_epi32(rv), 8 * c));
  }
  return packed;
}

// Eight pixels (RGBx in the lanes, rounded to 0..255) from the byte offsets of their four
// neighbours from `base` and the weights, by gathers.
// `from_below`: each 4-byte load ends at the pixel's last byte (starts one byte early) except
// at offset 0, so that no load passes the end of an image of 2 px or more (a pixel is 3 bytes).
template <bool from_below>
__attribute__((target("avx2"))) static inline __m256i sample8(const unsigned char* base, __m256i o00, __m256i o01,
                                                              __m256i o10, __m256i o11, __m256 ax, __m256 ay) {
  const int* b = (const int*)base;
  __m256i v[4] = {o00, o01, o10, o11};
  for (int i = 0; i < 4; ++i) {
    if (from_below) {
      const __m256i back = _mm256_cmpgt_epi32(v[i], _mm256_setzero_si256());  // -1 where offset > 0
      v[i] = _mm256_srlv_epi32(_mm256_i32gather_epi32(b, _mm256_add_epi32(v[i], back), 1),
                               _mm256_and_si256(back, _mm256_set1_epi32(8)));
    } else {
      v[i] = _mm256_i32gather_epi32(b, v[i], 1);
    }
  }
  return blend8(v, ax, ay);
}

__attribute__((target("avx2"))) static inline int hmin8(__m256i v) {
  __m128i q = _mm_min_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  q = _mm_min_epi32(q, _mm_shuffle_epi32(q, _MM_SHUFFLE(1, 0, 3, 2)));
  return _mm_cvtsi128_si32(_mm_min_epi32(q, _mm_shuffle_epi32(q, _MM_SHUFFLE(2, 3, 0, 1))));
}

__attribute__((target("avx2"))) static inline int hmax8(__m256i v) {
  __m128i q = _mm_max_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  q = _mm_max_epi32(q, _mm_shuffle_epi32(q, _MM_SHUFFLE(1, 0, 3, 2)));
  return _mm_cvtsi128_si32(_mm_max_epi32(q, _mm_shuffle_epi32(q, _MM_SHUFFLE(2, 3, 0, 1))));
}

// The four bytes at byte offset rel (0..28) of the 32 bytes `row`, lane by lane: a byte shuffle
// across both halves instead of a gather.
__attribute__((target("avx2"))) static inline __m256i bytes4(__m256i row, __m256i rel) {
  const __m256i spread = _mm256_setr_epi8(0, 0, 0, 0, 4, 4, 4, 4, 8, 8, 8, 8, 12, 12, 12, 12, 0, 0, 0, 0, 4, 4, 4, 4,
                                          8, 8, 8, 8, 12, 12, 12, 12);
  const __m256i idx = _mm256_add_epi8(_mm256_shuffle_epi8(rel, spread), _mm256_set1_epi32(0x03020100));
  const __m256i lo = _mm256_permute2x128_si256(row, row, 0x00), hi = _mm256_permute2x128_si256(row, row, 0x11);
  return _mm256_blendv_epi8(_mm256_shuffle_epi8(lo, idx), _mm256_shuffle_epi8(hi, idx),
                            _mm256_cmpgt_epi8(idx, _mm256_set1_epi8(15)));
}

// sample8<false> for eight lanes that read one source's two rows (o10 - o00 the same in every
// lane): where their columns span 32 bytes or less, two loads and byte shuffles instead of four
// gathers (same bytes, so the same pixels); else the gathers. Needs gather_base's guarantee
// that a 32-byte load in any row stays inside its image.
__attribute__((target("avx2"))) static inline __m256i sample8_near(const unsigned char* base, __m256i o00,
                                                                   __m256i o01, __m256i o10, __m256i o11, __m256 ax,
                                                                   __m256 ay) {
  const int lo = hmin8(o00);
  if (hmax8(o01) - lo > 28) return sample8<false>(base, o00, o01, o10, o11, ax, ay);
  const int d = _mm256_cvtsi256_si32(_mm256_sub_epi32(o10, o00));
  const __m256i row0 = _mm256_loadu_si256((const __m256i*)(base + lo));
  const __m256i row1 = _mm256_loadu_si256((const __m256i*)(base + lo + d));
  const __m256i l = _mm256_set1_epi32(lo), r00 = _mm256_sub_epi32(o00, l), r01 = _mm256_sub_epi32(o01, l);
  const __m256i v[4] = {bytes4(row0, r00), bytes4(row0, r01), bytes4(row1, r00), bytes4(row1, r01)};
  return blend8(v, ax, ay);
}

// The first `count` (1..8) pixels of RGBx lanes as contiguous RGB bytes at o.
__attribute__((target("avx2"))) static inline void store8(__m256i packed, unsigned char* o, int count) {
  const __m256i shuf = _mm256_setr_epi8(0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, -1, -1, -1, -1, 0, 1, 2, 4, 5, 6, 8,
                                        9, 10, 12, 13, 14, -1, -1, -1, -1);
  const __m256i rgb = _mm256_permutevar8x32_epi32(_mm256_shuffle_epi8(packed, shuf),
                                                  _mm256_setr_epi32(0, 1, 2, 4, 5, 6, 3, 7));
  if (count == 8) {
    _mm_storeu_si128((__m128i*)o, _mm256_castsi256_si128(rgb));
    _mm_storel_epi64((__m128i*)(o + 16), _mm256_extracti128_si256(rgb, 1));
  } else {
    alignas(32) unsigned char tmp[32];
    _mm256_store_si256((__m256i*)tmp, rgb);
    memcpy(o, tmp, (size_t)count * 3);
  }
}

// Floor, fraction and the two clamped neighbours of eight coordinates (abs_bilerp_setup).
__attribute__((target("avx2"))) static inline void axis8(__m256 g, int n, __m256i* i0, __m256i* i1, __m256* a) {
  const __m256 f0 = _mm256_floor_ps(g);
  *a = _mm256_sub_ps(g, f0);
  const __m256i k = _mm256_cvttps_epi32(f0), lo = _mm256_setzero_si256(), hi = _mm256_set1_epi32(n - 1);
  *i0 = _mm256_min_epi32(_mm256_max_epi32(k, lo), hi);
  *i1 = _mm256_min_epi32(_mm256_max_epi32(_mm256_add_epi32(k, _mm256_set1_epi32(1)), lo), hi);
}

// Lanes of `m` take a source's neighbours: columns c0 / c1 (byte offsets in a row) from the
// rows at b0 / b1, column weights cax, row weight ay_k; o[4] = offsets of v00, v01, v10, v11.
__attribute__((target("avx2"))) static inline void take(__m256 m, const int32_t* c0, const int32_t* c1,
                                                        const float* cax, int32_t b0, int32_t b1, float ay_k,
                                                        __m256i* o, __m256* ax, __m256* ay) {
  const __m256i k0 = load_i(c0), k1 = load_i(c1), r0 = _mm256_set1_epi32(b0), r1 = _mm256_set1_epi32(b1);
  const __m256i v[4] = {_mm256_add_epi32(k0, r0), _mm256_add_epi32(k1, r0), _mm256_add_epi32(k0, r1),
                        _mm256_add_epi32(k1, r1)};
  for (int i = 0; i < 4; ++i)
    o[i] = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(o[i]), _mm256_castsi256_ps(v[i]), m));
  *ax = _mm256_blendv_ps(*ax, _mm256_loadu_ps(cax), m);
  *ay = _mm256_blendv_ps(*ay, _mm256_set1_ps(ay_k), m);
}

// The low 32 bits of the eight 64-bit lanes of lo (lanes 0-3) and hi (lanes 4-7), in order.
__attribute__((target("avx2"))) static inline __m256i low_dwords(__m256i lo, __m256i hi) {
  const __m256 sh = _mm256_shuffle_ps(_mm256_castsi256_ps(lo), _mm256_castsi256_ps(hi), 0x88);
  return _mm256_permute4x64_epi64(_mm256_castps_si256(sh), 0xD8);
}

// Eight 8-byte loads from base + off (byte offsets, int32 lanes): two 4-lane gathers.
__attribute__((target("avx2"))) static inline void gather_pairs(const void* base, __m256i off, __m256i* lo,
                                                                __m256i* hi) {
  *lo = _mm256_i32gather_epi64((const long long*)base, _mm256_castsi256_si128(off), 1);
  *hi = _mm256_i32gather_epi64((const long long*)base, _mm256_extracti128_si256(off, 1), 1);
}

// abs_grid_bilerp of the padded grid (t.gpad, rp = r + 2 columns) at grid coordinates gx, gy of
// eight points with xs, ys inside the canvas (gx, gy in [-0.5, r - 0.5): floor in [-1, r - 1];
// other lanes are clamped there and give some value): each row's two cells in one 8-byte load,
// the same values and the same arithmetic as axis8 and the four-gather version.
__attribute__((target("avx2"))) static inline __m256 grid_bilerp8(const float* gpad, int r, __m256 gx, __m256 gy) {
  const __m256 fx0 = _mm256_floor_ps(gx), fy0 = _mm256_floor_ps(gy);
  const __m256 fx = _mm256_sub_ps(gx, fx0), fy = _mm256_sub_ps(gy, fy0);
  const __m256i lo = _mm256_set1_epi32(-1), hi = _mm256_set1_epi32(r - 1), one = _mm256_set1_epi32(1);
  const __m256i kx = _mm256_add_epi32(_mm256_min_epi32(_mm256_max_epi32(_mm256_cvttps_epi32(fx0), lo), hi), one);
  const __m256i ky = _mm256_add_epi32(_mm256_min_epi32(_mm256_max_epi32(_mm256_cvttps_epi32(fy0), lo), hi), one);
  const __m256i rp = _mm256_set1_epi32(r + 2);
  const __m256i top_i = _mm256_slli_epi32(_mm256_add_epi32(_mm256_mullo_epi32(ky, rp), kx), 2);  // bytes
  const __m256i bot_i = _mm256_add_epi32(top_i, _mm256_slli_epi32(rp, 2));
  __m256i a, b, c, d;
  gather_pairs(gpad, top_i, &a, &b);
  gather_pairs(gpad, bot_i, &c, &d);
  const __m256 v00 = _mm256_castsi256_ps(low_dwords(a, b));
  const __m256 v01 = _mm256_castsi256_ps(low_dwords(_mm256_srli_epi64(a, 32), _mm256_srli_epi64(b, 32)));
  const __m256 v10 = _mm256_castsi256_ps(low_dwords(c, d));
  const __m256 v11 = _mm256_castsi256_ps(low_dwords(_mm256_srli_epi64(c, 32), _mm256_srli_epi64(d, 32)));
  const __m256 top = _mm256_add_ps(v00, _mm256_mul_ps(_mm256_sub_ps(v01, v00), fx));
  const __m256 bot = _mm256_add_ps(v10, _mm256_mul_ps(_mm256_sub_ps(v11, v10), fx));
  return _mm256_add_ps(top, _mm256_mul_ps(_mm256_sub_ps(bot, top), fy));
}

// sample8<true> where every lane's two columns are neighbours (o01 = o00 + 3, o11 = o10 + 3) and
// o00, o10 >= 2: each row's two pixels in one 8-byte load ending at the second pixel's last
// byte (bytes o - 2 .. o + 5, inside the image), so the same bytes as the four gathers.
__attribute__((target("avx2"))) static inline __m256i sample8_pairs(const unsigned char* base, __m256i o00,
                                                                    __m256i o10, __m256 ax, __m256 ay) {
  const __m256i two = _mm256_set1_epi32(2);
  __m256i a, b, c, d;
  gather_pairs(base, _mm256_sub_epi32(o00, two), &a, &b);
  gather_pairs(base, _mm256_sub_epi32(o10, two), &c, &d);
  const __m256i v[4] = {low_dwords(_mm256_srli_epi64(a, 16), _mm256_srli_epi64(b, 16)),
                        low_dwords(_mm256_srli_epi64(a, 40), _mm256_srli_epi64(b, 40)),
                        low_dwords(_mm256_srli_epi64(c, 16), _mm256_srli_epi64(d, 16)),
                        low_dwords(_mm256_srli_epi64(c, 40), _mm256_srli_epi64(d, 40))};
  return blend8(v, ax, ay);
}

// Output row y of sample s from its tables (t.fast).
__attribute__((target("avx2"))) static void render_row(Tables& t, std::vector<unsigned char>& scratch,
                                                       ABS_COMPOSITE_PARAMS, int s, int y) {
  const AbsRefs& rs = refs[s];
  const AbsSample* ps = rs.sample;
  const float py = ps->crop_y0 + ((float)y + 0.5f) * ps->crop_sy;
  unsigned char* orow = out + ((long long)s * h + y) * w * 3;
  const int j = t.swapped ? abs_partner(ps, s, n) : s;
  const AbsRefs& rj = refs[j];
  const AbsSample* pj = rj.sample;
  RowPair src[3];  // 0: plain, 1: fill tile, 2: foreground
  src[0] = row_pair(rj.image, rj.ih, rj.iw, py * rj.img_sy - 0.5f);
  int k = 1;
  bool fg_row = false, j_row = false;
  GridRows gs_rows = {nullptr, nullptr, 0.0f};  // s's mask along the row
  const float* j_cells = nullptr;  // j's mask cell under each column
  if (t.swapped) {
    const float fh = (float)h, sy = (float)r / fh;
    const float* a = ps->affine;
    const float* fb = ps->fg_box;
    const float ys = a[4] * py + a[5];  // a[3] is zero when t.fg_tables (see build_tables)
    fg_row = t.fg_tables && py >= fb[1] && py < fb[3] && ys >= 0.0f && ys < fh;
    j_row = py >= pj->box_y0 && py < pj->box_y1;
    const int W = t.w8;
    if (j_row) {
      j_cells = cell_row(t.hj, t.hj_done, abs_soft(pj), r, abs_cell(py * sy, r), t.jg_cell.data(), W);
      const float tile_sy = (float)rj.th / (pj->box_y1 - pj->box_y0);  // as the body computes it
      src[1] = row_pair(rj.tile, rj.th, rj.tw, (py - pj->box_y0) * tile_sy - 0.5f);
      k = 2;
    }
    if (fg_row) {
      gs_rows = grid_rows(t.hs, t.hs_done, abs_soft(ps), r, ys * sy - 0.5f, t.fg_ix0.data(), t.fg_ix1.data(),
                          t.fg_fx.data(), W);
      if (k == 1) src[1] = src[0];  // keep the foreground in slot 2
      src[2] = row_pair(rs.image, rs.ih, rs.iw, ys * rs.img_sy - 0.5f);
      k = 3;
    }
  }
  int32_t b0[3], b1[3];
  const unsigned char* base = gather_base(src, k, scratch, b0, b1);
  // the next output row reads these rows or the ones after them: ask for the latter now (a row
  // of a just-decoded image is often not in this core's cache yet)
  for (int i = 0; i < k; ++i)
    if (!src[i].last)
      for (int b = 0; b < src[i].bytes; b += 64) __builtin_prefetch(src[i].r1 + src[i].bytes + b);
  // per-lane foreground (t.fg_affine): the map's constants and the row's terms a[1]*py, a[4]*py
  const float* aff = ps->affine;
  const bool aff_row = t.fg_affine && py >= ps->fg_box[1] && py < ps->fg_box[3];
  int aff_lo = 0, aff_hi = -1;  // the columns the per-lane foreground can reach on this row
  if (aff_row) affine_columns(t.src_boxes, aff, ps, w, py, &aff_lo, &aff_hi);
  const __m256 A[6] = {_mm256_set1_ps(aff[0]), _mm256_set1_ps(aff[1]), _mm256_set1_ps(aff[2]),
                       _mm256_set1_ps(aff[3]), _mm256_set1_ps(aff[4]), _mm256_set1_ps(aff[5])};
  const __m256 a1py = _mm256_set1_ps(aff[1] * py), a4py = _mm256_set1_ps(aff[4] * py);
  const __m256 fw_v = _mm256_set1_ps((float)w), fh_v = _mm256_set1_ps((float)h);
  const __m256 sx_v = _mm256_set1_ps((float)r / (float)w), sy_v = _mm256_set1_ps((float)r / (float)h);
  const __m256 isx_v = _mm256_set1_ps(rs.img_sx), isy_v = _mm256_set1_ps(rs.img_sy);
  const unsigned char* img_s = rs.image;
  const int hs_s = rs.ih, ws_s = rs.iw;
  const __m256 tight_v = _mm256_set1_ps(tight), loose_v = _mm256_set1_ps(loose);
  const __m256 gfys = _mm256_set1_ps(gs_rows.fy);
  for (int x = 0; x < w; x += 8) {
    // the four neighbours' byte offsets and the weights: the plain source, then the lanes that
    // take the fill tile or the foreground
    __m256i o[4];
    __m256 ax = _mm256_setzero_ps(), ay = _mm256_setzero_ps();
    take(_mm256_castsi256_ps(_mm256_set1_epi32(-1)), &t.p_off0[x], &t.p_off1[x], &t.p_ax[x], b0[0], b1[0], src[0].a,
         o, &ax, &ay);
    bool one_source = true;  // every lane reads the same source (then sample8_near may load instead of gather)
    __m256 fg = _mm256_setzero_ps();
    if (fg_row) {  // alpha = soft(s) at the source point > tight, where the column allows foreground
      const __m256 top = _mm256_loadu_ps(gs_rows.top + x), bot = _mm256_loadu_ps(gs_rows.bot + x);
      const __m256 pt = _mm256_add_ps(top, _mm256_mul_ps(_mm256_sub_ps(bot, top), gfys));
      fg = _mm256_and_ps(_mm256_castsi256_ps(load_i(&t.f_ok[x])), _mm256_cmp_ps(pt, tight_v, _CMP_GT_OQ));
    }
    if (j_row) {  // not foreground, inside the partner's box and its loose region: the fill tile
      const __m256 pt = _mm256_loadu_ps(j_cells + x);
      const __m256 fill = _mm256_andnot_ps(
          fg, _mm256_and_ps(_mm256_castsi256_ps(load_i(&t.j_in[x])), _mm256_cmp_ps(pt, loose_v, _CMP_GT_OQ)));
      const int fill_lanes = _mm256_movemask_ps(fill);
      if (fill_lanes) {
        take(fill, &t.t_off0[x], &t.t_off1[x], &t.t_ax[x], b0[1], b1[1], src[1].a, o, &ax, &ay);
        one_source = fill_lanes == 0xff;
      }
    }
    const int fg_tab_lanes = fg_row ? _mm256_movemask_ps(fg) : 0;
    if (fg_tab_lanes) {
      take(fg, &t.f_off0[x], &t.f_off1[x], &t.f_ax[x], b0[2], b1[2], src[2].a, o, &ax, &ay);
      one_source = fg_tab_lanes == 0xff;
    }
    // the rotated / sheared foreground first: where all eight lanes are foreground the
    // background is not sampled at all (as the body skips it where alpha is 1)
    __m256 fgm = _mm256_setzero_ps();
    __m256i fgp = _mm256_setzero_si256();
    if (aff_row && x + 7 >= aff_lo && x <= aff_hi) {  // each lane through the affine map
      const __m256 px = _mm256_loadu_ps(&t.px[x]);
      const __m256 xs = _mm256_add_ps(_mm256_add_ps(_mm256_mul_ps(A[0], px), a1py), A[2]);
      const __m256 ys = _mm256_add_ps(_mm256_add_ps(_mm256_mul_ps(A[3], px), a4py), A[5]);
      const __m256 zero = _mm256_setzero_ps();
      __m256 ok = _mm256_and_ps(_mm256_castsi256_ps(load_i(&t.f_box[x])),
                                _mm256_and_ps(_mm256_cmp_ps(xs, zero, _CMP_GE_OQ), _mm256_cmp_ps(xs, fw_v, _CMP_LT_OQ)));
      ok = _mm256_and_ps(ok, _mm256_and_ps(_mm256_cmp_ps(ys, zero, _CMP_GE_OQ), _mm256_cmp_ps(ys, fh_v, _CMP_LT_OQ)));
      if (_mm256_movemask_ps(ok)) {
        const __m256 half = _mm256_set1_ps(0.5f);
        const __m256 pt = grid_bilerp8(t.gpad.data(), r, _mm256_sub_ps(_mm256_mul_ps(xs, sx_v), half),
                                       _mm256_sub_ps(_mm256_mul_ps(ys, sy_v), half));
        fgm = _mm256_and_ps(ok, _mm256_cmp_ps(pt, tight_v, _CMP_GT_OQ));
        if (_mm256_movemask_ps(fgm)) {
          __m256i ix0, ix1, iy0, iy1;
          __m256 iax, iay;
          axis8(_mm256_sub_ps(_mm256_mul_ps(xs, isx_v), half), ws_s, &ix0, &ix1, &iax);
          axis8(_mm256_sub_ps(_mm256_mul_ps(ys, isy_v), half), hs_s, &iy0, &iy1, &iay);
          const __m256i three = _mm256_set1_epi32(3), rowb = _mm256_set1_epi32(ws_s * 3);
          ix0 = _mm256_mullo_epi32(ix0, three);
          ix1 = _mm256_mullo_epi32(ix1, three);
          iy0 = _mm256_mullo_epi32(iy0, rowb);
          iy1 = _mm256_mullo_epi32(iy1, rowb);
          __m256i o00 = _mm256_add_epi32(iy0, ix0), o10 = _mm256_add_epi32(iy1, ix0);
          // the lanes that are not foreground read bytes 0..7 (their pixels are not used)
          const __m256i on = _mm256_castps_si256(fgm), two = _mm256_set1_epi32(2);
          const __m256i near = _mm256_and_si256(_mm256_cmpeq_epi32(ix1, _mm256_add_epi32(ix0, three)),
                                                _mm256_cmpgt_epi32(o00, _mm256_set1_epi32(1)));
          if (t.pairs && _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_or_si256(near, _mm256_xor_si256(
                             on, _mm256_set1_epi32(-1))))) == 0xff) {
            o00 = _mm256_blendv_epi8(two, o00, on);
            o10 = _mm256_blendv_epi8(two, o10, on);
            fgp = sample8_pairs(img_s, o00, o10, iax, iay);
          } else {
            fgp = sample8<true>(img_s, o00, _mm256_add_epi32(iy0, ix1), o10, _mm256_add_epi32(iy1, ix1), iax, iay);
          }
        }
      }
    }
    const int fg_lanes = _mm256_movemask_ps(fgm);
    __m256i packed = fgp;
    if (fg_lanes != 0xff) {
      packed = one_source ? sample8_near(base, o[0], o[1], o[2], o[3], ax, ay)
                          : sample8<false>(base, o[0], o[1], o[2], o[3], ax, ay);
      if (fg_lanes)
        packed = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(packed), _mm256_castsi256_ps(fgp), fgm));
    }
    store8(packed, orow + x * 3, w - x < 8 ? w - x : 8);
  }
}

}  // namespace abs_rows
