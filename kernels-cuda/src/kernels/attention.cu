// Causal attention with sinks, sliding window and GQA over an f16 KV cache (a ring of `cap`
// slots: position p lives in slot p % cap), flash-decoding style: the keys a query sees are cut
// into S chunks, each block reduces one chunk with an online softmax, and attn_combine merges
// the chunks and the sink. New keys/values of this call are read from the f32 inputs (so a
// prefill longer than a window ring is still right), cached ones from the ring; kv_append
// writes the new ones to the ring afterwards.

#define ATT_MAX_DPL 8  // head_dim <= 256

// grid (t, n_heads, S), block 128 (4 warps). part: [t, n_heads, S, head_dim + 2] holding the
// unnormalized output, then the running max and the sum of exponentials. With S == 1 the block
// finishes the job itself (sink included) and writes `out`. With `append` (decode, t == 1) the
// first block of each kv head also stores the new key/value row in the ring: no block of this
// launch reads that slot (it held position pos0 - cap, outside every window here).
// DPL = head_dim / 32 (dims per lane), a template parameter so the value rows of a whole
// 32-key step (up to 64 values a lane) are loaded in one go.
template <int DPL>
__device__ __forceinline__ void attn_partial_t(const float* q, const float* knew, const float* vnew,
                                        u16* kc, u16* vc, int t, int pos0,
                                        int n_heads, int n_kv, int hd, int cap, int window,
                                        float scale, int chunk, float* part, const u8* sinks,
                                        int sink_type, float* out, int append) {
    __shared__ float qs[256];
    __shared__ float wm[4], wl[4];
    __shared__ float wacc[4][256];
    int i = blockIdx.x, h = blockIdx.y, s = blockIdx.z, S = gridDim.z;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int p = pos0 + i;
    int lo = window > 0 ? max(0, p - window + 1) : 0;
    int hi = p + 1;
    int kh = h / (n_heads / n_kv);
    int start = lo + s * chunk;
    int end = min(hi, start + chunk);
    for (int d = threadIdx.x; d < hd; d += blockDim.x)
        qs[d] = q[((i64)i * n_heads + h) * hd + d];
    __syncthreads();
    const int dpl = DPL;
    float m = NEG_INF, l = 0.f;
    float acc[ATT_MAX_DPL];
#pragma unroll
    for (int dd = 0; dd < ATT_MAX_DPL; ++dd) acc[dd] = 0.f;
    for (int j0 = start + warp * 32; j0 < end; j0 += 128) {
        int j = j0 + lane;
        float sc = NEG_INF;
        if (j < end) {
            float dot = 0.f;
            if (j < pos0) {
                const uint4* kr = (const uint4*)(kc + ((i64)(j % cap) * n_kv + kh) * hd);
#pragma unroll 8
                for (int c = 0; c < (hd >> 3); ++c) {
                    uint4 v = kr[c];
                    const u16* hv = (const u16*)&v;
#pragma unroll
                    for (int e = 0; e < 8; ++e) dot += qs[c * 8 + e] * h2f(hv[e]);
                }
            } else {
                const float4* kr = (const float4*)(knew + ((i64)(j - pos0) * n_kv + kh) * hd);
                for (int c = 0; c < (hd >> 2); ++c) {
                    float4 v = kr[c];
                    dot += qs[c * 4] * v.x + qs[c * 4 + 1] * v.y + qs[c * 4 + 2] * v.z +
                           qs[c * 4 + 3] * v.w;
                }
            }
            sc = dot * scale;
        }
        float mnew = fmaxf(m, warp_max(sc));
        float pj = j < end ? __expf(sc - mnew) : 0.f;
        float corr = __expf(m - mnew);
        l = l * corr + warp_sum(pj);
#pragma unroll
        for (int dd = 0; dd < ATT_MAX_DPL; ++dd) acc[dd] *= corr;
        int nvalid = min(32, end - j0);
        if (j0 + 32 <= pos0 && nvalid == 32) {
            // Every key of this chunk is in the cache: G rows of V in flight at a time.
            constexpr int G = DPL <= 2 ? 32 : (DPL <= 4 ? 16 : 8);
#pragma unroll
            for (int jj0 = 0; jj0 < 32; jj0 += G) {
                float vv[G][DPL];
#pragma unroll
                for (int u = 0; u < G; ++u) {
                    const u16* vr = vc + ((i64)((j0 + jj0 + u) % cap) * n_kv + kh) * hd;
#pragma unroll
                    for (int dd = 0; dd < DPL; ++dd) vv[u][dd] = h2f(vr[lane + 32 * dd]);
                }
#pragma unroll
                for (int u = 0; u < G; ++u) {
                    float pp = __shfl_sync(0xffffffffu, pj, jj0 + u);
#pragma unroll
                    for (int dd = 0; dd < DPL; ++dd) acc[dd] += pp * vv[u][dd];
                }
            }
        } else {
            for (int jj = 0; jj < nvalid; ++jj) {
                float pp = __shfl_sync(0xffffffffu, pj, jj);
                int key = j0 + jj;
                if (key < pos0) {
                    const u16* vr = vc + ((i64)(key % cap) * n_kv + kh) * hd;
#pragma unroll
                    for (int dd = 0; dd < ATT_MAX_DPL; ++dd)
                        if (dd < dpl) acc[dd] += pp * h2f(vr[lane + 32 * dd]);
                } else {
                    const float* vr = vnew + ((i64)(key - pos0) * n_kv + kh) * hd;
#pragma unroll
                    for (int dd = 0; dd < ATT_MAX_DPL; ++dd)
                        if (dd < dpl) acc[dd] += pp * vr[lane + 32 * dd];
                }
            }
        }
        m = mnew;
    }
    if (lane == 0) { wm[warp] = m; wl[warp] = l; }
#pragma unroll
    for (int dd = 0; dd < ATT_MAX_DPL; ++dd)
        if (dd < dpl) wacc[warp][lane + 32 * dd] = acc[dd];
    __syncthreads();
    if (append && s == 0 && h % (n_heads / n_kv) == 0) {
        i64 src = (i64)kh * hd;
        i64 dst = ((i64)(pos0 % cap) * n_kv + kh) * hd;
        for (int d = threadIdx.x; d < hd; d += blockDim.x) {
            kc[dst + d] = f2h(knew[src + d]);
            vc[dst + d] = f2h(vnew[src + d]);
        }
    }
    float M = fmaxf(fmaxf(wm[0], wm[1]), fmaxf(wm[2], wm[3]));
    if (S == 1) {
        float sink = wload(sinks, sink_type, 0, h);
        float MM = fmaxf(M, sink);
        float L = __expf(sink - MM);
        for (int w = 0; w < 4; ++w)
            if (wm[w] != NEG_INF) L += wl[w] * __expf(wm[w] - MM);
        float* o_row = out + ((i64)i * n_heads + h) * hd;
        for (int d = threadIdx.x; d < hd; d += blockDim.x) {
            float o = 0.f;
            for (int w = 0; w < 4; ++w)
                if (wm[w] != NEG_INF) o += wacc[w][d] * __expf(wm[w] - MM);
            o_row[d] = o / L;
        }
        return;
    }
    float* pout = part + (((i64)i * n_heads + h) * S + s) * (hd + 2);
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float o = 0.f;
        if (M != NEG_INF)
            for (int w = 0; w < 4; ++w)
                if (wm[w] != NEG_INF) o += wacc[w][d] * __expf(wm[w] - M);
        pout[d] = o;
    }
    if (threadIdx.x == 0) {
        float L = 0.f;
        if (M != NEG_INF)
            for (int w = 0; w < 4; ++w)
                if (wm[w] != NEG_INF) L += wl[w] * __expf(wm[w] - M);
        pout[hd] = M;
        pout[hd + 1] = L;
    }
}

#define ATTN_ENTRY(NAME, DPL)                                                                   \
    extern "C" __global__ void __launch_bounds__(128) NAME(                                    \
        const float* q, const float* knew, const float* vnew, u16* kc, u16* vc, int t, int pos0, \
        int n_heads, int n_kv, int hd, int cap, int window, float scale, int chunk, float* part, \
        const u8* sinks, int sink_type, float* out, int append) {                              \
        attn_partial_t<DPL>(q, knew, vnew, kc, vc, t, pos0, n_heads, n_kv, hd, cap, window,    \
                            scale, chunk, part, sinks, sink_type, out, append);                \
    }
ATTN_ENTRY(attn_partial_d1, 1)
ATTN_ENTRY(attn_partial_d2, 2)
ATTN_ENTRY(attn_partial_d3, 3)
ATTN_ENTRY(attn_partial_d4, 4)
ATTN_ENTRY(attn_partial_d5, 5)
ATTN_ENTRY(attn_partial_d6, 6)
ATTN_ENTRY(attn_partial_d7, 7)
ATTN_ENTRY(attn_partial_d8, 8)

// Merge the S chunks of each (row, head) with the head's sink logit. grid (t, n_heads), block
// head_dim.
extern "C" __global__ void attn_combine(const float* part, int n_heads, int hd, int S,
                                        const u8* sinks, int sink_type, float* out) {
    int i = blockIdx.x, h = blockIdx.y, d = threadIdx.x;
    const float* pp = part + ((i64)i * n_heads + h) * S * (hd + 2);
    float sink = wload(sinks, sink_type, 0, h);
    float M = sink;
    for (int s = 0; s < S; ++s) M = fmaxf(M, pp[s * (hd + 2) + hd]);
    float L = __expf(sink - M), o = 0.f;
    for (int s = 0; s < S; ++s) {
        float ms = pp[s * (hd + 2) + hd];
        if (ms == NEG_INF) continue;
        float f = __expf(ms - M);
        L += pp[s * (hd + 2) + hd + 1] * f;
        o += pp[s * (hd + 2) + d] * f;
    }
    if (d < hd) out[((i64)i * n_heads + h) * hd + d] = o / L;
}

// Write rows first..t of this call's keys and values into the ring. grid (t - first, n_kv),
// block head_dim.
extern "C" __global__ void kv_append(const float* knew, const float* vnew, u16* kc, u16* vc,
                                     int first, int pos0, int n_kv, int hd, int cap) {
    int i = first + blockIdx.x, kh = blockIdx.y, d = threadIdx.x;
    if (d >= hd) return;
    int slot = (pos0 + i) % cap;
    i64 src = ((i64)i * n_kv + kh) * hd + d;
    i64 dst = ((i64)slot * n_kv + kh) * hd + d;
    kc[dst] = f2h(knew[src]);
    vc[dst] = f2h(vnew[src]);
}
