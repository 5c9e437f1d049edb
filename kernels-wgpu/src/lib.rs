//! The portable GPU backend of gptoss-rs: the [`Backend`] trait on wgpu (Vulkan, Metal, DX12).
//!
//! Weights stay in their file formats on the device (MXFP4 and Q8_0 blocks re-laid out as the
//! same bits, BF16/F16 as packed words) and are decoded inside the WGSL kernels. Tensors larger
//! than the adapter's binding limit are split by row ranges. Operations record into one pending
//! command encoder; work is submitted when a result is read back ([`Backend::to_host`],
//! [`Backend::argmax`]) or when the parameter arena fills.
//!
//! Adapter choice: the high-performance adapter by default; `GPTOSS_WGPU_BACKEND`
//! (`vulkan`, `metal`, `dx12`, comma-separated) restricts the APIs and `GPTOSS_WGPU_ADAPTER`
//! (or `WGPU_ADAPTER_NAME`) picks the first adapter whose name contains the given text.
//!
//! Features: `shader-f16` (an f16 KV cache) and subgroups (shuffle reductions; lane groups of
//! at most the smallest subgroup size) are used where the adapter offers them;
//! `GPTOSS_WGPU_NO_F16=1` / `GPTOSS_WGPU_NO_SUBGROUPS=1` (or [`WgpuOptions`]) turn them off, and
//! the conformance tests run both ways. MXFP4 and Q8_0 weights go through the lane-group
//! kernels (a group of lanes per row, one 32-bit word per lane and step).
//!
//! Tuning and diagnosis: `GPTOSS_WGPU_FLUSH` (dispatches per submission, default 64; 0: submit
//! only on read-back), `GPTOSS_WGPU_BG_CACHE=0` (a fresh bind group per dispatch),
//! `GPTOSS_WGPU_ROWS` / `GPTOSS_WGPU_GROUPS` (rows per lane group, lane groups per workgroup),
//! `GPTOSS_WGPU_LANES=0` (the older row-per-workgroup kernels), `GPTOSS_WGPU_WG` (workgroup
//! size of the other kernels), `GPTOSS_WGPU_TRUSTED` (see `ctx.rs`), `GPTOSS_WGPU_PROFILE=1`
//! (per-kernel device time from timestamp queries) and `GPTOSS_WGPU_HOST_TIMING=1` (host time
//! recording and submitting), both printed to stderr when the backend is dropped.
#![warn(missing_docs)]

mod ctx;
mod weight;

use std::sync::{Arc, Mutex};

use gptoss_backend::{
    AttentionConfig, Backend, BackendError, KvCacheConfig, MoeConfig, MoeWeights, Result, Rope,
    WeightData,
};

use ctx::{Ctx, GpuBuf, Pick, dev_err};
pub use weight::WgpuWeight;
use weight::{Fmt, Part};

/// How to open the device. [`WgpuOptions::from_env`] reads the environment.
#[derive(Debug, Clone, Default)]
pub struct WgpuOptions {
    /// Graphics APIs to consider, comma-separated (`vulkan`, `metal`, `dx12`); `None`: the
    /// primary ones of the platform (or `WGPU_BACKEND`).
    pub backends: Option<String>,
    /// Use the first adapter whose name contains this text (case-insensitive); `None`: the
    /// high-performance adapter.
    pub adapter: Option<String>,
    /// Split weights into buffers of at most this many bytes even where the adapter allows
    /// more (tests use it to exercise split weights at small shapes).
    pub max_binding_bytes: Option<u64>,
    /// Fill every fresh output buffer with NaN before a kernel writes it, so that an element a
    /// kernel forgets to write shows up in a comparison (conformance tests).
    pub poison_outputs: bool,
    /// Leave `shader-f16` unused (f32 KV cache) even where the adapter offers it.
    pub no_f16: bool,
    /// Leave subgroup operations unused (workgroup-memory reductions) even where the adapter
    /// offers them.
    pub no_subgroups: bool,
}

impl WgpuOptions {
    /// Options from `GPTOSS_WGPU_BACKEND`, `GPTOSS_WGPU_ADAPTER` / `WGPU_ADAPTER_NAME` and
    /// `GPTOSS_WGPU_MAX_BINDING` (bytes); `GPTOSS_WGPU_NO_F16=1` and `GPTOSS_WGPU_NO_SUBGROUPS=1`
    /// turn those features off.
    pub fn from_env() -> WgpuOptions {
        let var = |k: &str| std::env::var(k).ok().filter(|s| !s.trim().is_empty());
        let on = |k: &str| var(k).is_some_and(|v| !matches!(v.trim(), "0" | "false" | "no"));
        WgpuOptions {
            backends: var("GPTOSS_WGPU_BACKEND"),
            adapter: var("GPTOSS_WGPU_ADAPTER").or_else(|| var("WGPU_ADAPTER_NAME")),
            max_binding_bytes: var("GPTOSS_WGPU_MAX_BINDING").and_then(|s| s.trim().parse().ok()),
            poison_outputs: false,
            no_f16: on("GPTOSS_WGPU_NO_F16"),
            no_subgroups: on("GPTOSS_WGPU_NO_SUBGROUPS"),
        }
    }
}

/// The wgpu backend: one adapter, its device and queue.
pub struct WgpuBackend {
    ctx: Ctx,
    poison: bool,
    rope_cache: Mutex<Option<(Vec<u32>, Arc<GpuBuf>)>>,
}

impl std::fmt::Debug for WgpuBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WgpuBackend")
            .field("adapter", &self.adapter_info())
            .finish()
    }
}

/// A device-resident f32 matrix `[rows, cols]`.
pub struct WgpuTensor {
    buf: Arc<GpuBuf>,
    rows: usize,
    cols: usize,
}

impl WgpuTensor {
    /// Rows.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Columns.
    pub fn cols(&self) -> usize {
        self.cols
    }
}

impl std::fmt::Debug for WgpuTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WgpuTensor[{}, {}]", self.rows, self.cols)
    }
}

/// One layer's KV cache in device memory (rows of `n_kv_heads * head_dim` per position, f16
/// where the adapter has `shader-f16` and the row width is even, else f32).
/// A full layer's cache grows as positions arrive (doubling, up to `max_positions`); a
/// sliding-window layer's is a ring of `window` slots.
pub struct WgpuKvCache {
    cfg: KvCacheConfig,
    k: Arc<GpuBuf>,
    v: Arc<GpuBuf>,
    slots: usize,
    ring: bool,
    len: usize,
    /// Keys and values stored as f16 (the adapter has `shader-f16`): half the bytes attention
    /// reads; else f32.
    half: bool,
}

impl WgpuKvCache {
    /// Positions stored so far.
    pub fn len(&self) -> usize {
        self.len
    }
    /// True before the first append.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl std::fmt::Debug for WgpuKvCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WgpuKvCache")
            .field("cfg", &self.cfg)
            .field("slots", &self.slots)
            .field("len", &self.len)
            .finish()
    }
}

fn shape(op: &'static str, detail: String) -> BackendError {
    BackendError::Shape { op, detail }
}

fn u32_of(op: &'static str, what: &str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| {
        shape(
            op,
            format!("{what} = {v} does not fit the kernels' 32-bit indices"),
        )
    })
}

const TOKENS_PER_GEMV: usize = 8;
/// Largest head dimension the attention kernel holds (its workgroup array).
const MAX_HEAD_DIM: usize = 256;
/// Workgroups an attention call aims for (split-K over keys when rows x heads are fewer).
const ATTN_TARGET_GROUPS: usize = 2048;
/// Most experts the router kernel's bit set holds.
const MAX_EXPERTS: usize = 256;

impl WgpuBackend {
    /// Open the adapter chosen by the environment (see [`WgpuOptions::from_env`]).
    /// Without a usable adapter this is [`BackendError::Unavailable`], never a panic.
    pub fn new() -> Result<WgpuBackend> {
        WgpuBackend::with_options(&WgpuOptions::from_env())
    }

    /// Open an adapter with explicit options.
    pub fn with_options(opts: &WgpuOptions) -> Result<WgpuBackend> {
        let pick = Pick {
            backends: opts.backends.clone(),
            adapter: opts.adapter.clone(),
            max_binding: opts.max_binding_bytes,
            no_f16: opts.no_f16,
            no_subgroups: opts.no_subgroups,
        };
        // wgpu reports some driver failures by panicking; keep the promise of an error.
        let ctx = std::panic::catch_unwind(|| Ctx::new(&pick)).map_err(|p| {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            BackendError::Unavailable {
                backend: ctx::NAME.into(),
                reason: format!("wgpu failed while opening a device: {msg}"),
            }
        })??;
        Ok(WgpuBackend {
            ctx,
            poison: opts.poison_outputs,
            rope_cache: Mutex::new(None),
        })
    }

    /// One line about the adapter: name, API, type, driver, and what the kernels use.
    pub fn adapter_info(&self) -> String {
        let i = &self.ctx.info;
        let c = &self.ctx.caps;
        format!(
            "{} ({:?}, {:?}, driver '{} {}'); max binding {} MiB, workgroup {}, tiled matmul {}, shader-f16 {}, subgroups {} (lanes per row {})",
            i.name,
            i.backend,
            i.device_type,
            i.driver,
            i.driver_info,
            c.max_binding >> 20,
            c.wg,
            c.tiled,
            c.f16,
            c.subgroups,
            c.lanes
        )
    }

    /// Wait until all recorded work has finished (for timing).
    pub fn synchronize(&self) -> Result<()> {
        self.ctx.flush();
        self.ctx
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| dev_err(format!("waiting for the device: {e}")))?;
        self.ctx.check()
    }

    /// What every kernel starts with: the enable directives, the workgroup and lane-group
    /// sizes, and `lane_sum`/`lane_max` (over the LANES lanes of a lane group, by subgroup
    /// shuffles; without subgroups the kernels reduce through workgroup memory and never call
    /// them).
    fn header(&self) -> String {
        let c = &self.ctx.caps;
        let mut h = String::new();
        if c.f16 {
            h.push_str("enable f16;\n");
        }
        // Naga 30 takes subgroup built-ins without `enable subgroups;` (and rejects the
        // directive); the device feature is what allows them.
        h.push_str(&format!(
            "const WG: u32 = {}u;\nconst LANES: u32 = {}u;\nconst LWG: u32 = {}u;\nconst SG: bool = {};\n",
            c.wg, c.lanes, c.lane_wg, c.subgroups
        ));
        // LANES is at most the smallest subgroup size, so a lane group lies in one subgroup and
        // the xor shuffles stay inside it. Without subgroups the stubs are never called.
        if c.subgroups {
            h.push_str(
                "fn sg_xor_f(v: f32, o: u32) -> f32 { return subgroupShuffleXor(v, o); }\n\
                 fn sg_xor_u(v: u32, o: u32) -> u32 { return subgroupShuffleXor(v, o); }\n",
            );
        } else {
            h.push_str(
                "fn sg_xor_f(v: f32, o: u32) -> f32 { return v; }\n\
                 fn sg_xor_u(v: u32, o: u32) -> u32 { return v; }\n",
            );
        }
        h.push_str(
            "fn lane_sum(v: f32) -> f32 {\n    var s = v;\n    for (var o = LANES / 2u; o > 0u; o >>= 1u) { s += sg_xor_f(s, o); }\n    return s;\n}\n\
             fn lane_max(v: f32) -> f32 {\n    var s = v;\n    for (var o = LANES / 2u; o > 0u; o >>= 1u) { s = max(s, sg_xor_f(s, o)); }\n    return s;\n}\n",
        );
        h
    }

    /// Header constants of a lane-group kernel: rows per group, tokens, and the size of its
    /// workgroup-memory reduction array (`per_lane` values per invocation without subgroups).
    fn lanes_consts(&self, r: usize, t: usize, per_lane: usize, unroll: usize) -> String {
        let c = &self.ctx.caps;
        let red_n = if c.subgroups {
            1
        } else {
            per_lane * c.lane_wg as usize
        };
        format!(
            "const R: u32 = {r}u;\nconst T: u32 = {t}u;\nconst RED_N: u32 = {red_n}u;\nconst U: u32 = {unroll}u;\n"
        )
    }

    fn weight_src(fmt: Fmt, suffix: &str, binding: u32) -> String {
        fmt.snippet()
            .replace("B$", &binding.to_string())
            .replace('$', suffix)
    }

    fn output(&self, elems: usize, what: &str) -> Result<Arc<GpuBuf>> {
        let bytes = (elems as u64) * 4;
        if self.poison {
            // 0xFFFFFFFF is a NaN.
            self.ctx.storage_with(bytes, what, |b| b.fill(0xff))
        } else {
            self.ctx.storage(bytes, what)
        }
    }

    fn tensor(&self, buf: Arc<GpuBuf>, rows: usize, cols: usize) -> WgpuTensor {
        WgpuTensor { buf, rows, cols }
    }

    fn simple(
        &self,
        key: &str,
        src: &'static str,
        extra: &str,
    ) -> Result<Arc<wgpu::ComputePipeline>> {
        self.ctx
            .pipeline(key, || format!("{}{extra}\n{src}", self.header()))
    }

    fn gemv_pipeline(&self, fmt: Fmt, t: usize) -> Result<Arc<wgpu::ComputePipeline>> {
        self.ctx.pipeline(&format!("gemv/{fmt:?}/{t}"), || {
            format!(
                "{}const T: u32 = {t}u;\n{}\n{}",
                self.header(),
                Self::weight_src(fmt, "", 0),
                include_str!("shaders/linear_gemv.wgsl")
            )
        })
    }

    /// The lane-group GEMV for a quantized format, `t` tokens.
    fn gemv_lanes_pipeline(&self, fmt: Fmt, t: usize) -> Result<Arc<wgpu::ComputePipeline>> {
        self.ctx.pipeline(&format!("gemv_lanes/{fmt:?}/{t}"), || {
            format!(
                "{}{}{}\n{}",
                self.header(),
                self.lanes_consts(self.ctx.caps.rows, t, self.ctx.caps.rows * t, 4),
                Self::weight_src(fmt, "", 0),
                include_str!("shaders/gemv_lanes.wgsl")
            )
        })
    }

    fn tiled_pipeline(&self, fmt: Fmt) -> Result<Arc<wgpu::ComputePipeline>> {
        self.ctx.pipeline(&format!("tiled/{fmt:?}"), || {
            format!(
                "{}{}\n{}",
                self.header(),
                Self::weight_src(fmt, "", 0),
                include_str!("shaders/linear_tiled.wgsl")
            )
        })
    }

    /// y = x W^T + bias into `out` (`[t, n]`), over every part of `w`.
    fn matmul_into(
        &self,
        x: &WgpuTensor,
        w: &WgpuWeight,
        bias: Option<&wgpu::Buffer>,
        out: &wgpu::Buffer,
    ) -> Result<()> {
        let t = x.rows;
        let n = w.rows;
        let k = u32_of("linear", "k", w.k)?;
        let n_out = u32_of("linear", "n", n)?;
        let has_bias = bias.is_some() as u32;
        let bias_buf = bias.unwrap_or(self.ctx.dummy());
        if t > TOKENS_PER_GEMV && self.ctx.caps.tiled {
            let pipe = self.tiled_pipeline(w.fmt)?;
            for part in &w.parts {
                let params = [
                    k,
                    part.rows as u32,
                    part.row0 as u32,
                    n_out,
                    t as u32,
                    part.soff,
                    has_bias,
                    0,
                ];
                let gx = part.rows.div_ceil(32);
                let gy = t.div_ceil(32);
                let max = self.ctx.caps.max_groups as usize;
                if gx > max || gy > max {
                    return Err(dev_err(format!(
                        "linear: a {t} x {n} product exceeds the grid limit"
                    )));
                }
                self.ctx.dispatch_xy(
                    &pipe,
                    &[(0, &part.buf.buf), (1, &x.buf.buf), (2, bias_buf), (3, out)],
                    4,
                    &params,
                    (gx as u32, gy as u32),
                )?;
            }
            return Ok(());
        }
        let mut t0 = 0;
        let lanes = w.fmt.lane_words() && self.ctx.caps.lane_kernels;
        let per_wg = self.ctx.caps.rows * (self.ctx.caps.lane_wg / self.ctx.caps.lanes) as usize;
        while t0 < t {
            let tt = TOKENS_PER_GEMV.min(t - t0);
            let pipe = if lanes {
                self.gemv_lanes_pipeline(w.fmt, tt)?
            } else {
                self.gemv_pipeline(w.fmt, tt)?
            };
            for part in &w.parts {
                let params = [
                    k,
                    part.rows as u32,
                    part.row0 as u32,
                    n_out,
                    t0 as u32,
                    part.soff,
                    has_bias,
                    0,
                ];
                self.ctx.dispatch(
                    &pipe,
                    &[(0, &part.buf.buf), (1, &x.buf.buf), (2, bias_buf), (3, out)],
                    4,
                    &params,
                    if lanes {
                        part.rows.div_ceil(per_wg) as u64
                    } else {
                        part.rows as u64
                    },
                )?;
            }
            t0 += tt;
        }
        Ok(())
    }

    fn grow_cache(&self, cache: &mut WgpuKvCache, need: usize) -> Result<()> {
        if need <= cache.slots {
            return Ok(());
        }
        let width = cache.cfg.n_kv_heads * cache.cfg.head_dim;
        let elem = if cache.half { 2 } else { 4 };
        let slots = need.max(cache.slots * 2).min(cache.cfg.max_positions);
        let bytes = (slots * width * elem) as u64;
        let k = self.ctx.storage(bytes, "KV cache")?;
        let v = self.ctx.storage(bytes, "KV cache")?;
        let old = (cache.len.min(cache.slots) * width * elem) as u64;
        self.ctx.copy(&cache.k.buf, 0, &k.buf, 0, old);
        self.ctx.copy(&cache.v.buf, 0, &v.buf, 0, old);
        cache.k = k;
        cache.v = v;
        cache.slots = slots;
        Ok(())
    }
}

impl Backend for WgpuBackend {
    type Tensor = WgpuTensor;
    type Weight = WgpuWeight;
    type KvCache = WgpuKvCache;

    fn name(&self) -> String {
        format!("wgpu:{} ({:?})", self.ctx.info.name, self.ctx.info.backend)
    }

    fn upload(&self, w: &WeightData) -> Result<WgpuWeight> {
        weight::upload(&self.ctx, w)
    }

    fn from_host(&self, data: &[f32], rows: usize, cols: usize) -> Result<WgpuTensor> {
        if rows.checked_mul(cols) != Some(data.len()) {
            return Err(shape(
                "from_host",
                format!("{} values for a [{rows}, {cols}] matrix", data.len()),
            ));
        }
        let buf = self
            .ctx
            .storage_init(bytemuck::cast_slice(data), "from_host")?;
        Ok(self.tensor(buf, rows, cols))
    }

    fn to_host(&self, t: &WgpuTensor) -> Result<(Vec<f32>, usize, usize)> {
        let n = t.rows * t.cols;
        let bytes = self.ctx.read(&t.buf.buf, (n * 4) as u64)?;
        let data = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok((data, t.rows, t.cols))
    }

    fn embed(&self, table: &WgpuWeight, ids: &[u32]) -> Result<WgpuTensor> {
        if table.shape.len() != 2 {
            return Err(shape(
                "embed",
                format!("table '{}' has shape {:?}", table.name, table.shape),
            ));
        }
        let (d, vocab) = (table.shape[0], table.shape[1]);
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= vocab) {
            return Err(shape(
                "embed",
                format!("token id {bad} is outside the vocabulary of {vocab}"),
            ));
        }
        let out = self.output(ids.len() * d, "embed")?;
        if ids.is_empty() {
            return Ok(self.tensor(out, 0, d));
        }
        let ids_buf = self
            .ctx
            .storage_init(bytemuck::cast_slice(ids), "embed ids")?;
        let pipe = self.ctx.pipeline(&format!("embed/{:?}", table.fmt), || {
            format!(
                "{}{}\n{}",
                self.header(),
                Self::weight_src(table.fmt, "", 0),
                include_str!("shaders/embed.wgsl")
            )
        })?;
        for part in &table.parts {
            let params = [
                d as u32,
                part.rows as u32,
                part.row0 as u32,
                ids.len() as u32,
                part.soff,
            ];
            self.ctx.dispatch(
                &pipe,
                &[(0, &part.buf.buf), (1, &ids_buf.buf), (2, &out.buf)],
                3,
                &params,
                ids.len() as u64,
            )?;
        }
        Ok(self.tensor(out, ids.len(), d))
    }

    fn rms_norm(&self, x: &WgpuTensor, weight: &WgpuWeight, eps: f32) -> Result<WgpuTensor> {
        let d = x.cols;
        weight.expect_shape("rms_norm", &[d])?;
        let wbuf = weight.dense("rms_norm")?;
        let out = self.output(x.rows * d, "rms_norm")?;
        let pipe = self.simple(
            "rms_norm",
            include_str!("shaders/rms_norm.wgsl"),
            include_str!("shaders/reduce.wgsl"),
        )?;
        let params = [u32_of("rms_norm", "d", d)?, x.rows as u32, eps.to_bits(), 0];
        self.ctx.dispatch(
            &pipe,
            &[(0, &x.buf.buf), (1, wbuf), (2, &out.buf)],
            3,
            &params,
            x.rows as u64,
        )?;
        Ok(self.tensor(out, x.rows, d))
    }

    fn linear(
        &self,
        x: &WgpuTensor,
        w: &WgpuWeight,
        bias: Option<&WgpuWeight>,
    ) -> Result<WgpuTensor> {
        if w.shape.len() != 2 || w.shape[0] != x.cols {
            return Err(shape(
                "linear",
                format!(
                    "x [{}, {}] times weight '{}' {:?}",
                    x.rows, x.cols, w.name, w.shape
                ),
            ));
        }
        let n = w.shape[1];
        let b = match bias {
            Some(b) => {
                b.expect_shape("linear", &[n])?;
                Some(b.dense("linear")?)
            }
            None => None,
        };
        let out = self.output(x.rows * n, "linear")?;
        self.matmul_into(x, w, b, &out.buf)?;
        Ok(self.tensor(out, x.rows, n))
    }

    fn add_assign(&self, x: &mut WgpuTensor, y: &WgpuTensor) -> Result<()> {
        if x.rows != y.rows || x.cols != y.cols {
            return Err(shape(
                "add_assign",
                format!("[{}, {}] += [{}, {}]", x.rows, x.cols, y.rows, y.cols),
            ));
        }
        let n = x.rows * x.cols;
        let pipe = self.simple("add", include_str!("shaders/add.wgsl"), "")?;
        let wg = self.ctx.caps.wg as usize;
        self.ctx.dispatch(
            &pipe,
            &[(0, &x.buf.buf), (1, &y.buf.buf)],
            2,
            &[u32_of("add_assign", "elements", n)?],
            n.div_ceil(wg) as u64,
        )
    }

    fn rope(&self, x: &mut WgpuTensor, n_heads: usize, pos0: usize, rope: &Rope) -> Result<()> {
        let hd = rope.head_dim;
        if hd == 0
            || !hd.is_multiple_of(2)
            || rope.inv_freq.len() != hd / 2
            || n_heads * hd != x.cols
        {
            return Err(shape(
                "rope",
                format!(
                    "x has {} columns, not {n_heads} heads of {hd} ({} frequencies)",
                    x.cols,
                    rope.inv_freq.len()
                ),
            ));
        }
        u32_of("rope", "last position", pos0 + x.rows)?;
        let bits: Vec<u32> = rope.inv_freq.iter().map(|f| f.to_bits()).collect();
        let inv = {
            let mut c = self.rope_cache.lock().unwrap_or_else(|e| e.into_inner());
            match &*c {
                Some((b, buf)) if *b == bits => buf.clone(),
                _ => {
                    let buf = self
                        .ctx
                        .storage_init(bytemuck::cast_slice(&rope.inv_freq), "rope")?;
                    *c = Some((bits, buf.clone()));
                    buf
                }
            }
        };
        let half = hd / 2;
        let n = x.rows * n_heads * half;
        let pipe = self.simple("rope", include_str!("shaders/rope.wgsl"), "")?;
        let params = [
            x.rows as u32,
            n_heads as u32,
            half as u32,
            x.cols as u32,
            pos0 as u32,
            rope.attention_factor.to_bits(),
        ];
        let wg = self.ctx.caps.wg as usize;
        self.ctx.dispatch(
            &pipe,
            &[(0, &x.buf.buf), (1, &inv.buf)],
            2,
            &params,
            n.div_ceil(wg) as u64,
        )
    }

    fn new_kv_cache(&self, cfg: &KvCacheConfig) -> Result<WgpuKvCache> {
        if cfg.n_kv_heads == 0 || cfg.head_dim == 0 || cfg.max_positions == 0 {
            return Err(shape(
                "new_kv_cache",
                format!("empty cache configuration {cfg:?}"),
            ));
        }
        if cfg.window == Some(0) {
            return Err(shape(
                "new_kv_cache",
                "a sliding window of 0 positions sees nothing".into(),
            ));
        }
        let width = cfg
            .n_kv_heads
            .checked_mul(cfg.head_dim)
            .ok_or_else(|| shape("new_kv_cache", format!("{cfg:?} overflows")))?;
        let (slots, ring) = match cfg.window {
            Some(w) => (w.min(cfg.max_positions), true),
            // A full cache starts small and doubles as positions arrive.
            None => (cfg.max_positions.min(256), false),
        };
        // f16 rows only when a row is whole words (copies move multiples of 4 bytes).
        let half = self.ctx.caps.f16 && width.is_multiple_of(2);
        let bytes = slots
            .checked_mul(width * if half { 2 } else { 4 })
            .ok_or_else(|| shape("new_kv_cache", format!("{cfg:?} overflows")))?
            as u64;
        Ok(WgpuKvCache {
            cfg: *cfg,
            k: self.ctx.storage(bytes, "KV cache")?,
            v: self.ctx.storage(bytes, "KV cache")?,
            slots,
            ring,
            len: 0,
            half,
        })
    }

    fn attention(
        &self,
        q: &WgpuTensor,
        k: &WgpuTensor,
        v: &WgpuTensor,
        cache: &mut WgpuKvCache,
        pos0: usize,
        sinks: &WgpuWeight,
        cfg: &AttentionConfig,
    ) -> Result<WgpuTensor> {
        let (nh, nkv, hd) = (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim);
        if nh == 0 || nkv == 0 || hd == 0 || !nh.is_multiple_of(nkv) {
            return Err(shape(
                "attention",
                format!("{nh} query heads cannot share {nkv} kv heads of dim {hd}"),
            ));
        }
        if hd > MAX_HEAD_DIM {
            return Err(shape(
                "attention",
                format!("head dim {hd} is above this backend's {MAX_HEAD_DIM}"),
            ));
        }
        if cfg.window == Some(0) {
            return Err(shape(
                "attention",
                "a sliding window of 0 positions sees nothing".into(),
            ));
        }
        let cc = cache.cfg;
        if cc.n_kv_heads != nkv || cc.head_dim != hd || cc.window != cfg.window {
            return Err(shape(
                "attention",
                format!("cache made for {cc:?} used with {cfg:?}"),
            ));
        }
        let t = q.rows;
        if q.cols != nh * hd
            || k.cols != nkv * hd
            || v.cols != nkv * hd
            || k.rows != t
            || v.rows != t
        {
            return Err(shape(
                "attention",
                format!(
                    "q [{}, {}], k [{}, {}], v [{}, {}] for {nh} heads and {nkv} kv heads of {hd}",
                    q.rows, q.cols, k.rows, k.cols, v.rows, v.cols
                ),
            ));
        }
        sinks.expect_shape("attention", &[nh])?;
        let sinks_buf = sinks.dense("attention")?;
        if pos0 != cache.len {
            return Err(shape(
                "attention",
                format!(
                    "the cache holds positions 0..{}, the call starts at {pos0}",
                    cache.len
                ),
            ));
        }
        if pos0 + t > cc.max_positions {
            return Err(BackendError::ContextFull {
                pos: pos0.max(cc.max_positions),
                capacity: cc.max_positions,
            });
        }
        u32_of("attention", "last position", pos0 + t)?;
        let out = self.output(t * nh * hd, "attention")?;
        if t == 0 {
            return Ok(self.tensor(out, 0, nh * hd));
        }
        if !cache.ring {
            self.grow_cache(cache, pos0 + t)?;
        }
        let ring_slots = if cache.ring { cache.slots as u32 } else { 0 };
        let (kv_key, kv_header) = if cache.half {
            ("f16", "alias KV_ELEM = f16;\n")
        } else {
            ("f32", "alias KV_ELEM = f32;\n")
        };
        let pipe = self.simple(
            &format!("attention/{kv_key}"),
            include_str!("shaders/attention.wgsl"),
            &format!(
                "{}{kv_header}fn kv_load_k(i: u32) -> f32 {{ return f32(KC[i]); }}\nfn kv_load_v(i: u32) -> f32 {{ return f32(VC[i]); }}\n",
                include_str!("shaders/reduce.wgsl")
            ),
        )?;
        // Split the keys of a row over several workgroups when rows x heads alone would leave
        // the device idle (decode): about ATTN_TARGET_GROUPS workgroups in all.
        let max_keys = cfg.window.map_or(pos0 + t, |w| w.min(pos0 + t));
        let wg = self.ctx.caps.wg as usize;
        let rows_heads = t * nh;
        let (n_split, seg) = if rows_heads >= ATTN_TARGET_GROUPS {
            (1, max_keys)
        } else {
            let want = ATTN_TARGET_GROUPS / rows_heads;
            let seg = max_keys.div_ceil(want).max(wg).div_ceil(wg) * wg;
            (max_keys.div_ceil(seg), seg)
        };
        // The attention kernel stores the new rows itself where no query of this call can read
        // a slot they overwrite: a full cache (new rows go past the old ones), or a single row
        // into a ring (it evicts position pos - ring, outside the window). Else a separate
        // kv_append after attending.
        let fused_append = !cache.ring || t == 1;
        let part = if n_split > 1 {
            Some(self.ctx.storage(
                (rows_heads * n_split * (hd + 2) * 4) as u64,
                "attention partials",
            )?)
        } else {
            None
        };
        let params = [
            t as u32,
            pos0 as u32,
            nh as u32,
            nkv as u32,
            hd as u32,
            cfg.window.unwrap_or(0) as u32,
            ring_slots,
            cfg.scale.to_bits(),
            n_split as u32,
            seg as u32,
            fused_append as u32,
        ];
        let part_buf = part.as_ref().map_or(self.ctx.dummy(), |p| &p.buf);
        self.ctx.dispatch(
            &pipe,
            &[
                (0, &q.buf.buf),
                (1, &k.buf.buf),
                (2, &v.buf.buf),
                (3, &cache.k.buf),
                (4, &cache.v.buf),
                (5, sinks_buf),
                (6, &out.buf),
                (8, part_buf),
            ],
            7,
            &params,
            (rows_heads * n_split) as u64,
        )?;
        if let Some(part) = &part {
            let pipe = self.simple(
                "attention_combine",
                include_str!("shaders/attention_combine.wgsl"),
                "",
            )?;
            self.ctx.dispatch(
                &pipe,
                &[(0, &part.buf), (1, sinks_buf), (2, &out.buf)],
                3,
                &[rows_heads as u32, nh as u32, hd as u32, n_split as u32],
                rows_heads as u64,
            )?;
        }
        if fused_append {
            cache.len += t;
            return Ok(self.tensor(out, t, nh * hd));
        }
        // Append after attending: a ring shorter than the prompt would otherwise lose keys the
        // earlier queries of this call still need.
        let width = nkv * hd;
        let first = if cache.ring {
            t.saturating_sub(cache.slots)
        } else {
            0
        };
        let pipe = self.simple(
            &format!("kv_append/{kv_key}"),
            include_str!("shaders/kv_append.wgsl"),
            kv_header,
        )?;
        let params = [
            t as u32,
            pos0 as u32,
            width as u32,
            ring_slots,
            first as u32,
        ];
        let wg = self.ctx.caps.wg as usize;
        self.ctx.dispatch(
            &pipe,
            &[
                (0, &k.buf.buf),
                (1, &v.buf.buf),
                (2, &cache.k.buf),
                (3, &cache.v.buf),
            ],
            4,
            &params,
            ((t - first) * width).div_ceil(wg) as u64,
        )?;
        cache.len += t;
        Ok(self.tensor(out, t, nh * hd))
    }

    fn moe(
        &self,
        x: &WgpuTensor,
        w: &MoeWeights<WgpuWeight>,
        cfg: &MoeConfig,
    ) -> Result<WgpuTensor> {
        let (d, n_exp, top_k) = (x.cols, cfg.n_experts, cfg.top_k);
        if n_exp == 0 || top_k == 0 || top_k > n_exp {
            return Err(shape("moe", format!("top-{top_k} of {n_exp} experts")));
        }
        if n_exp > MAX_EXPERTS {
            return Err(shape(
                "moe",
                format!("{n_exp} experts is above this backend's {MAX_EXPERTS}"),
            ));
        }
        let dff = if w.gate.shape.len() >= 2 {
            w.gate.shape[1]
        } else {
            0
        };
        w.router.expect_shape("moe", &[d, n_exp])?;
        w.router_bias.expect_shape("moe", &[n_exp])?;
        w.gate.expect_shape("moe", &[d, dff, n_exp])?;
        w.up.expect_shape("moe", &[d, dff, n_exp])?;
        w.gate_bias.expect_shape("moe", &[dff, n_exp])?;
        w.up_bias.expect_shape("moe", &[dff, n_exp])?;
        w.down.expect_shape("moe", &[dff, d, n_exp])?;
        w.down_bias.expect_shape("moe", &[d, n_exp])?;
        if w.gate.dtype != w.up.dtype {
            return Err(BackendError::UnsupportedType {
                op: "moe",
                name: w.up.name.clone(),
                dtype: w.up.dtype,
            });
        }
        let (gb, ub, db) = (
            w.gate_bias.dense("moe")?,
            w.up_bias.dense("moe")?,
            w.down_bias.dense("moe")?,
        );
        let t = x.rows;
        let y = self.output(t * d, "moe")?;
        if t == 0 {
            return Ok(self.tensor(y, 0, d));
        }
        // Router logits and the top-k on the device: nothing comes back to the host.
        let logits = self.linear(x, &w.router, Some(&w.router_bias))?;
        let slots = t * top_k;
        let ids = self.ctx.storage((slots * 4) as u64, "moe ids")?;
        let wts = self.ctx.storage((slots * 4) as u64, "moe weights")?;
        let pipe = self.simple("moe_route", include_str!("shaders/moe_route.wgsl"), "")?;
        self.ctx.dispatch(
            &pipe,
            &[(0, &logits.buf.buf), (1, &ids.buf), (2, &wts.buf)],
            3,
            &[t as u32, n_exp as u32, top_k as u32],
            t as u64,
        )?;

        let h = self.ctx.storage((slots * dff * 4) as u64, "moe hidden")?;
        let caps = &self.ctx.caps;
        let per_wg = self.ctx.caps.rows * (caps.lane_wg / caps.lanes) as usize;
        let fmt = w.gate.fmt;
        u32_of("moe", "rows", dff * n_exp)?;
        let (pipe, groups) = if fmt.lane_words() && self.ctx.caps.lane_kernels {
            let pipe = self
                .ctx
                .pipeline(&format!("moe_gate_up_lanes/{fmt:?}"), || {
                    format!(
                        "{}{}{}\n{}\n{}",
                        self.header(),
                        self.lanes_consts(self.ctx.caps.rows, 1, 2 * self.ctx.caps.rows, 2),
                        Self::weight_src(fmt, "", 0),
                        Self::weight_src(fmt, "u", 1),
                        include_str!("shaders/moe_gate_up_lanes.wgsl")
                    )
                })?;
            (pipe, (dff.div_ceil(per_wg) * slots) as u64)
        } else {
            let pipe = self.ctx.pipeline(&format!("moe_gate_up/{fmt:?}"), || {
                format!(
                    "{}{}\n{}\n{}",
                    self.header(),
                    Self::weight_src(fmt, "", 0),
                    Self::weight_src(fmt, "u", 1),
                    include_str!("shaders/moe_gate_up.wgsl")
                )
            })?;
            (pipe, (dff * slots) as u64)
        };
        for (gp, up) in w.gate.parts.iter().zip(&w.up.parts) {
            debug_assert_eq!((gp.row0, gp.rows, gp.soff), (up.row0, up.rows, up.soff));
            let params = [
                d as u32,
                dff as u32,
                slots as u32,
                top_k as u32,
                gp.row0 as u32,
                gp.rows as u32,
                gp.soff,
            ];
            self.ctx.dispatch(
                &pipe,
                &[
                    (0, &gp.buf.buf),
                    (1, &up.buf.buf),
                    (2, &x.buf.buf),
                    (3, &ids.buf),
                    (4, gb),
                    (5, ub),
                    (6, &h.buf),
                ],
                7,
                &params,
                groups,
            )?;
        }

        let fmt = w.down.fmt;
        u32_of("moe", "rows", d * n_exp)?;
        if fmt.lane_words() && self.ctx.caps.lane_kernels {
            // Down projections, biases and the routing-weighted sum in one kernel per part.
            let pipe = self.ctx.pipeline(&format!("moe_down_lanes/{fmt:?}"), || {
                format!(
                    "{}{}{}\n{}",
                    self.header(),
                    self.lanes_consts(self.ctx.caps.rows, 1, self.ctx.caps.rows, 1),
                    Self::weight_src(fmt, "", 0),
                    include_str!("shaders/moe_down_lanes.wgsl")
                )
            })?;
            for (i, p) in w.down.parts.iter().enumerate() {
                let params = [
                    dff as u32,
                    d as u32,
                    t as u32,
                    top_k as u32,
                    p.row0 as u32,
                    p.rows as u32,
                    p.soff,
                    (i > 0) as u32,
                ];
                self.ctx.dispatch(
                    &pipe,
                    &[
                        (0, &p.buf.buf),
                        (1, &h.buf),
                        (2, &ids.buf),
                        (3, &wts.buf),
                        (4, db),
                        (5, &y.buf),
                    ],
                    6,
                    &params,
                    (d.div_ceil(self.ctx.caps.rows) * t) as u64,
                )?;
            }
            return Ok(self.tensor(y, t, d));
        }
        let pipe = self.ctx.pipeline(&format!("moe_down/{fmt:?}"), || {
            format!(
                "{}{}\n{}",
                self.header(),
                Self::weight_src(fmt, "", 0),
                include_str!("shaders/moe_down.wgsl")
            )
        })?;
        let ys = self
            .ctx
            .storage((slots * d * 4) as u64, "moe expert outputs")?;
        for part in &w.down.parts {
            let p: &Part = part;
            let params = [
                dff as u32,
                d as u32,
                slots as u32,
                0,
                p.row0 as u32,
                p.rows as u32,
                p.soff,
            ];
            self.ctx.dispatch(
                &pipe,
                &[
                    (0, &p.buf.buf),
                    (1, &h.buf),
                    (2, &ids.buf),
                    (4, db),
                    (5, &ys.buf),
                ],
                6,
                &params,
                (d * slots) as u64,
            )?;
        }
        let pipe = self.simple("moe_combine", include_str!("shaders/moe_combine.wgsl"), "")?;
        let wg = self.ctx.caps.wg as usize;
        self.ctx.dispatch(
            &pipe,
            &[(0, &ys.buf), (1, &wts.buf), (2, &y.buf)],
            3,
            &[t as u32, d as u32, top_k as u32],
            (t * d).div_ceil(wg) as u64,
        )?;
        Ok(self.tensor(y, t, d))
    }

    fn argmax(&self, x: &WgpuTensor) -> Result<Vec<u32>> {
        if x.rows == 0 {
            return Ok(Vec::new());
        }
        if x.cols == 0 {
            return Err(shape(
                "argmax",
                "rows of zero columns have no maximum".into(),
            ));
        }
        let out = self.output(x.rows, "argmax")?;
        let pipe = self.simple("argmax", include_str!("shaders/argmax.wgsl"), "")?;
        self.ctx.dispatch(
            &pipe,
            &[(0, &x.buf.buf), (1, &out.buf)],
            2,
            &[u32_of("argmax", "cols", x.cols)?, x.rows as u32],
            x.rows as u64,
        )?;
        let bytes = self.ctx.read(&out.buf, (x.rows * 4) as u64)?;
        Ok(bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    fn last_row(&self, x: &WgpuTensor) -> Result<WgpuTensor> {
        if x.rows == 0 {
            return Err(shape("last_row", "an empty matrix has no last row".into()));
        }
        let out = self.output(x.cols, "last_row")?;
        let row = (x.cols * 4) as u64;
        self.ctx
            .copy(&x.buf.buf, (x.rows as u64 - 1) * row, &out.buf, 0, row);
        Ok(self.tensor(out, 1, x.cols))
    }

    fn peak_memory_bytes(&self) -> Option<u64> {
        Some(self.ctx.mem.peak())
    }
}
