// Causal scaled dot-product attention for one sequence against the device KV cache:
//   q   (n_new, n_heads * head_dim)
//   k,v (first_pos + n_new, n_kv_heads * head_dim)   (the cache, already appended)
//   out (n_new, n_heads * head_dim), scale 1 / sqrt(head_dim)
// Query i attends to cache rows 0 ..= first_pos + i; query head h reads KV head
// h / (n_heads / n_kv_heads). One block per (query, head), online softmax over the
// cache rows so the score row never needs to fit in shared memory; head_dim <= 256.
extern "C" __global__ void attention(const float* q, const float* k, const float* v, float* out,
                                     unsigned int first_pos, unsigned int n_heads,
                                     unsigned int n_kv_heads, unsigned int head_dim) {
    __shared__ float qs[256];
    __shared__ float red[256];
    unsigned int token = blockIdx.x / n_heads, head = blockIdx.x % n_heads;
    unsigned int kv_head = head / (n_heads / n_kv_heads);
    unsigned int q_stride = n_heads * head_dim, kv_stride = n_kv_heads * head_dim;
    const float* qrow = q + (size_t)token * q_stride + (size_t)head * head_dim;
    float scale = rsqrtf((float)head_dim);
    unsigned int d = threadIdx.x;
    if (d < head_dim) qs[d] = qrow[d] * scale;
    __syncthreads();
    float m = __int_as_float(0xff800000), l = 0.f, acc = 0.f;
    unsigned int last = first_pos + token;
    for (unsigned int t = 0; t <= last; t++) {
        const float* krow = k + (size_t)t * kv_stride + (size_t)kv_head * head_dim;
        red[d] = d < head_dim ? qs[d] * krow[d] : 0.f;
        __syncthreads();
        for (unsigned int s = blockDim.x / 2; s > 0; s >>= 1) {
            if (d < s) red[d] += red[d + s];
            __syncthreads();
        }
        float score = red[0];
        __syncthreads();
        float m_new = fmaxf(m, score);
        float correction = expf(m - m_new), p = expf(score - m_new);
        l = l * correction + p;
        if (d < head_dim) {
            float vv = v[(size_t)t * kv_stride + (size_t)kv_head * head_dim + d];
            acc = acc * correction + p * vv;
        }
        m = m_new;
    }
    if (d < head_dim) out[(size_t)token * q_stride + (size_t)head * head_dim + d] = acc / l;
}

// Appends n_new rows of keys or values to a cache at row first_pos.
extern "C" __global__ void kv_append(float* cache, const float* rows, unsigned int first_pos,
                                     size_t n_values, unsigned int row_len) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n_values) cache[(size_t)first_pos * row_len + i] = rows[i];
}
