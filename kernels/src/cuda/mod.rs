//! The CUDA side of the kernels: CUDA C sources embedded in the binary, compiled at run
//! time by NVRTC for the device's architecture.
//!
//! NVRTC is opened at run time (`dlopen`), so this module builds and runs where CUDA is
//! absent and reports a clean [`KernelError::Unavailable`] instead of panicking.

mod backend;
mod bounce_device;
mod device;
mod device_spec;
pub mod nvrtc;
pub mod parity;
pub mod ptx_cache;

pub use backend::{CudaBackend, CudaOptions, Transfers};
pub use bounce_device::CudaBounceDevice;
pub use device::CudaDevice;
pub use device_spec::{DeviceSpec, DeviceSpecError};

use crate::KernelError;

/// One CUDA C translation unit from `kernels/cuda/`.
#[derive(Clone, Copy, Debug)]
pub struct KernelSource {
    /// File name, also the NVRTC program name.
    pub name: &'static str,
    /// The CUDA C text.
    pub code: &'static str,
    /// The `extern "C"` entry points it defines.
    pub entry_points: &'static [&'static str],
}

/// A [`KernelSource`] for `kernels/cuda/$file` with its entry points.
macro_rules! cuda_source {
    ($file:literal, [$($entry:literal),+ $(,)?]) => {
        KernelSource {
            name: $file,
            code: include_str!(concat!("../../cuda/", $file)),
            entry_points: &[$($entry),+],
        }
    };
}

/// Every kernel source the backend compiles, in the order it loads them.
pub const SOURCES: &[KernelSource] = &[
    cuda_source!(
        "aes_gcm.cu",
        [
            "aes256_expand_key",
            "gcm_ghash_segments",
            "gcm_finish",
            "gcm_ctr_xor"
        ]
    ),
    cuda_source!(
        "dequant_matvec.cu",
        [
            "matvec_q4_1",
            "matvec_q8_0",
            "dequant_q4_1_to_f16",
            "dequant_q8_0_to_f16",
            "f32_to_bf16"
        ]
    ),
    cuda_source!("rmsnorm.cu", ["rms_norm"]),
    cuda_source!("rope.cu", ["rope"]),
    cuda_source!("silu_mul.cu", ["silu_mul"]),
    cuda_source!("softmax.cu", ["softmax_rows"]),
    cuda_source!("attention.cu", ["attention", "kv_append"]),
    cuda_source!("argmax.cu", ["argmax"]),
];

/// The CUDA driver library cudarc and the backend open.
const DRIVER_LIBRARY: &str = "libcuda.so.1";

/// Checks that the CUDA driver library can be opened, without initialising CUDA.
///
/// Returns [`KernelError::Unavailable`] naming the library when it is absent, which is
/// the answer on every machine without an NVIDIA driver (CI, this development host).
pub fn driver_present() -> Result<(), KernelError> {
    nvrtc::Library::open(DRIVER_LIBRARY)
        .map(drop)
        .map_err(|reason| KernelError::Unavailable {
            backend: "cuda",
            reason: format!("no CUDA driver: {reason}"),
        })
}
