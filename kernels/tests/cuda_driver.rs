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

#[test]
fn device_specs_parse_and_reject_what_they_should() {
    use chrysalis_kernels::cuda::DeviceSpec;
    assert_eq!("cpu".parse(), Ok(DeviceSpec::Cpu));
    assert_eq!("cuda".parse(), Ok(DeviceSpec::Cuda(0)));
    assert_eq!("cuda:1".parse(), Ok(DeviceSpec::Cuda(1)));
    assert_eq!(DeviceSpec::Cuda(3).to_string(), "cuda:3");
    for bad in [
        "",
        "gpu",
        "cuda:",
        "cuda:+1",
        "cuda:-1",
        "cuda:x",
        "CPU",
        "cuda:99999999999",
    ] {
        let err = bad.parse::<DeviceSpec>().expect_err(bad);
        assert!(err.to_string().contains("expected `cpu`"), "{err}");
    }
}

#[test]
fn cpu_spec_opens_a_working_backend_and_cuda_spec_fails_cleanly() {
    use chrysalis_kernels::cuda::DeviceSpec;
    let cpu = DeviceSpec::Cpu.open().expect("cpu backend");
    let mut x = vec![1.0f32, 2.0, 3.0];
    cpu.softmax(&mut x).expect("softmax");
    assert!((x.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    let driver_installed = std::path::Path::new("/proc/driver/nvidia").exists();
    match DeviceSpec::Cuda(0).open() {
        Err(KernelError::Unavailable {
            backend: "cuda",
            reason,
        }) if !driver_installed => {
            assert!(reason.starts_with("no CUDA driver"), "{reason}");
        }
        Ok(backend) if driver_installed => assert_eq!(backend.name(), "cuda"),
        // On a GPU host NVRTC may still be missing: that is a clean error too.
        Err(KernelError::Unavailable { .. }) if driver_installed => {}
        Err(other) => panic!("unexpected error {other}"),
        Ok(backend) => panic!("{} opened without an NVIDIA driver", backend.name()),
    }
}
