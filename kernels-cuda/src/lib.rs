//! The CUDA backend of gptoss-rs.
//!
//! [`CudaBackend`] implements [`gptoss_backend::Backend`] on one NVIDIA GPU through the driver
//! API, loaded at run time (cudarc with dynamic loading: nothing of CUDA is needed to build or
//! install). Kernels are CUDA C++ compiled at run time by NVRTC straight to a cubin for the
//! device's architecture (`sm_90a` on Hopper) and cached on disk (see [`compile`]).
//!
//! Weights keep their file formats in GPU memory: MXFP4 experts stay 4.25 bits per weight,
//! Q8_0 stays Q8_0 (both re-laid at upload into a scales-after-values order of the same bits
//! and size, for aligned 16-byte loads). Activations are f32; the KV cache is f16, and a
//! sliding-window layer holds only its window (a ring).
//!
//! Construct with [`CudaBackend::new`]`(0)`; on a machine without a driver or GPU it returns
//! [`BackendError::Unavailable`] with the reason.
#![warn(missing_docs)]

pub mod compile;
mod decode_attn;
mod decode_fused;
mod decode_moe;
use decode_moe::PreNorm;
pub mod fp4;
pub mod nccl;
mod prefill;
pub mod quants;
mod step_graph;

pub use prefill::{TcPrecision, set_tc_min_width, tc_min_rows, tc_min_width};

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DeviceRepr,
    LaunchConfig, PushKernelArg,
};
use gptoss_backend::{
    AttentionConfig, Backend, BackendError, GgmlType, KvCacheConfig, MoeConfig, MoeWeights, Result,
    Rope, SoftmaxCandidates, SoftmaxDraw, WeightData,
};

const BACKEND: &str = "cuda";

/// Rows up to which `linear` and the MoE take the matrix-vector (decode) kernels.
const MAX_GEMV_ROWS: usize = 8;

fn dev_err(e: impl std::fmt::Debug) -> BackendError {
    BackendError::Device {
        backend: BACKEND.into(),
        message: format!("{e:?}"),
    }
}

fn shape_err(op: &'static str, detail: String) -> BackendError {
    BackendError::Shape { op, detail }
}

/// Device bytes allocated by the backend now and at most so far.
#[derive(Default)]
struct MemCounter {
    current: AtomicU64,
    peak: AtomicU64,
}

impl MemCounter {
    fn add(&self, bytes: u64) {
        let now = self.current.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak.fetch_max(now, Ordering::Relaxed);
    }
    fn sub(&self, bytes: u64) {
        self.current.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// Counts one long-lived allocation (weights, caches) while alive.
struct MemGuard {
    bytes: u64,
    counter: Arc<MemCounter>,
}

impl MemGuard {
    fn new(counter: &Arc<MemCounter>, bytes: u64) -> Self {
        counter.add(bytes);
        MemGuard {
            bytes,
            counter: counter.clone(),
        }
    }
}

impl Drop for MemGuard {
    fn drop(&mut self) {
        self.counter.sub(self.bytes);
    }
}

/// A caching allocator for activations and scratch: buffers go back to a free list by size
/// class and are reused without a driver call. Everything runs on one stream, so a buffer
/// reused by a later launch is ordered after every earlier use.
struct Pool {
    ctx: Arc<CudaContext>,
    free: Mutex<HashMap<usize, Vec<u64>>>,
    mem: Arc<MemCounter>,
    /// Buffers of the recorded decode step (step_graph.rs).
    graph: Mutex<step_graph::PoolGraphState>,
}

/// Size classes: 4 KiB minimum, then four steps per power of two (at most 25 % slack).
fn size_class(bytes: usize) -> usize {
    if bytes <= 4096 {
        return 4096;
    }
    let p = usize::BITS - 1 - (bytes - 1).leading_zeros(); // 2^p < bytes <= 2^(p+1)
    let step = 1usize << (p - 2);
    bytes.div_ceil(step) * step
}

impl Pool {
    fn get(self: &Arc<Self>, bytes: usize) -> Result<DevBuf> {
        let class = size_class(bytes);
        let cached = self
            .free
            .lock()
            .map_err(|_| dev_err("allocator poisoned"))?
            .get_mut(&class)
            .and_then(|v| v.pop());
        let ptr = match cached {
            Some(p) => p,
            None => {
                self.ctx.bind_to_thread().map_err(dev_err)?;
                // SAFETY: a plain device allocation in our context; freed in Pool::drop.
                let p = unsafe { cudarc::driver::result::malloc_sync(class) }.map_err(dev_err)?;
                self.mem.add(class as u64);
                p
            }
        };
        self.note_handed_out(ptr, class);
        Ok(DevBuf {
            ptr,
            class,
            pool: self.clone(),
        })
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        if self.ctx.bind_to_thread().is_err() {
            return;
        }
        let _ = self.ctx.synchronize();
        let parked = self.take_parked();
        if let Ok(free) = self.free.get_mut() {
            for (p, class) in parked {
                free.entry(class).or_default().push(p);
            }
            for (class, ptrs) in free.drain() {
                for p in ptrs {
                    // SAFETY: allocated by malloc_sync in Pool::get, no longer referenced.
                    let _ = unsafe { cudarc::driver::result::free_sync(p) };
                    self.mem.sub(class as u64);
                }
            }
        }
    }
}

/// A device buffer from the pool, returned to it on drop.
struct DevBuf {
    ptr: u64,
    class: usize,
    pool: Arc<Pool>,
}

impl Drop for DevBuf {
    fn drop(&mut self) {
        if self.pool.park_if_owned(self.ptr, self.class) {
            return;
        }
        if let Ok(mut free) = self.pool.free.lock() {
            free.entry(self.class).or_default().push(self.ptr);
        }
    }
}

/// A device-resident f32 matrix `[rows, cols]`, row-major.
pub struct CudaTensor {
    buf: DevBuf,
    rows: usize,
    cols: usize,
}

impl CudaTensor {
    /// Rows (tokens).
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Columns.
    pub fn cols(&self) -> usize {
        self.cols
    }
}

/// A device-resident weight in its file format (Q8_0 and MXFP4 re-laid: values, then scales).
pub struct CudaWeight {
    buf: CudaSlice<u8>,
    dtype: GgmlType,
    shape: Vec<usize>,
    /// Blocks in the whole tensor (elements for unquantized types).
    nb: i64,
    name: String,
    _mem: MemGuard,
}

impl CudaWeight {
    /// The weight's type.
    pub fn dtype(&self) -> GgmlType {
        self.dtype
    }
    /// Its shape in ggml order.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// One layer's KV cache: f16 keys and values `[cap, n_kv_heads, head_dim]`, position p in slot
/// `p % cap`; `cap` is the window for a sliding-window layer, else the context.
pub struct CudaKvCache {
    k: CudaSlice<u16>,
    v: CudaSlice<u16>,
    cap: usize,
    cfg: KvCacheConfig,
    len: usize,
    _mem: MemGuard,
}

impl CudaKvCache {
    /// Positions stored so far.
    pub fn len(&self) -> usize {
        self.len
    }
    /// True before the first append.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Slots the cache holds (the window for a sliding-window layer).
    pub fn capacity_slots(&self) -> usize {
        self.cap
    }
}

/// Anything that has a device address.
trait RawPtr {
    fn raw(&self, stream: &CudaStream) -> u64;
}

impl<T> RawPtr for CudaSlice<T> {
    fn raw(&self, stream: &CudaStream) -> u64 {
        let (p, _sync) = self.device_ptr(stream);
        p
    }
}

impl RawPtr for DevBuf {
    fn raw(&self, _stream: &CudaStream) -> u64 {
        self.ptr
    }
}

/// A draw's first launch done ([`CudaBackend::sample_row_max`]): the row arguments every
/// sampling kernel starts with, its grid, the block maxima, and the penalized ids' buffer
/// (kept until the draw's kernels have been queued).
struct SampleRow {
    args: [A; 5],
    blocks: usize,
    part_m: DevBuf,
    _pen: DevBuf,
}

/// A kernel argument: plain values, kept in a slice so that references live until launch.
#[derive(Clone, Copy)]
enum A {
    P(u64),
    I(i32),
    L(i64),
    F(f32),
}

/// The CUDA backend: one device, one stream, the compiled kernels.
pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    _module: Arc<CudaModule>,
    funcs: HashMap<&'static str, CudaFunction>,
    name: String,
    arch: String,
    mem: Arc<MemCounter>,
    pool: Arc<Pool>,
    /// RoPE frequencies on the device, keyed by their bits (uploaded once per distinct Rope).
    rope_cache: Mutex<Vec<(Vec<u32>, CudaSlice<f32>)>>,
    /// Zeroed per-row tickets of the kernels whose last block finishes a reduction (router
    /// top-k, argmax); each kernel leaves them zero again.
    counters: Mutex<[Option<CudaSlice<u32>>; 3]>,
    /// Quantize activations to int8 (dp4a kernels) in the few-row Q8_0/MXFP4 products.
    int8_activations: bool,
    /// The Blackwell FP4 tensor-core MoE path: selection, kernels, self-check (see [`fp4`]).
    fp4: fp4::run::Fp4State,
    /// Rows per warp of the MXFP4 MoE kernels (gate+up, down): 1, 2 or 4.
    moe_rows: (usize, usize),
    /// Decode attention (t = 1) with each GQA group's query heads in one block.
    grouped_decode: bool,
    /// Tensor-core paths in split precision (prefill.rs: bits TC_LINEAR, TC_MOE, TC_ATTENTION).
    tc_split: u8,
    /// The bf16 MoE prefill on Hopper's wgmma (moe_wgmma.cu, sm_90a only; prefill.rs): its
    /// warpgroups per block (4 or 2), or 0 for the mma.sync kernels. `GPTOSS_CUDA_MOE_WGMMA`
    /// (0, 2 or 4; default 4).
    moe_wgmma: usize,
    /// The bf16-precision Q8_0 prefill products (q/k/v, attention output) on Hopper's wgmma
    /// (gemm_wgmma.cu, sm_90a only; prefill.rs). `GPTOSS_CUDA_LINEAR_WGMMA=0` turns it off.
    linear_wgmma: bool,
    /// The int8 tensor-core decode products (decode_moe.rs): MXFP4 MoE at t <= 8, Q8_0
    /// matrix-vector products at t <= 2.
    decode_mma: bool,
    /// Decode attention (t = 1) on tensor cores with the combine fused (see [`decode_attn`]).
    decode_tc: bool,
    /// The dp4a decode MoE on int8 planes of x and h (default; `GPTOSS_CUDA_DECODE_DP4A=0`
    /// turns it off; see decode_moe.rs).
    decode_dp4a: bool,
    /// The residual add and RMSNorm before the MoE done by the dp4a path's router
    /// (`moe_router_topk_q_add`; decode_moe.rs). Default on (`GPTOSS_CUDA_ROUTER_NORM=0`
    /// turns it off).
    router_norm: bool,
    /// Sampling on the device ([`CudaBackend::set_device_sampling`]).
    device_sampling: bool,
    /// Launch with programmatic dependent launch (sm_90+): see [`pdl_default`].
    pdl: bool,
    /// Only kernels whose names start with one of these launch with PDL, in and out of a
    /// recorded step (`GPTOSS_CUDA_PDL_ONLY=gemvf,moe_router`, for measurements; default: see
    /// [`PDL_IN_GRAPH`]).
    pdl_only: Option<Vec<String>>,
    /// Kernels not launched at all (`GPTOSS_CUDA_SKIP=add_rms_norm,attn_dtc`): a timing
    /// tool only, to measure what one stage costs inside the whole step by leaving it out
    /// (its outputs are then stale, so results are wrong). See [`skip_from_env`].
    skip: Vec<String>,
    /// q/k/v with RoPE in one launch for one token (decode_fused.rs; default on,
    /// `GPTOSS_CUDA_DECODE_FUSE=0` turns it off).
    decode_fuse: bool,
    /// The RoPE cos/sin table of the current decode position (decode_fused.rs).
    rope_cs: Mutex<Option<decode_fused::RopeCs>>,
    /// Record the decode step as a CUDA graph and replay it (step_graph.rs; default on,
    /// `GPTOSS_CUDA_GRAPH=0` turns it off).
    step_graphs: bool,
    /// The recorded step, its slot and the recording in progress.
    step: Mutex<step_graph::StepState>,
    /// A decode step is being recorded (stream capture).
    recording: AtomicBool,
}

/// Programmatic dependent launch: every kernel of the program begins with `GRID_DEP_ENTRY`
/// (common.cuh), so each may be launched with the programmatic-serialization attribute: the
/// driver then starts launching the next kernel while the current one still runs, and the next
/// one's blocks wait (`griddepcontrol.wait`) for it before they touch memory; the f32
/// matrix-vector kernels and the router issue their first weight loads before they wait. On an
/// H100 each batch-1 matrix-vector kernel pays ~8 us of launch, ramp and tail (bench/micro,
/// 2026-11-26); this hides part of it (decode tg128 427.6 vs 387.5 tok/s). On by default from
/// sm_90 (earlier chips lack the instructions);
/// `GPTOSS_CUDA_PDL=0` turns it off.
fn pdl_default(major: i32) -> bool {
    major >= 9 && std::env::var("GPTOSS_CUDA_PDL").map_or(true, |v| v != "0")
}

/// The kernels launched with programmatic dependent launch: all but the prefill tensor-core
/// GEMMs and flash attention, whose launches are few and long (on an H100 letting them launch
/// early cost pp512 4.4 %, 2026-11-26, bench/RESULTS.md).
fn pdl_kernel(name: &str) -> bool {
    !["gemm_", "flash_attn", "moe_tc", "moe_sum_slots"]
        .iter()
        .any(|p| name.starts_with(p))
}

/// `GPTOSS_CUDA_SKIP`'s prefixes, less those of kernels whose outputs are indices (argmax,
/// the embedding's token) or the RoPE table: stale values there could address memory out of
/// range, so they always run. A router left out takes its MoE block's expert kernels with it
/// (`moe_range`), since those index with its ids.
fn skip_from_env() -> Vec<String> {
    const NEVER: [&str; 4] = ["argmax", "embed", "qembed", "rope_cs"];
    let Ok(v) = std::env::var("GPTOSS_CUDA_SKIP") else {
        return Vec::new();
    };
    let skip: Vec<String> = v
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .filter(|s| {
            !NEVER
                .iter()
                .any(|n| n.starts_with(s.as_str()) || s.starts_with(n))
        })
        .collect();
    if !skip.is_empty() {
        eprintln!("GPTOSS_CUDA_SKIP: not launching {skip:?} (timing only: outputs are wrong)");
    }
    skip
}

/// The kernels that keep programmatic dependent launch inside a recorded decode step (CUDA
/// graph): those that load their weights before they wait for the previous kernel (the f32
/// matrix-vector products, the router, and the dp4a MoE's down kernel). In a graph the launch
/// itself costs little, and the other kernels' blocks, resident early and waiting, only take SM
/// slots: tg128 506.0 with the first two against 495.8 tok/s with every decode kernel launched
/// so and 497.6 with none (H100, three alternating rounds each; 458.9 / 445.3 / 454.4 at depth
/// 16384); adding the down kernel (which then reads the router's ids and loads its first
/// weights before its wait): 500.2 against 491.4 in another call (three rounds; 450.6 / 443.7
/// at depth 16384). 2026-11-26, bench/RESULTS.md session 16. The MoE gate+up kernel too,
/// although it waits before it loads anything (it needs the router's ids): its launch then
/// overlaps the router; 566.8 / 565.0 against 558.6 / 562.7 tok/s without it (two alternating
/// rounds), 573.2 against 572.5 in another call (2026-11-27, bench/RESULTS.md session 18): a
/// small effect, kept as not worse. Outside a graph every decode kernel keeps it.
const PDL_IN_GRAPH: [&str; 4] = [
    "gemvf",
    "moe_router",
    "moe_down_planes",
    "moe_gate_up_planes",
];

const TICKETS_ROUTER: usize = 0;
const TICKETS_ARGMAX: usize = 1;
const TICKETS_ATTN: usize = 2;
/// Token rows per block of `moe_router_rows` (RR_ROWS in moe.cu).
const ROUTER_ROWS: usize = 8;

fn unavailable(reason: String) -> BackendError {
    BackendError::Unavailable {
        backend: BACKEND.into(),
        reason,
    }
}

/// The NVRTC architecture to compile for: the `a` variant where the chip has one (Hopper,
/// Blackwell), so arch-specific instructions are allowed.
pub fn arch_for(major: i32, minor: i32) -> String {
    match (major, minor) {
        (9, 0) | (10, 0) | (10, 3) | (12, 0) | (12, 1) => format!("sm_{major}{minor}a"),
        _ => format!("sm_{major}{minor}"),
    }
}

impl CudaBackend {
    /// Open GPU `ordinal`, compile (or load from the cache) the kernels for it.
    ///
    /// Returns [`BackendError::Unavailable`] when there is no driver, no such device, or no
    /// NVRTC library; the message says what to install.
    pub fn new(ordinal: usize) -> Result<Self> {
        // SAFETY: only tries to open libcuda; no symbol is called.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(unavailable(
                "the NVIDIA driver library (libcuda.so) was not found: this machine has no NVIDIA \
                 driver; use the cpu backend"
                    .into(),
            ));
        }
        let ctx = CudaContext::new(ordinal)
            .map_err(|e| unavailable(format!("cannot open CUDA device {ordinal}: {e:?}")))?;
        let (major, minor) = ctx.compute_capability().map_err(dev_err)?;
        if major < 8 {
            return Err(unavailable(format!(
                "CUDA device {ordinal} has compute capability {major}.{minor}; sm_80 or newer is needed"
            )));
        }
        let arch = arch_for(major, minor);
        let cubin = compile::cached_cubin(&arch).map_err(|e| {
            if compile::nvrtc_available() {
                dev_err(e)
            } else {
                unavailable(e)
            }
        })?;
        let module = ctx
            .load_module(cudarc::nvrtc::Ptx::from_binary(cubin))
            .map_err(dev_err)?;
        let mut funcs = HashMap::new();
        for &n in compile::KERNEL_NAMES.iter().chain(quants::KERNEL_NAMES) {
            funcs.insert(n, module.load_function(n).map_err(dev_err)?);
        }
        // SAFETY: the backend uses one stream, so cudarc's per-allocation events (for ordering
        // across streams) are not needed; they would cost two driver calls per launch.
        unsafe { ctx.disable_event_tracking() };
        // A stream of our own, not the legacy default stream: a decode step can only be
        // recorded (stream capture, step_graph.rs) on a created stream.
        let stream = ctx.new_stream().map_err(dev_err)?;
        let dev_name = ctx.name().unwrap_or_else(|_| "unknown".into());
        let mem = Arc::new(MemCounter::default());
        let pool = Arc::new(Pool {
            ctx: ctx.clone(),
            free: Mutex::new(HashMap::new()),
            mem: mem.clone(),
            graph: Mutex::new(Default::default()),
        });
        Ok(CudaBackend {
            pool,
            name: format!("cuda:{ordinal} ({dev_name}, {arch})"),
            ctx,
            stream,
            _module: module,
            funcs,
            arch,
            mem,
            rope_cache: Mutex::new(Vec::new()),
            counters: Mutex::new([None, None, None]),
            int8_activations: false,
            fp4: fp4::run::Fp4State::new(major, minor),
            // The fastest pair measured on an H100 (bench_decode, 2026-11-26): 53.5 us per
            // MoE layer against 54.4 for (1, 1) and 56.3 for (2, 2).
            moe_rows: (1, 2),
            grouped_decode: false,
            tc_split: prefill::tc_split_from_env(),
            moe_wgmma: match std::env::var("GPTOSS_CUDA_MOE_WGMMA").as_deref() {
                Ok("0") => 0,
                Ok("2") => 2,
                _ => 4,
            },
            linear_wgmma: std::env::var("GPTOSS_CUDA_LINEAR_WGMMA").map_or(true, |v| v != "0"),
            // Opt-in: measured slower than the f32 kernels on an H100 (bench/RESULTS.md, helper
            // dmoe): 291 vs 354 tok/s tg128 on the synthetic 20b.
            decode_mma: std::env::var("GPTOSS_CUDA_DECODE_MMA").is_ok_and(|v| v == "1"),
            decode_tc: decode_attn::tc_default(),
            // On: tg128 452.6 vs 430.7 tok/s with the f32 kernels on an H100, 64 of 64 greedy
            // steps as the CPU reference (2026-11-26, bench/RESULTS.md).
            decode_dp4a: std::env::var("GPTOSS_CUDA_DECODE_DP4A").map_or(true, |v| v != "0"),
            router_norm: std::env::var("GPTOSS_CUDA_ROUTER_NORM").map_or(true, |v| v != "0"),
            device_sampling: std::env::var("GPTOSS_CUDA_SAMPLE").map_or(true, |v| v != "0"),
            pdl: pdl_default(major),
            pdl_only: std::env::var("GPTOSS_CUDA_PDL_ONLY")
                .ok()
                .map(|v| v.split(',').map(|s| s.trim().to_string()).collect()),
            skip: skip_from_env(),
            decode_fuse: decode_fused::fuse_default(),
            rope_cs: Mutex::new(None),
            step_graphs: step_graph::graph_default(),
            step: Mutex::new(Default::default()),
            recording: AtomicBool::new(false),
        })
    }

    /// Use int8-quantized activations (per 32 values, as llama.cpp's q8_1) with dp4a in the
    /// few-row Q8_0/MXFP4 products and the MoE, instead of f32 activations (the default).
    /// Each product then stays within the matmul tolerance (NMSE ~3e-5), but the error
    /// compounds through layers: the tiny fixture model's logits then miss the 1e-4 limit.
    pub fn set_int8_activations(&mut self, on: bool) {
        self.int8_activations = on;
    }

    /// The int8 tensor-core decode kernels (activations as four int8 planes, see decode_moe.rs)
    /// for the MXFP4 MoE at t <= 8 and Q8_0 matrix-vector products at t <= 2; off, those take
    /// the f32-activation kernels. Both are exact to f32 rounding (conformance NMSE ~1e-13).
    /// Default off (GPTOSS_CUDA_DECODE_MMA=1 turns it on): on an H100 the int8 kernels measured
    /// slower (MoE 62.5 vs 53.1 us per layer, q+k+v 18.5 vs 8.4 us; bench/RESULTS.md).
    pub fn set_decode_mma(&mut self, on: bool) {
        self.decode_mma = on;
    }

    /// The dp4a decode MoE (MXFP4 experts, t <= 8, top-k dividing 8): x and h as int8 planes
    /// (three of the four that moe_router_topk_q and the gate+up kernel write: ~1e-7 of the row
    /// maximum), in the shape of the f32 kernels; [`CudaBackend::set_decode_mma`] takes
    /// precedence. Default on (`GPTOSS_CUDA_DECODE_DP4A=0` turns it off): faster than the f32
    /// kernels on an H100 and as exact in conformance (NMSE ~1e-12).
    pub fn set_decode_dp4a(&mut self, on: bool) {
        self.decode_dp4a = on;
    }

    /// The MXFP4 MoE prefill (bf16 precision) on wgmma where the kernels were compiled for
    /// sm_90a (moe_wgmma.cu), with `warpgroups` (4 or 2) per block of 64 weight rows each; 0:
    /// the mma.sync kernels of every architecture. Default 4 (`GPTOSS_CUDA_MOE_WGMMA=0`, `2`).
    pub fn set_moe_wgmma(&mut self, warpgroups: usize) {
        self.moe_wgmma = if warpgroups == 2 || warpgroups == 0 {
            warpgroups
        } else {
            4
        };
    }

    /// The Q8_0 prefill products (bf16 precision, k a multiple of 64) on wgmma where the
    /// kernels were compiled for sm_90a (gemm_wgmma.cu); off: the mma.sync kernels of every
    /// architecture. Default on (`GPTOSS_CUDA_LINEAR_WGMMA=0` turns it off).
    pub fn set_linear_wgmma(&mut self, on: bool) {
        self.linear_wgmma = on;
    }

    /// The residual add and the RMSNorm before the MoE done inside the router launch of the
    /// decode MoE ([`Backend::add_rms_norm_moe`]; see `CudaBackend::router_add_fits`): a
    /// launch fewer per layer. Off: `add_rms_norm`, then the router. Default on
    /// (`GPTOSS_CUDA_ROUTER_NORM=0` turns it off).
    pub fn set_router_norm(&mut self, on: bool) {
        self.router_norm = on;
    }

    /// Sampling on the device: temperature draws ([`Backend::sample_softmax`]: two launches,
    /// one id back) and top-k / top-p candidates ([`Backend::softmax_candidates`]); off, the
    /// logits row is copied back and the host samples. Default on (`GPTOSS_CUDA_SAMPLE=0`
    /// turns it off).
    pub fn set_device_sampling(&mut self, on: bool) {
        self.device_sampling = on;
    }

    /// The one-token q/k/v products with RoPE applied as they are written (one launch instead
    /// of two per layer; see `decode_fused.rs`). Default on (`GPTOSS_CUDA_DECODE_FUSE=0` turns
    /// it off): tg128 457.1 vs 448.9 / 451.1 tok/s on an H100 (2026-11-26, bench/RESULTS.md).
    pub fn set_decode_fuse(&mut self, on: bool) {
        self.decode_fuse = on;
    }

    /// Rows each warp of the MXFP4 MoE kernels computes, for gate+up and for down (1, 2 or 4
    /// each; other values round to one of those). More rows per warp put more loads in flight
    /// per warp and reuse each activation load, fewer give more warps. Default (1, 2).
    pub fn set_moe_rows_per_warp(&mut self, gate_up: usize, down: usize) {
        let pick = |r: usize| match r {
            0 | 1 => 1,
            2 | 3 => 2,
            _ => 4,
        };
        self.moe_rows = (pick(gate_up), pick(down));
    }

    /// Decode attention (one query row) with the query heads of each GQA group in one block,
    /// so that each cached key/value row is read once per group instead of once per head. Off
    /// by default: on an H100 it measured 37 us against 47 per full layer at depth 4096, but
    /// 27 against 10-14 at depth ~100 (a per-key dependent load chain at the chunk holding the
    /// new key), and its depth-16384 run did not finish within the benchmark's time limit.
    pub fn set_grouped_decode_attention(&mut self, on: bool) {
        self.grouped_decode = on;
    }

    /// The architecture the kernels were compiled for (`sm_90a`, ...).
    pub fn arch(&self) -> &str {
        &self.arch
    }

    /// Test aid: fill `bytes` of device memory with 0xFF (an f32 NaN pattern) and give it back to
    /// the stream's memory pool, so that the outputs allocated next start out poisoned and an
    /// element a kernel forgets to write shows up as NaN.
    pub fn poison_pool(&self, bytes: usize) -> Result<()> {
        // A fresh buffer of that size joins the free lists, then every cached buffer is filled.
        drop(self.scratch(bytes)?);
        let free = self
            .pool
            .free
            .lock()
            .map_err(|_| dev_err("allocator poisoned"))?;
        for (&class, ptrs) in free.iter() {
            for &p in ptrs {
                // SAFETY: `p` is a live pool allocation of `class` bytes that nothing references.
                unsafe {
                    cudarc::driver::result::memset_d8_async(p, 0xff, class, self.stream.cu_stream())
                }
                .map_err(dev_err)?;
            }
        }
        drop(free);
        self.synchronize()
    }

    /// Device-to-device copy bandwidth in GB/s (bytes read plus bytes written, per second) over
    /// a buffer of `bytes`, the median of `reps` timed copies: the roofline a memory-bound
    /// kernel is measured against.
    pub fn copy_bandwidth_gbs(&self, bytes: usize, reps: usize) -> Result<f64> {
        let a = self.scratch(bytes)?;
        let b = self.scratch(bytes)?;
        // SAFETY: the pointer and length are those of the live allocation `a`, on our stream.
        unsafe {
            cudarc::driver::result::memset_d8_async(a.ptr, 0x5a, bytes, self.stream.cu_stream())
        }
        .map_err(dev_err)?;
        let mut times = Vec::with_capacity(reps);
        for _ in 0..reps.max(1) + 1 {
            self.synchronize()?;
            let t0 = std::time::Instant::now();
            // SAFETY: both buffers are live pool allocations of at least `bytes`.
            unsafe {
                cudarc::driver::result::memcpy_dtod_async(
                    b.ptr,
                    a.ptr,
                    bytes,
                    self.stream.cu_stream(),
                )
            }
            .map_err(dev_err)?;
            self.synchronize()?;
            times.push(t0.elapsed().as_secs_f64());
        }
        times.remove(0);
        times.sort_by(|x, y| x.total_cmp(y));
        Ok(2.0 * bytes as f64 / times[times.len() / 2] / 1e9)
    }

    /// Benchmark aid: run `f` `reps` times queued behind a busy-wait kernel of `hold_ms`, and
    /// return the device time per repetition in microseconds, measured with events. Because
    /// everything is queued before the device starts on it, this is the kernels' own time,
    /// without launch gaps (the host must enqueue the reps within `hold_ms`).
    pub fn device_time_us(&self, reps: usize, hold_ms: f64, mut f: impl FnMut()) -> Result<f64> {
        f();
        self.synchronize()?;
        let start = self
            .ctx
            .new_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(dev_err)?;
        let end = self
            .ctx
            .new_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(dev_err)?;
        let clock_khz = self
            .ctx
            .attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_CLOCK_RATE)
            .map_err(dev_err)? as f64;
        self.launch("spin", (1, 1, 1), 1, &[A::L((hold_ms * clock_khz) as i64)])?;
        start.record(&self.stream).map_err(dev_err)?;
        for _ in 0..reps {
            f();
        }
        end.record(&self.stream).map_err(dev_err)?;
        end.synchronize().map_err(dev_err)?;
        Ok(start.elapsed_ms(&end).map_err(dev_err)? as f64 * 1e3 / reps.max(1) as f64)
    }

    /// Wait for all queued work (kernel errors surface here).
    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(dev_err)
    }

    fn tensor(&self, rows: usize, cols: usize) -> Result<CudaTensor> {
        Ok(CudaTensor {
            buf: self.pool.get(rows * cols * 4)?,
            rows,
            cols,
        })
    }

    /// A pooled scratch buffer of `bytes` (written by a kernel before it is read).
    fn scratch(&self, bytes: usize) -> Result<DevBuf> {
        self.pool.get(bytes)
    }

    fn ptr(&self, s: &impl RawPtr) -> u64 {
        s.raw(&self.stream)
    }

    fn htod<T: DeviceRepr>(&self, dst: &DevBuf, src: &[T]) -> Result<()> {
        // A recorded copy would read the host memory again at every replay.
        self.refuse_while_recording("a copy from the host")?;
        if src.is_empty() {
            return Ok(());
        }
        // SAFETY: `dst` is a live allocation of at least size_of_val(src) bytes (the callers
        // size it from `src`); the copy from pageable memory has consumed `src` on return.
        unsafe { cudarc::driver::result::memcpy_htod_async(dst.ptr, src, self.stream.cu_stream()) }
            .map_err(dev_err)
    }

    fn dtoh<T: DeviceRepr + Default + Clone>(&self, src: &DevBuf, n: usize) -> Result<Vec<T>> {
        self.refuse_while_recording("a copy to the host")?;
        let mut v = vec![T::default(); n];
        if n == 0 {
            return Ok(v);
        }
        // SAFETY: `src` holds at least n values of T (the callers' shapes); we wait for the copy
        // before `v` is used.
        unsafe {
            cudarc::driver::result::memcpy_dtoh_async(&mut v, src.ptr, self.stream.cu_stream())
        }
        .map_err(dev_err)?;
        self.synchronize()?;
        Ok(v)
    }

    fn launch(&self, name: &str, grid: (u32, u32, u32), block: u32, args: &[A]) -> Result<()> {
        self.launch_smem(name, grid, block, 0, args)
    }

    fn launch_smem(
        &self,
        name: &str,
        grid: (u32, u32, u32),
        block: u32,
        smem: u32,
        args: &[A],
    ) -> Result<()> {
        let f = self
            .funcs
            .get(name)
            .ok_or_else(|| dev_err(format!("kernel {name} not loaded")))?;
        if self.skipped(name, grid.0) {
            return Ok(());
        }
        if self.pdl && pdl_kernel(name) && self.pdl_here(name) {
            return self.launch_pdl(f, grid, block, smem, args);
        }
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
            shared_mem_bytes: smem,
        };
        // SAFETY: every kernel's argument list above matches its signature in src/kernels
        // (pointers as u64, int as i32, long long as i64, float as f32), and every pointer
        // refers to a live allocation at least as large as the kernel's grid touches (shapes are
        // checked by the callers).
        unsafe { b.launch(cfg) }.map_err(dev_err)?;
        Ok(())
    }

    /// The many-row router (`moe_router_rows`, ROUTER_ROWS tokens per block) applies: rows of
    /// the bf16 tensor-core prefill, an F32 router, eight k slices of whole float4s and 32 to
    /// 128 experts in whole warps (a lane sums n_exp / 32 of them). Its logits are the same
    /// f32 sums in another order; the f32 and split-precision paths keep `moe_router_topk`,
    /// with which their checks against the CPU reference were measured (bench/RESULTS.md,
    /// session 22: with the many-row router the f32 kernels' 64 greedy steps on the synthetic
    /// 20b kept 29 steps, a near-tie of that random model flipping).
    fn router_rows_fits(
        &self,
        w: &MoeWeights<CudaWeight>,
        t: usize,
        d_model: usize,
        e: usize,
    ) -> bool {
        self.moe_bf16_prefill(t, d_model)
            && w.router.dtype == GgmlType::F32
            && d_model.is_multiple_of(32)
            && (32..=128).contains(&e)
            && e.is_multiple_of(32)
    }

    /// Whether `GPTOSS_CUDA_SKIP` leaves this launch out: an entry `prefix` matches every
    /// kernel whose name starts with it, `prefix/N` only launches of N blocks in x (the output
    /// matrix's product apart from the layers' of the same kernel).
    fn skipped(&self, name: &str, grid_x: u32) -> bool {
        self.skip.iter().any(|e| match e.split_once('/') {
            Some((p, n)) => name.starts_with(p) && n.parse() == Ok(grid_x),
            None => name.starts_with(e.as_str()),
        })
    }

    /// Whether `name` launches with PDL here (recording or not; see [`PDL_IN_GRAPH`]).
    fn pdl_here(&self, name: &str) -> bool {
        match &self.pdl_only {
            Some(ps) => ps.iter().any(|p| name.starts_with(p.as_str())),
            None => !self.recording() || PDL_IN_GRAPH.iter().any(|p| name.starts_with(p)),
        }
    }

    /// `launch_smem` through cuLaunchKernelEx with the programmatic-serialization attribute.
    fn launch_pdl(
        &self,
        f: &CudaFunction,
        grid: (u32, u32, u32),
        block: u32,
        smem: u32,
        args: &[A],
    ) -> Result<()> {
        use cudarc::driver::sys;
        // Each argument's value in an 8-byte slot (little-endian: a 4-byte value is the slot's
        // first bytes), and the address of each slot, as cuLaunchKernelEx takes them.
        let mut vals: Vec<u64> = args
            .iter()
            .map(|a| match *a {
                A::P(v) => v,
                A::I(v) => v as u32 as u64,
                A::L(v) => v as u64,
                A::F(v) => v.to_bits() as u64,
            })
            .collect();
        let mut ptrs: Vec<*mut std::ffi::c_void> = vals
            .iter_mut()
            .map(|v| (v as *mut u64).cast::<std::ffi::c_void>())
            .collect();
        let mut attr = sys::CUlaunchAttribute {
            id: sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION,
            pad: [0; 4],
            value: sys::CUlaunchAttributeValue {
                programmaticStreamSerializationAllowed: 1,
            },
        };
        let cfg = sys::CUlaunchConfig {
            gridDimX: grid.0,
            gridDimY: grid.1,
            gridDimZ: grid.2,
            blockDimX: block,
            blockDimY: 1,
            blockDimZ: 1,
            sharedMemBytes: smem,
            hStream: self.stream.cu_stream(),
            attrs: &mut attr,
            numAttrs: 1,
        };
        self.ctx.bind_to_thread().map_err(dev_err)?;
        // SAFETY: as in launch_smem (every argument list matches its kernel's signature; the
        // values are 8-byte slots whose first bytes hold each argument, alive until the call
        // returns, when the driver has copied them); `attr` and `cfg` outlive the call; every
        // kernel of the program waits (GRID_DEP_ENTRY) for the previous kernel before it reads
        // or writes memory another kernel wrote, which the attribute requires.
        unsafe {
            sys::cuLaunchKernelEx(
                &cfg,
                f.cu_function(),
                ptrs.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        }
        .result()
        .map_err(dev_err)
    }

    /// The start of a draw over the last row of `logits`: the penalized ids uploaded and
    /// `sample_max` launched (zeroing `head`'s count and sum when not 0). `None` when the
    /// draw is off or out of the kernels' reach (more than 256 penalized ids).
    fn sample_row_max(
        &self,
        logits: &CudaTensor,
        draw: &SoftmaxDraw,
        head: u64,
    ) -> Result<Option<SampleRow>> {
        if logits.rows == 0 || logits.cols == 0 {
            return Err(shape_err("sample", "empty logits".into()));
        }
        if !self.device_sampling || draw.penalized.len() > 256 || logits.cols > i32::MAX as usize {
            return Ok(None);
        }
        let n = logits.cols;
        let row = self.ptr(&logits.buf) + ((logits.rows - 1) * n * 4) as u64;
        let pen: Vec<i32> = draw
            .penalized
            .iter()
            .filter(|&&t| (t as usize) < n)
            .map(|&t| t as i32)
            .collect();
        let pen_buf = self.scratch(pen.len().max(1) * 4)?;
        self.htod(&pen_buf, &pen)?;
        let blocks = n.div_ceil(4096).clamp(1, 128);
        let part_m = self.scratch(blocks * 4)?;
        let args = [
            A::P(row),
            A::I(n as i32),
            A::P(pen_buf.ptr),
            A::I(pen.len() as i32),
            A::F(draw.penalty),
        ];
        self.launch(
            "sample_max",
            (blocks as u32, 1, 1),
            256,
            &[&args[..], &[A::P(part_m.ptr), A::P(head)]].concat(),
        )?;
        Ok(Some(SampleRow {
            args,
            blocks,
            part_m,
            _pen: pen_buf,
        }))
    }

    /// The device address of at least `n` zeroed tickets of kind `which`.
    fn tickets(&self, which: usize, n: usize) -> Result<u64> {
        let mut c = self
            .counters
            .lock()
            .map_err(|_| dev_err("tickets poisoned"))?;
        if c[which].as_ref().is_none_or(|b| b.len() < n) {
            self.refuse_while_recording("allocating tickets")?;
            // A recorded step holds the address of the buffer replaced here.
            self.forget_step_graph()?;
            let b = self
                .stream
                .alloc_zeros::<u32>(n.max(1024))
                .map_err(dev_err)?;
            c[which] = Some(b);
        }
        Ok(c[which].as_ref().map(|b| self.ptr(b)).unwrap_or(0))
    }

    fn rope_freqs(&self, rope: &Rope) -> Result<u64> {
        let key: Vec<u32> = rope.inv_freq.iter().map(|f| f.to_bits()).collect();
        let mut cache = self
            .rope_cache
            .lock()
            .map_err(|_| dev_err("rope cache poisoned"))?;
        if let Some((_, buf)) = cache.iter().find(|(k, _)| *k == key) {
            return Ok(self.ptr(buf));
        }
        self.refuse_while_recording("uploading RoPE frequencies")?;
        let buf = self.stream.clone_htod(&rope.inv_freq).map_err(dev_err)?;
        let p = self.ptr(&buf);
        cache.push((key, buf));
        Ok(p)
    }

    /// One decode row (t = 1) of attention with the query heads of each GQA group in one block
    /// (each cached key/value row read once per group), split over the keys so that long
    /// contexts fill the GPU; the kernel also appends the new key/value row to the cache.
    #[allow(clippy::too_many_arguments)]
    fn attention_decode(
        &self,
        q: &CudaTensor,
        k: &CudaTensor,
        v: &CudaTensor,
        cache: &mut CudaKvCache,
        pos0: usize,
        cfg: &AttentionConfig,
        max_keys: usize,
        sink_args: [A; 2],
        out: CudaTensor,
    ) -> Result<CudaTensor> {
        let (h, kvh, hd) = (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim);
        // About four blocks per SM of an H100, chunks of at least 128 keys (one 32-key step
        // for each of a block's four warps).
        let mut splits = 1usize;
        while kvh * splits < 512 && max_keys.div_ceil(splits * 2) >= 128 {
            splits *= 2;
        }
        let chunk = max_keys.div_ceil(splits);
        let part = self.scratch(if splits > 1 {
            h * splits * (hd + 2) * 4
        } else {
            4
        })?;
        const DECODE: [&str; 8] = [
            "attn_decode_d1",
            "attn_decode_d2",
            "attn_decode_d3",
            "attn_decode_d4",
            "attn_decode_d5",
            "attn_decode_d6",
            "attn_decode_d7",
            "attn_decode_d8",
        ];
        self.launch(
            DECODE[hd / 32 - 1],
            (kvh as u32, splits as u32, 1),
            128,
            &[
                A::P(self.ptr(&q.buf)),
                A::P(self.ptr(&k.buf)),
                A::P(self.ptr(&v.buf)),
                A::P(self.ptr(&cache.k)),
                A::P(self.ptr(&cache.v)),
                A::I(pos0 as i32),
                A::I(h as i32),
                A::I(kvh as i32),
                A::I(hd as i32),
                A::I(cache.cap as i32),
                A::I(cfg.window.unwrap_or(0) as i32),
                A::F(cfg.scale),
                A::I(chunk as i32),
                A::P(self.ptr(&part)),
                sink_args[0],
                sink_args[1],
                A::P(self.ptr(&out.buf)),
            ],
        )?;
        if splits > 1 {
            self.launch(
                "attn_combine",
                (1, h as u32, 1),
                hd as u32,
                &[
                    A::P(self.ptr(&part)),
                    A::I(h as i32),
                    A::I(hd as i32),
                    A::I(splits as i32),
                    sink_args[0],
                    sink_args[1],
                    A::P(self.ptr(&out.buf)),
                ],
            )?;
        }
        cache.len = pos0 + 1;
        Ok(out)
    }

    /// `y = x W^T + b` into an existing buffer `y` `[t, n]`.
    #[allow(clippy::too_many_arguments)]
    fn linear_into(
        &self,
        x: u64,
        t: usize,
        k: usize,
        w: &CudaWeight,
        bias: Option<&CudaWeight>,
        y: u64,
        n: usize,
    ) -> Result<()> {
        if quants::supported(w.dtype) {
            return self.q_linear(x, t, k, w, bias, y, n);
        }
        if t == 0 || n == 0 {
            return Ok(());
        }
        let (bp, bt) = match bias {
            Some(b) => (self.ptr(&b.buf), b.dtype.id() as i32),
            None => (0, 0),
        };
        // Many rows: the tensor-core GEMM (prefill.rs) where the type and k allow it.
        if let Some(r) = self.linear_tc(x, t, k, w, bias, y, n) {
            return r;
        }
        let wp = self.ptr(&w.buf);
        let wt = w.dtype.id() as i32;
        let smem = t * k + t * k / 8;
        let quant = matches!(w.dtype, GgmlType::Q8_0 | GgmlType::MXFP4);
        if self.mma_gemv_fits(w.dtype, t, k, n) {
            self.mma_gemv(x, t, k, &[(w, bp, bt, y, n)])
        } else if t <= MAX_GEMV_ROWS && quant && !self.int8_activations {
            let kern = match (w.dtype == GgmlType::Q8_0, t == 1) {
                (true, true) => "gemvf_q8_0_r1",
                (true, false) => "gemvf_q8_0",
                (false, true) => "gemvf_mxfp4_r1",
                (false, false) => "gemvf_mxfp4",
            };
            self.launch(
                kern,
                (n.div_ceil(8) as u32, 1, 1),
                256,
                &[
                    A::P(x),
                    A::I(t as i32),
                    A::I(k as i32),
                    A::P(wp),
                    A::L(w.nb),
                    A::P(bp),
                    A::I(bt),
                    A::P(y),
                    A::I(n as i32),
                ],
            )
        } else if t <= MAX_GEMV_ROWS && quant && n > 32768 {
            // A tall matrix (the output projection): quantize x once rather than in every block.
            let nblk = t * k / 32;
            let xq = self.scratch(t * k)?;
            let xd = self.scratch(nblk * 4)?;
            self.launch(
                "quantize_q8",
                (nblk.div_ceil(64) as u32, 1, 1),
                256,
                &[A::P(x), A::I(nblk as i32), A::P(xq.ptr), A::P(xd.ptr)],
            )?;
            let kern = match (w.dtype == GgmlType::Q8_0, t == 1) {
                (true, true) => "gemv_q8_0_pre_r1",
                (true, false) => "gemv_q8_0_pre",
                (false, true) => "gemv_mxfp4_pre_r1",
                (false, false) => "gemv_mxfp4_pre",
            };
            self.launch(
                kern,
                (n.div_ceil(8) as u32, 1, 1),
                256,
                &[
                    A::P(xq.ptr),
                    A::P(xd.ptr),
                    A::I(t as i32),
                    A::I(k as i32),
                    A::P(wp),
                    A::L(w.nb),
                    A::P(bp),
                    A::I(bt),
                    A::P(y),
                    A::I(n as i32),
                ],
            )
        } else if t <= MAX_GEMV_ROWS && quant && smem <= 48 * 1024 {
            let kern = match (w.dtype == GgmlType::Q8_0, t == 1) {
                (true, true) => "gemv_q8_0_r1",
                (true, false) => "gemv_q8_0",
                (false, true) => "gemv_mxfp4_r1",
                (false, false) => "gemv_mxfp4",
            };
            self.launch_smem(
                kern,
                (n.div_ceil(8) as u32, 1, 1),
                256,
                smem as u32,
                &[
                    A::P(x),
                    A::I(t as i32),
                    A::I(k as i32),
                    A::P(wp),
                    A::L(w.nb),
                    A::P(bp),
                    A::I(bt),
                    A::P(y),
                    A::I(n as i32),
                ],
            )
        } else if t <= MAX_GEMV_ROWS {
            self.launch(
                "linear_rows",
                (n.div_ceil(8) as u32, 1, 1),
                256,
                &[
                    A::P(x),
                    A::I(t as i32),
                    A::I(k as i32),
                    A::P(wp),
                    A::I(wt),
                    A::L(w.nb),
                    A::P(bp),
                    A::I(bt),
                    A::P(y),
                    A::I(n as i32),
                ],
            )
        } else {
            self.launch(
                "gemm_tiled",
                (n.div_ceil(64) as u32, t.div_ceil(64) as u32, 1),
                256,
                &[
                    A::P(x),
                    A::I(t as i32),
                    A::I(k as i32),
                    A::P(wp),
                    A::I(wt),
                    A::L(w.nb),
                    A::P(bp),
                    A::I(bt),
                    A::P(y),
                    A::I(n as i32),
                ],
            )
        }
    }
}

/// (k, n) of a weight used as a matrix `[k, n]` (n rows of k), any trailing dims folded into n.
fn matrix_dims(w: &CudaWeight) -> (usize, usize) {
    let k = w.shape.first().copied().unwrap_or(0);
    let n = w.shape.iter().skip(1).product::<usize>();
    (k, n)
}

/// Checks `x @ W^T + bias` shapes; returns (k, n).
fn check_linear(
    x: &CudaTensor,
    w: &CudaWeight,
    bias: Option<&CudaWeight>,
) -> Result<(usize, usize)> {
    let (k, n) = matrix_dims(w);
    if x.cols != k {
        return Err(shape_err(
            "linear",
            format!(
                "x is [{}, {}] but {} is {:?} (k = {k})",
                x.rows, x.cols, w.name, w.shape
            ),
        ));
    }
    if let Some(b) = bias
        && (b.numel() != n || b.dtype.is_quantized())
    {
        return Err(shape_err(
            "linear",
            format!(
                "bias {} is {:?} {} for {n} outputs",
                b.name,
                b.shape,
                b.dtype.name()
            ),
        ));
    }
    Ok((k, n))
}

/// Same-bits re-layout of quantized blocks: all values first, then all scales.
fn relayout(dtype: GgmlType, bytes: &[u8]) -> Vec<u8> {
    match dtype {
        GgmlType::Q8_0 => {
            let nb = bytes.len() / 34;
            let mut out = vec![0u8; bytes.len()];
            let (qs, ds) = out.split_at_mut(nb * 32);
            for (b, blk) in bytes.chunks_exact(34).enumerate() {
                ds[b * 2..b * 2 + 2].copy_from_slice(&blk[..2]);
                qs[b * 32..b * 32 + 32].copy_from_slice(&blk[2..]);
            }
            out
        }
        GgmlType::MXFP4 => {
            let nb = bytes.len() / 17;
            let mut out = vec![0u8; bytes.len()];
            let (qs, es) = out.split_at_mut(nb * 16);
            for (b, blk) in bytes.chunks_exact(17).enumerate() {
                es[b] = blk[0];
                qs[b * 16..b * 16 + 16].copy_from_slice(&blk[1..]);
            }
            out
        }
        t if quants::supported(t) => quants::relayout(t, bytes),
        _ => bytes.to_vec(),
    }
}

impl CudaBackend {
    /// The MoE block with the experts `experts` held here (the whole stack for
    /// [`Backend::moe`], a slice for [`Backend::moe_local`]): the router and its top-k run over
    /// all `cfg.n_experts`; for a partial range `moe_localize_ids` then maps each pick to its
    /// local index, or to -1 for another rank's expert, which every MoE kernel skips.
    /// With `pre` (only where [`CudaBackend::router_add_fits`]), `x` is the residual before
    /// its add: the router (`moe_router_topk_q_add`) adds `pre.y` to it in place and norms the
    /// sum itself, as [`Backend::add_rms_norm`] would, then the MoE runs on the normed rows.
    fn moe_range(
        &self,
        x: &CudaTensor,
        w: &MoeWeights<CudaWeight>,
        cfg: &MoeConfig,
        experts: std::ops::Range<usize>,
        pre: Option<PreNorm<'_>>,
    ) -> Result<CudaTensor> {
        let t = x.rows;
        let d_model = x.cols;
        let (e, kk) = (cfg.n_experts, cfg.top_k);
        let bad = |d: String| Err(shape_err("moe", d));
        if e == 0 || e > 256 || kk == 0 || kk > 16 || kk > e {
            return bad(format!(
                "{e} experts, top {kk} (supported: up to 256 experts, top 16)"
            ));
        }
        if experts.start >= experts.end || experts.end > e {
            return bad(format!("expert range {experts:?} of {e} experts"));
        }
        // The expert stacks hold the local experts only; the router all of them.
        let partial = experts.len() != e;
        let n_loc = experts.len();
        let (rk, rn) = matrix_dims(&w.router);
        if rk != d_model || rn != e || w.router_bias.numel() != e {
            return bad(format!(
                "router {:?} for d_model {d_model}, {e} experts",
                w.router.shape
            ));
        }
        let gs = &w.gate.shape;
        if gs.len() != 3 || gs[0] != d_model || gs[2] != n_loc || w.up.shape != *gs {
            return bad(format!(
                "gate {:?} / up {:?} for d_model {d_model}, {n_loc} experts",
                gs, w.up.shape
            ));
        }
        let n_ff = gs[1];
        let ds = &w.down.shape;
        if ds.len() != 3 || ds[0] != n_ff || ds[1] != d_model || ds[2] != n_loc {
            return bad(format!(
                "down {:?} for n_ff {n_ff}, d_model {d_model}, {n_loc} experts",
                ds
            ));
        }
        for (b, n) in [
            (&w.gate_bias, n_ff * n_loc),
            (&w.up_bias, n_ff * n_loc),
            (&w.down_bias, d_model * n_loc),
        ] {
            if b.numel() != n || b.dtype.is_quantized() {
                return bad(format!("bias {} is {:?}, need {n} values", b.name, b.shape));
            }
        }
        let y = self.tensor(t, d_model)?;
        if t == 0 {
            return Ok(y);
        }
        // With `pre`, x is the residual: the router writes the normed rows here.
        let xn = pre.as_ref().map(|_| self.tensor(t, d_model)).transpose()?;
        let xp = self.ptr(&xn.as_ref().unwrap_or(x).buf);
        // Router logits and top-k, on the GPU: no host round trip.
        let ids = self.scratch(t * kk * 4)?;
        let wts = self.scratch(t * kk * 4)?;
        let rw = self.ptr(&w.router.buf);
        let rows_router = pre.is_none()
            && self.router_rows_fits(w, t, d_model, e)
            && !self.mma_moe_fits(w, t, d_model, n_ff, kk);
        // The many-row router needs no logits buffer and no tickets. The other routers' logits
        // stay allocated to the end of the call, as the decode step was recorded with.
        let (router, _logits, mma_planes) = if rows_router {
            let router = "moe_router_rows";
            self.launch(
                router,
                (t.div_ceil(ROUTER_ROWS) as u32, 1, 1),
                256,
                &[
                    A::P(xp),
                    A::I(t as i32),
                    A::I(d_model as i32),
                    A::P(rw),
                    A::P(self.ptr(&w.router_bias.buf)),
                    A::I(w.router_bias.dtype.id() as i32),
                    A::I(e as i32),
                    A::I(kk as i32),
                    A::P(self.ptr(&ids)),
                    A::P(self.ptr(&wts)),
                ],
            )?;
            (router, None, None)
        } else {
            let logits = self.scratch(t * e * 4)?;
            let tickets = self.tickets(TICKETS_ROUTER, t)?;
            let mut router_args = match &pre {
                Some(p) => vec![
                    A::P(self.ptr(&x.buf)),
                    A::P(self.ptr(&p.y.buf)),
                    A::P(self.ptr(&p.weight.buf)),
                    A::F(p.eps),
                    A::P(xp),
                    A::I(d_model as i32),
                    A::P(rw),
                ],
                None => vec![
                    A::P(xp),
                    A::I(d_model as i32),
                    A::P(rw),
                    A::I(w.router.dtype.id() as i32),
                    A::L(w.router.nb),
                ],
            };
            router_args.extend([
                A::P(self.ptr(&w.router_bias.buf)),
                A::I(w.router_bias.dtype.id() as i32),
                A::I(e as i32),
                A::I(kk as i32),
                A::P(logits.ptr),
                A::P(tickets),
                A::P(self.ptr(&ids)),
                A::P(self.ptr(&wts)),
            ]);
            // The dp4a / int8 tensor-core decode MoE reads x as planes written by the router.
            let mma_planes = if self.mma_moe_fits(w, t, d_model, n_ff, kk) {
                let p = self.mma_moe_planes(t, d_model)?;
                router_args.extend([A::P(p.0.ptr), A::P(p.1.ptr)]);
                Some(p)
            } else {
                None
            };
            let router = match (&pre, &mma_planes) {
                (Some(_), Some(_)) => "moe_router_topk_q_add",
                (Some(_), None) => return bad("a fused norm without the planes router".into()),
                (None, Some(_)) => "moe_router_topk_q",
                (None, None) => "moe_router_topk",
            };
            self.launch(router, (e as u32, t as u32, 1), 256, &router_args)?;
            (router, Some(logits), mma_planes)
        };
        // Timing only (GPTOSS_CUDA_SKIP): a router left out writes no expert ids, so nothing
        // that indexes with them may run either; y stays unwritten.
        if self.skipped(router, e as u32) {
            return Ok(y);
        }
        if partial {
            let n = t * kk;
            self.launch(
                "moe_localize_ids",
                (n.div_ceil(256) as u32, 1, 1),
                256,
                &[
                    A::P(self.ptr(&ids)),
                    A::I(n as i32),
                    A::I(experts.start as i32),
                    A::I(experts.end as i32),
                ],
            )?;
        }
        if Self::q_moe_wanted(w) {
            let (ip, wp, yp) = (self.ptr(&ids), self.ptr(&wts), self.ptr(&y.buf));
            self.q_moe_experts(xp, t, kk, d_model, n_ff, w, ip, wp, yp)?;
            return Ok(y);
        }
        let pairs = t * kk;
        let bp = |b: &CudaWeight| (A::P(self.ptr(&b.buf)), A::I(b.dtype.id() as i32));
        let (gb, gbt) = bp(&w.gate_bias);
        let (ub, ubt) = bp(&w.up_bias);
        let (db, dbt) = bp(&w.down_bias);
        let all_mxfp4 = [&w.gate, &w.up, &w.down]
            .iter()
            .all(|m| m.dtype == GgmlType::MXFP4);
        // Blackwell: the FP4 tensor-core experts, when selected and self-checked (see `fp4`).
        // (Not for a partial expert range: its grouping and combine kernels do not skip picks.)
        if all_mxfp4 && !partial && fp4::run::moe_hook(self, x, w, &ids, &wts, kk, e, n_ff, &y)? {
            return Ok(y);
        }
        // Many rows: grouped tensor-core GEMMs (prefill.rs), unless the FP4 path took it.
        let yp = self.ptr(&y.buf);
        if let Some(r) = self.moe_tc(xp, t, d_model, n_ff, w, n_loc, kk, &ids, &wts, yp, partial) {
            r?;
            return Ok(y);
        }
        if let Some(p) = &mma_planes {
            let (ip, wp) = (self.ptr(&ids), self.ptr(&wts));
            self.mma_moe_experts(p, t, kk, d_model, n_ff, w, ip, wp, yp)?;
            return Ok(y);
        }
        let smem = d_model + d_model / 8;
        let smem_down = kk * n_ff + kk * n_ff / 8;
        let fits = smem <= 48 * 1024 && smem_down <= 48 * 1024;
        let int8 = self.int8_activations;
        if all_mxfp4 && d_model.is_multiple_of(32) && n_ff.is_multiple_of(32) && (!int8 || fits) {
            // The MXFP4 kernels take the same arguments in both activation modes: f32 activations
            // (default), or int8 activations staged in shared memory for dp4a.
            let h = self.scratch(pairs * n_ff * 4)?;
            let gate_up_args = [
                A::P(xp),
                A::I(d_model as i32),
                A::P(self.ptr(&w.gate.buf)),
                A::L(w.gate.nb),
                A::P(self.ptr(&w.up.buf)),
                A::L(w.up.nb),
                gb,
                gbt,
                ub,
                ubt,
                A::P(self.ptr(&ids)),
                A::I(kk as i32),
                A::I(n_ff as i32),
                A::P(h.ptr),
            ];
            let down_args = [
                A::P(h.ptr),
                A::I(n_ff as i32),
                A::P(self.ptr(&w.down.buf)),
                A::L(w.down.nb),
                db,
                dbt,
                A::P(self.ptr(&ids)),
                A::P(self.ptr(&wts)),
                A::I(kk as i32),
                A::I(d_model as i32),
                A::P(self.ptr(&y.buf)),
            ];
            if int8 {
                let gate_up_grid = (n_ff.div_ceil(8) as u32, pairs as u32, 1);
                self.launch_smem(
                    "moe_gate_up_mxfp4",
                    gate_up_grid,
                    256,
                    smem as u32,
                    &gate_up_args,
                )?;
                let grid = (d_model.div_ceil(8) as u32, t as u32, 1);
                self.launch_smem("moe_down_mxfp4", grid, 256, smem_down as u32, &down_args)?;
            } else {
                let (rg, rd) = self.moe_rows;
                let gu = match rg {
                    1 => "moe_gate_up_mxfp4_r1",
                    2 => "moe_gate_up_mxfp4_r2",
                    _ => "moe_gate_up_mxfp4_r4",
                };
                let grid = (n_ff.div_ceil(8 * rg) as u32, pairs as u32, 1);
                self.launch(gu, grid, 256, &gate_up_args)?;
                // One warp per (rows, slot) when k divides 8: k times the warps in flight.
                if 8 % kk == 0 {
                    let kern = match rd {
                        1 => "moe_down_mxfp4_r1",
                        2 => "moe_down_mxfp4_r2",
                        _ => "moe_down_mxfp4_r4",
                    };
                    let grid = (d_model.div_ceil(rd * 8 / kk) as u32, t as u32, 1);
                    self.launch(kern, grid, 256, &down_args)?;
                } else {
                    let grid = (d_model.div_ceil(8) as u32, t as u32, 1);
                    self.launch("moe_down_mxfp4_f", grid, 256, &down_args)?;
                }
            }
        } else {
            let h = self.scratch(pairs * n_ff * 4)?;
            self.launch(
                "moe_gate_up_any",
                (n_ff.div_ceil(8) as u32, pairs as u32, 1),
                256,
                &[
                    A::P(xp),
                    A::I(d_model as i32),
                    A::P(self.ptr(&w.gate.buf)),
                    A::I(w.gate.dtype.id() as i32),
                    A::L(w.gate.nb),
                    A::P(self.ptr(&w.up.buf)),
                    A::I(w.up.dtype.id() as i32),
                    A::L(w.up.nb),
                    gb,
                    gbt,
                    ub,
                    ubt,
                    A::P(self.ptr(&ids)),
                    A::I(kk as i32),
                    A::I(n_ff as i32),
                    A::P(self.ptr(&h)),
                ],
            )?;
            self.launch(
                "moe_down_any",
                (d_model.div_ceil(8) as u32, t as u32, 1),
                256,
                &[
                    A::P(self.ptr(&h)),
                    A::I(n_ff as i32),
                    A::P(self.ptr(&w.down.buf)),
                    A::I(w.down.dtype.id() as i32),
                    A::L(w.down.nb),
                    db,
                    dbt,
                    A::P(self.ptr(&ids)),
                    A::P(self.ptr(&wts)),
                    A::I(kk as i32),
                    A::I(d_model as i32),
                    A::P(self.ptr(&y.buf)),
                ],
            )?;
        }
        Ok(y)
    }
}

impl Backend for CudaBackend {
    type Tensor = CudaTensor;
    type Weight = CudaWeight;
    type KvCache = CudaKvCache;

    fn name(&self) -> String {
        format!("{}, {}", self.name, self.fp4_status())
    }

    fn upload(&self, w: &WeightData) -> Result<CudaWeight> {
        if !matches!(
            w.dtype,
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 | GgmlType::Q8_0 | GgmlType::MXFP4
        ) && !quants::supported(w.dtype)
        {
            return Err(BackendError::UnsupportedType {
                op: "upload",
                name: w.name.clone(),
                dtype: w.dtype,
            });
        }
        let numel = w.numel();
        let bs = w.dtype.block_size();
        if w.shape.is_empty() || !w.shape[0].is_multiple_of(bs) {
            return Err(shape_err(
                "upload",
                format!(
                    "{}: shape {:?} is not a whole number of {} blocks",
                    w.name,
                    w.shape,
                    w.dtype.name()
                ),
            ));
        }
        let expect = w.dtype.bytes_for(numel as u64);
        if expect != Some(w.bytes.len() as u64) {
            return Err(shape_err(
                "upload",
                format!(
                    "{}: {} bytes for shape {:?} of type {}, expected {:?}",
                    w.name,
                    w.bytes.len(),
                    w.shape,
                    w.dtype.name(),
                    expect
                ),
            ));
        }
        let host = relayout(w.dtype, &w.bytes);
        let buf = if host.is_empty() {
            self.stream.alloc_zeros::<u8>(1).map_err(dev_err)?
        } else {
            self.stream.clone_htod(&host).map_err(dev_err)?
        };
        Ok(CudaWeight {
            _mem: MemGuard::new(&self.mem, host.len().max(1) as u64),
            buf,
            dtype: w.dtype,
            shape: w.shape.clone(),
            nb: (numel / bs) as i64,
            name: w.name.clone(),
        })
    }

    fn from_host(&self, data: &[f32], rows: usize, cols: usize) -> Result<CudaTensor> {
        if data.len() != rows * cols {
            return Err(shape_err(
                "from_host",
                format!("{} values for a [{rows}, {cols}] matrix", data.len()),
            ));
        }
        let t = self.tensor(rows, cols)?;
        self.htod(&t.buf, data)?;
        Ok(t)
    }

    fn to_host(&self, t: &CudaTensor) -> Result<(Vec<f32>, usize, usize)> {
        Ok((self.dtoh(&t.buf, t.rows * t.cols)?, t.rows, t.cols))
    }

    fn embed(&self, table: &CudaWeight, ids: &[u32]) -> Result<CudaTensor> {
        let (d, vocab) = matrix_dims(table);
        if let Some(bad) = ids.iter().find(|&&i| i as usize >= vocab) {
            return Err(shape_err(
                "embed",
                format!(
                    "token id {bad} is outside the vocabulary of {vocab} ({})",
                    table.name
                ),
            ));
        }
        let out = self.tensor(ids.len(), d)?;
        if ids.is_empty() || d == 0 {
            return Ok(out);
        }
        // A recorded step reads its token from the step slot (step_graph.rs), whose first
        // word is the token id.
        let (_idb, idp) = if self.recording() && ids.len() == 1 {
            (None, self.step_slot()?)
        } else {
            let idb = self.scratch(ids.len() * 4)?;
            self.htod(&idb, ids)?;
            let p = idb.ptr;
            (Some(idb), p)
        };
        if quants::supported(table.dtype) {
            self.q_embed(table, idp, ids.len(), vocab, self.ptr(&out.buf), d)?;
            return Ok(out);
        }
        self.launch(
            "embed",
            (d.div_ceil(256) as u32, ids.len() as u32, 1),
            256,
            &[
                A::P(self.ptr(&table.buf)),
                A::I(table.dtype.id() as i32),
                A::L(table.nb),
                A::P(idp),
                A::I(vocab.min(i32::MAX as usize) as i32),
                A::P(self.ptr(&out.buf)),
                A::I(d as i32),
            ],
        )?;
        Ok(out)
    }

    fn rms_norm(&self, x: &CudaTensor, weight: &CudaWeight, eps: f32) -> Result<CudaTensor> {
        if weight.numel() != x.cols || weight.dtype.is_quantized() {
            return Err(shape_err(
                "rms_norm",
                format!(
                    "x has {} columns, weight {} is {:?} {}",
                    x.cols,
                    weight.name,
                    weight.shape,
                    weight.dtype.name()
                ),
            ));
        }
        let out = self.tensor(x.rows, x.cols)?;
        if x.rows == 0 {
            return Ok(out);
        }
        if self.norm_rows(x, None, weight, eps, &out)? {
            return Ok(out);
        }
        self.launch(
            "rms_norm",
            (x.rows as u32, 1, 1),
            1024,
            &[
                A::P(self.ptr(&x.buf)),
                A::P(self.ptr(&weight.buf)),
                A::I(weight.dtype.id() as i32),
                A::P(self.ptr(&out.buf)),
                A::I(x.cols as i32),
                A::F(eps),
            ],
        )?;
        Ok(out)
    }

    fn linear(
        &self,
        x: &CudaTensor,
        w: &CudaWeight,
        bias: Option<&CudaWeight>,
    ) -> Result<CudaTensor> {
        let (k, n) = check_linear(x, w, bias)?;
        let y = self.tensor(x.rows, n)?;
        self.linear_into(self.ptr(&x.buf), x.rows, k, w, bias, self.ptr(&y.buf), n)?;
        Ok(y)
    }

    fn linear_many(
        &self,
        x: &CudaTensor,
        ws: &[(&CudaWeight, Option<&CudaWeight>)],
    ) -> Result<Vec<CudaTensor>> {
        let dims = ws
            .iter()
            .map(|(w, b)| check_linear(x, w, *b))
            .collect::<Result<Vec<_>>>()?;
        let t = x.rows;
        let fused = (1..=3).contains(&ws.len())
            && (1..=MAX_GEMV_ROWS).contains(&t)
            && !self.int8_activations
            && matches!(ws[0].0.dtype, GgmlType::Q8_0 | GgmlType::MXFP4)
            && ws.iter().all(|(w, _)| w.dtype == ws[0].0.dtype)
            && dims.iter().all(|&(_, n)| n > 0);
        if !fused {
            if let Some(r) = self.linear_many_wg(x, ws, &dims) {
                return r;
            }
            return ws.iter().map(|(w, b)| self.linear(x, w, *b)).collect();
        }
        let k = dims[0].0;
        let outs = dims
            .iter()
            .map(|&(_, n)| self.tensor(t, n))
            .collect::<Result<Vec<_>>>()?;
        if dims
            .iter()
            .all(|&(_, n)| self.mma_gemv_fits(ws[0].0.dtype, t, k, n))
        {
            let mats = ws
                .iter()
                .zip(&dims)
                .zip(&outs)
                .map(|(((w, b), &(_, n)), o)| {
                    let (bp, bt) = match b {
                        Some(b) => (self.ptr(&b.buf), b.dtype.id() as i32),
                        None => (0, 0),
                    };
                    (*w, bp, bt, self.ptr(&o.buf), n)
                })
                .collect::<Vec<_>>();
            self.mma_gemv(self.ptr(&x.buf), t, k, &mats)?;
            return Ok(outs);
        }
        let mut args = vec![A::P(self.ptr(&x.buf)), A::I(t as i32), A::I(k as i32)];
        let mut blocks = 0usize;
        for i in 0..3 {
            // Unused slots repeat the last matrix with zero blocks (never reached).
            let j = i.min(ws.len() - 1);
            let (w, b) = ws[j];
            let n = dims[j].1;
            let nblk = if i < ws.len() { n.div_ceil(8) } else { 0 };
            blocks += nblk;
            let (bp, bt) = match b {
                Some(b) => (self.ptr(&b.buf), b.dtype.id() as i32),
                None => (0, 0),
            };
            args.extend([
                A::P(self.ptr(&w.buf)),
                A::L(w.nb),
                A::P(bp),
                A::I(bt),
                A::P(self.ptr(&outs[j].buf)),
                A::I(n as i32),
                A::I(nblk as i32),
            ]);
        }
        let kern = match (ws[0].0.dtype == GgmlType::Q8_0, t == 1) {
            (true, true) => "gemvf3_q8_0_r1",
            (true, false) => "gemvf3_q8_0",
            (false, true) => "gemvf3_mxfp4_r1",
            (false, false) => "gemvf3_mxfp4",
        };
        self.launch(kern, (blocks as u32, 1, 1), 256, &args)?;
        Ok(outs)
    }

    fn add_assign(&self, x: &mut CudaTensor, y: &CudaTensor) -> Result<()> {
        if x.rows != y.rows || x.cols != y.cols {
            return Err(shape_err(
                "add_assign",
                format!("[{}, {}] += [{}, {}]", x.rows, x.cols, y.rows, y.cols),
            ));
        }
        let n = x.rows * x.cols;
        if n == 0 {
            return Ok(());
        }
        self.launch(
            "add_assign",
            (n.div_ceil(256) as u32, 1, 1),
            256,
            &[
                A::P(self.ptr(&x.buf)),
                A::P(self.ptr(&y.buf)),
                A::L(n as i64),
            ],
        )
    }

    fn rope(&self, x: &mut CudaTensor, n_heads: usize, pos0: usize, rope: &Rope) -> Result<()> {
        self.refuse_while_recording("rope with the position as an argument")?;
        let hd = rope.head_dim;
        if x.cols != n_heads * hd
            || !hd.is_multiple_of(2)
            || rope.inv_freq.len() != hd / 2
            || hd > 2048
        {
            return Err(shape_err(
                "rope",
                format!("x has {} columns for {n_heads} heads of {hd}", x.cols),
            ));
        }
        if x.rows == 0 || n_heads == 0 {
            return Ok(());
        }
        let f = self.rope_freqs(rope)?;
        self.launch(
            "rope",
            (x.rows as u32, n_heads as u32, 1),
            (hd / 2).div_ceil(32) as u32 * 32,
            &[
                A::P(self.ptr(&x.buf)),
                A::I(n_heads as i32),
                A::I(hd as i32),
                A::I(pos0 as i32),
                A::P(f),
                A::F(rope.attention_factor),
            ],
        )
    }

    fn add_rms_norm(
        &self,
        x: &mut CudaTensor,
        y: &CudaTensor,
        weight: &CudaWeight,
        eps: f32,
    ) -> Result<CudaTensor> {
        self.add_rms_norm_impl(x, y, weight, eps)
    }

    fn rope_qk(
        &self,
        q: &mut CudaTensor,
        k: &mut CudaTensor,
        n_heads: usize,
        n_kv_heads: usize,
        pos0: usize,
        rope: &Rope,
    ) -> Result<()> {
        self.rope_qk_impl(q, k, n_heads, n_kv_heads, pos0, rope)
    }

    fn qkv_rope(
        &self,
        x: &CudaTensor,
        q: (&CudaWeight, Option<&CudaWeight>),
        k: (&CudaWeight, Option<&CudaWeight>),
        v: (&CudaWeight, Option<&CudaWeight>),
        n_heads: usize,
        n_kv_heads: usize,
        pos0: usize,
        rope: &Rope,
    ) -> Result<[CudaTensor; 3]> {
        self.qkv_rope_impl(x, q, k, v, n_heads, n_kv_heads, pos0, rope)
    }

    fn new_kv_cache(&self, cfg: &KvCacheConfig) -> Result<CudaKvCache> {
        if cfg.window == Some(0)
            || cfg.n_kv_heads == 0
            || cfg.head_dim == 0
            || cfg.max_positions == 0
        {
            return Err(shape_err(
                "new_kv_cache",
                format!("empty cache configuration {cfg:?}"),
            ));
        }
        let cap = match cfg.window {
            Some(w) => w.min(cfg.max_positions),
            None => cfg.max_positions,
        }
        .max(1);
        let n = cap * cfg.n_kv_heads * cfg.head_dim;
        let k = self.stream.alloc_zeros::<u16>(n.max(1)).map_err(dev_err)?;
        let v = self.stream.alloc_zeros::<u16>(n.max(1)).map_err(dev_err)?;
        Ok(CudaKvCache {
            k,
            v,
            cap,
            cfg: *cfg,
            len: 0,
            _mem: MemGuard::new(&self.mem, (n.max(1) * 4) as u64),
        })
    }

    fn attention(
        &self,
        q: &CudaTensor,
        k: &CudaTensor,
        v: &CudaTensor,
        cache: &mut CudaKvCache,
        pos0: usize,
        sinks: &CudaWeight,
        cfg: &AttentionConfig,
    ) -> Result<CudaTensor> {
        let t = q.rows;
        let (h, kvh, hd) = (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim);
        let bad = |d: String| Err(shape_err("attention", d));
        if cfg.window == Some(0)
            || kvh == 0
            || !h.is_multiple_of(kvh)
            || !hd.is_multiple_of(32)
            || hd == 0
            || hd > 256
        {
            return bad(format!(
                "{h} heads, {kvh} kv heads of {hd} (need head_dim a multiple of 32 up to 256)"
            ));
        }
        if q.cols != h * hd
            || k.cols != kvh * hd
            || v.cols != kvh * hd
            || k.rows != t
            || v.rows != t
        {
            return bad(format!(
                "q [{}, {}], k [{}, {}], v [{}, {}] for {h} heads / {kvh} kv heads of {hd}",
                q.rows, q.cols, k.rows, k.cols, v.rows, v.cols
            ));
        }
        if cache.cfg.n_kv_heads != kvh || cache.cfg.head_dim != hd || cache.cfg.window != cfg.window
        {
            return bad(format!("cache {:?} does not match {:?}", cache.cfg, cfg));
        }
        if sinks.numel() != h || sinks.dtype.is_quantized() {
            return bad(format!(
                "sinks {} is {:?}, need {h} values",
                sinks.name, sinks.shape
            ));
        }
        if cache.len != pos0 {
            return bad(format!(
                "cache holds {} positions but pos0 is {pos0}",
                cache.len
            ));
        }
        if pos0 + t > cache.cfg.max_positions {
            return Err(BackendError::ContextFull {
                pos: cache.cfg.max_positions.max(pos0),
                capacity: cache.cfg.max_positions,
            });
        }
        let out = self.tensor(t, h * hd)?;
        if t == 0 {
            return Ok(out);
        }
        // Many rows: flash attention on tensor cores (prefill.rs); it also fills the ring.
        if let Some(r) = self.attention_tc(q, k, v, cache, pos0, sinks, cfg, &out) {
            r?;
            return Ok(out);
        }
        let window = cfg.window.unwrap_or(0);
        let max_keys = match cfg.window {
            Some(w) => w.min(pos0 + t),
            None => pos0 + t,
        }
        .max(1);
        let (kc, vc) = (self.ptr(&cache.k), self.ptr(&cache.v));
        let sink_args = [A::P(self.ptr(&sinks.buf)), A::I(sinks.dtype.id() as i32)];
        if self.decode_tc && !self.grouped_decode && t == 1 && h / kvh <= 8 {
            return self.attention_dtc(q, k, v, cache, pos0, cfg, sink_args, out);
        }
        // The other kernels take the position as an argument.
        self.refuse_while_recording("this attention kernel")?;
        if self.grouped_decode && t == 1 && h / kvh <= 8 {
            return self.attention_decode(q, k, v, cache, pos0, cfg, max_keys, sink_args, out);
        }
        // Enough blocks to keep every SM busy with several (~16 per SM of an H100), chunks of
        // at least 128 keys (a chunk's warps then have one or more 32-key steps each).
        let blocks = t * h;
        let mut splits = 1usize;
        while blocks * splits < 2048 && max_keys.div_ceil(splits * 2) >= 128 {
            splits *= 2;
        }
        let chunk = max_keys.div_ceil(splits);
        // Decode (one row): the kernel stores the new row in the ring itself.
        let append = t == 1;
        let part = self.scratch(if splits > 1 {
            t * h * splits * (hd + 2) * 4
        } else {
            4
        })?;
        const PARTIAL: [&str; 8] = [
            "attn_partial_d1",
            "attn_partial_d2",
            "attn_partial_d3",
            "attn_partial_d4",
            "attn_partial_d5",
            "attn_partial_d6",
            "attn_partial_d7",
            "attn_partial_d8",
        ];
        self.launch(
            PARTIAL[hd / 32 - 1],
            (t as u32, h as u32, splits as u32),
            128,
            &[
                A::P(self.ptr(&q.buf)),
                A::P(self.ptr(&k.buf)),
                A::P(self.ptr(&v.buf)),
                A::P(kc),
                A::P(vc),
                A::I(t as i32),
                A::I(pos0 as i32),
                A::I(h as i32),
                A::I(kvh as i32),
                A::I(hd as i32),
                A::I(cache.cap as i32),
                A::I(window as i32),
                A::F(cfg.scale),
                A::I(chunk as i32),
                A::P(self.ptr(&part)),
                sink_args[0],
                sink_args[1],
                A::P(self.ptr(&out.buf)),
                A::I(append as i32),
            ],
        )?;
        if splits > 1 {
            self.launch(
                "attn_combine",
                (t as u32, h as u32, 1),
                hd as u32,
                &[
                    A::P(self.ptr(&part)),
                    A::I(h as i32),
                    A::I(hd as i32),
                    A::I(splits as i32),
                    sink_args[0],
                    sink_args[1],
                    A::P(self.ptr(&out.buf)),
                ],
            )?;
        }
        if !append {
            // Only the last `cap` rows survive in a ring.
            let first = t.saturating_sub(cache.cap);
            self.launch(
                "kv_append",
                ((t - first) as u32, kvh as u32, 1),
                hd as u32,
                &[
                    A::P(self.ptr(&k.buf)),
                    A::P(self.ptr(&v.buf)),
                    A::P(kc),
                    A::P(vc),
                    A::I(first as i32),
                    A::I(pos0 as i32),
                    A::I(kvh as i32),
                    A::I(hd as i32),
                    A::I(cache.cap as i32),
                ],
            )?;
        }
        cache.len = pos0 + t;
        Ok(out)
    }

    fn moe(
        &self,
        x: &CudaTensor,
        w: &MoeWeights<CudaWeight>,
        cfg: &MoeConfig,
    ) -> Result<CudaTensor> {
        self.moe_range(x, w, cfg, 0..cfg.n_experts, None)
    }

    fn moe_local(
        &self,
        x: &CudaTensor,
        w: &MoeWeights<CudaWeight>,
        cfg: &MoeConfig,
        experts: std::ops::Range<usize>,
    ) -> Result<CudaTensor> {
        self.moe_range(x, w, cfg, experts, None)
    }

    fn add_rms_norm_moe(
        &self,
        x: &mut CudaTensor,
        y: &CudaTensor,
        norm: &CudaWeight,
        eps: f32,
        w: &MoeWeights<CudaWeight>,
        cfg: &MoeConfig,
    ) -> Result<CudaTensor> {
        if self.router_add_fits(x, y, norm, w, cfg) {
            let pre = PreNorm {
                y,
                weight: norm,
                eps,
            };
            return self.moe_range(x, w, cfg, 0..cfg.n_experts, Some(pre));
        }
        let xm = self.add_rms_norm_impl(x, y, norm, eps)?;
        self.moe(&xm, w, cfg)
    }

    fn argmax(&self, x: &CudaTensor) -> Result<Vec<u32>> {
        if x.rows == 0 {
            return Ok(Vec::new());
        }
        if x.cols == 0 {
            return Err(shape_err("argmax", "rows of zero columns".into()));
        }
        let out = self.scratch(x.rows * 4)?;
        let g = x.cols.div_ceil(4096).clamp(1, 128);
        let pv = self.scratch(x.rows * g * 4)?;
        let pi = self.scratch(x.rows * g * 4)?;
        let tickets = self.tickets(TICKETS_ARGMAX, x.rows)?;
        self.launch(
            "argmax_rows",
            (g as u32, x.rows as u32, 1),
            256,
            &[
                A::P(self.ptr(&x.buf)),
                A::I(x.cols as i32),
                A::P(pv.ptr),
                A::P(pi.ptr),
                A::P(tickets),
                A::P(out.ptr),
            ],
        )?;
        self.dtoh::<u32>(&out, x.rows)
    }

    /// Two launches over the last row (block maxima, then block sums of the weights with the
    /// draw in the last block: `sample_max`, `sample_draw`); one id comes back instead of the
    /// row.
    fn sample_softmax(&self, logits: &CudaTensor, draw: &SoftmaxDraw) -> Result<Option<u32>> {
        let Some(p) = self.sample_row_max(logits, draw, 0)? else {
            return Ok(None);
        };
        let part_s = self.scratch(p.blocks * 8)?;
        let out = self.scratch(4)?;
        // The argmax tickets: both kernels leave them zero, and one stream orders them.
        let tickets = self.tickets(TICKETS_ARGMAX, 1)?;
        self.launch(
            "sample_draw",
            (p.blocks as u32, 1, 1),
            256,
            &[
                &p.args[..],
                &[
                    A::F(draw.inv_temperature),
                    A::F(draw.min_weight),
                    A::L(draw.u.to_bits() as i64),
                    A::P(p.part_m.ptr),
                    A::P(part_s.ptr),
                    A::P(tickets),
                    A::P(out.ptr),
                ],
            ]
            .concat(),
        )?;
        // No finite logit: the host sampler reports it (the caller falls back to it).
        Ok(Some(self.dtoh::<u32>(&out, 1)?[0]).filter(|&t| t != u32::MAX))
    }

    /// `sample_max`, with a top-k four passes of `sample_kth` (an 8-bit radix select of the
    /// k-th largest logit), then `sample_gather` appends the candidates; their count and the
    /// rest's weight come back first, then the (id, logit) pairs (8 bytes a candidate).
    fn softmax_candidates(
        &self,
        logits: &CudaTensor,
        draw: &SoftmaxDraw,
        floor: f32,
        top_k: usize,
        cap: usize,
    ) -> Result<Option<SoftmaxCandidates>> {
        let cap = cap.min(1 << 20);
        let head = self.scratch(16)?;
        let Some(p) = self.sample_row_max(logits, draw, head.ptr)? else {
            return Ok(None);
        };
        let pairs = self.scratch(cap.max(1) * 8)?;
        // The select's state: the key's digits so far, how many are still wanted, the digit
        // histogram and the ticket (sample_kth).
        let sel = self.scratch(259 * 4)?;
        let kth = if top_k > 0 && top_k < logits.cols {
            let mut init = vec![0u32; 259];
            init[1] = top_k as u32;
            self.htod(&sel, &init)?;
            for shift in [24, 16, 8, 0] {
                self.launch(
                    "sample_kth",
                    (p.blocks as u32, 1, 1),
                    256,
                    &[&p.args[..], &[A::P(sel.ptr), A::I(shift)]].concat(),
                )?;
            }
            sel.ptr
        } else {
            0
        };
        self.launch(
            "sample_gather",
            (p.blocks as u32, 1, 1),
            256,
            &[
                &p.args[..],
                &[
                    A::F(draw.inv_temperature),
                    A::F(floor),
                    A::P(p.part_m.ptr),
                    A::P(head.ptr),
                    A::P(pairs.ptr),
                    A::I(cap as i32),
                    A::P(kth),
                ],
            ]
            .concat(),
        )?;
        let h = self.dtoh::<u32>(&head, 4)?;
        let count = h[0] as usize;
        if count > cap {
            return Ok(None);
        }
        let rest_weight = f64::from_bits(u64::from(h[2]) | (u64::from(h[3]) << 32));
        let pairs = self.dtoh::<u32>(&pairs, 2 * count)?;
        Ok(Some(SoftmaxCandidates {
            tokens: pairs
                .chunks_exact(2)
                .map(|p| (p[0], f32::from_bits(p[1])))
                .collect(),
            rest_weight,
        }))
    }

    fn last_row(&self, x: &CudaTensor) -> Result<CudaTensor> {
        if x.rows == 0 {
            return Err(shape_err("last_row", "empty matrix".into()));
        }
        let out = self.tensor(1, x.cols)?;
        let start = ((x.rows - 1) * x.cols * 4) as u64;
        // SAFETY: source row and destination lie inside their live allocations.
        unsafe {
            cudarc::driver::result::memcpy_dtod_async(
                out.buf.ptr,
                x.buf.ptr + start,
                x.cols * 4,
                self.stream.cu_stream(),
            )
        }
        .map_err(dev_err)?;
        Ok(out)
    }

    fn step_replay(
        &self,
        caches: &mut [CudaKvCache],
        token: u32,
        pos: usize,
    ) -> Result<Option<CudaTensor>> {
        self.step_replay_impl(caches, token, pos)
    }

    fn step_record_begin(&self, caches: &[CudaKvCache], token: u32, pos: usize) -> Result<bool> {
        self.step_record_begin_impl(caches, token, pos)
    }

    fn step_record_end(
        &self,
        caches: &mut [CudaKvCache],
        pos: usize,
        logits: Option<CudaTensor>,
    ) -> Result<Option<CudaTensor>> {
        self.step_record_end_impl(caches, pos, logits)
    }

    fn peak_memory_bytes(&self) -> Option<u64> {
        Some(self.mem.peak.load(Ordering::Relaxed))
    }

    fn make_current(&self) -> Result<()> {
        // Some calls (raw async copies) act on the thread's current context: one thread may
        // drive several GPUs (gptoss-parallel), so bind ours first.
        self.ctx.bind_to_thread().map_err(dev_err)
    }
}

impl Drop for CudaBackend {
    fn drop(&mut self) {
        // Let queued work finish before buffers the kernels still read are freed.
        let _ = self.stream.synchronize();
        let _ = &self.ctx;
    }
}
