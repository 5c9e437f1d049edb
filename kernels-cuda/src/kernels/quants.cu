// Matrix-vector / few-row products, embedding lookups and the MoE expert products for the
// llama.cpp re-quantizations: Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS (and Q8_0
// in the MoE, whose down projection is often Q8_0 when gate/up are not).
//
// Device layout (re-laid at upload by kernels-cuda/src/quants.rs; same bits and size as the
// file): every type is cut into 32-element units, u = 0 .. nu-1 over the whole tensor, and
// stored as structure-of-arrays regions so a lane reads one unit with aligned vector loads:
//   Q  [nu][16] u8 : 4-bit codes, byte i low nibble = element i, high nibble = element i + 16
//                    (ggml's Q4_0 order; K-quant nibbles are reordered into it at upload)
//   then per type:
//   Q4_0, IQ4_NL : d f16 [nu]
//   Q4_1         : (d, m) f16 pairs [nu]
//   Q5_0         : qh u32 [nu] (bit i = fifth bit of element i), d f16 [nu]
//   Q5_1         : qh u32 [nu], (d, m) f16 pairs [nu]
//   Q4_K         : 16-byte super-block headers [nu / 8] (d, dmin, 12 packed scale bytes)
//   Q5_K         : qh u32 [nu], headers [nu / 8]
//   Q6_K         : qh u64 [nu] (bits 2i..2i+1 = high two bits of element i), i8 scales [nu][2]
//                  (elements 0..15, 16..31), d f16 [nu / 8]
//   IQ4_XS       : 8-byte super-block headers [nu / 8] (d, scales_h, scales_l[4])
//   Q8_0         : the backend's Q8_0 layout: i8 qs [nu][32], d f16 [nu]
// Every element decodes as  s * q + m  with (s, m) per half unit (Q6_K has a scale per 16), q
// the integer code (or the IQ4 level). Activations are f32.

#define QT_Q4_0 2
#define QT_Q4_1 3
#define QT_Q5_0 6
#define QT_Q5_1 7
#define QT_Q8_0 8
#define QT_Q4_K 12
#define QT_Q5_K 13
#define QT_Q6_K 14
#define QT_IQ4_NL 20
#define QT_IQ4_XS 23

// Rows per warp and warps per block of the GEMV kernels: x (the activations) is read once per
// unit for all rows of the warp, and a lane has QG_R weight units in flight.
#define QG_R 2
#define QG_WARPS 4

// One 32-element unit as loaded: codes, high bits, per-half scale and offset.
struct QUnit {
    u32 q[8];  // q[0..3]: the 16 code bytes; Q8_0 uses all 8 (32 int8 values)
    u32 h0, h1;  // fifth bits (h0) or Q6_K's two-bit planes (h0: elements 0..15, h1: 16..31)
    float sa, sb, ma, mb;
};

// ggml's kvalues_iq4nl as int8 bytes, four to a word, for byte_perm lookups.
#define IQ4_T0 0xBFAD9881u
#define IQ4_T1 0xF6EADDCFu
#define IQ4_T2 0x26190D01u
#define IQ4_T3 0x71594535u

// Four IQ4 codes (one per byte, each 0..15) -> their four int8 levels, one per byte.
__device__ __forceinline__ u32 iq4_lut4(u32 idx) {
    u32 sel = (idx & 0xfu) | ((idx >> 4) & 0xf0u) | ((idx >> 8) & 0xf00u) | ((idx >> 12) & 0xf000u);
    u32 s7 = sel & 0x7777u;
    u32 lo = __byte_perm(IQ4_T0, IQ4_T1, s7);
    u32 hi = __byte_perm(IQ4_T2, IQ4_T3, s7);
    return __byte_perm(lo, hi, 0x3210u | ((sel & 0x8888u) >> 1));
}

// ggml's get_scale_min_k4 on a 12-byte packed scale array held as three words.
__device__ __forceinline__ void scale_min_k4(int j, u32 s0, u32 s1, u32 s2, float& sc, float& mn) {
    u32 b[12];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        b[i] = (s0 >> (8 * i)) & 0xffu;
        b[4 + i] = (s1 >> (8 * i)) & 0xffu;
        b[8 + i] = (s2 >> (8 * i)) & 0xffu;
    }
    u32 s, m;
    // j is a run-time value: select without indexing a local array dynamically.
    if (j < 4) {
        u32 bj = (j == 0) ? b[0] : (j == 1) ? b[1] : (j == 2) ? b[2] : b[3];
        u32 bj4 = (j == 0) ? b[4] : (j == 1) ? b[5] : (j == 2) ? b[6] : b[7];
        s = bj & 63u;
        m = bj4 & 63u;
    } else {
        int i = j - 4;
        u32 bj4 = (i == 0) ? b[8] : (i == 1) ? b[9] : (i == 2) ? b[10] : b[11];
        u32 bjm4 = (i == 0) ? b[0] : (i == 1) ? b[1] : (i == 2) ? b[2] : b[3];
        u32 bj = (i == 0) ? b[4] : (i == 1) ? b[5] : (i == 2) ? b[6] : b[7];
        s = (bj4 & 0xfu) | ((bjm4 >> 6) << 4);
        m = (bj4 >> 4) | ((bj >> 6) << 4);
    }
    sc = (float)s;
    mn = (float)m;
}

// Load unit `u` of a tensor of `nu` units.
template <int T>
__device__ __forceinline__ QUnit load_unit(const u8* w, i64 nu, i64 u) {
    QUnit r;
    r.h0 = 0;
    r.h1 = 0;
    if (T == QT_Q8_0) {
        int4 a = __ldg((const int4*)(w + u * 32));
        int4 b = __ldg((const int4*)(w + u * 32 + 16));
        r.q[0] = a.x; r.q[1] = a.y; r.q[2] = a.z; r.q[3] = a.w;
        r.q[4] = b.x; r.q[5] = b.y; r.q[6] = b.z; r.q[7] = b.w;
        float d = h2f(__ldg((const u16*)(w + nu * 32) + u));
        r.sa = r.sb = d;
        r.ma = r.mb = 0.f;
        return r;
    }
    int4 a = __ldg((const int4*)(w + u * 16));
    r.q[0] = a.x; r.q[1] = a.y; r.q[2] = a.z; r.q[3] = a.w;
    const u8* tail = w + nu * 16;
    if (T == QT_Q4_0 || T == QT_IQ4_NL) {
        float d = h2f(__ldg((const u16*)tail + u));
        r.sa = r.sb = d;
        r.ma = r.mb = (T == QT_Q4_0) ? -8.f * d : 0.f;
    } else if (T == QT_Q4_1) {
        u32 dm = __ldg((const u32*)tail + u);
        r.sa = r.sb = h2f((u16)(dm & 0xffffu));
        r.ma = r.mb = h2f((u16)(dm >> 16));
    } else if (T == QT_Q5_0) {
        r.h0 = __ldg((const u32*)tail + u);
        float d = h2f(__ldg((const u16*)(tail + nu * 4) + u));
        r.sa = r.sb = d;
        r.ma = r.mb = -16.f * d;
    } else if (T == QT_Q5_1) {
        r.h0 = __ldg((const u32*)tail + u);
        u32 dm = __ldg((const u32*)(tail + nu * 4) + u);
        r.sa = r.sb = h2f((u16)(dm & 0xffffu));
        r.ma = r.mb = h2f((u16)(dm >> 16));
    } else if (T == QT_Q4_K || T == QT_Q5_K) {
        const u8* hdr = tail;
        if (T == QT_Q5_K) {
            r.h0 = __ldg((const u32*)tail + u);
            hdr = tail + nu * 4;
        }
        int4 hd = __ldg((const int4*)(hdr + (u >> 3) * 16));
        float d = h2f((u16)((u32)hd.x & 0xffffu));
        float dmin = h2f((u16)((u32)hd.x >> 16));
        float sc, mn;
        scale_min_k4((int)(u & 7), (u32)hd.y, (u32)hd.z, (u32)hd.w, sc, mn);
        r.sa = r.sb = d * sc;
        r.ma = r.mb = -(dmin * mn);
    } else if (T == QT_Q6_K) {
        uint2 h = __ldg((const uint2*)tail + u);
        r.h0 = h.x;
        r.h1 = h.y;
        u16 sc = __ldg((const u16*)(tail + nu * 8) + u);
        float d = h2f(__ldg((const u16*)(tail + nu * 10) + (u >> 3)));
        r.sa = d * (float)(i8)(sc & 0xffu);
        r.sb = d * (float)(i8)(sc >> 8);
        r.ma = -32.f * r.sa;
        r.mb = -32.f * r.sb;
    } else if (T == QT_IQ4_XS) {
        uint2 hd = __ldg((const uint2*)tail + (u >> 3));
        int ib = (int)(u & 7);
        float d = h2f((u16)(hd.x & 0xffffu));
        u32 sh = hd.x >> 16;
        u32 ls = ((hd.y >> (4 * ib)) & 0xfu) | (((sh >> (2 * ib)) & 3u) << 4);
        r.sa = r.sb = d * (float)((int)ls - 32);
        r.ma = r.mb = 0.f;
    }
    return r;
}

// Decode word p of a unit: lo[c] = element 4p + c, hi[c] = element 16 + 4p + c.
template <int T>
__device__ __forceinline__ void decode_word(const QUnit& r, int p, float lo[4], float hi[4]) {
    if (T == QT_Q8_0) {
        u32 a = r.q[p], b = r.q[4 + p];
#pragma unroll
        for (int c = 0; c < 4; ++c) {
            lo[c] = r.sa * (float)(i8)((a >> (8 * c)) & 0xffu);
            hi[c] = r.sb * (float)(i8)((b >> (8 * c)) & 0xffu);
        }
        return;
    }
    u32 qw = r.q[p];
    u32 ql = qw & 0x0f0f0f0fu, qh = (qw >> 4) & 0x0f0f0f0fu;
    if (T == QT_IQ4_NL || T == QT_IQ4_XS) {
        u32 vl = iq4_lut4(ql), vh = iq4_lut4(qh);
#pragma unroll
        for (int c = 0; c < 4; ++c) {
            lo[c] = r.sa * (float)(i8)((vl >> (8 * c)) & 0xffu);
            hi[c] = r.sb * (float)(i8)((vh >> (8 * c)) & 0xffu);
        }
        return;
    }
#pragma unroll
    for (int c = 0; c < 4; ++c) {
        u32 a = (ql >> (8 * c)) & 0xfu, b = (qh >> (8 * c)) & 0xfu;
        if (T == QT_Q5_0 || T == QT_Q5_1 || T == QT_Q5_K) {
            a |= ((r.h0 >> (4 * p + c)) & 1u) << 4;
            b |= ((r.h0 >> (16 + 4 * p + c)) & 1u) << 4;
        } else if (T == QT_Q6_K) {
            a |= ((r.h0 >> (8 * p + 2 * c)) & 3u) << 4;
            b |= ((r.h1 >> (8 * p + 2 * c)) & 3u) << 4;
        }
        lo[c] = fmaf(r.sa, (float)a, r.ma);
        hi[c] = fmaf(r.sb, (float)b, r.mb);
    }
}

// acc[j][t] += dot(unit of row j, x of token t) for R rows of units u[j] (in tensors w[j] of
// nu[j] units) and `ntok` <= NT tokens whose 32 activations start at xs + t * xstride.
template <int T, int R, int NT>
__device__ __forceinline__ void dot_units(const u8* const (&w)[R], const i64 (&nu)[R],
                                          const i64 (&u)[R], const float* xs, i64 xstride,
                                          int ntok, float (&acc)[R][NT]) {
    QUnit q[R];
#pragma unroll
    for (int j = 0; j < R; ++j) q[j] = load_unit<T>(w[j], nu[j], u[j]);
#pragma unroll
    for (int p = 0; p < 4; ++p) {
        float lo[R][4], hi[R][4];
#pragma unroll
        for (int j = 0; j < R; ++j) decode_word<T>(q[j], p, lo[j], hi[j]);
#pragma unroll
        for (int t = 0; t < NT; ++t) {
            if (t < ntok) {
                const float* xt = xs + t * xstride;
                float4 xl = __ldg((const float4*)(xt + 4 * p));
                float4 xh = __ldg((const float4*)(xt + 16 + 4 * p));
#pragma unroll
                for (int j = 0; j < R; ++j) {
                    float s = acc[j][t];
                    s = fmaf(lo[j][0], xl.x, s);
                    s = fmaf(lo[j][1], xl.y, s);
                    s = fmaf(lo[j][2], xl.z, s);
                    s = fmaf(lo[j][3], xl.w, s);
                    s = fmaf(hi[j][0], xh.x, s);
                    s = fmaf(hi[j][1], xh.y, s);
                    s = fmaf(hi[j][2], xh.z, s);
                    s = fmaf(hi[j][3], xh.w, s);
                    acc[j][t] = s;
                }
            }
        }
    }
}

// y[t, n] = x[t, k] W^T + b for W [n rows of k] of type T (k a multiple of 32, of 256 for the
// K-quants and IQ4_XS). Each warp computes QG_R rows for NT tokens starting at blockIdx.y * NT;
// lanes stride over the row's units. grid (ceil(n / (QG_R * QG_WARPS)), ceil(t / NT)),
// block 32 * QG_WARPS.
template <int T, int NT>
__device__ __forceinline__ void qgemv(const float* x, int t, int k, const u8* w, i64 nu,
                                      const u8* bias, int bt, float* y, int n) {
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int row0 = (blockIdx.x * QG_WARPS + warp) * QG_R;
    if (row0 >= n) return;
    int tok0 = blockIdx.y * NT;
    int ntok = min(NT, t - tok0);
    int upr = k >> 5;
    const u8* ws[QG_R];
    i64 nus[QG_R], base[QG_R], uu[QG_R];
#pragma unroll
    for (int j = 0; j < QG_R; ++j) {
        ws[j] = w;
        nus[j] = nu;
        // Rows past n repeat the last row (valid memory); their results are not stored.
        base[j] = (i64)min(row0 + j, n - 1) * upr;
    }
    float acc[QG_R][NT];
#pragma unroll
    for (int j = 0; j < QG_R; ++j)
#pragma unroll
        for (int i = 0; i < NT; ++i) acc[j][i] = 0.f;
    const float* xb = x + (i64)tok0 * k;
    for (int ub = lane; ub < upr; ub += 32) {
#pragma unroll
        for (int j = 0; j < QG_R; ++j) uu[j] = base[j] + ub;
        dot_units<T, QG_R, NT>(ws, nus, uu, xb + ub * 32, k, ntok, acc);
    }
#pragma unroll
    for (int j = 0; j < QG_R; ++j) {
#pragma unroll
        for (int i = 0; i < NT; ++i) {
            float s = warp_sum(acc[j][i]);
            int row = row0 + j;
            if (lane == j * NT + i && i < ntok && row < n) {
                if (bias) s += wload(bias, bt, 0, row);
                y[(i64)(tok0 + i) * n + row] = s;
            }
        }
    }
}

// out[r, :] = table[ids[r], :]; one thread per unit. grid (ceil(d / 32 / 128), rows), block 128.
template <int T>
__device__ __forceinline__ void qembed(const u8* w, i64 nu, const u32* ids, int vocab, float* out,
                                       int d) {
    int r = blockIdx.y;
    int ub = blockIdx.x * blockDim.x + threadIdx.x;
    int upr = d >> 5;
    if (ub >= upr) return;
    u32 id = ids[r];
    float4* o = (float4*)(out + (i64)r * d + ub * 32);
    if (id >= (u32)vocab) {
        // The host checks ids; this keeps a bad id from reading outside the table regardless.
        float nan = __int_as_float(0x7fc00000);
        for (int i = 0; i < 8; ++i) o[i] = make_float4(nan, nan, nan, nan);
        return;
    }
    QUnit q = load_unit<T>(w, nu, (i64)id * upr + ub);
#pragma unroll
    for (int p = 0; p < 4; ++p) {
        float lo[4], hi[4];
        decode_word<T>(q, p, lo, hi);
        o[p] = make_float4(lo[0], lo[1], lo[2], lo[3]);
        o[4 + p] = make_float4(hi[0], hi[1], hi[2], hi[3]);
    }
}

// MoE gate+up for each (token, slot) pair: h[pair, f] = SwiGLU-OAI(gate + bg, up + bu) of the
// chosen expert, gate and up both of type T. Each warp computes two rows f of gate and of up
// (four units in flight per lane, one activation read). grid (ceil(n_ff / 8), t * k), block 128.
template <int T>
__device__ __forceinline__ void qmoe_gate_up(const float* x, int d_model, const u8* wg, i64 nug,
                                             const u8* wu, i64 nuu, const u8* bg, int bgt,
                                             const u8* bu, int but, const int* ids, int k,
                                             int n_ff, float* h) {
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int f0 = (blockIdx.x * QG_WARPS + warp) * 2;
    if (f0 >= n_ff) return;
    int pair = blockIdx.y, row = pair / k;
    int e = ids[pair];
    if (e < 0) return;  // a pick of another rank's expert (expert parallelism)
    int upr = d_model >> 5;
    int f1 = min(f0 + 1, n_ff - 1);
    const u8* ws[4] = {wg, wg, wu, wu};
    i64 nus[4] = {nug, nug, nuu, nuu};
    i64 b0 = ((i64)e * n_ff + f0) * upr, b1 = ((i64)e * n_ff + f1) * upr;
    i64 uu[4];
    float acc[4][1] = {{0.f}, {0.f}, {0.f}, {0.f}};
    const float* xr = x + (i64)row * d_model;
    for (int ub = lane; ub < upr; ub += 32) {
        uu[0] = b0 + ub;
        uu[1] = b1 + ub;
        uu[2] = b0 + ub;
        uu[3] = b1 + ub;
        dot_units<T, 4, 1>(ws, nus, uu, xr + ub * 32, 0, 1, acc);
    }
    float g0 = warp_sum(acc[0][0]), g1 = warp_sum(acc[1][0]);
    float u0 = warp_sum(acc[2][0]), u1 = warp_sum(acc[3][0]);
    int f = lane == 0 ? f0 : f0 + 1;
    if (lane < 2 && f < n_ff) {
        i64 bidx = (i64)e * n_ff + f;
        float g = (lane == 0 ? g0 : g1) + wload(bg, bgt, 0, bidx);
        float u = (lane == 0 ? u0 : u1) + wload(bu, but, 0, bidx);
        h[(i64)pair * n_ff + f] = swiglu_oai(g, u);
    }
}

// MoE down projection and the weighted sum over the k slots of each token:
// y[r, d] = sum_j wts[r, j] * (h[r * k + j] . Wd[e_j, d] + bd[e_j, d]). Each warp computes QG_R
// outputs d. grid (ceil(d_model / (QG_R * QG_WARPS)), t), block 128.
template <int T>
__device__ __forceinline__ void qmoe_down(const float* h, int n_ff, const u8* wd, i64 nud,
                                          const u8* bd, int bdt, const int* ids, const float* wts,
                                          int k, int d_model, float* y) {
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int d0 = (blockIdx.x * QG_WARPS + warp) * QG_R;
    if (d0 >= d_model) return;
    int row = blockIdx.y;
    int upr = n_ff >> 5;
    const u8* ws[QG_R];
    i64 nus[QG_R], uu[QG_R];
#pragma unroll
    for (int j = 0; j < QG_R; ++j) {
        ws[j] = wd;
        nus[j] = nud;
    }
    float tot[QG_R];
    float bsum[QG_R];
#pragma unroll
    for (int j = 0; j < QG_R; ++j) tot[j] = bsum[j] = 0.f;
    for (int s = 0; s < k; ++s) {
        int pair = row * k + s;
        int e = ids[pair];
        if (e < 0) continue;  // another rank's expert: contributes nothing here
        float wt = wts[pair];
        const float* hr = h + (i64)pair * n_ff;
        float acc[QG_R][1];
#pragma unroll
        for (int j = 0; j < QG_R; ++j) acc[j][0] = 0.f;
        for (int ub = lane; ub < upr; ub += 32) {
#pragma unroll
            for (int j = 0; j < QG_R; ++j)
                uu[j] = ((i64)e * d_model + min(d0 + j, d_model - 1)) * upr + ub;
            dot_units<T, QG_R, 1>(ws, nus, uu, hr + ub * 32, 0, 1, acc);
        }
#pragma unroll
        for (int j = 0; j < QG_R; ++j) {
            // Partial sums are linear: weight them per lane and reduce once at the end.
            tot[j] = fmaf(wt, acc[j][0], tot[j]);
            if (lane == j && d0 + j < d_model)
                bsum[j] = fmaf(wt, wload(bd, bdt, 0, (i64)e * d_model + d0 + j), bsum[j]);
        }
    }
#pragma unroll
    for (int j = 0; j < QG_R; ++j) {
        float s = warp_sum(tot[j]);
        if (lane == j && d0 + j < d_model) y[(i64)row * d_model + d0 + j] = s + bsum[j];
    }
}

// extern "C" entry points, one per type (and token tile for the GEMV).
#define QGEMV_ENTRY(NAME, T, NT)                                                                  \
    extern "C" __global__ void __launch_bounds__(32 * QG_WARPS)                                   \
        qgemv_##NAME##_n##NT(const float* x, int t, int k, const u8* w, i64 nu, const u8* bias, \
                             int bt, float* y, int n) { GRID_DEP_ENTRY();                         \
        qgemv<T, NT>(x, t, k, w, nu, bias, bt, y, n);                                             \
    }
#define QEMBED_ENTRY(NAME, T)                                                                     \
    extern "C" __global__ void __launch_bounds__(128)                                             \
        qembed_##NAME(const u8* w, i64 nu, const u32* ids, int vocab, float* out, int d) { GRID_DEP_ENTRY(); \
        qembed<T>(w, nu, ids, vocab, out, d);                                                     \
    }
#define QMOE_ENTRY(NAME, T)                                                                       \
    extern "C" __global__ void __launch_bounds__(32 * QG_WARPS) qmoe_gate_up_##NAME(              \
        const float* x, int d_model, const u8* wg, i64 nug, const u8* wu, i64 nuu, const u8* bg, \
        int bgt, const u8* bu, int but, const int* ids, int k, int n_ff, float* h) { GRID_DEP_ENTRY(); \
        qmoe_gate_up<T>(x, d_model, wg, nug, wu, nuu, bg, bgt, bu, but, ids, k, n_ff, h);        \
    }                                                                                             \
    extern "C" __global__ void __launch_bounds__(32 * QG_WARPS) qmoe_down_##NAME(                 \
        const float* h, int n_ff, const u8* wd, i64 nud, const u8* bd, int bdt, const int* ids,   \
        const float* wts, int k, int d_model, float* y) { GRID_DEP_ENTRY();                       \
        qmoe_down<T>(h, n_ff, wd, nud, bd, bdt, ids, wts, k, d_model, y);                         \
    }
#define QTYPE_ENTRIES(NAME, T) \
    QGEMV_ENTRY(NAME, T, 1)    \
    QGEMV_ENTRY(NAME, T, 4)    \
    QGEMV_ENTRY(NAME, T, 8)    \
    QEMBED_ENTRY(NAME, T)      \
    QMOE_ENTRY(NAME, T)

QTYPE_ENTRIES(q4_0, QT_Q4_0)
QTYPE_ENTRIES(q4_1, QT_Q4_1)
QTYPE_ENTRIES(q5_0, QT_Q5_0)
QTYPE_ENTRIES(q5_1, QT_Q5_1)
QTYPE_ENTRIES(q4_k, QT_Q4_K)
QTYPE_ENTRIES(q5_k, QT_Q5_K)
QTYPE_ENTRIES(q6_k, QT_Q6_K)
QTYPE_ENTRIES(iq4_nl, QT_IQ4_NL)
QTYPE_ENTRIES(iq4_xs, QT_IQ4_XS)
QMOE_ENTRY(q8_0, QT_Q8_0)
