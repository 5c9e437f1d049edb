// The MoE experts on Blackwell's block-scaled tensor cores (sm_120a / sm_121a): W4A8,
//   mma.sync.aligned.kind::mxf8f6f4.block_scale.scale_vec::1X.m16n8k32.row.col.f32.e2m1.e4m3.f32.ue8m0
// A = MXFP4 weights (16 output rows), read from the uploaded ggml blocks unchanged (see
// fp4/pack.rs: ggml's nibble order is the fragment order, the E8M0 byte is SF_A); B = the
// activations quantized to MXFP8 (E4M3, one UE8M0 per 32) by fp4_quant_mxfp8, 8 tokens per MMA.
// Compiled as its own NVRTC program (common.cuh, then this file), only for Blackwell, except
// with GPTOSS_FP4_EMULATE defined: then the MMA is a shuffle-based software model of the same
// PTX semantics, so the rest of the path can be run and tested on any sm_89+ GPU.
//
// Every device function here has a host mirror in fp4/pack.rs, tested through the CPU model
// of the instruction (fp4/model.rs).
// For sm_100a / sm_103a the program is compiled with GPTOSS_FP4_TCGEN05 defined: the mma.sync
// matmul kernels drop out and fp4_tcgen05.cu supplies tcgen05.mma ones under the same names.

#define FP4_NT 4  // 8-column MMA tiles per warp pass (32 token slots)

__device__ __forceinline__ float fp4_swiglu(float gate, float up) {
    float g = fminf(gate, 7.0f);
    float u = fminf(fmaxf(up, -7.0f), 7.0f);
    return g / (1.0f + expf(-1.702f * g)) * (u + 1.0f);
}

#ifndef GPTOSS_FP4_TCGEN05  // the sm_100a program brings its own matmul kernels (fp4_tcgen05.cu)
#ifdef GPTOSS_FP4_EMULATE
__device__ __forceinline__ float fp4_e4m3_to_f32(u32 b) {
    u32 e = (b >> 3) & 15u, m = b & 7u;
    float v = e == 0 ? (float)m * 0.001953125f : (float)(8u + m) * __uint_as_float((e + 117u) << 23);
    return (b & 0x80u) ? -v : v;
}
// The PTX semantics (fp4/model.rs), lane by lane: D[m][n] += sum_k A[m][k] SF_A[m] B[k][n] SF_B[n]
// with A row m in lanes 4 (m % 8) + t (registers m / 8 and 2 + m / 8), B column n in lanes
// 4 n + t, SF_A[m] in lane 4 (m % 8) + m / 8, SF_B[n] in lane 4 n.
__device__ __forceinline__ void fp4_mma(float (&d)[4], const u32 (&a)[4], const u32 (&b)[2], u32 sfa, u32 sfb) {
    int lane = threadIdx.x & 31, g = lane >> 2, tig = lane & 3;
    float sa0 = e8m0_to_f32(__shfl_sync(0xffffffffu, sfa, 4 * g) & 255u);
    float sa1 = e8m0_to_f32(__shfl_sync(0xffffffffu, sfa, 4 * g + 1) & 255u);
    float sb0 = e8m0_to_f32(__shfl_sync(0xffffffffu, sfb, 8 * tig) & 255u);
    float sb1 = e8m0_to_f32(__shfl_sync(0xffffffffu, sfb, 8 * tig + 4) & 255u);
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
    for (int t = 0; t < 4; ++t) {
        u32 A[4], B0[2], B1[2];
        for (int r = 0; r < 4; ++r) A[r] = __shfl_sync(0xffffffffu, a[r], 4 * g + t);
        for (int r = 0; r < 2; ++r) {
            B0[r] = __shfl_sync(0xffffffffu, b[r], 8 * tig + t);
            B1[r] = __shfl_sync(0xffffffffu, b[r], 8 * tig + 4 + t);
        }
        for (int h = 0; h < 2; ++h) {      // k = 4t + i (h = 0) or 16 + 4t + i (h = 1)
            for (int i = 0; i < 4; ++i) {
                float a0 = e2m1_to_f32((A[2 * h] >> (8 * i + 2)) & 15u);
                float a1 = e2m1_to_f32((A[2 * h + 1] >> (8 * i + 2)) & 15u);
                float b0 = fp4_e4m3_to_f32((B0[h] >> (8 * i)) & 255u);
                float b1 = fp4_e4m3_to_f32((B1[h] >> (8 * i)) & 255u);
                acc[0] += a0 * b0;
                acc[1] += a0 * b1;
                acc[2] += a1 * b0;
                acc[3] += a1 * b1;
            }
        }
    }
    d[0] += acc[0] * sa0 * sb0;
    d[1] += acc[1] * sa0 * sb1;
    d[2] += acc[2] * sa1 * sb0;
    d[3] += acc[3] * sa1 * sb1;
}
#else
__device__ __forceinline__ void fp4_mma(float (&d)[4], const u32 (&a)[4], const u32 (&b)[2], u32 sfa, u32 sfb) {
    asm volatile(
        "mma.sync.aligned.kind::mxf8f6f4.block_scale.scale_vec::1X.m16n8k32.row.col.f32.e2m1.e4m3.f32.ue8m0 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3}, %10, {0, 0}, %11, {0, 0};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "r"(sfa), "r"(sfb));
}
#endif

// A registers and scale-a-data of this lane for weight rows row0 .. row0 + 16 (flattened rows
// of `nbk` blocks; rows from `rows_left` on are zero), k-block kb. Mirror: pack::a_fragment.
__device__ __forceinline__ void fp4_load_a(const u8* w, i64 nb, i64 row0, int rows_left, int nbk, int kb,
                                           int lane, u32 (&a)[4], u32& sfa) {
    int g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        int m = g + 8 * half;
        u32 q = 0;
        if (m < rows_left) q = *(const u32*)(w + ((row0 + m) * nbk + kb) * 16 + 4 * t);
        a[half] = (q << 2) & 0x3c3c3c3cu;      // low nibbles: elements 4t + i
        a[half + 2] = (q >> 2) & 0x3c3c3c3cu;  // high nibbles: elements 16 + 4t + i
    }
    int m = g + 8 * (lane & 1);
    sfa = m < rows_left ? (u32)w[nb * 16 + (row0 + m) * nbk + kb] : 127u;
}

// B registers and scale-b-data of this lane: column `row` (an MXFP8 row of `kdim`, or -1 for an
// empty column), k-block kb. Mirror: pack::b_fragment.
__device__ __forceinline__ void fp4_load_b(const u8* xq, const u8* xs, int row, int kdim, int kb, int lane,
                                           u32 (&b)[2], u32& sfb) {
    int t = lane & 3;
    if (row >= 0) {
        const u8* p = xq + (i64)row * kdim + kb * 32 + 4 * t;
        b[0] = *(const u32*)p;
        b[1] = *(const u32*)(p + 16);
        sfb = xs[(i64)row * (kdim >> 5) + kb];
    } else {
        b[0] = 0u;
        b[1] = 0u;
        sfb = 127u;
    }
}

#endif  // GPTOSS_FP4_TCGEN05

// Pairs (token, slot) grouped by expert, each group in pair order: offs[e] .. offs[e + 1] of
// `order`. grid 1, block 256 (n_exp <= 256).
extern "C" __global__ void fp4_group(const int* ids, int pairs, int n_exp, int* offs, int* order) {
    __shared__ int start[257];
    int e = threadIdx.x;
    int c = 0;
    if (e < n_exp)
        for (int p = 0; p < pairs; ++p) c += ids[p] == e;
    start[e + 1] = c;
    __syncthreads();
    if (e == 0) {
        start[0] = 0;
        for (int i = 0; i < n_exp; ++i) start[i + 1] += start[i];
        for (int i = 0; i <= n_exp; ++i) offs[i] = start[i];
    }
    __syncthreads();
    if (e < n_exp) {
        int pos = start[e];
        for (int p = 0; p < pairs; ++p)
            if (ids[p] == e) order[pos++] = p;
    }
}

// f32 -> MXFP8: one warp per block of 32 values. E is the smallest power of two with
// amax <= 448 * 2^(E - 127) (448 = 1.75 * 2^8), clamped to [1, 253]. Mirror: pack::quantize_mxfp8.
// grid ceil(nblk / 8), block 256.
extern "C" __global__ void fp4_quant_mxfp8(const float* x, i64 nblk, u8* q, u8* s) {
    i64 b = (i64)blockIdx.x * 8 + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (b >= nblk) return;
    float v = x[b * 32 + lane];
    u32 bits = __float_as_uint(warp_max(fabsf(v)));
    int sh = (int)(bits >> 23) - 135 + ((bits & 0x7fffffu) > 0x600000u ? 1 : 0);
    int e = min(max(sh + 127, 1), 253);
    float y = v * __uint_as_float((u32)(254 - e) << 23);
    u16 pair;
    asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(pair) : "f"(y), "f"(y));
    q[b * 32 + lane] = (u8)(pair & 0xffu);
    if (lane == 0) s[b] = (u8)e;
}

#ifndef GPTOSS_FP4_TCGEN05
// Gate and up projections plus SwiGLU for every (token, slot) pair, grouped by expert: block
// (x, e) covers features x * 64 .. + 64 of expert e (warp w: 16 of them) for all of e's pairs,
// 32 at a time. xq/xs: the tokens' activations as MXFP8. h[pair][f].
// grid (ceil(n_ff / 64), n_exp), block 128.
extern "C" __global__ void __launch_bounds__(128) fp4_moe_gate_up(
    const u8* xq, const u8* xs, int d_model, const u8* wg, i64 nbg, const u8* wu, i64 nbu, const u8* bg,
    int bgt, const u8* bu, int but, const int* offs, const int* order, int k, int n_ff, float* h) {
    int e = blockIdx.y;
    int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    int f0 = blockIdx.x * 64 + (threadIdx.x >> 5) * 16;
    if (f0 >= n_ff) return;
    int p0 = offs[e], p1 = offs[e + 1];
    int nbk = d_model >> 5, rows_left = n_ff - f0;
    i64 row0 = (i64)e * n_ff + f0;
    for (int c0 = p0; c0 < p1; c0 += 8 * FP4_NT) {
        int tok[FP4_NT];
        float dg[FP4_NT][4], du[FP4_NT][4];
#pragma unroll
        for (int j = 0; j < FP4_NT; ++j) {
            int c = c0 + 8 * j + g;
            tok[j] = c < p1 ? order[c] / k : -1;
#pragma unroll
            for (int i = 0; i < 4; ++i) dg[j][i] = du[j][i] = 0.f;
        }
        for (int kb = 0; kb < nbk; ++kb) {
            u32 ag[4], au[4], sag, sau;
            fp4_load_a(wg, nbg, row0, rows_left, nbk, kb, lane, ag, sag);
            fp4_load_a(wu, nbu, row0, rows_left, nbk, kb, lane, au, sau);
#pragma unroll
            for (int j = 0; j < FP4_NT; ++j) {
                u32 b[2], sb;
                fp4_load_b(xq, xs, tok[j], d_model, kb, lane, b, sb);
                fp4_mma(dg[j], ag, b, sag, sb);
                fp4_mma(du[j], au, b, sau, sb);
            }
        }
#pragma unroll
        for (int j = 0; j < FP4_NT; ++j) {
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                int m = g + 8 * (i >> 1), c = c0 + 8 * j + 2 * t + (i & 1);
                if (c < p1 && m < rows_left) {
                    int pair = order[c];
                    i64 bi = row0 + m;
                    h[(i64)pair * n_ff + f0 + m] =
                        fp4_swiglu(dg[j][i] + wload(bg, bgt, 0, bi), du[j][i] + wload(bu, but, 0, bi));
                }
            }
        }
    }
}

// Down projection per pair, weighted by its router weight: yp[pair][d] = w * (W_e h + b).
// hq/hs: h as MXFP8 rows indexed by pair. grid (ceil(d_model / 64), n_exp), block 128.
extern "C" __global__ void __launch_bounds__(128) fp4_moe_down(
    const u8* hq, const u8* hs, int n_ff, const u8* wd, i64 nbd, const u8* bd, int bdt, const int* offs,
    const int* order, const float* wts, int d_model, float* yp) {
    int e = blockIdx.y;
    int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    int d0 = blockIdx.x * 64 + (threadIdx.x >> 5) * 16;
    if (d0 >= d_model) return;
    int p0 = offs[e], p1 = offs[e + 1];
    int nbk = n_ff >> 5, rows_left = d_model - d0;
    i64 row0 = (i64)e * d_model + d0;
    for (int c0 = p0; c0 < p1; c0 += 8 * FP4_NT) {
        int pr[FP4_NT];
        float acc[FP4_NT][4];
#pragma unroll
        for (int j = 0; j < FP4_NT; ++j) {
            int c = c0 + 8 * j + g;
            pr[j] = c < p1 ? order[c] : -1;
#pragma unroll
            for (int i = 0; i < 4; ++i) acc[j][i] = 0.f;
        }
        for (int kb = 0; kb < nbk; ++kb) {
            u32 a[4], sa;
            fp4_load_a(wd, nbd, row0, rows_left, nbk, kb, lane, a, sa);
#pragma unroll
            for (int j = 0; j < FP4_NT; ++j) {
                u32 b[2], sb;
                fp4_load_b(hq, hs, pr[j], n_ff, kb, lane, b, sb);
                fp4_mma(acc[j], a, b, sa, sb);
            }
        }
#pragma unroll
        for (int j = 0; j < FP4_NT; ++j) {
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                int m = g + 8 * (i >> 1), c = c0 + 8 * j + 2 * t + (i & 1);
                if (c < p1 && m < rows_left) {
                    int pair = order[c];
                    yp[(i64)pair * d_model + d0 + m] = wts[pair] * (acc[j][i] + wload(bd, bdt, 0, row0 + m));
                }
            }
        }
    }
}

#endif  // GPTOSS_FP4_TCGEN05

// y[row][d] = sum over the row's k slots of yp, in slot order. grid (ceil(d_model / 256), t), block 256.
extern "C" __global__ void fp4_moe_combine(const float* yp, int k, int d_model, float* y) {
    int d = blockIdx.x * 256 + threadIdx.x, row = blockIdx.y;
    if (d >= d_model) return;
    float s = 0.f;
    for (int j = 0; j < k; ++j) s += yp[((i64)row * k + j) * d_model + d];
    y[(i64)row * d_model + d] = s;
}
