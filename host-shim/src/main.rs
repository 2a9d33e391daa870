//! The Chrysalis host shim.
//!
//! Runs on the provider's untrusted host beside the confidential VM: launches QEMU,
//! serves the public HTTP API, relays sealed frames between clients and the enclave
//! without ever holding a key, and keeps the billing ledger and TON settlement. It may
//! depend on `chrysalis-protocol` and `chrysalis-measurements`, never on the enclave,
//! models or kernels.

fn main() {
    eprintln!("chrysalis-shim: no subcommands yet");
    std::process::exit(2);
}
