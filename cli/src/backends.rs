//! Run-time backend choice for the commands that run a model (bench, compare, serve, chat).
//!
//! The model is generic over its backend, so a command hands a [`WithBackend`] job to
//! [`with_backend`], which opens the requested backend and runs the job monomorphized for it.

use anyhow::{Result, bail};
use gptoss_backend::Backend;
use gptoss_backend::cpu::CpuBackend;
use gptoss_parallel::{Collective, HostCollective, MoeSplit, SplitBackend};

/// A job that runs on whichever backend [`with_backend`] opens.
pub trait WithBackend {
    /// The job's result.
    type Out;
    /// Run on `backend`.
    fn run<B: Backend>(self, backend: B) -> Result<Self::Out>;
}

/// `--fp4` (global): the CUDA backend's MoE expert path, set once by `main`.
static FP4_MODE: std::sync::OnceLock<gptoss_kernels_cuda::fp4::Fp4Mode> =
    std::sync::OnceLock::new();

/// Record `--fp4` for every backend opened later.
pub fn set_fp4_mode(mode: gptoss_kernels_cuda::fp4::Fp4Mode) {
    let _ = FP4_MODE.set(mode);
}

/// A CUDA backend on `ordinal` with `--fp4` applied (`on` is refused where the GPU lacks FP4 MMA).
fn cuda(ordinal: usize) -> Result<gptoss_kernels_cuda::CudaBackend> {
    let mut b = gptoss_kernels_cuda::CudaBackend::new(ordinal)?;
    b.set_fp4(FP4_MODE.get().copied().unwrap_or_default())?;
    Ok(b)
}

/// Parse `--gpus 0,1`: GPU ordinals, comma-separated.
pub fn parse_gpus(s: &str) -> std::result::Result<usize, String> {
    s.trim()
        .parse::<usize>()
        .map_err(|_| format!("'{s}' is not a GPU number (expected e.g. --gpus 0,1)"))
}

/// How `--gpus` splits the MoE: `GPTOSS_MOE_SPLIT=experts` (the default: each GPU holds
/// n_experts / n_gpus whole experts) or `ffn` (each GPU a share of every expert's width, the
/// earlier split, for comparison).
fn moe_split() -> Result<MoeSplit> {
    match std::env::var("GPTOSS_MOE_SPLIT") {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .to_ascii_lowercase()
            .parse()
            .map_err(|e: String| anyhow::anyhow!("GPTOSS_MOE_SPLIT: {e}")),
        _ => Ok(MoeSplit::Experts),
    }
}

/// [`with_backend`], or, with `gpus`, a split over those GPUs (gptoss-parallel): attention
/// split by heads, the MoE by experts (see [`moe_split`]; by expert width where the experts do
/// not divide, which the backend's name then says), partial sums added by NCCL. `--backend cuda --gpus 0,1` is the real thing; a GPU listed twice (`--gpus 0,0`) runs
/// two ranks on one GPU with the host collective; `--backend cpu --gpus 0,1` runs two CPU ranks
/// with the host collective (for checking the split without GPUs). Per-rank peak memory is
/// printed to stderr when the job ends.
pub fn with_backend_gpus<W: WithBackend>(
    spec: &str,
    gpus: Option<&[usize]>,
    job: W,
) -> Result<W::Out> {
    let Some(gpus) = gpus else {
        return with_backend(spec, job);
    };
    if gpus.is_empty() {
        bail!("--gpus needs at least one GPU number");
    }
    let spec = spec.to_ascii_lowercase();
    let how = moe_split()?;
    match spec.as_str() {
        "cuda" | "auto" => {
            let ranks = gpus
                .iter()
                .map(|&g| cuda(g))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let distinct = gpus.iter().enumerate().all(|(i, g)| !gpus[..i].contains(g));
            if distinct {
                let coll = gptoss_kernels_cuda::nccl::NcclCollective::new(&ranks)?;
                run_split(SplitBackend::new(ranks, coll)?.with_moe_split(how), job)
            } else {
                tracing::warn!("a GPU is listed twice in --gpus: using the host collective");
                run_split(
                    SplitBackend::new(ranks, HostCollective)?.with_moe_split(how),
                    job,
                )
            }
        }
        "cpu" | "cpu-ref" | "cpu-reference" => {
            let ranks = gpus
                .iter()
                .map(|_| {
                    if spec == "cpu" {
                        CpuBackend::new_fast()
                    } else {
                        CpuBackend::new()
                    }
                })
                .collect();
            run_split(
                SplitBackend::new(ranks, HostCollective)?.with_moe_split(how),
                job,
            )
        }
        other => bail!(
            "--gpus works with --backend cuda (or cpu/cpu-ref, to simulate the split), not '{other}'"
        ),
    }
}

fn run_split<B: Backend, C: Collective<B>, W: WithBackend>(
    split: SplitBackend<B, C>,
    job: W,
) -> Result<W::Out> {
    let memory = split.memory();
    let out = job.run(split);
    let peaks: Vec<String> = memory
        .peaks()
        .into_iter()
        .map(|(name, peak)| match peak {
            Some(b) => format!("{name}: {:.1} MiB", b as f64 / (1024.0 * 1024.0)),
            None => format!("{name}: n/a"),
        })
        .collect();
    eprintln!("per-rank peak memory: {}", peaks.join("; "));
    let weights: Vec<String> = memory
        .weight_bytes()
        .iter()
        .zip(memory.expert_bytes())
        .map(|(w, e)| {
            let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
            format!("{:.1} MiB ({:.1} MiB experts)", mib(*w), mib(e))
        })
        .collect();
    eprintln!("per-rank weights: {}", weights.join("; "));
    out
}

/// Backend names accepted by `--backend`.
pub const NAMES: &str = "auto, cuda[:N], wgpu, cpu, cpu-ref";

/// Open the backend named `spec` and run `job` on it. `auto` tries CUDA, then wgpu (a real GPU
/// adapter), then the fast CPU backend, and logs why each one it skipped was unavailable.
pub fn with_backend<W: WithBackend>(spec: &str, job: W) -> Result<W::Out> {
    let spec = spec.to_ascii_lowercase();
    let fp4_on = FP4_MODE.get() == Some(&gptoss_kernels_cuda::fp4::Fp4Mode::On);
    if fp4_on && !(spec == "auto" || spec.starts_with("cuda")) {
        bail!("--fp4 on needs the cuda backend (got --backend {spec})");
    }
    match spec.as_str() {
        "cpu" => job.run(CpuBackend::new_fast()),
        "cpu-ref" | "cpu-reference" => job.run(CpuBackend::new()),
        "wgpu" => job.run(gptoss_kernels_wgpu::WgpuBackend::new()?),
        "auto" => {
            match cuda(0) {
                Ok(b) => return job.run(b),
                // `--fp4 on` must not quietly run elsewhere.
                Err(e) if fp4_on => return Err(e),
                Err(e) => tracing::info!("auto backend: cuda unavailable: {e}"),
            }
            match gptoss_kernels_wgpu::WgpuBackend::new() {
                Ok(b) if !is_software_adapter(&b.adapter_info()) => return job.run(b),
                Ok(b) => tracing::info!(
                    "auto backend: skipping software adapter {}",
                    b.adapter_info()
                ),
                Err(e) => tracing::info!("auto backend: wgpu unavailable: {e}"),
            }
            job.run(CpuBackend::new_fast())
        }
        s if s == "cuda" || s.starts_with("cuda:") => {
            let ordinal = match s.strip_prefix("cuda:") {
                Some(n) => n
                    .parse()
                    .map_err(|_| anyhow::anyhow!("bad CUDA device '{n}' in --backend {s}"))?,
                None => 0,
            };
            job.run(cuda(ordinal)?)
        }
        other => bail!("unknown backend '{other}' (expected one of: {NAMES})"),
    }
}

/// llvmpipe/SwiftShader-class adapters run shaders on the CPU: slower than the CPU backend.
fn is_software_adapter(info: &str) -> bool {
    let l = info.to_ascii_lowercase();
    l.contains("llvmpipe")
        || l.contains("swiftshader")
        || l.contains("cpu")
        || l.contains("lavapipe")
}
