//! Matrix products in SmolLM2-135M's shapes (30 layers of Q4_1 projections and a Q8_0
//! output head), timed per backend configuration, interleaved, medians.
//!
//! Run: `cargo bench -p chrysalis-kernels --bench matmul [-- REPS PREFILL_TOKENS]`.
//! Beside the timings it measures this machine's single-thread read bandwidth over the
//! same bytes, the napkin floor for batch-1 decode (every weight read once per token).

use std::hint::black_box;
use std::time::Instant;

use chrysalis_kernels::{Backend, CpuBackend, CpuOptions, Isa, WeightFormat, WeightMatrix};

/// (rows, cols) of one layer's projections: q, k, v, o, gate, up, down.
const LAYER: [(usize, usize); 7] = [
    (576, 576),
    (192, 576),
    (192, 576),
    (576, 576),
    (1536, 576),
    (1536, 576),
    (576, 1536),
];
const LAYERS: usize = 30;
const VOCAB: usize = 49152;

fn pseudo_random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// Weight bytes with sane f16 scales written over each block's head.
fn weight(format: WeightFormat, rows: usize, cols: usize, seed: u64) -> WeightMatrix {
    let mut data = pseudo_random_bytes(format.row_bytes(cols).unwrap() * rows, seed);
    let scale = half::f16::from_f32(0.01).to_le_bytes();
    for block in data.chunks_exact_mut(format.block_bytes()) {
        block[..2].copy_from_slice(&scale);
        if format == WeightFormat::Q4_1 {
            block[2..4].copy_from_slice(&half::f16::from_f32(-0.08).to_le_bytes());
        }
    }
    WeightMatrix::new(format, rows, cols, data).unwrap()
}

fn model_weights() -> Vec<WeightMatrix> {
    let mut all = Vec::new();
    for layer in 0..LAYERS {
        for (i, &(rows, cols)) in LAYER.iter().enumerate() {
            all.push(weight(
                WeightFormat::Q4_1,
                rows,
                cols,
                (layer * 7 + i) as u64 + 1,
            ));
        }
    }
    all.push(weight(WeightFormat::Q8_0, VOCAB, 576, 999));
    all
}

/// CPU seconds this process has used (all threads): on a shared machine, wall time
/// includes time other processes held the cores, CPU time does not.
fn cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant Linux knows.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Wall and CPU seconds of `f`.
fn timed(f: impl FnOnce()) -> (f64, f64) {
    let (wall, cpu) = (Instant::now(), cpu_seconds());
    f();
    (wall.elapsed().as_secs_f64(), cpu_seconds() - cpu)
}

/// Seconds for one pass of `n` tokens through every matrix (the head only for the
/// last token, as a prefill does).
fn pass(backend: &CpuBackend, weights: &[WeightMatrix], n: usize) -> (f64, f64) {
    timed(|| pass_untimed(backend, weights, n))
}

fn pass_untimed(backend: &CpuBackend, weights: &[WeightMatrix], n: usize) {
    let (head, layers) = weights.split_last().unwrap();
    for w in layers {
        let x = vec![0.01f32; n * w.cols()];
        let mut out = vec![0f32; n * w.rows()];
        backend.matmul(w, &x, n, &mut out).unwrap();
        black_box(&out);
    }
    let mut logits = vec![0f32; VOCAB];
    backend.matmul(head, &[0.01; 576], 1, &mut logits).unwrap();
    black_box(&logits);
}

/// Seconds to read every weight byte once on one thread (summing u64 words).
fn read_pass(weights: &[WeightMatrix]) -> (f64, f64) {
    timed(|| read_untimed(weights))
}

fn read_untimed(weights: &[WeightMatrix]) {
    let mut sum = 0u64;
    for w in weights {
        for chunk in w.data().chunks_exact(8) {
            sum = sum.wrapping_add(u64::from_le_bytes(chunk.try_into().unwrap()));
        }
    }
    black_box(sum);
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Medians of wall and CPU seconds per unit of work.
#[derive(Clone, Default)]
struct Samples {
    wall: Vec<f64>,
    cpu: Vec<f64>,
}

impl Samples {
    fn push(&mut self, (wall, cpu): (f64, f64), units: usize) {
        self.wall.push(wall / units as f64);
        self.cpu.push(cpu / units as f64);
    }

    /// Units per second by wall clock and by CPU time per thread.
    fn rates(&self, threads: usize) -> (f64, f64) {
        (
            1.0 / median(self.wall.clone()),
            threads as f64 / median(self.cpu.clone()),
        )
    }
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let reps = args.first().copied().unwrap_or(7);
    let prefill = args.get(1).copied().unwrap_or(64);
    let weights = model_weights();
    let bytes: usize = weights.iter().map(|w| w.data().len()).sum();
    let mut configs = Vec::new();
    for (isa, threads) in [(Isa::Portable, 1), (Isa::Avx2, 1), (Isa::Avx2, 2)] {
        if let Ok(b) = CpuBackend::with_options(CpuOptions {
            threads,
            isa: Some(isa),
        }) {
            configs.push(b);
        }
    }
    let mut decode = vec![Samples::default(); configs.len()];
    let mut prefill_samples = vec![Samples::default(); configs.len()];
    let mut reads = Samples::default();
    for b in &configs {
        pass(b, &weights, 1); // warm caches, pages and thread pools
    }
    for _ in 0..reps {
        reads.push(read_pass(&weights), 1);
        for (i, b) in configs.iter().enumerate() {
            decode[i].push(pass(b, &weights, 1), 1);
            prefill_samples[i].push(pass(b, &weights, prefill), prefill);
        }
    }
    let (read_wall, read_cpu) = reads.rates(1);
    println!(
        "weights {:.1} MB; one-thread read {:.1} GB/s wall, {:.1} GB/s cpu -> decode floor {:.0} tok/s",
        bytes as f64 / 1e6,
        bytes as f64 * read_wall / 1e9,
        bytes as f64 * read_cpu / 1e9,
        read_cpu
    );
    println!(
        "load average at the end: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    println!(
        "{:<16} {:>12} {:>12} {:>10} {:>14} {:>14}",
        "backend", "decode wall", "decode cpu", "cpu GB/s", "prefill wall", "prefill cpu"
    );
    for (i, b) in configs.iter().enumerate() {
        let (d_wall, d_cpu) = decode[i].rates(b.threads());
        let (p_wall, p_cpu) = prefill_samples[i].rates(b.threads());
        println!(
            "{:<16} {:>12.1} {:>12.1} {:>10.1} {:>14.1} {:>14.1}",
            format!("{} x{}", b.name(), b.threads()),
            d_wall,
            d_cpu,
            bytes as f64 * d_cpu / 1e9,
            p_wall,
            p_cpu
        );
    }
    println!("(tokens/s; cpu = per-thread CPU time, so other processes' load is excluded; prefill uses {prefill} tokens)");
}
