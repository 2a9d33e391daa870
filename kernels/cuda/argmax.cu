// Greedy sampling on the device: the index of the largest logit (lowest index on ties),
// so only a token id comes back to the host. One block; blockDim.x a power of two <= 1024.
extern "C" __global__ void argmax(const float* logits, unsigned int n, unsigned int* token) {
    __shared__ float best[1024];
    __shared__ unsigned int best_i[1024];
    float b = __int_as_float(0xff800000);
    unsigned int bi = 0xffffffffu;
    for (unsigned int i = threadIdx.x; i < n; i += blockDim.x) {
        if (logits[i] > b) { b = logits[i]; bi = i; }
    }
    best[threadIdx.x] = b;
    best_i[threadIdx.x] = bi;
    __syncthreads();
    for (unsigned int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) {
            float o = best[threadIdx.x + s];
            unsigned int oi = best_i[threadIdx.x + s];
            if (o > best[threadIdx.x] || (o == best[threadIdx.x] && oi < best_i[threadIdx.x])) {
                best[threadIdx.x] = o;
                best_i[threadIdx.x] = oi;
            }
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) *token = best_i[0] == 0xffffffffu ? 0 : best_i[0];
}
