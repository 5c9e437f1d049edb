//! Causal attention with sinks, GQA and sliding windows over a per-layer KV cache.

use rayon::prelude::*;

use super::linear::dot;
use crate::{AttentionConfig, BackendError, KvCacheConfig, Result};

/// One layer's KV cache on the CPU: f32 rows `[n_kv_heads * head_dim]` per position. A full layer
/// grows up to `max_positions`; a sliding-window layer is a ring of `window` slots (position p in
/// slot `p % window`).
#[derive(Debug, Clone)]
pub struct CpuKvCache {
    cfg: KvCacheConfig,
    k: Vec<f32>,
    v: Vec<f32>,
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
        let width =
            cfg.n_kv_heads
                .checked_mul(cfg.head_dim)
                .ok_or_else(|| BackendError::Shape {
                    op: "new_kv_cache",
                    detail: format!("{cfg:?} overflows"),
                })?;
        // A ring is allocated whole (it is small); a full cache grows as positions arrive.
        let slots = cfg.window.map_or(0, |w| w.min(cfg.max_positions));
        Ok(CpuKvCache {
            cfg: *cfg,
            k: vec![0f32; slots * width],
            v: vec![0f32; slots * width],
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

    /// Row index of position `p` (which must be held).
    fn slot(&self, p: usize) -> usize {
        match self.cfg.window {
            Some(w) => p % w.min(self.cfg.max_positions),
            None => p,
        }
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

    /// Store rows of `k`/`v` (`[t, width]`) for positions `len..len + t` (checked by the caller).
    fn store(&mut self, k: &[f32], v: &[f32], t: usize) {
        let width = self.width();
        match self.cfg.window {
            None => {
                self.k.extend_from_slice(&k[..t * width]);
                self.v.extend_from_slice(&v[..t * width]);
            }
            Some(_) => {
                let ring = self.k.len() / width;
                // Only the last `ring` positions survive.
                for i in t.saturating_sub(ring)..t {
                    let s = self.slot(self.len + i) * width;
                    self.k[s..s + width].copy_from_slice(&k[i * width..(i + 1) * width]);
                    self.v[s..s + width].copy_from_slice(&v[i * width..(i + 1) * width]);
                }
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
    out.par_chunks_mut(hd).enumerate().for_each_init(
        || (Vec::<f32>::new(), vec![0f32; hd]),
        |(scores, acc), (idx, o)| {
            let (tok, h) = (idx / nh, idx % nh);
            let kvh = h / group;
            let p = pos0 + tok;
            let lo = cfg.window.map_or(0, |w| (p + 1).saturating_sub(w));
            let qh = &q[tok * nh * hd + h * hd..][..hd];
            // Key/value row of position j: the new rows for j >= pos0, else the cache.
            let at = |j: usize| -> (bool, usize) {
                if j >= pos0 {
                    (true, (j - pos0) * width + kvh * hd)
                } else {
                    (false, cache_ref.slot(j) * width + kvh * hd)
                }
            };
            scores.clear();
            let mut m = sinks[h];
            for j in lo..=p {
                let (is_new, b) = at(j);
                let kr = if is_new {
                    &k[b..b + hd]
                } else {
                    &cache_ref.k[b..b + hd]
                };
                let s = dot(qh, kr) * scale;
                m = if s > m { s } else { m };
                scores.push(s);
            }
            let mut denom = (sinks[h] - m).exp();
            for s in scores.iter_mut() {
                *s = (*s - m).exp();
                denom += *s;
            }
            acc.fill(0.0);
            for (j, &e) in (lo..=p).zip(scores.iter()) {
                let (is_new, b) = at(j);
                let vr = if is_new {
                    &v[b..b + hd]
                } else {
                    &cache_ref.v[b..b + hd]
                };
                for (a, &x) in acc.iter_mut().zip(vr) {
                    *a += e * x;
                }
            }
            let inv = 1.0 / denom;
            for (y, a) in o.iter_mut().zip(acc.iter()) {
                *y = a * inv;
            }
        },
    );
    cache.store(k, v, t);
    Ok(out)
}
