// Matrix-vector products on GGML block-quantized weights, dequantized on the fly
// (the weights stay in their GGUF bytes on the device: 4.5 or 8.5 bits per weight
// instead of 16 for a bf16 copy, and decode is bound by weight bandwidth).
// One warp per output row; lanes stride over the row's 32-value blocks.
//   Q4_1 block (20 B): d f16, m f16, 16 B nibbles (low = values 0..16, high = 16..32)
//   Q8_0 block (34 B): d f16, 32 x i8
// out (n, rows) = x (n, cols) @ w^T for w (rows, cols), launched with gridDim.y = n; the
// dequant_*_to_f16 kernels are there for an f16 cuBLAS prefill GEMM (see docs/gpu.md).
#include <cuda_fp16.h>
#include <cuda_bf16.h>

typedef unsigned char u8;
typedef unsigned int u32;

__device__ __forceinline__ float load_f16(const u8* p) {
    __half_raw raw;
    raw.x = (unsigned short)(p[0] | (p[1] << 8));
    return __half2float(__half(raw));
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}

// d * sum(q * x) + m * sum(x) over one Q4_1 block and its 32 activations.
__device__ float dot_q4_1(const u8* blk, const float* xb) {
    float d = load_f16(blk), m = load_f16(blk + 2), dot = 0.f, xsum = 0.f;
    for (int i = 0; i < 16; i++) {
        u8 q = blk[4 + i];
        dot += (float)(q & 15) * xb[i] + (float)(q >> 4) * xb[i + 16];
        xsum += xb[i] + xb[i + 16];
    }
    return d * dot + m * xsum;
}

// d * sum(q * x) over one Q8_0 block and its 32 activations.
__device__ float dot_q8_0(const u8* blk, const float* xb) {
    const signed char* q = (const signed char*)(blk + 2);
    float dot = 0.f;
    for (int i = 0; i < 32; i++) dot += (float)q[i] * xb[i];
    return load_f16(blk) * dot;
}

// One warp per output row and token (blockIdx.y is the token): lanes take every 32nd
// block, then a warp reduction. Each token's dot is computed alone, in the same order
// whatever the number of tokens, so a token's output does not depend on its batch
// (continuous batching must give a single stream's logits bit for bit).
template <int BLOCK_BYTES, float (*DOT)(const u8*, const float*)>
__device__ void matvec_blocks(const u8* w, const float* x, float* out, u32 rows, u32 cols) {
    u32 row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;
    x += (size_t)blockIdx.y * cols;
    out += (size_t)blockIdx.y * rows;
    u32 blocks = cols / 32;
    const u8* r = w + (size_t)row * blocks * BLOCK_BYTES;
    float acc = 0.f;
    for (u32 b = lane; b < blocks; b += 32) acc += DOT(r + (size_t)b * BLOCK_BYTES, x + (size_t)b * 32);
    acc = warp_sum(acc);
    if (lane == 0) out[row] = acc;
}

extern "C" __global__ void matvec_q4_1(const u8* w, const float* x, float* out, u32 rows,
                                       u32 cols) {
    matvec_blocks<20, dot_q4_1>(w, x, out, rows, cols);
}

extern "C" __global__ void matvec_q8_0(const u8* w, const float* x, float* out, u32 rows,
                                       u32 cols) {
    matvec_blocks<34, dot_q8_0>(w, x, out, rows, cols);
}

// Dequantizes whole matrices to f16 for the cuBLAS prefill GEMM (n > 1 tokens).
extern "C" __global__ void dequant_q4_1_to_f16(const u8* w, __half* out, size_t n_blocks) {
    size_t b = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= n_blocks) return;
    const u8* blk = w + b * 20;
    float d = load_f16(blk), m = load_f16(blk + 2);
    for (int i = 0; i < 16; i++) {
        out[b * 32 + i] = __float2half(d * (float)(blk[4 + i] & 15) + m);
        out[b * 32 + 16 + i] = __float2half(d * (float)(blk[4 + i] >> 4) + m);
    }
}

extern "C" __global__ void dequant_q8_0_to_f16(const u8* w, __half* out, size_t n_blocks) {
    size_t b = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= n_blocks) return;
    const u8* blk = w + b * 34;
    float d = load_f16(blk);
    const signed char* q = (const signed char*)(blk + 2);
    for (int i = 0; i < 32; i++) out[b * 32 + i] = __float2half(d * (float)q[i]);
}

// Activations to bf16 for the bf16-weight cuBLAS path.
extern "C" __global__ void f32_to_bf16(const float* in, __nv_bfloat16* out, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = __float2bfloat16(in[i]);
}
