// Can the decode attention at depth 16384 read its K/V from L2 instead of DRAM, if a small
// kernel asks L2 for that layer's cache while the layer before it (instruction-bound MoE, DRAM
// at ~40 %) runs? Session 20 found the attention at the time DRAM needs for its 33.6 MB per
// full layer; session 14 found prefetching *weights* useless (those kernels are not read-bound).
// This times, with the backend's own kernels (gpt-oss-20b shapes, random data, 8 layers of
// weights and 8 full-layer caches: more than L2 holds):
//   - attn_dtc_d2 at depth 16384 cold (a new cache each call) and hot (the same cache again);
//   - a two-layer period as the decode step runs it (window layer: q/k/v, o, gate+up, down; full
//     layer: q/k/v, attention at depth 16384, o, gate+up, down; PDL chain) without and with a
//     prefetch of the full layer's K/V (cp.async.bulk.prefetch.L2, evict_normal or evict_last
//     policy) at several points of the window layer.
//   nvcc -O3 -std=c++17 -arch=sm_90a -o /tmp/kvl2 bench/micro/kv_l2.cu && /tmp/kvl2
#include <cuda_runtime.h>

#include <algorithm>
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

// ---- the prefetch kernel: [p, p + n) of up to 4 ranges, in chunks, spread over the grid ----
struct KvRanges {
    const u8* p[4];
    u64 n[4];
    int count;
};
// policy 0: no hint (evict_normal), 1: evict_last, 2: evict_first.
__global__ void kv_prefetch(KvRanges r, u32 chunk, int policy) {
    GRID_DEP_LAUNCH();
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    u64 pol = 0;
    if (policy == 1) asm volatile("createpolicy.fractional.L2::evict_last.b64 %0, 1.0;" : "=l"(pol));
    if (policy == 2) asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(pol));
    const u64 t = (u64)blockIdx.x * blockDim.x + threadIdx.x, T = (u64)gridDim.x * blockDim.x;
    u64 c0 = 0;
    for (int i = 0; i < r.count; ++i) {
        const u64 a = ((u64)r.p[i] + 15) & ~15ull, e = ((u64)r.p[i] + r.n[i]) & ~15ull;
        const u64 nch = e > a ? (e - a + chunk - 1) / chunk : 0;
        for (u64 c = (t + T - c0 % T) % T; c < nch; c += T) {
            const u64 s = a + c * chunk;
            const u32 len = (u32)min((u64)chunk, e - s);
            if (policy == 0)
                asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(s), "r"(len) : "memory");
            else
                asm volatile("cp.async.bulk.prefetch.L2.global.L2::cache_hint [%0], %1, %2;" ::"l"(s),
                             "r"(len), "l"(pol)
                             : "memory");
        }
        c0 += nch;
    }
#endif
    GRID_DEP_WAIT();
}

// ---- the model's pieces ----
struct Layer : MoeLayer, AttnLayer {};
static std::vector<Layer> layers;
const int NF = 8, DEPTH = 16384, CAP = 16512, HDIM = 64, NH = 64;
static u16 *kc[NF], *vc[NF];
static u8 *xq, *hq;
static float *xsc, *x_in, *y_buf, *q_out, *k_out, *v_out, *attn_in, *part, *sinks, *att_out;
static u32* tickets;
static int* step;
static int splits, chunk_keys;

static void gate_up(int l, cudaStream_t s) {
    Layer& y = layers[l];
    launch(true, moe_gate_up_planes_r1, dim3((NFF + 7) / 8, K), dim3(256), 0, s, (const u8*)xq,
           (const float*)xsc, D, (const u8*)y.gate.p, y.gate.nb, (const u8*)y.up.p, y.up.nb,
           (const u8*)y.bg, T_F32, (const u8*)y.bu, T_F32, (const int*)y.ids, K, NFF, hq);
}
static void down(int l, cudaStream_t s) {
    Layer& y = layers[l];
    launch(true, moe_down_planes_r2, dim3((D + 2 * (8 / K) - 1) / (2 * (8 / K)), 1), dim3(256), 0, s,
           (const u8*)hq, NFF, (const u8*)y.down.p, y.down.nb, (const u8*)y.bd, T_F32,
           (const int*)y.ids, (const float*)y.wts, K, D, y_buf);
}
static void qkv(int l, cudaStream_t s) {
    Layer& y = layers[l];
    int n0 = NQ / 8, n1 = NKV / 8;
    launch(true, gemvf3_q8_0_r1, dim3(n0 + 2 * n1), dim3(256), 0, s, (const float*)x_in, 1, D,
           (const u8*)y.q.p, y.q.nb, (const u8*)y.bq, T_F32, q_out, NQ, n0, (const u8*)y.k.p, y.k.nb,
           (const u8*)y.bk, T_F32, k_out, NKV, n1, (const u8*)y.v.p, y.v.nb, (const u8*)y.bv, T_F32,
           v_out, NKV, n1);
}
static void oproj(int l, cudaStream_t s) {
    Layer& y = layers[l];
    launch(true, gemvf_q8_0_r1, dim3(D / 8), dim3(256), 0, s, (const float*)attn_in, 1, NQ,
           (const u8*)y.o.p, y.o.nb, (const u8*)y.bo, T_F32, y_buf, D);
}
// Full attention of cache f at DEPTH, as a recorded step launches it (position from `step`).
static void attn(int f, cudaStream_t s) {
    launch(true, attn_dtc_d2, dim3(NKV / HDIM, splits), dim3(128), 0, s, (const float*)q_out,
           (const float*)k_out, (const float*)v_out, kc[f], vc[f], DEPTH, NH, NKV / HDIM, CAP, 0,
           0.125f, chunk_keys, part, tickets, (const u8*)sinks, T_F32, att_out, (const int*)step);
}
static int pf_grid = 16, pf_block = 32;
static u32 pf_chunk = 65536;
// Cache f's K and/or V (which: 1 K, 2 V, 3 both) into L2 with `policy`.
static void pf_kv(int f, int which, int policy, cudaStream_t s) {
    KvRanges r{};
    const u64 bytes = (u64)CAP * NKV * 2;
    if (which & 1) {
        r.p[r.count] = (const u8*)kc[f];
        r.n[r.count++] = bytes;
    }
    if (which & 2) {
        r.p[r.count] = (const u8*)vc[f];
        r.n[r.count++] = bytes;
    }
    launch(true, kv_prefetch, dim3(pf_grid), dim3(pf_block), 0, s, r, pf_chunk, policy);
}

int main() {
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    printf("device %s, %d SMs, L2 %d MiB, persisting max %d MiB\n", prop.name, prop.multiProcessorCount,
           prop.l2CacheSize >> 20, prop.persistingL2CacheMaxSize >> 20);
    cudaStream_t s;
    CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    srand(1);
    layers.resize(L);
    for (int l = 0; l < L; ++l) {
        make_moe_layer(layers[l], 1000 * (l + 1));
        make_attn_layer(layers[l], 1000 * (l + 1));
    }
    const size_t kv_bytes = (size_t)CAP * NKV * 2;  // NKV = 512 = 8 heads x 64 dims
    for (int f = 0; f < NF; ++f) {
        CK(cudaMalloc(&kc[f], kv_bytes));
        CK(cudaMalloc(&vc[f], kv_bytes));
        // f16 in [-1, 1): sign, exponent 0..14 (biased), random mantissa: bytes are fine as long
        // as they are finite, so fill and clear the top exponent bit.
        rnd_bytes((u8*)kc[f], kv_bytes, 500 + f);
        rnd_bytes((u8*)vc[f], kv_bytes, 600 + f);
    }
    // Clear bit 14 of every half (exponent < 16: |x| < 2): finite, moderate scores.
    auto clamp_halves = [](u16* p, size_t n) {
        std::vector<u16> h(n);
        CK(cudaMemcpy(h.data(), p, n * 2, cudaMemcpyDeviceToHost));
        for (auto& x : h) x &= 0xBFFF;
        CK(cudaMemcpy(p, h.data(), n * 2, cudaMemcpyHostToDevice));
    };
    for (int f = 0; f < NF; ++f) {
        clamp_halves(kc[f], kv_bytes / 2);
        clamp_halves(vc[f], kv_bytes / 2);
    }
    splits = std::min((DEPTH + 255) / 256, std::min(264 / 8, 512 / 8));
    chunk_keys = std::max(64, ((DEPTH + splits - 1) / splits + 63) / 64 * 64);
    CK(cudaMalloc(&xq, 4 * D));
    rnd_bytes(xq, 4 * D, 71, 1, 253);
    xsc = make_f(1, 72, 0.01f);
    CK(cudaMalloc(&hq, (size_t)K * 4 * NFF));
    x_in = make_f(D, 73, 1.0f);
    attn_in = make_f(NQ, 74, 1.0f);
    CK(cudaMalloc(&y_buf, D * 4));
    q_out = make_f(NQ, 75, 1.0f);
    k_out = make_f(NKV, 76, 1.0f);
    v_out = make_f(NKV, 77, 1.0f);
    sinks = make_f(NH, 78, 1.0f);
    CK(cudaMalloc(&att_out, NQ * 4));
    CK(cudaMalloc(&part, (size_t)NH * splits * (HDIM + 2) * 4));
    CK(cudaMalloc(&tickets, 64 * 4));
    CK(cudaMemset(tickets, 0, 64 * 4));
    CK(cudaMalloc(&step, 8));
    int st[2] = {0, DEPTH};
    CK(cudaMemcpy(step, st, 8, cudaMemcpyHostToDevice));
    CK(cudaDeviceSynchronize());
    print_copy_bandwidth(s);
    printf("attention: depth %d, %d splits of %d keys, K+V %.1f MB per layer\n", DEPTH, splits,
           chunk_keys, 2.0 * DEPTH * NKV * 2 / 1e6);

    const int R = 200;
    auto row = [&](const char* name, double us) { printf("%-64s %8.2f us\n", name, us); };
    row("attn cold (new cache each call)", time_us(s, R, [&](int i) { attn(i % NF, s); }));
    row("attn hot (cache 0 again)", time_us(s, R, [&](int) { attn(0, s); }));
    row("prefetch K+V alone, evict_last", time_us(s, R, [&](int i) { pf_kv(i % NF, 3, 1, s); }));

    // One two-layer period (window layer w = 2i % L, full layer 2i+1 % L, cache i % NF), with
    // prefetch points: 0 before the window layer's q/k/v, 1 before its gate+up, 2 before its
    // down, 3 before the full layer's q/k/v. `mask`: which points issue what (bits 2p..2p+1
    // of `which` per point).
    // other: the prefetch asks for a cache read four periods later (its cost without its gain).
    auto period = [&](int i, u32 which, int policy, bool other = false) {
        const int w = (2 * i) % L, fl = (2 * i + 1) % L, f = i % NF;
        auto pf_at = [&](int p) {
            int wh = (which >> (2 * p)) & 3;
            if (wh) pf_kv(other ? (i + NF / 2) % NF : f, wh, policy, s);
        };
        pf_at(0);
        qkv(w, s);
        oproj(w, s);
        pf_at(1);
        gate_up(w, s);
        pf_at(2);
        down(w, s);
        pf_at(3);
        qkv(fl, s);
        attn(f, s);
        oproj(fl, s);
        gate_up(fl, s);
        down(fl, s);
    };
    struct V {
        const char* name;
        u32 which;
    };
    const V vs[] = {
        {"K+V before window q/k/v", 3u},
        {"K+V before window gate+up", 3u << 2},
        {"K+V before window down", 3u << 4},
        {"K+V before full q/k/v", 3u << 6},
        {"K before gate+up, V before down", (1u << 2) | (2u << 4)},
        {"K before down, V before full q/k/v", (1u << 4) | (2u << 6)},
    };
    for (int rep = 0; rep < 2; ++rep) {
        for (int cfg = 0; cfg < 2; ++cfg) {
            pf_grid = cfg == 0 ? 16 : 132;
            pf_chunk = cfg == 0 ? 65536 : 16384;
            printf("-- period (PDL chain), prefetch grid %d x %d, chunk %u B\n", pf_grid, pf_block, pf_chunk);
            row("no prefetch", time_us(s, R, [&](int i) { period(i, 0u, 0); }));
            for (const V& v : vs) {
                for (int policy = 0; policy < 2; ++policy) {
                    char name[128];
                    snprintf(name, sizeof name, "%s, %s", v.name, policy ? "evict_last" : "normal");
                    row(name, time_us(s, R, [&](int i) { period(i, v.which, policy); }));
                }
                char name[128];
                snprintf(name, sizeof name, "%s, evict_last, another cache (cost only)", v.name);
                row(name, time_us(s, R, [&](int i) { period(i, v.which, 1, true); }));
            }
        }
    }
    CK(cudaDeviceSynchronize());
    printf("done\n");
    return 0;
}
