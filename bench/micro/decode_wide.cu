// EXPERIMENTS for bench/micro/decode_micro.cu, not compiled into the backend: on an H100 every
// variant here measured slower than the backend's f32 decode kernels (bench/RESULTS.md, lead
// session 13). Kept so that the measurements can be rerun.
// Wide-load decode kernels (one token): each lane owns whole 32-weight blocks (one 16-byte load
// per MXFP4 block, two per Q8_0 block), and a warp issues the loads of all its rows, up to
// 32 * NI blocks each, before it uses any, so that a warp keeps several KiB in flight (the f32
// kernels keep ~1 KiB: latency-bound at batch 1). x is quantized per 32-block into P int8
// planes in shared memory, x ~= d (p0 + p1 / 254 + p2 / 254^2), d = max|x| / 127 of the block,
// so that a block costs 8 P dp4a after a byte-table lookup of the weights: P = 3 keeps x to
// ~1e-7 of its block maximum (f32-grade products), P = 1 is llama.cpp's q8 activations.
//
// Programmatic dependent launch (sm_90): each kernel lets the next one launch at once
// (GRID_DEP_LAUNCH), and waits for the previous one (GRID_DEP_WAIT) only before it reads
// anything that kernel wrote; the dense products issue their weight loads before the wait.

#define WIDE_PLANE 254.0f

// Block b of a row (32 floats at x + 32 b) as P planes. Plane p of the row lies at
// xs + p * n, its two 16-byte halves apart (half h of block b at + h * n / 2 + 16 b), so that
// lanes reading consecutive blocks hit distinct banks. d[b] = the block's scale.
template <int P>
__device__ __forceinline__ void wide_quant_block(const float* x, int b, int n, i8* xs, float* d) {
    const float4* x4 = (const float4*)(x + (i64)b * 32);
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
    u32 wd[P][8];
#pragma unroll
    for (int i = 0; i < 8; ++i) {
#pragma unroll
        for (int p = 0; p < P; ++p) wd[p][i] = 0u;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            float s = fminf(fmaxf(v[4 * i + j] * inv, -127.f), 127.f);
#pragma unroll
            for (int p = 0; p < P; ++p) {
                float a = rintf(s);
                wd[p][i] |= ((u32)(int)a & 255u) << (8 * j);
                s = (s - a) * WIDE_PLANE;
            }
        }
    }
#pragma unroll
    for (int p = 0; p < P; ++p) {
        i8* base = xs + (i64)p * n + b * 16;
        *(int4*)base = make_int4(wd[p][0], wd[p][1], wd[p][2], wd[p][3]);
        *(int4*)(base + n / 2) = make_int4(wd[p][4], wd[p][5], wd[p][6], wd[p][7]);
    }
}

// The planes of block kb of a row quantized by wide_quant_block: xa = elements 0..15, xc =
// 16..31, per plane.
template <int P>
__device__ __forceinline__ void wide_load_x(const i8* xs, int n, int kb, int4 (&xa)[P],
                                            int4 (&xc)[P]) {
#pragma unroll
    for (int p = 0; p < P; ++p) {
        xa[p] = *(const int4*)(xs + (i64)p * n + kb * 16);
        xc[p] = *(const int4*)(xs + (i64)p * n + n / 2 + kb * 16);
    }
}

template <int P>
__device__ __forceinline__ float wide_planes(const int (&s)[P]) {
    float r = (float)s[P - 1];
#pragma unroll
    for (int p = P - 2; p >= 0; --p) r = (float)s[p] + r * (1.0f / WIDE_PLANE);
    return r;
}

// One MXFP4 block (16 bytes) times the block's planes, in units of the doubled table and of
// the block's x scale.
template <int P>
__device__ __forceinline__ float wide_dot_mxfp4(int4 q, const int4 (&xa)[P], const int4 (&xc)[P]) {
    int s[P];
#pragma unroll
    for (int p = 0; p < P; ++p) s[p] = 0;
    u32 qw[4] = {(u32)q.x, (u32)q.y, (u32)q.z, (u32)q.w};
#pragma unroll
    for (int w = 0; w < 4; ++w) {
        int2 v = mxfp4_lut8(qw[w]);
#pragma unroll
        for (int p = 0; p < P; ++p) {
            int a = w == 0 ? xa[p].x : w == 1 ? xa[p].y : w == 2 ? xa[p].z : xa[p].w;
            int c = w == 0 ? xc[p].x : w == 1 ? xc[p].y : w == 2 ? xc[p].z : xc[p].w;
            s[p] = __dp4a(v.x, a, s[p]);
            s[p] = __dp4a(v.y, c, s[p]);
        }
    }
    return wide_planes<P>(s);
}

// One Q8_0 block (w0 = values 0..15, w1 = 16..31) times the block's planes.
template <int P>
__device__ __forceinline__ float wide_dot_q8(int4 w0, int4 w1, const int4 (&xa)[P],
                                             const int4 (&xc)[P]) {
    int s[P];
#pragma unroll
    for (int p = 0; p < P; ++p) {
        int t = __dp4a(w0.x, xa[p].x, 0);
        t = __dp4a(w0.y, xa[p].y, t);
        t = __dp4a(w0.z, xa[p].z, t);
        t = __dp4a(w0.w, xa[p].w, t);
        t = __dp4a(w1.x, xc[p].x, t);
        t = __dp4a(w1.y, xc[p].y, t);
        t = __dp4a(w1.z, xc[p].z, t);
        s[p] = __dp4a(w1.w, xc[p].w, t);
    }
    return wide_planes<P>(s);
}

// Quantize `rows` rows of length n (row r at x + r * xstride) into the block's shared planes
// (row r's planes at xs + r * P * n, scales at d + r * n / 32), one thread per 32-block.
template <int P>
__device__ __forceinline__ void wide_quant_rows(const float* x, i64 xstride, int rows, int n,
                                                i8* xs, float* d) {
    int nbk = n >> 5;
    for (int b = threadIdx.x; b < rows * nbk; b += blockDim.x) {
        int r = b / nbk, kb = b - r * nbk;
        wide_quant_block<P>(x + r * xstride, kb, n, xs + (i64)r * P * n, d + r * nbk);
    }
}

// Shared memory the wide kernels need for `rows` rows of length n.
// (host side: rows * (P * n + n / 8) bytes)

// MoE gate+up, one (token, slot) pair per blockIdx.y: warp w of block b runs rows
// f0 .. f0 + R - 1, f0 = (8 b + w) R, of both matrices; h as moe_gate_up_rows.
// grid (ceil(n_ff / (8 R)), t * k), block 256, dynamic smem P * d_model + d_model / 8.
template <int R, int P, int NI>
__device__ __forceinline__ void moe_gate_up_wide(const float* x, int d_model, const u8* wg,
                                                 i64 nbg, const u8* wu, i64 nbu, const u8* bg,
                                                 int bgt, const u8* bu, int but, const int* ids,
                                                 int k, int n_ff, float* h) {
    extern __shared__ int4 wide_smem[];
    i8* xs = (i8*)wide_smem;
    float* xd = (float*)(xs + P * d_model);
    GRID_DEP_LAUNCH();
    GRID_DEP_WAIT();
    int pair = blockIdx.y, row = pair / k;
    int e = ids[pair];
    if (e < 0) return;  // another rank's expert: the whole block (one pair) has nothing to do
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int f0 = (blockIdx.x * 8 + warp) * R;
    int nbk = d_model >> 5;
    i64 base = (i64)e * n_ff;
    const u8* sg = wg + nbg * 16;
    const u8* su = wu + nbu * 16;
    float ag[R], au[R];
#pragma unroll
    for (int r = 0; r < R; ++r) ag[r] = au[r] = 0.f;
    for (int kc = 0; kc < nbk; kc += 32 * NI) {
        int4 qg[R][NI], qu[R][NI];
        u32 eg[R][NI], eu[R][NI];
#pragma unroll
        for (int r = 0; r < R; ++r) {
            i64 rb = (base + min(f0 + r, n_ff - 1)) * nbk;
#pragma unroll
            for (int i = 0; i < NI; ++i) {
                int kb = kc + lane + 32 * i;
                if (kb < nbk) {
                    qg[r][i] = __ldg((const int4*)(wg + (rb + kb) * 16));
                    qu[r][i] = __ldg((const int4*)(wu + (rb + kb) * 16));
                    eg[r][i] = __ldg(sg + rb + kb);
                    eu[r][i] = __ldg(su + rb + kb);
                }
            }
        }
        if (kc == 0) {
            wide_quant_rows<P>(x + (i64)row * d_model, 0, 1, d_model, xs, xd);
            __syncthreads();
        }
#pragma unroll
        for (int i = 0; i < NI; ++i) {
            int kb = kc + lane + 32 * i;
            if (kb < nbk) {
                int4 xa[P], xc[P];
                wide_load_x<P>(xs, d_model, kb, xa, xc);
                float dx = 0.5f * xd[kb];
#pragma unroll
                for (int r = 0; r < R; ++r) {
                    ag[r] += wide_dot_mxfp4<P>(qg[r][i], xa, xc) * (e8m0_to_f32(eg[r][i]) * dx);
                    au[r] += wide_dot_mxfp4<P>(qu[r][i], xa, xc) * (e8m0_to_f32(eu[r][i]) * dx);
                }
            }
        }
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
        float g = warp_sum(ag[r]);
        float u = warp_sum(au[r]);
        int f = f0 + r;
        if (lane == 0 && f < n_ff)
            h[(i64)pair * n_ff + f] =
                swiglu_oai(g + wload(bg, bgt, 0, base + f), u + wload(bu, but, 0, base + f));
    }
}

// MoE down with the routing-weighted sum over the k slots, as moe_down_rows (slot sums
// combined in slot order: deterministic); the block quantizes its token's k rows of h.
// grid (ceil(d_model / (R * 8 / k)), t), block 256, dynamic smem k * (P * n_ff + n_ff / 8).
template <int R, int P, int NI>
__device__ __forceinline__ void moe_down_wide(const float* h, int n_ff, const u8* wd, i64 nbd,
                                              const u8* bd, int bdt, const int* ids,
                                              const float* wts, int k, int d_model, float* y) {
    extern __shared__ int4 wide_smem[];
    __shared__ float part[8][R];
    i8* xs = (i8*)wide_smem;
    float* xd = (float*)(xs + k * P * n_ff);
    GRID_DEP_LAUNCH();
    GRID_DEP_WAIT();
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int per = 8 / k;
    int d0 = (blockIdx.x * per + warp / k) * R;
    int j = warp % k;
    int row = blockIdx.y;
    int pair = row * k + j;
    int e = ids[pair];
    bool act = e >= 0 && d0 < d_model && warp < per * k;
    int nbk = n_ff >> 5;
    i64 base = (i64)max(e, 0) * d_model;
    const u8* sd = wd + nbd * 16;
    const i8* xsj = xs + (i64)j * P * n_ff;
    const float* xdj = xd + j * nbk;
    float acc[R];
#pragma unroll
    for (int r = 0; r < R; ++r) acc[r] = 0.f;
    for (int kc = 0; kc < nbk; kc += 32 * NI) {
        int4 q[R][NI];
        u32 s[R][NI];
        if (act) {
#pragma unroll
            for (int r = 0; r < R; ++r) {
                i64 rb = (base + min(d0 + r, d_model - 1)) * nbk;
#pragma unroll
                for (int i = 0; i < NI; ++i) {
                    int kb = kc + lane + 32 * i;
                    if (kb < nbk) {
                        q[r][i] = __ldg((const int4*)(wd + (rb + kb) * 16));
                        s[r][i] = __ldg(sd + rb + kb);
                    }
                }
            }
        }
        if (kc == 0) {
            wide_quant_rows<P>(h + (i64)row * k * n_ff, n_ff, k, n_ff, xs, xd);
            __syncthreads();
        }
        if (act) {
#pragma unroll
            for (int i = 0; i < NI; ++i) {
                int kb = kc + lane + 32 * i;
                if (kb < nbk) {
                    int4 xa[P], xc[P];
                    wide_load_x<P>(xsj, n_ff, kb, xa, xc);
                    float dx = 0.5f * xdj[kb];
#pragma unroll
                    for (int r = 0; r < R; ++r)
                        acc[r] += wide_dot_mxfp4<P>(q[r][i], xa, xc) * (e8m0_to_f32(s[r][i]) * dx);
                }
            }
        }
    }
    float wt = act ? wts[pair] : 0.f;
#pragma unroll
    for (int r = 0; r < R; ++r) {
        float a = warp_sum(acc[r]);
        int d = d0 + r;
        if (lane == 0)
            part[warp][r] = act && d < d_model ? wt * (a + wload(bd, bdt, 0, base + d)) : 0.f;
    }
    __syncthreads();
    if (lane == 0 && j == 0 && d0 < d_model && warp < per * k) {
#pragma unroll
        for (int r = 0; r < R; ++r) {
            int d = d0 + r;
            if (d >= d_model) break;
            float acc_s = 0.f;
            for (int jj = 0; jj < k; ++jj) acc_s += part[warp + jj][r];
            y[(i64)row * d_model + d] = acc_s;
        }
    }
}

// Up to three Q8_0 matrices of the same k times one row of x (the q, k and v projections;
// one matrix: nblk1 = nblk2 = 0), blocks split between the matrices as gemvf3; each warp R
// rows. The weight loads of the first chunk are issued before waiting for the previous kernel.
// grid nblk0 + nblk1 + nblk2 (nblk_i = ceil(n_i / (8 R))), block 256, dynamic smem P k + k / 8.
template <int R, int P, int NI>
__device__ __forceinline__ void gemv3_wide_q8(const float* x, int k, const u8* w0, i64 nb0,
                                              const u8* b0, int bt0, float* y0, int n0,
                                              int nblk0, const u8* w1, i64 nb1, const u8* b1,
                                              int bt1, float* y1, int n1, int nblk1,
                                              const u8* w2, i64 nb2, const u8* b2, int bt2,
                                              float* y2, int n2, int nblk2) {
    extern __shared__ int4 wide_smem[];
    i8* xs = (i8*)wide_smem;
    float* xd = (float*)(xs + P * k);
    GRID_DEP_LAUNCH();
    int b = blockIdx.x;
    bool m1 = b >= nblk0, m2 = b >= nblk0 + nblk1;
    // Selects, not an indexed array: the arguments stay in registers.
    const u8* w = m2 ? w2 : (m1 ? w1 : w0);
    i64 nb = m2 ? nb2 : (m1 ? nb1 : nb0);
    const u8* bias = m2 ? b2 : (m1 ? b1 : b0);
    int bt = m2 ? bt2 : (m1 ? bt1 : bt0);
    float* y = m2 ? y2 : (m1 ? y1 : y0);
    int n_out = m2 ? n2 : (m1 ? n1 : n0);
    b -= m2 ? nblk0 + nblk1 : (m1 ? nblk0 : 0);
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int r0 = (b * 8 + warp) * R;
    int nbk = k >> 5;
    const u16* sc = (const u16*)(w + nb * 32);
    float acc[R];
#pragma unroll
    for (int r = 0; r < R; ++r) acc[r] = 0.f;
    for (int kc = 0; kc < nbk; kc += 32 * NI) {
        int4 qa[R][NI], qc[R][NI];
        u32 ds[R][NI];
#pragma unroll
        for (int r = 0; r < R; ++r) {
            i64 rb = (i64)min(r0 + r, n_out - 1) * nbk;
#pragma unroll
            for (int i = 0; i < NI; ++i) {
                int kb = kc + lane + 32 * i;
                if (kb < nbk) {
                    const int4* p = (const int4*)(w + (rb + kb) * 32);
                    qa[r][i] = __ldg(p);
                    qc[r][i] = __ldg(p + 1);
                    ds[r][i] = __ldg(sc + rb + kb);
                }
            }
        }
        if (kc == 0) {
            GRID_DEP_WAIT();
            wide_quant_rows<P>(x, 0, 1, k, xs, xd);
            __syncthreads();
        }
#pragma unroll
        for (int i = 0; i < NI; ++i) {
            int kb = kc + lane + 32 * i;
            if (kb < nbk) {
                int4 xa[P], xc[P];
                wide_load_x<P>(xs, k, kb, xa, xc);
                float dx = xd[kb];
#pragma unroll
                for (int r = 0; r < R; ++r)
                    acc[r] += wide_dot_q8<P>(qa[r][i], qc[r][i], xa, xc) * (h2f((u16)ds[r][i]) * dx);
            }
        }
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
        float s = warp_sum(acc[r]);
        int n = r0 + r;
        if (lane == 0 && n < n_out) y[n] = s + bias_at(bias, bt, n);
    }
}

#define MOE_GU_WIDE(R, P, NI)                                                                    \
    extern "C" __global__ void __launch_bounds__(256) moe_gate_up_wide_r##R##_p##P##_n##NI(     \
        const float* x, int d_model, const u8* wg, i64 nbg, const u8* wu, i64 nbu, const u8* bg, \
        int bgt, const u8* bu, int but, const int* ids, int k, int n_ff, float* h) {           \
        moe_gate_up_wide<R, P, NI>(x, d_model, wg, nbg, wu, nbu, bg, bgt, bu, but, ids, k, n_ff, \
                                   h);                                                          \
    }
#define MOE_DOWN_WIDE(R, P, NI)                                                                  \
    extern "C" __global__ void __launch_bounds__(256) moe_down_wide_r##R##_p##P##_n##NI(        \
        const float* h, int n_ff, const u8* wd, i64 nbd, const u8* bd, int bdt, const int* ids, \
        const float* wts, int k, int d_model, float* y) {                                      \
        moe_down_wide<R, P, NI>(h, n_ff, wd, nbd, bd, bdt, ids, wts, k, d_model, y);           \
    }
#define GEMV3_WIDE(R, P, NI)                                                                     \
    extern "C" __global__ void __launch_bounds__(256) gemv3_wide_q8_r##R##_p##P##_n##NI(        \
        const float* x, int k, MAT3_ARGS(0), MAT3_ARGS(1), MAT3_ARGS(2)) {                     \
        gemv3_wide_q8<R, P, NI>(x, k, w0, nb0, b0, bt0, y0, n0, nblk0, w1, nb1, b1, bt1, y1, n1, \
                                nblk1, w2, nb2, b2, bt2, y2, n2, nblk2);                        \
    }
#ifndef WIDE_ENTRIES
#define WIDE_ENTRIES                                                                             \
    MOE_GU_WIDE(1, 3, 3)                                                                         \
    MOE_DOWN_WIDE(2, 3, 3)                                                                       \
    GEMV3_WIDE(1, 3, 3)                                                                          \
    GEMV3_WIDE(1, 3, 4)
#endif
WIDE_ENTRIES
