// Lets a CUDA kernel source compile as plain C++ (g++) for testing without a GPU: the CUDA
// qualifiers vanish and the built-in indices become globals that a host loop
// (ABS_SHIM_LAUNCH) sets for every block and thread in turn. Compile with
// -ffp-contract=off so float arithmetic matches the NumPy twin and nvcc --fmad=false.
#pragma once
#include <math.h>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict

struct abs_shim_dim3 { unsigned int x, y, z; };
static abs_shim_dim3 blockIdx = {0, 0, 0}, blockDim = {1, 1, 1}, threadIdx = {0, 0, 0}, gridDim = {1, 1, 1};

// Run `call` (a kernel call expression) for every thread of a 1-D grid of `grid` blocks of `block` threads.
#define ABS_SHIM_LAUNCH(grid, block, call)                                 \
  do {                                                                     \
    gridDim.x = (grid); blockDim.x = (block);                              \
    for (blockIdx.x = 0; blockIdx.x < gridDim.x; ++blockIdx.x)             \
      for (threadIdx.x = 0; threadIdx.x < blockDim.x; ++threadIdx.x) call; \
  } while (0)
