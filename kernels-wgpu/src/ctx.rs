//! The device, its limits, and the plumbing every operation shares: buffers with memory
//! accounting, shader pipelines built on first use, and one pending command encoder into which
//! operations record until something has to be read back.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use gptoss_backend::{BackendError, Result};

pub(crate) const NAME: &str = "wgpu";

/// Bytes of one uniform slot in the parameter arena (every adapter's uniform offset alignment
/// is at most 256).
const SLOT: usize = 256;
/// Dispatches recorded before the pending work is submitted.
const ARENA_SLOTS: usize = 512;

pub(crate) fn dev_err(message: impl Into<String>) -> BackendError {
    BackendError::Device {
        backend: NAME.into(),
        message: message.into(),
    }
}

/// Bytes of device memory our buffers hold now and at most so far.
#[derive(Default)]
pub(crate) struct MemCounter {
    cur: AtomicU64,
    peak: AtomicU64,
}

impl MemCounter {
    fn add(&self, n: u64) {
        let now = self.cur.fetch_add(n, Ordering::Relaxed) + n;
        self.peak.fetch_max(now, Ordering::Relaxed);
    }
    fn sub(&self, n: u64) {
        self.cur.fetch_sub(n, Ordering::Relaxed);
    }
    pub(crate) fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
}

/// Free activation buffers by size, for reuse: creating a buffer (and wgpu's zero-fill of a
/// fresh one) costs more than most decode kernels.
type Pool = Mutex<HashMap<u64, Vec<wgpu::Buffer>>>;

/// A storage buffer whose size is counted while it lives.
pub(crate) struct GpuBuf {
    pub(crate) buf: wgpu::Buffer,
    bytes: u64,
    mem: Arc<MemCounter>,
    /// Where the buffer goes back when dropped (activations); `None`: freed (weights).
    pool: Option<Arc<Pool>>,
    /// The bind-group cache, purged of this buffer when it is freed (weights).
    cache: Option<Arc<BgCache>>,
}

/// Timestamp queries around every dispatch (each in its own compute pass), resolved at every
/// submission and summed by kernel.
pub(crate) struct Profile {
    set: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    readback: wgpu::Buffer,
    /// Kernel of each recorded pair of queries.
    labels: Mutex<Vec<String>>,
    /// Kernel -> (dispatches, nanoseconds).
    totals: Mutex<HashMap<String, (u64, f64)>>,
}

/// Query pairs per submission while profiling (the arena's slot count bounds it anyway).
const PROFILE_PAIRS: usize = ARENA_SLOTS;

impl Profile {
    fn new(device: &wgpu::Device) -> Profile {
        let n = (PROFILE_PAIRS * 2) as u32;
        Profile {
            set: device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("profile"),
                ty: wgpu::QueryType::Timestamp,
                count: n,
            }),
            resolve: device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("profile resolve"),
                size: n as u64 * 8,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            }),
            readback: device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("profile readback"),
                size: n as u64 * 8,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }),
            labels: Mutex::new(Vec::new()),
            totals: Mutex::new(HashMap::new()),
        }
    }
}

/// What a bind group binds: the pipeline, its storage buffers, and the parameter slot.
#[derive(PartialEq, Eq, Hash)]
struct BgKey {
    pipeline: wgpu::ComputePipeline,
    binds: Vec<(u32, wgpu::Buffer)>,
    param_off: u64,
}

/// Bind groups by what they bind: a decode step records the same dispatches on the same
/// (pooled) buffers token after token, and creating a bind group is most of what recording a
/// dispatch costs on the host.
type BgCache = Mutex<HashMap<BgKey, wgpu::BindGroup>>;
/// Entries kept at most (the cache is cleared beyond).
const BG_CACHE_MAX: usize = 16384;

impl Drop for GpuBuf {
    fn drop(&mut self) {
        match &self.pool {
            // Reuse is safe: wgpu orders every later use of the buffer after the recorded work
            // that still uses it (barriers between usages, one queue).
            Some(pool) => lock(pool)
                .entry(self.bytes)
                .or_default()
                .push(self.buf.clone()),
            // wgpu keeps the buffer alive until recorded work that uses it has finished.
            None => {
                if let Some(cache) = &self.cache {
                    lock(cache).retain(|k, _| !k.binds.iter().any(|(_, b)| *b == self.buf));
                }
                self.mem.sub(self.bytes)
            }
        }
    }
}

/// A buffer to bind: storage buffers, bound whole.
pub(crate) type Bind<'a> = (u32, &'a wgpu::Buffer);

struct Pending {
    enc: Option<wgpu::CommandEncoder>,
    /// The open compute pass: consecutive dispatches share one.
    pass: Option<wgpu::ComputePass<'static>>,
    params: Vec<u8>,
}

impl Pending {
    fn encoder(&mut self, device: &wgpu::Device) -> &mut wgpu::CommandEncoder {
        // A copy or clear cannot be recorded while a pass is open.
        self.pass = None;
        self.enc.get_or_insert_with(|| {
            device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None })
        })
    }

    fn pass(&mut self, device: &wgpu::Device) -> &mut wgpu::ComputePass<'static> {
        if self.pass.is_none() {
            let enc = self.enc.get_or_insert_with(|| {
                device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None })
            });
            let pass = enc
                .begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: None,
                    timestamp_writes: None,
                })
                .forget_lifetime();
            self.pass = Some(pass);
        }
        self.pass.as_mut().expect("just opened")
    }
}

/// What the adapter offers that the kernels care about.
#[derive(Debug, Clone)]
pub(crate) struct Caps {
    /// Largest buffer we create and bind (the smaller of the binding and buffer limits).
    pub(crate) max_binding: u64,
    /// Largest part of a split weight (`max_binding`, or less when asked to split early).
    pub(crate) max_weight_part: u64,
    /// Largest workgroup count per grid dimension.
    pub(crate) max_groups: u32,
    /// Workgroup size of the row kernels (a power of two).
    pub(crate) wg: u32,
    /// 256-invocation workgroups are allowed: the tiled matmul is usable.
    pub(crate) tiled: bool,
    /// The device has `shader-f16`.
    pub(crate) f16: bool,
    /// The device has subgroup operations.
    pub(crate) subgroups: bool,
    /// Lanes that cooperate on one row in the row kernels (a power of two). With subgroups it
    /// is at most the adapter's smallest subgroup size, so that a row's lanes always lie in one
    /// subgroup and reduce with shuffles; without, 32 lanes reduce through workgroup memory.
    pub(crate) lanes: u32,
    /// Workgroup size of the lane-group kernels (a few lane groups).
    pub(crate) lane_wg: u32,
    /// Rows one lane group computes, sharing the activation loads (`GPTOSS_WGPU_ROWS`, 1..=8).
    pub(crate) rows: usize,
    /// The lane-group kernels are used for MXFP4/Q8_0 (`GPTOSS_WGPU_LANES=0`: the older
    /// row-per-workgroup kernels, for comparison).
    pub(crate) lane_kernels: bool,
}

pub(crate) struct Ctx {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    pub(crate) info: wgpu::AdapterInfo,
    pub(crate) caps: Caps,
    pipelines: Mutex<HashMap<String, Arc<wgpu::ComputePipeline>>>,
    /// The key of each pipeline (profile labels).
    keys: Mutex<HashMap<wgpu::ComputePipeline, String>>,
    pending: Mutex<Pending>,
    error: Arc<Mutex<Option<String>>>,
    pub(crate) mem: Arc<MemCounter>,
    pool: Arc<Pool>,
    arena: wgpu::Buffer,
    dummy: GpuBuf,
    /// `None`: a fresh bind group per dispatch (`GPTOSS_WGPU_BG_CACHE=0`).
    bg_cache: Arc<BgCache>,
    bg_cache_on: bool,
    /// Dispatches recorded before the pending work is submitted, so that the device starts
    /// on a forward pass while the host still records the rest (`GPTOSS_WGPU_FLUSH`; 0: only
    /// when a result is read back or the parameter arena is full).
    flush_every: usize,
    recorded: std::sync::atomic::AtomicUsize,
    /// Per-kernel device time from timestamp queries (`GPTOSS_WGPU_PROFILE=1` on an adapter
    /// with `timestamp-query`), printed when the backend is dropped.
    profile: Option<Profile>,
    /// Host time spent recording dispatches and submitting (`GPTOSS_WGPU_HOST_TIMING=1`):
    /// [dispatches, ns recording, submissions, ns submitting (all), ns in queue.submit alone],
    /// printed when dropped.
    host_timing: Option<[AtomicU64; 5]>,
    /// Runtime checks dropped from the kernels (`GPTOSS_WGPU_TRUSTED`): 0 none, 1 (default)
    /// wgpu's loop bounding and division guards, 2 also its buffer bounds checks. Level 1
    /// made the Q8_0 GEMVs ~20 % and decode attention ~25 % faster on H100 (Vulkan).
    trusted: u8,
}

/// How to pick the adapter.
#[derive(Debug, Clone, Default)]
pub(crate) struct Pick {
    pub(crate) backends: Option<String>,
    pub(crate) adapter: Option<String>,
    pub(crate) max_binding: Option<u64>,
    /// Leave `shader-f16` unused even where the adapter offers it.
    pub(crate) no_f16: bool,
    /// Leave subgroup operations unused even where the adapter offers them.
    pub(crate) no_subgroups: bool,
}

/// Dispatches per submission by default: a decode step of the 20b model records ~400.
const DEFAULT_FLUSH: usize = 64;

fn env_u64(key: &str) -> Option<u64> {
    std::env::var(key).ok().and_then(|v| v.trim().parse().ok())
}

/// Device polls a read-back waits for its mapping callback at most.
const MAP_POLLS: usize = 1000;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these locks cannot leave the data half-updated in a way
    // that matters more than the panic itself.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Drop for Ctx {
    fn drop(&mut self) {
        if let Some(ht) = &self.host_timing {
            let v: Vec<u64> = ht.iter().map(|a| a.load(Ordering::Relaxed)).collect();
            eprintln!(
                "wgpu host time: {} dispatches recorded in {:.3} ms ({:.2} us each), {} submissions in {:.3} ms ({:.1} us each; \
                 ending the pass and finishing the encoder included, queue.submit alone {:.3} ms)",
                v[0],
                v[1] as f64 / 1e6,
                v[1] as f64 / 1e3 / v[0].max(1) as f64,
                v[2],
                v[3] as f64 / 1e6,
                v[3] as f64 / 1e3 / v[2].max(1) as f64,
                v[4] as f64 / 1e6
            );
        }
        let Some(prof) = &self.profile else { return };
        self.flush();
        let totals = lock(&prof.totals);
        let all: f64 = totals.values().map(|v| v.1).sum();
        let mut rows: Vec<_> = totals.iter().collect();
        rows.sort_by(|a, b| b.1.1.total_cmp(&a.1.1));
        eprintln!(
            "wgpu profile (timestamp queries, one pass per dispatch): {:.3} ms of kernels in all",
            all / 1e6
        );
        eprintln!(
            "{:>10} {:>10} {:>10} {:>6}  kernel",
            "calls", "total ms", "mean us", "%"
        );
        for (k, (n, ns)) in rows {
            eprintln!(
                "{n:>10} {:>10.3} {:>10.2} {:>6.1}  {k}",
                ns / 1e6,
                ns / 1e3 / *n as f64,
                100.0 * ns / all.max(1.0)
            );
        }
    }
}

impl Ctx {
    pub(crate) fn new(pick: &Pick) -> Result<Ctx> {
        let unavailable = |reason: String| BackendError::Unavailable {
            backend: NAME.into(),
            reason,
        };
        let backends = match &pick.backends {
            Some(list) => {
                let b = wgpu::Backends::from_comma_list(list);
                if b.is_empty() {
                    return Err(unavailable(format!(
                        "GPTOSS_WGPU_BACKEND='{list}' names no backend (use vulkan, metal, dx12)"
                    )));
                }
                b
            }
            None => wgpu::Backends::from_env().unwrap_or(wgpu::Backends::PRIMARY),
        };
        if (wgpu::Instance::enabled_backend_features() & backends).is_empty() {
            return Err(unavailable(format!(
                "this build has none of the requested backends {backends:?}"
            )));
        }
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
        desc.backends = backends;
        let instance = wgpu::Instance::new(desc);
        let adapter = match &pick.adapter {
            Some(want) => {
                let all = pollster::block_on(instance.enumerate_adapters(backends));
                let names: Vec<String> = all
                    .iter()
                    .map(|a| {
                        let i = a.get_info();
                        format!("{} ({:?})", i.name, i.backend)
                    })
                    .collect();
                let w = want.to_lowercase();
                all.into_iter()
                    .find(|a| a.get_info().name.to_lowercase().contains(&w))
                    .ok_or_else(|| {
                        unavailable(format!(
                            "no adapter name contains '{want}' (GPTOSS_WGPU_ADAPTER); adapters: [{}]",
                            names.join(", ")
                        ))
                    })?
            }
            None => pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                force_fallback_adapter: false,
                compatible_surface: None,
                // The real limits: bucketing exists against fingerprinting, not for us.
                apply_limit_buckets: false,
            }))
            .map_err(|e| {
                unavailable(format!(
                    "no wgpu adapter for backends {backends:?}: {e} (install a Vulkan driver, e.g. \
                     mesa-vulkan-drivers for the software one, or pick one with GPTOSS_WGPU_BACKEND)"
                ))
            })?,
        };
        let info = adapter.get_info();
        let limits = adapter.limits();
        let offered = adapter.features();
        let mut wanted = wgpu::Features::empty();
        if !pick.no_f16 {
            wanted |= wgpu::Features::SHADER_F16;
        }
        // Subgroup sizes outside 4..=128 or not powers of two would break the lane groups.
        let sg_ok =
            info.subgroup_min_size.is_power_of_two() && (4..=128).contains(&info.subgroup_min_size);
        if !pick.no_subgroups && sg_ok {
            wanted |= wgpu::Features::SUBGROUP;
        }
        let profile_wanted = env_u64("GPTOSS_WGPU_PROFILE").is_some_and(|v| v != 0);
        if profile_wanted {
            wanted |= wgpu::Features::TIMESTAMP_QUERY;
        }
        let features = offered & wanted;
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("gptoss"),
            required_features: features,
            // The adapter's real limits, not WebGPU's defaults: large bindings matter here.
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| unavailable(format!("adapter '{}' refused a device: {e}", info.name)))?;

        let error = Arc::new(Mutex::new(None::<String>));
        {
            let error = error.clone();
            device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
                let mut slot = lock(&error);
                if slot.is_none() {
                    *slot = Some(e.to_string());
                }
            }));
        }

        let max_binding =
            (limits.max_storage_buffer_binding_size as u64).min(limits.max_buffer_size) & !3;
        let max_weight_part = match pick.max_binding {
            Some(cap) => max_binding.min(cap.max(1024)) & !3,
            None => max_binding,
        };
        let inv = limits
            .max_compute_invocations_per_workgroup
            .min(limits.max_compute_workgroup_size_x);
        // 64 by default; GPTOSS_WGPU_WG (a power of two) overrides it for tuning.
        let mut wg = std::env::var("GPTOSS_WGPU_WG")
            .ok()
            .and_then(|v| v.trim().parse::<u32>().ok())
            .filter(|v| v.is_power_of_two() && (8..=1024).contains(v))
            .unwrap_or(64);
        while wg > inv {
            wg /= 2;
        }
        if wg < 8 {
            return Err(unavailable(format!(
                "adapter '{}' allows only {inv} invocations per workgroup",
                info.name
            )));
        }
        let subgroups = features.contains(wgpu::Features::SUBGROUP);
        let lanes = if subgroups {
            info.subgroup_min_size.min(32)
        } else {
            32
        }
        .min(inv);
        // wg_sum/wg_max reduce whole lane groups of a WG-sized workgroup.
        let lanes = lanes.min(wg);
        let lane_wg = (lanes * env_u64("GPTOSS_WGPU_GROUPS").map_or(4, |v| v.clamp(1, 32) as u32))
            .min(inv)
            .max(lanes);
        let caps = Caps {
            max_binding,
            max_weight_part,
            max_groups: limits.max_compute_workgroups_per_dimension.max(1),
            wg,
            tiled: inv >= 256 && limits.max_compute_workgroup_storage_size >= 8192,
            f16: features.contains(wgpu::Features::SHADER_F16),
            subgroups,
            lanes,
            lane_wg,
            rows: env_u64("GPTOSS_WGPU_ROWS").map_or(2, |v| v.clamp(1, 8) as usize),
            lane_kernels: env_u64("GPTOSS_WGPU_LANES").is_none_or(|v| v != 0),
        };
        let profile = (profile_wanted && features.contains(wgpu::Features::TIMESTAMP_QUERY))
            .then(|| Profile::new(&device));
        let mem = Arc::new(MemCounter::default());
        let arena = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("params"),
            size: (SLOT * ARENA_SLOTS) as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let dummy_buf = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("dummy"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        mem.add(16);
        let dummy = GpuBuf {
            buf: dummy_buf,
            bytes: 16,
            mem: mem.clone(),
            pool: None,
            cache: None,
        };
        Ok(Ctx {
            device,
            queue,
            info,
            caps,
            pipelines: Mutex::new(HashMap::new()),
            keys: Mutex::new(HashMap::new()),
            pending: Mutex::new(Pending {
                enc: None,
                pass: None,
                params: Vec::new(),
            }),
            error,
            mem,
            pool: Arc::new(Mutex::new(HashMap::new())),
            arena,
            dummy,
            bg_cache: Arc::new(Mutex::new(HashMap::new())),
            bg_cache_on: env_u64("GPTOSS_WGPU_BG_CACHE").is_none_or(|v| v != 0),
            flush_every: env_u64("GPTOSS_WGPU_FLUSH").map_or(DEFAULT_FLUSH, |v| v as usize),
            recorded: std::sync::atomic::AtomicUsize::new(0),
            profile,
            host_timing: env_u64("GPTOSS_WGPU_HOST_TIMING")
                .is_some_and(|v| v != 0)
                .then(Default::default),
            trusted: std::env::var("GPTOSS_WGPU_TRUSTED")
                .ok()
                .and_then(|v| v.trim().parse::<u8>().ok())
                .unwrap_or(1)
                .min(2),
        })
    }

    /// A 16-byte buffer to bind where a kernel's optional input is absent.
    pub(crate) fn dummy(&self) -> &wgpu::Buffer {
        &self.dummy.buf
    }

    /// The first error the device reported, if any.
    pub(crate) fn check(&self) -> Result<()> {
        match lock(&self.error).clone() {
            Some(e) => Err(dev_err(format!("device error: {e}"))),
            None => Ok(()),
        }
    }

    fn fits(&self, bytes: u64, what: &str) -> Result<()> {
        if bytes > self.caps.max_binding {
            return Err(dev_err(format!(
                "{what} needs a buffer of {bytes} bytes, more than the adapter's binding limit of {} bytes",
                self.caps.max_binding
            )));
        }
        Ok(())
    }

    /// A storage buffer of at least `bytes` bytes with undefined content (a reused one when
    /// the pool has one of that size).
    pub(crate) fn storage(&self, bytes: u64, what: &str) -> Result<Arc<GpuBuf>> {
        let size = bytes.max(16).div_ceil(256) * 256;
        self.fits(size, what)?;
        let reuse = lock(&self.pool).get_mut(&size).and_then(|v| v.pop());
        if let Some(buf) = reuse {
            return Ok(Arc::new(GpuBuf {
                buf,
                bytes: size,
                mem: self.mem.clone(),
                pool: Some(self.pool.clone()),
                cache: None,
            }));
        }
        let buf = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.mem.add(size);
        Ok(Arc::new(GpuBuf {
            buf,
            bytes: size,
            mem: self.mem.clone(),
            pool: Some(self.pool.clone()),
            cache: None,
        }))
    }

    /// A storage buffer holding `data` (padded with zeros to a multiple of 4 bytes).
    pub(crate) fn storage_init(&self, data: &[u8], what: &str) -> Result<Arc<GpuBuf>> {
        self.storage_with(data.len() as u64, what, |dst| {
            dst[..data.len()].copy_from_slice(data);
        })
    }

    /// A storage buffer of `bytes` bytes (rounded up to 4) whose content `fill` writes into a
    /// zeroed host slice, copied into the mapped buffer.
    pub(crate) fn storage_with(
        &self,
        bytes: u64,
        what: &str,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<Arc<GpuBuf>> {
        let size = bytes.max(16).div_ceil(4) * 4;
        self.fits(size, what)?;
        let len = usize::try_from(size).map_err(|_| dev_err(format!("{what}: {size} bytes")))?;
        let mut host = vec![0u8; len];
        fill(&mut host);
        let buf = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: true,
        });
        {
            let mut view = buf
                .get_mapped_range_mut(..)
                .map_err(|e| dev_err(format!("{what}: mapping a new buffer failed: {e}")))?;
            view.copy_from_slice(&host);
        }
        buf.unmap();
        self.mem.add(size);
        Ok(Arc::new(GpuBuf {
            buf,
            bytes: size,
            mem: self.mem.clone(),
            pool: None,
            cache: Some(self.bg_cache.clone()),
        }))
    }

    /// The pipeline of `key`, compiled from `source` on first use.
    pub(crate) fn pipeline(
        &self,
        key: &str,
        source: impl FnOnce() -> String,
    ) -> Result<Arc<wgpu::ComputePipeline>> {
        if let Some(p) = lock(&self.pipelines).get(key) {
            return Ok(p.clone());
        }
        let src = source();
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let desc = wgpu::ShaderModuleDescriptor {
            label: Some(key),
            source: wgpu::ShaderSource::Wgsl(src.into()),
        };
        let module = match self.trusted {
            0 => self.device.create_shader_module(desc),
            level => {
                let mut checks = wgpu::ShaderRuntimeChecks::checked();
                checks.force_loop_bounding = false;
                checks.int_div_checks = false;
                checks.bounds_checks = level < 2;
                // SAFETY: every loop of our kernels is bounded by a count from the uniform
                // parameters, and every divisor is a dimension the host checked to be non-zero
                // (the ring modulo is taken only when the ring size is non-zero). Level 2 also
                // drops wgpu's buffer bounds checks: every index is kept in range by explicit
                // guards, which the conformance suite exercises with poisoned outputs.
                unsafe { self.device.create_shader_module_trusted(desc, checks) }
            }
        };
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(key),
                layout: None,
                module: &module,
                entry_point: Some("main"),
                compilation_options: wgpu::PipelineCompilationOptions::default(),
                cache: None,
            });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(dev_err(format!("kernel '{key}' failed to build: {e}")));
        }
        let p = Arc::new(pipeline);
        lock(&self.pipelines).insert(key.to_string(), p.clone());
        lock(&self.keys).insert((*p).clone(), key.to_string());
        Ok(p)
    }

    /// A grid of `n` workgroups as (x, y) within the per-dimension limit; kernels flatten it.
    pub(crate) fn grid(&self, n: u64) -> Result<(u32, u32)> {
        let m = self.caps.max_groups as u64;
        let x = n.min(m);
        let y = n.div_ceil(x.max(1));
        if y > m {
            return Err(dev_err(format!(
                "{n} workgroups exceed the adapter's grid limit"
            )));
        }
        Ok((x as u32, y as u32))
    }

    /// Record one dispatch of `n_groups` workgroups (flattened over x and y) with `params` as
    /// its uniform at binding `param_binding`.
    pub(crate) fn dispatch(
        &self,
        pipeline: &wgpu::ComputePipeline,
        binds: &[Bind<'_>],
        param_binding: u32,
        params: &[u32],
        n_groups: u64,
    ) -> Result<()> {
        let (x, y) = self.grid(n_groups)?;
        self.dispatch_xy(pipeline, binds, param_binding, params, (x, y))
    }

    /// Record one dispatch of an explicit (x, y) grid.
    pub(crate) fn dispatch_xy(
        &self,
        pipeline: &wgpu::ComputePipeline,
        binds: &[Bind<'_>],
        param_binding: u32,
        params: &[u32],
        xy: (u32, u32),
    ) -> Result<()> {
        let Some(ht) = &self.host_timing else {
            return self.record(pipeline, binds, param_binding, params, xy);
        };
        let submit0 = ht[3].load(Ordering::Relaxed);
        let t = std::time::Instant::now();
        let r = self.record(pipeline, binds, param_binding, params, xy);
        let ns = t.elapsed().as_nanos() as u64;
        // Submissions this dispatch triggered are counted on their own.
        let submit = ht[3].load(Ordering::Relaxed) - submit0;
        ht[0].fetch_add(1, Ordering::Relaxed);
        ht[1].fetch_add(ns.saturating_sub(submit), Ordering::Relaxed);
        r
    }

    fn record(
        &self,
        pipeline: &wgpu::ComputePipeline,
        binds: &[Bind<'_>],
        param_binding: u32,
        params: &[u32],
        (x, y): (u32, u32),
    ) -> Result<()> {
        if x == 0 || y == 0 {
            return Ok(());
        }
        let mut pend = lock(&self.pending);
        if pend.params.len() >= SLOT * ARENA_SLOTS {
            self.flush_locked(&mut pend);
        }
        let off = pend.params.len();
        let mut bytes = [0u8; SLOT];
        for (i, v) in params.iter().enumerate().take(SLOT / 4) {
            bytes[i * 4..i * 4 + 4].copy_from_slice(&v.to_le_bytes());
        }
        pend.params.extend_from_slice(&bytes);
        let make = || {
            let mut entries: Vec<wgpu::BindGroupEntry<'_>> = binds
                .iter()
                .map(|&(binding, buf)| wgpu::BindGroupEntry {
                    binding,
                    resource: buf.as_entire_binding(),
                })
                .collect();
            entries.push(wgpu::BindGroupEntry {
                binding: param_binding,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: &self.arena,
                    offset: off as u64,
                    size: wgpu::BufferSize::new(SLOT as u64),
                }),
            });
            self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: None,
                layout: &pipeline.get_bind_group_layout(0),
                entries: &entries,
            })
        };
        let bg = if self.bg_cache_on {
            let key = BgKey {
                pipeline: pipeline.clone(),
                binds: binds.iter().map(|&(i, b)| (i, b.clone())).collect(),
                param_off: off as u64,
            };
            let mut cache = lock(&self.bg_cache);
            match cache.get(&key) {
                Some(bg) => bg.clone(),
                None => {
                    if cache.len() >= BG_CACHE_MAX {
                        cache.clear();
                    }
                    let bg = make();
                    cache.insert(key, bg.clone());
                    bg
                }
            }
        } else {
            make()
        };
        if let Some(prof) = &self.profile {
            let mut labels = lock(&prof.labels);
            if labels.len() >= PROFILE_PAIRS {
                drop(labels);
                self.flush_locked(&mut pend);
                labels = lock(&prof.labels);
            }
            let q = (labels.len() * 2) as u32;
            labels.push(lock(&self.keys).get(pipeline).cloned().unwrap_or_default());
            pend.pass = None;
            let enc = pend.enc.get_or_insert_with(|| {
                self.device
                    .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None })
            });
            let pass = enc
                .begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: None,
                    timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                        query_set: &prof.set,
                        beginning_of_pass_write_index: Some(q),
                        end_of_pass_write_index: Some(q + 1),
                    }),
                })
                .forget_lifetime();
            pend.pass = Some(pass);
        }
        let pass = pend.pass(&self.device);
        pass.set_pipeline(pipeline);
        pass.set_bind_group(0, &bg, &[]);
        pass.dispatch_workgroups(x, y, 1);
        let n = self.recorded.fetch_add(1, Ordering::Relaxed) + 1;
        if self.flush_every > 0 && n >= self.flush_every {
            self.flush_locked(&mut pend);
        }
        Ok(())
    }

    /// Record a buffer copy.
    pub(crate) fn copy(
        &self,
        src: &wgpu::Buffer,
        src_off: u64,
        dst: &wgpu::Buffer,
        dst_off: u64,
        size: u64,
    ) {
        if size == 0 {
            return;
        }
        let mut pend = lock(&self.pending);
        pend.encoder(&self.device)
            .copy_buffer_to_buffer(src, src_off, dst, dst_off, size);
    }

    fn flush_locked(&self, pend: &mut Pending) {
        let t0 = std::time::Instant::now();
        self.recorded.store(0, Ordering::Relaxed);
        // Ending the pass is where wgpu-core validates and encodes its commands.
        pend.pass = None;
        if !pend.params.is_empty() {
            // Staged writes run before the command buffers of the next submit, and after
            // everything submitted earlier: the arena can be reused batch after batch.
            self.queue.write_buffer(&self.arena, 0, &pend.params);
            pend.params.clear();
        }
        let n_prof = self
            .profile
            .as_ref()
            .map_or(0, |p| lock(&p.labels).len() as u64);
        if let (Some(prof), Some(enc)) = (&self.profile, pend.enc.as_mut())
            && n_prof > 0
        {
            enc.resolve_query_set(&prof.set, 0..(n_prof * 2) as u32, &prof.resolve, 0);
            enc.copy_buffer_to_buffer(&prof.resolve, 0, &prof.readback, 0, n_prof * 16);
        }
        if let Some(enc) = pend.enc.take() {
            let cb = enc.finish();
            let t = std::time::Instant::now();
            self.queue.submit(Some(cb));
            if let Some(ht) = &self.host_timing {
                ht[2].fetch_add(1, Ordering::Relaxed);
                ht[3].fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
                ht[4].fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
            }
        }
        if let Some(prof) = &self.profile
            && n_prof > 0
        {
            self.collect_profile(prof, n_prof);
        }
    }

    /// Wait for the submitted work and add its query pairs to the per-kernel totals.
    fn collect_profile(&self, prof: &Profile, n: u64) {
        let slice = prof.readback.slice(..n * 16);
        slice.map_async(wgpu::MapMode::Read, |_| {});
        if self
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .is_err()
        {
            return;
        }
        let period = self.queue.get_timestamp_period() as f64;
        let mut labels = lock(&prof.labels);
        if let Ok(view) = slice.get_mapped_range() {
            let ticks: &[u64] = bytemuck::cast_slice(&view);
            let mut totals = lock(&prof.totals);
            for (i, label) in labels.iter().enumerate() {
                let dt = ticks[2 * i + 1].saturating_sub(ticks[2 * i]) as f64 * period;
                let e = totals.entry(label.clone()).or_insert((0, 0.0));
                e.0 += 1;
                e.1 += dt;
            }
        }
        prof.readback.unmap();
        labels.clear();
    }

    /// Submit everything recorded so far.
    pub(crate) fn flush(&self) {
        let mut pend = lock(&self.pending);
        self.flush_locked(&mut pend);
    }

    /// Copy `bytes` bytes of `src` back to the host, after all recorded work.
    pub(crate) fn read(&self, src: &wgpu::Buffer, bytes: u64) -> Result<Vec<u8>> {
        self.check()?;
        let size = bytes.max(4).div_ceil(4) * 4;
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.copy(src, 0, &staging, 0, size);
        self.flush();
        let done = Arc::new(Mutex::new(None));
        {
            let done = done.clone();
            staging.map_async(wgpu::MapMode::Read, .., move |r| {
                *lock(&done) = Some(r);
            });
        }
        // Another thread polling the same device may be the one that runs this callback, a
        // moment after our own poll returned: poll again until it has run (a bounded number of
        // times; seen as a rare "mapping never completed" in the multi-threaded tests on lavapipe).
        let mut mapped = None;
        for _ in 0..MAP_POLLS {
            self.device
                .poll(wgpu::PollType::wait_indefinitely())
                .map_err(|e| dev_err(format!("waiting for the device: {e}")))?;
            mapped = lock(&done).take();
            if mapped.is_some() {
                break;
            }
            std::thread::yield_now();
        }
        self.check()?;
        match mapped {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(dev_err(format!("reading back a result: {e}"))),
            None => {
                return Err(dev_err(
                    "reading back a result: the mapping never completed",
                ));
            }
        }
        let out = {
            let view = staging
                .get_mapped_range(..)
                .map_err(|e| dev_err(format!("reading back a result: {e}")))?;
            view[..bytes as usize].to_vec()
        };
        staging.unmap();
        Ok(out)
    }
}
