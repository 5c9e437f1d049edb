//! llama.cpp's re-quantization types on the GPU: Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K,
//! IQ4_NL and IQ4_XS, the types `gptoss quantize` writes for q4_k_m, q5_k_m, q6_k, q4_0, iq4_nl
//! and iq4_xs (on GPT-OSS's 2880-wide rows the k-quants fall back to Q5_0/Q5_1/Q8_0/IQ4_NL).
//!
//! The weights stay in their file format in VRAM, re-laid at upload (same bits, same size) into
//! 32-element units stored as structure-of-arrays regions, so a lane reads a unit's 16 code
//! bytes with one aligned 16-byte load and decodes them in registers (the layout is spelled out
//! at the top of `kernels/quants.cu`). Kernels: GEMV / few-row products (any number of rows,
//! tiled by 1, 4 or 8 tokens per pass, two output rows per warp), embedding row lookup, and the
//! MoE expert products (gate+up with SwiGLU, down with the weighted sum over the chosen
//! experts; Q8_0 is accepted there too, since a re-quantized file often mixes it in).

use gptoss_backend::{BackendError, GgmlType, MoeWeights, Result};

use crate::{A, CudaBackend, CudaWeight, shape_err};

/// Rows per warp times warps per block in the kernels (`QG_R * QG_WARPS` in quants.cu).
const ROWS_PER_BLOCK: usize = 8;
/// Threads per block of every kernel here.
const BLOCK: u32 = 128;

macro_rules! names {
    ($($t:literal),*) => {
        &[$(
            concat!("qgemv_", $t, "_n1"),
            concat!("qgemv_", $t, "_n4"),
            concat!("qgemv_", $t, "_n8"),
            concat!("qembed_", $t),
            concat!("qmoe_gate_up_", $t),
            concat!("qmoe_down_", $t),
        )*]
    };
}

/// Every kernel of `kernels/quants.cu` (checked to exist after each compilation).
pub const KERNEL_NAMES: &[&str] = {
    const PER_TYPE: &[&str] = names!(
        "q4_0", "q4_1", "q5_0", "q5_1", "q4_k", "q5_k", "q6_k", "iq4_nl", "iq4_xs"
    );
    const ALL: [&str; PER_TYPE.len() + 2] = {
        let mut a = [""; PER_TYPE.len() + 2];
        let mut i = 0;
        while i < PER_TYPE.len() {
            a[i] = PER_TYPE[i];
            i += 1;
        }
        a[i] = "qmoe_gate_up_q8_0";
        a[i + 1] = "qmoe_down_q8_0";
        a
    };
    &ALL
};

/// The kernel-name stem of a type these kernels run, if any.
fn stem(t: GgmlType) -> Option<&'static str> {
    Some(match t {
        GgmlType::Q4_0 => "q4_0",
        GgmlType::Q4_1 => "q4_1",
        GgmlType::Q5_0 => "q5_0",
        GgmlType::Q5_1 => "q5_1",
        GgmlType::Q4_K => "q4_k",
        GgmlType::Q5_K => "q5_k",
        GgmlType::Q6_K => "q6_k",
        GgmlType::IQ4_NL => "iq4_nl",
        GgmlType::IQ4_XS => "iq4_xs",
        _ => return None,
    })
}

/// Whether `t` is one of the types of this module (uploaded, multiplied and looked up here).
pub fn supported(t: GgmlType) -> bool {
    stem(t).is_some()
}

/// The MoE stem: this module's types and Q8_0.
fn moe_stem(t: GgmlType) -> Option<&'static str> {
    if t == GgmlType::Q8_0 {
        Some("q8_0")
    } else {
        stem(t)
    }
}

/// 32-element units of a weight.
fn units(w: &CudaWeight) -> i64 {
    (w.numel() / 32) as i64
}

/// Re-lay the file's blocks of `t` into the device layout of `kernels/quants.cu`: the 16 code
/// bytes of every 32-element unit first (in Q4_0 nibble order), then the type's high bits,
/// scales and headers as separate arrays. Same size as the input. `bytes` must be a whole
/// number of blocks of `t` (the caller checks), and `t` one of [`supported`].
pub fn relayout(t: GgmlType, bytes: &[u8]) -> Vec<u8> {
    let ts = t.type_size();
    let nblk = bytes.len() / ts;
    let nu = nblk * t.block_size() / 32;
    let mut out = vec![0u8; bytes.len()];
    let (q, tail) = out.split_at_mut(nu * 16);
    let blocks = bytes.chunks_exact(ts).enumerate();
    match t {
        GgmlType::Q4_0 | GgmlType::IQ4_NL => {
            for (i, b) in blocks {
                tail[2 * i..2 * i + 2].copy_from_slice(&b[..2]);
                q[16 * i..16 * i + 16].copy_from_slice(&b[2..18]);
            }
        }
        GgmlType::Q4_1 => {
            for (i, b) in blocks {
                tail[4 * i..4 * i + 4].copy_from_slice(&b[..4]);
                q[16 * i..16 * i + 16].copy_from_slice(&b[4..20]);
            }
        }
        GgmlType::Q5_0 => {
            let (qh, d) = tail.split_at_mut(nu * 4);
            for (i, b) in blocks {
                d[2 * i..2 * i + 2].copy_from_slice(&b[..2]);
                qh[4 * i..4 * i + 4].copy_from_slice(&b[2..6]);
                q[16 * i..16 * i + 16].copy_from_slice(&b[6..22]);
            }
        }
        GgmlType::Q5_1 => {
            let (qh, dm) = tail.split_at_mut(nu * 4);
            for (i, b) in blocks {
                dm[4 * i..4 * i + 4].copy_from_slice(&b[..4]);
                qh[4 * i..4 * i + 4].copy_from_slice(&b[4..8]);
                q[16 * i..16 * i + 16].copy_from_slice(&b[8..24]);
            }
        }
        GgmlType::Q4_K => {
            for (i, b) in blocks {
                tail[16 * i..16 * i + 16].copy_from_slice(&b[..16]);
                k_nibbles(&b[16..144], &mut q[128 * i..128 * i + 128]);
            }
        }
        GgmlType::Q5_K => {
            let (qh, hdr) = tail.split_at_mut(nu * 4);
            for (i, b) in blocks {
                hdr[16 * i..16 * i + 16].copy_from_slice(&b[..16]);
                let bits = &b[16..48];
                for s in 0..8 {
                    let mut h = 0u32;
                    for (l, &byte) in bits.iter().enumerate() {
                        h |= (((byte >> s) & 1) as u32) << l;
                    }
                    let o = 4 * (8 * i + s);
                    qh[o..o + 4].copy_from_slice(&h.to_le_bytes());
                }
                k_nibbles(&b[48..176], &mut q[128 * i..128 * i + 128]);
            }
        }
        GgmlType::Q6_K => {
            let (qh2, rest) = tail.split_at_mut(nu * 8);
            let (sc, d) = rest.split_at_mut(nu * 2);
            for (i, b) in blocks {
                let (ql, qh, scales) = (&b[..128], &b[128..192], &b[192..208]);
                d[2 * i..2 * i + 2].copy_from_slice(&b[208..210]);
                sc[16 * i..16 * i + 16].copy_from_slice(scales);
                for n in 0..2 {
                    for j in 0..4 {
                        let u = 8 * i + 4 * n + j;
                        let mut h = 0u64;
                        let qu = &mut q[16 * u..16 * u + 16];
                        for l in 0..32 {
                            let lo = (ql[64 * n + l + 32 * (j & 1)] >> (4 * (j >> 1))) & 15;
                            let hi = (qh[32 * n + l] >> (2 * j)) & 3;
                            qu[l % 16] |= lo << (4 * (l / 16));
                            h |= (hi as u64) << (2 * l);
                        }
                        qh2[8 * u..8 * u + 8].copy_from_slice(&h.to_le_bytes());
                    }
                }
            }
        }
        GgmlType::IQ4_XS => {
            for (i, b) in blocks {
                tail[8 * i..8 * i + 8].copy_from_slice(&b[..8]);
                q[128 * i..128 * i + 128].copy_from_slice(&b[8..136]);
            }
        }
        _ => out.copy_from_slice(bytes),
    }
    out
}

/// A K-quant super-block's 128 code bytes (four 64-element chunks: byte l's low nibble is
/// element l, its high nibble element 32 + l) into eight units of Q4_0 nibble order.
fn k_nibbles(src: &[u8], dst: &mut [u8]) {
    for c in 0..4 {
        let s = &src[32 * c..32 * c + 32];
        for i in 0..16 {
            dst[32 * c + i] = (s[i] & 15) | ((s[16 + i] & 15) << 4);
            dst[32 * c + 16 + i] = (s[i] >> 4) | (s[16 + i] & 0xf0);
        }
    }
}

impl CudaBackend {
    /// `y [t, n] = x [t, k] W^T + b` for a weight of one of this module's types.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn q_linear(
        &self,
        x: u64,
        t: usize,
        k: usize,
        w: &CudaWeight,
        bias: Option<&CudaWeight>,
        y: u64,
        n: usize,
    ) -> Result<()> {
        let stem = stem(w.dtype).ok_or_else(|| unsupported("linear", w))?;
        if !k.is_multiple_of(w.dtype.block_size()) {
            return Err(shape_err(
                "linear",
                format!("{}: k = {k} is not a whole number of blocks", w.name),
            ));
        }
        if t == 0 || n == 0 {
            return Ok(());
        }
        let (bp, bt) = match bias {
            Some(b) => (self.ptr(&b.buf), b.dtype.id() as i32),
            None => (0, 0),
        };
        let nt = match t {
            1 => 1,
            2..=4 => 4,
            _ => 8,
        };
        let name = format!("qgemv_{stem}_n{nt}");
        self.launch(
            &name,
            (n.div_ceil(ROWS_PER_BLOCK) as u32, t.div_ceil(nt) as u32, 1),
            BLOCK,
            &[
                A::P(x),
                A::I(t as i32),
                A::I(k as i32),
                A::P(self.ptr(&w.buf)),
                A::L(units(w)),
                A::P(bp),
                A::I(bt),
                A::P(y),
                A::I(n as i32),
            ],
        )
    }

    /// Rows `ids` (already on the device in `idb`, checked against `vocab`) of a table of one
    /// of this module's types into `out` `[ids, d]`.
    pub(crate) fn q_embed(
        &self,
        table: &CudaWeight,
        idb: u64,
        rows: usize,
        vocab: usize,
        out: u64,
        d: usize,
    ) -> Result<()> {
        let stem = stem(table.dtype).ok_or_else(|| unsupported("embed", table))?;
        let upr = d / 32;
        if rows == 0 || upr == 0 {
            return Ok(());
        }
        self.launch(
            &format!("qembed_{stem}"),
            (upr.div_ceil(BLOCK as usize) as u32, rows as u32, 1),
            BLOCK,
            &[
                A::P(self.ptr(&table.buf)),
                A::L(units(table)),
                A::P(idb),
                A::I(vocab.min(i32::MAX as usize) as i32),
                A::P(out),
                A::I(d as i32),
            ],
        )
    }

    /// Whether the MoE block must take this module's path: some expert tensor has one of its
    /// types.
    pub(crate) fn q_moe_wanted(w: &MoeWeights<CudaWeight>) -> bool {
        [&w.gate, &w.up, &w.down].iter().any(|m| supported(m.dtype))
    }

    /// The expert products of the MoE block after routing: per (token, slot) pair gate+up with
    /// SwiGLU into `h`, then down with the routing weights into `y` `[t, d_model]`. `ids` and
    /// `wts` hold the chosen experts and weights `[t, k]`. Shapes are checked by the caller.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn q_moe_experts(
        &self,
        x: u64,
        t: usize,
        k: usize,
        d_model: usize,
        n_ff: usize,
        w: &MoeWeights<CudaWeight>,
        ids: u64,
        wts: u64,
        y: u64,
    ) -> Result<()> {
        let gu = moe_stem(w.gate.dtype).ok_or_else(|| unsupported("moe", &w.gate))?;
        if w.up.dtype != w.gate.dtype {
            // One kernel reads gate and up together; mixed types never come out of llama.cpp's
            // rules (both get the file's default type).
            return Err(unsupported("moe", &w.up));
        }
        let dn = moe_stem(w.down.dtype).ok_or_else(|| unsupported("moe", &w.down))?;
        if !d_model.is_multiple_of(w.gate.dtype.block_size())
            || !n_ff.is_multiple_of(w.down.dtype.block_size())
        {
            return Err(shape_err(
                "moe",
                format!("d_model {d_model} / n_ff {n_ff} are not whole numbers of blocks"),
            ));
        }
        if t == 0 {
            return Ok(());
        }
        let pairs = t * k;
        let h = self.scratch(pairs * n_ff * 4)?;
        let bias = |b: &CudaWeight| [A::P(self.ptr(&b.buf)), A::I(b.dtype.id() as i32)];
        let [gb, gbt] = bias(&w.gate_bias);
        let [ub, ubt] = bias(&w.up_bias);
        let [db, dbt] = bias(&w.down_bias);
        self.launch(
            &format!("qmoe_gate_up_{gu}"),
            (n_ff.div_ceil(ROWS_PER_BLOCK) as u32, pairs as u32, 1),
            BLOCK,
            &[
                A::P(x),
                A::I(d_model as i32),
                A::P(self.ptr(&w.gate.buf)),
                A::L(units(&w.gate)),
                A::P(self.ptr(&w.up.buf)),
                A::L(units(&w.up)),
                gb,
                gbt,
                ub,
                ubt,
                A::P(ids),
                A::I(k as i32),
                A::I(n_ff as i32),
                A::P(h.ptr),
            ],
        )?;
        self.launch(
            &format!("qmoe_down_{dn}"),
            (d_model.div_ceil(ROWS_PER_BLOCK) as u32, t as u32, 1),
            BLOCK,
            &[
                A::P(h.ptr),
                A::I(n_ff as i32),
                A::P(self.ptr(&w.down.buf)),
                A::L(units(&w.down)),
                db,
                dbt,
                A::P(ids),
                A::P(wts),
                A::I(k as i32),
                A::I(d_model as i32),
                A::P(y),
            ],
        )
    }
}

fn unsupported(op: &'static str, w: &CudaWeight) -> BackendError {
    BackendError::UnsupportedType {
        op,
        name: w.name.clone(),
        dtype: w.dtype,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ggml's IQ4_NL levels (a copy, so the decoder below does not share code with the crate
    /// that wrote the blocks).
    const KV: [i8; 16] = [
        -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
    ];

    fn f16(b: &[u8]) -> f32 {
        gptoss_quant_f16(u16::from_le_bytes([b[0], b[1]]))
    }

    fn gptoss_quant_f16(h: u16) -> f32 {
        let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
        let e = ((h >> 10) & 31) as i32;
        let m = (h & 1023) as f32;
        sign * match e {
            0 => m * 2f32.powi(-24),
            31 => f32::NAN,
            _ => (1.0 + m / 1024.0) * 2f32.powi(e - 15),
        }
    }

    /// Decode the device layout on the host exactly as `load_unit` / `decode_word` do.
    fn decode(t: GgmlType, dev: &[u8], nu: usize) -> Vec<f32> {
        let (q, tail) = dev.split_at(nu * 16);
        let u32_at =
            |b: &[u8], i: usize| u32::from_le_bytes(b[4 * i..4 * i + 4].try_into().unwrap());
        let mut y = vec![0f32; nu * 32];
        for u in 0..nu {
            let (sa, sb, ma, mb);
            let mut h0 = 0u32;
            let mut h1 = 0u32;
            match t {
                GgmlType::Q4_0 | GgmlType::IQ4_NL => {
                    let d = f16(&tail[2 * u..]);
                    let m = if t == GgmlType::Q4_0 { -8.0 * d } else { 0.0 };
                    (sa, sb, ma, mb) = (d, d, m, m);
                }
                GgmlType::Q4_1 => {
                    (sa, ma) = (f16(&tail[4 * u..]), f16(&tail[4 * u + 2..]));
                    (sb, mb) = (sa, ma);
                }
                GgmlType::Q5_0 => {
                    h0 = u32_at(tail, u);
                    let d = f16(&tail[nu * 4 + 2 * u..]);
                    (sa, sb, ma, mb) = (d, d, -16.0 * d, -16.0 * d);
                }
                GgmlType::Q5_1 => {
                    h0 = u32_at(tail, u);
                    let o = nu * 4 + 4 * u;
                    (sa, ma) = (f16(&tail[o..]), f16(&tail[o + 2..]));
                    (sb, mb) = (sa, ma);
                }
                GgmlType::Q4_K | GgmlType::Q5_K => {
                    let mut hdr = tail;
                    if t == GgmlType::Q5_K {
                        h0 = u32_at(tail, u);
                        hdr = &tail[nu * 4..];
                    }
                    let hd = &hdr[16 * (u / 8)..16 * (u / 8) + 16];
                    let (d, dmin) = (f16(hd), f16(&hd[2..]));
                    let s = &hd[4..16];
                    let j = u % 8;
                    let (sc, mn) = if j < 4 {
                        (s[j] & 63, s[j + 4] & 63)
                    } else {
                        (
                            (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4),
                            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
                        )
                    };
                    sa = d * sc as f32;
                    ma = -(dmin * mn as f32);
                    (sb, mb) = (sa, ma);
                }
                GgmlType::Q6_K => {
                    let h = u64::from_le_bytes(tail[8 * u..8 * u + 8].try_into().unwrap());
                    (h0, h1) = (h as u32, (h >> 32) as u32);
                    let sc = &tail[nu * 8 + 2 * u..];
                    let d = f16(&tail[nu * 10 + 2 * (u / 8)..]);
                    sa = d * (sc[0] as i8) as f32;
                    sb = d * (sc[1] as i8) as f32;
                    (ma, mb) = (-32.0 * sa, -32.0 * sb);
                }
                GgmlType::IQ4_XS => {
                    let hd = &tail[8 * (u / 8)..];
                    let d = f16(hd);
                    let sh = u16::from_le_bytes([hd[2], hd[3]]) as u32;
                    let ib = u % 8;
                    let ls = ((hd[4 + ib / 2] as u32 >> (4 * (ib % 2))) & 15)
                        | (((sh >> (2 * ib)) & 3) << 4);
                    sa = d * (ls as i32 - 32) as f32;
                    (sb, ma, mb) = (sa, 0.0, 0.0);
                }
                _ => unreachable!("not a type of this module"),
            }
            for i in 0..16 {
                let byte = q[16 * u + i];
                let (mut a, mut b) = ((byte & 15) as u32, (byte >> 4) as u32);
                match t {
                    GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q5_K => {
                        a |= ((h0 >> i) & 1) << 4;
                        b |= ((h0 >> (16 + i)) & 1) << 4;
                    }
                    GgmlType::Q6_K => {
                        a |= ((h0 >> (2 * i)) & 3) << 4;
                        b |= ((h1 >> (2 * i)) & 3) << 4;
                    }
                    _ => {}
                }
                let (fa, fb) = if matches!(t, GgmlType::IQ4_NL | GgmlType::IQ4_XS) {
                    (KV[a as usize] as f32, KV[b as usize] as f32)
                } else {
                    (a as f32, b as f32)
                };
                y[32 * u + i] = sa * fa + ma;
                y[32 * u + 16 + i] = sb * fb + mb;
            }
        }
        y
    }

    #[test]
    fn relayout_decodes_like_the_reference_dequantizer() {
        // Deterministic pseudo-random values (an LCG); the reference is the quant crate.
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        let n = 256 * 12;
        let x: Vec<f32> = (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 3.0
            })
            .collect();
        for t in [
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
            GgmlType::Q4_K,
            GgmlType::Q5_K,
            GgmlType::Q6_K,
            GgmlType::IQ4_NL,
            GgmlType::IQ4_XS,
        ] {
            let mut bytes = vec![0u8; gptoss_quant::row_size(t, n).unwrap()];
            gptoss_quant::quantize(t, &x, &mut bytes).unwrap();
            let mut want = vec![0f32; n];
            gptoss_quant::dequantize(t, &bytes, &mut want).unwrap();
            let dev = relayout(t, &bytes);
            assert_eq!(dev.len(), bytes.len(), "{t:?}: size changed");
            let got = decode(t, &dev, n / 32);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() <= 1e-5 * w.abs().max(1.0),
                    "{t:?} element {i}: {g} vs {w}"
                );
            }
        }
    }
}
