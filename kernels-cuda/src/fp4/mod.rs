//! The Blackwell FP4 tensor-core path of the MoE experts.
//!
//! On consumer Blackwell (sm_120 / sm_121) the expert matmuls run on the block-scaled MMA
//! `mma.sync.aligned.m16n8k32.row.col.kind::mxf8f6f4.block_scale.scale_vec::1X` with the
//! MXFP4 weights read straight from the GGUF's blocks (E2M1 codes, E8M0 scales: the
//! instruction's own formats) and the activations quantized on the fly to MXFP8 (E4M3 with one
//! E8M0 scale per 32): W4A8. The kernels are `kernels/fp4_moe.cu`, compiled by NVRTC for
//! `sm_120a` / `sm_121a` only ([`nvrtc`]).
//!
//! On data-center Blackwell (sm_100 / sm_103: B200, GB200, B300) the same W4A8 product runs on
//! `tcgen05.mma.cta_group::1.kind::mxf8f6f4.block_scale.scale_vec::1X` with operands staged in
//! shared memory, scales and accumulators in tensor memory: `kernels/fp4_tcgen05.cu`, compiled
//! for `sm_100a` / `sm_103a` ([`tcgen05`] has its descriptors, layouts and CPU model).
//!
//! - [`formats`]: the E2M1 / E4M3 / UE8M0 formats, decoded exactly and encoded as the kernels do.
//! - [`model`]: a CPU model of the `mma.sync` instruction: fragment layout and semantics.
//! - [`pack`]: how the sm_120 kernels fill each lane's registers, mirrored on the host and
//!   tested through the model.
//! - [`tcgen05`]: the sm_100 kernels' instruction / shared-memory descriptors, staging layouts,
//!   tensor-memory scale layout and a CPU model of the block-scaled `tcgen05.mma`.
//! - [`Fp4Mode`] and the run-time selection: [`crate::CudaBackend::set_fp4`].
//!
//! Both paths are compile-checked and model-checked in CI and self-checked on the device at
//! first use; neither has run on Blackwell hardware in this project's own testing.

pub mod formats;
pub mod model;
pub mod nvrtc;
pub mod pack;
pub(crate) mod run;
pub mod tcgen05;

pub use run::Fp4Status;

/// `--fp4`: whether the MoE experts use the FP4 tensor-core path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Fp4Mode {
    /// Where the device has a kernel for it (sm_120 / sm_121, sm_100 / sm_103), after a
    /// self-check passes; else the portable path.
    #[default]
    Auto,
    /// Required: refused on a device without the instruction; a failed self-check is an error.
    On,
    /// Never.
    Off,
}

impl std::str::FromStr for Fp4Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(Fp4Mode::Auto),
            "on" => Ok(Fp4Mode::On),
            "off" => Ok(Fp4Mode::Off),
            o => Err(format!(
                "unknown --fp4 mode '{o}' (expected auto, on or off)"
            )),
        }
    }
}

/// The NVRTC architecture of the FP4 kernels for a device of compute capability
/// `major.minor`, or `None` where there is no FP4 kernel for it (the reason in the error).
pub fn fp4_arch(major: i32, minor: i32) -> Result<&'static str, String> {
    match (major, minor) {
        (12, 0) => Ok("sm_120a"),
        (12, 1) => Ok("sm_121a"),
        (10, 0) => Ok("sm_100a"),
        (10, 3) => Ok("sm_103a"),
        _ => Err(format!(
            "compute capability {major}.{minor} has no block-scaled FP4 MMA kernel in gptoss \
             (it needs sm_120 / sm_121, or tcgen05 on sm_100 / sm_103)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fp4_arch_by_compute_capability() {
        assert_eq!(fp4_arch(12, 0), Ok("sm_120a"));
        assert_eq!(fp4_arch(12, 1), Ok("sm_121a"));
        assert_eq!(fp4_arch(10, 0), Ok("sm_100a"));
        assert_eq!(fp4_arch(10, 3), Ok("sm_103a"));
        for (ma, mi) in [(9, 0), (8, 9), (10, 1), (11, 0)] {
            let e = fp4_arch(ma, mi).unwrap_err();
            assert!(e.contains(&format!("compute capability {ma}.{mi}")), "{e}");
        }
        // The tcgen05 program goes with exactly the sm_100 / sm_103 architectures.
        assert!(nvrtc::TCGEN05_ARCHES.iter().all(|a| nvrtc::is_tcgen05(a)));
        assert!(nvrtc::ARCHES.iter().all(|a| !nvrtc::is_tcgen05(a)));
        assert!(!nvrtc::is_tcgen05("sm_90a"));
    }
}
