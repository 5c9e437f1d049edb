// The MoE expert matmuls on data-center Blackwell (sm_100a / sm_103a) through tcgen05: W4A8,
//   tcgen05.mma.cta_group::1.kind::mxf8f6f4.block_scale.scale_vec::1X, A = e2m1, B = e4m3, ue8m0 scales
// A = 128 rows of MXFP4 weights (output features), B = up to 32 token slots of MXFP8
// activations, D (128 x 32 f32) in tensor memory. One CTA (4 warps) per (row tile, expert): it
// loops over the expert's pairs 32 at a time and over K in chunks of up to 4 scale blocks (128
// elements): all threads stage the chunk in shared memory, one thread copies the scales to
// tensor memory (tcgen05.cp) and issues one MMA per scale block, tcgen05.commit signals an
// mbarrier, and after the last chunk each warp reads its 32 accumulator lanes (tcgen05.ld).
// Simple and unpipelined on purpose: correctness first.
//
// Program: common.cuh, fp4_moe.cu (with GPTOSS_FP4_TCGEN05 defined: grouping, quantization and
// combine only), then this file, which defines fp4_moe_gate_up / fp4_moe_down with the sm_120a
// kernels' names and signatures. The descriptor constants come from the host encoders in
// fp4/tcgen05.rs as -D options (FP4T_IDESC, FP4T_ADESC_HI, FP4T_BDESC_HI, FP4T_SFDESC_HI), and
// every layout below has a host mirror there, checked through the CPU model of the instruction.

#ifndef FP4T_IDESC
#error "FP4T_IDESC and the descriptor constants come from fp4/tcgen05.rs (nvrtc options)"
#endif

#define FP4T_M 128     // weight rows per tile (MMA M, one TMEM lane each)
#define FP4T_N 32      // token slots per tile (MMA N)
#define FP4T_KB 4      // scale blocks per K chunk (one sf_id each)
#define FP4T_ROWB 128  // bytes per staged row: 4 blocks x 32 one-byte slots
// Tensor memory columns: D gate / up (32 f32 each), SFA gate / up and SFB (4 each, see below).
#define FP4T_COL_D0 0
#define FP4T_COL_D1 32
#define FP4T_COL_SFA0 64
#define FP4T_COL_SFA1 68
#define FP4T_COL_SFB 72
#define FP4T_TMEM_COLS 128

// Canonical K-major layout without swizzle: 8-row x 16-byte core matrices of 128 contiguous
// bytes; LBO = 128 (next core matrix along K), SBO = 1024 (next 8 rows). Mirror:
// tcgen05::kmajor_offset.
__device__ __forceinline__ int fp4t_off(int row, int kbyte) {
    return (row >> 3) * 1024 + (kbyte >> 4) * 128 + (row & 7) * 16 + (kbyte & 15);
}

// One MXFP4 block's 16 ggml bytes (element j in the low nibble of byte j, element 16 + j in the
// high nibble) as kind::mxf8f6f4 wants E2M1 in shared memory: 16 elements packed two to a byte
// (even element in the low nibble) in 8 bytes, then 8 bytes of padding; twice. Mirror:
// tcgen05::e2m1_padded_words (tested equal to tcgen05::e2m1_padded).
__device__ __forceinline__ void fp4t_pack_e2m1(uint4 q, uint4& lo, uint4& hi) {
    u32 w[4] = {q.x, q.y, q.z, q.w};
    u32 l[2], h[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        // bytes 8i .. 8i + 8 of the block: elements 8i .. 8i + 8 (low nibbles) and 16 + 8i .. (high)
        u32 a = w[2 * i], b = w[2 * i + 1];
        u32 la = a & 0x0f0f0f0fu, lb = b & 0x0f0f0f0fu;
        u32 ha = (a >> 4) & 0x0f0f0f0fu, hb = (b >> 4) & 0x0f0f0f0fu;
        // pairs of nibble bytes (x0, x1, x2, x3) -> x0 | x1 << 4, x2 | x3 << 4 in two bytes
        u32 pla = (la | (la >> 4)) & 0x00ff00ffu, plb = (lb | (lb >> 4)) & 0x00ff00ffu;
        u32 pha = (ha | (ha >> 4)) & 0x00ff00ffu, phb = (hb | (hb >> 4)) & 0x00ff00ffu;
        l[i] = __byte_perm(pla, plb, 0x6420);
        h[i] = __byte_perm(pha, phb, 0x6420);
    }
    lo = make_uint4(l[0], l[1], 0u, 0u);
    hi = make_uint4(h[0], h[1], 0u, 0u);
}

__device__ __forceinline__ u32 fp4t_smem(const void* p) { return (u32)__cvta_generic_to_shared(p); }

// Shared-memory matrix descriptor: the host-encoded upper fields | the start address.
__device__ __forceinline__ u64 fp4t_desc(u64 hi_fields, u32 saddr) {
    return hi_fields | (u64)((saddr & 0x3ffffu) >> 4);
}

__device__ __forceinline__ void fp4t_mma(u32 d, u64 a, u64 b, u32 idesc, u32 sfa, u32 sfb, u32 acc) {
    asm volatile(
        "{\n\t.reg .pred p;\n\tsetp.ne.b32 p, %4, 0;\n\t"
        "tcgen05.mma.cta_group::1.kind::mxf8f6f4.block_scale.scale_vec::1X [%0], %1, %2, %3, [%5], [%6], p;\n\t}\n"
        ::"r"(d), "l"(a), "l"(b), "r"(idesc), "r"(acc), "r"(sfa), "r"(sfb)
        : "memory");
}

// 32 rows x 16 bytes of shared memory -> 32 lanes x 4 columns of tensor memory, replicated into
// each 32-lane quarter (warpx4). Row l of the source holds the scale words of rows / columns
// l, 32 + l, 64 + l, 96 + l. Mirror: tcgen05::cp_32x128b_warpx4.
__device__ __forceinline__ void fp4t_cp_sf(u32 taddr, u64 sdesc) {
    asm volatile("tcgen05.cp.cta_group::1.32x128b.warpx4 [%0], %1;" ::"r"(taddr), "l"(sdesc) : "memory");
}

__device__ __forceinline__ void fp4t_ld8(u32 taddr, float (&v)[8]) {
    u32 r[8];
    asm volatile("tcgen05.ld.sync.aligned.32x32b.x8.b32 {%0, %1, %2, %3, %4, %5, %6, %7}, [%8];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]), "=r"(r[4]), "=r"(r[5]), "=r"(r[6]), "=r"(r[7])
                 : "r"(taddr)
                 : "memory");
#pragma unroll
    for (int i = 0; i < 8; ++i) v[i] = __uint_as_float(r[i]);
}

__device__ __forceinline__ void fp4t_wait_ld() { asm volatile("tcgen05.wait::ld.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void fp4t_fence_before() { asm volatile("tcgen05.fence::before_thread_sync;" ::: "memory"); }
__device__ __forceinline__ void fp4t_fence_after() { asm volatile("tcgen05.fence::after_thread_sync;" ::: "memory"); }

// Wait for the mbarrier's phase `parity` to complete. Bounded: if the tensor core never signals
// (a misread of the PTX ISA that only Blackwell hardware could show), trap after 10 s of
// %globaltimer instead of hanging, so that the first-use self-check fails loudly.
__device__ __forceinline__ void fp4t_wait(u32 bar, u32 parity) {
    u64 t0 = 0;
    for (;;) {
        u32 done;
        asm volatile(
            "{\n\t.reg .pred p;\n\t"
            "mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n\t"
            "selp.u32 %0, 1, 0, p;\n\t}\n"
            : "=r"(done)
            : "r"(bar), "r"(parity)
            : "memory");
        if (done) return;
        u64 t;
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
        if (t0 == 0)
            t0 = t;
        else if (t - t0 > 10000000000ull)
            asm volatile("trap;");
    }
}

// The shared state of one CTA.
struct Fp4tSmem {
    u8 a[2][FP4T_M * FP4T_ROWB];  // weight tiles (gate, up) or (down, unused)
    u8 b[FP4T_N * FP4T_ROWB];     // activation tile
    u32 sfa[2][128];              // scale words in tcgen05.cp order: [row % 32][row / 32]
    u32 sfb[128];                 // [col % 32][col / 32]; columns >= 32 unused
    int rows[FP4T_N];             // activation row of each token slot, -1 for none
    unsigned long long bar;       // the MMA-done mbarrier
    u32 tmem;                     // tensor memory base address
};

// Stage K chunk kb0 .. kb0 + nk of weight rows row0 .. row0 + 128 (rows from rows_left on are
// zero with scale 127) into a / sfa. Thread t stages row t.
__device__ __forceinline__ void fp4t_stage_a(const u8* w, i64 nb, i64 row0, int rows_left, int nbk, int kb0, int nk,
                                             u8* a, u32* sfa) {
    int m = threadIdx.x;
    u32 sw = 0x7f7f7f7fu;
#pragma unroll
    for (int j = 0; j < FP4T_KB; ++j) {
        uint4 lo = make_uint4(0u, 0u, 0u, 0u), hi = lo;
        if (j < nk && m < rows_left) {
            i64 blk = (row0 + m) * nbk + kb0 + j;
            fp4t_pack_e2m1(*(const uint4*)(w + blk * 16), lo, hi);
            sw = (sw & ~(0xffu << (8 * j))) | ((u32)w[nb * 16 + blk] << (8 * j));
        }
        *(uint4*)(a + fp4t_off(m, 32 * j)) = lo;
        *(uint4*)(a + fp4t_off(m, 32 * j + 16)) = hi;
    }
    sfa[(m & 31) * 4 + (m >> 5)] = sw;
}

// Stage the activation rows of the 32 slots (E4M3 rows of kdim, one UE8M0 per 32) for the same
// chunk into b / sfb. Thread t stages slot t / 4, scale block t % 4.
__device__ __forceinline__ void fp4t_stage_b(const u8* xq, const u8* xs, int kdim, int kb0, int nk, Fp4tSmem& s) {
    int n = threadIdx.x >> 2, j = threadIdx.x & 3;
    int row = s.rows[n];
    uint4 v0 = make_uint4(0u, 0u, 0u, 0u), v1 = v0;
    u32 e = 127u;
    if (row >= 0 && j < nk) {
        const u8* p = xq + (i64)row * kdim + (kb0 + j) * 32;
        v0 = *(const uint4*)p;
        v1 = *(const uint4*)(p + 16);
        e = xs[(i64)row * (kdim >> 5) + kb0 + j];
    }
    *(uint4*)(s.b + fp4t_off(n, 32 * j)) = v0;
    *(uint4*)(s.b + fp4t_off(n, 32 * j + 16)) = v1;
    // Gather the four scale bytes of slot n into its word (lanes 4n .. 4n + 3 hold them).
    u32 w = e << (8 * j);
    w |= __shfl_xor_sync(0xffffffffu, w, 1);
    w |= __shfl_xor_sync(0xffffffffu, w, 2);
    if (j == 0) {
        s.sfb[n * 4] = w;
        s.sfb[n * 4 + 1] = 0x7f7f7f7fu;
        s.sfb[n * 4 + 2] = 0x7f7f7f7fu;
        s.sfb[n * 4 + 3] = 0x7f7f7f7fu;
    }
}

// D[mat] (128 x 32, TMEM columns FP4T_COL_D0 / D1) = sum over K of W_mat[row0 ..] x X[rows]^T for
// the slots in s.rows. Leaves the accumulators in tensor memory, all tcgen05 work complete.
__device__ void fp4t_tile(const u8* w0, i64 nb0, const u8* w1, i64 nb1, int nmat, i64 row0, int rows_left,
                          const u8* xq, const u8* xs, int kdim, Fp4tSmem& s, u32& phase) {
    int nbk = kdim >> 5;
    u32 tm = s.tmem;
    for (int kb0 = 0; kb0 < nbk; kb0 += FP4T_KB) {
        int nk = min(FP4T_KB, nbk - kb0);
        fp4t_stage_a(w0, nb0, row0, rows_left, nbk, kb0, nk, s.a[0], s.sfa[0]);
        if (nmat > 1) fp4t_stage_a(w1, nb1, row0, rows_left, nbk, kb0, nk, s.a[1], s.sfa[1]);
        fp4t_stage_b(xq, xs, kdim, kb0, nk, s);
        // Generic-proxy writes -> visible to the tensor core's async proxy.
        asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
        fp4t_fence_before();
        __syncthreads();
        fp4t_fence_after();
        if (threadIdx.x == 0) {
            fp4t_cp_sf(tm + FP4T_COL_SFB, fp4t_desc(FP4T_SFDESC_HI, fp4t_smem(s.sfb)));
            for (int mat = 0; mat < nmat; ++mat)
                fp4t_cp_sf(tm + (mat ? FP4T_COL_SFA1 : FP4T_COL_SFA0),
                           fp4t_desc(FP4T_SFDESC_HI, fp4t_smem(s.sfa[mat])));
            for (int mat = 0; mat < nmat; ++mat) {
                for (int j = 0; j < nk; ++j) {
                    // K step j: 32 one-byte slots = two core matrices = 2 * LBO further.
                    u64 ad = fp4t_desc(FP4T_ADESC_HI, fp4t_smem(s.a[mat]) + 256u * j);
                    u64 bd = fp4t_desc(FP4T_BDESC_HI, fp4t_smem(s.b) + 256u * j);
                    u32 idesc = (u32)FP4T_IDESC | ((u32)j << 29) | ((u32)j << 4);  // sf ids: byte j
                    fp4t_mma(tm + (mat ? FP4T_COL_D1 : FP4T_COL_D0), ad, bd, idesc,
                             tm + (mat ? FP4T_COL_SFA1 : FP4T_COL_SFA0), tm + FP4T_COL_SFB, (kb0 | j) != 0);
                }
            }
            asm volatile("tcgen05.commit.cta_group::1.mbarrier::arrive::one.shared::cluster.b64 [%0];" ::"r"(
                             fp4t_smem(&s.bar))
                         : "memory");
        }
        // The commit fires when the copies and MMAs are done: shared memory is free again.
        fp4t_wait(fp4t_smem(&s.bar), phase);
        phase ^= 1u;
        fp4t_fence_after();
    }
}

// Allocate the CTA's tensor memory (warp 0) and set up the mbarrier (thread 0).
__device__ void fp4t_begin(Fp4tSmem& s) {
    if (threadIdx.x < 32) {
        asm volatile("tcgen05.alloc.cta_group::1.sync.aligned.shared::cta.b32 [%0], %1;" ::"r"(fp4t_smem(&s.tmem)),
                     "r"(FP4T_TMEM_COLS)
                     : "memory");
        asm volatile("tcgen05.relinquish_alloc_permit.cta_group::1.sync.aligned;" ::: "memory");
    }
    if (threadIdx.x == 0) {
        asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(fp4t_smem(&s.bar)) : "memory");
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    fp4t_fence_before();
    __syncthreads();
    fp4t_fence_after();
}

__device__ void fp4t_end(Fp4tSmem& s) {
    fp4t_fence_before();
    __syncthreads();
    fp4t_fence_after();
    if (threadIdx.x < 32)
        asm volatile("tcgen05.dealloc.cta_group::1.sync.aligned.b32 %0, %1;" ::"r"(s.tmem), "r"(FP4T_TMEM_COLS)
                     : "memory");
}

// Gate and up projections plus SwiGLU for every (token, slot) pair, grouped by expert: block
// (x, e) covers features x * 128 .. + 128 of expert e. Same contract as fp4_moe.cu's kernel.
// grid (ceil(n_ff / 128), n_exp), block 128.
extern "C" __global__ void __launch_bounds__(128) fp4_moe_gate_up(
    const u8* xq, const u8* xs, int d_model, const u8* wg, i64 nbg, const u8* wu, i64 nbu, const u8* bg,
    int bgt, const u8* bu, int but, const int* offs, const int* order, int k, int n_ff, float* h) {
    __shared__ __align__(128) Fp4tSmem s;
    int e = blockIdx.y;
    int f0 = blockIdx.x * FP4T_M;
    int p0 = offs[e], p1 = offs[e + 1];
    if (p0 == p1 || f0 >= n_ff) return;  // uniform over the CTA
    int rows_left = n_ff - f0;
    i64 row0 = (i64)e * n_ff + f0;
    int warp = threadIdx.x >> 5;
    int m = threadIdx.x;  // this thread's accumulator row (TMEM lane)
    fp4t_begin(s);
    u32 phase = 0;
    for (int c0 = p0; c0 < p1; c0 += FP4T_N) {
        if (threadIdx.x < FP4T_N) s.rows[threadIdx.x] = c0 + threadIdx.x < p1 ? order[c0 + threadIdx.x] / k : -1;
        __syncthreads();
        fp4t_tile(wg, nbg, wu, nbu, 2, row0, rows_left, xq, xs, d_model, s, phase);
        float bgv = m < rows_left ? wload(bg, bgt, 0, row0 + m) : 0.f;
        float buv = m < rows_left ? wload(bu, but, 0, row0 + m) : 0.f;
        u32 lanes = (u32)(32 * warp) << 16;
#pragma unroll
        for (int n0 = 0; n0 < FP4T_N; n0 += 8) {
            float g[8], u[8];
            fp4t_ld8(s.tmem + lanes + FP4T_COL_D0 + n0, g);
            fp4t_ld8(s.tmem + lanes + FP4T_COL_D1 + n0, u);
            fp4t_wait_ld();
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                int c = c0 + n0 + i;
                if (c < p1 && m < rows_left)
                    h[(i64)order[c] * n_ff + f0 + m] = fp4_swiglu(g[i] + bgv, u[i] + buv);
            }
        }
        // The next pass overwrites D and s.rows: every warp's reads must be done.
        fp4t_fence_before();
        __syncthreads();
        fp4t_fence_after();
    }
    fp4t_end(s);
}

// Down projection per pair, weighted by its router weight: yp[pair][d] = w * (W_e h + b).
// grid (ceil(d_model / 128), n_exp), block 128.
extern "C" __global__ void __launch_bounds__(128) fp4_moe_down(
    const u8* hq, const u8* hs, int n_ff, const u8* wd, i64 nbd, const u8* bd, int bdt, const int* offs,
    const int* order, const float* wts, int d_model, float* yp) {
    __shared__ __align__(128) Fp4tSmem s;
    int e = blockIdx.y;
    int d0 = blockIdx.x * FP4T_M;
    int p0 = offs[e], p1 = offs[e + 1];
    if (p0 == p1 || d0 >= d_model) return;
    int rows_left = d_model - d0;
    i64 row0 = (i64)e * d_model + d0;
    int warp = threadIdx.x >> 5;
    int m = threadIdx.x;
    fp4t_begin(s);
    u32 phase = 0;
    for (int c0 = p0; c0 < p1; c0 += FP4T_N) {
        if (threadIdx.x < FP4T_N) s.rows[threadIdx.x] = c0 + threadIdx.x < p1 ? order[c0 + threadIdx.x] : -1;
        __syncthreads();
        fp4t_tile(wd, nbd, wd, nbd, 1, row0, rows_left, hq, hs, n_ff, s, phase);
        float bv = m < rows_left ? wload(bd, bdt, 0, row0 + m) : 0.f;
        u32 lanes = (u32)(32 * warp) << 16;
#pragma unroll
        for (int n0 = 0; n0 < FP4T_N; n0 += 8) {
            float acc[8];
            fp4t_ld8(s.tmem + lanes + FP4T_COL_D0 + n0, acc);
            fp4t_wait_ld();
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                int c = c0 + n0 + i;
                if (c < p1 && m < rows_left) {
                    int pair = order[c];
                    yp[(i64)pair * d_model + d0 + m] = wts[pair] * (acc[i] + bv);
                }
            }
        }
        fp4t_fence_before();
        __syncthreads();
        fp4t_fence_after();
    }
    fp4t_end(s);
}
