// Helpers shared by the decode microbenchmarks (decode_micro.cu, l2_prefetch.cu): error checks,
// random fills on the device, the gpt-oss-20b shapes, weight stacks in the backend's device
// layout, launches with or without programmatic dependent launch, and event timing. Included
// after the backend's kernel sources (u8, i64, GRID_DEP_* come from common.cuh).
#pragma once
#define CK(x)                                                                                    \
    do {                                                                                         \
        cudaError_t e_ = (x);                                                                    \
        if (e_ != cudaSuccess) {                                                                 \
            fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_));  \
            exit(1);                                                                             \
        }                                                                                        \
    } while (0)

// ---- random fills on the device ----
__device__ u32 hash32(u64 i, u32 seed) {
    u64 z = i * 0x9E3779B97F4A7C15ull + seed * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return (u32)(z ^ (z >> 31));
}
__global__ void fill_bytes(u8* p, u64 n, u32 seed, u32 lo, u32 span) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        p[i] = (u8)(lo + hash32(i, seed) % span);
}
// f16 scales in [2^-9, 2^-6): exponent 6..8 (biased), random mantissa.
__global__ void fill_f16_scales(u16* p, u64 n, u32 seed) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        u32 h = hash32(i, seed);
        p[i] = (u16)(((6 + h % 3) << 10) | ((h >> 8) & 1023));
    }
}
__global__ void fill_floats(float* p, u64 n, u32 seed, float scale) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) {
        u32 h = hash32(i, seed);
        float u = (h & 0xffffff) / 16777216.0f * 2.f - 1.f;
        // a few outliers per block, as real activations have
        p[i] = ((h >> 24) == 7 ? 8.f : 1.f) * u * scale;
    }
}
__global__ void empty_kernel(int* p) {
    GRID_DEP_LAUNCH();
    GRID_DEP_WAIT();
    if (p && threadIdx.x == 0 && blockIdx.x == 0) p[0] += 1;
}

static void rnd_bytes(u8* p, size_t n, u32 seed, u32 lo = 0, u32 span = 256) {
    fill_bytes<<<1024, 256>>>(p, n, seed, lo, span);
    CK(cudaGetLastError());
}

// ---- shapes (gpt-oss-20b) ----
const int D = 2880, NFF = 2880, NE = 32, K = 4, NQ = 4096, NKV = 512, L = 8;

struct Mx {  // MXFP4 stack [NE experts x rows x cols] in the device layout
    u8* p;
    i64 nb;
};
struct Q8 {  // Q8_0 matrix rows x cols
    u8* p;
    i64 nb;
};
static Mx make_mx(int rows, int cols, u32 seed) {
    i64 nb = (i64)NE * rows * (cols / 32);
    Mx m{nullptr, nb};
    CK(cudaMalloc(&m.p, nb * 17));
    rnd_bytes(m.p, nb * 16, seed);
    rnd_bytes(m.p + nb * 16, nb, seed + 1, 119, 6);
    return m;
}
static Q8 make_q8(int rows, int cols, u32 seed) {
    i64 nb = (i64)rows * (cols / 32);
    Q8 m{nullptr, nb};
    CK(cudaMalloc(&m.p, nb * 34));
    rnd_bytes(m.p, nb * 32, seed);
    fill_f16_scales<<<1024, 256>>>((u16*)(m.p + nb * 32), nb, seed + 1);
    return m;
}
static float* make_f(size_t n, u32 seed, float scale) {
    float* p;
    CK(cudaMalloc(&p, n * 4));
    fill_floats<<<1024, 256>>>(p, n, seed, scale);
    return p;
}

template <typename... Exp, typename... Act>
static void launch(bool pdl, void (*k)(Exp...), dim3 g, dim3 b, size_t smem, cudaStream_t s,
                   Act... args) {
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = g;
    cfg.blockDim = b;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = s;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr;
    cfg.numAttrs = pdl ? 1 : 0;
    CK(cudaLaunchKernelEx(&cfg, k, ((Exp)args)...));
}

// Microseconds per call of `body(i)` over `reps` calls (after a warm-up), by events.
template <typename F>
static double time_us(cudaStream_t s, int reps, F body) {
    for (int i = 0; i < 2 * L; ++i) body(i);
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    CK(cudaEventRecord(a, s));
    for (int i = 0; i < reps; ++i) body(i);
    CK(cudaEventRecord(b, s));
    CK(cudaEventSynchronize(b));
    float ms;
    CK(cudaEventElapsedTime(&ms, a, b));
    CK(cudaGetLastError());
    return ms * 1e3 / reps;
}


// K distinct random experts of NE (rand()) with routing weights 0.1, 0.3, ..., copied to the
// device.
static void random_routing(int** ids_d, float** wts_d) {
    int ids[K];
    float wts[K];
    for (int j = 0; j < K; ++j) {
        bool dup;
        do {
            ids[j] = rand() % NE;
            dup = false;
            for (int i = 0; i < j; ++i) dup |= ids[i] == ids[j];
        } while (dup);
        wts[j] = 0.1f + 0.2f * j;
    }
    CK(cudaMalloc(ids_d, sizeof ids));
    CK(cudaMalloc(wts_d, sizeof wts));
    CK(cudaMemcpy(*ids_d, ids, sizeof ids, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(*wts_d, wts, sizeof wts, cudaMemcpyHostToDevice));
}

// A layer's MoE (the three MXFP4 stacks, their biases, a routing) and attention matrices (Q8_0,
// with biases), from seeds sd + 1 ...
struct MoeLayer {
    Mx gate, up, down;
    float *bg, *bu, *bd;
    int* ids;
    float* wts;
};
static void make_moe_layer(MoeLayer& y, u32 sd) {
    y.gate = make_mx(NFF, D, sd + 1);
    y.up = make_mx(NFF, D, sd + 3);
    y.down = make_mx(D, NFF, sd + 5);
    y.bg = make_f(NE * NFF, sd + 7, 0.5f);
    y.bu = make_f(NE * NFF, sd + 8, 0.5f);
    y.bd = make_f(NE * D, sd + 9, 0.5f);
    random_routing(&y.ids, &y.wts);
}
struct AttnLayer {
    Q8 q, k, v, o;
    float *bq, *bk, *bv, *bo;
};
static void make_attn_layer(AttnLayer& y, u32 sd) {
    y.q = make_q8(NQ, D, sd + 11);
    y.k = make_q8(NKV, D, sd + 13);
    y.v = make_q8(NKV, D, sd + 15);
    y.o = make_q8(D, NQ, sd + 17);
    y.bq = make_f(NQ, sd + 19, 0.5f);
    y.bk = make_f(NKV, sd + 20, 0.5f);
    y.bv = make_f(NKV, sd + 21, 0.5f);
    y.bo = make_f(D, sd + 22, 0.5f);
}

// The device's copy bandwidth (read + write of 1 GiB, device to device), printed.
static void print_copy_bandwidth(cudaStream_t s) {
    size_t n = 1ull << 30;
    void *a, *b;
    CK(cudaMalloc(&a, n));
    CK(cudaMalloc(&b, n));
    double us = time_us(s, 10, [&](int) { CK(cudaMemcpyAsync(b, a, n, cudaMemcpyDeviceToDevice, s)); });
    printf("copy bandwidth %.0f GB/s\n", 2.0 * n / us / 1e3);
    CK(cudaFree(a));
    CK(cudaFree(b));
}
