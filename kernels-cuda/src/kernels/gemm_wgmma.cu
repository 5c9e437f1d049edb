// The Q8_0 products of the prefill (attention q/k/v and output) on Hopper's warpgroup tensor
// cores (sm_90a): gemm_tc_q8_0's math (each weight q * d rounded once to f16, the activations
// rounded to f16, f32 sums, the bias added at the end) on moe_wgmma.cu's machinery.
//
// As in the MoE kernels, the weights are wgmma's A operand from registers (4 warpgroups, 256
// weight rows a block) and the tile's 128 token rows are B, f16 in shared memory, copied by
// cp.async. Each thread loads the 32-bit words at bytes 4q and 16 + 4q of each Q8_0 block of its
// two rows (the 32 values, re-laid out on upload: values, then scales) and expands them to f16 in
// registers: the byte under f16's 2^10 exponent is 1024 + (q + 128), minus 1152 is q (exact),
// times d rounds once, as gemm_tc_q8_0's f32 product rounded to f16 does.
//
// K order: wgmma's fragment holds k = 2q, 2q+1, 2q+8, 2q+9 of each 16-wide slice, so the word at
// byte 4q feeds the block's first slice and the word at 16 + 4q its second, each in the MXFP4
// kernels' order inside the slice (wg_lpos). x is stored in that order (gemm_wg_prep_x). Every
// k16 slice holds the same 16 k as gemm_tc_q8_0's, so the products and their sums are the same
// and the outputs came out bit-equal to it (as the MoE kernels' to theirs).
//
// Up to three matrices that share x (q, k, v) in one launch: their 256-row tiles side by side in
// the grid, so that k and v (512 rows each) do not run as launches of a few blocks.

// x [t, k] f32 -> f16 in logical column order (the B rows of gemm_wg_q8_0). grid
// ceil(t * k / 512), block 256.
extern "C" __global__ void gemm_wg_prep_x(const float* x, int t, int k, u16* xh) {
    GRID_DEP_ENTRY();
    wg_prep_rows<false>(x, t, k, xh);
}

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)

__device__ __forceinline__ u32 f16x2_sub(u32 a, u32 b) {
    u32 d;
    asm("sub.rn.f16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
    return d;
}
__device__ __forceinline__ u32 f16x2_mul(u32 a, u32 b) {
    u32 d;
    asm("mul.rn.f16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
    return d;
}

// Bytes lo, hi of v (int8 values, their sign bits flipped in u) times the f16 pair dd: the
// f16x2 (q_lo d, q_hi d), each rounded once. sel picks the two bytes under 0x64.
__device__ __forceinline__ u32 wg8_pair(u32 u, u32 sel, u32 dd) {
    u32 biased = __byte_perm(u, 0x64646464u, sel);  // 1024 + (q + 128), exact
    return f16x2_mul(f16x2_sub(biased, 0x64806480u), dd);
}

// The weight rows of one thread (fragment rows g and g + 8 of its warp), two Q8_0 blocks per
// stage, two register sets of raw words as WgA has.
struct WgQ8 {
    static constexpr bool F16 = true;  // f16 fragments
    // Row g's word at byte 4q of block 0 and its f16 scales (two blocks, one stage, per u32);
    // row g + 8's are 8 rows further. One pointer pair and a row stride rather than a pair per
    // row: registers (128 a thread) are what the 4-warpgroup form is short of.
    const u32* q;
    const u32* e;
    i64 qrow, erow;     // 8 rows, in u32 words of values / of scale pairs
    bool ok[2];         // false: a row past the end (zeros)
    uint2 w[2][2][2];   // [set][row][block of the stage]: the words at bytes 4q, 16 + 4q
    u32 s[2][2];        // [set][row]: the stage's two scales
    // Rows `row` and `row + 8` (ok0, ok1: within the matrix) of the Q8_0 matrix at wt (nb
    // blocks in all, nbk per row; nbk even, so the scale pairs are 4-byte aligned), for quad
    // lane qd.
    __device__ __forceinline__ void init(const u8* wt, i64 nb, i64 row, int nbk, int qd, bool ok0,
                                         bool ok1) {
        q = (const u32*)(wt + row * nbk * 32) + qd;
        e = (const u32*)(wt + nb * 32 + row * nbk * 2);
        qrow = (i64)nbk * 64;
        erow = (i64)nbk * 4;
        ok[0] = ok0;
        ok[1] = ok1;
    }
    template <int SET>
    __device__ __forceinline__ void fetch(int kt) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            if (ok[r]) {
                const u32* p = q + r * qrow + kt * 16;  // block 2 kt: 64 kt bytes
                w[SET][r][0] = make_uint2(__ldg(p), __ldg(p + 4));
                w[SET][r][1] = make_uint2(__ldg(p + 8), __ldg(p + 12));
                s[SET][r] = __ldg(e + r * erow + kt);
            } else {
                w[SET][r][0] = make_uint2(0u, 0u);
                w[SET][r][1] = make_uint2(0u, 0u);
                s[SET][r] = 0u;
            }
        }
    }
    // Slice j of the stage in af[4j..4j+3] = {(g, 2q..), (g+8, 2q..), (g, 2q+8..), (g+8,
    // 2q+8..)}: bytes 0-1 and 2-3 of block b's word at 4q are slice 2b's pairs at 2q and 2q + 8,
    // those of its word at 16 + 4q slice 2b + 1's.
    template <int SET>
    __device__ __forceinline__ void expand(u32 (&af)[16]) {
#pragma unroll
        for (int b = 0; b < 2; ++b) {
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                u32 d = (s[SET][r] >> (16 * b)) & 0xffffu, dd = d | (d << 16);
                u32 lo = w[SET][r][b].x ^ 0x80808080u, hi = w[SET][r][b].y ^ 0x80808080u;
                af[8 * b + 0 + r] = wg8_pair(lo, 0x4140u, dd);
                af[8 * b + 2 + r] = wg8_pair(lo, 0x4342u, dd);
                af[8 * b + 4 + r] = wg8_pair(hi, 0x4140u, dd);
                af[8 * b + 6 + r] = wg8_pair(hi, 0x4342u, dd);
            }
        }
    }
};

#endif  // __CUDA_ARCH_FEAT_SM90_ALL

#define WG_LINEAR_SHIFT 8
#define WG_LINEAR_ROWS (1 << WG_LINEAR_SHIFT)  // weight rows a block: 4 warpgroups of 64

// One matrix of a gemm_wg_q8_0 launch.
struct WgMat {
    const u8* w;
    i64 nb;
    const u8* bias;
    int bt;
    float* y;
    int n;
};

// y_m [t, n_m] = x W_m^T + b_m for the up to three matrices m (n_m = 0: absent) of one launch:
// block x takes 256-row tile x of the matrices' tiles in order, block y the 128 tokens from
// 128 y. xh: x in the Q8_0 fragment order (gemm_wg_prep_x). grid (sum of ceil(n_m / 256),
// ceil(t / 128)), block 512, WG_SMEM bytes of dynamic shared memory; k a multiple of 64.
extern "C" __global__ void __launch_bounds__(512, 1) gemm_wg_q8_0(
    const u16* xh, int t, int k, const u8* w0, i64 nb0, const u8* bias0, int bt0, float* y0,
    int n0, const u8* w1, i64 nb1, const u8* bias1, int bt1, float* y1, int n1, const u8* w2,
    i64 nb2, const u8* bias2, int bt2, float* y2, int n2) {
    GRID_DEP_ENTRY();
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    extern __shared__ __align__(128) u8 wgl_smem[];
    int tile = blockIdx.x;
    int t0 = (n0 + WG_LINEAR_ROWS - 1) >> WG_LINEAR_SHIFT;
    int t1 = (n1 + WG_LINEAR_ROWS - 1) >> WG_LINEAR_SHIFT;
    WgMat m = tile < t0 ? WgMat{w0, nb0, bias0, bt0, y0, n0}
                        : tile < t0 + t1 ? WgMat{w1, nb1, bias1, bt1, y1, n1}
                                         : WgMat{w2, nb2, bias2, bt2, y2, n2};
    tile -= tile < t0 ? 0 : tile < t0 + t1 ? t0 : t0 + t1;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, q = lane & 3;
    int r0 = tile * WG_LINEAR_ROWS + warp * 16 + g;
    bool ok0 = r0 < m.n, ok1 = r0 + 8 < m.n;
    WgQ8 a;
    a.init(m.w, m.nb, r0, k / 32, q, ok0, ok1);
    int m0 = blockIdx.y * WG_N, tr = m0 + wg_brow0();
    const u16* b0 = tr < t ? xh + (i64)tr * k : nullptr;
    const u16* b1 = tr + 64 < t ? xh + (i64)(tr + 64) * k : nullptr;
    float d[64];
    wg_mainloop<4>(a, b0, b1, xh, k / WG_BK, (u32)__cvta_generic_to_shared(wgl_smem), d);
    float c0 = ok0 && m.bias ? wload(m.bias, m.bt, 0, r0) : 0.f;
    float c1 = ok1 && m.bias ? wload(m.bias, m.bt, 0, r0 + 8) : 0.f;
#pragma unroll
    for (int j = 0; j < 16; ++j) {
#pragma unroll
        for (int c = 0; c < 2; ++c) {
            int s = m0 + 8 * j + 2 * q + c;
            if (s < t) {
                if (ok0) m.y[(i64)s * m.n + r0] = d[4 * j + c] + c0;
                if (ok1) m.y[(i64)s * m.n + r0 + 8] = d[4 * j + 2 + c] + c1;
            }
        }
    }
#endif
}
