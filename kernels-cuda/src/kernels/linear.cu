// y[t, n] = sum_k x[t, k] * W[n, k] + bias[n] for weights of any supported type.
//
// Few rows (decode, t <= MAX_ROWS): one warp per output, weights read once for all rows.
// Q8_0 and MXFP4 take a dp4a path against int8-quantized activations (quantize_q8), which
// reads 16-byte weight vectors and keeps the arithmetic off the critical path; the other types
// take an f32 path. Many rows (prefill): a shared-memory tiled GEMM.

#define MAX_ROWS 8

__device__ __forceinline__ float bias_at(const u8* bias, int btype, int n) {
    return bias ? wload(bias, btype, 0, n) : 0.f;
}

// Generic few-row path. grid ceil(n_out / 8), block 256.
extern "C" __global__ void linear_rows(const float* x, int t, int k, const u8* w, int wtype,
                                       i64 nb, const u8* bias, int btype, float* y, int n_out) {
    GRID_DEP_ENTRY();
    int n = blockIdx.x * 8 + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (n >= n_out) return;
    float acc[MAX_ROWS];
#pragma unroll
    for (int r = 0; r < MAX_ROWS; ++r) acc[r] = 0.f;
    i64 base = (i64)n * k;
    for (int c = lane; c < k; c += 32) {
        float wv = wload(w, wtype, nb, base + c);
#pragma unroll
        for (int r = 0; r < MAX_ROWS; ++r)
            if (r < t) acc[r] += wv * x[(i64)r * k + c];
    }
    float b = bias_at(bias, btype, n);
#pragma unroll
    for (int r = 0; r < MAX_ROWS; ++r) {
        if (r < t) {
            float s = warp_sum(acc[r]);
            if (lane == 0) y[(i64)r * n_out + n] = s + b;
        }
    }
}

// dot of one Q8_0 weight block (32 int8 as two int4) with one int8 activation block.
__device__ __forceinline__ int dot_q8_block(int4 w0, int4 w1, const int4* xq) {
    int4 a = xq[0], c = xq[1];
    int s = __dp4a(w0.x, a.x, 0);
    s = __dp4a(w0.y, a.y, s);
    s = __dp4a(w0.z, a.z, s);
    s = __dp4a(w0.w, a.w, s);
    s = __dp4a(w1.x, c.x, s);
    s = __dp4a(w1.y, c.y, s);
    s = __dp4a(w1.z, c.z, s);
    s = __dp4a(w1.w, c.w, s);
    return s;
}

// dot of one MXFP4 block (16 bytes of nibbles) with one int8 activation block, in units of
// the doubled table (the caller multiplies by half the E8M0 scale).
__device__ __forceinline__ int dot_mxfp4_block(int4 q, const int4* xq) {
    int4 a = xq[0], c = xq[1];
    int2 v;
    int s = 0;
    v = mxfp4_lut8((u32)q.x); s = __dp4a(v.x, a.x, s); s = __dp4a(v.y, c.x, s);
    v = mxfp4_lut8((u32)q.y); s = __dp4a(v.x, a.y, s); s = __dp4a(v.y, c.y, s);
    v = mxfp4_lut8((u32)q.z); s = __dp4a(v.x, a.z, s); s = __dp4a(v.y, c.z, s);
    v = mxfp4_lut8((u32)q.w); s = __dp4a(v.x, a.w, s); s = __dp4a(v.y, c.w, s);
    return s;
}

// Quantize rows of x (nblk blocks of 32 in all) to int8, one warp per block of 32, eight blocks
// per warp in flight (the loads are issued together; a loop of dependent loads would leave the
// warp waiting on memory latency once per block).
__device__ __forceinline__ void quantize_blocks(const float* x, int nblk, i8* xq, float* xd,
                                                int warp, int nw) {
    int lane = threadIdx.x & 31;
    for (int b0 = warp; b0 < nblk; b0 += nw * 8) {
        float v[8];
#pragma unroll
        for (int u = 0; u < 8; ++u) {
            int b = b0 + u * nw;
            v[u] = b < nblk ? x[(i64)b * 32 + lane] : 0.f;
        }
#pragma unroll
        for (int u = 0; u < 8; ++u) {
            int b = b0 + u * nw;
            float amax = warp_max(fabsf(v[u]));
            if (b < nblk) {
                float id = amax > 0.f ? 127.0f / amax : 0.f;
                xq[(i64)b * 32 + lane] = (i8)(int)rintf(v[u] * id);
                if (lane == 0) xd[b] = amax / 127.0f;
            }
        }
    }
}

__device__ __forceinline__ void quantize_to_smem(const float* x, int nblk, i8* xq, float* xd) {
    quantize_blocks(x, nblk, xq, xd, threadIdx.x >> 5, blockDim.x >> 5);
}

// Activations to int8 in global memory (for matrices so tall that re-quantizing x in every
// block would cost more than one extra launch). grid ceil(nblk / 64), block 256.
extern "C" __global__ void quantize_q8(const float* x, int nblk, i8* xq, float* xd) {
    GRID_DEP_ENTRY();
    quantize_blocks(x, nblk, xq, xd, blockIdx.x * 8 + (threadIdx.x >> 5), gridDim.x * 8);
}

#define GEMV_UNROLL 4

// Q8_0 or MXFP4 weight times int8 activations (xq/xd in shared or global memory), t <=
// MAX_ROWS, one warp per output row, dp4a over 16-byte weight loads, GEMV_UNROLL blocks per
// lane loaded before any is used.
template <int TYPE, int R>
__device__ __forceinline__ void gemv_rows(const i8* xq, const float* xd, int t, int k,
                                          const u8* w, i64 nb, const u8* bias, int btype,
                                          float* y, int n_out) {
    int n = blockIdx.x * 8 + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (n >= n_out) return;
    int nbk = k >> 5;
    float acc[R];
#pragma unroll
    for (int r = 0; r < R; ++r) acc[r] = 0.f;
    for (int kb0 = lane; kb0 < nbk; kb0 += 32 * GEMV_UNROLL) {
        int4 w0[GEMV_UNROLL], w1[GEMV_UNROLL];
        float d[GEMV_UNROLL];
#pragma unroll
        for (int u = 0; u < GEMV_UNROLL; ++u) {
            int kb = kb0 + 32 * u;
            if (kb < nbk) {
                i64 bi = (i64)n * nbk + kb;
                if (TYPE == T_Q8_0) {
                    const int4* wp = (const int4*)(w + bi * 32);
                    w0[u] = __ldg(wp);
                    w1[u] = __ldg(wp + 1);
                    d[u] = h2f(__ldg((const u16*)(w + nb * 32) + bi));
                } else {
                    w0[u] = __ldg((const int4*)(w + bi * 16));
                    d[u] = 0.5f * e8m0_to_f32(__ldg(w + nb * 16 + bi));
                }
            }
        }
#pragma unroll
        for (int u = 0; u < GEMV_UNROLL; ++u) {
            int kb = kb0 + 32 * u;
            if (kb < nbk) {
#pragma unroll
                for (int r = 0; r < R; ++r) {
                    if (r < t) {
                        int xb = r * nbk + kb;
                        const int4* xp = (const int4*)(xq + (i64)xb * 32);
                        int s = TYPE == T_Q8_0 ? dot_q8_block(w0[u], w1[u], xp)
                                               : dot_mxfp4_block(w0[u], xp);
                        acc[r] += (float)s * d[u] * xd[xb];
                    }
                }
            }
        }
    }
    float b = bias_at(bias, btype, n);
#pragma unroll
    for (int r = 0; r < R; ++r) {
        if (r < t) {
            float s = warp_sum(acc[r]);
            if (lane == 0) y[(i64)r * n_out + n] = s + b;
        }
    }
}

// Each block quantizes x into shared memory (dynamic: t*k bytes, then t*k/32 floats) and runs
// 8 output rows. grid ceil(n_out / 8), block 256.
template <int TYPE, int R>
__device__ __forceinline__ void gemv_quant(const float* x, int t, int k, const u8* w, i64 nb,
                                           const u8* bias, int btype, float* y, int n_out) {
    extern __shared__ int4 gemv_smem[];
    i8* xq = (i8*)gemv_smem;
    float* xd = (float*)(xq + t * k);
    quantize_to_smem(x, t * (k >> 5), xq, xd);
    __syncthreads();
    gemv_rows<TYPE, R>(xq, xd, t, k, w, nb, bias, btype, y, n_out);
}

// Entry points: _r1 for one row (decode at batch 1, fewer registers, more warps in flight),
// the plain names for up to MAX_ROWS rows; _pre read activations quantized by quantize_q8.
#define GEMV_ENTRY(NAME, TYPE, R)                                                               \
    extern "C" __global__ void __launch_bounds__(256) NAME(                                   \
        const float* x, int t, int k, const u8* w, i64 nb, const u8* bias, int btype, float* y, \
        int n_out) { GRID_DEP_ENTRY();                                                        \
        gemv_quant<TYPE, R>(x, t, k, w, nb, bias, btype, y, n_out);                           \
    }
#define GEMV_PRE_ENTRY(NAME, TYPE, R)                                                          \
    extern "C" __global__ void __launch_bounds__(256) NAME(                                   \
        const i8* xq, const float* xd, int t, int k, const u8* w, i64 nb, const u8* bias,     \
        int btype, float* y, int n_out) { GRID_DEP_ENTRY();                                   \
        gemv_rows<TYPE, R>(xq, xd, t, k, w, nb, bias, btype, y, n_out);                       \
    }
GEMV_ENTRY(gemv_q8_0, T_Q8_0, MAX_ROWS)
GEMV_ENTRY(gemv_mxfp4, T_MXFP4, MAX_ROWS)
GEMV_ENTRY(gemv_q8_0_r1, T_Q8_0, 1)
GEMV_ENTRY(gemv_mxfp4_r1, T_MXFP4, 1)
GEMV_PRE_ENTRY(gemv_q8_0_pre, T_Q8_0, MAX_ROWS)
GEMV_PRE_ENTRY(gemv_mxfp4_pre, T_MXFP4, MAX_ROWS)
GEMV_PRE_ENTRY(gemv_q8_0_pre_r1, T_Q8_0, 1)
GEMV_PRE_ENTRY(gemv_mxfp4_pre_r1, T_MXFP4, 1)

// Tiled GEMM for many rows, any weight type (dequantized while staged into shared memory).
// Tile 64 rows x 64 outputs x 32 k; 256 threads each own a 4x4 patch.
// grid (ceil(n_out / 64), ceil(t / 64)), block 256.
extern "C" __global__ void gemm_tiled(const float* x, int t, int k, const u8* w, int wtype, i64 nb,
                                      const u8* bias, int btype, float* y, int n_out) {
    GRID_DEP_ENTRY();
    __shared__ float xs[32][64 + 4];
    __shared__ float ws[32][64 + 4];
    int r0 = blockIdx.y * 64, n0 = blockIdx.x * 64;
    int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.f;
    for (int k0 = 0; k0 < k; k0 += 32) {
        // 2048 elements of each tile; thread loads 8 of each, k fastest for coalescing.
#pragma unroll
        for (int e = 0; e < 8; ++e) {
            int idx = threadIdx.x + e * 256;
            int kk = idx & 31, rr = idx >> 5;
            int gk = k0 + kk;
            int gr = r0 + rr, gn = n0 + rr;
            xs[kk][rr] = (gr < t && gk < k) ? x[(i64)gr * k + gk] : 0.f;
            ws[kk][rr] = (gn < n_out && gk < k) ? wload(w, wtype, nb, (i64)gn * k + gk) : 0.f;
        }
        __syncthreads();
#pragma unroll 8
        for (int kk = 0; kk < 32; ++kk) {
            float a[4], b[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) a[i] = xs[kk][ty * 4 + i];
#pragma unroll
            for (int j = 0; j < 4; ++j) b[j] = ws[kk][tx * 4 + j];
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] += a[i] * b[j];
        }
        __syncthreads();
    }
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        int gn = n0 + tx * 4 + j;
        if (gn >= n_out) continue;
        float b = bias_at(bias, btype, gn);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            int gr = r0 + ty * 4 + i;
            if (gr < t) y[(i64)gr * n_out + gn] = acc[i][j] + b;
        }
    }
}

// ---- f32-activation matrix-vector kernels (the default: products as exact as the CPU's) ----
// Four lanes share one 32-weight block: lane part p = lane & 3 takes MXFP4 bytes 4p..4p+3
// (elements 4p..4p+3 and 16+4p..16+4p+3) or Q8_0 values 8p..8p+7, so a warp covers 8 blocks
// per step with coalesced weight loads and x read as float4 (8 blocks = 1 KiB contiguous).

// Byte i of v as a signed value (gemm_tc.cu stages Q8_0 tiles with it).
__device__ __forceinline__ float sx8(int v, int i) { return (float)((v << (24 - 8 * i)) >> 24); }

// MXFP4 part-dot in units of the doubled table (the caller multiplies by half the scale), given
// the lane's x values a = x[4p..4p+3], c = x[16+4p..16+4p+3]. Weights decode through the
// exponent trick (common.cuh): no int->float conversion.
__device__ __forceinline__ float mxfp4_part_dot4(u32 q, float4 a, float4 c) {
    u32 t0, t1;
    mxfp4_lut8_u(q, t0, t1);
    float s = ubyte_val<0>(t0) * a.x;
    s = fmaf(ubyte_val<1>(t0), c.x, s);
    s = fmaf(ubyte_val<2>(t0), a.y, s);
    s = fmaf(ubyte_val<3>(t0), c.y, s);
    s = fmaf(ubyte_val<0>(t1), a.z, s);
    s = fmaf(ubyte_val<1>(t1), c.z, s);
    s = fmaf(ubyte_val<2>(t1), a.w, s);
    s = fmaf(ubyte_val<3>(t1), c.w, s);
    return s;
}

__device__ __forceinline__ float mxfp4_part_dot(u32 q, const float* xb, int p) {
    return mxfp4_part_dot4(q, *(const float4*)(xb + 4 * p), *(const float4*)(xb + 16 + 4 * p));
}

// Q8_0 part-dot: values 8p..8p+7 (signed bytes, made unsigned by flipping the top bit, then
// decoded with the exponent trick).
__device__ __forceinline__ float q8_part_dot(int2 q, const float* xb, int p) {
    float4 a = *(const float4*)(xb + 8 * p);
    float4 c = *(const float4*)(xb + 8 * p + 4);
    u32 u0 = (u32)q.x ^ 0x80808080u, u1 = (u32)q.y ^ 0x80808080u;
    float s = ubyte_val<0>(u0) * a.x;
    s = fmaf(ubyte_val<1>(u0), a.y, s);
    s = fmaf(ubyte_val<2>(u0), a.z, s);
    s = fmaf(ubyte_val<3>(u0), a.w, s);
    s = fmaf(ubyte_val<0>(u1), c.x, s);
    s = fmaf(ubyte_val<1>(u1), c.y, s);
    s = fmaf(ubyte_val<2>(u1), c.z, s);
    s = fmaf(ubyte_val<3>(u1), c.w, s);
    return s;
}

#define FU 4  // steps of 8 blocks whose loads are issued before use

// Row `row` (global row index into W of nbk blocks per row) dotted with R rows of x (stride k).
template <int TYPE, int R>
__device__ __forceinline__ void row_dot_f(const u8* w, i64 nb, i64 row, int nbk, const float* x,
                                          int k, int t, float* acc) {
    int lane = threadIdx.x & 31, p = lane & 3, bl = lane >> 2;
    const u8* sc = TYPE == T_Q8_0 ? w + nb * 32 : w + nb * 16;
    for (int kb0 = bl; kb0 < nbk; kb0 += 8 * FU) {
        int2 q[FU];
        float d[FU];
#pragma unroll
        for (int u = 0; u < FU; ++u) {
            int kb = kb0 + 8 * u;
            if (kb < nbk) {
                i64 bi = row * nbk + kb;
                if (TYPE == T_Q8_0) {
                    q[u] = __ldg((const int2*)(w + bi * 32) + p);
                    d[u] = h2f(__ldg((const u16*)sc + bi));
                } else {
                    q[u].x = __ldg((const int*)(w + bi * 16) + p);
                    d[u] = 0.5f * e8m0_to_f32(__ldg(sc + bi));
                }
            }
        }
        // The weights are never written: only x waits for the previous kernel (a no-op
        // after the first step, and when this kernel was launched without the attribute).
        GRID_DEP_WAIT();
#pragma unroll
        for (int u = 0; u < FU; ++u) {
            int kb = kb0 + 8 * u;
            if (kb < nbk) {
#pragma unroll
                for (int r = 0; r < R; ++r) {
                    if (r < t) {
                        const float* xb = x + (i64)r * k + kb * 32;
                        float s = TYPE == T_Q8_0 ? q8_part_dot(q[u], xb, p)
                                                 : mxfp4_part_dot((u32)q[u].x, xb, p);
                        acc[r] += s * d[u];
                    }
                }
            }
        }
    }
}

template <int TYPE, int R>
__device__ __forceinline__ void gemv_f(const float* x, int t, int k, const u8* w, i64 nb,
                                       const u8* bias, int btype, float* y, int n_out) {
    int n = blockIdx.x * 8 + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (n >= n_out) return;
    float acc[R];
#pragma unroll
    for (int r = 0; r < R; ++r) acc[r] = 0.f;
    // The bias is never written: loaded before the product (and its wait), so no round trip
    // follows the sums.
    float b = bias_at(bias, btype, n);
    row_dot_f<TYPE, R>(w, nb, n, k >> 5, x, k, t, acc);
#pragma unroll
    for (int r = 0; r < R; ++r) {
        if (r < t) {
            float s = warp_sum(acc[r]);
            if (lane == 0) y[(i64)r * n_out + n] = s + b;
        }
    }
}

// grid ceil(n_out / 8), block 256.
#define GEMVF_ENTRY(NAME, TYPE, R)                                                              \
    extern "C" __global__ void __launch_bounds__(256) NAME(                                   \
        const float* x, int t, int k, const u8* w, i64 nb, const u8* bias, int btype, float* y, \
        int n_out) { GRID_DEP_LAUNCH();                                                       \
        gemv_f<TYPE, R>(x, t, k, w, nb, bias, btype, y, n_out);                               \
    }
GEMVF_ENTRY(gemvf_q8_0, T_Q8_0, MAX_ROWS)
GEMVF_ENTRY(gemvf_mxfp4, T_MXFP4, MAX_ROWS)
GEMVF_ENTRY(gemvf_q8_0_r1, T_Q8_0, 1)
GEMVF_ENTRY(gemvf_mxfp4_r1, T_MXFP4, 1)

// Two rows of two matrices of the same shape (the MoE gate and up projections) dotted with
// one row of x in a single pass, so both matrices' loads are in flight together.
__device__ __forceinline__ void row_dot2_mxfp4(const u8* wa, i64 nba, const u8* wb, i64 nbb,
                                               i64 row, int nbk, const float* x, float& acc_a,
                                               float& acc_b) {
    int lane = threadIdx.x & 31, p = lane & 3, bl = lane >> 2;
    const u8* sa = wa + nba * 16;
    const u8* sb = wb + nbb * 16;
    for (int kb0 = bl; kb0 < nbk; kb0 += 8 * FU) {
        u32 qa[FU], qb[FU];
        u32 ea[FU], eb[FU];
#pragma unroll
        for (int u = 0; u < FU; ++u) {
            int kb = kb0 + 8 * u;
            if (kb < nbk) {
                i64 bi = row * nbk + kb;
                qa[u] = __ldg((const u32*)(wa + bi * 16) + p);
                qb[u] = __ldg((const u32*)(wb + bi * 16) + p);
                ea[u] = __ldg(sa + bi);
                eb[u] = __ldg(sb + bi);
            }
        }
#pragma unroll
        for (int u = 0; u < FU; ++u) {
            int kb = kb0 + 8 * u;
            if (kb < nbk) {
                const float* xb = x + kb * 32;
                acc_a += mxfp4_part_dot(qa[u], xb, p) * (0.5f * e8m0_to_f32(ea[u]));
                acc_b += mxfp4_part_dot(qb[u], xb, p) * (0.5f * e8m0_to_f32(eb[u]));
            }
        }
    }
}

// The loads of F steps (blocks kb0, kb0 + 8, ...) of R rows (block offsets rows[r]) of NM
// MXFP4 matrices: word p of each block's nibbles into q, its E8M0 scale into e. Used by the f32
// decode kernels (and, with other F, by bench/micro/moe_variants.cu).
template <int NM, int R, int F = FU>
__device__ __forceinline__ void mxfp4_rows_load(const u8* const* w, const i64* nb,
                                                const i64 (&rows)[R], int kb0, int nbk, int p,
                                                u32 (&q)[F][NM][R], u32 (&e)[F][NM][R]) {
#pragma unroll
    for (int u = 0; u < F; ++u) {
        int kb = kb0 + 8 * u;
        if (kb < nbk) {
#pragma unroll
            for (int m = 0; m < NM; ++m)
#pragma unroll
                for (int r = 0; r < R; ++r) {
                    i64 bi = rows[r] + kb;
                    q[u][m][r] = __ldg((const u32*)(w[m] + bi * 16) + p);
                    e[u][m][r] = __ldg(w[m] + nb[m] * 16 + bi);
                }
        }
    }
}

// R rows (row0 .. row0 + R - 1, each clamped to last_row) of NM MXFP4 matrices of the same
// shape dotted with one row of x: the loads of every row and matrix for FU steps are issued
// before any is used, and each x value loaded serves all R * NM rows. acc[m * R + r].
template <int NM, int R>
__device__ __forceinline__ void rows_dot_mxfp4(const u8* const* w, const i64* nb, i64 row0,
                                               i64 last_row, int nbk, const float* x,
                                               float* acc) {
    int lane = threadIdx.x & 31, p = lane & 3, bl = lane >> 2;
    i64 rows[R];
#pragma unroll
    for (int r = 0; r < R; ++r) rows[r] = min(row0 + r, last_row) * nbk;
    for (int kb0 = bl; kb0 < nbk; kb0 += 8 * FU) {
        u32 q[FU][NM][R], e[FU][NM][R];
        mxfp4_rows_load<NM, R>(w, nb, rows, kb0, nbk, p, q, e);
#pragma unroll
        for (int u = 0; u < FU; ++u) {
            int kb = kb0 + 8 * u;
            if (kb < nbk) {
                const float* xb = x + kb * 32;
                float4 a = __ldg((const float4*)(xb + 4 * p));
                float4 c = __ldg((const float4*)(xb + 16 + 4 * p));
#pragma unroll
                for (int m = 0; m < NM; ++m)
#pragma unroll
                    for (int r = 0; r < R; ++r)
                        acc[m * R + r] += mxfp4_part_dot4(q[u][m][r], a, c) *
                                          (0.5f * e8m0_to_f32(e[u][m][r]));
            }
        }
    }
}

// Three matrices' arguments (weight, its block count, bias or null, bias type, output, rows,
// blocks) for the kernels that run up to three products of one input in one launch.
#define MAT3_ARGS(I) const u8 *w##I, i64 nb##I, const u8 *b##I, int bt##I, float *y##I, int n##I, int nblk##I
// The matrix of block blockIdx.x among three (MAT3_ARGS): declares w, nb, bias, bt, y, n_out and
// b, the block's index within its matrix. Selects, not an indexed array: the arguments stay in
// registers.
#define MAT3_SELECT()                                                                          \
    int b = blockIdx.x;                                                                       \
    bool m1 = b >= nblk0, m2 = b >= nblk0 + nblk1;                                            \
    const u8* w = m2 ? w2 : (m1 ? w1 : w0);                                                   \
    i64 nb = m2 ? nb2 : (m1 ? nb1 : nb0);                                                     \
    const u8* bias = m2 ? b2 : (m1 ? b1 : b0);                                                \
    int bt = m2 ? bt2 : (m1 ? bt1 : bt0);                                                     \
    float* y = m2 ? y2 : (m1 ? y1 : y0);                                                      \
    int n_out = m2 ? n2 : (m1 ? n1 : n0);                                                     \
    b -= m2 ? nblk0 + nblk1 : (m1 ? nblk0 : 0)

// Up to three Q8_0 or MXFP4 matrices with the same k (the q, k and v projections) in one
// launch: blocks [0, nblk0) run matrix 0, the next nblk1 matrix 1, the rest matrix 2; each
// block 8 output rows, as gemvf_*. Per matrix: weight, its block count, bias (or null), bias
// type, output, rows, blocks. grid nblk0 + nblk1 + nblk2, block 256.
#define GEMVF3_ENTRY(NAME, TYPE, R)                                                             \
    extern "C" __global__ void __launch_bounds__(256) NAME(                                   \
        const float* x, int t, int k, MAT3_ARGS(0), MAT3_ARGS(1), MAT3_ARGS(2)) {             \
        GRID_DEP_LAUNCH();                                                                    \
        MAT3_SELECT();                                                                        \
        int n = b * 8 + (threadIdx.x >> 5);                                                   \
        int lane = threadIdx.x & 31;                                                          \
        if (n >= n_out) return;                                                               \
        float acc[R];                                                                         \
        for (int r = 0; r < R; ++r) acc[r] = 0.f;                                             \
        float bv = bias_at(bias, bt, n); /* before the product, as gemv_f */                  \
        row_dot_f<TYPE, R>(w, nb, n, k >> 5, x, k, t, acc);                                   \
        for (int r = 0; r < R; ++r) {                                                         \
            if (r < t) {                                                                      \
                float s = warp_sum(acc[r]);                                                   \
                if (lane == 0) y[(i64)r * n_out + n] = s + bv;                                \
            }                                                                                 \
        }                                                                                     \
    }
GEMVF3_ENTRY(gemvf3_q8_0, T_Q8_0, MAX_ROWS)
GEMVF3_ENTRY(gemvf3_mxfp4, T_MXFP4, MAX_ROWS)
GEMVF3_ENTRY(gemvf3_q8_0_r1, T_Q8_0, 1)
GEMVF3_ENTRY(gemvf3_mxfp4_r1, T_MXFP4, 1)

// ---- The decode step's q/k/v products with RoPE applied as they are written: a launch fewer
// per layer than gemvf3_*_r1 then rope_qk ----

// One output row of a one-token product, before the warp sum: this lane's part of row_dot_f,
// and in *b the bias (loaded before the product, as gemv_f).
template <int TYPE>
__device__ __forceinline__ float gemv_row_r1_part(const float* x, int k, const u8* w, i64 nb,
                                                 const u8* bias, int btype, int n, float* b) {
    *b = bias_at(bias, btype, n);
    float acc[1] = {0.f};
    row_dot_f<TYPE, 1>(w, nb, n, k >> 5, x, k, 1, acc);
    return acc[0];
}

// q, k, v of one token as gemvf3_*_r1, with NEOX RoPE applied to matrices 0 (q) and 1 (k) as
// they are written, from the position's cos/sin table cs [2 half] (rope_cs; the arithmetic of
// rope_qk). In a roped matrix block b holds head b / (half / 4) and its warps the rotation pairs
// (i, i + half) of four consecutive i, so a pair meets in shared memory; half = head_dim / 2
// must be a multiple of 4 and every roped matrix hold whole heads. grid nblk0 + nblk1 + nblk2,
// block 256.
template <int TYPE>
__device__ __forceinline__ void gemv3_rope(const float* x, int k, const u8* w, i64 nb,
                                           const u8* bias, int bt, float* y, int n_out, int b,
                                           bool roped, int head_dim, const float* cs) {
    __shared__ float pairv[8];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (!roped) {
        int n = b * 8 + warp;
        if (n >= n_out) return;
        float bv;
        float part = gemv_row_r1_part<TYPE>(x, k, w, nb, bias, bt, n, &bv);
        float s = warp_sum(part) + bv;
        if (lane == 0) y[n] = s;
        return;
    }
    int half = head_dim >> 1, per_head = half >> 2;
    int i = (b % per_head) * 4 + (warp & 3);
    int n = (b / per_head) * head_dim + i + (warp >> 2) * half;
    float bv;
    float part = gemv_row_r1_part<TYPE>(x, k, w, nb, bias, bt, n, &bv);
    // The cos/sin pair is written by an earlier kernel (rope_cs): read after the product's
    // wait, before the sums and the barrier.
    float cf = cs[i], sf = cs[half + i];
    float s = warp_sum(part) + bv;
    if (lane == 0) pairv[warp] = s;
    __syncthreads();
    if (warp < 4 && lane == 0) rope_rotate(pairv[warp], pairv[warp + 4], cf, sf, y[n], y[n + half]);
}

#define GEMVF3_ROPE_ENTRY(NAME, TYPE)                                                          \
    extern "C" __global__ void __launch_bounds__(256) NAME(                                   \
        const float* x, int k, MAT3_ARGS(0), MAT3_ARGS(1), MAT3_ARGS(2), int head_dim,         \
        const float* cs) {                                                                    \
        GRID_DEP_LAUNCH();                                                                    \
        MAT3_SELECT();                                                                        \
        gemv3_rope<TYPE>(x, k, w, nb, bias, bt, y, n_out, b, !m2, head_dim, cs);               \
    }
GEMVF3_ROPE_ENTRY(gemvf3_q8_0_r1_rope, T_Q8_0)
GEMVF3_ROPE_ENTRY(gemvf3_mxfp4_r1_rope, T_MXFP4)

// ---- Int8 tensor-core decode products (t <= 2 for the dense GEMV; any t for the MoE) ----
// The activation row is split into four int8 planes with one scale s per row:
// x ~= s (p0 + p1 / 254 + p2 / 254^2 + p3 / 254^3), exact to ~2^-31 of the row's largest value
// (far below f32 rounding of the reference), so the int8 tensor cores (mma m16n8k32 s8, exact
// integer sums) give f32-grade products while a weight byte costs a fraction of the
// instructions of the f32 path. Columns of the B operand are the planes (4 per token); each
// warp's tile is 16 weight rows x one 32-block of k.
// Fragment layout of m16n8k32 (g = lane >> 2, c = lane & 3): A regs {row g k 4c..4c+3, row g+8
// k 4c.., row g k 16+4c.., row g+8 k 16+4c..}, B regs {k 4c..4c+3, k 16+4c..} of column g,
// C {(g, 2c), (g, 2c+1), (g+8, 2c), (g+8, 2c+1)}. The k order inside a block is ours to choose
// (A and B permuted alike): thread c takes bytes 8c..8c+7 of a Q8_0 block, bytes 4c..4c+3 of an
// MXFP4 block (whose elements 4c.., 4c+16.. interleave: the planes of MXFP4 products are stored
// with element e of a block at byte 2 (e & 15) + (e >> 4)).

#define PLANE_R 254.0f

__device__ __forceinline__ void mma_s8(int (&d)[4], u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
    asm("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
        "{%8, %9}, {%10, %10, %10, %10};"
        : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1), "r"(0));
}

// v * inv as four int8 planes packed in the bytes of one word (byte p = plane p).
__device__ __forceinline__ u32 planes4(float v, float inv) {
    float s = fminf(fmaxf(v * inv, -127.f), 127.f);
    float a = rintf(s);
    float r = (s - a) * PLANE_R;
    float b = rintf(r);
    r = (r - b) * PLANE_R;
    float c = rintf(r);
    float d = rintf((r - c) * PLANE_R);
    return ((u32)(int)a & 255u) | (((u32)(int)b & 255u) << 8) | (((u32)(int)c & 255u) << 16) |
           (((u32)(int)d & 255u) << 24);
}

// Signed doubled-E2M1 bytes of an MXFP4 word (bytes j..j+3 of a block): t0 = elements (j,
// j+16, j+1, j+17), t1 = (j+2, j+18, j+3, j+19).
__device__ __forceinline__ void mxfp4_s8(u32 q, u32& t0, u32& t1) {
    u32 s0 = q & 0x7777u, s1 = (q >> 16) & 0x7777u;
    u32 p0 = 0x3210u | ((q & 0x8888u) >> 1);
    u32 p1 = 0x3210u | ((q >> 17) & 0x4444u);
    t0 = __byte_perm(__byte_perm(KV_0, KV_1, s0), __byte_perm(KV_2, KV_3, s0), p0);
    t1 = __byte_perm(__byte_perm(KV_0, KV_1, s1), __byte_perm(KV_2, KV_3, s1), p1);
}

// The plane sums of lane c: c even holds planes (0, 1) of its token, c odd planes (2, 3).
__device__ __forceinline__ float plane_combine(int hi, int lo) { return (float)(hi * 254 + lo); }
__device__ __forceinline__ float plane_factor(int c) {
    return (c & 1) ? 1.0f / (PLANE_R * PLANE_R * PLANE_R) : 1.0f / PLANE_R;
}

// Block-wide max of |x| over n values (all threads get it). red: 8 floats of shared memory.
__device__ __forceinline__ float block_amax(const float* x, int n, float* red) {
    float m = 0.f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) m = fmaxf(m, fabsf(x[i]));
    m = warp_max(m);
    __syncthreads();
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = m;
    __syncthreads();
    m = 0.f;
    for (int i = 0; i < (int)(blockDim.x >> 5); ++i) m = fmaxf(m, red[i]);
    return m;
}

#define MQ_U 16  // k-blocks per warp whose loads are issued together (GEMV)

// Q8_0 weights times t <= 2 activation rows, up to three matrices of the same k (as gemvf3):
// blocks [0, nblk0) take 16-row tiles of matrix 0, and so on. The block quantizes x into
// shared memory planes (dynamic: 2 * 4 * (k + 32) bytes), its 8 warps split the k-blocks of
// the tile, partial sums meet in shared memory in warp order (deterministic). block 256.
extern "C" __global__ void __launch_bounds__(256) gemv3_q8_0_mma(
    const float* x, int t, int k, MAT3_ARGS(0), MAT3_ARGS(1), MAT3_ARGS(2)) {
    GRID_DEP_ENTRY();
    extern __shared__ int4 mq_smem[];
    __shared__ float red[8];
    __shared__ float xscale[2];
    __shared__ float part[8][2][16];
    u8* xp = (u8*)mq_smem;
    int stride = k + 32;  // plane stride: 4 planes of one token fall in different banks
    MAT3_SELECT();
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
    int nbk = k >> 5;
    int r0 = b * 16;
    i64 ra = (i64)min(r0 + g, n_out - 1) * nbk, rb = (i64)min(r0 + g + 8, n_out - 1) * nbk;
    const u16* sc = (const u16*)(w + nb * 32);
    int per = (nbk + 7) >> 3;
    int kb_lo = warp * per, kb_hi = min(nbk, kb_lo + per);
    // The first weight loads go out before x is quantized (they do not depend on it).
    uint2 qa[MQ_U], qb[MQ_U];
    u32 sa[MQ_U], sb[MQ_U];
#pragma unroll
    for (int u = 0; u < MQ_U; ++u) {
        int kb = kb_lo + u;
        if (kb < kb_hi) {
            qa[u] = __ldg((const uint2*)(w + (ra + kb) * 32) + c);
            qb[u] = __ldg((const uint2*)(w + (rb + kb) * 32) + c);
            sa[u] = __ldg(sc + ra + kb);
            sb[u] = __ldg(sc + rb + kb);
        }
    }
    for (int r = 0; r < t; ++r) {
        const float* xr = x + (i64)r * k;
        float amax = block_amax(xr, k, red);
        float inv = amax > 0.f ? 127.f / amax : 0.f;
        if (threadIdx.x == 0) xscale[r] = amax / 127.f;
        for (int i = threadIdx.x; i < k; i += blockDim.x) {
            u32 p = planes4(xr[i], inv);
#pragma unroll
            for (int pl = 0; pl < 4; ++pl) xp[(r * 4 + pl) * stride + i] = (u8)(p >> (8 * pl));
        }
    }
    __syncthreads();
    int tok = g >> 2, pl = g & 3;
    bool bval = tok < t;
    const u8* xb = xp + (tok * 4 + pl) * stride + 8 * c;
    float acc0 = 0.f, acc1 = 0.f;
    for (int kb0 = kb_lo; kb0 < kb_hi; kb0 += MQ_U) {
        if (kb0 != kb_lo) {
#pragma unroll
            for (int u = 0; u < MQ_U; ++u) {
                int kb = kb0 + u;
                if (kb < kb_hi) {
                    qa[u] = __ldg((const uint2*)(w + (ra + kb) * 32) + c);
                    qb[u] = __ldg((const uint2*)(w + (rb + kb) * 32) + c);
                    sa[u] = __ldg(sc + ra + kb);
                    sb[u] = __ldg(sc + rb + kb);
                }
            }
        }
#pragma unroll
        for (int u = 0; u < MQ_U; ++u) {
            int kb = kb0 + u;
            if (kb < kb_hi) {
                uint2 bx = bval ? *(const uint2*)(xb + kb * 32) : make_uint2(0u, 0u);
                int d[4];
                mma_s8(d, qa[u].x, qb[u].x, qa[u].y, qb[u].y, bx.x, bx.y);
                acc0 = fmaf(plane_combine(d[0], d[1]), h2f((u16)sa[u]), acc0);
                acc1 = fmaf(plane_combine(d[2], d[3]), h2f((u16)sb[u]), acc1);
            }
        }
    }
    float f = plane_factor(c);
    acc0 *= f;
    acc1 *= f;
    acc0 += __shfl_xor_sync(0xffffffffu, acc0, 1);
    acc1 += __shfl_xor_sync(0xffffffffu, acc1, 1);
    if ((c & 1) == 0) {
        part[warp][c >> 1][g] = acc0;
        part[warp][c >> 1][g + 8] = acc1;
    }
    __syncthreads();
    if (threadIdx.x < 32) {
        int r = threadIdx.x >> 4, i = threadIdx.x & 15, n = r0 + i;
        if (r < t && n < n_out) {
            float s = 0.f;
            for (int ww = 0; ww < 8; ++ww) s += part[ww][r][i];
            y[(i64)r * n_out + n] = s * xscale[r] + bias_at(bias, bt, n);
        }
    }
}
