//! Tiled MXFP4 x Q8_0 and Q8_0 x Q8_0 kernels (AVX2, AVX-512 VNNI) for [`super::vec_dot_tile`].
//!
//! Both sides are first laid out once per call as groups of 8 blocks ("slots") of 32 bytes: the
//! weights unpacked to unsigned bytes (MXFP4: doubled E2M1 value + 12; Q8_0 with VNNI: value +
//! 128), the activations copied with their per-block code sums. Each group is interleaved by
//! 4-byte words (step s = bytes 4s..4s+4 of slot 0, of slot 1, ..., of slot 7), so one
//! `vpdpbusd` (or `pmaddubsw` + `pmaddwd`) per step adds four products of each block to that
//! block's own i32 lane, and after 8 steps the lanes hold the 8 block sums with no horizontal
//! adds. A block's exact integer sum is `dot(w_unsigned, a) - bias * sum(a)`. Slots are placed in
//! the lane order of the single-pair kernels (block b of a group in lane `MXFP4_LANE[b]` for
//! MXFP4, lane b for Q8_0), so after the same float operations (scale product, times the sum,
//! added to that lane, [`reduce8`]) the results are the single-pair kernels' bit for bit.
//! A register tile of up to 2 weight rows x 4 activation rows shares every load.

use std::arch::x86_64::*;
use std::cell::RefCell;

use super::Dispatch;
use super::scalar::{MXFP4_LANE, mxfp4_q8_0_block, q8_0_q8_0_block, reduce8};
use crate::GgmlType;
use crate::mxfp4::{E2M1_DOUBLED_I8, E8M0_HALF};
use crate::util::rd_u16;

/// Which tiled kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// MXFP4 x Q8_0, `vpdpbusd`.
    Mxfp4Vnni,
    /// MXFP4 x Q8_0, `pmaddubsw` (|pair sum| <= 2 * 24 * 128: no saturation).
    Mxfp4Avx2,
    /// Q8_0 x Q8_0, weights + 128 and `vpdpbusd` (no saturation in the non-`s` form).
    Q8Vnni,
    /// Q8_0 x Q8_0, the activation's sign moved onto the weight and `pmaddubsw`; exact unless a
    /// weight byte is -128, so such rows go through the scalar kernel.
    Q8Avx2,
}

impl Kind {
    /// The kernel for this pair of types on this dispatch, if there is one.
    pub(crate) fn pick(d: Dispatch, wty: GgmlType, aty: GgmlType) -> Option<Kind> {
        match (wty, aty, d) {
            (GgmlType::MXFP4, GgmlType::Q8_0, Dispatch::Avx512) => Some(Kind::Mxfp4Vnni),
            (GgmlType::MXFP4, GgmlType::Q8_0, Dispatch::Avx2) => Some(Kind::Mxfp4Avx2),
            (GgmlType::Q8_0, GgmlType::Q8_0, Dispatch::Avx512) => Some(Kind::Q8Vnni),
            (GgmlType::Q8_0, GgmlType::Q8_0, Dispatch::Avx2) => Some(Kind::Q8Avx2),
            _ => None,
        }
    }

    fn is_mxfp4(self) -> bool {
        matches!(self, Kind::Mxfp4Vnni | Kind::Mxfp4Avx2)
    }

    /// Slot of block `b` inside its group of 8.
    fn lane(self, b: usize) -> usize {
        if self.is_mxfp4() {
            MXFP4_LANE[b % 8]
        } else {
            b % 8
        }
    }

    /// What the unsigned weights add to each product: `bias * a`.
    fn bias(self) -> i32 {
        match self {
            Kind::Mxfp4Vnni | Kind::Mxfp4Avx2 => 12,
            Kind::Q8Vnni => 128,
            Kind::Q8Avx2 => 0,
        }
    }

    /// Bytes of one weight block in the file.
    fn wblock(self) -> usize {
        if self.is_mxfp4() { 17 } else { 34 }
    }

    /// The float term of one block pair, as the single-pair kernels compute it.
    fn block(self, w: &[u8], a: &[u8]) -> f32 {
        if self.is_mxfp4() {
            mxfp4_q8_0_block(w, a)
        } else {
            q8_0_q8_0_block(w, a)
        }
    }
}

/// Rows unpacked per block of rows: 4 rows of 2880 values stay in L1 beside the activations.
const ROW_BLOCK: usize = 4;

#[derive(Default)]
struct Scratch {
    /// Activation slots, `[t][slot][32]`.
    aq: Vec<u8>,
    /// Activation scales per slot.
    da: Vec<f32>,
    /// `bias * sum(a)` per slot.
    corr: Vec<i32>,
    /// Weight slots of one row block, `[r][slot][32]`.
    wq: Vec<u8>,
    /// Weight scales per slot.
    dw: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Loads 32 bytes.
#[inline]
#[target_feature(enable = "avx")]
fn load256(s: &[u8]) -> __m256i {
    let s = &s[..32];
    // SAFETY: `s` is exactly 32 readable bytes; the load is unaligned.
    unsafe { _mm256_loadu_si256(s.as_ptr().cast()) }
}

/// Stores 32 bytes.
#[inline]
#[target_feature(enable = "avx")]
fn store256(d: &mut [u8], v: __m256i) {
    let d = &mut d[..32];
    // SAFETY: `d` is exactly 32 writable bytes; the store is unaligned.
    unsafe { _mm256_storeu_si256(d.as_mut_ptr().cast(), v) }
}

#[inline]
#[target_feature(enable = "avx")]
fn loadps(s: &[f32]) -> __m256 {
    let s = &s[..8];
    // SAFETY: `s` is exactly 8 readable f32; the load is unaligned.
    unsafe { _mm256_loadu_ps(s.as_ptr()) }
}

#[inline]
#[target_feature(enable = "avx")]
fn loadi32(s: &[i32]) -> __m256i {
    let s = &s[..8];
    // SAFETY: `s` is exactly 8 readable i32; the load is unaligned.
    unsafe { _mm256_loadu_si256(s.as_ptr().cast()) }
}

/// Block of the group that slot `l` holds (the inverse of [`Kind::lane`]).
fn block_of(kind: Kind, l: usize) -> usize {
    (0..8).find(|&b| kind.lane(b) == l).unwrap_or(l)
}

/// 8 x 8 transpose of 4-byte words: result `s` holds word `s` of every input, input 0 first.
/// With one slot per input, the results are the interleaved steps: step `s`
/// holds bytes `4s..4s + 4` of slot 0, then of slot 1, ..., slot 7, so that one `vpdpbusd` per
/// step adds each slot's next four products to its own i32 lane, and a group's 8 block sums come
/// out in lane order with no horizontal adds.
#[inline]
#[target_feature(enable = "avx2")]
fn transpose8(r: [__m256i; 8]) -> [__m256i; 8] {
    let t0 = _mm256_unpacklo_epi32(r[0], r[1]);
    let t1 = _mm256_unpackhi_epi32(r[0], r[1]);
    let t2 = _mm256_unpacklo_epi32(r[2], r[3]);
    let t3 = _mm256_unpackhi_epi32(r[2], r[3]);
    let t4 = _mm256_unpacklo_epi32(r[4], r[5]);
    let t5 = _mm256_unpackhi_epi32(r[4], r[5]);
    let t6 = _mm256_unpacklo_epi32(r[6], r[7]);
    let t7 = _mm256_unpackhi_epi32(r[6], r[7]);
    let u0 = _mm256_unpacklo_epi64(t0, t2);
    let u1 = _mm256_unpackhi_epi64(t0, t2);
    let u2 = _mm256_unpacklo_epi64(t1, t3);
    let u3 = _mm256_unpackhi_epi64(t1, t3);
    let u4 = _mm256_unpacklo_epi64(t4, t6);
    let u5 = _mm256_unpackhi_epi64(t4, t6);
    let u6 = _mm256_unpacklo_epi64(t5, t7);
    let u7 = _mm256_unpackhi_epi64(t5, t7);
    [
        _mm256_permute2x128_si256(u0, u4, 0x20),
        _mm256_permute2x128_si256(u1, u5, 0x20),
        _mm256_permute2x128_si256(u2, u6, 0x20),
        _mm256_permute2x128_si256(u3, u7, 0x20),
        _mm256_permute2x128_si256(u0, u4, 0x31),
        _mm256_permute2x128_si256(u1, u5, 0x31),
        _mm256_permute2x128_si256(u2, u6, 0x31),
        _mm256_permute2x128_si256(u3, u7, 0x31),
    ]
}

/// Stores the 8 interleaved steps of a group.
#[inline]
#[target_feature(enable = "avx")]
fn store_steps(dst: &mut [u8], steps: [__m256i; 8]) {
    for (k, v) in steps.into_iter().enumerate() {
        store256(&mut dst[32 * k..32 * k + 32], v);
    }
}

/// Runs `f` on every group of 8 blocks of a row (`bsz`-byte blocks, `nb` of them); the last,
/// partial group is first copied into a zeroed 8-block buffer. Returns how many blocks of the
/// last group were real (8 when `nb` is a multiple of 8).
#[inline(always)]
fn for_groups(row: &[u8], bsz: usize, nb: usize, mut f: impl FnMut(usize, &[u8])) -> usize {
    let full = nb / 8;
    for g in 0..full {
        f(g, &row[g * 8 * bsz..(g + 1) * 8 * bsz]);
    }
    let rest = nb - full * 8;
    if rest > 0 {
        let mut tmp = [0u8; 8 * 34];
        tmp[..rest * bsz].copy_from_slice(&row[full * 8 * bsz..nb * bsz]);
        f(full, &tmp[..8 * bsz]);
        rest
    } else {
        8
    }
}

/// Lays out the activation codes of `a` (a Q8_0 row of `nb` blocks) as interleaved groups in
/// `kind`'s lane order, with per-slot scales and `bias * sum(codes)` corrections. Slots past
/// `nb` get zero codes and a zero scale: their terms are `0 * 0 = +0.0`, and adding +0.0
/// leaves every lane as it is (a lane starts at +0.0 and only has terms added, so it is never
/// -0.0), so the results equal the single-pair kernels', which have no such blocks.
#[target_feature(enable = "avx2,f16c")]
fn prep_acts(kind: Kind, a: &[u8], nb: usize, aq: &mut [u8], da: &mut [f32], corr: &mut [i32]) {
    let ones8 = _mm256_set1_epi8(1);
    let ones16 = _mm256_set1_epi16(1);
    let bias = kind.bias();
    let inv: [usize; 8] = std::array::from_fn(|l| block_of(kind, l));
    for_groups(a, 34, nb, |g, ag| {
        let mut r = [_mm256_setzero_si256(); 8];
        for (l, rl) in r.iter_mut().enumerate() {
            let ab = &ag[34 * inv[l]..34 * inv[l] + 34];
            *rl = load256(&ab[2..34]);
            da[8 * g + l] = half::f16::from_bits(rd_u16(ab, 0)).to_f32();
            // Sum of the 32 signed codes: 1 * a in pairs (|sum| <= 256), then in fours, exact.
            let p = _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, *rl), ones16);
            let q = _mm_add_epi32(_mm256_castsi256_si128(p), _mm256_extracti128_si256(p, 1));
            let q = _mm_add_epi32(q, _mm_shuffle_epi32(q, 0b01_00_11_10));
            let q = _mm_add_epi32(q, _mm_shuffle_epi32(q, 0b10_11_00_01));
            corr[8 * g + l] = bias * _mm_cvtsi128_si32(q);
        }
        store_steps(&mut aq[256 * g..256 * g + 256], transpose8(r));
    });
}

/// Unpacks one weight row into interleaved groups of unsigned bytes with per-slot scales (zero
/// past `nb`, see [`prep_acts`]). Returns false if the row cannot go through `kind` (a -128
/// weight for [`Kind::Q8Avx2`]).
#[target_feature(enable = "avx2,f16c")]
fn prep_row(kind: Kind, w: &[u8], nb: usize, wq: &mut [u8], dw: &mut [f32]) -> bool {
    let flip = _mm256_set1_epi8(-128);
    let mut bad = _mm256_setzero_si256();
    let real = match kind {
        Kind::Mxfp4Vnni | Kind::Mxfp4Avx2 => {
            let table = E2M1_DOUBLED_I8.map(|v| (v as i32 + 12) as u8);
            // SAFETY: `table` is 16 readable bytes; the load is unaligned.
            let table =
                _mm256_broadcastsi128_si256(unsafe { _mm_loadu_si128(table.as_ptr().cast()) });
            let m4 = _mm256_set1_epi8(0x0f);
            for_groups(w, 17, nb, |g, wg| {
                // Slot l holds block LANE^-1[l]: slots l and l + 4 are blocks 2l and 2l + 1,
                // one per 128-bit half; a 4 x 4 word transpose per half then gives word s of
                // every slot's 16 code bytes, whose low nibbles are step s and high nibbles
                // step s + 4 of the unpacked slots.
                let y: [__m256i; 4] = std::array::from_fn(|l| {
                    let (lo, hi) = (&wg[34 * l + 1..34 * l + 17], &wg[34 * l + 18..34 * l + 34]);
                    // SAFETY: both are exactly 16 readable bytes; the loads are unaligned.
                    unsafe { _mm256_loadu2_m128i(hi.as_ptr().cast(), lo.as_ptr().cast()) }
                });
                let t0 = _mm256_unpacklo_epi32(y[0], y[1]);
                let t1 = _mm256_unpackhi_epi32(y[0], y[1]);
                let t2 = _mm256_unpacklo_epi32(y[2], y[3]);
                let t3 = _mm256_unpackhi_epi32(y[2], y[3]);
                let z = [
                    _mm256_unpacklo_epi64(t0, t2),
                    _mm256_unpackhi_epi64(t0, t2),
                    _mm256_unpacklo_epi64(t1, t3),
                    _mm256_unpackhi_epi64(t1, t3),
                ];
                let dst = &mut wq[256 * g..256 * g + 256];
                for (s, zs) in z.into_iter().enumerate() {
                    let lo = _mm256_shuffle_epi8(table, _mm256_and_si256(zs, m4));
                    let hi =
                        _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(zs, 4), m4));
                    store256(&mut dst[32 * s..32 * s + 32], lo);
                    store256(&mut dst[32 * (s + 4)..32 * (s + 4) + 32], hi);
                }
                for (b, &lane) in MXFP4_LANE.iter().enumerate() {
                    dw[8 * g + lane] = E8M0_HALF[wg[17 * b] as usize];
                }
            })
        }
        Kind::Q8Vnni | Kind::Q8Avx2 => for_groups(w, 34, nb, |g, wg| {
            let mut r = [_mm256_setzero_si256(); 8];
            for (l, rl) in r.iter_mut().enumerate() {
                let v = load256(&wg[34 * l + 2..34 * l + 34]);
                *rl = if kind == Kind::Q8Vnni {
                    _mm256_xor_si256(v, flip)
                } else {
                    bad = _mm256_or_si256(bad, _mm256_cmpeq_epi8(v, flip));
                    v
                };
                dw[8 * g + l] = half::f16::from_bits(rd_u16(wg, 34 * l)).to_f32();
            }
            store_steps(&mut wq[256 * g..256 * g + 256], transpose8(r));
        }),
    };
    // The padded slots of the last group: zero scale (their codes meet zero activations).
    let last = nb.div_ceil(8) - 1;
    for b in real..8 {
        dw[8 * last + kind.lane(b)] = 0.0;
    }
    _mm256_testz_si256(bad, bad) == 1
}

/// The body of the R x T register tile, shared by the instruction sets; `$acc` adds the products
/// of an interleaved weight step `$w` and activation step `$a` to the i32 lanes `$s` (lane l:
/// slot l's block sum so far).
macro_rules! tile_kernel {
    ($name:ident, $feat:literal, |$s:ident, $w:ident, $a:ident| $acc:expr) => {
        #[target_feature(enable = $feat)]
        fn $name<const R: usize, const T: usize>(
            wq: [&[u8]; R],
            dw: [&[f32]; R],
            aq: [&[u8]; T],
            da: [&[f32]; T],
            corr: [&[i32]; T],
            groups: usize,
        ) -> [[[f32; 8]; T]; R] {
            let zero = _mm256_setzero_si256();
            let mut acc = [[_mm256_setzero_ps(); T]; R];
            for g in 0..groups {
                let o = g * 256;
                let mut sums = [[zero; T]; R];
                for step in 0..8 {
                    let l = o + step * 32;
                    let mut av = [zero; T];
                    for t in 0..T {
                        av[t] = load256(&aq[t][l..l + 32]);
                    }
                    for r in 0..R {
                        let $w = load256(&wq[r][l..l + 32]);
                        for t in 0..T {
                            let ($s, $a) = (sums[r][t], av[t]);
                            sums[r][t] = $acc;
                        }
                    }
                }
                let so = g * 8;
                for t in 0..T {
                    let dat = loadps(&da[t][so..so + 8]);
                    let ct = loadi32(&corr[t][so..so + 8]);
                    for r in 0..R {
                        let exact = _mm256_sub_epi32(sums[r][t], ct);
                        let d = _mm256_mul_ps(loadps(&dw[r][so..so + 8]), dat);
                        let term = _mm256_mul_ps(d, _mm256_cvtepi32_ps(exact));
                        acc[r][t] = _mm256_add_ps(acc[r][t], term);
                    }
                }
            }
            let mut out = [[[0.0f32; 8]; T]; R];
            for r in 0..R {
                for t in 0..T {
                    // SAFETY: `out[r][t]` is 8 writable f32; the store is unaligned.
                    unsafe { _mm256_storeu_ps(out[r][t].as_mut_ptr(), acc[r][t]) };
                }
            }
            out
        }
    };
}

tile_kernel!(
    tile_vnni,
    "avx2,f16c,avx512f,avx512bw,avx512vl,avx512vnni",
    |s, w, a| _mm256_dpbusd_epi32(s, w, a)
);
tile_kernel!(tile_avx2_unsigned, "avx2,f16c", |s, w, a| _mm256_add_epi32(
    s,
    _mm256_madd_epi16(_mm256_maddubs_epi16(w, a), _mm256_set1_epi16(1))
));
tile_kernel!(tile_avx2_signed, "avx2,f16c", |s, w, a| _mm256_add_epi32(
    s,
    _mm256_madd_epi16(
        _mm256_maddubs_epi16(_mm256_abs_epi8(a), _mm256_sign_epi8(w, a)),
        _mm256_set1_epi16(1)
    )
));

/// One R x T tile through `kind`'s kernel.
#[allow(clippy::too_many_arguments)]
fn tile<const R: usize, const T: usize>(
    kind: Kind,
    wq: [&[u8]; R],
    dw: [&[f32]; R],
    aq: [&[u8]; T],
    da: [&[f32]; T],
    corr: [&[i32]; T],
    groups: usize,
) -> [[[f32; 8]; T]; R] {
    match kind {
        // SAFETY: `Kind::pick` chose these kinds only for a dispatch whose CPU features
        // (`Dispatch::is_available`) include every feature the kernel is compiled for.
        Kind::Mxfp4Vnni | Kind::Q8Vnni => unsafe { tile_vnni(wq, dw, aq, da, corr, groups) },
        // SAFETY: as above (AVX2 + F16C).
        Kind::Mxfp4Avx2 => unsafe { tile_avx2_unsigned(wq, dw, aq, da, corr, groups) },
        // SAFETY: as above (AVX2 + F16C).
        Kind::Q8Avx2 => unsafe { tile_avx2_signed(wq, dw, aq, da, corr, groups) },
    }
}

/// `out[r * acts.len() + t]` = dot of weight row r (`row_bytes` each, `nb` blocks, `nb >= 8`)
/// with `acts[t]`, through `kind` (whose features the caller checked).
pub(crate) fn run(
    kind: Kind,
    w: &[u8],
    n_rows: usize,
    row_bytes: usize,
    acts: &[&[u8]],
    nb: usize,
    out: &mut [f32],
) {
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        run_in(&mut s, kind, w, n_rows, row_bytes, acts, nb, out)
    })
}

#[allow(clippy::too_many_arguments)]
fn run_in(
    s: &mut Scratch,
    kind: Kind,
    w: &[u8],
    n_rows: usize,
    row_bytes: usize,
    acts: &[&[u8]],
    nb: usize,
    out: &mut [f32],
) {
    let nt = acts.len();
    let groups = nb.div_ceil(8);
    let slots = groups * 8;
    let Scratch {
        aq,
        da,
        corr,
        wq,
        dw,
    } = s;
    aq.resize(nt * slots * 32, 0);
    da.resize(nt * slots, 0.0);
    corr.resize(nt * slots, 0);
    wq.resize(ROW_BLOCK * slots * 32, 0);
    dw.resize(ROW_BLOCK * slots, 0.0);
    for (t, a) in acts.iter().enumerate() {
        // SAFETY: `Kind::pick` implies AVX2 + F16C (checked by `Dispatch::is_available`).
        unsafe {
            prep_acts(
                kind,
                a,
                nb,
                &mut aq[t * slots * 32..(t + 1) * slots * 32],
                &mut da[t * slots..(t + 1) * slots],
                &mut corr[t * slots..(t + 1) * slots],
            )
        };
    }
    let (aq, da, corr) = (&*aq, &*da, &*corr);
    let a_of = |t: usize| {
        (
            &aq[t * slots * 32..(t + 1) * slots * 32],
            &da[t * slots..(t + 1) * slots],
            &corr[t * slots..(t + 1) * slots],
        )
    };
    let wb = kind.wblock();
    let single = |wrow: &[u8], a: &[u8]| -> f32 {
        let mut lanes = [0.0f32; 8];
        for b in 0..nb {
            lanes[kind.lane(b)] += kind.block(w_block(wrow, wb, b), &a[b * 34..b * 34 + 34]);
        }
        reduce8(lanes)
    };
    let mut r0 = 0;
    while r0 < n_rows {
        let nr = ROW_BLOCK.min(n_rows - r0);
        // Ask for the next row block now, so that its first touch (often DRAM: prefill reads
        // each expert once) overlaps this block's tiles instead of stalling the unpacking.
        let next =
            &w[((r0 + nr) * row_bytes).min(w.len())..((r0 + 2 * nr) * row_bytes).min(w.len())];
        for line in next.chunks(64) {
            // SAFETY: a prefetch of an address inside `w`; it never faults and has no effect on
            // results.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast()) };
        }
        let mut ok = [true; ROW_BLOCK];
        for (r, okr) in ok.iter_mut().enumerate().take(nr) {
            let wrow = &w[(r0 + r) * row_bytes..(r0 + r + 1) * row_bytes];
            // SAFETY: `Kind::pick` implies AVX2 + F16C (checked by `Dispatch::is_available`).
            *okr = unsafe {
                prep_row(
                    kind,
                    wrow,
                    nb,
                    &mut wq[r * slots * 32..(r + 1) * slots * 32],
                    &mut dw[r * slots..(r + 1) * slots],
                )
            };
        }
        let w_of = |r: usize| {
            (
                &wq[r * slots * 32..(r + 1) * slots * 32],
                &dw[r * slots..(r + 1) * slots],
                &w[(r0 + r) * row_bytes..(r0 + r + 1) * row_bytes],
            )
        };
        // Activation rows per tile: 2 x 4 tiles keep 8 independent `vpdpbusd` chains in flight
        // (and 21 of the 32 vector registers AVX-512 gives); AVX2 has 16 registers.
        let tmax = if matches!(kind, Kind::Mxfp4Vnni | Kind::Q8Vnni) {
            4
        } else {
            2
        };
        let mut t0 = 0;
        while t0 < nt {
            let tn = tmax.min(nt - t0);
            let mut r = 0;
            while r < nr {
                let pair = r + 1 < nr && ok[r] && ok[r + 1];
                let rn = if pair { 2 } else { 1 };
                if !ok[r] {
                    let (_, _, wrow) = w_of(r);
                    for t in t0..t0 + tn {
                        out[(r0 + r) * nt + t] = single(wrow, acts[t]);
                    }
                    r += 1;
                    continue;
                }
                // One tile of rn rows x tn activation rows; every output is its 8 lanes reduced.
                macro_rules! arm {
                    ($r:literal, $t:literal) => {{
                        let ws: [_; $r] = std::array::from_fn(|i| w_of(r + i));
                        let xs: [_; $t] = std::array::from_fn(|j| a_of(t0 + j));
                        let o = tile::<$r, $t>(
                            kind,
                            ws.map(|x| x.0),
                            ws.map(|x| x.1),
                            xs.map(|x| x.0),
                            xs.map(|x| x.1),
                            xs.map(|x| x.2),
                            groups,
                        );
                        for (i, oi) in o.iter().enumerate() {
                            for (j, lanes) in oi.iter().enumerate() {
                                out[(r0 + r + i) * nt + t0 + j] = reduce8(*lanes);
                            }
                        }
                    }};
                }
                match (rn, tn) {
                    (2, 4) => arm!(2, 4),
                    (2, 3) => arm!(2, 3),
                    (2, 2) => arm!(2, 2),
                    (2, _) => arm!(2, 1),
                    (_, 4) => arm!(1, 4),
                    (_, 3) => arm!(1, 3),
                    (_, 2) => arm!(1, 2),
                    _ => arm!(1, 1),
                }
                r += rn;
            }
            t0 += tn;
        }
        r0 += nr;
    }
}

/// Block `b` of a weight row of `wb`-byte blocks.
#[inline(always)]
fn w_block(wrow: &[u8], wb: usize, b: usize) -> &[u8] {
    &wrow[b * wb..(b + 1) * wb]
}
