//! Verification time of one SNP report with a cached AMD chain, against the `sev`
//! crate's own verifier as a peer, measured interleaved in the same run (medians).
//!
//! Run: `cargo bench -p chrysalis-measurements --bench verify_report`
//! (`-- --rounds N` to change the number of rounds; default 200).

use std::hint::black_box;
use std::time::{Duration, Instant, UNIX_EPOCH};

use chrysalis_measurements::snp::{EndorsementKey, Policy, Report, Verifier};
use sev::certs::snp::{builtin::milan, ca, Certificate, Chain, Verifiable};
use sev::firmware::guest::AttestationReport;
use sev::parser::ByteParser;

fn data(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn time(f: &mut dyn FnMut()) -> Duration {
    let start = Instant::now();
    f();
    start.elapsed()
}

fn main() {
    let rounds: usize = std::env::args()
        .skip_while(|a| a != "--rounds")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(200);
    let report = Report::parse_binary_or_hex(&data("report_milan.hex")).unwrap();
    let raw = report.as_bytes().to_vec();
    let vcek_der = data("vcek_milan.der");
    let now = UNIX_EPOCH + Duration::from_secs(1_748_736_000);
    let policy = Policy {
        allowed_vmpls: vec![report.vmpl()],
        ..Policy::default()
    };

    // Cached: the pinned CA chains were checked when the verifier was built, and the
    // ASK's signature on this VCEK in the first (dropped) round; everything else,
    // including VCEK decoding, dates and the report signature, runs every round.
    let verifier = Verifier::pinned().unwrap();
    let mut ours_cached = || {
        let vek = EndorsementKey::parse(black_box(&vcek_der)).unwrap();
        black_box(verifier.verify(black_box(&raw), &vek, &policy, now)).unwrap();
    };
    // Peer 1: sev's full chain check (ARK self-signature, ARK->ASK, ASK->VCEK, report).
    let sev_chain = Chain {
        ca: ca::Chain {
            ark: milan::ark().unwrap(),
            ask: milan::ask().unwrap(),
        },
        vek: Certificate::from_der(&vcek_der).unwrap(),
    };
    let mut sev_full = || {
        let parsed = AttestationReport::from_bytes(black_box(&raw)).unwrap();
        (&sev_chain, &parsed).verify().unwrap();
    };
    // Peer 2: sev's report signature only (no chain, no TCB/chip/policy checks).
    let mut sev_signature_only = || {
        let parsed = AttestationReport::from_bytes(black_box(&raw)).unwrap();
        (&sev_chain.vek, &parsed).verify().unwrap();
    };

    let mut samples = [Vec::new(), Vec::new(), Vec::new()];
    for round in 0..rounds + 5 {
        let t = [
            time(&mut ours_cached),
            time(&mut sev_full),
            time(&mut sev_signature_only),
        ];
        if round >= 5 {
            // The first rounds warm caches and are dropped.
            for (s, d) in samples.iter_mut().zip(t) {
                s.push(d);
            }
        }
    }
    let [ours, full, sig] = samples.map(median);
    println!("verify one SNP report (Milan v2, VCEK), {rounds} interleaved rounds, medians:");
    println!(
        "  chrysalis, cached chain, all checks:        {:>9.3} ms",
        ms(ours)
    );
    println!(
        "  sev 8 chain + report signature (uncached):  {:>9.3} ms",
        ms(full)
    );
    println!(
        "  sev 8 report signature only:                {:>9.3} ms",
        ms(sig)
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
