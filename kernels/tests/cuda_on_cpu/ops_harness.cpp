// Runs the compute kernels of kernels/cuda/ on the CPU (cuda_on_cpu.h) with the grids
// kernels/src/cuda/backend.rs launches them with. Driven by kernels/tests/cuda_ops_on_cpu.rs.
//
// Usage: ops_harness OP INPUT OUTPUT
// Input:  u32 n_params, n_params u32 params, u32 n_arrays, then per array u32 byte length
//         and the bytes (all little-endian). Output: the result array's bytes.
#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>

#include "cuda_on_cpu.h"

#include "../../cuda/argmax.cu"
#include "../../cuda/attention.cu"
#include "../../cuda/dequant_matvec.cu"
#include "../../cuda/rmsnorm.cu"
#include "../../cuda/rope.cu"
#include "../../cuda/silu_mul.cu"
#include "../../cuda/softmax.cu"

struct Input {
    std::vector<u32> params;
    std::vector<std::vector<u8>> arrays;
};

static bool parse(const std::vector<u8>& in, Input& out) {
    size_t at = 0;
    auto word = [&](u32& v) {
        if (at + 4 > in.size()) return false;
        v = (u32)in[at] | ((u32)in[at + 1] << 8) | ((u32)in[at + 2] << 16) | ((u32)in[at + 3] << 24);
        at += 4;
        return true;
    };
    u32 n = 0;
    if (!word(n)) return false;
    out.params.resize(n);
    for (auto& p : out.params)
        if (!word(p)) return false;
    if (!word(n)) return false;
    out.arrays.resize(n);
    for (auto& a : out.arrays) {
        u32 len = 0;
        if (!word(len) || at + len > in.size()) return false;
        a.assign(in.begin() + (long)at, in.begin() + (long)(at + len));
        at += len;
    }
    return at == in.size();
}

static float as_float(u32 bits) {
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}

static const float* f32s(const std::vector<u8>& a) { return (const float*)a.data(); }

// Runs `op`; returns false for an unknown op or wrong argument counts.
static bool run(const std::string& op, Input& in, std::vector<u8>& out) {
    auto& p = in.params;
    auto& a = in.arrays;
    auto need = [&](size_t params, size_t arrays) { return p.size() == params && a.size() == arrays; };
    if ((op == "matvec_q4_1" || op == "matvec_q8_0") && need(3, 2)) {
        u32 rows = p[0], cols = p[1], n = p[2];
        out.assign((size_t)n * rows * 4, 0);
        const u8* w = a[0].data();
        const float* x = f32s(a[1]);
        float* o = (float*)out.data();
        bool q4 = op == "matvec_q4_1";
        launch((rows + 7) / 8, n, 256, [=] {
            if (q4) matvec_q4_1(w, x, o, rows, cols);
            else matvec_q8_0(w, x, o, rows, cols);
        });
    } else if (op == "rms_norm" && need(3, 2)) {
        u32 rows = p[0], dim = p[1];
        float eps = as_float(p[2]);
        out.assign((size_t)rows * dim * 4, 0);
        const float *x = f32s(a[0]), *w = f32s(a[1]);
        float* o = (float*)out.data();
        launch(rows, 1, 256, [=] { rms_norm(x, w, o, dim, eps); });
    } else if (op == "rope" && need(4, 2)) {
        u32 tokens = p[0], heads = p[1], head_dim = p[2];
        float theta = as_float(p[3]);
        out = a[1];
        const u32* positions = (const u32*)a[0].data();
        float* x = (float*)out.data();
        u32 pairs = tokens * heads * head_dim / 2;
        launch((pairs + 255) / 256, 1, 256, [=] { rope(x, positions, tokens, heads, head_dim, theta); });
    } else if (op == "silu_mul" && need(0, 2)) {
        out = a[0];
        size_t n = out.size() / 4;
        float* g = (float*)out.data();
        const float* u = f32s(a[1]);
        launch((unsigned int)((n + 255) / 256), 1, 256, [=] { silu_mul(g, u, n); });
    } else if (op == "softmax" && need(0, 1)) {
        out = a[0];
        float* x = (float*)out.data();
        u32 len = (u32)(out.size() / 4);
        launch(1, 1, 256, [=] { softmax_rows(x, len); });
    } else if (op == "attention" && need(5, 3)) {
        u32 n_new = p[0], first_pos = p[1], heads = p[2], kv_heads = p[3], head_dim = p[4];
        out.assign((size_t)n_new * heads * head_dim * 4, 0);
        const float *q = f32s(a[0]), *k = f32s(a[1]), *v = f32s(a[2]);
        float* o = (float*)out.data();
        u32 threads = 32;
        while (threads < head_dim) threads *= 2;
        launch(n_new * heads, 1, threads, [=] { attention(q, k, v, o, first_pos, heads, kv_heads, head_dim); });
    } else if (op == "argmax" && need(0, 1)) {
        out.assign(4, 0);
        const float* logits = f32s(a[0]);
        u32 n = (u32)(a[0].size() / 4);
        unsigned int* token = (unsigned int*)out.data();
        launch(1, 1, 1024, [=] { argmax(logits, n, token); });
    } else {
        return false;
    }
    return true;
}

int main(int argc, char** argv) {
    if (argc != 4) {
        std::fprintf(stderr, "usage: %s OP INPUT OUTPUT\n", argv[0]);
        return 2;
    }
    std::ifstream file(argv[2], std::ios::binary);
    std::vector<u8> bytes((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
    Input in;
    std::vector<u8> out;
    if (!parse(bytes, in) || !run(argv[1], in, out)) {
        std::fprintf(stderr, "%s: bad op or input\n", argv[1]);
        return 2;
    }
    std::ofstream(argv[3], std::ios::binary).write((const char*)out.data(), (std::streamsize)out.size());
    return 0;
}
