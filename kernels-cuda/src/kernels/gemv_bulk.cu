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
// register holds the bytes in flight. The warps then read their row from shared memory; the
// arithmetic is that of row_dot_f (same order of sums per lane, so the same bits).
//
// Shared memory: qs of the block's 8 rows [8][nbk * 32], then their f16 scales [8][nbk]
// (dynamic, 8 * nbk * 34 bytes; the host keeps it within 48 KiB). The host picks these
// kernels only on sm_90+ with n_out % 8 == 0 and (for the roped form) nbk even, so every copy is
// 16-byte aligned and a multiple of 16 bytes.

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

// The copies of rows [row, row + n) of a Q8_0 matrix (w, nb blocks in all) into slots
// [slot, slot + n) of the block's slice. One thread.
__device__ __forceinline__ void bulk_rows_q8(u8* sm, int nbk, int slot, const u8* w, i64 nb,
                                             i64 row, int n, u32 bar) {
#if BULK_OK
    bulk_g2s(smem_u32(sm + (i64)slot * nbk * 32), w + row * nbk * 32, (u32)(n * nbk * 32), bar);
    bulk_g2s(smem_u32(sm + 8 * nbk * 32 + (i64)slot * nbk * 2), w + nb * 32 + row * nbk * 2,
             (u32)(n * nbk * 2), bar);
#endif
}

// Thread 0 sets up the barrier and issues `runs` copies of 8 / runs rows each (run r: rows
// rows[r] .. into slots r * 8 / runs ..); the caller then waits for the previous kernel and
// for the barrier.
template <int RUNS>
__device__ __forceinline__ u32 bulk_start_q8(u8* sm, u64* bar, int nbk, const u8* w, i64 nb,
                                             const i64 (&rows)[RUNS]) {
#if BULK_OK
    u32 b = smem_u32(bar);
    if (threadIdx.x == 0) {
        mbar_init(b, 1);
        mbar_expect_tx(b, (u32)(8 * nbk * 34));
#pragma unroll
        for (int r = 0; r < RUNS; ++r) bulk_rows_q8(sm, nbk, r * (8 / RUNS), w, nb, rows[r], 8 / RUNS, b);
    }
    // The other threads wait on the barrier only after this: its initialisation is visible.
    __syncthreads();
    return b;
#else
    __trap();
    return 0;
#endif
}

__device__ __forceinline__ void bulk_wait(u32 bar) {
#if BULK_OK
    mbar_wait(bar, 0);
#endif
}

// y = W x + b for one token, 8 rows per block. grid n_out / 8, block 256, dynamic shared
// memory 8 * (k / 32) * 34 bytes.
extern "C" __global__ void __launch_bounds__(256) gemvf_q8_0_r1_bulk(const float* x, int k,
                                                                     const u8* w, i64 nb,
                                                                     const u8* bias, int btype,
                                                                     float* y, int n_out) {
    GRID_DEP_LAUNCH();
    extern __shared__ __align__(16) u8 gemv_sm[];
    __shared__ __align__(8) u64 bar;
    int nbk = k >> 5;
    i64 rows[1] = {(i64)blockIdx.x * 8};
    u32 b = bulk_start_q8<1>(gemv_sm, &bar, nbk, w, nb, rows);
    GRID_DEP_WAIT();
    bulk_wait(b);
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
    const float* cs) {
    GRID_DEP_LAUNCH();
    extern __shared__ __align__(16) u8 gemv_sm[];
    __shared__ __align__(8) u64 bar;
    __shared__ float pairv[8];
    MAT3_SELECT();
    int nbk = k >> 5;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    bool roped = !m2;
    int half = head_dim >> 1, per_head = half >> 2;
    u32 bb;
    int n;
    if (roped) {
        i64 r0 = (i64)(b / per_head) * head_dim + (b % per_head) * 4;
        i64 rows[2] = {r0, r0 + half};
        bb = bulk_start_q8<2>(gemv_sm, &bar, nbk, w, nb, rows);
        n = (int)r0 + (warp & 3) + (warp >> 2) * half;
    } else {
        i64 rows[1] = {(i64)b * 8};
        bb = bulk_start_q8<1>(gemv_sm, &bar, nbk, w, nb, rows);
        n = b * 8 + warp;
    }
    GRID_DEP_WAIT();
    bulk_wait(bb);
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
