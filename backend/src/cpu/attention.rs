//! Causal attention with sinks, GQA and sliding windows over a per-layer KV cache.

use rayon::prelude::*;

use super::linear::dot;
use crate::{AttentionConfig, BackendError, KvCacheConfig, Result};

/// One layer's KV cache on the CPU, laid out head-major: `[n_kv_heads][cap][head_dim]` f32, so
/// that a task attending with one kv head streams one contiguous block. A full layer grows (by
/// doubling, up to `max_positions`); a sliding-window layer is a ring of `window` slots
/// (position p in slot `p % window`), allocated whole.
#[derive(Debug, Clone)]
pub struct CpuKvCache {
    cfg: KvCacheConfig,
    k: Vec<f32>,
    v: Vec<f32>,
    /// Slots per head.
    cap: usize,
    /// Positions seen so far (the next position to store).
    len: usize,
}

impl CpuKvCache {
    pub(crate) fn new(cfg: &KvCacheConfig) -> Result<CpuKvCache> {
        if cfg.n_kv_heads == 0 || cfg.head_dim == 0 || cfg.max_positions == 0 {
            return Err(BackendError::Shape {
                op: "new_kv_cache",
                detail: format!("empty cache configuration {cfg:?}"),
            });
        }
        if cfg.window == Some(0) {
            return Err(BackendError::Shape {
                op: "new_kv_cache",
                detail: "a sliding window of 0 positions sees nothing".into(),
            });
        }
        let overflow = || BackendError::Shape {
            op: "new_kv_cache",
            detail: format!("{cfg:?} overflows"),
        };
        let width = cfg
            .n_kv_heads
            .checked_mul(cfg.head_dim)
            .ok_or_else(overflow)?;
        width.checked_mul(cfg.max_positions).ok_or_else(overflow)?;
        // A ring is allocated whole (it is small); a full cache grows as positions arrive.
        let cap = cfg.window.map_or(0, |w| w.min(cfg.max_positions));
        Ok(CpuKvCache {
            cfg: *cfg,
            k: vec![0f32; cap * width],
            v: vec![0f32; cap * width],
            cap,
            len: 0,
        })
    }

    /// Positions stored so far (0 ..len have been appended; a ring holds only the last `window`).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True before the first append.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The configuration the cache was made for.
    pub fn config(&self) -> &KvCacheConfig {
        &self.cfg
    }

    fn width(&self) -> usize {
        self.cfg.n_kv_heads * self.cfg.head_dim
    }

    /// Offset of position `p` (which must be held) of kv head `h`.
    #[inline]
    fn offset(&self, h: usize, p: usize) -> usize {
        let slot = match self.cfg.window {
            Some(_) => p % self.cap,
            None => p,
        };
        (h * self.cap + slot) * self.cfg.head_dim
    }

    /// Store keys and values (`[t, n_kv_heads * head_dim]`, already roped) for the next `t`
    /// positions without attending to them: for restoring a saved context, tests and benchmarks.
    pub fn append(&mut self, k: &[f32], v: &[f32], t: usize) -> Result<()> {
        let width = self.width();
        if k.len() != t * width || v.len() != t * width {
            return Err(BackendError::Shape {
                op: "kv append",
                detail: format!("{}/{} values for {t} rows of {width}", k.len(), v.len()),
            });
        }
        if self.len + t > self.cfg.max_positions {
            return Err(BackendError::ContextFull {
                pos: self.len.max(self.cfg.max_positions),
                capacity: self.cfg.max_positions,
            });
        }
        self.store(k, v, t);
        Ok(())
    }

    /// Make room for `need` positions in a full cache: double (at most to `max_positions`) and
    /// move each head's block to its new place.
    fn grow(&mut self, need: usize) {
        let new_cap = need.max(self.cap * 2).max(16).min(self.cfg.max_positions);
        let (hd, nkv, old) = (self.cfg.head_dim, self.cfg.n_kv_heads, self.cap);
        for buf in [&mut self.k, &mut self.v] {
            let mut nb = vec![0f32; nkv * new_cap * hd];
            for h in 0..nkv {
                let n = self.len.min(old) * hd;
                nb[h * new_cap * hd..][..n].copy_from_slice(&buf[h * old * hd..][..n]);
            }
            *buf = nb;
        }
        self.cap = new_cap;
    }

    /// Store rows of `k`/`v` (`[t, width]`) for positions `len..len + t` (checked by the caller).
    fn store(&mut self, k: &[f32], v: &[f32], t: usize) {
        let (hd, width) = (self.cfg.head_dim, self.width());
        if self.cfg.window.is_none() && self.len + t > self.cap {
            self.grow(self.len + t);
        }
        // A ring keeps only the last `cap` positions.
        let first = match self.cfg.window {
            Some(_) => t.saturating_sub(self.cap),
            None => 0,
        };
        for i in first..t {
            for h in 0..self.cfg.n_kv_heads {
                let o = self.offset(h, self.len + i);
                let src = i * width + h * hd;
                self.k[o..o + hd].copy_from_slice(&k[src..src + hd]);
                self.v[o..o + hd].copy_from_slice(&v[src..src + hd]);
            }
        }
        self.len += t;
    }
}

/// Attention of `q` `[t, n_heads*hd]` over the cache plus the new `k`/`v` `[t, n_kv*hd]`, then
/// append the new rows. Returns `[t, n_heads*hd]`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    t: usize,
    cache: &mut CpuKvCache,
    pos0: usize,
    sinks: &[f32],
    cfg: &AttentionConfig,
) -> Result<Vec<f32>> {
    let shape = |detail: String| BackendError::Shape {
        op: "attention",
        detail,
    };
    let (nh, nkv, hd) = (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim);
    if nh == 0 || nkv == 0 || hd == 0 || nh % nkv != 0 {
        return Err(shape(format!(
            "{nh} query heads cannot share {nkv} kv heads of dim {hd}"
        )));
    }
    if cfg.window == Some(0) {
        return Err(shape("a sliding window of 0 positions sees nothing".into()));
    }
    let cc = cache.cfg;
    if cc.n_kv_heads != nkv || cc.head_dim != hd || cc.window != cfg.window {
        return Err(shape(format!("cache made for {cc:?} used with {cfg:?}")));
    }
    if q.len() != t * nh * hd || k.len() != t * nkv * hd || v.len() != t * nkv * hd {
        return Err(shape(format!(
            "q/k/v hold {}/{}/{} values, expected {t} rows of {}/{}/{}",
            q.len(),
            k.len(),
            v.len(),
            nh * hd,
            nkv * hd,
            nkv * hd
        )));
    }
    if sinks.len() != nh {
        return Err(shape(format!("{} sinks for {nh} heads", sinks.len())));
    }
    if pos0 != cache.len {
        return Err(shape(format!(
            "the cache holds positions 0..{}, the call starts at {pos0}",
            cache.len
        )));
    }
    if pos0 + t > cc.max_positions {
        return Err(BackendError::ContextFull {
            pos: pos0.max(cc.max_positions),
            capacity: cc.max_positions,
        });
    }

    let width = nkv * hd;
    let group = nh / nkv;
    let scale = cfg.scale;
    let cache_ref = &*cache;
    let mut out = vec![0f32; t * nh * hd];
    // One task per (token, kv head): the `group` query heads sharing a kv head read each key and
    // value row once between them. Their outputs are adjacent in the row.
    out.par_chunks_mut(group * hd).enumerate().for_each_init(
        Vec::<f32>::new,
        |scores, (idx, o)| {
            let (tok, kvh) = (idx / nkv, idx % nkv);
            let p = pos0 + tok;
            let lo = cfg.window.map_or(0, |w| (p + 1).saturating_sub(w));
            let len = p + 1 - lo;
            let h0 = kvh * group;
            let qg = &q[tok * nh * hd + h0 * hd..][..group * hd];
            // Key/value row of position j: the new rows for j >= pos0, else the cache.
            let row = |j: usize| -> std::ops::Range<usize> {
                let b = if j >= pos0 {
                    (j - pos0) * width + kvh * hd
                } else {
                    cache_ref.offset(kvh, j)
                };
                b..b + hd
            };
            // scores[g * len + jj]: head h0 + g, key position lo + jj.
            scores.clear();
            scores.resize(group * len, 0.0);
            for (jj, j) in (lo..=p).enumerate() {
                let r = row(j);
                let kr = if j >= pos0 { &k[r] } else { &cache_ref.k[r] };
                for (g, qh) in qg.chunks_exact(hd).enumerate() {
                    scores[g * len + jj] = dot(qh, kr) * scale;
                }
            }
            let mut inv = vec![0f32; group];
            for (g, sc) in scores.chunks_exact_mut(len.max(1)).enumerate().take(group) {
                let sink = sinks[h0 + g];
                let m = sc.iter().fold(sink, |m, &s| if s > m { s } else { m });
                let mut denom = (sink - m).exp();
                for s in sc.iter_mut() {
                    *s = (*s - m).exp();
                    denom += *s;
                }
                inv[g] = 1.0 / denom;
            }
            o.fill(0.0);
            for (jj, j) in (lo..=p).enumerate() {
                let r = row(j);
                let vr = if j >= pos0 { &v[r] } else { &cache_ref.v[r] };
                for (g, acc) in o.chunks_exact_mut(hd).enumerate() {
                    let e = scores[g * len + jj];
                    for (a, &x) in acc.iter_mut().zip(vr) {
                        *a += e * x;
                    }
                }
            }
            for (acc, &iv) in o.chunks_exact_mut(hd).zip(inv.iter()) {
                for a in acc.iter_mut() {
                    *a *= iv;
                }
            }
        },
    );
    cache.store(k, v, t);
    Ok(out)
}
