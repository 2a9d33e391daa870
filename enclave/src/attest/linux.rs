//! The `sev-guest` driver's ioctl interface, as raw `#[repr(C)]` structures.
//!
//! Mirrors Linux `include/uapi/linux/sev-guest.h`; the message payloads follow the
//! AMD SEV-SNP Firmware ABI Specification (publication 56860, rev. 1.57), section 7
//! "Guest Messages": MSG_REPORT_REQ/RSP (Tables 21 and 24) and MSG_KEY_REQ/RSP
//! (Tables 18 and 20). The extended-report certificate table follows the GHCB
//! specification (publication 56421), section 4.1.8.1. Only this module contains
//! `unsafe`; everything above it works on checked byte slices.

use std::fs::File;
use std::os::fd::AsRawFd;

use super::AttestError;

/// `SNP_GUEST_REQ_IOC_TYPE`.
const IOC_TYPE: u64 = b'S' as u64;

/// `_IOWR(type, nr, size)` from `asm-generic/ioctl.h`.
const fn iowr(nr: u64, size: usize) -> u64 {
    (3 << 30) | ((size as u64) << 16) | (IOC_TYPE << 8) | nr
}

/// `SNP_GET_REPORT`.
pub const SNP_GET_REPORT: u64 = iowr(0, size_of::<SnpGuestRequestIoctl>());
/// `SNP_GET_DERIVED_KEY`.
pub const SNP_GET_DERIVED_KEY: u64 = iowr(1, size_of::<SnpGuestRequestIoctl>());
/// `SNP_GET_EXT_REPORT`.
pub const SNP_GET_EXT_REPORT: u64 = iowr(2, size_of::<SnpGuestRequestIoctl>());

/// `struct snp_report_req`: MSG_REPORT_REQ.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct SnpReportReq {
    /// REPORT_DATA.
    pub user_data: [u8; 64],
    /// VMPL to report at.
    pub vmpl: u32,
    /// Must be zero.
    pub rsvd: [u8; 28],
}

/// `struct snp_report_resp`: MSG_REPORT_RSP in a 4000-byte buffer.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct SnpReportResp {
    /// STATUS (u32), REPORT_SIZE (u32), 24 reserved bytes, then the report at 0x20.
    pub data: [u8; 4000],
}

/// `struct snp_derived_key_req`: MSG_KEY_REQ.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct SnpDerivedKeyReq {
    /// 0: derive from the VCEK; 1: from the VMRK.
    pub root_key_select: u32,
    /// Must be zero.
    pub rsvd: u32,
    /// Which guest fields are mixed into the key (GUEST_FIELD_SELECT).
    pub guest_field_select: u64,
    /// VMPL to mix in (at least the caller's).
    pub vmpl: u32,
    /// Guest SVN to mix in.
    pub guest_svn: u32,
    /// TCB version to mix in.
    pub tcb_version: u64,
}

/// `struct snp_derived_key_resp`: MSG_KEY_RSP in a 64-byte buffer.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct SnpDerivedKeyResp {
    /// STATUS (u32), 28 reserved bytes, then the 32-byte key at 0x20.
    pub data: [u8; 64],
}

impl zeroize::Zeroize for SnpDerivedKeyResp {
    fn zeroize(&mut self) {
        self.data.zeroize();
    }
}

/// `struct snp_ext_report_req`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct SnpExtReportReq {
    /// The report request.
    pub data: SnpReportReq,
    /// Address of the certificate buffer (page aligned, page multiple).
    pub certs_address: u64,
    /// Its length; on `SNP_GUEST_VMM_ERR_INVALID_LEN` the kernel writes the size needed.
    pub certs_len: u32,
}

/// `struct snp_guest_request_ioctl`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct SnpGuestRequestIoctl {
    /// Message version, 1.
    pub msg_version: u8,
    /// Address of the request structure.
    pub req_data: u64,
    /// Address of the response structure.
    pub resp_data: u64,
    /// Firmware error (low 32 bits) and hypervisor error (high 32 bits).
    pub exitinfo2: u64,
}

/// Hypervisor error: the certificate buffer is too small (`SNP_GUEST_VMM_ERR_INVALID_LEN`).
pub const VMM_ERR_INVALID_LEN: u32 = 1;

/// GUEST_FIELD_SELECT bit 0: mix in the guest policy.
pub const FIELD_GUEST_POLICY: u64 = 1 << 0;
/// GUEST_FIELD_SELECT bit 3: mix in the launch measurement.
pub const FIELD_MEASUREMENT: u64 = 1 << 3;
/// GUEST_FIELD_SELECT bit 5: mix in the request's TCB_VERSION (which must not exceed
/// the platform's COMMITTED_TCB).
pub const FIELD_TCB_VERSION: u64 = 1 << 5;

/// Offset of the report inside MSG_REPORT_RSP.
pub const REPORT_RSP_REPORT_OFFSET: usize = 0x20;
/// Offset of the key inside MSG_KEY_RSP.
pub const KEY_RSP_KEY_OFFSET: usize = 0x20;

/// Extracts the report from a MSG_REPORT_RSP, checking STATUS and REPORT_SIZE.
pub fn parse_report_response(data: &[u8]) -> Result<Vec<u8>, AttestError> {
    let word = |at: usize| -> u32 {
        let mut b = [0u8; 4];
        b.copy_from_slice(&data[at..at + 4]);
        u32::from_le_bytes(b)
    };
    if data.len() < REPORT_RSP_REPORT_OFFSET {
        return Err(malformed(
            "report response",
            data.len(),
            "at least 32 bytes",
        ));
    }
    let status = word(0);
    if status != 0 {
        return Err(AttestError::FirmwareStatus {
            request: "SNP_GET_REPORT",
            status,
        });
    }
    let size = word(4) as usize;
    let end = REPORT_RSP_REPORT_OFFSET.checked_add(size);
    match end {
        Some(end) if size == 1184 && end <= data.len() => {
            Ok(data[REPORT_RSP_REPORT_OFFSET..end].to_vec())
        }
        _ => Err(malformed("report response", size, "REPORT_SIZE 1184")),
    }
}

/// Extracts the 32-byte key from a MSG_KEY_RSP, checking STATUS.
pub fn parse_key_response(data: &[u8; 64]) -> Result<[u8; 32], AttestError> {
    let status = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
    if status != 0 {
        return Err(AttestError::FirmwareStatus {
            request: "SNP_GET_DERIVED_KEY",
            status,
        });
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(&data[KEY_RSP_KEY_OFFSET..]);
    Ok(key)
}

fn malformed(what: &'static str, found: impl std::fmt::Display, expected: &str) -> AttestError {
    AttestError::Malformed {
        what,
        found: found.to_string(),
        expected: expected.to_string(),
    }
}

/// Certificate kinds in the extended report's table, by GUID (big-endian byte order
/// of the textual GUID, as the `sev` crate and the kernel use).
pub const GUID_VCEK: [u8; 16] = guid(0x63da758d_e664_4564_adc5_f4b93be8accd);
/// VLEK certificate GUID.
pub const GUID_VLEK: [u8; 16] = guid(0xa8074bc2_a25a_483e_aae6_39c045a0b8a1);
/// ASK certificate GUID.
pub const GUID_ASK: [u8; 16] = guid(0x4ab7b379_bbac_4fe4_a02f_05aef327c782);
/// ARK certificate GUID.
pub const GUID_ARK: [u8; 16] = guid(0xc0b406a4_a803_4952_9743_3fb6014cd0ae);

const fn guid(v: u128) -> [u8; 16] {
    v.to_be_bytes()
}

/// Size of one certificate-table entry: GUID (16), offset (u32), length (u32).
pub const CERT_ENTRY_LEN: usize = 24;

/// Reads the certificate table at the start of `buf` (terminated by an all-zero
/// entry) and returns the certificates leaf first: VCEK or VLEK, ASK, ARK. Entries of
/// other kinds are skipped; offsets and lengths are checked against `buf`.
pub fn parse_cert_table(buf: &[u8]) -> Result<Vec<Vec<u8>>, AttestError> {
    let mut found: [Option<Vec<u8>>; 4] = Default::default();
    for entry in buf.chunks_exact(CERT_ENTRY_LEN) {
        if entry.iter().all(|&b| b == 0) {
            let certs: Vec<Vec<u8>> = found.into_iter().flatten().collect();
            return Ok(certs);
        }
        let offset = u32::from_le_bytes([entry[16], entry[17], entry[18], entry[19]]) as usize;
        let len = u32::from_le_bytes([entry[20], entry[21], entry[22], entry[23]]) as usize;
        let cert = offset
            .checked_add(len)
            .and_then(|end| buf.get(offset..end))
            .ok_or_else(|| {
                malformed(
                    "certificate table",
                    format!("entry at {offset} of {len} bytes"),
                    &format!("inside the {}-byte buffer", buf.len()),
                )
            })?;
        let slot = match &entry[..16] {
            g if g == GUID_VCEK || g == GUID_VLEK => 0,
            g if g == GUID_ASK => 1,
            g if g == GUID_ARK => 2,
            _ => continue,
        };
        found[slot] = Some(cert.to_vec());
    }
    Err(malformed(
        "certificate table",
        "no terminating all-zero entry",
        "a table ending in a zero entry",
    ))
}

/// Issues one guest request ioctl on an open `/dev/sev-guest`.
///
/// `req` and `resp` are the request and response structures the request number
/// names; they must stay alive and unaliased for the call, which holds because both
/// are borrowed for its whole duration.
pub fn guest_request<Req, Resp>(
    device: &File,
    request: u64,
    name: &'static str,
    req: &mut Req,
    resp: &mut Resp,
) -> Result<(), AttestError> {
    let mut ioctl = SnpGuestRequestIoctl {
        msg_version: 1,
        req_data: req as *mut Req as u64,
        resp_data: resp as *mut Resp as u64,
        exitinfo2: 0,
    };
    // SAFETY: `device` is an open file; `request` is one of the three `_IOWR` numbers
    // above, which the sev-guest driver defines to take a `snp_guest_request_ioctl`
    // whose `req_data`/`resp_data` point to the request/response structures of that
    // request. `ioctl`, `req` and `resp` are exclusively borrowed for the whole call
    // and sized as the uapi header declares (checked by the tests below).
    let rc = unsafe { libc::ioctl(device.as_raw_fd(), request as _, &mut ioctl) };
    if rc < 0 {
        let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        return Err(AttestError::Ioctl {
            request: name,
            errno,
            fw_error: ioctl.exitinfo2 as u32,
            vmm_error: (ioctl.exitinfo2 >> 32) as u32,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::mem::{offset_of, size_of};

    use super::*;

    #[test]
    fn structure_sizes_match_the_uapi_header() {
        assert_eq!(size_of::<SnpReportReq>(), 96);
        assert_eq!(size_of::<SnpReportResp>(), 4000);
        assert_eq!(size_of::<SnpDerivedKeyReq>(), 32);
        assert_eq!(size_of::<SnpDerivedKeyResp>(), 64);
        assert_eq!(size_of::<SnpExtReportReq>(), 112);
        assert_eq!(size_of::<SnpGuestRequestIoctl>(), 32);
    }

    #[test]
    fn field_offsets_match_the_uapi_header() {
        assert_eq!(offset_of!(SnpReportReq, vmpl), 64);
        assert_eq!(offset_of!(SnpReportReq, rsvd), 68);
        assert_eq!(offset_of!(SnpDerivedKeyReq, guest_field_select), 8);
        assert_eq!(offset_of!(SnpDerivedKeyReq, vmpl), 16);
        assert_eq!(offset_of!(SnpDerivedKeyReq, guest_svn), 20);
        assert_eq!(offset_of!(SnpDerivedKeyReq, tcb_version), 24);
        assert_eq!(offset_of!(SnpExtReportReq, certs_address), 96);
        assert_eq!(offset_of!(SnpExtReportReq, certs_len), 104);
        assert_eq!(offset_of!(SnpGuestRequestIoctl, req_data), 8);
        assert_eq!(offset_of!(SnpGuestRequestIoctl, resp_data), 16);
        assert_eq!(offset_of!(SnpGuestRequestIoctl, exitinfo2), 24);
    }

    #[test]
    fn ioctl_numbers_match_the_kernel() {
        // Values the kernel's _IOWR('S', n, struct snp_guest_request_ioctl) gives.
        assert_eq!(SNP_GET_REPORT, 0xC020_5300);
        assert_eq!(SNP_GET_DERIVED_KEY, 0xC020_5301);
        assert_eq!(SNP_GET_EXT_REPORT, 0xC020_5302);
    }

    fn report_response(status: u32, size: u32) -> Vec<u8> {
        let mut data = vec![0u8; 4000];
        data[..4].copy_from_slice(&status.to_le_bytes());
        data[4..8].copy_from_slice(&size.to_le_bytes());
        for (i, b) in data[0x20..0x20 + 1184].iter_mut().enumerate() {
            *b = i as u8;
        }
        data
    }

    #[test]
    fn report_response_is_decoded_at_its_offsets() {
        let report = parse_report_response(&report_response(0, 1184)).unwrap();
        assert_eq!(report.len(), 1184);
        assert_eq!((report[0], report[1183]), (0, (1183 % 256) as u8));
        let err = parse_report_response(&report_response(0x16, 1184)).unwrap_err();
        assert!(matches!(
            err,
            AttestError::FirmwareStatus { status: 0x16, .. }
        ));
        let err = parse_report_response(&report_response(0, 5000)).unwrap_err();
        assert!(matches!(err, AttestError::Malformed { .. }), "{err}");
        assert!(parse_report_response(&[0u8; 8]).is_err());
    }

    #[test]
    fn key_response_is_decoded_at_its_offset() {
        let mut data = [0u8; 64];
        data[0x20..].copy_from_slice(&[7u8; 32]);
        assert_eq!(parse_key_response(&data).unwrap(), [7u8; 32]);
        data[0] = 0x16;
        assert!(parse_key_response(&data).is_err());
    }

    fn entry(guid: [u8; 16], offset: u32, len: u32) -> Vec<u8> {
        let mut e = guid.to_vec();
        e.extend_from_slice(&offset.to_le_bytes());
        e.extend_from_slice(&len.to_le_bytes());
        e
    }

    #[test]
    fn cert_table_orders_leaf_first_and_checks_bounds() {
        let mut buf = Vec::new();
        buf.extend(entry(GUID_ARK, 96, 3));
        buf.extend(entry(GUID_VCEK, 99, 2));
        buf.extend(entry(GUID_ASK, 101, 1));
        buf.extend([0u8; 24]);
        buf.extend(b"arkvca");
        let certs = parse_cert_table(&buf).unwrap();
        assert_eq!(certs, vec![b"vc".to_vec(), b"a".to_vec(), b"ark".to_vec()]);
        let mut bad = entry(GUID_VCEK, 90, u32::MAX);
        bad.extend([0u8; 24]);
        assert!(parse_cert_table(&bad).is_err());
        assert!(
            parse_cert_table(&entry(GUID_VCEK, 0, 0)).is_err(),
            "no terminator"
        );
    }

    #[test]
    fn guids_match_their_text_form() {
        assert_eq!(hex::encode(GUID_VCEK), "63da758de6644564adc5f4b93be8accd");
        assert_eq!(
            hex::encode(GUID_ARK),
            "c0b406a4a80349529743_3fb6014cd0ae".replace('_', "")
        );
    }

    /// The bytes the kernel copies into the guest message for a request structure.
    fn bytes_of<T: Copy>(value: &T) -> Vec<u8> {
        // SAFETY: only called on `SnpDerivedKeyReq` and `SnpReportReq`, `#[repr(C)]`
        // structures of integers and byte arrays without padding (their sizes equal
        // the sums of their fields, checked above), so every byte is initialised;
        // the slice borrows `value` and does not outlive it.
        unsafe { std::slice::from_raw_parts(value as *const T as *const u8, size_of::<T>()) }
            .to_vec()
    }

    #[test]
    fn the_key_request_is_msg_key_req_byte_for_byte() {
        // MSG_KEY_REQ (Table 18): ROOT_KEY_SELECT=0 (VCEK) at 0x00, reserved at 0x04,
        // GUEST_FIELD_SELECT at 0x08 = bits 0 (policy), 3 (measurement) and 5
        // (TCB_VERSION) = 0x29, VMPL at 0x10, GUEST_SVN at 0x14, TCB_VERSION at 0x18,
        // all little-endian. The TCB is the real Milan report's COMMITTED_TCB.
        let report = chrysalis_measurements::snp::fixtures::milan_report();
        let committed = super::super::snp::committed_tcb(&report).unwrap();
        let mut recorded = [0u8; 32];
        recorded[0x08] = 0x29;
        recorded[0x18..0x20].copy_from_slice(&report[0x1E0..0x1E8]);
        assert_ne!(&recorded[0x18..0x20], &[0; 8], "the fixture has a TCB");
        assert_eq!(
            bytes_of(&super::super::snp::derived_key_request(committed)),
            recorded
        );
    }

    #[test]
    fn the_report_request_carries_report_data_then_vmpl() {
        let req = SnpReportReq {
            user_data: [0xa5; 64],
            vmpl: 0,
            rsvd: [0; 28],
        };
        let bytes = bytes_of(&req);
        assert_eq!(&bytes[..64], &[0xa5; 64]);
        assert_eq!(&bytes[64..], &[0; 32]);
    }

    #[test]
    fn a_real_report_in_a_report_response_still_verifies() {
        use chrysalis_measurements::snp::fixtures;
        let report = fixtures::milan_report();
        let vcek = fixtures::read("vcek_milan.der");
        // MSG_REPORT_RSP (Table 24) as the driver hands it back: STATUS 0,
        // REPORT_SIZE 1184, reserved, then the report at 0x20.
        let mut resp = SnpReportResp { data: [0; 4000] };
        resp.data[4..8].copy_from_slice(&1184u32.to_le_bytes());
        resp.data[0x20..0x20 + 1184].copy_from_slice(&report);
        let extracted = parse_report_response(&resp.data).unwrap();
        assert_eq!(extracted, report);
        let policy = chrysalis_measurements::snp::Policy::default();
        chrysalis_measurements::snp::verify_report(
            &extracted,
            &vcek,
            &policy,
            fixtures::mid_2025(),
        )
        .unwrap();
    }
}
