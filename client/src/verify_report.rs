//! `chrysalis verify-report`: check one SEV-SNP attestation report offline.
//!
//! For reviewers: the same verifier the client runs on live evidence, fed from files.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::{Context, Result};
use chrysalis_measurements::snp::{
    certs::parse_time, expect::parse_hex_array, AllowedMeasurement, EndorsementKey, Manifests,
    MinTcb, Policy, Processor, Report, TcbFloors, Verified, Verifier, VerifyError,
};
use serde_json::json;

/// Largest input file read (reports are 1184 bytes, certificate bundles a few KiB).
const MAX_INPUT_BYTES: u64 = 1 << 20;

/// Verify an AMD SEV-SNP attestation report and print its fields.
///
/// Checks, in order: the report format; the VCEK/VLEK chain to AMD's pinned root for
/// the processor (Milan, Genoa, Turin) and every certificate's validity dates; the
/// report signature over the raw bytes; the certificate's TCB and hwID extensions
/// against REPORTED_TCB and CHIP_ID; then the policy: allowed launch measurements,
/// minimum TCB, no debug, no migration agent, allowed VMPL, expected REPORT_DATA.
/// Checks not asked for (no --measurement/--manifest, no --min-tcb, no --report-data)
/// are listed as not checked.
///
/// Exit status: 0 when every check holds, 1 with the name of the failed check
/// otherwise.
///
/// Example: chrysalis verify-report --report report.bin --vcek vcek.der
///   --manifest measurements/published --report-data <128 hex digits>
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The attestation report: 1184 raw bytes, or the same as hex text.
    #[arg(long, value_name = "FILE")]
    report: PathBuf,
    /// The VCEK or VLEK that signed the report, DER or PEM (from the host or AMD KDS).
    #[arg(long, value_name = "FILE")]
    vcek: PathBuf,
    /// The ASK (or ASVK) then ARK, PEM, as AMD KDS serves `cert_chain`. The ARK must
    /// be AMD's pinned root. Without it, the pinned ASK/ASVK are used.
    #[arg(long, value_name = "FILE")]
    chain: Option<PathBuf>,
    /// Accept a guest whose policy allows debugging. INSECURE: the host can read its
    /// memory.
    #[arg(long)]
    allow_debug: bool,
    /// Accept a guest whose policy allows a migration agent.
    #[arg(long)]
    allow_migration_agent: bool,
    /// Accept a VCEK-signed report whose CHIP_ID is masked (the chip cannot be
    /// compared with the VCEK's hwID).
    #[arg(long)]
    allow_masked_chip_id: bool,
    /// Minimum REPORTED_TCB, e.g. `bootloader=3,tee=0,snp=8,microcode=115` (any
    /// subset; `fmc` on Turin).
    #[arg(long, value_name = "SPEC", value_parser = MinTcb::parse)]
    min_tcb: Option<MinTcb>,
    /// An allowed launch measurement (96 hex digits). Repeat for several.
    #[arg(long, value_name = "HEX", value_parser = AllowedMeasurement::from_hex)]
    measurement: Vec<AllowedMeasurement>,
    /// A published image manifest, or a directory of them (e.g. measurements/published);
    /// its `snp_launch_digests` are allowed and its `min_tcb` for the report's CPU
    /// generation is enforced (raised by --min-tcb). Repeat for several.
    #[arg(long, value_name = "PATH")]
    manifest: Vec<PathBuf>,
    /// The expected REPORT_DATA (128 hex digits).
    #[arg(long, value_name = "HEX", value_parser = parse_hex_array::<64>)]
    report_data: Option<[u8; 64]>,
    /// An allowed VMPL. Repeat for several. Default: 0.
    #[arg(long, value_name = "N")]
    vmpl: Vec<u32>,
    /// Check certificate validity at this time (Unix seconds or RFC 3339 UTC, e.g.
    /// 2025-06-01T00:00:00Z) instead of now.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    at: Option<SystemTime>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

fn read_bounded(path: &PathBuf, what: &str) -> Result<Vec<u8>> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("cannot read the {what} {}", path.display()))?
        .len();
    anyhow::ensure!(
        len <= MAX_INPUT_BYTES,
        "the {what} {} is {len} bytes, expected at most {MAX_INPUT_BYTES}",
        path.display()
    );
    std::fs::read(path).with_context(|| format!("cannot read the {what} {}", path.display()))
}

impl Args {
    fn policy(&self) -> Result<Policy, VerifyError> {
        let mut allowed = self.measurement.clone();
        let mut floors = TcbFloors::default();
        for path in &self.manifest {
            let manifests = Manifests::load(path)?;
            allowed.extend(manifests.measurements);
            for processor in Processor::ALL {
                floors.raise(Some(processor), manifests.min_tcb.get(processor));
            }
        }
        let given = !self.measurement.is_empty() || !self.manifest.is_empty();
        Ok(Policy {
            allow_debug: self.allow_debug,
            allow_migration_agent: self.allow_migration_agent,
            allow_masked_chip_id: self.allow_masked_chip_id,
            min_tcb: self.min_tcb.unwrap_or_default(),
            min_tcb_per_cpu: floors,
            allowed_vmpls: if self.vmpl.is_empty() {
                vec![0]
            } else {
                self.vmpl.clone()
            },
            measurements: given.then_some(allowed),
            measurements_source: self.measurements_source(),
            report_data: self.report_data,
        })
    }

    /// Names the flags the allowed digests came from, for a refusal.
    fn measurements_source(&self) -> String {
        let mut parts: Vec<String> = self
            .manifest
            .iter()
            .map(|p| format!("--manifest {}", p.display()))
            .collect();
        if !self.measurement.is_empty() {
            parts.push(format!("{} --measurement flags", self.measurement.len()));
        }
        parts.join(" and ")
    }

    fn verify(&self) -> Result<std::result::Result<Verified, VerifyError>> {
        let report = read_bounded(&self.report, "report")?;
        let vek = read_bounded(&self.vcek, "VCEK/VLEK")?;
        let chain = match &self.chain {
            Some(path) => Some(read_bounded(path, "certificate chain")?),
            None => None,
        };
        let now = self.at.unwrap_or_else(SystemTime::now);
        Ok(self.verify_bytes(&report, &vek, chain.as_deref(), now))
    }

    fn verify_bytes(
        &self,
        report: &[u8],
        vek: &[u8],
        chain: Option<&[u8]>,
        now: SystemTime,
    ) -> std::result::Result<Verified, VerifyError> {
        let policy = self.policy()?;
        let vek = EndorsementKey::parse(vek)?;
        let mut verifier = Verifier::pinned()?;
        if let Some(pem) = chain {
            verifier = verifier.with_supplied_chain(pem)?;
        }
        let report = Report::parse_binary_or_hex(report)?;
        verifier.verify(report.as_bytes(), &vek, &policy, now)
    }
}

/// Runs the subcommand; exit 0 when the report holds, 1 otherwise.
pub fn run(args: Args) -> ExitCode {
    match args.verify() {
        Ok(Ok(verified)) => {
            print_verified(&verified, args.json);
            ExitCode::SUCCESS
        }
        Ok(Err(rejection)) => {
            print_failure(rejection.check(), &rejection.to_string(), args.json);
            ExitCode::FAILURE
        }
        Err(io) => {
            print_failure("input", &format!("{io:#}"), args.json);
            ExitCode::FAILURE
        }
    }
}

fn print_failure(check: &str, reason: &str, json: bool) {
    if json {
        println!(
            "{}",
            json!({ "verdict": "invalid", "check": check, "reason": reason })
        );
    } else {
        eprintln!("INVALID: {reason}");
    }
}

fn skipped_checks(v: &Verified) -> Vec<&'static str> {
    let s = v.skipped;
    [
        (s.measurement, "measurement"),
        (s.min_tcb, "minimum-tcb"),
        (s.report_data, "report-data"),
        (s.chip_id, "chip-id"),
    ]
    .into_iter()
    .filter_map(|(skipped, name)| skipped.then_some(name))
    .collect()
}

fn print_verified(v: &Verified, as_json: bool) {
    let a = &v.authentic;
    let r = &a.report;
    let (major, minor, build) = r.current_version();
    let fields = json!({
        "verdict": "valid",
        "processor": a.processor.name(),
        "signed_by": a.signed_by.to_string(),
        "version": r.version(),
        "policy": format!("{:#x}", r.policy().0),
        "debug": r.policy().debug_allowed(),
        "vmpl": r.vmpl(),
        "measurement": hex::encode(r.measurement()),
        "reported_tcb": a.reported_tcb,
        "chip_id": hex::encode(r.chip_id()),
        "chip_binding": format!("{:?}", a.chip),
        "report_data": hex::encode(r.report_data()),
        "host_data": hex::encode(r.host_data()),
        "firmware": format!("{major}.{minor}.{build}"),
        "not_checked": skipped_checks(v),
    });
    if as_json {
        println!("{fields}");
        return;
    }
    println!(
        "VALID: report verified ({}, signed by {})",
        a.processor, a.signed_by
    );
    println!("version:      {}", r.version());
    println!("policy:       {}", r.policy());
    println!("vmpl:         {}", r.vmpl());
    println!("measurement:  {}", hex::encode(r.measurement()));
    println!("reported tcb: {}", a.reported_tcb);
    println!("chip id:      {} ({:?})", hex::encode(r.chip_id()), a.chip);
    println!("report data:  {}", hex::encode(r.report_data()));
    println!("firmware:     {major}.{minor}.{build}");
    for name in skipped_checks(v) {
        println!("not checked:  {name} (no expected value given)");
    }
    if r.policy().debug_allowed() {
        println!("WARNING: INSECURE: the guest policy allows debugging (--allow-debug)");
    }
}
