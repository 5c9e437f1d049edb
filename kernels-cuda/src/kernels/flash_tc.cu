// Flash attention for prefill on tensor cores (mma.sync m16n8k16, f16 inputs, f32 sums and
// softmax), with the semantics of attn_partial_t in attention.cu: query i sits at position
// pos0 + i and sees keys lo..pos0 + i (lo = pos0 + i - window + 1 for a sliding window, else 0);
// keys before pos0 come from the f16 ring (position j in slot j % cap), this call's keys from
// the f32 inputs; the head's sink logit joins the softmax denominator. kv_append stores the new
// rows in the ring afterwards.
//
// Block: one head, 64 query rows; 4 warps of 16 rows each. Keys go through shared memory 64 at
// a time, K and V both as [key][d] rows (16-byte stores); the mma's B fragments come from them
// by ldmatrix, plain for S = Q K^T and transposed for O += P V, four 8x8 matrices (two mma's
// worth) an instruction. The row stride HD + 8 puts the 8 rows of each 8x8 matrix in distinct
// banks. Before (2026-11-27), V was stored transposed by 16-bit stores and every fragment was
// two 32-bit loads: four times the shared-memory instructions (counted in the code), which
// bounded the kernel (ncu: L1 82 % busy, 46 % of the stalls on shared memory; bench/RESULTS.md
// session 23). S stays in registers: its accumulator layout is the A fragment layout of P.
// grid (ceil(t / 64), n_heads), block 128. HD (head_dim) is 32, 64 or 128.

// Split precision (SPLIT, the default, see prefill.rs): every 16-bit operand is x = hi + lo with
// hi = f16(x), lo = f16(x - hi) (22 of f32's 24 mantissa bits; cached keys and values are f16
// already, lo = 0), and each product takes three mma.sync: lo * hi + hi * lo + hi * hi (lo * lo,
// ~2^-22 of it, is left out), so scores, probabilities and the output stay within ~1e-6 of f32.
// Its tiles (K and V, hi and lo) are dynamic shared memory, FLASH_TCS_SMEM(HD) bytes.
#define FLASH_TCS_SMEM(HD) (2 * 2 * 64 * ((HD) + 8) * 2)

// Four 8x8 b16 matrices from shared memory (row addresses: lanes 8i..8i+7 for matrix i), plain
// or transposed: r[i] is matrix i's fragment.
template <bool TRANS>
__device__ __forceinline__ void ldsm4(u32 (&r)[4], const u16* row) {
    u32 a = (u32)__cvta_generic_to_shared(row);
    if constexpr (TRANS)
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(a));
    else
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(a));
}

__device__ __forceinline__ void split_f16(float x, float y, u32& hi, u32& lo) {
    hi = pack_f16(x, y);
    lo = pack_f16(x - h2f((u16)(hi & 0xffffu)), y - h2f((u16)(hi >> 16)));
}

template <int HD, bool SPLIT>
__device__ __forceinline__ void flash_attn_t(const float* q, const float* knew, const float* vnew,
                                             const u16* kc, const u16* vc, int t, int pos0,
                                             int n_heads, int n_kv, int cap, int window,
                                             float scale, const u8* sinks, int sink_type,
                                             float* out) {
    constexpr int KS = HD + 8;  // row stride (16-bit units) of K and V: conflict-free ldmatrix
    constexpr int NC = HD / 8;  // 8-element chunks per row
    u16 *ks_, *vs_, *ksl, *vsl;  // K and V [key][d], hi and (SPLIT) lo
    if constexpr (SPLIT) {
        extern __shared__ int4 flash_tcs_smem[];
        ks_ = (u16*)flash_tcs_smem;
        ksl = ks_ + 64 * KS;
        vs_ = ksl + 64 * KS;
        vsl = vs_ + 64 * KS;
    } else {
        __shared__ __align__(16) u16 ks_s[64 * KS];
        __shared__ __align__(16) u16 vs_s[64 * KS];
        ks_ = ks_s;
        vs_ = vs_s;
        ksl = vsl = nullptr;
    }
    int h = blockIdx.y, i0 = blockIdx.x * 64;
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, qd = lane & 3;
    int kh = h / (n_heads / n_kv);
    int rr[2] = {i0 + warp * 16 + g, i0 + warp * 16 + g + 8};

    // Q fragments for the warp's 16 rows, all of head_dim (rows past t are zeros, never stored).
    u32 qa[HD / 16][4], ql[SPLIT ? HD / 16 : 1][4];
#pragma unroll
    for (int s = 0; s < HD / 16; ++s) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
#pragma unroll
            for (int rw = 0; rw < 2; ++rw) {
                float2 v = make_float2(0.f, 0.f);
                if (rr[rw] < t)
                    v = *(const float2*)(q + ((i64)rr[rw] * n_heads + h) * HD + s * 16 + half * 8 +
                                         2 * qd);
                if constexpr (SPLIT)
                    split_f16(v.x, v.y, qa[s][half * 2 + rw], ql[s][half * 2 + rw]);
                else
                    qa[s][half * 2 + rw] = pack_f16(v.x, v.y);
            }
        }
    }
    float o[HD / 8][4];
#pragma unroll
    for (int nb = 0; nb < HD / 8; ++nb)
#pragma unroll
        for (int c = 0; c < 4; ++c) o[nb][c] = 0.f;
    float m[2] = {NEG_INF, NEG_INF}, l[2] = {0.f, 0.f};

    int last = min(i0 + 63, t - 1);
    int p_lo = pos0 + i0, p_hi = pos0 + last;
    int klo = window > 0 ? max(0, p_lo - window + 1) : 0;
    for (int k0 = klo; k0 <= p_hi; k0 += 64) {
        // Stage keys k0..k0+63 (past p_hi: zeros). Item it: key k0 + (it & 63), chunk it >> 6: a
        // quarter warp's 16-byte stores land on 8 rows, all banks once.
        for (int it = threadIdx.x; it < 64 * NC; it += 128) {
            int kr = it & 63, c = it >> 6;
            int j = k0 + kr;
            uint4 kv = make_uint4(0, 0, 0, 0), vv = make_uint4(0, 0, 0, 0);
            uint4 kl = make_uint4(0, 0, 0, 0), vl = make_uint4(0, 0, 0, 0);
            if (j <= p_hi) {
                if (j < pos0) {
                    i64 off = ((i64)(j % cap) * n_kv + kh) * HD + c * 8;
                    kv = *(const uint4*)(kc + off);
                    vv = *(const uint4*)(vc + off);
                } else {
                    i64 off = ((i64)(j - pos0) * n_kv + kh) * HD + c * 8;
                    float4 a = *(const float4*)(knew + off), b = *(const float4*)(knew + off + 4);
                    float4 va = *(const float4*)(vnew + off), vb = *(const float4*)(vnew + off + 4);
                    if constexpr (SPLIT) {
                        split_f16(a.x, a.y, kv.x, kl.x);
                        split_f16(a.z, a.w, kv.y, kl.y);
                        split_f16(b.x, b.y, kv.z, kl.z);
                        split_f16(b.z, b.w, kv.w, kl.w);
                        split_f16(va.x, va.y, vv.x, vl.x);
                        split_f16(va.z, va.w, vv.y, vl.y);
                        split_f16(vb.x, vb.y, vv.z, vl.z);
                        split_f16(vb.z, vb.w, vv.w, vl.w);
                    } else {
                        kv = make_uint4(pack_f16(a.x, a.y), pack_f16(a.z, a.w),
                                        pack_f16(b.x, b.y), pack_f16(b.z, b.w));
                        vv = make_uint4(pack_f16(va.x, va.y), pack_f16(va.z, va.w),
                                        pack_f16(vb.x, vb.y), pack_f16(vb.z, vb.w));
                    }
                }
            }
            *(uint4*)(ks_ + kr * KS + c * 8) = kv;
            *(uint4*)(vs_ + kr * KS + c * 8) = vv;
            if constexpr (SPLIT) {
                *(uint4*)(ksl + kr * KS + c * 8) = kl;
                *(uint4*)(vsl + kr * KS + c * 8) = vl;
            }
        }
        __syncthreads();

        // S = Q K^T for the warp's 16 rows x 64 keys.
        float s[8][4];
#pragma unroll
        for (int j = 0; j < 8; ++j)
#pragma unroll
            for (int c = 0; c < 4; ++c) s[j][c] = 0.f;
        // Lane l addresses row l & 7 of matrix l >> 3: keys 8 (j + (l >> 4)) + (l & 7), dims
        // 16 st + 8 ((l >> 3) & 1): the B fragments (b0, b1) of key tiles j and j + 1.
        const int lrow = (lane & 7) + 8 * (lane >> 4), lcol = 8 * ((lane >> 3) & 1);
#pragma unroll
        for (int st = 0; st < HD / 16; ++st) {
#pragma unroll
            for (int j = 0; j < 8; j += 2) {
                int o = (j * 8 + lrow) * KS + st * 16 + lcol;
                u32 b[4];
                ldsm4<false>(b, ks_ + o);
                if constexpr (SPLIT) {
                    u32 bl[4];
                    ldsm4<false>(bl, ksl + o);
                    mma16816<false>(s[j], ql[st], b);
                    mma16816<false>(s[j], qa[st], bl);
                    mma16816<false>(s[j + 1], ql[st], b + 2);
                    mma16816<false>(s[j + 1], qa[st], bl + 2);
                }
                mma16816<false>(s[j], qa[st], b);
                mma16816<false>(s[j + 1], qa[st], b + 2);
            }
        }
        // Mask (causal, window, rows past t), scale, row maxima over the 4 lanes of a row.
        float mx[2] = {NEG_INF, NEG_INF};
#pragma unroll
        for (int j = 0; j < 8; ++j) {
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                int rw = c >> 1;
                int key = k0 + j * 8 + 2 * qd + (c & 1);
                int p = pos0 + rr[rw];
                bool ok = rr[rw] < t && key <= p && (window <= 0 || key > p - window);
                s[j][c] = ok ? s[j][c] * scale : NEG_INF;
                mx[rw] = fmaxf(mx[rw], s[j][c]);
            }
        }
        float base[2];
#pragma unroll
        for (int rw = 0; rw < 2; ++rw) {
            mx[rw] = fmaxf(mx[rw], __shfl_xor_sync(0xffffffffu, mx[rw], 1));
            mx[rw] = fmaxf(mx[rw], __shfl_xor_sync(0xffffffffu, mx[rw], 2));
            float mnew = fmaxf(m[rw], mx[rw]);
            // A row with no key yet keeps everything at zero (no inf - inf).
            base[rw] = mnew == NEG_INF ? 0.f : mnew;
            float corr = __expf(m[rw] - base[rw]);
            m[rw] = mnew;
            l[rw] *= corr;
#pragma unroll
            for (int nb = 0; nb < HD / 8; ++nb) {
                o[nb][2 * rw] *= corr;
                o[nb][2 * rw + 1] *= corr;
            }
        }
#pragma unroll
        for (int j = 0; j < 8; ++j) {
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                int rw = c >> 1;
                s[j][c] = __expf(s[j][c] - base[rw]);
                l[rw] += s[j][c];
            }
        }
        // O += P V: the S accumulators of key tiles 2kk, 2kk+1 are the A fragment of P.
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) {
            u32 a[4], al[4];
            if constexpr (SPLIT) {
                split_f16(s[2 * kk][0], s[2 * kk][1], a[0], al[0]);
                split_f16(s[2 * kk][2], s[2 * kk][3], a[1], al[1]);
                split_f16(s[2 * kk + 1][0], s[2 * kk + 1][1], a[2], al[2]);
                split_f16(s[2 * kk + 1][2], s[2 * kk + 1][3], a[3], al[3]);
            } else {
                a[0] = pack_f16(s[2 * kk][0], s[2 * kk][1]);
                a[1] = pack_f16(s[2 * kk][2], s[2 * kk][3]);
                a[2] = pack_f16(s[2 * kk + 1][0], s[2 * kk + 1][1]);
                a[3] = pack_f16(s[2 * kk + 1][2], s[2 * kk + 1][3]);
            }
            // Transposed: lane l addresses key 16 kk + 8 ((l >> 3) & 1) + (l & 7), dims
            // 8 (nb + (l >> 4)): the B fragments (b0, b1) of dim tiles nb and nb + 1.
#pragma unroll
            for (int nb = 0; nb < HD / 8; nb += 2) {
                int off = (kk * 16 + lcol + (lane & 7)) * KS + (nb + (lane >> 4)) * 8;
                u32 b[4];
                ldsm4<true>(b, vs_ + off);
                if constexpr (SPLIT) {
                    u32 bl[4];
                    ldsm4<true>(bl, vsl + off);
                    mma16816<false>(o[nb], al, b);
                    mma16816<false>(o[nb], a, bl);
                    mma16816<false>(o[nb + 1], al, b + 2);
                    mma16816<false>(o[nb + 1], a, bl + 2);
                }
                mma16816<false>(o[nb], a, b);
                mma16816<false>(o[nb + 1], a, b + 2);
            }
        }
        __syncthreads();
    }
    // Row sums over the 4 lanes, the sink, normalize, store.
    float sink = wload(sinks, sink_type, 0, h);
#pragma unroll
    for (int rw = 0; rw < 2; ++rw) {
        l[rw] += __shfl_xor_sync(0xffffffffu, l[rw], 1);
        l[rw] += __shfl_xor_sync(0xffffffffu, l[rw], 2);
        if (rr[rw] >= t) continue;
        float M = fmaxf(m[rw], sink);
        float f = __expf(m[rw] - M);
        float L = l[rw] * f + __expf(sink - M);
        f /= L;
        float* orow = out + ((i64)rr[rw] * n_heads + h) * HD;
#pragma unroll
        for (int nb = 0; nb < HD / 8; ++nb)
            *(float2*)(orow + nb * 8 + 2 * qd) = make_float2(o[nb][2 * rw] * f, o[nb][2 * rw + 1] * f);
    }
}

#define FLASH_ENTRY(NAME, HD, SPLIT)                                                             \
    extern "C" __global__ void __launch_bounds__(128) NAME(                                     \
        const float* q, const float* knew, const float* vnew, const u16* kc, const u16* vc,     \
        int t, int pos0, int n_heads, int n_kv, int cap, int window, float scale,               \
        const u8* sinks, int sink_type, float* out) { GRID_DEP_ENTRY();                         \
        flash_attn_t<HD, SPLIT>(q, knew, vnew, kc, vc, t, pos0, n_heads, n_kv, cap, window,     \
                                scale, sinks, sink_type, out);                                  \
    }
FLASH_ENTRY(flash_attn_tc_d32, 32, false)
FLASH_ENTRY(flash_attn_tc_d64, 64, false)
FLASH_ENTRY(flash_attn_tc_d128, 128, false)
FLASH_ENTRY(flash_attn_tcs_d32, 32, true)
FLASH_ENTRY(flash_attn_tcs_d64, 64, true)
FLASH_ENTRY(flash_attn_tcs_d128, 128, true)
