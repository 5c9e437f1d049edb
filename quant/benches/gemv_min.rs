//! Q4_K / Q6_K x Q8_K GEMV, ours beside candle-core, timed as the minimum over many short runs:
//! on a shared machine (other processes on the same cores) criterion's means move by 2x between
//! runs, while the fastest of a few thousand ~20 us runs, each kernel interleaved with the
//! others, repeats to ~1 %. 256 KiB of weights (L2-resident): the kernels' arithmetic cost.
//! `cargo bench -p gptoss-quant --bench gemv_min` (REPS=n sets the runs per kernel, default 3000).

use std::hint::black_box;
use std::time::Instant;

use candle_core::quantized::k_quants::{BlockQ4K, BlockQ6K, GgmlType as CandleType};
use gptoss_quant::{Dispatch, GgmlType, quantize, row_size, vec_dot_type, vec_dot_with};

type Kernel = Box<dyn Fn() -> f32>;

fn data(n: usize) -> Vec<f32> {
    // The same values as the criterion bench (`quant.rs`).
    (0..n)
        .map(|i| {
            ((i as f32 * 0.37).sin() + 0.3 * (i as f32 * 1.7).cos()) * (1.0 + (i / 256 % 7) as f32)
        })
        .collect()
}

/// Our GEMV of `wty` over `bytes` of weights (one quantized row repeated) with dispatch `d`.
fn ours(wty: GgmlType, d: Dispatch, k: usize, bytes: usize, x: &[f32]) -> (String, usize, Kernel) {
    let aty = vec_dot_type(wty);
    let row = row_size(wty, k).unwrap();
    let rows = bytes / row;
    let mut one = vec![0u8; row];
    quantize(wty, x, &mut one).unwrap();
    let w: Vec<u8> = one.iter().copied().cycle().take(row * rows).collect();
    let mut a = vec![0u8; row_size(aty, k).unwrap()];
    quantize(aty, x, &mut a).unwrap();
    let f = move || {
        let mut acc = 0.0f32;
        for r in w.chunks_exact(row) {
            acc += vec_dot_with(d, wty, r, aty, &a, k).unwrap();
        }
        acc
    };
    (format!("ours-{d:?}/{wty}"), row * rows, Box::new(f))
}

/// candle-core's `vec_dot` over the same shape.
fn candle<T: CandleType + 'static>(
    name: &str,
    k: usize,
    bytes: usize,
    x: &[f32],
) -> (String, usize, Kernel) {
    let mut one = vec![T::zeros(); k / T::BLCK_SIZE];
    T::from_float(x, &mut one);
    let per = k / T::BLCK_SIZE;
    let rows = bytes / (per * std::mem::size_of::<T>());
    let w: Vec<T> = (0..rows).flat_map(|_| one.iter().cloned()).collect();
    let mut a = vec![T::VecDotType::zeros(); k / T::VecDotType::BLCK_SIZE];
    T::VecDotType::from_float(x, &mut a);
    let f = move || {
        let mut acc = 0.0f32;
        for r in w.chunks_exact(per) {
            acc += T::vec_dot(k, r, &a);
        }
        acc
    };
    (
        format!("candle/{name}"),
        rows * per * std::mem::size_of::<T>(),
        Box::new(f),
    )
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is not supported (the set is small).
    let (k, bytes) = (4096, 256 << 10);
    let reps: usize = std::env::var("REPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3000);
    let x = data(k);
    let mut kernels = Vec::new();
    for wty in [GgmlType::Q4_K, GgmlType::Q6_K] {
        for d in Dispatch::ALL.into_iter().filter(|d| d.is_available()) {
            kernels.push(ours(wty, d, k, bytes, &x));
        }
    }
    kernels.push(candle::<BlockQ4K>("Q4_K", k, bytes, &x));
    kernels.push(candle::<BlockQ6K>("Q6_K", k, bytes, &x));
    let mut times = vec![Vec::with_capacity(reps); kernels.len()];
    for _ in 0..reps {
        for (t, (_, _, f)) in times.iter_mut().zip(&kernels) {
            let start = Instant::now();
            black_box(f());
            t.push(start.elapsed().as_secs_f64());
        }
    }
    println!(
        "gemv_min: k {k}, {} KiB of weights, {reps} runs each",
        bytes >> 10
    );
    for ((name, b, _), t) in kernels.iter().zip(&mut times) {
        t.sort_by(f64::total_cmp);
        let gib = |s: f64| *b as f64 / s / (1u64 << 30) as f64;
        println!(
            "{name:22} fastest {:6.2} GiB/s   p10 {:6.2}   median {:6.2}",
            gib(t[0]),
            gib(t[t.len() / 10]),
            gib(t[t.len() / 2])
        );
    }
}
