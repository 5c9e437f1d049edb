//! Run-time side of the FP4 path: selection by compute capability and `--fp4`, lazy compilation,
//! the first-use self-check against the portable kernels, and the launches.

use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaFunction, CudaModule, LaunchConfig, PushKernelArg};
use gptoss_backend::{
    Backend, BackendError, GgmlType, HostBytes, MoeConfig, MoeWeights, Result, WeightData,
};

use super::{Fp4Mode, fp4_arch, nvrtc};
use crate::{A, CudaBackend, CudaTensor, CudaWeight, DevBuf, dev_err};

/// NMSE bound of the self-check (the bound llama.cpp's backend tests use for native FP4).
pub const SELF_CHECK_NMSE: f64 = 2e-2;

/// The compiled FP4 kernels.
pub(crate) struct Kernels {
    _module: Arc<CudaModule>,
    group: CudaFunction,
    quant: CudaFunction,
    gate_up: CudaFunction,
    down: CudaFunction,
    combine: CudaFunction,
    emulated: bool,
    /// The tcgen05 variant (sm_100a / sm_103a): 128 weight rows per CTA instead of 64.
    tcgen05: bool,
}

impl Kernels {
    /// Weight rows per CTA of the gate/up and down kernels (their grid's x extent divides by it).
    fn tile_rows(&self) -> usize {
        if self.tcgen05 { 128 } else { 64 }
    }
}

enum Inner {
    Unchecked,
    /// The self-check is running: `use_now` routes the next MoE calls to `candidate`.
    Checking {
        candidate: Arc<Kernels>,
        use_now: bool,
    },
    Ready {
        k: Arc<Kernels>,
        nmse: f64,
    },
    Failed(String),
}

/// The FP4 part of a [`CudaBackend`].
pub(crate) struct Fp4State {
    mode: Fp4Mode,
    cc: (i32, i32),
    /// The FP4 architecture of the device, or why it has none.
    arch: std::result::Result<&'static str, String>,
    /// Set by [`CudaBackend::enable_fp4_emulation`]: the architecture to build emulated kernels for.
    emulate: Option<String>,
    inner: Mutex<Inner>,
}

impl Fp4State {
    pub(crate) fn new(major: i32, minor: i32) -> Self {
        Fp4State {
            mode: Fp4Mode::Auto,
            cc: (major, minor),
            arch: fp4_arch(major, minor),
            emulate: None,
            inner: Mutex::new(Inner::Unchecked),
        }
    }
}

/// Where the FP4 path stands on a backend.
#[derive(Clone, Debug, PartialEq)]
pub enum Fp4Status {
    /// Not used: `--fp4 off`, or no FP4 kernel for this device (the reason).
    Inactive(String),
    /// Selected; its self-check runs at the first MoE call.
    Pending,
    /// In use, after a self-check with this NMSE against the portable path.
    Active {
        /// The self-check's NMSE.
        nmse: f64,
        /// True when the MMA is the software emulation (a test build).
        emulated: bool,
        /// True for the data-center Blackwell kernels (`tcgen05.mma`, sm_100 / sm_103).
        tcgen05: bool,
    },
    /// The self-check failed or the kernels did not build: the portable path runs.
    FellBack(String),
}

impl std::fmt::Display for Fp4Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fp4Status::Inactive(_) => write!(f, "moe: portable"),
            Fp4Status::Pending => write!(f, "moe: fp4 mma, self-check pending"),
            Fp4Status::Active {
                emulated: false,
                tcgen05: false,
                ..
            } => write!(f, "moe: fp4 mma W4A8"),
            Fp4Status::Active {
                emulated: false,
                tcgen05: true,
                ..
            } => write!(f, "moe: fp4 tcgen05 W4A8"),
            Fp4Status::Active { emulated: true, .. } => write!(f, "moe: fp4 W4A8, emulated mma"),
            Fp4Status::FellBack(_) => write!(f, "moe: portable, fp4 self-check failed"),
        }
    }
}

impl CudaBackend {
    /// Choose the MoE expert path (`--fp4`). `Auto` (the default) uses the Blackwell FP4
    /// tensor-core kernels where the device has them (compute capability 12.0 / 12.1:
    /// `mma.sync`; 10.0 / 10.3: `tcgen05.mma`) and their
    /// first-use self-check passes, else the portable kernels. `On` requires them: it is refused
    /// here, with the device's compute capability in the message, on any other device, and a
    /// failed self-check is then an error instead of a fallback. `Off` never uses them.
    pub fn set_fp4(&mut self, mode: Fp4Mode) -> Result<()> {
        if mode == Fp4Mode::On
            && self.fp4.emulate.is_none()
            && let Err(why) = &self.fp4.arch
        {
            return Err(BackendError::Unavailable {
                backend: "cuda".into(),
                reason: format!("--fp4 on: {}: {why}; use --fp4 auto or off", self.name),
            });
        }
        self.fp4.mode = mode;
        Ok(())
    }

    /// Test aid: build the FP4 kernels with the block-scaled MMA replaced by a shuffle-based
    /// software model of its PTX semantics, for this device's own architecture (sm_89 or newer),
    /// and select them (`--fp4 on`). Everything else of the path (packing, grouping,
    /// quantization, epilogues, the self-check) then runs on a non-Blackwell GPU.
    pub fn enable_fp4_emulation(&mut self) -> Result<()> {
        if self.fp4.cc < (8, 9) {
            return Err(BackendError::Unavailable {
                backend: "cuda".into(),
                reason: format!(
                    "FP4 emulation needs sm_89 or newer (E4M3 conversions); this device is {}.{}",
                    self.fp4.cc.0, self.fp4.cc.1
                ),
            });
        }
        self.fp4.emulate = Some(self.arch.clone());
        self.fp4.mode = Fp4Mode::On;
        self.fp4.inner = Mutex::new(Inner::Unchecked);
        Ok(())
    }

    /// Where the FP4 path stands now.
    pub fn fp4_status(&self) -> Fp4Status {
        let st = &self.fp4;
        if st.mode == Fp4Mode::Off {
            return Fp4Status::Inactive("--fp4 off".into());
        }
        if st.emulate.is_none()
            && let Err(why) = &st.arch
        {
            return Fp4Status::Inactive(why.clone());
        }
        match st.inner.lock().as_deref() {
            Ok(Inner::Unchecked) | Ok(Inner::Checking { .. }) => Fp4Status::Pending,
            Ok(Inner::Ready { k, nmse }) => Fp4Status::Active {
                nmse: *nmse,
                emulated: k.emulated,
                tcgen05: k.tcgen05,
            },
            Ok(Inner::Failed(why)) => Fp4Status::FellBack(why.clone()),
            Err(_) => Fp4Status::FellBack("state poisoned".into()),
        }
    }

    /// Run the self-check now if it is pending (else it runs at the first MoE call), and return
    /// the resulting status. With `--fp4 on`, a failed check is an error.
    pub fn fp4_self_check(&self) -> Result<Fp4Status> {
        self.fp4_kernels()?;
        Ok(self.fp4_status())
    }

    /// The kernels the MoE should use now, if any (compiling and self-checking on first use).
    fn fp4_kernels(&self) -> Result<Option<Arc<Kernels>>> {
        let st = &self.fp4;
        if st.mode == Fp4Mode::Off {
            return Ok(None);
        }
        let (arch, emulated) = match (&st.emulate, &st.arch) {
            (Some(a), _) => (a.clone(), true),
            (None, Ok(a)) => (a.to_string(), false),
            (None, Err(_)) => return Ok(None),
        };
        {
            let mut g = st.inner.lock().map_err(|_| dev_err("fp4 state poisoned"))?;
            match &*g {
                Inner::Ready { k, .. } => return Ok(Some(k.clone())),
                Inner::Checking { candidate, use_now } => {
                    return Ok(use_now.then(|| candidate.clone()));
                }
                Inner::Failed(_) => return Ok(None),
                Inner::Unchecked => {}
            }
            match self.fp4_build(&arch, emulated) {
                Ok(k) => {
                    *g = Inner::Checking {
                        candidate: Arc::new(k),
                        use_now: false,
                    }
                }
                Err(why) => *g = Inner::Failed(why),
            }
        }
        let outcome = match &*st.inner.lock().map_err(|_| dev_err("fp4 state poisoned"))? {
            Inner::Failed(why) => Err(why.clone()),
            _ => Ok(()),
        };
        let outcome = outcome.and_then(|()| self.fp4_compare());
        let mut g = st.inner.lock().map_err(|_| dev_err("fp4 state poisoned"))?;
        let candidate = match &*g {
            Inner::Checking { candidate, .. } => Some(candidate.clone()),
            _ => None,
        };
        match (outcome, candidate) {
            (Ok(nmse), Some(k)) => {
                *g = Inner::Ready { k: k.clone(), nmse };
                eprintln!(
                    "gptoss: FP4 tensor-core MoE path ({arch}, {}) active: self-check NMSE {nmse:.2e} \
                     against the portable kernels (limit {SELF_CHECK_NMSE:.0e}){}",
                    if emulated {
                        "emulated MMA"
                    } else if k.tcgen05 {
                        "tcgen05.mma"
                    } else {
                        "mma.sync"
                    },
                    if emulated {
                        ""
                    } else {
                        "; note: this path is compile-checked and self-checked but has not run on \
                         Blackwell hardware in gptoss's own testing"
                    }
                );
                Ok(Some(k))
            }
            (outcome, _) => {
                let why = match outcome {
                    Err(why) => why,
                    Ok(_) => "the check lost its kernels".to_string(),
                };
                *g = Inner::Failed(why.clone());
                if st.mode == Fp4Mode::On {
                    Err(dev_err(format!(
                        "--fp4 on: the FP4 path failed its self-check: {why}"
                    )))
                } else {
                    eprintln!(
                        "gptoss: warning: FP4 tensor-core MoE path disabled, using the portable \
                         kernels: {why}"
                    );
                    Ok(None)
                }
            }
        }
    }

    fn fp4_build(&self, arch: &str, emulated: bool) -> std::result::Result<Kernels, String> {
        let cubin = nvrtc::cached_cubin(arch, emulated)?;
        let module = self
            .ctx
            .load_module(cudarc::nvrtc::Ptx::from_binary(cubin))
            .map_err(|e| format!("loading the FP4 cubin: {e:?}"))?;
        let f = |n: &str| {
            module
                .load_function(n)
                .map_err(|e| format!("FP4 kernel {n}: {e:?}"))
        };
        Ok(Kernels {
            group: f("fp4_group")?,
            quant: f("fp4_quant_mxfp8")?,
            gate_up: f("fp4_moe_gate_up")?,
            down: f("fp4_moe_down")?,
            combine: f("fp4_moe_combine")?,
            _module: module,
            emulated,
            tcgen05: nvrtc::is_tcgen05(arch),
        })
    }

    /// The self-check: small random MoE problems (a decode row, a 37-token and a 100-token
    /// batch, 8 experts, top 4) through the portable kernels and the candidate FP4 kernels;
    /// returns the worst NMSE, or why it is over [`SELF_CHECK_NMSE`]. The widths leave partial
    /// row tiles in both variants (160 = 128 + 32 and 96 of 128 rows for tcgen05, 64-row tiles
    /// for mma.sync), K runs over several chunks (5 blocks: 4 + 1), and the 100-token batch gives
    /// experts more than 32 pairs, so the kernels' pair loops take several passes.
    fn fp4_compare(&self) -> std::result::Result<f64, String> {
        let (d_model, n_ff, n_exp, top_k) = (160usize, 96usize, 8usize, 4usize);
        let mut rng = SplitMix(0x6770_746f_7373_6670);
        let w = self
            .fp4_random_moe(&mut rng, d_model, n_ff, n_exp)
            .map_err(|e| format!("self-check setup: {e}"))?;
        let cfg = MoeConfig {
            n_experts: n_exp,
            top_k,
        };
        let mut worst = 0f64;
        for t in [1usize, 37, 100] {
            let x: Vec<f32> = (0..t * d_model).map(|_| rng.normal()).collect();
            let xt = self.from_host(&x, t, d_model).map_err(|e| e.to_string())?;
            let run = |fp4: bool| -> Result<Vec<f32>> {
                if let Ok(mut g) = self.fp4.inner.lock()
                    && let Inner::Checking { use_now, .. } = &mut *g
                {
                    *use_now = fp4;
                }
                let y = self.moe(&xt, &w, &cfg)?;
                Ok(self.to_host(&y)?.0)
            };
            let want = run(false).map_err(|e| format!("portable MoE: {e}"))?;
            let got = run(true).map_err(|e| format!("FP4 MoE: {e}"))?;
            let (mut num, mut den) = (0f64, 0f64);
            for (a, b) in got.iter().zip(&want) {
                num += (*a as f64 - *b as f64).powi(2);
                den += (*b as f64).powi(2);
            }
            let nmse = if den > 0.0 { num / den } else { f64::INFINITY };
            if nmse.is_nan() || nmse > SELF_CHECK_NMSE {
                return Err(format!(
                    "{t}-token MoE: NMSE {nmse:.3e} against the portable kernels (limit {SELF_CHECK_NMSE:.0e})"
                ));
            }
            worst = worst.max(nmse);
        }
        Ok(worst)
    }

    fn fp4_random_moe(
        &self,
        rng: &mut SplitMix,
        d_model: usize,
        n_ff: usize,
        n_exp: usize,
    ) -> Result<MoeWeights<CudaWeight>> {
        let f32w = |rng: &mut SplitMix, name: &str, shape: Vec<usize>, sd: f32| {
            let n: usize = shape.iter().product();
            let v: Vec<u8> = (0..n)
                .flat_map(|_| (rng.normal() * sd).to_le_bytes())
                .collect();
            self.upload(&WeightData {
                name: name.into(),
                dtype: GgmlType::F32,
                shape,
                bytes: HostBytes::from_vec(v),
            })
        };
        // MXFP4 blocks: random codes, scales 2^-7 .. 2^-3 (outputs of order one).
        let mx = |rng: &mut SplitMix, name: &str, shape: Vec<usize>| {
            let nb = shape.iter().product::<usize>() / 32;
            let mut v = Vec::with_capacity(nb * 17);
            for _ in 0..nb {
                v.push(120 + (rng.next() % 5) as u8);
                v.extend((0..16).map(|_| rng.next() as u8));
            }
            self.upload(&WeightData {
                name: name.into(),
                dtype: GgmlType::MXFP4,
                shape,
                bytes: HostBytes::from_vec(v),
            })
        };
        Ok(MoeWeights {
            router: f32w(rng, "check.router", vec![d_model, n_exp], 0.5)?,
            router_bias: f32w(rng, "check.router_bias", vec![n_exp], 0.5)?,
            gate: mx(rng, "check.gate", vec![d_model, n_ff, n_exp])?,
            gate_bias: f32w(rng, "check.gate_bias", vec![n_ff, n_exp], 0.3)?,
            up: mx(rng, "check.up", vec![d_model, n_ff, n_exp])?,
            up_bias: f32w(rng, "check.up_bias", vec![n_ff, n_exp], 0.3)?,
            down: mx(rng, "check.down", vec![n_ff, d_model, n_exp])?,
            down_bias: f32w(rng, "check.down_bias", vec![d_model, n_exp], 0.3)?,
        })
    }

    fn launch_fp4(
        &self,
        f: &CudaFunction,
        grid: (u32, u32, u32),
        block: u32,
        args: &[A],
    ) -> Result<()> {
        let mut b = self.stream.launch_builder(f);
        for a in args {
            match a {
                A::P(v) => b.arg(v),
                A::I(v) => b.arg(v),
                A::L(v) => b.arg(v),
                A::F(v) => b.arg(v),
            };
        }
        let cfg = LaunchConfig {
            grid_dim: grid,
            block_dim: (block, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: each argument list in `moe_fp4` matches its kernel's signature in
        // kernels/fp4_moe.cu (fp4_tcgen05.cu defines the matmul kernels with the same
        // signatures), the tcgen05 kernels' shared memory is static (under 48 KiB), and every pointer is a live allocation sized from the checked
        // shapes of the MoE call.
        unsafe { b.launch(cfg) }.map_err(dev_err)?;
        Ok(())
    }
}

/// The hook of [`CudaBackend`]'s `moe`: when the FP4 path is selected (and, on first use, has
/// passed its self-check), compute the experts with it into `y` and return true. The router
/// has run: `ids` / `wts` hold each token's `kk` experts and weights. All three expert stacks
/// are MXFP4 (checked by the caller).
#[allow(clippy::too_many_arguments)]
pub(crate) fn moe_hook(
    be: &CudaBackend,
    x: &CudaTensor,
    w: &MoeWeights<CudaWeight>,
    ids: &DevBuf,
    wts: &DevBuf,
    kk: usize,
    n_exp: usize,
    n_ff: usize,
    y: &CudaTensor,
) -> Result<bool> {
    let d_model = x.cols;
    if !d_model.is_multiple_of(32) || !n_ff.is_multiple_of(32) {
        return Ok(false);
    }
    let Some(k) = be.fp4_kernels()? else {
        return Ok(false);
    };
    let t = x.rows;
    let pairs = t * kk;
    let p = |b: &DevBuf| A::P(be.ptr(b));
    let offs = be.scratch((n_exp + 1) * 4)?;
    let order = be.scratch(pairs * 4)?;
    be.launch_fp4(
        &k.group,
        (1, 1, 1),
        256,
        &[
            p(ids),
            A::I(pairs as i32),
            A::I(n_exp as i32),
            p(&offs),
            p(&order),
        ],
    )?;
    let quant = |src: u64, n: usize, q: &DevBuf, s: &DevBuf| {
        let nblk = n / 32;
        be.launch_fp4(
            &k.quant,
            (nblk.div_ceil(8) as u32, 1, 1),
            256,
            &[A::P(src), A::L(nblk as i64), A::P(q.ptr), A::P(s.ptr)],
        )
    };
    let xq = be.scratch(t * d_model)?;
    let xs = be.scratch(t * d_model / 32)?;
    quant(be.ptr(&x.buf), t * d_model, &xq, &xs)?;
    let wb = |m: &CudaWeight| (A::P(be.ptr(&m.buf)), A::L(m.nb));
    let bb = |m: &CudaWeight| (A::P(be.ptr(&m.buf)), A::I(m.dtype.id() as i32));
    let (wg, nbg) = wb(&w.gate);
    let (wu, nbu) = wb(&w.up);
    let (wd, nbd) = wb(&w.down);
    let (gb, gbt) = bb(&w.gate_bias);
    let (ub, ubt) = bb(&w.up_bias);
    let (db, dbt) = bb(&w.down_bias);
    let h = be.scratch(pairs * n_ff * 4)?;
    be.launch_fp4(
        &k.gate_up,
        (n_ff.div_ceil(k.tile_rows()) as u32, n_exp as u32, 1),
        128,
        &[
            p(&xq),
            p(&xs),
            A::I(d_model as i32),
            wg,
            nbg,
            wu,
            nbu,
            gb,
            gbt,
            ub,
            ubt,
            p(&offs),
            p(&order),
            A::I(kk as i32),
            A::I(n_ff as i32),
            p(&h),
        ],
    )?;
    let hq = be.scratch(pairs * n_ff)?;
    let hs = be.scratch(pairs * n_ff / 32)?;
    quant(h.ptr, pairs * n_ff, &hq, &hs)?;
    let yp = be.scratch(pairs * d_model * 4)?;
    be.launch_fp4(
        &k.down,
        (d_model.div_ceil(k.tile_rows()) as u32, n_exp as u32, 1),
        128,
        &[
            p(&hq),
            p(&hs),
            A::I(n_ff as i32),
            wd,
            nbd,
            db,
            dbt,
            p(&offs),
            p(&order),
            p(wts),
            A::I(d_model as i32),
            p(&yp),
        ],
    )?;
    be.launch_fp4(
        &k.combine,
        (d_model.div_ceil(256) as u32, t as u32, 1),
        256,
        &[
            p(&yp),
            A::I(kk as i32),
            A::I(d_model as i32),
            A::P(be.ptr(&y.buf)),
        ],
    )?;
    Ok(true)
}

/// A small deterministic generator for the self-check's data (no dependency needed at run time).
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Roughly normal: the sum of four uniforms, centred and scaled to unit variance.
    fn normal(&mut self) -> f32 {
        let s: f64 = (0..4)
            .map(|_| (self.next() >> 11) as f64 / (1u64 << 53) as f64)
            .sum();
        ((s - 2.0) * 3f64.sqrt()) as f32
    }
}
