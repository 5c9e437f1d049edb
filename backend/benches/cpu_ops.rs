//! CPU backend operations at GPT-OSS-20b shapes, reference mode against fast mode.
//!
//! `cargo bench -p gptoss-backend --bench cpu_ops` (add `-- linear` etc. to pick a group).
//! With `CPU_OPS_CLOCK=cpu` the measurement is the process's CPU time (all threads, from
//! /proc/self/task/*/sched) instead of wall time: on a machine shared with other work, CPU time
//! divided by the thread count estimates the wall time the same work takes on an idle machine.
//! Weights are random bytes in their real formats (MXFP4 blocks with sane scales, Q8_0 with
//! random codes); timings do not depend on the values.

use std::hint::black_box;

use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{BenchmarkId, Criterion, Throughput};
use gptoss_backend::{
    AttentionConfig, Backend, CpuBackend, GgmlType, HostBytes, KvCacheConfig, MoeConfig,
    MoeWeights, WeightData,
};

/// A small deterministic generator (the values do not matter, only the formats).
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn f32(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
    fn f32s(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.f32()).collect()
    }
}

fn weight(g: &mut Gen, ty: GgmlType, shape: &[usize]) -> WeightData {
    let n: usize = shape.iter().product();
    let mut bytes = Vec::with_capacity(ty.bytes_for(n as u64).unwrap() as usize);
    match ty {
        GgmlType::F32 => {
            for _ in 0..n {
                bytes.extend_from_slice(&(g.f32() * 0.05).to_le_bytes());
            }
        }
        GgmlType::Q8_0 => {
            for _ in 0..n / 32 {
                bytes.extend_from_slice(&half::f16::from_f32(0.05 / 127.0).to_le_bytes());
                bytes.extend((0..32).map(|_| g.next() as u8));
            }
        }
        GgmlType::MXFP4 => {
            for _ in 0..n / 32 {
                bytes.push(118 + (g.next() % 4) as u8);
                bytes.extend((0..16).map(|_| g.next() as u8));
            }
        }
        other => panic!("no bench encoder for {other}"),
    }
    WeightData {
        name: format!("{ty}{shape:?}"),
        dtype: ty,
        shape: shape.to_vec(),
        bytes: HostBytes::from_vec(bytes),
    }
}

fn backends() -> [(&'static str, CpuBackend); 2] {
    [
        ("reference", CpuBackend::new()),
        ("fast", CpuBackend::new_fast()),
    ]
}

fn linear<M: Measurement + 'static>(c: &mut Criterion<M>) {
    let mut g = Gen(0x5eed);
    let mut group = c.benchmark_group("linear");
    group.sample_size(10);
    for ty in [GgmlType::MXFP4, GgmlType::Q8_0] {
        for (k, n) in [(2880, 2880), (2880, 4096), (4096, 2880)] {
            let w = weight(&mut g, ty, &[k, n]);
            let bias = weight(&mut g, GgmlType::F32, &[n]);
            for t in [1usize, 64] {
                let x = g.f32s(t * k);
                group.throughput(Throughput::Bytes(w.bytes.len() as u64));
                for (mode, be) in backends() {
                    let (wu, bu) = (be.upload(&w).unwrap(), be.upload(&bias).unwrap());
                    let xt = be.from_host(&x, t, k).unwrap();
                    let id = BenchmarkId::new(format!("{ty} {k}x{n} t={t}"), mode);
                    group.bench_function(id, |b| {
                        b.iter(|| black_box(be.linear(&xt, &wu, Some(&bu)).unwrap()))
                    });
                }
            }
        }
    }
    group.finish();
}

fn moe<M: Measurement + 'static>(c: &mut Criterion<M>) {
    let mut g = Gen(0x0e0e);
    let (d, dff, ne, k) = (2880, 2880, 32, 4);
    let ws = [
        weight(&mut g, GgmlType::F32, &[d, ne]),
        weight(&mut g, GgmlType::F32, &[ne]),
        weight(&mut g, GgmlType::MXFP4, &[d, dff, ne]),
        weight(&mut g, GgmlType::F32, &[dff, ne]),
        weight(&mut g, GgmlType::MXFP4, &[d, dff, ne]),
        weight(&mut g, GgmlType::F32, &[dff, ne]),
        weight(&mut g, GgmlType::MXFP4, &[dff, d, ne]),
        weight(&mut g, GgmlType::F32, &[d, ne]),
    ];
    let mut group = c.benchmark_group("moe_20b");
    group.sample_size(10);
    for t in [1usize, 64] {
        let x = g.f32s(t * d);
        for (mode, be) in backends() {
            let u = |i: usize| be.upload(&ws[i]).unwrap();
            let w = MoeWeights {
                router: u(0),
                router_bias: u(1),
                gate: u(2),
                gate_bias: u(3),
                up: u(4),
                up_bias: u(5),
                down: u(6),
                down_bias: u(7),
            };
            let xt = be.from_host(&x, t, d).unwrap();
            let cfg = MoeConfig {
                n_experts: ne,
                top_k: k,
            };
            group.bench_function(BenchmarkId::new(format!("MXFP4 t={t}"), mode), |b| {
                b.iter(|| black_box(be.moe(&xt, &w, &cfg).unwrap()))
            });
        }
    }
    group.finish();
}

fn attention<M: Measurement + 'static>(c: &mut Criterion<M>) {
    let mut g = Gen(0xa77e);
    let (nh, nkv, hd, ctx) = (64, 8, 64, 4096);
    let be = CpuBackend::new();
    let mut group = c.benchmark_group("attention");
    group.sample_size(10);
    let sinks = be.upload(&weight(&mut g, GgmlType::F32, &[nh])).unwrap();
    let past_k = g.f32s(ctx * nkv * hd);
    let past_v = g.f32s(ctx * nkv * hd);
    // Full attention over the context is benchmarked as a window of ctx + t positions: the same
    // arithmetic over a preallocated ring, so that cloning the cache for each iteration does not
    // leave the append to reallocate (a real full cache grows by doubling, amortized).
    for (window, t) in [(ctx + 1, 1usize), (128, 1), (ctx + 64, 64)] {
        let window = Some(window);
        let cfg = AttentionConfig {
            n_heads: nh,
            n_kv_heads: nkv,
            head_dim: hd,
            window,
            scale: 0.125,
        };
        let kv_cfg = KvCacheConfig {
            n_kv_heads: nkv,
            head_dim: hd,
            max_positions: ctx + t,
            window,
        };
        let (q, k, v) = (
            g.f32s(t * nh * hd),
            g.f32s(t * nkv * hd),
            g.f32s(t * nkv * hd),
        );
        let (q, k, v) = (
            be.from_host(&q, t, nh * hd).unwrap(),
            be.from_host(&k, t, nkv * hd).unwrap(),
            be.from_host(&v, t, nkv * hd).unwrap(),
        );
        let mut base = be.new_kv_cache(&kv_cfg).unwrap();
        base.append(&past_k, &past_v, ctx).unwrap();
        let name = format!("ctx {ctx} t={t} window={window:?}");
        group.bench_function(name, |b| {
            b.iter_batched(
                || base.clone(),
                |mut cache| {
                    black_box(
                        be.attention(&q, &k, &v, &mut cache, ctx, &sinks, &cfg)
                            .unwrap(),
                    )
                },
                criterion::BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

/// One whole GPT-OSS-20b decoder layer (MXFP4 experts, Q8_0 attention matrices, as in the
/// MXFP4_MOE files) at context 1024: times 24 plus the output matrix estimates a token.
fn layer<M: Measurement + 'static>(c: &mut Criterion<M>) {
    let mut g = Gen(0x1a7e);
    let (d, nh, nkv, hd, dff, ne, ctx) = (2880, 64, 8, 64, 2880, 32, 1024);
    let f = GgmlType::F32;
    let q8 = GgmlType::Q8_0;
    let mx = GgmlType::MXFP4;
    let specs: Vec<(GgmlType, Vec<usize>)> = vec![
        (f, vec![d]),            // 0 attn_norm
        (q8, vec![d, nh * hd]),  // 1 q
        (f, vec![nh * hd]),      // 2
        (q8, vec![d, nkv * hd]), // 3 k
        (f, vec![nkv * hd]),     // 4
        (q8, vec![d, nkv * hd]), // 5 v
        (f, vec![nkv * hd]),     // 6
        (q8, vec![nh * hd, d]),  // 7 o
        (f, vec![d]),            // 8
        (f, vec![nh]),           // 9 sinks
        (f, vec![d]),            // 10 post_attention_norm
        (f, vec![d, ne]),        // 11 router
        (f, vec![ne]),           // 12
        (mx, vec![d, dff, ne]),  // 13 gate
        (f, vec![dff, ne]),      // 14
        (mx, vec![d, dff, ne]),  // 15 up
        (f, vec![dff, ne]),      // 16
        (mx, vec![dff, d, ne]),  // 17 down
        (f, vec![d, ne]),        // 18
    ];
    let ws: Vec<WeightData> = specs.iter().map(|(t, s)| weight(&mut g, *t, s)).collect();
    let rope = gptoss_backend::Rope::new(&gptoss_backend::RopeConfig {
        head_dim: hd,
        theta: 150000.0,
        scaling_factor: 32.0,
        original_context: 4096,
        beta_fast: 32.0,
        beta_slow: 1.0,
    });
    let past_k = g.f32s(ctx * nkv * hd);
    let past_v = g.f32s(ctx * nkv * hd);
    let mut group = c.benchmark_group("layer_20b");
    group.sample_size(10);
    for t in [1usize, 64] {
        let x0 = g.f32s(t * d);
        for (mode, be) in backends() {
            let w: Vec<_> = ws.iter().map(|w| be.upload(w).unwrap()).collect();
            let moe_w = MoeWeights {
                router: be.upload(&ws[11]).unwrap(),
                router_bias: be.upload(&ws[12]).unwrap(),
                gate: be.upload(&ws[13]).unwrap(),
                gate_bias: be.upload(&ws[14]).unwrap(),
                up: be.upload(&ws[15]).unwrap(),
                up_bias: be.upload(&ws[16]).unwrap(),
                down: be.upload(&ws[17]).unwrap(),
                down_bias: be.upload(&ws[18]).unwrap(),
            };
            let acfg = AttentionConfig {
                n_heads: nh,
                n_kv_heads: nkv,
                head_dim: hd,
                // A full layer, as a ring of ctx + t (see `attention`).
                window: Some(ctx + t),
                scale: 0.125,
            };
            let kv_cfg = KvCacheConfig {
                n_kv_heads: nkv,
                head_dim: hd,
                max_positions: ctx + t,
                window: Some(ctx + t),
            };
            let mut base = be.new_kv_cache(&kv_cfg).unwrap();
            base.append(&past_k, &past_v, ctx).unwrap();
            let mcfg = MoeConfig {
                n_experts: ne,
                top_k: 4,
            };
            group.bench_function(BenchmarkId::new(format!("ctx {ctx} t={t}"), mode), |b| {
                b.iter_batched(
                    || (base.clone(), be.from_host(&x0, t, d).unwrap()),
                    |(mut cache, mut x)| {
                        let h = be.rms_norm(&x, &w[0], 1e-5).unwrap();
                        let mut q = be.linear(&h, &w[1], Some(&w[2])).unwrap();
                        let mut k = be.linear(&h, &w[3], Some(&w[4])).unwrap();
                        let v = be.linear(&h, &w[5], Some(&w[6])).unwrap();
                        be.rope(&mut q, nh, ctx, &rope).unwrap();
                        be.rope(&mut k, nkv, ctx, &rope).unwrap();
                        let a = be
                            .attention(&q, &k, &v, &mut cache, ctx, &w[9], &acfg)
                            .unwrap();
                        let o = be.linear(&a, &w[7], Some(&w[8])).unwrap();
                        be.add_assign(&mut x, &o).unwrap();
                        let h = be.rms_norm(&x, &w[10], 1e-5).unwrap();
                        let m = be.moe(&h, &moe_w, &mcfg).unwrap();
                        be.add_assign(&mut x, &m).unwrap();
                        black_box(x)
                    },
                    criterion::BatchSize::LargeInput,
                )
            });
        }
    }
    group.finish();
}

/// Process CPU time in nanoseconds: the sum of `se.sum_exec_runtime` over this process's threads.
struct CpuTime;

fn cpu_time_ns() -> f64 {
    let mut total = 0.0;
    if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
        for e in dir.flatten() {
            let Ok(s) = std::fs::read_to_string(e.path().join("sched")) else {
                continue;
            };
            if let Some(ms) = s
                .lines()
                .find(|l| l.starts_with("se.sum_exec_runtime"))
                .and_then(|l| l.split(':').nth(1))
                .and_then(|v| v.trim().parse::<f64>().ok())
            {
                total += ms * 1e6;
            }
        }
    }
    total
}

impl Measurement for CpuTime {
    type Intermediate = f64;
    type Value = f64;
    fn start(&self) -> f64 {
        cpu_time_ns()
    }
    fn end(&self, i: f64) -> f64 {
        cpu_time_ns() - i
    }
    fn add(&self, a: &f64, b: &f64) -> f64 {
        a + b
    }
    fn zero(&self) -> f64 {
        0.0
    }
    fn to_f64(&self, v: &f64) -> f64 {
        *v
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        &CpuTimeFormatter
    }
}

struct CpuTimeFormatter;

impl CpuTimeFormatter {
    fn scale(typical: f64, values: &mut [f64]) -> &'static str {
        let (div, unit) = if typical < 1e3 {
            (1.0, "ns cpu")
        } else if typical < 1e6 {
            (1e3, "us cpu")
        } else if typical < 1e9 {
            (1e6, "ms cpu")
        } else {
            (1e9, "s cpu")
        };
        values.iter_mut().for_each(|v| *v /= div);
        unit
    }
}

impl ValueFormatter for CpuTimeFormatter {
    fn scale_values(&self, typical: f64, values: &mut [f64]) -> &'static str {
        Self::scale(typical, values)
    }
    fn scale_throughputs(&self, _typical: f64, t: &Throughput, values: &mut [f64]) -> &'static str {
        if let Throughput::Bytes(b) | Throughput::BytesDecimal(b) = t {
            values.iter_mut().for_each(|v| *v = *b as f64 / *v);
            "GB/cpu-s"
        } else {
            "per ns cpu"
        }
    }
    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns cpu"
    }
}

fn run_all<M: Measurement + 'static>(mut c: Criterion<M>) {
    linear(&mut c);
    moe(&mut c);
    attention(&mut c);
    layer(&mut c);
    c.final_summary();
}

fn main() {
    if std::env::var("CPU_OPS_CLOCK").is_ok_and(|v| v == "cpu") {
        run_all(
            Criterion::default()
                .with_measurement(CpuTime)
                .configure_from_args(),
        );
    } else {
        run_all(
            Criterion::default()
                .with_measurement(WallTime)
                .configure_from_args(),
        );
    }
}
