//! `chrysalis verify-report` on the real SNP fixtures (copies in
//! `measurements/tests/data/`), run as the built binary.

use std::process::{Command, Output};

const MID_2025: &str = "2025-06-01T00:00:00Z";

fn data(name: &str) -> String {
    format!(
        "{}/../measurements/tests/data/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_chrysalis"))
        .arg("verify-report")
        .args(args)
        .output()
        .expect("the chrysalis binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_str(stdout(o).trim()).expect("one JSON object on stdout")
}

#[test]
fn valid_milan_hex_report_prints_its_fields() {
    let report = data("report_milan.hex");
    let vcek = data("vcek_milan.der");
    let out = run(&[
        "--report", &report, "--vcek", &vcek, "--vmpl", "0", "--vmpl", "1", "--at", MID_2025,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    for field in [
        "VALID",
        "version:      2",
        "policy:",
        "measurement:",
        "reported tcb:",
        "chip id:",
        "report data:",
    ] {
        assert!(text.contains(field), "missing {field:?} in:\n{text}");
    }
}

#[test]
fn valid_report_with_supplied_chain_and_json() {
    let (report, vcek, chain) = (
        data("report_milan.hex"),
        data("vcek_milan.der"),
        data("cert_chain_milan"),
    );
    let out = run(&[
        "--report", &report, "--vcek", &vcek, "--chain", &chain, "--vmpl", "0", "--vmpl", "1",
        "--at", MID_2025, "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let v = json(&out);
    assert_eq!(v["verdict"], "valid");
    assert_eq!(v["processor"], "Milan");
    assert_eq!(v["version"], 2);
    assert_eq!(v["measurement"].as_str().unwrap().len(), 96);
    assert_eq!(
        v["not_checked"],
        serde_json::json!(["measurement", "minimum-tcb", "report-data"])
    );
}

#[test]
fn vlek_report_verifies_with_its_asvk_chain() {
    let (report, vlek, chain) = (
        data("trustee_milan_vlek_report.bin"),
        data("trustee_milan_vlek.der"),
        data("ask_ark_milan_vlek.pem"),
    );
    let out = run(&[
        "--report", &report, "--vcek", &vlek, "--chain", &chain, "--vmpl", "1", "--at", MID_2025,
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert_eq!(json(&out)["signed_by"], "VLEK");
}

#[test]
fn debug_report_is_refused_naming_the_debug_bit_unless_allowed() {
    let (report, vcek) = (
        data("gosevguest_milan_debug_report.bin"),
        data("gosevguest_milan_vcek.der"),
    );
    let base = ["--report", &report, "--vcek", &vcek, "--at", MID_2025];
    let out = run(&base);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("debug check failed"),
        "{}",
        stderr(&out)
    );
    let mut allowed = base.to_vec();
    allowed.push("--allow-debug");
    let out = run(&allowed);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("INSECURE"));
}

/// Runs on the trustee Milan report and VCEK, any VMPL, at `MID_2025`, plus `extra`.
fn run_trustee(extra: &[&str]) -> Output {
    let (report, vcek) = (
        data("trustee_milan_report.bin"),
        data("trustee_milan_vcek.der"),
    );
    let mut args: Vec<&str> = vec![
        "--report", &report, "--vcek", &vcek, "--vmpl", "0", "--vmpl", "1", "--at", MID_2025,
    ];
    args.extend_from_slice(extra);
    run(&args)
}

#[test]
fn wrong_measurement_and_report_data_are_named() {
    let zeros48 = "00".repeat(48);
    let out = run_trustee(&["--measurement", &zeros48, "--json"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(json(&out)["check"], "measurement");
    let zeros64 = "00".repeat(64);
    let out = run_trustee(&["--report-data", &zeros64, "--json"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(json(&out)["check"], "report-data");
}

#[test]
fn manifest_measurements_are_allowed() {
    let bytes = std::fs::read(data("trustee_milan_report.bin")).unwrap();
    let digest = hex_encode(&bytes[0x90..0xC0]);
    let dir = std::env::temp_dir().join(format!("chrysalis-manifest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let manifest = dir.join("image.json");
    std::fs::write(
        &manifest,
        format!(r#"{{"version":1,"snp_launch_digests":[{{"vcpus":1,"cpu":"milan","digest":"{digest}"}}]}}"#),
    )
    .unwrap();
    let out = run_trustee(&["--manifest", dir.to_str().unwrap(), "--json"]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert_eq!(
        json(&out)["not_checked"],
        serde_json::json!(["minimum-tcb", "report-data"])
    );
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn invalid_vcek_and_foreign_vcek_are_refused() {
    let report = data("report_milan.hex");
    for (vcek, check) in [
        ("snp_test-vcek-invalid-legacy.der", "chain-signature"),
        ("snp_test-vcek-invalid-new.der", "chain-signature"),
        ("trustee_milan_vcek.der", "report-signature"),
    ] {
        let path = data(vcek);
        let out = run(&[
            "--report", &report, "--vcek", &path, "--vmpl", "1", "--at", MID_2025, "--json",
        ]);
        assert_eq!(out.status.code(), Some(1), "{vcek}");
        assert_eq!(json(&out)["check"], check, "{vcek}: {}", stdout(&out));
    }
}

#[test]
fn expired_vlek_is_refused_at_a_later_time() {
    let (report, vlek) = (
        data("trustee_milan_vlek_report.bin"),
        data("trustee_milan_vlek.der"),
    );
    let out = run(&[
        "--report",
        &report,
        "--vcek",
        &vlek,
        "--vmpl",
        "1",
        "--at",
        "2026-01-01",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("certificate validity check failed"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn missing_file_and_bad_arguments_are_clear() {
    let out = run(&[
        "--report",
        "/nonexistent/report.bin",
        "--vcek",
        "/nonexistent/v.der",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot read the report"),
        "{}",
        stderr(&out)
    );
    let out = run(&["--report", "r", "--vcek", "v", "--min-tcb", "psp=1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("unknown TCB component"),
        "{}",
        stderr(&out)
    );
}
