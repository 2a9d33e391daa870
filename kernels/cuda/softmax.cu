// Numerically stable softmax in place over each row of x (rows, len): subtract the row
// maximum, exponentiate, divide by the sum. One block of 256 threads per row.
extern "C" __global__ void softmax_rows(float* x, unsigned int len) {
    __shared__ float scratch[256];
    float* row = x + (size_t)blockIdx.x * len;
    float m = __int_as_float(0xff800000);
    for (unsigned int i = threadIdx.x; i < len; i += blockDim.x) m = fmaxf(m, row[i]);
    scratch[threadIdx.x] = m;
    __syncthreads();
    for (unsigned int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) scratch[threadIdx.x] = fmaxf(scratch[threadIdx.x], scratch[threadIdx.x + s]);
        __syncthreads();
    }
    m = scratch[0];
    __syncthreads();
    float sum = 0.f;
    for (unsigned int i = threadIdx.x; i < len; i += blockDim.x) {
        float e = expf(row[i] - m);
        row[i] = e;
        sum += e;
    }
    scratch[threadIdx.x] = sum;
    __syncthreads();
    for (unsigned int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) scratch[threadIdx.x] += scratch[threadIdx.x + s];
        __syncthreads();
    }
    float inv = 1.0f / scratch[0];
    for (unsigned int i = threadIdx.x; i < len; i += blockDim.x) row[i] *= inv;
}
