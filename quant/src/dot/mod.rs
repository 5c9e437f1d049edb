//! Quantized dot products for the CPU backend, with run-time SIMD dispatch.
//!
//! Every kernel computes exact integer sums per block pair and then the same float operations in
//! the same order whatever the instruction set (see `scalar.rs`), so [`Dispatch::Scalar`] and the
//! SIMD dispatches give bit-identical results; the tests check this on random data.

pub(crate) mod kquants;
#[cfg(target_arch = "aarch64")]
pub(crate) mod neon;
#[cfg(target_arch = "aarch64")]
mod neon_tile;
pub(crate) mod scalar;
mod tile;
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
pub(crate) mod x86;
#[cfg(target_arch = "x86_64")]
mod x86_kquants;
#[cfg(target_arch = "x86_64")]
mod x86_tile;

pub use tile::{vec_dot_tile, vec_dot_tile_with};

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::check_bytes;
use crate::{GgmlType, QuantError};

/// Which implementation of the dot kernels to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dispatch {
    /// Portable Rust, the definition of the results.
    Scalar,
    /// x86-64 AVX2 + F16C.
    Avx2,
    /// x86-64 AVX-512 (F, BW, VL, VNNI) on top of AVX2.
    Avx512,
    /// aarch64 Advanced SIMD (NEON, part of every aarch64 CPU): widening multiplies.
    Neon,
    /// aarch64 NEON with the Armv8.2 dot-product extension (`sdot`, feature `dotprod`).
    NeonDotprod,
}

impl Dispatch {
    /// Every dispatch this crate has, whether or not this CPU supports it.
    pub const ALL: [Dispatch; 5] = [
        Dispatch::Scalar,
        Dispatch::Avx2,
        Dispatch::Avx512,
        Dispatch::Neon,
        Dispatch::NeonDotprod,
    ];

    /// Whether this CPU can run it (checked at run time).
    pub fn is_available(self) -> bool {
        match self {
            Dispatch::Scalar => true,
            #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
            Dispatch::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("f16c"),
            #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
            Dispatch::Avx512 => {
                Dispatch::Avx2.is_available()
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(not(any(target_arch = "x86", target_arch = "x86_64")))]
            Dispatch::Avx2 | Dispatch::Avx512 => false,
            #[cfg(target_arch = "aarch64")]
            Dispatch::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[cfg(target_arch = "aarch64")]
            Dispatch::NeonDotprod => {
                std::arch::is_aarch64_feature_detected!("neon")
                    && std::arch::is_aarch64_feature_detected!("dotprod")
            }
            #[cfg(not(target_arch = "aarch64"))]
            Dispatch::Neon | Dispatch::NeonDotprod => false,
        }
    }

    /// [`Dispatch::is_available`], detected once and cached: the per-call check of the dot
    /// products (a handful of feature tests per call is measurable on one 4096-wide row).
    pub(crate) fn is_available_cached(self) -> bool {
        static AVAILABLE: OnceLock<[bool; 5]> = OnceLock::new();
        let a = AVAILABLE.get_or_init(|| Dispatch::ALL.map(|d| d.is_available()));
        match self {
            Dispatch::Scalar => true,
            Dispatch::Avx2 => a[1],
            Dispatch::Avx512 => a[2],
            Dispatch::Neon => a[3],
            Dispatch::NeonDotprod => a[4],
        }
    }

    /// The fastest dispatch this CPU supports (detected once, then cached).
    pub fn best() -> Dispatch {
        static BEST: OnceLock<Dispatch> = OnceLock::new();
        *BEST.get_or_init(|| {
            [
                Dispatch::Avx512,
                Dispatch::Avx2,
                Dispatch::NeonDotprod,
                Dispatch::Neon,
            ]
            .into_iter()
            .find(|d| d.is_available())
            .unwrap_or(Dispatch::Scalar)
        })
    }
}

static SIMD_ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns the SIMD kernels on or off for the whole process ([`vec_dot`] then uses
/// [`Dispatch::Scalar`]). Results do not change, only speed; meant for tests and benchmarks.
pub fn set_simd_enabled(enabled: bool) {
    SIMD_ENABLED.store(enabled, Ordering::Relaxed);
}

/// The dispatch [`vec_dot`] uses now.
pub fn current_dispatch() -> Dispatch {
    if SIMD_ENABLED.load(Ordering::Relaxed) {
        Dispatch::best()
    } else {
        Dispatch::Scalar
    }
}

/// The activation format ggml pairs with a weight type in its CPU backend (`vec_dot_type`):
/// quantize activations to this before calling [`vec_dot`].
pub fn vec_dot_type(weight: GgmlType) -> GgmlType {
    use GgmlType::*;
    match weight {
        F32 | F64 | I8 | I16 | I32 | I64 => F32,
        F16 => F16,
        BF16 => BF16,
        Q4_0 | Q5_0 | Q8_0 | MXFP4 | NVFP4 | IQ4_NL | Q1_0 | Q2_0 => Q8_0,
        Q4_1 | Q5_1 | Q8_1 => Q8_1,
        Q2_K | Q3_K | Q4_K | Q5_K | Q6_K | Q8_K | IQ2_XXS | IQ2_XS | IQ2_S | IQ3_XXS | IQ3_S
        | IQ1_S | IQ1_M | IQ4_XS | TQ1_0 | TQ2_0 => Q8_K,
    }
}

/// Dot product of `n` elements: weights `w` of type `wty` with activations `a` of type `aty`,
/// using [`current_dispatch`]. Native kernels: MXFP4 x Q8_0, Q8_0 x Q8_0, Q4_0 x Q8_0,
/// IQ4_NL x Q8_0, Q4_K x Q8_K, Q6_K x Q8_K; every other pair of decodable types falls back to
/// dequantizing both sides and an f32 dot product (slow, but correct).
pub fn vec_dot(
    wty: GgmlType,
    w: &[u8],
    aty: GgmlType,
    a: &[u8],
    n: usize,
) -> Result<f32, QuantError> {
    vec_dot_with(current_dispatch(), wty, w, aty, a, n)
}

/// [`vec_dot`] with an explicit dispatch. A dispatch this CPU cannot run is replaced by
/// [`Dispatch::best`] (never an illegal instruction).
pub fn vec_dot_with(
    dispatch: Dispatch,
    wty: GgmlType,
    w: &[u8],
    aty: GgmlType,
    a: &[u8],
    n: usize,
) -> Result<f32, QuantError> {
    let nb = check_bytes(wty, n, w.len(), "weights")?;
    check_bytes(aty, n, a.len(), "activations")?;
    let dispatch = if dispatch.is_available_cached() {
        dispatch
    } else {
        Dispatch::best()
    };
    use GgmlType::*;
    Ok(match (wty, aty) {
        (MXFP4, Q8_0) => match dispatch {
            #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
            // SAFETY: `is_available` checked the CPU features the kernel is compiled for.
            Dispatch::Avx512 => unsafe { x86::mxfp4_q8_0_avx512(w, a, nb) },
            #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
            // SAFETY: as above.
            Dispatch::Avx2 => unsafe { x86::mxfp4_q8_0_avx2(w, a, nb) },
            #[cfg(target_arch = "aarch64")]
            // SAFETY: `is_available` checked the CPU features the kernel is compiled for.
            Dispatch::NeonDotprod => unsafe { neon::dotprod::mxfp4_q8_0(w, a, nb) },
            #[cfg(target_arch = "aarch64")]
            // SAFETY: as above (NEON).
            Dispatch::Neon => unsafe { neon::plain::mxfp4_q8_0(w, a, nb) },
            _ => scalar::mxfp4_q8_0(w, a, nb),
        },
        (Q8_0, Q8_0) => match dispatch {
            #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
            // SAFETY: `is_available` checked the CPU features the kernel is compiled for.
            Dispatch::Avx512 => unsafe { x86::q8_0_q8_0_avx512(w, a, nb) },
            #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
            // SAFETY: as above.
            Dispatch::Avx2 => unsafe { x86::q8_0_q8_0_avx2(w, a, nb) },
            #[cfg(target_arch = "aarch64")]
            // SAFETY: `is_available` checked the CPU features the kernel is compiled for.
            Dispatch::NeonDotprod => unsafe { neon::dotprod::q8_0_q8_0(w, a, nb) },
            #[cfg(target_arch = "aarch64")]
            // SAFETY: as above (NEON).
            Dispatch::Neon => unsafe { neon::plain::q8_0_q8_0(w, a, nb) },
            _ => scalar::q8_0_q8_0(w, a, nb),
        },
        (Q4_0 | IQ4_NL, Q8_0) => {
            let table = if wty == Q4_0 {
                &scalar::Q4_0_LEVELS
            } else {
                &crate::tables::KVALUES_IQ4NL
            };
            match dispatch {
                #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
                // SAFETY: AVX-512 availability implies AVX2 + F16C, which the kernel needs.
                Dispatch::Avx512 | Dispatch::Avx2 => unsafe {
                    x86::nib4_q8_0_avx2(table, w, a, nb)
                },
                #[cfg(target_arch = "aarch64")]
                // SAFETY: `is_available` checked the CPU features the kernel is compiled for.
                Dispatch::NeonDotprod => unsafe { neon::dotprod::nib4_q8_0(table, w, a, nb) },
                #[cfg(target_arch = "aarch64")]
                // SAFETY: as above (NEON).
                Dispatch::Neon => unsafe { neon::plain::nib4_q8_0(table, w, a, nb) },
                _ => scalar::nib4_q8_0(table, w, a, nb),
            }
        }
        (Q4_K, Q8_K) => kquants::q4_k_q8_k(dispatch, w, a, nb),
        (Q6_K, Q8_K) => kquants::q6_k_q8_k(dispatch, w, a, nb),
        _ => generic(wty, w, aty, a, n)?,
    })
}

/// Dequantize both sides 256 elements at a time (a multiple of every block size) and dot in f32.
fn generic(wty: GgmlType, w: &[u8], aty: GgmlType, a: &[u8], n: usize) -> Result<f32, QuantError> {
    const CHUNK: usize = 256;
    let mut wf = [0.0f32; CHUNK];
    let mut af = [0.0f32; CHUNK];
    let mut acc = [0.0f32; 8];
    let mut done = 0;
    while done < n {
        let len = CHUNK.min(n - done);
        let wb = wty.type_size() * done / wty.block_size();
        let we = wty.type_size() * (done + len) / wty.block_size();
        let ab = aty.type_size() * done / aty.block_size();
        let ae = aty.type_size() * (done + len) / aty.block_size();
        crate::dequantize(wty, &w[wb..we], &mut wf[..len])?;
        crate::dequantize(aty, &a[ab..ae], &mut af[..len])?;
        for (i, (x, y)) in wf[..len].iter().zip(&af[..len]).enumerate() {
            acc[i % 8] += x * y;
        }
        done += len;
    }
    Ok(scalar::reduce8(acc))
}
