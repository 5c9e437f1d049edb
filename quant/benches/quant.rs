//! One-core throughput: dequantize and dot product per type, beside candle-core where it has the
//! type, and memcpy / streaming-read bandwidth on buffers of the same size for reference.
//!
//! Run: `CARGO_TARGET_DIR=... cargo bench -p gptoss-quant --bench quant`
//! (add `-- dequant/`, `-- gemv/` ... to filter). Set `QUANT_BENCH_QUICK=1` for short runs.

use std::borrow::Cow;
use std::hint::black_box;
use std::time::Duration;

use candle_core::Device;
use candle_core::quantized::k_quants::{
    BlockQ4_0, BlockQ4K, BlockQ6K, BlockQ8_0, BlockQ8K, GgmlType as CandleType,
};
use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use gptoss_quant::{
    Dispatch, GgmlType, dequantize, quantize, row_size, vec_dot_tile_with, vec_dot_type,
    vec_dot_with,
};

fn data(n: usize) -> Vec<f32> {
    // Deterministic, varied magnitudes; the values do not change the speed of these kernels.
    (0..n)
        .map(|i| {
            ((i as f32 * 0.37).sin() + 0.3 * (i as f32 * 1.7).cos()) * (1.0 + (i / 256 % 7) as f32)
        })
        .collect()
}

fn config() -> Criterion {
    let quick = std::env::var("QUANT_BENCH_QUICK").is_ok();
    Criterion::default()
        .warm_up_time(Duration::from_millis(if quick { 200 } else { 1000 }))
        .measurement_time(Duration::from_millis(if quick { 600 } else { 3000 }))
        .sample_size(if quick { 10 } else { 30 })
}

fn random_codes(ty: GgmlType, n: usize) -> Vec<u8> {
    // Quantize where we can; otherwise random code bytes with a sane f16 scale at offset 0 are
    // enough for speed (the i-quant tables are indexed the same way whatever the codes).
    let mut out = vec![0u8; row_size(ty, n).unwrap()];
    if quantize(ty, &data(n), &mut out).is_ok() {
        return out;
    }
    let mut s = 0x9e37_79b9u32;
    for b in out.iter_mut() {
        s = s.wrapping_mul(1664525).wrapping_add(1013904223);
        *b = (s >> 24) as u8;
    }
    let ts = ty.type_size();
    for blk in out.chunks_exact_mut(ts) {
        blk[0..2].copy_from_slice(&half::f16::from_f32(0.01).to_bits().to_le_bytes());
    }
    out
}

const DEQUANT_TYPES: [GgmlType; 27] = {
    use GgmlType::*;
    [
        F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K, IQ2_XXS,
        IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ1_S, IQ1_M, IQ4_NL, IQ4_XS, TQ1_0, TQ2_0, MXFP4, NVFP4,
    ]
};

fn candle_dtype(ty: GgmlType) -> Option<GgmlDType> {
    use GgmlType::*;
    Some(match ty {
        F16 => GgmlDType::F16,
        BF16 => GgmlDType::BF16,
        Q4_0 => GgmlDType::Q4_0,
        Q4_1 => GgmlDType::Q4_1,
        Q5_0 => GgmlDType::Q5_0,
        Q5_1 => GgmlDType::Q5_1,
        Q8_0 => GgmlDType::Q8_0,
        Q8_1 => GgmlDType::Q8_1,
        Q2_K => GgmlDType::Q2K,
        Q3_K => GgmlDType::Q3K,
        Q4_K => GgmlDType::Q4K,
        Q5_K => GgmlDType::Q5K,
        Q6_K => GgmlDType::Q6K,
        Q8_K => GgmlDType::Q8K,
        _ => return None,
    })
}

/// Dequantize 256 Ki elements (output 1 MiB: stays in L2/L3, so this measures the decoder).
fn bench_dequant(c: &mut Criterion) {
    let n = 256 * 1024;
    let mut g = c.benchmark_group("dequant");
    g.throughput(Throughput::Elements(n as u64));
    for ty in DEQUANT_TYPES {
        let src = random_codes(ty, n);
        let mut dst = vec![0.0f32; n];
        g.bench_with_input(BenchmarkId::new("ours", ty.name()), &src, |b, src| {
            b.iter(|| dequantize(ty, black_box(src), &mut dst).unwrap())
        });
        if let Some(dt) = candle_dtype(ty) {
            let storage = QStorage::from_data(Cow::Borrowed(&src), &Device::Cpu, dt).unwrap();
            let qt = QTensor::new(storage, (n,)).unwrap();
            g.bench_with_input(BenchmarkId::new("candle", ty.name()), &qt, |b, qt| {
                b.iter(|| black_box(qt.dequantize(&Device::Cpu).unwrap()))
            });
        }
    }
    g.finish();
}

/// A matrix-vector product over a weight matrix bigger than the last-level cache: k = 4096,
/// 64 MiB of weights; throughput counts weight bytes, so it compares directly with memcpy.
fn bench_gemv(c: &mut Criterion) {
    let pairs = [
        GgmlType::MXFP4,
        GgmlType::Q8_0,
        GgmlType::Q4_K,
        GgmlType::Q6_K,
        GgmlType::Q4_0,
        GgmlType::IQ4_XS,
    ];
    gemv_group(c, "gemv", 64 << 20, &pairs);
}

/// The same products on 256 KiB of weights, which stay in L2: the kernels' arithmetic cost,
/// with less of the noise a shared machine's memory bandwidth adds to the 64 MiB `gemv`.
fn bench_gemv_l2(c: &mut Criterion) {
    let pairs = [
        GgmlType::MXFP4,
        GgmlType::Q8_0,
        GgmlType::Q4_K,
        GgmlType::Q6_K,
    ];
    gemv_group(c, "gemv_l2", 256 << 10, &pairs);
}

/// Rows of k = 4096 filling `bytes` of weights, each dotted with one activation row, for every
/// available dispatch and candle-core.
fn gemv_group(c: &mut Criterion, name: &str, bytes: usize, pairs: &[GgmlType]) {
    let k = 4096;
    let mut g = c.benchmark_group(name);
    for &wty in pairs {
        let aty = vec_dot_type(wty);
        let row = row_size(wty, k).unwrap();
        let rows = bytes / row;
        let one = random_codes(wty, k);
        let w: Vec<u8> = one.iter().copied().cycle().take(row * rows).collect();
        let mut a = vec![0u8; row_size(aty, k).unwrap()];
        quantize(aty, &data(k), &mut a).unwrap();
        g.throughput(Throughput::Bytes((row * rows) as u64));
        for d in Dispatch::ALL.into_iter().filter(|d| d.is_available()) {
            g.bench_function(BenchmarkId::new(format!("ours-{d:?}"), wty.name()), |b| {
                b.iter(|| {
                    let mut acc = 0.0f32;
                    for r in w.chunks_exact(row) {
                        acc += vec_dot_with(d, wty, r, aty, &a, k).unwrap();
                    }
                    black_box(acc)
                })
            });
        }
        candle_gemv(&mut g, wty, k, rows);
    }
    g.finish();
}

fn candle_rows<T: CandleType>(k: usize, rows: usize) -> (Vec<T>, Vec<T::VecDotType>) {
    let x = data(k);
    let mut one = vec![T::zeros(); k / T::BLCK_SIZE];
    T::from_float(&x, &mut one);
    let w: Vec<T> = (0..rows).flat_map(|_| one.iter().cloned()).collect();
    let mut a = vec![T::VecDotType::zeros(); k / T::VecDotType::BLCK_SIZE];
    T::VecDotType::from_float(&x, &mut a);
    (w, a)
}

fn candle_gemv_typed<T: CandleType>(
    g: &mut criterion::BenchmarkGroup<criterion::measurement::WallTime>,
    name: &str,
    k: usize,
    rows: usize,
) {
    let (w, a) = candle_rows::<T>(k, rows);
    let per_row = k / T::BLCK_SIZE;
    g.bench_function(BenchmarkId::new("candle", name), |b| {
        b.iter(|| {
            let mut acc = 0.0f32;
            for r in w.chunks_exact(per_row) {
                acc += T::vec_dot(k, r, &a);
            }
            black_box(acc)
        })
    });
}

fn candle_gemv(
    g: &mut criterion::BenchmarkGroup<criterion::measurement::WallTime>,
    wty: GgmlType,
    k: usize,
    rows: usize,
) {
    match wty {
        GgmlType::Q8_0 => candle_gemv_typed::<BlockQ8_0>(g, "Q8_0", k, rows),
        GgmlType::Q4_0 => candle_gemv_typed::<BlockQ4_0>(g, "Q4_0", k, rows),
        GgmlType::Q4_K => candle_gemv_typed::<BlockQ4K>(g, "Q4_K", k, rows),
        GgmlType::Q6_K => candle_gemv_typed::<BlockQ6K>(g, "Q6_K", k, rows),
        _ => {}
    }
    let _ = std::marker::PhantomData::<BlockQ8K>;
}

/// Reference bandwidths on 64 MiB: memcpy (bytes copied per second) and a streaming read.
fn bench_memory(c: &mut Criterion) {
    let n = 64 << 20;
    let src: Vec<u8> = (0..n).map(|i| i as u8).collect();
    let mut dst = vec![0u8; n];
    let mut g = c.benchmark_group("memory");
    g.throughput(Throughput::Bytes(n as u64));
    g.bench_function("memcpy_64MiB", |b| {
        b.iter(|| dst.copy_from_slice(black_box(&src)))
    });
    g.bench_function("read_sum_64MiB", |b| {
        b.iter(|| {
            let words = src
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap()));
            black_box(words.fold(0u64, |a, v| a.wrapping_add(v)))
        })
    });
    g.finish();
}

/// Activation quantization (once per row in the CPU backend): 2880 values to Q8_0 and Q8_K.
fn bench_quantize_activation(c: &mut Criterion) {
    let mut g = c.benchmark_group("quantize_activation");
    for (ty, k) in [(GgmlType::Q8_0, 2880), (GgmlType::Q8_K, 2816)] {
        let x = data(k);
        let mut out = vec![0u8; row_size(ty, k).unwrap()];
        g.throughput(Throughput::Elements(k as u64));
        g.bench_function(ty.name(), |b| {
            b.iter(|| quantize(ty, black_box(&x), &mut out).unwrap())
        });
    }
    g.finish();
}

/// The prefill product: 256 weight rows of k = 2880 (in L2) times t activation rows, pair by
/// pair (`vec_dot`, what one-token-at-a-time prefill does) against the tiled `vec_dot_tile`.
/// Throughput counts multiply-adds.
fn bench_gemm(c: &mut Criterion) {
    let (k, rows) = (2880, 256);
    let mut g = c.benchmark_group("gemm");
    for wty in [GgmlType::MXFP4, GgmlType::Q8_0] {
        let aty = vec_dot_type(wty);
        let row = row_size(wty, k).unwrap();
        let one = random_codes(wty, k);
        let w: Vec<u8> = one.iter().copied().cycle().take(row * rows).collect();
        for t in [8usize, 64] {
            let acts: Vec<Vec<u8>> = (0..t)
                .map(|i| {
                    let x: Vec<f32> = data(k + i).split_off(i);
                    let mut a = vec![0u8; row_size(aty, k).unwrap()];
                    quantize(aty, &x, &mut a).unwrap();
                    a
                })
                .collect();
            let refs: Vec<&[u8]> = acts.iter().map(|a| a.as_slice()).collect();
            let mut out = vec![0.0f32; rows * t];
            g.throughput(Throughput::Elements((rows * t * k) as u64));
            for d in Dispatch::ALL.into_iter().filter(|d| d.is_available()) {
                let name = format!("{}/t{t}", wty.name());
                g.bench_function(BenchmarkId::new(format!("pairs-{d:?}"), &name), |b| {
                    b.iter(|| {
                        for (r, o) in w.chunks_exact(row).zip(out.chunks_exact_mut(t)) {
                            for (y, a) in o.iter_mut().zip(&refs) {
                                *y = vec_dot_with(d, wty, r, aty, a, k).unwrap();
                            }
                        }
                        black_box(&out);
                    })
                });
                g.bench_function(BenchmarkId::new(format!("tile-{d:?}"), &name), |b| {
                    b.iter(|| {
                        vec_dot_tile_with(d, wty, &w, rows, aty, &refs, k, &mut out).unwrap();
                        black_box(&out);
                    })
                });
            }
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_memory, bench_dequant, bench_gemv, bench_gemv_l2, bench_gemm,
        bench_quantize_activation
}
criterion_main!(benches);
