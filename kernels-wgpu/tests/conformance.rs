//! Every operation of the wgpu backend against the CPU reference backend on the same fresh
//! random inputs, with test-backend-ops-style NMSE limits (5e-4 for products and attention,
//! 1e-6 for the rest; NaN never passes). Output buffers are poisoned with NaN, so an element
//! a kernel forgets to write fails the comparison. Without an adapter every test prints why and
//! skips.

use std::sync::OnceLock;

use gptoss_backend::cpu::CpuBackend;
use gptoss_backend::{
    AttentionConfig, Backend, GgmlType, HostBytes, KvCacheConfig, MoeConfig, MoeWeights, Rope,
    RopeConfig, WeightData,
};
use gptoss_kernels_wgpu::{WgpuBackend, WgpuOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const MATMUL_NMSE: f64 = 5e-4;
const EXACT_NMSE: f64 = 1e-6;

/// The backends under test, in two modes: `FULL` uses what the adapter offers (subgroups,
/// shader-f16), `PLAIN` turns both off (workgroup-memory reductions, f32 KV cache), so that both
/// code paths are checked on every adapter that offers the features (lavapipe does). Each mode
/// has the backend under test (poisoned outputs) and one whose bindings are capped at 4 KiB so
/// that weights are split into several buffers even at test sizes.
const FULL: usize = 0;
const PLAIN: usize = 1;

type Pair = (WgpuBackend, WgpuBackend);

fn gpus(mode: usize) -> Option<&'static Pair> {
    static B: OnceLock<Option<[Pair; 2]>> = OnceLock::new();
    B.get_or_init(|| {
        let open = |plain: bool| -> Result<Pair, String> {
            let mut o = WgpuOptions::from_env();
            o.poison_outputs = true;
            if plain {
                o.no_f16 = true;
                o.no_subgroups = true;
            }
            let a = WgpuBackend::with_options(&o).map_err(|e| e.to_string())?;
            println!("wgpu adapter: {}", a.adapter_info());
            o.max_binding_bytes = Some(4096);
            let b = WgpuBackend::with_options(&o).expect("the same adapter, opened a second time");
            Ok((a, b))
        };
        match (open(false), open(true)) {
            (Ok(full), Ok(plain)) => Some([full, plain]),
            (Err(e), _) | (_, Err(e)) => {
                println!("no wgpu adapter: {e}; skipping the wgpu conformance tests");
                None
            }
        }
    })
    .as_ref()
    .map(|b| &b[mode])
}

/// One `#[test]` per mode for each check `name_with(gpu, split)`.
macro_rules! in_both_modes {
    ($check:ident, $full:ident, $plain:ident) => {
        #[test]
        fn $full() {
            match gpus(FULL) {
                Some((gpu, split)) => $check(gpu, split),
                None => println!("no wgpu adapter: skipped"),
            }
        }
        #[test]
        fn $plain() {
            match gpus(PLAIN) {
                Some((gpu, split)) => $check(gpu, split),
                None => println!("no wgpu adapter: skipped"),
            }
        }
    };
}

fn rng(test: &str) -> StdRng {
    let seed = std::env::var("GPTOSS_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    println!("{test}: seed {seed} (replay with GPTOSS_TEST_SEED={seed})");
    StdRng::seed_from_u64(seed)
}

fn uniform(rng: &mut StdRng, n: usize, a: f32) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-a..=a)).collect()
}

/// Random bytes of a valid tensor of `dtype` with `numel` elements (values of magnitude ~`a`).
fn random_bytes(rng: &mut StdRng, dtype: GgmlType, numel: usize, a: f32) -> Vec<u8> {
    match dtype {
        GgmlType::F32 => uniform(rng, numel, a)
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        GgmlType::F16 => uniform(rng, numel, a)
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect(),
        GgmlType::BF16 => uniform(rng, numel, a)
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
            .collect(),
        GgmlType::Q8_0 => {
            let mut out = Vec::with_capacity(numel / 32 * 34);
            for _ in 0..numel / 32 {
                let d = half::f16::from_f32(rng.random_range(0.2..1.0) * a / 127.0);
                out.extend_from_slice(&d.to_le_bytes());
                for _ in 0..32 {
                    out.push(rng.random_range(-127i8..=127) as u8);
                }
            }
            out
        }
        GgmlType::MXFP4 => {
            // Scales around `a` / 6 (the largest E2M1 magnitude is 6), including small ones.
            let e0 = (127.0 + (a / 6.0).log2()).round() as i32;
            let mut out = Vec::with_capacity(numel / 32 * 17);
            for _ in 0..numel / 32 {
                out.push((e0 + rng.random_range(-3..=1)).clamp(1, 254) as u8);
                for _ in 0..16 {
                    out.push(rng.random::<u8>());
                }
            }
            out
        }
        t => panic!("no generator for {t}"),
    }
}

fn weight(rng: &mut StdRng, name: &str, dtype: GgmlType, shape: &[usize], a: f32) -> WeightData {
    let numel = shape.iter().product();
    WeightData {
        name: name.into(),
        dtype,
        shape: shape.to_vec(),
        bytes: HostBytes::from_vec(random_bytes(rng, dtype, numel, a)),
    }
}

fn nmse(a: &[f32], r: &[f32]) -> f64 {
    assert_eq!(a.len(), r.len(), "lengths differ");
    let (mut num, mut den) = (0f64, 0f64);
    for (&x, &y) in a.iter().zip(r) {
        num += (x as f64 - y as f64).powi(2);
        den += (y as f64).powi(2);
    }
    if num.is_nan() || den.is_nan() {
        return f64::NAN;
    }
    num / den.max(f64::MIN_POSITIVE)
}

#[track_caller]
fn check(what: &str, got: &[f32], want: &[f32], limit: f64) {
    let e = nmse(got, want);
    let m = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, |x, y| {
            if y.is_nan() || x.is_nan() {
                f32::NAN
            } else {
                x.max(y)
            }
        });
    println!("{what}: nmse {e:.3e}, max|diff| {m:.3e}");
    assert!(
        want.iter().any(|&v| v != 0.0),
        "{what}: reference is all zeros"
    );
    assert!(
        e <= limit,
        "{what}: nmse {e:.3e} above {limit:.0e} (max|diff| {m:.3e})"
    );
}

fn cpu_host(c: &CpuBackend, t: &<CpuBackend as Backend>::Tensor) -> Vec<f32> {
    c.to_host(t).unwrap().0
}

fn gpu_host(g: &WgpuBackend, t: &<WgpuBackend as Backend>::Tensor) -> Vec<f32> {
    g.to_host(t).unwrap().0
}

in_both_modes!(
    linear_every_type_and_shape_with,
    linear_every_type_and_shape,
    linear_every_type_and_shape_plain
);

fn linear_every_type_and_shape_with(gpu: &WgpuBackend, split: &WgpuBackend) {
    let cpu = CpuBackend::new();
    let mut r = rng("linear");
    let cases: &[(GgmlType, usize, usize, &[usize])] = &[
        (GgmlType::F32, 64, 50, &[1, 3, 9, 37]),
        (GgmlType::F32, 30, 7, &[1, 40]),
        (GgmlType::F16, 64, 50, &[1, 8, 33]),
        (GgmlType::F16, 33, 9, &[2, 17]),
        (GgmlType::BF16, 128, 70, &[1, 5, 70]),
        (GgmlType::BF16, 31, 5, &[1, 12]),
        (GgmlType::Q8_0, 96, 64, &[1, 2, 8, 9, 40]),
        (GgmlType::MXFP4, 96, 80, &[1, 4, 8, 13, 64]),
        (GgmlType::MXFP4, 64, 8, &[1, 100]),
    ];
    for &(dtype, k, n, ts) in cases {
        let wd = weight(&mut r, "w", dtype, &[k, n], 1.0);
        let bd = weight(&mut r, "b", GgmlType::F32, &[n], 0.5);
        let (cw, cb) = (cpu.upload(&wd).unwrap(), cpu.upload(&bd).unwrap());
        for g in [gpu, split] {
            let (gw, gb) = (g.upload(&wd).unwrap(), g.upload(&bd).unwrap());
            for &t in ts {
                let x = uniform(&mut r, t * k, 1.0);
                let cx = cpu.from_host(&x, t, k).unwrap();
                let gx = g.from_host(&x, t, k).unwrap();
                for bias in [false, true] {
                    let want = cpu.linear(&cx, &cw, bias.then_some(&cb)).unwrap();
                    let got = g.linear(&gx, &gw, bias.then_some(&gb)).unwrap();
                    assert_eq!((got.rows(), got.cols()), (t, n));
                    check(
                        &format!(
                            "linear {dtype} [{t}x{k}]x[{n}x{k}] bias {bias} (max binding cap {})",
                            std::ptr::eq(g, split)
                        ),
                        &gpu_host(g, &got),
                        &cpu_host(&cpu, &want),
                        MATMUL_NMSE,
                    );
                }
            }
        }
    }
}

in_both_modes!(
    gptoss_sized_gemv_with,
    gptoss_sized_gemv,
    gptoss_sized_gemv_plain
);

fn gptoss_sized_gemv_with(gpu: &WgpuBackend, _: &WgpuBackend) {
    let cpu = CpuBackend::new();
    let mut r = rng("gemv 2880");
    for dtype in [GgmlType::MXFP4, GgmlType::Q8_0] {
        let wd = weight(&mut r, "w", dtype, &[2880, 2880], 0.05);
        let bd = weight(&mut r, "b", GgmlType::F32, &[2880], 0.5);
        let (cw, cb) = (cpu.upload(&wd).unwrap(), cpu.upload(&bd).unwrap());
        let (gw, gb) = (gpu.upload(&wd).unwrap(), gpu.upload(&bd).unwrap());
        for t in [1, 4] {
            let x = uniform(&mut r, t * 2880, 1.0);
            let want = cpu
                .linear(&cpu.from_host(&x, t, 2880).unwrap(), &cw, Some(&cb))
                .unwrap();
            let got = gpu
                .linear(&gpu.from_host(&x, t, 2880).unwrap(), &gw, Some(&gb))
                .unwrap();
            check(
                &format!("linear {dtype} [{t}x2880]x[2880x2880]"),
                &gpu_host(gpu, &got),
                &cpu_host(&cpu, &want),
                MATMUL_NMSE,
            );
        }
    }
}

in_both_modes!(
    embed_every_type_with,
    embed_every_type,
    embed_every_type_plain
);

fn embed_every_type_with(gpu: &WgpuBackend, split: &WgpuBackend) {
    let cpu = CpuBackend::new();
    let mut r = rng("embed");
    for dtype in [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q8_0,
        GgmlType::MXFP4,
    ] {
        let (d, vocab) = (64, 300);
        let wd = weight(&mut r, "tok", dtype, &[d, vocab], 1.0);
        let ids: Vec<u32> = (0..23).map(|_| r.random_range(0..vocab as u32)).collect();
        let want = cpu.embed(&cpu.upload(&wd).unwrap(), &ids).unwrap();
        for g in [gpu, split] {
            let got = g.embed(&g.upload(&wd).unwrap(), &ids).unwrap();
            check(
                &format!("embed {dtype}"),
                &gpu_host(g, &got),
                &cpu_host(&cpu, &want),
                EXACT_NMSE,
            );
        }
        assert!(
            gpu.embed(&gpu.upload(&wd).unwrap(), &[vocab as u32])
                .is_err()
        );
    }
}

in_both_modes!(
    rms_norm_add_argmax_last_row_with,
    rms_norm_add_argmax_last_row,
    rms_norm_add_argmax_last_row_plain
);

fn rms_norm_add_argmax_last_row_with(gpu: &WgpuBackend, _: &WgpuBackend) {
    let cpu = CpuBackend::new();
    let mut r = rng("elementwise");
    for (t, d) in [(1, 64), (7, 2880), (3, 1000)] {
        let x = uniform(&mut r, t * d, 2.0);
        let y = uniform(&mut r, t * d, 2.0);
        for dtype in [GgmlType::F32, GgmlType::BF16] {
            let wd = weight(&mut r, "norm", dtype, &[d], 1.0);
            let want = cpu
                .rms_norm(
                    &cpu.from_host(&x, t, d).unwrap(),
                    &cpu.upload(&wd).unwrap(),
                    1e-5,
                )
                .unwrap();
            let got = gpu
                .rms_norm(
                    &gpu.from_host(&x, t, d).unwrap(),
                    &gpu.upload(&wd).unwrap(),
                    1e-5,
                )
                .unwrap();
            check(
                &format!("rms_norm {dtype} [{t}x{d}]"),
                &gpu_host(gpu, &got),
                &cpu_host(&cpu, &want),
                EXACT_NMSE,
            );
        }
        let mut cx = cpu.from_host(&x, t, d).unwrap();
        cpu.add_assign(&mut cx, &cpu.from_host(&y, t, d).unwrap())
            .unwrap();
        let mut gx = gpu.from_host(&x, t, d).unwrap();
        gpu.add_assign(&mut gx, &gpu.from_host(&y, t, d).unwrap())
            .unwrap();
        check(
            &format!("add [{t}x{d}]"),
            &gpu_host(gpu, &gx),
            &cpu_host(&cpu, &cx),
            EXACT_NMSE,
        );
        assert_eq!(
            gpu.argmax(&gx).unwrap(),
            cpu.argmax(&cx).unwrap(),
            "argmax [{t}x{d}]"
        );
        let want = cpu.last_row(&cx).unwrap();
        let got = gpu.last_row(&gx).unwrap();
        check(
            &format!("last_row [{t}x{d}]"),
            &gpu_host(gpu, &got),
            &cpu_host(&cpu, &want),
            EXACT_NMSE,
        );
    }
    // Ties go to the first index.
    let x = [1.0f32, 3.0, 3.0, -1.0, 5.0, 5.0, 5.0, 0.0];
    assert_eq!(
        gpu.argmax(&gpu.from_host(&x, 2, 4).unwrap()).unwrap(),
        vec![1, 0]
    );
    let big: Vec<f32> = (0..5000)
        .map(|i| if i == 4097 || i == 4500 { 9.0 } else { 0.0 })
        .collect();
    assert_eq!(
        gpu.argmax(&gpu.from_host(&big, 1, 5000).unwrap()).unwrap(),
        vec![4097]
    );
}

in_both_modes!(
    rope_with_and_without_yarn_at_far_positions_with,
    rope_with_and_without_yarn_at_far_positions,
    rope_with_and_without_yarn_at_far_positions_plain
);

fn rope_with_and_without_yarn_at_far_positions_with(gpu: &WgpuBackend, _: &WgpuBackend) {
    let cpu = CpuBackend::new();
    let mut r = rng("rope");
    for (factor, hd, nh, t, pos0) in [
        (32.0, 64, 4, 5, 0usize),
        (32.0, 64, 2, 3, 4093),
        (32.0, 32, 3, 4, 131_000),
        (1.0, 16, 2, 6, 77),
    ] {
        let rope = Rope::new(&RopeConfig {
            head_dim: hd,
            theta: 150000.0,
            scaling_factor: factor,
            original_context: 4096,
            beta_fast: 32.0,
            beta_slow: 1.0,
        });
        let x = uniform(&mut r, t * nh * hd, 1.0);
        let mut cx = cpu.from_host(&x, t, nh * hd).unwrap();
        cpu.rope(&mut cx, nh, pos0, &rope).unwrap();
        let mut gx = gpu.from_host(&x, t, nh * hd).unwrap();
        gpu.rope(&mut gx, nh, pos0, &rope).unwrap();
        check(
            &format!("rope factor {factor} hd {hd} pos {pos0}.."),
            &gpu_host(gpu, &gx),
            &cpu_host(&cpu, &cx),
            EXACT_NMSE,
        );
    }
}

/// Run the same sequence of attention calls (prefill chunks, then single tokens) on both
/// backends, comparing every output.
fn attention_case(
    gpu: &WgpuBackend,
    r: &mut StdRng,
    cfg: AttentionConfig,
    max_pos: usize,
    chunks: &[usize],
) {
    let cpu = CpuBackend::new();
    let kv = KvCacheConfig {
        n_kv_heads: cfg.n_kv_heads,
        head_dim: cfg.head_dim,
        max_positions: max_pos,
        window: cfg.window,
    };
    let sinks = weight(r, "sinks", GgmlType::F32, &[cfg.n_heads], 2.0);
    let (cs, gs) = (cpu.upload(&sinks).unwrap(), gpu.upload(&sinks).unwrap());
    let mut cc = cpu.new_kv_cache(&kv).unwrap();
    let mut gc = gpu.new_kv_cache(&kv).unwrap();
    let (qw, kw) = (cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim);
    let mut pos = 0;
    for &t in chunks {
        let q = uniform(r, t * qw, 1.5);
        let k = uniform(r, t * kw, 1.5);
        let v = uniform(r, t * kw, 1.0);
        let want = cpu
            .attention(
                &cpu.from_host(&q, t, qw).unwrap(),
                &cpu.from_host(&k, t, kw).unwrap(),
                &cpu.from_host(&v, t, kw).unwrap(),
                &mut cc,
                pos,
                &cs,
                &cfg,
            )
            .unwrap();
        let got = gpu
            .attention(
                &gpu.from_host(&q, t, qw).unwrap(),
                &gpu.from_host(&k, t, kw).unwrap(),
                &gpu.from_host(&v, t, kw).unwrap(),
                &mut gc,
                pos,
                &gs,
                &cfg,
            )
            .unwrap();
        check(
            &format!("attention {cfg:?} positions {pos}..{}", pos + t),
            &gpu_host(gpu, &got),
            &cpu_host(&cpu, &want),
            MATMUL_NMSE,
        );
        pos += t;
    }
    // The cache must hold exactly 0..pos, and a full context is an error.
    let q = gpu.from_host(&vec![0.5; qw], 1, qw).unwrap();
    let k = gpu.from_host(&vec![0.5; kw], 1, kw).unwrap();
    assert!(
        gpu.attention(&q, &k, &k, &mut gc, pos + 1, &gs, &cfg)
            .is_err()
    );
}

in_both_modes!(
    attention_gqa_windows_sinks_ring_prefill_with,
    attention_gqa_windows_sinks_ring_prefill,
    attention_gqa_windows_sinks_ring_prefill_plain
);

fn attention_gqa_windows_sinks_ring_prefill_with(gpu: &WgpuBackend, _: &WgpuBackend) {
    let mut r = rng("attention");
    let cfg = |n_heads, n_kv_heads, head_dim, window| AttentionConfig {
        n_heads,
        n_kv_heads,
        head_dim,
        window,
        scale: 1.0 / (head_dim as f32).sqrt(),
    };
    // Full causal, GQA 4:2, prefill then decode (the cache grows past its first allocation).
    attention_case(gpu, &mut r, cfg(4, 2, 32, None), 600, &[7, 1, 1, 300, 1]);
    // Sliding window 8 (ring of 8): a prefill longer than the ring, then decode across wraps.
    attention_case(
        gpu,
        &mut r,
        cfg(4, 2, 32, Some(8)),
        64,
        &[13, 1, 1, 1, 5, 9, 1],
    );
    // GPT-OSS head shape: 64 heads over 8 kv heads of 64, window 128, long prefill.
    attention_case(gpu, &mut r, cfg(64, 8, 64, Some(128)), 400, &[150, 1, 1]);
    attention_case(gpu, &mut r, cfg(64, 8, 64, None), 400, &[70, 1]);
    // Odd head dim, MQA.
    attention_case(gpu, &mut r, cfg(3, 1, 20, Some(3)), 20, &[2, 1, 4, 1]);
}

fn upload_moe<B: Backend>(b: &B, w: &MoeWeights<WeightData>) -> MoeWeights<B::Weight> {
    let u = |x: &WeightData| b.upload(x).unwrap();
    MoeWeights {
        router: u(&w.router),
        router_bias: u(&w.router_bias),
        gate: u(&w.gate),
        gate_bias: u(&w.gate_bias),
        up: u(&w.up),
        up_bias: u(&w.up_bias),
        down: u(&w.down),
        down_bias: u(&w.down_bias),
    }
}

#[allow(clippy::too_many_arguments)]
fn moe_case(
    g: &WgpuBackend,
    r: &mut StdRng,
    dtype: GgmlType,
    d: usize,
    dff: usize,
    e: usize,
    k: usize,
    ts: &[usize],
) {
    let cpu = CpuBackend::new();
    let wd = MoeWeights {
        router: weight(r, "router", GgmlType::F32, &[d, e], 0.5),
        router_bias: weight(r, "router_b", GgmlType::F32, &[e], 0.5),
        gate: weight(r, "gate", dtype, &[d, dff, e], 0.3),
        gate_bias: weight(r, "gate_b", GgmlType::F32, &[dff, e], 0.5),
        up: weight(r, "up", dtype, &[d, dff, e], 0.3),
        up_bias: weight(r, "up_b", GgmlType::F32, &[dff, e], 0.5),
        down: weight(r, "down", dtype, &[dff, d, e], 0.3),
        down_bias: weight(r, "down_b", GgmlType::F32, &[d, e], 0.5),
    };
    let cw = upload_moe(&cpu, &wd);
    let gw = upload_moe(g, &wd);
    let cfg = MoeConfig {
        n_experts: e,
        top_k: k,
    };
    for &t in ts {
        let x = uniform(r, t * d, 1.0);
        let want = cpu
            .moe(&cpu.from_host(&x, t, d).unwrap(), &cw, &cfg)
            .unwrap();
        let got = g.moe(&g.from_host(&x, t, d).unwrap(), &gw, &cfg).unwrap();
        check(
            &format!("moe {dtype} d {d} dff {dff} top-{k} of {e}, {t} tokens"),
            &gpu_host(g, &got),
            &cpu_host(&cpu, &want),
            MATMUL_NMSE,
        );
    }
}

in_both_modes!(
    moe_every_expert_type_and_split_stacks_with,
    moe_every_expert_type_and_split_stacks,
    moe_every_expert_type_and_split_stacks_plain
);

fn moe_every_expert_type_and_split_stacks_with(gpu: &WgpuBackend, split: &WgpuBackend) {
    let mut r = rng("moe");
    for dtype in [
        GgmlType::MXFP4,
        GgmlType::Q8_0,
        GgmlType::BF16,
        GgmlType::F32,
    ] {
        moe_case(gpu, &mut r, dtype, 64, 96, 8, 4, &[1, 5]);
    }
    // Expert stacks split over several buffers.
    moe_case(split, &mut r, GgmlType::MXFP4, 64, 96, 8, 4, &[1, 3]);
    moe_case(split, &mut r, GgmlType::F32, 32, 32, 4, 2, &[2]);
    // GPT-OSS-sized experts for one decode token (32 experts, top-4).
    moe_case(gpu, &mut r, GgmlType::MXFP4, 2880, 2880, 32, 4, &[1]);
}

in_both_modes!(
    bad_shapes_are_errors_not_panics_with,
    bad_shapes_are_errors_not_panics,
    bad_shapes_are_errors_not_panics_plain
);

fn bad_shapes_are_errors_not_panics_with(gpu: &WgpuBackend, _: &WgpuBackend) {
    let mut r = rng("errors");
    let w = gpu
        .upload(&weight(&mut r, "w", GgmlType::F32, &[8, 4], 1.0))
        .unwrap();
    let x = gpu.from_host(&[1.0; 6], 1, 6).unwrap();
    assert!(gpu.linear(&x, &w, None).is_err());
    assert!(gpu.from_host(&[1.0; 5], 2, 3).is_err());
    let bad = WeightData {
        name: "bad".into(),
        dtype: GgmlType::MXFP4,
        shape: vec![32, 2],
        bytes: HostBytes::from_vec(vec![0; 33]),
    };
    assert!(gpu.upload(&bad).is_err());
    let q4 = WeightData {
        name: "q4".into(),
        dtype: GgmlType::Q4_0,
        shape: vec![32],
        bytes: HostBytes::from_vec(vec![0; 18]),
    };
    assert!(gpu.upload(&q4).is_err());
}
