// Does the KV cache's layout limit the decode attention's read bandwidth at depth 16384?
// The cache is position-major ([slot][kv head][64] bf16: a key's 8 heads in one 1 KB row), so a
// block of attn_dtc (one kv head, one split) reads 128 B of every 1 KB row. This reads the same
// bytes with attn_dtc's thread mapping (grid 8 heads x 33 splits, 4 warps, two 64-key steps per
// warp, lane (r, c) = (lane / 4, lane % 4), the same 16-byte loads of keys and values) from the
// position-major layout and from a head-major one ([kv head][slot][64]: a head's keys contiguous),
// and compares both with a plain coalesced read of the same bytes. No arithmetic beyond an xor of
// the loaded words, so the time is the loads'. Buffers rotate over 4 copies (more than L2 holds).
//   nvcc -O3 -std=c++17 -arch=sm_90a -o /tmp/kvl bench/micro/kv_layout.cu && /tmp/kvl
#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>

typedef unsigned short u16;
typedef unsigned int u32;
typedef long long i64;

#define CK(x)                                                                  \
    do {                                                                       \
        cudaError_t e = (x);                                                   \
        if (e != cudaSuccess) {                                                \
            fprintf(stderr, "%s: %s\n", #x, cudaGetErrorString(e));            \
            exit(1);                                                           \
        }                                                                      \
    } while (0)

constexpr int HD = 64, NKV = 8, KEYS = 16384, SPLITS = 33, CHUNK = 512;

// head_major: offset of (slot, head) is (head * KEYS + slot) * HD, else (slot * NKV + head) * HD.
template <bool HEAD_MAJOR>
__device__ __forceinline__ i64 row_off(int slot, int kh) {
    return HEAD_MAJOR ? ((i64)kh * KEYS + slot) * HD : ((i64)slot * NKV + kh) * HD;
}

template <bool HEAD_MAJOR>
__global__ void __launch_bounds__(128) dtc_reads(const u16* kc, const u16* vc, u32* out) {
    const int kh = blockIdx.x, s = blockIdx.y;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, r = lane >> 2, c = lane & 3;
    const int bstart = s * CHUNK, bend = min(KEYS, bstart + CHUNK);
    u32 acc = 0;
    for (int j0 = bstart + warp * 64; j0 < bend; j0 += 256) {
        uint4 kr[4][2][2];
        uint4 vr[4][4];
#pragma unroll
        for (int u = 0; u < 4; ++u)
#pragma unroll
            for (int gi = 0; gi < 2; ++gi) {
                const int key = j0 + 16 * u + 8 * gi + r;
                const uint4* p = (const uint4*)(kc + row_off<HEAD_MAJOR>(key, kh) + c * 16);
                kr[u][gi][0] = p[0];
                kr[u][gi][1] = p[1];
            }
#pragma unroll
        for (int u = 0; u < 4; ++u)
#pragma unroll
            for (int e4 = 0; e4 < 4; ++e4) {
                const int key = j0 + 16 * u + 8 * (e4 >> 1) + 2 * c + (e4 & 1);
                vr[u][e4] = *(const uint4*)(vc + row_off<HEAD_MAJOR>(key, kh) + r * 8);
            }
#pragma unroll
        for (int u = 0; u < 4; ++u) {
#pragma unroll
            for (int gi = 0; gi < 2; ++gi)
#pragma unroll
                for (int i = 0; i < 2; ++i)
                    acc ^= kr[u][gi][i].x ^ kr[u][gi][i].y ^ kr[u][gi][i].z ^ kr[u][gi][i].w;
#pragma unroll
            for (int e4 = 0; e4 < 4; ++e4) acc ^= vr[u][e4].x ^ vr[u][e4].y ^ vr[u][e4].z ^ vr[u][e4].w;
        }
    }
    out[(blockIdx.y * gridDim.x + blockIdx.x) * 128 + threadIdx.x] = acc;
}

// The same bytes read in order, 16 bytes per thread per step, grid-stride.
__global__ void plain_reads(const uint4* a, i64 n, u32* out) {
    u32 acc = 0;
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        uint4 v = a[i];
        acc ^= v.x ^ v.y ^ v.z ^ v.w;
    }
    out[blockIdx.x * blockDim.x + threadIdx.x] = acc;
}

int main() {
    const i64 halves = (i64)KEYS * NKV * HD;  // one of K or V
    const i64 bytes = halves * 2;
    const int copies = 4;
    u16* buf;
    CK(cudaMalloc(&buf, 2 * bytes * copies));
    CK(cudaMemset(buf, 0x3c, 2 * bytes * copies));
    u32* out;
    CK(cudaMalloc(&out, 1 << 24));
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0);
    cudaEventCreate(&e1);
    const int iters = 40;
    auto run = [&](const char* name, auto launch) {
        for (int i = 0; i < copies; ++i) launch(i);  // warm up
        CK(cudaDeviceSynchronize());
        cudaEventRecord(e0);
        for (int i = 0; i < iters; ++i) launch(i % copies);
        cudaEventRecord(e1);
        CK(cudaEventSynchronize(e1));
        float ms;
        cudaEventElapsedTime(&ms, e0, e1);
        double us = ms * 1e3 / iters;
        printf("%-28s %8.2f us per launch, %6.0f GB/s (%.1f MB)\n", name, us, 2 * bytes / us / 1e3,
               2 * bytes / 1e6);
    };
    dim3 grid(NKV, SPLITS);
    for (int round = 0; round < 2; ++round) {
        run("position-major (as now)", [&](int i) {
            u16* k = buf + 2 * halves * i;
            dtc_reads<false><<<grid, 128>>>(k, k + halves, out);
        });
        run("head-major", [&](int i) {
            u16* k = buf + 2 * halves * i;
            dtc_reads<true><<<grid, 128>>>(k, k + halves, out);
        });
        run("plain coalesced read", [&](int i) {
            u16* k = buf + 2 * halves * i;
            plain_reads<<<132 * 8, 256>>>((const uint4*)k, 2 * bytes / 16, out);
        });
    }
    CK(cudaGetLastError());
    return 0;
}
