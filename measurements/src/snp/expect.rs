//! Expect: what a trustworthy Chrysalis enclave's report must say.
//!
//! A [`Policy`] holds the reference values: guest policy bits, minimum TCB, allowed
//! VMPLs, allowed launch measurements (from the published manifests) and the
//! REPORT_DATA binding the caller computed for this session.

use std::path::Path;

use crate::snp::error::VerifyError;
pub use crate::snp::manifests::{Manifests, TcbFloors};
use crate::snp::report::{Processor, TcbComponent};

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
    /// The components in the order they are checked and printed.
    const COMPONENTS: [TcbComponent; 5] = [
        TcbComponent::Fmc,
        TcbComponent::Bootloader,
        TcbComponent::Tee,
        TcbComponent::Snp,
        TcbComponent::Microcode,
    ];

    /// The component-wise maximum of two minimums: the stricter of each.
    pub fn raise(self, other: MinTcb) -> MinTcb {
        MinTcb {
            fmc: self.fmc.max(other.fmc),
            bootloader: self.bootloader.max(other.bootloader),
            tee: self.tee.max(other.tee),
            snp: self.snp.max(other.snp),
            microcode: self.microcode.max(other.microcode),
        }
    }

    /// True when no component asks for more than zero: checking it proves nothing.
    pub fn is_zero(&self) -> bool {
        Self::COMPONENTS
            .into_iter()
            .all(|c| self.get(c).unwrap_or(0) == 0)
    }

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

impl std::fmt::Display for MinTcb {
    /// `snp>=27, microcode>=219`: the nonzero components, or `none` when all are zero.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = Self::COMPONENTS
            .into_iter()
            .filter_map(|c| self.get(c).filter(|&v| v > 0).map(|v| format!("{c}>={v}")))
            .collect();
        if parts.is_empty() {
            return f.write_str("none");
        }
        f.write_str(&parts.join(", "))
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

/// Reads the allowed launch digests from one manifest (JSON text). Extra fields
/// anywhere are ignored. See [`Manifests`] for the minimum TCB and the origin too.
pub fn parse_manifest(json: &str, origin: &str) -> Result<Vec<AllowedMeasurement>, VerifyError> {
    Ok(crate::snp::manifests::parse_one(json, origin)?.measurements)
}

/// Reads allowed launch digests from a manifest file, or from every `*.json` file in
/// a directory (such as `measurements/published/`), sorted by name.
pub fn load_manifests(path: &Path) -> Result<Vec<AllowedMeasurement>, VerifyError> {
    Ok(Manifests::load(path)?.measurements)
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
    /// Minimum REPORTED_TCB on every generation (e.g. `verify-report --min-tcb`).
    pub min_tcb: MinTcb,
    /// Minimum REPORTED_TCB per generation (from the manifests); the report's own
    /// generation's entry is raised by `min_tcb` and then enforced.
    pub min_tcb_per_cpu: TcbFloors,
    /// VMPLs the report may come from.
    pub allowed_vmpls: Vec<u32>,
    /// Allowed launch measurements; `None` skips the check.
    pub measurements: Option<Vec<AllowedMeasurement>>,
    /// Where `measurements` came from ("the built-in manifests (smollm2-135m.json)"),
    /// named when a measurement is refused; empty when unknown.
    pub measurements_source: String,
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
            min_tcb_per_cpu: TcbFloors::default(),
            allowed_vmpls: vec![0],
            measurements: None,
            measurements_source: String::new(),
            report_data: None,
        }
    }
}

impl Policy {
    /// The minimum TCB enforced on a report of `processor`: that generation's entry of
    /// `min_tcb_per_cpu`, raised by `min_tcb`.
    pub fn min_tcb_for(&self, processor: Processor) -> MinTcb {
        self.min_tcb_per_cpu.get(processor).raise(self.min_tcb)
    }

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
