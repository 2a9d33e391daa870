// SwiGLU in place: gate = silu(gate) * up, element-wise.
extern "C" __global__ void silu_mul(float* gate, const float* up, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float g = gate[i];
    gate[i] = g / (1.0f + expf(-g)) * up[i];
}
