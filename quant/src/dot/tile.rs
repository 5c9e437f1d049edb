//! Many rows times many activation rows at once ([`vec_dot_tile`]): the CPU backend's prefill
//! product. Each weight row is unpacked once per call and reused for every activation row, and
//! each activation row is reused for several weight rows; the results are bit-identical to
//! [`super::vec_dot_with`] on every pair (same integer block sums, same float operations in the
//! same order), which the tests check.

use super::{Dispatch, current_dispatch, vec_dot_with};
use crate::error::{check_bytes, n_blocks};
use crate::{GgmlType, QuantError};

/// `out[r * acts.len() + t] = vec_dot(wty, row r of w, aty, acts[t], n)` for the `n_rows`
/// consecutive rows of `n` elements in `w`, using [`current_dispatch`]. Native tiled kernels:
/// MXFP4 x Q8_0 and Q8_0 x Q8_0 on AVX2 / AVX-512 VNNI and on NEON (with or without `sdot`);
/// every other case computes the pairs one
/// by one with [`super::vec_dot`] (same results, no speed-up).
pub fn vec_dot_tile(
    wty: GgmlType,
    w: &[u8],
    n_rows: usize,
    aty: GgmlType,
    acts: &[&[u8]],
    n: usize,
    out: &mut [f32],
) -> Result<(), QuantError> {
    vec_dot_tile_with(current_dispatch(), wty, w, n_rows, aty, acts, n, out)
}

/// [`vec_dot_tile`] with an explicit dispatch (one this CPU cannot run is replaced by
/// [`Dispatch::best`]).
#[allow(clippy::too_many_arguments)]
pub fn vec_dot_tile_with(
    dispatch: Dispatch,
    wty: GgmlType,
    w: &[u8],
    n_rows: usize,
    aty: GgmlType,
    acts: &[&[u8]],
    n: usize,
    out: &mut [f32],
) -> Result<(), QuantError> {
    let nb = n_blocks(wty, n)?;
    let row_bytes = nb * wty.type_size();
    let total = row_bytes.checked_mul(n_rows);
    if total != Some(w.len()) {
        return Err(QuantError::SizeMismatch {
            name: "weights",
            expected: total.unwrap_or(usize::MAX),
            found: w.len(),
        });
    }
    for a in acts {
        check_bytes(aty, n, a.len(), "activations")?;
    }
    let want = n_rows * acts.len();
    if out.len() != want {
        return Err(QuantError::SizeMismatch {
            name: "output",
            expected: want,
            found: out.len(),
        });
    }
    if want == 0 {
        return Ok(());
    }
    let dispatch = if dispatch.is_available_cached() {
        dispatch
    } else {
        Dispatch::best()
    };
    #[cfg(target_arch = "x86_64")]
    if let Some(kind) = super::x86_tile::Kind::pick(dispatch, wty, aty) {
        super::x86_tile::run(kind, w, n_rows, row_bytes, acts, nb, out);
        return Ok(());
    }
    #[cfg(target_arch = "aarch64")]
    if let Some(kind) = super::neon_tile::Kind::pick(dispatch, wty, aty) {
        super::neon_tile::run(kind, w, n_rows, row_bytes, acts, nb, out);
        return Ok(());
    }
    for (r, o) in out.chunks_exact_mut(acts.len()).enumerate() {
        let wr = &w[r * row_bytes..(r + 1) * row_bytes];
        for (y, a) in o.iter_mut().zip(acts) {
            *y = vec_dot_with(dispatch, wty, wr, aty, a, n)?;
        }
    }
    Ok(())
}
