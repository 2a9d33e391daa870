//! The Chrysalis enclave.
//!
//! In production this binary is `/init`, PID 1 of the measured SEV-SNP guest: it
//! attests, verifies and loads the model named by the measured kernel command line,
//! and serves sealed inference sessions through the host shim. On a developer machine
//! the same binary runs as an ordinary process (`generate`, and `serve` in dev mode with
//! simulated, INSECURE evidence). It may depend on every library crate of the workspace:
//! protocol, measurements, models and kernels.

fn main() {
    eprintln!("chrysalis-enclave: no subcommands yet");
    std::process::exit(2);
}
