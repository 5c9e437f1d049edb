//! Helpers shared by the FP4 model tests: reference decoders independent of the code under test
//! and random ggml MXFP4 / MXFP8 data.
#![allow(dead_code)] // each test binary uses its own subset

use gptoss_kernels_cuda::fp4::pack;
use rand::rngs::StdRng;
use rand::{Rng, RngCore};

/// E4M3 (OCP e4m3fn) from its definition, independent of the code under test.
pub fn e4m3_ref(b: u8) -> f64 {
    let s = if b & 0x80 != 0 { -1.0 } else { 1.0 };
    let e = ((b >> 3) & 15) as i32;
    let m = (b & 7) as f64;
    if e == 0 {
        s * m * 2f64.powi(-9)
    } else {
        s * (8.0 + m) * 2f64.powi(e - 10)
    }
}

/// Random ggml MXFP4 blocks for `rows x k`, scale bytes in `lo..=hi`.
pub fn random_mxfp4(rng: &mut StdRng, rows: usize, k: usize, lo: u8, hi: u8) -> Vec<u8> {
    let mut v = Vec::new();
    for _ in 0..rows * k / 32 {
        v.push(rng.random_range(lo..=hi));
        let mut qs = [0u8; 16];
        rng.fill_bytes(&mut qs);
        v.extend_from_slice(&qs);
    }
    v
}

pub fn dequant_ref(ggml: &[u8], n: usize) -> Vec<f32> {
    let mut out = vec![0f32; n];
    gptoss_quant::dequantize(gptoss_quant::GgmlType::MXFP4, ggml, &mut out).expect("dequantize");
    out
}

/// Random MXFP8 rows (E4M3 codes without NaN, E8M0 scales near 2^0).
pub fn random_e4m3_rows(rng: &mut StdRng, n: usize, k: usize) -> pack::Mxfp8Rows {
    let q: Vec<u8> = (0..n * k)
        .map(|_| {
            loop {
                let b: u8 = rng.random();
                if b & 0x7f != 0x7f {
                    break b;
                }
            }
        })
        .collect();
    let s: Vec<u8> = (0..n * k / 32)
        .map(|_| rng.random_range(118..=136))
        .collect();
    pack::Mxfp8Rows { q, s, k }
}
