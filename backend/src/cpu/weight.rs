//! A weight on the CPU: the file's bytes (zero copy), its type and shape, decoded on demand.

use std::sync::OnceLock;

use super::codec;
use crate::{BackendError, GgmlType, HostBytes, Result, WeightData};

/// A weight uploaded to the CPU backend: the bytes exactly as in the file (a view of the mmap when
/// the caller passed one), decoded row by row when an operation needs them.
pub struct CpuWeight {
    name: String,
    dtype: GgmlType,
    shape: Vec<usize>,
    bytes: HostBytes,
    /// Bytes of one row (`shape[0]` elements).
    row_bytes: usize,
    /// The whole tensor decoded to f32, made on first use by operations that read a weight as a
    /// vector (biases, norm weights, sinks); large matrices never fill it.
    dense: OnceLock<std::result::Result<Vec<f32>, String>>,
}

impl std::fmt::Debug for CpuWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuWeight")
            .field("name", &self.name)
            .field("dtype", &self.dtype)
            .field("shape", &self.shape)
            .finish()
    }
}

impl CpuWeight {
    /// Check `w` (shape against bytes, block divisibility, a decodable type) and keep its bytes.
    pub(crate) fn new(w: &WeightData) -> Result<CpuWeight> {
        let shape_err = |detail: String| BackendError::Shape {
            op: "upload",
            detail: format!("weight '{}': {detail}", w.name),
        };
        if w.shape.is_empty() || w.shape.contains(&0) {
            return Err(shape_err(format!("empty shape {:?}", w.shape)));
        }
        if !codec::can_decode(w.dtype) {
            return Err(BackendError::UnsupportedType {
                op: "upload",
                name: w.name.clone(),
                dtype: w.dtype,
            });
        }
        let numel = w
            .shape
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d as u64))
            .ok_or_else(|| shape_err(format!("shape {:?} overflows", w.shape)))?;
        let bs = w.dtype.block_size();
        if !w.shape[0].is_multiple_of(bs) {
            return Err(shape_err(format!(
                "row length {} is not a multiple of the {} block size {bs}",
                w.shape[0], w.dtype
            )));
        }
        let need = w
            .dtype
            .bytes_for(numel)
            .ok_or_else(|| shape_err(format!("size of shape {:?} overflows", w.shape)))?;
        if need != w.bytes.len() as u64 {
            return Err(shape_err(format!(
                "shape {:?} of {} needs {need} bytes, got {}",
                w.shape,
                w.dtype,
                w.bytes.len()
            )));
        }
        let row_bytes = (w.shape[0] / bs) * w.dtype.type_size();
        Ok(CpuWeight {
            name: w.name.clone(),
            dtype: w.dtype,
            shape: w.shape.clone(),
            bytes: w.bytes.clone(),
            row_bytes,
            dense: OnceLock::new(),
        })
    }

    /// The weight's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its ggml type.
    pub fn dtype(&self) -> GgmlType {
        self.dtype
    }

    /// Its shape in ggml order.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Elements per row (`shape[0]`).
    pub(crate) fn row_len(&self) -> usize {
        self.shape[0]
    }

    /// Number of rows of `shape[0]` elements.
    pub(crate) fn n_rows(&self) -> usize {
        self.numel() / self.shape[0]
    }

    /// The raw bytes of rows `first..first + count`.
    pub(crate) fn row_bytes(&self, first: usize, count: usize) -> &[u8] {
        &self.bytes[first * self.row_bytes..(first + count) * self.row_bytes]
    }

    /// Decode rows `first..first + count` into `dst` (`count * row_len` elements).
    pub(crate) fn decode_rows(&self, first: usize, count: usize, dst: &mut [f32]) -> Result<()> {
        codec::dequantize(self.dtype, self.row_bytes(first, count), dst).map_err(|m| {
            BackendError::Device {
                backend: "cpu".into(),
                message: format!(
                    "decoding '{}' rows {first}..{}: {m}",
                    self.name,
                    first + count
                ),
            }
        })
    }

    /// The whole tensor as f32, decoded once and kept (for vectors: biases, norms, sinks).
    pub(crate) fn dense(&self) -> Result<&[f32]> {
        let r = self.dense.get_or_init(|| {
            let mut v = vec![0f32; self.numel()];
            codec::dequantize(self.dtype, &self.bytes, &mut v).map(|()| v)
        });
        r.as_deref().map_err(|m| BackendError::Device {
            backend: "cpu".into(),
            message: format!("decoding '{}': {m}", self.name),
        })
    }

    /// Check that the weight is a `[dims...]` tensor (trailing dimensions of 1 are ignored).
    pub(crate) fn expect_shape(&self, op: &'static str, dims: &[usize]) -> Result<()> {
        let mut s: &[usize] = &self.shape;
        while s.len() > dims.len() && s.last() == Some(&1) {
            s = &s[..s.len() - 1];
        }
        if s != dims {
            return Err(BackendError::Shape {
                op,
                detail: format!(
                    "weight '{}' has shape {:?}, expected {dims:?}",
                    self.name, self.shape
                ),
            });
        }
        Ok(())
    }
}
