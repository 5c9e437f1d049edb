//! The decode step as one CUDA graph: the model's single-token forward pass (~200 launches) is
//! recorded once by stream capture and replayed for every later token, so the device runs the
//! step's kernels back to back (with their programmatic-launch edges) without a host launch
//! between them, and the host issues two 4-byte writes and one graph launch per token.
//!
//! What makes a recording replayable at other positions:
//! - the step's changing inputs, the token id and the position, live in a device slot
//!   (`step`: [token, position]) written before each launch; the embedding reads the token
//!   there, `rope_cs` and the decode attention (`attn_dtc_*`) read the position there, and the
//!   attention derives its chunk from it as the host would;
//! - the attention's grid (its splits over the cached keys) depends on the position: a
//!   recording keeps each attention launch's shape, and a position that needs other splits is
//!   recorded anew (every 256 keys on a full-attention layer, until the splits saturate);
//! - every pool buffer handed out while recording belongs to the graph until it is replaced
//!   (the pool parks them instead of reusing them), and the logits are copied out of the
//!   graph's buffer into a fresh tensor after each launch, so a caller's tensors never alias
//!   the graph's;
//! - the KV caches are keyed by their device addresses and sizes.
//!
//! Anything not replayable (a host copy, a wait, a kernel that takes the position as an
//! argument) refuses to run while recording; the recording then fails, nothing has run, the
//! model runs the step plainly and recording stays off for this backend.
//! `GPTOSS_CUDA_GRAPH=0` turns recording off.

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use cudarc::driver::{CudaGraph, CudaSlice, sys};
use gptoss_backend::{BackendError, Result, Rope};

use crate::decode_attn::dtc_splits;
use crate::{BACKEND, CudaBackend, CudaKvCache, CudaTensor, DevBuf, Pool, dev_err};

/// Whether recording is on by default (`GPTOSS_CUDA_GRAPH=0` turns it off).
pub(crate) fn graph_default() -> bool {
    std::env::var("GPTOSS_CUDA_GRAPH").map_or(true, |v| v != "0")
}

/// One decode attention launch of a recording: what decides its grid.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct AttnShape {
    pub(crate) window: Option<usize>,
    pub(crate) heads: usize,
    pub(crate) kv_heads: usize,
    pub(crate) splits: usize,
}

impl AttnShape {
    fn fits(&self, pos: usize) -> bool {
        dtc_splits(pos, self.window, self.heads, self.kv_heads) == self.splits
    }
}

/// A KV cache as a recording sees it: its two device addresses and its slots.
type CacheKey = (u64, u64, usize);

/// A recording in progress.
pub(crate) struct Recording {
    caches: Vec<CacheKey>,
    attn: Vec<AttnShape>,
    /// The step's RoPE cos/sin tables (by the bits of the frequencies and attention factor),
    /// made from the slot's position by the recorded `rope_cs`.
    rope_tables: Vec<(Vec<u32>, DevBuf)>,
}

/// A recorded step, ready to replay.
struct StepGraph {
    graph: CudaGraph,
    caches: Vec<CacheKey>,
    attn: Vec<AttnShape>,
    /// The graph's logits buffer and shape.
    logits: (u64, usize, usize),
}

/// The backend's recording state.
#[derive(Default)]
pub(crate) struct StepState {
    /// [token, position] of the step being run (device).
    slot: Option<CudaSlice<u32>>,
    rec: Option<Recording>,
    graph: Option<SendGraph>,
    /// The backend's first single-token step was let run plainly (it makes the buffers and
    /// tables created on first use, which a recording must not); later ones may be recorded.
    warm: bool,
    /// Why recording failed, after which it stays off.
    failed: Option<String>,
    /// Steps recorded (and run) and steps replayed so far.
    recorded: usize,
    replayed: usize,
}

/// [`StepGraph`] behind the backend's mutex.
struct SendGraph(StepGraph);

// SAFETY: a CUDA graph and its executable are driver handles of the backend's context, usable
// from any thread that binds it (cudarc's launch does); the backend only touches them under its
// `step` mutex, so one thread at a time.
unsafe impl Send for SendGraph {}

/// Pool buffers owned by the recorded graph.
#[derive(Default)]
pub(crate) struct PoolGraphState {
    /// While recording: every buffer handed out (address, size class).
    recording: Option<Vec<(u64, usize)>>,
    /// Buffers the graph uses: returned to `parked`, not to the free lists.
    owned: HashSet<u64>,
    parked: Vec<(u64, usize)>,
}

impl Pool {
    /// Note a buffer handed out (while recording, it joins the graph).
    pub(crate) fn note_handed_out(&self, ptr: u64, class: usize) {
        if let Ok(mut g) = self.graph.lock()
            && let Some(r) = g.recording.as_mut()
        {
            r.push((ptr, class));
        }
    }

    /// Whether a returned buffer belongs to the graph (then it is parked, not freed).
    pub(crate) fn park_if_owned(&self, ptr: u64, class: usize) -> bool {
        match self.graph.lock() {
            Ok(mut g) if g.owned.contains(&ptr) => {
                g.parked.push((ptr, class));
                true
            }
            _ => false,
        }
    }

    /// The parked buffers, for the pool's own teardown.
    pub(crate) fn take_parked(&mut self) -> Vec<(u64, usize)> {
        self.graph
            .get_mut()
            .map(|g| std::mem::take(&mut g.parked))
            .unwrap_or_default()
    }

    fn begin_recording(&self) -> Result<()> {
        let mut g = self.graph.lock().map_err(|_| dev_err("pool poisoned"))?;
        g.recording = Some(Vec::new());
        Ok(())
    }

    /// The buffers handed out while recording become the graph's: those already returned
    /// leave the free lists for the parking lot.
    fn end_recording(&self) -> Result<()> {
        let mut g = self.graph.lock().map_err(|_| dev_err("pool poisoned"))?;
        let mut free = self.free.lock().map_err(|_| dev_err("pool poisoned"))?;
        for (ptr, class) in g.recording.take().unwrap_or_default() {
            if !g.owned.insert(ptr) {
                continue;
            }
            if let Some(list) = free.get_mut(&class)
                && let Some(i) = list.iter().position(|&p| p == ptr)
            {
                list.swap_remove(i);
                g.parked.push((ptr, class));
            }
        }
        Ok(())
    }

    /// The graph is gone: its buffers go back to the free lists (queued work that still uses
    /// them runs before any later use, in stream order).
    fn release_graph(&self) -> Result<()> {
        let mut g = self.graph.lock().map_err(|_| dev_err("pool poisoned"))?;
        let mut free = self.free.lock().map_err(|_| dev_err("pool poisoned"))?;
        g.recording = None;
        g.owned.clear();
        for (ptr, class) in g.parked.drain(..) {
            free.entry(class).or_default().push(ptr);
        }
        Ok(())
    }
}

fn cache_keys(be: &CudaBackend, caches: &[CudaKvCache]) -> Vec<CacheKey> {
    caches
        .iter()
        .map(|c| (be.ptr(&c.k), be.ptr(&c.v), c.cap))
        .collect()
}

impl CudaBackend {
    /// Whether a decode step is being recorded (operations that cannot be replayed refuse).
    pub(crate) fn recording(&self) -> bool {
        self.recording.load(Ordering::Relaxed)
    }

    /// An error for `what` while recording, else Ok.
    pub(crate) fn refuse_while_recording(&self, what: &str) -> Result<()> {
        if self.recording() {
            return Err(BackendError::Unsupported {
                backend: BACKEND.into(),
                what: format!("{what} in a recorded decode step (CUDA graph)"),
            });
        }
        Ok(())
    }

    /// While recording: the device address of the step slot ([token, position]).
    pub(crate) fn step_slot(&self) -> Result<u64> {
        let st = self
            .step
            .lock()
            .map_err(|_| dev_err("step state poisoned"))?;
        st.slot
            .as_ref()
            .map(|s| self.ptr(s))
            .ok_or_else(|| dev_err("no step slot while recording"))
    }

    /// While recording: note a decode attention launch's shape.
    pub(crate) fn note_attention(&self, shape: AttnShape) -> Result<()> {
        let mut st = self
            .step
            .lock()
            .map_err(|_| dev_err("step state poisoned"))?;
        st.rec
            .as_mut()
            .ok_or_else(|| dev_err("no recording"))?
            .attn
            .push(shape);
        Ok(())
    }

    /// While recording: the RoPE cos/sin table of the slot's position for `rope`, made by one
    /// recorded `rope_cs` launch per recording.
    pub(crate) fn recorded_rope_cs(&self, rope: &Rope) -> Result<u64> {
        let mut key: Vec<u32> = rope.inv_freq.iter().map(|f| f.to_bits()).collect();
        key.push(rope.attention_factor.to_bits());
        let mut st = self
            .step
            .lock()
            .map_err(|_| dev_err("step state poisoned"))?;
        let slot = st
            .slot
            .as_ref()
            .map(|s| self.ptr(s))
            .ok_or_else(|| dev_err("no step slot while recording"))?;
        let rec = st.rec.as_mut().ok_or_else(|| dev_err("no recording"))?;
        if let Some((_, buf)) = rec.rope_tables.iter().find(|(k, _)| *k == key) {
            return Ok(buf.ptr);
        }
        let half = rope.inv_freq.len();
        let buf = self.scratch(2 * half * 4)?;
        self.launch_rope_cs(rope, 0, buf.ptr, slot)?;
        let p = buf.ptr;
        rec.rope_tables.push((key, buf));
        Ok(p)
    }

    /// Whether this backend's settings give a recordable decode step: the kernels that read
    /// the slot (tensor-core decode attention, q/k/v with RoPE fused).
    fn step_recordable(&self) -> bool {
        self.step_graphs
            && self.decode_tc
            && !self.grouped_decode
            && self.decode_fuse
            && !self.int8_activations
    }

    /// Write the step slot (stream-ordered before what follows).
    fn write_slot(&self, slot: u64, token: u32, pos: usize) -> Result<()> {
        for (i, v) in [token, pos as u32].into_iter().enumerate() {
            // SAFETY: `slot` is the backend's live 2-word slot allocation; the write is queued
            // on the backend's stream.
            unsafe { sys::cuMemsetD32Async(slot + 4 * i as u64, v, 1, self.stream.cu_stream()) }
                .result()
                .map_err(dev_err)?;
        }
        Ok(())
    }

    /// The logits of a launch, copied from the graph's buffer into a fresh tensor.
    fn copy_logits(&self, (src, rows, cols): (u64, usize, usize)) -> Result<CudaTensor> {
        let out = self.tensor(rows, cols)?;
        // SAFETY: both are live device allocations of at least rows * cols f32s (`src` is
        // owned by the graph, parked in the pool); queued on the backend's stream.
        unsafe {
            cudarc::driver::result::memcpy_dtod_async(
                out.buf.ptr,
                src,
                rows * cols * 4,
                self.stream.cu_stream(),
            )
        }
        .map_err(dev_err)?;
        Ok(out)
    }

    /// [`gptoss_backend::Backend::step_replay`].
    pub(crate) fn step_replay_impl(
        &self,
        caches: &mut [CudaKvCache],
        token: u32,
        pos: usize,
    ) -> Result<Option<CudaTensor>> {
        if !self.step_graphs || pos > i32::MAX as usize {
            return Ok(None);
        }
        let mut st = self
            .step
            .lock()
            .map_err(|_| dev_err("step state poisoned"))?;
        let (Some(SendGraph(g)), Some(slot)) = (st.graph.as_ref(), st.slot.as_ref()) else {
            return Ok(None);
        };
        if caches
            .iter()
            .any(|c| c.len != pos || pos >= c.cfg.max_positions)
            || g.caches != cache_keys(self, caches)
            || !g.attn.iter().all(|a| a.fits(pos))
        {
            return Ok(None);
        }
        self.write_slot(self.ptr(slot), token, pos)?;
        g.graph.launch().map_err(dev_err)?;
        let out = self.copy_logits(g.logits)?;
        for c in caches.iter_mut() {
            c.len = pos + 1;
        }
        st.replayed += 1;
        Ok(Some(out))
    }

    /// [`gptoss_backend::Backend::step_record_begin`].
    pub(crate) fn step_record_begin_impl(
        &self,
        caches: &[CudaKvCache],
        token: u32,
        pos: usize,
    ) -> Result<bool> {
        if !self.step_recordable() || pos > i32::MAX as usize {
            return Ok(false);
        }
        let mut st = self
            .step
            .lock()
            .map_err(|_| dev_err("step state poisoned"))?;
        if st.failed.is_some() || caches.iter().any(|c| c.len != pos) {
            return Ok(false);
        }
        if !st.warm {
            // The first single-token step runs plainly: it makes what the kernels create on
            // first use (tickets, tables), which a recording must not.
            st.warm = true;
            return Ok(false);
        }
        // The previous graph's buffers are free again once it is gone.
        st.graph = None;
        self.pool.release_graph()?;
        if st.slot.is_none() {
            st.slot = Some(self.stream.alloc_zeros::<u32>(2).map_err(dev_err)?);
        }
        let slot = st.slot.as_ref().map(|s| self.ptr(s)).unwrap_or(0);
        self.write_slot(slot, token, pos)?;
        self.pool.begin_recording()?;
        st.rec = Some(Recording {
            caches: cache_keys(self, caches),
            attn: Vec::new(),
            rope_tables: Vec::new(),
        });
        if let Err(e) = self
            .stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED)
        {
            st.rec = None;
            st.failed = Some(format!("stream capture did not begin: {e:?}"));
            self.pool.release_graph()?;
            return Ok(false);
        }
        self.recording.store(true, Ordering::Relaxed);
        Ok(true)
    }

    /// [`gptoss_backend::Backend::step_record_end`].
    pub(crate) fn step_record_end_impl(
        &self,
        caches: &mut [CudaKvCache],
        pos: usize,
        logits: Option<CudaTensor>,
    ) -> Result<Option<CudaTensor>> {
        // Always end the capture, so the stream leaves capture mode whatever happened.
        let captured = self.stream.end_capture(sys::CUgraphInstantiate_flags(0));
        self.recording.store(false, Ordering::Relaxed);
        let mut st = self
            .step
            .lock()
            .map_err(|_| dev_err("step state poisoned"))?;
        let rec = st.rec.take();
        self.pool.end_recording()?;
        match (logits, captured, rec) {
            (Some(l), Ok(Some(graph)), Some(rec)) => {
                graph.launch().map_err(dev_err)?;
                let g = StepGraph {
                    graph,
                    caches: rec.caches,
                    attn: rec.attn,
                    logits: (l.buf.ptr, l.rows, l.cols),
                };
                let out = self.copy_logits(g.logits)?;
                st.graph = Some(SendGraph(g));
                st.recorded += 1;
                Ok(Some(out))
            }
            (logits, captured, _) => {
                st.failed = Some(match (&logits, captured) {
                    (None, _) => "an operation of the step cannot be recorded".into(),
                    (_, Err(e)) => format!("stream capture failed: {e:?}"),
                    _ => "stream capture gave no graph".into(),
                });
                drop(logits);
                self.pool.release_graph()?;
                for c in caches.iter_mut() {
                    c.len = pos;
                }
                Ok(None)
            }
        }
    }

    /// Drop the recorded step (a buffer it uses is about to be replaced); the next step is
    /// recorded anew.
    pub(crate) fn forget_step_graph(&self) -> Result<()> {
        let mut st = self
            .step
            .lock()
            .map_err(|_| dev_err("step state poisoned"))?;
        if st.graph.take().is_some() {
            self.pool.release_graph()?;
        }
        Ok(())
    }

    /// Decode steps recorded as a graph (and run) and steps replayed from one, so far.
    pub fn step_graph_counts(&self) -> (usize, usize) {
        self.step
            .lock()
            .map(|s| (s.recorded, s.replayed))
            .unwrap_or((0, 0))
    }

    /// Why recording the decode step failed, if it did (recording is then off).
    pub fn step_graph_error(&self) -> Option<String> {
        self.step.lock().ok().and_then(|s| s.failed.clone())
    }

    /// Record and replay the decode step as a CUDA graph (default on; `GPTOSS_CUDA_GRAPH=0`
    /// turns it off): see the module doc of step_graph.rs.
    pub fn set_step_graphs(&mut self, on: bool) {
        self.step_graphs = on;
    }
}
