//! Rotary position embedding with YaRN scaling, computed exactly as the GPT-OSS reference
//! (transformers' `_compute_yarn_parameters` with `truncate: false`): unrounded ramp bounds and
//! cos/sin multiplied by the concentration `0.1 ln(factor) + 1`.

/// RoPE hyperparameters, as read from the model's metadata.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RopeConfig {
    /// Dimension of one head (the rotated width).
    pub head_dim: usize,
    /// Base frequency (`rope.freq_base`, 150000 for GPT-OSS).
    pub theta: f32,
    /// YaRN factor (`rope.scaling.factor`); 1.0 or less means plain RoPE.
    pub scaling_factor: f32,
    /// Context length the model was pre-trained at (`rope.scaling.original_context_length`).
    pub original_context: usize,
    /// YaRN beta_fast (32).
    pub beta_fast: f32,
    /// YaRN beta_slow (1).
    pub beta_slow: f32,
}

/// Precomputed RoPE frequencies: what every backend needs to rotate a head.
#[derive(Debug, Clone, PartialEq)]
pub struct Rope {
    /// Dimension of one head.
    pub head_dim: usize,
    /// `head_dim / 2` inverse frequencies.
    pub inv_freq: Vec<f32>,
    /// Multiplier applied to cos and sin (YaRN's attention factor / concentration).
    pub attention_factor: f32,
}

impl Rope {
    /// Compute the frequencies for `cfg` (f32 where the reference computes in f32).
    pub fn new(cfg: &RopeConfig) -> Rope {
        let dim = cfg.head_dim;
        let half = dim / 2;
        let base = cfg.theta as f64;
        // pos_freqs = base ** (arange(0, dim, 2) / dim), in f32 as torch does.
        let pos_freqs: Vec<f32> = (0..half)
            .map(|i| (base as f32).powf((2 * i) as f32 / dim as f32))
            .collect();
        let factor = cfg.scaling_factor;
        if factor <= 1.0 {
            return Rope {
                head_dim: dim,
                inv_freq: pos_freqs.iter().map(|f| 1.0 / f).collect(),
                attention_factor: 1.0,
            };
        }
        let correction_dim = |rotations: f64| {
            (dim as f64
                * (cfg.original_context as f64 / (rotations * 2.0 * std::f64::consts::PI)).ln())
                / (2.0 * base.ln())
        };
        let low = correction_dim(cfg.beta_fast as f64).max(0.0);
        let mut high = correction_dim(cfg.beta_slow as f64).min(dim as f64 - 1.0);
        if low == high {
            high += 0.001;
        }
        let (low, high) = (low as f32, high as f32);
        let inv_freq = (0..half)
            .map(|i| {
                let ramp = ((i as f32 - low) / (high - low)).clamp(0.0, 1.0);
                let extrapolation_factor = 1.0 - ramp;
                let extrapolation = 1.0 / pos_freqs[i];
                let interpolation = 1.0 / (factor * pos_freqs[i]);
                interpolation * (1.0 - extrapolation_factor) + extrapolation * extrapolation_factor
            })
            .collect();
        Rope {
            head_dim: dim,
            inv_freq,
            attention_factor: (0.1 * (factor as f64).ln() + 1.0) as f32,
        }
    }

    /// cos and sin (already scaled by the attention factor) for one position: `head_dim / 2` each.
    pub fn cos_sin(&self, pos: usize, cos: &mut [f32], sin: &mut [f32]) {
        for (i, f) in self.inv_freq.iter().enumerate() {
            // The reference multiplies position by inv_freq in f32, then takes cos/sin.
            let angle = (pos as f32 * f) as f64;
            cos[i] = (angle.cos() as f32) * self.attention_factor;
            sin[i] = (angle.sin() as f32) * self.attention_factor;
        }
    }

    /// Rotate one head in place (NEOX: first half against second half) with precomputed cos/sin.
    pub fn apply_head(head: &mut [f32], cos: &[f32], sin: &[f32]) {
        let half = head.len() / 2;
        let (a, b) = head.split_at_mut(half);
        for i in 0..half {
            let (x1, x2) = (a[i], b[i]);
            a[i] = x1 * cos[i] - x2 * sin[i];
            b[i] = x2 * cos[i] + x1 * sin[i];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gptoss(head_dim: usize) -> RopeConfig {
        RopeConfig {
            head_dim,
            theta: 150000.0,
            scaling_factor: 32.0,
            original_context: 4096,
            beta_fast: 32.0,
            beta_slow: 1.0,
        }
    }

    #[test]
    fn yarn_keeps_high_frequencies_and_interpolates_low_ones() {
        let r = Rope::new(&gptoss(64));
        assert_eq!(r.inv_freq.len(), 32);
        // Dimension 0 rotates fastest: pure extrapolation (the original frequency, 1.0).
        assert!((r.inv_freq[0] - 1.0).abs() < 1e-7);
        // The slowest is fully interpolated: original / 32.
        let orig_last = 1.0 / 150000f32.powf(62.0 / 64.0);
        assert!((r.inv_freq[31] - orig_last / 32.0).abs() < 1e-12);
        assert!((r.attention_factor - (0.1 * 32f32.ln() + 1.0)).abs() < 1e-6);
    }

    #[test]
    fn rotation_preserves_norm_up_to_the_attention_factor() {
        let r = Rope::new(&gptoss(8));
        let mut head = [0.3f32, -1.2, 0.7, 2.0, -0.4, 0.9, 1.1, -0.6];
        let n0: f32 = head.iter().map(|x| x * x).sum();
        let (mut c, mut s) = ([0f32; 4], [0f32; 4]);
        r.cos_sin(1234, &mut c, &mut s);
        Rope::apply_head(&mut head, &c, &s);
        let n1: f32 = head.iter().map(|x| x * x).sum();
        let f2 = r.attention_factor * r.attention_factor;
        assert!((n1 / n0 - f2).abs() < 1e-4, "{n1} {n0} {f2}");
    }
}
