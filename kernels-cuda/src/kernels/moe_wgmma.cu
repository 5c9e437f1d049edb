// The MXFP4 MoE prefill on Hopper's warpgroup tensor cores (sm_90a, wgmma.mma_async): the
// grouped GEMMs of gemm_tc.cu's moe_tc_gate_up / moe_tc_down, on moe_tc_group's 128-row tiles,
// with the same math (bf16 products, f32 sums, SwiGLU-OAI and biases in the gate/up epilogue,
// h in bf16, bias and routing weight in the down epilogue, one f32 row per (token, slot)).
//
// The roles are swapped against the mma.sync kernels: the weights are wgmma's A operand
// (M = 64 output rows per warpgroup), expanded from MXFP4 to bf16 in the registers that feed
// wgmma, and the tile's 128 token rows are B (N = 128), bf16 in shared memory, copied there by
// cp.async in WG_STAGES stages of WG_BK k. So each weight byte is loaded once per tile straight
// into the thread that uses it, and no expanded weight goes through shared memory.
//
// K order: thread q of a quad loads the 32-bit word at byte 4q of every 16-byte MXFP4 block
// (elements 4q..4q+3 in the low nibbles, 16+4q..16+4q+3 in the high ones), while wgmma's
// register fragment holds k = 2q, 2q+1, 2q+8, 2q+9 of each 16-wide slice. So inside every
// 32-element block the k axis is permuted: physical element p sits at logical position
// wg_lpos(p) (the low nibbles make the block's first k16 slice, the high nibbles the second).
// The activations are stored in that logical order (moe_wg_prep_x for x, the gate/up epilogue
// for h), so every product pairs the same weight and activation as the plain order; only the
// order of the f32 sums differs.
//
// Everything but the layout helpers is compiled for sm_90a only (__CUDA_ARCH_FEAT_SM90_ALL);
// elsewhere the kernels are empty and the backend never launches them.

#define WG_BK 64                                  // k per stage: two MXFP4 blocks
#define WG_STAGES 4                               // shared-memory stages of the B tile
#define WG_N 128                                  // token rows per tile (= TC_BM)
#define WG_STAGE_BYTES (WG_N * WG_BK * 2)         // 16 KiB
#define WG_SMEM (WG_STAGES * WG_STAGE_BYTES)      // 64 KiB of dynamic shared memory

// Physical element p (0..31) of an MXFP4 block -> its logical k position (see above).
__device__ __forceinline__ int wg_lpos(int p) {
    int w = p & 15;
    return (p & 16) | (((w >> 1) & 1) << 3) | ((w >> 2) << 1) | (w & 1);
}
// Column c of a row of k elements (k a multiple of 32) -> its logical column.
__device__ __forceinline__ int wg_lcol(int c) { return (c & ~31) | wg_lpos(c & 31); }

// x [t, k] f32 -> bf16 (BF) or f16 in logical column order: the B rows of a wgmma GEMM. One
// thread per pair of columns.
template <bool BF>
__device__ __forceinline__ void wg_prep_rows(const float* x, int t, int k, u16* xb) {
    i64 i = ((i64)blockIdx.x * blockDim.x + threadIdx.x) * 2;
    if (i >= (i64)t * k) return;
    i64 row = i / k;
    int c = (int)(i - row * k);
    float2 v = *(const float2*)(x + i);
    // Columns c and c + 1 (c even) stay neighbours: wg_lpos keeps bit 0.
    *(u32*)(xb + row * k + wg_lcol(c)) = pack2<BF>(v.x, v.y);
}

// x [t, d_model] f32 -> bf16 in logical column order (the B rows of the gate/up GEMM).
// grid ceil(t * d_model / 512), block 256.
extern "C" __global__ void moe_wg_prep_x(const float* x, int t, int d_model, u16* xb) {
    GRID_DEP_ENTRY();
    wg_prep_rows<true>(x, t, d_model, xb);
}

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)

// ggml's doubled E2M1 table plus 16, as unsigned bytes (4..28): magnitudes 0..3 and 4..7,
// then the negative halves. A byte u placed under bf16's 2^7 exponent (0x43uu) is 128 + u.
#define KU_P0 0x13121110u
#define KU_P1 0x1c181614u
#define KU_N0 0x0d0e0f10u
#define KU_N1 0x04080a0cu

// Four E2M1 codes (the 16 bits of bytes j, j+1) -> table bytes (j lo, j hi, j+1 lo, j+1 hi).
__device__ __forceinline__ u32 wg_lut4(u32 c) {
    u32 s = c & 0x7777u;
    u32 pos = __byte_perm(KU_P0, KU_P1, s);
    u32 neg = __byte_perm(KU_N0, KU_N1, s);
    return __byte_perm(pos, neg, 0x3210u | ((c & 0x8888u) >> 1));
}

__device__ __forceinline__ u32 bf16x2_fma(u32 a, u32 b, u32 c) {
    u32 d;
    asm("fma.rn.bf16x2 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}

// One thread's word of an MXFP4 block (bytes b0..b3 = 4q..4q+3) with the block's E8M0 scale
// -> four bf16x2 fragment registers: o[0] = (b0 lo, b1 lo), o[1] = (b2 lo, b3 lo) (the
// block's first k16 slice), o[2] = (b0 hi, b1 hi), o[3] = (b2 hi, b3 hi) (its second).
// Exact: 0x43uu * s - 144 s = (u - 16) s with s = 2^(E-128) is the E2M1 value times 2^(E-127)
// (the table is doubled), every step exact in bf16 while s and 144 s are normal bf16 numbers
// (2 <= E <= 248); other scales take the f32 route of the mma.sync kernels.
__device__ __forceinline__ void wg_expand(u32 w, u32 e, u32 (&o)[4]) {
    if (e >= 2u && e <= 248u) {
        u32 t0 = wg_lut4(w & 0xffffu), t1 = wg_lut4(w >> 16);
        u32 s = (e - 1u) << 7, c = 0x8000u | ((e + 6u) << 7) | 0x10u;
        u32 S = s | (s << 16), C = c | (c << 16);
        o[0] = bf16x2_fma(__byte_perm(t0, 0x43434343u, 0x4240), S, C);
        o[1] = bf16x2_fma(__byte_perm(t1, 0x43434343u, 0x4240), S, C);
        o[2] = bf16x2_fma(__byte_perm(t0, 0x43434343u, 0x4341), S, C);
        o[3] = bf16x2_fma(__byte_perm(t1, 0x43434343u, 0x4341), S, C);
    } else {
        float sc = e8m0_to_f32(e);
        u32 b0 = w & 0xffu, b1 = (w >> 8) & 0xffu, b2 = (w >> 16) & 0xffu, b3 = w >> 24;
        o[0] = pack_bf16(e2m1_to_f32(b0 & 15u) * sc, e2m1_to_f32(b1 & 15u) * sc);
        o[1] = pack_bf16(e2m1_to_f32(b2 & 15u) * sc, e2m1_to_f32(b3 & 15u) * sc);
        o[2] = pack_bf16(e2m1_to_f32(b0 >> 4) * sc, e2m1_to_f32(b1 >> 4) * sc);
        o[3] = pack_bf16(e2m1_to_f32(b2 >> 4) * sc, e2m1_to_f32(b3 >> 4) * sc);
    }
}

__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wg_commit() {
    asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory");
}
template <int N>
__device__ __forceinline__ void wg_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;" ::"n"(N) : "memory");
}

// Shared-memory matrix descriptor, K-major without swizzle: 8-row x 16-byte core matrices of
// 128 contiguous bytes; LBO = 128 (the next core matrix along k), SBO = 1024 (the next 8 rows,
// a stage row group holding all WG_BK / 8 core matrices of its k range).
__device__ __forceinline__ u64 wg_desc(u32 saddr) {
    return (u64)((saddr & 0x3ffffu) >> 4) | ((u64)(128 >> 4) << 16) | ((u64)(1024 >> 4) << 32);
}
// The 64 accumulator operands of wg_mma's asm.
#define WG_D_OPERANDS                                                                             \
    "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]),     \
        "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]),   \
        "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]),   \
        "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]),   \
        "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]),   \
        "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]),   \
        "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]),   \
        "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
#define WG_MMA_ASM(TYPES)                                                                         \
    "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"                                                  \
    "wgmma.mma_async.sync.aligned.m64n128k16.f32." TYPES " "                                       \
    "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, "  \
    "%20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, "   \
    "%38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, "   \
    "%56, %57, %58, %59, %60, %61, %62, %63}, "                                                    \
    "{%64, %65, %66, %67}, %68, p, 1, 1, 0;\n}\n"

// d (64 x 128 f32, fragment layout of m64nNk16) += A (64 x 16 from the registers a0..a3,
// fragment layout of mma.m16n8k16's A per warp) x B (16 x 128 in shared memory, K-major core
// matrices described by desc); both bf16, or both f16 (F16). scale_d = 0 would overwrite d;
// the kernels zero d and always accumulate.
template <bool F16>
__device__ __forceinline__ void wg_mma(float (&d)[64], u32 a0, u32 a1, u32 a2, u32 a3,
                                       u64 desc) {
    if constexpr (F16) {
        asm volatile(WG_MMA_ASM("f16.f16")
                     : WG_D_OPERANDS
                     : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "l"(desc), "r"(1));
    } else {
        asm volatile(WG_MMA_ASM("bf16.bf16")
                     : WG_D_OPERANDS
                     : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "l"(desc), "r"(1));
    }
}

// The weight rows of one thread: its warp's fragment rows g (r = 0) and g + 8 (r = 1), two
// MXFP4 blocks per stage. Two register sets of raw words (SET = stage & 1): the loads of
// stage kt + 2 are in flight while stage kt + 1 is expanded.
struct WgA {
    static constexpr bool F16 = false;  // bf16 fragments
    const u32* q[2];  // word 4q of block 0 of the row; null: a row past the end (zeros)
    const u16* e[2];  // the row's scale bytes, two blocks (one stage) per u16
    u32 w[2][2][2];   // [set][row][block of the stage]
    u32 s[2][2];      // [set][row]: the stage's two scales
    // Row `row` (global, of nbk blocks) of the MXFP4 matrix at wt (nb blocks in all; nbk even,
    // so the scale pairs are 2-byte aligned), for quad lane qd.
    __device__ __forceinline__ void init(int r, const u8* wt, i64 nb, i64 row, int nbk, int qd) {
        q[r] = wt ? (const u32*)(wt + row * nbk * 16) + qd : nullptr;
        e[r] = wt ? (const u16*)(wt + nb * 16 + row * nbk) : nullptr;
    }
    template <int SET>
    __device__ __forceinline__ void fetch(int kt) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            if (q[r]) {
                w[SET][r][0] = __ldg(q[r] + kt * 8);
                w[SET][r][1] = __ldg(q[r] + kt * 8 + 4);
                s[SET][r] = __ldg(e[r] + kt);
            } else {
                w[SET][r][0] = 0u;
                w[SET][r][1] = 0u;
                s[SET][r] = 0x7f7fu;
            }
        }
    }
    // The stage's four k16 slices as wgmma A fragments: slice j in af[4j..4j+3] =
    // {(g, 2q..), (g+8, 2q..), (g, 2q+8..), (g+8, 2q+8..)}.
    template <int SET>
    __device__ __forceinline__ void expand(u32 (&af)[16]) {
#pragma unroll
        for (int b = 0; b < 2; ++b) {
            u32 o0[4], o1[4];
            wg_expand(w[SET][0][b], (s[SET][0] >> (8 * b)) & 0xffu, o0);
            wg_expand(w[SET][1][b], (s[SET][1] >> (8 * b)) & 0xffu, o1);
            af[8 * b + 0] = o0[0];
            af[8 * b + 1] = o1[0];
            af[8 * b + 2] = o0[1];
            af[8 * b + 3] = o1[1];
            af[8 * b + 4] = o0[2];
            af[8 * b + 5] = o1[2];
            af[8 * b + 6] = o0[3];
            af[8 * b + 7] = o1[3];
        }
    }
};

// Tile rows of thread tid in the B copies: n0 = 8 (warp) + (tid & 7) and n0 + 64.
__device__ __forceinline__ int wg_brow0() { return ((threadIdx.x >> 5) & 7) * 8 + (threadIdx.x & 7); }

// Stage kt of the B tile: thread tid copies 16-byte chunks kc = (tid >> 3) & 3 and kc + 4 of
// the stage's 64 k of tile rows n0 and n0 + 64 (b0, b1: their bf16 rows in logical order, or
// null for zeros) into core matrix (n >> 3, kc), row n & 7. One warp's copy covers 8 rows x 64
// contiguous bytes (whole 32-byte sectors), and each quarter warp writes 128 contiguous bytes
// of shared memory (all banks once).
__device__ __forceinline__ void wg_load_b(const u16* b0, const u16* b1, const u16* any, int kt,
                                          u32 sbuf) {
    int n0 = wg_brow0(), kc0 = (threadIdx.x >> 3) & 3;
#pragma unroll
    for (int u = 0; u < 4; ++u) {
        const u16* row = (u & 1) ? b1 : b0;
        int n = n0 + 64 * (u & 1), kc = kc0 + 4 * (u >> 1);
        const u16* src = row ? row + kt * WG_BK + kc * 8 : any;
        u32 dst = sbuf + (n >> 3) * 1024 + kc * 128 + (n & 7) * 16;
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src),
                     "r"(row ? 16u : 0u)
                     : "memory");
    }
}

__device__ __forceinline__ void wg_cp_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }

// One k stage: wait for its B tile (copies are issued two stages ahead, so one group may stay
// in flight), four wgmma from the `cur` fragments, the copies of stage kt + 2 (by the threads
// that make them, `copies`) into the buffer that wgmma(kt - 2) read (done everywhere: every
// thread waited for it before this barrier), then stage kt + 1's fragments into `nxt` and the
// loads of stage kt + 3 into the raw set NSET they came from. WAIT = 1 (two fragment sets,
// NWG = 2): `nxt` is free once wgmma(kt - 1) is done. WAIT = 0 (one set, NWG = 4: 128
// registers a thread; `nxt` is `cur`): once this warpgroup's wgmma(kt) is, while the other
// warpgroups' wgmma keep the tensor cores busy.
template <int NSET, int WAIT, class AL>
__device__ __forceinline__ void wg_step(AL& a, float (&d)[64], const u32 (&cur)[16],
                                        u32 (&nxt)[16], const u16* b0, const u16* b1,
                                        const u16* any, int kt, int nkt, u32 sbase, bool copies) {
    asm volatile("cp.async.wait_group 1;" ::: "memory");
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
    __syncthreads();
    wg_fence();
    u32 sb = sbase + (kt % WG_STAGES) * WG_STAGE_BYTES;
#pragma unroll
    for (int j = 0; j < 4; ++j)
        wg_mma<AL::F16>(d, cur[4 * j], cur[4 * j + 1], cur[4 * j + 2], cur[4 * j + 3],
                        wg_desc(sb + 256 * j));
    wg_commit();
    if (kt + 2 < nkt && copies)
        wg_load_b(b0, b1, any, kt + 2, sbase + ((kt + 2) % WG_STAGES) * WG_STAGE_BYTES);
    wg_cp_commit();
    wg_wait<WAIT>();
    if (kt + 1 < nkt) {
        a.template expand<NSET>(nxt);
        if (kt + 3 < nkt) a.template fetch<NSET>(kt + 3);
    }
}

// d (this warpgroup's 64 weight rows x the tile's 128 token rows) = A B^T over nkt stages.
// NWG warpgroups a block: 2 (two fragment sets) or 4 (one; see wg_step). AL: the A loader
// (WgA for MXFP4, bf16; WgQ8 in gemm_wgmma.cu for Q8_0, f16): fetch<SET>(kt) loads stage kt's
// raw words into register set SET, expand<SET>(af) turns them into the stage's four fragments.
template <int NWG, class AL>
__device__ __forceinline__ void wg_mainloop(AL& a, const u16* b0, const u16* b1,
                                            const u16* any, int nkt, u32 sbase,
                                            float (&d)[64]) {
#pragma unroll
    for (int i = 0; i < 64; ++i) d[i] = 0.f;
    bool copies = NWG == 2 || threadIdx.x < 256;
    if (copies) wg_load_b(b0, b1, any, 0, sbase);
    wg_cp_commit();
    if (copies && nkt > 1) wg_load_b(b0, b1, any, 1, sbase + WG_STAGE_BYTES);
    wg_cp_commit();
    a.template fetch<0>(0);
    if (nkt > 1) a.template fetch<1>(1);
    // Two fragment sets (NWG = 2) alternate; with one (NWG = 4) `other` is af0 itself.
    constexpr int WAIT = NWG == 2 ? 1 : 0;
    u32 af0[16], af1[16];
    u32 (&other)[16] = NWG == 2 ? af1 : af0;
    a.template expand<0>(af0);
    if (nkt > 2) a.template fetch<0>(2);
    int kt = 0;
    while (true) {
        wg_step<1, WAIT>(a, d, af0, other, b0, b1, any, kt, nkt, sbase, copies);
        if (++kt >= nkt) break;
        wg_step<0, WAIT>(a, d, other, af0, b0, b1, any, kt, nkt, sbase, copies);
        if (++kt >= nkt) break;
    }
    wg_wait<0>();
    // Keep every read of d after the wait.
#pragma unroll
    for (int i = 0; i < 64; ++i) asm volatile("" : "+f"(d[i])::"memory");
}

#endif  // __CUDA_ARCH_FEAT_SM90_ALL

// Gate and up of the tile's expert for 32 NWG ff columns f0..: warp w's 16 weight rows are
// gate then up of columns f0 + 8w + (0..7), so a thread's fragment rows g and g + 8 are the
// gate and up of one column, and its accumulators d[4j + c] and d[4j + 2 + c] the same token.
// h: bf16 [pairs, n_ff] in sorted order, columns in logical order (the down GEMM's B rows).
// grid (ceil(n_ff / (32 NWG)), max tiles), block 128 NWG, WG_SMEM bytes of dynamic shared
// memory; d_model and n_ff multiples of 64.
template <int NWG>
__device__ __forceinline__ void moe_wg_gate_up_body(
    const u16* xb, int d_model, const u8* wg, i64 nbg, const u8* wu, i64 nbu, const u8* bg,
    int bgt, const u8* bu, int but, const int* perm, const int* seg_end, const int* tiles, int k,
    int n_ff, u16* h) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    extern __shared__ __align__(128) u8 wg_smem[];
    int tile = blockIdx.y;
    if (tile >= tiles[0]) return;
    int e = tiles[1 + 2 * tile], s0 = tiles[2 + 2 * tile], s_end = seg_end[e];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
    int f = blockIdx.x * 32 * NWG + warp * 8 + g;
    bool ok = f < n_ff;
    i64 row = (i64)e * n_ff + f;
    WgA a;
    a.init(0, ok ? wg : nullptr, nbg, row, d_model / 32, q);
    a.init(1, ok ? wu : nullptr, nbu, row, d_model / 32, q);
    int sr = s0 + wg_brow0();
    const u16* b0 = sr < s_end ? xb + (i64)(perm[sr] / k) * d_model : nullptr;
    const u16* b1 = sr + 64 < s_end ? xb + (i64)(perm[sr + 64] / k) * d_model : nullptr;
    float d[64];
    wg_mainloop<NWG>(a, b0, b1, xb, d_model / WG_BK, (u32)__cvta_generic_to_shared(wg_smem), d);
    if (!ok) return;
    float gb = wload(bg, bgt, 0, row), ub = wload(bu, but, 0, row);
    i64 lc = wg_lcol(f);
#pragma unroll
    for (int j = 0; j < 16; ++j) {
#pragma unroll
        for (int c = 0; c < 2; ++c) {
            int s = s0 + 8 * j + 2 * q + c;
            if (s < s_end) {
                float v = swiglu_oai(d[4 * j + c] + gb, d[4 * j + 2 + c] + ub);
                h[(i64)s * n_ff + lc] = (u16)(pack_bf16(v, 0.f) & 0xffffu);
            }
        }
    }
#endif
}

// Down projection of the tile's expert for 64 NWG outputs d0.. (warp w: rows d0 + 16w +
// (0..15)): yp[pair, d] = w_pair (h W_down^T + b), one f32 row per pair. grid (ceil(d_model /
// (64 NWG)), max tiles), block 128 NWG, WG_SMEM bytes of dynamic shared memory; n_ff a multiple
// of 64.
template <int NWG>
__device__ __forceinline__ void moe_wg_down_body(const u16* h, int n_ff, const u8* wd, i64 nbd,
                                                 const u8* bd, int bdt, const int* perm,
                                                 const float* wts, const int* seg_end,
                                                 const int* tiles, int d_model, float* yp) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    extern __shared__ __align__(128) u8 wg_smem[];
    int tile = blockIdx.y;
    if (tile >= tiles[0]) return;
    int e = tiles[1 + 2 * tile], s0 = tiles[2 + 2 * tile], s_end = seg_end[e];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
    int dr = blockIdx.x * 64 * NWG + warp * 16 + g;
    bool ok0 = dr < d_model, ok1 = dr + 8 < d_model;
    i64 row = (i64)e * d_model + dr;
    WgA a;
    a.init(0, ok0 ? wd : nullptr, nbd, row, n_ff / 32, q);
    a.init(1, ok1 ? wd : nullptr, nbd, row + 8, n_ff / 32, q);
    int sr = s0 + wg_brow0();
    const u16* b0 = sr < s_end ? h + (i64)sr * n_ff : nullptr;
    const u16* b1 = sr + 64 < s_end ? h + (i64)(sr + 64) * n_ff : nullptr;
    float d[64];
    wg_mainloop<NWG>(a, b0, b1, h, n_ff / WG_BK, (u32)__cvta_generic_to_shared(wg_smem), d);
    float bias0 = ok0 ? wload(bd, bdt, 0, row) : 0.f;
    float bias1 = ok1 ? wload(bd, bdt, 0, row + 8) : 0.f;
#pragma unroll
    for (int j = 0; j < 16; ++j) {
#pragma unroll
        for (int c = 0; c < 2; ++c) {
            int s = s0 + 8 * j + 2 * q + c;
            if (s < s_end) {
                int p = perm[s];
                float wp = wts[p];
                if (ok0) yp[(i64)p * d_model + dr] = wp * (d[4 * j + c] + bias0);
                if (ok1) yp[(i64)p * d_model + dr + 8] = wp * (d[4 * j + 2 + c] + bias1);
            }
        }
    }
#endif
}

// The entry points: two warpgroups (M = 128 weight rows a block) and four (M = 256: each token
// tile copied to shared memory serves twice the weight rows, half the L2 traffic per product).
#define MOE_WG_ENTRIES(GU, DN, NWG)                                                              \
    extern "C" __global__ void __launch_bounds__(128 * NWG, 1)                                  \
        GU(const u16* xb, int d_model, const u8* wg, i64 nbg, const u8* wu, i64 nbu,            \
           const u8* bg, int bgt, const u8* bu, int but, const int* perm, const int* seg_end,   \
           const int* tiles, int k, int n_ff, u16* h) {                                         \
        GRID_DEP_ENTRY();                                                                       \
        moe_wg_gate_up_body<NWG>(xb, d_model, wg, nbg, wu, nbu, bg, bgt, bu, but, perm,         \
                                 seg_end, tiles, k, n_ff, h);                                   \
    }                                                                                           \
    extern "C" __global__ void __launch_bounds__(128 * NWG, 1)                                  \
        DN(const u16* h, int n_ff, const u8* wd, i64 nbd, const u8* bd, int bdt,                \
           const int* perm, const float* wts, const int* seg_end, const int* tiles,             \
           int d_model, float* yp) {                                                            \
        GRID_DEP_ENTRY();                                                                       \
        moe_wg_down_body<NWG>(h, n_ff, wd, nbd, bd, bdt, perm, wts, seg_end, tiles, d_model,    \
                              yp);                                                              \
    }
MOE_WG_ENTRIES(moe_wg_gate_up, moe_wg_down, 2)
MOE_WG_ENTRIES(moe_wg4_gate_up, moe_wg4_down, 4)
