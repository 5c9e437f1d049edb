//! CI has no GPU, but it has libnvrtc (the nvidia-cuda-nvrtc wheel, put on LD_LIBRARY_PATH by
//! scripts/test): every kernel must compile to a cubin for each architecture we support, so a
//! kernel that does not compile fails CI. Without libnvrtc the test skips with a printed reason,
//! unless GPTOSS_REQUIRE_NVRTC=1 makes that a failure.

use gptoss_kernels_cuda::compile;

#[test]
fn every_kernel_compiles_for_every_supported_architecture() {
    if !compile::nvrtc_available() {
        let required = std::env::var("GPTOSS_REQUIRE_NVRTC").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "GPTOSS_REQUIRE_NVRTC=1 but libnvrtc was not found on LD_LIBRARY_PATH"
        );
        eprintln!(
            "SKIPPED: libnvrtc not found (set LD_LIBRARY_PATH to the nvidia-cuda-nvrtc wheel's lib dir)"
        );
        return;
    }
    let (major, minor) = compile::nvrtc_version().expect("nvrtc version");
    eprintln!("NVRTC {major}.{minor}");
    for arch in compile::CI_ARCHES {
        let t = std::time::Instant::now();
        let cubin = compile::compile_cubin(arch).unwrap_or_else(|e| panic!("{e}"));
        // An ELF image holding every kernel by name.
        assert_eq!(&cubin[..4], b"\x7fELF", "{arch}: not an ELF cubin");
        for name in compile::KERNEL_NAMES
            .iter()
            .chain(gptoss_kernels_cuda::quants::KERNEL_NAMES)
        {
            let found = cubin
                .windows(name.len() + 1)
                .any(|w| &w[..name.len()] == name.as_bytes() && w[name.len()] == 0);
            assert!(found, "{arch}: kernel {name} missing from the cubin");
        }
        // And the other way round: every kernel in the cubin is one the backend loads (a kernel
        // left out of the lists compiles fine but fails at its first launch with "not loaded").
        let listed: std::collections::HashSet<&str> = compile::KERNEL_NAMES
            .iter()
            .chain(gptoss_kernels_cuda::quants::KERNEL_NAMES)
            .copied()
            .collect();
        for name in cubin_kernel_names(&cubin) {
            assert!(
                listed.contains(name.as_str()),
                "{arch}: kernel {name} is in the cubin but not in KERNEL_NAMES (the backend would not load it)"
            );
        }
        eprintln!(
            "{arch}: {} bytes in {:.1} s",
            cubin.len(),
            t.elapsed().as_secs_f64()
        );
    }
}

#[test]
fn backend_reports_unavailable_or_works() {
    // On a machine without a driver this must be a clean Unavailable error, never a panic.
    match gptoss_kernels_cuda::CudaBackend::new(0) {
        Ok(b) => eprintln!("CUDA backend: {}", gptoss_backend::Backend::name(&b)),
        Err(gptoss_backend::BackendError::Unavailable { reason, .. }) => {
            eprintln!("SKIPPED: CUDA unavailable: {reason}")
        }
        Err(e) => panic!("unexpected error opening the CUDA backend: {e}"),
    }
}

/// The kernels of a cubin: its `.text.<name>` sections, mangled (C++) names left out since every
/// kernel is `extern "C"`.
fn cubin_kernel_names(cubin: &[u8]) -> Vec<String> {
    let tag = b".text.";
    let mut names = Vec::new();
    let mut i = 0;
    while let Some(pos) = cubin[i..].windows(tag.len()).position(|w| w == tag) {
        let start = i + pos + tag.len();
        let len = cubin[start..].iter().position(|&b| b == 0).unwrap_or(0);
        let name = String::from_utf8_lossy(&cubin[start..start + len]).into_owned();
        if !name.is_empty() && !name.starts_with("_Z") && !names.contains(&name) {
            names.push(name);
        }
        i = start;
    }
    assert!(
        !names.is_empty(),
        "no .text.<kernel> section found in the cubin"
    );
    names
}
