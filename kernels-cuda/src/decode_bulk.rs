//! One-token Q8_0 products fed by bulk copies (`kernels/gemv_bulk.cu`, sm_90+): each block's
//! eight weight rows are requested by the copy engine into shared memory as soon as the block
//! is resident (before it waits for the previous kernel), instead of four steps of a row at a
//! time through registers. Which products take them is a bit set, `GPTOSS_CUDA_GEMV_BULK`
//! (default [`BULK_DEFAULT`]; `0` turns them off, for A/B measurements).

/// Products of at most [`TALL_ROWS`] rows (the attention output projection).
pub(crate) const BULK_LINEAR: u8 = 1;
/// The fused q/k/v products with RoPE (decode_fused.rs).
pub(crate) const BULK_QKV: u8 = 2;
/// Taller products (the output matrix), which run in many waves of blocks.
pub(crate) const BULK_TALL: u8 = 4;
/// On by default: the attention output and q/k/v products.
pub(crate) const BULK_DEFAULT: u8 = BULK_LINEAR | BULK_QKV;
/// Rows above which a product counts as tall.
pub(crate) const TALL_ROWS: usize = 32768;

/// The bit set for a device of compute capability `major` (bulk copies and mbarriers need
/// sm_90).
pub(crate) fn bulk_from_env(major: i32) -> u8 {
    if major < 9 {
        return 0;
    }
    std::env::var("GPTOSS_CUDA_GEMV_BULK")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(BULK_DEFAULT)
}

/// The dynamic shared memory of a bulk-fed block for rows of `k` values: eight rows of Q8_0
/// blocks (32 bytes of values, 2 of scale each), within the 48 KiB a launch gets without an
/// opt-in; None where k does not allow it (not whole blocks, too wide).
pub(crate) fn bulk_smem(k: usize) -> Option<u32> {
    let bytes = 8 * (k / 32) * 34;
    (k > 0 && k.is_multiple_of(32) && bytes <= 48 * 1024).then_some(bytes as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_memory_fits_gpt_oss_widths_and_refuses_odd_ones() {
        assert_eq!(bulk_smem(2880), Some(24480));
        assert_eq!(bulk_smem(4096), Some(34816));
        assert_eq!(bulk_smem(5760), Some(48960).filter(|&b| b <= 49152));
        assert_eq!(bulk_smem(5792), None);
        assert_eq!(bulk_smem(100), None);
        assert_eq!(bulk_smem(0), None);
    }
}
