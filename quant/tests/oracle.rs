//! gguf-py 0.19.0 as the oracle: dequantize bit-identical on random blocks for every type it
//! implements, and quantize bit-identical for every type it can quantize. Fails loudly when the
//! oracle is missing.

mod common;

use common::*;
use gptoss_quant::{GgmlType, dequantize, quantize};

/// Every type gguf-py 0.19.0 dequantizes (its `_type_traits` plus F32/F16).
const GGUF_PY_DEQUANT: [GgmlType; 25] = {
    use GgmlType::*;
    [
        F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, TQ1_0, TQ2_0,
        MXFP4, NVFP4, IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ1_S, IQ1_M, IQ4_NL,
    ]
};

/// Every type gguf-py 0.19.0 quantizes.
const GGUF_PY_QUANT: [GgmlType; 10] = {
    use GgmlType::*;
    [F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, TQ1_0, TQ2_0, MXFP4]
};

#[test]
fn dequantize_matches_gguf_py_bit_for_bit() {
    let mut r = rng("dequantize_matches_gguf_py");
    let mut types = GGUF_PY_DEQUANT.to_vec();
    types.push(GgmlType::IQ4_XS);
    let mut jobs = Vec::new();
    for &ty in &types {
        // 4 rows of 1024 elements: enough blocks of every kind to hit every code path.
        let n_per_row = 1024;
        let nb = 4 * n_per_row / ty.block_size();
        jobs.push(Job {
            op: "dequantize",
            ty,
            n_per_row,
            input: random_blocks(ty, nb, &mut r),
        });
    }
    let outs = run_oracle(&jobs);
    for (job, out) in jobs.iter().zip(outs) {
        let want = bytes_to_f32(&out);
        let mut got = vec![0.0f32; 4 * job.n_per_row];
        dequantize(job.ty, &job.input, &mut got).unwrap();
        assert_eq!(want.len(), got.len(), "{}", job.ty);
        let mut nonzero = 0;
        for (i, (w, g)) in want.iter().zip(&got).enumerate() {
            assert!(
                w.is_finite(),
                "{}: oracle gave non-finite {w} at {i}",
                job.ty
            );
            assert_eq!(
                w.to_bits(),
                g.to_bits(),
                "{} element {i}: gguf-py {w}, ours {g}",
                job.ty
            );
            nonzero += (*w != 0.0) as usize;
        }
        assert!(
            nonzero > got.len() / 4,
            "{}: the test data decodes to mostly zeros",
            job.ty
        );
    }
}

#[test]
fn quantize_matches_gguf_py_bit_for_bit() {
    let mut r = rng("quantize_matches_gguf_py");
    let n_per_row = 1024;
    let x = random_f32(8 * n_per_row, &mut r);
    let input = f32_to_bytes(&x);
    let jobs: Vec<Job> = GGUF_PY_QUANT
        .iter()
        .map(|&ty| Job {
            op: "quantize",
            ty,
            n_per_row,
            input: input.clone(),
        })
        .collect();
    let outs = run_oracle(&jobs);
    for (job, want) in jobs.iter().zip(outs) {
        let mut got = vec![0u8; gptoss_quant::row_size(job.ty, x.len()).unwrap()];
        quantize(job.ty, &x, &mut got).unwrap();
        assert_eq!(want.len(), got.len(), "{}", job.ty);
        if let Some(i) = want.iter().zip(&got).position(|(a, b)| a != b) {
            let ts = job.ty.type_size();
            let blk = i / ts;
            panic!(
                "{}: first differing byte {i} (block {blk}, offset {}): gguf-py {:02x?} ours {:02x?}",
                job.ty,
                i % ts,
                &want[blk * ts..blk * ts + ts],
                &got[blk * ts..blk * ts + ts]
            );
        }
    }
}
