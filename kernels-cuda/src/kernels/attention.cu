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
        const u8* sinks, int sink_type, float* out, int append) { GRID_DEP_ENTRY();            \
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
    GRID_DEP_ENTRY();
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
    GRID_DEP_ENTRY();
    int i = first + blockIdx.x, kh = blockIdx.y, d = threadIdx.x;
    if (d >= hd) return;
    int slot = (pos0 + i) % cap;
    i64 src = ((i64)i * n_kv + kh) * hd + d;
    i64 dst = ((i64)slot * n_kv + kh) * hd + d;
    kc[dst] = f2h(knew[src]);
    vc[dst] = f2h(vnew[src]);
}

// ---- Decode (t == 1) with the query heads of a GQA group together ----
// Block (kv head, chunk s of S) reads each cached key and value row of its chunk once for all
// gq (<= ATT_MAX_G) query heads of the group, where attn_partial reads them once per query head
// (8x the traffic for GPT-OSS). Each warp takes 32 keys per step, lane = key for the scores;
// then lane = DPL contiguous dims for the values. Partial results as attn_partial (combined by
// attn_combine when S > 1); S == 1 finishes with the sink. The block (kv head, 0) also stores
// the new key/value row in the ring (no block reads that slot: see attn_partial).
// grid (n_kv, S), block 128.
#define ATT_MAX_G 8

template <int DPL>
__device__ __forceinline__ void load_halves(const u16* p, float* out) {
    if (DPL % 8 == 0) {
#pragma unroll
        for (int i = 0; i < DPL / 8; ++i) {
            uint4 v = ((const uint4*)p)[i];
            u32 w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                out[8 * i + 2 * e] = h2f((u16)(w[e] & 0xffffu));
                out[8 * i + 2 * e + 1] = h2f((u16)(w[e] >> 16));
            }
        }
    } else if (DPL % 4 == 0) {
#pragma unroll
        for (int i = 0; i < DPL / 4; ++i) {
            uint2 v = ((const uint2*)p)[i];
            out[4 * i] = h2f((u16)(v.x & 0xffffu));
            out[4 * i + 1] = h2f((u16)(v.x >> 16));
            out[4 * i + 2] = h2f((u16)(v.y & 0xffffu));
            out[4 * i + 3] = h2f((u16)(v.y >> 16));
        }
    } else if (DPL % 2 == 0) {
#pragma unroll
        for (int i = 0; i < DPL / 2; ++i) {
            u32 v = ((const u32*)p)[i];
            out[2 * i] = h2f((u16)(v & 0xffffu));
            out[2 * i + 1] = h2f((u16)(v >> 16));
        }
    } else {
#pragma unroll
        for (int i = 0; i < DPL; ++i) out[i] = h2f(p[i]);
    }
}

template <int DPL>
__device__ __forceinline__ void attn_decode_t(const float* q, const float* knew, const float* vnew,
                                              u16* kc, u16* vc, int pos0, int n_heads, int n_kv,
                                              int hd, int cap, int window, float scale,
                                              int chunk, float* part, const u8* sinks,
                                              int sink_type, float* out) {
    constexpr int HD = DPL * 32;
    __shared__ float qs[ATT_MAX_G][HD];
    __shared__ float wm[4][ATT_MAX_G], wl[4][ATT_MAX_G];
    __shared__ float wacc[4][ATT_MAX_G][HD];
    int kh = blockIdx.x, s = blockIdx.y, S = gridDim.y;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int gq = n_heads / n_kv;
    int h0 = kh * gq;
    int p = pos0;
    int lo = window > 0 ? max(0, p - window + 1) : 0;
    int start = lo + s * chunk;
    int end = min(p + 1, start + chunk);
    for (int i = threadIdx.x; i < gq * HD; i += blockDim.x) qs[i / HD][i % HD] = q[(i64)h0 * HD + i];
    __syncthreads();
    float m[ATT_MAX_G], l[ATT_MAX_G], acc[ATT_MAX_G][DPL];
#pragma unroll
    for (int g = 0; g < ATT_MAX_G; ++g) {
        m[g] = NEG_INF;
        l[g] = 0.f;
#pragma unroll
        for (int dd = 0; dd < DPL; ++dd) acc[g][dd] = 0.f;
    }
    for (int j0 = start + warp * 32; j0 < end; j0 += 128) {
        int j = j0 + lane;
        float sc[ATT_MAX_G];
#pragma unroll
        for (int g = 0; g < ATT_MAX_G; ++g) sc[g] = 0.f;
        if (j < end) {
            if (j < pos0) {
                const uint4* kr = (const uint4*)(kc + ((i64)(j % cap) * n_kv + kh) * HD);
                uint4 kv[HD / 8];
#pragma unroll
                for (int c = 0; c < HD / 8; ++c) kv[c] = kr[c];
#pragma unroll
                for (int c = 0; c < HD / 8; ++c) {
                    u32 w[4] = {kv[c].x, kv[c].y, kv[c].z, kv[c].w};
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        float k0 = h2f((u16)(w[e] & 0xffffu)), k1 = h2f((u16)(w[e] >> 16));
#pragma unroll
                        for (int g = 0; g < ATT_MAX_G; ++g) {
                            if (g < gq) {
                                sc[g] = fmaf(qs[g][c * 8 + 2 * e], k0, sc[g]);
                                sc[g] = fmaf(qs[g][c * 8 + 2 * e + 1], k1, sc[g]);
                            }
                        }
                    }
                }
            } else {
                // The new key (t == 1: row 0 of knew), f32.
                const float* kr = knew + (i64)kh * HD;
                for (int c = 0; c < HD; ++c) {
                    float kv = kr[c];
#pragma unroll
                    for (int g = 0; g < ATT_MAX_G; ++g)
                        if (g < gq) sc[g] = fmaf(qs[g][c], kv, sc[g]);
                }
            }
        }
        float pj[ATT_MAX_G];
#pragma unroll
        for (int g = 0; g < ATT_MAX_G; ++g) {
            if (g < gq) {
                float v = j < end ? sc[g] * scale : NEG_INF;
                float mnew = fmaxf(m[g], warp_max(v));
                pj[g] = j < end ? __expf(v - mnew) : 0.f;
                float corr = __expf(m[g] - mnew);
                l[g] = l[g] * corr + warp_sum(pj[g]);
#pragma unroll
                for (int dd = 0; dd < DPL; ++dd) acc[g][dd] *= corr;
                m[g] = mnew;
            } else {
                pj[g] = 0.f;
            }
        }
        int nvalid = min(32, end - j0);
        if (j0 + 32 <= pos0 && nvalid == 32) {
            // Every key of this step is in the cache: U value rows in flight at a time.
            constexpr int U = DPL <= 2 ? 16 : (DPL <= 4 ? 8 : 4);
#pragma unroll
            for (int jj0 = 0; jj0 < 32; jj0 += U) {
                float vv[U][DPL];
#pragma unroll
                for (int u = 0; u < U; ++u)
                    load_halves<DPL>(vc + ((i64)((j0 + jj0 + u) % cap) * n_kv + kh) * HD + lane * DPL,
                                     vv[u]);
#pragma unroll
                for (int u = 0; u < U; ++u) {
#pragma unroll
                    for (int g = 0; g < ATT_MAX_G; ++g) {
                        if (g < gq) {
                            float pp = __shfl_sync(0xffffffffu, pj[g], jj0 + u);
#pragma unroll
                            for (int dd = 0; dd < DPL; ++dd) acc[g][dd] = fmaf(pp, vv[u][dd], acc[g][dd]);
                        }
                    }
                }
            }
        } else {
            for (int jj = 0; jj < nvalid; ++jj) {
                int key = j0 + jj;
                float vv[DPL];
                if (key < pos0) {
                    load_halves<DPL>(vc + ((i64)(key % cap) * n_kv + kh) * HD + lane * DPL, vv);
                } else {
#pragma unroll
                    for (int dd = 0; dd < DPL; ++dd) vv[dd] = vnew[(i64)kh * HD + lane * DPL + dd];
                }
#pragma unroll
                for (int g = 0; g < ATT_MAX_G; ++g) {
                    if (g < gq) {
                        float pp = __shfl_sync(0xffffffffu, pj[g], jj);
#pragma unroll
                        for (int dd = 0; dd < DPL; ++dd) acc[g][dd] = fmaf(pp, vv[dd], acc[g][dd]);
                    }
                }
            }
        }
    }
#pragma unroll
    for (int g = 0; g < ATT_MAX_G; ++g) {
        if (g < gq) {
            if (lane == 0) {
                wm[warp][g] = m[g];
                wl[warp][g] = l[g];
            }
#pragma unroll
            for (int dd = 0; dd < DPL; ++dd) wacc[warp][g][lane * DPL + dd] = acc[g][dd];
        }
    }
    __syncthreads();
    if (s == 0) {
        i64 src = (i64)kh * HD;
        i64 dst = ((i64)(pos0 % cap) * n_kv + kh) * HD;
        for (int d = threadIdx.x; d < HD; d += blockDim.x) {
            kc[dst + d] = f2h(knew[src + d]);
            vc[dst + d] = f2h(vnew[src + d]);
        }
    }
    for (int i = threadIdx.x; i < gq * HD; i += blockDim.x) {
        int g = i / HD, d = i % HD, h = h0 + g;
        float M = fmaxf(fmaxf(wm[0][g], wm[1][g]), fmaxf(wm[2][g], wm[3][g]));
        if (S == 1) {
            float sink = wload(sinks, sink_type, 0, h);
            float MM = fmaxf(M, sink);
            float L = __expf(sink - MM), o = 0.f;
            for (int w = 0; w < 4; ++w) {
                if (wm[w][g] != NEG_INF) {
                    float f = __expf(wm[w][g] - MM);
                    L += wl[w][g] * f;
                    o += wacc[w][g][d] * f;
                }
            }
            out[(i64)h * HD + d] = o / L;
        } else {
            float o = 0.f, L = 0.f;
            if (M != NEG_INF) {
                for (int w = 0; w < 4; ++w) {
                    if (wm[w][g] != NEG_INF) {
                        float f = __expf(wm[w][g] - M);
                        L += wl[w][g] * f;
                        o += wacc[w][g][d] * f;
                    }
                }
            }
            float* pout = part + ((i64)h * S + s) * (HD + 2);
            pout[d] = o;
            if (d == 0) {
                pout[HD] = M;
                pout[HD + 1] = L;
            }
        }
    }
}

#define ATTN_DECODE_ENTRY(NAME, DPL)                                                            \
    extern "C" __global__ void __launch_bounds__(128) NAME(                                    \
        const float* q, const float* knew, const float* vnew, u16* kc, u16* vc, int pos0,      \
        int n_heads, int n_kv, int hd, int cap, int window, float scale, int chunk, float* part, \
        const u8* sinks, int sink_type, float* out) { GRID_DEP_ENTRY();                        \
        attn_decode_t<DPL>(q, knew, vnew, kc, vc, pos0, n_heads, n_kv, hd, cap, window, scale,  \
                           chunk, part, sinks, sink_type, out);                                \
    }
ATTN_DECODE_ENTRY(attn_decode_d1, 1)
ATTN_DECODE_ENTRY(attn_decode_d2, 2)
ATTN_DECODE_ENTRY(attn_decode_d3, 3)
ATTN_DECODE_ENTRY(attn_decode_d4, 4)
ATTN_DECODE_ENTRY(attn_decode_d5, 5)
ATTN_DECODE_ENTRY(attn_decode_d6, 6)
ATTN_DECODE_ENTRY(attn_decode_d7, 7)
ATTN_DECODE_ENTRY(attn_decode_d8, 8)

// ---- Decode (t == 1) on tensor cores: GQA groups together, split-K, combine fused ----
// Block (kv head kh, split s of S), 4 warps, reduces the cached keys lo + s*chunk .. (< pos0)
// for all gq <= 8 query heads of the group at once (each key/value row is read once per
// group, 16-byte loads). Warps take 16*SUB-key steps in turn, all of a step's loads in flight
// before any math. Per 16 keys: S = Q K^T with mma.sync m16n8k16 (rows: the 8 heads padded
// to 16, cols: 8 keys, k: head dims), online softmax in the C fragments, then
// O^T += V^T P^T (rows: head dims, cols: the 8 heads, k: 16 keys), so P goes from the score
// fragments to the B operand without a shuffle. The dims each thread loads are permuted
// (thread c of a quad holds dims c*hd/4.., thread r of a column dims r*hd/8..) so that
// fragments come straight from 16-byte loads; the permutation is undone when O is written.
// f16 q (pre-scaled) and p, f32 sums. The block writes its partial result to `part`: the
// unnormalized O [n_heads, S, hd], then (max, sum) [n_heads, S, 2]; the last block of the kv
// head to finish (ticket in `tickets[kh]`, reset to zero afterwards) merges the S partials with
// the new key (f32, from knew/vnew) and the sink and writes `out`. Block s == 0 appends the new
// key/value row to the ring (no block reads that slot: it held position pos0 - cap, outside
// the window).
//
// Latency order: a warp issues its first step's key/value loads before anything else (in a
// recorded step even before it waits for the previous kernel: those rows were written by
// earlier launches), and only then loads q, the new key's scores, the sink and the new value
// row, which the merge at the end needs; so none of those round trips sits between the cache
// loads and the end of the kernel.
// grid (n_kv, S), block 128.
__device__ __forceinline__ void dtc_mma(float* c, u32 a0, u32 a1, u32 a2, u32 a3, u32 b0,
                                        u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}
__device__ __forceinline__ u32 dtc_pack(float lo, float hi) {
    return (u32)f2h(lo) | ((u32)f2h(hi) << 16);
}

// Splits times query heads per kv head that the last block can merge (the host keeps
// S * heads per group <= this).
#define DTC_MAX_GS 512

// What the merge needs besides the partials, loaded at the start of every block: per query
// head g of the group the new key's score (f32: q against knew, times the scale) and the sink,
// and the new value row.
template <int HD>
struct DtcNew {
    float score[8], sink[8], v[HD];
};

// The new value row into nw.v, the sinks into nw.sink, and (block s == 0) the new key/value
// row appended to the ring as f16 (no block of the launch reads that slot: it held position
// pos0 - cap, outside the window). Every load is issued before the first use of any of them,
// so the round trips overlap each other and the cache loads already in flight.
template <int HD>
__device__ __forceinline__ void dtc_new_rows(const float* knew, const float* vnew, u16* kc,
                                             u16* vc, int pos0, int cap, int n_kv, int kh, int h0,
                                             int gq, const u8* sinks, int sink_type, bool append,
                                             DtcNew<HD>& nw) {
    constexpr int R = (HD + 127) / 128;  // dims per thread (block of 128)
    float kn[R], vn[R];
#pragma unroll
    for (int i = 0; i < R; ++i) {
        const int d = min((int)threadIdx.x + 128 * i, HD - 1);
        kn[i] = knew[(i64)kh * HD + d];
        vn[i] = vnew[(i64)kh * HD + d];
    }
    const float sk = wload(sinks, sink_type, 0, h0 + min((int)threadIdx.x, gq - 1));
    const i64 dst = ((i64)(pos0 % cap) * n_kv + kh) * HD;
#pragma unroll
    for (int i = 0; i < R; ++i) {
        const int d = threadIdx.x + 128 * i;
        if (d < HD) {
            nw.v[d] = vn[i];
            if (append) {
                kc[dst + d] = f2h(kn[i]);
                vc[dst + d] = f2h(vn[i]);
            }
        }
    }
    if (threadIdx.x < gq) nw.sink[threadIdx.x] = sk;
}

// The output of a kv head's gq query heads from the four warps' partials in shared memory
// (max wm, sum wl, unnormalized wacc), the new key and the sink (nw), when the whole range is
// one block's. wf: 32 floats of scratch (each warp's factor per head).
template <int HD>
__device__ __forceinline__ void dtc_merge_one(int h0, int gq, const DtcNew<HD>& nw,
                                              const float (&wm)[4][8], const float (&wl)[4][8],
                                              const float (&wacc)[4][8][HD], float* wf,
                                              float* hfn, float* hinv, float* out) {
    if (threadIdx.x < gq) {
        const int g = threadIdx.x;
        float sn = nw.score[g], sink = nw.sink[g];
        float M = fmaxf(fmaxf(sink, sn), fmaxf(fmaxf(wm[0][g], wm[1][g]), fmaxf(wm[2][g], wm[3][g])));
        float L = 0.f;
#pragma unroll
        for (int w = 0; w < 4; ++w) {
            float f = wm[w][g] == NEG_INF ? 0.f : __expf(wm[w][g] - M);
            wf[w * 8 + g] = f;
            L += wl[w][g] * f;
        }
        float fn = __expf(sn - M);
        hfn[g] = fn;
        hinv[g] = 1.f / (L + __expf(sink - M) + fn);
    }
    __syncthreads();
    for (int i = threadIdx.x; i < gq * HD; i += blockDim.x) {
        int g = i / HD, d = i % HD;
        float acc = hfn[g] * nw.v[d];
#pragma unroll
        for (int w = 0; w < 4; ++w) acc += wf[w * 8 + g] * wacc[w][g][d];
        out[(i64)(h0 + g) * HD + d] = acc * hinv[g];
    }
}

// The ring slot of key (j0 <= key < j0 + 16*SUB) of a step from that of j0: one modulo per
// step instead of one per key where the ring holds at least a step (every GPT-OSS cache).
template <int SUB>
__device__ __forceinline__ int dtc_slot(int key, int j0, int base, int cap) {
    if (cap < 16 * SUB) return key % cap;
    const int sl = base + (key - j0);
    return sl >= cap ? sl - cap : sl;
}

// One warp step's key rows: SUB groups of 16 keys from j0, 16-byte loads (keys at or past
// bend read key j0 instead: finite values whose p is zero). Thread (r, c) holds keys
// j0 + 16u + 8gi + r, dims c*8*DPL...
template <int DPL, int SUB>
__device__ __forceinline__ void dtc_load_k(const u16* kb, int j0, int bend, int cap, i64 rs,
                                           int r, uint4 (&kr)[SUB][2][DPL]) {
    const int base = j0 % cap;
#pragma unroll
    for (int u = 0; u < SUB; ++u) {
#pragma unroll
        for (int gi = 0; gi < 2; ++gi) {
            int key = j0 + 16 * u + 8 * gi + r;
            key = key < bend ? key : j0;
            const uint4* p = (const uint4*)(kb + (i64)dtc_slot<SUB>(key, j0, base, cap) * rs);
#pragma unroll
            for (int i = 0; i < DPL; ++i) kr[u][gi][i] = p[i];
        }
    }
}

// The same step's value rows: thread (r, c) holds keys j0 + 16u + 8(e4/2) + 2c + e4%2,
// dims r*4*DPL...
template <int DPL, int SUB>
__device__ __forceinline__ void dtc_load_v(const u16* vb, int j0, int bend, int cap, i64 rs,
                                           int c, u32 (&vr)[SUB][4][2 * DPL]) {
    const int base = j0 % cap;
#pragma unroll
    for (int u = 0; u < SUB; ++u) {
#pragma unroll
        for (int e4 = 0; e4 < 4; ++e4) {
            int key = j0 + 16 * u + 8 * (e4 >> 1) + 2 * c + (e4 & 1);
            key = key < bend ? key : j0;
            const u16* p = vb + (i64)dtc_slot<SUB>(key, j0, base, cap) * rs;
            if (DPL % 2 == 0) {
#pragma unroll
                for (int i = 0; i < DPL / 2; ++i) {
                    uint4 v = ((const uint4*)p)[i];
                    vr[u][e4][4 * i] = v.x;
                    vr[u][e4][4 * i + 1] = v.y;
                    vr[u][e4][4 * i + 2] = v.z;
                    vr[u][e4][4 * i + 3] = v.w;
                }
            } else {
#pragma unroll
                for (int i = 0; i < DPL; ++i) {
                    uint2 v = ((const uint2*)p)[i];
                    vr[u][e4][2 * i] = v.x;
                    vr[u][e4][2 * i + 1] = v.y;
                }
            }
        }
    }
}

// `early`: the first step's cache loads are issued before the wait for the previous kernel
// (the caller waits when it is false).
template <int DPL>
__device__ __forceinline__ void attn_dtc_t(const float* q, const float* knew, const float* vnew,
                                           u16* kc, u16* vc, int pos0, int n_heads, int n_kv,
                                           int cap, int window, float scale, int chunk,
                                           float* part, u32* tickets, const u8* sinks,
                                           int sink_type, float* out, bool early) {
    constexpr int HD = DPL * 32;
    constexpr int SUB = DPL <= 2 ? 4 : (DPL <= 4 ? 2 : 1);  // 16-key groups per warp step
    constexpr int STEP = 16 * SUB;
    constexpr int KW = 4 * DPL;  // words of one key row a thread holds (dims c*8*DPL ..)
    constexpr int VW = 2 * DPL;  // words of one value row a thread holds (dims r*4*DPL ..)
    __shared__ float wm[4][8], wl[4][8], hfn[8], hinv[8];
    __shared__ float wacc[4][8][HD];
    __shared__ float pf[DTC_MAX_GS], pl[DTC_MAX_GS];
    __shared__ DtcNew<HD> nw;
    __shared__ u32 ticket;
    const int kh = blockIdx.x, s = blockIdx.y, S = gridDim.y;
    float* pml = part + (i64)n_heads * S * HD;  // [n_heads, S, 2]: (max, sum) of each split
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int r = lane >> 2, c = lane & 3;
    const int gq = n_heads / n_kv, h0 = kh * gq;
    const int lo = window > 0 ? max(0, pos0 - window + 1) : 0;
    const int bstart = lo + s * chunk, bend = min(pos0, bstart + chunk);
    const i64 rs = (i64)n_kv * HD;  // halves from one ring slot to the next
    const u16* kb = kc + (i64)kh * HD + c * 8 * DPL;
    const u16* vb = vc + (i64)kh * HD + r * 4 * DPL;
    uint4 kr[SUB][2][DPL];
    u32 vr[SUB][4][VW];
    int j0 = bstart + warp * STEP;
    if (j0 < bend) {
        dtc_load_k<DPL, SUB>(kb, j0, bend, cap, rs, r, kr);
        dtc_load_v<DPL, SUB>(vb, j0, bend, cap, rs, c, vr);
    }
    if (early) GRID_DEP_WAIT();
    // A operand of S = Q K^T: head r (rows >= gq are zero), dims c*8*DPL.., times the scale.
    // The same q values against the new key's dims c*8*DPL.. give head r's score of the new
    // key (f32), summed over the quad.
    u32 qa[KW];
    {
        const float2* qr = (const float2*)(q + (i64)(h0 + min(r, gq - 1)) * HD + c * 8 * DPL);
        const float2* kr2 = (const float2*)(knew + (i64)kh * HD + c * 8 * DPL);
        float2 qv[KW], kn[KW];
#pragma unroll
        for (int w = 0; w < KW; ++w) {
            qv[w] = qr[w];
            kn[w] = kr2[w];
        }
        dtc_new_rows<HD>(knew, vnew, kc, vc, pos0, cap, n_kv, kh, h0, gq, sinks, sink_type,
                         s == 0, nw);
        float dot = 0.f;
#pragma unroll
        for (int w = 0; w < KW; ++w) {
            qa[w] = r < gq ? dtc_pack(qv[w].x * scale, qv[w].y * scale) : 0u;
            dot = fmaf(qv[w].x, kn[w].x, fmaf(qv[w].y, kn[w].y, dot));
        }
        dot += __shfl_xor_sync(0xffffffffu, dot, 1);
        dot += __shfl_xor_sync(0xffffffffu, dot, 2);
        if (warp == 0 && c == 0 && r < gq) nw.score[r] = dot * scale;
    }
    float m = NEG_INF, l = 0.f;
    float o[2 * DPL][4];
#pragma unroll
    for (int mt = 0; mt < 2 * DPL; ++mt)
#pragma unroll
        for (int e = 0; e < 4; ++e) o[mt][e] = 0.f;
    for (; j0 < bend; j0 += 4 * STEP) {
        const int jn = j0 + 4 * STEP;  // this warp's next step
        // Scores: sc[u][gi][e] = head r, key j0 + 16u + 8gi + 2c + e.
        float sc[SUB][2][2];
        float mx = NEG_INF;
#pragma unroll
        for (int u = 0; u < SUB; ++u) {
#pragma unroll
            for (int gi = 0; gi < 2; ++gi) {
                float acc[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
                for (int ks = 0; ks < 2 * DPL; ++ks) {
                    // Words 2ks and 2ks + 1 of the key row: half of uint4 ks / 2.
                    const uint4 kv = kr[u][gi][ks >> 1];
                    u32 b0 = (ks & 1) ? kv.z : kv.x, b1 = (ks & 1) ? kv.w : kv.y;
                    dtc_mma(acc, qa[2 * ks], 0u, qa[2 * ks + 1], 0u, b0, b1);
                }
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    int key = j0 + 16 * u + 8 * gi + 2 * c + e;
                    sc[u][gi][e] = key < bend ? acc[e] : NEG_INF;
                    mx = fmaxf(mx, sc[u][gi][e]);
                }
            }
        }
        // The next step's keys are in flight while this step's values are used.
        if (jn < bend) dtc_load_k<DPL, SUB>(kb, jn, bend, cap, rs, r, kr);
        // Key j0 is valid, so every head's step maximum is finite.
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        float mn = fmaxf(m, mx);
        float corr = __expf(m - mn);
        m = mn;
        float ps = 0.f;
#pragma unroll
        for (int u = 0; u < SUB; ++u)
#pragma unroll
            for (int gi = 0; gi < 2; ++gi)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    float pv = __expf(sc[u][gi][e] - mn);
                    sc[u][gi][e] = pv;
                    ps += pv;
                }
        l = l * corr + ps;
        // O's columns are heads 2c and 2c+1: their corrections live in quads 2c and 2c+1.
        float ca = __shfl_sync(0xffffffffu, corr, 8 * c);
        float cb = __shfl_sync(0xffffffffu, corr, 8 * c + 4);
#pragma unroll
        for (int mt = 0; mt < 2 * DPL; ++mt) {
            o[mt][0] *= ca;
            o[mt][1] *= cb;
            o[mt][2] *= ca;
            o[mt][3] *= cb;
        }
#pragma unroll
        for (int u = 0; u < SUB; ++u) {
            u32 b0 = dtc_pack(sc[u][0][0], sc[u][0][1]);
            u32 b1 = dtc_pack(sc[u][1][0], sc[u][1][1]);
#pragma unroll
            for (int mt = 0; mt < 2 * DPL; ++mt) {
                u32 w0 = vr[u][0][mt], w1 = vr[u][1][mt], w8 = vr[u][2][mt], w9 = vr[u][3][mt];
                dtc_mma(o[mt], __byte_perm(w0, w1, 0x5410), __byte_perm(w0, w1, 0x7632),
                        __byte_perm(w8, w9, 0x5410), __byte_perm(w8, w9, 0x7632), b0, b1);
            }
        }
        if (jn < bend) dtc_load_v<DPL, SUB>(vb, jn, bend, cap, rs, c, vr);
    }
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    if (c == 0) {
        wm[warp][r] = m;
        wl[warp][r] = l;
    }
#pragma unroll
    for (int mt = 0; mt < 2 * DPL; ++mt) {
        int d0 = r * 4 * DPL + 2 * mt;
        wacc[warp][2 * c][d0] = o[mt][0];
        wacc[warp][2 * c + 1][d0] = o[mt][1];
        wacc[warp][2 * c][d0 + 1] = o[mt][2];
        wacc[warp][2 * c + 1][d0 + 1] = o[mt][3];
    }
    __syncthreads();
    if (S == 1) {
        // One split (every window layer, and full layers up to 256 cached keys): the block
        // merges its warps, the new key and the sink itself; no partials through global
        // memory, no ticket.
        dtc_merge_one<HD>(h0, gq, nw, wm, wl, wacc, pf, hfn, hinv, out);
        return;
    }
    for (int i = threadIdx.x; i < gq * HD; i += blockDim.x) {
        int g = i / HD, d = i % HD;
        float M = fmaxf(fmaxf(wm[0][g], wm[1][g]), fmaxf(wm[2][g], wm[3][g]));
        float ov = 0.f, L = 0.f;
        if (M != NEG_INF) {
#pragma unroll
            for (int w = 0; w < 4; ++w) {
                if (wm[w][g] != NEG_INF) {
                    float f = __expf(wm[w][g] - M);
                    L += wl[w][g] * f;
                    ov += wacc[w][g][d] * f;
                }
            }
        }
        i64 row = (i64)(h0 + g) * S + s;
        part[row * HD + d] = ov;
        if (d == 0) {
            pml[row * 2] = M;
            pml[row * 2 + 1] = L;
        }
    }
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) ticket = atomicAdd(&tickets[kh], 1u);
    __syncthreads();
    if (ticket != (u32)(S - 1)) return;
    __threadfence();
    // The last block of this kv head merges, in parallel: the S (max, sum) pairs of each head
    // into shared memory (all of a thread's loads in flight at once), then per head the
    // overall max with the sink and the new key and each split's weight, then one float4 of
    // one head's output per thread over the splits, 16 loads in flight at a time.
    {
        constexpr int PER = (DTC_MAX_GS + 127) / 128;
        float2 v[PER];
#pragma unroll
        for (int u = 0; u < PER; ++u) {
            int i = threadIdx.x + u * blockDim.x;
            v[u] = i < gq * S ? __ldcg((const float2*)(pml + ((i64)h0 * S + i) * 2))
                              : make_float2(0.f, 0.f);
        }
#pragma unroll
        for (int u = 0; u < PER; ++u) {
            int i = threadIdx.x + u * blockDim.x;
            if (i < gq * S) {
                pf[i] = v[u].x;
                pl[i] = v[u].y;
            }
        }
    }
    __syncthreads();
    for (int g = warp; g < gq; g += 4) {
        float sn = nw.score[g], sink = nw.sink[g];
        float M = fmaxf(sink, sn);
        for (int ss = lane; ss < S; ss += 32) M = fmaxf(M, pf[g * S + ss]);
        M = warp_max(M);
        float L = 0.f;
        for (int ss = lane; ss < S; ss += 32) {
            float ms = pf[g * S + ss];
            float f = ms == NEG_INF ? 0.f : __expf(ms - M);
            pf[g * S + ss] = f;
            L += pl[g * S + ss] * f;
        }
        L = warp_sum(L);
        if (lane == 0) {
            float fn = __expf(sn - M);
            hfn[g] = fn;
            hinv[g] = 1.f / (L + __expf(sink - M) + fn);
        }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < gq * (HD / 4); i += blockDim.x) {
        int g = i / (HD / 4), d4 = i % (HD / 4), h = h0 + g;
        const float4* po = (const float4*)(part + (i64)h * S * HD) + d4;
        float4 vn = ((const float4*)nw.v)[d4];
        float fn = hfn[g];
        float4 acc = make_float4(fn * vn.x, fn * vn.y, fn * vn.z, fn * vn.w);
        for (int s0 = 0; s0 < S; s0 += 16) {
            float4 pv[16];
#pragma unroll
            for (int u = 0; u < 16; ++u)
                pv[u] = s0 + u < S ? __ldcg(po + (i64)(s0 + u) * (HD / 4)) : make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
            for (int u = 0; u < 16; ++u) {
                float f = s0 + u < S ? pf[g * S + s0 + u] : 0.f;
                acc.x += f * pv[u].x;
                acc.y += f * pv[u].y;
                acc.z += f * pv[u].z;
                acc.w += f * pv[u].w;
            }
        }
        float inv = hinv[g];
        ((float4*)(out + (i64)h * HD))[d4] =
            make_float4(acc.x * inv, acc.y * inv, acc.z * inv, acc.w * inv);
    }
    if (threadIdx.x == 0) tickets[kh] = 0u;
}

// A recorded decode step (step_graph.rs) passes `step`, its (token, position) slot: the
// position comes from there, and the chunk of each of the S splits is derived from it as the
// host does it (attention_dtc in decode_attn.rs), so one graph serves every position with the
// same number of splits. The slot is written before the graph launches, and every cached row
// the step reads was written by an earlier launch, so a recorded step reads them before it
// waits for the previous kernel (`early`).
__device__ __forceinline__ void dtc_step_position(const int* step, int window, int S, int& pos0,
                                                  int& chunk) {
    pos0 = step[1];
    const int lo = window > 0 ? max(0, pos0 - window + 1) : 0;
    const int per = (pos0 - lo + S - 1) / S;
    chunk = max(64, (per + 63) / 64 * 64);
}

#define ATTN_DTC_ENTRY(NAME, DPL)                                                               \
    extern "C" __global__ void __launch_bounds__(128) NAME(                                    \
        const float* q, const float* knew, const float* vnew, u16* kc, u16* vc, int pos0,      \
        int n_heads, int n_kv, int cap, int window, float scale, int chunk, float* part,       \
        u32* tickets, const u8* sinks, int sink_type, float* out, const int* step) {           \
        GRID_DEP_LAUNCH();                                                                     \
        if (step) {                                                                            \
            dtc_step_position(step, window, gridDim.y, pos0, chunk);                           \
        } else {                                                                               \
            GRID_DEP_WAIT();                                                                   \
        }                                                                                      \
        attn_dtc_t<DPL>(q, knew, vnew, kc, vc, pos0, n_heads, n_kv, cap, window, scale, chunk,  \
                        part, tickets, sinks, sink_type, out, step != nullptr);                \
    }
ATTN_DTC_ENTRY(attn_dtc_d1, 1)
ATTN_DTC_ENTRY(attn_dtc_d2, 2)
ATTN_DTC_ENTRY(attn_dtc_d3, 3)
ATTN_DTC_ENTRY(attn_dtc_d4, 4)
ATTN_DTC_ENTRY(attn_dtc_d5, 5)
ATTN_DTC_ENTRY(attn_dtc_d6, 6)
ATTN_DTC_ENTRY(attn_dtc_d7, 7)
ATTN_DTC_ENTRY(attn_dtc_d8, 8)
