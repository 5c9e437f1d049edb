//! Timing of the CUDA backend on gpt-oss-20b shapes (one layer of each kind, the output
//! matrix), through the Backend trait exactly as the model drives it. Ignored by default; run on
//! the GPU machine with `--ignored --nocapture`. Prints the card's copy bandwidth and, per
//! stage, microseconds per call and the fraction of that bandwidth the stage's bytes reach.

use std::time::Instant;

use gptoss_backend::{
    AttentionConfig, Backend, GgmlType, HostBytes, KvCacheConfig, MoeConfig, MoeWeights, Rope,
    RopeConfig, WeightData,
};
use gptoss_kernels_cuda::{CudaBackend, CudaWeight};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

const D: usize = 2880;
const HEADS: usize = 64;
const KVH: usize = 8;
const HD: usize = 64;
const E: usize = 32;
const VOCAB: usize = 201088;

fn weight(
    r: &mut StdRng,
    be: &CudaBackend,
    name: &str,
    dtype: GgmlType,
    shape: &[usize],
) -> CudaWeight {
    let n: usize = shape.iter().product();
    let len = dtype.bytes_for(n as u64).unwrap() as usize;
    let mut bytes = vec![0u8; len];
    match dtype {
        GgmlType::F32 => {
            for (i, c) in bytes.chunks_exact_mut(4).enumerate() {
                c.copy_from_slice(&(((i * 7919) % 1000) as f32 / 1e4 - 0.05).to_le_bytes());
            }
        }
        GgmlType::Q8_0 => {
            r.fill_bytes(&mut bytes);
            for c in bytes.chunks_exact_mut(34) {
                c[..2].copy_from_slice(&0x1c00u16.to_le_bytes()); // f16 2^-8
            }
        }
        GgmlType::MXFP4 => {
            r.fill_bytes(&mut bytes);
            for c in bytes.chunks_exact_mut(17) {
                c[0] = 120 + (c[1] & 3);
            }
        }
        _ => unreachable!(),
    }
    be.upload(&WeightData {
        name: name.into(),
        dtype,
        shape: shape.to_vec(),
        bytes: HostBytes::from_vec(bytes),
    })
    .unwrap()
}

struct Layer {
    attn_norm: CudaWeight,
    wq: CudaWeight,
    bq: CudaWeight,
    wk: CudaWeight,
    bk: CudaWeight,
    wv: CudaWeight,
    bv: CudaWeight,
    wo: CudaWeight,
    bo: CudaWeight,
    sinks: CudaWeight,
    moe_norm: CudaWeight,
    moe: MoeWeights<CudaWeight>,
}

fn layer(r: &mut StdRng, be: &CudaBackend) -> Layer {
    let f32w = |r: &mut StdRng, n: &str, s: &[usize]| weight(r, be, n, GgmlType::F32, s);
    Layer {
        attn_norm: f32w(r, "attn_norm", &[D]),
        wq: weight(r, be, "wq", GgmlType::Q8_0, &[D, HEADS * HD]),
        bq: f32w(r, "bq", &[HEADS * HD]),
        wk: weight(r, be, "wk", GgmlType::Q8_0, &[D, KVH * HD]),
        bk: f32w(r, "bk", &[KVH * HD]),
        wv: weight(r, be, "wv", GgmlType::Q8_0, &[D, KVH * HD]),
        bv: f32w(r, "bv", &[KVH * HD]),
        wo: weight(r, be, "wo", GgmlType::Q8_0, &[HEADS * HD, D]),
        bo: f32w(r, "bo", &[D]),
        sinks: f32w(r, "sinks", &[HEADS]),
        moe_norm: f32w(r, "moe_norm", &[D]),
        moe: MoeWeights {
            router: f32w(r, "router", &[D, E]),
            router_bias: f32w(r, "router_b", &[E]),
            gate: weight(r, be, "gate", GgmlType::MXFP4, &[D, D, E]),
            gate_bias: f32w(r, "gate_b", &[D, E]),
            up: weight(r, be, "up", GgmlType::MXFP4, &[D, D, E]),
            up_bias: f32w(r, "up_b", &[D, E]),
            down: weight(r, be, "down", GgmlType::MXFP4, &[D, D, E]),
            down_bias: f32w(r, "down_b", &[D, E]),
        },
    }
}

fn acfg(window: Option<usize>) -> AttentionConfig {
    AttentionConfig {
        n_heads: HEADS,
        n_kv_heads: KVH,
        head_dim: HD,
        window,
        scale: 0.125,
    }
}

#[allow(clippy::too_many_arguments)]
fn layer_step(
    be: &CudaBackend,
    l: &Layer,
    h: &mut <CudaBackend as Backend>::Tensor,
    cache: &mut <CudaBackend as Backend>::KvCache,
    pos0: usize,
    window: Option<usize>,
    rope: &Rope,
) {
    let x = be.rms_norm(h, &l.attn_norm, 1e-5).unwrap();
    let mut qkv = be
        .linear_many(
            &x,
            &[
                (&l.wq, Some(&l.bq)),
                (&l.wk, Some(&l.bk)),
                (&l.wv, Some(&l.bv)),
            ],
        )
        .unwrap();
    let v = qkv.pop().unwrap();
    let mut k = qkv.pop().unwrap();
    let mut q = qkv.pop().unwrap();
    be.rope(&mut q, HEADS, pos0, rope).unwrap();
    be.rope(&mut k, KVH, pos0, rope).unwrap();
    let a = be
        .attention(&q, &k, &v, cache, pos0, &l.sinks, &acfg(window))
        .unwrap();
    let o = be.linear(&a, &l.wo, Some(&l.bo)).unwrap();
    be.add_assign(h, &o).unwrap();
    let x = be.rms_norm(h, &l.moe_norm, 1e-5).unwrap();
    let m = be
        .moe(
            &x,
            &l.moe,
            &MoeConfig {
                n_experts: E,
                top_k: 4,
            },
        )
        .unwrap();
    be.add_assign(h, &m).unwrap();
}

fn time<F: FnMut()>(be: &CudaBackend, reps: usize, mut f: F) -> f64 {
    f();
    be.synchronize().unwrap();
    let t0 = Instant::now();
    for _ in 0..reps {
        f();
    }
    be.synchronize().unwrap();
    t0.elapsed().as_secs_f64() / reps as f64 * 1e6
}

#[test]
#[ignore]
fn decode_and_prefill_20b_shapes() {
    let mut be = match CudaBackend::new(0) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("SKIPPED: {e}");
            return;
        }
    };
    let bw = be.copy_bandwidth_gbs(1 << 30, 10).unwrap();
    println!("device {} copy bandwidth {bw:.0} GB/s", be.name());
    let mut r = StdRng::seed_from_u64(7);
    let l = layer(&mut r, &be);
    let out_norm = weight(&mut r, &be, "out_norm", GgmlType::F32, &[D]);
    let output = weight(&mut r, &be, "output", GgmlType::Q8_0, &[D, VOCAB]);
    let rope = Rope::new(&RopeConfig {
        head_dim: HD,
        theta: 150000.0,
        scaling_factor: 32.0,
        original_context: 4096,
        beta_fast: 32.0,
        beta_slow: 1.0,
    });
    let hv: Vec<f32> = (0..D).map(|_| r.random_range(-1.0f32..1.0)).collect();
    let x1 = be.from_host(&hv, 1, D).unwrap();
    let q8 = |n: usize, k: usize| (n * k / 32 * 34) as f64;
    let mx = |n: usize, k: usize| (n * k / 32 * 17) as f64;
    let row = |name: &str, us: f64, bytes: f64| {
        let gbs = bytes / us / 1e3;
        println!(
            "{name:<34} {us:>9.1} us  {gbs:>7.0} GB/s  {:>5.1}% of copy",
            100.0 * gbs / bw
        );
    };
    // Device-only time (queued behind a spin kernel): what the kernels cost without launch gaps.
    let dev = |f: &mut dyn FnMut()| be.device_time_us(100, 30.0, f).unwrap();
    println!("device-only times:");
    row(
        "  linear q8_0 2880->4096 t=1",
        dev(&mut || drop(be.linear(&x1, &l.wq, Some(&l.bq)).unwrap())),
        q8(4096, D),
    );
    row(
        "  linear q8_0 2880->512 t=1",
        dev(&mut || drop(be.linear(&x1, &l.wk, Some(&l.bk)).unwrap())),
        q8(512, D),
    );
    row(
        "  output q8_0 2880->201088 t=1",
        dev(&mut || drop(be.linear(&x1, &output, None).unwrap())),
        q8(VOCAB, D),
    );
    row(
        "  moe 20b t=1",
        dev(&mut || {
            drop(
                be.moe(
                    &x1,
                    &l.moe,
                    &MoeConfig {
                        n_experts: E,
                        top_k: 4,
                    },
                )
                .unwrap(),
            )
        }),
        4.0 * 3.0 * mx(D, D),
    );
    row(
        "  rms_norm t=1",
        dev(&mut || drop(be.rms_norm(&x1, &l.attn_norm, 1e-5).unwrap())),
        (D * 12) as f64,
    );
    row(
        "  q+k+v, 3 launches t=1",
        dev(&mut || {
            drop(be.linear(&x1, &l.wq, Some(&l.bq)).unwrap());
            drop(be.linear(&x1, &l.wk, Some(&l.bk)).unwrap());
            drop(be.linear(&x1, &l.wv, Some(&l.bv)).unwrap());
        }),
        q8(4096 + 1024, D),
    );
    row(
        "  q+k+v, linear_many t=1",
        dev(&mut || {
            drop(
                be.linear_many(
                    &x1,
                    &[
                        (&l.wq, Some(&l.bq)),
                        (&l.wk, Some(&l.bk)),
                        (&l.wv, Some(&l.bv)),
                    ],
                )
                .unwrap(),
            )
        }),
        q8(4096 + 1024, D),
    );
    let x4 = be
        .from_host(
            &[hv.clone(), hv.clone(), hv.clone(), hv.clone()].concat(),
            4,
            D,
        )
        .unwrap();
    // The int8 tensor-core decode kernels (set_decode_mma), the dp4a planes (set_decode_dp4a,
    // the default MoE) and the f32-activation kernels, per stage.
    let x4096 = be.from_host(&vec![0.1f32; 4096], 1, 4096).unwrap();
    let x2 = be
        .from_host(&[hv.clone(), hv.clone()].concat(), 2, D)
        .unwrap();
    for (tag, mma, dp4a) in [
        ("mma", true, false),
        ("dp4a", false, true),
        ("f32", false, false),
    ] {
        be.set_decode_mma(mma);
        be.set_decode_dp4a(dp4a);
        let dev = |f: &mut dyn FnMut()| be.device_time_us(100, 30.0, f).unwrap();
        let moe = |xt: &<CudaBackend as Backend>::Tensor| {
            drop(
                be.moe(
                    xt,
                    &l.moe,
                    &MoeConfig {
                        n_experts: E,
                        top_k: 4,
                    },
                )
                .unwrap(),
            )
        };
        row(
            &format!("  [{tag}] moe 20b t=1"),
            dev(&mut || moe(&x1)),
            4.0 * 3.0 * mx(D, D),
        );
        row(
            &format!("  [{tag}] moe 20b t=4 (bytes of 4 experts)"),
            dev(&mut || moe(&x4)),
            4.0 * 3.0 * mx(D, D),
        );
        row(
            &format!("  [{tag}] q+k+v linear_many t=1"),
            dev(&mut || {
                drop(
                    be.linear_many(
                        &x1,
                        &[
                            (&l.wq, Some(&l.bq)),
                            (&l.wk, Some(&l.bk)),
                            (&l.wv, Some(&l.bv)),
                        ],
                    )
                    .unwrap(),
                )
            }),
            q8(4096 + 1024, D),
        );
        row(
            &format!("  [{tag}] q+k+v linear_many t=2"),
            dev(&mut || {
                drop(
                    be.linear_many(
                        &x2,
                        &[
                            (&l.wq, Some(&l.bq)),
                            (&l.wk, Some(&l.bk)),
                            (&l.wv, Some(&l.bv)),
                        ],
                    )
                    .unwrap(),
                )
            }),
            q8(4096 + 1024, D),
        );
        row(
            &format!("  [{tag}] o_proj q8_0 4096->2880 t=1"),
            dev(&mut || drop(be.linear(&x4096, &l.wo, Some(&l.bo)).unwrap())),
            q8(D, 4096),
        );
        let mut h = be.from_host(&hv, 1, D).unwrap();
        let kc = KvCacheConfig {
            n_kv_heads: KVH,
            head_dim: HD,
            max_positions: 1024,
            window: Some(128),
        };
        let mut cw = be.new_kv_cache(&kc).unwrap();
        let mut pos = 0;
        let us = be
            .device_time_us(20, 60.0, || {
                layer_step(&be, &l, &mut h, &mut cw, pos, Some(128), &rope);
                pos += 1;
            })
            .unwrap();
        row(
            &format!("  [{tag}] one window layer t=1 (device-only)"),
            us,
            q8(4096 + 1024, D) + q8(D, 4096) + 4.0 * 3.0 * mx(D, D) + (D * E * 4) as f64,
        );
    }
    be.set_decode_mma(false);
    for (rg, rd) in [(1, 1), (1, 2), (2, 2)] {
        be.set_moe_rows_per_warp(rg, rd);
        for (t, xt) in [(1usize, &x1), (4, &x4)] {
            let us = be
                .device_time_us(100, 30.0, || {
                    drop(
                        be.moe(
                            xt,
                            &l.moe,
                            &MoeConfig {
                                n_experts: E,
                                top_k: 4,
                            },
                        )
                        .unwrap(),
                    )
                })
                .unwrap();
            // t = 4 rows route to up to 16 experts: the bytes are those of the distinct ones,
            // unknown here, so only t = 1's fraction is meaningful.
            row(
                &format!("  moe 20b t={t} rows/warp {rg},{rd}"),
                us,
                4.0 * 3.0 * mx(D, D),
            );
        }
    }
    be.set_moe_rows_per_warp(1, 2);
    be.set_int8_activations(true);
    let dev = |f: &mut dyn FnMut()| be.device_time_us(100, 30.0, f).unwrap();
    println!("device-only times, int8 activations (dp4a):");
    row(
        "  linear q8_0 2880->4096 t=1",
        dev(&mut || drop(be.linear(&x1, &l.wq, Some(&l.bq)).unwrap())),
        q8(4096, D),
    );
    row(
        "  output q8_0 2880->201088 t=1",
        dev(&mut || drop(be.linear(&x1, &output, None).unwrap())),
        q8(VOCAB, D),
    );
    row(
        "  moe 20b t=1",
        dev(&mut || {
            drop(
                be.moe(
                    &x1,
                    &l.moe,
                    &MoeConfig {
                        n_experts: E,
                        top_k: 4,
                    },
                )
                .unwrap(),
            )
        }),
        4.0 * 3.0 * mx(D, D),
    );
    be.set_int8_activations(false);
    println!("wall times (host enqueue + device):");
    let reps = 200;
    row(
        "linear q8_0 2880->4096 t=1",
        time(&be, reps, || {
            drop(be.linear(&x1, &l.wq, Some(&l.bq)).unwrap())
        }),
        q8(4096, D),
    );
    row(
        "linear q8_0 2880->512 t=1",
        time(&be, reps, || {
            drop(be.linear(&x1, &l.wk, Some(&l.bk)).unwrap())
        }),
        q8(512, D),
    );
    row(
        "linear q8_0 4096->2880 t=1",
        time(&be, reps, || {
            drop(be.linear(&x4096, &l.wo, Some(&l.bo)).unwrap())
        }),
        q8(D, 4096),
    );
    row(
        "output q8_0 2880->201088 t=1",
        time(&be, 50, || drop(be.linear(&x1, &output, None).unwrap())),
        q8(VOCAB, D),
    );
    let moe_bytes = 4.0 * 3.0 * mx(D, D) + (D * E * 4) as f64;
    row(
        "moe 20b t=1",
        time(&be, reps, || {
            drop(
                be.moe(
                    &x1,
                    &l.moe,
                    &MoeConfig {
                        n_experts: E,
                        top_k: 4,
                    },
                )
                .unwrap(),
            )
        }),
        moe_bytes,
    );
    row(
        "rms_norm t=1",
        time(&be, reps, || {
            drop(be.rms_norm(&x1, &l.attn_norm, 1e-5).unwrap())
        }),
        (D * 12) as f64,
    );
    let logits = be.linear(&x1, &output, None).unwrap();
    row(
        "argmax 201088 (with copy back)",
        time(&be, reps, || drop(be.argmax(&logits).unwrap())),
        (VOCAB * 4) as f64,
    );

    let layer_bytes = q8(4096 + 1024, D) + q8(D, 4096) + moe_bytes;
    for depth in [0usize, 4096, 16384] {
        let max = depth + 600;
        let kc = |w| KvCacheConfig {
            n_kv_heads: KVH,
            head_dim: HD,
            max_positions: max,
            window: w,
        };
        let mut cw = be.new_kv_cache(&kc(Some(128))).unwrap();
        let mut cf = be.new_kv_cache(&kc(None)).unwrap();
        // Fill the caches to `depth` with chunks of random rows.
        let mut pos = 0;
        while pos < depth {
            let t = (depth - pos).min(2048);
            let qv: Vec<f32> = (0..t * HEADS * HD)
                .map(|i| ((i % 97) as f32 - 48.0) / 50.0)
                .collect();
            let kv: Vec<f32> = (0..t * KVH * HD)
                .map(|i| ((i % 89) as f32 - 44.0) / 50.0)
                .collect();
            let q = be.from_host(&qv, t, HEADS * HD).unwrap();
            let k = be.from_host(&kv, t, KVH * HD).unwrap();
            let v = be.from_host(&kv, t, KVH * HD).unwrap();
            drop(
                be.attention(&q, &k, &v, &mut cw, pos, &l.sinks, &acfg(Some(128)))
                    .unwrap(),
            );
            drop(
                be.attention(&q, &k, &v, &mut cf, pos, &l.sinks, &acfg(None))
                    .unwrap(),
            );
            pos += t;
        }
        let mut h = be.from_host(&hv, 1, D).unwrap();
        let steps = 100;
        be.synchronize().unwrap();
        let t0 = Instant::now();
        for s in 0..steps {
            layer_step(&be, &l, &mut h, &mut cw, depth + s, Some(128), &rope);
            layer_step(&be, &l, &mut h, &mut cf, depth + s, None, &rope);
        }
        be.synchronize().unwrap();
        let per_pair = t0.elapsed().as_secs_f64() / steps as f64 * 1e6;
        let mut pos = depth + steps;
        let dev_pair = be
            .device_time_us(20, 60.0, || {
                layer_step(&be, &l, &mut h, &mut cw, pos, Some(128), &rope);
                layer_step(&be, &l, &mut h, &mut cf, pos, None, &rope);
                pos += 1;
            })
            .unwrap();
        println!(
            "depth {depth:>5}: layer pair device-only {dev_pair:.1} us (wall {per_pair:.1} us)"
        );
        let q1 = be
            .from_host(&vec![0.01f32; HEADS * HD], 1, HEADS * HD)
            .unwrap();
        let k1 = be.from_host(&vec![0.02f32; KVH * HD], 1, KVH * HD).unwrap();
        for grouped in [false, true] {
            // The grouped kernel's depth-16384 run did not finish in time on 2026-11-26 (see
            // CudaBackend::set_grouped_decode_attention): measured up to 4096 only.
            if grouped && depth > 4096 {
                continue;
            }
            be.set_grouped_decode_attention(grouped);
            let tag = if grouped { " grouped" } else { "" };
            for (name, cache, w) in [("window", &mut cw, Some(128)), ("full", &mut cf, None)] {
                let us = be
                    .device_time_us(20, 30.0, || {
                        let p = cache.len();
                        drop(
                            be.attention(&q1, &k1, &k1, cache, p, &l.sinks, &acfg(w))
                                .unwrap(),
                        );
                    })
                    .unwrap();
                let kv_bytes = (depth.min(w.unwrap_or(usize::MAX)) * KVH * HD * 4) as f64;
                println!(
                    "depth {depth:>5}: attention t=1 {name}{tag} device-only {us:.1} us ({:.0} GB/s of KV)",
                    kv_bytes / us / 1e3
                );
            }
        }
        be.set_grouped_decode_attention(false);
        let tail = time(&be, 50, || {
            let x = be.rms_norm(&h, &out_norm, 1e-5).unwrap();
            let lg = be.linear(&x, &output, None).unwrap();
            drop(be.argmax(&lg).unwrap());
        });
        let token_us = 12.0 * per_pair + tail;
        let token_bytes = 24.0 * layer_bytes + q8(VOCAB, D);
        println!(
            "depth {depth:>5}: window+full layer pair {per_pair:.1} us, output+argmax {tail:.1} us -> \
             est. {token_us:.0} us/token = {:.0} tok/s ({:.1}% of copy bandwidth)",
            1e6 / token_us,
            100.0 * token_bytes / token_us / 1e3 / bw
        );
    }
    for t in [512usize, 2048] {
        let xv: Vec<f32> = (0..t * D)
            .map(|i| ((i % 101) as f32 - 50.0) / 60.0)
            .collect();
        let kc = |w| KvCacheConfig {
            n_kv_heads: KVH,
            head_dim: HD,
            max_positions: t,
            window: w,
        };
        let reps = 3;
        let mut tot = 0.0;
        for _ in 0..reps {
            let mut h = be.from_host(&xv, t, D).unwrap();
            let mut cw = be.new_kv_cache(&kc(Some(128))).unwrap();
            let mut cf = be.new_kv_cache(&kc(None)).unwrap();
            be.synchronize().unwrap();
            let t0 = Instant::now();
            layer_step(&be, &l, &mut h, &mut cw, 0, Some(128), &rope);
            layer_step(&be, &l, &mut h, &mut cf, 0, None, &rope);
            be.synchronize().unwrap();
            tot += t0.elapsed().as_secs_f64();
        }
        let pair_s = tot / reps as f64;
        println!(
            "prefill t={t}: window+full layer pair {:.2} ms -> est. {:.0} tok/s (24 layers, no output)",
            pair_s * 1e3,
            t as f64 / (12.0 * pair_s)
        );
    }
    println!(
        "peak device memory by the backend: {} MiB",
        be.peak_memory_bytes().unwrap() >> 20
    );
}
