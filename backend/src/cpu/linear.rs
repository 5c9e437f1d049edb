//! Matrix products of f32 activations with weights in any decodable format (reference mode).

use rayon::prelude::*;

use super::codec;
use super::weight::CpuWeight;
use crate::{GgmlType, Result};

/// f32 dot product with 16 independent accumulators (vectorizes; the error grows like
/// sqrt(n/16) ulps rather than n).
#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 16];
    let (ac, bc) = (a.chunks_exact(16), b.chunks_exact(16));
    let (ar, br) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    for (i, (x, y)) in ar.iter().zip(br).enumerate() {
        acc[i] += x * y;
    }
    // Pairwise reduction of the lanes.
    let mut w = 16;
    while w > 1 {
        w /= 2;
        for i in 0..w {
            acc[i] += acc[i + w];
        }
    }
    acc[0]
}

/// Rows per parallel task: enough tasks to balance the pool, few enough to amortize scheduling.
pub(crate) fn rows_per_task(n_rows: usize, work_per_row: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    // Aim for ~8 tasks per thread, each with at least ~64k multiply-adds.
    let by_balance = n_rows.div_ceil(threads * 8);
    let by_size = (1 << 16) / work_per_row.max(1);
    by_balance.max(by_size).clamp(1, n_rows.max(1))
}

/// Transpose `src` (`[a, b]` row-major) into `[b, a]`.
pub(crate) fn transpose(src: &[f32], a: usize, b: usize) -> Vec<f32> {
    let mut dst = vec![0f32; a * b];
    if a == 1 || b == 1 {
        dst.copy_from_slice(src);
        return dst;
    }
    dst.par_chunks_mut(a).enumerate().for_each(|(j, row)| {
        for (i, d) in row.iter_mut().enumerate() {
            *d = src[i * b + j];
        }
    });
    dst
}

/// Activations as the row kernels read them.
pub(crate) enum Acts<'a> {
    /// f32 rows of `k` values (reference mode).
    F32 {
        /// `[rows, k]`.
        data: &'a [f32],
        /// Row length.
        k: usize,
    },
    /// Rows quantized to `ty` (fast mode), each `ty.bytes_for(k)` bytes.
    Quant {
        /// The activation type (`vec_dot_type` of the weight type).
        ty: GgmlType,
        /// `[rows, row_bytes]`.
        data: &'a [u8],
        /// Elements per row.
        k: usize,
        /// Bytes per row.
        row_bytes: usize,
    },
}

impl Acts<'_> {
    fn k(&self) -> usize {
        match self {
            Acts::F32 { k, .. } | Acts::Quant { k, .. } => *k,
        }
    }
}

/// Activation rows quantized for the weight type `wty`, owned.
pub(crate) struct QuantActs {
    ty: GgmlType,
    data: Vec<u8>,
    k: usize,
    row_bytes: usize,
}

impl QuantActs {
    /// Quantize `t` rows of `k` values of `x` to `vec_dot_type(wty)`.
    pub(crate) fn new(x: &[f32], t: usize, k: usize, wty: GgmlType) -> Result<QuantActs> {
        let ty = codec::vec_dot_type(wty);
        let row_bytes = codec::row_bytes(ty, k)?;
        let mut data = vec![0u8; t * row_bytes];
        if t > 1 {
            data.par_chunks_mut(row_bytes)
                .zip(x.par_chunks(k))
                .try_for_each(|(d, r)| codec::quantize(ty, r, d))?;
        } else if t == 1 {
            codec::quantize(ty, &x[..k], &mut data)?;
        }
        Ok(QuantActs {
            ty,
            data,
            k,
            row_bytes,
        })
    }

    /// The rows as the kernels read them.
    pub(crate) fn acts(&self) -> Acts<'_> {
        self.rows(0, self.data.len() / self.row_bytes.max(1))
    }

    /// Rows `first..first + count`.
    pub(crate) fn rows(&self, first: usize, count: usize) -> Acts<'_> {
        let rb = self.row_bytes;
        Acts::Quant {
            ty: self.ty,
            data: &self.data[first * rb..(first + count) * rb],
            k: self.k,
            row_bytes: rb,
        }
    }
}

/// Per-thread scratch of the row kernels.
#[derive(Default)]
pub(crate) struct Scratch {
    row: Vec<f32>,
}

/// Rows `row0..row0 + out.len() / toks.len()` of `w` against the activation rows `toks`:
/// `out[r * toks.len() + i] = W[row0 + r] . acts[toks[i]] + bias[r]` (`bias` indexed from `row0`).
pub(crate) fn rows_dot(
    w: &CpuWeight,
    row0: usize,
    acts: &Acts<'_>,
    toks: &[usize],
    bias: Option<&[f32]>,
    out: &mut [f32],
    scratch: &mut Scratch,
) -> Result<()> {
    let nt = toks.len();
    if nt == 0 {
        return Ok(());
    }
    let k = acts.k();
    match acts {
        Acts::F32 { data, .. } => {
            scratch.row.resize(k, 0.0);
            for (r, o) in out.chunks_exact_mut(nt).enumerate() {
                w.decode_rows(row0 + r, 1, &mut scratch.row)?;
                let b = bias.map_or(0.0, |b| b[r]);
                for (y, &tok) in o.iter_mut().zip(toks) {
                    *y = dot(&scratch.row, &data[tok * k..(tok + 1) * k]) + b;
                }
            }
        }
        Acts::Quant {
            ty,
            data,
            row_bytes,
            ..
        } => {
            let wty = w.dtype();
            if nt > 1 {
                // Several activation rows: the tiled kernels read and unpack each weight row once.
                let n_rows = out.len() / nt;
                let acts: Vec<&[u8]> = toks
                    .iter()
                    .map(|&tok| &data[tok * row_bytes..(tok + 1) * row_bytes])
                    .collect();
                codec::vec_dot_tile(wty, w.row_bytes(row0, n_rows), n_rows, *ty, &acts, k, out)?;
                // `+ 0.0` without a bias too, as the one-token path does (turns -0 into +0).
                for (r, o) in out.chunks_exact_mut(nt).enumerate() {
                    let b = bias.map_or(0.0, |b| b[r]);
                    o.iter_mut().for_each(|y| *y += b);
                }
                return Ok(());
            }
            for (r, o) in out.chunks_exact_mut(nt).enumerate() {
                let wr = w.row_bytes(row0 + r, 1);
                let b = bias.map_or(0.0, |b| b[r]);
                for (y, &tok) in o.iter_mut().zip(toks) {
                    let a = &data[tok * row_bytes..(tok + 1) * row_bytes];
                    *y = codec::vec_dot(wty, wr, *ty, a, k)? + b;
                }
            }
        }
    }
    Ok(())
}

/// `x @ W^T (+ bias)` written transposed: `out` is `[n, t]` (row r holds output column r for
/// every token), `toks` lists the `t` activation rows.
pub(crate) fn matmul_t(
    acts: &Acts<'_>,
    toks: &[usize],
    w: &CpuWeight,
    bias: Option<&[f32]>,
    out: &mut [f32],
) -> Result<()> {
    let t = toks.len();
    if t == 0 {
        return Ok(());
    }
    let n = out.len() / t;
    let per = rows_per_task(n, acts.k() * t);
    out.par_chunks_mut(per * t).enumerate().try_for_each_init(
        Scratch::default,
        |scratch, (ci, chunk)| -> Result<()> {
            let r0 = ci * per;
            rows_dot(w, r0, acts, toks, bias.map(|b| &b[r0..]), chunk, scratch)
        },
    )
}

/// Whether fast mode quantizes activations for weights of type `wty`: only for block types, whose
/// dot kernels work on quantized activations; float weights keep the reference f32 path.
pub(crate) fn fast_applies(wty: GgmlType) -> bool {
    wty.is_quantized()
}

/// Linear: `x` `[t, k]`, `w` `[k, n]`, result `[t, n]`. In fast mode (for block-quantized
/// weights) the activations are quantized once per row and multiplied with quantized dot
/// products; otherwise the weights are decoded to f32.
pub(crate) fn linear(
    x: &[f32],
    t: usize,
    w: &CpuWeight,
    bias: Option<&[f32]>,
    fast: bool,
) -> Result<Vec<f32>> {
    let n = w.n_rows();
    let k = w.row_len();
    let toks: Vec<usize> = (0..t).collect();
    let mut yt = vec![0f32; n * t];
    if fast && fast_applies(w.dtype()) {
        let q = QuantActs::new(x, t, k, w.dtype())?;
        matmul_t(&q.acts(), &toks, w, bias, &mut yt)?;
    } else {
        matmul_t(&Acts::F32 { data: x, k }, &toks, w, bias, &mut yt)?;
    }
    if t == 1 {
        Ok(yt)
    } else {
        Ok(transpose(&yt, n, t))
    }
}

/// Reference linear (f32 activations, decoded weights).
pub(crate) fn linear_ref(
    x: &[f32],
    t: usize,
    w: &CpuWeight,
    bias: Option<&[f32]>,
) -> Result<Vec<f32>> {
    linear(x, t, w, bias, false)
}
