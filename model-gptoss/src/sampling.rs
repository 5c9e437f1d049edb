//! Choosing the next token from logits: greedy, temperature, top-k, top-p, min-p and a
//! repetition penalty, reproducible for a given seed.
//!
//! The order follows llama.cpp's common sampler chain: repetition penalty on the raw logits,
//! then top-k, temperature, softmax, top-p, min-p, and a draw from what is left.

use crate::error::{ModelError, Result};
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
    /// (`history`, oldest first) for the repetition penalty.
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> Result<u32> {
        if logits.is_empty() {
            return Err(ModelError::InvalidInput("sample: empty logits".into()));
        }
        let cand = &mut self.cand;
        cand.clear();
        // NaN logits can never be chosen: treat them as impossible rather than poisoning sorts.
        cand.extend(
            logits
                .iter()
                .enumerate()
                .map(|(i, &l)| (i as u32, if l.is_nan() { f32::NEG_INFINITY } else { l })),
        );
        if self.cfg.repeat_penalty != 1.0 && self.cfg.repeat_last_n > 0 {
            let start = history.len().saturating_sub(self.cfg.repeat_last_n);
            let mut seen = std::collections::HashSet::new();
            for &t in &history[start..] {
                if (t as usize) < cand.len() && seen.insert(t) {
                    let l = &mut cand[t as usize].1;
                    *l = if *l > 0.0 {
                        *l / self.cfg.repeat_penalty
                    } else {
                        *l * self.cfg.repeat_penalty
                    };
                }
            }
        }
        if cand.iter().all(|c| c.1 == f32::NEG_INFINITY) {
            return Err(ModelError::InvalidInput(
                "sample: every logit is -inf or NaN".into(),
            ));
        }
        // Descending by logit, ties by lower id: a total order, so results never depend on the
        // sort algorithm.
        let order = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if self.cfg.temperature <= 0.0 {
            let best = cand
                .iter()
                .min_by(|a, b| order(a, b))
                .expect("non-empty candidates");
            return Ok(best.0);
        }
        if self.cfg.top_k > 0 && self.cfg.top_k < cand.len() {
            cand.select_nth_unstable_by(self.cfg.top_k - 1, order);
            cand.truncate(self.cfg.top_k);
        }
        cand.sort_unstable_by(order);
        // Softmax with temperature, in f64 so long tails do not lose mass.
        let inv_t = 1.0 / self.cfg.temperature as f64;
        let max = cand[0].1 as f64;
        let mut probs: Vec<f64> = cand
            .iter()
            .map(|c| ((c.1 as f64 - max) * inv_t).exp())
            .collect();
        let sum: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= sum);
        let mut keep = probs.len();
        if self.cfg.top_p < 1.0 {
            let mut acc = 0.0;
            for (i, p) in probs.iter().enumerate() {
                acc += p;
                if acc >= self.cfg.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
        }
        if self.cfg.min_p > 0.0 {
            let floor = self.cfg.min_p as f64 * probs[0];
            keep = keep.min(probs.iter().take_while(|&&p| p >= floor).count().max(1));
        }
        let total: f64 = probs[..keep].iter().sum();
        let mut u = self.rng.random::<f64>() * total;
        for (i, p) in probs[..keep].iter().enumerate() {
            if u < *p {
                return Ok(cand[i].0);
            }
            u -= p;
        }
        // Rounding can leave u a hair above the last bucket.
        Ok(cand[keep - 1].0)
    }
}
