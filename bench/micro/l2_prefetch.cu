// Does asking L2 for a decode kernel's weights ahead of the kernel make the decode faster?
// Microbenchmark on the GPU machine (one token, gpt-oss-20b shapes, 8 layers of random weights:
// more than L2 holds), built with nvcc from the backend's own kernel sources:
//   nvcc -O3 -std=c++17 -arch=sm_90a -o /tmp/l2pf bench/micro/l2_prefetch.cu && /tmp/l2pf
// It times the backend's dp4a MoE kernels and q/k/v, o products cold (a new layer each call) and
// hot (the same layer again: its weights in L2), then chains of them launched with programmatic
// dependent launch, with and without a small kernel that issues cp.async.bulk.prefetch.L2 for the
// weights a later kernel of the chain will read (the experts after the router's ids are known;
// the next layer's attention matrices at any time).
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

// ---- the prefetch kernels ----

// [p, p + n) rounded inwards to 16 bytes (the instruction's alignment; never past a buffer's end),
// cut into chunks; chunk c of the whole list goes to thread c % threads.
__device__ void l2pf_range(const u8* p, u64 n, u64& c0, u32 chunk) {
    u64 a = ((u64)p + 15) & ~15ull, e = ((u64)p + n) & ~15ull;
    u64 t = (u64)blockIdx.x * blockDim.x + threadIdx.x, T = (u64)gridDim.x * blockDim.x;
    u64 nch = e > a ? (e - a + chunk - 1) / chunk : 0;
    // first chunk of this range that falls to this thread
    u64 first = (t + T - c0 % T) % T;
    for (u64 c = first; c < nch; c += T) {
        u64 s = a + c * chunk;
        u32 len = (u32)min((u64)chunk, e - s);
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
        asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(s), "r"(len) : "memory");
#endif
    }
    c0 += nch;
}

struct PfList {
    const u8* p[8];
    u64 n[8];
    int count;
};

// Fixed ranges (weights that do not depend on the step): prefetch, then wait for the previous
// kernel so that the next one, which waits for this one, still follows it.
__global__ void l2pf_ranges(PfList l, u32 chunk) {
    GRID_DEP_LAUNCH();
    u64 c0 = 0;
    for (int i = 0; i < l.count; ++i) l2pf_range(l.p[i], l.n[i], c0, chunk);
    GRID_DEP_WAIT();
}

// The selected experts' rows of nm MXFP4 stacks (nibbles at w, scales at w + 16 nb; epb blocks
// per expert): waits for the previous kernel (the router writes ids) first.
struct PfStacks {
    const u8* w[3];
    i64 nb[3];
    i64 epb[3];
    int nm;
};
__global__ void l2pf_experts(PfStacks s, const int* ids, int k, u32 chunk) {
    GRID_DEP_LAUNCH();
    GRID_DEP_WAIT();
    u64 c0 = 0;
    for (int j = 0; j < k; ++j) {
        int e = ids[j];
        if (e < 0) continue;
        for (int m = 0; m < s.nm; ++m) {
            l2pf_range(s.w[m] + (i64)e * s.epb[m] * 16, (u64)s.epb[m] * 16, c0, chunk);
            l2pf_range(s.w[m] + s.nb[m] * 16 + (i64)e * s.epb[m], (u64)s.epb[m], c0, chunk);
        }
    }
}

// ---- the model's pieces ----
struct Layer : MoeLayer, AttnLayer {};
static std::vector<Layer> layers;
static u8 *xq, *hq;
static float *xsc, *x_in, *y_buf, *q_out, *k_out, *v_out, *attn_in;

static void gate_up(int l, cudaStream_t s, bool pdl) {
    Layer& y = layers[l];
    launch(pdl, moe_gate_up_planes_r1, dim3((NFF + 7) / 8, K), dim3(256), 0, s, (const u8*)xq,
           (const float*)xsc, D, (const u8*)y.gate.p, y.gate.nb, (const u8*)y.up.p, y.up.nb,
           (const u8*)y.bg, T_F32, (const u8*)y.bu, T_F32, (const int*)y.ids, K, NFF, hq);
}
static void down(int l, cudaStream_t s, bool pdl) {
    Layer& y = layers[l];
    launch(pdl, moe_down_planes_r2, dim3((D + 2 * (8 / K) - 1) / (2 * (8 / K)), 1), dim3(256), 0, s,
           (const u8*)hq, NFF, (const u8*)y.down.p, y.down.nb, (const u8*)y.bd, T_F32,
           (const int*)y.ids, (const float*)y.wts, K, D, y_buf);
}
static void qkv(int l, cudaStream_t s, bool pdl) {
    Layer& y = layers[l];
    int n0 = NQ / 8, n1 = NKV / 8;
    launch(pdl, gemvf3_q8_0_r1, dim3(n0 + 2 * n1), dim3(256), 0, s, (const float*)x_in, 1, D,
           (const u8*)y.q.p, y.q.nb, (const u8*)y.bq, T_F32, q_out, NQ, n0, (const u8*)y.k.p, y.k.nb,
           (const u8*)y.bk, T_F32, k_out, NKV, n1, (const u8*)y.v.p, y.v.nb, (const u8*)y.bv, T_F32,
           v_out, NKV, n1);
}
static void oproj(int l, cudaStream_t s, bool pdl) {
    Layer& y = layers[l];
    launch(pdl, gemvf_q8_0_r1, dim3(D / 8), dim3(256), 0, s, (const float*)attn_in, 1, NQ,
           (const u8*)y.o.p, y.o.nb, (const u8*)y.bo, T_F32, y_buf, D);
}

static int pf_grid = 132, pf_block = 32;
static u32 pf_chunk = 16384;
// The experts' stacks: which = 1 gate+up, 2 down, 3 all three.
static void pf_experts(int l, int which, cudaStream_t s) {
    Layer& y = layers[l];
    PfStacks st{};
    const Mx* ms[3] = {&y.gate, &y.up, &y.down};
    int rows[3] = {NFF, NFF, D}, cols[3] = {D, D, NFF};
    for (int m = 0; m < 3; ++m) {
        bool on = m < 2 ? (which & 1) : (which & 2);
        if (!on) continue;
        st.w[st.nm] = ms[m]->p;
        st.nb[st.nm] = ms[m]->nb;
        st.epb[st.nm] = (i64)rows[m] * (cols[m] / 32);
        st.nm++;
    }
    launch(true, l2pf_experts, dim3(pf_grid), dim3(pf_block), 0, s, st, (const int*)y.ids, K, pf_chunk);
}
// Layer l's q, k, v and o matrices.
static void pf_attn(int l, cudaStream_t s) {
    Layer& y = layers[l];
    PfList pl{};
    const Q8* qs[4] = {&y.q, &y.k, &y.v, &y.o};
    for (int i = 0; i < 4; ++i) {
        pl.p[i] = qs[i]->p;
        pl.n[i] = (u64)qs[i]->nb * 34;
    }
    pl.count = 4;
    launch(true, l2pf_ranges, dim3(pf_grid), dim3(pf_block), 0, s, pl, pf_chunk);
}

int main() {
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    printf("device %s, %d SMs, L2 %d MiB\n", prop.name, prop.multiProcessorCount, prop.l2CacheSize >> 20);
    pf_grid = prop.multiProcessorCount;
    cudaStream_t s;
    CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));

    srand(1);
    layers.resize(L);
    for (int l = 0; l < L; ++l) {
        Layer& y = layers[l];
        u32 sd = 1000 * (l + 1);
        make_moe_layer(y, sd);
        make_attn_layer(y, sd);
    }
    CK(cudaMalloc(&xq, 4 * D));
    rnd_bytes(xq, 4 * D, 71, 1, 253);  // int8 planes in [-126, 126] (as bytes 1..253)
    xsc = make_f(1, 72, 0.01f);
    CK(cudaMalloc(&hq, (size_t)K * 4 * NFF));
    x_in = make_f(D, 73, 1.0f);
    attn_in = make_f(NQ, 74, 1.0f);
    CK(cudaMalloc(&y_buf, D * 4));
    CK(cudaMalloc(&q_out, NQ * 4));
    CK(cudaMalloc(&k_out, NKV * 4));
    CK(cudaMalloc(&v_out, NKV * 4));
    CK(cudaDeviceSynchronize());

    print_copy_bandwidth(s);
    const double gu_mb = 2.0 * K * NFF * (D / 32) * 17 / 1e6, dn_mb = 1.0 * K * D * (NFF / 32) * 17 / 1e6;
    const double qkv_mb = (NQ + 2.0 * NKV) * (D / 32) * 34 / 1e6, o_mb = 1.0 * D * (NQ / 32) * 34 / 1e6;
    printf("bytes per layer: gate+up %.1f MB, down %.1f MB, qkv %.1f MB, o %.1f MB\n", gu_mb, dn_mb, qkv_mb, o_mb);
    const int R = 400;
    auto row = [&](const char* name, double us, double mb) {
        printf("%-58s %8.2f us", name, us);
        if (mb > 0) printf("  %6.0f GB/s", mb * 1e3 / us);
        printf("\n");
    };
    // Single kernels, plain launches back to back: cold = a new layer each call, hot = layer 0 again.
    row("gate_up cold", time_us(s, R, [&](int i) { gate_up(i % L, s, false); }), gu_mb);
    row("gate_up hot", time_us(s, R, [&](int) { gate_up(0, s, false); }), gu_mb);
    row("down cold", time_us(s, R, [&](int i) { down(i % L, s, false); }), dn_mb);
    row("down hot", time_us(s, R, [&](int) { down(0, s, false); }), dn_mb);
    row("qkv cold", time_us(s, R, [&](int i) { qkv(i % L, s, false); }), qkv_mb);
    row("qkv hot", time_us(s, R, [&](int) { qkv(0, s, false); }), qkv_mb);
    row("o cold", time_us(s, R, [&](int i) { oproj(i % L, s, false); }), o_mb);
    row("o hot", time_us(s, R, [&](int) { oproj(0, s, false); }), o_mb);
    // How fast the prefetch kernel alone pulls a layer's experts (then its attention matrices).
    row("prefetch experts gate+up+down alone", time_us(s, R, [&](int i) { pf_experts(i % L, 3, s); }), gu_mb + dn_mb);
    row("prefetch q,k,v,o alone", time_us(s, R, [&](int i) { pf_attn(i % L, s); }), qkv_mb + o_mb);
    // Chains with PDL, per layer (i = layer).
    for (u32 chunk : {16384u, 65536u}) {
        pf_chunk = chunk;
        printf("-- chains (PDL), prefetch chunk %u B, grid %d x %d\n", chunk, pf_grid, pf_block);
        row("moe: gate_up, down", time_us(s, R, [&](int i) {
                gate_up(i % L, s, true);
                down(i % L, s, true);
            }), gu_mb + dn_mb);
        row("moe: pf(all experts), gate_up, down", time_us(s, R, [&](int i) {
                pf_experts(i % L, 3, s);
                gate_up(i % L, s, true);
                down(i % L, s, true);
            }), gu_mb + dn_mb);
        row("moe: pf(gate,up), gate_up, pf(down), down", time_us(s, R, [&](int i) {
                pf_experts(i % L, 1, s);
                gate_up(i % L, s, true);
                pf_experts(i % L, 2, s);
                down(i % L, s, true);
            }), gu_mb + dn_mb);
        row("moe: gate_up, pf(down), down", time_us(s, R, [&](int i) {
                gate_up(i % L, s, true);
                pf_experts(i % L, 2, s);
                down(i % L, s, true);
            }), gu_mb + dn_mb);
        const double lay = gu_mb + dn_mb + qkv_mb + o_mb;
        row("layer: qkv, o, gate_up, down", time_us(s, R, [&](int i) {
                qkv(i % L, s, true);
                oproj(i % L, s, true);
                gate_up(i % L, s, true);
                down(i % L, s, true);
            }), lay);
        row("layer: + pf(next q,k,v,o) before down", time_us(s, R, [&](int i) {
                qkv(i % L, s, true);
                oproj(i % L, s, true);
                gate_up(i % L, s, true);
                pf_attn((i + 1) % L, s);
                down(i % L, s, true);
            }), lay);
        row("layer: + pf(next q,k,v,o) before gate_up", time_us(s, R, [&](int i) {
                qkv(i % L, s, true);
                oproj(i % L, s, true);
                pf_attn((i + 1) % L, s);
                gate_up(i % L, s, true);
                down(i % L, s, true);
            }), lay);
        row("layer: + pf(gate,up) + pf(down, next q,k,v,o)", time_us(s, R, [&](int i) {
                qkv(i % L, s, true);
                oproj(i % L, s, true);
                pf_experts(i % L, 1, s);
                gate_up(i % L, s, true);
                pf_experts(i % L, 2, s);
                pf_attn((i + 1) % L, s);
                down(i % L, s, true);
            }), lay);
        row("layer: + pf(all experts) + pf(next q,k,v,o) before down", time_us(s, R, [&](int i) {
                qkv(i % L, s, true);
                oproj(i % L, s, true);
                pf_experts(i % L, 3, s);
                gate_up(i % L, s, true);
                pf_attn((i + 1) % L, s);
                down(i % L, s, true);
            }), lay);
        row("layer: empty-range pf kernels only (their own cost)", time_us(s, R, [&](int i) {
                qkv(i % L, s, true);
                oproj(i % L, s, true);
                launch(true, l2pf_ranges, dim3(pf_grid), dim3(pf_block), 0, s, PfList{}, pf_chunk);
                gate_up(i % L, s, true);
                launch(true, l2pf_ranges, dim3(pf_grid), dim3(pf_block), 0, s, PfList{}, pf_chunk);
                down(i % L, s, true);
            }), lay);
    }
    CK(cudaDeviceSynchronize());
    printf("done\n");
    return 0;
}
