//! The SEV-SNP attestation report as typed data, parsed from the raw 1184 bytes.
//!
//! Layout: AMD SEV-SNP Firmware ABI Specification (publication 56860), revision 1.57,
//! section 7.3 "Attestation", table "ATTESTATION_REPORT Structure" (Table 23), and the
//! TCB_VERSION table (Table 3; the Turin layout adds an FMC byte). Every offset below is
//! named after that table. The parser accepts report versions 2 to 5, including
//! reports whose CHIP_ID is masked (all zero), and never panics on any input: every read
//! is of a fixed offset inside a buffer whose length was checked first.

use std::fmt;

use crate::snp::error::VerifyError;

/// Length of an attestation report in bytes (0x4A0).
pub const REPORT_LEN: usize = 0x4A0;
/// Bytes `[0, SIGNED_LEN)` are what the VCEK or VLEK signs.
pub const SIGNED_LEN: usize = 0x2A0;
/// Lowest report version this parser understands.
pub const MIN_VERSION: u32 = 2;
/// Highest report version this parser understands.
pub const MAX_VERSION: u32 = 5;
/// SIGNATURE_ALGO value for ECDSA P-384 with SHA-384, the only one defined.
pub const SIG_ALGO_ECDSA_P384_SHA384: u32 = 1;

/// Byte offsets of the ATTESTATION_REPORT fields (ABI spec Table 23).
pub mod offset {
    /// VERSION, u32.
    pub const VERSION: usize = 0x00;
    /// GUEST_SVN, u32.
    pub const GUEST_SVN: usize = 0x04;
    /// POLICY, u64 (GUEST_POLICY, Table 9).
    pub const POLICY: usize = 0x08;
    /// FAMILY_ID, 16 bytes.
    pub const FAMILY_ID: usize = 0x10;
    /// IMAGE_ID, 16 bytes.
    pub const IMAGE_ID: usize = 0x20;
    /// VMPL, u32.
    pub const VMPL: usize = 0x30;
    /// SIGNATURE_ALGO, u32.
    pub const SIGNATURE_ALGO: usize = 0x34;
    /// CURRENT_TCB, u64 (TCB_VERSION).
    pub const CURRENT_TCB: usize = 0x38;
    /// PLATFORM_INFO, u64.
    pub const PLATFORM_INFO: usize = 0x40;
    /// Key information: AUTHOR_KEY_EN (bit 0), MASK_CHIP_KEY (bit 1), SIGNING_KEY
    /// (bits 4:2), u32.
    pub const KEY_INFO: usize = 0x48;
    /// REPORT_DATA, 64 bytes supplied by the guest.
    pub const REPORT_DATA: usize = 0x50;
    /// MEASUREMENT, 48 bytes: the launch digest.
    pub const MEASUREMENT: usize = 0x90;
    /// HOST_DATA, 32 bytes supplied by the hypervisor at launch.
    pub const HOST_DATA: usize = 0xC0;
    /// ID_KEY_DIGEST, 48 bytes.
    pub const ID_KEY_DIGEST: usize = 0xE0;
    /// AUTHOR_KEY_DIGEST, 48 bytes.
    pub const AUTHOR_KEY_DIGEST: usize = 0x110;
    /// REPORT_ID, 32 bytes.
    pub const REPORT_ID: usize = 0x140;
    /// REPORT_ID_MA, 32 bytes: the migration agent's report id, or all ones.
    pub const REPORT_ID_MA: usize = 0x160;
    /// REPORTED_TCB, u64: the TCB the signing key was derived from.
    pub const REPORTED_TCB: usize = 0x180;
    /// CPUID_FAM_ID, u8 (version 3 and later).
    pub const CPUID_FAM_ID: usize = 0x188;
    /// CPUID_MOD_ID, u8 (version 3 and later).
    pub const CPUID_MOD_ID: usize = 0x189;
    /// CPUID_STEP, u8 (version 3 and later).
    pub const CPUID_STEP: usize = 0x18A;
    /// CHIP_ID, 64 bytes; zero when MASK_CHIP_ID was set.
    pub const CHIP_ID: usize = 0x1A0;
    /// COMMITTED_TCB, u64.
    pub const COMMITTED_TCB: usize = 0x1E0;
    /// CURRENT_BUILD, CURRENT_MINOR, CURRENT_MAJOR, one byte each.
    pub const CURRENT_VERSION: usize = 0x1E8;
    /// COMMITTED_BUILD, COMMITTED_MINOR, COMMITTED_MAJOR, one byte each.
    pub const COMMITTED_VERSION: usize = 0x1EC;
    /// LAUNCH_TCB, u64.
    pub const LAUNCH_TCB: usize = 0x1F0;
    /// LAUNCH_MIT_VECTOR, u64 (version 5 and later).
    pub const LAUNCH_MIT_VECTOR: usize = 0x1F8;
    /// CURRENT_MIT_VECTOR, u64 (version 5 and later).
    pub const CURRENT_MIT_VECTOR: usize = 0x200;
    /// SIGNATURE: R (72 bytes, little-endian), then S, then reserved bytes.
    pub const SIGNATURE_R: usize = 0x2A0;
    /// The S component of the signature (72 bytes, little-endian).
    pub const SIGNATURE_S: usize = 0x2E8;
}

/// Length of each signature component in the report (zero-padded little-endian).
pub const SIGNATURE_COMPONENT_LEN: usize = 72;

/// The AMD EPYC generation that produced a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Processor {
    /// EPYC 7003 (family 19h, models 00h-0Fh).
    Milan,
    /// EPYC 9004 (family 19h, models 10h-1Fh and A0h-AFh).
    Genoa,
    /// EPYC 9005 (family 1Ah, models 00h-11h).
    Turin,
}

impl Processor {
    /// Every generation with pinned AMD roots.
    pub const ALL: [Processor; 3] = [Processor::Milan, Processor::Genoa, Processor::Turin];

    /// The generation of a CPUID family and model, as reported in version 3+ reports.
    pub fn from_cpuid(family: u8, model: u8) -> Option<Self> {
        match (family, model) {
            (0x19, 0x00..=0x0F) => Some(Self::Milan),
            (0x19, 0x10..=0x1F | 0xA0..=0xAF) => Some(Self::Genoa),
            (0x1A, 0x00..=0x11) => Some(Self::Turin),
            _ => None,
        }
    }

    /// The name AMD uses in certificate subjects ("Milan", "Genoa", "Turin").
    pub fn name(self) -> &'static str {
        match self {
            Self::Milan => "Milan",
            Self::Genoa => "Genoa",
            Self::Turin => "Turin",
        }
    }

    /// Parses a lowercase or capitalised generation name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(name))
    }

    /// Whether TCB_VERSION uses the Turin layout (with an FMC byte).
    fn has_fmc(self) -> bool {
        matches!(self, Self::Turin)
    }
}

impl fmt::Display for Processor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A TCB_VERSION decoded for one processor generation.
///
/// Milan and Genoa: byte 0 BOOT_LOADER, byte 1 TEE, bytes 2-5 reserved, byte 6 SNP,
/// byte 7 MICROCODE. Turin: byte 0 FMC, byte 1 BOOT_LOADER, byte 2 TEE, byte 3 SNP,
/// bytes 4-6 reserved, byte 7 MICROCODE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Tcb {
    /// SVN of the FMC firmware (Turin and later only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fmc: Option<u8>,
    /// SVN of the PSP boot loader.
    pub bootloader: u8,
    /// SVN of the PSP operating system.
    pub tee: u8,
    /// SVN of the SNP firmware.
    pub snp: u8,
    /// Lowest microcode patch level of all cores.
    pub microcode: u8,
}

impl Tcb {
    /// Decodes the raw little-endian u64 for the given generation.
    pub fn decode(raw: u64, processor: Processor) -> Self {
        let b = raw.to_le_bytes();
        if processor.has_fmc() {
            Self {
                fmc: Some(b[0]),
                bootloader: b[1],
                tee: b[2],
                snp: b[3],
                microcode: b[7],
            }
        } else {
            Self {
                fmc: None,
                bootloader: b[0],
                tee: b[1],
                snp: b[6],
                microcode: b[7],
            }
        }
    }

    /// The components as (name, value) pairs, in the order the spec lists them.
    pub fn components(&self) -> Vec<(TcbComponent, u8)> {
        let mut out = Vec::with_capacity(5);
        if let Some(fmc) = self.fmc {
            out.push((TcbComponent::Fmc, fmc));
        }
        out.extend([
            (TcbComponent::Bootloader, self.bootloader),
            (TcbComponent::Tee, self.tee),
            (TcbComponent::Snp, self.snp),
            (TcbComponent::Microcode, self.microcode),
        ]);
        out
    }

    /// The value of one component (`None` for FMC before Turin).
    pub fn get(&self, component: TcbComponent) -> Option<u8> {
        match component {
            TcbComponent::Fmc => self.fmc,
            TcbComponent::Bootloader => Some(self.bootloader),
            TcbComponent::Tee => Some(self.tee),
            TcbComponent::Snp => Some(self.snp),
            TcbComponent::Microcode => Some(self.microcode),
        }
    }
}

impl fmt::Display for Tcb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(fmc) = self.fmc {
            write!(f, "fmc={fmc} ")?;
        }
        write!(
            f,
            "bootloader={} tee={} snp={} microcode={}",
            self.bootloader, self.tee, self.snp, self.microcode
        )
    }
}

/// One security version number inside a TCB_VERSION.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcbComponent {
    /// FMC firmware (Turin).
    Fmc,
    /// PSP boot loader.
    Bootloader,
    /// PSP operating system.
    Tee,
    /// SNP firmware.
    Snp,
    /// CPU microcode.
    Microcode,
}

impl fmt::Display for TcbComponent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Fmc => "fmc",
            Self::Bootloader => "bootloader",
            Self::Tee => "tee",
            Self::Snp => "snp",
            Self::Microcode => "microcode",
        })
    }
}

/// The guest policy (ABI spec Table 9, GUEST_POLICY).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestPolicy(pub u64);

impl GuestPolicy {
    /// Bit 16: SMT allowed.
    pub const SMT: u64 = 1 << 16;
    /// Bit 17: reserved, must be one.
    pub const RESERVED_ONE: u64 = 1 << 17;
    /// Bit 18: association with a migration agent allowed.
    pub const MIGRATE_MA: u64 = 1 << 18;
    /// Bit 19: debugging allowed (the host can read and write guest memory).
    pub const DEBUG: u64 = 1 << 19;
    /// Bit 20: only a single socket allowed.
    pub const SINGLE_SOCKET: u64 = 1 << 20;

    /// Whether the host may debug the guest (and so read its memory).
    pub fn debug_allowed(self) -> bool {
        self.0 & Self::DEBUG != 0
    }

    /// Whether the guest may be associated with a migration agent.
    pub fn migration_agent_allowed(self) -> bool {
        self.0 & Self::MIGRATE_MA != 0
    }

    /// Minimum ABI major.minor version the guest demanded.
    pub fn abi(self) -> (u8, u8) {
        let b = self.0.to_le_bytes();
        (b[1], b[0])
    }
}

impl fmt::Display for GuestPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)?;
        let flags = [
            (Self::SMT, "smt"),
            (Self::MIGRATE_MA, "migrate-ma"),
            (Self::DEBUG, "debug"),
            (Self::SINGLE_SOCKET, "single-socket"),
        ];
        let set: Vec<&str> = flags
            .iter()
            .filter(|(bit, _)| self.0 & bit != 0)
            .map(|(_, name)| *name)
            .collect();
        if !set.is_empty() {
            write!(f, " ({})", set.join(", "))?;
        }
        Ok(())
    }
}

/// Which key signed the report (KEY_INFO bits 4:2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigningKey {
    /// The chip's versioned chip endorsement key.
    Vcek,
    /// A versioned loaded endorsement key (cloud provider key, not bound to one chip).
    Vlek,
    /// The report is unsigned (SIGNING_KEY = 7) or names a reserved value.
    Other(u8),
}

impl fmt::Display for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Vcek => f.write_str("VCEK"),
            Self::Vlek => f.write_str("VLEK"),
            Self::Other(v) => write!(f, "signing key {v}"),
        }
    }
}

/// A parsed attestation report, with the raw bytes kept for the signature check.
#[derive(Clone, PartialEq, Eq)]
pub struct Report {
    raw: Box<[u8; REPORT_LEN]>,
}

impl fmt::Debug for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Report")
            .field("version", &self.version())
            .field("policy", &self.policy())
            .field("measurement", &hex::encode(self.measurement()))
            .finish_non_exhaustive()
    }
}

impl Report {
    /// Parses a report. Rejects a wrong length, an unknown version and an unknown
    /// signature algorithm; accepts a masked CHIP_ID.
    pub fn parse(bytes: &[u8]) -> Result<Self, VerifyError> {
        let raw: [u8; REPORT_LEN] = bytes.try_into().map_err(|_| VerifyError::ReportLength {
            found: bytes.len(),
            expected: REPORT_LEN,
        })?;
        let report = Self { raw: Box::new(raw) };
        let version = report.version();
        if !(MIN_VERSION..=MAX_VERSION).contains(&version) {
            return Err(VerifyError::ReportVersion {
                found: version,
                min: MIN_VERSION,
                max: MAX_VERSION,
            });
        }
        let algo = report.signature_algo();
        if algo != SIG_ALGO_ECDSA_P384_SHA384 {
            return Err(VerifyError::SignatureAlgorithm {
                found: algo,
                expected: SIG_ALGO_ECDSA_P384_SHA384,
            });
        }
        Ok(report)
    }

    /// Parses a report given as raw bytes or as hex text (whitespace ignored).
    pub fn parse_binary_or_hex(bytes: &[u8]) -> Result<Self, VerifyError> {
        if bytes.len() == REPORT_LEN {
            return Self::parse(bytes);
        }
        let text: Vec<u8> = bytes
            .iter()
            .copied()
            .filter(|b| !b.is_ascii_whitespace())
            .collect();
        if text.len() == 2 * REPORT_LEN {
            if let Ok(decoded) = hex::decode(&text) {
                return Self::parse(&decoded);
            }
        }
        Self::parse(bytes)
    }

    /// The 1184 raw bytes.
    pub fn as_bytes(&self) -> &[u8; REPORT_LEN] {
        &self.raw
    }

    /// The bytes the signature covers, `[0, 0x2A0)`.
    pub fn signed_bytes(&self) -> &[u8] {
        &self.raw[..SIGNED_LEN]
    }

    fn array<const N: usize>(&self, at: usize) -> [u8; N] {
        let mut out = [0u8; N];
        // Offsets are constants inside REPORT_LEN; the length is fixed by the type.
        out.copy_from_slice(&self.raw[at..at + N]);
        out
    }

    fn u32_at(&self, at: usize) -> u32 {
        u32::from_le_bytes(self.array(at))
    }

    fn u64_at(&self, at: usize) -> u64 {
        u64::from_le_bytes(self.array(at))
    }

    /// VERSION.
    pub fn version(&self) -> u32 {
        self.u32_at(offset::VERSION)
    }

    /// GUEST_SVN.
    pub fn guest_svn(&self) -> u32 {
        self.u32_at(offset::GUEST_SVN)
    }

    /// POLICY.
    pub fn policy(&self) -> GuestPolicy {
        GuestPolicy(self.u64_at(offset::POLICY))
    }

    /// FAMILY_ID.
    pub fn family_id(&self) -> [u8; 16] {
        self.array(offset::FAMILY_ID)
    }

    /// IMAGE_ID.
    pub fn image_id(&self) -> [u8; 16] {
        self.array(offset::IMAGE_ID)
    }

    /// VMPL the report was requested from.
    pub fn vmpl(&self) -> u32 {
        self.u32_at(offset::VMPL)
    }

    /// SIGNATURE_ALGO.
    pub fn signature_algo(&self) -> u32 {
        self.u32_at(offset::SIGNATURE_ALGO)
    }

    /// PLATFORM_INFO.
    pub fn platform_info(&self) -> u64 {
        self.u64_at(offset::PLATFORM_INFO)
    }

    /// Whether MASK_CHIP_KEY is set in the key information (bit 1).
    pub fn mask_chip_key(&self) -> bool {
        self.u32_at(offset::KEY_INFO) & 0b10 != 0
    }

    /// SIGNING_KEY (key information bits 4:2).
    pub fn signing_key(&self) -> SigningKey {
        match (self.u32_at(offset::KEY_INFO) >> 2) & 0b111 {
            0 => SigningKey::Vcek,
            1 => SigningKey::Vlek,
            // Masked to three bits above, so it fits in a u8.
            other => SigningKey::Other(other as u8),
        }
    }

    /// REPORT_DATA.
    pub fn report_data(&self) -> [u8; 64] {
        self.array(offset::REPORT_DATA)
    }

    /// MEASUREMENT (the launch digest).
    pub fn measurement(&self) -> [u8; 48] {
        self.array(offset::MEASUREMENT)
    }

    /// HOST_DATA.
    pub fn host_data(&self) -> [u8; 32] {
        self.array(offset::HOST_DATA)
    }

    /// ID_KEY_DIGEST.
    pub fn id_key_digest(&self) -> [u8; 48] {
        self.array(offset::ID_KEY_DIGEST)
    }

    /// REPORT_ID.
    pub fn report_id(&self) -> [u8; 32] {
        self.array(offset::REPORT_ID)
    }

    /// REPORT_ID_MA.
    pub fn report_id_ma(&self) -> [u8; 32] {
        self.array(offset::REPORT_ID_MA)
    }

    /// CHIP_ID (all zero when masked).
    pub fn chip_id(&self) -> [u8; 64] {
        self.array(offset::CHIP_ID)
    }

    /// Whether CHIP_ID is all zero (masked by the guest policy or the host).
    pub fn chip_id_masked(&self) -> bool {
        self.chip_id().iter().all(|&b| b == 0)
    }

    /// CPUID family, model and stepping, present from version 3.
    pub fn cpuid(&self) -> Option<(u8, u8, u8)> {
        (self.version() >= 3).then(|| {
            (
                self.raw[offset::CPUID_FAM_ID],
                self.raw[offset::CPUID_MOD_ID],
                self.raw[offset::CPUID_STEP],
            )
        })
    }

    /// The generation named by the CPUID fields (version 3+), if it is a known one.
    pub fn processor_from_cpuid(&self) -> Option<Processor> {
        self.cpuid()
            .and_then(|(family, model, _)| Processor::from_cpuid(family, model))
    }

    /// REPORTED_TCB, raw.
    pub fn reported_tcb_raw(&self) -> u64 {
        self.u64_at(offset::REPORTED_TCB)
    }

    /// REPORTED_TCB decoded for a generation.
    pub fn reported_tcb(&self, processor: Processor) -> Tcb {
        Tcb::decode(self.reported_tcb_raw(), processor)
    }

    /// CURRENT_TCB decoded for a generation.
    pub fn current_tcb(&self, processor: Processor) -> Tcb {
        Tcb::decode(self.u64_at(offset::CURRENT_TCB), processor)
    }

    /// COMMITTED_TCB, raw: the anti-rollback floor of the platform's firmware, and the
    /// highest TCB_VERSION a guest may mix into a derived key.
    pub fn committed_tcb_raw(&self) -> u64 {
        self.u64_at(offset::COMMITTED_TCB)
    }

    /// COMMITTED_TCB decoded for a generation.
    pub fn committed_tcb(&self, processor: Processor) -> Tcb {
        Tcb::decode(self.u64_at(offset::COMMITTED_TCB), processor)
    }

    /// LAUNCH_TCB decoded for a generation.
    pub fn launch_tcb(&self, processor: Processor) -> Tcb {
        Tcb::decode(self.u64_at(offset::LAUNCH_TCB), processor)
    }

    /// Firmware version (major, minor, build) that is running.
    pub fn current_version(&self) -> (u8, u8, u8) {
        let [build, minor, major] = self.array(offset::CURRENT_VERSION);
        (major, minor, build)
    }

    /// LAUNCH_MIT_VECTOR and CURRENT_MIT_VECTOR, present from version 5.
    pub fn mitigation_vectors(&self) -> Option<(u64, u64)> {
        (self.version() >= 5).then(|| {
            (
                self.u64_at(offset::LAUNCH_MIT_VECTOR),
                self.u64_at(offset::CURRENT_MIT_VECTOR),
            )
        })
    }

    /// Signature components R and S, each 72 bytes little-endian.
    pub fn signature_le(&self) -> ([u8; 72], [u8; 72]) {
        (
            self.array(offset::SIGNATURE_R),
            self.array(offset::SIGNATURE_S),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blank(version: u32) -> Vec<u8> {
        let mut b = vec![0u8; REPORT_LEN];
        b[..4].copy_from_slice(&version.to_le_bytes());
        b[offset::SIGNATURE_ALGO..offset::SIGNATURE_ALGO + 4].copy_from_slice(&1u32.to_le_bytes());
        b
    }

    #[test]
    fn offsets_match_the_spec_table() {
        // Spot checks that the table's fields tile the report without overlap.
        assert_eq!(offset::REPORT_DATA + 64, offset::MEASUREMENT);
        assert_eq!(offset::MEASUREMENT + 48, offset::HOST_DATA);
        assert_eq!(offset::HOST_DATA + 32, offset::ID_KEY_DIGEST);
        assert_eq!(offset::ID_KEY_DIGEST + 48, offset::AUTHOR_KEY_DIGEST);
        assert_eq!(offset::AUTHOR_KEY_DIGEST + 48, offset::REPORT_ID);
        assert_eq!(offset::REPORT_ID_MA + 32, offset::REPORTED_TCB);
        assert_eq!(offset::CHIP_ID + 64, offset::COMMITTED_TCB);
        assert_eq!(offset::SIGNATURE_R + 72, offset::SIGNATURE_S);
        assert_eq!(SIGNED_LEN + 0x200, REPORT_LEN);
    }

    #[test]
    fn wrong_length_is_named() {
        let err = Report::parse(&[0u8; 10]).unwrap_err();
        assert!(matches!(
            err,
            VerifyError::ReportLength {
                found: 10,
                expected: REPORT_LEN
            }
        ));
    }

    #[test]
    fn unknown_versions_are_refused() {
        for v in [0, 1, 6, u32::MAX] {
            let err = Report::parse(&blank(v)).unwrap_err();
            assert!(matches!(err, VerifyError::ReportVersion { found, .. } if found == v));
        }
        for v in 2..=5 {
            assert_eq!(Report::parse(&blank(v)).unwrap().version(), v);
        }
    }

    #[test]
    fn masked_chip_id_parses() {
        let r = Report::parse(&blank(2)).unwrap();
        assert!(r.chip_id_masked());
        assert_eq!(r.cpuid(), None);
    }

    #[test]
    fn turin_tcb_has_fmc() {
        let raw = u64::from_le_bytes([1, 2, 3, 4, 0, 0, 0, 9]);
        let t = Tcb::decode(raw, Processor::Turin);
        assert_eq!(
            (t.fmc, t.bootloader, t.tee, t.snp, t.microcode),
            (Some(1), 2, 3, 4, 9)
        );
        let m = Tcb::decode(raw, Processor::Milan);
        assert_eq!(
            (m.fmc, m.bootloader, m.tee, m.snp, m.microcode),
            (None, 1, 2, 0, 9)
        );
    }

    #[test]
    fn cpuid_names_the_generation() {
        assert_eq!(Processor::from_cpuid(0x19, 0x01), Some(Processor::Milan));
        assert_eq!(Processor::from_cpuid(0x19, 0x11), Some(Processor::Genoa));
        assert_eq!(Processor::from_cpuid(0x1A, 0x02), Some(Processor::Turin));
        assert_eq!(Processor::from_cpuid(0x17, 0x31), None);
    }
}
