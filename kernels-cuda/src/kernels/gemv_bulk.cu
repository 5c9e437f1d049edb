// ---- One-token Q8_0 products fed by bulk copies (sm_90+): a block's whole weight slice is
// requested at once by the copy engine into shared memory, before the block waits for the
// previous kernel ----
//
// Why: the register-fed kernels (gemvf_q8_0_r1, gemvf3_q8_0_r1_rope) keep 1 KiB of a row in
// flight per warp (four steps of eight blocks), limited by registers; the attention output
// projection ran at ~1.6 TB/s (leaving it out of the decode step saved 8 us per layer for its
// 12.5 MB; bench/RESULTS.md, session 18). Here one thread issues cp.async.bulk for the block's
// eight rows (nibbles and scales) as soon as the block is resident: under programmatic
// dependent launch that is while the previous kernel (attention, the norm) still runs, and no
// register holds the bytes in flight. Each warp reads its row from shared memory as soon as it
// has landed; the arithmetic is that of row_dot_f (same order of sums per lane, so the same
// bits).
//
// Shared memory: qs of the block's 8 rows [8][nbk * 32], then their f16 scales [8][nbk]
// (dynamic, 8 * nbk * 34 bytes; the host keeps it within 48 KiB). The host picks these
// kernels only on sm_90+ with n_out % 8 == 0 and nbk even (the scales go as two runs of four
// rows), so every copy is 16-byte aligned and a multiple of 16 bytes.

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define BULK_OK 1
__device__ __forceinline__ u32 smem_u32(const void* p) {
    return (u32)__cvta_generic_to_shared(p);
}
__device__ __forceinline__ void mbar_init(u32 bar, u32 count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count) : "memory");
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
}
__device__ __forceinline__ void mbar_expect_tx(u32 bar, u32 bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes)
                 : "memory");
}
// Global -> shared, completing `bytes` of the barrier's transaction count.
__device__ __forceinline__ void bulk_g2s(u32 dst, const void* src, u32 bytes, u32 bar) {
    asm volatile(
        "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
            dst),
        "l"(src), "r"(bytes), "r"(bar)
        : "memory");
}
__device__ __forceinline__ void mbar_wait(u32 bar, u32 parity) {
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
    }
}
#else
#define BULK_OK 0
#endif

// Row `slot` of the block's shared slice dotted with x (k = nbk * 32 floats): row_dot_f's lane
// split (lane p of four takes bytes 8p..8p+7 of a block, eight blocks per step).
__device__ __forceinline__ float smem_row_dot_q8(const u8* sm, int nbk, int slot, const float* x) {
    int lane = threadIdx.x & 31, p = lane & 3, bl = lane >> 2;
    const u8* qs = sm + (i64)slot * nbk * 32;
    const u16* sc = (const u16*)(sm + 8 * nbk * 32) + slot * nbk;
    float acc = 0.f;
#pragma unroll 4
    for (int kb = bl; kb < nbk; kb += 8) {
        int2 q = *(const int2*)(qs + kb * 32 + 8 * p);
        float d = h2f(sc[kb]);
        acc += q8_part_dot(q, x + kb * 32, p) * d;
    }
    return acc;
}

// The block's eight slots hold rows row_a + (s & 3) + (s >> 2) * step of a Q8_0 matrix (w, nb
// blocks in all): step 4 is eight consecutive rows, step half a roped block's two runs. Each slot
// has its own barrier, so a warp starts on its row as soon as that row has landed; the scales of
// all eight rows (two runs) complete barrier 0. Thread 0 issues slots [s0, s1) (and the scales
// with slot 0).
__device__ __forceinline__ void bulk_issue_q8(u8* sm, const u64* bars, int nbk, const u8* w, i64 nb,
                                              i64 row_a, i64 step, int s0, int s1) {
#if BULK_OK
    u32 qrow = (u32)nbk * 32, srun = (u32)nbk * 8;
    for (int s = s0; s < s1; ++s) {
        u32 bar = smem_u32(bars + s);
        i64 row = row_a + (s & 3) + (s >> 2) * step;
        mbar_expect_tx(bar, qrow + (s == 0 ? 2 * srun : 0));
        if (s == 0) {
#pragma unroll
            for (int run = 0; run < 2; ++run)
                bulk_g2s(smem_u32(sm + 8 * qrow + run * srun), w + nb * 32 + (row_a + run * step) * nbk * 2,
                         srun, bar);
        }
        bulk_g2s(smem_u32(sm + (i64)s * qrow), w + row * qrow, qrow, bar);
    }
#endif
}

// The block's copies: `pre` slots (0..8) issued at once, the rest after the wait for the
// previous kernel (GRID_DEP_WAIT, which every thread passes here). Requesting the whole slice
// before the wait floods the memory system while the previous kernel, on the critical path,
// still needs it (measured slower for q/k/v: bench/RESULTS.md, session 18).
__device__ __forceinline__ void bulk_load_q8(u8* sm, u64* bars, int nbk, const u8* w, i64 nb,
                                             i64 row_a, i64 step, int pre) {
#if BULK_OK
    if (threadIdx.x == 0) {
        for (int s = 0; s < 8; ++s) mbar_init(smem_u32(bars + s), 1);
        bulk_issue_q8(sm, bars, nbk, w, nb, row_a, step, 0, pre);
    }
    GRID_DEP_WAIT();
    if (threadIdx.x == 0) bulk_issue_q8(sm, bars, nbk, w, nb, row_a, step, pre, 8);
    // The other threads wait on the barriers only after this: their initialisation is visible.
    __syncthreads();
    int warp = threadIdx.x >> 5;
    mbar_wait(smem_u32(bars), 0);
    if (warp) mbar_wait(smem_u32(bars + warp), 0);
#else
    __trap();
#endif
}

// y = W x + b for one token, 8 rows per block; `pre` rows' copies are issued before the wait.
// grid n_out / 8, block 256, dynamic shared memory 8 * (k / 32) * 34 bytes.
extern "C" __global__ void __launch_bounds__(256) gemvf_q8_0_r1_bulk(const float* x, int k,
                                                                     const u8* w, i64 nb,
                                                                     const u8* bias, int btype,
                                                                     float* y, int n_out, int pre) {
    GRID_DEP_LAUNCH();
    extern __shared__ __align__(16) u8 gemv_sm[];
    __shared__ __align__(8) u64 bars[8];
    int nbk = k >> 5;
    bulk_load_q8(gemv_sm, bars, nbk, w, nb, (i64)blockIdx.x * 8, 4, pre);
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int n = blockIdx.x * 8 + warp;
    float s = warp_sum(smem_row_dot_q8(gemv_sm, nbk, warp, x));
    if (lane == 0 && n < n_out) y[n] = s + bias_at(bias, btype, n);
}

// gemvf3_q8_0_r1_rope with bulk-fed rows: the same block -> rows map (a roped block holds the
// rotation pairs (i, i + half) of four consecutive i: two runs of four rows), the same sums.
// grid nblk0 + nblk1 + nblk2, block 256, dynamic shared memory 8 * (k / 32) * 34 bytes.
extern "C" __global__ void __launch_bounds__(256) gemvf3_q8_0_r1_rope_bulk(
    const float* x, int k, MAT3_ARGS(0), MAT3_ARGS(1), MAT3_ARGS(2), int head_dim,
    const float* cs, int pre) {
    GRID_DEP_LAUNCH();
    extern __shared__ __align__(16) u8 gemv_sm[];
    __shared__ __align__(8) u64 bars[8];
    __shared__ float pairv[8];
    MAT3_SELECT();
    int nbk = k >> 5;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    bool roped = !m2;
    int half = head_dim >> 1, per_head = half >> 2;
    i64 row_a = roped ? (i64)(b / per_head) * head_dim + (b % per_head) * 4 : (i64)b * 8;
    i64 step = roped ? half : 4;
    bulk_load_q8(gemv_sm, bars, nbk, w, nb, row_a, step, pre);
    int n = (int)(row_a + (warp & 3) + (warp >> 2) * step);
    float s = warp_sum(smem_row_dot_q8(gemv_sm, nbk, warp, x)) + bias_at(bias, bt, n);
    if (!roped) {
        if (lane == 0 && n < n_out) y[n] = s;
        return;
    }
    if (lane == 0) pairv[warp] = s;
    __syncthreads();
    if (warp < 4 && lane == 0) {
        int i = (b % per_head) * 4 + warp;
        float cf = cs[i], sf = cs[half + i];
        rope_rotate(pairv[warp], pairv[warp + 4], cf, sf, y[n], y[n + half]);
    }
}
