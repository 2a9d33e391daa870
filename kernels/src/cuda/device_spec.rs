//! `--device cpu|cuda[:N]`: which backend a binary runs on.

use std::fmt;
use std::str::FromStr;

use crate::{Backend, CpuBackend, KernelError};

/// A compute device named on a command line: `cpu`, `cuda` (GPU 0) or `cuda:N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceSpec {
    /// The CPU backend.
    Cpu,
    /// The CUDA backend on GPU `N`.
    Cuda(u32),
}

/// A device string that is not `cpu`, `cuda` or `cuda:N`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("device {found:?}: expected `cpu`, `cuda` or `cuda:N` with N a GPU index")]
pub struct DeviceSpecError {
    /// The string that was given.
    pub found: String,
}

impl FromStr for DeviceSpec {
    type Err = DeviceSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || DeviceSpecError {
            found: s.chars().take(64).collect(),
        };
        match s {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => {
                let index = s.strip_prefix("cuda:").ok_or_else(err)?;
                // Digits only: u32::from_str would also take a leading '+'.
                if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(err());
                }
                index.parse().map(Self::Cuda).map_err(|_| err())
            }
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(index) => write!(f, "cuda:{index}"),
        }
    }
}

impl DeviceSpec {
    /// Opens the backend: the CPU backend, or [`super::CudaBackend`] on GPU `N` (which
    /// fails with [`KernelError::Unavailable`], "no CUDA driver: ...", where there is no
    /// NVIDIA driver, and names NVRTC or the driver's error where a kernel cannot load).
    pub fn open(self) -> Result<Box<dyn Backend>, KernelError> {
        match self {
            Self::Cpu => Ok(Box::new(CpuBackend::new())),
            Self::Cuda(_) => self.open_with(0),
        }
    }

    /// As [`DeviceSpec::open`], with the CPU backend on `cpu_threads` threads (0: one
    /// per CPU); the number is ignored for a GPU.
    pub fn open_with(self, cpu_threads: usize) -> Result<Box<dyn Backend>, KernelError> {
        match self {
            Self::Cpu => Ok(Box::new(CpuBackend::with_threads(cpu_threads)?)),
            Self::Cuda(index) => Ok(Box::new(super::CudaBackend::new(index)?)),
        }
    }
}
