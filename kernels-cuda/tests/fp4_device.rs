//! The FP4 path's selection and, through the emulated MMA, its kernels on a real GPU.
//!
//! On a device without the block-scaled MMA (Hopper), `auto` must pick the portable path and
//! `--fp4 on` must be refused naming the compute capability. Then, on any sm_89+ GPU, the FP4
//! kernels built with the MMA emulated in software (its PTX semantics, the same model as
//! fp4/model.rs) must pass the self-check and agree with the portable MoE on random gpt-oss-like
//! problems (NMSE <= 2e-2, the self-check's bound; W4A8 typically gives ~1e-3). On a Blackwell
//! device the native path's self-check runs as well. Skips with a printed reason without a GPU.

use gptoss_backend::{Backend, GgmlType, HostBytes, MoeConfig, MoeWeights, WeightData};
use gptoss_kernels_cuda::fp4::{Fp4Mode, Fp4Status};
use gptoss_kernels_cuda::{CudaBackend, CudaWeight};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

fn gpu() -> Option<CudaBackend> {
    match CudaBackend::new(0) {
        Ok(b) => Some(b),
        Err(e) => {
            eprintln!("SKIPPED: no CUDA device: {e}");
            None
        }
    }
}

fn weight(
    r: &mut StdRng,
    be: &CudaBackend,
    name: &str,
    dtype: GgmlType,
    shape: &[usize],
    sd: f32,
) -> CudaWeight {
    let n: usize = shape.iter().product();
    let bytes = match dtype {
        GgmlType::F32 => (0..n)
            .flat_map(|_| {
                ((0..4).map(|_| r.random::<f32>()).sum::<f32>() - 2.0)
                    .mul_add(sd, 0.0)
                    .to_le_bytes()
            })
            .collect(),
        GgmlType::MXFP4 => {
            let mut b = vec![0u8; n / 32 * 17];
            r.fill_bytes(&mut b);
            for c in b.chunks_exact_mut(17) {
                c[0] = 119 + (c[1] % 4);
            }
            b
        }
        _ => unreachable!(),
    };
    be.upload(&WeightData {
        name: name.into(),
        dtype,
        shape: shape.to_vec(),
        bytes: HostBytes::from_vec(bytes),
    })
    .expect("upload")
}

fn moe_weights(
    r: &mut StdRng,
    be: &CudaBackend,
    d: usize,
    f: usize,
    e: usize,
) -> MoeWeights<CudaWeight> {
    MoeWeights {
        router: weight(r, be, "router", GgmlType::F32, &[d, e], 0.3),
        router_bias: weight(r, be, "router_bias", GgmlType::F32, &[e], 0.3),
        gate: weight(r, be, "gate", GgmlType::MXFP4, &[d, f, e], 0.0),
        gate_bias: weight(r, be, "gate_bias", GgmlType::F32, &[f, e], 0.2),
        up: weight(r, be, "up", GgmlType::MXFP4, &[d, f, e], 0.0),
        up_bias: weight(r, be, "up_bias", GgmlType::F32, &[f, e], 0.2),
        down: weight(r, be, "down", GgmlType::MXFP4, &[f, d, e], 0.0),
        down_bias: weight(r, be, "down_bias", GgmlType::F32, &[d, e], 0.2),
    }
}

#[test]
fn selection_follows_the_compute_capability() {
    let Some(mut be) = gpu() else { return };
    let arch = be.arch().to_string();
    let status = be.fp4_self_check().expect("auto never errors");
    eprintln!("{}: auto -> {status:?}", be.name());
    let native = ["sm_120", "sm_121", "sm_100", "sm_103"]
        .iter()
        .any(|a| arch.starts_with(a));
    if native {
        assert!(
            matches!(
                status,
                Fp4Status::Active {
                    emulated: false,
                    ..
                }
            ),
            "{status:?}"
        );
        be.set_fp4(Fp4Mode::On).expect("on is allowed on Blackwell");
    } else {
        assert!(matches!(status, Fp4Status::Inactive(_)), "{status:?}");
        assert!(be.name().contains("moe: portable"), "{}", be.name());
        let err = be
            .set_fp4(Fp4Mode::On)
            .expect_err("--fp4 on must be refused here")
            .to_string();
        eprintln!("--fp4 on refused: {err}");
        assert!(err.contains("compute capability"), "{err}");
        assert!(be.fp4_status() != Fp4Status::Pending);
    }
    be.set_fp4(Fp4Mode::Off).expect("off");
    assert_eq!(be.fp4_status(), Fp4Status::Inactive("--fp4 off".into()));
}

#[test]
fn emulated_fp4_kernels_agree_with_the_portable_moe() {
    let Some(portable) = gpu() else { return };
    let Some(mut fp4) = gpu() else { return };
    if let Err(e) = fp4.enable_fp4_emulation() {
        eprintln!("SKIPPED: {e}");
        return;
    }
    let status = fp4.fp4_self_check().expect("emulated self-check");
    eprintln!("emulated self-check: {status:?}");
    assert!(
        matches!(status, Fp4Status::Active { emulated: true, .. }),
        "{status:?}"
    );
    let mut r = StdRng::seed_from_u64(0xf4f4);
    // gpt-oss-20b's MoE is 2880 x 2880, 32 experts, top 4; a narrower n_ff that is not a
    // multiple of 64 leaves partial warp tiles.
    for &(d, f, e, k) in &[(2880usize, 2880usize, 32usize, 4usize), (256, 160, 16, 3)] {
        let wp = moe_weights(&mut StdRng::seed_from_u64(d as u64), &portable, d, f, e);
        let wf = moe_weights(&mut StdRng::seed_from_u64(d as u64), &fp4, d, f, e);
        let cfg = MoeConfig {
            n_experts: e,
            top_k: k,
        };
        for t in [1usize, 7, 200] {
            let x: Vec<f32> = (0..t * d)
                .map(|_| (0..4).map(|_| r.random::<f32>()).sum::<f32>() - 2.0)
                .collect();
            let want = portable
                .to_host(
                    &portable
                        .moe(&portable.from_host(&x, t, d).unwrap(), &wp, &cfg)
                        .unwrap(),
                )
                .unwrap()
                .0;
            let got = fp4
                .to_host(
                    &fp4.moe(&fp4.from_host(&x, t, d).unwrap(), &wf, &cfg)
                        .unwrap(),
                )
                .unwrap()
                .0;
            let (mut num, mut den, mut maxd) = (0f64, 0f64, 0f64);
            for (a, b) in got.iter().zip(&want) {
                assert!(a.is_finite(), "non-finite FP4 output");
                num += (*a as f64 - *b as f64).powi(2);
                den += (*b as f64).powi(2);
                maxd = maxd.max((*a as f64 - *b as f64).abs());
            }
            let nmse = num / den;
            eprintln!(
                "d {d} n_ff {f} E {e} k {k}, {t} tokens: NMSE {nmse:.2e}, max|diff| {maxd:.3e}"
            );
            assert!(den > 0.0 && nmse <= 2e-2, "NMSE {nmse}");
        }
    }
    assert!(fp4.name().contains("emulated"), "{}", fp4.name());
}
