//! The GPU side of the bounce-buffer protocol ([`crate::bounce`]): pinned host staging,
//! and AES-256-GCM on the device with the kernels of `kernels/cuda/aes_gcm.cu`.
//!
//! Host to device, per chunk: the driver copies staging (ciphertext and tag) into a
//! private device buffer; `gcm_ghash_segments` and `gcm_finish` check the tag there and
//! set a status word; `gcm_ctr_xor` decrypts into the destination only if the status
//! says the tag verified; the status is read back and a mismatch is an error. Device to
//! host: `gcm_ctr_xor` encrypts the source into the private buffer, the GHASH kernels
//! append the tag, and the driver copies ciphertext and tag into staging.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, PinnedHostSlice};

use super::device::{address, device_error, Arg, CudaDevice, Grid};
use crate::bounce::{
    buffer_range, BounceDevice, BounceError, BounceKey, ChunkHeader, DeviceBufferId,
    DeviceCounters, MAX_CHUNK_BYTES, TAG_BYTES,
};
use crate::KernelError;

/// GHASH blocks per thread of `gcm_ghash_segments`; a 1 MiB chunk gives 2049 threads,
/// each also raising H to the power that follows its run (about 34 more products).
const GHASH_BLOCKS_PER_THREAD: u64 = 32;
/// Most GHASH segments any chunk needs: AAD (3 blocks), data, length block.
const MAX_SEGMENTS: usize = (MAX_CHUNK_BYTES / 16 + 4).div_ceil(GHASH_BLOCKS_PER_THREAD as usize);
/// Bytes of AES-256 round keys (60 words).
const ROUND_KEY_BYTES: usize = 240;
/// Layout of the per-chunk parameter buffer: IV at 0 (12 bytes), AAD at 16 (48 bytes).
const PARAMS_AAD_AT: usize = 16;
const PARAMS_BYTES: usize = PARAMS_AAD_AT + 48;

/// One device allocation and the length the protocol sees.
struct Buffer {
    memory: CudaSlice<u8>,
    len: usize,
}

/// Device buffers the AES-GCM kernels work in, allocated once.
struct GcmScratch {
    /// The expanded key; all zero until a key is installed.
    round_keys: CudaSlice<u8>,
    /// One staged chunk: ciphertext then tag.
    chunk: CudaSlice<u8>,
    /// One 16-byte GHASH share per segment.
    partials: CudaSlice<u8>,
    /// IV and AAD of the current chunk.
    params: CudaSlice<u8>,
    /// The tag check's verdict (u32, 1 = verified) and, after it, the computed tag.
    status: CudaSlice<u8>,
}

/// The CUDA [`BounceDevice`]: staging in pinned host memory, AES-GCM in device memory.
pub struct CudaBounceDevice {
    device: Arc<CudaDevice>,
    staging: PinnedHostSlice<u8>,
    /// `staging`'s host address, taken once (cudarc hands it out through a fallible
    /// call that also waits for the stream, which `staging_mut` cannot return).
    staging_ptr: *mut u8,
    scratch: GcmScratch,
    buffers: Vec<Option<Buffer>>,
    counters: DeviceCounters,
    key_installed: bool,
}

// SAFETY: `staging_ptr` points into `staging`, which this value owns; it is only
// dereferenced through `&mut self`, so moving the value to another thread moves the
// sole access with it.
unsafe impl Send for CudaBounceDevice {}

impl CudaBounceDevice {
    /// Staging and scratch for chunks of up to `chunk_bytes` on `device`.
    pub fn new(device: Arc<CudaDevice>, chunk_bytes: usize) -> Result<Self, KernelError> {
        let staging_len = chunk_bytes + TAG_BYTES;
        // SAFETY: the staging buffer is zeroed right below before anyone reads it.
        let mut staging = unsafe {
            device
                .context()
                .alloc_pinned_with_flags::<u8>(staging_len, 0)
        }
        .map_err(|e| device_error("allocating pinned staging", e))?;
        let staging_ptr = staging
            .as_mut_ptr()
            .map_err(|e| device_error("pinned staging", e))?;
        // SAFETY: staging_ptr is valid for staging_len bytes and nothing else uses it yet.
        unsafe { std::ptr::write_bytes(staging_ptr, 0, staging_len) };
        let scratch = GcmScratch {
            round_keys: device.alloc(ROUND_KEY_BYTES)?,
            chunk: device.alloc(staging_len)?,
            partials: device.alloc(MAX_SEGMENTS * 16)?,
            params: device.alloc(PARAMS_BYTES)?,
            status: device.alloc(4 + TAG_BYTES)?,
        };
        let this = Self {
            device,
            staging,
            staging_ptr,
            scratch,
            buffers: Vec::new(),
            counters: DeviceCounters::default(),
            key_installed: false,
        };
        this.device
            .zero(this.addr(&this.scratch.round_keys), ROUND_KEY_BYTES)?;
        Ok(this)
    }

    /// The device this staging belongs to.
    pub fn cuda(&self) -> &Arc<CudaDevice> {
        &self.device
    }

    /// Frees a buffer from [`BounceDevice::alloc`]; unknown ids are an error.
    pub fn free(&mut self, id: DeviceBufferId) -> Result<(), BounceError> {
        let slot = usize::try_from(id.0)
            .ok()
            .and_then(|i| self.buffers.get_mut(i))
            .filter(|slot| slot.is_some())
            .ok_or(BounceError::UnknownBuffer(id.0))?;
        *slot = None;
        Ok(())
    }

    /// The device address of `id[offset..offset + len]`, checked against its length.
    pub(crate) fn address_of(
        &self,
        id: DeviceBufferId,
        offset: usize,
        len: usize,
    ) -> Result<u64, BounceError> {
        let buffer = usize::try_from(id.0)
            .ok()
            .and_then(|i| self.buffers.get(i))
            .and_then(Option::as_ref)
            .ok_or(BounceError::UnknownBuffer(id.0))?;
        let range = buffer_range(buffer.len, offset, len)?;
        Ok(self.addr(&buffer.memory) + range.start as u64)
    }

    fn addr(&self, buffer: &CudaSlice<u8>) -> u64 {
        address(buffer, self.device.stream())
    }

    /// Checks the chunk fits, a key is installed and the counter is fresh.
    fn begin_chunk(&mut self, header: &ChunkHeader) -> Result<(), BounceError> {
        if header.staged_len() > self.staging.len() {
            return Err(BounceError::ChunkSize { found: header.len });
        }
        if !self.key_installed {
            return Err(BounceError::NoKey);
        }
        self.counters.take(header)
    }

    /// Copies the chunk's IV and AAD into device memory (protocol metadata, known to
    /// both sides: no secret goes this way).
    fn load_params(&self, header: &ChunkHeader) -> Result<(), BounceError> {
        let mut params = [0u8; PARAMS_BYTES];
        params[..12].copy_from_slice(&header.iv());
        params[PARAMS_AAD_AT..].copy_from_slice(&header.aad());
        self.device
            .copy_in(self.addr(&self.scratch.params), &params)
            .map_err(to_bounce)
    }

    /// GHASH of AAD and the ciphertext in the chunk buffer, then the tag: checked
    /// against `expected` (setting the status word), or written to `tag_out`.
    fn ghash_and_tag(&self, len: usize, expected: u64, tag_out: u64) -> Result<(), BounceError> {
        let params = self.addr(&self.scratch.params);
        let round_keys = self.addr(&self.scratch.round_keys);
        let partials = self.addr(&self.scratch.partials);
        let status = self.addr(&self.scratch.status);
        let total_blocks = 3 + (len as u64).div_ceil(16) + 1;
        let segments = total_blocks.div_ceil(GHASH_BLOCKS_PER_THREAD);
        let grid = Grid::per_element(segments as usize).map_err(to_bounce)?;
        self.device
            .launch(
                "gcm_ghash_segments",
                grid,
                &[
                    Arg::Ptr(round_keys),
                    Arg::Ptr(params + PARAMS_AAD_AT as u64),
                    Arg::U64(48),
                    Arg::Ptr(self.addr(&self.scratch.chunk)),
                    Arg::U64(len as u64),
                    Arg::U64(GHASH_BLOCKS_PER_THREAD),
                    Arg::U64(segments),
                    Arg::Ptr(partials),
                ],
            )
            .map_err(to_bounce)?;
        // One block reduces the shares (the kernel's shared arrays hold 256 threads).
        let one_block = Grid {
            blocks: (1, 1),
            threads: 256,
            shared_bytes: 0,
        };
        let status_ptr = if expected == 0 { 0 } else { status };
        self.device
            .launch(
                "gcm_finish",
                one_block,
                &[
                    Arg::Ptr(round_keys),
                    Arg::Ptr(params),
                    Arg::Ptr(partials),
                    Arg::U64(segments),
                    Arg::Ptr(expected),
                    Arg::Ptr(tag_out),
                    Arg::Ptr(status_ptr),
                ],
            )
            .map_err(to_bounce)
    }

    /// CTR-mode XOR of `len` bytes from `input` to `output`; with a non-null `status`
    /// the kernel writes nothing unless the tag verified.
    fn ctr_xor(&self, input: u64, output: u64, len: usize, status: u64) -> Result<(), BounceError> {
        let grid = Grid::per_element(len.div_ceil(16)).map_err(to_bounce)?;
        self.device
            .launch(
                "gcm_ctr_xor",
                grid,
                &[
                    Arg::Ptr(self.addr(&self.scratch.round_keys)),
                    Arg::Ptr(self.addr(&self.scratch.params)),
                    Arg::Ptr(input),
                    Arg::Ptr(output),
                    Arg::U64(len as u64),
                    Arg::Ptr(status),
                ],
            )
            .map_err(to_bounce)
    }
}

/// A kernel-layer error as a bounce-protocol error.
fn to_bounce(err: KernelError) -> BounceError {
    BounceError::Device {
        device: "cuda",
        reason: err.to_string(),
    }
}

impl BounceDevice for CudaBounceDevice {
    fn name(&self) -> &'static str {
        "cuda"
    }

    fn install_key(&mut self, key: &BounceKey) -> Result<(), BounceError> {
        // The key goes through the driver's own copy path, never through staging; the
        // plain key buffer is zeroed as soon as the round keys exist.
        let key_buffer = self.device.alloc(32).map_err(to_bounce)?;
        let key_at = self.addr(&key_buffer);
        let round_keys = self.addr(&self.scratch.round_keys);
        let one_thread = Grid {
            blocks: (1, 1),
            threads: 1,
            shared_bytes: 0,
        };
        let result = self.device.copy_in(key_at, key.as_bytes()).and_then(|()| {
            self.device.launch(
                "aes256_expand_key",
                one_thread,
                &[Arg::Ptr(key_at), Arg::Ptr(round_keys)],
            )
        });
        let wiped = self
            .device
            .zero(key_at, 32)
            .and_then(|()| self.device.synchronize());
        result.and(wiped).map_err(to_bounce)?;
        self.counters = DeviceCounters::default();
        self.key_installed = true;
        Ok(())
    }

    fn alloc(&mut self, len: usize) -> Result<DeviceBufferId, BounceError> {
        let memory = self.device.alloc(len).map_err(to_bounce)?;
        let buffer = Some(Buffer { memory, len });
        let index = match self.buffers.iter().position(Option::is_none) {
            Some(free) => {
                self.buffers[free] = buffer;
                free
            }
            None => {
                self.buffers.push(buffer);
                self.buffers.len() - 1
            }
        };
        Ok(DeviceBufferId(index as u64))
    }

    fn staging_mut(&mut self) -> &mut [u8] {
        // SAFETY: staging_ptr is valid for staging.len() bytes for as long as `staging`
        // lives (it is ours); every operation that DMAs to or from staging synchronises
        // the stream before returning, so no copy is in flight while the host holds this.
        unsafe { std::slice::from_raw_parts_mut(self.staging_ptr, self.staging.len()) }
    }

    fn open_staged(
        &mut self,
        header: &ChunkHeader,
        dst: DeviceBufferId,
        offset: usize,
    ) -> Result<(), BounceError> {
        self.begin_chunk(header)?;
        let dst_at = self.address_of(dst, offset, header.len)?;
        let staged_len = header.staged_len();
        let chunk = self.addr(&self.scratch.chunk);
        // The driver's DMA into private device memory: the host cannot change these
        // bytes between the tag check and the decryption.
        // SAFETY: staging_ptr is valid for staging.len() >= staged_len bytes (checked in
        // begin_chunk); `copy_out` below synchronises before this call returns.
        let staged = unsafe { std::slice::from_raw_parts(self.staging_ptr, staged_len) };
        self.device.copy_in(chunk, staged).map_err(to_bounce)?;
        self.load_params(header)?;
        let status = self.addr(&self.scratch.status);
        self.ghash_and_tag(header.len, chunk + header.len as u64, status + 4)?;
        self.ctr_xor(chunk, dst_at, header.len, status)?;
        let mut verdict = [0u8; 4];
        self.device
            .copy_out(&mut verdict, status)
            .map_err(to_bounce)?;
        if u32::from_le_bytes(verdict) == 1 {
            Ok(())
        } else {
            Err(header.tag_mismatch())
        }
    }

    fn seal_to_staging(
        &mut self,
        header: &ChunkHeader,
        src: DeviceBufferId,
        offset: usize,
    ) -> Result<(), BounceError> {
        self.begin_chunk(header)?;
        let src_at = self.address_of(src, offset, header.len)?;
        let chunk = self.addr(&self.scratch.chunk);
        self.load_params(header)?;
        self.ctr_xor(src_at, chunk, header.len, 0)?;
        self.ghash_and_tag(header.len, 0, chunk + header.len as u64)?;
        // SAFETY: as in open_staged; `&mut self` is held, so nothing else reads staging
        // while the copy (synchronised inside copy_out) writes it.
        let staging =
            unsafe { std::slice::from_raw_parts_mut(self.staging_ptr, header.staged_len()) };
        self.device.copy_out(staging, chunk).map_err(to_bounce)
    }
}

impl super::parity::InspectDevice for CudaBounceDevice {
    fn inspect(&mut self, id: DeviceBufferId, len: usize) -> Result<Vec<u8>, BounceError> {
        let at = self.address_of(id, 0, len)?;
        let mut out = vec![0u8; len];
        self.device.copy_out(&mut out, at).map_err(to_bounce)?;
        Ok(out)
    }
}
