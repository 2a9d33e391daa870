// Row-wise RMSNorm: out[r] = x[r] / sqrt(mean(x[r]^2) + eps) * weight.
// One block of 256 threads per row; the sum of squares is reduced in shared memory.
extern "C" __global__ void rms_norm(const float* x, const float* weight, float* out,
                                    unsigned int dim, float eps) {
    __shared__ float partial[256];
    const float* row = x + (size_t)blockIdx.x * dim;
    float* dst = out + (size_t)blockIdx.x * dim;
    float acc = 0.f;
    for (unsigned int i = threadIdx.x; i < dim; i += blockDim.x) acc += row[i] * row[i];
    partial[threadIdx.x] = acc;
    __syncthreads();
    for (unsigned int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) partial[threadIdx.x] += partial[threadIdx.x + s];
        __syncthreads();
    }
    float scale = rsqrtf(partial[0] / (float)dim + eps);
    for (unsigned int i = threadIdx.x; i < dim; i += blockDim.x) dst[i] = row[i] * scale * weight[i];
}
