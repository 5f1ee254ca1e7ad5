// Lets a CUDA kernel source compile as plain C++ (g++) and run on the CPU: the CUDA qualifiers
// vanish and the built-in indices become per-thread globals (thread_local) that a host loop sets
// for every CUDA thread in turn. Used by dali_abs.swap.cpu (which calls the kernel's
// per-pixel body directly and needs only the qualifiers) and by the kernel-text tests (which
// run the __global__ entry point itself with ABS_SHIM_LAUNCH).
//
// Compile with -ffp-contract=off and without -ffast-math: float arithmetic then matches the
// NumPy twin and nvcc --fmad=false bit for bit.
//
// Launch helper (1-D grids only):
//   ABS_SHIM_LAUNCH(grid, block, call)   every thread of a grid of `grid` blocks of `block`
//                                        threads, in order, on the calling host thread.
#pragma once
#include <math.h>

#define __global__
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
