//! A CPU model of one warp-wide block-scaled MMA,
//! `mma.sync.aligned.m16n8k32.row.col.kind::mxf8f6f4.block_scale.scale_vec::1X.f32.e2m1.e4m3.f32.ue8m0`,
//! as the PTX ISA defines it (9.7.14.3 "Block scaling for mma.sync", 9.7.14.5 "Matrix fragments
//! for mma.m16n8k32"): which lane's register holds which element of A, B, C/D and of the scale
//! vectors, and what is computed: `D = (A * SF_A) (B * SF_B) + C`, `SF_A` one UE8M0 per row of
//! A and `SF_B` one per column of B (K = 32 is one scale block).
//!
//! With `groupID = lane >> 2` and `tig = lane % 4`:
//! - A (16 x 32, E2M1 in 8-bit containers): register `r` byte `i` holds row
//!   `groupID + 8 * (r % 2)`, column `4 * tig + i + 16 * (r / 2)`.
//! - B (32 x 8, E4M3): register `r` byte `i` holds row (k) `4 * tig + i + 16 * r`, column
//!   `groupID`.
//! - C/D (16 x 8, f32): element `j` is row `groupID + 8 * (j / 2)`, column `2 * tig + j % 2`.
//! - SF_A for row `m` is byte `byte-id-a` of lane `4 * (m % 8) + 2 * thread-id-a + m / 8`;
//!   SF_B for column `n` is byte `byte-id-b` of lane `4 * n + thread-id-b`.
//!
//! The hardware accumulates in f32 in an unspecified order; the model sums the 32 exact products
//! and C in f64 and rounds once to f32, so a correct kernel agrees with it to within f32
//! accumulation error (the products of E2M1, E4M3 and two powers of two are exact).

use super::formats::{e2m1_value, e4m3_value, ue8m0_value};

/// Lanes in a warp.
pub const WARP: usize = 32;

/// Row and column of A held by `lane` in register `reg` (0..4), byte `byte` (0..4).
pub fn a_element(lane: usize, reg: usize, byte: usize) -> (usize, usize) {
    let (g, t) = (lane >> 2, lane & 3);
    (g + 8 * (reg % 2), 4 * t + byte + 16 * (reg / 2))
}

/// Row (k) and column of B held by `lane` in register `reg` (0..2), byte `byte` (0..4).
pub fn b_element(lane: usize, reg: usize, byte: usize) -> (usize, usize) {
    let (g, t) = (lane >> 2, lane & 3);
    (4 * t + byte + 16 * reg, g)
}

/// Row and column of C/D held by `lane` in element `j` (0..4).
pub fn c_element(lane: usize, j: usize) -> (usize, usize) {
    let (g, t) = (lane >> 2, lane & 3);
    (g + 8 * (j / 2), 2 * t + j % 2)
}

/// The lane whose scale register supplies SF_A of row `m` (0..16).
pub fn sfa_lane(m: usize, thread_id: usize) -> usize {
    4 * (m % 8) + 2 * thread_id + m / 8
}

/// The lane whose scale register supplies SF_B of column `n` (0..8).
pub fn sfb_lane(n: usize, thread_id: usize) -> usize {
    4 * n + thread_id
}

/// One warp's operands of the instruction, register by register.
#[derive(Clone, Debug, Default)]
pub struct WarpOperands {
    /// A: four registers per lane, E2M1 codes in 8-bit containers.
    pub a: [[u32; 4]; WARP],
    /// B: two registers per lane, E4M3 bytes.
    pub b: [[u32; 2]; WARP],
    /// C: four f32 per lane.
    pub c: [[f32; 4]; WARP],
    /// scale-a-data: one register per lane.
    pub sfa: [u32; WARP],
    /// scale-b-data: one register per lane.
    pub sfb: [u32; WARP],
    /// `{byte-id-a, thread-id-a}` (byte 0..4, thread 0..2).
    pub sel_a: (usize, usize),
    /// `{byte-id-b, thread-id-b}` (byte 0..4, thread 0..4).
    pub sel_b: (usize, usize),
}

/// Why an operand set is not a valid input of the instruction.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelError {
    /// An A byte has bits outside 5..2 set: not an E2M1 container.
    BadContainer {
        /// The lane.
        lane: usize,
        /// The register.
        reg: usize,
        /// The byte.
        byte: usize,
        /// Its value.
        value: u8,
    },
    /// A NaN E4M3 element or UE8M0 scale.
    Nan(String),
    /// A selector outside its range.
    Selector(String),
    /// Operands of the host-side packing whose sizes do not fit together.
    Shape(String),
    /// A tcgen05 instruction or shared-memory descriptor the model does not accept (a reserved
    /// bit set, a wrong fixed field, or a format / shape this kernel does not use).
    Descriptor(String),
}

/// A (16 x 32) as E2M1 codes, decoded from the registers; errors on a malformed container.
pub fn decode_a_codes(a: &[[u32; 4]; WARP]) -> Result<[[u8; 32]; 16], ModelError> {
    let mut out = [[0u8; 32]; 16];
    for (lane, regs) in a.iter().enumerate() {
        for (reg, &r) in regs.iter().enumerate() {
            for byte in 0..4 {
                let v = (r >> (8 * byte)) as u8;
                if v & 0xc3 != 0 {
                    return Err(ModelError::BadContainer {
                        lane,
                        reg,
                        byte,
                        value: v,
                    });
                }
                let (m, k) = a_element(lane, reg, byte);
                out[m][k] = v >> 2;
            }
        }
    }
    Ok(out)
}

/// B (32 x 8) as E4M3 bytes, decoded from the registers.
pub fn decode_b_bytes(b: &[[u32; 2]; WARP]) -> [[u8; 8]; 32] {
    let mut out = [[0u8; 8]; 32];
    for (lane, regs) in b.iter().enumerate() {
        for (reg, &r) in regs.iter().enumerate() {
            for byte in 0..4 {
                let (k, n) = b_element(lane, reg, byte);
                out[k][n] = (r >> (8 * byte)) as u8;
            }
        }
    }
    out
}

/// SF_A (16 scale bytes, one per row of A) as the selector picks them.
pub fn decode_sfa(sfa: &[u32; WARP], sel: (usize, usize)) -> [u8; 16] {
    std::array::from_fn(|m| (sfa[sfa_lane(m, sel.1)] >> (8 * sel.0)) as u8)
}

/// SF_B (8 scale bytes, one per column of B) as the selector picks them.
pub fn decode_sfb(sfb: &[u32; WARP], sel: (usize, usize)) -> [u8; 8] {
    std::array::from_fn(|n| (sfb[sfb_lane(n, sel.1)] >> (8 * sel.0)) as u8)
}

/// A with its scales applied, `A[m][k] * SF_A[m]`, exactly (f64).
pub fn scaled_a(op: &WarpOperands) -> Result<[[f64; 32]; 16], ModelError> {
    let codes = decode_a_codes(&op.a)?;
    let sf = decode_sfa(&op.sfa, op.sel_a);
    let mut out = [[0f64; 32]; 16];
    for m in 0..16 {
        let s = ue8m0_value(sf[m]).ok_or_else(|| ModelError::Nan(format!("SF_A row {m}")))?;
        for k in 0..32 {
            out[m][k] = e2m1_value(codes[m][k]) * s;
        }
    }
    Ok(out)
}

/// B with its scales applied, `B[k][n] * SF_B[n]`, exactly (f64).
pub fn scaled_b(op: &WarpOperands) -> Result<[[f64; 8]; 32], ModelError> {
    let bytes = decode_b_bytes(&op.b);
    let sf = decode_sfb(&op.sfb, op.sel_b);
    let mut out = [[0f64; 8]; 32];
    for n in 0..8 {
        let s = ue8m0_value(sf[n]).ok_or_else(|| ModelError::Nan(format!("SF_B column {n}")))?;
        for k in 0..32 {
            let v =
                e4m3_value(bytes[k][n]).ok_or_else(|| ModelError::Nan(format!("B[{k}][{n}]")))?;
            out[k][n] = v * s;
        }
    }
    Ok(out)
}

/// Execute the instruction on the model: D per lane.
pub fn mma_m16n8k32_e2m1_e4m3(op: &WarpOperands) -> Result<[[f32; 4]; WARP], ModelError> {
    if op.sel_a.0 > 3 || op.sel_a.1 > 1 || op.sel_b.0 > 3 || op.sel_b.1 > 3 {
        return Err(ModelError::Selector(format!(
            "a {:?} b {:?}",
            op.sel_a, op.sel_b
        )));
    }
    let a = scaled_a(op)?;
    let b = scaled_b(op)?;
    let mut d = [[0f32; 4]; WARP];
    for (lane, dl) in d.iter_mut().enumerate() {
        for (j, dj) in dl.iter_mut().enumerate() {
            let (m, n) = c_element(lane, j);
            let mut s = op.c[lane][j] as f64;
            for k in 0..32 {
                s += a[m][k] * b[k][n];
            }
            *dj = s as f32;
        }
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragments_cover_each_element_once() {
        let mut a = [[0u8; 32]; 16];
        let mut b = [[0u8; 8]; 32];
        let mut c = [[0u8; 8]; 16];
        for lane in 0..WARP {
            for reg in 0..4 {
                for byte in 0..4 {
                    let (m, k) = a_element(lane, reg, byte);
                    a[m][k] += 1;
                    if reg < 2 {
                        let (k, n) = b_element(lane, reg, byte);
                        b[k][n] += 1;
                    }
                }
                let (m, n) = c_element(lane, reg);
                c[m][n] += 1;
            }
        }
        assert!(a.iter().flatten().all(|&x| x == 1));
        assert!(b.iter().flatten().all(|&x| x == 1));
        assert!(c.iter().flatten().all(|&x| x == 1));
        // Scale lanes: distinct per row / column for each selector.
        for tid in 0..2 {
            let mut lanes: Vec<_> = (0..16).map(|m| sfa_lane(m, tid)).collect();
            lanes.sort();
            lanes.dedup();
            assert_eq!(lanes.len(), 16);
        }
        // The row that lane l supplies at thread-id 0 is l/4 + 8*(l%2) (lanes with l%4 < 2),
        // as llama.cpp's MMQ kernels index it.
        for l in 0..WARP {
            if l % 4 < 2 {
                assert_eq!(sfa_lane(l / 4 + 8 * (l % 2), 0), l);
            }
        }
    }
}
