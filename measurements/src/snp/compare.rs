//! Compare: an authentic report against the expected values, one check at a time.
//!
//! Order: launch measurement, minimum TCB, guest policy (debug, migration agent), chip
//! id, VMPL, REPORT_DATA. The image comes first because it is the question a client
//! asks before anything else; a refusal at a later check therefore also says that every
//! earlier check held.

use crate::snp::error::VerifyError;
use crate::snp::expect::{AllowedMeasurement, Policy};
use crate::snp::extract::{AuthenticReport, ChipBinding, TCB_COMPONENTS};
use crate::snp::report::Processor;

/// Which optional checks were skipped because the policy did not ask for them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Skipped {
    /// No allowed measurements were given.
    pub measurement: bool,
    /// The minimum TCB for the report's generation was zero in every component.
    pub min_tcb: bool,
    /// No expected REPORT_DATA was given.
    pub report_data: bool,
    /// CHIP_ID was masked, so the VCEK's hwID was not compared.
    pub chip_id: bool,
}

/// Checks the report against the policy, in the order of the module documentation.
pub fn compare(authentic: &AuthenticReport, policy: &Policy) -> Result<Skipped, VerifyError> {
    if let Some(allowed) = &policy.measurements {
        check_measurement(authentic, allowed, &policy.measurements_source)?;
    }
    check_min_tcb(authentic, policy)?;
    check_guest(authentic, policy)?;
    let report = &authentic.report;
    if !policy.allowed_vmpls.contains(&report.vmpl()) {
        return Err(VerifyError::VmplNotAllowed {
            found: report.vmpl(),
            allowed: policy.allowed_vmpls.clone(),
        });
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
        min_tcb: policy.min_tcb_for(authentic.processor).is_zero(),
        report_data: policy.report_data.is_none(),
        chip_id: authentic.chip == ChipBinding::Masked,
    })
}

fn check_measurement(
    authentic: &AuthenticReport,
    allowed: &[AllowedMeasurement],
    source: &str,
) -> Result<(), VerifyError> {
    let found = authentic.report.measurement();
    if allowed.iter().any(|m| m.digest == found) {
        return Ok(());
    }
    let hint = match allowed {
        [only] => format!(" (the only one is {})", hex::encode(only.digest)),
        _ => String::new(),
    };
    Err(VerifyError::MeasurementNotAllowed {
        found: hex::encode(found),
        processor: authentic.processor,
        allowed: allowed.len(),
        for_processor: for_processor(allowed, authentic.processor),
        origin: if source.is_empty() {
            "the policy".into()
        } else {
            source.into()
        },
        hint,
    })
}

/// "7 of them are for Milan, on 1, 2, 4, 8, 16, 32, 64 vCPUs".
fn for_processor(allowed: &[AllowedMeasurement], processor: Processor) -> String {
    let name = processor.name();
    let mine: Vec<&AllowedMeasurement> = allowed
        .iter()
        .filter(|m| {
            m.cpu
                .as_deref()
                .is_some_and(|c| c.eq_ignore_ascii_case(name))
        })
        .collect();
    if mine.is_empty() {
        return format!("none of them is listed for {name}");
    }
    let mut vcpus: Vec<u32> = mine.iter().filter_map(|m| m.vcpus).collect();
    vcpus.sort_unstable();
    vcpus.dedup();
    let counts: Vec<String> = vcpus.iter().map(u32::to_string).collect();
    format!(
        "{} of them are for {name}, on {} vCPUs",
        mine.len(),
        counts.join(", ")
    )
}

fn check_min_tcb(authentic: &AuthenticReport, policy: &Policy) -> Result<(), VerifyError> {
    let min = policy.min_tcb_for(authentic.processor);
    for component in TCB_COMPONENTS {
        let (Some(minimum), Some(found)) =
            (min.get(component), authentic.reported_tcb.get(component))
        else {
            continue;
        };
        if found < minimum {
            return Err(VerifyError::TcbBelowMinimum {
                processor: authentic.processor,
                component,
                found,
                minimum,
            });
        }
    }
    Ok(())
}

fn check_guest(authentic: &AuthenticReport, policy: &Policy) -> Result<(), VerifyError> {
    let guest = authentic.report.policy();
    if guest.debug_allowed() && !policy.allow_debug {
        return Err(VerifyError::DebugAllowed { policy: guest.0 });
    }
    if guest.migration_agent_allowed() && !policy.allow_migration_agent {
        return Err(VerifyError::MigrationAgentAllowed { policy: guest.0 });
    }
    if authentic.chip == ChipBinding::Masked && !policy.allow_masked_chip_id {
        return Err(VerifyError::ChipIdMasked);
    }
    Ok(())
}
