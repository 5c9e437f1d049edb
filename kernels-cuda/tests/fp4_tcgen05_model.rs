//! The sm_100a (tcgen05) FP4 path's staging, descriptors and tensor-memory scale layout, checked
//! through the CPU model of `tcgen05.mma ... kind::mxf8f6f4.block_scale` (`fp4::tcgen05`) on
//! fresh random data:
//!
//! - MXFP4 weights x E4M3 activations through stage -> descriptors -> scale copy -> MMA model:
//!   the f64 matmul of the dequantized values up to f32 accumulation between K blocks (every
//!   product is exact), weights dequantized by the ggml reference (gptoss-quant), activations by
//!   an independent E4M3 decoder here; shapes with partial row / slot tiles and a partial last
//!   K chunk.
//! - The same product through the sm_120 `mma.sync` fragment packing (`pack::gemm_model`) agrees:
//!   two independent packings of the same bytes.
//! - Negative controls: swapped LBO / SBO, a wrong scale-source stride and a wrong E2M1 nibble
//!   order are all caught.

use gptoss_kernels_cuda::fp4::{pack, tcgen05};
mod common;

use common::{dequant_ref, e4m3_ref, random_e4m3_rows, random_mxfp4};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn check(
    got: &[f32],
    wf: &[f32],
    act: &pack::Mxfp8Rows,
    idx: &[usize],
    rows: usize,
) -> Result<f64, String> {
    let k = act.k;
    let nkb = k / 32;
    let mut max_rel = 0f64;
    for (c, &a) in idx.iter().enumerate() {
        for r in 0..rows {
            let (mut want, mut mag) = (0f64, 0f64);
            for kk in 0..k {
                let xv =
                    e4m3_ref(act.q[a * k + kk]) * 2f64.powi(act.s[a * nkb + kk / 32] as i32 - 127);
                let p = wf[r * k + kk] as f64 * xv;
                want += p;
                mag += p.abs();
            }
            let g = got[c * rows + r] as f64;
            let bound = nkb as f64 * 2f64.powi(-24) * mag;
            if (g - want).abs() > bound {
                return Err(format!("row {r} col {c}: {g} vs {want} (bound {bound})"));
            }
            max_rel = max_rel.max((g - want).abs() / mag.max(f64::MIN_POSITIVE));
        }
    }
    Ok(max_rel)
}

#[test]
fn tcgen05_model_equals_the_f64_matmul_of_mxfp4_weights_and_e4m3_activations() {
    let mut rng = StdRng::seed_from_u64(0x00f4_0100);
    let cfg = tcgen05::Config::kernel().expect("kernel config");
    // (weight rows, K, activation rows, slots): one tile exactly; partial row tile and a
    // 3-block last chunk; two slot tiles and 9 K blocks; a single K block.
    for &(rows, k, n_act, cols) in &[
        (128usize, 128usize, 40usize, 32usize),
        (200, 224, 20, 13),
        (33, 288, 50, 70),
        (140, 32, 9, 5),
    ] {
        let ggml = random_mxfp4(&mut rng, rows, k, 110, 140);
        let dev = pack::relayout_mxfp4(&ggml);
        let w = pack::Mxfp4Device {
            bytes: &dev,
            rows,
            k,
        };
        let wf = dequant_ref(&ggml, rows * k);
        let act = random_e4m3_rows(&mut rng, n_act, k);
        let idx: Vec<usize> = (0..cols).map(|_| rng.random_range(0..n_act)).collect();
        let got = tcgen05::gemm_model(&w, &act, &idx, &cfg).expect("model");
        let rel = check(&got, &wf, &act, &idx, rows).unwrap_or_else(|e| panic!("{rows}x{k}: {e}"));
        // Cross-check against the independent mma.sync fragment packing of the same bytes.
        let other = pack::gemm_model(&w, &act, &idx).expect("mma.sync model");
        let mut worst = 0f64;
        for (a, b) in got.iter().zip(&other) {
            let scale = a.abs().max(b.abs()).max(1e-30) as f64;
            worst = worst.max((*a as f64 - *b as f64).abs() / scale);
        }
        assert!(
            worst < 1e-4 || got == other,
            "{rows}x{k}: models differ by {worst:.2e}"
        );
        eprintln!(
            "{rows}x{k} . {cols} slots: exact up to f32 accumulation (max |err| / sum|terms| {rel:.2e}), \
             agrees with the mma.sync model to {worst:.1e}"
        );
    }
}

#[test]
fn tcgen05_model_with_on_the_fly_mxfp8_activations_matches_f32() {
    // f32 activations quantized as fp4_quant_mxfp8 does, then the tcgen05 product, against the
    // f64 product of the f32 inputs: within the E4M3 rounding bound.
    let mut rng = StdRng::seed_from_u64(0x00f4_0101);
    let (rows, k, n) = (160usize, 192usize, 40usize);
    let ggml = random_mxfp4(&mut rng, rows, k, 118, 126);
    let dev = pack::relayout_mxfp4(&ggml);
    let w = pack::Mxfp4Device {
        bytes: &dev,
        rows,
        k,
    };
    let wf = dequant_ref(&ggml, rows * k);
    let x: Vec<f32> = (0..n * k)
        .map(|_| (rng.random::<f32>() - 0.5) * 2f32.powi(rng.random_range(-6..6)))
        .collect();
    let act = pack::quantize_mxfp8(&x, k).expect("quantize");
    let idx: Vec<usize> = (0..n).collect();
    let got = tcgen05::gemm_model(&w, &act, &idx, &tcgen05::Config::kernel().unwrap()).unwrap();
    let (mut num, mut den) = (0f64, 0f64);
    for c in 0..n {
        for r in 0..rows {
            let (mut want, mut bound) = (0f64, 0f64);
            for kk in 0..k {
                let xv = x[c * k + kk] as f64;
                let wv = wf[r * k + kk] as f64;
                want += wv * xv;
                let e = act.s[c * (k / 32) + kk / 32] as i32 - 127;
                bound += wv.abs() * (xv.abs() / 16.0 + 2f64.powi(e - 10));
            }
            let g = got[c * rows + r] as f64;
            bound += (k / 32) as f64 * 2f64.powi(-23) * want.abs().max(bound);
            assert!(
                (g - want).abs() <= bound,
                "row {r} col {c}: {g} vs {want} (bound {bound})"
            );
            num += (g - want).powi(2);
            den += want.powi(2);
        }
    }
    let nmse = num / den;
    assert!(nmse < 2e-2, "NMSE {nmse}");
    eprintln!("W4A8 through the tcgen05 model: NMSE {nmse:.2e} against f32 activations");
}

#[test]
fn tcgen05_model_catches_wrong_descriptors_and_packing() {
    let mut rng = StdRng::seed_from_u64(0x00f4_0102);
    let (rows, k, n) = (128usize, 128usize, 32usize);
    let ggml = random_mxfp4(&mut rng, rows, k, 118, 130);
    let dev = pack::relayout_mxfp4(&ggml);
    let w = pack::Mxfp4Device {
        bytes: &dev,
        rows,
        k,
    };
    let wf = dequant_ref(&ggml, rows * k);
    let act = random_e4m3_rows(&mut rng, n, k);
    let idx: Vec<usize> = (0..n).collect();
    let good = tcgen05::Config::kernel().unwrap();
    let ok = tcgen05::gemm_model(&w, &act, &idx, &good).unwrap();
    check(&ok, &wf, &act, &idx, rows).expect("the kernel's configuration is right");

    use tcgen05::SmemDesc;
    let swapped = SmemDesc {
        lbo: tcgen05::KERNEL_SBO as u32,
        sbo: tcgen05::KERNEL_LBO as u32,
        ..SmemDesc::kernel_operand()
    };
    let bad_sf = SmemDesc {
        sbo: 256,
        ..SmemDesc::kernel_scales()
    };
    let wrong_n = tcgen05::InstrDesc {
        n: 16,
        ..tcgen05::InstrDesc::kernel()
    };
    for (what, cfg) in [
        (
            "LBO / SBO swapped",
            tcgen05::Config {
                operand: swapped.encode().unwrap(),
                ..good
            },
        ),
        (
            "scale source stride 256",
            tcgen05::Config {
                scales: bad_sf.encode().unwrap(),
                ..good
            },
        ),
        (
            "N = 16 in the instruction descriptor",
            tcgen05::Config {
                idesc: wrong_n.encode().unwrap(),
                ..good
            },
        ),
    ] {
        let caught = match tcgen05::gemm_model(&w, &act, &idx, &cfg) {
            Err(_) => true,
            Ok(got) => check(&got, &wf, &act, &idx, rows).is_err(),
        };
        assert!(caught, "{what} was not caught");
    }
    // Nibble order: the padded block read back gives ggml's values; with the nibbles of each
    // byte swapped (the odd element low) it does not.
    let block = random_mxfp4(&mut rng, 1, 32, 127, 127);
    let want = dequant_ref(&block, 32);
    let qs: [u8; 16] = block[1..17].try_into().unwrap();
    let p = tcgen05::e2m1_padded(&qs);
    let value = |b: &[u8; 32], kk: usize| {
        let c = tcgen05::e2m1_padded_code(b, kk);
        gptoss_kernels_cuda::fp4::formats::e2m1_value(c) as f32
    };
    assert!((0..32).all(|kk| value(&p, kk) == want[kk]));
    let mut swapped_nibbles = p;
    for b in swapped_nibbles.iter_mut() {
        *b = b.rotate_left(4);
    }
    assert!(
        (0..32).any(|kk| value(&swapped_nibbles, kk) != want[kk]),
        "a swapped nibble order was not caught"
    );
}
