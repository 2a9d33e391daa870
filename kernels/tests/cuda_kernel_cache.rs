//! The compiled-kernel cache: a second build comes from the cache, a build lands on disk
//! under `$CHRYSALIS_HOME/cache/ptx/`, and a damaged file there is rebuilt, not used.
//! Needs NVRTC like `cuda_nvrtc.rs` (skipped only with `CHRYSALIS_SKIP_NVRTC=1`).
//! One test in its own binary, because it sets an environment variable.

use chrysalis_kernels::cuda::nvrtc::{Nvrtc, PIP_INSTALL};
use chrysalis_kernels::cuda::ptx_cache::{build, cache_key, Output};
use chrysalis_kernels::cuda::SOURCES;

#[test]
fn builds_are_cached_in_memory_and_on_disk_and_damaged_files_are_rebuilt() {
    let nvrtc = match Nvrtc::locate() {
        Ok(nvrtc) => nvrtc,
        Err(e) if std::env::var("CHRYSALIS_SKIP_NVRTC").as_deref() == Ok("1") => {
            eprintln!("CHRYSALIS_SKIP_NVRTC=1: skipping ({e})");
            return;
        }
        Err(e) => panic!("{e}\n{PIP_INSTALL}"),
    };
    let home = std::env::temp_dir().join(format!("chrysalis-kernel-cache-{}", std::process::id()));
    std::env::set_var("CHRYSALIS_HOME", &home);
    let source = SOURCES
        .iter()
        .find(|s| s.name == "silu_mul.cu")
        .expect("silu_mul.cu is a kernel source");
    let version = nvrtc.version().expect("nvrtc version");
    let key = cache_key(Output::Ptx, version, 86, source);
    assert_ne!(key, cache_key(Output::Cubin, version, 86, source));
    assert_ne!(key, cache_key(Output::Ptx, version, 90, source));

    let first = build(&nvrtc, source, 86, Output::Ptx).expect("first build");
    let file = home.join(format!("cache/ptx/silu_mul.cu-sm86-{key}.ptx"));
    assert_eq!(std::fs::read(&file).expect("cached file"), first);

    // A damaged file (no entry point) for a key not yet in memory is rebuilt.
    let cubin_key = cache_key(Output::Cubin, version, 86, source);
    let cubin_file = home.join(format!("cache/ptx/silu_mul.cu-sm86-{cubin_key}.cubin"));
    std::fs::write(&cubin_file, b"truncated").expect("write damaged file");
    let cubin = build(&nvrtc, source, 86, Output::Cubin).expect("rebuild");
    assert_eq!(&cubin[..4], b"\x7fELF");
    assert_eq!(std::fs::read(&cubin_file).expect("rewritten"), cubin);

    // The second PTX build is served from memory even with the disk copy gone.
    std::fs::remove_file(&file).expect("remove");
    assert_eq!(
        build(&nvrtc, source, 86, Output::Ptx).expect("second build"),
        first
    );
    let _ = std::fs::remove_dir_all(&home);
}
