//! The CUDA compute kernels of `kernels/cuda/` (matvec on Q4_1/Q8_0 blocks, RMSNorm,
//! RoPE, SwiGLU, softmax, attention, argmax) run on the CPU by a C++ harness
//! (`tests/cuda_on_cpu/ops_harness.cpp`, launched with the backend's grids) and compared
//! with the portable CPU backend within the f32 tolerance of the GPU parity suite. This
//! checks the kernels' indexing and arithmetic where no GPU is lent; `cargo xtask
//! gpu-check` checks them on one. Needs a C++20 compiler (see `cuda_on_cpu/mod.rs`).

mod cuda_on_cpu;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use chrysalis_kernels::cuda::parity::{
    random_attention, random_weight, relative_l2, Rng, F32_LIMIT,
};
use chrysalis_kernels::{Backend, CpuBackend, CpuOptions, Isa, WeightFormat};

/// The harness, built once for every test of this binary.
fn harness() -> Option<&'static Path> {
    static BUILT: OnceLock<Option<PathBuf>> = OnceLock::new();
    BUILT
        .get_or_init(|| cuda_on_cpu::build_harness("ops_harness"))
        .as_deref()
}

fn cpu() -> CpuBackend {
    CpuBackend::with_options(CpuOptions {
        threads: 1,
        isa: Some(Isa::Portable),
    })
    .expect("portable CPU backend")
}

fn f32_bytes(x: &[f32]) -> Vec<u8> {
    x.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// Runs kernel `op` on the harness; `None` when the harness is deliberately skipped.
fn run(op: &str, params: &[u32], arrays: &[&[u8]]) -> Option<Vec<u8>> {
    let harness = harness()?;
    let mut input = Vec::new();
    input.extend_from_slice(&(params.len() as u32).to_le_bytes());
    params
        .iter()
        .for_each(|p| input.extend_from_slice(&p.to_le_bytes()));
    input.extend_from_slice(&(arrays.len() as u32).to_le_bytes());
    for a in arrays {
        input.extend_from_slice(&(a.len() as u32).to_le_bytes());
        input.extend_from_slice(a);
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let (input_file, output_file) = (dir.join(format!("{op}.in")), dir.join(format!("{op}.out")));
    std::fs::write(&input_file, &input).expect("write harness input");
    let status = Command::new(harness)
        .args([op.as_ref(), input_file.as_os_str(), output_file.as_os_str()])
        .status()
        .expect("run harness");
    assert!(status.success(), "{op}: harness failed ({status})");
    Some(std::fs::read(&output_file).expect("harness output"))
}

fn assert_close(what: &str, gpu: &[f32], cpu: &[f32], limit: f64) {
    let error = relative_l2(gpu, cpu);
    assert!(
        error <= limit,
        "{what}: relative L2 {error:.3e} > {limit:e}"
    );
}

#[test]
fn matvec_kernels_match_the_cpu_for_each_token() {
    let mut rng = Rng::new(1);
    for format in [WeightFormat::Q4_1, WeightFormat::Q8_0] {
        // 37 rows: the last block of 8 warps is partly idle.
        let (rows, cols, n) = (37, 256, 3);
        let w = random_weight(&mut rng, format, rows, cols);
        let x = rng.vec(n * cols, 1.0);
        let op = if format == WeightFormat::Q4_1 {
            "matvec_q4_1"
        } else {
            "matvec_q8_0"
        };
        let params = [rows as u32, cols as u32, n as u32];
        let Some(out) = run(op, &params, &[w.data(), &f32_bytes(&x)]) else {
            return;
        };
        let mut expected = vec![0.0; n * rows];
        cpu().matmul(&w, &x, n, &mut expected).expect("cpu matmul");
        assert_close(op, &f32s(&out), &expected, F32_LIMIT);
    }
}

#[test]
fn rms_norm_rope_silu_and_softmax_kernels_match_the_cpu() {
    let mut rng = Rng::new(2);
    let (x, weight) = (rng.vec(3 * 576, 3.0), rng.vec(576, 1.0));
    let params = [3, 576, 1e-5f32.to_bits()];
    let Some(out) = run("rms_norm", &params, &[&f32_bytes(&x), &f32_bytes(&weight)]) else {
        return;
    };
    let mut expected = vec![0.0; x.len()];
    cpu()
        .rms_norm(&x, &weight, 1e-5, &mut expected)
        .expect("cpu");
    assert_close("rms_norm", &f32s(&out), &expected, F32_LIMIT);

    // Late positions too: fast-math sines would be far off there.
    let positions = [0u32, 1, 17, 300, 4095, 8191];
    let q = rng.vec(positions.len() * 3 * 64, 1.0);
    let position_bytes: Vec<u8> = positions.iter().flat_map(|p| p.to_le_bytes()).collect();
    let params = [positions.len() as u32, 3, 64, 100_000f32.to_bits()];
    let out = run("rope", &params, &[&position_bytes, &f32_bytes(&q)]).expect("harness");
    let mut expected = q.clone();
    cpu()
        .rope(&mut expected, &positions, 3, 64, 100_000.0)
        .expect("cpu");
    assert_close("rope", &f32s(&out), &expected, 1e-5);

    let (gate, up) = (rng.vec(1000, 6.0), rng.vec(1000, 1.0));
    let out = run("silu_mul", &[], &[&f32_bytes(&gate), &f32_bytes(&up)]).expect("harness");
    let mut expected = gate.clone();
    cpu().silu_mul(&mut expected, &up).expect("cpu");
    assert_close("silu_mul", &f32s(&out), &expected, F32_LIMIT);

    let logits = rng.vec(5000, 12.0);
    let out = run("softmax", &[], &[&f32_bytes(&logits)]).expect("harness");
    let mut expected = logits.clone();
    cpu().softmax(&mut expected).expect("cpu");
    assert_close("softmax", &f32s(&out), &expected, F32_LIMIT);
}

#[test]
fn attention_kernel_matches_the_cpu_for_prefill_and_decode() {
    let mut rng = Rng::new(3);
    for (n_new, first_pos) in [(4, 0), (1, 40)] {
        let (shape, q, k, v) = random_attention(&mut rng, n_new, first_pos);
        let params = [n_new as u32, first_pos as u32, 9, 3, 64];
        let arrays = [f32_bytes(&q), f32_bytes(&k), f32_bytes(&v)];
        let arrays: Vec<&[u8]> = arrays.iter().map(Vec::as_slice).collect();
        let Some(out) = run("attention", &params, &arrays) else {
            return;
        };
        let mut expected = vec![0.0; q.len()];
        cpu()
            .attention(shape, &q, &k, &v, &mut expected)
            .expect("cpu");
        assert_close("attention", &f32s(&out), &expected, F32_LIMIT);
    }
}

#[test]
fn argmax_kernel_returns_the_first_largest_logit() {
    let mut logits = Rng::new(4).vec(49152, 5.0);
    logits[40000] = 9.0;
    logits[1234] = 9.0;
    let Some(out) = run("argmax", &[], &[&f32_bytes(&logits)]) else {
        return;
    };
    assert_eq!(u32::from_le_bytes([out[0], out[1], out[2], out[3]]), 1234);
}
