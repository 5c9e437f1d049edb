//! The CPU backend: the reference every other backend is checked against, and a faster mode.
//!
//! Reference mode keeps activations in f32 and decodes weights (any type the quant crate reads)
//! row by row, straight from the uploaded bytes, which are a view of the file's memory map when
//! the caller passes one. Work is split over rayon's pool by output rows, heads and experts.

mod attention;
mod codec;
mod linear;
mod moe;
mod weight;

pub use attention::CpuKvCache;
pub use weight::CpuWeight;

use rayon::prelude::*;

use crate::{
    AttentionConfig, Backend, BackendError, KvCacheConfig, MoeConfig, MoeWeights, Result, Rope,
    WeightData,
};

/// How the CPU backend computes its products.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CpuMode {
    /// f32 activations, weights decoded to f32: the numbers every other backend is held to.
    #[default]
    Reference,
    /// ggml's CPU scheme: for block-quantized weights, activations are quantized per row to the
    /// weight type's `vec_dot_type` (Q8_0 for MXFP4 and Q8_0, Q8_K for k-quants) and multiplied
    /// with the quant crate's SIMD dot products. Float weights, the router, norms and attention
    /// stay as in reference mode. Tolerance against reference mode: see the tests (NMSE <= 1e-3
    /// per op; measured ~1e-5 to 1e-4).
    Fast,
}

/// The CPU backend.
#[derive(Debug, Clone, Default)]
pub struct CpuBackend {
    mode: CpuMode,
}

impl CpuBackend {
    /// The reference backend.
    pub fn new() -> CpuBackend {
        CpuBackend {
            mode: CpuMode::Reference,
        }
    }

    /// The fast backend ([`CpuMode::Fast`]).
    pub fn new_fast() -> CpuBackend {
        CpuBackend {
            mode: CpuMode::Fast,
        }
    }

    /// A backend in the given mode.
    pub fn with_mode(mode: CpuMode) -> CpuBackend {
        CpuBackend { mode }
    }

    /// The mode this backend computes in.
    pub fn mode(&self) -> CpuMode {
        self.mode
    }
}

/// An f32 row-major matrix in host memory.
#[derive(Debug, Clone, PartialEq)]
pub struct CpuTensor {
    data: Vec<f32>,
    rows: usize,
    cols: usize,
}

impl CpuTensor {
    /// A `[rows, cols]` matrix from `data`; `None` if the length is not `rows * cols`.
    pub fn new(data: Vec<f32>, rows: usize, cols: usize) -> Option<CpuTensor> {
        (rows.checked_mul(cols) == Some(data.len())).then_some(CpuTensor { data, rows, cols })
    }

    /// The values, row-major.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// Rows (tokens).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The values, by move.
    pub fn into_vec(self) -> Vec<f32> {
        self.data
    }

    /// One row.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }
}

fn shape_err(op: &'static str, detail: String) -> BackendError {
    BackendError::Shape { op, detail }
}

impl Backend for CpuBackend {
    type Tensor = CpuTensor;
    type Weight = CpuWeight;
    type KvCache = CpuKvCache;

    fn name(&self) -> String {
        match self.mode {
            CpuMode::Reference => "cpu".into(),
            CpuMode::Fast => "cpu (fast: q8 activations)".into(),
        }
    }

    fn upload(&self, w: &WeightData) -> Result<CpuWeight> {
        CpuWeight::new(w)
    }

    fn from_host(&self, data: &[f32], rows: usize, cols: usize) -> Result<CpuTensor> {
        CpuTensor::new(data.to_vec(), rows, cols).ok_or_else(|| {
            shape_err(
                "from_host",
                format!("{} values for a [{rows}, {cols}] matrix", data.len()),
            )
        })
    }

    fn to_host(&self, t: &CpuTensor) -> Result<(Vec<f32>, usize, usize)> {
        Ok((t.data.clone(), t.rows, t.cols))
    }

    fn embed(&self, table: &CpuWeight, ids: &[u32]) -> Result<CpuTensor> {
        let s = table.shape();
        if s.len() != 2 {
            return Err(shape_err(
                "embed",
                format!("table '{}' has shape {s:?}", table.name()),
            ));
        }
        let (d, vocab) = (s[0], s[1]);
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= vocab) {
            return Err(shape_err(
                "embed",
                format!("token id {bad} is outside the vocabulary of {vocab}"),
            ));
        }
        let mut out = vec![0f32; ids.len() * d];
        out.par_chunks_mut(d)
            .zip(ids.par_iter())
            .try_for_each(|(o, &id)| table.decode_rows(id as usize, 1, o))?;
        Ok(CpuTensor {
            data: out,
            rows: ids.len(),
            cols: d,
        })
    }

    fn rms_norm(&self, x: &CpuTensor, weight: &CpuWeight, eps: f32) -> Result<CpuTensor> {
        let d = x.cols;
        weight.expect_shape("rms_norm", &[d])?;
        let w = weight.dense()?;
        let mut out = vec![0f32; x.data.len()];
        if d > 0 {
            out.par_chunks_mut(d)
                .zip(x.data.par_chunks(d))
                .for_each(|(o, r)| {
                    let ss: f64 = r.iter().map(|&v| (v as f64) * (v as f64)).sum();
                    let mean = (ss / d as f64) as f32;
                    let inv = 1.0 / (mean + eps).sqrt();
                    for ((y, &v), &g) in o.iter_mut().zip(r).zip(w) {
                        *y = g * (v * inv);
                    }
                });
        }
        Ok(CpuTensor {
            data: out,
            rows: x.rows,
            cols: d,
        })
    }

    fn linear(&self, x: &CpuTensor, w: &CpuWeight, bias: Option<&CpuWeight>) -> Result<CpuTensor> {
        let ws = w.shape();
        if ws.len() != 2 || ws[0] != x.cols {
            return Err(shape_err(
                "linear",
                format!(
                    "x [{}, {}] times weight '{}' {ws:?}",
                    x.rows,
                    x.cols,
                    w.name()
                ),
            ));
        }
        let n = ws[1];
        let b = match bias {
            Some(b) => {
                b.expect_shape("linear", &[n])?;
                Some(b.dense()?)
            }
            None => None,
        };
        let data = linear::linear(&x.data, x.rows, w, b, self.mode == CpuMode::Fast)?;
        Ok(CpuTensor {
            data,
            rows: x.rows,
            cols: n,
        })
    }

    fn add_assign(&self, x: &mut CpuTensor, y: &CpuTensor) -> Result<()> {
        if (x.rows, x.cols) != (y.rows, y.cols) {
            return Err(shape_err(
                "add_assign",
                format!("[{}, {}] += [{}, {}]", x.rows, x.cols, y.rows, y.cols),
            ));
        }
        x.data
            .par_iter_mut()
            .zip(y.data.par_iter())
            .for_each(|(a, b)| *a += b);
        Ok(())
    }

    fn rope(&self, x: &mut CpuTensor, n_heads: usize, pos0: usize, rope: &Rope) -> Result<()> {
        let hd = rope.head_dim;
        if hd == 0
            || !hd.is_multiple_of(2)
            || rope.inv_freq.len() != hd / 2
            || n_heads * hd != x.cols
        {
            return Err(shape_err(
                "rope",
                format!("{n_heads} heads of dim {hd} in rows of {} values", x.cols),
            ));
        }
        let cols = x.cols;
        if cols == 0 {
            return Ok(());
        }
        x.data.par_chunks_mut(cols).enumerate().for_each_init(
            || (vec![0f32; hd / 2], vec![0f32; hd / 2]),
            |(c, s), (i, row)| {
                rope.cos_sin(pos0 + i, c, s);
                for head in row.chunks_exact_mut(hd) {
                    Rope::apply_head(head, c, s);
                }
            },
        );
        Ok(())
    }

    fn new_kv_cache(&self, cfg: &KvCacheConfig) -> Result<CpuKvCache> {
        CpuKvCache::new(cfg)
    }

    fn attention(
        &self,
        q: &CpuTensor,
        k: &CpuTensor,
        v: &CpuTensor,
        cache: &mut CpuKvCache,
        pos0: usize,
        sinks: &CpuWeight,
        cfg: &AttentionConfig,
    ) -> Result<CpuTensor> {
        if k.rows != q.rows || v.rows != q.rows {
            return Err(shape_err(
                "attention",
                format!("q/k/v have {}/{}/{} rows", q.rows, k.rows, v.rows),
            ));
        }
        let data = attention::attention(
            &q.data,
            &k.data,
            &v.data,
            q.rows,
            cache,
            pos0,
            sinks.dense()?,
            cfg,
        )?;
        Ok(CpuTensor {
            data,
            rows: q.rows,
            cols: cfg.n_heads * cfg.head_dim,
        })
    }

    fn moe(&self, x: &CpuTensor, w: &MoeWeights<CpuWeight>, cfg: &MoeConfig) -> Result<CpuTensor> {
        let fast = self.mode == CpuMode::Fast;
        let data = moe::moe(&x.data, x.rows, x.cols, w, cfg, 0..cfg.n_experts, fast)?;
        Ok(CpuTensor {
            data,
            rows: x.rows,
            cols: x.cols,
        })
    }

    fn moe_local(
        &self,
        x: &CpuTensor,
        w: &MoeWeights<CpuWeight>,
        cfg: &MoeConfig,
        experts: std::ops::Range<usize>,
    ) -> Result<CpuTensor> {
        let fast = self.mode == CpuMode::Fast;
        let data = moe::moe(&x.data, x.rows, x.cols, w, cfg, experts, fast)?;
        Ok(CpuTensor {
            data,
            rows: x.rows,
            cols: x.cols,
        })
    }

    fn argmax(&self, x: &CpuTensor) -> Result<Vec<u32>> {
        if x.cols == 0 {
            return Err(shape_err(
                "argmax",
                "rows of 0 values have no maximum".into(),
            ));
        }
        Ok(x.data
            .chunks_exact(x.cols)
            .map(|r| {
                let mut best = 0;
                for (i, &v) in r.iter().enumerate() {
                    if v > r[best] {
                        best = i;
                    }
                }
                best as u32
            })
            .collect())
    }

    fn last_row(&self, x: &CpuTensor) -> Result<CpuTensor> {
        if x.rows == 0 {
            return Err(shape_err("last_row", "the matrix has no rows".into()));
        }
        Ok(CpuTensor {
            data: x.row(x.rows - 1).to_vec(),
            rows: 1,
            cols: x.cols,
        })
    }

    /// The process's peak resident memory (`VmHWM` in /proc/self/status, Linux only): the CPU
    /// backend's device memory is the host's, and this includes every mapped weight page touched.
    fn peak_memory_bytes(&self) -> Option<u64> {
        let s = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        kib.checked_mul(1024)
    }
}
