//! Builds the C++ harnesses in this directory, which run `kernels/cuda/*.cu` on the CPU
//! through `cuda_on_cpu.h`. Needs a C++20 compiler (`c++`, Debian's `g++`); without one
//! the tests fail, unless `CHRYSALIS_SKIP_CXX=1` says the skip is deliberate.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Compiles `cuda_on_cpu/{name}.cpp` into the test's temporary directory; `None` when
/// skipping deliberately.
pub fn build_harness(name: &str) -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cuda_on_cpu");
    let source = dir.join(format!("{name}.cpp"));
    let binary = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let built = Command::new("c++")
        .args(["-std=c++20", "-O2", "-pthread", "-I"])
        .arg(&dir)
        .arg("-o")
        .arg(&binary)
        .arg(&source)
        .output();
    match built {
        Ok(out) if out.status.success() => Some(binary),
        _ if std::env::var("CHRYSALIS_SKIP_CXX").as_deref() == Ok("1") => {
            eprintln!("CHRYSALIS_SKIP_CXX=1: not running the CUDA kernels on the CPU");
            None
        }
        Ok(out) => panic!(
            "c++ failed on {}:\n{}",
            source.display(),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => {
            panic!("no C++ compiler (`c++`: {e}); apt-get install g++, or set CHRYSALIS_SKIP_CXX=1")
        }
    }
}
