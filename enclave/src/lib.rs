//! The Chrysalis enclave's library: one module per subcommand of the
//! `chrysalis-enclave` binary, which only parses arguments and dispatches here.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod generate;
