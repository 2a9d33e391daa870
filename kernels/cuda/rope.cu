// Rotary position embedding in place on x (n_tokens, n_heads * head_dim), rotating
// adjacent pairs (2i, 2i + 1) of each head by pos * theta^(-2i / head_dim), the GGML
// "normal" layout of GGUF Llama weights (the Backend trait documents the same).
// One thread per pair.
extern "C" __global__ void rope(float* x, const unsigned int* positions, unsigned int n_tokens,
                                unsigned int n_heads, unsigned int head_dim, float theta) {
    unsigned int half_dim = head_dim / 2;
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    size_t pairs_per_token = (size_t)n_heads * half_dim;
    if (idx >= pairs_per_token * n_tokens) return;
    unsigned int token = (unsigned int)(idx / pairs_per_token);
    unsigned int i = (unsigned int)(idx % half_dim);
    float freq = powf(theta, -2.0f * (float)i / (float)head_dim);
    float angle = (float)positions[token] * freq;
    float s, c;
    sincosf(angle, &s, &c);
    float* p = x + idx * 2;
    float a = p[0], b = p[1];
    p[0] = a * c - b * s;
    p[1] = a * s + b * c;
}
