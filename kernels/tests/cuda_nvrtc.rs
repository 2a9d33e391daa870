//! Every CUDA C source compiles with NVRTC to PTX for sm_80 (A100) and sm_90 (H100/H200),
//! and the PTX exports each entry point the backend loads. NVRTC needs no GPU.
//!
//! Needs `libnvrtc.so.12`: `pip install nvidia-cuda-nvrtc-cu12==12.9.86
//! nvidia-cuda-runtime-cu12==12.9.79` (or `CHRYSALIS_NVRTC_LIB=/path/libnvrtc.so.12`).
//! Without it the test fails, unless `CHRYSALIS_SKIP_NVRTC=1` says the skip is deliberate.

use chrysalis_kernels::cuda::nvrtc::{Nvrtc, NvrtcError, PIP_INSTALL};
use chrysalis_kernels::cuda::SOURCES;

fn nvrtc_or_skip() -> Option<Nvrtc> {
    match Nvrtc::locate() {
        Ok(nvrtc) => Some(nvrtc),
        Err(err) if std::env::var("CHRYSALIS_SKIP_NVRTC").as_deref() == Ok("1") => {
            eprintln!("CHRYSALIS_SKIP_NVRTC=1: not compiling CUDA kernels ({err})");
            None
        }
        Err(err) => panic!("{err}\nInstall NVRTC with `{PIP_INSTALL}`, or set CHRYSALIS_SKIP_NVRTC=1 to skip deliberately"),
    }
}

#[test]
fn every_kernel_compiles_to_ptx_for_sm80_and_sm90() {
    let Some(nvrtc) = nvrtc_or_skip() else { return };
    let (major, minor) = nvrtc.version().expect("nvrtcVersion");
    assert!(
        major >= 12,
        "NVRTC {major}.{minor} from {}: need 12.x",
        nvrtc.path()
    );
    assert!(
        !nvrtc.include_dirs().is_empty(),
        "no directory with cuda_fp16.h; {PIP_INSTALL} or set CHRYSALIS_CUDA_INCLUDE"
    );
    for source in SOURCES {
        for sm in [80, 90] {
            let ptx = nvrtc
                .compile_ptx(source.name, source.code, sm)
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(
                ptx.contains(&format!(".target sm_{sm}")),
                "{}: PTX not for sm_{sm}",
                source.name
            );
            for entry in source.entry_points {
                assert!(
                    ptx.contains(&format!(".entry {entry}(")),
                    "{} for sm_{sm}: no entry point {entry}",
                    source.name
                );
            }
        }
    }
}

#[test]
fn every_kernel_compiles_to_a_cubin_for_sm80_and_sm90() {
    let Some(nvrtc) = nvrtc_or_skip() else { return };
    for source in SOURCES {
        for sm in [80, 90] {
            let cubin = nvrtc
                .compile_cubin(source.name, source.code, sm)
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                &cubin[..4],
                b"\x7fELF",
                "{} for sm_{sm}: not an ELF",
                source.name
            );
            assert!(
                chrysalis_kernels::cuda::ptx_cache::has_entry_points(&cubin, source),
                "{} for sm_{sm}: an entry point is missing from the CUBIN",
                source.name
            );
        }
    }
}

#[test]
fn a_kernel_with_an_error_reports_nvrtc_log() {
    let Some(nvrtc) = nvrtc_or_skip() else { return };
    let broken = "extern \"C\" __global__ void k(float* x) { x[0] = undeclared_name; }";
    match nvrtc.compile_ptx("broken.cu", broken, 90) {
        Err(NvrtcError::Compile { log, arch, .. }) => {
            assert!(log.contains("undeclared_name"), "log: {log}");
            assert_eq!(arch, "compute_90");
        }
        other => panic!("expected a compile error, got {other:?}"),
    }
}
