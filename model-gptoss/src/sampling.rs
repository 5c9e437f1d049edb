//! Choosing the next token from logits: greedy, temperature, top-k, top-p, min-p and a
//! repetition penalty, reproducible for a given seed.
//!
//! The order follows llama.cpp's common sampler chain: repetition penalty on the raw logits,
//! then top-k, temperature, softmax, top-p, min-p, and a draw from what is left (in token id
//! order, so that a device backend can make the same draw without sorting the vocabulary).

use crate::error::{ModelError, Result};
pub use gptoss_backend::{SoftmaxCandidates, SoftmaxDraw};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Sampling parameters. The defaults are greedy decoding.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplerConfig {
    /// Softmax temperature; `0` (or less) means greedy argmax.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; `0` disables.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p`; `1` disables.
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one; `0` disables.
    pub min_p: f32,
    /// Divide positive logits (multiply negative ones) of recently seen tokens by this; `1`
    /// disables.
    pub repeat_penalty: f32,
    /// How many of the most recent tokens the repetition penalty looks at.
    pub repeat_last_n: usize,
    /// Seed of the random generator: the same seed, logits and settings give the same tokens.
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0,
        }
    }
}

/// A token sampler with its own seeded random generator.
#[derive(Debug, Clone)]
pub struct Sampler {
    cfg: SamplerConfig,
    rng: StdRng,
    // Scratch reused between calls (the vocabulary can be 200k entries).
    cand: Vec<(u32, f32)>,
    weights: Vec<f64>,
}

impl Sampler {
    /// A sampler for `cfg`; rejects out-of-range settings.
    pub fn new(cfg: SamplerConfig) -> Result<Self> {
        let bad = |what: String| Err(ModelError::InvalidInput(what));
        if !cfg.temperature.is_finite() {
            return bad(format!("temperature {} is not finite", cfg.temperature));
        }
        if !(cfg.top_p > 0.0 && cfg.top_p <= 1.0) {
            return bad(format!("top-p {} must be in (0, 1]", cfg.top_p));
        }
        if !(0.0..=1.0).contains(&cfg.min_p) {
            return bad(format!("min-p {} must be in [0, 1]", cfg.min_p));
        }
        if !(cfg.repeat_penalty.is_finite() && cfg.repeat_penalty > 0.0) {
            return bad(format!(
                "repeat penalty {} must be positive",
                cfg.repeat_penalty
            ));
        }
        let rng = StdRng::seed_from_u64(cfg.seed);
        Ok(Sampler {
            cfg,
            rng,
            cand: Vec::new(),
            weights: Vec::new(),
        })
    }

    /// The settings.
    pub fn config(&self) -> &SamplerConfig {
        &self.cfg
    }

    /// True when the choice is a plain argmax of the logits (no temperature, no penalty), so a
    /// backend may compute it on the device without copying the logits back.
    pub fn is_plain_greedy(&self) -> bool {
        self.cfg.temperature <= 0.0
            && (self.cfg.repeat_penalty == 1.0 || self.cfg.repeat_last_n == 0)
    }

    /// Choose the next token from `logits` (one vocabulary row), given the tokens seen so far
    /// (`history`, oldest first) for the repetition penalty. Greedy settings draw no random
    /// number; the others draw one and choose as [`Sampler::sample_at`].
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> Result<u32> {
        let u = if self.cfg.temperature <= 0.0 {
            0.0
        } else {
            self.rng.random::<f64>()
        };
        self.sample_at(logits, history, u)
    }

    /// The draw a device backend can make instead of [`Sampler::sample`]
    /// ([`Backend::sample_softmax`](gptoss_backend::Backend::sample_softmax)): `Some` when the
    /// settings are a temperature softmax with at most min-p and a repetition penalty over at
    /// most 256 distinct tokens (no top-k, no top-p). It draws the random number then, so the
    /// caller must finish this token with it: on the device, or with [`Sampler::sample_at`]
    /// and the draw's `u` on the host.
    pub fn softmax_draw(&mut self, history: &[u32]) -> Option<SoftmaxDraw> {
        self.device_draw(history, false)
    }

    /// The draw for a device backend's candidates
    /// ([`Backend::softmax_candidates`](gptoss_backend::Backend::softmax_candidates), finished
    /// by [`Sampler::sample_candidates`]): `Some` when the settings cut the distribution
    /// (temperature > 0 with top-k or top-p) and the repetition penalty touches at most 256
    /// distinct tokens. Like [`Sampler::softmax_draw`] it spends the random number.
    pub fn cut_draw(&mut self, history: &[u32]) -> Option<SoftmaxDraw> {
        self.device_draw(history, true)
    }

    /// [`Sampler::softmax_draw`] (`cut` false) or [`Sampler::cut_draw`] (`cut` true).
    fn device_draw(&mut self, history: &[u32], cut: bool) -> Option<SoftmaxDraw> {
        let c = &self.cfg;
        if c.temperature <= 0.0 || (c.top_k != 0 || c.top_p < 1.0) != cut {
            return None;
        }
        let penalized = self.penalized(history);
        if penalized.len() > 256 {
            return None;
        }
        Some(SoftmaxDraw {
            inv_temperature: 1.0 / c.temperature,
            min_weight: c.min_p,
            penalized,
            penalty: c.repeat_penalty,
            u: self.rng.random::<f64>(),
        })
    }

    /// The token [`Sampler::sample_at`] would choose for `u`, from the candidates alone (every
    /// token at or above a weight floor, the rest summed), when they decide it: the top-k set
    /// lies within them, or the top-p cut is reached within them. `None` otherwise (the caller
    /// then samples the whole row). With a top-k cut it is the same arithmetic in the same
    /// order; a top-p cut without top-k adds the rest's sum last instead of in id order.
    pub fn sample_candidates(&mut self, c: &SoftmaxCandidates, u: f64) -> Option<u32> {
        let cfg = &self.cfg;
        if cfg.temperature <= 0.0 || (cfg.top_k == 0 && cfg.top_p >= 1.0) || c.tokens.is_empty() {
            return None;
        }
        let cand = &mut self.cand;
        cand.clear();
        cand.extend_from_slice(&c.tokens);
        cand.sort_unstable_by(by_likelihood);
        let mut rest = c.rest_weight;
        if cfg.top_k > 0 {
            if cfg.top_k <= cand.len() {
                // Every candidate outranks every other token: the top-k set is here.
                cand.truncate(cfg.top_k);
                rest = 0.0;
            } else if rest > 0.0 {
                return None;
            }
        }
        let max = cand[0].1;
        let inv_t = 1.0 / cfg.temperature;
        let w = &mut self.weights;
        w.clear();
        w.extend(cand.iter().map(|x| softmax_weight(x.1, max, inv_t)));
        let mut keep = cand.len();
        if cfg.top_p < 1.0 {
            // The total as sample_at sums it: in id order.
            let mut by_id: Vec<usize> = (0..cand.len()).collect();
            by_id.sort_unstable_by_key(|&i| cand[i].0);
            let z = by_id.iter().map(|&i| w[i]).sum::<f64>() + rest;
            let need = cfg.top_p as f64 * z;
            let mut acc = 0.0;
            match w.iter().position(|&x| {
                acc += x;
                acc >= need
            }) {
                Some(p) => keep = p + 1,
                None if rest == 0.0 => {}
                None => return None,
            }
        } else if rest > 0.0 {
            return None;
        }
        let mut kept: Vec<(u32, f64)> = cand[..keep]
            .iter()
            .zip(&w[..keep])
            .map(|(c, &x)| (c.0, x))
            .collect();
        kept.sort_unstable_by_key(|k| k.0);
        draw_by_id(kept.into_iter(), cfg.min_p, u)
    }

    /// The distinct recent tokens the repetition penalty applies to (none when it is off).
    fn penalized(&self, history: &[u32]) -> Vec<u32> {
        if self.cfg.repeat_penalty == 1.0 || self.cfg.repeat_last_n == 0 {
            return Vec::new();
        }
        let start = history.len().saturating_sub(self.cfg.repeat_last_n);
        let mut seen = std::collections::HashSet::new();
        history[start..]
            .iter()
            .copied()
            .filter(|&t| seen.insert(t))
            .collect()
    }

    /// The token for the uniform draw `u` in [0, 1) (ignored by greedy settings). The chain:
    /// repetition penalty on the raw logits, top-k, then weights `exp((l - max) / T)` (f32, the
    /// largest 1), top-p (the smallest set of most likely tokens, ties by lower id, whose
    /// weights reach `top_p` of the total), min-p (weights below `min_p` dropped), and the
    /// first kept token in id order whose running sum of weights exceeds `u` times their
    /// total. Only top-p sorts, and only as many candidates as its cut needs, so a draw costs
    /// one pass over the vocabulary in the common settings.
    pub fn sample_at(&mut self, logits: &[f32], history: &[u32], u: f64) -> Result<u32> {
        if logits.is_empty() {
            return Err(ModelError::InvalidInput("sample: empty logits".into()));
        }
        let penalized = self.penalized(history);
        let cand = &mut self.cand;
        cand.clear();
        // NaN logits can never be chosen: treat them as impossible rather than poisoning sorts.
        cand.extend(
            logits
                .iter()
                .enumerate()
                .map(|(i, &l)| (i as u32, if l.is_nan() { f32::NEG_INFINITY } else { l })),
        );
        for t in penalized {
            if let Some(c) = cand.get_mut(t as usize) {
                c.1 = penalize(c.1, self.cfg.repeat_penalty);
            }
        }
        if cand.iter().all(|c| c.1 == f32::NEG_INFINITY) {
            return Err(ModelError::InvalidInput(
                "sample: every logit is -inf or NaN".into(),
            ));
        }
        if self.cfg.temperature <= 0.0 {
            let best = cand
                .iter()
                .min_by(|a, b| by_likelihood(a, b))
                .expect("non-empty candidates");
            return Ok(best.0);
        }
        if self.cfg.top_k > 0 && self.cfg.top_k < cand.len() {
            cand.select_nth_unstable_by(self.cfg.top_k - 1, by_likelihood);
            cand.truncate(self.cfg.top_k);
            cand.sort_unstable_by_key(|c| c.0);
        }
        let max = cand.iter().map(|c| c.1).fold(f32::NEG_INFINITY, f32::max);
        let inv_t = 1.0 / self.cfg.temperature;
        let w = &mut self.weights;
        w.clear();
        w.extend(cand.iter().map(|c| softmax_weight(c.1, max, inv_t)));
        if self.cfg.top_p < 1.0 {
            keep_nucleus(cand, w, self.cfg.top_p as f64);
        }
        let t = draw_by_id(
            cand.iter().map(|c| c.0).zip(w.iter().copied()),
            self.cfg.min_p,
            u,
        );
        Ok(t.expect("the maximum has weight 1"))
    }
}

/// The draw both samplers end with: weights below `min_p` dropped, then the first token (in
/// the order given: id order) whose running sum of weights exceeds `u` times their total;
/// the last token of positive weight when rounding leaves the target past the end. `None`
/// when no weight is positive.
fn draw_by_id(items: impl Iterator<Item = (u32, f64)> + Clone, min_p: f32, u: f64) -> Option<u32> {
    let kept = items.map(move |(t, x)| (t, if (x as f32) < min_p { 0.0 } else { x }));
    let target = u * kept.clone().map(|k| k.1).sum::<f64>();
    let mut acc = 0.0;
    let mut last = None;
    for (t, x) in kept {
        acc += x;
        if target < acc {
            return Some(t);
        }
        if x > 0.0 {
            last = Some(t);
        }
    }
    last
}

/// The repetition penalty on one logit.
fn penalize(l: f32, penalty: f32) -> f32 {
    if l > 0.0 { l / penalty } else { l * penalty }
}

/// Descending by logit, ties by lower id: a total order, so results never depend on the sort
/// or selection algorithm.
fn by_likelihood(a: &(u32, f32), b: &(u32, f32)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// `exp((l - max) * inv_t)` computed in f32, as the device kernels do; 0 for `-inf`.
fn softmax_weight(l: f32, max: f32, inv_t: f32) -> f64 {
    if l == f32::NEG_INFINITY {
        0.0
    } else {
        ((l - max) * inv_t).exp() as f64
    }
}

/// Zero the weights outside the nucleus: the smallest set of most likely candidates (ties by
/// lower id) whose weights reach `top_p` of the total. The candidates are sorted band by band
/// of weight (at least 2^-10, then down to 2^-20, 2^-40, then the rest), each band after the
/// ones above it, until the running sum reaches the cut: everything in a band is less likely
/// than everything above it, so the prefix is the one a full sort gives, in the same order,
/// and a peaked distribution sorts a few tokens.
fn keep_nucleus(cand: &[(u32, f32)], w: &mut [f64], top_p: f64) {
    let need = top_p * w.iter().sum::<f64>();
    // (position, logit): `cand` is in id order, so position order is id order, and sorting
    // the pairs themselves keeps the sort on contiguous memory.
    let mut idx: Vec<(u32, f32)> = Vec::new();
    let mut acc = 0.0;
    let mut above = f64::INFINITY;
    for floor in [1.0 / 1024.0, 1.0 / 1048576.0, 2f64.powi(-40), 0.0] {
        let start = idx.len();
        idx.extend(
            (0..w.len())
                .filter(|&i| w[i] > 0.0 && w[i] >= floor && w[i] < above)
                .map(|i| (i as u32, cand[i].1)),
        );
        idx[start..].sort_unstable_by(by_likelihood);
        for n in start..idx.len() {
            acc += w[idx[n].0 as usize];
            if acc >= need {
                let mut keep = vec![false; w.len()];
                for &(i, _) in &idx[..=n] {
                    keep[i as usize] = true;
                }
                for (x, k) in w.iter_mut().zip(keep) {
                    if !k {
                        *x = 0.0;
                    }
                }
                return;
            }
        }
        above = floor;
    }
    // Rounding kept the sum of every weight below the cut: keep them all.
}
