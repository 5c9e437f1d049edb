//! Run-time compilation of the CUDA kernels with NVRTC, straight to a cubin for one
//! architecture, with an on-disk cache keyed by the source, the options, the NVRTC version and
//! the architecture.

use std::ffi::{CStr, CString};
use std::path::PathBuf;

use cudarc::nvrtc::{result as nvrtc, sys as nvrtc_sys};

/// The kernel sources, in the order they are concatenated into one NVRTC program.
pub const KERNEL_SOURCES: &[(&str, &str)] = &[
    ("common.cuh", include_str!("kernels/common.cuh")),
    ("basic.cu", include_str!("kernels/basic.cu")),
    ("linear.cu", include_str!("kernels/linear.cu")),
    ("attention.cu", include_str!("kernels/attention.cu")),
    ("moe.cu", include_str!("kernels/moe.cu")),
    ("gemm_tc.cu", include_str!("kernels/gemm_tc.cu")),
    ("flash_tc.cu", include_str!("kernels/flash_tc.cu")),
    ("quants.cu", include_str!("kernels/quants.cu")),
];

/// Every kernel the backend launches (checked to exist after each compilation).
pub const KERNEL_NAMES: &[&str] = &[
    "embed",
    "rms_norm",
    "add_assign",
    "rope",
    "argmax_rows",
    "spin",
    "linear_rows",
    "gemv_q8_0",
    "gemv_mxfp4",
    "quantize_q8",
    "gemv_q8_0_pre",
    "gemv_mxfp4_pre",
    "gemv_q8_0_r1",
    "gemv_mxfp4_r1",
    "gemv_q8_0_pre_r1",
    "gemv_mxfp4_pre_r1",
    "gemvf_q8_0",
    "gemvf_mxfp4",
    "gemvf_q8_0_r1",
    "gemvf_mxfp4_r1",
    "moe_gate_up_mxfp4_f",
    "moe_down_mxfp4_f",
    "moe_down_mxfp4_fk",
    "moe_gate_up_mxfp4_r1",
    "moe_gate_up_mxfp4_r2",
    "moe_gate_up_mxfp4_r4",
    "moe_down_mxfp4_r1",
    "moe_down_mxfp4_r2",
    "moe_down_mxfp4_r4",
    "gemvf3_q8_0",
    "gemvf3_mxfp4",
    "gemvf3_q8_0_r1",
    "gemvf3_mxfp4_r1",
    "gemm_tiled",
    "attn_partial_d1",
    "attn_partial_d2",
    "attn_partial_d3",
    "attn_partial_d4",
    "attn_partial_d5",
    "attn_partial_d6",
    "attn_partial_d7",
    "attn_partial_d8",
    "attn_combine",
    "attn_decode_d1",
    "attn_decode_d2",
    "attn_decode_d3",
    "attn_decode_d4",
    "attn_decode_d5",
    "attn_decode_d6",
    "attn_decode_d7",
    "attn_decode_d8",
    "kv_append",
    "moe_router_topk",
    "moe_gate_up_mxfp4",
    "moe_down_mxfp4",
    "moe_gate_up_any",
    "moe_down_any",
    "gemm_tc_q8_0",
    "gemm_tc_mxfp4",
    "gemm_tc_f16",
    "gemm_tc_bf16",
    "gemm_tc_f32",
    "moe_tc_group",
    "moe_tc_gate_up",
    "moe_tc_down",
    "moe_sum_slots",
    "flash_attn_tc_d32",
    "flash_attn_tc_d64",
    "flash_attn_tc_d128",
];

/// The architectures CI compiles for: Ampere, Hopper (with its `a` features), consumer Blackwell.
pub const CI_ARCHES: &[&str] = &["sm_80", "sm_90a", "sm_120a"];

/// The whole program: every file, each preceded by a `#line` so that NVRTC's messages name it.
pub fn full_source() -> String {
    let mut s = String::new();
    for (name, text) in KERNEL_SOURCES {
        s.push_str(&format!("#line 1 \"{name}\"\n"));
        s.push_str(text);
        s.push('\n');
    }
    s
}

fn options(arch: &str) -> Vec<String> {
    let mut o = vec![
        format!("--gpu-architecture={arch}"),
        "--std=c++17".into(),
        // Exact f32 division and square root: the norms must match the CPU to 1e-6.
        "--prec-div=true".into(),
        "--prec-sqrt=true".into(),
        "--fmad=true".into(),
    ];
    // GPTOSS_NVRTC_VERBOSE=1 adds ptxas' resource report (registers, spills) to the log.
    if std::env::var("GPTOSS_NVRTC_VERBOSE").is_ok_and(|v| v == "1") {
        o.push("--ptxas-options=-v".into());
    }
    o
}

/// True when libnvrtc can be loaded (searched as cudarc does: `LD_LIBRARY_PATH`, system paths).
pub fn nvrtc_available() -> bool {
    // SAFETY: only tries to open the shared library; no symbol is called.
    unsafe { nvrtc_sys::is_culib_present() }
}

/// NVRTC's version `(major, minor)`.
pub fn nvrtc_version() -> Result<(i32, i32), String> {
    if !nvrtc_available() {
        return Err(no_nvrtc());
    }
    let (mut major, mut minor) = (0i32, 0i32);
    // SAFETY: the library is present; the two out-pointers are valid for the call.
    let r = unsafe { nvrtc_sys::nvrtcVersion(&mut major, &mut minor) };
    r.result()
        .map_err(|e| format!("nvrtcVersion failed: {e:?}"))?;
    Ok((major, minor))
}

fn no_nvrtc() -> String {
    "libnvrtc (CUDA's run-time compiler) was not found: install the CUDA toolkit or `pip install \
     nvidia-cuda-nvrtc` and put its lib directory (nvidia/cu13/lib) on LD_LIBRARY_PATH"
        .to_string()
}

/// Compile every kernel for `arch` (`sm_90a`, ...) and return the cubin. Errors carry NVRTC's log.
pub fn compile_cubin(arch: &str) -> Result<Vec<u8>, String> {
    if !nvrtc_available() {
        return Err(no_nvrtc());
    }
    let src = CString::new(full_source()).map_err(|e| format!("kernel source has a NUL: {e}"))?;
    let name = c"gptoss_kernels.cu";
    let prog = nvrtc::create_program(&src, Some(name))
        .map_err(|e| format!("nvrtcCreateProgram: {e:?}"))?;
    // SAFETY: `prog` was just created and is destroyed exactly once below; `src` and `name`
    // outlive it.
    let out = unsafe { compile_and_get(prog, arch) };
    // SAFETY: as above.
    let _ = unsafe { nvrtc::destroy_program(prog) };
    out
}

/// # Safety
/// `prog` must be a live NVRTC program.
unsafe fn compile_and_get(prog: nvrtc_sys::nvrtcProgram, arch: &str) -> Result<Vec<u8>, String> {
    let opts = options(arch);
    // SAFETY: guaranteed by the caller.
    let compiled = unsafe { nvrtc::compile_program(prog, &opts) };
    // SAFETY: guaranteed by the caller.
    let log = unsafe { nvrtc::get_program_log(prog) }
        .map(|l| {
            // SAFETY: NVRTC returns a NUL-terminated log.
            unsafe { CStr::from_ptr(l.as_ptr()) }
                .to_string_lossy()
                .into_owned()
        })
        .unwrap_or_default();
    if let Err(e) = compiled {
        return Err(format!(
            "NVRTC failed to compile the kernels for {arch}: {e:?}\n{log}"
        ));
    }
    if std::env::var("GPTOSS_NVRTC_VERBOSE").is_ok_and(|v| v == "1") {
        eprintln!("{log}");
    }
    let mut size = 0usize;
    // SAFETY: guaranteed by the caller; `size` is a valid out-pointer.
    unsafe { nvrtc_sys::nvrtcGetCUBINSize(prog, &mut size) }
        .result()
        .map_err(|e| format!("nvrtcGetCUBINSize for {arch}: {e:?}"))?;
    if size == 0 {
        return Err(format!(
            "NVRTC produced no cubin for {arch} (is it a real architecture?)"
        ));
    }
    let mut cubin = vec![0u8; size];
    // SAFETY: `cubin` has the size NVRTC asked for.
    unsafe { nvrtc_sys::nvrtcGetCUBIN(prog, cubin.as_mut_ptr().cast()) }
        .result()
        .map_err(|e| format!("nvrtcGetCUBIN for {arch}: {e:?}"))?;
    Ok(cubin)
}

/// FNV-1a, 64 bit: a cache key that stays the same across Rust versions.
pub(crate) fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in *p {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

pub(crate) fn cache_dir() -> Option<PathBuf> {
    if let Ok(d) = std::env::var("GPTOSS_CACHE_DIR") {
        return Some(PathBuf::from(d));
    }
    if let Ok(d) = std::env::var("XDG_CACHE_HOME") {
        return Some(PathBuf::from(d).join("gptoss"));
    }
    std::env::var("HOME")
        .ok()
        .map(|h| PathBuf::from(h).join(".cache/gptoss"))
}

/// The cubin for `arch` from the disk cache (`$GPTOSS_CACHE_DIR`, else `~/.cache/gptoss`), or
/// compiled and stored there (written to a temp file, then renamed). A cache that cannot be
/// written is not an error.
pub fn cached_cubin(arch: &str) -> Result<Vec<u8>, String> {
    let (major, minor) = nvrtc_version()?;
    let src = full_source();
    let ver = format!("{major}.{minor}");
    let opts = options(arch).join(" ");
    let key = fnv1a(&[
        src.as_bytes(),
        opts.as_bytes(),
        ver.as_bytes(),
        arch.as_bytes(),
    ]);
    let file = cache_dir().map(|d| d.join(format!("cuda-{arch}-{key:016x}.cubin")));
    if let Some(f) = &file
        && let Ok(bytes) = std::fs::read(f)
        && !bytes.is_empty()
    {
        return Ok(bytes);
    }
    let cubin = compile_cubin(arch)?;
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
