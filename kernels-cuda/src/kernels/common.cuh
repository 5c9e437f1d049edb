// Shared definitions of every gptoss CUDA kernel. NVRTC compiles all kernel files as one
// program with this file in front, so nothing here may depend on CUDA toolkit headers.
//
// Weight layouts on the device (same bits and size as the GGUF file, re-laid at upload so
// that the hot loops can use aligned vector loads):
//   F32 / F16 / BF16 : as in the file.
//   Q8_0  (nb blocks): int8 qs[nb * 32], then f16 d[nb].
//   MXFP4 (nb blocks): u8 qs[nb * 16] (nibbles in ggml order), then u8 e[nb] (E8M0).
typedef unsigned char u8;
typedef signed char i8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef long long i64;
typedef unsigned long long u64;

#define T_F32 0
#define T_F16 1
#define T_Q8_0 8
#define T_BF16 30
#define T_MXFP4 39

#define NEG_INF __int_as_float(0xff800000)

// Programmatic dependent launch (sm_90 and newer; nothing elsewhere): LAUNCH lets the next
// kernel in the stream start launching; WAIT blocks until the previous kernel has finished and
// its writes are visible. A kernel launched with the programmatic-serialization attribute must
// WAIT before it reads anything an earlier kernel wrote and before it writes anything.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define GRID_DEP_WAIT() asm volatile("griddepcontrol.wait;" ::: "memory")
#define GRID_DEP_LAUNCH() asm volatile("griddepcontrol.launch_dependents;" ::: "memory")
#else
#define GRID_DEP_WAIT()
#define GRID_DEP_LAUNCH()
#endif
// The first statement of every kernel of this program, so that the backend may launch any of
// them with the programmatic-serialization attribute: the next kernel may start launching at
// once, this one waits for the previous one before touching memory.
#define GRID_DEP_ENTRY()    \
    do {                    \
        GRID_DEP_LAUNCH();  \
        GRID_DEP_WAIT();    \
    } while (0)

__device__ __forceinline__ float h2f(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}
__device__ __forceinline__ u16 f2h(float f) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}
__device__ __forceinline__ float bf2f(u16 b) { return __uint_as_float(((u32)b) << 16); }

// 2^(e-127), with e = 0 giving 2^-127 as ggml does (a denormal, not zero).
__device__ __forceinline__ float e8m0_to_f32(u32 e) {
    return e == 0 ? __uint_as_float(0x00400000u) : __uint_as_float(e << 23);
}

// E2M1 code -> value, exact: the code's bits placed into an f16 (sign, 2-bit exponent, 1-bit
// mantissa line up with f16's fields after a shift) then scaled by 2^14 to undo the bias gap.
__device__ __forceinline__ float e2m1_to_f32(u32 nib) {
    u16 bits = (u16)(((nib & 8u) << 12) | ((nib & 7u) << 9));
    return h2f(bits) * 16384.0f;
}

// ggml's doubled E2M1 table as int8, packed four to a word (for byte_perm lookups).
#define KV_0 0x03020100u
#define KV_1 0x0c080604u
#define KV_2 0xfdfeff00u
#define KV_3 0xf4f8fafcu

// Eight E2M1 codes (one 32-bit word of an MXFP4 block: bytes j..j+3) -> int8 table values:
// .x holds elements j..j+3 (low nibbles), .y elements j+16..j+19 (high nibbles).
// byte_perm looks four codes up at once in the 8-byte halves of the table; bit 3 of each code
// (the sign) then picks the negative half.
__device__ __forceinline__ int2 mxfp4_lut8(u32 q) {
    u32 t[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        u32 s = (q >> (16 * i)) & 0x7777u;
        u32 lo = __byte_perm(KV_0, KV_1, s);
        u32 hi = __byte_perm(KV_2, KV_3, s);
        u32 pick = (0x3210u | (((q >> (16 * i)) & 0x8888u) >> 1));
        t[i] = __byte_perm(lo, hi, pick);
    }
    // t[0] = (j lo, j hi, j+1 lo, j+1 hi), t[1] = (j+2 lo, j+2 hi, j+3 lo, j+3 hi)
    return make_int2((int)__byte_perm(t[0], t[1], 0x6420), (int)__byte_perm(t[0], t[1], 0x7531));
}

// The same table offset by +128 (unsigned bytes), for the exponent trick below: a byte b placed
// under the exponent of 2^23 gives the float 2^23 + b exactly, so a decoded weight costs one
// byte_perm and one add instead of an int->float conversion (a quarter-rate instruction that
// bounds a MXFP4 matrix-vector product well below memory speed on Hopper).
#define KP_0 0x83828180u
#define KP_1 0x8c888684u
#define KN_0 0x7d7e7f80u
#define KN_1 0x74787a7cu
#define MAGIC_BITS 0x4B000000u
// 2^23 + 128: subtracting it from a magic float leaves the signed table value.
#define MAGIC_OFF 8388736.0f

// Eight E2M1 codes (one 32-bit word: bytes j..j+3 of an MXFP4 block) -> doubled table values
// + 128, as bytes: t[0] = (j lo, j hi, j+1 lo, j+1 hi), t[1] = (j+2 lo, j+2 hi, j+3 lo, j+3 hi)
// (lo nibble = element j, hi = element j+16). One lookup in each half-table, the sign picks.
__device__ __forceinline__ void mxfp4_lut8_u(u32 q, u32& t0, u32& t1) {
    u32 s0 = q & 0x7777u, s1 = (q >> 16) & 0x7777u;
    u32 p0 = 0x3210u | ((q & 0x8888u) >> 1);
    u32 p1 = 0x3210u | ((q >> 17) & 0x4444u);
    t0 = __byte_perm(__byte_perm(KP_0, KP_1, s0), __byte_perm(KN_0, KN_1, s0), p0);
    t1 = __byte_perm(__byte_perm(KP_0, KP_1, s1), __byte_perm(KN_0, KN_1, s1), p1);
}

// Byte n of `t` (an unsigned byte b) as the float b - 128, exactly, without a conversion.
template <int N>
__device__ __forceinline__ float ubyte_val(u32 t) {
    return __int_as_float(__byte_perm(t, MAGIC_BITS, 0x7440u | N)) - MAGIC_OFF;
}

// One element of a weight at flat index `i` (row-major in ggml order), any supported type.
// `nb` is the tensor's block count (quantized types), needed to find the scale region.
__device__ __forceinline__ float wload(const u8* w, int type, i64 nb, i64 i) {
    switch (type) {
    case T_F32:
        return ((const float*)w)[i];
    case T_F16:
        return h2f(((const u16*)w)[i]);
    case T_BF16:
        return bf2f(((const u16*)w)[i]);
    case T_Q8_0: {
        i64 b = i >> 5;
        const u16* d = (const u16*)(w + nb * 32);
        return (float)((const i8*)w)[i] * h2f(d[b]);
    }
    case T_MXFP4: {
        i64 b = i >> 5;
        int j = (int)(i & 31);
        u32 byte = w[b * 16 + (j & 15)];
        u32 nib = j < 16 ? (byte & 15u) : (byte >> 4);
        return e2m1_to_f32(nib) * e8m0_to_f32(w[nb * 16 + b]);
    }
    default:
        return __int_as_float(0x7fc00000);
    }
}

// One NEOX RoPE rotation pair (x1 at i, x2 at i + half) by cos/sin (cf, sf), rounded as the
// reference rounds (no fused multiply-add): the one formula of rope, rope_qk and the fused q/k/v
// kernels, so that they agree bit for bit.
__device__ __forceinline__ void rope_rotate(float x1, float x2, float cf, float sf, float& y1,
                                            float& y2) {
    y1 = __fsub_rn(__fmul_rn(x1, cf), __fmul_rn(x2, sf));
    y2 = __fadd_rn(__fmul_rn(x2, cf), __fmul_rn(x1, sf));
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
