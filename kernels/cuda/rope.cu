// Rotary position embedding in place on x (n_tokens, n_heads * head_dim), rotating
// adjacent pairs (2i, 2i + 1) of each head by pos * theta^(-2i / head_dim), the GGML
// "normal" layout of GGUF Llama weights (the Backend trait documents the same).
// One thread per pair.
//
// The angle is built as the CPU backend (and GGML's rope_cache_init) builds it: the
// position times theta_scale = theta^(-2 / head_dim), multiplied in once per pair index,
// in f32. The sine and cosine are taken in double: NVRTC compiles with --use_fast_math,
// whose __sinf/__cosf lose accuracy for the large angles of late positions.
extern "C" __global__ void rope(float* x, const unsigned int* positions, unsigned int n_tokens,
                                unsigned int n_heads, unsigned int head_dim, float theta) {
    unsigned int half_dim = head_dim / 2;
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    size_t pairs_per_token = (size_t)n_heads * half_dim;
    if (idx >= pairs_per_token * n_tokens) return;
    unsigned int token = (unsigned int)(idx / pairs_per_token);
    unsigned int i = (unsigned int)(idx % half_dim);
    float exponent = __fdiv_rn(-2.0f, (float)head_dim);
    float theta_scale = (float)pow((double)theta, (double)exponent);
    float angle = (float)positions[token];
    for (unsigned int j = 0; j < i; j++) angle = __fmul_rn(angle, theta_scale);
    double s, c;
    sincos((double)angle, &s, &c);
    float* p = x + idx * 2;
    float a = p[0], b = p[1];
    p[0] = a * (float)c - b * (float)s;
    p[1] = a * (float)s + b * (float)c;
}
