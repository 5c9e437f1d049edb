// The GPT-OSS MoE block: router top-k with softmax over the chosen k, then per (token, chosen
// expert) the gate and up projections in one pass with SwiGLU-OAI and biases, then the down
// projection with the routing weight and the sum over the k experts, all on the GPU so that a
// decode step needs no host round trip.

#define MOE_MAX_EXPERTS 256

// One thread per row: top-k of the raw logits (ties: lower expert id first; NaN never chosen
// while a number is left), softmax over those k. grid ceil(t / 64), block 64.
extern "C" __global__ void moe_topk(const float* logits, int t, int n_exp, int k, int* ids,
                                    float* wts) {
    int r = blockIdx.x * blockDim.x + threadIdx.x;
    if (r >= t) return;
    const float* lr = logits + (i64)r * n_exp;
    u32 taken[MOE_MAX_EXPERTS / 32];
    for (int i = 0; i < MOE_MAX_EXPERTS / 32; ++i) taken[i] = 0;
    float vals[16];
    int sel[16];
    for (int j = 0; j < k; ++j) {
        int bi = -1;
        float best = NEG_INF;
        for (int e = 0; e < n_exp; ++e) {
            if (taken[e >> 5] & (1u << (e & 31))) continue;
            float v = lr[e];
            if (bi < 0 || v > best) { best = v; bi = e; }
        }
        taken[bi >> 5] |= 1u << (bi & 31);
        vals[j] = best;
        sel[j] = bi;
    }
    float mx = vals[0];
    for (int j = 1; j < k; ++j) mx = fmaxf(mx, vals[j]);
    float sum = 0.f;
    for (int j = 0; j < k; ++j) { vals[j] = expf(vals[j] - mx); sum += vals[j]; }
    for (int j = 0; j < k; ++j) {
        ids[r * k + j] = sel[j];
        wts[r * k + j] = vals[j] / sum;
    }
}

__device__ __forceinline__ float swiglu_oai(float gate, float up) {
    float g = fminf(gate, 7.0f);
    float u = fminf(fmaxf(up, -7.0f), 7.0f);
    return g / (1.0f + expf(-1.702f * g)) * (u + 1.0f);
}

// MXFP4 gate+up for each (token, slot): h [t*k, n_ff]. xq/xd: int8 activations of x
// [t, d_model]. grid (ceil(n_ff / 8), t * k), block 256.
extern "C" __global__ void moe_gate_up_mxfp4(const i8* xq, const float* xd, int d_model,
                                             const u8* wg, i64 nbg, const u8* wu, i64 nbu,
                                             const u8* bg, int bgt, const u8* bu, int but,
                                             const int* ids, int k, int n_ff, float* h) {
    int f = blockIdx.x * 8 + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (f >= n_ff) return;
    int pair = blockIdx.y, row = pair / k;
    int e = ids[pair];
    int nbk = d_model >> 5;
    i64 rb = ((i64)e * n_ff + f) * nbk;
    const u8* ge = wg + nbg * 16;
    const u8* ue = wu + nbu * 16;
    float ag = 0.f, au = 0.f;
    for (int kb = lane; kb < nbk; kb += 32) {
        i64 bi = rb + kb;
        int4 qg = __ldg((const int4*)(wg + bi * 16));
        int4 qu = __ldg((const int4*)(wu + bi * 16));
        i64 xb = (i64)row * nbk + kb;
        const int4* xp = (const int4*)(xq + xb * 32);
        float dx = xd[xb];
        ag += (float)dot_mxfp4_block(qg, xp) * (0.5f * e8m0_to_f32(ge[bi])) * dx;
        au += (float)dot_mxfp4_block(qu, xp) * (0.5f * e8m0_to_f32(ue[bi])) * dx;
    }
    ag = warp_sum(ag);
    au = warp_sum(au);
    if (lane == 0) {
        i64 bidx = (i64)e * n_ff + f;
        h[(i64)pair * n_ff + f] = swiglu_oai(ag + wload(bg, bgt, 0, bidx), au + wload(bu, but, 0, bidx));
    }
}

// MXFP4 down projection, routing-weighted sum over the k slots: y [t, d_model]. hq/hd: int8
// activations of h [t*k, n_ff]. grid (ceil(d_model / 8), t), block 256.
extern "C" __global__ void moe_down_mxfp4(const i8* hq, const float* hd, int n_ff, const u8* wd,
                                          i64 nbd, const u8* bd, int bdt, const int* ids,
                                          const float* wts, int k, int d_model, float* y) {
    int d = blockIdx.x * 8 + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (d >= d_model) return;
    int row = blockIdx.y;
    int nbk = n_ff >> 5;
    const u8* de = wd + nbd * 16;
    float acc = 0.f;
    for (int j = 0; j < k; ++j) {
        int pair = row * k + j;
        int e = ids[pair];
        float wgt = wts[pair];
        i64 rb = ((i64)e * d_model + d) * nbk;
        float a = 0.f;
        for (int kb = lane; kb < nbk; kb += 32) {
            i64 bi = rb + kb;
            int4 q = __ldg((const int4*)(wd + bi * 16));
            i64 xb = (i64)pair * nbk + kb;
            a += (float)dot_mxfp4_block(q, (const int4*)(hq + xb * 32)) *
                 (0.5f * e8m0_to_f32(de[bi])) * hd[xb];
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
    int f = blockIdx.x * 8 + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (f >= n_ff) return;
    int pair = blockIdx.y, row = pair / k;
    int e = ids[pair];
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
    int d = blockIdx.x * 8 + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (d >= d_model) return;
    int row = blockIdx.y;
    float acc = 0.f;
    for (int j = 0; j < k; ++j) {
        int pair = row * k + j;
        int e = ids[pair];
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
