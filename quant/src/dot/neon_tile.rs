//! Tiled MXFP4 x Q8_0 and Q8_0 x Q8_0 NEON kernels for [`super::vec_dot_tile`] (aarch64).
//!
//! Both sides are first laid out once per call as groups of 8 blocks ("slots") of 32 signed
//! bytes: the weights unpacked (MXFP4: doubled E2M1 values; Q8_0: the codes) with an f32 scale
//! per slot, the activations' codes with their scales. Within a group, slot l holds block
//! `block_of(l)`, the block the single-pair kernels add into lane l (for MXFP4 the even blocks
//! go in lanes 0..4 and the odd ones in 4..8, for Q8_0 block b in lane b), so that slots 0..4
//! and 4..8 each become one `float32x4_t` of terms `(d_w * d_a) * sum`, added to the lanes in
//! block order exactly as the single-pair kernels add them: the results are theirs bit for bit.
//! The last, partial group is padded with zero codes and zero scales: a padded term is
//! `(0 * 0) * 0 = +0.0`, and adding +0.0 leaves a lane unchanged (a lane starts at +0.0 and only
//! gains terms, so it is never -0.0). A register tile of 2 weight rows x 2 activation rows shares
//! every load.

use std::arch::aarch64::*;
use std::cell::RefCell;

use super::Dispatch;
use super::neon::{sdot, smull_dot};
use super::scalar::{MXFP4_LANE, reduce8};
use crate::GgmlType;
use crate::mxfp4::{E2M1_DOUBLED_I8, E8M0_HALF};
use crate::util::rd_f16;

/// Which tiled kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Kind {
    /// MXFP4 weights (else Q8_0).
    mxfp4: bool,
    /// `sdot` (else widening multiplies).
    dotprod: bool,
}

impl Kind {
    /// The kernel for this pair of types on this dispatch, if there is one.
    pub(crate) fn pick(d: Dispatch, wty: GgmlType, aty: GgmlType) -> Option<Kind> {
        let dotprod = match d {
            Dispatch::Neon => false,
            Dispatch::NeonDotprod => true,
            _ => return None,
        };
        match (wty, aty) {
            (GgmlType::MXFP4, GgmlType::Q8_0) => Some(Kind {
                mxfp4: true,
                dotprod,
            }),
            (GgmlType::Q8_0, GgmlType::Q8_0) => Some(Kind {
                mxfp4: false,
                dotprod,
            }),
            _ => None,
        }
    }

    /// Block of a group that slot `l` holds: the block the single-pair kernel adds into lane l.
    fn block_of(self, l: usize) -> usize {
        if self.mxfp4 {
            MXFP4_LANE.iter().position(|&x| x == l).unwrap_or(l)
        } else {
            l
        }
    }

    /// Bytes of one weight block in the file.
    fn wblock(self) -> usize {
        if self.mxfp4 { 17 } else { 34 }
    }
}

#[derive(Default)]
struct Scratch {
    /// Activation slots, `[t][slot][32]`.
    aq: Vec<u8>,
    /// Activation scales per slot.
    da: Vec<f32>,
    /// Weight slots of one row pair, `[r][slot][32]`.
    wq: Vec<u8>,
    /// Weight scales per slot.
    dw: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Lays out one row (`nb` blocks of `bsz` bytes, `scale` and `codes` reading a block) as slots:
/// `q` gets 32 code bytes per slot, `d` a scale per slot; padded slots are zero.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "neon")]
fn layout(
    kind: Kind,
    row: &[u8],
    bsz: usize,
    nb: usize,
    q: &mut [u8],
    d: &mut [f32],
    mut codes: impl FnMut(&[u8], &mut [u8]),
    scale: impl Fn(&[u8]) -> f32,
) {
    let groups = nb.div_ceil(8);
    for g in 0..groups {
        for l in 0..8 {
            let s = 8 * g + l;
            let b = 8 * g + kind.block_of(l);
            let dst = &mut q[32 * s..32 * s + 32];
            if b < nb {
                let blk = &row[b * bsz..(b + 1) * bsz];
                codes(blk, dst);
                d[s] = scale(blk);
            } else {
                dst.fill(0);
                d[s] = 0.0;
            }
        }
    }
}

/// A Q8_0 block's codes, as they are.
#[target_feature(enable = "neon")]
fn q8_codes(blk: &[u8], dst: &mut [u8]) {
    dst.copy_from_slice(&blk[2..34]);
}

/// An MXFP4 block's codes as doubled E2M1 values (element j from the low nibble of byte j,
/// j + 16 from the high one).
#[target_feature(enable = "neon")]
fn mxfp4_codes(blk: &[u8], dst: &mut [u8]) {
    let table = E2M1_DOUBLED_I8.map(|v| v as u8);
    // SAFETY: `table` and the code bytes are 16 readable bytes each.
    let (t, q) = unsafe { (vld1q_u8(table.as_ptr()), vld1q_u8(blk[1..17].as_ptr())) };
    let lo = vqtbl1q_u8(t, vandq_u8(q, vdupq_n_u8(0x0f)));
    let hi = vqtbl1q_u8(t, vshrq_n_u8::<4>(q));
    let dst = &mut dst[..32];
    // SAFETY: `dst` is exactly 32 writable bytes; each store writes 16 of them.
    unsafe {
        vst1q_u8(dst.as_mut_ptr(), lo);
        vst1q_u8(dst.as_mut_ptr().add(16), hi);
    }
}

/// Loads 16 bytes as signed lanes.
#[inline]
#[target_feature(enable = "neon")]
fn ld(s: &[u8]) -> int8x16_t {
    let s = &s[..16];
    // SAFETY: `s` is exactly 16 readable bytes; NEON loads have no alignment requirement.
    unsafe { vld1q_s8(s.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "neon")]
fn ldf(s: &[f32]) -> float32x4_t {
    let s = &s[..4];
    // SAFETY: `s` is exactly 4 readable f32.
    unsafe { vld1q_f32(s.as_ptr()) }
}

/// The R x T register tile over `groups` groups of slots; `$dot` adds the products of two
/// 16-byte vectors to an i32x4.
macro_rules! tile_kernel {
    ($name:ident, $feat:literal, $dot:path) => {
        #[target_feature(enable = $feat)]
        fn $name<const R: usize, const T: usize>(
            wq: [&[u8]; R],
            dw: [&[f32]; R],
            aq: [&[u8]; T],
            da: [&[f32]; T],
            groups: usize,
        ) -> [[[f32; 8]; T]; R] {
            let z = vdupq_n_s32(0);
            let mut acc = [[[vdupq_n_f32(0.0); 2]; T]; R];
            for g in 0..groups {
                for h in 0..2 {
                    // Slots 4h..4h + 4 of group g: lanes 4h..4h + 4.
                    let s0 = 8 * g + 4 * h;
                    let mut p = [[[z; 4]; T]; R];
                    for k in 0..4 {
                        let o = 32 * (s0 + k);
                        let av: [(int8x16_t, int8x16_t); T] = std::array::from_fn(|t| {
                            (ld(&aq[t][o..o + 16]), ld(&aq[t][o + 16..o + 32]))
                        });
                        for r in 0..R {
                            let (w0, w1) = (ld(&wq[r][o..o + 16]), ld(&wq[r][o + 16..o + 32]));
                            for t in 0..T {
                                p[r][t][k] = $dot($dot(z, w0, av[t].0), w1, av[t].1);
                            }
                        }
                    }
                    for t in 0..T {
                        let dat = ldf(&da[t][s0..s0 + 4]);
                        for r in 0..R {
                            let [p0, p1, p2, p3] = p[r][t];
                            let sums = vpaddq_s32(vpaddq_s32(p0, p1), vpaddq_s32(p2, p3));
                            let d = vmulq_f32(ldf(&dw[r][s0..s0 + 4]), dat);
                            let term = vmulq_f32(d, vcvtq_f32_s32(sums));
                            acc[r][t][h] = vaddq_f32(acc[r][t][h], term);
                        }
                    }
                }
            }
            let mut out = [[[0.0f32; 8]; T]; R];
            for r in 0..R {
                for t in 0..T {
                    // SAFETY: `out[r][t]` is 8 writable f32; each store writes 4 of them.
                    unsafe {
                        vst1q_f32(out[r][t].as_mut_ptr(), acc[r][t][0]);
                        vst1q_f32(out[r][t].as_mut_ptr().add(4), acc[r][t][1]);
                    }
                }
            }
            out
        }
    };
}

tile_kernel!(tile_plain, "neon", smull_dot);
tile_kernel!(tile_dotprod, "neon,dotprod", sdot);

/// One R x T tile through `kind`'s kernel.
#[target_feature(enable = "neon")]
fn tile<const R: usize, const T: usize>(
    kind: Kind,
    wq: [&[u8]; R],
    dw: [&[f32]; R],
    aq: [&[u8]; T],
    da: [&[f32]; T],
    groups: usize,
) -> [[[f32; 8]; T]; R] {
    if kind.dotprod {
        // SAFETY: `Kind::pick` sets `dotprod` only for `Dispatch::NeonDotprod`, which the
        // caller checked is available (`Dispatch::is_available`: NEON and `dotprod`).
        unsafe { tile_dotprod(wq, dw, aq, da, groups) }
    } else {
        tile_plain(wq, dw, aq, da, groups)
    }
}

/// `out[r * acts.len() + t]` = dot of weight row r (`row_bytes` each, `nb` blocks) with
/// `acts[t]`, through `kind` (whose features the caller checked).
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
        // SAFETY: `Kind::pick` returns a kind only for the NEON dispatches, which the caller
        // checked are available (`Dispatch::is_available`).
        unsafe { run_in(&mut s, kind, w, n_rows, row_bytes, acts, nb, out) }
    })
}

#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "neon")]
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
    const ROWS: usize = 2;
    let nt = acts.len();
    let groups = nb.div_ceil(8);
    let slots = groups * 8;
    let Scratch { aq, da, wq, dw } = s;
    aq.resize(nt * slots * 32, 0);
    da.resize(nt * slots, 0.0);
    wq.resize(ROWS * slots * 32, 0);
    dw.resize(ROWS * slots, 0.0);
    for (t, a) in acts.iter().enumerate() {
        layout(
            kind,
            a,
            34,
            nb,
            &mut aq[t * slots * 32..(t + 1) * slots * 32],
            &mut da[t * slots..(t + 1) * slots],
            |b, d| q8_codes(b, d),
            |b| rd_f16(b, 0),
        );
    }
    let (aq, da) = (&*aq, &*da);
    let a_of = |t: usize| {
        (
            &aq[t * slots * 32..(t + 1) * slots * 32],
            &da[t * slots..(t + 1) * slots],
        )
    };
    let mut r0 = 0;
    while r0 < n_rows {
        let nr = ROWS.min(n_rows - r0);
        for r in 0..nr {
            let wrow = &w[(r0 + r) * row_bytes..(r0 + r + 1) * row_bytes];
            let (q, d) = (
                &mut wq[r * slots * 32..(r + 1) * slots * 32],
                &mut dw[r * slots..(r + 1) * slots],
            );
            if kind.mxfp4 {
                layout(
                    kind,
                    wrow,
                    kind.wblock(),
                    nb,
                    q,
                    d,
                    |b, d| mxfp4_codes(b, d),
                    |b| E8M0_HALF[b[0] as usize],
                );
            } else {
                layout(
                    kind,
                    wrow,
                    kind.wblock(),
                    nb,
                    q,
                    d,
                    |b, d| q8_codes(b, d),
                    |b| rd_f16(b, 0),
                );
            }
        }
        let w_of = |r: usize| {
            (
                &wq[r * slots * 32..(r + 1) * slots * 32],
                &dw[r * slots..(r + 1) * slots],
            )
        };
        let mut t0 = 0;
        while t0 < nt {
            let tn = 2.min(nt - t0);
            macro_rules! arm {
                ($r:literal, $t:literal) => {{
                    let ws: [_; $r] = std::array::from_fn(|i| w_of(i));
                    let xs: [_; $t] = std::array::from_fn(|j| a_of(t0 + j));
                    let o = tile::<$r, $t>(
                        kind,
                        ws.map(|x| x.0),
                        ws.map(|x| x.1),
                        xs.map(|x| x.0),
                        xs.map(|x| x.1),
                        groups,
                    );
                    for (i, oi) in o.iter().enumerate() {
                        for (j, l) in oi.iter().enumerate() {
                            out[(r0 + i) * nt + t0 + j] = reduce8(*l);
                        }
                    }
                }};
            }
            match (nr, tn) {
                (2, 2) => arm!(2, 2),
                (2, _) => arm!(2, 1),
                (_, 2) => arm!(1, 2),
                _ => arm!(1, 1),
            }
            t0 += tn;
        }
        r0 += nr;
    }
}
