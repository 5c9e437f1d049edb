//! Weights on the device, in their file formats.
//!
//! A weight is viewed as a matrix of `rows` rows of `k = shape[0]` elements (an expert stack
//! `[k, n, E]` is `n * E` rows, expert e's rows starting at `e * n`). Block formats whose blocks
//! are not a multiple of 4 bytes are re-laid out as the same bits so that a shader can read
//! them as `u32` words: all quant/nibble words first, then the scales. A weight larger than the
//! adapter's binding limit is split by row ranges into several buffers ("parts").

use std::sync::Arc;

use gptoss_backend::{BackendError, GgmlType, Result, WeightData};

use crate::ctx::{Ctx, GpuBuf};

/// One row range of a weight in one buffer.
pub(crate) struct Part {
    pub(crate) buf: Arc<GpuBuf>,
    /// First global row.
    pub(crate) row0: usize,
    /// Rows held.
    pub(crate) rows: usize,
    /// Word offset of the scales (quantized types), else 0.
    pub(crate) soff: u32,
}

/// The weight formats the kernels read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Fmt {
    F32,
    F16,
    Bf16,
    Q8_0,
    Mxfp4,
}

impl Fmt {
    pub(crate) fn of(t: GgmlType) -> Option<Fmt> {
        Some(match t {
            GgmlType::F32 => Fmt::F32,
            GgmlType::F16 => Fmt::F16,
            GgmlType::BF16 => Fmt::Bf16,
            GgmlType::Q8_0 => Fmt::Q8_0,
            GgmlType::MXFP4 => Fmt::Mxfp4,
            _ => return None,
        })
    }

    /// The WGSL snippet that decodes this format.
    pub(crate) fn snippet(self) -> &'static str {
        match self {
            Fmt::F32 => include_str!("shaders/w_f32.wgsl"),
            Fmt::F16 => include_str!("shaders/w_f16.wgsl"),
            Fmt::Bf16 => include_str!("shaders/w_bf16.wgsl"),
            Fmt::Q8_0 => include_str!("shaders/w_q8_0.wgsl"),
            Fmt::Mxfp4 => include_str!("shaders/w_mxfp4.wgsl"),
        }
    }

    /// The lane-group kernels (`wdec`, word by word) read this format.
    pub(crate) fn lane_words(self) -> bool {
        matches!(self, Fmt::Q8_0 | Fmt::Mxfp4)
    }

    /// Bytes of `rows` rows of `k` elements, as uploaded.
    fn part_bytes(self, k: usize, rows: usize) -> usize {
        let n = k * rows;
        match self {
            Fmt::F32 => n * 4,
            Fmt::F16 | Fmt::Bf16 => (n * 2).div_ceil(4) * 4,
            Fmt::Q8_0 => (n / 32) * 32 + ((n / 32) * 2).div_ceil(4) * 4,
            Fmt::Mxfp4 => (n / 32) * 16 + (n / 32).div_ceil(4) * 4,
        }
    }

    fn file_block(self) -> (usize, usize) {
        match self {
            Fmt::F32 => (1, 4),
            Fmt::F16 | Fmt::Bf16 => (1, 2),
            Fmt::Q8_0 => (32, 34),
            Fmt::Mxfp4 => (32, 17),
        }
    }
}

/// A weight on the device.
pub struct WgpuWeight {
    pub(crate) name: String,
    pub(crate) dtype: GgmlType,
    pub(crate) fmt: Fmt,
    pub(crate) shape: Vec<usize>,
    /// Row length.
    pub(crate) k: usize,
    /// Rows (product of the other dimensions).
    pub(crate) rows: usize,
    pub(crate) parts: Vec<Part>,
    /// The values as f32, for weights used as vectors (norms, biases, sinks): float types of
    /// modest size only (converting a half or bfloat to f32 is exact).
    pub(crate) dense: Option<Arc<GpuBuf>>,
}

impl std::fmt::Debug for WgpuWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WgpuWeight")
            .field("name", &self.name)
            .field("dtype", &self.dtype)
            .field("shape", &self.shape)
            .field("parts", &self.parts.len())
            .finish()
    }
}

/// Float weights up to this many elements also get an f32 copy for use as vectors.
const DENSE_MAX: usize = 1 << 22;

impl WgpuWeight {
    /// The shape in ggml order.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The weight's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The ggml type it was uploaded from.
    pub fn dtype(&self) -> GgmlType {
        self.dtype
    }

    /// The f32 view of a vector-like weight, or an error naming the operation.
    pub(crate) fn dense(&self, op: &'static str) -> Result<&wgpu::Buffer> {
        self.dense
            .as_ref()
            .map(|b| &b.buf)
            .ok_or_else(|| BackendError::UnsupportedType {
                op,
                name: self.name.clone(),
                dtype: self.dtype,
            })
    }

    pub(crate) fn expect_shape(&self, op: &'static str, shape: &[usize]) -> Result<()> {
        if self.shape != shape {
            return Err(BackendError::Shape {
                op,
                detail: format!(
                    "weight '{}' has shape {:?}, expected {shape:?}",
                    self.name, self.shape
                ),
            });
        }
        Ok(())
    }
}

pub(crate) fn upload(ctx: &Ctx, w: &WeightData) -> Result<WgpuWeight> {
    let shape_err = |detail: String| BackendError::Shape {
        op: "upload",
        detail: format!("weight '{}': {detail}", w.name),
    };
    let fmt = Fmt::of(w.dtype).ok_or_else(|| BackendError::UnsupportedType {
        op: "upload",
        name: w.name.clone(),
        dtype: w.dtype,
    })?;
    if w.shape.is_empty() || w.shape.contains(&0) {
        return Err(shape_err(format!("empty shape {:?}", w.shape)));
    }
    let k = w.shape[0];
    let rows = w.shape[1..]
        .iter()
        .try_fold(1usize, |a, &b| a.checked_mul(b))
        .ok_or_else(|| shape_err(format!("shape {:?} overflows", w.shape)))?;
    let (blk, blk_bytes) = fmt.file_block();
    if !k.is_multiple_of(blk) {
        return Err(shape_err(format!(
            "row length {k} is not a multiple of the block size {blk}"
        )));
    }
    let row_bytes = k / blk * blk_bytes;
    let total = row_bytes
        .checked_mul(rows)
        .ok_or_else(|| shape_err(format!("shape {:?} overflows", w.shape)))?;
    if w.bytes.len() != total {
        return Err(shape_err(format!(
            "{} bytes for shape {:?} of {:?} (expected {total})",
            w.bytes.len(),
            w.shape,
            w.dtype
        )));
    }
    // Element indices inside a part are u32 in the kernels.
    let max_bytes = ctx.caps.max_weight_part as usize;
    let per_row = fmt.part_bytes(k, 1) + 4;
    let rows_per_part =
        (max_bytes.saturating_sub(16) / per_row).min((u32::MAX as usize) / k.max(1));
    if rows_per_part == 0 {
        return Err(BackendError::Device {
            backend: crate::ctx::NAME.into(),
            message: format!(
                "weight '{}': one row of {per_row} bytes exceeds the adapter's binding limit of {max_bytes} bytes",
                w.name
            ),
        });
    }
    let src = w.bytes.as_slice();
    let mut parts = Vec::new();
    let mut row0 = 0;
    while row0 < rows {
        let n = rows_per_part.min(rows - row0);
        let bytes = &src[row0 * row_bytes..(row0 + n) * row_bytes];
        let size = fmt.part_bytes(k, n);
        let what = format!("weight '{}'", w.name);
        let (buf, soff) = match fmt {
            Fmt::F32 | Fmt::F16 | Fmt::Bf16 => (ctx.storage_init(bytes, &what)?, 0),
            Fmt::Q8_0 => {
                let nb = k * n / 32;
                let buf = ctx.storage_with(size as u64, &what, |dst| {
                    let (qs, sc) = dst.split_at_mut(nb * 32);
                    for (b, blk) in bytes.chunks_exact(34).enumerate() {
                        sc[b * 2..b * 2 + 2].copy_from_slice(&blk[..2]);
                        qs[b * 32..b * 32 + 32].copy_from_slice(&blk[2..]);
                    }
                })?;
                (buf, (nb * 8) as u32)
            }
            Fmt::Mxfp4 => {
                let nb = k * n / 32;
                let buf = ctx.storage_with(size as u64, &what, |dst| {
                    let (qs, sc) = dst.split_at_mut(nb * 16);
                    for (b, blk) in bytes.chunks_exact(17).enumerate() {
                        sc[b] = blk[0];
                        qs[b * 16..b * 16 + 16].copy_from_slice(&blk[1..]);
                    }
                })?;
                (buf, (nb * 4) as u32)
            }
        };
        parts.push(Part {
            buf,
            row0,
            rows: n,
            soff,
        });
        row0 += n;
    }
    let numel = k * rows;
    let dense = match fmt {
        Fmt::F32 if parts.len() == 1 => Some(parts[0].buf.clone()),
        Fmt::F32 if numel <= DENSE_MAX && numel * 4 <= ctx.caps.max_binding as usize => {
            Some(ctx.storage_init(src, &format!("weight '{}'", w.name))?)
        }
        Fmt::F16 | Fmt::Bf16
            if numel <= DENSE_MAX && numel * 4 <= ctx.caps.max_binding as usize =>
        {
            let vals: Vec<f32> = src
                .chunks_exact(2)
                .map(|c| {
                    let h = u16::from_le_bytes([c[0], c[1]]);
                    if fmt == Fmt::F16 {
                        half::f16::from_bits(h).to_f32()
                    } else {
                        half::bf16::from_bits(h).to_f32()
                    }
                })
                .collect();
            Some(ctx.storage_init(bytemuck::cast_slice(&vals), &format!("weight '{}'", w.name))?)
        }
        _ => None,
    };
    Ok(WgpuWeight {
        name: w.name.clone(),
        dtype: w.dtype,
        fmt,
        shape: w.shape.clone(),
        k,
        rows,
        parts,
        dense,
    })
}
