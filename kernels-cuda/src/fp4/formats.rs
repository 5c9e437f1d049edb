//! The number formats of the block-scaled MMA, decoded exactly (f64) and encoded the way the
//! kernels do it.
//!
//! - E2M1 (FP4): ggml's MXFP4 element codes. In `kind::mxf8f6f4` an E2M1 operand sits in an
//!   8-bit container, code in bits 5..2, bits 7..6 and 1..0 zero (PTX ISA, "Matrix fragments
//!   for mma.m16n8k32" with `.e2m1` under `.kind::f8f6f4`; CUTLASS's unpacked FP4 types).
//! - E4M3 (OCP "e4m3fn", bias 7, no infinities, 0x7F/0xFF NaN, largest 448): the activations.
//! - UE8M0: 2^(e - 127); 0xFF is NaN. E = 0 is 2^-127, as in ggml.

/// The E2M1 code `code` (low 4 bits) in the 8-bit container `kind::mxf8f6f4` reads.
#[inline]
pub fn e2m1_container(code: u8) -> u8 {
    (code & 0x0f) << 2
}

/// The value of an E2M1 code (OCP: sign, 2 exponent bits with bias 1, 1 mantissa bit).
pub fn e2m1_value(code: u8) -> f64 {
    let s = if code & 8 != 0 { -1.0 } else { 1.0 };
    let e = ((code >> 1) & 3) as i32;
    let m = (code & 1) as f64;
    if e == 0 {
        s * m * 0.5
    } else {
        s * (1.0 + m * 0.5) * 2f64.powi(e - 1)
    }
}

/// The value of an E4M3 byte (OCP e4m3fn); `None` for the NaN codes 0x7F and 0xFF.
pub fn e4m3_value(b: u8) -> Option<f64> {
    if b & 0x7f == 0x7f {
        return None;
    }
    let s = if b & 0x80 != 0 { -1.0 } else { 1.0 };
    let e = ((b >> 3) & 0x0f) as i32;
    let m = (b & 7) as f64;
    Some(if e == 0 {
        s * m / 8.0 * 2f64.powi(-6)
    } else {
        s * (1.0 + m / 8.0) * 2f64.powi(e - 7)
    })
}

/// The value of a UE8M0 scale byte; `None` for 0xFF (NaN).
pub fn ue8m0_value(e: u8) -> Option<f64> {
    (e != 0xff).then(|| 2f64.powi(e as i32 - 127))
}

/// Largest finite E4M3 magnitude.
pub const E4M3_MAX: f64 = 448.0;

/// f32 -> E4M3, round to nearest even, finite overflow saturating to ±448, NaN to 0x7F: what
/// `cvt.rn.satfinite.e4m3x2.f32` does.
pub fn f32_to_e4m3(x: f32) -> u8 {
    if x.is_nan() {
        return 0x7f;
    }
    let sign = if x.is_sign_negative() { 0x80u8 } else { 0 };
    let a = (x as f64).abs();
    if a >= E4M3_MAX {
        return sign | 0x7e;
    }
    // The quantum at |x|: 2^(e - 3) for normals (e >= -6), 2^-9 for subnormals.
    let e = if a > 0.0 { a.log2().floor() as i32 } else { -7 };
    let q = 2f64.powi(e.max(-6) - 3);
    let n = round_half_even(a / q); // exact: q is a power of two
    let v = n * q;
    if v >= E4M3_MAX {
        return sign | 0x7e;
    }
    if v == 0.0 {
        return sign;
    }
    // Encode v exactly.
    let ve = v.log2().floor() as i32;
    if ve < -6 {
        sign | (v / 2f64.powi(-9)) as u8
    } else {
        let mant = (v / 2f64.powi(ve - 3)) as u32 - 8;
        sign | (((ve + 7) as u8) << 3) | mant as u8
    }
}

fn round_half_even(v: f64) -> f64 {
    let f = v.floor();
    let d = v - f;
    if d > 0.5 || (d == 0.5 && f % 2.0 != 0.0) {
        f + 1.0
    } else {
        f
    }
}

/// The UE8M0 scale byte the kernels pick for an MXFP8 block whose largest magnitude is `amax`:
/// the smallest power of two 2^s with `amax <= 448 * 2^s` (so nothing saturates), computed from
/// the f32 bits as the kernel does (`448 = 1.75 * 2^8`), clamped to E in [1, 253] so that the
/// inverse 2^-s is a normal f32. `amax == 0` gives E = 1.
pub fn mxfp8_scale_byte(amax: f32) -> u8 {
    let bits = amax.abs().to_bits();
    let ebits = (bits >> 23) as i32; // biased exponent (0 for zero/subnormal)
    let mant = bits & 0x7f_ffff;
    let s = ebits - 127 - 8 + i32::from(mant > 0x60_0000);
    (s + 127).clamp(1, 253) as u8
}

/// 2^(127 - e) as f32 for a scale byte from [`mxfp8_scale_byte`]: the factor the kernel
/// multiplies by before converting to E4M3 (exact for e in [1, 253]).
pub fn mxfp8_inverse_scale(e: u8) -> f32 {
    f32::from_bits((254 - e as u32) << 23)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e4m3_round_trip_and_rounding() {
        // Every finite code decodes and re-encodes to itself (+0/-0 kept).
        for b in 0u8..=255 {
            if let Some(v) = e4m3_value(b) {
                assert_eq!(f32_to_e4m3(v as f32), b, "code {b:#04x} = {v}");
            }
        }
        assert_eq!(e4m3_value(0x7e), Some(448.0));
        assert_eq!(e4m3_value(0x01), Some(2f64.powi(-9)));
        // Halfway cases go to the even neighbour; overflow saturates.
        assert_eq!(f32_to_e4m3(1.0625), 0x38); // between 1.0 (even) and 1.125
        assert_eq!(f32_to_e4m3(1.1875), 0x3a); // between 1.125 and 1.25 (even)
        assert_eq!(f32_to_e4m3(1e9), 0x7e);
        assert_eq!(f32_to_e4m3(-470.0), 0xfe);
        assert_eq!(f32_to_e4m3(2f32.powi(-11)), 0x00); // a quarter quantum rounds to zero
        assert_eq!(f32_to_e4m3(f32::NAN), 0x7f);
    }

    #[test]
    fn mxfp8_scale_never_saturates_and_is_tight() {
        let mut seed = 0x1234_5678_9abc_def0u64;
        for _ in 0..20000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let amax = f32::from_bits(
                ((seed >> 40) as u32 & 0x7f_ffff) | ((90 + (seed % 80) as u32) << 23),
            );
            let e = mxfp8_scale_byte(amax);
            let s = ue8m0_value(e).unwrap();
            assert!(amax as f64 <= 448.0 * s, "amax {amax} e {e}");
            assert!(
                amax as f64 > 448.0 * s / 2.0,
                "amax {amax} e {e}: not the smallest"
            );
            assert_eq!(mxfp8_inverse_scale(e) as f64 * s, 1.0);
        }
        assert_eq!(mxfp8_scale_byte(448.0), 127);
        assert_eq!(mxfp8_scale_byte(448.1), 128);
        assert_eq!(mxfp8_scale_byte(0.0), 1);
    }
}
