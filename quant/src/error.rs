//! The one error type of this crate.

use gguf_format::GgmlType;

/// Why a quantization operation was refused. Nothing in this crate panics on bad sizes or
/// unsupported types; every public entry point checks its arguments and returns one of these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantError {
    /// The type has no implementation of this operation (e.g. quantizing to IQ2_XXS, which
    /// needs an importance matrix in ggml, or a type this crate does not know how to decode).
    #[error("{op} is not supported for ggml type {ty}")]
    Unsupported {
        /// The type asked for.
        ty: GgmlType,
        /// The operation: "dequantize", "quantize", "vec_dot", ...
        op: &'static str,
    },
    /// A dot product was asked for a weight/activation pair this crate does not pair.
    #[error(
        "vec_dot of {weight} weights with {activation} activations is not supported (use vec_dot_type({weight}) = {expected})"
    )]
    UnsupportedPair {
        /// Weight type.
        weight: GgmlType,
        /// Activation type given.
        activation: GgmlType,
        /// The activation type that would work.
        expected: GgmlType,
    },
    /// The element count is not a whole number of blocks.
    #[error("{n} elements is not a multiple of the {ty} block size {block}")]
    NotBlockMultiple {
        /// The type.
        ty: GgmlType,
        /// The element count given.
        n: usize,
        /// Elements per block of `ty`.
        block: usize,
    },
    /// A buffer has the wrong length.
    #[error("{name} has the wrong length: expected {expected}, found {found}")]
    SizeMismatch {
        /// Which buffer ("src", "dst", "weights", "activations").
        name: &'static str,
        /// The length required.
        expected: usize,
        /// The length given.
        found: usize,
    },
}

/// Number of blocks for `n` elements of `ty`, or the error saying why `n` is not a whole number
/// of blocks.
pub(crate) fn n_blocks(ty: GgmlType, n: usize) -> Result<usize, QuantError> {
    let bs = ty.block_size();
    if !n.is_multiple_of(bs) {
        return Err(QuantError::NotBlockMultiple { ty, n, block: bs });
    }
    Ok(n / bs)
}

/// Checks that `bytes` is exactly the encoded size of `n` elements of `ty`; returns the block count.
pub(crate) fn check_bytes(
    ty: GgmlType,
    n: usize,
    bytes: usize,
    name: &'static str,
) -> Result<usize, QuantError> {
    let nb = n_blocks(ty, n)?;
    let expected = nb
        .checked_mul(ty.type_size())
        .ok_or(QuantError::SizeMismatch {
            name,
            expected: usize::MAX,
            found: bytes,
        })?;
    if expected != bytes {
        return Err(QuantError::SizeMismatch {
            name,
            expected,
            found: bytes,
        });
    }
    Ok(nb)
}
