// AES-256-GCM on the device for the encrypted bounce buffers (kernels/src/bounce.rs).
//
// One chunk at a time, after the driver has copied the staged ciphertext into device
// memory (never working on host-visible staging, so the host cannot swap bytes between
// the tag check and the decryption):
//   1. aes256_expand_key   (1 thread)   key (32 B, device memory) -> 60 round-key words
//   2. gcm_ghash_segments  (n threads)  each thread hashes a contiguous run of blocks
//                                       and scales it by the power of H that follows it
//   3. gcm_finish          (1 block)    XORs the runs, forms the tag, compares it in
//                                       constant time -> *status
//   4. gcm_ctr_xor         (n threads)  CTR keystream; on decrypt it does nothing unless
//                                       *status says the tag verified
// IV is 96 bits, so J0 = IV || 0^31 || 1 and the data counters start at 2 (SP 800-38D).
// The byte-wise S-box and the bit-serial GF(2^128) multiply favour clarity; a T-table and
// table-driven GHASH are the known next steps if gpu-check shows this below target.

typedef unsigned char u8;
typedef unsigned int u32;
typedef unsigned long long u64;

__device__ __constant__ u8 SBOX[256] = {
    0x63,0x7c,0x77,0x7b,0xf2,0x6b,0x6f,0xc5,0x30,0x01,0x67,0x2b,0xfe,0xd7,0xab,0x76,
    0xca,0x82,0xc9,0x7d,0xfa,0x59,0x47,0xf0,0xad,0xd4,0xa2,0xaf,0x9c,0xa4,0x72,0xc0,
    0xb7,0xfd,0x93,0x26,0x36,0x3f,0xf7,0xcc,0x34,0xa5,0xe5,0xf1,0x71,0xd8,0x31,0x15,
    0x04,0xc7,0x23,0xc3,0x18,0x96,0x05,0x9a,0x07,0x12,0x80,0xe2,0xeb,0x27,0xb2,0x75,
    0x09,0x83,0x2c,0x1a,0x1b,0x6e,0x5a,0xa0,0x52,0x3b,0xd6,0xb3,0x29,0xe3,0x2f,0x84,
    0x53,0xd1,0x00,0xed,0x20,0xfc,0xb1,0x5b,0x6a,0xcb,0xbe,0x39,0x4a,0x4c,0x58,0xcf,
    0xd0,0xef,0xaa,0xfb,0x43,0x4d,0x33,0x85,0x45,0xf9,0x02,0x7f,0x50,0x3c,0x9f,0xa8,
    0x51,0xa3,0x40,0x8f,0x92,0x9d,0x38,0xf5,0xbc,0xb6,0xda,0x21,0x10,0xff,0xf3,0xd2,
    0xcd,0x0c,0x13,0xec,0x5f,0x97,0x44,0x17,0xc4,0xa7,0x7e,0x3d,0x64,0x5d,0x19,0x73,
    0x60,0x81,0x4f,0xdc,0x22,0x2a,0x90,0x88,0x46,0xee,0xb8,0x14,0xde,0x5e,0x0b,0xdb,
    0xe0,0x32,0x3a,0x0a,0x49,0x06,0x24,0x5c,0xc2,0xd3,0xac,0x62,0x91,0x95,0xe4,0x79,
    0xe7,0xc8,0x37,0x6d,0x8d,0xd5,0x4e,0xa9,0x6c,0x56,0xf4,0xea,0x65,0x7a,0xae,0x08,
    0xba,0x78,0x25,0x2e,0x1c,0xa6,0xb4,0xc6,0xe8,0xdd,0x74,0x1f,0x4b,0xbd,0x8b,0x8a,
    0x70,0x3e,0xb5,0x66,0x48,0x03,0xf6,0x0e,0x61,0x35,0x57,0xb9,0x86,0xc1,0x1d,0x9e,
    0xe1,0xf8,0x98,0x11,0x69,0xd9,0x8e,0x94,0x9b,0x1e,0x87,0xe9,0xce,0x55,0x28,0xdf,
    0x8c,0xa1,0x89,0x0d,0xbf,0xe6,0x42,0x68,0x41,0x99,0x2d,0x0f,0xb0,0x54,0xbb,0x16};

__device__ __forceinline__ u32 sub_word(u32 w) {
    return ((u32)SBOX[w >> 24] << 24) | ((u32)SBOX[(w >> 16) & 0xff] << 16) |
           ((u32)SBOX[(w >> 8) & 0xff] << 8) | (u32)SBOX[w & 0xff];
}

// FIPS-197 key expansion for Nk = 8, Nr = 14: 60 big-endian words.
extern "C" __global__ void aes256_expand_key(const u8* key, u32* round_keys) {
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    u32 rcon = 0x01;
    for (int i = 0; i < 8; i++) {
        round_keys[i] = ((u32)key[4 * i] << 24) | ((u32)key[4 * i + 1] << 16) |
                        ((u32)key[4 * i + 2] << 8) | (u32)key[4 * i + 3];
    }
    for (int i = 8; i < 60; i++) {
        u32 t = round_keys[i - 1];
        if (i % 8 == 0) {
            t = sub_word((t << 8) | (t >> 24)) ^ (rcon << 24);
            rcon = (rcon << 1) ^ ((rcon & 0x80) ? 0x11b : 0);
        } else if (i % 8 == 4) {
            t = sub_word(t);
        }
        round_keys[i] = round_keys[i - 8] ^ t;
    }
}

__device__ __forceinline__ u8 xtime(u8 b) { return (u8)((b << 1) ^ ((b & 0x80) ? 0x1b : 0)); }

// Encrypts one 16-byte block in place (state in column-major byte order, as FIPS-197),
// with `sbox` in constant memory when every thread encrypts the same block (a broadcast)
// or in shared memory when threads look up different bytes (constant memory would
// serialise the lookups of a warp).
__device__ void aes256_encrypt_block(const u32* rk, const u8* sbox, u8 s[16]) {
    for (int c = 0; c < 4; c++)
        for (int r = 0; r < 4; r++) s[4 * c + r] ^= (u8)(rk[c] >> (24 - 8 * r));
    for (int round = 1; round <= 14; round++) {
        u8 t[16];
        for (int i = 0; i < 16; i++) t[i] = sbox[s[i]];
        // ShiftRows: row r of column c comes from column (c + r) mod 4.
        for (int c = 0; c < 4; c++)
            for (int r = 0; r < 4; r++) s[4 * c + r] = t[4 * ((c + r) & 3) + r];
        if (round != 14) {
            for (int c = 0; c < 4; c++) {
                u8 a0 = s[4 * c], a1 = s[4 * c + 1], a2 = s[4 * c + 2], a3 = s[4 * c + 3];
                u8 all = a0 ^ a1 ^ a2 ^ a3;
                s[4 * c] ^= all ^ xtime(a0 ^ a1);
                s[4 * c + 1] ^= all ^ xtime(a1 ^ a2);
                s[4 * c + 2] ^= all ^ xtime(a2 ^ a3);
                s[4 * c + 3] ^= all ^ xtime(a3 ^ a0);
            }
        }
        for (int c = 0; c < 4; c++)
            for (int r = 0; r < 4; r++) s[4 * c + r] ^= (u8)(rk[4 * round + c] >> (24 - 8 * r));
    }
}

struct Block128 { u64 hi, lo; };

__device__ __forceinline__ Block128 load_block(const u8* p, u64 avail) {
    u8 b[16];
    for (int i = 0; i < 16; i++) b[i] = (u64)i < avail ? p[i] : 0;
    Block128 x = {0, 0};
    for (int i = 0; i < 8; i++) { x.hi = (x.hi << 8) | b[i]; x.lo = (x.lo << 8) | b[8 + i]; }
    return x;
}

// GF(2^128) product in GCM's bit-reflected convention (SP 800-38D, Algorithm 1).
__device__ Block128 gf_mul(Block128 x, Block128 y) {
    Block128 z = {0, 0}, v = y;
    for (int i = 0; i < 128; i++) {
        u64 bit = i < 64 ? (x.hi >> (63 - i)) & 1 : (x.lo >> (127 - i)) & 1;
        if (bit) { z.hi ^= v.hi; z.lo ^= v.lo; }
        u64 carry = v.lo & 1;
        v.lo = (v.lo >> 1) | (v.hi << 63);
        v.hi = (v.hi >> 1) ^ (carry ? 0xe100000000000000ULL : 0);
    }
    return z;
}

__device__ Block128 gf_pow(Block128 h, u64 n) {
    Block128 acc = {0x8000000000000000ULL, 0};  // the field's one
    while (n) {
        if (n & 1) acc = gf_mul(acc, h);
        h = gf_mul(h, h);
        n >>= 1;
    }
    return acc;
}

__device__ Block128 hash_subkey(const u32* rk) {
    u8 zero[16] = {0};
    aes256_encrypt_block(rk, SBOX, zero);
    return load_block(zero, 16);
}

// Block i of the GHASH input: AAD blocks, then ciphertext blocks, then the length block.
__device__ Block128 ghash_input(u64 i, const u8* aad, u64 aad_len, const u8* data, u64 len) {
    u64 aad_blocks = (aad_len + 15) / 16, data_blocks = (len + 15) / 16;
    if (i < aad_blocks) return load_block(aad + 16 * i, aad_len - 16 * i);
    i -= aad_blocks;
    if (i < data_blocks) return load_block(data + 16 * i, len - 16 * i);
    Block128 lens = {aad_len * 8, len * 8};
    return lens;
}

// Thread t hashes blocks [t * per, min((t + 1) * per, total)) and multiplies the result
// by H^(blocks after its run), so partials[t] is its run's share of the final GHASH and
// gcm_finish only XORs the shares (the powers are computed in parallel, not in finish).
extern "C" __global__ void gcm_ghash_segments(const u32* rk, const u8* aad, u64 aad_len,
                                              const u8* data, u64 len, u64 per,
                                              u64 n_segments, Block128* partials) {
    u64 t = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n_segments) return;
    u64 total = (aad_len + 15) / 16 + (len + 15) / 16 + 1;
    u64 end = (t + 1) * per < total ? (t + 1) * per : total;
    Block128 h = hash_subkey(rk), y = {0, 0};
    for (u64 i = t * per; i < end; i++) {
        Block128 x = ghash_input(i, aad, aad_len, data, len);
        y.hi ^= x.hi; y.lo ^= x.lo;
        y = gf_mul(y, h);
    }
    // gf_pow(h, 0) is one, so the last run passes through unchanged.
    partials[t] = gf_mul(y, gf_pow(h, total - end));
}

__device__ void counter_block(const u8* iv, u32 counter, u8 out[16]) {
    for (int i = 0; i < 12; i++) out[i] = iv[i];
    out[12] = (u8)(counter >> 24); out[13] = (u8)(counter >> 16);
    out[14] = (u8)(counter >> 8); out[15] = (u8)counter;
}

// Combines the segments: GHASH = XOR of partials[t] (one block, a power-of-two number of
// threads <= 256, reducing in shared memory), then tag = GHASH ^ E(K, J0). With
// expected != 0 it compares in constant time and writes *status = 1 on a match, 0
// otherwise; it always writes the computed tag to tag_out.
extern "C" __global__ void gcm_finish(const u32* rk, const u8* iv, const Block128* partials,
                                      u64 n_segments, const u8* expected, u8* tag_out,
                                      u32* status) {
    __shared__ u64 his[256], los[256];
    if (blockIdx.x != 0) return;
    Block128 s = {0, 0};
    for (u64 t = threadIdx.x; t < n_segments; t += blockDim.x) {
        s.hi ^= partials[t].hi;
        s.lo ^= partials[t].lo;
    }
    his[threadIdx.x] = s.hi;
    los[threadIdx.x] = s.lo;
    __syncthreads();
    for (unsigned int k = blockDim.x / 2; k > 0; k >>= 1) {
        if (threadIdx.x < k) {
            his[threadIdx.x] ^= his[threadIdx.x + k];
            los[threadIdx.x] ^= los[threadIdx.x + k];
        }
        __syncthreads();
    }
    if (threadIdx.x != 0) return;
    s.hi = his[0];
    s.lo = los[0];
    u8 j0[16];
    counter_block(iv, 1, j0);
    aes256_encrypt_block(rk, SBOX, j0);
    u8 diff = 0;
    for (int i = 0; i < 16; i++) {
        u64 half = i < 8 ? s.hi : s.lo;
        u8 tag = (u8)(half >> (56 - 8 * (i & 7))) ^ j0[i];
        tag_out[i] = tag;
        if (expected) diff |= tag ^ expected[i];
    }
    if (status) *status = expected ? (diff == 0) : 1;
}

// out[i] = in[i] ^ keystream; runs only when *status == 1 (the tag verified), so a
// rejected chunk never reaches its destination.
extern "C" __global__ void gcm_ctr_xor(const u32* rk, const u8* iv, const u8* in, u8* out,
                                       u64 len, const u32* status) {
    if (status && *status != 1) return;
    __shared__ u8 sbox[256];
    for (unsigned int i = threadIdx.x; i < 256; i += blockDim.x) sbox[i] = SBOX[i];
    __syncthreads();
    u64 block = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    if (block * 16 >= len) return;
    u8 ks[16];
    counter_block(iv, (u32)(block + 2), ks);
    aes256_encrypt_block(rk, sbox, ks);
    for (u64 i = 0; i < 16 && block * 16 + i < len; i++) out[block * 16 + i] = in[block * 16 + i] ^ ks[i];
}
