//! Small exact helpers shared by the block codecs.

use half::f16;

/// Reads a little-endian IEEE half at `b[i..i + 2]` as f32 (exact).
#[inline(always)]
pub(crate) fn rd_f16(b: &[u8], i: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

/// Rounds `x` to IEEE half (round to nearest even, as F16C and ggml's software path do) and
/// writes it little-endian at `b[i..i + 2]`. Returns the stored value as f32.
#[inline(always)]
pub(crate) fn wr_f16(b: &mut [u8], i: usize, x: f32) -> f32 {
    let h = f16::from_f32(x);
    b[i..i + 2].copy_from_slice(&h.to_bits().to_le_bytes());
    h.to_f32()
}

/// C `roundf` (halfway cases away from zero) for |x| < 2^23, without a libm call: the
/// truncation and the remainder are both exact, so this is the same integer bit for bit.
#[inline(always)]
pub(crate) fn round_away(x: f32) -> i32 {
    let t = x as i32;
    let f = x - t as f32;
    t + (f >= 0.5) as i32 - (f <= -0.5) as i32
}

/// ggml's `nearest_int`: adds 1.5 * 2^23 so the FPU's round-to-nearest-even does the rounding,
/// then reads the integer out of the mantissa. Valid for |x| <= 4194303 (ggml asserts that).
#[inline(always)]
pub(crate) fn nearest_int(x: f32) -> i32 {
    let v = x + 12582912.0f32;
    (v.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// Reads a little-endian u16.
#[inline(always)]
pub(crate) fn rd_u16(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([b[i], b[i + 1]])
}

/// Reads a little-endian u32.
#[inline(always)]
pub(crate) fn rd_u32(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_away_matches_libm_roundf() {
        let mut x = -130.0f32;
        while x <= 130.0 {
            assert_eq!(round_away(x), x.round() as i32, "x = {x}");
            x += 0.0625;
        }
        for x in [
            0.49999997f32,
            -0.49999997,
            0.5,
            -0.5,
            1.5,
            -2.5,
            126.5,
            -127.49999,
        ] {
            assert_eq!(round_away(x), x.round() as i32, "x = {x}");
        }
    }

    #[test]
    fn nearest_int_is_round_half_even() {
        for (x, r) in [
            (0.5f32, 0),
            (1.5, 2),
            (2.5, 2),
            (-0.5, 0),
            (-1.5, -2),
            (3.4, 3),
            (-3.6, -4),
        ] {
            assert_eq!(nearest_int(x), r, "x = {x}");
        }
    }
}
