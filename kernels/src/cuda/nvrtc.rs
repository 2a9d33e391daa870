//! NVRTC, opened at run time: compiles the embedded CUDA C sources to PTX.
//!
//! NVRTC needs no GPU, so CI compiles every kernel with it. The library is found, in
//! order, at `$CHRYSALIS_NVRTC_LIB` (a path to `libnvrtc.so.12`), in the PyPI wheel
//! `nvidia-cuda-nvrtc-cu12` of the `python3` on `PATH`, and by bare name (system CUDA,
//! `LD_LIBRARY_PATH`). CUDA headers (`cuda_fp16.h`, `cuda_bf16.h`) come from
//! `$CHRYSALIS_CUDA_INCLUDE` or the wheel `nvidia-cuda-runtime-cu12`.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The pip command that installs what this module needs, for error messages.
pub const PIP_INSTALL: &str =
    "pip install nvidia-cuda-nvrtc-cu12==12.9.86 nvidia-cuda-runtime-cu12==12.9.79";

/// Everything that can go wrong finding NVRTC or compiling with it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NvrtcError {
    /// No `libnvrtc.so.12` could be opened.
    #[error("libnvrtc.so.12 not found (tried: {tried}); install it with `{PIP_INSTALL}` or set CHRYSALIS_NVRTC_LIB")]
    NotFound {
        /// Each place tried and why it failed.
        tried: String,
    },
    /// The library lacks a function this module calls.
    #[error("{library} has no symbol {symbol}")]
    Symbol {
        /// The library's path.
        library: String,
        /// The missing function.
        symbol: &'static str,
    },
    /// A source failed to compile; `log` is NVRTC's program log.
    #[error("{source_name} for {arch}: compilation failed:\n{log}")]
    Compile {
        /// The source's file name.
        source_name: String,
        /// The virtual architecture, such as `compute_80`.
        arch: String,
        /// NVRTC's log.
        log: String,
    },
    /// An NVRTC call returned a non-success code.
    #[error("{function} returned NVRTC error {code}")]
    Call {
        /// The NVRTC function.
        function: &'static str,
        /// Its `nvrtcResult`.
        code: c_int,
    },
    /// A source or option contained a NUL byte.
    #[error("{0} contains a NUL byte")]
    Nul(&'static str),
}

/// A shared library opened with `dlopen`, closed on drop.
pub struct Library {
    handle: *mut c_void,
    path: String,
}

// SAFETY: a dlopen handle is process-global and may be used and closed from any thread.
unsafe impl Send for Library {}
// SAFETY: dlsym on a handle is thread-safe (glibc serialises the loader).
unsafe impl Sync for Library {}

impl Library {
    /// Opens `path` (a bare name searches the loader path) with `RTLD_NOW | RTLD_GLOBAL`,
    /// so later opens by bare name (cudarc's) find the same library.
    pub fn open(path: &str) -> Result<Self, String> {
        let c_path = CString::new(path).map_err(|_| format!("{path}: NUL in path"))?;
        // SAFETY: c_path is a valid NUL-terminated string; dlopen has no other inputs.
        let handle = unsafe { libc::dlopen(c_path.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
        if handle.is_null() {
            // dlerror usually names the file already; name it once either way.
            let reason = last_dl_error();
            return Err(if reason.starts_with(path) {
                reason
            } else {
                format!("{path}: {reason}")
            });
        }
        Ok(Self {
            handle,
            path: path.to_owned(),
        })
    }

    /// The address of `symbol`, or an error naming it.
    fn symbol(&self, symbol: &'static str) -> Result<*mut c_void, NvrtcError> {
        let missing = || NvrtcError::Symbol {
            library: self.path.clone(),
            symbol,
        };
        let name = CString::new(symbol).map_err(|_| missing())?;
        // SAFETY: handle came from a successful dlopen and is still open (we own it).
        let ptr = unsafe { libc::dlsym(self.handle, name.as_ptr()) };
        if ptr.is_null() {
            Err(missing())
        } else {
            Ok(ptr)
        }
    }
}

impl Drop for Library {
    fn drop(&mut self) {
        // SAFETY: handle came from dlopen and no symbol from it outlives self: the
        // function pointers live in `Nvrtc`, which owns this Library.
        unsafe { libc::dlclose(self.handle) };
    }
}

fn last_dl_error() -> String {
    // SAFETY: dlerror returns null or a valid C string owned by the loader.
    let err = unsafe { libc::dlerror() };
    if err.is_null() {
        return "unknown dlopen error".into();
    }
    // SAFETY: non-null, NUL-terminated, valid until the next dl* call on this thread.
    unsafe { CStr::from_ptr(err) }
        .to_string_lossy()
        .into_owned()
}

type Program = *mut c_void;
type CreateProgram = unsafe extern "C" fn(
    *mut Program,
    *const c_char,
    *const c_char,
    c_int,
    *const *const c_char,
    *const *const c_char,
) -> c_int;
type CompileProgram = unsafe extern "C" fn(Program, c_int, *const *const c_char) -> c_int;
type GetSize = unsafe extern "C" fn(Program, *mut usize) -> c_int;
type GetText = unsafe extern "C" fn(Program, *mut c_char) -> c_int;
type DestroyProgram = unsafe extern "C" fn(*mut Program) -> c_int;
type Version = unsafe extern "C" fn(*mut c_int, *mut c_int) -> c_int;

/// Looks up `symbol` as a function pointer of type `F`.
///
/// # Safety
/// `F` must be an `unsafe extern "C" fn` type matching the symbol's C signature.
unsafe fn function<F: Copy>(library: &Library, symbol: &'static str) -> Result<F, NvrtcError> {
    let ptr = library.symbol(symbol)?;
    assert_eq!(std::mem::size_of::<F>(), std::mem::size_of::<*mut c_void>());
    // SAFETY: F is a pointer-sized fn pointer type for this symbol (caller's contract),
    // and ptr is non-null.
    Ok(unsafe { std::mem::transmute_copy::<*mut c_void, F>(&ptr) })
}

/// An opened NVRTC with the functions this crate calls.
pub struct Nvrtc {
    create: CreateProgram,
    compile: CompileProgram,
    ptx_size: GetSize,
    ptx: GetText,
    cubin_size: GetSize,
    cubin: GetText,
    log_size: GetSize,
    log: GetText,
    destroy: DestroyProgram,
    version: Version,
    include_dirs: Vec<PathBuf>,
    // Keeps the function pointers above valid; dropped last.
    library: Library,
}

/// Destroys an NVRTC program when it goes out of scope, on every path.
struct ProgramGuard<'a> {
    nvrtc: &'a Nvrtc,
    program: Program,
}

impl Drop for ProgramGuard<'_> {
    fn drop(&mut self) {
        // SAFETY: program came from a successful nvrtcCreateProgram and is destroyed once.
        unsafe { (self.nvrtc.destroy)(&mut self.program) };
    }
}

fn check(function: &'static str, code: c_int) -> Result<(), NvrtcError> {
    if code == 0 {
        Ok(())
    } else {
        Err(NvrtcError::Call { function, code })
    }
}

/// The `nvidia/<package>` directory of the pip wheel for `python3` on `PATH`.
pub fn pip_wheel_dir(package: &str) -> Option<PathBuf> {
    let script = format!(
        "import importlib.util as u; s = u.find_spec('nvidia.{package}'); \
         print(list(s.submodule_search_locations)[0])"
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let dir = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    dir.is_dir().then_some(dir)
}

fn candidate_libraries() -> Vec<String> {
    let mut paths = Vec::new();
    if let Ok(path) = std::env::var("CHRYSALIS_NVRTC_LIB") {
        paths.push(path);
    }
    if let Some(dir) = pip_wheel_dir("cuda_nvrtc") {
        paths.push(dir.join("lib/libnvrtc.so.12").display().to_string());
    }
    paths.push("libnvrtc.so.12".into());
    paths
}

fn include_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Ok(dir) = std::env::var("CHRYSALIS_CUDA_INCLUDE") {
        dirs.push(PathBuf::from(dir));
    }
    if let Some(dir) = pip_wheel_dir("cuda_runtime") {
        dirs.push(dir.join("include"));
    }
    dirs.push(PathBuf::from("/usr/local/cuda/include"));
    dirs.retain(|d| d.join("cuda_fp16.h").is_file());
    dirs
}

/// Opens NVRTC's builtins library beside `nvrtc` first, by absolute path, because
/// NVRTC opens it by bare name and the wheel's directory is not on the loader path.
fn preload_builtins(nvrtc: &Path) -> Option<Library> {
    let dir = nvrtc.parent()?;
    let entries = std::fs::read_dir(dir).ok()?;
    entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libnvrtc-builtins.so"))
        })
        .and_then(|p| Library::open(&p.display().to_string()).ok())
}

impl Nvrtc {
    /// Finds and opens NVRTC (see the module docs for where it looks).
    pub fn locate() -> Result<Self, NvrtcError> {
        let mut tried = Vec::new();
        for path in candidate_libraries() {
            let builtins = preload_builtins(Path::new(&path));
            match Library::open(&path) {
                Ok(library) => {
                    // The builtins stay loaded for the process, like the driver would.
                    std::mem::forget(builtins);
                    return Self::from_library(library);
                }
                Err(reason) => tried.push(reason),
            }
        }
        Err(NvrtcError::NotFound {
            tried: tried.join("; "),
        })
    }

    fn from_library(library: Library) -> Result<Self, NvrtcError> {
        // SAFETY (every call below): each type is the function-pointer type of that
        // NVRTC C function's signature in nvrtc.h (CUDA 12).
        unsafe {
            Ok(Self {
                create: function(&library, "nvrtcCreateProgram")?,
                compile: function(&library, "nvrtcCompileProgram")?,
                ptx_size: function(&library, "nvrtcGetPTXSize")?,
                ptx: function(&library, "nvrtcGetPTX")?,
                cubin_size: function(&library, "nvrtcGetCUBINSize")?,
                cubin: function(&library, "nvrtcGetCUBIN")?,
                log_size: function(&library, "nvrtcGetProgramLogSize")?,
                log: function(&library, "nvrtcGetProgramLog")?,
                destroy: function(&library, "nvrtcDestroyProgram")?,
                version: function(&library, "nvrtcVersion")?,
                include_dirs: include_dirs(),
                library,
            })
        }
    }

    /// Where the library was opened from.
    pub fn path(&self) -> &str {
        &self.library.path
    }

    /// NVRTC's `(major, minor)` version.
    pub fn version(&self) -> Result<(i32, i32), NvrtcError> {
        let (mut major, mut minor) = (0, 0);
        // SAFETY: both pointers are valid for one c_int write.
        check("nvrtcVersion", unsafe {
            (self.version)(&mut major, &mut minor)
        })?;
        Ok((major, minor))
    }

    /// The directories passed as `--include-path` (those holding `cuda_fp16.h`).
    pub fn include_dirs(&self) -> &[PathBuf] {
        &self.include_dirs
    }

    /// Compiles `code` to PTX for the virtual architecture `compute_{sm}` (80 for A100,
    /// 90 for H100/H200).
    pub fn compile_ptx(&self, name: &str, code: &str, sm: u32) -> Result<String, NvrtcError> {
        let guard = self.compile(name, code, format!("compute_{sm}"))?;
        self.text(&guard, self.ptx_size, self.ptx, "nvrtcGetPTX")
    }

    /// Compiles `code` to a CUBIN (machine code) for the real architecture `sm_{sm}`.
    /// Unlike PTX, which the driver JIT-compiles and which needs a driver at least as new
    /// as NVRTC, a CUBIN loads on any driver of the same CUDA major version.
    pub fn compile_cubin(&self, name: &str, code: &str, sm: u32) -> Result<Vec<u8>, NvrtcError> {
        let guard = self.compile(name, code, format!("sm_{sm}"))?;
        let mut len = 0usize;
        // SAFETY: program is live (guard), len is valid for one write.
        check("nvrtcGetCUBINSize", unsafe {
            (self.cubin_size)(guard.program, &mut len)
        })?;
        let mut buf = vec![0u8; len];
        // SAFETY: buf holds the `len` bytes NVRTC said it will write.
        check("nvrtcGetCUBIN", unsafe {
            (self.cubin)(guard.program, buf.as_mut_ptr().cast())
        })?;
        Ok(buf)
    }

    /// Creates and compiles a program for `arch` (`compute_NN` or `sm_NN`).
    fn compile(
        &self,
        name: &str,
        code: &str,
        arch: String,
    ) -> Result<ProgramGuard<'_>, NvrtcError> {
        let mut options = vec![
            format!("--gpu-architecture={arch}"),
            "--std=c++17".to_owned(),
            "--use_fast_math".to_owned(),
        ];
        options.extend(
            self.include_dirs
                .iter()
                .map(|d| format!("--include-path={}", d.display())),
        );
        let options = options
            .into_iter()
            .map(|o| CString::new(o).map_err(|_| NvrtcError::Nul("option")))
            .collect::<Result<Vec<_>, _>>()?;
        let option_ptrs: Vec<*const c_char> = options.iter().map(|o| o.as_ptr()).collect();
        let c_code = CString::new(code).map_err(|_| NvrtcError::Nul("source"))?;
        let c_name = CString::new(name).map_err(|_| NvrtcError::Nul("source name"))?;

        let mut program: Program = std::ptr::null_mut();
        // SAFETY: code and name are valid C strings; no headers are passed (count 0).
        check("nvrtcCreateProgram", unsafe {
            (self.create)(
                &mut program,
                c_code.as_ptr(),
                c_name.as_ptr(),
                0,
                std::ptr::null(),
                std::ptr::null(),
            )
        })?;
        let guard = ProgramGuard {
            nvrtc: self,
            program,
        };
        let count = c_int::try_from(option_ptrs.len()).map_err(|_| NvrtcError::Nul("options"))?;
        // SAFETY: option_ptrs holds `count` valid C strings that outlive the call.
        let compiled = unsafe { (self.compile)(guard.program, count, option_ptrs.as_ptr()) };
        if compiled != 0 {
            return Err(NvrtcError::Compile {
                source_name: name.to_owned(),
                arch,
                log: self.text(&guard, self.log_size, self.log, "nvrtcGetProgramLog")?,
            });
        }
        Ok(guard)
    }

    /// Reads a NUL-terminated text (PTX or log) of the size NVRTC reports.
    fn text(
        &self,
        guard: &ProgramGuard<'_>,
        size: GetSize,
        get: GetText,
        function: &'static str,
    ) -> Result<String, NvrtcError> {
        let mut len = 0usize;
        // SAFETY: program is live (guard), len is valid for one write.
        check(function, unsafe { size(guard.program, &mut len) })?;
        let mut buf = vec![0u8; len.max(1)];
        // SAFETY: buf holds the `len` bytes NVRTC said it will write.
        check(function, unsafe {
            get(guard.program, buf.as_mut_ptr().cast())
        })?;
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        Ok(String::from_utf8_lossy(&buf[..end]).into_owned())
    }
}
