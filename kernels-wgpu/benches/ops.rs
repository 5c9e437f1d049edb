//! Timings of the wgpu kernels at GPT-OSS-20b shapes (batch-1 decode and a 128-token prefill):
//! `cargo bench -p gptoss-kernels-wgpu --bench ops`. Prints the adapter, then per operation the
//! mean time per call and the weight bytes streamed per second. On a CPU adapter (lavapipe) the
//! largest shapes are skipped unless `GPTOSS_BENCH_FULL=1`.

use std::time::Instant;

use gptoss_backend::{
    AttentionConfig, Backend, GgmlType, HostBytes, KvCacheConfig, MoeConfig, MoeWeights, WeightData,
};
use gptoss_kernels_wgpu::{WgpuBackend, WgpuOptions};

/// Deterministic pseudo-random bytes (xorshift), valid for every type used here: MXFP4 scale
/// bytes and Q8_0 scales are forced into a sane range.
fn bytes(dtype: GgmlType, numel: usize, seed: u64) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    match dtype {
        GgmlType::MXFP4 => {
            let mut v = Vec::with_capacity(numel / 32 * 17);
            for _ in 0..numel / 32 {
                v.push(118 + (next() % 4) as u8);
                for _ in 0..16 {
                    v.push(next() as u8);
                }
            }
            v
        }
        GgmlType::Q8_0 => {
            let mut v = Vec::with_capacity(numel / 32 * 34);
            for _ in 0..numel / 32 {
                v.extend_from_slice(&half::f16::from_f32(0.001).to_le_bytes());
                for _ in 0..32 {
                    v.push(next() as u8);
                }
            }
            v
        }
        GgmlType::F32 => (0..numel)
            .flat_map(|_| (((next() % 2001) as f32 - 1000.0) * 1e-4).to_le_bytes())
            .collect(),
        t => panic!("no generator for {t}"),
    }
}

fn w(name: &str, dtype: GgmlType, shape: &[usize], seed: u64) -> WeightData {
    WeightData {
        name: name.into(),
        dtype,
        shape: shape.to_vec(),
        bytes: HostBytes::from_vec(bytes(dtype, shape.iter().product(), seed)),
    }
}

fn time(g: &WgpuBackend, label: &str, iters: usize, weight_bytes: f64, mut f: impl FnMut()) {
    f();
    g.synchronize().expect("sync");
    let t0 = Instant::now();
    for _ in 0..iters {
        f();
    }
    let rec = t0.elapsed().as_secs_f64() / iters as f64;
    g.synchronize().expect("sync");
    let dt = t0.elapsed().as_secs_f64() / iters as f64;
    if weight_bytes > 0.0 {
        println!(
            "{label:<48} {:>10.1} us  {:>8.1} GB/s  (host {:.1} us)",
            dt * 1e6,
            weight_bytes / dt / 1e9,
            rec * 1e6
        );
    } else {
        println!(
            "{label:<48} {:>10.1} us  (host {:.1} us)",
            dt * 1e6,
            rec * 1e6
        );
    }
}

fn main() {
    let g = match WgpuBackend::with_options(&WgpuOptions::from_env()) {
        Ok(g) => g,
        Err(e) => {
            println!("no wgpu adapter: {e}; nothing to time");
            return;
        }
    };
    println!("adapter: {}", g.adapter_info());
    let full = std::env::var("GPTOSS_BENCH_FULL").is_ok_and(|v| v == "1")
        || !g.adapter_info().contains("Cpu");
    let it = |n: usize| if full { n } else { n.div_ceil(20) };

    // Dispatch overhead: a tiny op recorded many times.
    let mut x = g.from_host(&vec![0.5; 2880], 1, 2880).unwrap();
    let y = g.from_host(&vec![0.25; 2880], 1, 2880).unwrap();
    time(
        &g,
        "add_assign [1x2880] (dispatch overhead)",
        it(2000),
        0.0,
        || {
            g.add_assign(&mut x, &y).unwrap();
        },
    );

    for (dtype, k, n, name) in [
        (GgmlType::MXFP4, 2880, 2880, "expert-sized"),
        (GgmlType::Q8_0, 2880, 4096, "attn_q"),
        (GgmlType::Q8_0, 4096, 2880, "attn_output"),
    ] {
        let wd = w(name, dtype, &[k, n], 1);
        let bytes = wd.bytes.len() as f64;
        let wt = g.upload(&wd).unwrap();
        for t in [1usize, 4, 128] {
            let xs = g.from_host(&vec![0.1; t * k], t, k).unwrap();
            time(
                &g,
                &format!("linear {dtype} {name} [{t}x{k}]x[{n}]"),
                it(200),
                bytes,
                || {
                    drop(g.linear(&xs, &wt, None).unwrap());
                },
            );
        }
    }
    if full {
        let wd = w("output", GgmlType::Q8_0, &[2880, 201088], 2);
        let bytes = wd.bytes.len() as f64;
        let wt = g.upload(&wd).unwrap();
        let xs = g.from_host(&vec![0.1; 2880], 1, 2880).unwrap();
        time(
            &g,
            "linear Q8_0 output [1x2880]x[201088]",
            20,
            bytes,
            || {
                drop(g.linear(&xs, &wt, None).unwrap());
            },
        );
    }

    // MoE of one 20b layer: 32 experts of 2880x2880 MXFP4, top-4.
    let (d, dff, mut e) = if full {
        (2880, 2880, 32)
    } else {
        (2880, 2880, 8)
    };
    // GPTOSS_BENCH_EXPERTS: stack size (same active work, different buffer size).
    if let Some(n) = std::env::var("GPTOSS_BENCH_EXPERTS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        e = n;
    }
    let mw = MoeWeights {
        router: g.upload(&w("r", GgmlType::F32, &[d, e], 3)).unwrap(),
        router_bias: g.upload(&w("rb", GgmlType::F32, &[e], 4)).unwrap(),
        gate: g.upload(&w("g", GgmlType::MXFP4, &[d, dff, e], 5)).unwrap(),
        gate_bias: g.upload(&w("gb", GgmlType::F32, &[dff, e], 6)).unwrap(),
        up: g.upload(&w("u", GgmlType::MXFP4, &[d, dff, e], 7)).unwrap(),
        up_bias: g.upload(&w("ub", GgmlType::F32, &[dff, e], 8)).unwrap(),
        down: g.upload(&w("d", GgmlType::MXFP4, &[dff, d, e], 9)).unwrap(),
        down_bias: g.upload(&w("db", GgmlType::F32, &[d, e], 10)).unwrap(),
    };
    let cfg = MoeConfig {
        n_experts: e,
        top_k: 4,
    };
    {
        let xs = g.from_host(&vec![0.1; d], 1, d).unwrap();
        time(&g, "moe router linear [1x2880]x[E]", it(100), 0.0, || {
            drop(g.linear(&xs, &mw.router, Some(&mw.router_bias)).unwrap());
        });
        let c1 = MoeConfig {
            n_experts: e,
            top_k: 1,
        };
        time(&g, "moe top-1", it(100), 0.0, || {
            drop(g.moe(&xs, &mw, &c1).unwrap());
        });
    }
    let active = 4.0 * 3.0 * (d * dff) as f64 * 17.0 / 32.0;
    for t in [1usize, 128] {
        let xs = g.from_host(&vec![0.1; t * d], t, d).unwrap();
        time(
            &g,
            &format!("moe MXFP4 top-4 of {e} [{t}x{d}]"),
            it(100),
            active,
            || {
                drop(g.moe(&xs, &mw, &cfg).unwrap());
            },
        );
    }

    // Attention decode at a 4096-token context (full layer) and in a 128 window.
    let sinks = g.upload(&w("s", GgmlType::F32, &[64], 11)).unwrap();
    for window in [None, Some(128)] {
        let acfg = AttentionConfig {
            n_heads: 64,
            n_kv_heads: 8,
            head_dim: 64,
            window,
            scale: 0.125,
        };
        let mut cache = g
            .new_kv_cache(&KvCacheConfig {
                n_kv_heads: 8,
                head_dim: 64,
                max_positions: 8192,
                window,
            })
            .unwrap();
        let ctx = if full { 4096 } else { 512 };
        let kv = g.from_host(&vec![0.01; ctx * 512], ctx, 512).unwrap();
        let q = g.from_host(&vec![0.01; ctx * 4096], ctx, 4096).unwrap();
        let t0 = Instant::now();
        drop(
            g.attention(&q, &kv, &kv, &mut cache, 0, &sinks, &acfg)
                .unwrap(),
        );
        g.synchronize().unwrap();
        println!(
            "{:<48} {:>10.1} us",
            format!("attention prefill {ctx} window {window:?}"),
            t0.elapsed().as_secs_f64() * 1e6
        );
        let q1 = g.from_host(&vec![0.01; 4096], 1, 4096).unwrap();
        let k1 = g.from_host(&vec![0.01; 512], 1, 512).unwrap();
        let mut pos = ctx;
        time(
            &g,
            &format!("attention decode at {ctx} window {window:?}"),
            it(100),
            0.0,
            || {
                drop(
                    g.attention(&q1, &k1, &k1, &mut cache, pos, &sinks, &acfg)
                        .unwrap(),
                );
                pos += 1;
            },
        );
    }
    println!(
        "peak device memory (our buffers): {} MiB",
        g.peak_memory_bytes().unwrap_or(0) >> 20
    );
}
