//! The GPU parity suite of `cargo xtask gpu-check`, written against traits so that it
//! also runs here without a GPU: kernels against any two [`Backend`]s, and the device
//! AES-GCM of any [`BounceDevice`] against the `aes-gcm` crate.
//!
//! On a GPU the pairs are ([`super::CudaBackend`], the portable CPU backend) and
//! [`super::CudaBounceDevice`]; the crate's tests run the same checks on two CPU
//! backends and on [`crate::bounce::CpuStandInDevice`], so the suite itself is tested.

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce, Tag};

use crate::bounce::{
    BounceDevice, BounceError, BounceKey, ChunkHeader, CpuStandInDevice, DeviceBufferId, Direction,
    TAG_BYTES,
};
use crate::{AttentionShape, Backend, KernelError, WeightFormat, WeightMatrix};

/// Relative L2 limit for paths computed in f32.
pub const F32_LIMIT: f64 = 1e-3;
/// Relative L2 limit for paths that round operands to bf16.
pub const BF16_LIMIT: f64 = 1e-2;

/// One line of the parity table.
#[derive(Clone, Debug, PartialEq)]
pub struct ParityRow {
    /// What was compared, such as "matmul Q4_1 96x256 n=5".
    pub check: String,
    /// Relative L2 error (0 for byte-exact checks that matched, 1 when they did not).
    pub error: f64,
    /// The largest error that passes.
    pub limit: f64,
    /// Whether the check passed.
    pub passed: bool,
    /// What went wrong, when something did.
    pub note: String,
}

impl ParityRow {
    fn numeric(check: String, error: f64, limit: f64) -> Self {
        Self {
            passed: error <= limit,
            check,
            error,
            limit,
            note: String::new(),
        }
    }

    /// A pass/fail row: error 0 when `outcome` is Ok, 1 with its message otherwise.
    pub fn exact(check: impl Into<String>, outcome: Result<(), String>) -> Self {
        Self {
            check: check.into(),
            error: if outcome.is_ok() { 0.0 } else { 1.0 },
            limit: 0.0,
            passed: outcome.is_ok(),
            note: outcome.err().unwrap_or_default(),
        }
    }
}

/// `|a - b| / |b|` in the L2 norm (`|a - b|` when `b` is all zero).
pub fn relative_l2(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    let (mut diff, mut norm) = (0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        diff += (f64::from(x) - f64::from(y)).powi(2);
        norm += f64::from(y).powi(2);
    }
    if norm == 0.0 {
        diff.sqrt()
    } else {
        (diff / norm).sqrt()
    }
}

/// A small deterministic generator (xorshift64*), so a failing input can be replayed
/// from its seed.
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value; 0 is remapped).
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `[-1, 1)`.
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    /// `n` values uniform in `[-scale, scale)`.
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.unit() * scale).collect()
    }

    /// `n` random bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| (self.next_u64() >> 56) as u8).collect()
    }
}

/// A random `(rows, cols)` weight in `format` with GGUF-like magnitudes.
pub fn random_weight(
    rng: &mut Rng,
    format: WeightFormat,
    rows: usize,
    cols: usize,
) -> WeightMatrix {
    let values = rows * cols;
    let f16 = |v: f32| half::f16::from_f32(v).to_le_bytes();
    let data: Vec<u8> = match format {
        WeightFormat::F32 => rng
            .vec(values, 0.1)
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        WeightFormat::Bf16 => rng
            .vec(values, 0.1)
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
            .collect(),
        WeightFormat::Q4_1 => (0..values / 32)
            .flat_map(|_| {
                let mut block = Vec::with_capacity(20);
                block.extend(f16(0.01 + rng.unit().abs() * 0.01));
                block.extend(f16(-0.08 + rng.unit() * 0.01));
                block.extend(rng.bytes(16));
                block
            })
            .collect(),
        WeightFormat::Q8_0 => (0..values / 32)
            .flat_map(|_| {
                let mut block = Vec::with_capacity(34);
                block.extend(f16(0.001 + rng.unit().abs() * 0.001));
                block.extend(rng.bytes(32));
                block
            })
            .collect(),
    };
    // The lengths above are rows * row_bytes(cols) by construction (cols % 32 == 0).
    WeightMatrix::new(format, rows, cols, data).expect("random weight of a valid shape")
}

/// Runs one operation on both backends (each on its own copy of the inputs) and
/// compares the outputs.
fn compare(
    check: String,
    limit: f64,
    gpu: &dyn Backend,
    cpu: &dyn Backend,
    op: impl Fn(&dyn Backend) -> Result<Vec<f32>, KernelError>,
) -> ParityRow {
    match (op(gpu), op(cpu)) {
        (Ok(a), Ok(b)) => ParityRow::numeric(check, relative_l2(&a, &b), limit),
        (Err(e), _) | (_, Err(e)) => ParityRow {
            note: e.to_string(),
            ..ParityRow::numeric(check, f64::INFINITY, limit)
        },
    }
}

/// Every [`Backend`] operation of `gpu` against `cpu` on random inputs from `seed`, at
/// the shapes SmolLM2-135M uses (hidden 576, FFN 1536, 9 heads of 64, 3 KV heads).
pub fn kernel_parity(gpu: &dyn Backend, cpu: &dyn Backend, seed: u64) -> Vec<ParityRow> {
    let mut rng = Rng::new(seed);
    let mut rows = Vec::new();
    for (format, limit) in [
        (WeightFormat::Q4_1, F32_LIMIT),
        (WeightFormat::Q8_0, F32_LIMIT),
        (WeightFormat::F32, F32_LIMIT),
        (WeightFormat::Bf16, BF16_LIMIT),
    ] {
        let w = random_weight(&mut rng, format, 192, 576);
        for n in [1, 7] {
            let x = rng.vec(n * 576, 1.0);
            let check = format!("matmul {format:?} 192x576 n={n}");
            rows.push(compare(check, limit, gpu, cpu, |b| {
                let mut out = vec![0.0; n * 192];
                b.matmul(&w, &x, n, &mut out).map(|()| out)
            }));
        }
    }
    let x = rng.vec(5 * 576, 2.0);
    let weight = rng.vec(576, 1.0);
    rows.push(compare("rms_norm 5x576".into(), F32_LIMIT, gpu, cpu, |b| {
        let mut out = vec![0.0; x.len()];
        b.rms_norm(&x, &weight, 1e-5, &mut out).map(|()| out)
    }));
    let positions = [0u32, 1, 17, 300, 4095];
    let q = rng.vec(5 * 9 * 64, 1.0);
    rows.push(compare(
        "rope 5 tokens x 9 heads x 64".into(),
        F32_LIMIT,
        gpu,
        cpu,
        |b| {
            let mut out = q.clone();
            b.rope(&mut out, &positions, 9, 64, 100_000.0).map(|()| out)
        },
    ));
    let (gate, up) = (rng.vec(3 * 1536, 4.0), rng.vec(3 * 1536, 1.0));
    rows.push(compare(
        "silu_mul 3x1536".into(),
        F32_LIMIT,
        gpu,
        cpu,
        |b| {
            let mut out = gate.clone();
            b.silu_mul(&mut out, &up).map(|()| out)
        },
    ));
    let logits = rng.vec(49152, 10.0);
    rows.push(compare("softmax 49152".into(), F32_LIMIT, gpu, cpu, |b| {
        let mut out = logits.clone();
        b.softmax(&mut out).map(|()| out)
    }));
    rows.extend(attention_rows(&mut rng, gpu, cpu));
    rows
}

/// A random attention call of SmolLM2's shape (9 query heads, 3 KV heads of 64):
/// the shape, `q`, `k` and `v`.
pub fn random_attention(
    rng: &mut Rng,
    n_new: usize,
    first_pos: usize,
) -> (AttentionShape, Vec<f32>, Vec<f32>, Vec<f32>) {
    let shape = AttentionShape {
        n_new,
        first_pos,
        n_heads: 9,
        n_kv_heads: 3,
        head_dim: 64,
    };
    let q = rng.vec(n_new * 9 * 64, 1.0);
    let k = rng.vec((first_pos + n_new) * 3 * 64, 1.0);
    let v = rng.vec(k.len(), 1.0);
    (shape, q, k, v)
}

/// Attention for a prefill (many queries, empty past) and a decode step (one query
/// against a long cache).
fn attention_rows(rng: &mut Rng, gpu: &dyn Backend, cpu: &dyn Backend) -> Vec<ParityRow> {
    [(6, 0), (1, 200)]
        .into_iter()
        .map(|(n_new, first_pos)| {
            let (shape, q, k, v) = random_attention(rng, n_new, first_pos);
            let check = format!("attention n_new={n_new} first_pos={first_pos} 9/3 heads x 64");
            compare(check, F32_LIMIT, gpu, cpu, |b| {
                let mut out = vec![0.0; q.len()];
                b.attention(shape, &q, &k, &v, &mut out).map(|()| out)
            })
        })
        .collect()
}

/// A [`BounceDevice`] whose device memory a check may read directly (what a kernel
/// would see), to confirm what landed there.
pub trait InspectDevice: BounceDevice {
    /// The first `len` bytes of buffer `id`, copied out without the bounce channel.
    fn inspect(&mut self, id: DeviceBufferId, len: usize) -> Result<Vec<u8>, BounceError>;
}

impl InspectDevice for CpuStandInDevice {
    fn inspect(&mut self, id: DeviceBufferId, len: usize) -> Result<Vec<u8>, BounceError> {
        self.memory(id)
            .and_then(|m| m.get(..len))
            .map(<[u8]>::to_vec)
            .ok_or(BounceError::UnknownBuffer(id.0))
    }
}

/// A single-chunk header for `len` bytes.
fn header(direction: Direction, counter: u64, len: usize) -> ChunkHeader {
    ChunkHeader {
        direction,
        counter,
        transfer: counter,
        index: 0,
        count: 1,
        transfer_len: len as u64,
        len,
    }
}

/// The device's AES-256-GCM against the `aes-gcm` crate, chunk sizes from 0 bytes to
/// `max_len`: decryption of the crate's ciphertext, byte-identical encryption, and
/// rejection of a flipped tag bit and a flipped ciphertext bit with the destination
/// left as it was.
pub fn aes_gcm_parity<D: InspectDevice>(
    device: &mut D,
    seed: u64,
    max_len: usize,
) -> Vec<ParityRow> {
    let mut rng = Rng::new(seed);
    let key = BounceKey::from_bytes(rng.bytes(32).try_into().unwrap_or([7; 32]));
    let cipher = Aes256Gcm::new(key.as_bytes().into());
    if let Err(e) = device.install_key(&key) {
        return vec![ParityRow::exact("install key", Err(e.to_string()))];
    }
    let mut counter = 0u64;
    let mut rows = Vec::new();
    for len in [0, 1, 15, 16, 4097, 65536 + 5, max_len] {
        let plain = rng.bytes(len);
        let outcome = aes_round_trip(device, &cipher, &plain, &mut counter);
        rows.push(ParityRow::exact(
            format!("aes-gcm {len} B both directions"),
            outcome,
        ));
    }
    // Offsets from the end of ciphertext ‖ tag: 3 is inside the tag, 21 in the data.
    for (what, flip_at) in [("tag", 3usize), ("ciphertext", TAG_BYTES + 5)] {
        let plain = rng.bytes(4096);
        let outcome = aes_rejects_flip(device, &cipher, &plain, flip_at, &mut counter);
        rows.push(ParityRow::exact(
            format!("aes-gcm rejects a flipped {what} bit"),
            outcome,
        ));
    }
    rows
}

/// Encrypts `plain` with the crate into staging for the device to open, then has the
/// device seal it back and checks the crate's ciphertext, tag and plaintext.
fn aes_round_trip<D: InspectDevice>(
    device: &mut D,
    cipher: &Aes256Gcm,
    plain: &[u8],
    counter: &mut u64,
) -> Result<(), String> {
    let err = |e: BounceError| e.to_string();
    let len = plain.len();
    let up = header(Direction::HostToDevice, *counter, len);
    let down = header(Direction::DeviceToHost, *counter, len);
    *counter += 1;
    let staged = seal_with_crate(cipher, &up, plain)?;
    device.staging_mut()[..staged.len()].copy_from_slice(&staged);
    let buffer = device.alloc(len).map_err(err)?;
    device.open_staged(&up, buffer, 0).map_err(err)?;
    if device.inspect(buffer, len).map_err(err)? != plain {
        return Err("device plaintext differs from the crate's input".into());
    }
    device.seal_to_staging(&down, buffer, 0).map_err(err)?;
    let expected = seal_with_crate(cipher, &down, plain)?;
    if device.staging_mut()[..expected.len()] != expected[..] {
        return Err("device ciphertext or tag differs from the crate's".into());
    }
    Ok(())
}

/// Stages the crate's ciphertext with one bit flipped at `flip_from_end` bytes before
/// its end and checks the device refuses it and leaves the destination alone.
fn aes_rejects_flip<D: InspectDevice>(
    device: &mut D,
    cipher: &Aes256Gcm,
    plain: &[u8],
    flip_from_end: usize,
    counter: &mut u64,
) -> Result<(), String> {
    let err = |e: BounceError| e.to_string();
    let up = header(Direction::HostToDevice, *counter, plain.len());
    *counter += 1;
    let mut staged = seal_with_crate(cipher, &up, plain)?;
    let at = staged.len() - flip_from_end;
    staged[at] ^= 0x10;
    device.staging_mut()[..staged.len()].copy_from_slice(&staged);
    let buffer = device.alloc(plain.len()).map_err(err)?;
    let before = device.inspect(buffer, plain.len()).map_err(err)?;
    match device.open_staged(&up, buffer, 0) {
        Err(BounceError::TagMismatch { .. }) => {}
        Err(other) => return Err(format!("expected a tag mismatch, got {other}")),
        Ok(()) => return Err("a tampered chunk was accepted".into()),
    }
    if device.inspect(buffer, plain.len()).map_err(err)? != before {
        return Err("a rejected chunk changed device memory".into());
    }
    Ok(())
}

/// Ciphertext then tag of `plain` under `header`'s IV and AAD, by the `aes-gcm` crate.
fn seal_with_crate(
    cipher: &Aes256Gcm,
    header: &ChunkHeader,
    plain: &[u8],
) -> Result<Vec<u8>, String> {
    let mut out = plain.to_vec();
    let tag: Tag = cipher
        .encrypt_in_place_detached(&Nonce::from(header.iv()), &header.aad(), &mut out)
        .map_err(|_| "aes-gcm refused the chunk".to_string())?;
    out.extend_from_slice(&tag);
    Ok(out)
}
