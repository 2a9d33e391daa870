//! A deterministic cpio writer (the kernel's initramfs format, "newc").
//!
//! Same entries in, same bytes out: entries are sorted by path, every timestamp is 0,
//! every owner is root, inode numbers count up from 1 in that order, and nothing of the
//! build machine (umask, user, clock, directory order) leaks in.

use std::collections::BTreeMap;

use anyhow::{bail, Context};

/// newc's magic: ASCII header, no checksum.
const MAGIC: &str = "070701";
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;

/// What an archive entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir,
    /// A regular file with these contents.
    File(Vec<u8>),
    /// A character device node.
    CharDev {
        /// Device major number.
        major: u32,
        /// Device minor number.
        minor: u32,
    },
}

/// One entry: a relative path (no leading `/`), permission bits and a kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path inside the archive, e.g. `lib/modules/vsock.ko.xz`.
    pub path: String,
    /// Permission bits only (e.g. 0o755); the type bits come from `kind`.
    pub perm: u32,
    /// The entry's type and contents.
    pub kind: Kind,
}

impl Entry {
    /// A directory with mode 0755.
    pub fn dir(path: &str) -> Self {
        Self {
            path: path.to_owned(),
            perm: 0o755,
            kind: Kind::Dir,
        }
    }

    /// A regular file.
    pub fn file(path: &str, perm: u32, contents: Vec<u8>) -> Self {
        Self {
            path: path.to_owned(),
            perm,
            kind: Kind::File(contents),
        }
    }
}

/// Writes `entries` as a newc archive. Fails on duplicate paths, absolute or `..`
/// paths, and entries whose parent directory is not in the archive.
pub fn write_newc(entries: Vec<Entry>) -> anyhow::Result<Vec<u8>> {
    let mut sorted = BTreeMap::new();
    for entry in entries {
        check_path(&entry.path)?;
        if entry.perm & !0o7777 != 0 {
            bail!(
                "{}: mode {:o} has more than permission bits",
                entry.path,
                entry.perm
            );
        }
        let path = entry.path.clone();
        if sorted.insert(path.clone(), entry).is_some() {
            bail!("{path} appears twice in the initrd");
        }
    }
    for (path, _) in sorted.iter() {
        if let Some((parent, _)) = path.rsplit_once('/') {
            match sorted.get(parent) {
                Some(Entry {
                    kind: Kind::Dir, ..
                }) => {}
                _ => bail!("{path} has no parent directory {parent} in the initrd"),
            }
        }
    }
    let mut out = Vec::new();
    for (ino, entry) in (1u32..).zip(sorted.values()) {
        write_entry(&mut out, ino, entry)?;
    }
    write_header(
        &mut out,
        &Header {
            ino: 0,
            mode: 0,
            nlink: 1,
            size: 0,
            rdev: (0, 0),
        },
        "TRAILER!!!",
    );
    Ok(out)
}

fn check_path(path: &str) -> anyhow::Result<()> {
    if path.is_empty() || path.starts_with('/') || path.ends_with('/') {
        bail!("initrd path {path:?} must be relative, non-empty and without a trailing /");
    }
    if path
        .split('/')
        .any(|part| part.is_empty() || part == "." || part == "..")
    {
        bail!("initrd path {path:?} has an empty, . or .. component");
    }
    Ok(())
}

struct Header {
    ino: u32,
    mode: u32,
    nlink: u32,
    size: u32,
    rdev: (u32, u32),
}

fn write_entry(out: &mut Vec<u8>, ino: u32, entry: &Entry) -> anyhow::Result<()> {
    let (type_bits, nlink, data, rdev): (u32, u32, &[u8], (u32, u32)) = match &entry.kind {
        Kind::Dir => (S_IFDIR, 2, &[], (0, 0)),
        Kind::File(bytes) => (S_IFREG, 1, bytes, (0, 0)),
        Kind::CharDev { major, minor } => (S_IFCHR, 1, &[], (*major, *minor)),
    };
    let size = u32::try_from(data.len())
        .ok()
        .with_context(|| format!("{} is over 4 GiB, more than newc can hold", entry.path))?;
    let header = Header {
        ino,
        mode: type_bits | entry.perm,
        nlink,
        size,
        rdev,
    };
    write_header(out, &header, &entry.path);
    out.extend_from_slice(data);
    pad4(out);
    Ok(())
}

/// The 110-byte ASCII header, the NUL-terminated name, and padding to 4 bytes.
fn write_header(out: &mut Vec<u8>, h: &Header, name: &str) {
    let name_size = name.len() + 1;
    let fields = [
        h.ino,
        h.mode,
        0,
        0,
        h.nlink,
        0,
        h.size,
        0,
        0,
        h.rdev.0,
        h.rdev.1,
        name_size as u32,
        0,
    ];
    out.extend_from_slice(MAGIC.as_bytes());
    for field in fields {
        out.extend_from_slice(format!("{field:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    fn sample() -> Vec<Entry> {
        vec![
            Entry::file("init", 0o755, b"#!binary".to_vec()),
            Entry::dir("dev"),
            Entry {
                path: "dev/console".into(),
                perm: 0o600,
                kind: Kind::CharDev { major: 5, minor: 1 },
            },
            Entry::dir("lib"),
            Entry::file("lib/a.ko.xz", 0o644, vec![1, 2, 3]),
        ]
    }

    #[test]
    fn input_order_does_not_change_the_bytes() {
        let mut reversed = sample();
        reversed.reverse();
        assert_eq!(write_newc(sample()).unwrap(), write_newc(reversed).unwrap());
    }

    #[test]
    fn header_fields_are_newc() {
        let bytes = write_newc(vec![Entry::file("init", 0o755, b"abc".to_vec())]).unwrap();
        let header = std::str::from_utf8(&bytes[..110]).unwrap();
        assert_eq!(&header[..6], "070701");
        assert_eq!(&header[6..14], "00000001", "first inode is 1");
        assert_eq!(&header[14..22], "000081ed", "regular file, 0755");
        assert_eq!(&header[46..54], "00000000", "mtime 0");
        assert_eq!(&header[54..62], "00000003", "size");
        assert_eq!(&bytes[110..115], b"init\0");
        assert_eq!(bytes.len() % 4, 0);
        assert!(bytes.windows(10).any(|w| w == b"TRAILER!!!"));
    }

    #[test]
    fn bad_archives_are_refused_with_the_path() {
        let dup = write_newc(vec![Entry::dir("a"), Entry::dir("a")]).unwrap_err();
        assert!(dup.to_string().contains("twice"), "{dup}");
        let orphan = write_newc(vec![Entry::file("x/y", 0o644, vec![])]).unwrap_err();
        assert!(
            orphan.to_string().contains("no parent directory x"),
            "{orphan}"
        );
        for bad in ["/abs", "a/../b", "a//b", ""] {
            assert!(
                write_newc(vec![Entry::dir(bad)]).is_err(),
                "{bad:?} accepted"
            );
        }
    }

    /// GNU cpio reads what we write (skipped with a note where cpio is not installed).
    #[test]
    fn gnu_cpio_lists_the_archive() {
        let Ok(mut child) = Command::new("cpio")
            .args(["-t", "-v", "--quiet"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
        else {
            eprintln!("cpio not installed (apt-get install cpio): skipping the cross-check");
            return;
        };
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(&write_newc(sample()).unwrap())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let listing = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = listing.lines().collect();
        assert_eq!(lines.len(), 5, "{listing}");
        assert!(
            lines[0].starts_with("drwxr-xr-x") && lines[0].ends_with(" dev"),
            "{listing}"
        );
        assert!(
            lines[1].starts_with("crw-------")
                && lines[1].contains("5,")
                && lines[1].ends_with("dev/console"),
            "{listing}"
        );
        assert!(
            lines[2].starts_with("-rwxr-xr-x") && lines[2].ends_with(" init"),
            "{listing}"
        );
    }
}
