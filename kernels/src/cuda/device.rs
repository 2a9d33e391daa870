//! One CUDA device opened through cudarc: context, stream, and every kernel of
//! [`SOURCES`] compiled for its architecture and loaded.
//!
//! Everything runs on one stream, in order, so kernels see the writes of the copies and
//! kernels queued before them; cudarc's per-buffer event tracking is switched off and
//! device memory is addressed by raw pointers into buffers this crate owns.

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::Ptx;

use super::nvrtc::Nvrtc;
use super::ptx_cache::{self, Output};
use super::{driver_present, SOURCES};
use crate::KernelError;

/// The backend name in errors and logs.
pub(crate) const BACKEND: &str = "cuda";

/// A kernel argument: a device pointer or a scalar, in the C type the kernel declares.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Arg {
    /// A device pointer (`T*`), or 0 for a null pointer.
    Ptr(u64),
    /// `unsigned int`.
    U32(u32),
    /// `size_t` or `unsigned long long`.
    U64(u64),
    /// `float`.
    F32(f32),
}

/// A grid and block shape for one launch.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Grid {
    /// Blocks in x and y.
    pub blocks: (u32, u32),
    /// Threads per block.
    pub threads: u32,
    /// Dynamic shared memory in bytes.
    pub shared_bytes: u32,
}

impl Grid {
    /// One thread per element for `n` elements, 256 threads a block.
    pub fn per_element(n: usize) -> Result<Self, KernelError> {
        Ok(Self {
            blocks: (to_u32("grid size", n.div_ceil(256))?, 1),
            threads: 256,
            shared_bytes: 0,
        })
    }
}

/// A size as the `unsigned int` a kernel takes, or an error naming it.
pub(crate) fn to_u32(what: &'static str, n: usize) -> Result<u32, KernelError> {
    u32::try_from(n).map_err(|_| KernelError::Parameter {
        what,
        expected: "below 2^32",
        found: n,
    })
}

/// Wraps a driver error as a [`KernelError::Device`].
pub(crate) fn device_error(what: &str, err: impl std::fmt::Display) -> KernelError {
    KernelError::Device {
        backend: BACKEND,
        reason: format!("{what}: {err}"),
    }
}

/// An opened GPU with its kernels loaded.
pub struct CudaDevice {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    functions: HashMap<&'static str, CudaFunction>,
    name: String,
    sm: u32,
    ordinal: u32,
}

impl std::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaDevice")
            .field("ordinal", &self.ordinal)
            .field("name", &self.name)
            .field("sm", &self.sm)
            .finish()
    }
}

impl CudaDevice {
    /// Opens GPU `ordinal`: fails with "no CUDA driver" where libcuda is missing, and
    /// with NVRTC's or the driver's message where a kernel cannot be built or loaded.
    pub fn open(ordinal: u32) -> Result<Arc<Self>, KernelError> {
        driver_present()?;
        // SAFETY: is_culib_present only tries to dlopen the driver library by name.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(KernelError::Unavailable {
                backend: BACKEND,
                reason: "no CUDA driver: cudarc could not open libcuda".into(),
            });
        }
        let ctx = CudaContext::new(ordinal as usize)
            .map_err(|e| device_error(&format!("GPU {ordinal}"), e))?;
        // SAFETY: every launch and copy of this crate goes to `stream` alone, in order,
        // so the stream itself orders all reads and writes and no events are needed.
        unsafe { ctx.disable_event_tracking() };
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|e| device_error("compute capability", e))?;
        let sm =
            u32::try_from(major * 10 + minor).map_err(|e| device_error("compute capability", e))?;
        let name = ctx.name().map_err(|e| device_error("device name", e))?;
        let stream = ctx.default_stream();
        let functions = load_kernels(&ctx, sm)?;
        Ok(Arc::new(Self {
            ctx,
            stream,
            functions,
            name,
            sm,
            ordinal,
        }))
    }

    /// The card's name, such as "NVIDIA H100 80GB HBM3".
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Compute capability as `major * 10 + minor` (90 for H100).
    pub fn sm(&self) -> u32 {
        self.sm
    }

    /// The stream every operation runs on.
    pub(crate) fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The context, for cuBLAS.
    pub(crate) fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// `len` bytes of uninitialised device memory (at least one byte, so a zero-length
    /// buffer still has an address).
    pub(crate) fn alloc(&self, len: usize) -> Result<CudaSlice<u8>, KernelError> {
        // SAFETY: the memory is written (by a copy or a kernel) before it is read; the
        // bounce protocol and the backend only read ranges they wrote.
        unsafe { self.stream.alloc::<u8>(len.max(1)) }
            .map_err(|e| device_error(&format!("allocating {len} bytes"), e))
    }

    /// Queues kernel `name` with `args` on the stream.
    pub(crate) fn launch(&self, name: &str, grid: Grid, args: &[Arg]) -> Result<(), KernelError> {
        if grid.blocks.0 == 0 || grid.blocks.1 == 0 {
            return Ok(());
        }
        let function = self
            .functions
            .get(name)
            .ok_or_else(|| KernelError::Device {
                backend: BACKEND,
                reason: format!("kernel {name} is not loaded"),
            })?;
        let mut launch = self.stream.launch_builder(function);
        for arg in args {
            match arg {
                Arg::Ptr(v) | Arg::U64(v) => launch.arg(v),
                Arg::U32(v) => launch.arg(v),
                Arg::F32(v) => launch.arg(v),
            };
        }
        let config = LaunchConfig {
            grid_dim: (grid.blocks.0, grid.blocks.1, 1),
            block_dim: (grid.threads, 1, 1),
            shared_mem_bytes: grid.shared_bytes,
        };
        // SAFETY: each call site passes the argument list of the kernel's C signature
        // (types and order, see kernels/cuda/*.cu) with pointers into live buffers whose
        // ranges the caller checked against the shapes it passes.
        unsafe { launch.launch(config) }.map_err(|e| device_error(name, e))?;
        Ok(())
    }

    /// Copies `src` into device memory at `dst` (queued on the stream; the driver copies
    /// pageable memory out before returning).
    pub(crate) fn copy_in(&self, dst: u64, src: &[u8]) -> Result<(), KernelError> {
        if src.is_empty() {
            return Ok(());
        }
        self.bind()?;
        // SAFETY: the caller checked that `dst` has room for `src.len()` bytes.
        unsafe { cudarc::driver::result::memcpy_htod_async(dst, src, self.stream.cu_stream()) }
            .map_err(|e| device_error("host-to-device copy", e))
    }

    /// Copies device memory at `src` into `dst` and waits for it.
    pub(crate) fn copy_out(&self, dst: &mut [u8], src: u64) -> Result<(), KernelError> {
        if !dst.is_empty() {
            self.bind()?;
            // SAFETY: the caller checked that `src` holds `dst.len()` bytes; we
            // synchronise before `dst` is used.
            unsafe { cudarc::driver::result::memcpy_dtoh_async(dst, src, self.stream.cu_stream()) }
                .map_err(|e| device_error("device-to-host copy", e))?;
        }
        self.synchronize()
    }

    /// Zeroes `len` bytes at `dst`.
    pub(crate) fn zero(&self, dst: u64, len: usize) -> Result<(), KernelError> {
        self.bind()?;
        // SAFETY: the caller checked that `dst` has `len` bytes.
        unsafe { cudarc::driver::result::memset_d8_async(dst, 0, len, self.stream.cu_stream()) }
            .map_err(|e| device_error("memset", e))
    }

    /// Makes the context current on the calling thread: the backend may be opened on one
    /// thread and used on another (the enclave's engine thread), and the raw driver
    /// calls here, unlike cudarc's own, do not bind it themselves.
    pub(crate) fn bind(&self) -> Result<(), KernelError> {
        self.ctx
            .bind_to_thread()
            .map_err(|e| device_error("binding the CUDA context", e))
    }

    /// Waits for everything queued so far.
    pub(crate) fn synchronize(&self) -> Result<(), KernelError> {
        self.stream
            .synchronize()
            .map_err(|e| device_error("stream synchronize", e))
    }
}

/// Builds (or takes from the cache) every source for the device and loads its entry
/// points: a CUBIN for `sm_{sm}` first, since it loads on older drivers of the same
/// major version, and PTX for `compute_{sm}` (JIT by the driver) if the CUBIN does not.
fn load_kernels(
    ctx: &Arc<CudaContext>,
    sm: u32,
) -> Result<HashMap<&'static str, CudaFunction>, KernelError> {
    let nvrtc_error = |e: super::nvrtc::NvrtcError| KernelError::Unavailable {
        backend: BACKEND,
        reason: e.to_string(),
    };
    let nvrtc = Nvrtc::locate().map_err(nvrtc_error)?;
    let mut functions = HashMap::new();
    for source in SOURCES {
        let cubin = ptx_cache::build(&nvrtc, source, sm, Output::Cubin).map_err(nvrtc_error)?;
        let module = match ctx.load_module(Ptx::from_binary(cubin)) {
            Ok(module) => module,
            Err(cubin_err) => {
                let ptx = ptx_cache::build(&nvrtc, source, sm, Output::Ptx).map_err(nvrtc_error)?;
                let ptx = String::from_utf8_lossy(&ptx).into_owned();
                ctx.load_module(Ptx::from_src(ptx)).map_err(|ptx_err| {
                    device_error(
                        &format!("loading {} (CUBIN: {cubin_err})", source.name),
                        format!("PTX: {ptx_err}"),
                    )
                })?
            }
        };
        for &entry in source.entry_points {
            let function = module
                .load_function(entry)
                .map_err(|e| device_error(&format!("{}: {entry}", source.name), e))?;
            functions.insert(entry, function);
        }
    }
    Ok(functions)
}

/// The device address of a buffer this crate owns.
pub(crate) fn address(buffer: &CudaSlice<u8>, stream: &CudaStream) -> u64 {
    use cudarc::driver::DevicePtr;
    // With event tracking off the returned guard records nothing.
    let (ptr, _guard) = buffer.device_ptr(stream);
    ptr
}
