// Just enough of CUDA C to run this crate's kernels on the CPU for tests: one OS thread
// per CUDA thread, one block at a time, __shared__ as block-wide statics,
// __syncthreads() as a std::barrier, warp shuffles through a block-wide exchange array.
// It checks the kernels' arithmetic and indexing without a GPU; memory spaces, warp
// scheduling and timing are not modelled, and fast-math intrinsics are the precise ones.
#pragma once
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

struct Dim3 {
    unsigned int x = 0, y = 0, z = 0;
};
static thread_local Dim3 threadIdx, blockIdx;
static Dim3 blockDim, gridDim;
static std::barrier<>* block_barrier = nullptr;
// One slot per thread of the running block, for __shfl_xor_sync.
static float shuffle_slots[1024];

#define __global__
#define __device__
#define __constant__
#define __forceinline__ inline
#define __shared__ static
#define __syncthreads() block_barrier->arrive_and_wait()

inline float __int_as_float(unsigned int bits) {
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fmul_rn(float a, float b) { return a * b; }

// Every thread of the block must call it the same number of times (true of this
// crate's kernels: their shuffles sit outside divergent branches).
inline float __shfl_xor_sync(unsigned int, float v, int lane_mask) {
    shuffle_slots[threadIdx.x] = v;
    __syncthreads();
    float other = shuffle_slots[threadIdx.x ^ (unsigned int)lane_mask];
    __syncthreads();
    return other;
}

// Runs `kernel` on a (grid_x, grid_y) grid of `block` threads.
template <class F>
static void launch(unsigned int grid_x, unsigned int grid_y, unsigned int block, F kernel) {
    gridDim = {grid_x, grid_y, 1};
    blockDim = {block, 1, 1};
    for (unsigned int by = 0; by < grid_y; by++) {
        for (unsigned int bx = 0; bx < grid_x; bx++) {
            std::barrier<> barrier(block);
            block_barrier = &barrier;
            std::vector<std::thread> threads;
            for (unsigned int t = 0; t < block; t++) {
                threads.emplace_back([=, &barrier] {
                    blockIdx = {bx, by, 0};
                    threadIdx = {t, 0, 0};
                    kernel();
                    // A thread that has returned takes no part in later barriers.
                    barrier.arrive_and_drop();
                });
            }
            for (auto& th : threads) th.join();
        }
    }
}
