//! The GPU parity suite (`chrysalis_kernels::cuda::parity`), run where it can be:
//! here on two CPU backends and on the CPU stand-in for the device, which shows the
//! suite passes correct code and fails wrong code; on a GPU, against the CUDA backend
//! and the CUDA AES-GCM (ignored without one: `cargo xtask gpu-check` runs the same).

use chrysalis_kernels::bounce::{ChunkHeader, CpuStandInDevice, StagingObserver, MAX_CHUNK_BYTES};
use chrysalis_kernels::cuda::parity::{aes_gcm_parity, kernel_parity, ParityRow, Rng};
use chrysalis_kernels::cuda::{CudaBackend, CudaBounceDevice};
use chrysalis_kernels::{
    AttentionShape, Backend, CpuBackend, CpuOptions, Isa, KernelError, WeightMatrix,
};

fn portable_cpu() -> CpuBackend {
    CpuBackend::with_options(CpuOptions {
        threads: 1,
        isa: Some(Isa::Portable),
    })
    .expect("portable CPU backend")
}

fn assert_all_pass(rows: &[ParityRow]) {
    let failed: Vec<_> = rows.iter().filter(|r| !r.passed).collect();
    assert!(failed.is_empty(), "failed: {failed:#?}");
}

#[test]
fn kernel_parity_passes_the_fast_cpu_against_the_portable_one() {
    let rows = kernel_parity(&CpuBackend::new(), &portable_cpu(), 1);
    assert!(rows.len() >= 14, "{} rows", rows.len());
    assert_all_pass(&rows);
}

/// The CPU backend with RoPE one position off: the suite must notice.
struct WrongRope(CpuBackend);

impl Backend for WrongRope {
    fn name(&self) -> &'static str {
        "wrong-rope"
    }
    fn matmul(
        &self,
        w: &WeightMatrix,
        x: &[f32],
        n: usize,
        out: &mut [f32],
    ) -> Result<(), KernelError> {
        self.0.matmul(w, x, n, out)
    }
    fn rms_norm(
        &self,
        x: &[f32],
        weight: &[f32],
        eps: f32,
        out: &mut [f32],
    ) -> Result<(), KernelError> {
        self.0.rms_norm(x, weight, eps, out)
    }
    fn rope(
        &self,
        x: &mut [f32],
        positions: &[u32],
        n_heads: usize,
        head_dim: usize,
        theta: f32,
    ) -> Result<(), KernelError> {
        let shifted: Vec<u32> = positions.iter().map(|p| p.wrapping_add(1)).collect();
        self.0.rope(x, &shifted, n_heads, head_dim, theta)
    }
    fn silu_mul(&self, gate: &mut [f32], up: &[f32]) -> Result<(), KernelError> {
        self.0.silu_mul(gate, up)
    }
    fn softmax(&self, x: &mut [f32]) -> Result<(), KernelError> {
        self.0.softmax(x)
    }
    fn attention(
        &self,
        shape: AttentionShape,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        out: &mut [f32],
    ) -> Result<(), KernelError> {
        self.0.attention(shape, q, k, v, out)
    }
}

#[test]
fn kernel_parity_fails_a_backend_with_a_wrong_kernel() {
    let rows = kernel_parity(&WrongRope(portable_cpu()), &portable_cpu(), 2);
    let failed: Vec<&str> = rows
        .iter()
        .filter(|r| !r.passed)
        .map(|r| r.check.as_str())
        .collect();
    assert_eq!(failed, ["rope 5 tokens x 9 heads x 64"]);
}

#[test]
fn aes_gcm_parity_passes_on_the_cpu_stand_in() {
    let mut device = CpuStandInDevice::new(MAX_CHUNK_BYTES);
    let rows = aes_gcm_parity(&mut device, 3, MAX_CHUNK_BYTES);
    assert_eq!(rows.len(), 9);
    assert_all_pass(&rows);
}

const NEEDS_GPU: &str = "needs an NVIDIA GPU: cargo xtask gpu-check";

fn cuda() -> CudaBackend {
    CudaBackend::new(0).unwrap_or_else(|e| panic!("{e} ({NEEDS_GPU})"))
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo xtask gpu-check"]
fn cuda_kernels_match_the_cpu() {
    assert_all_pass(&kernel_parity(&cuda(), &portable_cpu(), 4));
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo xtask gpu-check"]
fn cuda_aes_gcm_matches_the_crate_and_rejects_tampering() {
    let backend = cuda();
    let mut device = CudaBounceDevice::new(backend.device().clone(), MAX_CHUNK_BYTES)
        .expect("CUDA bounce device");
    assert_all_pass(&aes_gcm_parity(&mut device, 5, MAX_CHUNK_BYTES));
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo xtask gpu-check"]
fn cuda_argmax_returns_the_first_largest_logit() {
    let mut logits = Rng::new(6).vec(49152, 5.0);
    logits[40000] = 9.0;
    logits[123] = 9.0;
    assert_eq!(cuda().argmax(&logits).expect("argmax"), 123);
}

/// Records every staged chunk.
struct Recorder(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl StagingObserver for Recorder {
    fn observe(&mut self, _header: &ChunkHeader, staging: &mut [u8]) {
        if let Ok(mut seen) = self.0.lock() {
            seen.extend_from_slice(staging);
        }
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo xtask gpu-check"]
fn cuda_staging_never_holds_the_activations_or_the_weights() {
    let backend = cuda();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    backend
        .set_staging_observer(Box::new(Recorder(seen.clone())))
        .expect("observer");
    let mut rng = Rng::new(7);
    let w = chrysalis_kernels::cuda::parity::random_weight(
        &mut rng,
        chrysalis_kernels::WeightFormat::Q4_1,
        64,
        256,
    );
    let x = rng.vec(256, 1.0);
    let mut out = vec![0.0; 64];
    backend.matmul(&w, &x, 1, &mut out).expect("matmul");
    let seen = seen.lock().expect("recorder").clone();
    let x_bytes: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
    let out_bytes: Vec<u8> = out.iter().flat_map(|v| v.to_le_bytes()).collect();
    for (what, plain) in [
        ("weights", w.data()),
        ("input", &x_bytes[..]),
        ("output", &out_bytes[..]),
    ] {
        assert!(
            !plain.windows(16).any(|w| seen.windows(16).any(|s| s == w)),
            "staging held a 16-byte window of the {what}"
        );
    }
}
