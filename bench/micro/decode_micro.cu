// Decode-kernel microbenchmark (one token, gpt-oss-20b shapes) on the GPU machine, built with
// nvcc from the backend's own kernel sources:
//   nvcc -O3 -std=c++17 -arch=sm_90a -o /tmp/micro bench/micro/decode_micro.cu && /tmp/micro
// (bench/micro/run.sh does that.) It times, over 8 distinct layers of random weights (more than
// L2 holds), the f32 decode kernels the backend uses today against the wide-load kernels of
// decode_wide.cu in several shapes, reports each variant's error against the f32 kernel, and
// times a 24-layer chain of the four big kernels launched plainly, with programmatic dependent
// launch, and as a CUDA graph.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#define WIDE_ENTRIES                                                                             \
    MOE_GU_WIDE(1, 1, 3) MOE_GU_WIDE(1, 2, 3) MOE_GU_WIDE(1, 3, 3) MOE_GU_WIDE(2, 1, 3)          \
    MOE_GU_WIDE(2, 2, 3) MOE_GU_WIDE(2, 3, 3) MOE_DOWN_WIDE(1, 3, 3) MOE_DOWN_WIDE(2, 1, 3)      \
    MOE_DOWN_WIDE(2, 2, 3) MOE_DOWN_WIDE(2, 3, 3) MOE_DOWN_WIDE(4, 3, 3) GEMV3_WIDE(1, 1, 3)     \
    GEMV3_WIDE(1, 3, 3) GEMV3_WIDE(2, 3, 3) GEMV3_WIDE(1, 3, 4) GEMV3_WIDE(2, 3, 4)             \
    GEMV3_WIDE(1, 3, 2) GEMV3_WIDE(2, 3, 2) GEMV3_WIDE(4, 3, 1)

#include "../../kernels-cuda/src/kernels/common.cuh"
#include "../../kernels-cuda/src/kernels/basic.cu"
#include "../../kernels-cuda/src/kernels/linear.cu"
#include "../../kernels-cuda/src/kernels/attention.cu"
#include "../../kernels-cuda/src/kernels/moe.cu"
#include "decode_wide.cu"  // experiments: not part of the backend
#include "moe_stream.cu"   // experiments: not part of the backend

#include "micro_common.cuh"

struct Layer : MoeLayer, AttnLayer {};

static std::vector<Layer> layers;
static float *x_in, *h_buf, *y_buf, *q_out, *k_out, *v_out, *o_out;

typedef void (*GuFn)(const float*, int, const u8*, i64, const u8*, i64, const u8*, int, const u8*,
                     int, const int*, int, int, float*);
typedef void (*DownFn)(const float*, int, const u8*, i64, const u8*, int, const int*,
                       const float*, int, int, float*);
typedef void (*G3Fn)(const float*, int, const u8*, i64, const u8*, int, float*, int, int,
                     const u8*, i64, const u8*, int, float*, int, int, const u8*, i64, const u8*,
                     int, float*, int, int);
typedef void (*GfFn)(const float*, int, int, const u8*, i64, const u8*, int, float*, int);

// kind 0: the per-row grids above; kind 1 (moe_stream.cu persistent) / 2 (bulk) / 3 (bulk with
// int8-plane activations, the _q3 entries): grid
// (CTAs per SM x SMs, 1), block `block`, smem from stream_smem, CTAs per SM = occupancy capped
// at `want` (0: no cap). grid and smem are filled in by stream_setup.
struct GuVar {
    const char* name;
    GuFn f;
    int r, p;  // r = 0: the f32 kernel (8 rows per block, no smem)
    int kind = 0, R = 0, S = 0, block = 256, want = 0;
    size_t smem = 0;
    int grid = 0;
};
struct DownVar {
    const char* name;
    DownFn f;
    int r, p;
    int kind = 0, R = 0, S = 0, block = 256, want = 0;
    size_t smem = 0;
    int grid = 0;
};
struct G3Var {
    const char* name;
    G3Fn f;
    int r, p;
};

// Dynamic shared memory of a moe_stream.cu kernel (see the formulas there).
static size_t stream_smem(int kind, bool down, int R, int S) {
    if (kind == 1) return down ? (size_t)K * NFF * 4 : (size_t)D * 4;
    int n = down ? NFF : D, nbk = n / 32;
    size_t xrow = kind == 3 ? ((size_t)3 * n + (size_t)nbk * 4 + 15) & ~(size_t)15 : (size_t)n * 4;
    size_t part = (size_t)R * nbk * 16 + ((R * nbk + 15) & ~15) + 16;
    return down ? (size_t)K * xrow + (size_t)S * K * part : xrow + (size_t)S * 2 * part;
}
template <typename V>
static void stream_setup(V& v, bool down, int sms) {
    if (!v.kind) return;
    v.smem = stream_smem(v.kind, down, v.R, v.S);
    CK(cudaFuncSetAttribute((const void*)v.f, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)v.smem));
    int occ = 0;
    CK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, (const void*)v.f, v.block, v.smem));
    if (v.want > 0 && occ > v.want) occ = v.want;
    v.grid = sms * occ;
    printf("%s %-16s block %d, smem %zu B, %d CTAs/SM, grid %d%s\n", down ? "down   " : "gate_up", v.name,
           v.block, v.smem, occ, v.grid, occ ? "" : " (does not fit: skipped)");
}

static void run_gu(const GuVar& v, int l, float* x, float* h, cudaStream_t s, bool pdl) {
    Layer& L_ = layers[l];
    if (v.kind) {
        launch(pdl, v.f, dim3(v.grid, 1), dim3(v.block), v.smem, s, x, D, L_.gate.p, L_.gate.nb,
               L_.up.p, L_.up.nb, (const u8*)L_.bg, T_F32, (const u8*)L_.bu, T_F32, L_.ids, K, NFF, h);
        return;
    }
    int rows_per_block = 8 * (v.r ? v.r : 1);
    size_t smem = v.p ? v.p * D + D / 8 : 0;
    launch(pdl, v.f, dim3((NFF + rows_per_block - 1) / rows_per_block, K), dim3(256), smem,
           s, x, D, L_.gate.p, L_.gate.nb, L_.up.p, L_.up.nb, (const u8*)L_.bg, T_F32,
           (const u8*)L_.bu, T_F32, L_.ids, K, NFF, h);
}
static void run_down(const DownVar& v, int l, float* h, float* y, cudaStream_t s, bool pdl) {
    Layer& L_ = layers[l];
    if (v.kind) {
        launch(pdl, v.f, dim3(v.grid, 1), dim3(v.block), v.smem, s, h, NFF, L_.down.p, L_.down.nb,
               (const u8*)L_.bd, T_F32, L_.ids, L_.wts, K, D, y);
        return;
    }
    int outs_per_block = v.r * 8 / K;
    size_t smem = v.p ? K * (v.p * NFF + NFF / 8) : 0;
    launch(pdl, v.f, dim3((D + outs_per_block - 1) / outs_per_block, 1), dim3(256), smem, s,
           h, NFF, L_.down.p, L_.down.nb, (const u8*)L_.bd, T_F32, L_.ids, L_.wts, K, D, y);
}
// qkv: three matrices of k = D.
static void run_qkv(const G3Var& v, int l, float* x, cudaStream_t s, bool pdl) {
    Layer& L_ = layers[l];
    int rpb = 8 * (v.r ? v.r : 1);
    int n0 = (NQ + rpb - 1) / rpb, n1 = (NKV + rpb - 1) / rpb;
    size_t smem = v.p ? v.p * D + D / 8 : 0;
    if (v.p)
        launch(pdl, v.f, dim3(n0 + 2 * n1), dim3(256), smem, s, x, D, L_.q.p, L_.q.nb,
               (const u8*)L_.bq, T_F32, q_out, NQ, n0, L_.k.p, L_.k.nb, (const u8*)L_.bk, T_F32,
               k_out, NKV, n1, L_.v.p, L_.v.nb, (const u8*)L_.bv, T_F32, v_out, NKV, n1);
    else  // gemvf3_q8_0_r1 has (x, t, k, ...)
        launch(pdl, gemvf3_q8_0_r1, dim3(n0 + 2 * n1), dim3(256), 0, s, x, 1, D, L_.q.p, L_.q.nb,
               (const u8*)L_.bq, T_F32, q_out, NQ, n0, L_.k.p, L_.k.nb, (const u8*)L_.bk, T_F32,
               k_out, NKV, n1, L_.v.p, L_.v.nb, (const u8*)L_.bv, T_F32, v_out, NKV, n1);
}
// o: one matrix NQ -> D.
static void run_o(const G3Var& v, int l, float* x, float* y, cudaStream_t s, bool pdl) {
    Layer& L_ = layers[l];
    int rpb = 8 * (v.r ? v.r : 1);
    int n0 = (D + rpb - 1) / rpb;
    size_t smem = v.p ? v.p * NQ + NQ / 8 : 0;
    if (v.p)
        launch(pdl, v.f, dim3(n0), dim3(256), smem, s, x, NQ, L_.o.p, L_.o.nb, (const u8*)L_.bo,
               T_F32, y, D, n0, L_.o.p, L_.o.nb, (const u8*)L_.bo, T_F32, y, D, 0, L_.o.p,
               L_.o.nb, (const u8*)L_.bo, T_F32, y, D, 0);
    else
        launch(pdl, gemvf_q8_0_r1, dim3(n0), dim3(256), 0, s, x, 1, NQ, L_.o.p, L_.o.nb,
               (const u8*)L_.bo, T_F32, y, D);
}

static double nmse(const std::vector<float>& a, const std::vector<float>& ref) {
    double num = 0, den = 0;
    for (size_t i = 0; i < a.size(); ++i) {
        double d = (double)a[i] - ref[i];
        num += d * d;
        den += (double)ref[i] * ref[i];
    }
    return den > 0 ? num / den : num;
}
static cudaStream_t g_stream;
static std::vector<float> fetch(const float* p, size_t n) {
    CK(cudaStreamSynchronize(g_stream));
    std::vector<float> v(n);
    CK(cudaMemcpy(v.data(), p, n * 4, cudaMemcpyDeviceToHost));
    return v;
}

int main() {
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    printf("device %s, %d SMs, L2 %d MiB\n", prop.name, prop.multiProcessorCount,
           prop.l2CacheSize >> 20);
    cudaStream_t s;
    CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    g_stream = s;
    for (auto f : {(const void*)moe_down_wide_r2_p3_n3, (const void*)moe_down_wide_r4_p3_n3,
                   (const void*)moe_down_wide_r1_p3_n3})
        CK(cudaFuncSetAttribute(f, cudaFuncAttributeMaxDynamicSharedMemorySize, 64 * 1024));

    // weights
    srand(1);
    layers.resize(L);
    for (int l = 0; l < L; ++l) {
        Layer& y = layers[l];
        u32 sd = 1000 * (l + 1);
        make_moe_layer(y, sd);
        make_attn_layer(y, sd);
    }
    x_in = make_f(NQ, 77, 1.0f);
    h_buf = make_f(K * NFF, 78, 2.0f);  // a stand-in h for the down timings
    float* h_out;
    CK(cudaMalloc(&h_out, K * NFF * 4));
    CK(cudaMalloc(&y_buf, D * 4));
    CK(cudaMalloc(&q_out, NQ * 4));
    CK(cudaMalloc(&k_out, NKV * 4));
    CK(cudaMalloc(&v_out, NKV * 4));
    CK(cudaMalloc(&o_out, D * 4));
    int* cnt;
    CK(cudaMalloc(&cnt, 4));
    CK(cudaDeviceSynchronize());

    print_copy_bandwidth(s);

    // launch cost of an empty kernel: plain, PDL, graph
    {
        double plain = time_us(s, 2000, [&](int) { launch(false, empty_kernel, dim3(132), dim3(128), 0, s, cnt); });
        double pdl = time_us(s, 2000, [&](int) { launch(true, empty_kernel, dim3(132), dim3(128), 0, s, cnt); });
        cudaGraph_t g;
        cudaGraphExec_t ge;
        for (int mode = 0; mode < 2; ++mode) {
            CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
            for (int i = 0; i < 200; ++i) launch(mode == 1, empty_kernel, dim3(132), dim3(128), 0, s, cnt);
            CK(cudaStreamEndCapture(s, &g));
            CK(cudaGraphInstantiate(&ge, g, 0));
            double us = time_us(s, 20, [&](int) { CK(cudaGraphLaunch(ge, s)); }) / 200;
            printf("empty kernel: %s graph %.2f us/launch\n", mode ? "PDL" : "plain", us);
            CK(cudaGraphExecDestroy(ge));
            CK(cudaGraphDestroy(g));
        }
        printf("empty kernel: plain %.2f us/launch, PDL %.2f us/launch\n", plain, pdl);
    }

    // ---- MoE gate+up ----
    const double gu_bytes = 2.0 * K * NFF * (D / 32) * 17;
    std::vector<GuVar> gus = {
        {"f32 r1 (today)", moe_gate_up_mxfp4_r1, 0, 0},
        {"f32 r2", moe_gate_up_mxfp4_r2, 0, 0},
        {"wide r1 p1", moe_gate_up_wide_r1_p1_n3, 1, 1},
        {"wide r1 p2", moe_gate_up_wide_r1_p2_n3, 1, 2},
        {"wide r1 p3", moe_gate_up_wide_r1_p3_n3, 1, 3},
        {"wide r2 p1", moe_gate_up_wide_r2_p1_n3, 2, 1},
        {"wide r2 p2", moe_gate_up_wide_r2_p2_n3, 2, 2},
        {"wide r2 p3", moe_gate_up_wide_r2_p3_n3, 2, 3},
        // moe_stream.cu: {name, f, 0, 0, kind, R, S, block, CTAs/SM cap}
        {"pers", moe_gate_up_pers, 0, 0, 1, 0, 0, 256, 2},
        {"pers l2", moe_gate_up_pers_l2, 0, 0, 1, 0, 0, 256, 2},
        {"bulk r8 s4", moe_gate_up_bulk_r8_s4, 0, 0, 2, 8, 4, 256, 0},
        {"bulk r8 s6", moe_gate_up_bulk_r8_s6, 0, 0, 2, 8, 6, 256, 0},
        {"bulk r8 s8", moe_gate_up_bulk_r8_s8, 0, 0, 2, 8, 8, 256, 0},
        {"bulk r16 s4", moe_gate_up_bulk_r16_s4, 0, 0, 2, 16, 4, 256, 0},
        {"bulk r16 s4 b512", moe_gate_up_bulk_r16_s4, 0, 0, 2, 16, 4, 512, 0},
        {"bulk q3 r8 s6", moe_gate_up_bulk_q3_r8_s6, 0, 0, 3, 8, 6, 256, 0},
        {"bulk q3 r16 s4", moe_gate_up_bulk_q3_r16_s4, 0, 0, 3, 16, 4, 512, 0},
    };
    gus[1].r = 0;  // f32 r2 runs 16 rows per block
    for (auto& v : gus) stream_setup(v, false, prop.multiProcessorCount);
    run_gu(gus[0], 0, x_in, h_out, s, false);
    std::vector<float> ref_h = fetch(h_out, K * NFF);
    for (auto& v : gus) {
        if (v.kind && !v.grid) continue;
        bool r2f = !strcmp(v.name, "f32 r2");
        auto go = [&](int i) {
            if (r2f) {
                Layer& L_ = layers[i % L];
                launch(false, v.f, dim3(NFF / 16, K), dim3(256), 0, s, x_in, D, L_.gate.p, L_.gate.nb,
                       L_.up.p, L_.up.nb, (const u8*)L_.bg, T_F32, (const u8*)L_.bu, T_F32, L_.ids, K,
                       NFF, h_out);
            } else
                run_gu(v, i % L, x_in, h_out, s, false);
        };
        CK(cudaMemsetAsync(h_out, 0xff, K * NFF * 4, s));
        go(0);
        CK(cudaDeviceSynchronize());
        double e = nmse(fetch(h_out, K * NFF), ref_h);
        double us = time_us(s, 400, go);
        printf("gate_up %-16s %7.2f us  %6.0f GB/s  nmse vs f32 %.2e\n", v.name, us, gu_bytes / us / 1e3, e);
    }

    // ---- what makes the MoE slow: the same bytes as dense matrices (MXFP4 and Q8_0), and
    // gate_up with all four slots on one expert (L2 serves three of them) ----
    {
        struct Dense {
            const char* name;
            int type, rows;
        };
        for (Dense dn : {Dense{"dense mxfp4 11520x2880 (17.6 MB, down's bytes)", T_MXFP4, 11520},
                         Dense{"dense mxfp4 5760x2880 (8.8 MB)", T_MXFP4, 5760},
                         Dense{"dense q8_0 5760x2880 (16.9 MB)", T_Q8_0, 5760},
                         Dense{"dense q8_0 11520x2880 (33.8 MB)", T_Q8_0, 11520}}) {
            std::vector<u8*> ws(L);
            i64 nb = (i64)dn.rows * (D / 32);
            size_t bytes = dn.type == T_MXFP4 ? nb * 17 : nb * 34;
            for (int l = 0; l < L; ++l) {
                CK(cudaMalloc(&ws[l], bytes));
                if (dn.type == T_MXFP4) {
                    rnd_bytes(ws[l], nb * 16, 900 + l);
                    rnd_bytes(ws[l] + nb * 16, nb, 950 + l, 119, 6);
                } else {
                    rnd_bytes(ws[l], nb * 32, 900 + l);
                    fill_f16_scales<<<1024, 256>>>((u16*)(ws[l] + nb * 32), nb, 950 + l);
                }
            }
            float* yd;
            CK(cudaMalloc(&yd, (size_t)dn.rows * 4));
            CK(cudaDeviceSynchronize());  // the fills ran on the legacy stream
            auto kern = dn.type == T_MXFP4 ? gemvf_mxfp4_r1 : gemvf_q8_0_r1;
            double us = time_us(s, 400, [&](int i) {
                launch(false, kern, dim3(dn.rows / 8), dim3(256), 0, s, x_in, 1, D, ws[i % L], nb,
                       (const u8*)nullptr, 0, yd, dn.rows);
            });
            printf("%-44s %7.2f us  %6.0f GB/s\n", dn.name, us, bytes / us / 1e3);
            for (auto w : ws) CK(cudaFree(w));
            CK(cudaFree(yd));
        }
        int same[K] = {7, 7, 7, 7};
        int* ids_same;
        CK(cudaMalloc(&ids_same, sizeof same));
        CK(cudaMemcpy(ids_same, same, sizeof same, cudaMemcpyHostToDevice));
        double us = time_us(s, 400, [&](int i) {
            Layer& L_ = layers[i % L];
            launch(false, moe_gate_up_mxfp4_r1, dim3(NFF / 8, K), dim3(256), 0, s, x_in, D, L_.gate.p,
                   L_.gate.nb, L_.up.p, L_.up.nb, (const u8*)L_.bg, T_F32, (const u8*)L_.bu, T_F32,
                   ids_same, K, NFF, h_out);
        });
        printf("%-44s %7.2f us  (one expert's 8.8 MB from DRAM)\n", "gate_up f32 r1, all slots expert 7", us);
        us = time_us(s, 400, [&](int i) {
            Layer& L_ = layers[i % L];
            launch(false, moe_gate_up_mxfp4_r1, dim3(NFF / 8, 1), dim3(256), 0, s, x_in, D, L_.gate.p,
                   L_.gate.nb, L_.up.p, L_.up.nb, (const u8*)L_.bg, T_F32, (const u8*)L_.bu, T_F32,
                   L_.ids, K, NFF, h_out);
        });
        printf("%-44s %7.2f us  %6.0f GB/s\n", "gate_up f32 r1, one slot (grid y = 1)", us, gu_bytes / 4 / us / 1e3);
    }

    // ---- MoE down ----
    const double down_bytes = 1.0 * K * D * (NFF / 32) * 17;
    std::vector<DownVar> downs = {
        {"f32 r2 (today)", moe_down_mxfp4_r2, 2, 0},
        {"f32 r4", moe_down_mxfp4_r4, 4, 0},
        {"wide r1 p3", moe_down_wide_r1_p3_n3, 1, 3},
        {"wide r2 p1", moe_down_wide_r2_p1_n3, 2, 1},
        {"wide r2 p2", moe_down_wide_r2_p2_n3, 2, 2},
        {"wide r2 p3", moe_down_wide_r2_p3_n3, 2, 3},
        {"wide r4 p3", moe_down_wide_r4_p3_n3, 4, 3},
        {"pers s1", moe_down_pers_s1, 0, 0, 1, 0, 0, 256, 2},
        {"pers s2", moe_down_pers_s2, 0, 0, 1, 0, 0, 256, 2},
        {"pers s2 l2", moe_down_pers_s2_l2, 0, 0, 1, 0, 0, 256, 2},
        {"bulk r2 s6", moe_down_bulk_r2_s6, 0, 0, 2, 2, 6, 256, 0},
        {"bulk r2 s8", moe_down_bulk_r2_s8, 0, 0, 2, 2, 8, 256, 0},
        {"bulk r4 s4", moe_down_bulk_r4_s4, 0, 0, 2, 4, 4, 256, 0},
        {"bulk r4 s4 b512", moe_down_bulk_r4_s4, 0, 0, 2, 4, 4, 512, 0},
        {"bulk r8 s3", moe_down_bulk_r8_s3, 0, 0, 2, 8, 3, 256, 0},
        {"bulk q3 r2 s8", moe_down_bulk_q3_r2_s8, 0, 0, 3, 2, 8, 256, 0},
        {"bulk q3 r4 s4", moe_down_bulk_q3_r4_s4, 0, 0, 3, 4, 4, 512, 0},
    };
    for (auto& v : downs) stream_setup(v, true, prop.multiProcessorCount);
    run_down(downs[0], 0, h_buf, y_buf, s, false);
    std::vector<float> ref_y = fetch(y_buf, D);
    for (auto& v : downs) {
        if (v.kind && !v.grid) continue;
        CK(cudaMemsetAsync(y_buf, 0xff, D * 4, s));
        run_down(v, 0, h_buf, y_buf, s, false);
        CK(cudaDeviceSynchronize());
        double e = nmse(fetch(y_buf, D), ref_y);
        double us = time_us(s, 400, [&](int i) { run_down(v, i % L, h_buf, y_buf, s, false); });
        printf("down    %-16s %7.2f us  %6.0f GB/s  nmse vs f32 %.2e\n", v.name, us, down_bytes / us / 1e3, e);
    }

    // ---- expert parallelism: slot 1 of layer 0 is another rank's expert (id -1); each
    // moe_stream.cu variant against the f32 kernel on zeroed outputs ----
    {
        int ids_h[K], ep[K];
        CK(cudaDeviceSynchronize());
        CK(cudaMemcpy(ids_h, layers[0].ids, sizeof ids_h, cudaMemcpyDeviceToHost));
        memcpy(ep, ids_h, sizeof ep);
        ep[1] = -1;
        CK(cudaMemcpy(layers[0].ids, ep, sizeof ep, cudaMemcpyHostToDevice));
        CK(cudaDeviceSynchronize());
        CK(cudaMemsetAsync(h_out, 0, K * NFF * 4, s));
        run_gu(gus[0], 0, x_in, h_out, s, false);
        std::vector<float> rh = fetch(h_out, K * NFF);
        CK(cudaMemsetAsync(y_buf, 0, D * 4, s));
        run_down(downs[0], 0, h_buf, y_buf, s, false);
        std::vector<float> ry = fetch(y_buf, D);
        for (auto& v : gus) {
            if (!v.kind || !v.grid) continue;
            CK(cudaMemsetAsync(h_out, 0, K * NFF * 4, s));
            run_gu(v, 0, x_in, h_out, s, false);
            printf("EP gate_up %-16s nmse vs f32 %.2e\n", v.name, nmse(fetch(h_out, K * NFF), rh));
        }
        for (auto& v : downs) {
            if (!v.kind || !v.grid) continue;
            CK(cudaMemsetAsync(y_buf, 0, D * 4, s));
            run_down(v, 0, h_buf, y_buf, s, false);
            printf("EP down    %-16s nmse vs f32 %.2e\n", v.name, nmse(fetch(y_buf, D), ry));
        }
        CK(cudaDeviceSynchronize());
        CK(cudaMemcpy(layers[0].ids, ids_h, sizeof ids_h, cudaMemcpyHostToDevice));
        CK(cudaDeviceSynchronize());
    }

    // ---- q/k/v and o (Q8_0) ----
    const double qkv_bytes = (NQ + 2.0 * NKV) * (D / 32) * 34, o_bytes = 1.0 * D * (NQ / 32) * 34;
    std::vector<G3Var> g3s = {
        {"f32 r1 (today)", nullptr, 0, 0},
        {"wide r1 p1 n3", gemv3_wide_q8_r1_p1_n3, 1, 1},
        {"wide r1 p3 n3", gemv3_wide_q8_r1_p3_n3, 1, 3},
        {"wide r2 p3 n3", gemv3_wide_q8_r2_p3_n3, 2, 3},
        {"wide r1 p3 n4", gemv3_wide_q8_r1_p3_n4, 1, 3},
        {"wide r2 p3 n4", gemv3_wide_q8_r2_p3_n4, 2, 3},
        {"wide r1 p3 n2", gemv3_wide_q8_r1_p3_n2, 1, 3},
        {"wide r2 p3 n2", gemv3_wide_q8_r2_p3_n2, 2, 3},
        {"wide r4 p3 n1", gemv3_wide_q8_r4_p3_n1, 4, 3},
    };
    run_qkv(g3s[0], 0, x_in, s, false);
    std::vector<float> ref_q = fetch(q_out, NQ);
    run_o(g3s[0], 0, x_in, o_out, s, false);
    std::vector<float> ref_o = fetch(o_out, D);
    for (auto& v : g3s) {
        CK(cudaMemsetAsync(q_out, 0xff, NQ * 4, s));
        CK(cudaMemsetAsync(o_out, 0xff, D * 4, s));
        run_qkv(v, 0, x_in, s, false);
        run_o(v, 0, x_in, o_out, s, false);
        CK(cudaDeviceSynchronize());
        double eq = nmse(fetch(q_out, NQ), ref_q), eo = nmse(fetch(o_out, D), ref_o);
        double uq = time_us(s, 400, [&](int i) { run_qkv(v, i % L, x_in, s, false); });
        double uo = time_us(s, 400, [&](int i) { run_o(v, i % L, x_in, o_out, s, false); });
        printf("qkv     %-16s %7.2f us  %6.0f GB/s  nmse %.2e | o %7.2f us  %6.0f GB/s  nmse %.2e\n",
               v.name, uq, qkv_bytes / uq / 1e3, eq, uo, o_bytes / uo / 1e3, eo);
    }

    // ---- output matrix (Q8_0 2880 -> 201088) ----
    {
        const int NV = 201088;
        Q8 w = make_q8(NV, D, 4242);
        CK(cudaDeviceSynchronize());  // the fills ran on the legacy stream, `s` does not wait for it
        float* yv;
        CK(cudaMalloc(&yv, (size_t)NV * 4));
        const double bytes = (double)NV * (D / 32) * 34;
        launch(false, gemvf_q8_0_r1, dim3(NV / 8), dim3(256), 0, s, x_in, 1, D, w.p, w.nb, (const u8*)nullptr, 0, yv, NV);
        std::vector<float> ref = fetch(yv, NV);
        double u0 = time_us(s, 50, [&](int) {
            launch(false, gemvf_q8_0_r1, dim3(NV / 8), dim3(256), 0, s, x_in, 1, D, w.p, w.nb, (const u8*)nullptr, 0, yv, NV);
        });
        printf("output  f32 r1 (today)   %7.2f us  %6.0f GB/s\n", u0, bytes / u0 / 1e3);
        for (auto& v : g3s) {
            if (!v.p) continue;
            int rpb = 8 * v.r, nb0 = (NV + rpb - 1) / rpb;
            auto go = [&](int) {
                launch(false, v.f, dim3(nb0), dim3(256), v.p * D + D / 8, s, x_in, D, w.p, w.nb,
                       (const u8*)nullptr, 0, yv, NV, nb0, w.p, w.nb, (const u8*)nullptr, 0, yv, NV, 0,
                       w.p, w.nb, (const u8*)nullptr, 0, yv, NV, 0);
            };
            go(0);
            CK(cudaDeviceSynchronize());
            double e = nmse(fetch(yv, NV), ref);
            double u = time_us(s, 50, go);
            printf("output  %-16s %7.2f us  %6.0f GB/s  nmse %.2e\n", v.name, u, bytes / u / 1e3, e);
        }
        CK(cudaFree(yv));
        CK(cudaFree(w.p));
    }

    // ---- a 24-layer chain: qkv -> o -> gate_up -> down (the big four of a decode step) ----
    {
        double chain_bytes = 24 * (qkv_bytes + o_bytes + gu_bytes + down_bytes);
        struct Cfg {
            const char* name;
            G3Var g3;
            GuVar gu;
            DownVar dn;
            bool pdl, graph;
        };
        G3Var f3 = g3s[0], w3 = g3s[2];
        auto gu_named = [&](const char* n) -> GuVar {
            for (auto& v : gus)
                if (!strcmp(v.name, n) && (!v.kind || v.grid)) return v;
            return gus[0];
        };
        auto dn_named = [&](const char* n) -> DownVar {
            for (auto& v : downs)
                if (!strcmp(v.name, n) && (!v.kind || v.grid)) return v;
            return downs[0];
        };
        std::vector<Cfg> cfgs = {
            {"f32 plain", f3, gus[0], downs[0], false, false},
            {"f32 graph", f3, gus[0], downs[0], false, true},
            {"f32 PDL", f3, gus[0], downs[0], true, false},
            {"f32 PDL+graph", f3, gus[0], downs[0], true, true},
            {"wide p3 plain", w3, gus[4], downs[5], false, false},
            {"wide p3 PDL", w3, gus[4], downs[5], true, false},
            {"wide p3 graph", w3, gus[4], downs[5], false, true},
            {"wide p3 PDL+graph", w3, gus[4], downs[5], true, true},
            // moe_stream.cu best guesses (falls back to the f32 kernels if a name is missing)
            {"stream bulk PDL", f3, gu_named("bulk r8 s6"), dn_named("bulk r2 s8"), true, false},
            {"stream bulk PDL+graph", f3, gu_named("bulk r8 s6"), dn_named("bulk r2 s8"), true, true},
            {"stream pers PDL+graph", f3, gu_named("pers"), dn_named("pers s2"), true, true},
            {"stream q3 PDL+graph", f3, gu_named("bulk q3 r8 s6"), dn_named("bulk q3 r2 s8"), true, true},
        };
        for (auto& c : cfgs) {
            auto step = [&]() {
                for (int l = 0; l < 24; ++l) {
                    run_qkv(c.g3, l % L, y_buf, s, c.pdl);
                    run_o(c.g3, l % L, q_out, o_out, s, c.pdl);
                    run_gu(c.gu, l % L, o_out, h_out, s, c.pdl);
                    run_down(c.dn, l % L, h_out, y_buf, s, c.pdl);
                }
            };
            fill_floats<<<16, 256>>>(y_buf, D, 5, 1.0f);
            double us;
            if (c.graph) {
                cudaGraph_t g;
                cudaGraphExec_t ge;
                CK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
                step();
                CK(cudaStreamEndCapture(s, &g));
                CK(cudaGraphInstantiate(&ge, g, 0));
                us = time_us(s, 20, [&](int) { CK(cudaGraphLaunch(ge, s)); });
                CK(cudaGraphExecDestroy(ge));
                CK(cudaGraphDestroy(g));
            } else
                us = time_us(s, 20, [&](int) { step(); });
            printf("chain 24 x (qkv, o, gate_up, down) %-18s %8.1f us  %6.0f GB/s  (%.2f us per kernel)\n",
                   c.name, us, chain_bytes / us / 1e3, us / 96);
        }
    }
    CK(cudaDeviceSynchronize());
    printf("done\n");
    return 0;
}
