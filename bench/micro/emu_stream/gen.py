# CPU emulation of the moe_stream.cu kernels (no GPU): builds kern.h from the kernel sources
# (one std::thread per CUDA thread, CTAs in sequence, cp.async.bulk/mbarrier emulated with
# bounds and alignment checks) for main.cpp, which checks every entry against a float64
# reference, with and without an expert id of -1. Run: bash bench/micro/emu_stream/run.sh
import os, re, sys
HERE = os.path.dirname(os.path.abspath(__file__))
K = os.path.join(HERE, '../../../kernels-cuda/src/kernels/')
OUT = sys.argv[1]
common=open(K+'common.cuh').read()
common=common.replace('asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));','f = 0.f; (void)h;')
common=common.replace('asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));','h = 0; (void)f;')
assert 'asm("cvt' not in common
lin=open(K+'linear.cu').read()
i=lin.index('__device__ __forceinline__ float mxfp4_part_dot4(')
j=lin.index('\n}\n',i)+3
part=lin[i:j]
moe=open(K+'moe.cu').read()
i=moe.index('__device__ __forceinline__ float swiglu_oai(')
j=moe.index('\n}\n',i)+3
sw=moe[i:j]
ms=open(os.path.join(HERE, '../moe_stream.cu')).read()
a='#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900\n#define MS_HAS_BULK 1'
assert ms.count(a)==1
ms=ms.replace(a,'#if 1\n#define MS_HAS_BULK 1')
i=ms.index('__device__ __forceinline__ u32 ms_smem_addr')
j=ms.index('// ---- activations in shared memory ----')
emu='''
inline void ms_bar_init(u64* bar, u32 count) { std::lock_guard<std::mutex> g(g_mx); g_bars[bar] = {(int)count, (int)count, 0, 0}; }
inline void ms_bar_init_fence() {}
inline void ms_bar_expect(u64* bar, u32 bytes) {
    std::lock_guard<std::mutex> g(g_mx);
    auto it = g_bars.find(bar); if (it == g_bars.end()) __trap();
    it->second.tx += bytes; it->second.pend--; emu_done(it->second);
}
inline void ms_bulk_g2s(void* dst, const void* src, u32 bytes, u64* bar) {
    if (((uintptr_t)dst & 15) || ((uintptr_t)src & 15) || (bytes & 15) || bytes == 0) { fprintf(stderr, "bulk misaligned %p %p %u\\n", dst, src, bytes); __trap(); }
    unsigned char* d = (unsigned char*)dst; const unsigned char* s = (const unsigned char*)src;
    if (d < g_smem || d + bytes > g_smem + g_smem_n) { fprintf(stderr, "bulk dst out of smem\\n"); __trap(); }
    bool ok = false;
    for (auto& a : g_allocs) if (s >= a.p && s + bytes <= a.p + a.n) ok = true;
    if (!ok) { fprintf(stderr, "bulk src out of tensor\\n"); __trap(); }
    memcpy(d, s, bytes);
    std::lock_guard<std::mutex> g(g_mx);
    g_bulk_bytes += bytes;
    auto it = g_bars.find(bar); if (it == g_bars.end()) __trap();
    it->second.tx -= bytes; emu_done(it->second);
}
inline void ms_bar_wait(u64* bar, u32 parity) {
    for (long n = 0;; ++n) {
        { std::lock_guard<std::mutex> g(g_mx); if ((g_bars[bar].phase & 1u) != parity) return; }
        if (n > 20000000) { fprintf(stderr, "bar wait hang\\n"); __trap(); }
        std::this_thread::yield();
    }
}
'''
ms=ms[:i]+emu+ms[j:]
ms=re.sub(r'asm\("ld\.global\.nc.*?: "l"\(p\)\);', "v = *(const int4*)p;", ms, flags=re.S)
assert 'asm' not in ms, ms[ms.index('asm')-200:ms.index('asm')+200]
ms=ms.replace('extern __shared__ int4 ms_dyn[];','int4* ms_dyn = (int4*)g_smem;')
open(os.path.join(OUT, 'kern.h'), 'w').write(open(os.path.join(HERE, 'prelude.h')).read() + common + part + sw + ms)
