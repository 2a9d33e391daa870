//! Encrypted bounce buffers between enclave memory and accelerator memory.
//!
//! Host-visible staging memory (pinned memory on a GPU) is readable and writable by the
//! untrusted host, so it only ever holds AES-256-GCM ciphertext:
//!
//! - host to device: the enclave encrypts each chunk in its own private memory, copies
//!   the ciphertext and tag into staging, and the device copies staging into device
//!   memory, authenticates it and decrypts it there (`kernels/cuda/aes_gcm.cu`);
//! - device to host: the device encrypts into staging, the enclave copies staging into
//!   private memory, authenticates and decrypts it.
//!
//! Both sides work on a private copy, never on staging itself, so the host cannot swap
//! bytes between the tag check and the decryption.
//!
//! Every chunk has its own 96-bit IV: a 4-byte direction tag and a 64-bit big-endian
//! counter per direction that only goes up, so an IV is never used twice under one key.
//! The additional data binds the transfer id, the chunk index, the chunk count and the
//! transfer length, so reordered, replayed, dropped or truncated chunks fail the tag
//! check. The session key lives in enclave memory and device memory only; on a GPU it
//! reaches device memory once through the driver's copy path (which the driver itself
//! encrypts in H100 confidential-computing mode), never through our staging buffer.

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce, Tag};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Bytes of the GCM tag that follows each chunk's ciphertext in staging.
pub const TAG_BYTES: usize = 16;
/// Smallest chunk the channel accepts (smaller chunks spend their time on launches).
pub const MIN_CHUNK_BYTES: usize = 64 * 1024;
/// Largest chunk the channel accepts (the size of the driver's own CC bounce buffers).
pub const MAX_CHUNK_BYTES: usize = 2 * 1024 * 1024;
/// The chunk size used unless a caller asks for another.
pub const DEFAULT_CHUNK_BYTES: usize = 1024 * 1024;

/// Domain separation for the additional authenticated data of every chunk.
const AAD_LABEL: &[u8; 20] = b"chrysalis/v1/bounce\0";

/// Which way a chunk travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Enclave memory to device memory.
    HostToDevice,
    /// Device memory to enclave memory.
    DeviceToHost,
}

impl Direction {
    /// The first four bytes of every IV in this direction, so the two directions never
    /// share an IV under the same key.
    const fn iv_prefix(self) -> [u8; 4] {
        match self {
            Self::HostToDevice => *b"h2d\0",
            Self::DeviceToHost => *b"d2h\0",
        }
    }

    const fn index(self) -> usize {
        match self {
            Self::HostToDevice => 0,
            Self::DeviceToHost => 1,
        }
    }
}

/// Everything in this crate's bounce-buffer protocol that can fail.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum BounceError {
    /// A chunk's tag did not verify: staging was modified, reordered or replayed.
    #[error("chunk {index} of transfer {transfer} ({direction:?}) failed authentication")]
    TagMismatch {
        /// Direction of the transfer.
        direction: Direction,
        /// Transfer id.
        transfer: u64,
        /// Chunk index within the transfer.
        index: u32,
    },
    /// A chunk size outside the accepted range was requested.
    #[error("chunk size: expected {MIN_CHUNK_BYTES}..={MAX_CHUNK_BYTES} bytes, found {found}")]
    ChunkSize {
        /// The size that was requested.
        found: usize,
    },
    /// The per-direction IV counter would wrap; the key must be replaced.
    #[error("IV counter for {0:?} exhausted: the bounce key must be rotated")]
    CounterExhausted(Direction),
    /// The device was asked to use an IV counter not above the last one it used.
    #[error("{direction:?} IV counter {found} not above the last one used, {last}")]
    CounterReuse {
        /// Direction of the chunk.
        direction: Direction,
        /// Counter that was presented.
        found: u64,
        /// Highest counter used before.
        last: u64,
    },
    /// A device buffer id that the device did not allocate.
    #[error("unknown device buffer {0}")]
    UnknownBuffer(u64),
    /// A chunk would read or write past the end of a device buffer.
    #[error("device buffer of {len} bytes: range {offset}..{end} out of bounds")]
    OutOfRange {
        /// The buffer's length.
        len: usize,
        /// Start of the requested range.
        offset: usize,
        /// End of the requested range.
        end: usize,
    },
    /// The device has no key installed yet.
    #[error("no bounce key installed on device")]
    NoKey,
    /// The device itself failed (driver error, allocation failure).
    #[error("device {device}: {reason}")]
    Device {
        /// Device name.
        device: &'static str,
        /// What the driver reported.
        reason: String,
    },
}

/// A 256-bit AES-GCM key for one device session, wiped when dropped.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct BounceKey([u8; 32]);

impl BounceKey {
    /// Wraps key bytes (from the enclave's key schedule or its RNG).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// A fresh random key from the operating system's RNG.
    pub fn generate() -> Self {
        use rand_core::RngCore;
        let mut bytes = [0u8; 32];
        rand_core::OsRng.fill_bytes(&mut bytes);
        Self(bytes)
    }

    /// The raw key bytes, for installing into device memory.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(&self.0.into())
    }
}

impl std::fmt::Debug for BounceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BounceKey(<redacted>)")
    }
}

/// The metadata of one chunk: known to both trusted sides, never read from staging.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkHeader {
    /// Which way the chunk travels.
    pub direction: Direction,
    /// The per-direction IV counter of this chunk.
    pub counter: u64,
    /// Id of the transfer the chunk belongs to.
    pub transfer: u64,
    /// Index of the chunk within its transfer.
    pub index: u32,
    /// Number of chunks in the transfer.
    pub count: u32,
    /// Total plaintext bytes of the transfer.
    pub transfer_len: u64,
    /// Plaintext bytes of this chunk.
    pub len: usize,
}

impl ChunkHeader {
    /// The 96-bit GCM IV: direction prefix, then the counter big-endian.
    pub fn iv(&self) -> [u8; 12] {
        let mut iv = [0u8; 12];
        iv[..4].copy_from_slice(&self.direction.iv_prefix());
        iv[4..].copy_from_slice(&self.counter.to_be_bytes());
        iv
    }

    /// The additional authenticated data: label, direction, transfer id, chunk index,
    /// chunk count and transfer length (48 bytes).
    pub fn aad(&self) -> [u8; 48] {
        let mut aad = [0u8; 48];
        aad[..20].copy_from_slice(AAD_LABEL);
        aad[20..24].copy_from_slice(&self.direction.iv_prefix());
        aad[24..32].copy_from_slice(&self.transfer.to_be_bytes());
        aad[32..36].copy_from_slice(&self.index.to_be_bytes());
        aad[36..40].copy_from_slice(&self.count.to_be_bytes());
        aad[40..48].copy_from_slice(&self.transfer_len.to_be_bytes());
        aad
    }

    /// The error for this chunk failing authentication.
    pub fn tag_mismatch(&self) -> BounceError {
        BounceError::TagMismatch {
            direction: self.direction,
            transfer: self.transfer,
            index: self.index,
        }
    }

    /// Bytes this chunk occupies in staging: ciphertext then tag.
    pub fn staged_len(&self) -> usize {
        self.len + TAG_BYTES
    }
}

/// A handle to a buffer in device memory, issued by a [`BounceDevice`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DeviceBufferId(pub u64);

/// Sees (and, standing for the untrusted host, may rewrite) every chunk in staging:
/// called after the sender has filled staging and before the receiver reads it.
pub trait StagingObserver: Send {
    /// One chunk as it sits in staging: `staging` is ciphertext then tag.
    fn observe(&mut self, header: &ChunkHeader, staging: &mut [u8]);
}

/// The device side of the bounce protocol: the CUDA implementation, or
/// [`CpuStandInDevice`] where there is no GPU.
pub trait BounceDevice: Send {
    /// A short name for errors.
    fn name(&self) -> &'static str;

    /// Puts the session key into device memory (not through staging).
    fn install_key(&mut self, key: &BounceKey) -> Result<(), BounceError>;

    /// Allocates `len` bytes of device memory.
    fn alloc(&mut self, len: usize) -> Result<DeviceBufferId, BounceError>;

    /// The host-visible staging buffer, `chunk_bytes + TAG_BYTES` long.
    fn staging_mut(&mut self) -> &mut [u8];

    /// Copies the staged chunk into device memory, authenticates it and decrypts it to
    /// `dst[offset..offset + header.len]`; a bad tag leaves `dst` unchanged.
    fn open_staged(
        &mut self,
        header: &ChunkHeader,
        dst: DeviceBufferId,
        offset: usize,
    ) -> Result<(), BounceError>;

    /// Encrypts `src[offset..offset + header.len]` into staging (ciphertext then tag).
    fn seal_to_staging(
        &mut self,
        header: &ChunkHeader,
        src: DeviceBufferId,
        offset: usize,
    ) -> Result<(), BounceError>;
}

/// The enclave side of the protocol: owns the key, the counters and the chunking.
pub struct BounceChannel<D: BounceDevice> {
    device: D,
    cipher: Aes256Gcm,
    chunk_bytes: usize,
    next_counter: [u64; 2],
    next_transfer: u64,
    /// Enclave-private scratch where chunks are encrypted and decrypted.
    scratch: Vec<u8>,
    observer: Option<Box<dyn StagingObserver>>,
}

impl<D: BounceDevice> BounceChannel<D> {
    /// Installs `key` on `device` and prepares chunks of `chunk_bytes`
    /// ([`MIN_CHUNK_BYTES`]..=[`MAX_CHUNK_BYTES`]).
    pub fn new(mut device: D, key: &BounceKey, chunk_bytes: usize) -> Result<Self, BounceError> {
        if !(MIN_CHUNK_BYTES..=MAX_CHUNK_BYTES).contains(&chunk_bytes) {
            return Err(BounceError::ChunkSize { found: chunk_bytes });
        }
        let staging_len = device.staging_mut().len();
        if staging_len < chunk_bytes + TAG_BYTES {
            return Err(BounceError::Device {
                device: device.name(),
                reason: format!(
                    "staging holds {staging_len} bytes, chunks need {}",
                    chunk_bytes + TAG_BYTES
                ),
            });
        }
        device.install_key(key)?;
        Ok(Self {
            device,
            cipher: key.cipher(),
            chunk_bytes,
            next_counter: [0; 2],
            next_transfer: 0,
            scratch: vec![0; chunk_bytes],
            observer: None,
        })
    }

    /// Sets the hook that sees every staged chunk (tests, audits).
    pub fn set_observer(&mut self, observer: Box<dyn StagingObserver>) {
        self.observer = Some(observer);
    }

    /// The device, for operations outside the bounce protocol.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The device, mutably.
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// Copies `data` into a new device buffer through encrypted staging.
    pub fn upload(&mut self, data: &[u8]) -> Result<DeviceBufferId, BounceError> {
        let dst = self.device.alloc(data.len())?;
        self.upload_into(data, dst, 0)?;
        Ok(dst)
    }

    /// Copies `data` into `dst[offset..]` through encrypted staging.
    pub fn upload_into(
        &mut self,
        data: &[u8],
        dst: DeviceBufferId,
        offset: usize,
    ) -> Result<(), BounceError> {
        let headers = self.plan(Direction::HostToDevice, data.len())?;
        for (header, chunk) in headers.iter().zip(data.chunks(self.chunk_bytes)) {
            let scratch = &mut self.scratch[..header.len];
            scratch.copy_from_slice(chunk);
            let tag = self
                .cipher
                .encrypt_in_place_detached(&Nonce::from(header.iv()), &header.aad(), scratch)
                .map_err(|_| BounceError::Device {
                    device: "enclave",
                    reason: "aes-gcm refused a chunk length".into(),
                })?;
            let staging = &mut self.device.staging_mut()[..header.staged_len()];
            staging[..header.len].copy_from_slice(scratch);
            staging[header.len..].copy_from_slice(&tag);
            self.notify(header);
            let chunk_offset = offset + header.index as usize * self.chunk_bytes;
            self.device.open_staged(header, dst, chunk_offset)?;
        }
        Ok(())
    }

    /// Reads `src[offset..offset + len]` back through encrypted staging.
    pub fn download(
        &mut self,
        src: DeviceBufferId,
        offset: usize,
        len: usize,
    ) -> Result<Vec<u8>, BounceError> {
        let headers = self.plan(Direction::DeviceToHost, len)?;
        let mut out = Vec::with_capacity(len);
        for header in &headers {
            let chunk_offset = offset + header.index as usize * self.chunk_bytes;
            self.device.seal_to_staging(header, src, chunk_offset)?;
            self.notify(header);
            // Copy out of staging first: the host could rewrite it after the tag check.
            let staging = &self.device.staging_mut()[..header.staged_len()];
            let (body, tag) = staging.split_at(header.len);
            let tag = tag_of(tag);
            let scratch = &mut self.scratch[..header.len];
            scratch.copy_from_slice(body);
            self.cipher
                .decrypt_in_place_detached(&Nonce::from(header.iv()), &header.aad(), scratch, &tag)
                .map_err(|_| header.tag_mismatch())?;
            out.extend_from_slice(scratch);
        }
        Ok(out)
    }

    /// Assigns counters and a transfer id for `len` bytes in `direction`; counters are
    /// consumed even if the transfer later fails, so an IV is never reused.
    fn plan(&mut self, direction: Direction, len: usize) -> Result<Vec<ChunkHeader>, BounceError> {
        let count = len.div_ceil(self.chunk_bytes).max(1);
        let first = self.next_counter[direction.index()];
        let next = u64::try_from(count)
            .ok()
            .and_then(|c| first.checked_add(c))
            .ok_or(BounceError::CounterExhausted(direction))?;
        let count_u32 = u32::try_from(count).map_err(|_| BounceError::ChunkSize { found: len })?;
        self.next_counter[direction.index()] = next;
        let transfer = self.next_transfer;
        self.next_transfer += 1;
        Ok((0..count_u32)
            .map(|index| {
                let start = index as usize * self.chunk_bytes;
                ChunkHeader {
                    direction,
                    counter: first + u64::from(index),
                    transfer,
                    index,
                    count: count_u32,
                    transfer_len: len as u64,
                    len: (len - start).min(self.chunk_bytes),
                }
            })
            .collect())
    }

    fn notify(&mut self, header: &ChunkHeader) {
        if let Some(observer) = self.observer.as_mut() {
            let staging = &mut self.device.staging_mut()[..header.staged_len()];
            observer.observe(header, staging);
        }
    }
}

/// The tag part of a staged chunk; callers split staging at `len`, so it is always
/// `TAG_BYTES` long (a local invariant, not input).
fn tag_of(bytes: &[u8]) -> Tag {
    let mut tag = Tag::default();
    tag.copy_from_slice(bytes);
    tag
}

/// `offset..offset + len` if it lies within a device buffer of `buffer_len` bytes.
pub fn buffer_range(
    buffer_len: usize,
    offset: usize,
    len: usize,
) -> Result<std::ops::Range<usize>, BounceError> {
    match offset.checked_add(len).filter(|&end| end <= buffer_len) {
        Some(end) => Ok(offset..end),
        None => Err(BounceError::OutOfRange {
            len: buffer_len,
            offset,
            end: offset.saturating_add(len),
        }),
    }
}

/// The device side's record of the IV counters it has used: each direction's counter
/// must only go up, so a replayed or reordered chunk is refused before any decryption.
#[derive(Clone, Copy, Debug, Default)]
pub struct DeviceCounters {
    last: [Option<u64>; 2],
}

impl DeviceCounters {
    /// Accepts `header.counter` if it is above the last one used in its direction.
    pub fn take(&mut self, header: &ChunkHeader) -> Result<(), BounceError> {
        let last = &mut self.last[header.direction.index()];
        if let Some(prev) = *last {
            if header.counter <= prev {
                return Err(BounceError::CounterReuse {
                    direction: header.direction,
                    found: header.counter,
                    last: prev,
                });
            }
        }
        *last = Some(header.counter);
        Ok(())
    }
}

/// A test double for a GPU (named so): "device memory" is ordinary heap memory and the
/// device-side AES-GCM is the `aes-gcm` crate, so the protocol is tested without a GPU.
/// It enforces what the CUDA side enforces: a key must be installed, counters only go
/// up per direction, and a bad tag leaves device memory untouched.
pub struct CpuStandInDevice {
    cipher: Option<Aes256Gcm>,
    staging: Vec<u8>,
    buffers: Vec<Vec<u8>>,
    counters: DeviceCounters,
}

impl CpuStandInDevice {
    /// A stand-in with staging for chunks of up to `chunk_bytes`.
    pub fn new(chunk_bytes: usize) -> Self {
        Self {
            cipher: None,
            staging: vec![0; chunk_bytes + TAG_BYTES],
            buffers: Vec::new(),
            counters: DeviceCounters::default(),
        }
    }

    /// Reads "device memory" directly (what a kernel would see), for assertions.
    pub fn memory(&self, id: DeviceBufferId) -> Option<&[u8]> {
        self.buffers
            .get(usize::try_from(id.0).ok()?)
            .map(Vec::as_slice)
    }

    fn range(
        &mut self,
        id: DeviceBufferId,
        offset: usize,
        len: usize,
    ) -> Result<&mut [u8], BounceError> {
        let buffer = usize::try_from(id.0)
            .ok()
            .and_then(|i| self.buffers.get_mut(i))
            .ok_or(BounceError::UnknownBuffer(id.0))?;
        let range = buffer_range(buffer.len(), offset, len)?;
        Ok(&mut buffer[range])
    }

    /// Checks the chunk fits staging and takes its counter; returns its staged length.
    fn begin_chunk(&mut self, header: &ChunkHeader) -> Result<usize, BounceError> {
        if header.staged_len() > self.staging.len() {
            return Err(BounceError::ChunkSize { found: header.len });
        }
        self.counters.take(header)?;
        Ok(header.staged_len())
    }
}

impl BounceDevice for CpuStandInDevice {
    fn name(&self) -> &'static str {
        "cpu-stand-in"
    }

    fn install_key(&mut self, key: &BounceKey) -> Result<(), BounceError> {
        self.cipher = Some(key.cipher());
        self.counters = DeviceCounters::default();
        Ok(())
    }

    fn alloc(&mut self, len: usize) -> Result<DeviceBufferId, BounceError> {
        self.buffers.push(vec![0; len]);
        Ok(DeviceBufferId(self.buffers.len() as u64 - 1))
    }

    fn staging_mut(&mut self) -> &mut [u8] {
        &mut self.staging
    }

    fn open_staged(
        &mut self,
        header: &ChunkHeader,
        dst: DeviceBufferId,
        offset: usize,
    ) -> Result<(), BounceError> {
        let staged_len = self.begin_chunk(header)?;
        // The "DMA" into device memory: a private copy the host cannot touch afterwards.
        let mut private = self.staging[..staged_len].to_vec();
        let (body, tag) = private.split_at_mut(header.len);
        let tag = tag_of(tag);
        let cipher = self.cipher.as_ref().ok_or(BounceError::NoKey)?;
        cipher
            .decrypt_in_place_detached(&Nonce::from(header.iv()), &header.aad(), body, &tag)
            .map_err(|_| header.tag_mismatch())?;
        self.range(dst, offset, header.len)?.copy_from_slice(body);
        Ok(())
    }

    fn seal_to_staging(
        &mut self,
        header: &ChunkHeader,
        src: DeviceBufferId,
        offset: usize,
    ) -> Result<(), BounceError> {
        let staged_len = self.begin_chunk(header)?;
        let mut body = self.range(src, offset, header.len)?.to_vec();
        let cipher = self.cipher.as_ref().ok_or(BounceError::NoKey)?;
        let tag = cipher
            .encrypt_in_place_detached(&Nonce::from(header.iv()), &header.aad(), &mut body)
            .map_err(|_| BounceError::Device {
                device: "cpu-stand-in",
                reason: "aes-gcm refused a chunk length".into(),
            })?;
        let staging = &mut self.staging[..staged_len];
        staging[..header.len].copy_from_slice(&body);
        staging[header.len..].copy_from_slice(&tag);
        Ok(())
    }
}
