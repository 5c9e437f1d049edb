//! CUDA backend against the CPU reference, op by op, on fresh random inputs of GPT-OSS shapes
//! and odd shapes (ggml test-backend-ops limits: NMSE <= 5e-4 for matmuls and attention,
//! <= 1e-6 for norms, RoPE and elementwise ops; NaN fails). Before every op the device memory
//! pool is poisoned with NaN patterns, so an output element a kernel forgets to write fails.
//!
//! Needs an NVIDIA GPU and driver; elsewhere every test prints why it skips and passes.

use gptoss_backend::{
    AttentionConfig, Backend, BackendError, CpuBackend, GgmlType, HostBytes, KvCacheConfig,
    MoeConfig, MoeWeights, Rope, RopeConfig, WeightData,
};
use gptoss_kernels_cuda::{CudaBackend, CudaTensor, TcPrecision};
use gptoss_model::{Sampler, SamplerConfig};
use gptoss_tests::{max_abs_diff, nmse};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const MATMUL_NMSE: f64 = 5e-4;
const EXACT_NMSE: f64 = 1e-6;
/// The split-precision tensor-core kernels (kernels-cuda/src/prefill.rs) are within ~2^-17 of
/// f32 per product, an NMSE of ~1e-11 to 1e-10: this limit proves them (the bf16 kernels miss
/// it by a factor of ~100).
const TC_SPLIT_NMSE: f64 = 1e-8;
/// The GPU's KV cache holds f16 (the CPU's f32): attention over cached keys and values is off
/// by that rounding, NMSE ~8e-8 on these random inputs, whatever the arithmetic.
const F16_CACHE_NMSE: f64 = 1e-6;

/// The tensor-core precisions and their limits: split (tight), bf16 (the matmul limit).
const TC_PRECISIONS: [(TcPrecision, f64); 2] = [
    (TcPrecision::Split, TC_SPLIT_NMSE),
    (TcPrecision::Bf16, MATMUL_NMSE),
];

fn gpu() -> Option<CudaBackend> {
    match CudaBackend::new(0) {
        Ok(b) => {
            eprintln!("device: {}", b.name());
            Some(b)
        }
        Err(BackendError::Unavailable { reason, .. }) => {
            eprintln!("SKIPPED: no CUDA device: {reason}");
            None
        }
        Err(e) => panic!("CUDA backend failed to start: {e}"),
    }
}

fn rng() -> StdRng {
    // Fresh inputs every run; the seed is printed so a failure can be replayed.
    let seed: u64 = std::env::var("GPTOSS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    eprintln!("seed {seed} (GPTOSS_SEED={seed} replays it)");
    StdRng::seed_from_u64(seed)
}

fn randn(r: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            // Box-Muller; inputs are never zeros.
            let u1: f32 = r.random_range(1e-7f32..1.0);
            let u2: f32 = r.random();
            scale * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
        })
        .collect()
}

fn f16_bits(x: f32) -> u16 {
    // Round-to-nearest f32 -> f16 for normal-range values (the test data stays in range).
    let b = x.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let exp = ((b >> 23) & 0xff) as i32 - 127 + 15;
    if exp <= 0 {
        return sign;
    }
    let mant = b & 0x7f_ffff;
    let mut h = ((exp as u32) << 10) | (mant >> 13);
    if mant & 0x1000 != 0 {
        h += 1;
    }
    sign | h as u16
}

/// Random bytes of a weight of `dtype` and shape (values of a realistic magnitude).
fn random_weight(
    r: &mut StdRng,
    name: &str,
    dtype: GgmlType,
    shape: &[usize],
    scale: f32,
) -> WeightData {
    let n: usize = shape.iter().product();
    let bytes: Vec<u8> = match dtype {
        GgmlType::F32 => randn(r, n, scale)
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        GgmlType::F16 => randn(r, n, scale)
            .iter()
            .flat_map(|v| f16_bits(*v).to_le_bytes())
            .collect(),
        GgmlType::BF16 => randn(r, n, scale)
            .iter()
            .flat_map(|v| ((v.to_bits() >> 16) as u16).to_le_bytes())
            .collect(),
        GgmlType::Q8_0 => {
            let mut out = Vec::with_capacity(n / 32 * 34);
            for _ in 0..n / 32 {
                let d = scale / 64.0 * r.random_range(0.5f32..1.5);
                out.extend_from_slice(&f16_bits(d).to_le_bytes());
                out.extend((0..32).map(|_| r.random_range(-127i8..=127) as u8));
            }
            out
        }
        GgmlType::MXFP4 => {
            // E8M0 scales around `scale` / 4 (the E2M1 values reach 6).
            let e0 = (scale / 4.0).log2().round() as i32 + 127;
            let mut out = Vec::with_capacity(n / 32 * 17);
            for _ in 0..n / 32 {
                out.push((e0 + r.random_range(-2..=1)).clamp(1, 254) as u8);
                out.extend((0..16).map(|_| r.random::<u8>()));
            }
            out
        }
        other => random_requant_blocks(r, other, n, scale),
    };
    WeightData {
        name: name.into(),
        dtype,
        shape: shape.to_vec(),
        bytes: HostBytes::from_vec(bytes),
    }
}

/// The llama.cpp re-quantization types the CUDA backend runs in `quants.rs`.
const REQUANT_TYPES: [GgmlType; 9] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::IQ4_NL,
    GgmlType::IQ4_XS,
];

/// Random blocks of a re-quantization type: every code, high bit and packed scale byte random,
/// the f16 block scales chosen so elements have an RMS of about `scale` (a quantizer would
/// be far too slow for the MoE tensors, and random codes reach every bit of the layouts).
fn random_requant_blocks(r: &mut StdRng, dtype: GgmlType, n: usize, scale: f32) -> Vec<u8> {
    let h = |v: f32| half::f16::from_f32(v).to_le_bytes();
    let nblk = n / dtype.block_size();
    let mut out = Vec::with_capacity(nblk * dtype.type_size());
    for _ in 0..nblk {
        let jitter: f32 = r.random_range(0.5f32..1.5);
        let mut rand_bytes =
            |out: &mut Vec<u8>, k: usize| out.extend((0..k).map(|_| r.random::<u8>()));
        match dtype {
            GgmlType::Q4_0 => {
                out.extend(h(scale / 4.6 * jitter));
                rand_bytes(&mut out, 16);
            }
            GgmlType::Q4_1 => {
                let d = scale / 4.6 * jitter;
                out.extend(h(d));
                out.extend(h(-7.5 * d));
                rand_bytes(&mut out, 16);
            }
            GgmlType::Q5_0 => {
                out.extend(h(scale / 9.2 * jitter));
                rand_bytes(&mut out, 20);
            }
            GgmlType::Q5_1 => {
                let d = scale / 9.2 * jitter;
                out.extend(h(d));
                out.extend(h(-15.5 * d));
                rand_bytes(&mut out, 20);
            }
            GgmlType::Q4_K => {
                let d = scale / (31.0 * 4.6) * jitter;
                out.extend(h(d));
                out.extend(h(7.5 * d));
                rand_bytes(&mut out, 12 + 128);
            }
            GgmlType::Q5_K => {
                let d = scale / (31.0 * 9.2) * jitter;
                out.extend(h(d));
                out.extend(h(15.5 * d));
                rand_bytes(&mut out, 12 + 32 + 128);
            }
            GgmlType::Q6_K => {
                rand_bytes(&mut out, 128 + 64 + 16);
                out.extend(h(scale / (74.0 * 18.5) * jitter));
            }
            GgmlType::IQ4_NL => {
                out.extend(h(scale / 65.0 * jitter));
                rand_bytes(&mut out, 16);
            }
            GgmlType::IQ4_XS => {
                out.extend(h(scale / (18.5 * 65.0) * jitter));
                rand_bytes(&mut out, 2 + 4 + 128);
            }
            other => panic!("no generator for {other:?}"),
        }
    }
    out
}

struct Pair {
    cpu: CpuBackend,
    gpu: CudaBackend,
}

impl Pair {
    fn up(
        &self,
        w: &WeightData,
    ) -> (
        <CpuBackend as Backend>::Weight,
        <CudaBackend as Backend>::Weight,
    ) {
        (self.cpu.upload(w).unwrap(), self.gpu.upload(w).unwrap())
    }
    fn x(
        &self,
        v: &[f32],
        rows: usize,
        cols: usize,
    ) -> (
        <CpuBackend as Backend>::Tensor,
        <CudaBackend as Backend>::Tensor,
    ) {
        (
            self.cpu.from_host(v, rows, cols).unwrap(),
            self.gpu.from_host(v, rows, cols).unwrap(),
        )
    }
    fn poison(&self) {
        self.gpu.poison_pool(256 << 20).unwrap();
    }
    fn check(
        &self,
        what: &str,
        c: &<CpuBackend as Backend>::Tensor,
        g: &<CudaBackend as Backend>::Tensor,
        limit: f64,
    ) {
        let (cv, cr, cc) = self.cpu.to_host(c).unwrap();
        let (gv, gr, gc) = self.gpu.to_host(g).unwrap();
        assert_eq!((cr, cc), (gr, gc), "{what}: shapes differ");
        let e = nmse(&gv, &cv);
        let m = max_abs_diff(&gv, &cv);
        eprintln!("{what}: nmse {e:.3e} max_abs {m:.3e}");
        assert!(
            e <= limit,
            "{what}: NMSE {e:e} over {limit:e} (max abs diff {m:e})"
        );
    }
}

fn pair() -> Option<Pair> {
    gpu().map(|gpu| Pair {
        cpu: CpuBackend::new(),
        gpu,
    })
}

#[test]
fn embed_rms_norm_add() {
    let Some(p) = pair() else { return };
    let mut r = rng();
    for (dtype, d, vocab) in [
        (GgmlType::F32, 64, 300),
        (GgmlType::F16, 2880, 257),
        (GgmlType::BF16, 2880, 1000),
        (GgmlType::Q8_0, 2880, 999),
        (GgmlType::MXFP4, 96, 50),
        (GgmlType::Q4_0, 2880, 300),
        (GgmlType::Q4_1, 96, 50),
        (GgmlType::Q5_0, 2880, 999),
        (GgmlType::Q5_1, 2880, 77),
        (GgmlType::Q4_K, 4096, 40),
        (GgmlType::Q5_K, 256, 33),
        (GgmlType::Q6_K, 512, 20),
        (GgmlType::IQ4_NL, 2880, 100),
        (GgmlType::IQ4_XS, 4096, 30),
    ] {
        let w = random_weight(&mut r, "token_embd.weight", dtype, &[d, vocab], 1.0);
        let (cw, gw) = p.up(&w);
        let ids: Vec<u32> = (0..17).map(|_| r.random_range(0..vocab as u32)).collect();
        p.poison();
        let (c, g) = (
            p.cpu.embed(&cw, &ids).unwrap(),
            p.gpu.embed(&gw, &ids).unwrap(),
        );
        p.check(
            &format!("embed {dtype:?} [{d}, {vocab}]"),
            &c,
            &g,
            EXACT_NMSE,
        );
        assert!(
            p.gpu.embed(&gw, &[vocab as u32]).is_err(),
            "an id past the vocabulary must be an error"
        );
    }
    for (t, d) in [(1, 2880), (5, 2880), (3, 64), (2, 100), (7, 1000)] {
        let xv = randn(&mut r, t * d, 2.0);
        let (cx, gx) = p.x(&xv, t, d);
        let w = random_weight(&mut r, "attn_norm.weight", GgmlType::F32, &[d], 1.0);
        let (cw, gw) = p.up(&w);
        p.poison();
        let (c, g) = (
            p.cpu.rms_norm(&cx, &cw, 1e-5).unwrap(),
            p.gpu.rms_norm(&gx, &gw, 1e-5).unwrap(),
        );
        p.check(&format!("rms_norm [{t}, {d}]"), &c, &g, EXACT_NMSE);
        let yv = randn(&mut r, t * d, 1.0);
        let (cy, gy) = p.x(&yv, t, d);
        let (mut cx2, mut gx2) = p.x(&xv, t, d);
        p.cpu.add_assign(&mut cx2, &cy).unwrap();
        p.gpu.add_assign(&mut gx2, &gy).unwrap();
        p.check(&format!("add_assign [{t}, {d}]"), &cx2, &gx2, EXACT_NMSE);
        p.poison();
        let (c, g) = (p.cpu.last_row(&cx).unwrap(), p.gpu.last_row(&gx).unwrap());
        p.check(&format!("last_row [{t}, {d}]"), &c, &g, 0.0);
    }
}

#[test]
fn linear_every_type_and_shape() {
    let Some(mut p) = pair() else { return };
    let mut r = rng();
    for int8 in [false, true] {
        p.gpu.set_int8_activations(int8);
        eprintln!("int8 activations: {int8}");
        let shapes = [
            (1, 2880, 4096),
            (1, 4096, 2880),
            (4, 2880, 512),
            (8, 2880, 640),
            (9, 2880, 520),
            (100, 64, 96),
            (3, 96, 37),
            (70, 2880, 201),
            (2, 64, 40000),
            (1, 96, 33001),
        ];
        for dtype in [
            GgmlType::F32,
            GgmlType::F16,
            GgmlType::BF16,
            GgmlType::Q8_0,
            GgmlType::MXFP4,
        ] {
            for &(t, k, n) in &shapes {
                let w = random_weight(&mut r, "attn_q.weight", dtype, &[k, n], 0.05);
                let b = random_weight(&mut r, "attn_q.bias", GgmlType::F32, &[n], 0.5);
                let (cw, gw) = p.up(&w);
                let (cb, gb) = p.up(&b);
                let xv = randn(&mut r, t * k, 1.0);
                let (cx, gx) = p.x(&xv, t, k);
                for with_bias in [true, false] {
                    let (cbo, gbo) = if with_bias {
                        (Some(&cb), Some(&gb))
                    } else {
                        (None, None)
                    };
                    p.poison();
                    let c = p.cpu.linear(&cx, &cw, cbo).unwrap();
                    let g = p.gpu.linear(&gx, &gw, gbo).unwrap();
                    p.check(
                        &format!("linear {dtype:?} t={t} k={k} n={n} bias={with_bias}"),
                        &c,
                        &g,
                        MATMUL_NMSE,
                    );
                }
            }
        }
    }
    // Odd k for an unquantized type (no 32-multiple).
    let w = random_weight(&mut r, "odd.weight", GgmlType::F32, &[70, 33], 0.1);
    let (cw, gw) = p.up(&w);
    for t in [1, 5, 65] {
        let xv = randn(&mut r, t * 70, 1.0);
        let (cx, gx) = p.x(&xv, t, 70);
        p.poison();
        let (c, g) = (
            p.cpu.linear(&cx, &cw, None).unwrap(),
            p.gpu.linear(&gx, &gw, None).unwrap(),
        );
        p.check(
            &format!("linear F32 odd t={t} k=70 n=33"),
            &c,
            &g,
            MATMUL_NMSE,
        );
    }
    let xv = randn(&mut r, 2 * 71, 1.0);
    let (_, gx) = p.x(&xv, 2, 71);
    assert!(matches!(
        p.gpu.linear(&gx, &gw, None),
        Err(BackendError::Shape { .. })
    ));
}

/// The `(weight, bias)` lists of both backends for `linear_many` from matrices and biases
/// uploaded by `Pair::up`: every other matrix without a bias.
#[allow(clippy::type_complexity)]
fn every_other_bias<'a, C, G>(
    ws: &'a [(C, G)],
    bs: &'a [(C, G)],
) -> (Vec<(&'a C, Option<&'a C>)>, Vec<(&'a G, Option<&'a G>)>) {
    ws.iter()
        .zip(bs)
        .enumerate()
        .map(|(i, (w, b))| {
            let bias = i % 2 == 0;
            ((&w.0, bias.then_some(&b.0)), (&w.1, bias.then_some(&b.1)))
        })
        .unzip()
}

/// `linear_many` (one launch for up to three matrices of one type on the decode path) against
/// the CPU's `linear` of each matrix, for t = 1..9, odd row counts, one to four matrices, with
/// and without biases; a matrix of another k is a shape error.
#[test]
fn linear_many_matches_linear() {
    let Some(p) = pair() else { return };
    let mut r = rng();
    let cases: [(usize, &[usize]); 4] = [
        (2880, &[4096, 512, 512]),
        (96, &[37, 8, 65]),
        (64, &[33, 200]),
        (128, &[40, 41, 42, 43]),
    ];
    for dtype in [GgmlType::Q8_0, GgmlType::MXFP4, GgmlType::F32] {
        for &(k, ns) in &cases {
            let ws: Vec<_> = ns
                .iter()
                .map(|&n| p.up(&random_weight(&mut r, "w", dtype, &[k, n], 0.05)))
                .collect();
            let bs: Vec<_> = ns
                .iter()
                .map(|&n| p.up(&random_weight(&mut r, "b", GgmlType::F32, &[n], 0.5)))
                .collect();
            for t in [1usize, 2, 3, 5, 8, 9] {
                let xv = randn(&mut r, t * k, 1.0);
                let (cx, gx) = p.x(&xv, t, k);
                let (cw, gw) = every_other_bias(&ws, &bs);
                p.poison();
                let g = p.gpu.linear_many(&gx, &gw).unwrap();
                assert_eq!(g.len(), ns.len());
                for (i, gi) in g.iter().enumerate() {
                    let c = p.cpu.linear(&cx, cw[i].0, cw[i].1).unwrap();
                    p.check(
                        &format!("linear_many {dtype:?} t={t} k={k} n={:?} #{i}", ns),
                        &c,
                        gi,
                        MATMUL_NMSE,
                    );
                }
            }
        }
    }
    let a = p.up(&random_weight(&mut r, "a", GgmlType::Q8_0, &[64, 32], 0.05));
    let b = p.up(&random_weight(&mut r, "b", GgmlType::Q8_0, &[96, 32], 0.05));
    let xv = randn(&mut r, 64, 1.0);
    let (_, gx) = p.x(&xv, 1, 64);
    assert!(matches!(
        p.gpu.linear_many(&gx, &[(&a.1, None), (&b.1, None)]),
        Err(BackendError::Shape { .. })
    ));
}

#[test]
fn linear_requantized_types() {
    let Some(p) = pair() else { return };
    let mut r = rng();
    for dtype in REQUANT_TYPES {
        // GPT-OSS's widths: 2880 takes the 32-element types, 4096 (attn_output) the 256 ones.
        let (kb, ks) = if dtype.block_size() == 32 {
            (2880, 64)
        } else {
            (4096, 256)
        };
        let shapes = [
            (1, kb, 2880),
            (2, kb, 37),
            (4, kb, 512),
            (5, kb, 100),
            (8, kb, 640),
            (9, kb, 520),
            (17, kb, 64),
            (70, ks, 201),
            (1, ks, 33001),
        ];
        for &(t, k, n) in &shapes {
            let w = random_weight(&mut r, "attn_q.weight", dtype, &[k, n], 0.05);
            let b = random_weight(&mut r, "attn_q.bias", GgmlType::F32, &[n], 0.5);
            let (cw, gw) = p.up(&w);
            let (cb, gb) = p.up(&b);
            let xv = randn(&mut r, t * k, 1.0);
            let (cx, gx) = p.x(&xv, t, k);
            for with_bias in [true, false] {
                let (cbo, gbo) = if with_bias {
                    (Some(&cb), Some(&gb))
                } else {
                    (None, None)
                };
                p.poison();
                let c = p.cpu.linear(&cx, &cw, cbo).unwrap();
                let g = p.gpu.linear(&gx, &gw, gbo).unwrap();
                p.check(
                    &format!("linear {dtype:?} t={t} k={k} n={n} bias={with_bias}"),
                    &c,
                    &g,
                    MATMUL_NMSE,
                );
            }
        }
        // A row that is not a whole number of blocks is refused at upload.
        let bad = WeightData {
            name: "bad.weight".into(),
            dtype,
            shape: vec![dtype.block_size() + 32, 2],
            bytes: HostBytes::from_vec(vec![0u8; 2 * dtype.type_size()]),
        };
        assert!(
            p.gpu.upload(&bad).is_err(),
            "{dtype:?}: ragged rows accepted"
        );
    }
}

#[test]
fn rope_matches() {
    let Some(p) = pair() else { return };
    let mut r = rng();
    for (hd, heads, t, pos0) in [
        (64, 64, 5, 0),
        (64, 8, 3, 1000),
        (64, 64, 1, 131000),
        (32, 4, 9, 17),
    ] {
        let rope = gptoss_rope(hd);
        let xv = randn(&mut r, t * heads * hd, 1.0);
        let (mut cx, mut gx) = p.x(&xv, t, heads * hd);
        p.cpu.rope(&mut cx, heads, pos0, &rope).unwrap();
        p.gpu.rope(&mut gx, heads, pos0, &rope).unwrap();
        p.check(
            &format!("rope hd={hd} heads={heads} t={t} pos0={pos0}"),
            &cx,
            &gx,
            EXACT_NMSE,
        );
    }
}

#[test]
fn add_rms_norm_and_rope_qk() {
    let Some(p) = pair() else { return };
    let mut r = rng();
    // Row widths of the fused register kernel (up to 16384), ones past it and ones not a
    // multiple of 4 (both fall back to the two kernels); F32 and F16 weights.
    for (t, d, wt) in [
        (1, 2880, GgmlType::F32),
        (5, 2880, GgmlType::F32),
        (3, 64, GgmlType::F32),
        (2, 100, GgmlType::F16),
        (7, 1000, GgmlType::F32),
        (2, 18, GgmlType::F32),
        (2, 16384, GgmlType::F32),
        (1, 20000, GgmlType::F32),
    ] {
        let xv = randn(&mut r, t * d, 2.0);
        let yv = randn(&mut r, t * d, 1.0);
        let w = random_weight(&mut r, "ffn_norm.weight", wt, &[d], 1.0);
        let (cw, gw) = p.up(&w);
        let (mut cx, mut gx) = p.x(&xv, t, d);
        let (cy, gy) = p.x(&yv, t, d);
        p.poison();
        let c = p.cpu.add_rms_norm(&mut cx, &cy, &cw, 1e-5).unwrap();
        let g = p.gpu.add_rms_norm(&mut gx, &gy, &gw, 1e-5).unwrap();
        p.check(
            &format!("add_rms_norm [{t}, {d}] {wt:?}"),
            &c,
            &g,
            EXACT_NMSE,
        );
        p.check(
            &format!("add_rms_norm sum [{t}, {d}]"),
            &cx,
            &gx,
            EXACT_NMSE,
        );
        p.poison();
        let (c, g) = (
            p.cpu.rms_norm(&cx, &cw, 1e-5).unwrap(),
            p.gpu.rms_norm(&gx, &gw, 1e-5).unwrap(),
        );
        p.check(&format!("rms_norm [{t}, {d}] {wt:?}"), &c, &g, EXACT_NMSE);
    }
    let (_, gw) = p.up(&random_weight(&mut r, "w", GgmlType::F32, &[64], 1.0));
    let (mut gx, gy) = (
        p.gpu.from_host(&randn(&mut r, 64, 1.0), 1, 64).unwrap(),
        p.gpu.from_host(&randn(&mut r, 128, 1.0), 2, 64).unwrap(),
    );
    assert!(p.gpu.add_rms_norm(&mut gx, &gy, &gw, 1e-5).is_err());
    for (hd, heads, kvh, t, pos0) in [
        (64, 64, 8, 1, 0),
        (64, 64, 8, 5, 4097),
        (64, 64, 8, 1, 131000),
        (32, 4, 2, 9, 17),
        // More pairs than a block has threads, and 40 heads: three blocks of 16, 16 and 8.
        (1024, 24, 16, 3, 700),
    ] {
        let rope = gptoss_rope(hd);
        let qv = randn(&mut r, t * heads * hd, 1.0);
        let kv = randn(&mut r, t * kvh * hd, 1.0);
        let (mut cq, mut gq) = p.x(&qv, t, heads * hd);
        let (mut ck, mut gk) = p.x(&kv, t, kvh * hd);
        p.cpu.rope(&mut cq, heads, pos0, &rope).unwrap();
        p.cpu.rope(&mut ck, kvh, pos0, &rope).unwrap();
        p.gpu
            .rope_qk(&mut gq, &mut gk, heads, kvh, pos0, &rope)
            .unwrap();
        let what = format!("rope_qk hd={hd} heads={heads}/{kvh} t={t} pos0={pos0}");
        p.check(&format!("{what} q"), &cq, &gq, EXACT_NMSE);
        p.check(&format!("{what} k"), &ck, &gk, EXACT_NMSE);
    }
}

/// GPT-OSS's YaRN RoPE for heads of `hd`.
fn gptoss_rope(hd: usize) -> Rope {
    Rope::new(&RopeConfig {
        head_dim: hd,
        theta: 150000.0,
        scaling_factor: 32.0,
        original_context: 4096,
        beta_fast: 32.0,
        beta_slow: 1.0,
    })
}

/// `b.qkv_rope` with biases, the weights given as (weight, bias) pairs.
#[allow(clippy::too_many_arguments)]
fn qkv_rope_of<B: Backend>(
    b: &B,
    x: &B::Tensor,
    w: [(&B::Weight, &B::Weight); 3],
    nh: usize,
    nkv: usize,
    pos0: usize,
    rope: &Rope,
) -> [B::Tensor; 3] {
    let [q, k, v] = w.map(|(w, b)| (w, Some(b)));
    b.qkv_rope(x, q, k, v, nh, nkv, pos0, rope).unwrap()
}

#[test]
fn argmax_matches_with_ties() {
    let Some(p) = pair() else { return };
    let mut r = rng();
    for (t, n) in [(1, 201088), (3, 8192), (5, 37)] {
        let mut xv = randn(&mut r, t * n, 3.0);
        // A tie in the first row: the earlier index must win.
        let m = xv[..n].iter().cloned().fold(f32::MIN, f32::max) + 1.0;
        let (a, b) = (r.random_range(0..n / 2), r.random_range(n / 2..n));
        xv[a] = m;
        xv[b] = m;
        let (cx, gx) = p.x(&xv, t, n);
        let (c, g) = (p.cpu.argmax(&cx).unwrap(), p.gpu.argmax(&gx).unwrap());
        assert_eq!(c, g, "argmax t={t} n={n}");
        assert_eq!(g[0] as usize, a);
    }
}

/// The device's temperature-softmax draw against the host sampler (`Sampler::sample_at`) with
/// the same `u`: the same token, except where f32 `exp` rounding (the device's `expf` against
/// the host's) moves a boundary across the target, so every device token must hold the target
/// in its host interval of the running weight sum, within 1e-6 of the total.
#[test]
fn sample_softmax_matches_host_sampler() {
    let Some(p) = pair() else { return };
    let mut r = rng();
    struct Case {
        rows: usize,
        n: usize,
        scale: f32,
        temperature: f32,
        min_p: f32,
        penalty: f32,
    }
    let cases = [
        Case {
            rows: 1,
            n: 201088,
            scale: 3.0,
            temperature: 0.7,
            min_p: 0.0,
            penalty: 1.0,
        },
        Case {
            rows: 3,
            n: 201088,
            scale: 1.0,
            temperature: 1.0,
            min_p: 0.05,
            penalty: 1.3,
        },
        Case {
            rows: 1,
            n: 201088,
            scale: 8.0,
            temperature: 0.4,
            min_p: 0.0,
            penalty: 0.9,
        },
        Case {
            rows: 2,
            n: 4099,
            scale: 2.0,
            temperature: 1.7,
            min_p: 0.0,
            penalty: 1.1,
        },
        Case {
            rows: 1,
            n: 37,
            scale: 2.0,
            temperature: 1.0,
            min_p: 0.2,
            penalty: 1.0,
        },
        Case {
            rows: 1,
            n: 1,
            scale: 1.0,
            temperature: 1.0,
            min_p: 0.0,
            penalty: 1.0,
        },
    ];
    for c in &cases {
        let mut xv = randn(&mut r, c.rows * c.n, c.scale);
        let last = (c.rows - 1) * c.n;
        if c.n > 100 {
            xv[last + r.random_range(0..c.n)] = f32::NAN;
            xv[last + r.random_range(0..c.n)] = f32::NEG_INFINITY;
        }
        let history: Vec<u32> = (0..if c.penalty != 1.0 { 64 } else { 0 })
            .map(|_| r.random_range(0..c.n as u32))
            .collect();
        let cfg = SamplerConfig {
            temperature: c.temperature,
            min_p: c.min_p,
            repeat_penalty: c.penalty,
            repeat_last_n: 64,
            ..Default::default()
        };
        let mut host = Sampler::new(cfg.clone()).unwrap();
        let mut dev = Sampler::new(cfg).unwrap();
        let (_, gx) = p.x(&xv, c.rows, c.n);
        let row = &xv[last..];
        // The host's weights in id order, for the intervals.
        let penalized: Vec<u32> = {
            let mut seen = std::collections::HashSet::new();
            history
                .iter()
                .copied()
                .filter(|&t| seen.insert(t))
                .collect()
        };
        let mut l: Vec<f32> = row
            .iter()
            .map(|&x| if x.is_nan() { f32::NEG_INFINITY } else { x })
            .collect();
        for &t in &penalized {
            let x = &mut l[t as usize];
            *x = if *x > 0.0 {
                *x / c.penalty
            } else {
                *x * c.penalty
            };
        }
        let max = l.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let w: Vec<f64> = l
            .iter()
            .map(|&x| {
                let w = if x == f32::NEG_INFINITY {
                    0.0
                } else {
                    ((x - max) * (1.0 / c.temperature)).exp()
                };
                if w < c.min_p { 0.0 } else { w as f64 }
            })
            .collect();
        let total: f64 = w.iter().sum();
        let mut cum = Vec::with_capacity(w.len());
        let mut acc = 0.0;
        for &x in &w {
            acc += x;
            cum.push(acc);
        }
        let (mut same, draws) = (0, 300);
        for k in 0..draws {
            let mut d = dev.softmax_draw(&history).expect("a softmax draw");
            d.u = match k {
                0 => 0.0,
                1 => 1.0 - f64::EPSILON,
                _ => d.u,
            };
            assert_eq!(d.penalized, penalized);
            let g = p
                .gpu
                .sample_softmax(&gx, &d)
                .unwrap()
                .expect("a device draw");
            let h = host.sample_at(row, &history, d.u).unwrap();
            same += usize::from(g == h);
            let target = d.u * total;
            let (lo, hi) = (
                if g == 0 { 0.0 } else { cum[g as usize - 1] },
                cum[g as usize],
            );
            let tol = 1e-6 * total;
            assert!(
                w[g as usize] > 0.0 && lo - tol <= target && target <= hi + tol,
                "n {} u {}: device token {g} (interval {lo}..{hi}), host {h}, target {target}",
                c.n,
                d.u
            );
        }
        eprintln!(
            "sample_softmax n {} T {} min_p {} penalty {}: {same} of {draws} draws the host's token",
            c.n, c.temperature, c.min_p, c.penalty
        );
        assert!(same * 100 >= draws * 99, "{same} of {draws}");
    }
    // No finite logit: no device token (the host sampler then reports it).
    let (_, gx) = p.x(&[f32::NAN, f32::NEG_INFINITY, f32::NAN], 1, 3);
    let mut s = Sampler::new(SamplerConfig {
        temperature: 1.0,
        ..Default::default()
    })
    .unwrap();
    let d = s.softmax_draw(&[]).unwrap();
    assert_eq!(p.gpu.sample_softmax(&gx, &d).unwrap(), None);
}

/// The device's candidates of a cut draw (`softmax_candidates`) against the same rule on the
/// host: the same tokens with bit-equal penalized logits (a token may only switch sides where
/// its weight is within 1e-5 of the floor: `expf` against the host's `exp`), the rest's weight
/// within 1e-6 (relative) plus what such tokens move, and `None` past the cap.
#[test]
fn softmax_candidates_match_host() {
    let Some(p) = pair() else { return };
    let mut r = rng();
    let floor = 1.0f32 / 1048576.0;
    for (n, scale, temperature, penalty, top_k) in [
        (201088, 3.0f32, 0.7f32, 1.0f32, 0usize),
        (201088, 6.0, 1.0, 1.3, 0),
        (4099, 2.0, 0.5, 0.9, 0),
        (1, 1.0, 1.0, 1.0, 0),
        (201088, 0.5, 0.8, 1.0, 40),
        (201088, 3.0, 1.0, 1.2, 1),
        (201088, 1.0, 0.8, 1.0, 3000),
        (4099, 2.0, 0.5, 0.9, 4098),
        // Logits on a coarse grid: ties at the k-th value.
        (100000, -1.0, 1.0, 1.0, 50),
    ] {
        let mut xv = if scale > 0.0 {
            randn(&mut r, n, scale)
        } else {
            (0..n)
                .map(|_| r.random_range(0..40) as f32 * 0.25)
                .collect()
        };
        if n > 100 {
            xv[r.random_range(0..n)] = f32::NAN;
            xv[r.random_range(0..n)] = f32::NEG_INFINITY;
        }
        let penalized: Vec<u32> = if penalty != 1.0 {
            let mut v: Vec<u32> = (0..64).map(|_| r.random_range(0..n as u32)).collect();
            v.sort_unstable();
            v.dedup();
            v
        } else {
            Vec::new()
        };
        let draw = gptoss_backend::SoftmaxDraw {
            inv_temperature: 1.0 / temperature,
            min_weight: 0.0,
            penalized: penalized.clone(),
            penalty,
            u: 0.5,
        };
        let (_, gx) = p.x(&xv, 1, n);
        let mut l: Vec<f32> = xv
            .iter()
            .map(|&x| if x.is_nan() { f32::NEG_INFINITY } else { x })
            .collect();
        for &t in &penalized {
            let x = &mut l[t as usize];
            *x = if *x > 0.0 { *x / penalty } else { *x * penalty };
        }
        let max = l.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let w: Vec<f32> = l
            .iter()
            .map(|&x| {
                if x == f32::NEG_INFINITY {
                    0.0
                } else {
                    ((x - max) * (1.0 / temperature)).exp()
                }
            })
            .collect();
        // The k-th largest penalized logit, when top-k picks the candidates.
        let kth = (top_k > 0 && top_k < n).then(|| {
            let mut sorted = l.clone();
            sorted.sort_by(|a, b| b.total_cmp(a));
            sorted[top_k - 1]
        });
        let is_cand = |i: usize| kth.map_or(w[i] >= floor, |v| l[i] >= v);
        let want: std::collections::BTreeMap<u32, f32> = (0..n)
            .filter(|&i| is_cand(i))
            .map(|i| (i as u32, l[i]))
            .collect();
        let rest: f64 = (0..n).filter(|&i| !is_cand(i)).map(|i| w[i] as f64).sum();
        let c = p
            .gpu
            .softmax_candidates(&gx, &draw, floor, top_k, 1 << 20)
            .unwrap()
            .expect("candidates");
        if kth.is_some() {
            assert!(
                c.tokens.len() >= top_k,
                "{} for top-k {top_k}",
                c.tokens.len()
            );
        }
        let got: std::collections::BTreeMap<u32, f32> = c.tokens.iter().copied().collect();
        assert_eq!(got.len(), c.tokens.len(), "a token twice");
        let mut moved = 0.0;
        for (&t, &x) in &got {
            match want.get(&t) {
                Some(&y) => assert_eq!(x.to_bits(), y.to_bits(), "token {t}: {x} vs {y}"),
                None => {
                    assert!(
                        kth.is_none() && (w[t as usize] / floor - 1.0).abs() < 1e-5,
                        "token {t} weight {}",
                        w[t as usize]
                    );
                    moved += w[t as usize] as f64;
                }
            }
        }
        for &t in want.keys().filter(|t| !got.contains_key(t)) {
            assert!(
                kth.is_none() && (w[t as usize] / floor - 1.0).abs() < 1e-5,
                "missing token {t} weight {}",
                w[t as usize]
            );
            moved += w[t as usize] as f64;
        }
        assert!(
            (c.rest_weight - rest).abs() <= 1e-6 * rest + moved + 1e-30,
            "rest {} vs {rest}",
            c.rest_weight
        );
        eprintln!(
            "softmax_candidates n {n} top-k {top_k}: {} candidates, rest {rest:.4}",
            got.len()
        );
        if got.len() > 1 {
            let none = p
                .gpu
                .softmax_candidates(&gx, &draw, floor, top_k, got.len() - 1)
                .unwrap();
            assert!(none.is_none(), "past the cap");
        }
    }
}

fn attention_case(
    p: &Pair,
    r: &mut StdRng,
    heads: usize,
    kvh: usize,
    hd: usize,
    window: Option<usize>,
    steps: &[usize],
) {
    attention_case_limit(p, r, heads, kvh, hd, window, steps, &|_| MATMUL_NMSE);
}

/// As `attention_case`, each step held to `limit(pos0)`.
#[allow(clippy::too_many_arguments)]
fn attention_case_limit(
    p: &Pair,
    r: &mut StdRng,
    heads: usize,
    kvh: usize,
    hd: usize,
    window: Option<usize>,
    steps: &[usize],
    limit: &dyn Fn(usize) -> f64,
) {
    let max_positions: usize = steps.iter().sum::<usize>() + 3;
    let kcfg = KvCacheConfig {
        n_kv_heads: kvh,
        head_dim: hd,
        max_positions,
        window,
    };
    let acfg = AttentionConfig {
        n_heads: heads,
        n_kv_heads: kvh,
        head_dim: hd,
        window,
        scale: 1.0 / (hd as f32).sqrt(),
    };
    let sinks = random_weight(r, "attn_sinks", GgmlType::F32, &[heads], 1.0);
    let (cs, gs) = p.up(&sinks);
    let mut cc = p.cpu.new_kv_cache(&kcfg).unwrap();
    let mut gc = p.gpu.new_kv_cache(&kcfg).unwrap();
    let mut pos = 0;
    for &t in steps {
        let qv = randn(r, t * heads * hd, 1.0);
        let kv = randn(r, t * kvh * hd, 1.0);
        let vv = randn(r, t * kvh * hd, 1.0);
        let (cq, gq) = p.x(&qv, t, heads * hd);
        let (ck, gk) = p.x(&kv, t, kvh * hd);
        let (cv, gv) = p.x(&vv, t, kvh * hd);
        p.poison();
        let c = p
            .cpu
            .attention(&cq, &ck, &cv, &mut cc, pos, &cs, &acfg)
            .unwrap();
        let g = p
            .gpu
            .attention(&gq, &gk, &gv, &mut gc, pos, &gs, &acfg)
            .unwrap();
        p.check(
            &format!("attention h={heads}/{kvh} hd={hd} window={window:?} pos0={pos} t={t}"),
            &c,
            &g,
            limit(pos),
        );
        pos += t;
    }
    // Past the capacity: a clean ContextFull.
    let (_, gq) = p.x(&randn(r, 4 * heads * hd, 1.0), 4, heads * hd);
    let (_, gk) = p.x(&randn(r, 4 * kvh * hd, 1.0), 4, kvh * hd);
    let (_, gv) = p.x(&randn(r, 4 * kvh * hd, 1.0), 4, kvh * hd);
    assert!(matches!(
        p.gpu.attention(&gq, &gk, &gv, &mut gc, pos, &gs, &acfg),
        Err(BackendError::ContextFull { .. })
    ));
}

#[test]
fn attention_prefill_decode_window_sinks() {
    let Some(mut p) = pair() else { return };
    let mut r = rng();
    // Decode (t = 1) kernels: tensor cores (the default), per-head f32, grouped f32.
    for (tc, grouped) in [(true, false), (false, false), (false, true)] {
        p.gpu.set_decode_attention_tc(tc);
        p.gpu.set_grouped_decode_attention(grouped);
        eprintln!("decode attention: tensor cores {tc}, grouped {grouped}");
        attention_cases(&p, &mut r);
    }
    p.gpu.set_grouped_decode_attention(false);
    p.gpu.set_decode_attention_tc(true);
    // The tensor-core decode kernel with more splits than fit (8 kv heads: 33 blocks of 320
    // keys, several 64-key steps per warp), and every step of a window ring that wraps.
    attention_case(&p, &mut r, 8, 8, 64, None, &[9000, 1, 1]);
    attention_case(
        &p,
        &mut r,
        64,
        8,
        64,
        Some(128),
        &[
            100, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
            1, 1, 1, 1, 1,
        ],
    );
}

fn attention_cases(p: &Pair, r: &mut StdRng) {
    // GPT-OSS shapes: prefill longer than the window, decode steps, a second chunk.
    attention_case(p, r, 64, 8, 64, Some(128), &[200, 1, 1, 1, 37, 1, 130, 1]);
    attention_case(p, r, 64, 8, 64, None, &[200, 1, 1, 37, 1]);
    // Tiny-model shapes.
    attention_case(p, r, 4, 2, 32, Some(8), &[5, 1, 1, 1, 1, 1, 9, 1, 20, 1]);
    attention_case(p, r, 4, 2, 32, None, &[13, 1, 1, 7, 1]);
    // A long context: decode over 5000 cached keys (split-K).
    attention_case(p, r, 64, 8, 64, None, &[5000, 1, 1, 3]);
    // Odd head count per group, head_dim 128.
    attention_case(p, r, 12, 4, 128, Some(16), &[40, 1, 2]);
    // The grouped decode kernel at its limits: 8 heads per group with head_dim 256 over a
    // split context, one head per group with an odd dims-per-lane (96) through a wrapping
    // window, and 16 heads per group (the per-head kernel).
    attention_case(p, r, 16, 2, 256, None, &[700, 1, 1]);
    attention_case(p, r, 8, 8, 96, Some(50), &[70, 1, 1, 1, 33, 1]);
    attention_case(p, r, 32, 2, 64, None, &[40, 1, 1]);
}

#[allow(clippy::too_many_arguments)]
fn moe_case(
    p: &Pair,
    r: &mut StdRng,
    d_model: usize,
    n_ff: usize,
    e: usize,
    k: usize,
    expert_type: GgmlType,
    ts: &[usize],
) {
    moe_case_types(p, r, d_model, n_ff, e, k, expert_type, expert_type, ts);
}

/// A MoE block with gate/up of `expert_type` and down of `down_type` (re-quantized files mix
/// them: q4_k_m's down projection is Q8_0 in some layers, Q5_0 in others).
#[allow(clippy::too_many_arguments)]
fn moe_case_types(
    p: &Pair,
    r: &mut StdRng,
    d_model: usize,
    n_ff: usize,
    e: usize,
    k: usize,
    expert_type: GgmlType,
    down_type: GgmlType,
    ts: &[usize],
) {
    moe_case_limit(
        p,
        r,
        d_model,
        n_ff,
        e,
        k,
        expert_type,
        down_type,
        ts,
        MATMUL_NMSE,
    );
}

type MoePair = (
    MoeWeights<<CpuBackend as Backend>::Weight>,
    MoeWeights<<CudaBackend as Backend>::Weight>,
);

/// Random MoE weights (router F32, experts `expert_type`, down `down_type`) on both backends.
fn moe_weights(
    p: &Pair,
    r: &mut StdRng,
    d_model: usize,
    n_ff: usize,
    e: usize,
    expert_type: GgmlType,
    down_type: GgmlType,
) -> MoePair {
    moe_weights_scaled(
        p,
        r,
        d_model,
        n_ff,
        e,
        expert_type,
        down_type,
        MoeScales::USUAL,
    )
}

/// The spreads of random MoE weights (see `random_weight`); the router and the gate/up biases
/// keep 0.05 and 0.5.
struct MoeScales {
    gate_up: f32,
    down: f32,
    down_bias: f32,
}

impl MoeScales {
    /// What `moe_weights` draws.
    const USUAL: MoeScales = MoeScales {
        gate_up: 0.05,
        down: 0.05,
        down_bias: 0.5,
    };
}

/// As `moe_weights`, with the expert matrices and the down bias drawn at `sc`.
#[allow(clippy::too_many_arguments)]
fn moe_weights_scaled(
    p: &Pair,
    r: &mut StdRng,
    d_model: usize,
    n_ff: usize,
    e: usize,
    expert_type: GgmlType,
    down_type: GgmlType,
    sc: MoeScales,
) -> MoePair {
    let w = MoeWeights {
        router: random_weight(r, "ffn_gate_inp.weight", GgmlType::F32, &[d_model, e], 0.05),
        router_bias: random_weight(r, "ffn_gate_inp.bias", GgmlType::F32, &[e], 0.5),
        gate: random_weight(
            r,
            "ffn_gate_exps.weight",
            expert_type,
            &[d_model, n_ff, e],
            sc.gate_up,
        ),
        gate_bias: random_weight(r, "ffn_gate_exps.bias", GgmlType::F32, &[n_ff, e], 0.5),
        up: random_weight(
            r,
            "ffn_up_exps.weight",
            expert_type,
            &[d_model, n_ff, e],
            sc.gate_up,
        ),
        up_bias: random_weight(r, "ffn_up_exps.bias", GgmlType::F32, &[n_ff, e], 0.5),
        down: random_weight(
            r,
            "ffn_down_exps.weight",
            down_type,
            &[n_ff, d_model, e],
            sc.down,
        ),
        down_bias: random_weight(
            r,
            "ffn_down_exps.bias",
            GgmlType::F32,
            &[d_model, e],
            sc.down_bias,
        ),
    };
    let up = |x: &WeightData| p.up(x);
    let (cr, gr) = up(&w.router);
    let (crb, grb) = up(&w.router_bias);
    let (cg, gg) = up(&w.gate);
    let (cgb, ggb) = up(&w.gate_bias);
    let (cu, gu) = up(&w.up);
    let (cub, gub) = up(&w.up_bias);
    let (cd, gd) = up(&w.down);
    let (cdb, gdb) = up(&w.down_bias);
    let cw = MoeWeights {
        router: cr,
        router_bias: crb,
        gate: cg,
        gate_bias: cgb,
        up: cu,
        up_bias: cub,
        down: cd,
        down_bias: cdb,
    };
    let gw = MoeWeights {
        router: gr,
        router_bias: grb,
        gate: gg,
        gate_bias: ggb,
        up: gu,
        up_bias: gub,
        down: gd,
        down_bias: gdb,
    };
    (cw, gw)
}

/// As `moe_case_types`, held to `limit`.
#[allow(clippy::too_many_arguments)]
fn moe_case_limit(
    p: &Pair,
    r: &mut StdRng,
    d_model: usize,
    n_ff: usize,
    e: usize,
    k: usize,
    expert_type: GgmlType,
    down_type: GgmlType,
    ts: &[usize],
    limit: f64,
) {
    let (cw, gw) = moe_weights(p, r, d_model, n_ff, e, expert_type, down_type);
    let cfg = MoeConfig {
        n_experts: e,
        top_k: k,
    };
    for &t in ts {
        let xv = randn(r, t * d_model, 1.0);
        let (cx, gx) = p.x(&xv, t, d_model);
        p.poison();
        let c = p.cpu.moe(&cx, &cw, &cfg).unwrap();
        let g = p.gpu.moe(&gx, &gw, &cfg).unwrap();
        p.check(
            &format!("moe {expert_type:?}/{down_type:?} d={d_model} ff={n_ff} E={e} k={k} t={t}"),
            &c,
            &g,
            limit,
        );
    }
}

#[test]
fn moe_matches() {
    let Some(p) = pair() else { return };
    let mut r = rng();
    moe_case(&p, &mut r, 64, 96, 8, 4, GgmlType::MXFP4, &[1, 3, 8, 40]);
    moe_case(
        &p,
        &mut r,
        2880,
        2880,
        32,
        4,
        GgmlType::MXFP4,
        &[1, 2, 8, 33],
    );
    moe_case(&p, &mut r, 64, 96, 8, 4, GgmlType::Q8_0, &[1, 5]);
    moe_case(&p, &mut r, 64, 64, 16, 2, GgmlType::BF16, &[1, 9]);
}

/// The residual add and RMSNorm done by the decode MoE's router (`Backend::add_rms_norm_moe`,
/// `moe_router_topk_q_add`) against the CPU reference's `add_rms_norm` then `moe`: the MoE
/// output held to the dp4a MoE's 1e-9 (t <= 8; the tensor-core MoE's limit past that) and the
/// residual written in place to the norms' limit.
/// GPT-OSS shapes at t = 1, 2, 8, the widest row the fused kernel holds (4096), 40 and 256
/// experts with top 8, and the cases that take two launches instead: t = 9, a row of 4128, an
/// F16 norm weight, and the fusion switched off.
#[test]
fn add_rms_norm_moe_in_router() {
    let Some(mut p) = pair() else { return };
    let mut r = rng();
    let mx = GgmlType::MXFP4;
    for fused in [true, false] {
        p.gpu.set_router_norm(fused);
        for (d, ff, e, k, ts, nt) in [
            (2880, 2880, 32, 4, &[1usize, 2, 8, 9][..], GgmlType::F32),
            (4096, 64, 8, 4, &[1, 3], GgmlType::F32),
            (4128, 64, 8, 4, &[1], GgmlType::F32),
            (96, 160, 40, 4, &[1, 7], GgmlType::F32),
            (224, 96, 256, 8, &[1, 8], GgmlType::F32),
            (2880, 64, 8, 2, &[1], GgmlType::F16),
        ] {
            let (cw, gw) = moe_weights(&p, &mut r, d, ff, e, mx, mx);
            let cfg = MoeConfig {
                n_experts: e,
                top_k: k,
            };
            let (cn, gn) = p.up(&random_weight(&mut r, "ffn_norm.weight", nt, &[d], 1.0));
            for &t in ts {
                let (mut ch, mut gh) = p.x(&randn(&mut r, t * d, 2.0), t, d);
                let (cy, gy) = p.x(&randn(&mut r, t * d, 1.0), t, d);
                p.poison();
                let c = p.cpu.add_rms_norm_moe(&mut ch, &cy, &cn, 1e-5, &cw, &cfg);
                let g = p.gpu.add_rms_norm_moe(&mut gh, &gy, &gn, 1e-5, &gw, &cfg);
                let what = format!("add_rms_norm_moe d={d} ff={ff} E={e} k={k} t={t} {nt:?}");
                // Past 8 rows the MoE takes the bf16 tensor-core path (MATMUL_NMSE).
                let limit = if t <= 8 { 1e-9 } else { MATMUL_NMSE };
                p.check(
                    &format!("{what} fused={fused}"),
                    &c.unwrap(),
                    &g.unwrap(),
                    limit,
                );
                p.check(&format!("{what} residual"), &ch, &gh, EXACT_NMSE);
            }
        }
    }
}

/// The tensor-core prefill paths (kernels-cuda/src/prefill.rs): every weight type at the
/// threshold edge (8 rows: matrix-vector kernels, 9: tensor cores), tile edges (128, 129 rows,
/// outputs not a multiple of the 128-wide tile) and prefill-sized products.
#[test]
fn linear_prefill_tensor_cores() {
    let Some(mut p) = pair() else { return };
    // The tensor-core kernels at every width here, small odd shapes included.
    gptoss_kernels_cuda::set_tc_min_width(0);
    let mut r = rng();
    eprintln!(
        "tensor cores from {} rows",
        gptoss_kernels_cuda::tc_min_rows()
    );
    let shapes = [
        (8, 64, 96),
        (9, 64, 96),
        (16, 2880, 512),
        (129, 2880, 201),
        (128, 96, 130),
        (300, 4096, 2880),
        (2048, 2880, 640),
        (513, 32, 33),
    ];
    for (prec, lim) in TC_PRECISIONS {
        p.gpu.set_tc_precision(prec);
        for dtype in [
            GgmlType::Q8_0,
            GgmlType::MXFP4,
            GgmlType::F16,
            GgmlType::BF16,
            GgmlType::F32,
        ] {
            linear_tc_type(&p, &mut r, prec, dtype, &shapes, lim);
        }
    }
}

/// One weight type of `linear_prefill_tensor_cores` at precision `prec`, held to `lim`.
fn linear_tc_type(
    p: &Pair,
    r: &mut StdRng,
    prec: TcPrecision,
    dtype: GgmlType,
    shapes: &[(usize, usize, usize)],
    lim: f64,
) {
    for &(t, k, n) in shapes {
        let w = random_weight(r, "attn_q.weight", dtype, &[k, n], 0.05);
        let b = random_weight(r, "attn_q.bias", GgmlType::F32, &[n], 0.5);
        let (cw, gw) = p.up(&w);
        let (cb, gb) = p.up(&b);
        let xv = randn(r, t * k, 1.0);
        let (cx, gx) = p.x(&xv, t, k);
        for with_bias in [true, false] {
            let (cbo, gbo) = if with_bias {
                (Some(&cb), Some(&gb))
            } else {
                (None, None)
            };
            p.poison();
            let c = p.cpu.linear(&cx, &cw, cbo).unwrap();
            let g = p.gpu.linear(&gx, &gw, gbo).unwrap();
            p.check(
                &format!("prefill linear {prec:?} {dtype:?} t={t} k={k} n={n} bias={with_bias}"),
                &c,
                &g,
                lim,
            );
        }
    }
}

/// The grouped tensor-core MoE: GPT-OSS shapes at 16, 64 and 300 tokens, the tiny model's
/// shapes up to 2048 tokens, and odd shapes (ff not a multiple of the 64-wide gate/up tile,
/// d_model not a multiple of 128, top-3 of 5, experts that get no token).
#[test]
fn moe_prefill_tensor_cores() {
    let Some(mut p) = pair() else { return };
    // The tensor-core kernels at every width here, small odd shapes included.
    gptoss_kernels_cuda::set_tc_min_width(0);
    let mut r = rng();
    let fp4 = GgmlType::MXFP4;
    for (prec, lim) in TC_PRECISIONS {
        p.gpu.set_tc_precision(prec);
        eprintln!("tensor-core precision {prec:?}");
        let ts = [9, 16, 64, 300];
        moe_case_limit(&p, &mut r, 2880, 2880, 32, 4, fp4, fp4, &ts, lim);
        moe_case_limit(&p, &mut r, 64, 96, 8, 4, fp4, fp4, &[9, 97, 2048], lim);
        moe_case_limit(&p, &mut r, 96, 160, 5, 3, fp4, fp4, &[10, 129, 257], lim);
        moe_case_limit(&p, &mut r, 64, 32, 64, 1, fp4, fp4, &[33, 200], lim);
    }
}

/// The pair for the wgmma tests: tensor-core kernels at every width, bf16 precision; also
/// whether this GPU runs the wgmma kernels (sm_90a; elsewhere every setting runs mma.sync).
fn wgmma_pair() -> Option<(Pair, bool)> {
    let mut p = pair()?;
    gptoss_kernels_cuda::set_tc_min_width(0);
    p.gpu.set_tc_precision(TcPrecision::Bf16);
    let runs = p.gpu.arch() == "sm_90a";
    eprintln!(
        "arch {}: {}",
        p.gpu.arch(),
        if runs {
            "wgmma kernels against mma.sync"
        } else {
            "no wgmma here: mma.sync both times"
        }
    );
    Some((p, runs))
}

/// A wgmma kernel's output `g` against the mma.sync kernel's `m` of the same inputs: printed,
/// and held to `lim`.
fn check_against_mma(p: &Pair, what: &str, g: &CudaTensor, m: &CudaTensor, lim: f64) {
    let (gv, _, _) = p.gpu.to_host(g).unwrap();
    let (mv, _, _) = p.gpu.to_host(m).unwrap();
    let between = nmse(&gv, &mv);
    eprintln!("{what}: against mma.sync nmse {between:.3e}");
    assert!(between <= lim, "{what}: {between:e} from mma.sync");
}

/// One shape of `moe_prefill_wgmma`: d_model, n_ff, experts, top k, token counts, weight
/// spreads, x spread.
type WgmmaCase = (usize, usize, usize, usize, &'static [usize], MoeScales, f32);

/// The MXFP4 MoE prefill on Hopper's wgmma (moe_wgmma.cu), 2 and 4 warpgroups a block (on
/// other GPUs the mma.sync kernels run every time), bf16 precision: against the CPU reference at the matmul limit, and against
/// the mma.sync kernels (the same bf16 roundings and the same k16 chunks, each chunk's
/// products in another order; on an H200 the two came out bit-equal). GPT-OSS shapes; the
/// tiny model's widths up to 2048 tokens; 192 outputs (a down tile past d_model); 64 experts
/// with top 1 (experts without tokens); and E8M0 scales at both ends of the fast bf16
/// expansion's range (gate/up 2^120..2^123 with x near 2^-125, which also takes the f32
/// expansion above 248; down 2^-125..2^-122).
#[test]
fn moe_prefill_wgmma() {
    let Some((mut p, runs)) = wgmma_pair() else {
        return;
    };
    let mut r = rng();
    let fp4 = GgmlType::MXFP4;
    let extreme = MoeScales {
        gate_up: 2f32.powi(124),
        down: 2f32.powi(-121),
        down_bias: 2f32.powi(-120),
    };
    let cases: [WgmmaCase; 5] = [
        (2880, 2880, 32, 4, &[9, 300], MoeScales::USUAL, 1.0),
        (64, 128, 8, 4, &[9, 300, 2048], MoeScales::USUAL, 1.0),
        (192, 320, 5, 3, &[10, 129, 257], MoeScales::USUAL, 1.0),
        (128, 64, 64, 1, &[33, 200], MoeScales::USUAL, 1.0),
        (256, 128, 8, 2, &[40, 200], extreme, 2f32.powi(-125)),
    ];
    for (d, ff, e, k, ts, sc, xs) in cases {
        let (cw, gw) = moe_weights_scaled(&p, &mut r, d, ff, e, fp4, fp4, sc);
        let cfg = MoeConfig {
            n_experts: e,
            top_k: k,
        };
        for &t in ts {
            let xv = randn(&mut r, t * d, xs);
            let (cx, gx) = p.x(&xv, t, d);
            p.poison();
            let c = p.cpu.moe(&cx, &cw, &cfg).unwrap();
            p.gpu.set_moe_wgmma(0);
            let m = p.gpu.moe(&gx, &gw, &cfg).unwrap();
            // Without sm_90a every setting runs the mma.sync kernels: only the CPU check.
            for wgs in [2, 4] {
                p.gpu.set_moe_wgmma(wgs);
                let g = p.gpu.moe(&gx, &gw, &cfg).unwrap();
                let what = format!("moe wgmma x{wgs} d={d} ff={ff} E={e} k={k} t={t} x~{xs:e}");
                p.check(&what, &c, &g, MATMUL_NMSE);
                if runs {
                    check_against_mma(&p, &what, &g, &m, MATMUL_NMSE);
                }
            }
        }
    }
    p.gpu.set_moe_wgmma(4);
}

/// One shape of `linear_prefill_wgmma`: k, the output widths of the matrices that share x,
/// token counts, the weights' spread.
type LinearWgCase = (usize, &'static [usize], &'static [usize], f32);

/// The Q8_0 prefill products on Hopper's wgmma (gemm_wgmma.cu; on other GPUs the mma.sync
/// kernels run every time), bf16 precision: `linear_many` (the q/k/v launch: up to three
/// matrices in one grid) and `linear` against the CPU reference at the matmul limit, and
/// against the mma.sync kernel, which rounds every product and activation to f16 the same way
/// and sums the same k16 chunks (NMSE 0 between the two on an H100; held to 1e-10 here, the
/// order of products inside a chunk being the hardware's). GPT-OSS's q/k/v and output shapes; token counts that
/// leave a partial 128-token tile; outputs that leave a partial 256-row tile (65, 200, 8);
/// one stage of k (64); and Q8_0 scales at both ends of f16 (products q d down in f16's
/// subnormals with x near 2^10, and up near 2^15).
#[test]
fn linear_prefill_wgmma() {
    let Some((mut p, runs)) = wgmma_pair() else {
        return;
    };
    let mut r = rng();
    let cases: [(LinearWgCase, f32); 5] = [
        ((2880, &[4096, 512, 512], &[9, 300, 2048], 0.05), 1.0),
        ((4096, &[2880], &[9, 129], 0.05), 1.0),
        ((64, &[200, 8, 65], &[10, 257], 0.05), 1.0),
        ((128, &[300, 256], &[33], 2f32.powi(-14)), 2f32.powi(10)),
        ((192, &[96], &[40], 2f32.powi(14)), 1.0),
    ];
    for ((k, ns, ts, ws), xs) in cases {
        let q8 = GgmlType::Q8_0;
        let mats: Vec<_> = ns
            .iter()
            .map(|&n| p.up(&random_weight(&mut r, "attn_q.weight", q8, &[k, n], ws)))
            .collect();
        let biases: Vec<_> = ns
            .iter()
            .map(|&n| {
                p.up(&random_weight(
                    &mut r,
                    "attn_q.bias",
                    GgmlType::F32,
                    &[n],
                    0.5,
                ))
            })
            .collect();
        let (cw, gw) = every_other_bias(&mats, &biases);
        for &t in ts {
            let xv = randn(&mut r, t * k, xs);
            let (cx, gx) = p.x(&xv, t, k);
            p.poison();
            let c: Vec<_> = cw
                .iter()
                .map(|(w, b)| p.cpu.linear(&cx, w, *b).unwrap())
                .collect();
            // One matrix: linear_many runs `linear`.
            p.gpu.set_linear_wgmma(false);
            let mma = p.gpu.linear_many(&gx, &gw).unwrap();
            p.gpu.set_linear_wgmma(true);
            p.poison();
            let g = p.gpu.linear_many(&gx, &gw).unwrap();
            for (i, (ci, gi)) in c.iter().zip(&g).enumerate() {
                let what = format!("linear wgmma k={k} n={} t={t} w~{ws:e} x~{xs:e}", ns[i]);
                p.check(&what, ci, gi, MATMUL_NMSE);
                if runs {
                    check_against_mma(&p, &what, gi, &mma[i], 1e-10);
                }
            }
        }
    }
}

/// Prefill-sized attention through the tensor-core flash kernel (from `tc_min_rows` rows on):
/// a 2048-row prompt with the GPT-OSS window, chunks that start past the ring's wrap, the
/// 8/9-row threshold edge, a full-attention layer with a long second chunk, and head dims 32
/// and 128.
#[test]
fn attention_prefill_tensor_cores() {
    let Some(mut p) = pair() else { return };
    // The tensor-core kernels at every width here, small odd shapes included.
    gptoss_kernels_cuda::set_tc_min_width(0);
    let mut r = rng();
    // The first chunk sees only its own (f32) keys: the tensor-core limit; later steps also
    // read the f16 cache.
    for (prec, tc) in TC_PRECISIONS {
        p.gpu.set_tc_precision(prec);
        eprintln!("tensor-core precision {prec:?}");
        let lim = |pos0: usize| {
            if pos0 == 0 {
                tc
            } else {
                tc.max(F16_CACHE_NMSE)
            }
        };
        attention_case_limit(
            &p,
            &mut r,
            64,
            8,
            64,
            Some(128),
            &[2048, 1, 300, 9, 8, 1],
            &lim,
        );
        attention_case_limit(&p, &mut r, 64, 8, 64, None, &[1000, 300, 1, 64, 9], &lim);
        attention_case_limit(&p, &mut r, 4, 2, 32, Some(8), &[97, 1, 33], &lim);
        attention_case_limit(&p, &mut r, 8, 2, 128, None, &[129, 2, 65], &lim);
        attention_case_limit(&p, &mut r, 8, 2, 128, None, &[300, 64], &lim);
    }
}

#[test]
fn moe_requantized_types() {
    let Some(p) = pair() else { return };
    let mut r = rng();
    // Every type on a small block (256-wide for the K-quants), then what the re-quantized
    // gpt-oss-20b files hold: q4_k_m (Q5_0 gate/up, Q5_0 or Q8_0 down), q5_k_m (Q5_1, Q8_0),
    // iq4_xs (IQ4_NL, Q5_1 down in the first layers), q4_0.
    for dtype in REQUANT_TYPES {
        moe_case(&p, &mut r, 256, 512, 8, 4, dtype, &[1, 3, 9]);
    }
    moe_case_types(
        &p,
        &mut r,
        2880,
        2880,
        32,
        4,
        GgmlType::Q5_0,
        GgmlType::Q8_0,
        &[1, 2, 8, 33],
    );
    moe_case(&p, &mut r, 2880, 2880, 32, 4, GgmlType::Q5_0, &[1, 5]);
    moe_case_types(
        &p,
        &mut r,
        2880,
        2880,
        16,
        4,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        &[1, 4],
    );
    moe_case_types(
        &p,
        &mut r,
        2880,
        2880,
        16,
        4,
        GgmlType::IQ4_NL,
        GgmlType::Q5_1,
        &[1, 7],
    );
    moe_case(&p, &mut r, 2880, 2880, 16, 4, GgmlType::Q4_0, &[1, 3]);
    // Gate and up of different types are refused cleanly (one kernel reads both).
    let mk = |r: &mut StdRng, name: &str, t, shape: &[usize]| {
        p.gpu
            .upload(&random_weight(r, name, t, shape, 0.05))
            .unwrap()
    };
    let (d, ff, e) = (64, 64, 4);
    let w = MoeWeights {
        router: mk(&mut r, "r", GgmlType::F32, &[d, e]),
        router_bias: mk(&mut r, "rb", GgmlType::F32, &[e]),
        gate: mk(&mut r, "g", GgmlType::Q5_0, &[d, ff, e]),
        gate_bias: mk(&mut r, "gb", GgmlType::F32, &[ff, e]),
        up: mk(&mut r, "u", GgmlType::Q4_0, &[d, ff, e]),
        up_bias: mk(&mut r, "ub", GgmlType::F32, &[ff, e]),
        down: mk(&mut r, "d", GgmlType::Q5_0, &[ff, d, e]),
        down_bias: mk(&mut r, "db", GgmlType::F32, &[d, e]),
    };
    let x = p.gpu.from_host(&randn(&mut r, 2 * d, 1.0), 2, d).unwrap();
    let cfg = MoeConfig {
        n_experts: e,
        top_k: 2,
    };
    assert!(matches!(
        p.gpu.moe(&x, &w, &cfg),
        Err(BackendError::UnsupportedType { .. })
    ));
}

/// The decode MoE kernels with 1, 2 and 4 rows per warp, on row counts that leave partial
/// warps (n_ff 160, d_model 96 / 224), more experts than a warp has lanes (top-k over 40 and
/// 256), k not dividing 8 (the other down kernel) and k = 8, for t = 1..8.
#[test]
fn moe_rows_per_warp_variants() {
    let Some(mut p) = pair() else { return };
    let mut r = rng();
    // The f32 kernels (the dp4a planes, on by default, would take these decode rows).
    p.gpu.set_decode_dp4a(false);
    for (rg, rd) in [(1, 1), (1, 2), (2, 2), (4, 4), (4, 1), (1, 4)] {
        p.gpu.set_moe_rows_per_warp(rg, rd);
        eprintln!("rows per warp: gate+up {rg}, down {rd}");
        moe_case(&p, &mut r, 96, 160, 40, 4, GgmlType::MXFP4, &[1, 2, 7]);
        moe_case(&p, &mut r, 224, 96, 256, 8, GgmlType::MXFP4, &[1, 8]);
        moe_case(&p, &mut r, 64, 160, 9, 3, GgmlType::MXFP4, &[1, 5]);
        moe_case(&p, &mut r, 2880, 2880, 32, 4, GgmlType::MXFP4, &[1, 4]);
    }
}

/// The int8 tensor-core decode kernels (set_decode_mma(true): Q8_0 products at t <= 2 and the
/// MXFP4 MoE at t <= 8, activations as four int8 planes) on odd shapes (partial 16-row tiles, k
/// of one block, k = 16 slots), and the f32-activation kernels (the default) on the same cases.
#[test]
fn decode_mma_and_f32_kernels() {
    let Some(mut p) = pair() else { return };
    let mut r = rng();
    // The int8 tensor-core kernels and the f32 kernels (the dp4a MoE below).
    p.gpu.set_decode_dp4a(false);
    for mma in [true, false] {
        p.gpu.set_decode_mma(mma);
        eprintln!("decode mma: {mma}");
        for &(t, k, n) in &[
            (1, 32, 1),
            (2, 96, 37),
            (1, 2880, 17),
            (2, 4096, 2880),
            (1, 2880, 5120),
            (1, 64, 32768),
        ] {
            let w = random_weight(&mut r, "attn_q.weight", GgmlType::Q8_0, &[k, n], 0.05);
            let b = random_weight(&mut r, "attn_q.bias", GgmlType::F32, &[n], 0.5);
            let (cw, gw) = p.up(&w);
            let (cb, gb) = p.up(&b);
            let xv = randn(&mut r, t * k, 1.0);
            let (cx, gx) = p.x(&xv, t, k);
            p.poison();
            let c = p.cpu.linear(&cx, &cw, Some(&cb)).unwrap();
            let g = p.gpu.linear(&gx, &gw, Some(&gb)).unwrap();
            p.check(
                &format!("linear Q8_0 t={t} k={k} n={n} mma={mma}"),
                &c,
                &g,
                MATMUL_NMSE,
            );
        }
        moe_case(&p, &mut r, 2880, 2880, 32, 4, GgmlType::MXFP4, &[1, 2, 8]);
        moe_case(&p, &mut r, 96, 160, 40, 4, GgmlType::MXFP4, &[1, 3, 7]);
        moe_case(&p, &mut r, 224, 96, 256, 8, GgmlType::MXFP4, &[1, 8]);
        moe_case(&p, &mut r, 64, 160, 9, 3, GgmlType::MXFP4, &[1, 5]);
        moe_case(&p, &mut r, 32, 32, 16, 16, GgmlType::MXFP4, &[1, 2]);
    }
    // The dp4a decode MoE on three int8 planes (the default), held to 1e-9 (f32-grade:
    // llama.cpp-style int8 activations sit near 1e-5); top-k not dividing 8 falls back to the f32
    // kernels.
    p.gpu.set_decode_mma(false);
    p.gpu.set_decode_dp4a(true);
    let mx = GgmlType::MXFP4;
    for (d, ff, e, k, ts) in [
        (2880, 2880, 32, 4, &[1usize, 2, 8][..]),
        (96, 160, 40, 4, &[1, 3, 7]),
        (224, 96, 256, 8, &[1, 8]),
        (64, 160, 8, 2, &[1, 5]),
        (64, 160, 9, 3, &[1, 2]),
        (32, 32, 16, 16, &[1, 2]),
    ] {
        moe_case_limit(&p, &mut r, d, ff, e, k, mx, mx, ts, 1e-9);
    }
}

/// The fused one-token q/k/v + RoPE (kernels-cuda/src/decode_fused.rs) against the CPU
/// reference's separate steps, on GPT-OSS shapes and odd ones (head_dim 8 to 128, Q8_0 and
/// MXFP4), at t = 1 (fused) and t = 3 (the separate kernels), positions changing between cases
/// (the cos/sin table is remade) and repeated (kept); and against the same backend with the
/// fused form off, which must agree bit for bit up to 1e-12.
#[test]
fn fused_qkv_rope() {
    let Some(mut p) = pair() else { return };
    let mut r = rng();
    let q8 = GgmlType::Q8_0;
    let mx = GgmlType::MXFP4;
    // q/k/v + RoPE: (type, k, head_dim, heads, kv heads, t, pos0).
    for (dt, k, hd, nh, nkv, t, pos0) in [
        (q8, 2880, 64, 64, 8, 1, 0),
        (q8, 2880, 64, 64, 8, 1, 4097),
        (q8, 2880, 64, 64, 8, 1, 131000),
        (q8, 2880, 64, 64, 8, 3, 17),
        (mx, 96, 32, 4, 2, 1, 9),
        (q8, 64, 128, 2, 1, 1, 300),
        (q8, 64, 8, 3, 1, 1, 5),
    ] {
        let rope = gptoss_rope(hd);
        let mut mat = |name: &str, n: usize| {
            let w = random_weight(&mut r, name, dt, &[k, n], 0.05);
            let b = random_weight(&mut r, name, GgmlType::F32, &[n], 0.5);
            (p.up(&w), p.up(&b))
        };
        let ((cq, gq), (cqb, gqb)) = mat("attn_q.weight", nh * hd);
        let ((ck, gk), (ckb, gkb)) = mat("attn_k.weight", nkv * hd);
        let ((cv, gv), (cvb, gvb)) = mat("attn_v.weight", nkv * hd);
        let xv = randn(&mut r, t * k, 1.0);
        let (cx, gx) = p.x(&xv, t, k);
        let cw = [(&cq, &cqb), (&ck, &ckb), (&cv, &cvb)];
        let c = qkv_rope_of(&p.cpu, &cx, cw, nh, nkv, pos0, &rope);
        let mut runs = Vec::new();
        for fuse in [true, true, false] {
            p.gpu.set_decode_fuse(fuse);
            p.poison();
            let gw = [(&gq, &gqb), (&gk, &gkb), (&gv, &gvb)];
            let g = qkv_rope_of(&p.gpu, &gx, gw, nh, nkv, pos0, &rope);
            let what = format!(
                "qkv_rope {dt:?} k={k} hd={hd} heads={nh}/{nkv} t={t} pos0={pos0} fuse={fuse}"
            );
            for (i, name) in ["q", "k", "v"].iter().enumerate() {
                p.check(&format!("{what} {name}"), &c[i], &g[i], MATMUL_NMSE);
            }
            runs.push(g);
        }
        // Fused and separate launches do the same arithmetic.
        for (fused, separate) in runs[0].iter().zip(&runs[2]) {
            let (a, ..) = p.gpu.to_host(fused).unwrap();
            let (b, ..) = p.gpu.to_host(separate).unwrap();
            let e = nmse(&a, &b);
            assert!(e <= 1e-12, "qkv_rope fused vs separate: NMSE {e:e}");
        }
    }
}
