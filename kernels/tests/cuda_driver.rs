//! Where no NVIDIA driver is installed (CI, development hosts), asking for CUDA gives a
//! clean "no CUDA driver" error, never a panic.

use chrysalis_kernels::cuda::driver_present;
use chrysalis_kernels::KernelError;

#[test]
fn missing_driver_is_a_clean_error() {
    let driver_installed = std::path::Path::new("/proc/driver/nvidia").exists();
    match driver_present() {
        Ok(()) => assert!(
            driver_installed,
            "libcuda opened but no /proc/driver/nvidia"
        ),
        Err(KernelError::Unavailable { backend, reason }) => {
            assert!(
                !driver_installed,
                "driver installed but libcuda failed: {reason}"
            );
            assert_eq!(backend, "cuda");
            assert!(reason.starts_with("no CUDA driver"), "{reason}");
            assert!(reason.contains("libcuda.so.1"), "{reason}");
        }
        Err(other) => panic!("unexpected error {other}"),
    }
}
