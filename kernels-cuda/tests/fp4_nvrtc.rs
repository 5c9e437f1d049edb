//! The Blackwell FP4 kernels must compile in CI (no GPU: NVRTC from the nvidia-cuda-nvrtc wheel,
//! on LD_LIBRARY_PATH) for every architecture that runs them natively, their PTX must contain the
//! block-scaled MMA, and the emulated build (the MMA in software, for tests on other GPUs) must
//! compile for Hopper. Without libnvrtc the tests skip with a printed reason, unless
//! GPTOSS_REQUIRE_NVRTC=1 makes that a failure.

use gptoss_kernels_cuda::{compile, fp4};

fn nvrtc_or_skip() -> bool {
    if compile::nvrtc_available() {
        return true;
    }
    let required = std::env::var("GPTOSS_REQUIRE_NVRTC").is_ok_and(|v| v == "1");
    assert!(
        !required,
        "GPTOSS_REQUIRE_NVRTC=1 but libnvrtc was not found on LD_LIBRARY_PATH"
    );
    eprintln!(
        "SKIPPED: libnvrtc not found (set LD_LIBRARY_PATH to the nvidia-cuda-nvrtc wheel's lib dir)"
    );
    false
}

fn has_kernel(cubin: &[u8], name: &str) -> bool {
    cubin
        .windows(name.len() + 1)
        .any(|w| &w[..name.len()] == name.as_bytes() && w[name.len()] == 0)
}

/// The native build for `arch`: its cubin (an ELF with every FP4 kernel) and the PTX of the
/// matching virtual architecture.
fn cubin_and_ptx(arch: &str) -> (Vec<u8>, String) {
    let cubin = fp4::nvrtc::compile(arch, false, fp4::nvrtc::Output::Cubin)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(&cubin[..4], b"\x7fELF", "{arch}: not an ELF cubin");
    for name in fp4::nvrtc::KERNEL_NAMES {
        assert!(has_kernel(&cubin, name), "{arch}: kernel {name} missing");
    }
    let virt = arch.replace("sm_", "compute_");
    let ptx = fp4::nvrtc::compile(&virt, false, fp4::nvrtc::Output::Ptx)
        .unwrap_or_else(|e| panic!("{e}"));
    (cubin, String::from_utf8_lossy(&ptx).into_owned())
}

#[test]
fn fp4_kernels_compile_for_blackwell_with_the_block_scaled_mma() {
    if !nvrtc_or_skip() {
        return;
    }
    for arch in fp4::nvrtc::ARCHES {
        let t = std::time::Instant::now();
        let (cubin, ptx) = cubin_and_ptx(arch);
        let virt = arch.replace("sm_", "compute_");
        let n = ptx.matches(fp4::nvrtc::MMA_PTX).count();
        // gate_up issues two MMAs per column tile, down one: FP4_NT = 4 tiles unrolled each.
        assert!(
            n >= 12,
            "{virt}: {n} block-scaled MMAs in the PTX, expected >= 12"
        );
        assert!(
            ptx.contains("cvt.rn.satfinite.e4m3x2.f32"),
            "{virt}: no E4M3 conversion in the PTX"
        );
        eprintln!(
            "{arch}: cubin {} bytes, {n} x `{}` in the PTX, {:.1} s",
            cubin.len(),
            fp4::nvrtc::MMA_PTX,
            t.elapsed().as_secs_f64()
        );
    }
}

#[test]
fn fp4_kernels_are_refused_where_the_instruction_does_not_exist_and_emulate_there() {
    if !nvrtc_or_skip() {
        return;
    }
    // The native build must not compile for Hopper: the instruction really is Blackwell-only,
    // so selection by compute capability is what keeps it off other devices.
    let e = fp4::nvrtc::compile("sm_90a", false, fp4::nvrtc::Output::Cubin);
    assert!(e.is_err(), "the block-scaled MMA compiled for sm_90a");
    // The emulated build compiles for Hopper and carries no block-scaled MMA.
    let cubin = fp4::nvrtc::compile("sm_90a", true, fp4::nvrtc::Output::Cubin)
        .unwrap_or_else(|e| panic!("{e}"));
    for name in fp4::nvrtc::KERNEL_NAMES {
        assert!(
            has_kernel(&cubin, name),
            "emulated sm_90a: kernel {name} missing"
        );
    }
    let ptx = fp4::nvrtc::compile("compute_90a", true, fp4::nvrtc::Output::Ptx)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!String::from_utf8_lossy(&ptx).contains("block_scale"));
}

#[test]
fn tcgen05_kernels_compile_for_data_center_blackwell() {
    if !nvrtc_or_skip() {
        return;
    }
    for arch in fp4::nvrtc::TCGEN05_ARCHES {
        let t = std::time::Instant::now();
        let (cubin, ptx) = cubin_and_ptx(arch);
        let virt = arch.replace("sm_", "compute_");
        for want in fp4::nvrtc::TCGEN05_PTX {
            assert!(ptx.contains(want), "{virt}: no `{want}` in the PTX");
        }
        assert!(ptx.contains("tcgen05.relinquish_alloc_permit"));
        assert!(ptx.contains("tcgen05.wait::ld"));
        // Gate/up issues the MMA for two weight matrices, down for one: two call sites at least
        // (the K loop is not unrolled), and no warp-level mma.sync is left in this variant.
        let n = ptx.matches("tcgen05.mma.").count();
        assert!(n >= 2, "{virt}: {n} tcgen05.mma in the PTX");
        assert!(
            !ptx.contains("mma.sync"),
            "{virt}: mma.sync in the tcgen05 build"
        );
        assert!(ptx.contains("cvt.rn.satfinite.e4m3x2.f32"));
        // The descriptor constants the host encoders produced are in the code.
        let cfg = fp4::tcgen05::Config::kernel().unwrap();
        assert!(
            ptx.contains(&format!("{}", cfg.idesc)) || ptx.contains(&format!("{:X}", cfg.idesc)),
            "{virt}: instruction descriptor {:#x} not found",
            cfg.idesc
        );
        eprintln!(
            "{arch}: cubin {} bytes, {n} x tcgen05.mma in the PTX, {:.1} s",
            cubin.len(),
            t.elapsed().as_secs_f64()
        );
    }
    // The tcgen05 build needs the real instruction set: no emulation, and not for Hopper.
    assert!(fp4::nvrtc::compile("sm_100a", true, fp4::nvrtc::Output::Cubin).is_err());
}
