// CPU stand-in for CUDA's cuda_bf16.h: the few names this crate's kernels use.
#pragma once
#include <cstdint>
#include <cstring>

struct __nv_bfloat16 {
    unsigned short bits = 0;
};

// Round to nearest even, as the device conversion does (NaN handling left out).
inline __nv_bfloat16 __float2bfloat16(float f) {
    uint32_t bits;
    std::memcpy(&bits, &f, 4);
    bits += 0x7fff + ((bits >> 16) & 1);
    return __nv_bfloat16{(unsigned short)(bits >> 16)};
}
