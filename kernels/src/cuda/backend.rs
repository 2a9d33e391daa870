//! [`CudaBackend`]: the [`Backend`] trait on an NVIDIA GPU through cudarc.
//!
//! The trait hands every operand over in host memory, so each call uploads its inputs,
//! runs its kernel and downloads its output. Every such transfer goes through the
//! encrypted bounce channel ([`crate::bounce`]): staging holds only AES-256-GCM
//! ciphertext, and the device decrypts and encrypts with `kernels/cuda/aes_gcm.cu`.
//! Weights (and RMSNorm weights) are uploaded once, through the same channel, and kept
//! on the device in a cache keyed by their host address, length, shape and a sample of
//! their bytes; the models keep their weights alive and unchanged for the backend's life.
//!
//! Quantized weights (Q4_1, Q8_0) stay in their GGUF blocks on the device and are
//! dequantized on the fly by `matvec_q4_1`/`matvec_q8_0`, one warp per output row and
//! token, with f32 activations and f32 sums: the same arithmetic as the CPU's exact
//! path, and a token's output does not depend on its batch. f32 and bf16 weights go
//! through cuBLAS `cublasGemmEx` with f32 accumulation (bf16 weights meet bf16-rounded
//! activations); cuBLAS may pick another algorithm for another batch size, so that path
//! is not batch-invariant.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use cudarc::cublas::sys::{
    cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType_t,
};
use cudarc::cublas::CudaBlas;

use super::bounce_device::CudaBounceDevice;
use super::device::{device_error, to_u32, Arg, CudaDevice, Grid, BACKEND};
use crate::bounce::{
    BounceChannel, BounceDevice, BounceError, BounceKey, DeviceBufferId, StagingObserver,
    DEFAULT_CHUNK_BYTES,
};
use crate::cpu::{check_attention, check_rms_norm, check_rope, elements, expect_len, expect_param};
use crate::{AttentionShape, Backend, KernelError, WeightFormat, WeightMatrix};

/// How request data crosses between host and device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Transfers {
    /// Through the encrypted bounce channel: staging only ever holds ciphertext.
    #[default]
    Encrypted,
    /// Plain driver copies, with plaintext in driver staging. Only for measuring what
    /// the encryption costs (`cargo xtask gpu-check`); never for serving.
    DangerousPlainForBenchmarks,
}

/// Construction options for [`CudaBackend`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CudaOptions {
    /// Which GPU.
    pub ordinal: u32,
    /// Bounce-buffer chunk size ([`crate::bounce::MIN_CHUNK_BYTES`]..=
    /// [`crate::bounce::MAX_CHUNK_BYTES`]).
    pub chunk_bytes: usize,
    /// How request data crosses the bus.
    pub transfers: Transfers,
}

impl Default for CudaOptions {
    fn default() -> Self {
        Self {
            ordinal: 0,
            chunk_bytes: DEFAULT_CHUNK_BYTES,
            transfers: Transfers::Encrypted,
        }
    }
}

/// Identifies a host buffer the device holds a copy of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct CacheKey {
    address: usize,
    len: usize,
    /// Format and shape for weight matrices; 0 for plain f32 vectors.
    shape: (u8, usize, usize),
}

/// A cached device copy and the byte sample it was made from.
struct Cached {
    id: DeviceBufferId,
    sample: u64,
}

/// FNV-1a over up to 64 bytes at the start, middle and end of `bytes`: catches a
/// different buffer reusing a freed buffer's address without hashing every weight on
/// every call.
fn sample(bytes: &[u8]) -> u64 {
    let window = 64.min(bytes.len());
    let middle = bytes.len() / 2 - window / 2;
    [0, middle, bytes.len() - window]
        .iter()
        .flat_map(|&at| &bytes[at..at + window])
        .fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
}

fn f32_bytes(x: &[f32]) -> Vec<u8> {
    x.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn u32_bytes(x: &[u32]) -> Vec<u8> {
    x.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Bounce errors as kernel errors.
fn bounce_error(err: BounceError) -> KernelError {
    device_error("bounce transfer", err)
}

/// Everything behind the backend's lock: one stream, one channel, one cache.
struct Inner {
    channel: BounceChannel<CudaBounceDevice>,
    transfers: Transfers,
    cache: HashMap<CacheKey, Cached>,
    blas: Option<CudaBlas>,
}

impl Inner {
    fn bounce(&mut self) -> &mut CudaBounceDevice {
        self.channel.device_mut()
    }

    /// A device buffer holding `bytes`.
    fn upload(&mut self, bytes: &[u8]) -> Result<DeviceBufferId, KernelError> {
        match self.transfers {
            Transfers::Encrypted => self.channel.upload(bytes).map_err(bounce_error),
            Transfers::DangerousPlainForBenchmarks => {
                let id = self.alloc(bytes.len())?;
                let at = self.ptr(id)?;
                self.bounce().cuda().copy_in(at, bytes)?;
                Ok(id)
            }
        }
    }

    /// The first `out.len()` bytes of `id`.
    fn download(&mut self, id: DeviceBufferId, out: &mut [u8]) -> Result<(), KernelError> {
        match self.transfers {
            Transfers::Encrypted => {
                let bytes = self
                    .channel
                    .download(id, 0, out.len())
                    .map_err(bounce_error)?;
                out.copy_from_slice(&bytes);
                Ok(())
            }
            Transfers::DangerousPlainForBenchmarks => {
                let at = self
                    .bounce()
                    .address_of(id, 0, out.len())
                    .map_err(bounce_error)?;
                self.bounce().cuda().copy_out(out, at)
            }
        }
    }

    fn download_f32(&mut self, id: DeviceBufferId, out: &mut [f32]) -> Result<(), KernelError> {
        let mut bytes = vec![0u8; out.len() * 4];
        self.download(id, &mut bytes)?;
        for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
            *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
        Ok(())
    }

    fn alloc(&mut self, len: usize) -> Result<DeviceBufferId, KernelError> {
        self.bounce().alloc(len).map_err(bounce_error)
    }

    /// The device address of buffer `id`.
    fn ptr(&mut self, id: DeviceBufferId) -> Result<u64, KernelError> {
        self.bounce().address_of(id, 0, 0).map_err(bounce_error)
    }

    fn launch(&mut self, name: &str, grid: Grid, args: &[Arg]) -> Result<(), KernelError> {
        self.bounce().cuda().launch(name, grid, args)
    }

    /// Runs `f` with a list it can push per-call buffers onto, and frees them all
    /// afterwards, on success and on error.
    fn with_buffers<R>(
        &mut self,
        f: impl FnOnce(&mut Self, &mut Vec<DeviceBufferId>) -> Result<R, KernelError>,
    ) -> Result<R, KernelError> {
        let mut buffers = Vec::new();
        let result = f(self, &mut buffers);
        for id in buffers {
            // Ids came from alloc/upload just above, so freeing cannot fail.
            let _ = self.bounce().free(id);
        }
        result
    }

    /// Uploads `bytes` and records the buffer for freeing; returns its address.
    fn input(
        &mut self,
        bytes: &[u8],
        buffers: &mut Vec<DeviceBufferId>,
    ) -> Result<u64, KernelError> {
        let id = self.upload(bytes)?;
        buffers.push(id);
        self.ptr(id)
    }

    /// Allocates `len` bytes for the call; returns its id and address.
    fn output(
        &mut self,
        len: usize,
        buffers: &mut Vec<DeviceBufferId>,
    ) -> Result<(DeviceBufferId, u64), KernelError> {
        let id = self.alloc(len)?;
        buffers.push(id);
        Ok((id, self.ptr(id)?))
    }

    /// The device copy of a long-lived host buffer, uploaded on first use.
    fn cached(&mut self, key: CacheKey, bytes: &[u8]) -> Result<u64, KernelError> {
        let fingerprint = sample(bytes);
        if let Some(hit) = self.cache.get(&key).filter(|c| c.sample == fingerprint) {
            let id = hit.id;
            return self.ptr(id);
        }
        if let Some(stale) = self.cache.remove(&key) {
            let _ = self.bounce().free(stale.id);
        }
        let id = self.upload(bytes)?;
        self.cache.insert(
            key,
            Cached {
                id,
                sample: fingerprint,
            },
        );
        self.ptr(id)
    }

    fn weight(&mut self, w: &WeightMatrix) -> Result<u64, KernelError> {
        let key = CacheKey {
            address: w.data().as_ptr() as usize,
            len: w.data().len(),
            shape: (format_code(w.format()), w.rows(), w.cols()),
        };
        self.cached(key, w.data())
    }

    fn vector(&mut self, v: &[f32]) -> Result<u64, KernelError> {
        let key = CacheKey {
            address: v.as_ptr() as usize,
            len: v.len() * 4,
            shape: (0, 0, 0),
        };
        self.cached(key, &f32_bytes(v))
    }

    /// cuBLAS on the backend's stream, opened on first use (quantized models never
    /// need it).
    fn blas(&mut self) -> Result<&CudaBlas, KernelError> {
        if self.blas.is_none() {
            preload_cublas();
            // SAFETY: only tries to dlopen libcublas by name.
            if !unsafe { cudarc::cublas::sys::is_culib_present() } {
                return Err(KernelError::Unavailable {
                    backend: BACKEND,
                    reason: "libcublas.so.12 not found (pip install nvidia-cublas-cu12, or \
                             put CUDA's lib directory on LD_LIBRARY_PATH); f32 and bf16 \
                             weights need it"
                        .into(),
                });
            }
            let stream = self.bounce().cuda().stream().clone();
            let blas = CudaBlas::new(stream).map_err(|e| device_error("cuBLAS", e))?;
            self.blas = Some(blas);
        }
        self.blas
            .as_ref()
            .ok_or_else(|| device_error("cuBLAS", "not initialised"))
    }
}

/// Loads the pip wheel's libcublas by absolute path, if there is one, so cudarc's
/// open by bare name finds it (as `nvrtc.rs` does for NVRTC).
fn preload_cublas() {
    if let Some(dir) = super::nvrtc::pip_wheel_dir("cublas") {
        for lib in ["libcublasLt.so.12", "libcublas.so.12"] {
            if let Ok(library) =
                super::nvrtc::Library::open(&dir.join("lib").join(lib).display().to_string())
            {
                // Stays loaded for the process, like the driver.
                std::mem::forget(library);
            }
        }
    }
}

fn format_code(format: WeightFormat) -> u8 {
    match format {
        WeightFormat::F32 => 1,
        WeightFormat::Bf16 => 2,
        WeightFormat::Q4_1 => 3,
        WeightFormat::Q8_0 => 4,
    }
}

/// The CUDA compute backend.
pub struct CudaBackend {
    device: Arc<CudaDevice>,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaBackend")
            .field("device", &self.device)
            .finish()
    }
}

impl CudaBackend {
    /// GPU `ordinal` with encrypted transfers. Fails with [`KernelError::Unavailable`]
    /// ("no CUDA driver: ...") where there is no driver.
    pub fn new(ordinal: u32) -> Result<Self, KernelError> {
        Self::with_options(CudaOptions {
            ordinal,
            ..CudaOptions::default()
        })
    }

    /// A backend with explicit options; a fresh random bounce key per backend.
    pub fn with_options(options: CudaOptions) -> Result<Self, KernelError> {
        let device = CudaDevice::open(options.ordinal)?;
        let bounce = CudaBounceDevice::new(device.clone(), options.chunk_bytes)?;
        let channel = BounceChannel::new(bounce, &BounceKey::generate(), options.chunk_bytes)
            .map_err(bounce_error)?;
        Ok(Self {
            device,
            inner: Mutex::new(Inner {
                channel,
                transfers: options.transfers,
                cache: HashMap::new(),
                blas: None,
            }),
        })
    }

    /// The GPU this backend runs on.
    pub fn device(&self) -> &Arc<CudaDevice> {
        &self.device
    }

    /// Sets the hook that sees every chunk in staging (tests, audits).
    pub fn set_staging_observer(
        &self,
        observer: Box<dyn StagingObserver>,
    ) -> Result<(), KernelError> {
        self.lock()?.channel.set_observer(observer);
        Ok(())
    }

    /// Greedy sampling on the device: the index of the largest logit (lowest on ties);
    /// only the 4-byte id comes back.
    pub fn argmax(&self, logits: &[f32]) -> Result<u32, KernelError> {
        expect_param("argmax logits", !logits.is_empty(), 0, "at least 1 logit")?;
        let n = to_u32("argmax logits", logits.len())?;
        self.lock()?.with_buffers(|inner, buffers| {
            let input = inner.input(&f32_bytes(logits), buffers)?;
            let (token, token_at) = inner.output(4, buffers)?;
            let grid = Grid {
                blocks: (1, 1),
                threads: 1024,
                shared_bytes: 0,
            };
            inner.launch(
                "argmax",
                grid,
                &[Arg::Ptr(input), Arg::U32(n), Arg::Ptr(token_at)],
            )?;
            let mut id = [0u8; 4];
            inner.download(token, &mut id)?;
            Ok(u32::from_le_bytes(id))
        })
    }

    fn lock(&self) -> Result<MutexGuard<'_, Inner>, KernelError> {
        self.inner
            .lock()
            .map_err(|_| device_error("backend state", "poisoned by a panic in another call"))
    }

    /// `out (n, rows) = x (n, cols) @ w^T` by cuBLAS: column-major, that is
    /// `C (rows, n) = W^T (rows, cols) @ X (cols, n)` with W stored as (cols, rows).
    fn gemm(
        inner: &mut Inner,
        w: &WeightMatrix,
        weight: u64,
        x: u64,
        n: usize,
        out: u64,
    ) -> Result<(), KernelError> {
        let data_type = match w.format() {
            WeightFormat::Bf16 => cudaDataType_t::CUDA_R_16BF,
            _ => cudaDataType_t::CUDA_R_32F,
        };
        let (m, k) = (w.rows(), w.cols());
        let dim = |what, v: usize| {
            i32::try_from(v).map_err(|_| KernelError::Parameter {
                what,
                expected: "below 2^31",
                found: v,
            })
        };
        let (m, k, n) = (
            dim("matmul rows", m)?,
            dim("matmul cols", k)?,
            dim("matmul n", n)?,
        );
        let (alpha, beta) = (1.0f32, 0.0f32);
        inner.bounce().cuda().bind()?;
        let blas = inner.blas()?;
        // SAFETY: weight holds rows*cols elements of `data_type`, x holds n*cols and out
        // n*rows f32 (the caller sized and filled them); alpha and beta are f32 as
        // CUBLAS_COMPUTE_32F requires, and live across the call.
        unsafe {
            cudarc::cublas::result::gemm_ex(
                *blas.handle(),
                cublasOperation_t::CUBLAS_OP_T,
                cublasOperation_t::CUBLAS_OP_N,
                m,
                n,
                k,
                (&alpha as *const f32).cast(),
                weight as *const std::ffi::c_void,
                data_type,
                k,
                x as *const std::ffi::c_void,
                data_type,
                k,
                (&beta as *const f32).cast(),
                out as *mut std::ffi::c_void,
                cudaDataType_t::CUDA_R_32F,
                m,
                cublasComputeType_t::CUBLAS_COMPUTE_32F,
                cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| device_error("cublasGemmEx", e))
    }
}

impl Backend for CudaBackend {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn matmul(
        &self,
        w: &WeightMatrix,
        x: &[f32],
        n: usize,
        out: &mut [f32],
    ) -> Result<(), KernelError> {
        let (rows, cols) = (w.rows(), w.cols());
        expect_len("matmul input x", elements(&[n, cols]), x.len())?;
        expect_len("matmul output", elements(&[n, rows]), out.len())?;
        if rows == 0 || cols == 0 || n == 0 {
            out.fill(0.0);
            return Ok(());
        }
        let (rows_u32, cols_u32, n_u32) = (
            to_u32("matmul rows", rows)?,
            to_u32("matmul cols", cols)?,
            to_u32("matmul n", n)?,
        );
        self.lock()?.with_buffers(|inner, buffers| {
            let weight = inner.weight(w)?;
            let input = inner.input(&f32_bytes(x), buffers)?;
            let (result, result_at) = inner.output(out.len() * 4, buffers)?;
            let quantized = match w.format() {
                WeightFormat::Q4_1 => Some("matvec_q4_1"),
                WeightFormat::Q8_0 => Some("matvec_q8_0"),
                WeightFormat::F32 | WeightFormat::Bf16 => None,
            };
            if let Some(kernel) = quantized {
                // 8 warps a block, one output row per warp, blockIdx.y the token.
                let grid = Grid {
                    blocks: (rows_u32.div_ceil(8), n_u32),
                    threads: 256,
                    shared_bytes: 0,
                };
                let args = [
                    Arg::Ptr(weight),
                    Arg::Ptr(input),
                    Arg::Ptr(result_at),
                    Arg::U32(rows_u32),
                    Arg::U32(cols_u32),
                ];
                inner.launch(kernel, grid, &args)?;
            } else if w.format() == WeightFormat::Bf16 {
                let (_, narrow) = inner.output(x.len() * 2, buffers)?;
                let args = [Arg::Ptr(input), Arg::Ptr(narrow), Arg::U64(x.len() as u64)];
                inner.launch("f32_to_bf16", Grid::per_element(x.len())?, &args)?;
                Self::gemm(inner, w, weight, narrow, n, result_at)?;
            } else {
                Self::gemm(inner, w, weight, input, n, result_at)?;
            }
            inner.download_f32(result, out)
        })
    }

    fn rms_norm(
        &self,
        x: &[f32],
        weight: &[f32],
        eps: f32,
        out: &mut [f32],
    ) -> Result<(), KernelError> {
        let dim = check_rms_norm(x, weight, out)?;
        let rows = to_u32("rms_norm rows", x.len() / dim)?;
        let dim_u32 = to_u32("rms_norm weight length", dim)?;
        self.lock()?.with_buffers(|inner, buffers| {
            let scale = inner.vector(weight)?;
            let input = inner.input(&f32_bytes(x), buffers)?;
            let (result, result_at) = inner.output(out.len() * 4, buffers)?;
            let grid = Grid {
                blocks: (rows, 1),
                threads: 256,
                shared_bytes: 0,
            };
            let args = [
                Arg::Ptr(input),
                Arg::Ptr(scale),
                Arg::Ptr(result_at),
                Arg::U32(dim_u32),
                Arg::F32(eps),
            ];
            inner.launch("rms_norm", grid, &args)?;
            inner.download_f32(result, out)
        })
    }

    fn rope(
        &self,
        x: &mut [f32],
        positions: &[u32],
        n_heads: usize,
        head_dim: usize,
        theta: f32,
    ) -> Result<(), KernelError> {
        check_rope(x, positions, n_heads, head_dim)?;
        if x.is_empty() {
            return Ok(());
        }
        let args_of = |x_at, positions_at| -> Result<[Arg; 6], KernelError> {
            Ok([
                Arg::Ptr(x_at),
                Arg::Ptr(positions_at),
                Arg::U32(to_u32("rope tokens", positions.len())?),
                Arg::U32(to_u32("rope n_heads", n_heads)?),
                Arg::U32(to_u32("rope head_dim", head_dim)?),
                Arg::F32(theta),
            ])
        };
        self.lock()?.with_buffers(|inner, buffers| {
            let id = inner.upload(&f32_bytes(x))?;
            buffers.push(id);
            let x_at = inner.ptr(id)?;
            let positions_at = inner.input(&u32_bytes(positions), buffers)?;
            inner.launch(
                "rope",
                Grid::per_element(x.len() / 2)?,
                &args_of(x_at, positions_at)?,
            )?;
            inner.download_f32(id, x)
        })
    }

    fn silu_mul(&self, gate: &mut [f32], up: &[f32]) -> Result<(), KernelError> {
        expect_len("silu_mul up", gate.len(), up.len())?;
        if gate.is_empty() {
            return Ok(());
        }
        self.lock()?.with_buffers(|inner, buffers| {
            let id = inner.upload(&f32_bytes(gate))?;
            buffers.push(id);
            let gate_at = inner.ptr(id)?;
            let up_at = inner.input(&f32_bytes(up), buffers)?;
            let args = [
                Arg::Ptr(gate_at),
                Arg::Ptr(up_at),
                Arg::U64(gate.len() as u64),
            ];
            inner.launch("silu_mul", Grid::per_element(gate.len())?, &args)?;
            inner.download_f32(id, gate)
        })
    }

    fn softmax(&self, x: &mut [f32]) -> Result<(), KernelError> {
        if x.is_empty() {
            return Ok(());
        }
        let len = to_u32("softmax length", x.len())?;
        self.lock()?.with_buffers(|inner, buffers| {
            let id = inner.upload(&f32_bytes(x))?;
            buffers.push(id);
            let at = inner.ptr(id)?;
            let grid = Grid {
                blocks: (1, 1),
                threads: 256,
                shared_bytes: 0,
            };
            inner.launch("softmax_rows", grid, &[Arg::Ptr(at), Arg::U32(len)])?;
            inner.download_f32(id, x)
        })
    }

    fn attention(
        &self,
        shape: AttentionShape,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        out: &mut [f32],
    ) -> Result<(), KernelError> {
        if check_attention(shape, q, k, v, out)? == 0 {
            return Ok(());
        }
        let head_dim = shape.head_dim;
        // One thread per element of a head, and the kernel's shared arrays hold 256.
        expect_param(
            "attention head_dim",
            head_dim <= 256,
            head_dim,
            "at most 256 on the CUDA backend",
        )?;
        let grid = Grid {
            blocks: (to_u32("attention queries", shape.n_new * shape.n_heads)?, 1),
            threads: (head_dim as u32).next_power_of_two().max(32),
            shared_bytes: 0,
        };
        let dims = [
            Arg::U32(to_u32("attention first_pos", shape.first_pos)?),
            Arg::U32(to_u32("attention n_heads", shape.n_heads)?),
            Arg::U32(to_u32("attention n_kv_heads", shape.n_kv_heads)?),
            Arg::U32(to_u32("attention head_dim", head_dim)?),
        ];
        self.lock()?.with_buffers(|inner, buffers| {
            let q_at = inner.input(&f32_bytes(q), buffers)?;
            let k_at = inner.input(&f32_bytes(k), buffers)?;
            let v_at = inner.input(&f32_bytes(v), buffers)?;
            let (result, result_at) = inner.output(out.len() * 4, buffers)?;
            let mut args = vec![
                Arg::Ptr(q_at),
                Arg::Ptr(k_at),
                Arg::Ptr(v_at),
                Arg::Ptr(result_at),
            ];
            args.extend_from_slice(&dims);
            inner.launch("attention", grid, &args)?;
            inner.download_f32(result, out)
        })
    }
}
