//! `chrysalis verify|chat|serve --help` teach the trust flags: the built-in manifests
//! by default, `--manifests` replacing them, `--min-tcb`, and the INSECURE options.

use std::process::Command;

fn help(command: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_chrysalis"))
        .args([command, "--help"])
        .output()
        .expect("the chrysalis binary runs");
    assert!(out.status.success(), "{command} --help failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn every_remote_command_teaches_the_trust_flags() {
    for command in ["verify", "chat", "serve"] {
        let text = help(command);
        for flag in [
            "--manifests <PATH>",
            "--insecure-any-measurement",
            "--min-tcb <[CPU:]SPEC>",
            "--allow-simulated",
        ] {
            assert!(
                text.contains(flag),
                "{command} --help lacks {flag}:\n{text}"
            );
        }
        assert!(
            text.contains("REPLACE the"),
            "{command}: --manifests replaces"
        );
        assert!(text.contains("INSECURE: any image"), "{command}: {text}");
    }
    let verify = help("verify");
    assert!(verify.contains("built into this"), "{verify}");
    assert!(
        verify.contains("lists only the checks that ran"),
        "{verify}"
    );
}

#[test]
fn a_malformed_min_tcb_is_refused_naming_the_mistake() {
    let out = Command::new(env!("CARGO_BIN_EXE_chrysalis"))
        .args([
            "verify",
            "--url",
            "http://127.0.0.1:9",
            "--min-tcb",
            "rome:snp=1",
        ])
        .output()
        .expect("the chrysalis binary runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown CPU generation \"rome\""), "{err}");
}
