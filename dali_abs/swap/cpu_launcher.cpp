// Host launcher of the native CPU build (dali_abs.swap.cpu): compiled after cpu_shim.cuh,
// composite.cu and composite_rows.h in one translation unit; ABS_NATIVE_ABI comes from cpu.py.
#include <atomic>
#include <thread>
#include <vector>

#define ABS_EXPORT extern "C" __attribute__((visibility("default")))
ABS_EXPORT int abs_native_abi() { return ABS_NATIVE_ABI; }

// Output rows first..last-1 (row = s * h + y) on the calling host thread: the kernel's
// per-pixel body called directly, no index division per pixel.
// x86-64 with glibc (ifunc): also a clone for CPUs with SSE4.1, picked at load time by the
// dynamic linker. There floorf is one roundss instead of a long SSE2 sequence (same IEEE
// results). No -march=native: the cached library must run on any x86-64.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__GLIBC__) && \
    !defined(ABS_NATIVE_NO_CLONES)
__attribute__((target_clones("sse4.1", "default")))
#endif
static void abs_pixel_row(ABS_COMPOSITE_PARAMS, int s, int y) {
  for (int x = 0; x < w; ++x) abs_composite_pixel(ABS_COMPOSITE_ARGS, s, y, x);
}

#if ABS_HAVE_ROWS
// With `vector` and an AVX2 CPU, whole rows from per-sample tables (composite_rows.h) where
// the sample allows it; the per-pixel body for the rest.
static void abs_run_rows(long long first, long long last, int vector, ABS_COMPOSITE_PARAMS) {
  long long row = first;
  if (vector && __builtin_cpu_supports("avx2")) {
    // The tables and scratch rows allocate: should that fail, the per-pixel body (which does
    // not) finishes the rows, rather than an exception ending the process from a thread.
    try {
      abs_rows::Tables t;
      std::vector<unsigned char> scratch;
      for (; row < last; ++row) {
        const int s = (int)(row / h), y = (int)(row - (long long)s * h);
        if (t.s != s) abs_rows::build_tables(t, ABS_COMPOSITE_ARGS, s);
        if (t.fast) abs_rows::render_row(t, scratch, ABS_COMPOSITE_ARGS, s, y);
        else abs_pixel_row(ABS_COMPOSITE_ARGS, s, y);
      }
    } catch (...) {
    }
  }
  for (; row < last; ++row) {
    const int s = (int)(row / h);
    abs_pixel_row(ABS_COMPOSITE_ARGS, s, (int)(row - (long long)s * h));
  }
}
#else
static void abs_run_rows(long long first, long long last, int vector, ABS_COMPOSITE_PARAMS) {
  (void)vector;
  for (long long row = first; row < last; ++row) {
    const int s = (int)(row / h);
    abs_pixel_row(ABS_COMPOSITE_ARGS, s, (int)(row - (long long)s * h));
  }
}
#endif

// The output rows handed out in chunks to the host threads as each asks for more (every pixel
// is computed independently of the others, so any partition gives the same output): one sample
// per chunk where the batch has a few per thread, so the row renderer builds each sample's tables
// once; contiguous halves would leave one thread idle when the swapped samples crowd the other
// half. Returns the number of threads used.
// norm (may be NULL): also normalise each chunk of rows into norm->out as soon as it is
// composited, while its bytes are still in this core's cache (normalize_rows.h).
ABS_EXPORT int abs_composite_host(ABS_COMPOSITE_PARAMS, int threads, int vector, const abs_norm::Args* norm) {
  const long long rows = (long long)n * h;
  const long long min_rows = (16384 + w - 1) / w;  // below ~16k px a thread costs more than it saves
  long long t = threads < 1 ? 1 : threads;
  if (t > (rows + min_rows - 1) / min_rows) t = (rows + min_rows - 1) / min_rows;
  auto chunk = [&](long long first, long long last) {
    abs_run_rows(first, last, vector, ABS_COMPOSITE_ARGS);
    if (norm) abs_norm::rows(norm, out, first, last, h, w);
  };
  if (t <= 1) {
    chunk(0, rows);
    return 1;
  }
  long long grain = (long long)n >= 4 * t ? h : (rows + 4 * t - 1) / (4 * t);
  if (grain < min_rows) grain = min_rows;
  std::atomic<long long> next(0);
  auto run = [&, grain]() {
    for (long long first; (first = next.fetch_add(grain)) < rows;)
      chunk(first, first + grain < rows ? first + grain : rows);
  };
  std::vector<std::thread> pool;
  int used = 1;
  try {
    for (; used < t; ++used) pool.emplace_back(run);
  } catch (...) {  // could not start a thread: the others share its chunks
  }
  run();
  for (auto& th : pool) th.join();
  return used;
}

ABS_EXPORT int abs_native_f16() { return abs_norm::have_f16() ? 1 : 0; }
