// EXPERIMENTS for bench/micro/decode_micro.cu, not compiled into the backend: on an H100 every
// variant here measured slower than the backend's f32 decode kernels (bench/RESULTS.md, lead
// session 13). Kept so that the measurements can be rerun.
// Streaming decode MoE kernels (batch 1..few tokens, MXFP4 experts, f32 activations): variants
// of moe_gate_up_mxfp4_r1 / moe_down_mxfp4_r2 (same argument lists, other grids) that try to
// keep DRAM busy from the kernel's first microsecond to its last. A decode MoE kernel reads
// 18..35 MB in 1..3 waves of blocks; the f32 kernels reach only ~1 TB/s on it although the same
// code streams a 600 MB matrix at 2.9 TB/s, so the cost is in the ramp, the load/compute phases
// of whole waves, and the tail, not in the arithmetic.
//
// Two families, each for gate+up and for down:
//  * "pers" (persistent, plain loads): a fixed grid of CTAs (any gridDim.x, e.g. 2 x the SMs);
//    each warp walks its share of the work items with two register buffers, issuing the next
//    item's weight loads (16 bytes per lane: a lane owns whole MXFP4 blocks) before computing
//    the current one, so that every warp always has loads in flight. x (or h) sits in shared
//    memory, float4 chunks swizzled so that lanes reading consecutive blocks hit distinct banks.
//    HINT = 1 loads the weights with ld.global.nc.L1::no_allocate.L2::256B (no L1 pollution,
//    whole 256-byte L2 sectors fetched).
//  * "bulk" (sm_90 bulk copies): a fixed grid of CTAs (one per SM fits the shared memory); one
//    thread streams each work item (R consecutive rows of the expert matrices: contiguous
//    R x 1440 bytes of nibbles plus R x 90 bytes of scales) with cp.async.bulk into an S-stage
//    shared-memory ring completed through mbarriers; the 8 warps compute from shared memory
//    in exactly the f32 kernels' order (results bit-identical to moe_gate_up_mxfp4_r1 /
//    moe_down_mxfp4_r2). Without sm_90, or when the weight pointers are not 16-byte aligned or
//    a tensor's block count is not a multiple of 16 (the scale copies are widened to 16-byte
//    bounds), the same kernel reads the items straight from global memory (correct, unpipelined).
//
// Work is spread over the CTAs of one token (grid (G, t), blockIdx.y = token): items of the
// token's valid (token, slot) pairs only, so that under expert parallelism (ids[pair] = -1)
// the remaining work is still spread over all CTAs. k <= MS_MAX_K.

#define MS_MAX_K 8
// Shared-memory bytes of the scale copy of n blocks (16-byte cover of any start).
#define MS_SC_PAD(n) ((((n) + 15) & ~15) + 16)

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define MS_HAS_BULK 1
#else
#define MS_HAS_BULK 0
#endif

__device__ __forceinline__ u32 ms_smem_addr(const void* p) {
    u32 a;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
    return a;
}

__device__ __forceinline__ void ms_bar_init(u64* bar, u32 count) {
#if MS_HAS_BULK
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(ms_smem_addr(bar)), "r"(count)
                 : "memory");
#endif
}
// Makes the barrier initialisation visible to the async proxy (the bulk copies).
__device__ __forceinline__ void ms_bar_init_fence() {
#if MS_HAS_BULK
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
#endif
}
// The producer's arrival on `bar` for this phase, announcing `bytes` to come by copies.
__device__ __forceinline__ void ms_bar_expect(u64* bar, u32 bytes) {
#if MS_HAS_BULK
    asm volatile("{ .reg .b64 st; mbarrier.arrive.expect_tx.shared::cta.b64 st, [%0], %1; }" ::"r"(
                     ms_smem_addr(bar)),
                 "r"(bytes)
                 : "memory");
#endif
}
// `bytes` (a multiple of 16, both addresses 16-byte aligned) from global to shared memory,
// completing on `bar`.
__device__ __forceinline__ void ms_bulk_g2s(void* dst, const void* src, u32 bytes, u64* bar) {
#if MS_HAS_BULK
    asm volatile(
        "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
            ms_smem_addr(dst)),
        "l"(src), "r"(bytes), "r"(ms_smem_addr(bar))
        : "memory");
#endif
}
// Waits until the phase of `bar` with the given parity has completed (its bytes have landed).
// A wait that never ends (a copy that faulted silently, a byte count that does not match)
// traps after ~2^26 tries (seconds) instead of hanging the stream.
__device__ __forceinline__ void ms_bar_wait(u64* bar, u32 parity) {
#if MS_HAS_BULK
    u32 a = ms_smem_addr(bar), done;
    u32 tries = 0;
    do {
        asm volatile(
            "{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
            : "=r"(done)
            : "r"(a), "r"(parity)
            : "memory");
        if (++tries == (1u << 26)) __trap();
    } while (!done);
#endif
}

// ---- activations in shared memory ----
// Two swizzles of a row of n floats (n % 32 == 0) stored as float4 chunks, chunk c (0..7) of
// 32-block b at b * 8 + (c ^ sw(b)):
//  quad (lanes = 4 quarters of 8 consecutive blocks, as the f32 kernels): sw = (b & 1) << 2
//  wide (lane = one whole block, 32 consecutive blocks):                  sw = b & 7
// Both make a quarter-warp's 16-byte reads fall in 8 distinct bank groups.
__device__ __forceinline__ int ms_sw_quad(int b) { return (b & 1) << 2; }
__device__ __forceinline__ int ms_sw_wide(int b) { return b & 7; }

template <bool WIDE>
__device__ __forceinline__ void ms_stage_row(const float* src, int n, float* dst) {
    const float4* s4 = (const float4*)src;
    float4* d4 = (float4*)dst;
    for (int q = threadIdx.x; q < (n >> 2); q += blockDim.x) {
        int b = q >> 3, c = q & 7;
        d4[b * 8 + (c ^ (WIDE ? ms_sw_wide(b) : ms_sw_quad(b)))] = s4[q];
    }
}

// The token's valid pairs (ids >= 0) in slot order, by thread 0; the caller syncs.
__device__ __forceinline__ void ms_valid_pairs(const int* ids, int tok, int k, int* vpair,
                                               int* vexp, int* nvalid) {
    if (threadIdx.x == 0) {
        int n = 0;
        for (int j = 0; j < k && j < MS_MAX_K; ++j) {
            int e = ids[tok * k + j];
            if (e >= 0) {
                vpair[n] = tok * k + j;
                vexp[n] = e;
                ++n;
            }
        }
        *nvalid = n;
    }
}

// One MXFP4 row of nbk blocks (nibbles q, scales sc: shared or global) dotted with a quad-
// swizzled row in shared memory, lane word order of rows_dot_mxfp4 (bit-identical sums).
__device__ __forceinline__ float ms_row_quad(const u8* q, const u8* sc, int nbk, const float4* xs4) {
    int lane = threadIdx.x & 31;
    float acc = 0.f;
    int nw = nbk * 4;
#pragma unroll 4
    for (int i = lane; i < nw; i += 32) {
        int b = i >> 2, p = i & 3, sw = ms_sw_quad(b);
        u32 w = *(const u32*)(q + 4 * i);
        float4 a = xs4[b * 8 + (p ^ sw)];
        float4 c = xs4[b * 8 + ((4 + p) ^ sw)];
        acc += mxfp4_part_dot4(w, a, c) * (0.5f * e8m0_to_f32(sc[b]));
    }
    return acc;
}
// Gate and up rows together (one pass over x).
__device__ __forceinline__ void ms_row2_quad(const u8* qg, const u8* sg, const u8* qu,
                                             const u8* su, int nbk, const float4* xs4, float& ag,
                                             float& au) {
    int lane = threadIdx.x & 31;
    int nw = nbk * 4;
#pragma unroll 4
    for (int i = lane; i < nw; i += 32) {
        int b = i >> 2, p = i & 3, sw = ms_sw_quad(b);
        u32 wg = *(const u32*)(qg + 4 * i);
        u32 wu = *(const u32*)(qu + 4 * i);
        float4 a = xs4[b * 8 + (p ^ sw)];
        float4 c = xs4[b * 8 + ((4 + p) ^ sw)];
        ag += mxfp4_part_dot4(wg, a, c) * (0.5f * e8m0_to_f32(sg[b]));
        au += mxfp4_part_dot4(wu, a, c) * (0.5f * e8m0_to_f32(su[b]));
    }
}

// ---- int8-plane activations (the "_q3" entries) ----
// A row of n floats (n % 32 == 0) as 3 int8 planes per 32-block, x ~= d (p0 + p1 / 254 + p2 /
// 254^2) with d = max|x| / 127 of the block (error ~1e-7 of the block maximum: f32-grade
// products, NMSE ~1e-14), so that a weight block costs a byte-table lookup and 24 dp4a instead
// of 32 decodes and FMAs. Layout (shared memory, MS_Q3_BYTES(n) per row): plane p at p * n,
// half h (elements 16h..16h+15) of block b at + h * n / 2 + 16 b (lanes reading consecutive
// blocks read consecutive 16 bytes), then the n / 32 block scales d as floats.
#define MS_QP 3
#define MS_QR 254.0f
#define MS_Q3_BYTES(n) (((n) * MS_QP + ((n) >> 5) * 4 + 15) & ~15)

__device__ __forceinline__ void ms_quant_rows(const float* x, i64 xstride, int rows, int n, u8* dst) {
    int nbk = n >> 5;
    for (int t = threadIdx.x; t < rows * nbk; t += blockDim.x) {
        int r = t / nbk, b = t - r * nbk;
        const float4* x4 = (const float4*)(x + r * xstride + (i64)b * 32);
        i8* xs = (i8*)(dst + (size_t)r * MS_Q3_BYTES(n));
        float* d = (float*)(xs + MS_QP * n);
        float v[32];
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            float4 f = x4[i];
            v[4 * i] = f.x;
            v[4 * i + 1] = f.y;
            v[4 * i + 2] = f.z;
            v[4 * i + 3] = f.w;
        }
        float amax = 0.f;
#pragma unroll
        for (int i = 0; i < 32; ++i) amax = fmaxf(amax, fabsf(v[i]));
        float inv = amax > 0.f ? 127.f / amax : 0.f;
        d[b] = amax / 127.f;
        u32 wd[MS_QP][8];
#pragma unroll
        for (int i = 0; i < 8; ++i) {
#pragma unroll
            for (int p = 0; p < MS_QP; ++p) wd[p][i] = 0u;
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                float s = fminf(fmaxf(v[4 * i + j] * inv, -127.f), 127.f);
#pragma unroll
                for (int p = 0; p < MS_QP; ++p) {
                    float a = rintf(s);
                    wd[p][i] |= ((u32)(int)a & 255u) << (8 * j);
                    s = (s - a) * MS_QR;
                }
            }
        }
#pragma unroll
        for (int p = 0; p < MS_QP; ++p) {
            i8* base = xs + p * n + b * 16;
            *(int4*)base = make_int4(wd[p][0], wd[p][1], wd[p][2], wd[p][3]);
            *(int4*)(base + n / 2) = make_int4(wd[p][4], wd[p][5], wd[p][6], wd[p][7]);
        }
    }
}

// One MXFP4 block (16 bytes q) times block b's planes (xa: elements 0..15, xc: 16..31), in
// units of the doubled table and of the block's x scale.
__device__ __forceinline__ float ms_q3_block(int4 q, const int4 (&xa)[MS_QP], const int4 (&xc)[MS_QP]) {
    int s[MS_QP];
#pragma unroll
    for (int p = 0; p < MS_QP; ++p) s[p] = 0;
    u32 qw[4] = {(u32)q.x, (u32)q.y, (u32)q.z, (u32)q.w};
#pragma unroll
    for (int w = 0; w < 4; ++w) {
        int2 v = mxfp4_lut8(qw[w]);
#pragma unroll
        for (int p = 0; p < MS_QP; ++p) {
            int a = w == 0 ? xa[p].x : w == 1 ? xa[p].y : w == 2 ? xa[p].z : xa[p].w;
            int c = w == 0 ? xc[p].x : w == 1 ? xc[p].y : w == 2 ? xc[p].z : xc[p].w;
            s[p] = __dp4a(v.x, a, s[p]);
            s[p] = __dp4a(v.y, c, s[p]);
        }
    }
    float r = (float)s[MS_QP - 1];
#pragma unroll
    for (int p = MS_QP - 2; p >= 0; --p) r = (float)s[p] + r * (1.0f / MS_QR);
    return r;
}
__device__ __forceinline__ void ms_q3_load_x(const u8* xq, int n, int b, int4 (&xa)[MS_QP], int4 (&xc)[MS_QP]) {
#pragma unroll
    for (int p = 0; p < MS_QP; ++p) {
        xa[p] = *(const int4*)(xq + p * n + b * 16);
        xc[p] = *(const int4*)(xq + p * n + n / 2 + b * 16);
    }
}
// Row dot products (lane = whole block b = lane + 32 i) against a quantized row xq of n = 32 nbk.
__device__ __forceinline__ float ms_row_q3(const u8* q, const u8* sc, int nbk, const u8* xq) {
    int lane = threadIdx.x & 31, n = nbk * 32;
    const float* d = (const float*)(xq + MS_QP * n);
    float acc = 0.f;
    for (int b = lane; b < nbk; b += 32) {
        int4 xa[MS_QP], xc[MS_QP];
        ms_q3_load_x(xq, n, b, xa, xc);
        acc += ms_q3_block(*(const int4*)(q + 16 * b), xa, xc) * (e8m0_to_f32(sc[b]) * (0.5f * d[b]));
    }
    return acc;
}
__device__ __forceinline__ void ms_row2_q3(const u8* qg, const u8* sg, const u8* qu, const u8* su,
                                           int nbk, const u8* xq, float& ag, float& au) {
    int lane = threadIdx.x & 31, n = nbk * 32;
    const float* d = (const float*)(xq + MS_QP * n);
    for (int b = lane; b < nbk; b += 32) {
        int4 xa[MS_QP], xc[MS_QP];
        ms_q3_load_x(xq, n, b, xa, xc);
        float dx = 0.5f * d[b];
        ag += ms_q3_block(*(const int4*)(qg + 16 * b), xa, xc) * (e8m0_to_f32(sg[b]) * dx);
        au += ms_q3_block(*(const int4*)(qu + 16 * b), xa, xc) * (e8m0_to_f32(su[b]) * dx);
    }
}

// ======================= bulk-copy family =======================
// Per stage of an R-row item and NM matrices (slots): NM x [R * nbk * 16 nibbles | MS_SC_PAD(R
// * nbk) scales]. Host-side dynamic shared memory:
//   gate_up: d_model * 4 + S * 2 * (R * nbk * 16 + MS_SC_PAD(R * nbk)),  nbk = d_model / 32
//   down:    k * n_ff * 4 + S * k * (R * nbk * 16 + MS_SC_PAD(R * nbk)), nbk = n_ff / 32


// Rows row0 .. row0 + rows - 1 of one MXFP4 tensor (block count nb): the nibble bytes, and the
// scale bytes widened to 16-byte bounds (inside the tensor when its base is 16-byte aligned
// and nb % 16 == 0), with the first scale's offset inside the widened range.
struct MsPart {
    const u8* q;
    const u8* s;
    u32 qb, sb, soff;
};
__device__ __forceinline__ MsPart ms_part(const u8* w, i64 nb, i64 row0, int rows, int nbk) {
    MsPart r;
    r.q = w + row0 * nbk * 16;
    r.qb = (u32)rows * nbk * 16;
    i64 so = nb * 16 + row0 * nbk;
    i64 s0 = so & ~(i64)15, s1 = (so + (i64)rows * nbk + 15) & ~(i64)15;
    r.s = w + s0;
    r.sb = (u32)(s1 - s0);
    r.soff = (u32)(so - s0);
    return r;
}
__device__ __forceinline__ bool ms_bulk_ok(const u8* w, i64 nb) {
    return MS_HAS_BULK && (((unsigned long long)w) & 15ull) == 0 && (nb & 15) == 0;
}

// Gate+up, bulk copies. Item = R consecutive rows of one valid pair's expert, gate and up.
// grid (G, t) with G = number of co-resident CTAs (e.g. the SM count), block 256 (any multiple
// of 32), dynamic shared memory d_model * 4 + S * 2 * (R * nbk * 16 + MS_SC_PAD(R * nbk)).
template <int R, int S, int Q>
__device__ __forceinline__ void moe_gu_bulk(const float* x, int d_model, const u8* wg, i64 nbg,
                                            const u8* wu, i64 nbu, const u8* bg, int bgt,
                                            const u8* bu, int but, const int* ids, int k, int n_ff,
                                            float* h) {
    extern __shared__ int4 ms_dyn[];
    __shared__ __align__(8) u64 full[S];
    __shared__ int vpair[MS_MAX_K], vexp[MS_MAX_K], nvalid;
    GRID_DEP_ENTRY();
    int tok = blockIdx.y, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int nwarps = blockDim.x >> 5;
    int nbk = d_model >> 5;
    float* xs = (float*)ms_dyn;
    u8* ring = (u8*)ms_dyn + (Q ? MS_Q3_BYTES(d_model) : d_model * 4);
    const u32 qcap = (u32)R * nbk * 16, prt = qcap + MS_SC_PAD(R * nbk), stage = 2 * prt;
    const bool bulk = ms_bulk_ok(wg, nbg) && ms_bulk_ok(wu, nbu);
    ms_valid_pairs(ids, tok, k, vpair, vexp, &nvalid);
    if (threadIdx.x == 0 && bulk) {
        for (int s = 0; s < S; ++s) ms_bar_init(&full[s], 1);
        ms_bar_init_fence();
    }
    __syncthreads();
    const int chunks = (n_ff + R - 1) / R;
    const int nitems = nvalid * chunks, G = gridDim.x, c0 = blockIdx.x;
    const int nloc = c0 < nitems ? (nitems - c0 + G - 1) / G : 0;
    // Issues local item li into stage li % S (thread 0 only).
    auto issue = [&](int li) {
        int it = c0 + li * G, pi = it / chunks, f0 = (it - pi * chunks) * R;
        int rows = min(R, n_ff - f0);
        i64 row0 = (i64)vexp[pi] * n_ff + f0;
        MsPart g = ms_part(wg, nbg, row0, rows, nbk), u = ms_part(wu, nbu, row0, rows, nbk);
        int s = li % S;
        u8* st = ring + (size_t)s * stage;
        ms_bar_expect(&full[s], g.qb + g.sb + u.qb + u.sb);
        ms_bulk_g2s(st, g.q, g.qb, &full[s]);
        ms_bulk_g2s(st + prt, u.q, u.qb, &full[s]);
        ms_bulk_g2s(st + qcap, g.s, g.sb, &full[s]);
        ms_bulk_g2s(st + prt + qcap, u.s, u.sb, &full[s]);
    };
    if (bulk && threadIdx.x == 0)
        for (int li = 0; li < S && li < nloc; ++li) issue(li);
    if (Q)
        ms_quant_rows(x + (i64)tok * d_model, 0, 1, d_model, (u8*)ms_dyn);
    else
        ms_stage_row<false>(x + (i64)tok * d_model, d_model, xs);
    __syncthreads();
    const float4* xs4 = (const float4*)xs;
    for (int li = 0; li < nloc; ++li) {
        int it = c0 + li * G, pi = it / chunks, f0 = (it - pi * chunks) * R;
        int rows = min(R, n_ff - f0);
        i64 row0 = (i64)vexp[pi] * n_ff + f0;
        MsPart g = ms_part(wg, nbg, row0, rows, nbk), u = ms_part(wu, nbu, row0, rows, nbk);
        const u8 *qg, *sg, *qu, *su;
        if (bulk) {
            int s = li % S;
            ms_bar_wait(&full[s], (u32)(li / S) & 1u);
            const u8* st = ring + (size_t)s * stage;
            qg = st;
            sg = st + qcap + g.soff;
            qu = st + prt;
            su = st + prt + qcap + u.soff;
        } else {
            qg = g.q;
            sg = g.s + g.soff;
            qu = u.q;
            su = u.s + u.soff;
        }
        for (int r = warp; r < rows; r += nwarps) {
            float ag = 0.f, au = 0.f;
            if (Q)
                ms_row2_q3(qg + r * nbk * 16, sg + r * nbk, qu + r * nbk * 16, su + r * nbk, nbk,
                           (const u8*)ms_dyn, ag, au);
            else
                ms_row2_quad(qg + r * nbk * 16, sg + r * nbk, qu + r * nbk * 16, su + r * nbk, nbk,
                             xs4, ag, au);
            ag = warp_sum(ag);
            au = warp_sum(au);
            if (lane == 0) {
                i64 wr = row0 + r;
                h[(i64)vpair[pi] * n_ff + f0 + r] =
                    swiglu_oai(ag + wload(bg, bgt, 0, wr), au + wload(bu, but, 0, wr));
            }
        }
        if (bulk) {
            __syncthreads();  // every warp is done with stage li % S: refill it
            if (threadIdx.x == 0 && li + S < nloc) issue(li + S);
        }
    }
}

// Down, bulk copies. Item = R consecutive output rows, all k slots (slot j's expert rows land
// in part j of the stage); per (row, slot) one warp, the slots' weighted sums combined in
// slot order in shared memory as moe_down_mxfp4_r2 does (bit-identical).
// grid (G, t), block 256, dynamic shared memory k * n_ff * 4 + S * k * (R * nbk * 16 +
// MS_SC_PAD(R * nbk)), nbk = n_ff / 32.
template <int R, int S, int Q>
__device__ __forceinline__ void moe_down_bulk(const float* hin, int n_ff, const u8* wd, i64 nbd,
                                              const u8* bd, int bdt, const int* ids,
                                              const float* wts, int k, int d_model, float* y) {
    extern __shared__ int4 ms_dyn[];
    __shared__ __align__(8) u64 full[S];
    __shared__ int sid[MS_MAX_K];
    __shared__ float swt[MS_MAX_K];
    __shared__ float part[2][R * MS_MAX_K];
    GRID_DEP_ENTRY();
    int tok = blockIdx.y, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int nwarps = blockDim.x >> 5;
    int kk = min(k, MS_MAX_K);
    int nbk = n_ff >> 5;
    // Slot j's row of h at hrow(j): f32 (quad swizzle) or, Q = 1, int8 planes.
    const u32 xrow = Q ? MS_Q3_BYTES(n_ff) : n_ff * 4;
    u8* hs = (u8*)ms_dyn;
    u8* ring = hs + (size_t)k * xrow;
    const u32 qcap = (u32)R * nbk * 16, prt = qcap + MS_SC_PAD(R * nbk), stage = (u32)k * prt;
    const bool bulk = ms_bulk_ok(wd, nbd);
    if (threadIdx.x < kk) {
        sid[threadIdx.x] = ids[tok * k + threadIdx.x];
        swt[threadIdx.x] = wts[tok * k + threadIdx.x];
    }
    if (threadIdx.x == 0 && bulk) {
        for (int s = 0; s < S; ++s) ms_bar_init(&full[s], 1);
        ms_bar_init_fence();
    }
    __syncthreads();
    const int nitems = (d_model + R - 1) / R, G = gridDim.x, c0 = blockIdx.x;
    const int nloc = c0 < nitems ? (nitems - c0 + G - 1) / G : 0;
    auto issue = [&](int li) {
        int d0 = (c0 + li * G) * R, rows = min(R, d_model - d0);
        int s = li % S;
        u8* st = ring + (size_t)s * stage;
        u32 bytes = 0;
        for (int j = 0; j < kk; ++j)
            if (sid[j] >= 0) {
                MsPart p = ms_part(wd, nbd, (i64)sid[j] * d_model + d0, rows, nbk);
                bytes += p.qb + p.sb;
            }
        ms_bar_expect(&full[s], bytes);  // 0 bytes (no valid slot): the phase completes now
        for (int j = 0; j < kk; ++j)
            if (sid[j] >= 0) {
                MsPart p = ms_part(wd, nbd, (i64)sid[j] * d_model + d0, rows, nbk);
                ms_bulk_g2s(st + j * prt, p.q, p.qb, &full[s]);
                ms_bulk_g2s(st + j * prt + qcap, p.s, p.sb, &full[s]);
            }
    };
    if (bulk && threadIdx.x == 0)
        for (int li = 0; li < S && li < nloc; ++li) issue(li);
    if (Q)  // all k rows (an invalid slot's row is quantized but never used)
        ms_quant_rows(hin + (i64)tok * k * n_ff, n_ff, kk, n_ff, hs);
    else
        for (int j = 0; j < kk; ++j)
            if (sid[j] >= 0)
                ms_stage_row<false>(hin + (i64)(tok * k + j) * n_ff, n_ff, (float*)(hs + (size_t)j * xrow));
    __syncthreads();
    for (int li = 0; li < nloc; ++li) {
        int d0 = (c0 + li * G) * R, rows = min(R, d_model - d0);
        const u8* st = nullptr;
        if (bulk) {
            int s = li % S;
            ms_bar_wait(&full[s], (u32)(li / S) & 1u);
            st = ring + (size_t)s * stage;
        }
        float* pp = part[li & 1];
        for (int c = warp; c < R * kk; c += nwarps) {
            int r = c / kk, j = c - r * kk;
            int e = sid[j];
            float v = 0.f;
            if (r < rows && e >= 0) {
                i64 row0 = (i64)e * d_model + d0;
                MsPart p = ms_part(wd, nbd, row0, rows, nbk);
                const u8 *q, *sc;
                if (bulk) {
                    q = st + j * prt + r * nbk * 16;
                    sc = st + j * prt + qcap + p.soff + r * nbk;
                } else {
                    q = p.q + r * nbk * 16;
                    sc = p.s + p.soff + r * nbk;
                }
                const u8* hj = hs + (size_t)j * xrow;
                float a = warp_sum(Q ? ms_row_q3(q, sc, nbk, hj) : ms_row_quad(q, sc, nbk, (const float4*)hj));
                v = swt[j] * (a + wload(bd, bdt, 0, row0 + r));
            }
            if (lane == 0) pp[c] = v;
        }
        // Stage li % S is free and pp complete; pp is next written two items later, after
        // the next item's barrier, so one barrier per item suffices.
        __syncthreads();
        if (bulk && threadIdx.x == 0 && li + S < nloc) issue(li + S);
        if (threadIdx.x < rows) {
            int r = threadIdx.x;
            float s = 0.f;
            for (int j = 0; j < kk; ++j) s += pp[r * kk + j];
            y[(i64)tok * d_model + d0 + r] = s;
        }
    }
}

#define MS_GU_BULK(NAME, R, S, Q)                                                                    \
    extern "C" __global__ void __launch_bounds__(512) NAME(                                     \
        const float* x, int d_model, const u8* wg, i64 nbg, const u8* wu, i64 nbu, const u8* bg, \
        int bgt, const u8* bu, int but, const int* ids, int k, int n_ff, float* h) {            \
        moe_gu_bulk<R, S, Q>(x, d_model, wg, nbg, wu, nbu, bg, bgt, bu, but, ids, k, n_ff, h);     \
    }
#define MS_DOWN_BULK(NAME, R, S, Q)                                                                  \
    extern "C" __global__ void __launch_bounds__(512) NAME(                                     \
        const float* h, int n_ff, const u8* wd, i64 nbd, const u8* bd, int bdt, const int* ids, \
        const float* wts, int k, int d_model, float* y) {                                       \
        moe_down_bulk<R, S, Q>(h, n_ff, wd, nbd, bd, bdt, ids, wts, k, d_model, y);                \
    }
MS_GU_BULK(moe_gate_up_bulk_r8_s4, 8, 4, 0)
MS_GU_BULK(moe_gate_up_bulk_r8_s6, 8, 6, 0)
MS_GU_BULK(moe_gate_up_bulk_r8_s8, 8, 8, 0)
MS_GU_BULK(moe_gate_up_bulk_r16_s4, 16, 4, 0)
MS_GU_BULK(moe_gate_up_bulk_q3_r8_s6, 8, 6, 1)
MS_GU_BULK(moe_gate_up_bulk_q3_r16_s4, 16, 4, 1)
MS_DOWN_BULK(moe_down_bulk_r2_s6, 2, 6, 0)
MS_DOWN_BULK(moe_down_bulk_r2_s8, 2, 8, 0)
MS_DOWN_BULK(moe_down_bulk_r4_s4, 4, 4, 0)
MS_DOWN_BULK(moe_down_bulk_r8_s3, 8, 3, 0)
MS_DOWN_BULK(moe_down_bulk_q3_r2_s8, 2, 8, 1)
MS_DOWN_BULK(moe_down_bulk_q3_r4_s4, 4, 4, 1)

// ======================= persistent plain-load family =======================
// A lane owns whole blocks: block b = lane + 32 u of a row, u < MS_NU (rows of up to 96 blocks
// are pipelined; blocks beyond are read unpipelined after them).
#define MS_NU 3

// 16 bytes of weights; HINT = 1: no L1 allocation, 256-byte L2 fetches.
template <int HINT>
__device__ __forceinline__ int4 ms_ld16(const u8* p) {
    if (HINT) {
        int4 v;
        asm("ld.global.nc.L1::no_allocate.L2::256B.v4.s32 {%0, %1, %2, %3}, [%4];"
            : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
            : "l"(p));
        return v;
    }
    return __ldg((const int4*)p);
}

// One whole MXFP4 block (16 bytes q, scale code e) dotted with block b of a wide-swizzled row.
__device__ __forceinline__ float ms_block_wide(int4 q, u32 e, const float4* xs4, int b) {
    const float4* xb = xs4 + b * 8;
    int sw = ms_sw_wide(b);
    float s = mxfp4_part_dot4((u32)q.x, xb[0 ^ sw], xb[4 ^ sw]);
    s += mxfp4_part_dot4((u32)q.y, xb[1 ^ sw], xb[5 ^ sw]);
    s += mxfp4_part_dot4((u32)q.z, xb[2 ^ sw], xb[6 ^ sw]);
    s += mxfp4_part_dot4((u32)q.w, xb[3 ^ sw], xb[7 ^ sw]);
    return s * (0.5f * e8m0_to_f32(e));
}

// NR rows' worth of a lane's blocks (registers).
template <int NR>
struct MsRows {
    int4 q[NR][MS_NU];
    u32 e[NR][MS_NU];
};

// Loads row `row[r]` of tensor r (w[r], block count nb[r]) for r < NR; ok[r] = false: nothing.
template <int NR, int HINT>
__device__ __forceinline__ void ms_rows_load(MsRows<NR>& B, const u8* const (&w)[NR],
                                             const i64 (&nb)[NR], const i64 (&row)[NR],
                                             const bool (&ok)[NR], int nbk) {
    int lane = threadIdx.x & 31;
#pragma unroll
    for (int r = 0; r < NR; ++r)
#pragma unroll
        for (int u = 0; u < MS_NU; ++u) {
            int b = lane + 32 * u;
            if (ok[r] && b < nbk) {
                i64 bi = row[r] * nbk + b;
                B.q[r][u] = ms_ld16<HINT>(w[r] + bi * 16);
                B.e[r][u] = __ldg(w[r] + nb[r] * 16 + bi);
            }
        }
}

// acc[r] += the lane's share of row r dotted with xs4[r] (wide-swizzled rows in shared memory),
// including the unpipelined blocks beyond 32 * MS_NU.
template <int NR, int HINT>
__device__ __forceinline__ void ms_rows_dot(const MsRows<NR>& B, const u8* const (&w)[NR],
                                            const i64 (&nb)[NR], const i64 (&row)[NR],
                                            const bool (&ok)[NR], const float4* const (&xs4)[NR],
                                            int nbk, float (&acc)[NR]) {
    int lane = threadIdx.x & 31;
#pragma unroll
    for (int u = 0; u < MS_NU; ++u) {
        int b = lane + 32 * u;
        if (b < nbk) {
#pragma unroll
            for (int r = 0; r < NR; ++r)
                if (ok[r]) acc[r] += ms_block_wide(B.q[r][u], B.e[r][u], xs4[r], b);
        }
    }
    for (int b = lane + 32 * MS_NU; b < nbk; b += 32) {
#pragma unroll
        for (int r = 0; r < NR; ++r)
            if (ok[r]) {
                i64 bi = row[r] * nbk + b;
                acc[r] += ms_block_wide(ms_ld16<HINT>(w[r] + bi * 16), __ldg(w[r] + nb[r] * 16 + bi),
                                        xs4[r], b);
            }
    }
}

// Gate+up, persistent warps: item = (valid pair, row), items spread round-robin over all warps
// of the grid (consecutive warps on consecutive rows); each warp loads its next item (gate and
// up row, 16 bytes per lane per block) before computing the current one.
// grid (G, t) (e.g. G = 2 x the SM count), block 256, dynamic shared memory d_model * 4.
template <int HINT>
__device__ __forceinline__ void moe_gu_pers(const float* x, int d_model, const u8* wg, i64 nbg,
                                            const u8* wu, i64 nbu, const u8* bg, int bgt,
                                            const u8* bu, int but, const int* ids, int k, int n_ff,
                                            float* h) {
    extern __shared__ int4 ms_dyn[];
    __shared__ int vpair[MS_MAX_K], vexp[MS_MAX_K], nvalid;
    GRID_DEP_ENTRY();
    int tok = blockIdx.y, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int nwarps = blockDim.x >> 5;
    int nbk = d_model >> 5;
    float* xs = (float*)ms_dyn;
    ms_valid_pairs(ids, tok, k, vpair, vexp, &nvalid);
    ms_stage_row<true>(x + (i64)tok * d_model, d_model, xs);
    __syncthreads();
    const int nitems = nvalid * n_ff, W = gridDim.x * nwarps;
    const u8* const w[2] = {wg, wu};
    const i64 nb[2] = {nbg, nbu};
    const float4* const xs4[2] = {(const float4*)xs, (const float4*)xs};
    MsRows<2> A, B;
    int it = blockIdx.x * nwarps + warp;
    // Row of item i (both matrices), ok = i in range.
    auto at = [&](int i, i64 (&row)[2], bool (&ok)[2]) {
        bool v = i < nitems;
        int pi = v ? i / n_ff : 0;
        i64 rw = (i64)vexp[pi] * n_ff + (v ? i - pi * n_ff : 0);
        row[0] = row[1] = rw;
        ok[0] = ok[1] = v;
    };
    auto finish = [&](const MsRows<2>& C, int i) {
        i64 row[2];
        bool ok[2];
        at(i, row, ok);
        float acc[2] = {0.f, 0.f};
        ms_rows_dot<2, HINT>(C, w, nb, row, ok, xs4, nbk, acc);
        float g = warp_sum(acc[0]), u = warp_sum(acc[1]);
        if (lane == 0) {
            int pi = i / n_ff, f = i - pi * n_ff;
            h[(i64)vpair[pi] * n_ff + f] =
                swiglu_oai(g + wload(bg, bgt, 0, row[0]), u + wload(bu, but, 0, row[0]));
        }
    };
    {
        i64 row[2];
        bool ok[2];
        at(it, row, ok);
        ms_rows_load<2, HINT>(A, w, nb, row, ok, nbk);
    }
    while (it < nitems) {
        int nx = it + W;
        {
            i64 row[2];
            bool ok[2];
            at(nx, row, ok);
            ms_rows_load<2, HINT>(B, w, nb, row, ok, nbk);
        }
        finish(A, it);
        it = nx;
        if (it >= nitems) break;
        nx = it + W;
        {
            i64 row[2];
            bool ok[2];
            at(nx, row, ok);
            ms_rows_load<2, HINT>(A, w, nb, row, ok, nbk);
        }
        finish(B, it);
        it = nx;
    }
}

// Down, persistent warps: item = output row d (all k slots), spread round-robin over the
// grid's warps; a warp walks its items' (d, slot group) steps, SUB slots' rows per step, loading
// the next step before computing the current one; the slots' weighted sums are added in slot
// order as moe_down_mxfp4_r2 does. grid (G, t), block 256, dynamic shared memory k * n_ff * 4.
template <int SUB, int HINT>
__device__ __forceinline__ void moe_down_pers(const float* hin, int n_ff, const u8* wd, i64 nbd,
                                              const u8* bd, int bdt, const int* ids,
                                              const float* wts, int k, int d_model, float* y) {
    extern __shared__ int4 ms_dyn[];
    __shared__ int sid[MS_MAX_K];
    __shared__ float swt[MS_MAX_K];
    GRID_DEP_ENTRY();
    int tok = blockIdx.y, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int nwarps = blockDim.x >> 5;
    int kk = min(k, MS_MAX_K);
    int nbk = n_ff >> 5;
    float* hs = (float*)ms_dyn;
    if (threadIdx.x < kk) {
        sid[threadIdx.x] = ids[tok * k + threadIdx.x];
        swt[threadIdx.x] = wts[tok * k + threadIdx.x];
    }
    __syncthreads();
    for (int j = 0; j < kk; ++j)
        if (sid[j] >= 0) ms_stage_row<true>(hin + (i64)(tok * k + j) * n_ff, n_ff, hs + (size_t)j * n_ff);
    __syncthreads();
    const int W = gridDim.x * nwarps, NJ = (kk + SUB - 1) / SUB;
    const u8* w[SUB];
    i64 nb[SUB];
#pragma unroll
    for (int r = 0; r < SUB; ++r) {
        w[r] = wd;
        nb[r] = nbd;
    }
    // Rows of step (d, jg): slot j = jg * SUB + r.
    auto at = [&](int d, int jg, i64 (&row)[SUB], bool (&ok)[SUB], const float4* (&xp)[SUB]) {
#pragma unroll
        for (int r = 0; r < SUB; ++r) {
            int j = jg * SUB + r;
            int e = (d < d_model && j < kk) ? sid[j] : -1;
            ok[r] = e >= 0;
            row[r] = ok[r] ? (i64)e * d_model + d : 0;
            xp[r] = (const float4*)(hs + (size_t)(j < kk ? j : 0) * n_ff);
        }
    };
    auto load = [&](MsRows<SUB>& C, int d, int jg) {
        i64 row[SUB];
        bool ok[SUB];
        const float4* xp[SUB];
        at(d, jg, row, ok, xp);
        ms_rows_load<SUB, HINT>(C, w, nb, row, ok, nbk);
    };
    auto finish = [&](const MsRows<SUB>& C, int d, int jg, float& tot) {
        i64 row[SUB];
        bool ok[SUB];
        const float4* xp[SUB];
        at(d, jg, row, ok, xp);
        float acc[SUB];
#pragma unroll
        for (int r = 0; r < SUB; ++r) acc[r] = 0.f;
        ms_rows_dot<SUB, HINT>(C, w, nb, row, ok, xp, nbk, acc);
#pragma unroll
        for (int r = 0; r < SUB; ++r) {
            float a = warp_sum(acc[r]);
            if (ok[r]) tot += swt[jg * SUB + r] * (a + wload(bd, bdt, 0, row[r]));
        }
    };
    MsRows<SUB> A, B;
    int d = blockIdx.x * nwarps + warp, jg = 0;
    float tot = 0.f;
    load(A, d, 0);
    while (d < d_model) {
        int nd = d, nj = jg + 1;
        if (nj == NJ) {
            nj = 0;
            nd = d + W;
        }
        load(B, nd, nj);
        finish(A, d, jg, tot);
        if (jg == NJ - 1) {
            if (lane == 0) y[(i64)tok * d_model + d] = tot;
            tot = 0.f;
        }
        d = nd;
        jg = nj;
        if (d >= d_model) break;
        nd = d;
        nj = jg + 1;
        if (nj == NJ) {
            nj = 0;
            nd = d + W;
        }
        load(A, nd, nj);
        finish(B, d, jg, tot);
        if (jg == NJ - 1) {
            if (lane == 0) y[(i64)tok * d_model + d] = tot;
            tot = 0.f;
        }
        d = nd;
        jg = nj;
    }
}

#define MS_GU_PERS(NAME, HINT)                                                                    \
    extern "C" __global__ void __launch_bounds__(256, 2) NAME(                                  \
        const float* x, int d_model, const u8* wg, i64 nbg, const u8* wu, i64 nbu, const u8* bg, \
        int bgt, const u8* bu, int but, const int* ids, int k, int n_ff, float* h) {            \
        moe_gu_pers<HINT>(x, d_model, wg, nbg, wu, nbu, bg, bgt, bu, but, ids, k, n_ff, h);     \
    }
#define MS_DOWN_PERS(NAME, SUB, HINT)                                                             \
    extern "C" __global__ void __launch_bounds__(256, 2) NAME(                                  \
        const float* h, int n_ff, const u8* wd, i64 nbd, const u8* bd, int bdt, const int* ids, \
        const float* wts, int k, int d_model, float* y) {                                       \
        moe_down_pers<SUB, HINT>(h, n_ff, wd, nbd, bd, bdt, ids, wts, k, d_model, y);           \
    }
MS_GU_PERS(moe_gate_up_pers, 0)
MS_GU_PERS(moe_gate_up_pers_l2, 1)
MS_DOWN_PERS(moe_down_pers_s1, 1, 0)
MS_DOWN_PERS(moe_down_pers_s2, 2, 0)
MS_DOWN_PERS(moe_down_pers_s2_l2, 2, 1)
