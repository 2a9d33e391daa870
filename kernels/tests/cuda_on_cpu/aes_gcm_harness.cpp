// Runs the AES-GCM kernels of kernels/cuda/aes_gcm.cu on the CPU (cuda_on_cpu.h): key
// expansion, segmented GHASH with the powers of H, tag, tag-gated CTR. Driven by
// kernels/tests/cuda_aes_gcm_on_cpu.rs.
//
// Input file:  key (32) | iv (12) | per (u32 LE) | aad_len (u32 LE) | aad | len (u32 LE) | plain
// Output file: ciphertext ‖ tag (len + 16) | status of the honest open (u32 LE) |
//              plaintext it gave (len) | status of the open with one flipped bit (u32 LE) |
//              the destination after that open (len; it started as 0xAA bytes)
#include <cstdio>
#include <fstream>
#include <iterator>

#include "cuda_on_cpu.h"

#include "../../cuda/aes_gcm.cu"

// One-dimensional grids, as the backend launches these kernels.
template <class F>
static void launch(unsigned int grid, unsigned int block, F kernel) {
    launch(grid, 1, block, kernel);
}

struct Chunk {
    const u32* rk;
    const u8* iv;
    const u8* aad;
    u64 aad_len;
    u64 per;
};

// GHASH of AAD and `data`, then the tag into tag_out (checked against `expected`).
static void ghash_and_tag(const Chunk& c, const u8* data, u64 len, const u8* expected,
                          u8* tag_out, u32* status) {
    u64 total = (c.aad_len + 15) / 16 + (len + 15) / 16 + 1;
    u64 segments = (total + c.per - 1) / c.per;
    std::vector<Block128> partials(segments);
    Block128* p = partials.data();
    launch((unsigned int)((segments + 255) / 256), 256, [&, p] {
        gcm_ghash_segments(c.rk, c.aad, c.aad_len, data, len, c.per, segments, p);
    });
    launch(1, 256, [&, p] { gcm_finish(c.rk, c.iv, p, segments, expected, tag_out, status); });
}

static void ctr(const Chunk& c, const u8* in, u8* out, u64 len, const u32* status) {
    unsigned int grid = (unsigned int)((len + 16 * 256 - 1) / (16 * 256));
    if (grid) launch(grid, 256, [&] { gcm_ctr_xor(c.rk, c.iv, in, out, len, status); });
}

// Opens ciphertext ‖ tag into `out`; returns the status word.
static u32 open(const Chunk& c, const std::vector<u8>& sealed, u64 len, std::vector<u8>& out) {
    u32 status = 7;
    u8 computed[16];
    ghash_and_tag(c, sealed.data(), len, sealed.data() + len, computed, &status);
    ctr(c, sealed.data(), out.data(), len, &status);
    return status;
}

static u32 read_u32(const std::vector<u8>& in, size_t at) {
    return (u32)in[at] | ((u32)in[at + 1] << 8) | ((u32)in[at + 2] << 16) | ((u32)in[at + 3] << 24);
}

static void put_u32(std::vector<u8>& out, u32 v) {
    for (int i = 0; i < 4; i++) out.push_back((u8)(v >> (8 * i)));
}

int main(int argc, char** argv) {
    if (argc != 3) {
        std::fprintf(stderr, "usage: %s INPUT OUTPUT\n", argv[0]);
        return 2;
    }
    std::ifstream file(argv[1], std::ios::binary);
    std::vector<u8> in((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
    if (in.size() < 52) return 2;
    u32 per = read_u32(in, 44), aad_len = read_u32(in, 48);
    if (in.size() < 56 + (size_t)aad_len || per == 0) return 2;
    u32 len = read_u32(in, 52 + aad_len);
    if (in.size() != 56 + (size_t)aad_len + len) return 2;
    const u8* key = in.data();
    const u8* plain = in.data() + 56 + aad_len;

    u32 rk[60];
    launch(1, 1, [&] { aes256_expand_key(key, rk); });
    Chunk c{rk, in.data() + 32, in.data() + 52, aad_len, per};

    std::vector<u8> sealed(len + 16);
    ctr(c, plain, sealed.data(), len, nullptr);
    ghash_and_tag(c, sealed.data(), len, nullptr, sealed.data() + len, nullptr);

    std::vector<u8> opened(len, 0xAA);
    u32 honest = open(c, sealed, len, opened);

    std::vector<u8> tampered = sealed;
    tampered[len > 0 ? len / 2 : len] ^= 0x04;  // a data bit, or a tag bit when empty
    std::vector<u8> untouched(len, 0xAA);
    u32 rejected = open(c, tampered, len, untouched);

    std::vector<u8> out(sealed);
    put_u32(out, honest);
    out.insert(out.end(), opened.begin(), opened.end());
    put_u32(out, rejected);
    out.insert(out.end(), untouched.begin(), untouched.end());
    std::ofstream(argv[2], std::ios::binary).write((const char*)out.data(), (std::streamsize)out.size());
    return 0;
}
