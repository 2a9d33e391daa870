//! Compare: an authentic report against the expected values, one check at a time.

use crate::snp::error::VerifyError;
use crate::snp::expect::Policy;
use crate::snp::extract::{AuthenticReport, ChipBinding, TCB_COMPONENTS};

/// Which optional checks were skipped because the policy did not ask for them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Skipped {
    /// No allowed measurements were given.
    pub measurement: bool,
    /// No expected REPORT_DATA was given.
    pub report_data: bool,
    /// CHIP_ID was masked, so the VCEK's hwID was not compared.
    pub chip_id: bool,
}

/// Checks the report against the policy, in the order the policy lists its fields.
pub fn compare(authentic: &AuthenticReport, policy: &Policy) -> Result<Skipped, VerifyError> {
    let report = &authentic.report;
    let guest = report.policy();
    if guest.debug_allowed() && !policy.allow_debug {
        return Err(VerifyError::DebugAllowed { policy: guest.0 });
    }
    if guest.migration_agent_allowed() && !policy.allow_migration_agent {
        return Err(VerifyError::MigrationAgentAllowed { policy: guest.0 });
    }
    if authentic.chip == ChipBinding::Masked && !policy.allow_masked_chip_id {
        return Err(VerifyError::ChipIdMasked);
    }
    for component in TCB_COMPONENTS {
        let (Some(minimum), Some(found)) = (
            policy.min_tcb.get(component),
            authentic.reported_tcb.get(component),
        ) else {
            continue;
        };
        if found < minimum {
            return Err(VerifyError::TcbBelowMinimum {
                component,
                found,
                minimum,
            });
        }
    }
    if !policy.allowed_vmpls.contains(&report.vmpl()) {
        return Err(VerifyError::VmplNotAllowed {
            found: report.vmpl(),
            allowed: policy.allowed_vmpls.clone(),
        });
    }
    if let Some(allowed) = &policy.measurements {
        let found = report.measurement();
        if !allowed.iter().any(|m| m.digest == found) {
            let hint = match allowed.as_slice() {
                [only] => format!(" ({})", hex::encode(only.digest)),
                _ => String::new(),
            };
            return Err(VerifyError::MeasurementNotAllowed {
                found: hex::encode(found),
                allowed: allowed.len(),
                hint,
            });
        }
    }
    if let Some(expected) = &policy.report_data {
        let found = report.report_data();
        if found != *expected {
            return Err(VerifyError::ReportDataMismatch {
                found: hex::encode(found),
                expected: hex::encode(expected),
            });
        }
    }
    Ok(Skipped {
        measurement: policy.measurements.is_none(),
        report_data: policy.report_data.is_none(),
        chip_id: authentic.chip == ChipBinding::Masked,
    })
}
