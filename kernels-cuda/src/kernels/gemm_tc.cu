// Tensor-core GEMMs for prefill (many rows): mma.sync m16n8k16 with f32 accumulation, sm_80+.
//
// One tile machinery for three users:
//   gemm_tc_*        : y[t, n] = x[t, k] W^T + b, dense weights (Q8_0, F16, BF16, F32, MXFP4);
//   moe_tc_gate_up   : per expert, rows of x gathered by the routing permutation, gate and up
//                      MXFP4 in one B tile, SwiGLU-OAI and both biases in the epilogue, h in bf16;
//   moe_tc_down      : per expert, h rows times down MXFP4, bias and routing weight, one f32 row
//                      per (token, slot), summed over the slots by moe_sum_slots in slot order.
// Weights are expanded to 16-bit in shared memory while staged: MXFP4 to bf16 (exact: an E2M1
// value times a power of two fits bf16's 8-bit mantissa and f32's exponent range), Q8_0 and F16
// to f16 (10-bit mantissa for the products q * d), BF16 and F32 to bf16. Activations are
// converted (round to nearest) to the same 16-bit type on the way into shared memory.
//
// Block tile 128 rows x 128 outputs x 32 k (one quantization block per weight row per step),
// 256 threads = 8 warps as 2 (rows) x 4 (outputs), each warp 64 x 32 = 4 x 4 mma tiles.
// Global loads of step kt + 1 are issued into registers before step kt's mma work, then stored
// (converted) into the other shared buffer: one __syncthreads per step.

#define TC_BM 128
#define TC_BN 128
#define TC_BK 32
// Shared row stride in 16-bit elements: 32 + 8 padding = 20 words, so the fragment loads of a
// warp (8 rows x 4 words) hit 32 distinct banks.
#define TC_LDS 40

__device__ __forceinline__ u32 pack_bf16(float lo, float hi) {
    u32 r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}
__device__ __forceinline__ u32 pack_f16(float lo, float hi) {
    u32 r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}
template <bool BF>
__device__ __forceinline__ u32 pack2(float lo, float hi) {
    return BF ? pack_bf16(lo, hi) : pack_f16(lo, hi);
}

// Split precision (the default, see prefill.rs): x = hi + lo with hi = bf16(x) and
// lo = bf16(x - hi) (the difference is exact in f32), so hi + lo carries 16 of f32's 24
// mantissa bits: a product whose other operand is exact in bf16 is then hi * w + lo * w, two
// mma.sync into the same f32 accumulator, within ~2^-17 of the f32 product. Two values of a
// pair: `x` in the low half as pack_bf16.
__device__ __forceinline__ void split_bf16(float x, float y, u32& hi, u32& lo) {
    hi = pack_bf16(x, y);
    lo = pack_bf16(x - __uint_as_float(hi << 16), y - __uint_as_float(hi & 0xffff0000u));
}

template <bool BF>
__device__ __forceinline__ void mma16816(float* c, const u32* a, const u32* b) {
    if (BF) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
            "{%8,%9}, {%0,%1,%2,%3};"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    } else {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
            "{%8,%9}, {%0,%1,%2,%3};"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    }
}

struct TcShared {
    u16 a[2][TC_BM * TC_LDS];
    u16 b[2][TC_BN * TC_LDS];
};

// ---- A (activation) tile loaders: 128 rows x 32 k into shared memory as 16-bit ----

// f32 rows (row pointers fixed per block; null = a row past the end, stored as zeros).
// Thread slot u in 0..3 covers idx = tid + 256 u: row idx >> 3, float4 column idx & 7.
template <bool BF>
struct ALoadF32 {
    const float* rp[4];
    float4 v[4];
    __device__ __forceinline__ void init(const float* const* rows_of_tile) {
#pragma unroll
        for (int u = 0; u < 4; ++u) rp[u] = rows_of_tile[(threadIdx.x + 256 * u) >> 3];
    }
    __device__ __forceinline__ void fetch(int kt) {
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            int c4 = (threadIdx.x + 256 * u) & 7;
            v[u] = rp[u] ? __ldg((const float4*)(rp[u] + kt * TC_BK) + c4)
                         : make_float4(0.f, 0.f, 0.f, 0.f);
        }
    }
    __device__ __forceinline__ void store(u16* s) {
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            int idx = threadIdx.x + 256 * u;
            int row = idx >> 3, c4 = idx & 7;
            uint2 p = make_uint2(pack2<BF>(v[u].x, v[u].y), pack2<BF>(v[u].z, v[u].w));
            *(uint2*)(s + row * TC_LDS + c4 * 4) = p;
        }
    }
    // Split precision: bf16 hi and lo tiles (BF is ignored).
    __device__ __forceinline__ void store2(u16* sh, u16* sl) {
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            int idx = threadIdx.x + 256 * u;
            int row = idx >> 3, c4 = idx & 7;
            u32 h0, l0, h1, l1;
            split_bf16(v[u].x, v[u].y, h0, l0);
            split_bf16(v[u].z, v[u].w, h1, l1);
            *(uint2*)(sh + row * TC_LDS + c4 * 4) = make_uint2(h0, h1);
            *(uint2*)(sl + row * TC_LDS + c4 * 4) = make_uint2(l0, l1);
        }
    }
};

// 16-bit rows already in the compute type (h of the MoE). Slot u in 0..1: idx = tid + 256 u,
// row idx >> 2, 8-element column idx & 3.
struct ALoad16 {
    const u16* rp[2];
    uint4 v[2];
    __device__ __forceinline__ void init(const u16* const* rows_of_tile) {
#pragma unroll
        for (int u = 0; u < 2; ++u) rp[u] = rows_of_tile[(threadIdx.x + 256 * u) >> 2];
    }
    __device__ __forceinline__ void fetch(int kt) {
#pragma unroll
        for (int u = 0; u < 2; ++u) {
            int c = (threadIdx.x + 256 * u) & 3;
            v[u] = rp[u] ? __ldg((const uint4*)(rp[u] + kt * TC_BK) + c) : make_uint4(0, 0, 0, 0);
        }
    }
    __device__ __forceinline__ void store(u16* s) {
#pragma unroll
        for (int u = 0; u < 2; ++u) {
            int idx = threadIdx.x + 256 * u;
            *(uint4*)(s + (idx >> 2) * TC_LDS + (idx & 3) * 8) = v[u];
        }
    }
};

// ---- B (weight) tile loaders: 128 weight rows x 32 k. Thread: row tid >> 1, half tid & 1. ----
// `row` is the weight row (global, in units of rows of k elements) or -1 for zeros.

// MXFP4 -> bf16. Half h takes bytes 8h..8h+7 of the block: elements 8h..8h+7 (low nibbles)
// and 16+8h..16+8h+7 (high nibbles).
struct BLoadMxfp4 {
    const u8* w;
    i64 nb;
    i64 row;
    int nbk;
    uint2 q;
    u32 e;
    __device__ __forceinline__ void fetch(int kt) {
        if (row >= 0) {
            i64 bi = row * nbk + kt;
            q = __ldg((const uint2*)(w + bi * 16) + (threadIdx.x & 1));
            e = __ldg(w + nb * 16 + bi);
        }
    }
    __device__ __forceinline__ void store(u16* s) {
        int half = threadIdx.x & 1;
        u16* d = s + (threadIdx.x >> 1) * TC_LDS + half * 8;
        if (row < 0) {
            *(uint4*)d = make_uint4(0, 0, 0, 0);
            *(uint4*)(d + 16) = make_uint4(0, 0, 0, 0);
            return;
        }
        float sc = e8m0_to_f32(e);
        u32 lo[4], hi[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            u32 word = i < 2 ? q.x : q.y;
            u32 b0 = (word >> (16 * (i & 1))) & 0xffu;
            u32 b1 = (word >> (16 * (i & 1) + 8)) & 0xffu;
            lo[i] = pack_bf16(e2m1_to_f32(b0 & 15u) * sc, e2m1_to_f32(b1 & 15u) * sc);
            hi[i] = pack_bf16(e2m1_to_f32(b0 >> 4) * sc, e2m1_to_f32(b1 >> 4) * sc);
        }
        *(uint4*)d = make_uint4(lo[0], lo[1], lo[2], lo[3]);
        *(uint4*)(d + 16) = make_uint4(hi[0], hi[1], hi[2], hi[3]);
    }
};

// Q8_0 -> f16: half h takes values 16h..16h+15 of the block.
struct BLoadQ8 {
    const u8* w;
    i64 nb;
    i64 row;
    int nbk;
    uint4 q;
    float d;
    __device__ __forceinline__ void fetch(int kt) {
        if (row >= 0) {
            i64 bi = row * nbk + kt;
            q = __ldg((const uint4*)(w + bi * 32) + (threadIdx.x & 1));
            d = h2f(__ldg((const u16*)(w + nb * 32) + bi));
        }
    }
    __device__ __forceinline__ void store(u16* s) {
        u16* dst = s + (threadIdx.x >> 1) * TC_LDS + (threadIdx.x & 1) * 16;
        if (row < 0) {
            *(uint4*)dst = make_uint4(0, 0, 0, 0);
            *(uint4*)(dst + 8) = make_uint4(0, 0, 0, 0);
            return;
        }
        u32 words[4] = {q.x, q.y, q.z, q.w};
        u32 o[8];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            int v = (int)words[i];
            o[2 * i] = pack_f16(sx8(v, 0) * d, sx8(v, 1) * d);
            o[2 * i + 1] = pack_f16(sx8(v, 2) * d, sx8(v, 3) * d);
        }
        *(uint4*)dst = make_uint4(o[0], o[1], o[2], o[3]);
        *(uint4*)(dst + 8) = make_uint4(o[4], o[5], o[6], o[7]);
    }
    // Split precision: q * d is exact in f32 (8 + 11 significant bits), then bf16 hi and lo
    // (lo rounds the remaining 11 bits to 8: ~2^-18 of the weight).
    __device__ __forceinline__ void store2(u16* sh, u16* sl) {
        int off = (threadIdx.x >> 1) * TC_LDS + (threadIdx.x & 1) * 16;
        if (row < 0) {
            *(uint4*)(sh + off) = make_uint4(0, 0, 0, 0);
            *(uint4*)(sh + off + 8) = make_uint4(0, 0, 0, 0);
            *(uint4*)(sl + off) = make_uint4(0, 0, 0, 0);
            *(uint4*)(sl + off + 8) = make_uint4(0, 0, 0, 0);
            return;
        }
        u32 words[4] = {q.x, q.y, q.z, q.w};
        u32 h[8], l[8];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            int v = (int)words[i];
            split_bf16(sx8(v, 0) * d, sx8(v, 1) * d, h[2 * i], l[2 * i]);
            split_bf16(sx8(v, 2) * d, sx8(v, 3) * d, h[2 * i + 1], l[2 * i + 1]);
        }
        *(uint4*)(sh + off) = make_uint4(h[0], h[1], h[2], h[3]);
        *(uint4*)(sh + off + 8) = make_uint4(h[4], h[5], h[6], h[7]);
        *(uint4*)(sl + off) = make_uint4(l[0], l[1], l[2], l[3]);
        *(uint4*)(sl + off + 8) = make_uint4(l[4], l[5], l[6], l[7]);
    }
};

// F16 or BF16 (copied as they are: the compute type matches) : 16 elements = 2 uint4.
struct BLoad16 {
    const u16* w;
    i64 row;
    int k;
    uint4 v0, v1;
    __device__ __forceinline__ void fetch(int kt) {
        if (row >= 0) {
            const uint4* p = (const uint4*)(w + row * k + kt * TC_BK + (threadIdx.x & 1) * 16);
            v0 = __ldg(p);
            v1 = __ldg(p + 1);
        }
    }
    __device__ __forceinline__ void store(u16* s) {
        u16* dst = s + (threadIdx.x >> 1) * TC_LDS + (threadIdx.x & 1) * 16;
        if (row < 0) {
            v0 = make_uint4(0, 0, 0, 0);
            v1 = v0;
        }
        *(uint4*)dst = v0;
        *(uint4*)(dst + 8) = v1;
    }
    // Split precision, F16 weights only (BF16 ones are exact and use store): f16 has 11
    // significant bits, bf16 hi takes 8 and lo the rest exactly.
    __device__ __forceinline__ void store2(u16* sh, u16* sl) {
        int off = (threadIdx.x >> 1) * TC_LDS + (threadIdx.x & 1) * 16;
        if (row < 0) {
            v0 = make_uint4(0, 0, 0, 0);
            v1 = v0;
        }
        u32 words[8] = {v0.x, v0.y, v0.z, v0.w, v1.x, v1.y, v1.z, v1.w};
        u32 h[8], l[8];
#pragma unroll
        for (int i = 0; i < 8; ++i)
            split_bf16(h2f((u16)(words[i] & 0xffffu)), h2f((u16)(words[i] >> 16)), h[i], l[i]);
        *(uint4*)(sh + off) = make_uint4(h[0], h[1], h[2], h[3]);
        *(uint4*)(sh + off + 8) = make_uint4(h[4], h[5], h[6], h[7]);
        *(uint4*)(sl + off) = make_uint4(l[0], l[1], l[2], l[3]);
        *(uint4*)(sl + off + 8) = make_uint4(l[4], l[5], l[6], l[7]);
    }
};

// F32 -> bf16: 16 floats = 4 float4.
struct BLoadF32 {
    const float* w;
    i64 row;
    int k;
    float4 v[4];
    __device__ __forceinline__ void fetch(int kt) {
        if (row >= 0) {
            const float4* p = (const float4*)(w + row * k + kt * TC_BK + (threadIdx.x & 1) * 16);
#pragma unroll
            for (int i = 0; i < 4; ++i) v[i] = __ldg(p + i);
        }
    }
    __device__ __forceinline__ void store(u16* s) {
        u16* dst = s + (threadIdx.x >> 1) * TC_LDS + (threadIdx.x & 1) * 16;
        if (row < 0) {
            *(uint4*)dst = make_uint4(0, 0, 0, 0);
            *(uint4*)(dst + 8) = make_uint4(0, 0, 0, 0);
            return;
        }
        u32 o[8];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            o[2 * i] = pack_bf16(v[i].x, v[i].y);
            o[2 * i + 1] = pack_bf16(v[i].z, v[i].w);
        }
        *(uint4*)dst = make_uint4(o[0], o[1], o[2], o[3]);
        *(uint4*)(dst + 8) = make_uint4(o[4], o[5], o[6], o[7]);
    }
    // Split precision: bf16 hi and lo (the product misses lo's rounding, ~2^-17 of w).
    __device__ __forceinline__ void store2(u16* sh, u16* sl) {
        int off = (threadIdx.x >> 1) * TC_LDS + (threadIdx.x & 1) * 16;
        if (row < 0) {
#pragma unroll
            for (int i = 0; i < 4; ++i) v[i] = make_float4(0.f, 0.f, 0.f, 0.f);
        }
        u32 h[8], l[8];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            split_bf16(v[i].x, v[i].y, h[2 * i], l[2 * i]);
            split_bf16(v[i].z, v[i].w, h[2 * i + 1], l[2 * i + 1]);
        }
        *(uint4*)(sh + off) = make_uint4(h[0], h[1], h[2], h[3]);
        *(uint4*)(sh + off + 8) = make_uint4(h[4], h[5], h[6], h[7]);
        *(uint4*)(sl + off) = make_uint4(l[0], l[1], l[2], l[3]);
        *(uint4*)(sl + off + 8) = make_uint4(l[4], l[5], l[6], l[7]);
    }
};

// One 32-k step of the warp's 64 x 32 tile from shared memory. Fragment layouts of
// m16n8k16 (g = lane >> 2, q = lane & 3): A regs {(g, 2q), (g+8, 2q), (g, 2q+8), (g+8, 2q+8)},
// B regs {(k 2q, n g), (k 2q+8, n g)}, C {(g, 2q), (g, 2q+1), (g+8, 2q), (g+8, 2q+1)}.
template <bool BF>
__device__ __forceinline__ void tc_step(const u16* as, const u16* bs, float (&acc)[4][4][4]) {
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int wm = warp >> 2, wn = warp & 3;
    int g = lane >> 2, q = lane & 3;
#pragma unroll
    for (int ks = 0; ks < TC_BK; ks += 16) {
        u32 a[4][4], b[4][2];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const u16* p = as + (wm * 64 + i * 16 + g) * TC_LDS + ks + 2 * q;
            a[i][0] = *(const u32*)p;
            a[i][1] = *(const u32*)(p + 8 * TC_LDS);
            a[i][2] = *(const u32*)(p + 8);
            a[i][3] = *(const u32*)(p + 8 * TC_LDS + 8);
        }
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const u16* p = bs + (wn * 32 + j * 8 + g) * TC_LDS + ks + 2 * q;
            b[j][0] = *(const u32*)p;
            b[j][1] = *(const u32*)(p + 8);
        }
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j) mma16816<BF>(acc[i][j], a[i], b[j]);
    }
}

// The k loop: nkt steps of 32, double-buffered shared memory, register prefetch.
template <bool BF, class AL, class BL>
__device__ __forceinline__ void tc_mainloop(TcShared& sm, AL& al, BL& bl, int nkt,
                                            float (&acc)[4][4][4]) {
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int c = 0; c < 4; ++c) acc[i][j][c] = 0.f;
    al.fetch(0);
    bl.fetch(0);
    al.store(sm.a[0]);
    bl.store(sm.b[0]);
    __syncthreads();
    for (int kt = 0; kt < nkt; ++kt) {
        int cur = kt & 1;
        bool more = kt + 1 < nkt;
        if (more) {
            al.fetch(kt + 1);
            bl.fetch(kt + 1);
        }
        tc_step<BF>(sm.a[cur], sm.b[cur], acc);
        if (more) {
            al.store(sm.a[cur ^ 1]);
            bl.store(sm.b[cur ^ 1]);
        }
        __syncthreads();
    }
}

// ---- Split precision (see split_bf16): the same tiles with the activations as bf16 hi and lo
// tiles, and the weights as one bf16 tile where they are exact in bf16 (NB = 1: MXFP4, BF16)
// or hi and lo tiles (NB = 2: Q8_0, F16, F32). Products per k step: a_hi w + a_lo w, plus
// a_hi w_lo for NB = 2 (a_lo w_lo is ~2^-17 of the product and left out). The tiles no longer
// fit the 48 KB of static shared memory: they are dynamic, TCS_SMEM(NB) bytes, laid out as
// a_hi[2], a_lo[2], w_hi[2], w_lo[2] (double-buffered), each TC_BM x TC_LDS 16-bit elements.
#define TCS_TILE (TC_BM * TC_LDS)
#define TCS_SMEM(NB) ((4 + 2 * (NB)) * TCS_TILE * 2)

template <int NB>
__device__ __forceinline__ void tcs_step(const u16* ah, const u16* al, const u16* bh,
                                         const u16* bl, float (&acc)[4][4][4]) {
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int wm = warp >> 2, wn = warp & 3;
    int g = lane >> 2, q = lane & 3;
#pragma unroll
    for (int ks = 0; ks < TC_BK; ks += 16) {
        u32 b[4][2], bo[4][2];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            int o = (wn * 32 + j * 8 + g) * TC_LDS + ks + 2 * q;
            b[j][0] = *(const u32*)(bh + o);
            b[j][1] = *(const u32*)(bh + o + 8);
            if (NB == 2) {
                bo[j][0] = *(const u32*)(bl + o);
                bo[j][1] = *(const u32*)(bl + o + 8);
            }
        }
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            int o = (wm * 64 + i * 16 + g) * TC_LDS + ks + 2 * q;
            u32 a[4] = {*(const u32*)(ah + o), *(const u32*)(ah + o + 8 * TC_LDS),
                        *(const u32*)(ah + o + 8), *(const u32*)(ah + o + 8 * TC_LDS + 8)};
            u32 c[4] = {*(const u32*)(al + o), *(const u32*)(al + o + 8 * TC_LDS),
                        *(const u32*)(al + o + 8), *(const u32*)(al + o + 8 * TC_LDS + 8)};
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                mma16816<true>(acc[i][j], c, b[j]);
                if (NB == 2) mma16816<true>(acc[i][j], a, bo[j]);
                mma16816<true>(acc[i][j], a, b[j]);
            }
        }
    }
}

template <int NB, class BL>
__device__ __forceinline__ void tcs_store_b(BL& bl, u16* bh, u16* blo) {
    if constexpr (NB == 2)
        bl.store2(bh, blo);
    else
        bl.store(bh);
}

// The k loop of the split kernels (as tc_mainloop); `s` is the dynamic shared memory.
template <int NB, class AL, class BL>
__device__ __forceinline__ void tcs_mainloop(u16* s, AL& al, BL& bl, int nkt,
                                             float (&acc)[4][4][4]) {
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int c = 0; c < 4; ++c) acc[i][j][c] = 0.f;
    u16* ah = s;
    u16* al_ = s + 2 * TCS_TILE;
    u16* bh = s + 4 * TCS_TILE;
    u16* blo = s + 6 * TCS_TILE;
    al.fetch(0);
    bl.fetch(0);
    al.store2(ah, al_);
    tcs_store_b<NB>(bl, bh, blo);
    __syncthreads();
    for (int kt = 0; kt < nkt; ++kt) {
        int cur = (kt & 1) * TCS_TILE, nxt = TCS_TILE - cur;
        bool more = kt + 1 < nkt;
        if (more) {
            al.fetch(kt + 1);
            bl.fetch(kt + 1);
        }
        tcs_step<NB>(ah + cur, al_ + cur, bh + cur, blo + cur, acc);
        if (more) {
            al.store2(ah + nxt, al_ + nxt);
            tcs_store_b<NB>(bl, bh + nxt, blo + nxt);
        }
        __syncthreads();
    }
}

// y rows m0.., columns n0.. of a dense product from the warp tiles' accumulators, plus bias.
__device__ __forceinline__ void tc_dense_epilogue(const float (&acc)[4][4][4], int m0, int n0,
                                                  int t, int n_out, const u8* bias, int btype,
                                                  float* y) {
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int wm = warp >> 2, wn = warp & 3, g = lane >> 2, q = lane & 3;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
#pragma unroll
        for (int c = 0; c < 2; ++c) {
            int n = n0 + wn * 32 + j * 8 + 2 * q + c;
            if (n >= n_out) continue;
            float b = bias ? wload(bias, btype, 0, n) : 0.f;
#pragma unroll
            for (int i = 0; i < 4; ++i) {
#pragma unroll
                for (int h = 0; h < 2; ++h) {
                    int m = m0 + wm * 64 + i * 16 + g + 8 * h;
                    if (m < t) y[(i64)m * n_out + n] = acc[i][j][2 * h + c] + b;
                }
            }
        }
    }
}

// ---- dense: y[t, n_out] = x[t, k] W^T + bias. grid (ceil(n_out / 128), ceil(t / 128)), block
// 256. k must be a multiple of 32 (the caller checks). ----
template <bool BF, class BL>
__device__ __forceinline__ void gemm_tc_body(const float* x, int t, int k, BL& bl, int n_out,
                                             const u8* bias, int btype, float* y) {
    __shared__ TcShared sm;
    __shared__ const float* rows[TC_BM];
    int m0 = blockIdx.y * TC_BM, n0 = blockIdx.x * TC_BN;
    for (int i = threadIdx.x; i < TC_BM; i += blockDim.x)
        rows[i] = m0 + i < t ? x + (i64)(m0 + i) * k : nullptr;
    __syncthreads();
    ALoadF32<BF> al;
    al.init(rows);
    float acc[4][4][4];
    tc_mainloop<BF>(sm, al, bl, k / TC_BK, acc);
    tc_dense_epilogue(acc, m0, n0, t, n_out, bias, btype, y);
}

__device__ __forceinline__ i64 dense_row(int n0, int n_out) {
    int n = n0 + (threadIdx.x >> 1);
    return n < n_out ? (i64)n : -1;
}

extern "C" __global__ void __launch_bounds__(256) gemm_tc_q8_0(const float* x, int t, int k,
                                                               const u8* w, i64 nb, const u8* bias,
                                                               int btype, float* y, int n_out) {
    GRID_DEP_ENTRY();
    BLoadQ8 bl;
    bl.w = w;
    bl.nb = nb;
    bl.nbk = k / 32;
    bl.row = dense_row(blockIdx.x * TC_BN, n_out);
    gemm_tc_body<false>(x, t, k, bl, n_out, bias, btype, y);
}

extern "C" __global__ void __launch_bounds__(256) gemm_tc_mxfp4(const float* x, int t, int k,
                                                                const u8* w, i64 nb, const u8* bias,
                                                                int btype, float* y, int n_out) {
    GRID_DEP_ENTRY();
    BLoadMxfp4 bl;
    bl.w = w;
    bl.nb = nb;
    bl.nbk = k / 32;
    bl.row = dense_row(blockIdx.x * TC_BN, n_out);
    gemm_tc_body<true>(x, t, k, bl, n_out, bias, btype, y);
}

extern "C" __global__ void __launch_bounds__(256) gemm_tc_f16(const float* x, int t, int k,
                                                              const u8* w, i64 nb, const u8* bias,
                                                              int btype, float* y, int n_out) {
    GRID_DEP_ENTRY();
    BLoad16 bl;
    bl.w = (const u16*)w;
    bl.k = k;
    bl.row = dense_row(blockIdx.x * TC_BN, n_out);
    gemm_tc_body<false>(x, t, k, bl, n_out, bias, btype, y);
}

extern "C" __global__ void __launch_bounds__(256) gemm_tc_bf16(const float* x, int t, int k,
                                                               const u8* w, i64 nb, const u8* bias,
                                                               int btype, float* y, int n_out) {
    GRID_DEP_ENTRY();
    BLoad16 bl;
    bl.w = (const u16*)w;
    bl.k = k;
    bl.row = dense_row(blockIdx.x * TC_BN, n_out);
    gemm_tc_body<true>(x, t, k, bl, n_out, bias, btype, y);
}

extern "C" __global__ void __launch_bounds__(256) gemm_tc_f32(const float* x, int t, int k,
                                                              const u8* w, i64 nb, const u8* bias,
                                                              int btype, float* y, int n_out) {
    GRID_DEP_ENTRY();
    BLoadF32 bl;
    bl.w = (const float*)w;
    bl.k = k;
    bl.row = dense_row(blockIdx.x * TC_BN, n_out);
    gemm_tc_body<true>(x, t, k, bl, n_out, bias, btype, y);
}

// ---- dense, split precision: as gemm_tc_*, dynamic shared memory TCS_SMEM(NB). ----
template <int NB, class BL>
__device__ __forceinline__ void gemm_tcs_body(const float* x, int t, int k, BL& bl, int n_out,
                                              const u8* bias, int btype, float* y) {
    extern __shared__ int4 tcs_smem[];
    __shared__ const float* rows[TC_BM];
    int m0 = blockIdx.y * TC_BM, n0 = blockIdx.x * TC_BN;
    for (int i = threadIdx.x; i < TC_BM; i += blockDim.x)
        rows[i] = m0 + i < t ? x + (i64)(m0 + i) * k : nullptr;
    __syncthreads();
    ALoadF32<true> al;
    al.init(rows);
    float acc[4][4][4];
    tcs_mainloop<NB>((u16*)tcs_smem, al, bl, k / TC_BK, acc);
    tc_dense_epilogue(acc, m0, n0, t, n_out, bias, btype, y);
}

#define GEMM_TCS_ENTRY(NAME, NB, SETUP)                                                          \
    extern "C" __global__ void __launch_bounds__(256)                                           \
        NAME(const float* x, int t, int k, const u8* w, i64 nb, const u8* bias, int btype,      \
             float* y, int n_out) { GRID_DEP_ENTRY();                                           \
        SETUP;                                                                                  \
        bl.row = dense_row(blockIdx.x * TC_BN, n_out);                                          \
        gemm_tcs_body<NB>(x, t, k, bl, n_out, bias, btype, y);                                  \
    }
GEMM_TCS_ENTRY(gemm_tcs_q8_0, 2, BLoadQ8 bl; bl.w = w; bl.nb = nb; bl.nbk = k / 32)
GEMM_TCS_ENTRY(gemm_tcs_mxfp4, 1, BLoadMxfp4 bl; bl.w = w; bl.nb = nb; bl.nbk = k / 32)
GEMM_TCS_ENTRY(gemm_tcs_f16, 2, BLoad16 bl; bl.w = (const u16*)w; bl.k = k)
GEMM_TCS_ENTRY(gemm_tcs_bf16, 1, BLoad16 bl; bl.w = (const u16*)w; bl.k = k)
GEMM_TCS_ENTRY(gemm_tcs_f32, 2, BLoadF32 bl; bl.w = (const float*)w; bl.k = k)

// ---- MoE prefill ----

// Group the t * k (token, slot) pairs by expert, on the GPU: counts, offsets, the sorted order
// `perm` (sorted position -> pair; the order inside an expert is arbitrary, which changes no
// value: every output row is computed on its own), the end of each expert's segment, and the
// list of 128-row tiles (expert, first sorted row) with its length in tiles[0]. One block of
// 1024 threads; ids are the router's (in 0..n_exp), or -1 for a pick of another rank's expert
// (expert parallelism): those pairs are dropped (in no segment; the caller zeroes their yp rows).
extern "C" __global__ void moe_tc_group(const int* ids, int pairs, int n_exp, int* perm,
                                        int* seg_end, int* tiles) {
    GRID_DEP_ENTRY();
    __shared__ int cnt[MOE_MAX_EXPERTS];
    __shared__ int cur[MOE_MAX_EXPERTS];
    for (int e = threadIdx.x; e < n_exp; e += blockDim.x) cnt[e] = 0;
    __syncthreads();
    for (int p = threadIdx.x; p < pairs; p += blockDim.x)
        if (ids[p] >= 0) atomicAdd(&cnt[ids[p]], 1);
    __syncthreads();
    if (threadIdx.x == 0) {
        int o = 0, nt = 0;
        for (int e = 0; e < n_exp; ++e) {
            cur[e] = o;
            for (int m = 0; m < cnt[e]; m += TC_BM) {
                tiles[1 + 2 * nt] = e;
                tiles[2 + 2 * nt] = o + m;
                ++nt;
            }
            o += cnt[e];
            seg_end[e] = o;
        }
        tiles[0] = nt;
    }
    __syncthreads();
    for (int p = threadIdx.x; p < pairs; p += blockDim.x)
        if (ids[p] >= 0) perm[atomicAdd(&cur[ids[p]], 1)] = p;
}

// Gate and up of the tile's expert for 64 ff columns: B rows interleaved so that warp wn's 32
// outputs are gate then up of the same 16 columns f0 + 16 wn + (0..15); its mma tiles j = 0, 1
// (gate) and j + 2 (up) then hold the same (row, column) in the same registers. h is bf16
// [pairs, n_ff] in sorted order. grid (ceil(n_ff / 64), max tiles), block 256.
// SPLIT: split precision (tcs_mainloop, dynamic shared memory TCS_SMEM(1)) and h in f32 (HT
// float); else bf16 tiles and h in bf16 (HT u16).
template <bool SPLIT, class HT>
__device__ __forceinline__ void moe_gate_up_body(
    const float* x, int d_model, const u8* wg, i64 nbg, const u8* wu, i64 nbu, const u8* bg,
    int bgt, const u8* bu, int but, const int* perm, const int* seg_end, const int* tiles, int k,
    int n_ff, HT* h) {
    __shared__ const float* rows[TC_BM];
    int tile = blockIdx.y;
    if (tile >= tiles[0]) return;
    int e = tiles[1 + 2 * tile], s0 = tiles[2 + 2 * tile], s_end = seg_end[e];
    for (int i = threadIdx.x; i < TC_BM; i += blockDim.x)
        rows[i] = s0 + i < s_end ? x + (i64)(perm[s0 + i] / k) * d_model : nullptr;
    __syncthreads();
    int f0 = blockIdx.x * 64;
    int r = threadIdx.x >> 1;  // B tile row of this thread
    int wn = r >> 5, within = r & 31;
    int f = f0 + wn * 16 + (within & 15);
    bool is_up = within >= 16;
    BLoadMxfp4 bl;
    bl.w = is_up ? wu : wg;
    bl.nb = is_up ? nbu : nbg;
    bl.nbk = d_model / 32;
    bl.row = f < n_ff ? (i64)e * n_ff + f : -1;
    ALoadF32<true> al;
    al.init(rows);
    float acc[4][4][4];
    if constexpr (SPLIT) {
        extern __shared__ int4 tcs_smem[];
        tcs_mainloop<1>((u16*)tcs_smem, al, bl, d_model / TC_BK, acc);
    } else {
        __shared__ TcShared sm;
        tc_mainloop<true>(sm, al, bl, d_model / TC_BK, acc);
    }
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int wm = warp >> 2, g = lane >> 2, q = lane & 3;
    int wnn = warp & 3;
#pragma unroll
    for (int j = 0; j < 2; ++j) {
#pragma unroll
        for (int c = 0; c < 2; ++c) {
            int ff = f0 + wnn * 16 + j * 8 + 2 * q + c;
            if (ff >= n_ff) continue;
            i64 bidx = (i64)e * n_ff + ff;
            float gb = wload(bg, bgt, 0, bidx), ub = wload(bu, but, 0, bidx);
#pragma unroll
            for (int i = 0; i < 4; ++i) {
#pragma unroll
                for (int hh = 0; hh < 2; ++hh) {
                    int s = s0 + wm * 64 + i * 16 + g + 8 * hh;
                    if (s < s_end) {
                        float v = swiglu_oai(acc[i][j][2 * hh + c] + gb, acc[i][j + 2][2 * hh + c] + ub);
                        if constexpr (SPLIT) {
                            h[(i64)s * n_ff + ff] = v;
                        } else {
                            u32 p = pack_bf16(v, 0.f);
                            h[(i64)s * n_ff + ff] = (u16)(p & 0xffffu);
                        }
                    }
                }
            }
        }
    }
}

#define MOE_GATE_UP_ENTRY(NAME, SPLIT, HT)                                                       \
    extern "C" __global__ void __launch_bounds__(256) NAME(                                     \
        const float* x, int d_model, const u8* wg, i64 nbg, const u8* wu, i64 nbu,              \
        const u8* bg, int bgt, const u8* bu, int but, const int* perm, const int* seg_end,      \
        const int* tiles, int k, int n_ff, HT* h) { GRID_DEP_ENTRY();                           \
        moe_gate_up_body<SPLIT>(x, d_model, wg, nbg, wu, nbu, bg, bgt, bu, but, perm, seg_end,  \
                                tiles, k, n_ff, h);                                             \
    }
MOE_GATE_UP_ENTRY(moe_tc_gate_up, false, u16)
// h f32 [pairs, n_ff] in sorted order.
MOE_GATE_UP_ENTRY(moe_tcs_gate_up, true, float)

// Down projection of the tile's expert for 128 outputs: yp[pair, d] = w_pair (h W_down^T + b).
// grid (ceil(d_model / 128), max tiles), block 256.
// SPLIT: h f32 rows, split precision; else h bf16 rows (HT as in moe_gate_up_body).
template <bool SPLIT, class HT>
__device__ __forceinline__ void moe_down_body(
    const HT* h, int n_ff, const u8* wd, i64 nbd, const u8* bd, int bdt, const int* perm,
    const float* wts, const int* seg_end, const int* tiles, int d_model, float* yp) {
    __shared__ const HT* rows[TC_BM];
    __shared__ int pr[TC_BM];
    int tile = blockIdx.y;
    if (tile >= tiles[0]) return;
    int e = tiles[1 + 2 * tile], s0 = tiles[2 + 2 * tile], s_end = seg_end[e];
    for (int i = threadIdx.x; i < TC_BM; i += blockDim.x) {
        bool ok = s0 + i < s_end;
        rows[i] = ok ? h + (i64)(s0 + i) * n_ff : nullptr;
        pr[i] = ok ? perm[s0 + i] : -1;
    }
    __syncthreads();
    int d0 = blockIdx.x * TC_BN;
    int dr = d0 + (threadIdx.x >> 1);
    BLoadMxfp4 bl;
    bl.w = wd;
    bl.nb = nbd;
    bl.nbk = n_ff / 32;
    bl.row = dr < d_model ? (i64)e * d_model + dr : -1;
    float acc[4][4][4];
    if constexpr (SPLIT) {
        extern __shared__ int4 tcs_smem[];
        ALoadF32<true> al;
        al.init(rows);
        tcs_mainloop<1>((u16*)tcs_smem, al, bl, n_ff / TC_BK, acc);
    } else {
        __shared__ TcShared sm;
        ALoad16 al;
        al.init(rows);
        tc_mainloop<true>(sm, al, bl, n_ff / TC_BK, acc);
    }
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int wm = warp >> 2, wn = warp & 3, g = lane >> 2, q = lane & 3;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
#pragma unroll
        for (int c = 0; c < 2; ++c) {
            int d = d0 + wn * 32 + j * 8 + 2 * q + c;
            if (d >= d_model) continue;
            float b = wload(bd, bdt, 0, (i64)e * d_model + d);
#pragma unroll
            for (int i = 0; i < 4; ++i) {
#pragma unroll
                for (int hh = 0; hh < 2; ++hh) {
                    int li = wm * 64 + i * 16 + g + 8 * hh;
                    int p = pr[li];
                    if (p >= 0) yp[(i64)p * d_model + d] = wts[p] * (acc[i][j][2 * hh + c] + b);
                }
            }
        }
    }
}

#define MOE_DOWN_ENTRY(NAME, SPLIT, HT)                                                          \
    extern "C" __global__ void __launch_bounds__(256) NAME(                                     \
        const HT* h, int n_ff, const u8* wd, i64 nbd, const u8* bd, int bdt, const int* perm,   \
        const float* wts, const int* seg_end, const int* tiles, int d_model, float* yp) { GRID_DEP_ENTRY(); \
        moe_down_body<SPLIT>(h, n_ff, wd, nbd, bd, bdt, perm, wts, seg_end, tiles, d_model, yp); \
    }
MOE_DOWN_ENTRY(moe_tc_down, false, u16)
MOE_DOWN_ENTRY(moe_tcs_down, true, float)

// y[r, d] = sum over slots j (in order) of yp[r * k + j, d]. grid (ceil(d_model / 256), t),
// block 256.
extern "C" __global__ void moe_sum_slots(const float* yp, int k, int d_model, float* y) {
    GRID_DEP_ENTRY();
    int d = blockIdx.x * 256 + threadIdx.x;
    int r = blockIdx.y;
    if (d >= d_model) return;
    float s = 0.f;
    for (int j = 0; j < k; ++j) s += yp[((i64)r * k + j) * d_model + d];
    y[(i64)r * d_model + d] = s;
}
