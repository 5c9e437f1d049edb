// Elementwise and row-wise kernels: embedding, RMSNorm, residual add, RoPE, argmax.

// out[r, :] = table[ids[r], :] for a table of any type. grid (ceil(d/256), rows), block 256.
extern "C" __global__ void embed(const u8* table, int type, i64 nb, const u32* ids, int vocab,
                                 float* out, int d) {
    GRID_DEP_ENTRY();
    int r = blockIdx.y;
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= d) return;
    u32 id = ids[r];
    // The host checks ids; this keeps a bad id from reading outside the table regardless.
    out[(i64)r * d + c] = id < (u32)vocab ? wload(table, type, nb, (i64)id * d + c)
                                          : __int_as_float(0x7fc00000);
}

// RMSNorm of each row times weight. grid rows, block 256 (any multiple of 32 up to 1024).
extern "C" __global__ void __launch_bounds__(1024) rms_norm(const float* x, const u8* w, int wtype, float* y, int d,
                                    float eps) {
    GRID_DEP_ENTRY();
    __shared__ float red[32];
    const float* xr = x + (i64)blockIdx.x * d;
    float ss = 0.f;
    for (int c = threadIdx.x; c < d; c += blockDim.x) ss += xr[c] * xr[c];
    ss = warp_sum(ss);
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (lane == 0) red[warp] = ss;
    __syncthreads();
    if (warp == 0) {
        int nw = blockDim.x >> 5;
        float v = lane < nw ? red[lane] : 0.f;
        v = warp_sum(v);
        if (lane == 0) red[0] = v;
    }
    __syncthreads();
    float inv = 1.0f / sqrtf(red[0] / (float)d + eps);
    float* yr = y + (i64)blockIdx.x * d;
    for (int c = threadIdx.x; c < d; c += blockDim.x) yr[c] = xr[c] * inv * wload(w, wtype, 0, c);
}

// x += y. grid ceil(n/256), block 256.
extern "C" __global__ void add_assign(float* x, const float* y, i64 n) {
    GRID_DEP_ENTRY();
    i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] += y[i];
}

// cos/sin of position pos for one frequency, computed the way the reference does: angle =
// pos * inv_freq in f32, cos/sin in double, rounded to f32, times the attention factor. The one
// formula of rope, rope_qk and rope_cs.
__device__ __forceinline__ void rope_cos_sin(int pos, float inv_freq, float attn_factor,
                                             float& cf, float& sf) {
    float angle = __fmul_rn((float)pos, inv_freq);
    double s, c;
    sincos((double)angle, &s, &c);
    cf = (float)c * attn_factor;
    sf = (float)s * attn_factor;
}

// NEOX RoPE in place: x [t, n_heads * head_dim], row r at position pos0 + r (rope_cos_sin,
// rope_rotate). grid (t, n_heads), block head_dim / 2.
extern "C" __global__ void rope(float* x, int n_heads, int head_dim, int pos0,
                                const float* inv_freq, float attn_factor) {
    GRID_DEP_ENTRY();
    int r = blockIdx.x, h = blockIdx.y, i = threadIdx.x;
    int half = head_dim >> 1;
    if (i >= half) return;
    float cf, sf;
    rope_cos_sin(pos0 + r, inv_freq[i], attn_factor, cf, sf);
    float* hp = x + ((i64)r * n_heads + h) * head_dim;
    rope_rotate(hp[i], hp[i + half], cf, sf, hp[i], hp[i + half]);
}

__device__ __forceinline__ void argmax_merge(float& best, int& bi, float ov, int oi) {
    if (ov > best || (ov == best && oi < bi)) { best = ov; bi = oi; }
}

// (value, index) of the block's maximum over its threads' candidates, in thread 0.
__device__ __forceinline__ void argmax_block(float& best, int& bi) {
    __shared__ float sv[32];
    __shared__ int si[32];
    for (int o = 16; o > 0; o >>= 1)
        argmax_merge(best, bi, __shfl_xor_sync(0xffffffffu, best, o), __shfl_xor_sync(0xffffffffu, bi, o));
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (lane == 0) { sv[warp] = best; si[warp] = bi; }
    __syncthreads();
    if (warp == 0) {
        int nw = blockDim.x >> 5;
        best = lane < nw ? sv[lane] : NEG_INF;
        bi = lane < nw ? si[lane] : 0x7fffffff;
        for (int o = 16; o > 0; o >>= 1)
            argmax_merge(best, bi, __shfl_xor_sync(0xffffffffu, best, o), __shfl_xor_sync(0xffffffffu, bi, o));
    }
}

// Index of the largest value of each row, first on ties; NaN never wins. Block (g, r) reduces
// chunk g of row r into part; the last block of the row (ticket in counters, reset to zero)
// reduces the G partial results. grid (G, rows), block 256.
extern "C" __global__ void argmax_rows(const float* x, int n, float* part_v, int* part_i,
                                       u32* counters, u32* out) {
    GRID_DEP_ENTRY();
    __shared__ u32 ticket;
    int r = blockIdx.y, g = blockIdx.x, G = gridDim.x;
    int chunk = (n + G - 1) / G;
    int lo = g * chunk, hi = min(n, lo + chunk);
    const float* xr = x + (i64)r * n;
    float best = NEG_INF;
    int bi = 0x7fffffff;
    for (int c0 = lo + threadIdx.x; c0 < hi; c0 += blockDim.x * 4) {
        float v[4];
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            int c = c0 + u * blockDim.x;
            v[u] = c < hi ? xr[c] : NEG_INF;
        }
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            int c = c0 + u * blockDim.x;
            if (c < hi && v[u] > best) { best = v[u]; bi = c; }
            else if (c < hi && v[u] == best && c < bi) bi = c;
        }
    }
    argmax_block(best, bi);
    if (threadIdx.x == 0) {
        part_v[r * G + g] = best;
        part_i[r * G + g] = bi;
        __threadfence();
        ticket = atomicAdd(&counters[r], 1u);
    }
    __syncthreads();
    if (ticket != G - 1) return;
    __threadfence();
    best = NEG_INF;
    bi = 0x7fffffff;
    for (int i = threadIdx.x; i < G; i += blockDim.x) {
        float v = ((volatile float*)part_v)[r * G + i];
        int ii = ((volatile int*)part_i)[r * G + i];
        argmax_merge(best, bi, v, ii);
    }
    __syncthreads();
    argmax_block(best, bi);
    if (threadIdx.x == 0) {
        out[r] = bi == 0x7fffffff ? 0u : (u32)bi;
        counters[r] = 0;
    }
}

// ---- a temperature-softmax draw from one logits row (gptoss_backend::SoftmaxDraw) ----
// The chunk of block g of G over n values (as argmax_rows cuts a row).
__device__ __forceinline__ void sample_chunk(int n, int g, int G, int& lo, int& hi) {
    int chunk = (n + G - 1) / G;
    lo = min(n, g * chunk);
    hi = min(n, lo + chunk);
}

// Logit i after the repetition penalty (pen: the block's shared copy of the n_pen distinct
// penalized ids); NaN counts as -inf.
__device__ __forceinline__ float sample_logit(const float* x, int i, const int* pen, int n_pen,
                                              float pen_f) {
    float l = x[i];
    if (l != l) return NEG_INF;
    for (int j = 0; j < n_pen; ++j)
        if (pen[j] == i) return l > 0.f ? l / pen_f : l * pen_f;
    return l;
}

// The weight the host sampler gives logit l: exp((l - m) * inv_t) in f32 (expf, not the fast
// __expf, to stay within an ulp or two of the host's), 0 below min_w or for -inf.
__device__ __forceinline__ float sample_weight(float l, float m, float inv_t, float min_w) {
    if (l == NEG_INF) return 0.f;
    float w = expf((l - m) * inv_t);
    return w < min_w ? 0.f : w;
}

// Copies the (at most 256) penalized ids into shared memory.
__device__ __forceinline__ void sample_load_pen(const int* pen, int n_pen, int* spen) {
    for (int j = threadIdx.x; j < n_pen; j += blockDim.x) spen[j] = pen[j];
    __syncthreads();
}

__device__ __forceinline__ double block_sum_f64(double v) {
    __shared__ double sd[32];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (lane == 0) sd[warp] = v;
    __syncthreads();
    v = 0.0;
    if (warp == 0) {
        v = lane < (int)(blockDim.x >> 5) ? sd[lane] : 0.0;
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    }
    return v;  // in thread 0
}

// Pass 1: block g's largest penalized logit into part_m[g]; block 0 also zeroes sample_gather's
// count and weight sum (head, when not null). grid G, block 256.
extern "C" __global__ void sample_max(const float* x, int n, const int* pen, int n_pen,
                                      float pen_f, float* part_m, u32* head) {
    GRID_DEP_ENTRY();
    if (head != nullptr && blockIdx.x == 0 && threadIdx.x < 4) head[threadIdx.x] = 0u;
    __shared__ int spen[256];
    sample_load_pen(pen, n_pen, spen);
    int lo, hi;
    sample_chunk(n, blockIdx.x, gridDim.x, lo, hi);
    float m = NEG_INF;
    for (int i = lo + threadIdx.x; i < hi; i += blockDim.x) m = fmaxf(m, sample_logit(x, i, spen, n_pen, pen_f));
    int bi = 0;
    argmax_block(m, bi);
    if (threadIdx.x == 0) part_m[blockIdx.x] = m;
}

// The row's maximum from the G block maxima of sample_max, in every thread.
__device__ __forceinline__ float sample_row_max(const float* part_m, int G) {
    __shared__ float sm;
    float m = NEG_INF;
    for (int i = threadIdx.x; i < G; i += blockDim.x) m = fmaxf(m, part_m[i]);
    int bi = 0;
    argmax_block(m, bi);
    if (threadIdx.x == 0) sm = m;
    __syncthreads();
    return sm;
}

// A logit's bits as an unsigned key in the same order (-inf and NaN, mapped to -inf, lowest).
__device__ __forceinline__ u32 sample_key(float l) {
    const u32 b = __float_as_uint(l);
    return (b & 0x80000000u) ? ~b : b | 0x80000000u;
}

// One 8-bit digit (bits shift..shift+7) of a radix select of the k-th largest penalized logit:
// sel[0] holds the key's digits found so far (above shift), sel[1] how many tokens with that
// prefix are still wanted, sel[2..258) the digit's histogram, sel[258] the ticket. Every block
// counts its tokens whose higher digits match; the last block walks the histogram from the top,
// fixes the digit and how many of its tokens are still wanted, and clears the histogram and
// ticket for the next pass. After the pass at shift 0, sel[0] is the k-th largest key.
// grid G (as sample_max), block 256.
extern "C" __global__ void sample_kth(const float* x, int n, const int* pen, int n_pen,
                                      float pen_f, u32* sel, int shift) {
    GRID_DEP_ENTRY();
    __shared__ int spen[256];
    __shared__ u32 hist[256];
    __shared__ u32 ticket;
    hist[threadIdx.x] = 0u;  // blockDim.x == 256
    sample_load_pen(pen, n_pen, spen);
    const u32 prefix = sel[0];
    int lo, hi;
    sample_chunk(n, blockIdx.x, gridDim.x, lo, hi);
    for (int i = lo + threadIdx.x; i < hi; i += blockDim.x) {
        const u32 key = sample_key(sample_logit(x, i, spen, n_pen, pen_f));
        if (shift + 8 >= 32 || (key >> (shift + 8)) == (prefix >> (shift + 8)))
            atomicAdd(&hist[(key >> shift) & 255u], 1u);
    }
    __syncthreads();
    if (hist[threadIdx.x] != 0u) atomicAdd(&sel[2 + threadIdx.x], hist[threadIdx.x]);
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) ticket = atomicAdd(&sel[258], 1u);
    __syncthreads();
    if (ticket != gridDim.x - 1) return;
    __threadfence();
    if (threadIdx.x == 0) {
        u32 want = sel[1], acc = 0u;
        int d = 0;
        for (int b = 255; b >= 0; --b) {
            const u32 c = ((volatile u32*)sel)[2 + b];
            if (acc + c >= want) {
                d = b;
                break;
            }
            acc += c;
        }
        sel[0] = prefix | ((u32)d << shift);
        sel[1] = want - acc;
        sel[258] = 0u;
    }
    __syncthreads();
    sel[2 + threadIdx.x] = 0u;
}

// A cut draw's candidates (after sample_max): every token whose weight is at least floor_w
// (with kth not null instead: whose key is at least kth[0], the k-th largest from sample_kth),
// as (id, penalized logit's bits) pairs appended in any order, at most cap of them (head[0]
// counts them all, so a count past cap says the list is incomplete), and the sum of the other
// tokens' weights (f64 at head + 2). gptoss_model's Sampler finishes top-k / top-p on them.
// grid G (as sample_max), block 256.
extern "C" __global__ void sample_gather(const float* x, int n, const int* pen, int n_pen,
                                         float pen_f, float inv_t, float floor_w,
                                         const float* part_m, u32* head, u32* pairs, int cap,
                                         const u32* kth) {
    GRID_DEP_ENTRY();
    __shared__ int spen[256];
    sample_load_pen(pen, n_pen, spen);
    const float m = sample_row_max(part_m, gridDim.x);
    const u32 kkey = kth != nullptr ? kth[0] : 0u;
    int lo, hi;
    sample_chunk(n, blockIdx.x, gridDim.x, lo, hi);
    double rest = 0.0;
    const int lane = threadIdx.x & 31;
    // Whole warps step together (ballots), one atomic per warp for its candidates. Past the
    // cap the list is void (the caller samples the whole row), so the block stops early.
    if (m != NEG_INF)
        for (int i0 = lo; i0 < hi; i0 += blockDim.x) {
            const int i = i0 + threadIdx.x;
            float l = NEG_INF, w = 0.f;
            if (i < hi) {
                l = sample_logit(x, i, spen, n_pen, pen_f);
                w = sample_weight(l, m, inv_t, 0.f);
            }
            const bool take = i < hi && (kth != nullptr ? sample_key(l) >= kkey : w >= floor_w);
            const u32 mask = __ballot_sync(0xffffffffu, take);
            u32 base = 0u;
            if (mask != 0u && lane == 0) base = atomicAdd(&head[0], (u32)__popc(mask));
            base = __shfl_sync(0xffffffffu, base, 0);
            if (take) {
                const u32 slot = base + (u32)__popc(mask & ((1u << lane) - 1u));
                if (slot < (u32)cap) {
                    pairs[2 * slot] = (u32)i;
                    pairs[2 * slot + 1] = __float_as_uint(l);
                }
            } else {
                rest += w;
            }
            if (__syncthreads_or(threadIdx.x == 0 && *(volatile u32*)&head[0] > (u32)cap)) break;
        }
    rest = block_sum_f64(rest);
    if (threadIdx.x == 0 && rest != 0.0) atomicAdd((double*)(head + 2), rest);
}

// Pass 2: every block takes the row's maximum from part_m and sums its weights (f64) into
// part_s; the last block (ticket) finds the block, then the thread range, then the token whose
// running sum in id order first exceeds u times the total (u from its bits), as
// gptoss_model's Sampler::sample_at. out[0] = the token, or 0xffffffff when no logit is
// finite. grid G (as pass 1), block 256.
extern "C" __global__ void sample_draw(const float* x, int n, const int* pen, int n_pen,
                                       float pen_f, float inv_t, float min_w, long long u_bits,
                                       const float* part_m, double* part_s, u32* counters,
                                       u32* out) {
    GRID_DEP_ENTRY();
    __shared__ int spen[256];
    __shared__ u32 ticket;
    __shared__ double ts[256];
    __shared__ int sel_g;
    __shared__ double sel_base, sel_target;
    sample_load_pen(pen, n_pen, spen);
    const int G = gridDim.x;
    const float m = sample_row_max(part_m, G);
    int lo, hi;
    sample_chunk(n, blockIdx.x, G, lo, hi);
    double s = 0.0;
    if (m != NEG_INF)
        for (int i = lo + threadIdx.x; i < hi; i += blockDim.x)
            s += sample_weight(sample_logit(x, i, spen, n_pen, pen_f), m, inv_t, min_w);
    s = block_sum_f64(s);
    if (threadIdx.x == 0) {
        part_s[blockIdx.x] = s;
        __threadfence();
        ticket = atomicAdd(&counters[0], 1u);
    }
    __syncthreads();
    if (ticket != (u32)(G - 1)) return;
    __threadfence();
    if (threadIdx.x == 0) {
        counters[0] = 0;
        double total = 0.0;
        for (int g = 0; g < G; ++g) total += ((volatile double*)part_s)[g];
        const double target = __longlong_as_double(u_bits) * total;
        // The block whose range holds the target; rounding past the end: the last block
        // with weight (its last token of weight is then taken below).
        int gs = -1, glast = -1;
        double acc = 0.0, base = 0.0;
        for (int g = 0; g < G; ++g) {
            double v = ((volatile double*)part_s)[g];
            if (v > 0.0) glast = g;
            if (gs < 0 && target < acc + v) {
                gs = g;
                base = acc;
            }
            acc += v;
        }
        sel_g = gs >= 0 ? gs : glast;
        sel_base = gs >= 0 ? base : -1.0;  // -1: take the last token of weight
        sel_target = target;
    }
    __syncthreads();
    if (sel_g < 0) {
        if (threadIdx.x == 0) out[0] = 0xffffffffu;
        return;
    }
    // The chosen block's values, each thread a contiguous range, summed in id order.
    sample_chunk(n, sel_g, G, lo, hi);
    const int per = (hi - lo + blockDim.x - 1) / blockDim.x;
    {
        const int a = min(hi, lo + (int)threadIdx.x * per), b = min(hi, a + per);
        double ws = 0.0;
        for (int i = a; i < b; ++i) ws += sample_weight(sample_logit(x, i, spen, n_pen, pen_f), m, inv_t, min_w);
        ts[threadIdx.x] = ws;
    }
    __syncthreads();
    if (threadIdx.x != 0) return;
    u32 tok = 0xffffffffu;
    int t_last = blockDim.x - 1;  // where to look back from for the last token of weight
    if (sel_base >= 0.0) {
        const double tgt = sel_target;
        double acc = sel_base;
        for (int t = 0; t < (int)blockDim.x; ++t) {
            if (tgt < acc + ts[t]) {
                const int a = min(hi, lo + t * per), b = min(hi, a + per);
                for (int i = a; i < b && tok == 0xffffffffu; ++i) {
                    acc += sample_weight(sample_logit(x, i, spen, n_pen, pen_f), m, inv_t, min_w);
                    if (tgt < acc) tok = (u32)i;
                }
                t_last = t;
                break;
            }
            acc += ts[t];
        }
    }
    // Rounding left the target past the sums found (past the row's total, or between the two
    // orders of summing a range): the last token of weight before that point, as the host
    // sampler takes the last kept token.
    for (int t = t_last; t >= 0 && tok == 0xffffffffu; --t) {
        if (ts[t] <= 0.0) continue;
        const int a = min(hi, lo + t * per), b = min(hi, a + per);
        for (int i = b - 1; i >= a && tok == 0xffffffffu; --i)
            if (sample_weight(sample_logit(x, i, spen, n_pen, pen_f), m, inv_t, min_w) > 0.f) tok = (u32)i;
    }
    out[0] = tok;
}

// Busy-waits `cycles` clock ticks (one thread): lets a benchmark queue work behind it so that
// event timings measure back-to-back kernel execution rather than launch gaps.
extern "C" __global__ void spin(long long cycles) {
    GRID_DEP_ENTRY();
    long long t0 = clock64();
    while (clock64() - t0 < cycles) {
    }
}

// Expert parallelism: this rank holds experts [lo, hi) of the router's n. After the router's
// top-k (identical on every rank), a pick outside the range becomes -1, which every MoE kernel
// skips, and a pick inside becomes its index in the local stacks, id - lo. ids [n] in place.
// grid (ceil(n / 256)), block 256.
extern "C" __global__ void moe_localize_ids(int* ids, int n, int lo, int hi) {
    GRID_DEP_ENTRY();
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    int e = ids[i];
    ids[i] = e >= lo && e < hi ? e - lo : -1;
}

// With `add`: x += y, then out = RMSNorm(x) * weight, per row; without, out = RMSNorm(x) *
// weight (y unused). One block per row holding the row in registers (float4 per thread, up to
// RN_R of them: the host checks d % 4 == 0 and d <= 4 * RN_R * blockDim.x), so the row, y and
// the weight are loaded once, all at the same time. Same arithmetic as rms_norm. grid rows,
// block a multiple of 32 up to 1024.
#define RN_R 4
extern "C" __global__ void __launch_bounds__(1024) add_rms_norm(float* x, const float* y,
                                                                const u8* w, int wtype,
                                                                float* out, int d, float eps,
                                                                int add) {
    GRID_DEP_ENTRY();
    __shared__ float red[32];
    const int n4 = d >> 2;
    float4* xr = (float4*)(x + (i64)blockIdx.x * d);
    const float4* yr = (const float4*)(y + (i64)blockIdx.x * d);
    float4 xv[RN_R], wv[RN_R];
    float ss = 0.f;
#pragma unroll
    for (int i = 0; i < RN_R; ++i) {
        int c4 = threadIdx.x + i * blockDim.x;
        if (c4 < n4) {
            xv[i] = xr[c4];
            if (wtype == T_F32) {
                wv[i] = ((const float4*)w)[c4];
            } else {
                wv[i] = make_float4(wload(w, wtype, 0, 4 * c4), wload(w, wtype, 0, 4 * c4 + 1),
                                    wload(w, wtype, 0, 4 * c4 + 2), wload(w, wtype, 0, 4 * c4 + 3));
            }
            if (add) {
                float4 b = yr[c4];
                xv[i].x += b.x;
                xv[i].y += b.y;
                xv[i].z += b.z;
                xv[i].w += b.w;
                xr[c4] = xv[i];
            }
            ss += xv[i].x * xv[i].x + xv[i].y * xv[i].y + xv[i].z * xv[i].z + xv[i].w * xv[i].w;
        }
    }
    ss = warp_sum(ss);
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (lane == 0) red[warp] = ss;
    __syncthreads();
    if (warp == 0) {
        int nw = blockDim.x >> 5;
        float v = lane < nw ? red[lane] : 0.f;
        v = warp_sum(v);
        if (lane == 0) red[0] = v;
    }
    __syncthreads();
    float inv = 1.0f / sqrtf(red[0] / (float)d + eps);
    float4* orow = (float4*)(out + (i64)blockIdx.x * d);
#pragma unroll
    for (int i = 0; i < RN_R; ++i) {
        int c4 = threadIdx.x + i * blockDim.x;
        if (c4 < n4)
            orow[c4] = make_float4(xv[i].x * inv * wv[i].x, xv[i].y * inv * wv[i].y,
                                   xv[i].z * inv * wv[i].z, xv[i].w * inv * wv[i].w);
    }
}

// cos and sin of one position for each RoPE frequency, times the attention factor, computed as
// `rope` does: cs [2 half] = (cos..., sin...). Read by the fused one-token q/k/v + RoPE kernels
// (gemvf3_*_r1_rope). grid 1, block a multiple of 32.
// `step`, when not null, is a recorded decode step's (token, position) slot: the position is
// read from it, so that one recorded graph serves every position (step_graph.rs).
extern "C" __global__ void rope_cs(const float* inv_freq, int half, int pos, float attn_factor,
                                   float* cs, const int* step) {
    GRID_DEP_ENTRY();
    if (step) pos = step[1];
    for (int i = threadIdx.x; i < half; i += blockDim.x)
        rope_cos_sin(pos, inv_freq[i], attn_factor, cs[i], cs[half + i]);
}

// RoPE of q [t, nq * head_dim] and k [t, nk * head_dim] in one launch, the same arithmetic
// as `rope`. Block (r, y) takes row r's heads y * ROPE_QK_HEADS .. (q's, then k's): the row's
// cos/sin pairs are computed once per block into shared memory (a double-precision sincos
// each, so not once per head), then each thread rotates pairs of the block's heads.
// grid (t, ceil((nq + nk) / ROPE_QK_HEADS)), block 256; head_dim <= 2048.
#define ROPE_QK_HEADS 16
extern "C" __global__ void __launch_bounds__(256) rope_qk(float* q, int nq, float* k, int nk,
                                                         int head_dim, int pos0,
                                                         const float* inv_freq,
                                                         float attn_factor) {
    GRID_DEP_ENTRY();
    __shared__ float cs[2048];  // cos of pair i at i, sin at half + i
    int r = blockIdx.x, half = head_dim >> 1;
    for (int i = threadIdx.x; i < half; i += blockDim.x)
        rope_cos_sin(pos0 + r, inv_freq[i], attn_factor, cs[i], cs[half + i]);
    __syncthreads();
    int h0 = blockIdx.y * ROPE_QK_HEADS, nh = min(ROPE_QK_HEADS, nq + nk - h0);
    for (int idx = threadIdx.x; idx < nh * half; idx += blockDim.x) {
        int h = h0 + idx / half, i = idx % half;
        float* hp = h < nq ? q + ((i64)r * nq + h) * head_dim
                           : k + ((i64)r * nk + (h - nq)) * head_dim;
        rope_rotate(hp[i], hp[i + half], cs[i], cs[half + i], hp[i], hp[i + half]);
    }
}
