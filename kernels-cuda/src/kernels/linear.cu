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

// Q8_0 weight x int8 activations, t <= MAX_ROWS. xq [t, k] int8, xd [t, k/32]. W is [n_out, k]
// at `w` with `nb` blocks in all (the scales follow the int8 values). grid ceil(n_out / 8),
// block 256.
extern "C" __global__ void gemv_q8_0(const i8* xq, const float* xd, int t, int k, const u8* w,
                                     i64 nb, const u8* bias, int btype, float* y, int n_out) {
    int n = blockIdx.x * 8 + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (n >= n_out) return;
    int nbk = k >> 5;
    const u16* wd = (const u16*)(w + nb * 32);
    float acc[MAX_ROWS];
#pragma unroll
    for (int r = 0; r < MAX_ROWS; ++r) acc[r] = 0.f;
    for (int kb = lane; kb < nbk; kb += 32) {
        i64 bi = (i64)n * nbk + kb;
        const int4* wp = (const int4*)(w + bi * 32);
        int4 w0 = __ldg(wp), w1 = __ldg(wp + 1);
        float d = h2f(wd[bi]);
#pragma unroll
        for (int r = 0; r < MAX_ROWS; ++r) {
            if (r < t) {
                i64 xb = (i64)r * nbk + kb;
                int s = dot_q8_block(w0, w1, (const int4*)(xq + xb * 32));
                acc[r] += (float)s * d * xd[xb];
            }
        }
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

// MXFP4 weight x int8 activations; same shape rules as gemv_q8_0.
extern "C" __global__ void gemv_mxfp4(const i8* xq, const float* xd, int t, int k, const u8* w,
                                      i64 nb, const u8* bias, int btype, float* y, int n_out) {
    int n = blockIdx.x * 8 + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (n >= n_out) return;
    int nbk = k >> 5;
    const u8* we = w + nb * 16;
    float acc[MAX_ROWS];
#pragma unroll
    for (int r = 0; r < MAX_ROWS; ++r) acc[r] = 0.f;
    for (int kb = lane; kb < nbk; kb += 32) {
        i64 bi = (i64)n * nbk + kb;
        int4 q = __ldg((const int4*)(w + bi * 16));
        float d = 0.5f * e8m0_to_f32(we[bi]);
#pragma unroll
        for (int r = 0; r < MAX_ROWS; ++r) {
            if (r < t) {
                i64 xb = (i64)r * nbk + kb;
                int s = dot_mxfp4_block(q, (const int4*)(xq + xb * 32));
                acc[r] += (float)s * d * xd[xb];
            }
        }
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

// Tiled GEMM for many rows, any weight type (dequantized while staged into shared memory).
// Tile 64 rows x 64 outputs x 32 k; 256 threads each own a 4x4 patch.
// grid (ceil(n_out / 64), ceil(t / 64)), block 256.
extern "C" __global__ void gemm_tiled(const float* x, int t, int k, const u8* w, int wtype, i64 nb,
                                      const u8* bias, int btype, float* y, int n_out) {
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
