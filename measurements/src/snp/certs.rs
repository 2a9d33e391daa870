//! AMD certificates: pinned roots, chain checks, validity dates and the VCEK/VLEK
//! extensions that bind a key to a TCB and a chip.
//!
//! The chain is ARK (self-signed, pinned) -> ASK -> VCEK, or ARK -> ASVK -> VLEK. The
//! ARK and ASK of each generation come from the `sev` crate's built-in copies; the
//! ASVKs are pinned here (`roots/`). A chain handed in with the evidence is untrusted:
//! its ARK must be byte-identical to the pinned one.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sev::certs::snp::{builtin, Certificate as SevCertificate, Verifiable};
use x509_cert::der::{Decode, DecodePem, Encode};
use x509_cert::Certificate as X509;

use crate::snp::error::{CertRole, VerifyError};
use crate::snp::report::{Processor, TcbComponent};

const ASVK_MILAN: &[u8] = include_bytes!("roots/asvk_milan.pem");
const ASVK_GENOA: &[u8] = include_bytes!("roots/asvk_genoa.pem");
const ASVK_TURIN: &[u8] = include_bytes!("roots/asvk_turin.pem");

/// OID of the VCEK/VLEK extension holding the chip's hwID (CHIP_ID).
pub const OID_HW_ID: &str = "1.3.6.1.4.1.3704.1.4";

/// The TCB extensions of a VCEK/VLEK (AMD "Versioned Chip Endorsement Key (VCEK)
/// Certificate and KDS Interface Specification", publication 57230, Table 8).
pub const TCB_OIDS: [(TcbComponent, &str); 5] = [
    (TcbComponent::Bootloader, "1.3.6.1.4.1.3704.1.3.1"),
    (TcbComponent::Tee, "1.3.6.1.4.1.3704.1.3.2"),
    (TcbComponent::Snp, "1.3.6.1.4.1.3704.1.3.3"),
    (TcbComponent::Microcode, "1.3.6.1.4.1.3704.1.3.8"),
    (TcbComponent::Fmc, "1.3.6.1.4.1.3704.1.3.9"),
];

/// A decoded X.509 certificate in both forms the checks need.
#[derive(Debug, Clone)]
pub struct Cert {
    x509: X509,
    sev: SevCertificate,
    der: Vec<u8>,
}

impl Cert {
    /// Decodes one certificate, DER or PEM.
    pub fn parse(bytes: &[u8], role: CertRole) -> Result<Self, VerifyError> {
        let parse_err = |reason: String| VerifyError::CertificateParse { role, reason };
        let x509 = if bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
            X509::from_pem(bytes).map_err(|e| parse_err(format!("invalid PEM: {e}")))?
        } else {
            X509::from_der(bytes).map_err(|e| parse_err(format!("invalid DER: {e}")))?
        };
        Self::from_x509(x509, role)
    }

    fn from_x509(x509: X509, role: CertRole) -> Result<Self, VerifyError> {
        let der = x509.to_der().map_err(|e| VerifyError::CertificateParse {
            role,
            reason: format!("cannot re-encode: {e}"),
        })?;
        Ok(Self {
            sev: SevCertificate::from(x509.clone()),
            x509,
            der,
        })
    }

    /// The DER encoding.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The common name of the subject, or "" when there is none.
    pub fn subject_cn(&self) -> String {
        common_name(&self.x509.tbs_certificate.subject)
    }

    /// The common name of the issuer, or "" when there is none.
    pub fn issuer_cn(&self) -> String {
        common_name(&self.x509.tbs_certificate.issuer)
    }

    /// Checks that `self` (the issuer) signed `subject` (RSA-PSS with SHA-384).
    pub fn check_signed(
        &self,
        subject: &Cert,
        roles: (CertRole, CertRole),
        processor: Processor,
    ) -> Result<(), VerifyError> {
        (&self.sev, &subject.sev)
            .verify()
            .map_err(|e| VerifyError::ChainSignature {
                signer: roles.0,
                subject: roles.1,
                processor,
                reason: e.to_string(),
            })
    }

    /// Checks that `now` lies within the certificate's validity period.
    pub fn check_validity(&self, role: CertRole, now: SystemTime) -> Result<(), VerifyError> {
        let validity = &self.x509.tbs_certificate.validity;
        let not_before = validity.not_before.to_unix_duration();
        let not_after = validity.not_after.to_unix_duration();
        let now_unix = now.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        if now_unix < not_before || now_unix > not_after {
            return Err(VerifyError::CertificateValidity {
                role,
                not_before: validity.not_before.to_string(),
                not_after: validity.not_after.to_string(),
                now: rfc3339(now_unix),
            });
        }
        Ok(())
    }

    /// The raw value (the bytes inside extnValue) of the extension with this OID.
    pub fn extension(&self, oid: &str) -> Option<&[u8]> {
        self.x509
            .tbs_certificate
            .extensions
            .as_ref()?
            .iter()
            .find(|ext| ext.extn_id.to_string() == oid)
            .map(|ext| ext.extn_value.as_bytes())
    }

    /// The subject public key as SEC1 bytes.
    pub fn public_key_sec1(&self) -> &[u8] {
        self.sev.public_key_sec1()
    }
}

/// Formats a Unix time as RFC 3339 (UTC), for error messages.
pub fn rfc3339(unix: Duration) -> String {
    match x509_cert::der::DateTime::from_unix_duration(unix) {
        Ok(t) => t.to_string(),
        Err(_) => format!("{} seconds after 1970", unix.as_secs()),
    }
}

/// Parses a verification time: Unix seconds, or RFC 3339 UTC
/// (`2025-06-01T00:00:00Z`; a bare date `2025-06-01` means midnight UTC).
pub fn parse_time(text: &str) -> Result<SystemTime, String> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(UNIX_EPOCH + Duration::from_secs(secs));
    }
    let bad = || {
        format!("{text:?} is not Unix seconds or an RFC 3339 UTC time like 2025-06-01T00:00:00Z")
    };
    let (date, time) = match text.split_once('T') {
        Some((d, t)) => (d, t.strip_suffix('Z').ok_or_else(bad)?),
        None => (text, "00:00:00"),
    };
    let nums =
        |s: &str, sep: char| -> Option<Vec<u16>> { s.split(sep).map(|n| n.parse().ok()).collect() };
    let (Some(d), Some(t)) = (nums(date, '-'), nums(time, ':')) else {
        return Err(bad());
    };
    let ([y, mo, da], [h, mi, se]) = (d.as_slice(), t.as_slice()) else {
        return Err(bad());
    };
    let narrow = |v: u16| u8::try_from(v).map_err(|_| bad());
    let dt = x509_cert::der::DateTime::new(
        *y,
        narrow(*mo)?,
        narrow(*da)?,
        narrow(*h)?,
        narrow(*mi)?,
        narrow(*se)?,
    )
    .map_err(|_| bad())?;
    Ok(UNIX_EPOCH + dt.unix_duration())
}

fn common_name(name: &x509_cert::name::Name) -> String {
    // RFC 4514 text, e.g. "CN=SEV-Milan,O=Advanced Micro Devices,..."; the values AMD
    // uses contain no escaped commas.
    let text = name.to_string();
    text.split(',')
        .find_map(|part| part.trim().strip_prefix("CN="))
        .unwrap_or_default()
        .to_string()
}

/// Decodes a DER INTEGER extension value as a security version number.
pub fn decode_svn(value: &[u8]) -> Option<u8> {
    u8::from_der(value).ok()
}

/// A CA chain for one generation and one key kind: ARK -> ASK, or ARK -> ASVK.
/// The ARK's self-signature and its signature on the intermediate are checked when
/// the chain is built, so verifying a report needs only the intermediate's
/// signature on the VCEK/VLEK.
#[derive(Debug, Clone)]
pub struct CaChain {
    /// The generation.
    pub processor: Processor,
    /// The root.
    pub ark: Cert,
    /// The intermediate: ASK (signs VCEKs) or ASVK (signs VLEKs).
    pub intermediate: Cert,
    /// `CertRole::Ask` or `CertRole::Asvk`.
    pub intermediate_role: CertRole,
}

impl CaChain {
    /// Builds a chain and checks its signatures: ARK self-signed, ARK signs the
    /// intermediate.
    pub fn new(
        processor: Processor,
        ark: Cert,
        intermediate: Cert,
        intermediate_role: CertRole,
    ) -> Result<Self, VerifyError> {
        ark.check_signed(&ark, (CertRole::Ark, CertRole::Ark), processor)?;
        ark.check_signed(&intermediate, (CertRole::Ark, intermediate_role), processor)?;
        Ok(Self {
            processor,
            ark,
            intermediate,
            intermediate_role,
        })
    }

    /// The pinned chain for a generation and key kind.
    pub fn pinned(processor: Processor, role: CertRole) -> Result<Self, VerifyError> {
        let ark = pinned_ark(processor)?;
        let intermediate = match role {
            CertRole::Asvk => Cert::parse(pinned_asvk_pem(processor), CertRole::Asvk)?,
            _ => pinned_ask(processor)?,
        };
        let role = if role == CertRole::Asvk {
            CertRole::Asvk
        } else {
            CertRole::Ask
        };
        Self::new(processor, ark, intermediate, role)
    }

    /// Checks the validity dates of both CA certificates.
    pub fn check_validity(&self, now: SystemTime) -> Result<(), VerifyError> {
        self.ark.check_validity(CertRole::Ark, now)?;
        self.intermediate
            .check_validity(self.intermediate_role, now)
    }

    /// Checks that the intermediate signed the VCEK/VLEK.
    pub fn check_endorsement_key(&self, vek: &Cert, role: CertRole) -> Result<(), VerifyError> {
        self.intermediate
            .check_signed(vek, (self.intermediate_role, role), self.processor)
    }
}

fn sev_to_cert(cert: std::io::Result<SevCertificate>, role: CertRole) -> Result<Cert, VerifyError> {
    let cert = cert.map_err(|e| VerifyError::CertificateParse {
        role,
        reason: format!("pinned certificate: {e}"),
    })?;
    Cert::from_x509(X509::from(cert), role)
}

/// AMD's root key for a generation, as pinned by the `sev` crate.
pub fn pinned_ark(processor: Processor) -> Result<Cert, VerifyError> {
    let cert = match processor {
        Processor::Milan => builtin::milan::ark(),
        Processor::Genoa => builtin::genoa::ark(),
        Processor::Turin => builtin::turin::ark(),
    };
    sev_to_cert(cert, CertRole::Ark)
}

/// AMD's SEV signing key for a generation, as pinned by the `sev` crate.
pub fn pinned_ask(processor: Processor) -> Result<Cert, VerifyError> {
    let cert = match processor {
        Processor::Milan => builtin::milan::ask(),
        Processor::Genoa => builtin::genoa::ask(),
        Processor::Turin => builtin::turin::ask(),
    };
    sev_to_cert(cert, CertRole::Ask)
}

fn pinned_asvk_pem(processor: Processor) -> &'static [u8] {
    match processor {
        Processor::Milan => ASVK_MILAN,
        Processor::Genoa => ASVK_GENOA,
        Processor::Turin => ASVK_TURIN,
    }
}

/// The generation and role an AMD CA names in a certificate's common name:
/// "ARK-Milan", "SEV-Milan" (ASK, issuer of VCEKs), "SEV-VLEK-Milan" (ASVK).
pub fn classify_amd_name(cn: &str) -> Option<(Processor, CertRole)> {
    let (role, generation) = if let Some(g) = cn.strip_prefix("ARK-") {
        (CertRole::Ark, g)
    } else if let Some(g) = cn.strip_prefix("SEV-VLEK-") {
        (CertRole::Asvk, g)
    } else if let Some(g) = cn.strip_prefix("SEV-") {
        (CertRole::Ask, g)
    } else {
        return None;
    };
    Processor::from_name(generation).map(|p| (p, role))
}

/// Parses a PEM bundle of ASK (or ASVK) then ARK, as AMD's KDS serves `cert_chain`,
/// and checks it against the pinned root of the generation it names.
pub fn chain_from_pem(pem: &[u8]) -> Result<CaChain, VerifyError> {
    // x509-cert 0.2.5's `load_pem_chain` computes `len - 1` after stripping trailing
    // newlines, which overflows (a panic with overflow checks) on an empty or
    // newline-only input; cargo-fuzz found it. Such input holds no certificate.
    if pem.trim_ascii().is_empty() {
        return Err(VerifyError::ChainShape { found: 0 });
    }
    let certs = X509::load_pem_chain(pem).map_err(|e| VerifyError::CertificateParse {
        role: CertRole::Ask,
        reason: format!("invalid PEM chain: {e}"),
    })?;
    let [intermediate, ark]: [X509; 2] = certs
        .try_into()
        .map_err(|v: Vec<X509>| VerifyError::ChainShape { found: v.len() })?;
    chain_from_pair(
        Cert::from_x509(intermediate, CertRole::Ask)?,
        Cert::from_x509(ark, CertRole::Ark)?,
    )
}

/// Builds a CA chain from certificates handed in with evidence: either one PEM bundle
/// of ASK (or ASVK) then ARK, or the two as separate DER or PEM certificates (as the
/// extended report's certificate table carries them). The ARK must be the pinned one.
pub fn chain_from_parts(parts: &[Vec<u8>]) -> Result<CaChain, VerifyError> {
    match parts {
        [bundle] => chain_from_pem(bundle),
        [intermediate, ark] => chain_from_pair(
            Cert::parse(intermediate, CertRole::Ask)?,
            Cert::parse(ark, CertRole::Ark)?,
        ),
        _ => Err(VerifyError::ChainShape { found: parts.len() }),
    }
}

/// Checks an (intermediate, ARK) pair against the pinned root of the generation the
/// ARK names, and the ARK's signature on the intermediate.
fn chain_from_pair(intermediate: Cert, ark: Cert) -> Result<CaChain, VerifyError> {
    let ark_cn = ark.subject_cn();
    let processor = match classify_amd_name(&ark_cn) {
        Some((p, CertRole::Ark)) => p,
        _ => {
            return Err(VerifyError::UnknownProcessor {
                found: format!("the supplied root's subject is {ark_cn:?}"),
            })
        }
    };
    if ark.der() != pinned_ark(processor)?.der() {
        return Err(VerifyError::RootNotPinned {
            found: ark_cn,
            expected: processor,
        });
    }
    let role = match classify_amd_name(&intermediate.subject_cn()) {
        Some((_, CertRole::Asvk)) => CertRole::Asvk,
        _ => CertRole::Ask,
    };
    CaChain::new(processor, ark, intermediate, role)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pinned_chain_verifies() {
        for p in Processor::ALL {
            for role in [CertRole::Ask, CertRole::Asvk] {
                let chain = CaChain::pinned(p, role).unwrap();
                let (gen, r) = classify_amd_name(&chain.intermediate.subject_cn()).unwrap();
                assert_eq!((gen, r), (p, role));
            }
        }
    }

    #[test]
    fn an_asvk_of_another_generation_is_refused() {
        let ark = pinned_ark(Processor::Milan).unwrap();
        let genoa_asvk = Cert::parse(ASVK_GENOA, CertRole::Asvk).unwrap();
        let err = CaChain::new(Processor::Milan, ark, genoa_asvk, CertRole::Asvk).unwrap_err();
        assert!(matches!(err, VerifyError::ChainSignature { .. }), "{err}");
    }

    #[test]
    fn empty_or_blank_pem_chains_are_refused_without_panicking() {
        // The empty input is the crash cargo-fuzz found (x509-cert's `len - 1`).
        for blank in [&b""[..], b"\n", b"\r\n\n", b"  \t\n"] {
            let err = chain_from_pem(blank).unwrap_err();
            assert!(matches!(err, VerifyError::ChainShape { found: 0 }), "{err}");
            let err = chain_from_parts(&[blank.to_vec()]).unwrap_err();
            assert!(matches!(err, VerifyError::ChainShape { found: 0 }), "{err}");
        }
    }

    #[test]
    fn amd_names_classify() {
        assert_eq!(
            classify_amd_name("SEV-VLEK-Genoa"),
            Some((Processor::Genoa, CertRole::Asvk))
        );
        assert_eq!(
            classify_amd_name("SEV-Turin"),
            Some((Processor::Turin, CertRole::Ask))
        );
        assert_eq!(classify_amd_name("SEV-Rome"), None);
        assert_eq!(classify_amd_name("Example CA"), None);
    }

    #[test]
    fn times_parse_both_ways() {
        let t = parse_time("2025-06-01T00:00:00Z").unwrap();
        assert_eq!(t, UNIX_EPOCH + Duration::from_secs(1_748_736_000));
        assert_eq!(parse_time("2025-06-01").unwrap(), t);
        assert_eq!(parse_time("1748736000").unwrap(), t);
        for bad in [
            "2025-13-01",
            "yesterday",
            "2025-06-01T00:00:00",
            "2025-06-01T99:00:00Z",
        ] {
            assert!(parse_time(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn svn_decoding_accepts_der_integers_only() {
        assert_eq!(decode_svn(&[2, 1, 3]), Some(3));
        assert_eq!(decode_svn(&[2, 2, 0, 0xD1]), Some(0xD1));
        assert_eq!(decode_svn(&[4, 1, 3]), None);
        assert_eq!(decode_svn(&[]), None);
    }
}
