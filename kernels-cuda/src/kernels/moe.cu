// The GPT-OSS MoE block: router top-k with softmax over the chosen k, then per (token, chosen
// expert) the gate and up projections in one pass with SwiGLU-OAI and biases, then the down
// projection with the routing weight and the sum over the k experts, all on the GPU so that a
// decode step needs no host round trip.

#define MOE_MAX_EXPERTS 256

__device__ __forceinline__ float swiglu_oai(float gate, float up) {
    float g = fminf(gate, 7.0f);
    float u = fminf(fmaxf(up, -7.0f), 7.0f);
    return g / (1.0f + expf(-1.702f * g)) * (u + 1.0f);
}

// Row r's share of x's four int8 planes (MXFP4 product order), from the row's values xr (global
// or shared memory) and the per-warp maxima of |x| in ared [8]: block e writes groups
// e * per .. of the row's 32-element groups, so that no block carries the whole row. With xn
// non-null the block also copies the same share of xr into the f32 row xn.
__device__ __forceinline__ void router_planes(const float* xr, const float* ared, int r, int e,
                                              int d_model, u8* xq, float* xsc, float* xn) {
    float amax = 0.f;
    for (int i = 0; i < 8; ++i) amax = fmaxf(amax, ared[i]);
    float inv = amax > 0.f ? 127.f / amax : 0.f;
    if (e == 0 && threadIdx.x == 0) xsc[r] = amax / 127.f;
    u8* dst = xq + (i64)r * 4 * d_model;
    int groups = d_model >> 5, per = (groups + gridDim.x - 1) / gridDim.x;
    int i1 = min(groups, (e + 1) * per) * 32;
    for (int i = e * per * 32 + threadIdx.x; i < i1; i += blockDim.x) {
        float v = xr[i];
        if (xn != nullptr) xn[(i64)r * d_model + i] = v;
        u32 p = planes4(v, inv);
        int pos = (i & ~31) + 2 * (i & 15) + ((i >> 4) & 1);
#pragma unroll
        for (int pl = 0; pl < 4; ++pl) dst[pl * d_model + pos] = (u8)(p >> (8 * pl));
    }
}

// Thread 0 stores the block's logit (valid in thread 0) and takes row r's ticket; true in every
// thread of the row's last block to finish. The ticket with release semantics orders the logit
// (and every load the block made) before it, with no separate fence; acquire, so that the last
// block sees every other block's logit.
__device__ __forceinline__ bool router_ticket(float logit, float* logits, u32* counters, int r,
                                              int e, int n_exp) {
    __shared__ u32 ticket;
    if (threadIdx.x == 0) {
        logits[(i64)r * n_exp + e] = logit;
        u32 t;
        asm volatile("atom.acq_rel.gpu.global.add.u32 %0, [%1], 1;"
                     : "=r"(t)
                     : "l"(counters + r)
                     : "memory");
        ticket = t;
    }
    __syncthreads();
    return ticket == gridDim.x - 1;
}

// Expert i's rank in the row lr (value descending, id ascending; NaN stored as -inf, so every
// rank stays distinct), and the expert and its logit at that rank in sel / vals when it is
// below k. One thread per expert, all at once: the ranks below k are the k largest in the
// order k rounds of a maximum would pick them (ties to the lower id), without those rounds'
// chain of shuffles.
__device__ __forceinline__ void topk_rank(const float* lr, int n_exp, int k, int i, int* sel,
                                          float* vals) {
    float v = lr[i];
    int rank = 0;
    for (int j = 0; j < n_exp; ++j) {
        float u = lr[j];
        rank += (u > v) | ((u == v) & (j < i));
    }
    if (rank < k) {
        sel[rank] = i;
        vals[rank] = v;
    }
}

// The softmax of the k picks of row r (expf of the difference to the largest, the sum in rank
// order) into ids / wts, by one thread.
__device__ __forceinline__ void topk_softmax(float* vals, const int* sel, int k, int r, int* ids,
                                             float* wts) {
    float mx = vals[0];
    for (int j = 1; j < k; ++j) mx = fmaxf(mx, vals[j]);
    float sum = 0.f;
    for (int j = 0; j < k; ++j) {
        vals[j] = expf(vals[j] - mx);
        sum += vals[j];
    }
    for (int j = 0; j < k; ++j) {
        ids[r * k + j] = sel[j];
        wts[r * k + j] = vals[j] / sum;
    }
}

// The last block of row r: the k largest logits (ties: lower id) and their softmax into ids and
// wts; resets the row's ticket. Thread 0's acquire, then the barrier, ordered the other blocks'
// logits before these loads (from L2: an SM's L1 may hold an earlier step's values there).
__device__ __forceinline__ void router_select(const float* logits, u32* counters, int r,
                                              int n_exp, int k, int* ids, float* wts) {
    __shared__ float lr[MOE_MAX_EXPERTS];
    __shared__ int sel[16];
    __shared__ float vals[16];
    for (int i = threadIdx.x; i < n_exp; i += blockDim.x) {
        float v = __ldcg(logits + (i64)r * n_exp + i);
        lr[i] = v != v ? NEG_INF : v;  // NaN ranks as -inf: every rank below stays distinct
    }
    __syncthreads();
    for (int i = threadIdx.x; i < n_exp; i += blockDim.x) topk_rank(lr, n_exp, k, i, sel, vals);
    __syncthreads();
    if (threadIdx.x != 0) return;
    counters[r] = 0;
    topk_softmax(vals, sel, k, r, ids, wts);
}

// Router logits and top-k for many rows (prefill): block b takes rows RR_ROWS b .. and every
// expert, so each router row is read once per RR_ROWS tokens instead of once per token. Warp w
// sums the w-th eighth of k for all the block's rows, lane l experts l, l + 32, .. (n_exp / 32
// of them), streaming float4s of x (the same address across the warp) and of the router rows
// with no barrier in the loop; the eight partial sums are then added in warp order, plus the
// bias. Warp w then ranks and softmaxes row w as router_select does (topk_rank, topk_softmax).
// F32 router, n_exp a multiple of 32 up to RR_MAX_EXPERTS, d_model % 32 == 0.
// grid ceil(t / RR_ROWS), block 256.
#define RR_ROWS 8
#define RR_MAX_EXPERTS 128
extern "C" __global__ void __launch_bounds__(256)
    moe_router_rows(const float* x, int t, int d_model, const float* wr, const u8* br, int brt,
                    int n_exp, int k, int* ids, float* wts) {
    GRID_DEP_ENTRY();
    __shared__ float part[8][RR_ROWS][RR_MAX_EXPERTS];
    __shared__ float lg[RR_ROWS][RR_MAX_EXPERTS];
    __shared__ int sel[RR_ROWS][16];
    __shared__ float vals[RR_ROWS][16];
    int r0 = blockIdx.x * RR_ROWS, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int epl = n_exp >> 5, kw = d_model >> 3;
    float acc[RR_ROWS][RR_MAX_EXPERTS / 32];
#pragma unroll
    for (int r = 0; r < RR_ROWS; ++r)
#pragma unroll
        for (int j = 0; j < RR_MAX_EXPERTS / 32; ++j) acc[r][j] = 0.f;
    const float* xr[RR_ROWS];
#pragma unroll
    for (int r = 0; r < RR_ROWS; ++r) xr[r] = x + (i64)min(r0 + r, t - 1) * d_model;
#pragma unroll 2
    for (int kk = warp * kw; kk < (warp + 1) * kw; kk += 4) {
        float4 xv[RR_ROWS];
#pragma unroll
        for (int r = 0; r < RR_ROWS; ++r) xv[r] = *(const float4*)(xr[r] + kk);
#pragma unroll
        for (int j = 0; j < RR_MAX_EXPERTS / 32; ++j) {
            if (j < epl) {
                float4 wv = __ldg((const float4*)(wr + (i64)(lane + 32 * j) * d_model + kk));
#pragma unroll
                for (int r = 0; r < RR_ROWS; ++r)
                    acc[r][j] += xv[r].x * wv.x + xv[r].y * wv.y + xv[r].z * wv.z + xv[r].w * wv.w;
            }
        }
    }
#pragma unroll
    for (int r = 0; r < RR_ROWS; ++r)
#pragma unroll
        for (int j = 0; j < RR_MAX_EXPERTS / 32; ++j)
            if (j < epl) part[warp][r][lane + 32 * j] = acc[r][j];
    __syncthreads();
    for (int idx = threadIdx.x; idx < RR_ROWS * n_exp; idx += blockDim.x) {
        int r = idx / n_exp, e = idx - r * n_exp;
        float v = 0.f;
#pragma unroll
        for (int w = 0; w < 8; ++w) v += part[w][r][e];
        v += wload(br, brt, 0, e);
        lg[r][e] = v != v ? NEG_INF : v;
    }
    __syncthreads();
    int row = warp, r = r0 + row;
    if (r >= t) return;
    for (int i = lane; i < n_exp; i += 32) topk_rank(lg[row], n_exp, k, i, sel[row], vals[row]);
    __syncwarp();
    if (lane == 0) topk_softmax(vals[row], sel[row], k, r, ids, wts);
}

// Router logits and top-k in one launch: block (e, r) computes expert e's logit of token r
// (256 threads over d_model, loads issued 4 at a time) into `logits`; the last block of the row
// to finish (a per-row ticket in `counters`, which it resets to zero) picks the k largest
// (ties: lower id; each expert's rank computed by its own thread) and softmaxes them.
// grid (n_exp, t), block 256.
// With `xq` non-null, the blocks of a row also write it as four int8 planes in the MXFP4
// product order (xq [t, 4, d_model], scale xsc [t]) for the decode MoE kernels: each block
// finds the row's max |x| from the values it loaded for its logit, and writes its share of the
// 32-element groups (d_model % 32 == 0), so that no block carries the whole row's planes.
__device__ __forceinline__ void router_topk(const float* x, int d_model, const u8* wr, int wrt,
                                            i64 nbr, const u8* br, int brt, int n_exp, int k,
                                            float* logits, u32* counters, int* ids, float* wts,
                                            u8* xq, float* xsc) {
    __shared__ float red[8];
    int r = blockIdx.y, e = blockIdx.x;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const float* xr = x + (i64)r * d_model;
    // The bias is never written: loaded before the wait, off the chain after the sums.
    float bias = threadIdx.x == 0 ? wload(br, brt, 0, e) : 0.f;
    float a = 0.f, amax = 0.f;  // amax: the largest |x| this thread loaded
    if (wrt == T_F32 && (d_model & 3) == 0) {
        // The usual case (an F32 router): float4 loads, all of a thread's issued together for
        // d_model <= 4096.
        const float4* w4 = (const float4*)(wr + (i64)e * d_model * 4);
        const float4* x4 = (const float4*)xr;
        int n4 = d_model >> 2;
        for (int c0 = threadIdx.x; c0 < n4; c0 += 1024) {
            float4 wv[4], xv[4];
#pragma unroll
            for (int u = 0; u < 4; ++u) {
                int c = c0 + 256 * u;
                wv[u] = c < n4 ? __ldg(w4 + c) : make_float4(0.f, 0.f, 0.f, 0.f);
            }
            // The router is never written: only x waits for the previous kernel.
            GRID_DEP_WAIT();
#pragma unroll
            for (int u = 0; u < 4; ++u) {
                int c = c0 + 256 * u;
                xv[u] = c < n4 ? x4[c] : make_float4(0.f, 0.f, 0.f, 0.f);
            }
#pragma unroll
            for (int u = 0; u < 4; ++u) {
                a += wv[u].x * xv[u].x + wv[u].y * xv[u].y + wv[u].z * xv[u].z + wv[u].w * xv[u].w;
                amax = fmaxf(amax, fmaxf(fmaxf(fabsf(xv[u].x), fabsf(xv[u].y)),
                                         fmaxf(fabsf(xv[u].z), fabsf(xv[u].w))));
            }
        }
    } else {
        GRID_DEP_WAIT();
#pragma unroll 4
        for (int c = threadIdx.x; c < d_model; c += 256) {
            a += wload(wr, wrt, nbr, (i64)e * d_model + c) * xr[c];
            amax = fmaxf(amax, fabsf(xr[c]));
        }
    }
    GRID_DEP_WAIT();  // threads that ran no step above (4 * threadIdx.x >= d_model)
    __shared__ float ared[8];
    a = warp_sum(a);
    amax = warp_max(amax);
    if (lane == 0) {
        red[warp] = a;
        ared[warp] = amax;
    }
    __syncthreads();
    if (xq != nullptr) router_planes(xr, ared, r, e, d_model, xq, xsc, nullptr);
    float logit = 0.f;
    if (threadIdx.x == 0) {
        for (int i = 0; i < 8; ++i) logit += red[i];
        logit += bias;
    }
    if (router_ticket(logit, logits, counters, r, e, n_exp))
        router_select(logits, counters, r, n_exp, k, ids, wts);
}

extern "C" __global__ void moe_router_topk(const float* x, int d_model, const u8* wr, int wrt,
                                           i64 nbr, const u8* br, int brt, int n_exp, int k,
                                           float* logits, u32* counters, int* ids, float* wts) {
    GRID_DEP_LAUNCH();
    router_topk(x, d_model, wr, wrt, nbr, br, brt, n_exp, k, logits, counters, ids, wts, nullptr,
                nullptr);
}

extern "C" __global__ void moe_router_topk_q(const float* x, int d_model, const u8* wr, int wrt,
                                             i64 nbr, const u8* br, int brt, int n_exp, int k,
                                             float* logits, u32* counters, int* ids, float* wts,
                                             u8* xq, float* xsc) {
    GRID_DEP_LAUNCH();
    router_topk(x, d_model, wr, wrt, nbr, br, brt, n_exp, k, logits, counters, ids, wts, xq, xsc);
}

// moe_router_topk_q with the residual add and RMSNorm before the MoE fused in (the decode
// step's add_rms_norm before the router: a launch and a kernel boundary fewer per layer).
// Every block of row r loads h = res + y and the norm weight and computes the row's RMSNorm
// itself (add_rms_norm's arithmetic, its sum of squares in another order) into shared memory;
// from there its logit, its share of x's planes and its share of the normed row xn (f32, for
// the MoE paths that read x as floats). The row's last block, after the ticket (so after
// every block of the row has read res), writes h back to res.
// F32 norm weight and router, d_model % 32 == 0, d_model <= 4 * 4 * 256 (the host checks).
// grid (n_exp, t), block 256.
#define ROUTER_ADD_MAX_D 4096
extern "C" __global__ void __launch_bounds__(256) moe_router_topk_q_add(
    float* res, const float* y, const float* nw, float eps, float* xn, int d_model, const u8* wr,
    const u8* br, int brt, int n_exp, int k, float* logits, u32* counters, int* ids, float* wts,
    u8* xq, float* xsc) {
    GRID_DEP_LAUNCH();
    __shared__ float4 xs4[ROUTER_ADD_MAX_D / 4];
    __shared__ float red[8], ared[8];
    int r = blockIdx.y, e = blockIdx.x;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int n4 = d_model >> 2;
    // The router, its bias and the norm weight are never written: loaded before the wait.
    float bias = threadIdx.x == 0 ? wload(br, brt, 0, e) : 0.f;
    const float4* w4 = (const float4*)(wr + (i64)e * d_model * 4);
    const float4* g4 = (const float4*)nw;
    float4 wv[4], gv[4], hv[4];
#pragma unroll
    for (int u = 0; u < 4; ++u) {
        int c = threadIdx.x + 256 * u;
        if (c < n4) {
            wv[u] = __ldg(w4 + c);
            gv[u] = __ldg(g4 + c);
        }
    }
    GRID_DEP_WAIT();
    float4* r4 = (float4*)(res + (i64)r * d_model);
    const float4* y4 = (const float4*)(y + (i64)r * d_model);
    float ss = 0.f;
#pragma unroll
    for (int u = 0; u < 4; ++u) {
        int c = threadIdx.x + 256 * u;
        if (c < n4) {
            float4 a = r4[c], b = y4[c];
            hv[u] = make_float4(a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w);
            ss += hv[u].x * hv[u].x + hv[u].y * hv[u].y + hv[u].z * hv[u].z + hv[u].w * hv[u].w;
        }
    }
    ss = warp_sum(ss);
    if (lane == 0) red[warp] = ss;
    __syncthreads();
    float tot = 0.f;
    for (int i = 0; i < 8; ++i) tot += red[i];
    float inv = 1.0f / sqrtf(tot / (float)d_model + eps);
    float a = 0.f, amax = 0.f;
#pragma unroll
    for (int u = 0; u < 4; ++u) {
        int c = threadIdx.x + 256 * u;
        if (c < n4) {
            float4 v = make_float4(hv[u].x * inv * gv[u].x, hv[u].y * inv * gv[u].y,
                                   hv[u].z * inv * gv[u].z, hv[u].w * inv * gv[u].w);
            xs4[c] = v;
            a += wv[u].x * v.x + wv[u].y * v.y + wv[u].z * v.z + wv[u].w * v.w;
            amax = fmaxf(amax, fmaxf(fmaxf(fabsf(v.x), fabsf(v.y)), fmaxf(fabsf(v.z), fabsf(v.w))));
        }
    }
    a = warp_sum(a);
    amax = warp_max(amax);
    __syncthreads();  // every thread has summed red[] above before it is written again
    if (lane == 0) {
        red[warp] = a;
        ared[warp] = amax;
    }
    __syncthreads();
    router_planes((const float*)xs4, ared, r, e, d_model, xq, xsc, xn);
    float logit = 0.f;
    if (threadIdx.x == 0) {
        for (int i = 0; i < 8; ++i) logit += red[i];
        logit += bias;
    }
    if (!router_ticket(logit, logits, counters, r, e, n_exp)) return;
#pragma unroll
    for (int u = 0; u < 4; ++u) {
        int c = threadIdx.x + 256 * u;
        if (c < n4) r4[c] = hv[u];
    }
    router_select(logits, counters, r, n_exp, k, ids, wts);
}

// MXFP4 gate+up for each (token, slot): h [t*k, n_ff] f32. The block quantizes its token's x
// into shared memory (dynamic: d_model bytes + d_model/32 floats); each warp computes one row
// (gate and up together, a lane's weight loads all issued before use).
// grid (ceil(n_ff / 8), t * k), block 256.
extern "C" __global__ void __launch_bounds__(256) moe_gate_up_mxfp4(
    const float* x, int d_model, const u8* wg, i64 nbg, const u8* wu, i64 nbu, const u8* bg,
    int bgt, const u8* bu, int but, const int* ids, int k, int n_ff, float* h) {
    GRID_DEP_ENTRY();
    extern __shared__ int4 moe_smem[];
    i8* xq = (i8*)moe_smem;
    float* xd = (float*)(xq + d_model);
    int pair = blockIdx.y, row = pair / k;
    int nbk = d_model >> 5;
    quantize_to_smem(x + (i64)row * d_model, nbk, xq, xd);
    __syncthreads();
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int f = blockIdx.x * 8 + warp;
    if (f >= n_ff) return;
    int e = ids[pair];
    if (e < 0) return;  // a pick of another rank's expert (expert parallelism)
    const u8* ge = wg + nbg * 16;
    const u8* ue = wu + nbu * 16;
    i64 rb = ((i64)e * n_ff + f) * nbk;
    float ag = 0.f, au = 0.f;
    for (int kb0 = lane; kb0 < nbk; kb0 += 32 * GEMV_UNROLL) {
        int4 qg[GEMV_UNROLL], qu[GEMV_UNROLL];
        u32 sg[GEMV_UNROLL], su[GEMV_UNROLL];
#pragma unroll
        for (int u = 0; u < GEMV_UNROLL; ++u) {
            int kb = kb0 + 32 * u;
            if (kb < nbk) {
                i64 bi = rb + kb;
                qg[u] = __ldg((const int4*)(wg + bi * 16));
                qu[u] = __ldg((const int4*)(wu + bi * 16));
                sg[u] = __ldg(ge + bi);
                su[u] = __ldg(ue + bi);
            }
        }
#pragma unroll
        for (int u = 0; u < GEMV_UNROLL; ++u) {
            int kb = kb0 + 32 * u;
            if (kb < nbk) {
                const int4* xp = (const int4*)(xq + kb * 32);
                float dx = 0.5f * xd[kb];
                ag += (float)dot_mxfp4_block(qg[u], xp) * e8m0_to_f32(sg[u]) * dx;
                au += (float)dot_mxfp4_block(qu[u], xp) * e8m0_to_f32(su[u]) * dx;
            }
        }
    }
    ag = warp_sum(ag);
    au = warp_sum(au);
    if (lane == 0) {
        i64 bidx = (i64)e * n_ff + f;
        h[(i64)pair * n_ff + f] = swiglu_oai(ag + wload(bg, bgt, 0, bidx), au + wload(bu, but, 0, bidx));
    }
}

// MXFP4 down projection, routing-weighted sum over the k slots: y [t, d_model]. The block
// quantizes its token's k rows of h [t*k, n_ff] into shared memory (dynamic: k*n_ff bytes, then
// k*n_ff/32 floats). grid (ceil(d_model / 8), t), block 256.
extern "C" __global__ void __launch_bounds__(256) moe_down_mxfp4(
    const float* h, int n_ff, const u8* wd, i64 nbd, const u8* bd, int bdt, const int* ids,
    const float* wts, int k, int d_model, float* y) {
    GRID_DEP_ENTRY();
    extern __shared__ int4 down_smem[];
    i8* hq = (i8*)down_smem;
    float* hd = (float*)(hq + k * n_ff);
    int row = blockIdx.y;
    quantize_to_smem(h + (i64)row * k * n_ff, k * (n_ff >> 5), hq, hd);
    __syncthreads();
    int d = blockIdx.x * 8 + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (d >= d_model) return;
    int nbk = n_ff >> 5;
    const u8* de = wd + nbd * 16;
    float acc = 0.f;
#pragma unroll 4
    for (int j = 0; j < k; ++j) {
        int pair = row * k + j;
        int e = ids[pair];
        if (e < 0) continue;  // another rank's expert: contributes nothing here
        float wgt = wts[pair];
        i64 rb = ((i64)e * d_model + d) * nbk;
        float a = 0.f;
        for (int kb0 = lane; kb0 < nbk; kb0 += 32 * GEMV_UNROLL) {
            int4 q[GEMV_UNROLL];
            u32 sc[GEMV_UNROLL];
#pragma unroll
            for (int u = 0; u < GEMV_UNROLL; ++u) {
                int kb = kb0 + 32 * u;
                if (kb < nbk) {
                    q[u] = __ldg((const int4*)(wd + (rb + kb) * 16));
                    sc[u] = __ldg(de + rb + kb);
                }
            }
#pragma unroll
            for (int u = 0; u < GEMV_UNROLL; ++u) {
                int kb = kb0 + 32 * u;
                if (kb < nbk) {
                    int xb = j * nbk + kb;
                    a += (float)dot_mxfp4_block(q[u], (const int4*)(hq + xb * 32)) *
                         (0.5f * e8m0_to_f32(sc[u])) * hd[xb];
                }
            }
        }
        if (lane == 0) a += wload(bd, bdt, 0, (i64)e * d_model + d);
        acc += wgt * a;
    }
    acc = warp_sum(acc);
    if (lane == 0) y[(i64)row * d_model + d] = acc;
}

// Any weight type, f32 activations (the reference-grade path for expert types other than
// MXFP4). Same grids as the MXFP4 kernels.
extern "C" __global__ void moe_gate_up_any(const float* x, int d_model, const u8* wg, int gt,
                                           i64 nbg, const u8* wu, int ut, i64 nbu, const u8* bg,
                                           int bgt, const u8* bu, int but, const int* ids, int k,
                                           int n_ff, float* h) {
    GRID_DEP_ENTRY();
    int f = blockIdx.x * 8 + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (f >= n_ff) return;
    int pair = blockIdx.y, row = pair / k;
    int e = ids[pair];
    if (e < 0) return;  // another rank's expert
    i64 base = ((i64)e * n_ff + f) * d_model;
    const float* xr = x + (i64)row * d_model;
    float ag = 0.f, au = 0.f;
    for (int c = lane; c < d_model; c += 32) {
        ag += wload(wg, gt, nbg, base + c) * xr[c];
        au += wload(wu, ut, nbu, base + c) * xr[c];
    }
    ag = warp_sum(ag);
    au = warp_sum(au);
    if (lane == 0) {
        i64 bidx = (i64)e * n_ff + f;
        h[(i64)pair * n_ff + f] = swiglu_oai(ag + wload(bg, bgt, 0, bidx), au + wload(bu, but, 0, bidx));
    }
}

extern "C" __global__ void moe_down_any(const float* h, int n_ff, const u8* wd, int dt, i64 nbd,
                                        const u8* bd, int bdt, const int* ids, const float* wts,
                                        int k, int d_model, float* y) {
    GRID_DEP_ENTRY();
    int d = blockIdx.x * 8 + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (d >= d_model) return;
    int row = blockIdx.y;
    float acc = 0.f;
    for (int j = 0; j < k; ++j) {
        int pair = row * k + j;
        int e = ids[pair];
        if (e < 0) continue;  // another rank's expert
        i64 base = ((i64)e * d_model + d) * n_ff;
        const float* hr = h + (i64)pair * n_ff;
        float a = 0.f;
        for (int c = lane; c < n_ff; c += 32) a += wload(wd, dt, nbd, base + c) * hr[c];
        if (lane == 0) a += wload(bd, bdt, 0, (i64)e * d_model + d);
        acc += wts[pair] * a;
    }
    acc = warp_sum(acc);
    if (lane == 0) y[(i64)row * d_model + d] = acc;
}

// f32-activation MoE kernels (the default): gate+up writes h [t*k, n_ff] f32 with SwiGLU-OAI;
// down reads it. grid (ceil(n_ff / 8), t * k), block 256.
extern "C" __global__ void __launch_bounds__(256) moe_gate_up_mxfp4_f(
    const float* x, int d_model, const u8* wg, i64 nbg, const u8* wu, i64 nbu, const u8* bg,
    int bgt, const u8* bu, int but, const int* ids, int k, int n_ff, float* h) {
    GRID_DEP_ENTRY();
    int f = blockIdx.x * 8 + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (f >= n_ff) return;
    int pair = blockIdx.y, row = pair / k;
    int e = ids[pair];
    if (e < 0) return;  // another rank's expert
    i64 wrow = (i64)e * n_ff + f;
    const float* xr = x + (i64)row * d_model;
    float ag = 0.f, au = 0.f;
    row_dot2_mxfp4(wg, nbg, wu, nbu, wrow, d_model >> 5, xr, ag, au);
    ag = warp_sum(ag);
    au = warp_sum(au);
    if (lane == 0)
        h[(i64)pair * n_ff + f] = swiglu_oai(ag + wload(bg, bgt, 0, wrow), au + wload(bu, but, 0, wrow));
}

// grid (ceil(d_model / 8), t), block 256.
extern "C" __global__ void __launch_bounds__(256) moe_down_mxfp4_f(
    const float* h, int n_ff, const u8* wd, i64 nbd, const u8* bd, int bdt, const int* ids,
    const float* wts, int k, int d_model, float* y) {
    GRID_DEP_ENTRY();
    int d = blockIdx.x * 8 + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (d >= d_model) return;
    int row = blockIdx.y;
    float acc = 0.f;
    for (int j = 0; j < k; ++j) {
        int pair = row * k + j;
        int e = ids[pair];
        if (e < 0) continue;  // another rank's expert
        float a = 0.f;
        row_dot_f<T_MXFP4, 1>(wd, nbd, (i64)e * d_model + d, n_ff >> 5, h + (i64)pair * n_ff, n_ff, 1, &a);
        if (lane == 0) a += wload(bd, bdt, 0, (i64)e * d_model + d);
        acc += wts[pair] * a;
    }
    acc = warp_sum(acc);
    if (lane == 0) y[(i64)row * d_model + d] = acc;
}

// Down projection with one warp per (output, slot): 8 / k outputs per block, the k slots'
// partial sums combined in shared memory in slot order (deterministic). For k dividing 8.
// grid (ceil(d_model / (8 / k)), t), block 256.
extern "C" __global__ void __launch_bounds__(256) moe_down_mxfp4_fk(
    const float* h, int n_ff, const u8* wd, i64 nbd, const u8* bd, int bdt, const int* ids,
    const float* wts, int k, int d_model, float* y) {
    GRID_DEP_ENTRY();
    __shared__ float part[8];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int per = 8 / k;
    int d = blockIdx.x * per + warp / k;
    int j = warp % k;
    int row = blockIdx.y;
    float a = 0.f;
    int pair = row * k + j;
    if (d < d_model && ids[pair] < 0) {
        if (lane == 0) part[warp] = 0.f;  // another rank's expert: contributes nothing
    } else if (d < d_model) {
        int e = ids[pair];
        row_dot_f<T_MXFP4, 1>(wd, nbd, (i64)e * d_model + d, n_ff >> 5, h + (i64)pair * n_ff, n_ff, 1, &a);
        a = warp_sum(a);
        if (lane == 0) part[warp] = wts[pair] * (a + wload(bd, bdt, 0, (i64)e * d_model + d));
    }
    __syncthreads();
    if (lane == 0 && j == 0 && d < d_model) {
        float s = 0.f;
        for (int jj = 0; jj < k; ++jj) s += part[warp + jj];
        y[(i64)row * d_model + d] = s;
    }
}

// Decode-tuned MXFP4 MoE kernels (f32 activations): each warp runs R rows, with the loads of
// every row (gate and up together) for several steps in flight before any is used.
// Gate+up: rows f0 .. f0 + R - 1 of the pair's expert, f0 = (block * 8 + warp) * R.
// grid (ceil(n_ff / (8 R)), t * k), block 256.
template <int R>
__device__ __forceinline__ void moe_gate_up_rows(const float* x, int d_model, const u8* wg,
                                                 i64 nbg, const u8* wu, i64 nbu, const u8* bg,
                                                 int bgt, const u8* bu, int but, const int* ids,
                                                 int k, int n_ff, float* h) {
    int f0 = (blockIdx.x * 8 + (threadIdx.x >> 5)) * R;
    int lane = threadIdx.x & 31;
    if (f0 >= n_ff) return;
    int pair = blockIdx.y, row = pair / k;
    int e = ids[pair];
    if (e < 0) return;  // another rank's expert
    i64 base = (i64)e * n_ff;
    const u8* w[2] = {wg, wu};
    i64 nb[2] = {nbg, nbu};
    float acc[2 * R];
#pragma unroll
    for (int i = 0; i < 2 * R; ++i) acc[i] = 0.f;
    rows_dot_mxfp4<2, R>(w, nb, base + f0, base + n_ff - 1, d_model >> 5,
                         x + (i64)row * d_model, acc);
#pragma unroll
    for (int r = 0; r < R; ++r) {
        float g = warp_sum(acc[r]);
        float u = warp_sum(acc[R + r]);
        int f = f0 + r;
        if (lane == 0 && f < n_ff)
            h[(i64)pair * n_ff + f] =
                swiglu_oai(g + wload(bg, bgt, 0, base + f), u + wload(bu, but, 0, base + f));
    }
}

// The end of a down kernel whose warps hold partial sums part[warp][r] of k slots in warp order
// (warp w: slot w % k of rows d0 .. d0 + R - 1): after the block syncs, the first warp of each
// row group adds its k slots in slot order and writes the rows into yrow.
template <int R>
__device__ __forceinline__ void down_slots_store(const float (&part)[8][R], int warp, int j,
                                                 int k, int d0, int d_model, float* yrow) {
    __syncthreads();
    if ((threadIdx.x & 31) == 0 && j == 0 && d0 < d_model) {
#pragma unroll
        for (int r = 0; r < R; ++r) {
            int d = d0 + r;
            if (d >= d_model) break;
            float s = 0.f;
            for (int jj = 0; jj < k; ++jj) s += part[warp + jj][r];
            yrow[d] = s;
        }
    }
}

// Down: one warp per (R outputs, slot), 8 / k output groups per block; the k slots' weighted
// partial sums are combined in slot order in shared memory (deterministic). For k dividing 8.
// grid (ceil(d_model / (R * 8 / k)), t), block 256.
template <int R>
__device__ __forceinline__ void moe_down_rows(const float* h, int n_ff, const u8* wd, i64 nbd,
                                              const u8* bd, int bdt, const int* ids,
                                              const float* wts, int k, int d_model, float* y) {
    __shared__ float part[8][R];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int per = 8 / k;
    int d0 = (blockIdx.x * per + warp / k) * R;
    int j = warp % k;
    int row = blockIdx.y;
    int pair = row * k + j;
    if (d0 < d_model && ids[pair] < 0) {
        // Another rank's expert: contributes nothing (no return: the block syncs below).
        if (lane == 0)
            for (int r = 0; r < R; ++r) part[warp][r] = 0.f;
    } else if (d0 < d_model) {
        int e = ids[pair];
        i64 base = (i64)e * d_model;
        float acc[R];
#pragma unroll
        for (int r = 0; r < R; ++r) acc[r] = 0.f;
        const u8* w[1] = {wd};
        i64 nb[1] = {nbd};
        rows_dot_mxfp4<1, R>(w, nb, base + d0, base + d_model - 1, n_ff >> 5,
                             h + (i64)pair * n_ff, acc);
        float wt = wts[pair];
#pragma unroll
        for (int r = 0; r < R; ++r) {
            float a = warp_sum(acc[r]);
            int d = d0 + r;
            if (lane == 0) part[warp][r] = d < d_model ? wt * (a + wload(bd, bdt, 0, base + d)) : 0.f;
        }
    }
    down_slots_store<R>(part, warp, j, k, d0, d_model, y + (i64)row * d_model);
}

#define MOE_GU_ENTRY(NAME, R)                                                                    \
    extern "C" __global__ void __launch_bounds__(256) NAME(                                    \
        const float* x, int d_model, const u8* wg, i64 nbg, const u8* wu, i64 nbu, const u8* bg, \
        int bgt, const u8* bu, int but, const int* ids, int k, int n_ff, float* h) { GRID_DEP_ENTRY(); \
        moe_gate_up_rows<R>(x, d_model, wg, nbg, wu, nbu, bg, bgt, bu, but, ids, k, n_ff, h);  \
    }
#define MOE_DOWN_ENTRY(NAME, R)                                                                  \
    extern "C" __global__ void __launch_bounds__(256) NAME(                                    \
        const float* h, int n_ff, const u8* wd, i64 nbd, const u8* bd, int bdt, const int* ids, \
        const float* wts, int k, int d_model, float* y) { GRID_DEP_ENTRY();                    \
        moe_down_rows<R>(h, n_ff, wd, nbd, bd, bdt, ids, wts, k, d_model, y);                  \
    }
// r1 held to 64 registers: 4 blocks per SM instead of 3 (29.5 vs 30.0 us on an H100, bench/micro).
#define MOE_GU_ENTRY_OCC4(NAME, R)                                                               \
    extern "C" __global__ void __launch_bounds__(256, 4) NAME(                                 \
        const float* x, int d_model, const u8* wg, i64 nbg, const u8* wu, i64 nbu, const u8* bg, \
        int bgt, const u8* bu, int but, const int* ids, int k, int n_ff, float* h) {           \
        GRID_DEP_ENTRY();                                                                      \
        moe_gate_up_rows<R>(x, d_model, wg, nbg, wu, nbu, bg, bgt, bu, but, ids, k, n_ff, h);  \
    }
MOE_GU_ENTRY_OCC4(moe_gate_up_mxfp4_r1, 1)
MOE_GU_ENTRY(moe_gate_up_mxfp4_r2, 2)
MOE_GU_ENTRY(moe_gate_up_mxfp4_r4, 4)
MOE_DOWN_ENTRY(moe_down_mxfp4_r1, 1)
MOE_DOWN_ENTRY(moe_down_mxfp4_r2, 2)
MOE_DOWN_ENTRY(moe_down_mxfp4_r4, 4)

// ---- Int8 tensor-core decode MoE (see "Int8 tensor-core decode products" in linear.cu) ----
// moe_router_topk_q writes x as planes; gate+up writes h = SwiGLU(...) as planes with the fixed
// scale H_SCALE (SwiGLU-OAI output is bounded: |h| <= 7 * 8 = 56 < 64); down reads them. An
// expert id < 0 (not on this GPU) contributes nothing.
#define H_SCALE (64.0f / 127.0f)
#undef MQ_U
#define MQ_U 12  // k-blocks per warp whose loads are issued together (MoE kernels)

// A warp's loads for one MXFP4 k-block of rows ra, rb (flattened row * nbk) and its B planes.
struct MxStep {
    u32 qa, qb, sa, sb;
    uint2 bx;
};

__device__ __forceinline__ void mx_step_load(MxStep& s, const u8* w, const u8* sc, i64 ra, i64 rb,
                                             int kb, const u8* xb, bool bval, int c) {
    s.qa = __ldg((const u32*)(w + (ra + kb) * 16) + c);
    s.qb = __ldg((const u32*)(w + (rb + kb) * 16) + c);
    s.sa = __ldg(sc + ra + kb);
    s.sb = __ldg(sc + rb + kb);
    s.bx = bval ? __ldg((const uint2*)(xb + kb * 32)) : make_uint2(0u, 0u);
}

__device__ __forceinline__ void mx_step_mma(const MxStep& s, float wt, float& acc0, float& acc1) {
    u32 a0, a2, a1, a3;
    mxfp4_s8(s.qa, a0, a2);
    mxfp4_s8(s.qb, a1, a3);
    int d[4];
    mma_s8(d, a0, a1, a2, a3, s.bx.x, s.bx.y);
    acc0 = fmaf(plane_combine(d[0], d[1]), e8m0_to_f32(s.sa) * wt, acc0);
    acc1 = fmaf(plane_combine(d[2], d[3]), e8m0_to_f32(s.sb) * wt, acc1);
}

// Gate+up: block (tile, pair) computes rows f0 .. f0 + 15 (f0 = 16 tile) of the pair's expert;
// warp w takes matrix w & 1 (gate, up) and the k-blocks of quarter w >> 1. Partial sums meet in
// shared memory in warp order; 16 threads add the biases, apply SwiGLU-OAI and write h's
// planes (hq [pairs, 4, n_ff]). grid (ceil(n_ff / 16), t * k), block 256.
extern "C" __global__ void __launch_bounds__(256) moe_gate_up_mma(
    const u8* xq, const float* xsc, int d_model, const u8* wg, i64 nbg, const u8* wu, i64 nbu,
    const u8* bg, int bgt, const u8* bu, int but, const int* ids, int k, int n_ff, u8* hq) {
    GRID_DEP_ENTRY();
    __shared__ float part[8][16];
    int pair = blockIdx.y, row = pair / k;
    int e = ids[pair];
    if (e < 0) return;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
    int m = warp & 1, quarter = warp >> 1;
    const u8* w = m ? wu : wg;
    const u8* sc = w + (m ? nbu : nbg) * 16;
    int nbk = d_model >> 5;
    int f0 = blockIdx.x * 16;
    i64 base = (i64)e * n_ff;
    i64 ra = (base + min(f0 + g, n_ff - 1)) * nbk, rb = (base + min(f0 + g + 8, n_ff - 1)) * nbk;
    int per = (nbk + 3) >> 2;
    int kb_lo = quarter * per, kb_hi = min(nbk, kb_lo + per);
    const u8* xb = xq + ((i64)row * 4 + (g & 3)) * d_model + 8 * c;
    bool bval = g < 4;
    float acc0 = 0.f, acc1 = 0.f;
    for (int kb0 = kb_lo; kb0 < kb_hi; kb0 += MQ_U) {
        MxStep st[MQ_U];
#pragma unroll
        for (int u = 0; u < MQ_U; ++u)
            if (kb0 + u < kb_hi) mx_step_load(st[u], w, sc, ra, rb, kb0 + u, xb, bval, c);
#pragma unroll
        for (int u = 0; u < MQ_U; ++u)
            if (kb0 + u < kb_hi) mx_step_mma(st[u], 1.0f, acc0, acc1);
    }
    float f = plane_factor(c) * 0.5f;  // 0.5: the table is doubled
    acc0 *= f;
    acc1 *= f;
    acc0 += __shfl_xor_sync(0xffffffffu, acc0, 1);
    acc1 += __shfl_xor_sync(0xffffffffu, acc1, 1);
    if (c == 0) {
        part[warp][g] = acc0;
        part[warp][g + 8] = acc1;
    }
    __syncthreads();
    if (threadIdx.x < 16) {
        int i = threadIdx.x, fi = f0 + i;
        if (fi < n_ff) {
            float sg = 0.f, su = 0.f;
            for (int q = 0; q < 4; ++q) {
                sg += part[2 * q][i];
                su += part[2 * q + 1][i];
            }
            float xs = xsc[row];
            float hv = swiglu_oai(sg * xs + wload(bg, bgt, 0, base + fi),
                                  su * xs + wload(bu, but, 0, base + fi));
            u32 p = planes4(hv, 1.0f / H_SCALE);
            u8* dst = hq + (i64)pair * 4 * n_ff;
            int pos = (fi & ~31) + 2 * (fi & 15) + ((fi >> 4) & 1);
#pragma unroll
            for (int pl = 0; pl < 4; ++pl) dst[pl * n_ff + pos] = (u8)(p >> (8 * pl));
        }
    }
}

// Down with the routing weights and the sum over the k slots: block (tile, token) computes
// outputs d0 .. d0 + 15 over the token's k * (n_ff / 32) (slot, k-block) steps, split in eighths
// between the warps; partial sums meet in shared memory in warp order (deterministic, no
// atomics). grid (ceil(d_model / 16), t), block 256.
extern "C" __global__ void __launch_bounds__(256) moe_down_mma(
    const u8* hq, int n_ff, const u8* wd, i64 nbd, const u8* bd, int bdt, const int* ids,
    const float* wts, int k, int d_model, float* y) {
    GRID_DEP_ENTRY();
    __shared__ float part[8][16];
    __shared__ int sid[16];
    __shared__ float swt[16];
    int row = blockIdx.y;
    if (threadIdx.x < k) {
        sid[threadIdx.x] = ids[row * k + threadIdx.x];
        swt[threadIdx.x] = wts[row * k + threadIdx.x];
    }
    __syncthreads();
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
    int nbk = n_ff >> 5;
    int d0 = blockIdx.x * 16;
    const u8* sc = wd + nbd * 16;
    int total = k * nbk;
    int per = (total + 7) >> 3;
    int v_lo = warp * per, v_hi = min(total, v_lo + per);
    bool bval = g < 4;
    float acc0 = 0.f, acc1 = 0.f;
    for (int v0 = v_lo; v0 < v_hi; v0 += MQ_U) {
        MxStep st[MQ_U];
        float wt[MQ_U];
        int jb = v0 / nbk, kbb = v0 - jb * nbk;
#pragma unroll
        for (int u = 0; u < MQ_U; ++u) {
            int v = v0 + u;
            wt[u] = 0.f;
            if (v < v_hi) {
                int j = jb, kb = kbb + u;
                while (kb >= nbk) {
                    kb -= nbk;
                    ++j;
                }
                int e = sid[j];
                if (e >= 0) {
                    i64 base = (i64)e * d_model;
                    i64 ra = (base + min(d0 + g, d_model - 1)) * nbk;
                    i64 rb = (base + min(d0 + g + 8, d_model - 1)) * nbk;
                    const u8* xb = hq + ((i64)(row * k + j) * 4 + (g & 3)) * n_ff + 8 * c;
                    mx_step_load(st[u], wd, sc, ra, rb, kb, xb, bval, c);
                    wt[u] = swt[j];
                }
            }
        }
#pragma unroll
        for (int u = 0; u < MQ_U; ++u)
            if (wt[u] != 0.f) mx_step_mma(st[u], wt[u], acc0, acc1);
    }
    float f = plane_factor(c) * 0.5f * H_SCALE;
    acc0 *= f;
    acc1 *= f;
    acc0 += __shfl_xor_sync(0xffffffffu, acc0, 1);
    acc1 += __shfl_xor_sync(0xffffffffu, acc1, 1);
    if (c == 0) {
        part[warp][g] = acc0;
        part[warp][g + 8] = acc1;
    }
    __syncthreads();
    if (threadIdx.x < 16) {
        int i = threadIdx.x, d = d0 + i;
        if (d < d_model) {
            float s = 0.f;
            for (int q = 0; q < 8; ++q) s += part[q][i];
            for (int j = 0; j < k; ++j)
                if (sid[j] >= 0) s += swt[j] * wload(bd, bdt, 0, (i64)sid[j] * d_model + d);
            y[(i64)row * d_model + d] = s;
        }
    }
}

// ---- dp4a decode MoE on the same planes (whole MXFP4 blocks per lane, one row per warp for
// gate+up, two for down) ----
// Three of the four planes are used: x to ~1e-7 of its row maximum (h to 8e-6 absolute), so each
// 8 weights cost 6 dp4a and a few integer steps instead of 8 decodes and 8 f32 FMAs.
#define DQ_PLANES 3

// |v| < 2^22 as a float without the slow int->float conversion: v added under the exponent of
// 1.5 * 2^23, then that subtracted.
__device__ __forceinline__ float small_i2f(int v) {
    return __int_as_float(v + 0x4B400000) - 12582912.0f;
}

// The doubled-E2M1 table's first words (KV_0, KV_2) in registers for mxfp4_s8r, loaded from
// memory so that the compiler cannot rebuild them from constants: left as constants (or as a
// shuffle of constants, which it folds), it rebuilds them before every lookup, an instruction
// each, rather than keep two registers.
__device__ const u32 kv_words[2] = {KV_0, KV_2};
struct Kv {
    u32 pos, neg;
};
__device__ __forceinline__ Kv kv_regs() {
    return {*(const volatile u32*)&kv_words[0], *(const volatile u32*)&kv_words[1]};
}
// prmt without __byte_perm's masking of each selector's bit 3 (the callers' selectors have it
// clear).
__device__ __forceinline__ u32 prmt(u32 a, u32 b, u32 sel) {
    u32 d;
    asm("prmt.b32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(sel));
    return d;
}
// mxfp4_s8 in fewer instructions: one mask and one sign selection for all eight codes.
__device__ __forceinline__ void mxfp4_s8r(u32 q, const Kv& kv, u32& t0, u32& t1) {
    u32 m = q & 0x77777777u;                             // magnitudes (sign bits cleared)
    u32 sel = 0x32103210u | ((q & 0x88888888u) >> 1);  // per byte: positive or negative half
    u32 m1 = m >> 16, sel1 = sel >> 16;
    t0 = prmt(prmt(kv.pos, KV_1, m), prmt(kv.neg, KV_3, m), sel);
    t1 = prmt(prmt(kv.pos, KV_1, m1), prmt(kv.neg, KV_3, m1), sel1);
}

// One whole MXFP4 block of each of NM x R rows (q: its 16 nibble bytes, e: its scale) against
// the planes' 32 bytes of that block (plane pl at x + pl * stride). The plane sums stay integers
// over the block's four words (|s| <= 32 * 12 * 127 < 2^22), so a block costs one conversion
// and one scale per row.
template <int NM, int R>
__device__ __forceinline__ void planes_block(const uint4 (&q)[NM][R], const u32 (&e)[NM][R],
                                             const u8* x, i64 stride, const Kv& kv, float* acc) {
    int s[NM][R][DQ_PLANES];
#pragma unroll
    for (int m = 0; m < NM; ++m)
#pragma unroll
        for (int r = 0; r < R; ++r)
#pragma unroll
            for (int pl = 0; pl < DQ_PLANES; ++pl) s[m][r][pl] = 0;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        // Half h of the block: words 2h and 2h + 1 (bytes 8p..8p+7 of each plane for word p).
        uint4 xv[DQ_PLANES];
#pragma unroll
        for (int pl = 0; pl < DQ_PLANES; ++pl) xv[pl] = *(const uint4*)(x + pl * stride + 16 * h);
#pragma unroll
        for (int m = 0; m < NM; ++m)
#pragma unroll
            for (int r = 0; r < R; ++r) {
                u32 t0, t1, t2, t3;
                mxfp4_s8r(h ? q[m][r].z : q[m][r].x, kv, t0, t1);
                mxfp4_s8r(h ? q[m][r].w : q[m][r].y, kv, t2, t3);
#pragma unroll
                for (int pl = 0; pl < DQ_PLANES; ++pl) {
                    int a = __dp4a((int)t0, (int)xv[pl].x, s[m][r][pl]);
                    a = __dp4a((int)t1, (int)xv[pl].y, a);
                    a = __dp4a((int)t2, (int)xv[pl].z, a);
                    s[m][r][pl] = __dp4a((int)t3, (int)xv[pl].w, a);
                }
            }
    }
#pragma unroll
    for (int m = 0; m < NM; ++m)
#pragma unroll
        for (int r = 0; r < R; ++r) {
            // s0 * 254 + s1 is exact in f32 (< 2^24); the last step rounds once.
            float v = fmaf(fmaf(small_i2f(s[m][r][0]), 254.0f, small_i2f(s[m][r][1])), 254.0f,
                           small_i2f(s[m][r][2]));
            acc[m * R + r] = fmaf(v, e8m0_to_f32(e[m][r]), acc[m * R + r]);
        }
}

// R rows of NM MXFP4 matrices times one row given as planes (plane pl at xq + pl * stride, laid
// out as planes4 writes them: element e of a block at byte 2 (e & 15) + (e >> 4)). acc[m * R + r]
// in units of the doubled table, of the planes' scale and of 254^2. Lane l takes blocks l,
// l + 32, ... of each row (consecutive lanes read consecutive 16-byte blocks), one block per
// step with its loads for all rows issued first. Whole blocks per lane rather than a word each
// of four lanes: a block's conversions and scale are paid once, not four times, and the
// table lookups share their masks (mxfp4_s8r): half the instructions per weight, which bound
// these kernels (bench/RESULTS.md, session 17). PREWAIT: the caller has not waited for the
// previous kernel (GRID_DEP_WAIT) yet; the first block's weights are loaded before the wait,
// the planes (the previous kernel's output) after it.
template <int NM, int R, bool PREWAIT = false>
__device__ __forceinline__ void rows_dot_mxfp4_planes(const u8* const* w, const i64* nb, i64 row0,
                                                      i64 last_row, int nbk, const u8* xq,
                                                      i64 stride, float* acc) {
    int lane = threadIdx.x & 31;
    int nj = lane < nbk ? (nbk - lane + 31) >> 5 : 0;  // this lane's blocks
    const uint4* wq[NM][R];
    const u8* ws[NM][R];
#pragma unroll
    for (int m = 0; m < NM; ++m)
#pragma unroll
        for (int r = 0; r < R; ++r) {
            i64 b = min(row0 + r, last_row) * nbk + lane;
            wq[m][r] = (const uint4*)(w[m] + b * 16);
            ws[m][r] = w[m] + nb[m] * 16 + b;
        }
    const u8* x = xq + lane * 32;
    Kv kv = kv_regs();
    bool waited = !PREWAIT;
    for (int j = 0; j < nj; ++j) {
        // Two or more blocks in flight per lane measured slower: the registers they take
        // (64 at most for four blocks per SM) spill.
        uint4 q[NM][R];
        u32 e[NM][R];
#pragma unroll
        for (int m = 0; m < NM; ++m)
#pragma unroll
            for (int r = 0; r < R; ++r) {
                q[m][r] = __ldg(wq[m][r] + 32 * j);
                e[m][r] = __ldg(ws[m][r] + 32 * j);
            }
        if (!waited) {
            GRID_DEP_WAIT();
            waited = true;
        }
        planes_block<NM, R>(q, e, x + 1024 * j, stride, kv, acc);
    }
    if (!waited) GRID_DEP_WAIT();
}

// Gate+up from x's planes (moe_router_topk_q): rows f0 .. f0 + R - 1 of the pair's expert,
// f0 = (8 block + warp) R; h written as planes with the fixed scale H_SCALE (hq [pairs, 4,
// n_ff], as moe_gate_up_mma). grid (ceil(n_ff / (8 R)), t * k), block 256.
template <int R>
__device__ __forceinline__ void moe_gate_up_planes(const u8* xq, const float* xsc, int d_model,
                                                   const u8* wg, i64 nbg, const u8* wu, i64 nbu,
                                                   const u8* bg, int bgt, const u8* bu, int but,
                                                   const int* ids, int k, int n_ff, u8* hq) {
    int f0 = (blockIdx.x * 8 + (threadIdx.x >> 5)) * R;
    int lane = threadIdx.x & 31;
    if (f0 >= n_ff) return;
    int pair = blockIdx.y, row = pair / k;
    int e = ids[pair];
    if (e < 0) return;  // another rank's expert: down skips this pair
    i64 base = (i64)e * n_ff;
    const u8* w[2] = {wg, wu};
    i64 nb[2] = {nbg, nbu};
    float acc[2 * R];
#pragma unroll
    for (int i = 0; i < 2 * R; ++i) acc[i] = 0.f;
    // The biases and x's scale are loaded before the product (this kernel has waited for the
    // router already), so no round trip follows the sums.
    float bgv[R], buv[R];
#pragma unroll
    for (int r = 0; r < R; ++r) {
        const i64 fi = base + min(f0 + r, n_ff - 1);
        bgv[r] = wload(bg, bgt, 0, fi);
        buv[r] = wload(bu, but, 0, fi);
    }
    const float xs = xsc[row];
    rows_dot_mxfp4_planes<2, R>(w, nb, base + f0, base + n_ff - 1, d_model >> 5,
                                xq + (i64)row * 4 * d_model, d_model, acc);
    float f = 0.5f * xs * (1.0f / (254.0f * 254.0f));
#pragma unroll
    for (int r = 0; r < R; ++r) {
        float g = warp_sum(acc[r]) * f;
        float u = warp_sum(acc[R + r]) * f;
        int fi = f0 + r;
        if (lane == 0 && fi < n_ff) {
            float hv = swiglu_oai(g + bgv[r], u + buv[r]);
            u32 pk = planes4(hv, 1.0f / H_SCALE);
            u8* dst = hq + (i64)pair * 4 * n_ff;
            int pos = (fi & ~31) + 2 * (fi & 15) + ((fi >> 4) & 1);
#pragma unroll
            for (int pl = 0; pl < 4; ++pl) dst[pl * n_ff + pos] = (u8)(pk >> (8 * pl));
        }
    }
}

// Down from h's planes, as moe_down_rows (slot sums combined in slot order). For k dividing 8.
// grid (ceil(d_model / (R * 8 / k)), t), block 256. Called before the wait for the previous
// kernel (gate+up): the router's expert ids (and, in lanes with no block of the product, its
// weights) are read and the first weights loaded before it. That is safe because gate+up lets
// this kernel launch only after its own wait, when the router has finished
// (moe_gate_up_planes_r1).
template <int R>
__device__ __forceinline__ void moe_down_planes(const u8* hq, int n_ff, const u8* wd, i64 nbd,
                                                const u8* bd, int bdt, const int* ids,
                                                const float* wts, int k, int d_model, float* y) {
    __shared__ float part[8][R];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int per = 8 / k;
    int d0 = (blockIdx.x * per + warp / k) * R;
    int j = warp % k;
    int row = blockIdx.y;
    int pair = row * k + j;
    // Read before the wait, so from L2 (__ldcg): an SM's L1 may still hold the previous step's
    // values at these addresses.
    int e = __ldcg(ids + pair);
    if (d0 < d_model && e < 0) {
        if (lane == 0)
            for (int r = 0; r < R; ++r) part[warp][r] = 0.f;
    } else if (d0 < d_model) {
        i64 base = (i64)e * d_model;
        float acc[R];
#pragma unroll
        for (int r = 0; r < R; ++r) acc[r] = 0.f;
        const u8* w[1] = {wd};
        i64 nb[1] = {nbd};
        // The routing weight (from L2 before the wait, like the ids above: the router has
        // finished) and the biases are loaded before the product, so no round trip follows
        // the sums.
        const float wt = __ldcg(wts + pair);
        float bdv[R];
#pragma unroll
        for (int r = 0; r < R; ++r) bdv[r] = wload(bd, bdt, 0, base + min(d0 + r, d_model - 1));
        rows_dot_mxfp4_planes<1, R, true>(w, nb, base + d0, base + d_model - 1, n_ff >> 5,
                                          hq + (i64)pair * 4 * n_ff, n_ff, acc);
        float f = wt * 0.5f * H_SCALE * (1.0f / (254.0f * 254.0f));
#pragma unroll
        for (int r = 0; r < R; ++r) {
            float a = warp_sum(acc[r]) * f;
            int d = d0 + r;
            if (lane == 0) part[warp][r] = d < d_model ? a + wt * bdv[r] : 0.f;
        }
    }
    GRID_DEP_WAIT();  // for the threads that ran no product above; y is written after it
    down_slots_store<R>(part, warp, j, k, d0, d_model, y + (i64)row * d_model);
}

extern "C" __global__ void __launch_bounds__(256, 4) moe_gate_up_planes_r1(
    const u8* xq, const float* xsc, int d_model, const u8* wg, i64 nbg, const u8* wu, i64 nbu,
    const u8* bg, int bgt, const u8* bu, int but, const int* ids, int k, int n_ff, u8* hq) {
    // Wait before letting the next kernel (moe_down_planes_r2) launch: it reads the router's
    // output before its own wait.
    GRID_DEP_WAIT();
    GRID_DEP_LAUNCH();
    moe_gate_up_planes<1>(xq, xsc, d_model, wg, nbg, wu, nbu, bg, bgt, bu, but, ids, k, n_ff, hq);
}

extern "C" __global__ void __launch_bounds__(256) moe_down_planes_r2(
    const u8* hq, int n_ff, const u8* wd, i64 nbd, const u8* bd, int bdt, const int* ids,
    const float* wts, int k, int d_model, float* y) {
    GRID_DEP_LAUNCH();
    moe_down_planes<2>(hq, n_ff, wd, nbd, bd, bdt, ids, wts, k, d_model, y);
}
