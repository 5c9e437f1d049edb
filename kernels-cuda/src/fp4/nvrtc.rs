//! NVRTC for the FP4 kernels: their own program (`common.cuh`, then `fp4_moe.cu`), compiled only
//! for the architectures that have the block-scaled `mma.sync` (or, with emulation, for any
//! sm_89+ test device); for data-center Blackwell (sm_100a / sm_103a) the program adds
//! `fp4_tcgen05.cu`, whose `tcgen05.mma` matmul kernels replace the `mma.sync` ones
//! (`-DGPTOSS_FP4_TCGEN05`, descriptor constants from [`super::tcgen05::kernel_defines`]).

use std::ffi::{CStr, CString};

use cudarc::nvrtc::{result as nvrtc, sys as nvrtc_sys};

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
    let srcs = if is_tcgen05(arch) {
        TCGEN05_SOURCES
    } else {
        SOURCES
    };
    let mut s = String::new();
    for (name, text) in srcs {
        s.push_str(&format!("#line 1 \"{name}\"\n{text}\n"));
    }
    s
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

/// What one compilation produced.
pub enum Output {
    /// A cubin (for `sm_XX[a]`).
    Cubin,
    /// PTX text (for `compute_XX[a]`).
    Ptx,
}

/// The cubin for `arch` from the kernel cache (the directory of [`crate::compile::cached_cubin`]),
/// or compiled and stored there; a cache that cannot be written is not an error.
pub fn cached_cubin(arch: &str, emulate: bool) -> Result<Vec<u8>, String> {
    let (major, minor) = crate::compile::nvrtc_version()?;
    let src = source(arch);
    let opts = options(arch, emulate)?.join(" ");
    let ver = format!("{major}.{minor}");
    let key = crate::compile::fnv1a(&[
        src.as_bytes(),
        opts.as_bytes(),
        ver.as_bytes(),
        arch.as_bytes(),
    ]);
    let file =
        crate::compile::cache_dir().map(|d| d.join(format!("cuda-fp4-{arch}-{key:016x}.cubin")));
    if let Some(f) = &file
        && let Ok(bytes) = std::fs::read(f)
        && !bytes.is_empty()
    {
        return Ok(bytes);
    }
    let cubin = compile(arch, emulate, Output::Cubin)?;
    if let Some(f) = &file
        && let Some(dir) = f.parent()
        && std::fs::create_dir_all(dir).is_ok()
    {
        let tmp = f.with_extension(format!("tmp{}", std::process::id()));
        if std::fs::write(&tmp, &cubin).is_ok() && std::fs::rename(&tmp, f).is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
    }
    Ok(cubin)
}

/// Compile the FP4 program for `arch` (`sm_120a` for a cubin, `compute_120a` for PTX), with the
/// MMA emulated in software if `emulate`. Errors carry NVRTC's log.
pub fn compile(arch: &str, emulate: bool, what: Output) -> Result<Vec<u8>, String> {
    if !crate::compile::nvrtc_available() {
        return Err("libnvrtc not found (see compile::nvrtc_available)".into());
    }
    let src =
        CString::new(source(arch)).map_err(|e| format!("FP4 kernel source has a NUL: {e}"))?;
    let prog = nvrtc::create_program(&src, Some(c"gptoss_fp4.cu"))
        .map_err(|e| format!("nvrtcCreateProgram: {e:?}"))?;
    // SAFETY: `prog` was just created and is destroyed exactly once below; `src` outlives it.
    let out = unsafe { build(prog, arch, emulate, what) };
    // SAFETY: as above.
    let _ = unsafe { nvrtc::destroy_program(prog) };
    out
}

/// # Safety
/// `prog` must be a live NVRTC program.
unsafe fn build(
    prog: nvrtc_sys::nvrtcProgram,
    arch: &str,
    emulate: bool,
    what: Output,
) -> Result<Vec<u8>, String> {
    let opts = options(arch, emulate)?;
    // SAFETY: guaranteed by the caller.
    let compiled = unsafe { nvrtc::compile_program(prog, &opts) };
    if let Err(e) = compiled {
        // SAFETY: guaranteed by the caller.
        let log = unsafe { nvrtc::get_program_log(prog) }
            .map(|l| {
                // SAFETY: NVRTC returns a NUL-terminated log.
                unsafe { CStr::from_ptr(l.as_ptr()) }
                    .to_string_lossy()
                    .into_owned()
            })
            .unwrap_or_default();
        return Err(format!(
            "NVRTC failed to compile the FP4 kernels for {arch}: {e:?}\n{log}"
        ));
    }
    let mut size = 0usize;
    let mut bytes;
    match what {
        Output::Cubin => {
            // SAFETY: guaranteed by the caller; `size` is a valid out-pointer.
            unsafe { nvrtc_sys::nvrtcGetCUBINSize(prog, &mut size) }
                .result()
                .map_err(|e| format!("nvrtcGetCUBINSize for {arch}: {e:?}"))?;
            bytes = vec![0u8; size];
            if size > 0 {
                // SAFETY: `bytes` has the size NVRTC asked for.
                unsafe { nvrtc_sys::nvrtcGetCUBIN(prog, bytes.as_mut_ptr().cast()) }
                    .result()
                    .map_err(|e| format!("nvrtcGetCUBIN for {arch}: {e:?}"))?;
            }
        }
        Output::Ptx => {
            // SAFETY: guaranteed by the caller; `size` is a valid out-pointer.
            unsafe { nvrtc_sys::nvrtcGetPTXSize(prog, &mut size) }
                .result()
                .map_err(|e| format!("nvrtcGetPTXSize for {arch}: {e:?}"))?;
            bytes = vec![0u8; size];
            if size > 0 {
                // SAFETY: `bytes` has the size NVRTC asked for.
                unsafe { nvrtc_sys::nvrtcGetPTX(prog, bytes.as_mut_ptr().cast()) }
                    .result()
                    .map_err(|e| format!("nvrtcGetPTX for {arch}: {e:?}"))?;
            }
            // Drop the terminating NUL.
            while bytes.last() == Some(&0) {
                bytes.pop();
            }
        }
    }
    if bytes.is_empty() {
        return Err(format!("NVRTC produced nothing for {arch}"));
    }
    Ok(bytes)
}
