//! CPU backend operations at GPT-OSS-20b shapes, reference mode against fast mode.
//!
//! `cargo bench -p gptoss-backend --bench cpu_ops` (add `-- linear` etc. to pick a group).
//! Weights are random bytes in their real formats (MXFP4 blocks with sane scales, Q8_0 with
//! random codes); timings do not depend on the values.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
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

fn linear(c: &mut Criterion) {
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

fn moe(c: &mut Criterion) {
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

fn attention(c: &mut Criterion) {
    let mut g = Gen(0xa77e);
    let (nh, nkv, hd, ctx) = (64, 8, 64, 4096);
    let be = CpuBackend::new();
    let mut group = c.benchmark_group("attention");
    group.sample_size(10);
    let sinks = be.upload(&weight(&mut g, GgmlType::F32, &[nh])).unwrap();
    let past_k = g.f32s(ctx * nkv * hd);
    let past_v = g.f32s(ctx * nkv * hd);
    for (window, t) in [(None, 1usize), (Some(128), 1), (None, 64)] {
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

criterion_group!(benches, linear, moe, attention);
criterion_main!(benches);
