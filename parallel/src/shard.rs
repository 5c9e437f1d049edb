//! Cutting a weight's bytes into per-rank shares before upload, so that each device receives
//! only its own part.

use std::ops::Range;

use gptoss_backend::{BackendError, HostBytes, Result, WeightData};

fn err(w: &WeightData, detail: String) -> BackendError {
    BackendError::Shape {
        op: "split upload",
        detail: format!("{}: {detail}", w.name),
    }
}

/// Split `0..n` into `parts` contiguous ranges made of whole `align`-sized units, as evenly as
/// possible (sizes differ by at most one unit). `None` when `n` is not a multiple of `align` or
/// there are fewer units than parts.
pub fn split_aligned(n: usize, align: usize, parts: usize) -> Option<Vec<Range<usize>>> {
    if parts == 0 || align == 0 || !n.is_multiple_of(align) {
        return None;
    }
    let units = n / align;
    if units < parts {
        return None;
    }
    Some(
        (0..parts)
            .map(|r| (r * units / parts * align)..((r + 1) * units / parts * align))
            .collect(),
    )
}

/// Bytes of one row of `ne0` elements, checking that the row is a whole number of blocks.
fn row_bytes(w: &WeightData) -> Result<usize> {
    let ne0 = *w
        .shape
        .first()
        .ok_or_else(|| err(w, "tensor has no dimensions".into()))?;
    let bs = w.dtype.block_size();
    if !ne0.is_multiple_of(bs) {
        return Err(err(
            w,
            format!("row of {ne0} is not a whole number of {bs}-blocks"),
        ));
    }
    let rb = ne0 / bs * w.dtype.type_size();
    let rows: usize = w.shape[1..].iter().product();
    if rows.checked_mul(rb) != Some(w.bytes.len()) {
        return Err(err(
            w,
            format!(
                "{} bytes, but shape {:?} of {} needs {rows} rows of {rb}",
                w.bytes.len(),
                w.shape,
                w.dtype
            ),
        ));
    }
    Ok(rb)
}

/// The columns `cols` of every row (a range along `ne0`, the contiguous dimension): for a
/// matrix `[k, n]` that is a slice of the input features. The range must fall on block
/// boundaries of the weight's type.
pub fn slice_ne0(w: &WeightData, cols: Range<usize>) -> Result<WeightData> {
    let rb = row_bytes(w)?;
    let (bs, ts) = (w.dtype.block_size(), w.dtype.type_size());
    if cols.start > cols.end
        || cols.end > w.shape[0]
        || !cols.start.is_multiple_of(bs)
        || !cols.end.is_multiple_of(bs)
    {
        return Err(err(
            w,
            format!(
                "columns {cols:?} of {} are not whole {bs}-blocks of {}",
                w.shape[0], w.dtype
            ),
        ));
    }
    let (a, b) = (cols.start / bs * ts, cols.end / bs * ts);
    let rows = w.bytes.len() / rb.max(1);
    let mut out = Vec::with_capacity(rows * (b - a));
    for row in w.bytes.chunks_exact(rb.max(1)).take(rows) {
        out.extend_from_slice(&row[a..b]);
    }
    let mut shape = w.shape.clone();
    shape[0] = cols.len();
    Ok(WeightData {
        name: w.name.clone(),
        dtype: w.dtype,
        shape,
        bytes: HostBytes::from_vec(out),
    })
}

/// The rows `rows` (a range along `ne1`) of every `[ne0, ne1]` slab: for a matrix `[k, n]` a
/// slice of the output features, for an expert stack `[k, n, experts]` the same rows of every
/// expert.
pub fn slice_ne1(w: &WeightData, rows: Range<usize>) -> Result<WeightData> {
    if w.shape.len() < 2 {
        return Err(err(w, format!("shape {:?} has no rows to split", w.shape)));
    }
    let rb = row_bytes(w)?;
    let ne1 = w.shape[1];
    if rows.start > rows.end || rows.end > ne1 {
        return Err(err(w, format!("rows {rows:?} out of {ne1}")));
    }
    let slab = ne1 * rb;
    let slabs: usize = w.shape[2..].iter().product();
    let mut out = Vec::with_capacity(slabs * rows.len() * rb);
    for s in 0..slabs {
        let base = s * slab;
        out.extend_from_slice(&w.bytes[base + rows.start * rb..base + rows.end * rb]);
    }
    let mut shape = w.shape.clone();
    shape[1] = rows.len();
    Ok(WeightData {
        name: w.name.clone(),
        dtype: w.dtype,
        shape,
        bytes: HostBytes::from_vec(out),
    })
}

/// The slabs `range` along the last dimension (for an expert stack `[k, n, experts]` or its
/// biases `[n, experts]`: the experts `range`). Each slab is contiguous in the file, so the
/// result is a zero-copy view of the same bytes (of the memory map, for a loaded model).
pub fn slice_last(w: &WeightData, range: Range<usize>) -> Result<WeightData> {
    let Some(&n) = w.shape.last() else {
        return Err(err(w, "tensor has no dimensions".into()));
    };
    if w.shape.len() < 2 {
        return Err(err(w, format!("shape {:?} has no slabs to split", w.shape)));
    }
    let rb = row_bytes(w)?;
    let slab = w.shape[1..w.shape.len() - 1].iter().product::<usize>() * rb;
    if range.start > range.end || range.end > n {
        return Err(err(w, format!("slabs {range:?} out of {n}")));
    }
    let bytes = w
        .bytes
        .slice(range.start * slab..range.end * slab)
        .ok_or_else(|| err(w, format!("slabs {range:?} past the tensor's bytes")))?;
    let mut shape = w.shape.clone();
    *shape.last_mut().expect("checked non-empty") = range.len();
    Ok(WeightData {
        name: w.name.clone(),
        dtype: w.dtype,
        shape,
        bytes,
    })
}

/// A tensor of the same type and shape whose bytes are all zero (zero bytes decode to 0.0 in
/// every ggml type: float bits, and block scales of zero).
pub fn zeros_like(w: &WeightData) -> WeightData {
    WeightData {
        name: w.name.clone(),
        dtype: w.dtype,
        shape: w.shape.clone(),
        bytes: HostBytes::from_vec(vec![0u8; w.bytes.len()]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gptoss_backend::GgmlType;

    fn f32_weight(shape: &[usize], vals: &[f32]) -> WeightData {
        WeightData {
            name: "t".into(),
            dtype: GgmlType::F32,
            shape: shape.to_vec(),
            bytes: HostBytes::from_vec(vals.iter().flat_map(|v| v.to_le_bytes()).collect()),
        }
    }

    fn values(w: &WeightData) -> Vec<f32> {
        w.bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    #[test]
    fn split_aligned_is_even_and_covers_everything() {
        assert_eq!(split_aligned(96, 32, 2).unwrap(), vec![0..32, 32..96]);
        assert_eq!(
            split_aligned(2880, 32, 2).unwrap(),
            vec![0..1440, 1440..2880]
        );
        assert_eq!(
            split_aligned(8, 1, 4).unwrap(),
            vec![0..2, 2..4, 4..6, 6..8]
        );
        assert!(split_aligned(96, 32, 4).is_none(), "3 blocks over 4 ranks");
        assert!(split_aligned(100, 32, 2).is_none(), "not whole blocks");
        assert!(split_aligned(8, 1, 0).is_none());
    }

    #[test]
    fn slices_pick_the_right_elements() {
        // [ne0=3, ne1=2, ne2=2]: element (i0, i1, i2) = 100*i2 + 10*i1 + i0.
        let vals: Vec<f32> = (0..12)
            .map(|i| (100 * (i / 6) + 10 * ((i / 3) % 2) + i % 3) as f32)
            .collect();
        let w = f32_weight(&[3, 2, 2], &vals);
        let c = slice_ne0(&w, 1..3).unwrap();
        assert_eq!(c.shape, vec![2, 2, 2]);
        assert_eq!(values(&c), vec![1., 2., 11., 12., 101., 102., 111., 112.]);
        let r = slice_ne1(&w, 1..2).unwrap();
        assert_eq!(r.shape, vec![3, 1, 2]);
        assert_eq!(values(&r), vec![10., 11., 12., 110., 111., 112.]);
        assert!(slice_ne1(&w, 1..3).is_err());
        let l = slice_last(&w, 1..2).unwrap();
        assert_eq!(l.shape, vec![3, 2, 1]);
        assert_eq!(values(&l), vec![100., 101., 102., 110., 111., 112.]);
        assert!(slice_last(&w, 1..3).is_err());
        // A 2-d tensor's last dimension: its rows.
        let b = f32_weight(&[2, 3], &[0., 1., 10., 11., 20., 21.]);
        assert_eq!(
            values(&slice_last(&b, 1..3).unwrap()),
            vec![10., 11., 20., 21.]
        );
        assert!(slice_ne0(&w, 2..4).is_err());
    }

    #[test]
    fn quantized_columns_must_fall_on_block_boundaries() {
        // Q8_0: 34 bytes per 32 values.
        let w = WeightData {
            name: "q".into(),
            dtype: GgmlType::Q8_0,
            shape: vec![64, 2],
            bytes: HostBytes::from_vec((0..136u8).collect()),
        };
        let c = slice_ne0(&w, 32..64).unwrap();
        assert_eq!(c.shape, vec![32, 2]);
        let expect: Vec<u8> = (34..68u8).chain(102..136u8).collect();
        assert_eq!(&*c.bytes, &expect[..]);
        let e = slice_ne0(&w, 16..64).unwrap_err().to_string();
        assert!(e.contains("whole 32-blocks"), "{e}");
        let short = WeightData {
            bytes: HostBytes::from_vec(vec![0; 100]),
            ..w
        };
        assert!(slice_ne0(&short, 0..32).is_err(), "byte count checked");
    }
}
