//! NVRTC for the FP4 kernels: their own program (`common.cuh`, then `fp4_moe.cu`), compiled only
//! for the architectures that have the block-scaled `mma.sync` (or, with emulation, for any
//! sm_89+ test device); for data-center Blackwell (sm_100a / sm_103a) the program adds
//! `fp4_tcgen05.cu`, whose `tcgen05.mma` matmul kernels replace the `mma.sync` ones
//! (`-DGPTOSS_FP4_TCGEN05`, descriptor constants from [`super::tcgen05::kernel_defines`]).

pub use crate::compile::Output;

/// The FP4 program's sources, in order.
pub const SOURCES: &[(&str, &str)] = &[
    ("common.cuh", include_str!("../kernels/common.cuh")),
    ("fp4_moe.cu", include_str!("../kernels/fp4_moe.cu")),
];

/// The tcgen05 program's sources, in order.
pub const TCGEN05_SOURCES: &[(&str, &str)] = &[
    ("common.cuh", include_str!("../kernels/common.cuh")),
    ("fp4_moe.cu", include_str!("../kernels/fp4_moe.cu")),
    ("fp4_tcgen05.cu", include_str!("../kernels/fp4_tcgen05.cu")),
];

/// Every kernel of the FP4 program (both variants define all of them).
pub const KERNEL_NAMES: &[&str] = &[
    "fp4_group",
    "fp4_quant_mxfp8",
    "fp4_moe_gate_up",
    "fp4_moe_down",
    "fp4_moe_combine",
];

/// The architectures with a native FP4 kernel: consumer Blackwell (RTX 50xx, RTX PRO) and
/// DGX Spark's GB10.
pub const ARCHES: &[&str] = &["sm_120a", "sm_121a"];

/// The architectures of the tcgen05 variant: data-center Blackwell (B200 / GB200, B300 / GB300).
pub const TCGEN05_ARCHES: &[&str] = &["sm_100a", "sm_103a"];

/// Texts the PTX of the tcgen05 variant must contain: the block-scaled MMA, the scale copy to
/// tensor memory, allocation and the accumulator read-back.
pub const TCGEN05_PTX: &[&str] = &[
    "tcgen05.mma.cta_group::1.kind::mxf8f6f4.block_scale.scale_vec::1X",
    "tcgen05.cp.cta_group::1.32x128b.warpx4",
    "tcgen05.alloc.cta_group::1.sync.aligned.shared::cta.b32",
    "tcgen05.dealloc.cta_group::1.sync.aligned.b32",
    "tcgen05.commit.cta_group::1.mbarrier::arrive::one.shared::cluster.b64",
    "tcgen05.ld.sync.aligned.32x32b.x8.b32",
];

/// Whether `arch` (`sm_100a`, `compute_103a`, ...) takes the tcgen05 variant.
pub fn is_tcgen05(arch: &str) -> bool {
    ["_100", "_103"].iter().any(|a| arch.contains(a))
}

/// The text the PTX of a native (not emulated) build must contain.
pub const MMA_PTX: &str = "mma.sync.aligned.kind::mxf8f6f4.block_scale.scale_vec::1X.m16n8k32.row.col.f32.e2m1.e4m3.f32.ue8m0";

fn source(arch: &str) -> String {
    crate::compile::join_sources(if is_tcgen05(arch) {
        TCGEN05_SOURCES
    } else {
        SOURCES
    })
}

fn options(arch: &str, emulate: bool) -> Result<Vec<String>, String> {
    let mut o = vec![
        format!("--gpu-architecture={arch}"),
        "--std=c++17".into(),
        "--fmad=true".into(),
    ];
    if emulate {
        o.push("-DGPTOSS_FP4_EMULATE".into());
    }
    if is_tcgen05(arch) {
        if emulate {
            return Err(format!(
                "{arch}: the tcgen05 kernels have no emulated build (use the sm_120 emulation)"
            ));
        }
        o.push("-DGPTOSS_FP4_TCGEN05".into());
        o.extend(super::tcgen05::kernel_defines()?);
    }
    Ok(o)
}

/// The cubin for `arch` from the kernel cache (the directory of [`crate::compile::cached_cubin`]),
/// or compiled and stored there; a cache that cannot be written is not an error.
pub fn cached_cubin(arch: &str, emulate: bool) -> Result<Vec<u8>, String> {
    let opts = options(arch, emulate)?;
    crate::compile::cached("cuda-fp4", arch, &source(arch), &opts, || {
        compile(arch, emulate, Output::Cubin)
    })
}

/// Compile the FP4 program for `arch` (`sm_120a` for a cubin, `compute_120a` for PTX), with the
/// MMA emulated in software if `emulate`. Errors carry NVRTC's log.
pub fn compile(arch: &str, emulate: bool, what: Output) -> Result<Vec<u8>, String> {
    if !crate::compile::nvrtc_available() {
        return Err("libnvrtc not found (see compile::nvrtc_available)".into());
    }
    let opts = options(arch, emulate)?;
    crate::compile::compile_program(&source(arch), c"gptoss_fp4.cu", &opts, what, false)
        .map_err(|e| format!("NVRTC failed to compile the FP4 kernels for {arch}: {e}"))
}
