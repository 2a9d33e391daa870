//! Builds the published manifests into the crate: every `*.json` file of `published/`,
//! sorted by name, becomes one `(name, include_str!(path))` entry of
//! `snp::manifests::PUBLISHED`. Cargo reruns this when the directory or a file changes,
//! so the binary always carries what `measurements/published/` holds at build time.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    // Read at run time: `env!` would freeze the path of whichever checkout first compiled
    // this script, and a target directory shared between checkouts would then list the
    // other checkout's manifests (or fail once it is gone).
    let manifest_dir =
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let dir = Path::new(&manifest_dir).join("published");
    println!("cargo:rerun-if-changed={}", dir.display());
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|ext| ext == "json"))
        .collect();
    files.sort();
    let mut out = String::from("&[\n");
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
        let name = file
            .file_name()
            .expect("a listed file has a name")
            .to_string_lossy();
        let path = file.to_str().expect("the crate's path is UTF-8");
        writeln!(out, "    ({name:?}, include_str!({path:?})),").expect("writing to a String");
    }
    out.push(']');
    let target =
        Path::new(&std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("published.rs");
    std::fs::write(&target, out)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", target.display()));
}
