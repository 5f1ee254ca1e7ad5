// Lets a CUDA kernel source compile as plain C++ (g++) and run on the CPU: the CUDA qualifiers
// vanish and the built-in indices become per-thread globals (thread_local) that a host loop sets
// for every CUDA thread in turn. Used by dali_abs.loader.native (the CPU loader's compositing,
// built from kernels/composite.cu) and by the kernel-text tests.
//
// Compile with -ffp-contract=off and without -ffast-math: float arithmetic then matches the
// NumPy twin and nvcc --fmad=false bit for bit.
//
// Launch helpers (1-D grids only):
//   ABS_SHIM_LAUNCH(grid, block, call)   every thread of a grid of `grid` blocks of `block`
//                                        threads, in order, on the calling host thread.
//   ABS_SHIM_RUN_RANGE(first, last, grid, block, call)
//                                        the CUDA threads with global index first..last-1 of
//                                        that grid, on the calling host thread. The indices are
//                                        thread_local, so several host threads may each run a
//                                        disjoint range at once.
// Define ABS_SHIM_GLOBAL before including (e.g. as `__attribute__((always_inline)) inline`) to
// decorate the __global__ functions; by default they become plain functions.
#pragma once
#include <math.h>

#ifndef ABS_SHIM_GLOBAL
#define ABS_SHIM_GLOBAL
#endif
#define __global__ ABS_SHIM_GLOBAL
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict

struct abs_shim_dim3 { unsigned int x, y, z; };
static thread_local abs_shim_dim3 blockIdx = {0, 0, 0}, blockDim = {1, 1, 1}, threadIdx = {0, 0, 0},
                                  gridDim = {1, 1, 1};

// Run `call` (a kernel call expression) for every thread of a 1-D grid of `grid` blocks of `block` threads.
#define ABS_SHIM_LAUNCH(grid, block, call)                                 \
  do {                                                                     \
    gridDim.x = (grid); blockDim.x = (block);                              \
    for (blockIdx.x = 0; blockIdx.x < gridDim.x; ++blockIdx.x)             \
      for (threadIdx.x = 0; threadIdx.x < blockDim.x; ++threadIdx.x) call; \
  } while (0)

// Run `call` for the CUDA threads first..last-1 (global index blockIdx.x * block + threadIdx.x)
// of a grid of `grid` blocks of `block` threads, on the calling host thread.
#define ABS_SHIM_RUN_RANGE(first, last, grid, block, call)                                      \
  do {                                                                                          \
    gridDim.x = (unsigned int)(grid); blockDim.x = (unsigned int)(block);                       \
    blockIdx.x = (unsigned int)((first) / (block)); threadIdx.x = (unsigned int)((first) % (block)); \
    for (long long abs_shim_g = (first); abs_shim_g < (long long)(last); ++abs_shim_g) {          \
      call;                                                                                     \
      if (++threadIdx.x == blockDim.x) { threadIdx.x = 0; ++blockIdx.x; }                        \
    }                                                                                           \
  } while (0)
