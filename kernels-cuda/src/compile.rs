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
    ("moe_wgmma.cu", include_str!("kernels/moe_wgmma.cu")),
    ("gemm_wgmma.cu", include_str!("kernels/gemm_wgmma.cu")),
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
    "sample_max",
    "sample_draw",
    "sample_gather",
    "sample_kth",
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
    "moe_router_topk_q",
    "moe_router_topk_q_add",
    "moe_gate_up_mma",
    "moe_down_mma",
    "moe_gate_up_planes_r1",
    "moe_down_planes_r2",
    "gemv3_q8_0_mma",
    "gemvf3_q8_0",
    "gemvf3_mxfp4",
    "gemvf3_q8_0_r1",
    "gemvf3_mxfp4_r1",
    "gemvf3_q8_0_r1_rope",
    "gemvf3_mxfp4_r1_rope",
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
    "attn_dtc_d1",
    "attn_dtc_d2",
    "attn_dtc_d3",
    "attn_dtc_d4",
    "attn_dtc_d5",
    "attn_dtc_d6",
    "attn_dtc_d7",
    "attn_dtc_d8",
    "add_rms_norm",
    "rope_qk",
    "rope_cs",
    "kv_append",
    "moe_localize_ids",
    "moe_router_topk",
    "moe_router_rows",
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
    "moe_wg_prep_x",
    "moe_wg_gate_up",
    "moe_wg_down",
    "moe_wg4_gate_up",
    "moe_wg4_down",
    "gemm_wg_prep_x",
    "gemm_wg_q8_0",
    "flash_attn_tc_d32",
    "flash_attn_tc_d64",
    "flash_attn_tc_d128",
    "gemm_tcs_q8_0",
    "gemm_tcs_mxfp4",
    "gemm_tcs_f16",
    "gemm_tcs_bf16",
    "gemm_tcs_f32",
    "moe_tcs_gate_up",
    "moe_tcs_down",
    "flash_attn_tcs_d32",
    "flash_attn_tcs_d64",
    "flash_attn_tcs_d128",
];

/// The architectures CI compiles for: Ampere, Hopper (with its `a` features), consumer Blackwell.
pub const CI_ARCHES: &[&str] = &["sm_80", "sm_90a", "sm_120a"];

/// The whole program: every file, each preceded by a `#line` so that NVRTC's messages name it.
pub fn full_source() -> String {
    join_sources(KERNEL_SOURCES)
}

/// Files concatenated into one program, each preceded by a `#line` naming it.
pub(crate) fn join_sources(sources: &[(&str, &str)]) -> String {
    let mut s = String::new();
    for (name, text) in sources {
        s.push_str(&format!("#line 1 \"{name}\"\n{text}\n"));
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
    let verbose = std::env::var("GPTOSS_NVRTC_VERBOSE").is_ok_and(|v| v == "1");
    compile_program(
        &full_source(),
        c"gptoss_kernels.cu",
        &options(arch),
        Output::Cubin,
        verbose,
    )
    .map_err(|e| format!("NVRTC failed to compile the kernels for {arch}: {e}"))
}

/// What one compilation produces.
pub enum Output {
    /// A cubin (for `sm_XX[a]`).
    Cubin,
    /// PTX text (for `compute_XX[a]`).
    Ptx,
}

/// Compile `source` with `opts` (which name the architecture) into a cubin or PTX text. Errors
/// carry NVRTC's log; `print_log` also prints the log of a successful compilation (ptxas'
/// resource report with `--ptxas-options=-v`).
pub(crate) fn compile_program(
    source: &str,
    program_name: &CStr,
    opts: &[String],
    what: Output,
    print_log: bool,
) -> Result<Vec<u8>, String> {
    let src = CString::new(source).map_err(|e| format!("kernel source has a NUL: {e}"))?;
    let prog = nvrtc::create_program(&src, Some(program_name))
        .map_err(|e| format!("nvrtcCreateProgram: {e:?}"))?;
    // SAFETY: `prog` was just created and is destroyed exactly once below; `src` and
    // `program_name` outlive it.
    let out = unsafe { compile_and_get(prog, opts, what, print_log) };
    // SAFETY: as above.
    let _ = unsafe { nvrtc::destroy_program(prog) };
    out
}

/// # Safety
/// `prog` must be a live NVRTC program.
unsafe fn compile_and_get(
    prog: nvrtc_sys::nvrtcProgram,
    opts: &[String],
    what: Output,
    print_log: bool,
) -> Result<Vec<u8>, String> {
    // SAFETY: guaranteed by the caller.
    let compiled = unsafe { nvrtc::compile_program(prog, opts) };
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
        return Err(format!("{e:?}\n{log}"));
    }
    if print_log {
        eprintln!("{log}");
    }
    let kind = match what {
        Output::Cubin => "cubin",
        Output::Ptx => "PTX",
    };
    let mut size = 0usize;
    // SAFETY: guaranteed by the caller; `size` is a valid out-pointer.
    match what {
        Output::Cubin => unsafe { nvrtc_sys::nvrtcGetCUBINSize(prog, &mut size) },
        Output::Ptx => unsafe { nvrtc_sys::nvrtcGetPTXSize(prog, &mut size) },
    }
    .result()
    .map_err(|e| format!("getting the {kind} size: {e:?}"))?;
    let mut bytes = vec![0u8; size];
    if size > 0 {
        let out = bytes.as_mut_ptr().cast();
        // SAFETY: guaranteed by the caller; `bytes` has the size NVRTC asked for.
        match what {
            Output::Cubin => unsafe { nvrtc_sys::nvrtcGetCUBIN(prog, out) },
            Output::Ptx => unsafe { nvrtc_sys::nvrtcGetPTX(prog, out) },
        }
        .result()
        .map_err(|e| format!("getting the {kind}: {e:?}"))?;
    }
    // PTX comes NUL-terminated.
    while matches!(what, Output::Ptx) && bytes.last() == Some(&0) {
        bytes.pop();
    }
    if bytes.is_empty() {
        return Err(format!(
            "NVRTC produced no {kind} (is it a real architecture?)"
        ));
    }
    Ok(bytes)
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
    cached("cuda", arch, &full_source(), &options(arch), || {
        compile_cubin(arch)
    })
}

/// `compile()`'s cubin, from the disk cache when a file for the same source, options, NVRTC
/// version and architecture is there (`{prefix}-{arch}-{key}.cubin`), else compiled and stored.
pub(crate) fn cached(
    prefix: &str,
    arch: &str,
    source: &str,
    opts: &[String],
    compile: impl FnOnce() -> Result<Vec<u8>, String>,
) -> Result<Vec<u8>, String> {
    let (major, minor) = nvrtc_version()?;
    let ver = format!("{major}.{minor}");
    let opts = opts.join(" ");
    let key = fnv1a(&[
        source.as_bytes(),
        opts.as_bytes(),
        ver.as_bytes(),
        arch.as_bytes(),
    ]);
    let file = cache_dir().map(|d| d.join(format!("{prefix}-{arch}-{key:016x}.cubin")));
    if let Some(f) = &file
        && let Ok(bytes) = std::fs::read(f)
        && !bytes.is_empty()
    {
        return Ok(bytes);
    }
    let cubin = compile()?;
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
