// The backend's dp4a decode MoE kernels (moe_gate_up_planes_r1, moe_down_planes_r2: whole MXFP4
// blocks per lane) against their session-16 form (four lanes per block, FU steps of 8 blocks in
// flight; kept here as gu_f4 / dn_r2_f4): time per launch cold (a new layer each call) and hot,
// agreement between the two, and gate+up + down chained with PDL. One token, gpt-oss-20b shapes,
// 8 layers of random weights (more than L2 holds). Session 17 also ran whole-block variants with
// 2 or 3 blocks in flight, 3 blocks per SM and a pipelined loop here (all slower: they spill or
// lose occupancy; bench/RESULTS.md).
//   nvcc -O3 -std=c++17 -arch=sm_90a -o /tmp/moev bench/micro/moe_variants.cu && /tmp/moev
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "../../kernels-cuda/src/kernels/common.cuh"
#include "../../kernels-cuda/src/kernels/basic.cu"
#include "../../kernels-cuda/src/kernels/linear.cu"
#include "../../kernels-cuda/src/kernels/attention.cu"
#include "../../kernels-cuda/src/kernels/moe.cu"
#include "micro_common.cuh"

// One round's products, as the session-16 rows_dot_mxfp4_planes computed them.
template <int NM, int R, int F>
__device__ __forceinline__ void v_dot(const u32 (&q)[F][NM][R], const u32 (&e)[F][NM][R], int kb0,
                                      int nbk, int p, const u8* xq, i64 stride, float* acc) {
#pragma unroll
    for (int u = 0; u < F; ++u) {
        int kb = kb0 + 8 * u;
        if (kb < nbk) {
            uint2 xv[DQ_PLANES];
#pragma unroll
            for (int pl = 0; pl < DQ_PLANES; ++pl)
                xv[pl] = *(const uint2*)(xq + pl * stride + kb * 32 + 8 * p);
#pragma unroll
            for (int m = 0; m < NM; ++m)
#pragma unroll
                for (int r = 0; r < R; ++r) {
                    u32 t0, t1;
                    mxfp4_s8(q[u][m][r], t0, t1);
                    int s[DQ_PLANES];
#pragma unroll
                    for (int pl = 0; pl < DQ_PLANES; ++pl)
                        s[pl] = __dp4a((int)t1, (int)xv[pl].y, __dp4a((int)t0, (int)xv[pl].x, 0));
                    float v = fmaf(small_i2f(s[0] * 254 + s[1]), 254.0f, small_i2f(s[2]));
                    acc[m * R + r] = fmaf(v, e8m0_to_f32(e[u][m][r]), acc[m * R + r]);
                }
        }
    }
}

template <int NM, int R, int F, bool DB, bool PREWAIT>
__device__ __forceinline__ void v_rows_dot(const u8* const* w, const i64* nb, i64 row0,
                                           i64 last_row, int nbk, const u8* xq, i64 stride,
                                           float* acc) {
    int lane = threadIdx.x & 31, p = lane & 3, bl = lane >> 2;
    i64 rows[R];
#pragma unroll
    for (int r = 0; r < R; ++r) rows[r] = min(row0 + r, last_row) * nbk;
    if (!DB) {
        bool waited = !PREWAIT;
        for (int kb0 = bl; kb0 < nbk; kb0 += 8 * F) {
            u32 q[F][NM][R], e[F][NM][R];
            mxfp4_rows_load<NM, R, F>(w, nb, rows, kb0, nbk, p, q, e);
            if (!waited) {
                GRID_DEP_WAIT();
                waited = true;
            }
            v_dot<NM, R, F>(q, e, kb0, nbk, p, xq, stride, acc);
        }
        if (!waited) GRID_DEP_WAIT();
        return;
    }
    u32 qa[F][NM][R], ea[F][NM][R], qb[F][NM][R], eb[F][NM][R];
    int kb0 = bl;
    if (kb0 < nbk) mxfp4_rows_load<NM, R, F>(w, nb, rows, kb0, nbk, p, qa, ea);
    if (PREWAIT) GRID_DEP_WAIT();
    while (kb0 < nbk) {
        int kn = kb0 + 8 * F;
        if (kn < nbk) mxfp4_rows_load<NM, R, F>(w, nb, rows, kn, nbk, p, qb, eb);
        v_dot<NM, R, F>(qa, ea, kb0, nbk, p, xq, stride, acc);
        kb0 = kn;
        if (kb0 >= nbk) break;
        kn = kb0 + 8 * F;
        if (kn < nbk) mxfp4_rows_load<NM, R, F>(w, nb, rows, kn, nbk, p, qa, ea);
        v_dot<NM, R, F>(qb, eb, kb0, nbk, p, xq, stride, acc);
        kb0 = kn;
    }
}

// moe_gate_up_planes with the variant's product; HOIST: the biases are loaded before it.
template <int F, bool DB, bool HOIST>
__device__ __forceinline__ void v_gate_up(const u8* xq, const float* xsc, int d_model, const u8* wg,
                                          i64 nbg, const u8* wu, i64 nbu, const u8* bg, int bgt,
                                          const u8* bu, int but, const int* ids, int k, int n_ff,
                                          u8* hq) {
    GRID_DEP_WAIT();
    GRID_DEP_LAUNCH();
    int f0 = blockIdx.x * 8 + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (f0 >= n_ff) return;
    int pair = blockIdx.y, row = pair / k;
    int e = ids[pair];
    if (e < 0) return;
    i64 base = (i64)e * n_ff;
    float gb = 0.f, ub = 0.f;
    if (HOIST) {
        gb = wload(bg, bgt, 0, base + f0);
        ub = wload(bu, but, 0, base + f0);
    }
    const u8* w[2] = {wg, wu};
    i64 nb[2] = {nbg, nbu};
    float acc[2] = {0.f, 0.f};
    v_rows_dot<2, 1, F, DB, false>(w, nb, base + f0, base + n_ff - 1, d_model >> 5,
                                   xq + (i64)row * 4 * d_model, d_model, acc);
    float f = 0.5f * xsc[row] * (1.0f / (254.0f * 254.0f));
    float g = warp_sum(acc[0]) * f;
    float u = warp_sum(acc[1]) * f;
    if (!HOIST) {
        gb = wload(bg, bgt, 0, base + f0);
        ub = wload(bu, but, 0, base + f0);
    }
    if (lane == 0) {
        float hv = swiglu_oai(g + gb, u + ub);
        u32 pk = planes4(hv, 1.0f / H_SCALE);
        u8* dst = hq + (i64)pair * 4 * n_ff;
        int pos = (f0 & ~31) + 2 * (f0 & 15) + ((f0 >> 4) & 1);
#pragma unroll
        for (int pl = 0; pl < 4; ++pl) dst[pl * n_ff + pos] = (u8)(pk >> (8 * pl));
    }
}

// moe_down_planes with the variant's product; HOIST: the routing weight and biases first.
template <int R, int F, bool DB, bool HOIST>
__device__ __forceinline__ void v_down(const u8* hq, int n_ff, const u8* wd, i64 nbd, const u8* bd,
                                       int bdt, const int* ids, const float* wts, int k,
                                       int d_model, float* y) {
    GRID_DEP_LAUNCH();
    __shared__ float part[8][R];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int per = 8 / k;
    int d0 = (blockIdx.x * per + warp / k) * R;
    int j = warp % k;
    int row = blockIdx.y;
    int pair = row * k + j;
    int e = __ldcg(ids + pair);
    if (d0 < d_model && e < 0) {
        if (lane == 0)
            for (int r = 0; r < R; ++r) part[warp][r] = 0.f;
    } else if (d0 < d_model) {
        i64 base = (i64)e * d_model;
        float acc[R], bb[R];
        float wt = 0.f;
#pragma unroll
        for (int r = 0; r < R; ++r) acc[r] = 0.f;
        if (HOIST) {
            wt = __ldcg(wts + pair);
#pragma unroll
            for (int r = 0; r < R; ++r) bb[r] = d0 + r < d_model ? wload(bd, bdt, 0, base + d0 + r) : 0.f;
        }
        const u8* w[1] = {wd};
        i64 nb[1] = {nbd};
        v_rows_dot<1, R, F, DB, true>(w, nb, base + d0, base + d_model - 1, n_ff >> 5,
                                      hq + (i64)pair * 4 * n_ff, n_ff, acc);
        if (!HOIST) {
            wt = __ldcg(wts + pair);
#pragma unroll
            for (int r = 0; r < R; ++r) bb[r] = d0 + r < d_model ? wload(bd, bdt, 0, base + d0 + r) : 0.f;
        }
        float f = wt * 0.5f * H_SCALE * (1.0f / (254.0f * 254.0f));
#pragma unroll
        for (int r = 0; r < R; ++r) {
            float a = warp_sum(acc[r]) * f;
            int d = d0 + r;
            if (lane == 0) part[warp][r] = d < d_model ? a + wt * bb[r] : 0.f;
        }
    }
    GRID_DEP_WAIT();
    down_slots_store<R>(part, warp, j, k, d0, d_model, y + (i64)row * d_model);
}

#define GU_V(NAME, MINB, F, DB, H)                                                                \
    __global__ void __launch_bounds__(256, MINB) NAME(                                           \
        const u8* xq, const float* xsc, int d_model, const u8* wg, i64 nbg, const u8* wu, i64 nbu, \
        const u8* bg, int bgt, const u8* bu, int but, const int* ids, int k, int n_ff, u8* hq) {   \
        v_gate_up<F, DB, H>(xq, xsc, d_model, wg, nbg, wu, nbu, bg, bgt, bu, but, ids, k, n_ff, hq); \
    }
GU_V(gu_f4, 4, 4, false, false)
// The session-16 form with biases loaded first (h), the next round's loads issued before the
// current round's products (db), other round sizes and occupancy: all within +-3 % or slower.
GU_V(gu_f4_h, 4, 4, false, true)
GU_V(gu_f2_db_h, 4, 2, true, true)
GU_V(gu_f4_db_h, 3, 4, true, true)
GU_V(gu_f12_h, 2, 12, false, true)

#define DN_V(NAME, MINB, R, F, DB, H)                                                             \
    __global__ void __launch_bounds__(256, MINB) NAME(                                           \
        const u8* hq, int n_ff, const u8* wd, i64 nbd, const u8* bd, int bdt, const int* ids,     \
        const float* wts, int k, int d_model, float* y) {                                         \
        v_down<R, F, DB, H>(hq, n_ff, wd, nbd, bd, bdt, ids, wts, k, d_model, y);                 \
    }
DN_V(dn_r2_f4, 1, 2, 4, false, false)
DN_V(dn_r2_f4_h, 1, 2, 4, false, true)
DN_V(dn_r2_f2_db_h, 1, 2, 2, true, true)

// Shapes of today's kernels (moe.cu templates) with other rows per warp and occupancy.
#define GU_R(NAME, R, MINB)                                                                      \
    __global__ void __launch_bounds__(256, MINB) NAME(                                           \
        const u8* xq, const float* xsc, int d_model, const u8* wg, i64 nbg, const u8* wu, i64 nbu, \
        const u8* bg, int bgt, const u8* bu, int but, const int* ids, int k, int n_ff, u8* hq) {   \
        GRID_DEP_WAIT();                                                                         \
        GRID_DEP_LAUNCH();                                                                       \
        moe_gate_up_planes<R>(xq, xsc, d_model, wg, nbg, wu, nbu, bg, bgt, bu, but, ids, k, n_ff, hq); \
    }
GU_R(gu_r2_b3, 2, 3)
GU_R(gu_r2_b2, 2, 2)
GU_R(gu_r1_b3, 1, 3)
#define DN_R(NAME, R, MINB)                                                                      \
    __global__ void __launch_bounds__(256, MINB) NAME(                                           \
        const u8* hq, int n_ff, const u8* wd, i64 nbd, const u8* bd, int bdt, const int* ids,     \
        const float* wts, int k, int d_model, float* y) {                                         \
        GRID_DEP_LAUNCH();                                                                       \
        moe_down_planes<R>(hq, n_ff, wd, nbd, bd, bdt, ids, wts, k, d_model, y);                 \
    }
DN_R(dn_r1_b4, 1, 4)
DN_R(dn_r4_b2, 4, 2)
DN_R(dn_r4_b3, 4, 3)
DN_R(dn_r2_b3, 2, 3)

struct Layer : MoeLayer {};
static std::vector<Layer> layers;
static u8 *xq, *hq, *hq_in;
static float *xsc, *y_buf;

typedef void (*GuFn)(const u8*, const float*, int, const u8*, i64, const u8*, i64, const u8*, int,
                     const u8*, int, const int*, int, int, u8*);
typedef void (*DnFn)(const u8*, int, const u8*, i64, const u8*, int, const int*, const float*, int,
                     int, float*);
static void gate_up(GuFn f, int r, int l, bool pdl, cudaStream_t s) {
    Layer& y = layers[l];
    launch(pdl, f, dim3((NFF + 8 * r - 1) / (8 * r), K), dim3(256), 0, s, (const u8*)xq, (const float*)xsc, D,
           (const u8*)y.gate.p, y.gate.nb, (const u8*)y.up.p, y.up.nb, (const u8*)y.bg, T_F32,
           (const u8*)y.bu, T_F32, (const int*)y.ids, K, NFF, hq);
}
static void down(DnFn f, int r, int l, const u8* h, bool pdl, cudaStream_t s) {
    Layer& y = layers[l];
    int outs = r * (8 / K);
    launch(pdl, f, dim3((D + outs - 1) / outs, 1), dim3(256), 0, s, h, NFF, (const u8*)y.down.p,
           y.down.nb, (const u8*)y.bd, T_F32, (const int*)y.ids, (const float*)y.wts, K, D, y_buf);
}

int main() {
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    printf("device %s, %d SMs\n", prop.name, prop.multiProcessorCount);
    cudaStream_t s;
    CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    srand(2);
    layers.resize(L);
    for (int l = 0; l < L; ++l) {
        Layer& y = layers[l];
        u32 sd = 1000 * (l + 1);
        make_moe_layer(y, sd);
    }
    CK(cudaMalloc(&xq, 4 * D));
    rnd_bytes(xq, 4 * D, 71, 1, 253);
    xsc = make_f(1, 72, 0.01f);
    CK(cudaMalloc(&hq, (size_t)K * 4 * NFF));
    CK(cudaMalloc(&hq_in, (size_t)K * 4 * NFF));
    rnd_bytes(hq_in, (size_t)K * 4 * NFF, 75, 1, 253);
    CK(cudaMalloc(&y_buf, D * 4));
    CK(cudaDeviceSynchronize());

    const double gu_mb = 2.0 * K * NFF * (D / 32) * 17 / 1e6, dn_mb = 1.0 * K * D * (NFF / 32) * 17 / 1e6;
    const int REPS = 400;
    // The backend's kernels first: the reference bits and times.
    gate_up(moe_gate_up_planes_r1, 1, 0, false, s);
    std::vector<u8> ref_h((size_t)K * 4 * NFF);
    CK(cudaStreamSynchronize(s));
    CK(cudaMemcpy(ref_h.data(), hq, ref_h.size(), cudaMemcpyDeviceToHost));
    down(moe_down_planes_r2, 2, 0, hq_in, false, s);
    std::vector<float> ref_y(D);
    CK(cudaStreamSynchronize(s));
    CK(cudaMemcpy(ref_y.data(), y_buf, D * 4, cudaMemcpyDeviceToHost));

    struct Gu {
        const char* name;
        GuFn f;
        int r = 1;
    };
    std::vector<Gu> gus = {{"old: four lanes per block (this file)", gu_f4},
                           {"old, biases first", gu_f4_h},
                           {"old, f2 double-buffered", gu_f2_db_h},
                           {"old, f4 double-buffered (3 blocks/SM)", gu_f4_db_h},
                           {"old, f12 (2 blocks/SM)", gu_f12_h},
                           {"backend moe_gate_up_planes_r1", moe_gate_up_planes_r1},
                           {"r2, 3 blocks/SM", gu_r2_b3, 2},
                           {"r2, 2 blocks/SM", gu_r2_b2, 2},
                           {"r1, 3 blocks/SM", gu_r1_b3}};
    for (int round = 0; round < 2; ++round)
        for (auto& g : gus) {
            CK(cudaMemsetAsync(hq, 0x55, ref_h.size(), s));
            gate_up(g.f, g.r, 0, false, s);
            std::vector<u8> h(ref_h.size());
            CK(cudaStreamSynchronize(s));
            CK(cudaMemcpy(h.data(), hq, h.size(), cudaMemcpyDeviceToHost));
            size_t bad[4] = {0, 0, 0, 0};
            for (size_t i = 0; i < h.size(); ++i) bad[(i / NFF) % 4] += h[i] != ref_h[i];
            cudaFuncAttributes fa;
            CK(cudaFuncGetAttributes(&fa, (const void*)g.f));
            int occ = 0;
            CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, (const void*)g.f, 256, 0));
            double cold = time_us(s, REPS, [&](int i) { gate_up(g.f, g.r, i % L, false, s); });
            double hot = time_us(s, REPS, [&](int) { gate_up(g.f, g.r, 0, false, s); });
            printf("gate_up %-30s regs %3d, %d blocks/SM, local %3zu B: cold %6.2f us (%5.0f GB/s), hot %6.2f us, plane bytes differing %zu/%zu/%zu/%zu\n",
                   g.name, fa.numRegs, occ, (size_t)fa.localSizeBytes, cold, gu_mb * 1e3 / cold, hot, bad[0], bad[1], bad[2], bad[3]);
        }

    struct Dn {
        const char* name;
        DnFn f;
        int r;
    };
    std::vector<Dn> dns = {{"old: four lanes per block (this file)", dn_r2_f4, 2},
                           {"old, biases first", dn_r2_f4_h, 2},
                           {"old, f2 double-buffered", dn_r2_f2_db_h, 2},
                           {"backend moe_down_planes_r2", moe_down_planes_r2, 2},
                           {"r1, 4 blocks/SM", dn_r1_b4, 1},
                           {"r4, 2 blocks/SM", dn_r4_b2, 4},
                           {"r4, 3 blocks/SM", dn_r4_b3, 4},
                           {"r2, 3 blocks/SM", dn_r2_b3, 2}};
    for (int round = 0; round < 2; ++round)
        for (auto& d : dns) {
            CK(cudaMemsetAsync(y_buf, 0x55, D * 4, s));
            down(d.f, d.r, 0, hq_in, false, s);
            std::vector<float> yv(D);
            CK(cudaStreamSynchronize(s));
            CK(cudaMemcpy(yv.data(), y_buf, D * 4, cudaMemcpyDeviceToHost));
            double num = 0, den = 0;
            for (int i = 0; i < D; ++i) {
                double df = (double)yv[i] - ref_y[i];
                num += df * df;
                den += (double)ref_y[i] * ref_y[i];
            }
            cudaFuncAttributes fa;
            CK(cudaFuncGetAttributes(&fa, (const void*)d.f));
            int occ = 0;
            CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, (const void*)d.f, 256, 0));
            double cold = time_us(s, REPS, [&](int i) { down(d.f, d.r, i % L, hq_in, false, s); });
            double hot = time_us(s, REPS, [&](int) { down(d.f, d.r, 0, hq_in, false, s); });
            printf("down    %-30s regs %3d, %d blocks/SM, local %3zu B: cold %6.2f us (%5.0f GB/s), hot %6.2f us, nmse vs old %.2e\n",
                   d.name, fa.numRegs, occ, (size_t)fa.localSizeBytes, cold, dn_mb * 1e3 / cold, hot, den > 0 ? num / den : num);
        }

    // Pairs chained with PDL, as in a decode step (gate+up then down of the same layer).
    printf("-- gate_up + down chained with PDL, cold\n");
    struct Pair {
        const char* name;
        GuFn g;
        DnFn d;
        int r;
        int gr = 1;
    };
    std::vector<Pair> pairs = {{"old", gu_f4, dn_r2_f4, 2},
                               {"backend", moe_gate_up_planes_r1, moe_down_planes_r2, 2},
                               {"gu r2 b2 / dn r4 b2", gu_r2_b2, dn_r4_b2, 4, 2},
                               {"backend gu / dn r4 b3", moe_gate_up_planes_r1, dn_r4_b3, 4},
                               {"backend gu / dn r1 b4", moe_gate_up_planes_r1, dn_r1_b4, 1}};
    for (int round = 0; round < 3; ++round)
        for (auto& pr : pairs) {
            double us = time_us(s, REPS, [&](int i) {
                gate_up(pr.g, pr.gr, i % L, true, s);
                down(pr.d, pr.r, i % L, hq, true, s);
            });
            printf("pair %-24s %6.2f us (%5.0f GB/s)\n", pr.name, us, (gu_mb + dn_mb) * 1e3 / us);
        }
    CK(cudaDeviceSynchronize());
    printf("done\n");
    return 0;
}
