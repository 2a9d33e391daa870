//! Expect: what a trustworthy Chrysalis enclave's report must say.
//!
//! A [`Policy`] holds the reference values: guest policy bits, minimum TCB, allowed
//! VMPLs, allowed launch measurements (from the published manifests) and the
//! REPORT_DATA binding the caller computed for this session.

use std::path::Path;

use serde::Deserialize;

use crate::snp::error::VerifyError;
use crate::snp::report::TcbComponent;

/// Most bytes read from one manifest file; the published ones are a few KiB.
const MAX_MANIFEST_BYTES: u64 = 4 << 20;

/// Minimum security version numbers; a component left `None` is not checked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MinTcb {
    /// FMC firmware (Turin only; ignored on earlier generations).
    pub fmc: Option<u8>,
    /// PSP boot loader.
    pub bootloader: Option<u8>,
    /// PSP operating system.
    pub tee: Option<u8>,
    /// SNP firmware.
    pub snp: Option<u8>,
    /// CPU microcode.
    pub microcode: Option<u8>,
}

impl MinTcb {
    /// The minimum for one component.
    pub fn get(&self, component: TcbComponent) -> Option<u8> {
        match component {
            TcbComponent::Fmc => self.fmc,
            TcbComponent::Bootloader => self.bootloader,
            TcbComponent::Tee => self.tee,
            TcbComponent::Snp => self.snp,
            TcbComponent::Microcode => self.microcode,
        }
    }

    /// Parses `bootloader=3,tee=0,snp=8,microcode=115` (any subset, `fmc` too).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut min = Self::default();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, value) = item
                .split_once('=')
                .ok_or_else(|| format!("{item:?} is not NAME=SVN"))?;
            let value: u8 = value
                .trim()
                .parse()
                .map_err(|_| format!("{value:?} is not a number from 0 to 255"))?;
            let slot = match name.trim() {
                "fmc" => &mut min.fmc,
                "bootloader" | "bl" => &mut min.bootloader,
                "tee" => &mut min.tee,
                "snp" => &mut min.snp,
                "microcode" | "ucode" => &mut min.microcode,
                other => {
                    return Err(format!(
                        "unknown TCB component {other:?}; expected fmc, bootloader, tee, snp or microcode"
                    ))
                }
            };
            *slot = Some(value);
        }
        Ok(min)
    }
}

/// One allowed launch measurement, with where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedMeasurement {
    /// The 48-byte SNP launch digest.
    pub digest: [u8; 48],
    /// vCPU count it was computed for, when known.
    pub vcpus: Option<u32>,
    /// CPU type it was computed for ("milan", "genoa", "turin"), when known.
    pub cpu: Option<String>,
}

impl AllowedMeasurement {
    /// An allowed digest given as 96 hex digits.
    pub fn from_hex(text: &str) -> Result<Self, String> {
        Ok(Self {
            digest: parse_hex_array(text)?,
            vcpus: None,
            cpu: None,
        })
    }
}

/// Decodes exactly N bytes of hex (an optional `0x` prefix is allowed).
pub fn parse_hex_array<const N: usize>(text: &str) -> Result<[u8; N], String> {
    let t = text.trim();
    let t = t.strip_prefix("0x").unwrap_or(t);
    let bytes = hex::decode(t).map_err(|e| format!("{text:?} is not hex: {e}"))?;
    let len = bytes.len();
    bytes
        .try_into()
        .map_err(|_| format!("found {len} bytes of hex, expected {N}"))
}

#[derive(Deserialize)]
struct ManifestFile {
    snp_launch_digests: Vec<ManifestDigest>,
}

#[derive(Deserialize)]
struct ManifestDigest {
    digest: String,
    #[serde(default)]
    vcpus: Option<u32>,
    #[serde(default)]
    cpu: Option<String>,
}

/// Reads the allowed launch digests from one manifest (JSON text). Extra fields
/// anywhere are ignored.
pub fn parse_manifest(json: &str, origin: &str) -> Result<Vec<AllowedMeasurement>, VerifyError> {
    let err = |reason: String| VerifyError::Manifest {
        path: origin.to_string(),
        reason,
    };
    let file: ManifestFile = serde_json::from_str(json).map_err(|e| err(e.to_string()))?;
    file.snp_launch_digests
        .into_iter()
        .map(|d| {
            Ok(AllowedMeasurement {
                digest: parse_hex_array(&d.digest).map_err(err)?,
                vcpus: d.vcpus,
                cpu: d.cpu,
            })
        })
        .collect()
}

/// Reads allowed launch digests from a manifest file, or from every `*.json` file in
/// a directory (such as `measurements/published/`), sorted by name.
pub fn load_manifests(path: &Path) -> Result<Vec<AllowedMeasurement>, VerifyError> {
    let io_err = |p: &Path, e: std::io::Error| VerifyError::Manifest {
        path: p.display().to_string(),
        reason: e.to_string(),
    };
    let files = if path.is_dir() {
        let mut files: Vec<_> = std::fs::read_dir(path)
            .map_err(|e| io_err(path, e))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|ext| ext == "json"))
            .collect();
        files.sort();
        files
    } else {
        vec![path.to_path_buf()]
    };
    let mut all = Vec::new();
    for file in files {
        let len = std::fs::metadata(&file)
            .map_err(|e| io_err(&file, e))?
            .len();
        if len > MAX_MANIFEST_BYTES {
            return Err(VerifyError::Manifest {
                path: file.display().to_string(),
                reason: format!("file is {len} bytes, more than the {MAX_MANIFEST_BYTES} allowed"),
            });
        }
        let text = std::fs::read_to_string(&file).map_err(|e| io_err(&file, e))?;
        all.extend(parse_manifest(&text, &file.display().to_string())?);
    }
    Ok(all)
}

/// The reference values a report is compared against.
///
/// The default is strict: no debug, no migration agent, VMPL 0 only, masked chip ids
/// refused. `measurements` and `report_data` are `None` by default, which skips those
/// checks; the [`super::Verified`] result records what was skipped, and a client
/// opening a session must set both.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Accept a guest the host may debug (never for real traffic).
    pub allow_debug: bool,
    /// Accept a guest that may be tied to a migration agent.
    pub allow_migration_agent: bool,
    /// Accept a VCEK-signed report whose CHIP_ID is masked (the hwID cannot be
    /// compared then).
    pub allow_masked_chip_id: bool,
    /// Minimum REPORTED_TCB.
    pub min_tcb: MinTcb,
    /// VMPLs the report may come from.
    pub allowed_vmpls: Vec<u32>,
    /// Allowed launch measurements; `None` skips the check.
    pub measurements: Option<Vec<AllowedMeasurement>>,
    /// The exact REPORT_DATA expected; `None` skips the check.
    pub report_data: Option<[u8; 64]>,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            allow_debug: false,
            allow_migration_agent: false,
            allow_masked_chip_id: false,
            min_tcb: MinTcb::default(),
            allowed_vmpls: vec![0],
            measurements: None,
            report_data: None,
        }
    }
}

impl Policy {
    /// The policy a client uses before opening a session: strict defaults, the
    /// published launch measurements and the REPORT_DATA it computed (with its nonce).
    pub fn for_session(measurements: Vec<AllowedMeasurement>, report_data: [u8; 64]) -> Self {
        Self {
            measurements: Some(measurements),
            report_data: Some(report_data),
            ..Self::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_tolerates_extra_fields() {
        let d = "ab".repeat(48);
        let json = format!(
            r#"{{"name":"x","components":{{"kernel":"00"}},"snp_launch_digests":[{{"vcpus":2,"cpu":"milan","digest":"{d}","extra":1}}]}}"#
        );
        let list = parse_manifest(&json, "test").unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].digest, [0xab; 48]);
        assert_eq!(list[0].vcpus, Some(2));
    }

    #[test]
    fn manifest_with_a_short_digest_is_refused() {
        let json = r#"{"snp_launch_digests":[{"digest":"abcd"}]}"#;
        let err = parse_manifest(json, "m.json").unwrap_err();
        assert!(
            err.to_string()
                .contains("found 2 bytes of hex, expected 48"),
            "{err}"
        );
    }

    #[test]
    fn min_tcb_parses_and_names_mistakes() {
        let m = MinTcb::parse("bootloader=3, snp=8,microcode=115").unwrap();
        assert_eq!(
            (m.bootloader, m.tee, m.snp, m.microcode),
            (Some(3), None, Some(8), Some(115))
        );
        assert!(MinTcb::parse("psp=1")
            .unwrap_err()
            .contains("unknown TCB component"));
        assert!(MinTcb::parse("snp=300").is_err());
    }
}
