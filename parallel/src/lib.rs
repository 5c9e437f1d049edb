//! Tensor and expert parallelism for gptoss-rs: [`SplitBackend`] is one [`Backend`] made of several ranks
//! (one backend per GPU), so `gptoss_model::Model` runs on it unchanged.
//!
//! How the network is split over R ranks (Megatron-style, two all-reduces per layer):
//! - attention by heads: each rank holds `n_heads/R` query heads and `n_kv_heads/R` key/value
//!   heads (their rows of `attn_q/k/v`, their biases and sinks, and a KV cache of only those
//!   heads); `attn_output` is split by its input columns, so each rank's product is a partial
//!   sum; the partial sums are added by the [`Collective`], with the output bias added once (on
//!   rank 0).
//! - the MoE by experts ([`MoeSplit::Experts`], the default): rank r holds the r-th contiguous
//!   share of the experts (its slabs of the six expert tensors, each a contiguous byte range of
//!   the file, so only that share is read from the memory map), the router is replicated. Every
//!   rank computes the router logits and the top-k over all experts (identical on every rank),
//!   then applies only its own picks with their routing weights ([`Backend::moe_local`]); the
//!   partial outputs are all-reduced. Each expert's product is computed by the same kernels on
//!   the same rows as on one device, so the result differs from one device only in the order of
//!   the sum over a token's k picks. Needs `n_experts % ranks == 0`; otherwise the layer falls
//!   back to the split by width, and [`Backend::name`] says so.
//! - the MoE by expert width ([`MoeSplit::Ffn`]): each rank holds every expert, but only a
//!   block-aligned share of `d_ff` (rows of gate/up and their biases, input columns of down);
//!   the SwiGLU-style activation is elementwise in `d_ff`, so each rank's MoE output is an exact
//!   partial sum of the full one. The router is replicated (every rank picks the same experts),
//!   the down bias lives on rank 0 only (the others get zeros), and the partial outputs are
//!   all-reduced. This needs nothing new from the backends' `moe`.
//! - embedding, norms, router and output matrix are replicated; the residual stream is
//!   replicated, so every rank runs the replicated operations on identical inputs.
//!
//! Each rank receives only its share of each split weight: the bytes are cut on the host before
//! upload ([`shard`]).
#![warn(missing_docs)]

pub mod collective;
pub mod shard;

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use gptoss_backend::{
    AttentionConfig, Backend, BackendError, KvCacheConfig, MoeConfig, MoeWeights, Result, Rope,
    WeightData,
};

pub use collective::{Collective, HostCollective};

/// The ggml block width every split of `d_ff` is aligned to (MXFP4 and Q8_0 blocks are 32
/// wide), so that `ffn_down_exps`' input columns are cut on block boundaries.
pub const FF_ALIGN: usize = 32;

/// How the MoE blocks are spread over the ranks (see the crate documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MoeSplit {
    /// Expert parallelism: each rank holds `n_experts / ranks` whole experts.
    #[default]
    Experts,
    /// Each rank holds a share of every expert's width `d_ff`.
    Ffn,
}

impl std::str::FromStr for MoeSplit {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "experts" | "expert" | "ep" => Ok(MoeSplit::Experts),
            "ffn" | "width" | "dff" => Ok(MoeSplit::Ffn),
            _ => Err(format!(
                "'{s}' is not an MoE split (expected 'experts' or 'ffn')"
            )),
        }
    }
}

/// How a split weight is distributed over the ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Every rank holds the whole tensor.
    Replicated,
    /// Rank r holds the r-th share of the output features (rows; for a vector, its elements).
    Rows,
    /// Rank r holds the r-th share of the input features (columns): products are partial sums.
    Cols,
    /// A piece of a layer's MoE block: the parts live in the layer's [`MoeSlot`].
    Moe,
}

/// How an activation is distributed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// Every rank holds the same whole matrix.
    Replicated,
    /// Rank r holds the r-th share of the columns (its heads).
    Heads,
}

/// A weight of a [`SplitBackend`]: one part per rank.
pub struct SplitWeight<W> {
    parts: Vec<W>,
    role: Role,
    moe: Option<Arc<MoeSlot<W>>>,
}

/// The GGUF names of the eight MoE tensors of a layer, in [`MoeWeights`] field order.
const MOE_PIECES: [&str; 8] = [
    "ffn_gate_inp.weight",
    "ffn_gate_inp.bias",
    "ffn_gate_exps.weight",
    "ffn_gate_exps.bias",
    "ffn_up_exps.weight",
    "ffn_up_exps.bias",
    "ffn_down_exps.weight",
    "ffn_down_exps.bias",
];

/// One layer's MoE weights as each rank's backend needs them: `moe` takes a whole
/// `MoeWeights<W>`, so the eight pieces are gathered here as they are uploaded, and each of the
/// eight [`SplitWeight`]s the model holds points at the same slot.
struct MoeSlot<W> {
    layer: String,
    ready: OnceLock<ReadyMoe<W>>,
}

/// A complete layer's MoE weights, per rank.
struct ReadyMoe<W> {
    weights: Vec<MoeWeights<W>>,
    /// Each rank's experts when split by experts; `None` when every rank holds all of them
    /// (split by width, or one rank).
    experts: Option<Vec<Range<usize>>>,
}

/// The pieces of a layer's MoE block uploaded so far.
struct PendingMoe<W> {
    slot: Arc<MoeSlot<W>>,
    pieces: [Option<Vec<W>>; 8],
    /// The expert ranges the expert pieces were cut with (all of a layer's must agree).
    experts: Option<Option<Vec<Range<usize>>>>,
}

/// An activation of a [`SplitBackend`]: one part per rank.
pub struct SplitTensor<T> {
    parts: Vec<T>,
    layout: Layout,
}

impl<T> SplitTensor<T> {
    /// The per-rank parts (the whole matrix on each rank, or each rank's columns).
    pub fn parts(&self) -> &[T] {
        &self.parts
    }
}

/// A layer's KV cache: each rank's cache of its own key/value heads.
pub struct SplitKvCache<K> {
    parts: Vec<K>,
}

/// Row counts of a layer's `attn_q` / `attn_k`, kept until its sinks reveal the head count.
#[derive(Default, Clone, Copy)]
struct LayerRows {
    q: Option<usize>,
    k: Option<usize>,
}

/// One [`Backend`] spread over several ranks (see the crate documentation for the split).
pub struct SplitBackend<B: Backend, C: Collective<B>> {
    ranks: Arc<Vec<B>>,
    collective: C,
    rows: Mutex<HashMap<String, LayerRows>>,
    pending_moe: Mutex<HashMap<String, PendingMoe<B::Weight>>>,
    moe_split: MoeSplit,
    /// Why some layer's experts could not be split by experts (then split by width).
    fallback: Mutex<Option<String>>,
    bytes: Arc<UploadedBytes>,
}

/// Weight bytes uploaded to each rank: all of them, and those of the six expert tensors.
struct UploadedBytes {
    all: Vec<AtomicU64>,
    experts: Vec<AtomicU64>,
}

fn shape_err(op: &'static str, detail: String) -> BackendError {
    BackendError::Shape { op, detail }
}

/// Per-rank peak memory of a [`SplitBackend`]'s ranks, readable after the backend itself was
/// handed to a model (and even after the model is gone).
pub struct RankMemory<B>(Arc<Vec<B>>, Arc<UploadedBytes>);

impl<B: Backend> RankMemory<B> {
    /// `(rank name, peak bytes)` for each rank.
    pub fn peaks(&self) -> Vec<(String, Option<u64>)> {
        self.0
            .iter()
            .map(|b| (b.name(), b.peak_memory_bytes()))
            .collect()
    }

    /// Weight bytes (in their file formats) uploaded to each rank so far.
    pub fn weight_bytes(&self) -> Vec<u64> {
        self.1
            .all
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .collect()
    }

    /// Of [`RankMemory::weight_bytes`], those of the MoE expert tensors (gate, up, down and
    /// their biases; not the router).
    pub fn expert_bytes(&self) -> Vec<u64> {
        self.1
            .experts
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .collect()
    }
}

impl<B: Backend, C: Collective<B>> SplitBackend<B, C> {
    /// Spread over `ranks` (at least one), combining partial sums with `collective`; the MoE
    /// split by experts (see [`SplitBackend::with_moe_split`]).
    pub fn new(ranks: Vec<B>, collective: C) -> Result<Self> {
        if ranks.is_empty() {
            return Err(BackendError::Unavailable {
                backend: "split".into(),
                reason: "no ranks given".into(),
            });
        }
        let n = ranks.len();
        let counters = || (0..n).map(|_| AtomicU64::new(0)).collect();
        Ok(SplitBackend {
            ranks: Arc::new(ranks),
            collective,
            rows: Mutex::new(HashMap::new()),
            pending_moe: Mutex::new(HashMap::new()),
            moe_split: MoeSplit::default(),
            fallback: Mutex::new(None),
            bytes: Arc::new(UploadedBytes {
                all: counters(),
                experts: counters(),
            }),
        })
    }

    /// Choose how the MoE blocks are split (before any upload).
    pub fn with_moe_split(mut self, split: MoeSplit) -> Self {
        self.moe_split = split;
        self
    }

    /// The MoE split in effect: the one asked for, except that a split by experts falls back
    /// to the split by width (with the reason) when some layer's experts do not divide over
    /// the ranks.
    pub fn moe_split(&self) -> (MoeSplit, Option<String>) {
        let fallback = self.fallback.lock().ok().and_then(|f| f.clone());
        match fallback {
            Some(why) => (MoeSplit::Ffn, Some(why)),
            None => (self.moe_split, None),
        }
    }

    /// Number of ranks.
    pub fn world_size(&self) -> usize {
        self.ranks.len()
    }

    /// The ranks' backends.
    pub fn ranks(&self) -> &[B] {
        &self.ranks
    }

    /// A handle on the ranks' peak memory that outlives the hand-over of this backend.
    pub fn memory(&self) -> RankMemory<B> {
        RankMemory(self.ranks.clone(), self.bytes.clone())
    }

    /// Upload `w` to rank `r`, counting its bytes.
    fn put(&self, r: usize, b: &B, w: &WeightData) -> Result<B::Weight> {
        let up = b.upload(w)?;
        self.bytes.all[r].fetch_add(w.bytes.len() as u64, Ordering::Relaxed);
        Ok(up)
    }

    /// Run `f` on every rank (its device made current first), collecting the results.
    fn each<T>(&self, mut f: impl FnMut(usize, &B) -> Result<T>) -> Result<Vec<T>> {
        self.ranks
            .iter()
            .enumerate()
            .map(|(r, b)| {
                b.make_current()?;
                f(r, b)
            })
            .collect()
    }

    fn replicate(&self, w: &WeightData) -> Result<SplitWeight<B::Weight>> {
        Ok(SplitWeight {
            parts: self.each(|r, b| self.put(r, b, w))?,
            role: Role::Replicated,
            moe: None,
        })
    }

    /// Upload rank r's share `cut(w, r)`.
    fn scatter(
        &self,
        role: Role,
        mut cut: impl FnMut(usize) -> Result<WeightData>,
    ) -> Result<SplitWeight<B::Weight>> {
        Ok(SplitWeight {
            parts: self.each(|r, b| self.put(r, b, &cut(r)?))?,
            role,
            moe: None,
        })
    }

    /// Equal shares of `n`, each a multiple of `align`, or an error naming the tensor.
    fn equal_shares(
        &self,
        w: &WeightData,
        n: usize,
        align: usize,
        what: &str,
    ) -> Result<Vec<std::ops::Range<usize>>> {
        let r = self.world_size();
        if !n.is_multiple_of(r) || !(n / r).is_multiple_of(align) {
            return Err(shape_err(
                "split upload",
                format!(
                    "{}: {n} {what} cannot be split evenly over {r} ranks{}",
                    w.name,
                    if align > 1 {
                        format!(" in whole blocks of {align}")
                    } else {
                        String::new()
                    }
                ),
            ));
        }
        Ok((0..r).map(|i| i * n / r..(i + 1) * n / r).collect())
    }

    /// The `d_ff` shares of an MoE tensor whose `d_ff` is `ff`.
    fn ff_shares(&self, w: &WeightData, ff: usize) -> Result<Vec<std::ops::Range<usize>>> {
        let r = self.world_size();
        shard::split_aligned(ff, FF_ALIGN, r).ok_or_else(|| {
            shape_err(
                "split upload",
                format!(
                    "{}: expert width {ff} cannot be split over {r} ranks in whole blocks of \
                     {FF_ALIGN} (needs a multiple of {FF_ALIGN} with at least {r} blocks)",
                    w.name
                ),
            )
        })
    }

    /// The expert shares of an expert tensor whose expert count is `n` (the last dimension),
    /// or `None` to split it by width (asked for, or `n` does not divide: noted for the name).
    fn expert_shares(&self, w: &WeightData, n: usize) -> Option<Vec<Range<usize>>> {
        let r = self.world_size();
        if self.moe_split != MoeSplit::Experts || r == 1 {
            return None;
        }
        if n == 0 || !n.is_multiple_of(r) {
            if let Ok(mut f) = self.fallback.lock() {
                f.get_or_insert_with(|| {
                    format!("{}: {n} experts do not divide over {r} ranks", w.name)
                });
            }
            return None;
        }
        Some((0..r).map(|i| i * n / r..(i + 1) * n / r).collect())
    }

    /// Upload each rank's share of one MoE tensor (`what` is its name within the layer), and
    /// the expert ranges it was cut by (`None` for the router, `Some(None)` for an expert
    /// tensor not split by experts).
    #[allow(clippy::type_complexity)]
    fn upload_moe_piece(
        &self,
        w: &WeightData,
        what: &str,
    ) -> Result<(Vec<B::Weight>, Option<Option<Vec<Range<usize>>>>)> {
        let dims = w.shape.len();
        let split = self.world_size() > 1;
        let expert_piece = !what.starts_with("ffn_gate_inp.");
        let by_experts = match (expert_piece, w.shape.last()) {
            (true, Some(&n)) if dims >= 2 => self.expert_shares(w, n),
            _ => None,
        };
        // Bytes this piece puts on each rank.
        let uploaded: Vec<AtomicU64> = (0..self.world_size()).map(|_| AtomicU64::new(0)).collect();
        let counted = |r: usize, w: WeightData| -> Result<WeightData> {
            uploaded[r].fetch_add(w.bytes.len() as u64, Ordering::Relaxed);
            Ok(w)
        };
        let parts = match what {
            _ if by_experts.is_some() => {
                let s = by_experts.as_ref().expect("matched Some");
                self.scatter(Role::Moe, |r| {
                    counted(r, shard::slice_last(w, s[r].clone())?)
                })?
            }
            "ffn_gate_exps.weight" | "ffn_up_exps.weight" if split && dims == 3 => {
                let s = self.ff_shares(w, w.shape[1])?;
                self.scatter(Role::Moe, |r| {
                    counted(r, shard::slice_ne1(w, s[r].clone())?)
                })?
            }
            "ffn_gate_exps.bias" | "ffn_up_exps.bias" if split && dims == 2 => {
                let s = self.ff_shares(w, w.shape[0])?;
                self.scatter(Role::Moe, |r| {
                    counted(r, shard::slice_ne0(w, s[r].clone())?)
                })?
            }
            "ffn_down_exps.weight" if split && dims == 3 => {
                let s = self.ff_shares(w, w.shape[0])?;
                self.scatter(Role::Moe, |r| {
                    counted(r, shard::slice_ne0(w, s[r].clone())?)
                })?
            }
            "ffn_down_exps.bias" if split => {
                // Each rank's MoE output is a partial sum: the bias must enter it once.
                let zeros = shard::zeros_like(w);
                self.scatter(Role::Moe, |r| {
                    counted(r, if r == 0 { w.clone() } else { zeros.clone() })
                })?
            }
            // One rank, or a split by width that keeps this piece whole.
            _ if expert_piece => self.scatter(Role::Moe, |r| counted(r, w.clone()))?,
            // The router is replicated.
            _ => self.replicate(w)?,
        };
        if expert_piece {
            for (r, n) in uploaded.iter().enumerate() {
                self.bytes.experts[r].fetch_add(n.load(Ordering::Relaxed), Ordering::Relaxed);
            }
        }
        let cut = expert_piece.then_some(by_experts);
        Ok((parts.parts, cut))
    }

    /// File one MoE piece in its layer's slot; the eighth completes the slot.
    fn file_moe_piece(
        &self,
        w: &WeightData,
        layer: &str,
        piece: usize,
        parts: Vec<B::Weight>,
        cut: Option<Option<Vec<Range<usize>>>>,
    ) -> Result<SplitWeight<B::Weight>> {
        let mut pending = self
            .pending_moe
            .lock()
            .map_err(|_| shape_err("split upload", "MoE bookkeeping poisoned".into()))?;
        let entry = pending
            .entry(layer.to_string())
            .or_insert_with(|| PendingMoe {
                slot: Arc::new(MoeSlot {
                    layer: layer.to_string(),
                    ready: OnceLock::new(),
                }),
                pieces: Default::default(),
                experts: None,
            });
        if entry.pieces[piece].is_some() || entry.slot.ready.get().is_some() {
            return Err(shape_err(
                "split upload",
                format!("{}: uploaded twice", w.name),
            ));
        }
        if let Some(cut) = cut {
            match &entry.experts {
                Some(prev) if *prev != cut => {
                    return Err(shape_err(
                        "split upload",
                        format!(
                            "{}: cut by experts {cut:?}, but the layer's other expert tensors \
                             by {prev:?}",
                            w.name
                        ),
                    ));
                }
                _ => entry.experts = Some(cut),
            }
        }
        entry.pieces[piece] = Some(parts);
        let slot = entry.slot.clone();
        if entry.pieces.iter().all(Option::is_some) {
            let mut done = pending.remove(layer).expect("entry exists: just filled");
            let mut iters: Vec<_> = std::mem::take(&mut done.pieces)
                .into_iter()
                .map(|p| p.expect("all present: checked").into_iter())
                .collect();
            let mut per_rank = Vec::with_capacity(self.world_size());
            for _ in 0..self.world_size() {
                let mut next = || {
                    iters
                        .iter_mut()
                        .map(|i| i.next())
                        .collect::<Option<Vec<_>>>()
                };
                let Some(mut v) = next() else {
                    return Err(shape_err("split upload", "a piece lacks a rank".into()));
                };
                let mut take = || v.remove(0);
                per_rank.push(MoeWeights {
                    router: take(),
                    router_bias: take(),
                    gate: take(),
                    gate_bias: take(),
                    up: take(),
                    up_bias: take(),
                    down: take(),
                    down_bias: take(),
                });
            }
            // Cannot fail: the slot was checked empty above, under the same lock.
            let _ = slot.ready.set(ReadyMoe {
                weights: per_rank,
                experts: done.experts.flatten(),
            });
        }
        Ok(SplitWeight {
            parts: Vec::new(),
            role: Role::Moe,
            moe: Some(slot),
        })
    }

    /// Remember a layer's q/k rows; at its sinks, check that heads divide over the ranks.
    fn note_rows(&self, layer: &str, q: Option<usize>, k: Option<usize>) -> Result<LayerRows> {
        let mut map = self
            .rows
            .lock()
            .map_err(|_| shape_err("split upload", "head bookkeeping poisoned".into()))?;
        let e = map.entry(layer.to_string()).or_default();
        e.q = q.or(e.q);
        e.k = k.or(e.k);
        Ok(*e)
    }

    fn check_heads(&self, w: &WeightData, layer: &str, n_heads: usize) -> Result<()> {
        let r = self.world_size();
        let fail = |d: String| Err(shape_err("split upload", format!("{}: {d}", w.name)));
        if n_heads == 0 || !n_heads.is_multiple_of(r) {
            return fail(format!(
                "{n_heads} attention heads cannot be split evenly over {r} ranks"
            ));
        }
        let rows = self.note_rows(layer, None, None)?;
        if let (Some(q), Some(k)) = (rows.q, rows.k) {
            if !q.is_multiple_of(n_heads) {
                return fail(format!("{q} query rows are not {n_heads} whole heads"));
            }
            let hd = q / n_heads;
            if hd == 0 || !k.is_multiple_of(hd) {
                return fail(format!("{k} key rows are not whole heads of {hd}"));
            }
            let n_kv = k / hd;
            if n_kv == 0 || !n_kv.is_multiple_of(r) {
                return fail(format!(
                    "{n_kv} key/value heads cannot be split evenly over {r} ranks"
                ));
            }
        }
        Ok(())
    }

    fn heads_per_rank(&self, op: &'static str, n: usize, what: &str) -> Result<usize> {
        let r = self.world_size();
        if n == 0 || !n.is_multiple_of(r) {
            return Err(shape_err(
                op,
                format!("{n} {what} cannot be split evenly over {r} ranks"),
            ));
        }
        Ok(n / r)
    }

    fn expect_layout(op: &'static str, t: &SplitTensor<B::Tensor>, want: Layout) -> Result<()> {
        if t.layout != want {
            return Err(shape_err(
                op,
                format!("input is split as {:?}, expected {want:?}", t.layout),
            ));
        }
        Ok(())
    }

    fn expect_role(op: &'static str, w: &SplitWeight<B::Weight>, want: Role) -> Result<()> {
        if w.role != want {
            return Err(shape_err(
                op,
                format!("weight is split as {:?}, expected {want:?}", w.role),
            ));
        }
        Ok(())
    }
}

/// Rank `r`'s part of a (weight, optional bias) pair.
fn rank_pair<'a, W>(
    r: usize,
    (w, b): (&'a SplitWeight<W>, Option<&'a SplitWeight<W>>),
) -> (&'a W, Option<&'a W>) {
    (&w.parts[r], b.map(|b| &b.parts[r]))
}

/// `blk.N.` prefix and the rest of a tensor name, if it is a layer tensor.
fn layer_of(name: &str) -> Option<(&str, &str)> {
    let rest = name.strip_prefix("blk.")?;
    let dot = rest.find('.')?;
    rest[..dot].parse::<usize>().ok()?;
    Some((&name[..4 + dot + 1], &rest[dot + 1..]))
}

impl<B: Backend, C: Collective<B>> Backend for SplitBackend<B, C> {
    type Tensor = SplitTensor<B::Tensor>;
    type Weight = SplitWeight<B::Weight>;
    type KvCache = SplitKvCache<B::KvCache>;

    fn name(&self) -> String {
        let names: Vec<String> = self.ranks.iter().map(|b| b.name()).collect();
        let moe = match self.moe_split() {
            (MoeSplit::Experts, _) => "MoE by experts".to_string(),
            (MoeSplit::Ffn, None) => "MoE by expert width".to_string(),
            (MoeSplit::Ffn, Some(why)) => format!("MoE by expert width (fallback: {why})"),
        };
        format!(
            "split x{} [{moe}, attention by heads] ({}; {})",
            self.world_size(),
            names.join(", "),
            self.collective.name()
        )
    }

    fn upload(&self, w: &WeightData) -> Result<Self::Weight> {
        let Some((layer, what)) = layer_of(&w.name) else {
            return self.replicate(w);
        };
        if let Some(piece) = MOE_PIECES.iter().position(|p| *p == what) {
            let (parts, cut) = self.upload_moe_piece(w, what)?;
            return self.file_moe_piece(w, layer, piece, parts, cut);
        }
        let dims = w.shape.len();
        match what {
            "attn_q.weight" | "attn_k.weight" | "attn_v.weight" if dims == 2 => {
                let n = w.shape[1];
                if what == "attn_q.weight" {
                    self.note_rows(layer, Some(n), None)?;
                } else if what == "attn_k.weight" {
                    self.note_rows(layer, None, Some(n))?;
                }
                let s = self.equal_shares(w, n, 1, "output rows")?;
                self.scatter(Role::Rows, |r| shard::slice_ne1(w, s[r].clone()))
            }
            "attn_q.bias" | "attn_k.bias" | "attn_v.bias" | "attn_sinks.weight" if dims == 1 => {
                let n = w.shape[0];
                if what == "attn_sinks.weight" {
                    self.check_heads(w, layer, n)?;
                }
                let s = self.equal_shares(w, n, w.dtype.block_size(), "values")?;
                self.scatter(Role::Rows, |r| shard::slice_ne0(w, s[r].clone()))
            }
            "attn_output.weight" if dims == 2 => {
                let s = self.equal_shares(w, w.shape[0], w.dtype.block_size(), "input columns")?;
                self.scatter(Role::Cols, |r| shard::slice_ne0(w, s[r].clone()))
            }
            _ => self.replicate(w),
        }
    }

    fn from_host(&self, data: &[f32], rows: usize, cols: usize) -> Result<Self::Tensor> {
        Ok(SplitTensor {
            parts: self.each(|_, b| b.from_host(data, rows, cols))?,
            layout: Layout::Replicated,
        })
    }

    fn to_host(&self, t: &Self::Tensor) -> Result<(Vec<f32>, usize, usize)> {
        match t.layout {
            Layout::Replicated => {
                self.ranks[0].make_current()?;
                self.ranks[0].to_host(&t.parts[0])
            }
            Layout::Heads => {
                // Gather the column shares (debugging and tests; the model never needs it).
                let parts = self.each(|r, b| b.to_host(&t.parts[r]))?;
                let rows = parts[0].1;
                let cols: usize = parts.iter().map(|p| p.2).sum();
                let mut out = Vec::with_capacity(rows * cols);
                for i in 0..rows {
                    for (d, _, c) in &parts {
                        out.extend_from_slice(&d[i * c..(i + 1) * c]);
                    }
                }
                Ok((out, rows, cols))
            }
        }
    }

    fn embed(&self, table: &Self::Weight, ids: &[u32]) -> Result<Self::Tensor> {
        Self::expect_role("embed", table, Role::Replicated)?;
        Ok(SplitTensor {
            parts: self.each(|r, b| b.embed(&table.parts[r], ids))?,
            layout: Layout::Replicated,
        })
    }

    fn rms_norm(&self, x: &Self::Tensor, weight: &Self::Weight, eps: f32) -> Result<Self::Tensor> {
        Self::expect_layout("rms_norm", x, Layout::Replicated)?;
        Self::expect_role("rms_norm", weight, Role::Replicated)?;
        Ok(SplitTensor {
            parts: self.each(|r, b| b.rms_norm(&x.parts[r], &weight.parts[r], eps))?,
            layout: Layout::Replicated,
        })
    }

    fn linear(
        &self,
        x: &Self::Tensor,
        w: &Self::Weight,
        bias: Option<&Self::Weight>,
    ) -> Result<Self::Tensor> {
        let bias_role = bias.map(|b| b.role);
        match (x.layout, w.role) {
            (Layout::Replicated, Role::Replicated | Role::Rows) => {
                if bias_role.is_some_and(|r| r != w.role) {
                    return Err(shape_err(
                        "linear",
                        format!("bias split as {bias_role:?}, weight as {:?}", w.role),
                    ));
                }
                let parts = self
                    .each(|r, b| b.linear(&x.parts[r], &w.parts[r], bias.map(|bb| &bb.parts[r])))?;
                let layout = if w.role == Role::Rows {
                    Layout::Heads
                } else {
                    Layout::Replicated
                };
                Ok(SplitTensor { parts, layout })
            }
            (Layout::Heads, Role::Cols) => {
                if bias_role.is_some_and(|r| r != Role::Replicated) {
                    return Err(shape_err(
                        "linear",
                        format!("bias of a column-split product split as {bias_role:?}"),
                    ));
                }
                // Partial products over each rank's input columns; the bias joins rank 0's
                // part only, so the sum holds it once.
                let mut parts = self.each(|r, b| {
                    let bb = if r == 0 {
                        bias.map(|bb| &bb.parts[0])
                    } else {
                        None
                    };
                    b.linear(&x.parts[r], &w.parts[r], bb)
                })?;
                if self.world_size() > 1 {
                    self.collective.all_reduce_sum(&self.ranks, &mut parts)?;
                }
                Ok(SplitTensor {
                    parts,
                    layout: Layout::Replicated,
                })
            }
            (l, r) => Err(shape_err(
                "linear",
                format!("no split product for an input split as {l:?} and a weight split as {r:?}"),
            )),
        }
    }

    fn add_assign(&self, x: &mut Self::Tensor, y: &Self::Tensor) -> Result<()> {
        Self::expect_layout("add_assign", y, x.layout)?;
        for (r, b) in self.ranks.iter().enumerate() {
            b.make_current()?;
            b.add_assign(&mut x.parts[r], &y.parts[r])?;
        }
        Ok(())
    }

    fn rope(&self, x: &mut Self::Tensor, n_heads: usize, pos0: usize, rope: &Rope) -> Result<()> {
        let n = match x.layout {
            Layout::Replicated => n_heads,
            Layout::Heads => self.heads_per_rank("rope", n_heads, "heads")?,
        };
        for (r, b) in self.ranks.iter().enumerate() {
            b.make_current()?;
            b.rope(&mut x.parts[r], n, pos0, rope)?;
        }
        Ok(())
    }

    /// Each rank runs its own heads' q/k/v products and RoPE (in one launch where its backend
    /// fuses them): the weights are split by whole heads, so nothing crosses ranks.
    fn qkv_rope(
        &self,
        x: &Self::Tensor,
        q: (&Self::Weight, Option<&Self::Weight>),
        k: (&Self::Weight, Option<&Self::Weight>),
        v: (&Self::Weight, Option<&Self::Weight>),
        n_heads: usize,
        n_kv_heads: usize,
        pos0: usize,
        rope: &Rope,
    ) -> Result<[Self::Tensor; 3]> {
        Self::expect_layout("qkv_rope", x, Layout::Replicated)?;
        for (w, b) in [q, k, v] {
            Self::expect_role("qkv_rope", w, Role::Rows)?;
            if let Some(b) = b {
                Self::expect_role("qkv_rope", b, Role::Rows)?;
            }
        }
        let nh = self.heads_per_rank("qkv_rope", n_heads, "heads")?;
        let nkv = self.heads_per_rank("qkv_rope", n_kv_heads, "key/value heads")?;
        let per_rank = self.each(|r, b| {
            b.qkv_rope(
                &x.parts[r],
                rank_pair(r, q),
                rank_pair(r, k),
                rank_pair(r, v),
                nh,
                nkv,
                pos0,
                rope,
            )
        })?;
        let mut outs: [Vec<B::Tensor>; 3] = Default::default();
        for [qr, kr, vr] in per_rank {
            outs[0].push(qr);
            outs[1].push(kr);
            outs[2].push(vr);
        }
        Ok(outs.map(|parts| SplitTensor {
            parts,
            layout: Layout::Heads,
        }))
    }

    fn new_kv_cache(&self, cfg: &KvCacheConfig) -> Result<Self::KvCache> {
        let n_kv = self.heads_per_rank("new_kv_cache", cfg.n_kv_heads, "key/value heads")?;
        let local = KvCacheConfig {
            n_kv_heads: n_kv,
            ..*cfg
        };
        Ok(SplitKvCache {
            parts: self.each(|_, b| b.new_kv_cache(&local))?,
        })
    }

    fn attention(
        &self,
        q: &Self::Tensor,
        k: &Self::Tensor,
        v: &Self::Tensor,
        cache: &mut Self::KvCache,
        pos0: usize,
        sinks: &Self::Weight,
        cfg: &AttentionConfig,
    ) -> Result<Self::Tensor> {
        for t in [q, k, v] {
            Self::expect_layout("attention", t, Layout::Heads)?;
        }
        Self::expect_role("attention", sinks, Role::Rows)?;
        let local = AttentionConfig {
            n_heads: self.heads_per_rank("attention", cfg.n_heads, "heads")?,
            n_kv_heads: self.heads_per_rank("attention", cfg.n_kv_heads, "key/value heads")?,
            ..*cfg
        };
        if cache.parts.len() != self.world_size() {
            return Err(shape_err(
                "attention",
                format!(
                    "cache has {} parts for {} ranks",
                    cache.parts.len(),
                    self.world_size()
                ),
            ));
        }
        let mut parts = Vec::with_capacity(self.world_size());
        for (r, b) in self.ranks.iter().enumerate() {
            b.make_current()?;
            parts.push(b.attention(
                &q.parts[r],
                &k.parts[r],
                &v.parts[r],
                &mut cache.parts[r],
                pos0,
                &sinks.parts[r],
                &local,
            )?);
        }
        Ok(SplitTensor {
            parts,
            layout: Layout::Heads,
        })
    }

    fn moe(
        &self,
        x: &Self::Tensor,
        w: &MoeWeights<Self::Weight>,
        cfg: &MoeConfig,
    ) -> Result<Self::Tensor> {
        Self::expect_layout("moe", x, Layout::Replicated)?;
        let Some(slot) = w.router.moe.as_ref() else {
            return Err(shape_err(
                "moe",
                "router was not uploaded as an MoE tensor (ffn_gate_inp.weight)".into(),
            ));
        };
        let same = [
            &w.router_bias,
            &w.gate,
            &w.gate_bias,
            &w.up,
            &w.up_bias,
            &w.down,
            &w.down_bias,
        ]
        .iter()
        .all(|m| m.moe.as_ref().is_some_and(|s| Arc::ptr_eq(s, slot)));
        if !same {
            return Err(shape_err(
                "moe",
                format!("weights of {} mixed with another layer's", slot.layer),
            ));
        }
        let Some(ready) = slot.ready.get() else {
            return Err(shape_err(
                "moe",
                format!("{} MoE weights are incomplete", slot.layer),
            ));
        };
        let local = &ready.weights;
        let mut parts = match &ready.experts {
            Some(ranges) => {
                let held = ranges.last().map_or(0, |r| r.end);
                if held != cfg.n_experts {
                    return Err(shape_err(
                        "moe",
                        format!(
                            "{}: {} experts asked for, {held} split over the ranks",
                            slot.layer, cfg.n_experts
                        ),
                    ));
                }
                self.each(|r, b| b.moe_local(&x.parts[r], &local[r], cfg, ranges[r].clone()))?
            }
            None => self.each(|r, b| b.moe(&x.parts[r], &local[r], cfg))?,
        };
        if self.world_size() > 1 {
            self.collective.all_reduce_sum(&self.ranks, &mut parts)?;
        }
        Ok(SplitTensor {
            parts,
            layout: Layout::Replicated,
        })
    }

    fn argmax(&self, x: &Self::Tensor) -> Result<Vec<u32>> {
        Self::expect_layout("argmax", x, Layout::Replicated)?;
        self.ranks[0].make_current()?;
        self.ranks[0].argmax(&x.parts[0])
    }

    fn last_row(&self, x: &Self::Tensor) -> Result<Self::Tensor> {
        Ok(SplitTensor {
            parts: self.each(|r, b| b.last_row(&x.parts[r]))?,
            layout: x.layout,
        })
    }

    fn peak_memory_bytes(&self) -> Option<u64> {
        // Per-device peak: the largest rank's (see [`SplitBackend::memory`] for each one).
        self.ranks
            .iter()
            .filter_map(|b| b.peak_memory_bytes())
            .max()
    }
}
