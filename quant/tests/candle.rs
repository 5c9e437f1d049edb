//! candle-core's quantized types as a second, independent implementation: our decoders agree bit
//! for bit with its `to_float` for all twelve types it has, and our quantizers with its
//! `from_float` where candle follows today's ggml reference exactly (Q4_0, Q4_1, Q5_0, Q5_1,
//! Q8_0). candle's Q2_K/Q4_K/Q5_K/Q6_K quantizers port an older ggml (make_qkx1_quants, the
//! three-pass make_qx_quants), its Q3_K and Q8_K round halfway cases away from zero where ggml's
//! `nearest_int` rounds them to even (rare, seed-dependent differences), and its Q8_1 computes `s`
//! in f16 arithmetic; for all of those ggml's own C output is the oracle (tests/ggml_ref.rs).

mod common;

use std::borrow::Cow;

use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::{Device, Tensor};
use common::*;
use gptoss_quant::{GgmlType, dequantize, quantize, row_size};

const PAIRS: [(GgmlType, GgmlDType); 12] = [
    (GgmlType::Q4_0, GgmlDType::Q4_0),
    (GgmlType::Q4_1, GgmlDType::Q4_1),
    (GgmlType::Q5_0, GgmlDType::Q5_0),
    (GgmlType::Q5_1, GgmlDType::Q5_1),
    (GgmlType::Q8_0, GgmlDType::Q8_0),
    (GgmlType::Q8_1, GgmlDType::Q8_1),
    (GgmlType::Q2_K, GgmlDType::Q2K),
    (GgmlType::Q3_K, GgmlDType::Q3K),
    (GgmlType::Q4_K, GgmlDType::Q4K),
    (GgmlType::Q5_K, GgmlDType::Q5K),
    (GgmlType::Q6_K, GgmlDType::Q6K),
    (GgmlType::Q8_K, GgmlDType::Q8K),
];

fn candle_dequantize(dt: GgmlDType, bytes: &[u8], n: usize) -> Vec<f32> {
    let storage = QStorage::from_data(Cow::Borrowed(bytes), &Device::Cpu, dt).unwrap();
    let qt = QTensor::new(storage, (n,)).unwrap();
    qt.dequantize(&Device::Cpu)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

fn candle_quantize(dt: GgmlDType, x: &[f32]) -> Vec<u8> {
    let t = Tensor::from_slice(x, (x.len(),), &Device::Cpu).unwrap();
    QTensor::quantize(&t, dt)
        .unwrap()
        .data()
        .unwrap()
        .into_owned()
}

#[test]
fn decoders_agree_with_candle() {
    let mut r = rng("decoders_agree_with_candle");
    for (ty, dt) in PAIRS {
        let n = 2048;
        let b = random_blocks(ty, n / ty.block_size(), &mut r);
        let want = candle_dequantize(dt, &b, n);
        let mut got = vec![0.0f32; n];
        dequantize(ty, &b, &mut got).unwrap();
        for (i, (w, g)) in want.iter().zip(&got).enumerate() {
            assert_eq!(
                w.to_bits(),
                g.to_bits(),
                "{ty} element {i}: candle {w}, ours {g}"
            );
        }
    }
}

#[test]
fn quantizers_agree_with_candle() {
    let mut r = rng("quantizers_agree_with_candle");
    let n = 8192;
    let x = random_f32(n, &mut r);
    let mut report = Vec::new();
    let same_algorithm = [
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
    ];
    for (ty, dt) in PAIRS
        .into_iter()
        .filter(|(t, _)| same_algorithm.contains(t))
    {
        let want = candle_quantize(dt, &x);
        let mut got = vec![0u8; row_size(ty, n).unwrap()];
        quantize(ty, &x, &mut got).unwrap();
        assert_eq!(want.len(), got.len(), "{ty}");
        let ts = ty.type_size();
        let differing = want
            .chunks(ts)
            .zip(got.chunks(ts))
            .filter(|(a, b)| a != b)
            .count();
        report.push(format!(
            "{ty}: {differing} of {} blocks differ",
            n / ty.block_size()
        ));
        if differing > 0 {
            let i = want.iter().zip(&got).position(|(a, b)| a != b).unwrap();
            let blk = i / ts;
            report.push(format!(
                "  first at block {blk} byte {}: candle {:02x?}\n  ours {:02x?}",
                i % ts,
                &want[blk * ts..blk * ts + ts],
                &got[blk * ts..blk * ts + ts]
            ));
        }
    }
    let text = report.join("\n");
    eprintln!("{text}");
    assert!(!text.contains("blocks differ\n  first"), "{text}");
    assert!(report.iter().all(|l| l.contains(" 0 of ")), "{text}");
}
